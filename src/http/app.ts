/**
 * The HTTP API (Hono). `createApp(deps)` builds the routes; serving them is the caller's job, so
 * tests call `app.request()` without a socket. Stream keys arrive in paths (the caller knows
 * them) but leave only redacted.
 *
 * @module
 */

import { Hono } from "hono";
import type { Context, MiddlewareHandler } from "hono";
import { cors } from "hono/cors";
import type { z } from "zod";
import { validateDestination } from "../control_plane/destination.ts";
import type { LiveStream, StreamHub } from "../media/live_stream.ts";
import type { RelayManager } from "../relay/relay_manager.ts";
import type { RtmpServer } from "../rtmp/server.ts";
import { redactKey, sanitizeUrl } from "../redact.ts";
import { renderMetrics } from "./metrics.ts";
import { AddDestinationBodySchema } from "./schemas.ts";
import { tokensEqual } from "./token.ts";

/** What the API reads and steers; the service provides it. */
export interface AppDeps {
  version: string;
  startedAt: Date;
  hub: StreamHub;
  manager: RelayManager;
  rtmp: Pick<
    RtmpServer,
    "serving" | "sessions" | "totalConnections" | "bytesIn" | "bytesOut"
  >;
  http: {
    allowOrigin: string;
    apiToken?: string;
    allowUnauthenticatedControl: boolean;
  };
}

function destinationsOf(deps: AppDeps, key: string) {
  return (deps.manager.relayFor(key)?.list() ?? []).map((supervisor) => ({
    id: supervisor.destination.id,
    platform: supervisor.destination.platform,
    rtmp_url: sanitizeUrl(supervisor.destination.rtmpUrl),
    stream_key: redactKey(supervisor.destination.streamKey),
    status: supervisor.status(),
  }));
}

