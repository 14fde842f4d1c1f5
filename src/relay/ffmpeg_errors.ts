/**
 * FFmpeg's stderr turned into a sentence for `last_error` when we know what it means. Only TLS for
 * now: GnuTLS's lines (Debian's FFmpeg 5.1) name neither the destination nor the cause in terms an
 * operator recognises. Lines are matched as FFmpeg prints them (`[tls @ 0x…] message`).
 *
 * @module
 */

interface Rule {
  pattern: RegExp;
  message: (match: RegExpMatchArray, tlsLines: string[]) => string;
}

const TLS_LINE = /^\[tls @ [^\]]*\] (.*)$/;

/** First rule that matches any line wins: the order is from most to least specific. */
const RULES: readonly Rule[] = [
  {
    // GnuTLS could not load -ca_file, so it trusts nothing and verification fails next.
    pattern: /^\[tls @ [^\]]*\] Error while reading file\.$/,
    message: () =>
      "TLS trust store unreadable: FFmpeg could not read its CA bundle (check [streaming] tls_ca_file and state_dir)",
  },
  {
    pattern: /^\[tls @ [^\]]*\] The certificate's owner does not match hostname (.*)$/,
    message: (match) =>
      `TLS certificate not trusted: host name mismatch (the certificate is not valid for ${
        match[1]
      })`,
  },
  {
    // GnuTLS's verdict for any broken chain; FFmpeg does not print which check failed.
    pattern: /^\[tls @ [^\]]*\] Peer certificate failed verification$/,
    message: () =>
      "TLS certificate not trusted: the chain does not verify against the trusted CAs (unknown issuer, self-signed, expired or not yet valid)",
  },
  {
    pattern: /^\[tls @ [^\]]*\] Unable to verify peer certificate: (.*)$/,
    message: (match) => `TLS certificate not trusted: cannot verify it (${match[1]})`,
  },
  {
    // Anything else from the TLS layer: a server that does not speak TLS, a closed connection.
    pattern: TLS_LINE,
    message: (_match, tlsLines) => `TLS handshake failed: ${tlsLines.join("; ")}`,
  },
];

/**
 * A message for `last_error` from FFmpeg's last stderr lines, or undefined when none of them is
 * one we recognise (the caller then reports FFmpeg's own line).
 */
export function classifyFfmpegError(lines: readonly string[]): string | undefined {
  const tlsLines = lines.flatMap((line) => line.match(TLS_LINE)?.[1] ?? []);
  for (const rule of RULES) {
    for (const line of lines) {
      const match = line.match(rule.pattern);
      if (match) return rule.message(match, tlsLines);
    }
  }
  return undefined;
}
