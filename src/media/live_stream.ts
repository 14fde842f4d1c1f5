/**
 * Live streams and the hub that keys them. A `LiveStream` has at most one publisher and any number
 * of subscribers (players, destination relays). The publisher's packets reach every subscriber
 * synchronously and in order; a subscriber that must wait (a socket, a pipe) puts them in its own
 * bounded `MediaQueue`, so no reader can slow the publisher or another reader.
 *
 * @module
 */

import { inspectAudio, inspectVideo, type MediaPacket, TagType } from "./flv.ts";
import { GopCache } from "./gop_cache.ts";
import { RateMeter } from "./rate_meter.ts";

/** A reader of a live stream. Its methods are called synchronously and must not block. */
export interface StreamSubscriber {
  /** One packet of the stream, in publish order. */
  onPacket(packet: MediaPacket): void;
  /** The stream ended (the publisher left or was stopped). The subscriber is already removed. */
  onEnd(reason: string): void;
}

/** Who publishes a stream, as the API reports it. */
export interface PublisherInfo {
  readonly sessionId: number;
  readonly remoteAddress: string;
  readonly encoder: string;
  readonly startedAt: Date;
}

/** Where a stream is in its life. */
export type StreamState = "idle" | "authorizing" | "live";

interface SubscriberState {
  /** False until the reader has had a keyframe (or the stream has no video). */
  started: boolean;
}

export class LiveStream {
  readonly key: string;
  readonly gop: GopCache;
  readonly #useGopCache: boolean;
  #state: StreamState = "idle";
  #publisher: PublisherInfo | undefined;
  #subscribers = new Map<StreamSubscriber, SubscriberState>();
  #sawVideo = false;
  bytesIn = 0;
  packetsIn = 0;
  readonly bitrate = new RateMeter();
  videoCodec: string | undefined;
  audioCodec: string | undefined;
  /** The most recent metadata values (width, height, framerate...) for status reports. */
  metadata: Record<string, unknown> = {};

  constructor(key: string, options: { gopCache: boolean; gopCacheMaxBytes: number }) {
    this.key = key;
    this.#useGopCache = options.gopCache;
    this.gop = new GopCache(options.gopCacheMaxBytes);
  }

  get state(): StreamState {
    return this.#state;
  }

  get publisher(): PublisherInfo | undefined {
    return this.#publisher;
  }

  get subscriberCount(): number {
    return this.#subscribers.size;
  }