function numberOrNull(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

function describeStream(deps: AppDeps, stream: LiveStream) {
  const publisher = stream.publisher;
  const players = [...deps.rtmp.sessions].filter((session) =>
    session.role === "player" && session.streamKey === stream.key
  );
  return {
    stream_key: redactKey(stream.key),
    state: stream.state,
    live_since: stream.liveSince?.toISOString() ?? null,
    reconnects: stream.reconnects,
    reconnect_seconds_left: stream.reconnectSecondsLeft() ?? null,
    publisher: publisher
      ? {
        remote_address: publisher.remoteAddress,
        encoder: publisher.encoder,
        started_at: publisher.startedAt.toISOString(),
        uptime_seconds: Math.floor((Date.now() - publisher.startedAt.getTime()) / 1000),
        bytes_in: stream.bytesIn,
        packets_in: stream.packetsIn,
        bitrate_kbps: Math.round(stream.bitrate.bitsPerSecond() / 1000),
        video_codec: stream.videoCodec ?? null,
        audio_codec: stream.audioCodec ?? null,
        width: numberOrNull(stream.metadata.width),
        height: numberOrNull(stream.metadata.height),
        fps: numberOrNull(stream.metadata.framerate ?? stream.metadata.fps),
      }
      : null,
    players: players.map((session) => ({
      remote_address: session.remoteAddress,
      bytes_out: session.bytesOut,
      dropped_packets: session.droppedPackets,
    })),
    destinations: destinationsOf(deps, stream.key),
  };
}

/** The first problem of a failed zod parse, as the API reports it. */
function badRequest(c: Context, error: z.ZodError) {
  const issue = error.issues[0]!;
  const field = issue.path.map(String).join(".") ||
    (issue.code === "unrecognized_keys" ? issue.keys.join(",") : "(body)");
  return c.json({ error: `invalid field ${field}: ${issue.message}`, field }, 400);
}

export function createApp(deps: AppDeps): Hono {
  const app = new Hono();
  const { apiToken, allowUnauthenticatedControl } = deps.http;
  app.use("*", cors({ origin: deps.http.allowOrigin }));

  /** With a token configured, everything but /health needs it. */
  const requireToken: MiddlewareHandler = async (c, next) => {
    if (apiToken === undefined || c.req.path === "/health") return await next();
    const header = c.req.header("authorization") ?? "";
    const presented = header.startsWith("Bearer ") ? header.slice(7) : "";
    if (!(await tokensEqual(presented, apiToken))) {
      c.header("WWW-Authenticate", 'Bearer realm="neustream"');
      return c.json({ error: "missing or wrong bearer token" }, 401);
    }
    return await next();
  };
  app.use("*", requireToken);

  /** Control endpoints change what streamers see: never open by accident. */
  const control: MiddlewareHandler = async (c, next) => {
    if (apiToken === undefined && !allowUnauthenticatedControl) {
      return c.json({
        error:
          "control endpoints are disabled: set [http] api_token, or allow_unauthenticated_control = true",
      }, 403);
    }
    return await next();
  };

  const liveStream = (key: string) => {
    const stream = deps.hub.get(key);
    return stream !== undefined && stream.state !== "idle" ? stream : undefined;
  };
  const notLive = (c: Context) => c.json({ error: "stream not live" }, 404);

  app.get("/health", (c) => {
    const serving = deps.rtmp.serving;
    return c.json({
      status: serving ? "ok" : "unavailable",
      version: deps.version,
      uptime_seconds: Math.floor((Date.now() - deps.startedAt.getTime()) / 1000),
      active_streams: deps.hub.live().length,
      ...(serving ? {} : { reason: "RTMP listener is not serving" }),
    }, serving ? 200 : 503);
  });

  app.get("/stats", (c) => {
    const memory = Deno.memoryUsage();
    const supervisors = deps.manager.relays().flatMap((relay) => relay.list());
    return c.json({
      active_streams: deps.hub.live().map((stream) => redactKey(stream.key)),
      total_streams: deps.hub.totalStreams,
      connections: deps.rtmp.sessions.size,
      total_connections: deps.rtmp.totalConnections,
      bytes_in: deps.rtmp.bytesIn,
      bytes_out: deps.rtmp.bytesOut + deps.manager.destinationBytesSent,
      destinations: supervisors.length,
      ffmpeg_processes: supervisors.filter((supervisor) => supervisor.status().pid !== null).length,
      memory: {
        rss_bytes: memory.rss,
        heap_used_bytes: memory.heapUsed,
        external_bytes: memory.external,
      },
      uptime_seconds: Math.floor((Date.now() - deps.startedAt.getTime()) / 1000),
    });
  });

  app.get("/metrics", (c) => {
    c.header("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    return c.body(renderMetrics(deps));
  });

  app.get("/api/streams", (c) => {
    return c.json({ streams: deps.hub.live().map((stream) => describeStream(deps, stream)) });
  });

  app.get("/api/streams/forwarding/:key", (c) => {
    const key = c.req.param("key");
    if (!liveStream(key)) return notLive(c);
    return c.json({ destinations: destinationsOf(deps, key) });
  });

  app.delete("/api/streams/:key", control, (c) => {
    const key = c.req.param("key");
    const stream = liveStream(key);
    if (stream === undefined) return notLive(c);
    // No reconnect window: the publisher is told and disconnected, the stream ends now.
    deps.hub.end(stream, "ended through the HTTP API");
    return c.json({ stream_key: redactKey(key), ended: true });
  });

  app.post("/api/streams/:key/destinations", control, async (c) => {
    const key = c.req.param("key");
    const relay = liveStream(key) ? deps.manager.relayFor(key) : undefined;
    if (relay === undefined) return notLive(c);
    let raw: unknown;
    try {
      raw = await c.req.json();
    } catch {
      return c.json({ error: "body is not JSON", field: "(body)" }, 400);
    }
    const body = AddDestinationBodySchema.safeParse(raw);
    if (!body.success) return badRequest(c, body.error);
    let destination;
    try {
      destination = validateDestination({ ...body.data, enabled: true });
    } catch (error) {
      return c.json({ error: (error as Error).message, field: "rtmp_url" }, 400);
    }
    try {
      const supervisor = relay.add(destination);
      return c.json({
        id: destination.id,
        platform: destination.platform,
        rtmp_url: sanitizeUrl(destination.rtmpUrl),
        stream_key: redactKey(destination.streamKey),
        status: supervisor.status(),
      }, 201);
    } catch (error) {
      return c.json({ error: (error as Error).message }, 409);
    }
  });

  app.delete("/api/streams/:key/destinations/:id", control, async (c) => {
    const relay = liveStream(c.req.param("key"))
      ? deps.manager.relayFor(c.req.param("key"))
      : undefined;
    if (relay === undefined) return notLive(c);
    const removed = await relay.remove(c.req.param("id"));
    if (!removed) return c.json({ error: "no such destination" }, 404);
    return c.json({ id: c.req.param("id"), removed: true });
  });

  app.post("/api/streams/:key/destinations/:id/restart", control, async (c) => {
    const relay = liveStream(c.req.param("key"))
      ? deps.manager.relayFor(c.req.param("key"))
      : undefined;
    const supervisor = relay?.get(c.req.param("id"));
    if (supervisor === undefined) {
      return c.json({ error: "no such destination on a live stream" }, 404);
    }
    await supervisor.restart();
    return c.json({ id: supervisor.destination.id, restarted: true });
  });

  app.notFound((c) => c.json({ error: "not found" }, 404));
  return app;
}
