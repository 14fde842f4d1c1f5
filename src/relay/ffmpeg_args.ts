/**
 * FFmpeg's argument list for one destination: FLV in on stdin, `-c copy`, FLV out to the push URL.
 * An argument array, never a shell line; the URL is validated before it gets here and is always
 * the last argument, after `-f flv`, so nothing in it can be read as an option. And what FFmpeg
 * prints back of that URL, made safe to log.
 *
 * @module
 */

import type { Destination } from "../control_plane/destination.ts";
import { redactKey } from "../redact.ts";
import { parsePublishUrl } from "../rtmp/client_conversation.ts";

export interface FfmpegArgsOptions {
  /** Seconds FFmpeg waits on a stalled destination socket before giving up (and being restarted). */
  ioTimeoutSeconds: number;
  /**
   * `-ca_file` for `rtmps://`: the bundle of system roots and the operator's CAs. Undefined: the
   * system roots alone (FFmpeg's default trust store).
   */
  caFile?: string;
}

/**
 * Options of FFmpeg's tls protocol for an `rtmps://` output; the rtmp protocol hands its options
 * to the tls connection it opens. FFmpeg's default is `tls_verify=0`, which would give the stream
 * key to whoever answers for the host; with 1 it checks the chain and the host name.
 */
function tlsArgs(url: string, caFile: string | undefined): string[] {
  if (!url.startsWith("rtmps://")) return [];
  return ["-tls_verify", "1", ...(caFile === undefined ? [] : ["-ca_file", caFile])];
}

export function buildFfmpegArgs(destination: Destination, options: FfmpegArgsOptions): string[] {
  const url = destination.pushUrl;
  // Case-sensitive on purpose: `validateDestination` lower-cases the scheme, and `tlsArgs` relies
  // on it. An `RTMPS://` let through here would go out without `-tls_verify 1`.
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
    // A track that starts later is not read by this FFmpeg: the supervisor starts another one
    // (see DestinationSupervisor's #trackNotCarried); a longer probe would delay every start.
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
    // FFmpeg reads what the destination sent (pings, acknowledgements) only every this many
    // packets written (10 by default), and closes the socket without reading: anything left
    // unread makes the kernel reset the connection, and a reset drops what it still held unsent,
    // the stream's last packets. Read after every packet, only what arrives between FFmpeg's last
    // write and its close is left (tests/e2e/stream_end_test.ts).
    "-rtmp_flush_interval",
    "1",
    "-flvflags",
    "no_duration_filesize",
    ...tlsArgs(url, options.caFile),
    "-f",
    "flv",
    url,
  ];
}

/** Keys shorter than this are left alone: replacing two letters would garble every line. */
const MIN_REDACTED_KEY = 4;

/**
 * A scrubber for FFmpeg's stderr lines: FFmpeg prints its output URL, and a destination's refusal
 * may name the stream, so the push URL becomes `displayUrl` and the key, wherever it shows alone,
 * is redacted. The key is `stream_key`, or when that is empty (a key written in `rtmp_url`) the
 * stream name FFmpeg publishes, split from the URL as FFmpeg splits it; also without its query
 * string and without the `mp4:` FFmpeg puts before a name ending in `.mp4`, as a server may echo
 * the name. Made once per FFmpeg: the split is not redone for every line.
 */
export function ffmpegLogRedactor(destination: Destination): (line: string) => string {
  const { pushUrl, displayUrl, streamKey } = destination;
  const key = streamKey !== "" ? streamKey : publishedName(pushUrl);
  const bare = key.split("?")[0]!.replace(/^mp4:/, "");
  const secrets = [...new Set([key, bare])]
    .filter((secret) => secret.length >= MIN_REDACTED_KEY)
    .sort((a, b) => b.length - a.length); // the whole name before a part of it
  return (line) => {
    let out = line.replaceAll(pushUrl, displayUrl);
    for (const secret of secrets) out = out.replaceAll(secret, redactKey(secret));
    return out;
  };
}

/** The stream name FFmpeg publishes to `pushUrl`; "" when it has none (nothing to hide then). */
function publishedName(pushUrl: string): string {
  try {
    return parsePublishUrl(pushUrl).streamName;
  } catch (error) {
    // A URL with no name after its application: FFmpeg fails on it and says so, and every part
    // of it is shown in `displayUrl` already.
    if (error instanceof TypeError) return "";
    throw error;
  }
}
