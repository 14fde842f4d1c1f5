/**
 * Real FFmpeg peers: a publisher (an encoder, as OBS would be) and a player.
 *
 * @module
 */

import { TestProcess } from "./process.ts";

/**
 * Publishes `source` to `url` with `-c copy`; in real time unless `realtime` is false.
 * `readAfterEveryPacket` (`-rtmp_flush_interval 1`): FFmpeg reads what the server sends after
 * every packet, not every 10, so that a server pinging often cannot find a ping unread when FFmpeg
 * closes (the reset that makes the stream's last packets lost on their way in). `outputOptions`
 * go before the output (`-output_ts_offset 16800`: media stamped from there on, metadata at 0).
 */
export function ffmpegPublish(
  source: string,
  url: string,
  options: { realtime?: boolean; readAfterEveryPacket?: boolean; outputOptions?: string[] } = {},
): TestProcess {
  return new TestProcess("ffmpeg", [
    "-hide_banner",
    "-loglevel",
    "warning",
    ...(options.realtime ?? true ? ["-re"] : []),
    "-i",
    source,
    "-c",
    "copy",
    ...(options.readAfterEveryPacket ? ["-rtmp_flush_interval", "1"] : []),
    ...options.outputOptions ?? [],
    "-f",
    "flv",
    url,
  ]);
}

/** Plays `url` and writes video then audio, unchanged, to the FLV file `out`. */
export function ffmpegPlay(url: string, out: string): TestProcess {
  return new TestProcess("ffmpeg", [
    "-hide_banner",
    "-loglevel",
    "warning",
    "-y",
    "-i",
    url,
    "-map",
    "0:v",
    "-map",
    "0:a",
    "-c",
    "copy",
    "-f",
    "flv",
    out,
  ]);
}
