/**
 * An RTMP ingest standing for a platform that fingerprints every media packet it receives, per
 * key and track, so that "nothing lost" is checked packet by packet against what a publisher
 * sent; and the fingerprints themselves.
 *
 * @module
 */

import type { MediaPacket } from "../../src/media/flv.ts";
import { StreamHub } from "../../src/media/live_stream.ts";
import { RtmpServer } from "../../src/rtmp/server.ts";
import { waitFor } from "./process.ts";

/** FNV-1a over the payload: cheap enough to fingerprint hundreds of Mbit/s in the test process. */
export function fingerprint(packet: MediaPacket): string {
  let hash = 0x811c9dc5;
  const bytes = packet.payload;
  for (let i = 0; i < bytes.length; i++) {
    hash ^= bytes[i]!;
    hash = Math.imul(hash, 0x01000193);
  }
  return `${bytes.length}:${(hash >>> 0).toString(16)}`;
}

/** Audio and video media packets (not sequence headers or metadata), each track on its own. */
export class TrackLog {
  readonly audio: string[] = [];
  readonly video: string[] = [];

  add(packet: MediaPacket): void {
    if (packet.sequenceHeader || packet.type === 18) return;
    // FFmpeg's FLV muxer closes a stream with an AVC end-of-sequence tag: framing, not media.
    if (packet.type === 9 && (packet.payload[0]! & 0x0f) === 7 && packet.payload[1] === 2) return;
    (packet.type === 8 ? this.audio : this.video).push(fingerprint(packet));
  }

  get count(): number {
    return this.audio.length + this.video.length;
  }
}

/** Waits until each sink has read the publish of its key to the end (`RecordingSink.ended`). */
export async function readToEnd(
  deliveries: readonly (readonly [RecordingSink, string])[],
  timeoutMs = 30_000,
): Promise<void> {
  await waitFor(
    () => deliveries.every(([sink, key]) => sink.ended(key)),
    "every sink to read its streams to the end",
    timeoutMs,
  );
}

/** An RTMP ingest standing for a platform: accepts any key, fingerprints what arrives. */
export class RecordingSink implements AsyncDisposable {
  readonly port: number;
  /** Per key, what the latest publish session of that key delivered. */
  readonly received = new Map<string, TrackLog>();
  /** Per key, why the latest publish session of that key ended (the sink's own words). */
  readonly #endReasons = new Map<string, string>();
  #hub: StreamHub;
  #server: RtmpServer;
  /** Keys this sink refuses, like a platform rejecting a wrong stream key. */
  refuse = new Set<string>();

  /**
   * `port` 0 picks a free one. `pingIntervalMs` is how often the sink pings its publishers (30 s,
   * as a platform might); below 100 ms it pings every 100 ms, its session timer's shortest tick,
   * so that a ping arrives at every moment of a publisher's life, its last one included.
   */
  constructor(options: { port?: number; pingIntervalMs?: number } = {}) {
    const { port = 0, pingIntervalMs = 30_000 } = options;
    this.#hub = new StreamHub({ gopCache: false, gopCacheMaxBytes: 0 });
    this.#server = new RtmpServer(
      {
        hostname: "127.0.0.1",
        port,
        app: "live",
        chunkSize: 4096,
        maxMessageSize: 16 * 1024 * 1024,
        pingIntervalMs,
        pingTimeoutMs: 60_000,
        handshakeTimeoutMs: 10_000,
        playerQueueBytes: 4 * 1024 * 1024,
      },
      this.#hub,
      (request) =>
        Promise.resolve(
          this.refuse.has(request.key)
            ? { allowed: false, reason: "wrong stream key" }
            : { allowed: true },
        ),
    );
    this.port = this.#server.port;
    this.#hub.addListener({
      onLive: (stream) => {
        const log = new TrackLog();
        this.received.set(stream.key, log);
        this.#endReasons.delete(stream.key);
        stream.subscribe({
          onPacket: (packet) => log.add(packet),
          onEnd: (reason) => {
            if (this.received.get(stream.key) === log) this.#endReasons.set(stream.key, reason);
          },
        });
      },
    });
  }

  get url(): string {
    return `rtmp://127.0.0.1:${this.port}/live`;
  }

  /**
   * Whether the latest publish of `key` was read to its end. A publisher (a destination's FFmpeg)
   * that has exited may still have its last packets in this sink's socket, unread while the test
   * process was busy: compare what a sink received only once this holds.
   */
  ended(key: string): boolean {
    return this.#endReasons.has(key);
  }

  /**
   * How the latest publish of `key` ended, as this sink saw it: "publisher sent deleteStream" once
   * the publisher said it was done, a reset or a close otherwise.
   */
  endReason(key: string): string | undefined {
    return this.#endReasons.get(key);
  }

  async close(): Promise<void> {
    await this.#server.close("sink stopped");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
