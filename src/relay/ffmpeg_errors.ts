/**
 * FFmpeg's stderr turned into a typed failure (the kinds the native engine reports too) and a
 * sentence for `last_error`. GnuTLS's lines (Debian's FFmpeg 5.1) name neither the destination nor
 * the cause in terms an operator recognises, so TLS gets its own sentences. Lines are matched as
 * FFmpeg prints them (`[tls @ 0x…] message`).
 *
 * @module
 */

import { DestinationFailure, type DestinationFailureKind } from "./destination_failure.ts";

interface Rule {
  kind: DestinationFailureKind;
  pattern: RegExp;
  message: (match: RegExpMatchArray, tlsLines: string[]) => string;
}

const TLS_LINE = /^\[tls @ [^\]]*\] (.*)$/;
/** FFmpeg's whole account of an output it could not open, when nothing more specific comes first. */
const OPEN_FAILED_BARE = /^rtmps?:\/\/\S*: Input\/output error$/;

/** First rule that matches any line wins: the order is from most to least specific. */
const RULES: readonly Rule[] = [
  {
    kind: "tls",
    // GnuTLS could not load -ca_file, so it trusts nothing and verification fails next.
    pattern: /^\[tls @ [^\]]*\] Error while reading file\.$/,
    message: () =>
      "TLS trust store unreadable: FFmpeg could not read its CA bundle (check [streaming] tls_ca_file and state_dir)",
  },
  {
    kind: "tls",
    pattern: /^\[tls @ [^\]]*\] The certificate's owner does not match hostname (.*)$/,
    message: (match) =>
      `TLS certificate not trusted: host name mismatch (the certificate is not valid for ${
        match[1]
      })`,
  },
  {
    kind: "tls",
    // GnuTLS's verdict for any broken chain; FFmpeg does not print which check failed.
    pattern: /^\[tls @ [^\]]*\] Peer certificate failed verification$/,
    message: () =>
      "TLS certificate not trusted: the chain does not verify against the trusted CAs (unknown issuer, self-signed, expired or not yet valid)",
  },
  {
    kind: "tls",
    pattern: /^\[tls @ [^\]]*\] Unable to verify peer certificate: (.*)$/,
    message: (match) => `TLS certificate not trusted: cannot verify it (${match[1]})`,
  },
  {
    kind: "tls",
    // Anything else from the TLS layer: a server that does not speak TLS, a closed connection.
    pattern: TLS_LINE,
    message: (_match, tlsLines) => `TLS handshake failed: ${tlsLines.join("; ")}`,
  },
  {
    // The destination answered the publish with an error status or `_error` (rtmpproto.c
    // prints "Server error: <description>"): a bad key, a publish refused.
    kind: "rejected",
    pattern: /\] Server error: (.*)$/,
    message: (match) => `rejected by destination: ${match[1]}`,
  },
  {
    kind: "unreachable",
    pattern: /\] Connection to (tcp:\/\/[^?\s]*)\S* failed: (.*)$/,
    message: (match) => `destination unreachable: ${match[1]}: ${match[2]}`,
  },
  {
    kind: "unreachable",
    pattern: /\] Failed to resolve hostname (.*)$/,
    message: (match) => `destination unreachable: cannot resolve ${match[1]}`,
  },
  {
    kind: "unreachable",
    pattern: /: (Network is unreachable|No route to host)$/,
    message: (match) => `destination unreachable: ${match[1]}`,
  },
  {
    // -rw_timeout expired (ETIMEDOUT), or a connect that never completed.
    kind: "timeout",
    pattern: /: (Connection timed out|Operation timed out)$/,
    message: (match) => `destination timed out: ${match[1]}`,
  },
  {
    kind: "closed",
    pattern: /: (Broken pipe|Connection reset by peer|End of file)$/,
    message: (match) => `destination closed the connection: ${match[1]}`,
  },
  {
    // Opening the output failed with nothing more specific above: all FFmpeg 5.1 prints when the
    // server hangs up unanswered on connect, createStream or publish. Which one it was, FFmpeg
    // does not say at this log level; a hang-up on publish is how nginx-rtmp's on_publish and
    // Twitch refuse a key, so the sentence points there.
    kind: "closed",
    pattern: OPEN_FAILED_BARE,
    message: () =>
      "destination closed the connection before accepting the publish (nginx-rtmp and Twitch refuse a stream key this way: check it)",
  },
];

/** What the engine knows of an attempt that its stderr does not say. */
export interface FfmpegAttemptFacts {
  /**
   * Set when FFmpeg never connected and gave up after its `-rw_timeout` (these seconds): a server
   * that says nothing while the publish opens leaves FFmpeg 5.1 printing only "Input/output
   * error", as one that hangs up does.
   */
  unansweredForSeconds?: number | undefined;
}

/**
 * A typed failure from FFmpeg's last stderr lines, or undefined when none of them is one we
 * recognise (see `ffmpegFailure`).
 */
export function classifyFfmpegError(
  lines: readonly string[],
  facts: FfmpegAttemptFacts = {},
): DestinationFailure | undefined {
  const tlsLines = lines.flatMap((line) => line.match(TLS_LINE)?.[1] ?? []);
  const seconds = facts.unansweredForSeconds;
  for (const rule of RULES) {
    for (const line of lines) {
      const match = line.match(rule.pattern);
      if (!match) continue;
      if (rule.pattern === OPEN_FAILED_BARE && seconds !== undefined) {
        return new DestinationFailure(
          "timeout",
          `destination timed out: no answer within ${seconds} s while opening the publish`,
        );
      }
      return new DestinationFailure(rule.kind, rule.message(match, tlsLines));
    }
  }
  return undefined;
}

const ERROR_WORDS =
  /error|fail|refused|invalid|denied|timed? ?out|broken|unable|cannot|not found|reset/i;

/**
 * Why an FFmpeg exited, from its exit status and last stderr lines: a recognised failure, else
 * `internal` with FFmpeg's own most telling line.
 */
export function ffmpegFailure(
  lines: readonly string[],
  status: { code: number; signal: string | null },
  facts: FfmpegAttemptFacts = {},
): DestinationFailure {
  const known = classifyFfmpegError(lines, facts);
  if (known) return known;
  const reason = lines.findLast((line) => ERROR_WORDS.test(line)) ?? lines.at(-1);
  const how = status.signal ? `signal ${status.signal}` : `code ${status.code}`;
  return new DestinationFailure(
    "internal",
    `ffmpeg exited with ${how}${reason ? `: ${reason}` : ""}`,
  );
}
