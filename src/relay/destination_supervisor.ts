/**
 * One destination of one stream: connection attempts by an engine (FFmpeg or native, see
 * `relay_engine.ts`) fed from the destination's own bounded queue, restarted with backoff whenever
 * one ends, for as long as the stream lives. The queue means a slow or dead destination never
 * holds up the publisher or the other destinations.
 *
 * States: `starting` → `connected`, `degraded` while connected but not keeping up (queue lag over
 * 2 s, or packets dropped in the last 10 s), back to `connected` once it keeps up again;
 * `retrying` (waiting in backoff after a failure);
 * `failed` (the engine cannot carry the stream's codecs: waits for the configuration to change);
 * `exhausted` (`max_attempts` failed in a row: only a restart brings it back); `stopped` (a
 * termination, distinct from a failure).
 *
 * @module
 */

import type { Destination } from "../control_plane/destination.ts";
import { type MediaPacket, TagType } from "../media/flv.ts";
import type { LiveStream, StreamSubscriber } from "../media/live_stream.ts";
import type { ConfigurationChange } from "../media/stream_configuration.ts";
import { MediaQueue } from "../media/media_queue.ts";
import { RateMeter } from "../media/rate_meter.ts";
import { log } from "../log.ts";
import { delay, settlesWithin } from "../async.ts";
import { Backoff, type BackoffOptions, DEFAULT_BACKOFF } from "./backoff.ts";
import { copyFollows } from "./copy_compatibility.ts";
import { DestinationFailure, type DestinationFailureKind } from "./destination_failure.ts";
import { ffmpegCodecProblem } from "./ffmpeg_codecs.ts";
import { FfmpegEngine, ffmpegInputTracks, type MediaTrack } from "./ffmpeg_engine.ts";
import { NativeEngine } from "./native_engine.ts";
import type { ProcessPool } from "./process_pool.ts";
import type { EngineAttempt, EngineName, RelayEngine } from "./relay_engine.ts";
import { streamFields } from "../stream_id.ts";
import type { TlsSettings } from "./tls_trust.ts";

export interface SupervisorOptions {
  /** The engine of destinations that do not name one (`[streaming] engine`). */
  engine?: EngineName;
  ffmpegPath: string;
  /** Media bytes queued for this destination before it drops to the next keyframe. */
  queueBytes: number;
  /**
   * How long an engine may go without any progress (see `#drains`) while it sends the end of the
   * stream, before it is cut off. As long as it makes progress it is never cut off: that would
   * lose the end of the stream at the destination.
   */
  drainStallMs: number;
  /**
   * Once `shutdown` is aborted (the service itself stops), the most time an engine gets to
   * finish sending, progress or not, so the whole stop stays within `shutdown_grace_seconds`.
   */
  drainGraceMs: number;
  /** Time FFmpeg gets to exit after SIGTERM, before SIGKILL. */
  stopGraceMs: number;
  /** Aborted when the service shuts down: draining becomes bounded by `drainGraceMs`. */
  shutdown?: AbortSignal;
  ioTimeoutSeconds: number;
  /** Trust for `rtmps://`, read at each start (a reload may replace it). */
  tls?: Readonly<TlsSettings>;
  backoff?: BackoffOptions;
  /** Failed attempts in a row before the state is `exhausted`; 0: no limit. */
  maxAttempts?: number;
  /**
   * Owns every FFmpeg, across all streams, including those being stopped: the last-resort kill
   * on a second signal reaches them all.
   */
  pool: ProcessPool;
}

export const DESTINATION_STATES = [
  "starting",
  "connected",
  "degraded",
  "retrying",
  "failed",
  "exhausted",
  "stopped",
] as const;
export type DestinationState = typeof DESTINATION_STATES[number];

