/**
 * Redaction of secrets for logs and API replies. Stream keys and destination keys are credentials:
 * a log line or an API reply shows enough to tell keys apart, never enough to use one.
 *
 * @module
 */

/** `abcd…(16)`: a short prefix and the length. Keys under 12 characters show fewer characters. */
export function redactKey(key: string): string {
  if (key.length === 0) return "(empty)";
  const shown = Math.min(4, Math.floor(key.length / 3));
  return `${key.slice(0, shown)}…(${key.length})`;
}

/**
 * A URL safe to log: user info and query dropped, control characters escaped. Anything that does
 * not parse is shown only by its length.
 */
export function sanitizeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    const port = parsed.port ? `:${parsed.port}` : "";
    const path = parsed.pathname === "/" ? "" : parsed.pathname;
    return `${parsed.protocol}//${parsed.hostname}${port}${path}`;
  } catch {
    return `(unparsable URL, ${url.length} characters)`;
  }
}

/** A destination's push target as it may be logged or returned: base URL and a redacted key. */
export function redactDestination(rtmpUrl: string, streamKey: string): string {
  return streamKey === ""
    ? sanitizeUrl(rtmpUrl)
    : `${sanitizeUrl(rtmpUrl).replace(/\/+$/, "")}/${redactKey(streamKey)}`;
}
