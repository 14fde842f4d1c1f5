/**
 * `classifyFfmpegError()` against the stderr Debian's FFmpeg 5.1 (GnuTLS) printed, as the
 * supervisor keeps it (trimmed, key redacted), for each way a destination failed: the kind (the
 * same the native engine reports) and the sentence.
 */

import type { DestinationFailureKind } from "../../src/relay/destination_failure.ts";
import { classifyFfmpegError, ffmpegFailure } from "../../src/relay/ffmpeg_errors.ts";
import { assertEquals } from "../helpers/assert.ts";

const OPEN_FAILED = "[rtmps @ 0x55630fba8fc0] Cannot open connection tls://127.0.0.1:28038";
const IO_ERROR = "rtmps://127.0.0.1:28038/live/rtmp…(26): Input/output error";
const NOT_TRUSTED =
  "TLS certificate not trusted: the chain does not verify against the trusted CAs (unknown issuer, self-signed, expired or not yet valid)";

type Expected = [DestinationFailureKind, string] | undefined;
const CASES: { what: string; lines: string[]; expected: Expected; unansweredFor?: number }[] = [
  {
    what: "a self-signed certificate, or one from a CA not configured",
    lines: ["[tls @ 0x55630fbdd300] Peer certificate failed verification", OPEN_FAILED, IO_ERROR],
    expected: ["tls", NOT_TRUSTED],
  },
  {
    what: "an expired certificate (GnuTLS prints the same line)",
    lines: [
      "[tcp @ 0x5642a5177040] Successfully connected to 127.0.0.1 port 21081",
      "[tls @ 0x5642a5216300] Peer certificate failed verification",
      OPEN_FAILED,
      IO_ERROR,
    ],
    expected: ["tls", NOT_TRUSTED],
  },
  {
    what: "a trusted certificate for another host",
    lines: [
      "[tls @ 0x55715d7ea300] The certificate's owner does not match hostname 127.0.0.1",
      OPEN_FAILED,
      IO_ERROR,
    ],
    expected: [
      "tls",
      "TLS certificate not trusted: host name mismatch (the certificate is not valid for 127.0.0.1)",
    ],
  },
  {
    what: "a -ca_file FFmpeg cannot read (it then trusts nothing)",
    lines: [
      "[tls @ 0x55b8ddb69300] Error while reading file.",
      "[tls @ 0x55b8ddb69300] Peer certificate failed verification",
      OPEN_FAILED,
      IO_ERROR,
    ],
    expected: [
      "tls",
      "TLS trust store unreadable: FFmpeg could not read its CA bundle (check [streaming] tls_ca_file and state_dir)",
    ],
  },
  {
    what: "a server that does not speak TLS",
    lines: ["[tls @ 0x55f7188fb900] An unexpected TLS packet was received.", OPEN_FAILED, IO_ERROR],
    expected: ["tls", "TLS handshake failed: An unexpected TLS packet was received."],
  },
  {
    what: "a server that closes the connection at once",
    lines: [
      "[tls @ 0x5565c7c39900] Error in the pull function.",
      "[tls @ 0x5565c7c39900] IO error: End of file",
      "[rtmps @ 0x5565c7c54f80] Cannot open connection tls://127.0.0.1:29342",
      "rtmps://127.0.0.1:29342/live/rtmp…(26): End of file",
    ],
    expected: ["tls", "TLS handshake failed: Error in the pull function.; IO error: End of file"],
  },
  {
    what: "a refused TCP connection under rtmps (not TLS)",
    lines: [
      "[tcp @ 0x563bfbbb3040] Connection to tcp://127.0.0.1:19443 failed: Connection refused",
      "[rtmps @ 0x563bfbc1dfc0] Cannot open connection tls://127.0.0.1:19443",
      "rtmps://127.0.0.1:19443/live/rtmp…(26): Connection refused",
    ],
    expected: ["unreachable", "destination unreachable: tcp://127.0.0.1:19443: Connection refused"],
  },
  {
    what: "a refused TCP connection",
    lines: [
      "[tcp @ 0x5627e6a72e40] Connection to tcp://127.0.0.1:1?tcp_nodelay=0 failed: Connection refused",
      "[rtmp @ 0x5627e6a759c0] Cannot open connection tcp://127.0.0.1:1?tcp_nodelay=0",
      "rtmp://127.0.0.1:1/live/abcd: Connection refused",
    ],
    expected: ["unreachable", "destination unreachable: tcp://127.0.0.1:1: Connection refused"],
  },
  {
    what: "a host name that does not resolve",
    lines: [
      "[tcp @ 0x558e2ead8e40] Failed to resolve hostname nonexistent.invalid: Name or service not known",
      "[rtmp @ 0x558e2eadb9c0] Cannot open connection tcp://nonexistent.invalid:1935?tcp_nodelay=0",
      "rtmp://nonexistent.invalid/live/abcd: Input/output error",
    ],
    expected: [
      "unreachable",
      "destination unreachable: cannot resolve nonexistent.invalid: Name or service not known",
    ],
  },
  {
    what: "a key refused by the destination (onStatus NetStream.Publish.BadName)",
    lines: [
      "[rtmp @ 0x55d0c1a4e9c0] Server error: Publishing not allowed (stream key rejected)",
      "rtmp://127.0.0.1:1935/live/wron…(9): Operation not permitted",
    ],
    expected: ["rejected", "rejected by destination: Publishing not allowed (stream key rejected)"],
  },
  {
    what: "a destination that accepts the connection and never answers (-rw_timeout)",
    lines: [
      "[rtmp @ 0x55687a7d87c0] Cannot read RTMP handshake response",
      "rtmp://127.0.0.1:39517/live/abcd: Connection timed out",
    ],
    expected: ["timeout", "destination timed out: Connection timed out"],
  },
  {
    what: "a destination that stopped reading (-rw_timeout)",
    lines: [
      "[flv @ 0x55e0c8a3d0c0] Failed to update header with correct duration.",
      "av_interleaved_write_frame(): Connection timed out",
    ],
    expected: ["timeout", "destination timed out: Connection timed out"],
  },
  {
    what: "a destination that hung up mid-stream",
    lines: [
      "av_interleaved_write_frame(): Broken pipe",
      "[flv @ 0x55e0c8a3d0c0] Failed to update header with correct duration.",
      "Error writing trailer of rtmp://127.0.0.1:1935/live/abcd: Broken pipe",
    ],
    expected: ["closed", "destination closed the connection: Broken pipe"],
  },
  {
    // All FFmpeg 5.1 prints when the server closes the connection unanswered, whether on
    // connect, createStream or publish (seen against a server of ours doing each).
    what: "a destination that hung up before accepting the publish (how nginx-rtmp refuses a key)",
    lines: ["rtmp://127.0.0.1:24999/live/secr…(9): Input/output error"],
    expected: [
      "closed",
      "destination closed the connection before accepting the publish (nginx-rtmp and Twitch refuse a stream key this way: check it)",
    ],
  },
  {
    what: "an RTMPS destination that hung up before accepting the publish",
    lines: [IO_ERROR],
    expected: [
      "closed",
      "destination closed the connection before accepting the publish (nginx-rtmp and Twitch refuse a stream key this way: check it)",
    ],
  },
  {
    // Same line, but the attempt lasted -rw_timeout without connecting: the server kept the
    // connection open and said nothing (a handshake or connect never answered).
    what: "a destination that never answered while FFmpeg opened the publish (-rw_timeout)",
    lines: ["rtmp://127.0.0.1:23002/live/test…(7): Input/output error"],
    unansweredFor: 10,
    expected: [
      "timeout",
      "destination timed out: no answer within 10 s while opening the publish",
    ],
  },
  { what: "no stderr at all", lines: [], expected: undefined },
];

for (const { what, lines, expected, unansweredFor } of CASES) {
  Deno.test(`classifyFfmpegError() explains ${what}`, () => {
    const failure = classifyFfmpegError(lines, { unansweredForSeconds: unansweredFor });
    assertEquals(failure === undefined ? undefined : [failure.kind, failure.message], expected);
  });
}

Deno.test("ffmpegFailure() reports an unknown exit as internal with FFmpeg's telling line", () => {
  const failure = ffmpegFailure(
    ["Stream mapping:", "[flv @ 0x1] Invalid data found when processing input", "Exiting"],
    { code: 1, signal: null },
  );
  assertEquals(
    [failure.kind, failure.message],
    ["internal", "ffmpeg exited with code 1: [flv @ 0x1] Invalid data found when processing input"],
  );
});