/** Live status of a destination, as the API reports it. */
export interface DestinationStatus {
  id: string;
  platform: string;
  url: string;
  engine: EngineName;
  state: DestinationState;
  connected: boolean;
  bytes_sent: number;
  packets_sent: number;
  dropped_packets: number;
  error_count: number;
  last_error: string | null;
  /** Kind of the last failure (`rejected`, `unreachable`, `timeout`, `tls`, `closed`, `codec`, `internal`). */
  failure: DestinationFailureKind | null;
  /** The current (or last) attempt since the destination last connected, from 1. */
  attempt: number;
  /** When the next attempt starts, while waiting in backoff. */
  next_attempt_at: string | null;
  restarts: number;
  started_at: string | null;
  connected_at: string | null;
  /** Rate of bytes written to the engine (what the engine took from us). */
  bitrate_kbps: number;
  pid: number | null;
  /** What the stream offers this destination, dropped packets included. */
  input_bitrate_kbps: number;
  /** What the engine actually wrote to the destination. */
  output_bitrate_kbps: number;
  /** Bytes the engines wrote to the destination, every attempt. */
  bytes_out: number;
  /** Age of the oldest packet waiting in the queue: how far behind the stream it is. */
  queue_lag_ms: number;
  dropped_bytes: number;
  /** Times the queue overflowed and dropped to the next keyframe. */
  drop_episodes: number;
  /** Seconds connected (`connected` or `degraded`) since the destination was added. */
  live_seconds: number;
  /** Seconds since the destination was added to the live stream. */
  published_seconds: number;
  /** `live_seconds / published_seconds`, 0 to 1. */
  availability: number;
  /** From the destination being added (at publish) to its first connection; null until then. */
  time_to_live_ms: number | null;
  /** Connections after the first one. */
  reconnects: number;
}

/** Queue lag above which a connected destination is `degraded`. */
export const DEGRADED_LAG_MS = 2_000;
/** A drop this recent keeps a connected destination `degraded`. */
export const DEGRADED_AFTER_DROP_MS = 10_000;

const relayLog = log("relay");
/**
 * Media bytes given to the engine in one write, plus the packet that crosses the limit. A backlog
 * (a destination slower than the stream, the end of a stream queued behind it) goes out in pieces,
 * not as one write of megabytes: each piece is encoded into a buffer of its size rather than one
 * as large as the backlog (the native writer reuses one of up to 256 KiB, and this leaves room for
 * chunk headers in it), and `bytes_sent`, `packets_sent` and `bitrate_kbps` move as it goes.
 */
const PUMP_BATCH_BYTES = 128 * 1024;
/** How often a stop checks a draining engine for progress. */
const DRAIN_CHECK_MS = 250;
const TRACK_TAG_TYPES = { video: TagType.Video, audio: TagType.Audio } as const;
const NO_TRACKS: ReadonlyMap<number, MediaTrack> = new Map();

export class DestinationSupervisor implements StreamSubscriber {
  readonly destination: Destination;
  readonly engine: RelayEngine;
  readonly #stream: LiveStream;
  readonly #options: SupervisorOptions;
  readonly #backoff: Backoff;
  readonly #rate = new RateMeter();
  readonly #inputRate = new RateMeter();
  readonly #outputRate = new RateMeter();
  /** `bytesOut` of the current attempt as last sampled. */
  #outputSeen = 0;
  #bytesOut = 0;
  #droppedBytesBefore = 0;
  #dropEpisodesBefore = 0;
  #lastDropAt = -Infinity;
  /** When the oldest packet of the batch being written was queued; undefined between writes. */
  #writingSince: number | undefined;
  readonly #addedAt = performance.now();
  #liveMs = 0;
  #liveSince: number | undefined;
  #timeToLiveMs: number | null = null;
  #connections = 0;
  #state: DestinationState = "starting";
  #terminated = false;
  #attempt: EngineAttempt | undefined;
  #queue: MediaQueue | undefined;
  /** After a change the engine cannot follow: the new stream from its start, for the next attempt. */
  #nextQueue: MediaQueue | undefined;
  /** The running attempt was ended on purpose to start the next one at once (not a failure). */
  #restartRequested = false;
  /** The engine cannot carry the stream's codecs: why, until the configuration changes. */
  #codecProblem: string | undefined;
  /**
   * Tracks the running FFmpeg does not read, by tag type, once it has said which it reads: a
   * packet of one of them means the stream has a track this FFmpeg drops (see `#trackNotCarried`).
   */
  #notCarried: ReadonlyMap<number, MediaTrack> = NO_TRACKS;
  /** Tracks FFmpeg was started again for since the configuration last changed: once each. */
  readonly #restartedForTrack = new Set<MediaTrack>();
  #done: Promise<void> = Promise.resolve();
  /** Aborted to cut the current wait (backoff, exhausted, codec) short. */
  #wait: AbortController | undefined;
  #bytesSent = 0;
  #packetsSent = 0;
  #droppedBefore = 0;
  #errorCount = 0;
  #restarts = 0;
  #attemptNumber = 0;
  #lastError: string | null = null;
  #failure: DestinationFailureKind | null = null;
  #nextAttemptAt: Date | null = null;
  #startedAt: Date | null = null;
  #connectedAt: Date | null = null;

