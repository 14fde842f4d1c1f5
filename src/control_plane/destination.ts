/**
 * Destinations: where a stream is pushed, and the checks a destination passes before any part of
 * it reaches an FFmpeg argument list.
 *
 * @module
 */

import { z } from "zod";
import { redactDestination } from "../redact.ts";
import { ENGINE_NAMES, type EngineName, isEngineName } from "../relay/relay_engine.ts";

/** A destination as the control plane's forwarding reply and `config.toml` give it. */
export const DestinationSchema = z.looseObject({
  id: z.union([z.string().min(1), z.number().int()]).transform(String),
  platform: z.string().default("custom"),
  rtmp_url: z.string(),
  stream_key: z.string().default(""),
  enabled: z.boolean().default(true),
  /**
   * "ffmpeg" or "native"; absent: `[streaming] engine`. Any string here: an unknown engine is an
   * error of this destination alone (see `validateDestination`), not of the whole reply or file.
   */
  engine: z.string().optional(),
  /**
   * Enhanced RTMP multitrack track ids the native engine sends (the others are dropped). FFmpeg
   * 5.1 cannot read a multitrack stream at all: its destinations report a codec problem.
   */
  video_track: z.number().int().min(0).max(255).optional(),
  audio_track: z.number().int().min(0).max(255).optional(),
});
export type DestinationInput = z.input<typeof DestinationSchema>;
export type DestinationRecord = z.output<typeof DestinationSchema>;

/** A destination that passed validation, with its push target built. */
export interface Destination {
  readonly id: string;
  readonly platform: string;
  readonly rtmpUrl: string;
  readonly streamKey: string;
  /** `rtmp_url` joined with `stream_key` by one `/`: what FFmpeg pushes to. Secret. */
  readonly pushUrl: string;
  /** The push target with the key redacted, for logs and the API. */
  readonly displayUrl: string;
  /** Undefined: the service's default engine. */
  readonly engine?: EngineName;
  readonly videoTrack?: number;
  readonly audioTrack?: number;
}

// deno-lint-ignore no-control-regex
const FORBIDDEN_CHARACTERS = /[\s\u0000-\u001f\u007f]/;

/**
 * Joins base URL and key with exactly one `/`. An empty key leaves the URL as it is (some
 * platforms put the key in the URL itself).
 */
export function joinPushUrl(rtmpUrl: string, streamKey: string): string {
  if (streamKey === "") return rtmpUrl;
  return `${rtmpUrl.replace(/\/+$/, "")}/${streamKey.replace(/^\/+/, "")}`;
}

/**
 * `url` with its scheme in lower case and every other character as written. The scheme is
 * case-insensitive (RFC 3986, 3.1) and `URL` accepts `RTMP://`, but FFmpeg and the engines'
 * `rtmps://` checks (TLS and its trust store) compare it as written. The rest is left alone:
 * keys, paths and queries are case-sensitive. Only for a URL that `URL` parsed and that holds no
 * whitespace or control character: its scheme then ends at the first `:`.
 */
function lowerCaseScheme(url: string): string {
  const colon = url.indexOf(":");
  return url.slice(0, colon).toLowerCase() + url.slice(colon);
}

/** A destination that cannot be used: a `TypeError` that names the record's field at fault. */
export class InvalidDestination extends TypeError {
  constructor(message: string, readonly field: "rtmp_url" | "stream_key" | "engine") {
    super(message);
  }
}

/**
 * Validates a destination. Throws `InvalidDestination` naming what is wrong: a scheme other than
 * rtmp or rtmps, no host, whitespace or control characters, a URL or key that could be read as an
 * option, an unknown engine.
 */
export function validateDestination(record: DestinationRecord): Destination {
  const what = `destination ${JSON.stringify(record.id)}`;
  for (const field of ["rtmp_url", "stream_key"] as const) {
    if (FORBIDDEN_CHARACTERS.test(record[field])) {
      throw new InvalidDestination(
        `${what}: ${field} contains whitespace or control characters`,
        field,
      );
    }
  }
  if (record.stream_key.startsWith("-")) {
    throw new InvalidDestination(`${what}: stream_key must not start with "-"`, "stream_key");
  }
  let parsed: URL;
  try {
    parsed = new URL(record.rtmp_url);
  } catch {
    throw new InvalidDestination(`${what}: rtmp_url is not a URL`, "rtmp_url");
  }
  if (parsed.protocol !== "rtmp:" && parsed.protocol !== "rtmps:") {
    throw new InvalidDestination(
      `${what}: rtmp_url scheme ${
        JSON.stringify(parsed.protocol)
      } is not allowed (rtmp: or rtmps: only)`,
      "rtmp_url",
    );
  }
  if (parsed.hostname === "") {
    throw new InvalidDestination(`${what}: rtmp_url has no host`, "rtmp_url");
  }
  if (record.engine !== undefined && !isEngineName(record.engine)) {
    throw new InvalidDestination(
      `${what}: unknown engine ${JSON.stringify(record.engine)} (${ENGINE_NAMES.join(" or ")})`,
      "engine",
    );
  }
  const rtmpUrl = lowerCaseScheme(record.rtmp_url);
  const pushUrl = joinPushUrl(rtmpUrl, record.stream_key);
  return {
    id: record.id,
    platform: record.platform,
    rtmpUrl,
    streamKey: record.stream_key,
    pushUrl,
    displayUrl: redactDestination(rtmpUrl, record.stream_key),
    engine: record.engine as EngineName | undefined,
    videoTrack: record.video_track,
    audioTrack: record.audio_track,
  };
}

/** Outcome of checking a list of destinations: the usable ones and why the others were refused. */
export interface DestinationSelection {
  accepted: Destination[];
  rejected: { id: string; reason: string }[];
}

/**
 * Validates each destination and keeps at most `max` valid, enabled ones; the rest are reported
 * with a reason so the caller can log them.
 */
export function selectDestinations(
  records: readonly DestinationRecord[],
  max: number,
): DestinationSelection {
  const selection: DestinationSelection = { accepted: [], rejected: [] };
  const seen = new Set<string>();
  for (const record of records) {
    if (!record.enabled) continue;
    if (seen.has(record.id)) {
      selection.rejected.push({ id: record.id, reason: "duplicate destination id" });
      continue;
    }
    try {
      const destination = validateDestination(record);
      if (selection.accepted.length >= max) {
        selection.rejected.push({
          id: record.id,
          reason: `over max_destinations_per_stream (${max})`,
        });
        continue;
      }
      seen.add(record.id);
      selection.accepted.push(destination);
    } catch (error) {
      selection.rejected.push({ id: record.id, reason: (error as Error).message });
    }
  }
  return selection;
}
