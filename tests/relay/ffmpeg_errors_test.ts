/**
 * `classifyFfmpegError()` against the stderr Debian's FFmpeg 5.1 (GnuTLS) printed, as the
 * supervisor keeps it (trimmed, key redacted), for each way an rtmps destination failed.
 */

import { classifyFfmpegError } from "../../src/relay/ffmpeg_errors.ts";
import { assertEquals } from "../helpers/assert.ts";

const OPEN_FAILED = "[rtmps @ 0x55630fba8fc0] Cannot open connection tls://127.0.0.1:28038";
const IO_ERROR = "rtmps://127.0.0.1:28038/live/rtmp…(26): Input/output error";
const NOT_TRUSTED =
  "TLS certificate not trusted: the chain does not verify against the trusted CAs (unknown issuer, self-signed, expired or not yet valid)";

const CASES: { what: string; lines: string[]; expected: string | undefined }[] = [
  {
    what: "a self-signed certificate, or one from a CA not configured",
    lines: ["[tls @ 0x55630fbdd300] Peer certificate failed verification", OPEN_FAILED, IO_ERROR],
    expected: NOT_TRUSTED,
  },
  {
    what: "an expired certificate (GnuTLS prints the same line)",
    lines: [
      "[tcp @ 0x5642a5177040] Successfully connected to 127.0.0.1 port 21081",
      "[tls @ 0x5642a5216300] Peer certificate failed verification",
      OPEN_FAILED,
      IO_ERROR,
    ],
    expected: NOT_TRUSTED,
  },
  {
    what: "a trusted certificate for another host",
    lines: [
      "[tls @ 0x55715d7ea300] The certificate's owner does not match hostname 127.0.0.1",
      OPEN_FAILED,
      IO_ERROR,
    ],
    expected:
      "TLS certificate not trusted: host name mismatch (the certificate is not valid for 127.0.0.1)",
  },
  {
    what: "a -ca_file FFmpeg cannot read (it then trusts nothing)",
    lines: [
      "[tls @ 0x55b8ddb69300] Error while reading file.",
      "[tls @ 0x55b8ddb69300] Peer certificate failed verification",
      OPEN_FAILED,
      IO_ERROR,
    ],
    expected:
      "TLS trust store unreadable: FFmpeg could not read its CA bundle (check [streaming] tls_ca_file and state_dir)",
  },
  {
    what: "a server that does not speak TLS",
    lines: ["[tls @ 0x55f7188fb900] An unexpected TLS packet was received.", OPEN_FAILED, IO_ERROR],
    expected: "TLS handshake failed: An unexpected TLS packet was received.",
  },
  {
    what: "a server that closes the connection at once",
    lines: [
      "[tls @ 0x5565c7c39900] Error in the pull function.",
      "[tls @ 0x5565c7c39900] IO error: End of file",
      "[rtmps @ 0x5565c7c54f80] Cannot open connection tls://127.0.0.1:29342",
      "rtmps://127.0.0.1:29342/live/rtmp…(26): End of file",
    ],
    expected: "TLS handshake failed: Error in the pull function.; IO error: End of file",
  },
  {
    what: "a refused TCP connection (not TLS: FFmpeg's own line is reported)",
    lines: [
      "[tcp @ 0x563bfbbb3040] Connection to tcp://127.0.0.1:19443 failed: Connection refused",
      "[rtmps @ 0x563bfbc1dfc0] Cannot open connection tls://127.0.0.1:19443",
      "rtmps://127.0.0.1:19443/live/rtmp…(26): Connection refused",
    ],
    expected: undefined,
  },
  { what: "no stderr at all", lines: [], expected: undefined },
];

for (const { what, lines, expected } of CASES) {
  Deno.test(`classifyFfmpegError() explains ${what}`, () => {
    assertEquals(classifyFfmpegError(lines), expected);
  });
}