  constructor(destination: Destination, stream: LiveStream, options: SupervisorOptions) {
    this.destination = destination;
    this.#stream = stream;
    this.#options = options;
    this.#backoff = new Backoff(options.backoff ?? DEFAULT_BACKOFF);
    const name = destination.engine ?? options.engine ?? "ffmpeg";
    this.engine = name === "native"
      ? new NativeEngine({ timeoutMs: options.ioTimeoutSeconds * 1000, tls: options.tls })
      : new FfmpegEngine(options);
  }

  /** The state, with `degraded` for a connected destination that is not keeping up. */
  get state(): DestinationState {
    if (this.#state !== "connected") return this.#state;
    const now = performance.now();
    const lagging = this.#lagMs(now) > DEGRADED_LAG_MS;
    return lagging || now - this.#lastDropAt < DEGRADED_AFTER_DROP_MS ? "degraded" : "connected";
  }

  /**
   * How long the oldest packet not yet written has waited: the batch being written if there is
   * one, else the queue's oldest. (What the kernel holds in the socket's buffer counts as written:
   * on loopback that can be megabytes, taken in bursts.)
   */
  #lagMs(now: number): number {
    const queued = this.#queue?.oldestAgeMs(now) ?? 0;
    return this.#writingSince === undefined ? queued : Math.max(queued, now - this.#writingSince);
  }

  #context(): Record<string, unknown> {
    return {
      ...streamFields(this.#stream.key),
      destination: this.destination.id,
      url: this.destination.displayUrl,
      engine: this.engine.name,
    };
  }

  /** Starts supervising; returns at once. */
  start(): void {
    this.#done = this.run();
  }

