/**
 * FFmpeg's argument list for one destination: FLV in on stdin, `-c copy`, FLV out to the push URL.
 * An argument array, never a shell line; the URL is validated before it gets here and is always
 * the last argument, after `-f flv`, so nothing in it can be read as an option.
 *
 * @module
 */

import type { Destination } from "../control_plane/destination.ts";

export interface FfmpegArgsOptions {
  /** Seconds FFmpeg waits on a stalled destination socket before giving up (and being restarted). */
  ioTimeoutSeconds: number;
}

export function buildFfmpegArgs(destination: Destination, options: FfmpegArgsOptions): string[] {
  const url = destination.pushUrl;
  if (!/^rtmps?:\/\//.test(url)) {
    throw new TypeError(`destination ${destination.id}: push URL is not rtmp:// or rtmps://`);
  }
  return [
    "-hide_banner",
    "-nostats",
    // "info" prints "Output #0" once the destination accepted the publish: our "connected" signal.
    "-loglevel",
    "info",
    // The input starts with metadata and sequence headers, so a short probe finds both streams.
    // No "-fflags nobuffer": it discards the packets read while probing, the stream's start.
    "-probesize",
    "65536",
    "-analyzeduration",
    "500000",
    "-f",
    "flv",
    "-i",
    "pipe:0",
    "-map",
    "0",
    "-c",
    "copy",
    "-rw_timeout",
    String(Math.round(options.ioTimeoutSeconds * 1_000_000)),
    "-flvflags",
    "no_duration_filesize",
    "-f",
    "flv",
    url,
  ];
}