  /** Marks the stream as claimed by a publisher whose key is being checked. */
  beginAuthorization(): void {
    if (this.#state !== "idle") throw new Error(`stream is ${this.#state}, cannot authorize`);
    this.#state = "authorizing";
  }

  /** Returns a refused claim to idle. */
  abandonAuthorization(): void {
    if (this.#state === "authorizing") this.#state = "idle";
  }

  /** The publisher was accepted: packets may flow. */
  goLive(publisher: PublisherInfo): void {
    this.#state = "live";
    this.#publisher = publisher;
  }

  /** Passes one packet to the cache and every subscriber. */
  write(packet: MediaPacket): void {
    this.bytesIn += packet.payload.length;
    this.packetsIn++;
    this.bitrate.add(packet.payload.length);
    if (packet.type === TagType.Video) this.#sawVideo = true;
    if (packet.sequenceHeader) {
      // Codec names for status reports, read once per configuration change.
      if (packet.type === TagType.Video) this.videoCodec = inspectVideo(packet.payload).codec;
      else this.audioCodec = inspectAudio(packet.payload).codec;
    }
    this.gop.push(packet);
    for (const [subscriber, state] of this.#subscribers) {
      if (!state.started) {
        if (packet.keyframe || (!this.#sawVideo && !packet.sequenceHeader)) state.started = true;
        else if (!packet.sequenceHeader && packet.type !== TagType.Script) continue;
      }
      subscriber.onPacket(packet);
    }
  }

  /**
   * Adds a reader. When the stream is live it first gets the headers and, with the GOP cache on,
   * the frames since the last keyframe; otherwise it waits for the next keyframe.
   */
  subscribe(subscriber: StreamSubscriber): void {
    const state: SubscriberState = { started: false };
    if (this.#state === "live") {
      const replay = this.#useGopCache ? this.gop.snapshot() : this.gop.headers();
      for (const packet of replay) {
        if (packet.keyframe) state.started = true;
        subscriber.onPacket(packet);
      }
    }
    this.#subscribers.set(subscriber, state);
  }

  unsubscribe(subscriber: StreamSubscriber): void {
    this.#subscribers.delete(subscriber);
  }

  /** Ends the live period: subscribers are told and removed, the cache is cleared. */
  end(reason: string): void {
    const subscribers = [...this.#subscribers.keys()];
    this.#subscribers.clear();
    this.#state = "idle";
    this.#publisher = undefined;
    this.gop.clear();
    this.#sawVideo = false;
    this.bytesIn = 0;
    this.packetsIn = 0;
    this.videoCodec = undefined;
    this.audioCodec = undefined;
    this.metadata = {};
    for (const subscriber of subscribers) subscriber.onEnd(reason);
  }
}

/** Lifecycle events of the hub, for the relay and the control plane. */
export interface StreamHubListener {
  onLive?(stream: LiveStream): void;
  onEnded?(stream: LiveStream, reason: string): void;
}

/** Every stream by key. One publisher per key. */
export class StreamHub {
  readonly #options: { gopCache: boolean; gopCacheMaxBytes: number };
  #streams = new Map<string, LiveStream>();
  #listeners: StreamHubListener[] = [];
  totalStreams = 0;

  constructor(options: { gopCache: boolean; gopCacheMaxBytes: number }) {
    this.#options = options;
  }

  addListener(listener: StreamHubListener): void {
    this.#listeners.push(listener);
  }

  get(key: string): LiveStream | undefined {
    return this.#streams.get(key);
  }

  /** Streams with a live publisher. */
  live(): LiveStream[] {
    return [...this.#streams.values()].filter((stream) => stream.state === "live");
  }

  /** The stream for `key`, created idle if needed (players may wait for a publisher). */
  open(key: string): LiveStream {
    let stream = this.#streams.get(key);
    if (stream === undefined) {
      stream = new LiveStream(key, this.#options);
      this.#streams.set(key, stream);
    }
    return stream;
  }

  /**
   * Claims `key` for a publisher about to be authorized. Returns undefined when another publisher
   * holds it (live or being authorized).
   */
  claim(key: string): LiveStream | undefined {
    const stream = this.open(key);
    if (stream.state !== "idle") return undefined;
    stream.beginAuthorization();
    return stream;
  }

  /** Gives back a claim that was refused. */
  release(stream: LiveStream): void {
    stream.abandonAuthorization();
    this.#forgetIfUnused(stream);
  }

  goLive(stream: LiveStream, publisher: PublisherInfo): void {
    stream.goLive(publisher);
    this.totalStreams++;
    for (const listener of this.#listeners) listener.onLive?.(stream);
  }

  /** Ends a live stream: subscribers told, listeners told, the key free again. */
  end(stream: LiveStream, reason: string): void {
    if (stream.state !== "live") {
      this.release(stream);
      return;
    }
    stream.end(reason);
    this.#forgetIfUnused(stream);
    for (const listener of this.#listeners) listener.onEnded?.(stream, reason);
  }

  /** Removes a waiting subscriber, and the stream with it when nothing else uses it. */
  unsubscribe(stream: LiveStream, subscriber: StreamSubscriber): void {
    stream.unsubscribe(subscriber);
    this.#forgetIfUnused(stream);
  }

  #forgetIfUnused(stream: LiveStream): void {
    if (
      stream.state === "idle" && stream.subscriberCount === 0 &&
      this.#streams.get(stream.key) === stream
    ) {
      this.#streams.delete(stream.key);
    }
  }
}