  /** Runs attempts again and again until `stop()`. */
  async run(): Promise<void> {
    while (!this.#terminated) {
      if (this.#checkCodecs()) {
        await this.#waitForAnotherConfiguration();
        continue;
      }
      const started = performance.now();
      await this.runOnce();
      if (this.#terminated) break;
      if (this.#restartRequested) {
        this.#restarts++;
        continue;
      }
      if (this.#codecProblem !== undefined) continue;
      const maxAttempts = this.#options.maxAttempts ?? 0;
      if (maxAttempts > 0 && this.#attemptNumber >= maxAttempts) {
        relayLog.error("destination failed {attempts} times in a row, giving up: {reason}", {
          ...this.#context(),
          attempts: this.#attemptNumber,
          reason: this.#lastError,
        });
        await this.#waitUntilWoken("exhausted", null);
        continue;
      }
      const wait = this.#backoff.next(performance.now() - started);
      relayLog.warn("destination down, retrying in {seconds} s: {reason}", {
        ...this.#context(),
        seconds: wait / 1000,
        reason: this.#lastError ?? "connection ended",
      });
      await this.#waitUntilWoken("retrying", wait);
      if (!this.#terminated) this.#restarts++;
    }
    this.#state = "stopped";
  }

  /** Waits in `state` for `ms` (null: until woken by a restart, a change or the stop). */
  async #waitUntilWoken(state: DestinationState, ms: number | null): Promise<void> {
    if (this.#terminated || this.#restartRequested) return;
    this.#state = state;
    const wait = new AbortController();
    this.#wait = wait;
    this.#nextAttemptAt = ms === null ? null : new Date(Date.now() + ms);
    await delay(ms ?? Infinity, { signal: wait.signal }).catch((error) => {
      // Woken early (restart, stop): the abort is the point. Anything else is not ours to drop.
      if (!wait.signal.aborted) throw error;
    });
    this.#wait = undefined;
    this.#nextAttemptAt = null;
  }

  /**
   * Waits in `failed` until the publisher changes the stream's configuration (or a restart, or
   * the stop). Subscribed meanwhile, without a queue, only to hear of the change.
   */
  async #waitForAnotherConfiguration(): Promise<void> {
    this.#nextQueue?.close();
    this.#nextQueue = undefined;
    this.#restartRequested = false;
    this.#stream.subscribe(this);
    await this.#waitUntilWoken("failed", null);
    this.#stream.unsubscribe(this);
  }

  /**
   * True when the FFmpeg engine cannot carry the stream as it is configured now: the status says
   * so (kind `codec`) instead of sending garbage.
   */
  #checkCodecs(): boolean {
    if (this.engine.name !== "ffmpeg") return false;
    const problem = ffmpegCodecProblem(this.#stream.configuration, this.#stream.gop.headers());
    if (problem === undefined) {
      this.#codecProblem = undefined;
      return false;
    }
    if (this.#codecProblem !== problem) {
      relayLog.error("destination cannot relay this stream: {reason}", {
        ...this.#context(),
        reason: problem,
      });
    }
    this.#codecProblem = problem;
    this.#lastError = problem;
    this.#failure = "codec";
    return true;
  }

  /** One attempt, from start to its end (the child reaped). Records why it ended; never throws. */
  async runOnce(): Promise<void> {
    this.#restartRequested = false;
    this.#state = "starting";
    this.#connectedAt = null;
    this.#attemptNumber++;
    const queue = this.#nextQueue ?? this.#newQueue();
    const handedOver = queue === this.#nextQueue;
    this.#nextQueue = undefined;
    this.#queue = queue;
    this.#notCarried = NO_TRACKS;
    const attempt = this.engine.start({
      destination: this.destination,
      configuration: this.#stream.configuration,
      headers: this.#stream.gop.headers(),
      logContext: this.#context(),
      onConnected: () => {
        if (this.#attempt !== attempt) return;
        this.#state = "connected";
        this.#connectedAt = new Date();
        const now = performance.now();
        this.#liveSince = now;
        this.#timeToLiveMs ??= Math.round(now - this.#addedAt);
        this.#connections++;
        this.#attemptNumber = 1;
        relayLog.info("destination connected", this.#context());
        this.#checkTracksCarried(attempt);
      },
    });
    this.#attempt = attempt;
    this.#outputSeen = 0;
    this.#startedAt = new Date();
    // Joining replays metadata, sequence headers and the GOP: the engine starts on a keyframe. A
    // queue handed over by a restart already holds the new stream from its first header.
    if (!handedOver) this.#stream.subscribe(this);
    relayLog.info("destination starting", { ...this.#context(), pid: attempt.pid });
    const pumpDone = this.#pump(attempt, queue);
    const failure = await attempt.ended;
    this.#notCarried = NO_TRACKS; // what this FFmpeg read says nothing of the next one
    this.#sampleOutput();
    if (this.#liveSince !== undefined) this.#liveMs += performance.now() - this.#liveSince;
    this.#liveSince = undefined;
    if (this.#nextQueue === undefined) this.#stream.unsubscribe(this);
    queue.close();
    this.#droppedBefore += queue.droppedPackets;
    this.#droppedBytesBefore += queue.droppedBytes;
    this.#dropEpisodesBefore += queue.dropEpisodes;
    this.#queue = undefined;
    this.#attempt = undefined;
    await pumpDone;
    this.#connectedAt = null;
    if (this.#terminated || this.#restartRequested || this.#codecProblem !== undefined) return;
    this.#errorCount++;
    const why = failure ?? new DestinationFailure("closed", "the destination ended the publish");
    this.#lastError = why.message;
    this.#failure = why.kind;
  }

  /** Stops for good: the attempt drains, then is cut off; resolves once it is over. */
  async stop(): Promise<void> {
    this.#terminated = true;
    if (this.#nextQueue !== undefined) {
      this.#nextQueue.close();
      this.#nextQueue = undefined;
      this.#stream.unsubscribe(this);
    }
    this.#wait?.abort();
    await this.#stopAttempt();
    await this.#done;
    this.#state = "stopped";
  }

  /**
   * Starts a new attempt at once (the API's restart): from backoff, `exhausted` or `failed`
   * without waiting, or ending the running attempt. Not counted as an error.
   */
  async restart(): Promise<void> {
    if (this.#terminated) return;
    this.#restartRequested = true;
    this.#attemptNumber = 0;
    this.#backoff.reset();
    this.#codecProblem = undefined;
    this.#wait?.abort();
    await this.#stopAttempt();
  }

  async #stopAttempt(): Promise<void> {
    const attempt = this.#attempt;
    const queue = this.#queue;
    if (attempt === undefined) return;
    queue?.close(); // the pump finishes the attempt once the queue is drained
    if (await this.#drains(attempt)) return;
    await attempt.abort();
  }

  /**
   * Waits while the engine sends the end of the stream: true once the attempt is over, false when
   * it made no progress for `drainStallMs` or the service's shutdown deadline passed (logged).
   *
   * A fixed timer here cut off the end of streams on a busy machine, where FFmpeg is slow but
   * working. Progress is the bytes of our writes the engine took (it is reading its input) plus
   * the bytes it reports written to the destination (it is sending, which also covers the tail
   * FFmpeg holds after its stdin closed) plus the bytes the destination acknowledged (native: it
   * is reading what the socket's buffer holds, which takes megabytes in bursts). All come from the
   * work being done, so a blocked destination or a hung FFmpeg shows as a stall, while a slow one
   * is given the time it needs.
   */
  async #drains(attempt: EngineAttempt): Promise<boolean> {
    const { drainStallMs, drainGraceMs, shutdown } = this.#options;
    const progress = () => this.#bytesSent + attempt.bytesOut + (attempt.bytesAcknowledged ?? 0);
    let last = progress();
    let lastProgressAt = performance.now();
    let shutdownAt: number | undefined;
    for (;;) {
      if (await settlesWithin(attempt.ended, DRAIN_CHECK_MS)) return true;
      const now = performance.now();
      if (progress() !== last) {
        last = progress();
        lastProgressAt = now;
      } else if (now - lastProgressAt >= drainStallMs) {
        relayLog.warn("destination made no progress for {seconds} s while draining: cut off", {
          ...this.#context(),
          seconds: drainStallMs / 1000,
        });
        return false;
      }
      if (shutdown?.aborted) {
        shutdownAt ??= now;
        if (now - shutdownAt >= drainGraceMs) {
          relayLog.warn("destination still draining {seconds} s into shutdown: cut off", {
            ...this.#context(),
            seconds: drainGraceMs / 1000,
          });
          return false;
        }
      }
    }
  }

  /**
   * Moves queued packets to the engine, a batch at a time (at most `PUMP_BATCH_BYTES` and a
   * packet); finishes the attempt at the end.
   */
  async #pump(attempt: EngineAttempt, queue: MediaQueue): Promise<void> {
    const checkCodecs = this.engine.name === "ffmpeg";
    try {
      // take/wait rather than `for await (… of queue.batches())`: an async generator costs
      // several promises per batch, and here a batch is usually one packet. A backlog is taken a
      // batch at a time, so the rest stays in the queue: bounded by its drop policy and counted
      // in its lag.
      for (;;) {
        const items = queue.take(PUMP_BATCH_BYTES);
        if (items.length === 0) {
          if (queue.closed) break;
          await queue.wait();
          continue;
        }
        const packets: MediaPacket[] = [];
        let bytes = 0;
        let headers = false;
        for (const item of items) {
          if (item.kind !== "media") continue;
          packets.push(item.packet);
          bytes += item.packet.payload.length;
          if (item.packet.sequenceHeader) headers = true;
        }
        // A sequence header is where a codec shows itself: FFmpeg must not get one it cannot read.
        if (checkCodecs && headers && this.#checkCodecs()) {
          await attempt.abort();
          return;
        }
        this.#writingSince = items[0]!.at;
        await attempt.write(packets);
        this.#writingSince = undefined;
        const now = performance.now();
        this.#bytesSent += bytes;
        this.#packetsSent += packets.length;
        this.#rate.add(bytes, now);
        this.#sampleOutput(now);
      }
      await attempt.finish();
    } catch (error) {
      // The attempt failed while we wrote: its `ended` says why. Anything else is a bug worth
      // seeing, and the attempt must not outlive it.
      if (!(error instanceof DestinationFailure) && !isGone(error)) {
        relayLog.error("writing to the destination failed: {reason}", {
          ...this.#context(),
          reason: (error as Error).message,
        });
        await attempt.abort();
      }
    } finally {
      this.#writingSince = undefined;
    }
  }

  /** Counts what the current attempt wrote to the destination since the last look. */
  #sampleOutput(now: number = performance.now()): void {
    const written = this.#attempt?.bytesOut ?? this.#outputSeen;
    if (written <= this.#outputSeen) return;
    this.#outputRate.add(written - this.#outputSeen, now);
    this.#bytesOut += written - this.#outputSeen;
    this.#outputSeen = written;
  }

  // ---- StreamSubscriber ----

  onPacket(packet: MediaPacket, now: number): void {
    this.#inputRate.add(packet.payload.length, now);
    if (this.#notCarried.size !== 0) {
      const track = this.#notCarried.get(packet.type);
      if (track !== undefined && this.#trackNotCarried(track, packet)) return;
    }
    const queue = this.#nextQueue ?? this.#queue;
    if (queue === undefined) return;
    const dropped = queue.droppedPackets;
    queue.pushMedia(packet, now);
    // A clock read only when a packet was dropped: the hot path stays as it was.
    if (queue.droppedPackets !== dropped) this.#lastDropAt = performance.now();
  }

  /**
   * A change the engine cannot carry (a track added or removed, another codec): the running
   * attempt gets everything before this point and ends cleanly, the next one starts at once with
   * the new stream from its first header, so nothing of either stream is lost or mixed. A
   * destination waiting on a codec problem tries again.
   */
  onConfigurationChange(change: ConfigurationChange): void {
    if (this.#terminated) return;
    // A queue that goes on (the native engine's) must not wait for a keyframe that never comes.
    this.#queue?.setVideoTrack(change.after.video !== undefined);
    if (this.#codecProblem !== undefined && this.#attempt === undefined) {
      this.#codecProblem = undefined;
      this.#attemptNumber = 0;
      this.#wait?.abort();
      return;
    }
    // A new publisher may start a track late again: worth one restart again.
    this.#restartedForTrack.clear();
    if (this.engine.name === "native" || copyFollows(change)) return;
    relayLog.info("stream changed ({change}): restarting FFmpeg on the new stream", {
      ...this.#context(),
      change: change.description,
    });
    this.#restartOnNextQueue([]);
  }

  /**
   * FFmpeg fixes its tracks from what it reads while it probes the start of its input (half a
   * second, see `ffmpeg_args.ts`): a track the stream starts later (an encoder whose camera comes
   * up after its audio) would be dropped for the whole session. Once FFmpeg has said what it reads,
   * a track the stream has that it does not read starts it again, and so does the first packet of
   * such a track arriving later. A stream with both tracks from its start never comes here.
   */
  #checkTracksCarried(attempt: EngineAttempt): void {
    const carried = ffmpegInputTracks(attempt);
    if (carried === undefined) return;
    const missing = new Map<number, MediaTrack>();
    for (const track of ["video", "audio"] as const) {
      if (!carried.has(track)) missing.set(TRACK_TAG_TYPES[track], track);
    }
    this.#notCarried = missing;
    const configuration = this.#stream.configuration;
    for (const track of missing.values()) {
      // A track only announced by metadata, with no packet yet, is not one FFmpeg dropped.
      if (configuration[track]?.codec !== undefined) {
        this.#trackNotCarried(track);
        return;
      }
    }
  }

  /**
   * The stream has `track` and the running FFmpeg does not read it. Once per track, FFmpeg is
   * started again on the stream from its headers (the new track's with them, ahead of any frame:
   * FFmpeg must meet it within its probe) and last keyframe on: the destination sees one
   * reconnect, then every track. Should the new FFmpeg still not read it, the status says so
   * rather than dropping it unseen. True when `packet`, the one that told, is queued already.
   */
  #trackNotCarried(track: MediaTrack, packet?: MediaPacket): boolean {
    this.#notCarried = NO_TRACKS;
    // Stopping, or a restart already on its way: the next attempt starts with every header.
    if (this.#terminated || this.#restartRequested) return false;
    if (this.#restartedForTrack.has(track)) {
      const problem =
        `${track} not carried: FFmpeg read none of it, even started again with it first; use engine = native`;
      relayLog.error("destination does not carry the stream's {track}: {reason}", {
        ...this.#context(),
        track,
        reason: problem,
      });
      this.#lastError = problem;
      this.#failure = "codec";
      return false;
    }
    this.#restartedForTrack.add(track);
    relayLog.warn(
      "FFmpeg started without the stream's {track}, which began after FFmpeg had fixed its tracks: starting it again to carry every track",
      { ...this.#context(), track },
    );
    const opening = this.#stream.gop.snapshot();
    this.#restartOnNextQueue(opening);
    return packet !== undefined && opening.includes(packet);
  }

  /**
   * Ends the running attempt cleanly (it gets everything queued so far) and starts the next one at
   * once on a queue of its own: `opening` (headers, a GOP), then the stream from this point on.
   */
  #restartOnNextQueue(opening: readonly MediaPacket[]): void {
    this.#nextQueue?.close();
    const queue = this.#newQueue();
    const now = performance.now();
    for (const held of opening) queue.pushMedia(held, now);
    this.#nextQueue = queue;
    this.#restartRequested = true;
    this.#wait?.abort();
    this.#stopAttempt().catch((error: Error) => {
      relayLog.error("stopping FFmpeg for a restart failed: {reason}", {
        ...this.#context(),
        reason: error.message,
      });
    });
  }

  #newQueue(): MediaQueue {
    return new MediaQueue(this.#options.queueBytes, (stats) => {
      const fields = {
        ...this.#context(),
        queued_bytes: stats.queuedBytes,
        episode: stats.dropEpisodes,
      };
      if (this.#state === "connected") {
        relayLog.warn("destination too slow, dropping until the next keyframe", fields);
      } else {
        relayLog.warn(
          "destination not connected yet and its queue is full: dropping until the next keyframe",
          fields,
        );
      }
    });
  }

  onEnd(_reason: string): void {
    // The relay manager stops every destination of an ended stream; nothing to do here.
  }

  status(): DestinationStatus {
    this.#sampleOutput();
    const now = performance.now();
    const liveMs = this.#liveMs + (this.#liveSince === undefined ? 0 : now - this.#liveSince);
    const publishedMs = now - this.#addedAt;
    const queue = this.#queue;
    return {
      id: this.destination.id,
      platform: this.destination.platform,
      url: this.destination.displayUrl,
      engine: this.engine.name,
      state: this.state,
      connected: this.#state === "connected",
      bytes_sent: this.#bytesSent,
      packets_sent: this.#packetsSent,
      dropped_packets: this.#droppedBefore + (this.#queue?.droppedPackets ?? 0),
      error_count: this.#errorCount,
      last_error: this.#lastError,
      failure: this.#failure,
      attempt: this.#attemptNumber,
      next_attempt_at: this.#nextAttemptAt?.toISOString() ?? null,
      restarts: this.#restarts,
      started_at: this.#startedAt?.toISOString() ?? null,
      connected_at: this.#connectedAt?.toISOString() ?? null,
      bitrate_kbps: Math.round(this.#rate.bitsPerSecond() / 1000),
      pid: this.#attempt?.pid ?? null,
      input_bitrate_kbps: Math.round(this.#inputRate.bitsPerSecond(now) / 1000),
      output_bitrate_kbps: Math.round(this.#outputRate.bitsPerSecond(now) / 1000),
      bytes_out: this.#bytesOut,
      queue_lag_ms: Math.round(this.#lagMs(now)),
      dropped_bytes: this.#droppedBytesBefore + (queue?.droppedBytes ?? 0),
      drop_episodes: this.#dropEpisodesBefore + (queue?.dropEpisodes ?? 0),
      live_seconds: Math.round(liveMs) / 1000,
      published_seconds: Math.round(publishedMs) / 1000,
      availability: publishedMs > 0 ? Math.min(1, liveMs / publishedMs) : 0,
      time_to_live_ms: this.#timeToLiveMs,
      reconnects: Math.max(0, this.#connections - 1),
    };
  }
}

/**
 * The engine went away while we wrote: FFmpeg's stdin closed (BrokenPipe), or the attempt cut off
 * (AbortError). A TypeError is not among them: it is a bug of ours, and is logged.
 */
function isGone(error: unknown): boolean {
  return error instanceof Deno.errors.BrokenPipe ||
    (error instanceof DOMException && error.name === "AbortError");
}
