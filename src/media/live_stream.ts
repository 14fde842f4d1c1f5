/**
 * Live streams and the hub that keys them. A `LiveStream` has at most one publisher and any number
 * of subscribers (players, destination relays). The publisher's packets reach every subscriber
 * synchronously and in order; a subscriber that must wait (a socket, a pipe) puts them in its own
 * bounded `MediaQueue`, so no reader can slow the publisher or another reader.
 *
 * A stream outlives its publisher's connection by the reconnect grace window: when the same key
 * publishes again within it, the new connection takes the stream over and its timestamps are
 * rebased to continue where the old ones stopped, so subscribers never see a break in the stream
 * other than the real time that passed. Where they stopped and where they resume are read from
 * audio and video frames only: encoders stamp metadata and sequence headers apart from their
 * media (FFmpeg stamps them 0 when its media starts hours in, with `-copyts` or
 * `-output_ts_offset`).
 *
 * The returning encoder may open with another configuration (a track added or removed, another
 * codec, a new sequence header). Its opening headers are held until its first frame shows what it
 * sends; when that differs, readers are told before the new headers reach them
 * (`onConfigurationChange`), and the GOP cache forgets the old configuration, so a reader joining
 * afterwards gets the new stream only.
 *
 * @module
 */

import { type MediaPacket, TagType } from "./flv.ts";
import { GopCache } from "./gop_cache.ts";
import { RateMeter } from "./rate_meter.ts";
import {
  compareConfigurations,
  type ConfigurationChange,
  openingConfiguration,
  type StreamConfiguration,
  withPacket,
} from "./stream_configuration.ts";
import { log } from "../log.ts";
import { streamFields } from "../stream_id.ts";

const mediaLog = log("media");

/** A reader of a live stream. Its methods are called synchronously and must not block. */
export interface StreamSubscriber {
  /**
   * One packet of the stream, in publish order. `now` is when it arrived (`performance.now()`),
   * read once for all readers: a clock read per packet per reader cost more than the rest of
   * the hand-over.
   */
  onPacket(packet: MediaPacket, now: number): void;
  /** The stream ended (the publisher left for good or was stopped). Already unsubscribed. */
  onEnd(reason: string): void;
  /**
   * A returning publisher sends another configuration: called before its first packet (its new
   * metadata and sequence headers come next, through `onPacket`). A reader that cannot follow
   * the change in place starts over from here.
   */
  onConfigurationChange?(change: ConfigurationChange): void;
}

/** Whether `bytes` is a view into a larger buffer (a payload cut from a slab). */
function isPartOfLarger(bytes: Uint8Array): boolean {
  return bytes.byteLength !== bytes.buffer.byteLength;
}

/** Who publishes a stream. `detach` ends that connection's hold on the stream, not the stream. */
export interface PublisherInfo {
  readonly sessionId: number;
  readonly remoteAddress: string;
  readonly encoder: string;
  readonly startedAt: Date;
  /** Whether the authority asked for this publish to be relayed to its destinations. */
  readonly forward?: boolean;
  /** Tells the connection it no longer publishes (it closes); the hub decides what the stream does. */
  detach(reason: string): void;
}

/**
 * Where a stream is in its life: no publisher (`idle`), publishing (`live`), or waiting for its
 * publisher to come back (`reconnecting`).
 */
export type StreamState = "idle" | "live" | "reconnecting";

interface SubscriberState {
  /** False until the reader has had a keyframe (or the stream has no video). */
  started: boolean;
}

const TIMESTAMP_MODULUS = 2 ** 32;
const HALF_TIMESTAMP_RANGE = 2 ** 31;
/**
 * How far ahead of the last frame a resumed publisher's header or data may be stamped and be
 * believed. An encoder sends them in timestamp order with its frames (a caption right after the
 * frame it belongs to), so they lead the last frame by a frame interval at most; one further
 * ahead, or behind, was stamped apart from the media (FFmpeg: 0 whatever the media's timestamps).
 * A window rather than "after the last frame": timestamps wrap at 2^32, so a 0 is "after" a
 * camera's clock past 2^31 ms.
 */
const MAX_DATA_LEAD_MS = 10_000;
/** Opening headers held on a resume before deciding anyway (an encoder sending nothing else). */
const MAX_OPENING_HEADERS = 8;

/**
 * Whether timestamp `a` comes after `b`. RTMP timestamps wrap at 2^32 ms, so the nearer way
 * round decides: a camera stamping from its clock may be anywhere in the range.
 */
