/**
 * The read model: what the relay is doing, as one snapshot of plain JSON-ready objects taken from
 * the hub, the relay manager, the RTMP server and the process. The API's read endpoints and
 * `/metrics` render from it (and so will the dashboard and an event stream), so none of them walks
 * manager → relays → supervisors itself. Every stream and destination key in it is redacted.
 *
 * @module
 */

import type { CallStats } from "../control_plane/stream_authority.ts";
import type { LiveStream, StreamHub, StreamState } from "../media/live_stream.ts";
import type { RelayManager } from "../relay/relay_manager.ts";
import type { RelayDestination, RelayDestinationStatus } from "../relay/stream_relay.ts";
import type { RtmpServer } from "../rtmp/server.ts";
import type { RtmpSession } from "../rtmp/session.ts";
import { redactKey, redactRtmpUrl } from "../redact.ts";
import { streamId } from "../stream_id.ts";

/** The parts of the service the read model reads; never changed through it. */
export interface ReadModelSources {
  version: string;
  startedAt: Date;
  hub: Pick<StreamHub, "get" | "live" | "totalStreams">;
  manager: Pick<
    RelayManager,
    "relayFor" | "destinationBytesSent" | "controlPlaneStats" | "pendingStreamEnds"
  >;
  rtmp: Pick<
    RtmpServer,
    "serving" | "sessions" | "totalConnections" | "bytesIn" | "bytesOut"
  >;
  /** The process's memory (tests may replace it); `Deno.memoryUsage` by default. */
  memoryUsage?: () => Pick<Deno.MemoryUsage, "rss" | "heapUsed" | "external">;
}

/** A destination as the API returns it: the reference shape, plus its live status. */
export interface DestinationView {
  id: string;
  platform: string;
  rtmp_url: string;
  stream_key: string;
  status: RelayDestinationStatus;
}

export interface PublisherView {
  remote_address: string;
  encoder: string;
  started_at: string;
  uptime_seconds: number;
  bytes_in: number;
  packets_in: number;
  bitrate_kbps: number;
  video_codec: string | null;
  audio_codec: string | null;
  width: number | null;
  height: number | null;
  fps: number | null;
}

export interface PlayerView {
  remote_address: string;
  bytes_out: number;
  dropped_packets: number;
}

/** A stream in a live period (publishing, or waiting for its publisher to come back). */
export interface StreamView {
  /** The stream's public id (src/stream_id.ts): paths accept it in place of the key. */
  id: string;
  stream_key: string;
  state: StreamState;
  live_since: string | null;
  reconnects: number;
  reconnect_seconds_left: number | null;
  publisher: PublisherView | null;
  players: PlayerView[];
  destinations: DestinationView[];
  /** Why the destinations could not be fetched, while the relay asks again; null otherwise. */
  destinations_error: string | null;
}

export interface Snapshot {
  version: string;
  /** Seconds since the relay started, with fractions (the API rounds down, metrics do not). */
  uptime_seconds: number;
  /** Every stream in a live period. */
  streams: StreamView[];
  /** Streams that went live since start. */
  total_streams: number;
  rtmp: {
    /** Whether the RTMP listener is accepting. */
    serving: boolean;
    connections: number;
    publishers: number;
    players: number;
    total_connections: number;
    bytes_in: number;
    /** Bytes sent to players. */
    bytes_out: number;
  };
  /** Bytes written to destination FFmpeg processes since start, ended streams included. */
  destination_bytes_out: number;
  memory: { rss_bytes: number; heap_used_bytes: number; external_bytes: number };
  /** Control-plane calls by kind; null in static mode. */
  control_plane: Record<string, CallStats> | null;
  /** Stream-end reports waiting for the control plane (in the outbox); null in static mode. */
  stream_ends_pending: number | null;
}

/** Snapshots of the relay; each call reads the sources anew. */
export interface ReadModel {
  snapshot(): Snapshot;
  /** One stream's view, or undefined when `key` is not in a live period. */
  stream(key: string): StreamView | undefined;
}

/** A destination's view: URL without credentials, key redacted (where it is written, too). */
export function describeDestination(
  supervisor: Pick<RelayDestination, "destination" | "status">,
): DestinationView {
  const { rtmpUrl, streamKey } = supervisor.destination;
  return {
    id: supervisor.destination.id,
    platform: supervisor.destination.platform,
    rtmp_url: redactRtmpUrl(rtmpUrl, streamKey),
    stream_key: redactKey(streamKey),
    status: supervisor.status(),
  };
}

function numberOrNull(value: unknown): number | null {
  return typeof value === "number" && Number.isFinite(value) ? value : null;
}

export function createReadModel(sources: ReadModelSources): ReadModel {
  const memoryUsage = sources.memoryUsage ?? Deno.memoryUsage;

  const describeStream = (stream: LiveStream, players: RtmpSession[], now: number): StreamView => {
    const publisher = stream.publisher;
    const relay = sources.manager.relayFor(stream.key);
    return {
      id: streamId(stream.key),
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
          uptime_seconds: Math.floor((now - publisher.startedAt.getTime()) / 1000),
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
      destinations: (relay?.destinations() ?? []).map(describeDestination),
      destinations_error: relay?.destinationsError ?? null,
    };
  };

  /** Players by the key they play. */
  const playersByKey = (sessions: readonly RtmpSession[]): Map<string, RtmpSession[]> => {
    const byKey = new Map<string, RtmpSession[]>();
    for (const session of sessions) {
      if (session.role !== "player" || session.streamKey === undefined) continue;
      const players = byKey.get(session.streamKey) ?? [];
      players.push(session);
      byKey.set(session.streamKey, players);
    }
    return byKey;
  };

  return {
    snapshot(): Snapshot {
      const now = Date.now();
      const { hub, manager, rtmp } = sources;
      const sessions = [...rtmp.sessions];
      const players = playersByKey(sessions);
      const memory = memoryUsage();
      const calls = manager.controlPlaneStats();
      return {
        version: sources.version,
        uptime_seconds: (now - sources.startedAt.getTime()) / 1000,
        streams: hub.live().map((stream) =>
          describeStream(stream, players.get(stream.key) ?? [], now)
        ),
        total_streams: hub.totalStreams,
        rtmp: {
          serving: rtmp.serving,
          connections: sessions.length,
          publishers: sessions.filter((session) => session.role === "publisher").length,
          players: sessions.filter((session) => session.role === "player").length,
          total_connections: rtmp.totalConnections,
          bytes_in: rtmp.bytesIn,
          bytes_out: rtmp.bytesOut,
        },
        destination_bytes_out: manager.destinationBytesSent,
        memory: {
          rss_bytes: memory.rss,
          heap_used_bytes: memory.heapUsed,
          external_bytes: memory.external,
        },
        // Copies: a snapshot must not move when the client counts its next call.
        control_plane: calls === undefined
          ? null
          : Object.fromEntries(Object.entries(calls).map(([call, stats]) => [call, { ...stats }])),
        stream_ends_pending: manager.pendingStreamEnds ?? null,
      };
    },

    stream(key: string): StreamView | undefined {
      const stream = sources.hub.get(key);
      if (stream === undefined || stream.state === "idle") return undefined;
      const sessions = [...sources.rtmp.sessions];
      return describeStream(stream, playersByKey(sessions).get(key) ?? [], Date.now());
    },
  };
}
