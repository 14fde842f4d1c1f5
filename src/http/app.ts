/**
 * The HTTP API (Hono). `createApp(deps)` builds the routes; serving them is the caller's job, so
 * tests call `app.request()` without a socket.
 *
 * @module
 */

import { Hono } from "hono";
import { cors } from "hono/cors";
import type { LiveStream, StreamHub } from "../media/live_stream.ts";
import type { RelayManager } from "../relay/relay_manager.ts";
import type { RtmpSession } from "../rtmp/session.ts";
import { redactKey } from "../redact.ts";

/** What the API reads; the service provides it. */
export interface AppDeps {
  version: string;
  startedAt: Date;
  hub: StreamHub;
  manager: RelayManager;
  rtmp: {
    readonly serving: boolean;
    readonly sessions: ReadonlySet<RtmpSession>;
    totalConnections: number;
  };
  allowOrigin: string;
}

function publisherOf(deps: AppDeps, stream: LiveStream): RtmpSession | undefined {
  const sessionId = stream.publisher?.sessionId;
  for (const session of deps.rtmp.sessions) if (session.id === sessionId) return session;
  return undefined;
}

function destinationsOf(deps: AppDeps, key: string) {
  return (deps.manager.relayFor(key)?.list() ?? []).map((supervisor) => {
    const status = supervisor.status();
    return {
      id: status.id,
      platform: status.platform,
      rtmp_url: supervisor.destination.rtmpUrl.replace(/\?.*$/, ""),
      stream_key: redactKey(supervisor.destination.streamKey),
      status,
    };
  });
}

export function createApp(deps: AppDeps): Hono {
  const app = new Hono();
  app.use("*", cors({ origin: deps.allowOrigin }));

  app.get("/health", (c) => {
    const body = {
      status: deps.rtmp.serving ? "ok" : "unavailable",
      version: deps.version,
      uptime_seconds: Math.floor((Date.now() - deps.startedAt.getTime()) / 1000),
      active_streams: deps.hub.live().length,
      ...(deps.rtmp.serving ? {} : { reason: "RTMP listener is not serving" }),
    };
    return c.json(body, deps.rtmp.serving ? 200 : 503);
  });

  app.get("/stats", (c) => {
    const live = deps.hub.live();
    let bytesIn = 0;
    let bytesOut = 0;
    for (const session of deps.rtmp.sessions) {
      bytesIn += session.bytesIn;
      bytesOut += session.bytesOut;
    }
    let destinationBytes = 0;
    for (const relay of deps.manager.relays()) {
      for (const supervisor of relay.list()) destinationBytes += supervisor.status().bytes_sent;
    }
    const memory = Deno.memoryUsage();
    return c.json({
      active_streams: live.map((stream) => redactKey(stream.key)),
      total_streams: deps.hub.totalStreams,
      connections: deps.rtmp.sessions.size,
      total_connections: deps.rtmp.totalConnections,
      bytes_in: bytesIn,
      bytes_out: bytesOut + destinationBytes,
      memory: {
        rss_bytes: memory.rss,
        heap_used_bytes: memory.heapUsed,
        external_bytes: memory.external,
      },
      uptime_seconds: Math.floor((Date.now() - deps.startedAt.getTime()) / 1000),
    });
  });

  app.get("/api/streams", (c) => {
    const streams = deps.hub.live().map((stream) => {
      const publisher = publisherOf(deps, stream);
      const players = [...deps.rtmp.sessions].filter((session) =>
        session.role === "player" && session.streamKey === stream.key
      );
      return {
        stream_key: redactKey(stream.key),
        state: stream.state,
        publisher: stream.publisher && {
          remote_address: stream.publisher.remoteAddress,
          encoder: stream.publisher.encoder,
          started_at: stream.publisher.startedAt.toISOString(),
          uptime_seconds: Math.floor((Date.now() - stream.publisher.startedAt.getTime()) / 1000),
          bytes_in: publisher?.bytesIn ?? stream.bytesIn,
          video_codec: stream.videoCodec ?? null,
          audio_codec: stream.audioCodec ?? null,
          width: stream.metadata.width ?? null,
          height: stream.metadata.height ?? null,
          fps: stream.metadata.framerate ?? stream.metadata.fps ?? null,
        },
        players: players.map((session) => ({
          remote_address: session.remoteAddress,
          bytes_out: session.bytesOut,
          dropped_packets: session.droppedPackets,
        })),
        destinations: destinationsOf(deps, stream.key),
      };
    });
    return c.json({ streams });
  });

  app.get("/api/streams/forwarding/:key", (c) => {
    const key = c.req.param("key");
    const stream = deps.hub.get(key);
    if (stream === undefined || stream.state !== "live") {
      return c.json({ error: "stream not live", stream_key: redactKey(key) }, 404);
    }
    return c.json({ destinations: destinationsOf(deps, key) });
  });

  app.notFound((c) => c.json({ error: "not found" }, 404));
  return app;
}
