/**
 * The FFmpeg engine: one `ffmpeg -c copy` child per attempt, fed FLV on its stdin, spawned and
 * reaped by the process pool. "Connected" is FFmpeg's `Output #0` line (printed once the
 * destination accepted the publish); its stderr gives the typed failure, and the tracks FFmpeg
 * found in its input (`Input #0` and its `Stream` lines, printed before `Output #0`).
 *
 * @module
 */

import { encodeFlvTags, flvFileHeader, type MediaPacket } from "../media/flv.ts";
import type { StreamConfiguration } from "../media/stream_configuration.ts";
import { log } from "../log.ts";
import { DestinationFailure } from "./destination_failure.ts";
import { buildFfmpegArgs, ffmpegLogRedactor } from "./ffmpeg_args.ts";
import { ffmpegFailure } from "./ffmpeg_errors.ts";
import type { ProcessPool } from "./process_pool.ts";
import type { EngineAttempt, EngineContext, RelayEngine } from "./relay_engine.ts";

export interface FfmpegEngineOptions {
  ffmpegPath: string;
  pool: ProcessPool;
  ioTimeoutSeconds: number;
  /** Trust for `rtmps://`, read at each start (a reload may replace `caFile`). */
  tls?: { readonly caFile: string | undefined };
  /** Time FFmpeg gets to exit after SIGTERM, before SIGKILL. */
  stopGraceMs: number;
}

const engineLog = log("relay");
/** Most stderr kept per line and in total: FFmpeg must never make us buffer without bound. */
const MAX_STDERR_LINE = 400;
const STDERR_LINES_KEPT = 8;
/**
 * Global options put in front of the destination's arguments: FFmpeg reports on stdout, twice a
 * second while it works, how many bytes it has written to the destination (`total_size=`). That
 * is how a drain sees FFmpeg still sending after its stdin closed.
 */
const PROGRESS_ARGS = ["-progress", "pipe:1", "-stats_period", "0.5"];

/** "video" or "audio". */
export type MediaTrack = keyof StreamConfiguration;

/**
 * One input stream in FFmpeg's `Input #0` listing: `Stream #0:1: Audio: aac (LC), 44100 Hz, …`,
 * with an id (`#0:0[0x100]`) or a language (`#0:1(eng)`) in some formats.
 */
const INPUT_STREAM_LINE = /^Stream #0:\d+(?:\[[^\]]*\])?(?:\([^)]*\))?: (Video|Audio):/;

/**
 * The tracks the FFmpeg of `attempt` reads from its input, complete once the attempt is connected
 * (FFmpeg lists its input before it opens the destination). Undefined before FFmpeg listed them,
 * and for an attempt of another engine, which carries whatever it is given.
 */
export function ffmpegInputTracks(attempt: EngineAttempt): ReadonlySet<MediaTrack> | undefined {
  return attempt instanceof FfmpegAttempt ? attempt.inputTracks : undefined;
}

export class FfmpegEngine implements RelayEngine {
  readonly name = "ffmpeg";
  readonly #options: FfmpegEngineOptions;

  constructor(options: FfmpegEngineOptions) {
    this.#options = options;
  }

  start(context: EngineContext): EngineAttempt {
    const options = this.#options;
    try {
      const child = options.pool.spawn(options.ffmpegPath, [
        ...PROGRESS_ARGS,
        ...buildFfmpegArgs(context.destination, {
          ioTimeoutSeconds: options.ioTimeoutSeconds,
          caFile: options.tls?.caFile,
        }),
      ], { stdin: "piped", stdout: "piped", stderr: "piped" });
      return new FfmpegAttempt(child, options, context);
    } catch (error) {
      const failure = new DestinationFailure(
        "internal",
        `cannot start ${options.ffmpegPath}: ${(error as Error).message}`,
        { cause: error },
      );
      return failedAttempt(failure);
    }
  }
}

/** An attempt that failed before it began. */
export function failedAttempt(failure: DestinationFailure): EngineAttempt {
  return {
    pid: null,
    bytesOut: 0,
    write: () => Promise.reject(failure),
    finish: () => Promise.resolve(),
    abort: () => Promise.resolve(),
    ended: Promise.resolve(failure),
  };
}

class FfmpegAttempt implements EngineAttempt {
  readonly #child: Deno.ChildProcess;
  readonly #options: FfmpegEngineOptions;
  readonly #context: EngineContext;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  #headerSent = false;
  #finished = false;
  /** FFmpeg printed `Output #0`: the destination accepted the publish. */
  #connected = false;
  readonly #startedAt = performance.now();
  #bytesOut = 0;
  /** Filled from FFmpeg's `Input #0` listing; see `ffmpegInputTracks`. */
  #inputTracks: Set<MediaTrack> | undefined;
  /** Between `Input #0` and `Output #0`: stderr lines are FFmpeg's listing of its input. */
  #listingInput = false;
  readonly ended: Promise<DestinationFailure | undefined>;

