/**
 * One destination of one stream: an FFmpeg child fed FLV on stdin, restarted with backoff whenever
 * it exits, for as long as the stream lives. Its own bounded queue means a slow or dead destination
 * never holds up the publisher or the other destinations.
 *
 * `stop()` is a termination (state "stopped"), distinct from a failure (state "retrying" with
 * `last_error`).
 *
 * @module
 */

import type { Destination } from "../control_plane/destination.ts";
import { encodeFlvTags, flvFileHeader, type MediaPacket } from "../media/flv.ts";
import type { LiveStream, StreamSubscriber } from "../media/live_stream.ts";
import type { ConfigurationChange } from "../media/stream_configuration.ts";
import { MediaQueue } from "../media/media_queue.ts";
import { RateMeter } from "../media/rate_meter.ts";
import { log } from "../log.ts";
import { redactKey } from "../redact.ts";
import { Backoff, type BackoffOptions, DEFAULT_BACKOFF } from "./backoff.ts";
import { copyFollows } from "./copy_compatibility.ts";
import { buildFfmpegArgs } from "./ffmpeg_args.ts";
import { classifyFfmpegError } from "./ffmpeg_errors.ts";
import type { ProcessPool } from "./process_pool.ts";
import { delay } from "../async.ts";

export interface SupervisorOptions {
  ffmpegPath: string;
  /** Media bytes queued for this destination before it drops to the next keyframe. */
  queueBytes: number;
  /**
   * How long FFmpeg may go without any progress (see `#drains`) while it sends the end of the
   * stream, before SIGTERM. As long as it makes progress it is never cut off: a SIGTERM would lose
   * the end of the stream at the destination.
   */
  drainStallMs: number;
  /**
   * Once `shutdown` is aborted (the service itself stops), the most time FFmpeg gets to finish
   * sending, progress or not, so the whole stop stays within `shutdown_grace_seconds`.
   */
  drainGraceMs: number;
  /** Time FFmpeg gets to exit after SIGTERM, before SIGKILL. */
  stopGraceMs: number;
  /** Aborted when the service shuts down: draining becomes bounded by `drainGraceMs`. */
  shutdown?: AbortSignal;
  ioTimeoutSeconds: number;
  /** Trust for `rtmps://`, read at each FFmpeg start (a reload may replace `caFile`). */
  tls?: { readonly caFile: string | undefined };
  backoff?: BackoffOptions;
  /**
   * Owns every FFmpeg, across all streams, including those being stopped: the last-resort kill
   * on a second signal reaches them all.
   */
  pool: ProcessPool;
}

export type DestinationState = "starting" | "connected" | "retrying" | "stopped";

/** Live status of a destination, as the API reports it. */
export interface DestinationStatus {
  id: string;
  platform: string;
  url: string;
  state: DestinationState;
  connected: boolean;
  bytes_sent: number;
  packets_sent: number;
  dropped_packets: number;
  error_count: number;
  last_error: string | null;
  restarts: number;
  started_at: string | null;
  connected_at: string | null;
  bitrate_kbps: number;
  pid: number | null;
}

const relayLog = log("relay");
/** Most stderr kept per line and in total: FFmpeg must never make us buffer without bound. */
const MAX_STDERR_LINE = 400;
const STDERR_LINES_KEPT = 8;
const ERROR_WORDS =
  /error|fail|refused|invalid|denied|timed? ?out|broken|unable|cannot|not found|reset/i;
/**
 * Global options put in front of the destination's arguments: FFmpeg reports on stdout, twice a
 * second while it works, how many bytes it has written to the destination (`total_size=`). That
 * is how a stop sees FFmpeg still sending after its stdin closed.
 */
const PROGRESS_ARGS = ["-progress", "pipe:1", "-stats_period", "0.5"];
/** How often a stop checks a draining FFmpeg for progress. */
const DRAIN_CHECK_MS = 250;

