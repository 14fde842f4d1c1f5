/**
 * Thumbnails of live streams: the latest keyframe in a stream's GOP cache, with its sequence
 * header, decoded by FFmpeg into one JPEG. Cached per stream for a few seconds (a dashboard on
 * every operator's screen asks often) and at most a few decodes at a time relay-wide, so thumbnails
 * can never take the CPU the relay needs for streaming.
 *
 * @module
 */

import { encodeFlvTags, flvFileHeader, type MediaPacket, TagType } from "./flv.ts";
import type { GopCache } from "./gop_cache.ts";

export interface ThumbnailerOptions {
  ffmpegPath: string;
  /** How long a thumbnail is served before a new one is decoded. */
  cacheMs?: number;
  /** Decodes running at once, relay-wide. */
  maxConcurrent?: number;
  /** A decode taking longer is killed. */
  timeoutMs?: number;
}

/** Too many decodes running: try again in a moment. */
export class ThumbnailBusyError extends Error {
  constructor() {
    super("too many thumbnails being decoded");
    this.name = "ThumbnailBusyError";
  }
}

interface CacheEntry {
  at: number;
  jpeg: Promise<Uint8Array | undefined>;
}

/** The FLV FFmpeg needs for one picture: header, video sequence header, the latest keyframe. */
export function keyframeFlv(gop: Pick<GopCache, "videoSequenceHeader" | "snapshot">):
  | Uint8Array
  | undefined {
  const header = gop.videoSequenceHeader;
  const keyframe = gop.snapshot().find((packet: MediaPacket) =>
    packet.type === TagType.Video && packet.keyframe && !packet.sequenceHeader
  );
  if (header === undefined || keyframe === undefined) return undefined;
  // Both at the keyframe's time: FFmpeg then has nothing to wait for.
  const tags = encodeFlvTags([{ ...header, timestamp: keyframe.timestamp }, keyframe]);
  const out = new Uint8Array(13 + tags.length);
  out.set(flvFileHeader(false, true));
  out.set(tags, 13);
  return out;
}

export class Thumbnailer {
  readonly #ffmpegPath: string;
  readonly #cacheMs: number;
  readonly #maxConcurrent: number;
  readonly #timeoutMs: number;
  readonly #cache = new Map<string, CacheEntry>();
  #running = 0;

  constructor(options: ThumbnailerOptions) {
    this.#ffmpegPath = options.ffmpegPath;
    this.#cacheMs = options.cacheMs ?? 5_000;
    this.#maxConcurrent = options.maxConcurrent ?? 2;
    this.#timeoutMs = options.timeoutMs ?? 5_000;
    if (!(this.#maxConcurrent >= 1)) {
      throw new RangeError(`maxConcurrent must be >= 1, got ${this.#maxConcurrent}`);
    }
  }

  /** Decodes running now. */
  get running(): number {
    return this.#running;
  }

  /**
   * A JPEG of the stream's latest keyframe, or undefined when it has none (no video yet). Throws
   * `ThumbnailBusyError` when `maxConcurrent` decodes are running already.
   */
  get(key: string, gop: Pick<GopCache, "videoSequenceHeader" | "snapshot">): Promise<
    Uint8Array | undefined
  > {
    const now = performance.now();
    for (const [cachedKey, entry] of this.#cache) {
      if (now - entry.at > this.#cacheMs) this.#cache.delete(cachedKey);
    }
    const cached = this.#cache.get(key);
    if (cached !== undefined) return cached.jpeg;
    const flv = keyframeFlv(gop);
    if (flv === undefined) return Promise.resolve(undefined);
    if (this.#running >= this.#maxConcurrent) throw new ThumbnailBusyError();
    this.#running++;
    const jpeg = this.#decode(flv).finally(() => this.#running--);
    const entry = { at: now, jpeg };
    this.#cache.set(key, entry);
    // A failed decode is not kept: the next request tries again.
    jpeg.catch(() => {
      if (this.#cache.get(key) === entry) this.#cache.delete(key);
    });
    return jpeg;
  }

  async #decode(flv: Uint8Array): Promise<Uint8Array> {
    const child = new Deno.Command(this.#ffmpegPath, {
      args: [
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "flv",
        "-i",
        "pipe:0",
        "-frames:v",
        "1",
        "-q:v",
        "5",
        "-f",
        "mjpeg",
        "pipe:1",
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, this.#timeoutMs);
    try {
      const write = (async () => {
        const writer = child.stdin.getWriter();
        try {
          await writer.write(flv);
          await writer.close();
        } catch (error) {
          // FFmpeg may exit before reading it all (a picture from the first bytes): not an error.
          if (!(error instanceof Deno.errors.BrokenPipe)) throw error;
        }
      })();
      const [output] = await Promise.all([child.output(), write]);
      if (timedOut) throw new Error(`FFmpeg took more than ${this.#timeoutMs} ms for a thumbnail`);
      if (!output.success || output.stdout.length === 0) {
        const stderr = new TextDecoder().decode(output.stderr).trim().split("\n").at(-1) ?? "";
        throw new Error(`FFmpeg could not decode a thumbnail (exit ${output.code}): ${stderr}`);
      }
      return output.stdout;
    } finally {
      clearTimeout(timer);
    }
  }
}