  constructor(child: Deno.ChildProcess, options: FfmpegEngineOptions, context: EngineContext) {
    this.#child = child;
    this.#options = options;
    this.#context = context;
    const writer = child.stdin.getWriter();
    this.#writer = writer;
    const recent: string[] = [];
    const stderrDone = this.#readStderr(child.stderr, recent);
    const progressDone = this.#readProgress(child.stdout);
    this.ended = (async () => {
      const status = await child.status;
      // Its stdin goes with it (a pending write rejects): no pipe is left open, whoever ended it.
      // The abort rejects only for a pipe already closed or errored; the exit status reports.
      await writer.abort(new Deno.errors.BrokenPipe("ffmpeg exited")).catch(() => {});
      await Promise.all([stderrDone, progressDone]);
      if (this.#finished && status.success) return undefined;
      // An attempt that never connected and ended at -rw_timeout or later was met with silence.
      const timeout = options.ioTimeoutSeconds;
      const silent = !this.#connected && performance.now() - this.#startedAt >= timeout * 1000;
      return ffmpegFailure(recent, status, { unansweredForSeconds: silent ? timeout : undefined });
    })();
  }

  get pid(): number {
    return this.#child.pid;
  }

  get bytesOut(): number {
    return this.#bytesOut;
  }

  get inputTracks(): ReadonlySet<MediaTrack> | undefined {
    // FFmpeg starts no output without a stream: a listing with none we could read is one printed
    // in a form we do not know, and says nothing (rather than "no track", which would restart).
    return this.#inputTracks?.size ? this.#inputTracks : undefined;
  }

  async write(packets: readonly MediaPacket[]): Promise<void> {
    const tags = encodeFlvTags(packets);
    if (!this.#headerSent) {
      this.#headerSent = true;
      const header = flvFileHeader();
      const first = new Uint8Array(header.length + tags.length);
      first.set(header);
      first.set(tags, header.length);
      return await this.#toStdin(first);
    }
    await this.#toStdin(tags);
  }

  /** Writes to FFmpeg's stdin; one that FFmpeg closed by exiting is a broken pipe. */
  async #toStdin(bytes: Uint8Array): Promise<void> {
    try {
      await this.#writer.write(bytes);
    } catch (error) {
      // A WritableStream closed or errored under the writer rejects with a TypeError: said as
      // what it is, so that the supervisor tells it from a bug of ours.
      if (error instanceof TypeError) {
        throw new Deno.errors.BrokenPipe(`FFmpeg's stdin is closed (${error.message})`);
      }
      throw error;
    }
  }

  async finish(): Promise<void> {
    this.#finished = true;
    try {
      if (!this.#headerSent) {
        this.#headerSent = true;
        await this.#writer.write(flvFileHeader());
      }
      await this.#writer.close();
    } catch (error) {
      // FFmpeg already gone: its exit is what `ended` reports.
      if (!(error instanceof Deno.errors.BrokenPipe) && !(error instanceof TypeError)) throw error;
    }
  }

  async abort(): Promise<void> {
    await this.#options.pool.terminate(
      this.#child,
      this.#options.stopGraceMs,
      () => engineLog.warn("destination ignored SIGTERM: SIGKILL", this.#context.logContext),
    );
    await this.ended;
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
        if (size) this.#bytesOut = Number(size[1]);
      }
    }
  }

  async #readStderr(stderr: ReadableStream<Uint8Array>, recent: string[]): Promise<void> {
    const decoder = new TextDecoder();
    const redact = ffmpegLogRedactor(this.#context.destination);
    let carry = "";
    const onLine = (raw: string) => {
      const line = redact(raw.trim()).slice(0, MAX_STDERR_LINE);
      if (line === "") return;
      this.#readInputListing(line);
      if (line.startsWith("Output #0")) {
        this.#connected = true;
        this.#context.onConnected();
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

  /**
   * Notes the tracks FFmpeg lists under `Input #0`: those it found while probing the start of its
   * input, the only ones it will ever read (`-map 0` maps them when it starts).
   */
  #readInputListing(line: string): void {
    if (line.startsWith("Input #0")) {
      this.#inputTracks = new Set();
      this.#listingInput = true;
    } else if (line.startsWith("Output #0") || line.startsWith("Stream mapping")) {
      this.#listingInput = false;
    } else if (this.#listingInput) {
      const kind = INPUT_STREAM_LINE.exec(line)?.[1];
      if (kind !== undefined) this.#inputTracks?.add(kind === "Video" ? "video" : "audio");
    }
  }
}
