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

/** Where a URL's key may sit, for `redactUrl`. */
export interface RedactUrlOptions {
  /**
   * Whether the path beyond the application is the key (the default: nothing says the key is
   * elsewhere). False when the key is given separately: the whole path is then the application.
   */
  keyInPath?: boolean;
}

/**
 * A URL safe to log or return: user info dropped, the key redacted by `redactKey`, the scheme, host,
 * port and application left readable (`rtmp://host/live2/abcd…(26)`). The key is the path beyond
 * the application, which is the first path segment, or the first two when there are three or more
 * (`/app/instance/key`: the split FFmpeg makes, see `parsePublishUrl`), together with any query
 * string or fragment, where platforms put keys and tokens too. A URL with only an application
 * (`rtmp://host/live`) has nothing to hide. Control characters come out percent-encoded; anything
 * that does not parse is shown only by its length.
 */
export function redactUrl(url: string, { keyInPath = true }: RedactUrlOptions = {}): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return `(unparsable URL, ${url.length} characters)`;
  }
  const extra = parsed.search + parsed.hash;
  if (parsed.pathname !== "" && !parsed.pathname.startsWith("/")) {
    // No `//host/...` (`rtmp:host/live/key`): nothing tells the application from the key.
    const rest = parsed.pathname + extra;
    return `${parsed.protocol}${rest === "" ? "" : redactKey(rest)}`;
  }
  const segments = parsed.pathname.split("/").filter((segment) => segment !== "");
  // As `parsePublishUrl` splits: a colon in the second segment makes it part of the name.
  const appSegments = !keyInPath
    ? segments.length
    : segments.length >= 3 && !segments[1]!.includes(":")
    ? 2
    : 1;
  const app = segments.slice(0, appSegments).map((segment) => `/${segment}`).join("");
  const key = segments.slice(appSegments).join("/");
  const origin = `${parsed.protocol}//${parsed.host}${app}`;
  if (key !== "") return `${origin}/${redactKey(key + extra)}`;
  if (extra !== "") return `${origin}${extra[0]}${redactKey(extra.slice(1))}`;
  // As written: `rtmp://a.rtmp.youtube.com/live2/` keeps its slash.
  return `${origin}${segments.length > 0 && parsed.pathname.endsWith("/") ? "/" : ""}`;
}

/**
 * A destination's `rtmp_url` as it may be shown. An empty `stream_key` means the key is written in
 * the URL itself (`joinPushUrl`), so the path beyond the application is redacted; with a separate
 * key the whole path is the application.
 */
export function redactRtmpUrl(rtmpUrl: string, streamKey: string): string {
  return redactUrl(rtmpUrl, { keyInPath: streamKey === "" });
}

/** A destination's push target as it may be logged or returned: base URL and a redacted key. */
export function redactDestination(rtmpUrl: string, streamKey: string): string {
  const base = redactRtmpUrl(rtmpUrl, streamKey);
  return streamKey === "" ? base : `${base.replace(/\/+$/, "")}/${redactKey(streamKey)}`;
}