export class DestinationSupervisor implements StreamSubscriber {
  readonly destination: Destination;
  readonly #stream: LiveStream;
  readonly #options: SupervisorOptions;
  readonly #backoff: Backoff;
  readonly #rate = new RateMeter();
  #state: DestinationState = "starting";
  #terminated = false;
  #child: Deno.ChildProcess | undefined;
  #queue: MediaQueue<Uint8Array> | undefined;
  /** After a change FFmpeg cannot follow: the new stream from its start, for the next FFmpeg. */
  #nextQueue: MediaQueue<Uint8Array> | undefined;
  /** The running FFmpeg was ended on purpose to start the next one at once (not a failure). */
  #restartRequested = false;
  #done: Promise<void> = Promise.resolve();
  /** Aborted to cut the current backoff wait short. */
  #backoffWait: AbortController | undefined;
  #bytesSent = 0;
  #packetsSent = 0;
  #droppedBefore = 0;
  #errorCount = 0;
  #restarts = 0;
  #lastError: string | null = null;
  #startedAt: Date | null = null;
  #connectedAt: Date | null = null;
  /** Bytes the current FFmpeg says it has written to the destination. */
  #outputBytes = 0;

  constructor(destination: Destination, stream: LiveStream, options: SupervisorOptions) {
    this.destination = destination;
    this.#stream = stream;
    this.#options = options;
    this.#backoff = new Backoff(options.backoff ?? DEFAULT_BACKOFF);
  }

  get state(): DestinationState {
    return this.#state;
  }

  #context(): Record<string, unknown> {
    return {
      stream: redactKey(this.#stream.key),
      destination: this.destination.id,
      url: this.destination.displayUrl,
    };
  }

  /** Starts supervising; returns at once. */
  start(): void {
    this.#done = this.run();
  }