function isAfter(a: number, b: number): boolean {
  const ahead = (a - b) >>> 0;
  return ahead !== 0 && ahead < HALF_TIMESTAMP_RANGE;
}

export class LiveStream {
  readonly key: string;
  readonly gop: GopCache;
  readonly #useGopCache: boolean;
  #state: StreamState = "idle";
  /** A publish of this key is being authorised (at most one at a time). */
  authorizing = false;
  #publisher: PublisherInfo | undefined;
  #subscribers = new Map<StreamSubscriber, SubscriberState>();
  #sawVideo = false;
  #liveSince: Date | undefined;
  /** The current publisher continues a stream: its timestamps are moved onto the stream's. */
  #resumed = false;
  /** Added to the current publisher's timestamps (mod 2^32), once its first frame set it. */
  #timestampOffset = 0;
  /** On takeover: where the new publisher's first frame must land; cleared once it has. */
  #resumeAt: number | undefined;
  /**
   * The latest audio or video frame timestamp sent (the highest: audio and video interleave).
   * Headers and data do not count: encoders stamp them apart from the media, often at 0.
   */
  #lastFrameTimestamp: number | undefined;
  #lastWriteAt = 0;
  #reconnectDeadline: number | undefined;
  /** Tracks, codecs and sequence headers of what readers have been sent. */
  #configuration: StreamConfiguration = {};
  /** After a resume: the new publisher's headers, held until its first frame (see `write`). */
  #opening: MediaPacket[] | undefined;
  bytesIn = 0;
  packetsIn = 0;
  reconnects = 0;
  readonly bitrate = new RateMeter();
  /** "avc1", "hvc1", "mp3"…: the stream's configuration says, headers or first frames alike. */
  get videoCodec(): string | undefined {
    return this.#configuration.video?.codec;
  }

  get audioCodec(): string | undefined {
    return this.#configuration.audio?.codec;
  }
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

  /** When the live period began (the first publisher), across reconnects. */
  get liveSince(): Date | undefined {
    return this.#liveSince;
  }

  /** What the stream carries now (tracks, codecs, sequence headers). */
  get configuration(): StreamConfiguration {
    return this.#configuration;
  }

  /** Milliseconds since the publisher last sent media (or went live). */
  idleMs(now = performance.now()): number {
    return now - this.#lastWriteAt;
  }

