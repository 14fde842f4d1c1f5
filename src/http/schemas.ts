/**
 * The HTTP API's request and response shapes, as zod schemas: the routes validate bodies with
 * them, the tests check replies with them, and the README documents them.
 *
 * @module
 */

import { z } from "zod";
import { ENGINE_NAMES } from "../relay/relay_engine.ts";
import { FAILURE_KINDS } from "../relay/destination_failure.ts";
import { DESTINATION_STATES } from "../relay/destination_supervisor.ts";

export const HealthSchema = z.object({
  status: z.enum(["ok", "unavailable"]),
  version: z.string(),
  uptime_seconds: z.number().int().nonnegative(),
  active_streams: z.number().int().nonnegative(),
  reason: z.string().optional(),
});

export const StatsSchema = z.object({
  active_streams: z.array(z.string()),
  total_streams: z.number().int().nonnegative(),
  connections: z.number().int().nonnegative(),
  total_connections: z.number().int().nonnegative(),
  bytes_in: z.number().nonnegative(),
  bytes_out: z.number().nonnegative(),
  destinations: z.number().int().nonnegative(),
  ffmpeg_processes: z.number().int().nonnegative(),
  memory: z.object({
    rss_bytes: z.number().nonnegative(),
    heap_used_bytes: z.number().nonnegative(),
    external_bytes: z.number().nonnegative(),
  }),
  uptime_seconds: z.number().int().nonnegative(),
});

export const DestinationStatusSchema = z.object({
  id: z.string(),
  platform: z.string(),
  url: z.string(),
  engine: z.enum(ENGINE_NAMES),
  state: z.enum([...DESTINATION_STATES, "disabled"]),
  connected: z.boolean(),
  bytes_sent: z.number().nonnegative(),
  packets_sent: z.number().nonnegative(),
  dropped_packets: z.number().nonnegative(),
  error_count: z.number().nonnegative(),
  last_error: z.string().nullable(),
  failure: z.enum(FAILURE_KINDS).nullable(),
  attempt: z.number().int().nonnegative(),
  next_attempt_at: z.string().nullable(),
  restarts: z.number().nonnegative(),
  started_at: z.string().nullable(),
  connected_at: z.string().nullable(),
  bitrate_kbps: z.number().nonnegative(),
  pid: z.number().nullable(),
  input_bitrate_kbps: z.number().nonnegative(),
  output_bitrate_kbps: z.number().nonnegative(),
  bytes_out: z.number().nonnegative(),
  queue_lag_ms: z.number().nonnegative(),
  dropped_bytes: z.number().nonnegative(),
  drop_episodes: z.number().int().nonnegative(),
  live_seconds: z.number().nonnegative(),
  published_seconds: z.number().nonnegative(),
  availability: z.number().min(0).max(1),
  time_to_live_ms: z.number().nonnegative().nullable(),
  reconnects: z.number().int().nonnegative(),
});

/** A destination as `/api/streams/forwarding/{key}` returns it (the reference shape, plus status). */
export const ForwardedDestinationSchema = z.object({
  id: z.string(),
  platform: z.string(),
  rtmp_url: z.string(),
  stream_key: z.string(),
  status: DestinationStatusSchema,
});

export const ForwardingSchema = z.object({ destinations: z.array(ForwardedDestinationSchema) });

export const StreamSchema = z.object({
  id: z.string(),
  stream_key: z.string(),
  state: z.enum(["live", "reconnecting"]),
  live_since: z.string().nullable(),
  reconnects: z.number().int().nonnegative(),
  reconnect_seconds_left: z.number().nonnegative().nullable(),
  publisher: z.object({
    remote_address: z.string(),
    encoder: z.string(),
    started_at: z.string(),
    uptime_seconds: z.number().int().nonnegative(),
    bytes_in: z.number().nonnegative(),
    packets_in: z.number().nonnegative(),
    bitrate_kbps: z.number().nonnegative(),
    video_codec: z.string().nullable(),
    audio_codec: z.string().nullable(),
    width: z.number().nullable(),
    height: z.number().nullable(),
    fps: z.number().nullable(),
  }).nullable(),
  players: z.array(z.object({
    remote_address: z.string(),
    bytes_out: z.number().nonnegative(),
    dropped_packets: z.number().nonnegative(),
  })),
  destinations: z.array(ForwardedDestinationSchema),
  destinations_error: z.string().nullable(),
});

export const StreamsSchema = z.object({ streams: z.array(StreamSchema) });

/** Body of `POST /api/streams/{key}/destinations`. */
export const AddDestinationBodySchema = z.strictObject({
  id: z.string().min(1).max(128),
  platform: z.string().max(64).default("custom"),
  rtmp_url: z.string().min(1).max(2048),
  stream_key: z.string().max(1024).default(""),
  /** Default: `[streaming] engine`. */
  engine: z.enum(ENGINE_NAMES).optional(),
  /** Native engine: the Enhanced RTMP multitrack track ids to send. */
  video_track: z.number().int().min(0).max(255).optional(),
  audio_track: z.number().int().min(0).max(255).optional(),
});

/** Body of `PUT /api/streams/{key}/destinations`: the stream's whole list, ids unique. */
export const ReplaceDestinationsBodySchema = z.strictObject({
  destinations: z.array(AddDestinationBodySchema.extend({ enabled: z.boolean().default(true) })),
}).superRefine((body, context) => {
  const seen = new Set<string>();
  body.destinations.forEach((destination, index) => {
    if (seen.has(destination.id)) {
      context.addIssue({
        code: "custom",
        path: ["destinations", index, "id"],
        message: "duplicate destination id",
      });
    }
    seen.add(destination.id);
  });
});

/**
 * Reply of `PUT /api/streams/{key}/destinations` and `POST …/destinations/refresh`: the new list
 * with statuses (keys redacted) and what happened to each id. `kept` ones were left untouched (same
 * FFmpeg); `restarted` ones had their target or `enabled` changed; `skipped` says why a record of
 * the control plane or config was left out.
 */
export const DestinationChangesSchema = z.object({
  destinations: z.array(ForwardedDestinationSchema),
  added: z.array(z.string()),
  removed: z.array(z.string()),
  restarted: z.array(z.string()),
  kept: z.array(z.string()),
  skipped: z.array(z.string()),
});

/** Reply of `POST /api/streams/{key}/destinations/{id}/enable` and `/disable`. */
export const DestinationEnabledSchema = z.object({ id: z.string(), enabled: z.boolean() });

export const ErrorSchema = z.object({ error: z.string(), field: z.string().optional() });