  /** Runs FFmpeg again and again until `stop()`. */
  async run(): Promise<void> {
    while (!this.#terminated) {
      const started = performance.now();
      await this.runOnce();
      if (this.#terminated) break;
      if (this.#restartRequested) {
        this.#restarts++;
        continue;
      }
      const wait = this.#backoff.next(performance.now() - started);
      this.#state = "retrying";
      relayLog.warn("destination down, retrying in {seconds} s: {reason}", {
        ...this.#context(),
        seconds: wait / 1000,
        reason: this.#lastError ?? "ffmpeg exited",
      });
      this.#backoffWait = new AbortController();
      await delay(wait, { signal: this.#backoffWait.signal }).catch(() => {});
      this.#backoffWait = undefined;
      if (!this.#terminated) this.#restarts++;
    }
    this.#state = "stopped";
  }

  /** One FFmpeg run, from spawn to reaped exit. Records why it ended; never throws. */
  async runOnce(): Promise<void> {
    this.#restartRequested = false;
    this.#state = "starting";
    this.#connectedAt = null;
    let child: Deno.ChildProcess;
    try {
      child = this.#options.pool.spawn(this.#options.ffmpegPath, [
        ...PROGRESS_ARGS,
        ...buildFfmpegArgs(this.destination, {
          ioTimeoutSeconds: this.#options.ioTimeoutSeconds,
          caFile: this.#options.tls?.caFile,
        }),
      ], { stdin: "piped", stdout: "piped", stderr: "piped" });
    } catch (error) {
      this.#errorCount++;
      this.#lastError = `cannot start ${this.#options.ffmpegPath}: ${(error as Error).message}`;
      return;
    }
    this.#child = child;
    this.#outputBytes = 0;
    this.#startedAt = new Date();
    const queue = this.#nextQueue ?? this.#newQueue();
    const handedOver = queue === this.#nextQueue;
    this.#nextQueue = undefined;
    this.#queue = queue;
    // Joining replays metadata, sequence headers and the GOP: FFmpeg starts on a keyframe. A
    // queue handed over by a restart already holds the new stream from its first header.
    if (!handedOver) this.#stream.subscribe(this);
    relayLog.info("destination starting", { ...this.#context(), pid: child.pid });
    const recentLines: string[] = [];
    const stderrDone = this.#readStderr(child.stderr, recentLines);
    const progressDone = this.#readProgress(child.stdout);
    const pumpDone = this.#pump(child.stdin, queue);
    const status = await child.status;
    if (this.#nextQueue === undefined) this.#stream.unsubscribe(this);
    queue.close();
    this.#droppedBefore += queue.droppedPackets;
    this.#queue = undefined;
    this.#child = undefined;
    await Promise.all([pumpDone, stderrDone, progressDone]);
    this.#connectedAt = null;
    if (this.#terminated || this.#restartRequested) return;
    this.#errorCount++;
    const reason = recentLines.findLast((line) => ERROR_WORDS.test(line)) ?? recentLines.at(-1);
    this.#lastError = classifyFfmpegError(recentLines) ??
      `ffmpeg exited with ${status.signal ? `signal ${status.signal}` : `code ${status.code}`}${
        reason ? `: ${reason}` : ""
      }`;
  }

  /** Stops for good: stdin closed, then SIGTERM, then SIGKILL; resolves once FFmpeg is reaped. */
  async stop(): Promise<void> {
    this.#terminated = true;
    if (this.#nextQueue !== undefined) {
      this.#nextQueue.close();
      this.#nextQueue = undefined;
      this.#stream.unsubscribe(this);
    }
    this.#backoffWait?.abort();
    await this.#stopChild();
    await this.#done;
    this.#state = "stopped";
  }

  /** Ends the current FFmpeg so that the loop starts a new one at once (the API's restart). */
  async restart(): Promise<void> {
    this.#backoffWait?.abort();
    await this.#stopChild();
  }

  async #stopChild(): Promise<void> {
    const child = this.#child;
    const queue = this.#queue;
    if (child === undefined) return;
    queue?.close(); // the pump closes stdin once the queue is drained: FFmpeg flushes and exits
    if (await this.#drains(child)) return;
    await this.#options.pool.terminate(
      child,
      this.#options.stopGraceMs,
      () => relayLog.warn("destination ignored SIGTERM: SIGKILL", this.#context()),
    );
  }

  /**
   * Waits while FFmpeg sends the end of the stream: true once it exited, false when it made no
   * progress for `drainStallMs` or the service's shutdown deadline passed (logged).
   *
   * A fixed timer here cut off the end of streams on a busy machine, where FFmpeg is slow but
   * working. Progress is what we can see without reading /proc (Deno allows /proc/<pid>/* only
   * with --allow-all): bytes of our stdin writes that FFmpeg took (it is reading its input) plus
   * the bytes FFmpeg reports written to the destination on its progress output (it is sending,
   * which also covers the tail it holds after its stdin closed). Both come from FFmpeg doing the
   * work itself, so a blocked destination or a hung FFmpeg shows as a stall, while a slow one is
   * given the time it needs.
   */
  async #drains(child: Deno.ChildProcess): Promise<boolean> {
    const { drainStallMs, drainGraceMs, shutdown } = this.#options;
    const progress = () => this.#bytesSent + this.#outputBytes;
    let last = progress();
    let lastProgressAt = performance.now();
    let shutdownAt: number | undefined;
    for (;;) {
      if (await this.#options.pool.exitsWithin(child, DRAIN_CHECK_MS)) return true;
      const now = performance.now();
      if (progress() !== last) {
        last = progress();
        lastProgressAt = now;
      } else if (now - lastProgressAt >= drainStallMs) {
        relayLog.warn("destination made no progress for {seconds} s while draining: SIGTERM", {
          ...this.#context(),
          seconds: drainStallMs / 1000,
        });
        return false;
      }
      if (shutdown?.aborted) {
        shutdownAt ??= now;
        if (now - shutdownAt >= drainGraceMs) {
          relayLog.warn("destination still draining {seconds} s into shutdown: SIGTERM", {
            ...this.#context(),
            seconds: drainGraceMs / 1000,
          });
          return false;
        }
      }
    }
  }

  async #pump(stdin: WritableStream<Uint8Array>, queue: MediaQueue<Uint8Array>): Promise<void> {
    const writer = stdin.getWriter();
    const packets: MediaPacket[] = [];
    try {
      for (;;) {
        await queue.wait();
        const items = queue.takeAll();
        if (items.length === 0) {
          if (queue.closed) break;
          continue;
        }
        packets.length = 0;
        for (const item of items) {
          if (item.kind === "control") {
            if (packets.length > 0) {
              await this.#write(writer, encodeFlvTags(packets), packets.length);
            }
            packets.length = 0;
            await this.#write(writer, item.control, 0);
          } else {
            packets.push(item.packet);
          }
        }
        if (packets.length > 0) await this.#write(writer, encodeFlvTags(packets), packets.length);
      }
      await writer.close();
    } catch (error) {
      // FFmpeg went away while we wrote (its exit is what the supervisor reports); anything
      // else is a bug worth seeing.
      if (!(error instanceof Deno.errors.BrokenPipe) && !(error instanceof TypeError)) {
        relayLog.error("writing to ffmpeg failed: {reason}", {
          ...this.#context(),
          reason: (error as Error).message,
        });
      }
      writer.releaseLock();
    }
  }

  async #write(
    writer: WritableStreamDefaultWriter<Uint8Array>,
    bytes: Uint8Array,
    packets: number,
  ): Promise<void> {
    await writer.write(bytes);
    this.#bytesSent += bytes.length;
    this.#packetsSent += packets;
    this.#rate.add(bytes.length);
  }

  /** Follows FFmpeg's progress reports (`key=value` lines) for the bytes it has sent. */
  async #readProgress(stdout: ReadableStream<Uint8Array>): Promise<void> {
    const decoder = new TextDecoder();
    let carry = "";
    for await (const chunk of stdout) {
      carry += decoder.decode(chunk, { stream: true });
      const lines = carry.split("\n");
      carry = (lines.pop() ?? "").slice(-MAX_STDERR_LINE);
      for (const line of lines) {
        const size = /^total_size=(\d+)/.exec(line);
        if (size) this.#outputBytes = Number(size[1]);
      }
    }
  }

  async #readStderr(stderr: ReadableStream<Uint8Array>, recent: string[]): Promise<void> {
    const decoder = new TextDecoder();
    let carry = "";
    const onLine = (raw: string) => {
      const line = this.#redact(raw.trim()).slice(0, MAX_STDERR_LINE);
      if (line === "") return;
      if (line.startsWith("Output #0")) {
        this.#state = "connected";
        this.#connectedAt = new Date();
        relayLog.info("destination connected", this.#context());
      }
      recent.push(line);
      if (recent.length > STDERR_LINES_KEPT) recent.shift();
    };
    for await (const chunk of stderr) {
      carry += decoder.decode(chunk, { stream: true });
      const lines = carry.split(/\r?\n|\r/);
      carry = lines.pop() ?? "";
      if (carry.length > MAX_STDERR_LINE * 4) carry = carry.slice(-MAX_STDERR_LINE);
      for (const line of lines) onLine(line);
    }
    onLine(carry);
  }

  /** FFmpeg prints its output URL; the key in it never reaches our logs or the API. */
  #redact(line: string): string {
    const { pushUrl, streamKey, displayUrl } = this.destination;
    let out = line.replaceAll(pushUrl, displayUrl);
    if (streamKey.length >= 4) out = out.replaceAll(streamKey, redactKey(streamKey));
    return out;
  }

  // ---- StreamSubscriber ----

  onPacket(packet: MediaPacket): void {
    (this.#nextQueue ?? this.#queue)?.pushMedia(packet);
  }

  /**
   * A change FFmpeg cannot carry (a track added or removed, another codec): the running FFmpeg
   * gets everything before this point and ends cleanly, the next one starts at once with the new
   * stream from its first header, so nothing of either stream is lost or mixed.
   */
  onConfigurationChange(change: ConfigurationChange): void {
    if (this.#terminated || copyFollows(change)) return;
    relayLog.info("stream changed ({change}): restarting FFmpeg on the new stream", {
      ...this.#context(),
      change: change.description,
    });
    this.#nextQueue?.close();
    this.#nextQueue = this.#newQueue();
    this.#restartRequested = true;
    this.#backoffWait?.abort();
    this.#stopChild().catch((error: Error) => {
      relayLog.error("stopping FFmpeg for a restart failed: {reason}", {
        ...this.#context(),
        reason: error.message,
      });
    });
  }

  #newQueue(): MediaQueue<Uint8Array> {
    const queue = new MediaQueue<Uint8Array>(this.#options.queueBytes, (stats) => {
      relayLog.warn("destination too slow, dropping until the next keyframe", {
        ...this.#context(),
        queued_bytes: stats.queuedBytes,
        episode: stats.dropEpisodes,
      });
    });
    queue.pushControl(flvFileHeader());
    return queue;
  }

  onEnd(_reason: string): void {
    // The relay manager stops every destination of an ended stream; nothing to do here.
  }

  status(): DestinationStatus {
    return {
      id: this.destination.id,
      platform: this.destination.platform,
      url: this.destination.displayUrl,
      state: this.#state,
      connected: this.#state === "connected",
      bytes_sent: this.#bytesSent,
      packets_sent: this.#packetsSent,
      dropped_packets: this.#droppedBefore + (this.#queue?.droppedPackets ?? 0),
      error_count: this.#errorCount,
      last_error: this.#lastError,
      restarts: this.#restarts,
      started_at: this.#startedAt?.toISOString() ?? null,
      connected_at: this.#connectedAt?.toISOString() ?? null,
      bitrate_kbps: Math.round(this.#rate.bitsPerSecond() / 1000),
      pid: this.#child?.pid ?? null,
    };
  }
}