  /** Seconds left in the reconnect window, or undefined when not reconnecting. */
  reconnectSecondsLeft(now = performance.now()): number | undefined {
    if (this.#reconnectDeadline === undefined) return undefined;
    return Math.max(0, (this.#reconnectDeadline - now) / 1000);
  }

  /** Starts a live period with its first publisher. */
  goLive(publisher: PublisherInfo): void {
    this.#state = "live";
    this.#publisher = publisher;
    this.#liveSince = new Date();
    this.#resumed = false;
    this.#timestampOffset = 0;
    this.#resumeAt = undefined;
    this.#lastWriteAt = performance.now();
  }

  /** The publisher is gone; the stream waits for it until `deadline` (performance.now() ms). */
  suspend(deadline: number): void {
    this.#state = "reconnecting";
    this.#publisher = undefined;
    this.#reconnectDeadline = deadline;
  }

  /**
   * A new connection continues the stream (after a drop, or taking over from a stalled one). Its
   * first frame will be placed after the last one sent, by the real time that has passed.
   */
  resume(publisher: PublisherInfo): void {
    const now = performance.now();
    this.#resumeAt = ((this.#lastFrameTimestamp ?? 0) +
      Math.max(1, Math.round(now - this.#lastWriteAt))) % TIMESTAMP_MODULUS;
    this.#resumed = true;
    this.#state = "live";
    this.#publisher = publisher;
    this.#reconnectDeadline = undefined;
    this.#lastWriteAt = now;
    this.#opening = [];
    this.reconnects++;
  }

  /**
   * Passes one packet to the cache and every subscriber, on the stream's own timeline. `now` is
   * when it arrived (`performance.now()`), when the caller has read the clock already.
   */
  write(packet: MediaPacket, now: number = performance.now()): void {
    const header = packet.sequenceHeader || packet.type === TagType.Script;
    if (header && isPartOfLarger(packet.payload)) {
      // Kept for the stream's life (GOP cache, configuration): a payload cut from the decoder's
      // slab would keep the whole slab alive with it.
      packet = { ...packet, payload: packet.payload.slice() };
    }
    if (this.#resumed) packet = this.#onStreamTimeline(packet, header);
    if (!header) {
      const last = this.#lastFrameTimestamp;
      if (last === undefined || isAfter(packet.timestamp, last)) {
        this.#lastFrameTimestamp = packet.timestamp;
      }
    }
    this.#lastWriteAt = now;
    this.bytesIn += packet.payload.length;
    this.packetsIn++;
    this.bitrate.add(packet.payload.length, now);
    const opening = this.#opening;
    if (opening !== undefined) {
      // A returning publisher: its headers alone do not say whether a track went away, its
      // first frame (after every header, as OBS and FFmpeg send them) does.
      if (header && opening.length < MAX_OPENING_HEADERS) {
        opening.push(packet);
        return;
      }
      this.#opening = undefined;
      this.#adoptOpening(opening, packet);
      for (const held of opening) this.#deliver(held, now);
    }
    this.#deliver(packet, now);
  }

  /**
   * A resumed publisher's packet, moved onto the stream's timeline. Its first audio or video frame
   * lands at `#resumeAt` and sets the offset for the rest; headers and data never decide it (FFmpeg
   * stamps them 0 whatever its media's timestamps), and never go out stamped before the last frame
   * sent: shifted by the media's offset, a 0 would land hours back, or wrap to weeks ahead (see
   * `MAX_DATA_LEAD_MS`). Those that come before the first frame (held, then sent just ahead of it)
   * get the first frame's timestamp.
   */
  #onStreamTimeline(packet: MediaPacket, header: boolean): MediaPacket {
    let timestamp: number;
    const resumeAt = this.#resumeAt;
    if (resumeAt !== undefined) {
      timestamp = resumeAt;
      if (!header) {
        this.#timestampOffset = (resumeAt - packet.timestamp + TIMESTAMP_MODULUS) %
          TIMESTAMP_MODULUS;
        this.#resumeAt = undefined;
        // Once a resume: what to compare with a destination's timestamps if it reports a jump.
        mediaLog.info("the returning publisher's first frame ({from} ms) continues at {at} ms", {
          ...streamFields(this.key),
          from: packet.timestamp,
          at: resumeAt,
        });
      }
    } else {
      timestamp = (packet.timestamp + this.#timestampOffset) % TIMESTAMP_MODULUS;
      const lastFrame = this.#lastFrameTimestamp!; // set by the frame that cleared `#resumeAt`
      if (header && ((timestamp - lastFrame) >>> 0) > MAX_DATA_LEAD_MS) timestamp = lastFrame;
    }
    return timestamp === packet.timestamp ? packet : { ...packet, timestamp };
  }

  /**
   * Compares what the returning publisher opens with to what readers have: on a difference, the
   * old headers and frames leave the GOP cache and every reader is told, before any new packet.
   */
  #adoptOpening(opening: MediaPacket[], first: MediaPacket): void {
    const sentMetadata = opening.some((packet) => packet.type === TagType.Script);
    const after = openingConfiguration(sentMetadata ? this.metadata : undefined, [
      ...opening,
      first,
    ]);
    const change = compareConfigurations(this.#configuration, after);
    if (change === undefined) return;
    this.#configuration = after;
    this.gop.clear();
    this.#sawVideo = after.video !== undefined;
    if (!sentMetadata) this.metadata = {};
    mediaLog.info("the returning publisher changed the stream: {change}", {
      ...streamFields(this.key),
      change: change.description,
    });
    for (const subscriber of [...this.#subscribers.keys()]) {
      subscriber.onConfigurationChange?.(change);
    }
  }

  /** Passes one packet to the GOP cache and every subscriber. */
  #deliver(packet: MediaPacket, now: number): void {
    this.#configuration = withPacket(this.#configuration, packet);
    if (packet.type === TagType.Video) this.#sawVideo = true;
    this.gop.push(packet);
    for (const [subscriber, state] of this.#subscribers) {
      if (!state.started) {
        if (packet.keyframe || (!this.#sawVideo && !packet.sequenceHeader)) state.started = true;
        else if (!packet.sequenceHeader && packet.type !== TagType.Script) continue;
      }
      subscriber.onPacket(packet, now);
    }
  }

  /**
   * Adds a reader. When the stream is live it first gets the headers and, with the GOP cache on,
   * the frames since the last keyframe; otherwise it waits for the next keyframe.
   */
  subscribe(subscriber: StreamSubscriber): void {
    const state: SubscriberState = { started: false };
    if (this.#state !== "idle") {
      const replay = this.#useGopCache ? this.gop.snapshot() : this.gop.headers();
      const now = performance.now();
      for (const packet of replay) {
        if (packet.keyframe) state.started = true;
        subscriber.onPacket(packet, now);
      }
    }
    this.#subscribers.set(subscriber, state);
  }

  unsubscribe(subscriber: StreamSubscriber): void {
    this.#subscribers.delete(subscriber);
  }

  /** Ends the live period: subscribers are told and removed, everything is reset. */
  end(reason: string): void {
    const subscribers = [...this.#subscribers.keys()];
    this.#subscribers.clear();
    this.#state = "idle";
    this.#publisher = undefined;
    this.#reconnectDeadline = undefined;
    this.#liveSince = undefined;
    this.#resumed = false;
    this.#timestampOffset = 0;
    this.#resumeAt = undefined;
    this.#lastFrameTimestamp = undefined;
    this.#configuration = {};
    this.#opening = undefined;
    this.gop.clear();
    this.#sawVideo = false;
    this.bytesIn = 0;
    this.packetsIn = 0;
    this.reconnects = 0;
    this.metadata = {};
    for (const subscriber of subscribers) subscriber.onEnd(reason);
  }
}

/** Lifecycle events of the hub, for the relay and the control plane. */
export interface StreamHubListener {
  /** A live period began (not called when a publisher resumes within the window). */
  onLive?(stream: LiveStream): void;
  /**
   * A new connection continues the live period (a reconnect within the window, or a takeover);
   * `stream.publisher` is the new one, with its own authorisation.
   */
  onResumed?(stream: LiveStream): void;
  /** A live period ended: the publisher left for good, or the stream was stopped. */
  onEnded?(stream: LiveStream, reason: string): void;
}

export interface StreamHubOptions {
  gopCache: boolean;
  gopCacheMaxBytes: number;
  /** How long a stream waits for its publisher to come back (0: it ends at once). */
  reconnectGraceMs?: number;
  /** A live publisher silent this long may be replaced by a new connection for its key. */
  publisherIdleMs?: number;
}

/** How a publish of a key relates to the stream already there. */
export type ClaimKind = "new" | "resume" | "takeover";

/** A key reserved for a publisher being authorised. */
export interface Claim {
  readonly stream: LiveStream;
  readonly kind: ClaimKind;
}

/** Every stream by key. One publisher per key. */
export class StreamHub {
  readonly #options: Required<StreamHubOptions>;
  #streams = new Map<string, LiveStream>();
  #listeners: StreamHubListener[] = [];
  #reconnectTimers = new Map<LiveStream, ReturnType<typeof setTimeout>>();
  /**
   * Streams whose reconnect window closed while a returning publisher, which came within it, was
   * being authorised, with the reason they end for if it does not take the stream after all.
   */
  #windowClosed = new Map<LiveStream, string>();
  totalStreams = 0;

  constructor(options: StreamHubOptions) {
    this.#options = { reconnectGraceMs: 0, publisherIdleMs: 5_000, ...options };
  }

  /** What the hub holds, for leak checks: streams (idle ones with players included), timers. */
  get diagnostics(): { streams: number; reconnectTimers: number } {
    return { streams: this.#streams.size, reconnectTimers: this.#reconnectTimers.size };
  }

  addListener(listener: StreamHubListener): void {
    this.#listeners.push(listener);
  }

  get(key: string): LiveStream | undefined {
    return this.#streams.get(key);
  }

  /** Streams in a live period: publishing, or waiting for their publisher to come back. */
  live(): LiveStream[] {
    return [...this.#streams.values()].filter((stream) => stream.state !== "idle");
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
   * Reserves `key` for a publisher about to be authorised, or says why not: another publish is
   * being authorised, or the current publisher is still sending.
   */
  claim(key: string): Claim | { refused: string } {
    const stream = this.open(key);
    if (stream.authorizing) return { refused: "another publish of this key is being authorised" };
    let kind: ClaimKind;
    if (stream.state === "idle") kind = "new";
    else if (stream.state === "reconnecting") kind = "resume";
    else if (stream.idleMs() >= this.#options.publisherIdleMs) kind = "takeover";
    else return { refused: "stream key already publishing" };
    stream.authorizing = true;
    return { stream, kind };
  }

  /** The claimed publish was authorised: the stream is this publisher's now. */
  accept(claim: Claim, publisher: PublisherInfo): void {
    const { stream, kind } = claim;
    stream.authorizing = false;
    this.#windowClosed.delete(stream); // it came within the window: the stream continues
    if (kind === "new" || stream.state === "idle") {
      // "idle" here: the stream ended while we asked; this publish starts a new live period.
      stream.goLive(publisher);
      this.totalStreams++;
      for (const listener of this.#listeners) listener.onLive?.(stream);
      return;
    }
    this.#clearReconnectTimer(stream);
    stream.publisher?.detach("taken over by a new connection for the same key");
    stream.resume(publisher);
    for (const listener of this.#listeners) listener.onResumed?.(stream);
  }

  /** Gives a claim back untouched (the publisher's connection closed while it was authorised). */
  release(claim: Claim): void {
    claim.stream.authorizing = false;
    const reason = this.#windowClosed.get(claim.stream);
    if (reason !== undefined) this.end(claim.stream, reason);
    this.#forgetIfUnused(claim.stream);
  }

  /**
   * The claimed publish was refused. A stream that was waiting for (or stalled on) this key ends:
   * the key may have been revoked. Unless the refusal was `unanswered` (the control plane could not
   * be asked): a blip must not end a broadcast, so the stream goes on as before, in its reconnect
   * window or with its publisher, and the encoder's next try is asked again.
   */
  refuse(claim: Claim, reason: string, unanswered = false): void {
    const { stream, kind } = claim;
    if (unanswered && kind !== "new" && stream.state !== "idle") {
      // The session warns of the refusal itself, with the reason: this says what it did not end.
      mediaLog.info(
        "returning publisher not authorised, no answer: {reason}; the stream waits on for it",
        { ...streamFields(stream.key), reason },
      );
      this.release(claim);
      return;
    }
    stream.authorizing = false;
    if (kind === "new" || stream.state === "idle") {
      this.#forgetIfUnused(stream);
      return;
    }
    this.end(stream, `publish refused on reconnect: ${reason}`);
  }

  /**
   * The publisher's connection went away (cleanly or not). With a grace window the stream waits
   * for it; without one it ends now.
   */
  publisherLeft(stream: LiveStream, reason: string): void {
    if (stream.state !== "live") return;
    const grace = this.#options.reconnectGraceMs;
    if (grace <= 0) {
      this.end(stream, reason);
      return;
    }
    stream.suspend(performance.now() + grace);
    this.#reconnectTimers.set(
      stream,
      setTimeout(() => {
        this.#reconnectTimers.delete(stream);
        const ending = `${reason}; no reconnect within ${grace / 1000} s`;
        // A returning publisher that came in time is being authorised: its answer decides
        // (`accept` continues the stream, `refuse` and `release` end it). Ending now would report
        // the end to the control plane, then go live again on its yes, unannounced.
        if (stream.authorizing) this.#windowClosed.set(stream, ending);
        else this.end(stream, ending);
      }, grace),
    );
  }

  /**
   * Ends a live period now: the publisher (if any) is detached, subscribers told, listeners told,
   * the key free again.
   */
  end(stream: LiveStream, reason: string): void {
    this.#windowClosed.delete(stream);
    if (stream.state === "idle") return;
    this.#clearReconnectTimer(stream);
    stream.publisher?.detach(reason);
    stream.end(reason);
    this.#forgetIfUnused(stream);
    for (const listener of this.#listeners) listener.onEnded?.(stream, reason);
  }

  /** Ends every live period (shutdown). */
  endAll(reason: string): void {
    for (const stream of this.live()) this.end(stream, reason);
  }

  /** Removes a waiting subscriber, and the stream with it when nothing else uses it. */
  unsubscribe(stream: LiveStream, subscriber: StreamSubscriber): void {
    stream.unsubscribe(subscriber);
    this.#forgetIfUnused(stream);
  }

  #clearReconnectTimer(stream: LiveStream): void {
    clearTimeout(this.#reconnectTimers.get(stream));
    this.#reconnectTimers.delete(stream);
  }

  #forgetIfUnused(stream: LiveStream): void {
    if (
      stream.state === "idle" && !stream.authorizing && stream.subscriberCount === 0 &&
      this.#streams.get(stream.key) === stream
    ) {
      this.#streams.delete(stream.key);
    }
  }
}
