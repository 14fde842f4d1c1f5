/**
 * A bounded queue between a live stream and one slow reader (a player socket, an FFmpeg stdin).
 * The publisher never waits on it: when the reader falls behind and the queue is full, media is
 * dropped until the next video keyframe (audio and video together, so they stay in sync), and the
 * reader resumes on a picture it can decode. Control items (protocol messages) are never dropped.
 *
 * @module
 */

import { type MediaPacket, TagType } from "./flv.ts";

/**
 * An item in the queue: media subject to the drop policy, or a control item that is not. `at` is
 * when it was queued (`performance.now()`), for `oldestAgeMs`.
 */
export type QueueItem<Control> =
  | { readonly kind: "media"; readonly packet: MediaPacket; readonly at: number }
  | { readonly kind: "control"; readonly control: Control; readonly at: number };

export interface MediaQueueStats {
  queuedBytes: number;
  droppedPackets: number;
  droppedBytes: number;
  dropEpisodes: number;
}

export class MediaQueue<Control = never> {
  readonly maxBytes: number;
  #items: QueueItem<Control>[] = [];
  #queuedBytes = 0;
  #dropping = false;
  #sawVideo = false;
  #closed = false;
  #wake: (() => void) | undefined;
  #onDropStart: ((stats: MediaQueueStats) => void) | undefined;
  droppedPackets = 0;
  droppedBytes = 0;
  dropEpisodes = 0;

  /**
   * @param maxBytes media bytes the queue may hold before it drops
   * @param onDropStart called once at the start of each drop episode, for one log line
   */
  constructor(maxBytes: number, onDropStart?: (stats: MediaQueueStats) => void) {
    if (!(maxBytes > 0)) throw new RangeError(`queue size must be > 0 bytes, got ${maxBytes}`);
    this.maxBytes = maxBytes;
    this.#onDropStart = onDropStart;
  }

  get queuedBytes(): number {
    return this.#queuedBytes;
  }

  get closed(): boolean {
    return this.#closed;
  }

  get stats(): MediaQueueStats {
    return {
      queuedBytes: this.#queuedBytes,
      droppedPackets: this.droppedPackets,
      droppedBytes: this.droppedBytes,
      dropEpisodes: this.dropEpisodes,
    };
  }

  /**
   * Queues a media packet unless the drop policy says no. Returns whether it was queued. `now`
   * (`performance.now()`) is when it arrived, for `oldestAgeMs`.
   */
  pushMedia(packet: MediaPacket, now: number = performance.now()): boolean {
    if (this.#closed) return false;
    if (packet.type === TagType.Video) this.#sawVideo = true;
    // Headers are tiny and a reader cannot decode anything without them: never drop them.
    const essential = packet.sequenceHeader || packet.type === TagType.Script;
    if (!essential) {
      const resumePoint = packet.keyframe || (!this.#sawVideo && packet.type === TagType.Audio);
      if (
        this.#dropping && resumePoint && this.#queuedBytes + packet.payload.length <= this.maxBytes
      ) {
        this.#dropping = false;
      }
      if (!this.#dropping && this.#queuedBytes + packet.payload.length > this.maxBytes) {
        this.#dropping = true;
        this.dropEpisodes++;
        this.#onDropStart?.(this.stats);
      }
      if (this.#dropping) {
        this.droppedPackets++;
        this.droppedBytes += packet.payload.length;
        return false;
      }
    }
    this.#items.push({ kind: "media", packet, at: now });
    this.#queuedBytes += packet.payload.length;
    this.#notify();
    return true;
  }

  /**
   * The stream's tracks changed (a publisher came back with other settings): without video, audio
   * ends a drop again, as in a stream that never had video; with video, only a keyframe does.
   */
  setVideoTrack(present: boolean): void {
    this.#sawVideo = present;
  }

  pushControl(control: Control): void {
    if (this.#closed) return;
    this.#items.push({ kind: "control", control, at: performance.now() });
    this.#notify();
  }

  /**
   * How long the oldest queued item has waited, in milliseconds (0 when the queue is empty): how
   * far the reader lags behind the stream. `now` is a `performance.now()` reading.
   */
  oldestAgeMs(now: number = performance.now()): number {
    const oldest = this.#items[0];
    return oldest === undefined ? 0 : Math.max(0, now - oldest.at);
  }

  /**
   * The way to drain the queue: yields what is queued as one batch (oldest first, at most
   * `maxBytes` of media and the packet that crosses it, as `take`) each time something is, so a
   * reader writes it in one call. Ends when the queue is closed and empty, or as soon as `signal`
   * aborts (what is still queued is then left in it).
   *
   * ```ts
   * for await (const batch of queue.batches(signal)) await write(batch);
   * ```
   */
  async *batches(
    signal?: AbortSignal,
    maxBytes = Infinity,
  ): AsyncGenerator<QueueItem<Control>[], void, undefined> {
    while (!signal?.aborted) {
      if (this.#items.length > 0) {
        yield this.take(maxBytes);
      } else if (this.#closed) {
        return;
      } else {
        await this.#waitOrAbort(signal);
      }
    }
  }

  /**
   * Removes and returns the oldest items: media up to `maxBytes` and the packet that crosses it
   * (control items with them), or everything when it fits. With `wait`, the cheaper way to drain
   * for a reader that takes one packet at a time most of the time (a destination's pump): no
   * async generator in between.
   *
   * A reader behind takes its backlog a piece at a time, so what it has not started on stays
   * here: counted against `maxBytes` of the queue (the drop policy bounds everything not yet
   * being written) and in `oldestAgeMs` (how far behind the reader really is).
   */
  take(maxBytes = Infinity): QueueItem<Control>[] {
    const items = this.#items;
    if (this.#queuedBytes <= maxBytes) {
      this.#items = [];
      this.#queuedBytes = 0;
      return items;
    }
    let count = 0;
    let bytes = 0;
    while (count < items.length && bytes < maxBytes) {
      const item = items[count++]!;
      if (item.kind === "media") bytes += item.packet.payload.length;
    }
    this.#queuedBytes -= bytes;
    // A backlog is a few thousand items at most (the queue is bounded): moving them is cheap,
    // and nothing taken stays referenced from here.
    return items.splice(0, count);
  }

  /** Removes and returns everything queued, oldest first. */
  takeAll(): QueueItem<Control>[] {
    return this.take();
  }

  /** Resolves when an item is queued or the queue is closed. */
  wait(): Promise<void> {
    if (this.#items.length > 0 || this.#closed) return Promise.resolve();
    return new Promise((resolve) => {
      this.#wake = resolve;
    });
  }

  /** Like `wait`, but also resolves when `signal` aborts. */
  #waitOrAbort(signal: AbortSignal | undefined): Promise<void> {
    if (signal === undefined) return this.wait();
    return new Promise((resolve) => {
      const onAbort = () => {
        if (this.#wake === wake) this.#wake = undefined;
        resolve();
      };
      const wake = () => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      };
      this.#wake = wake;
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Stops accepting items; a pending `wait` resolves. Queued items can still be taken. */
  close(): void {
    this.#closed = true;
    this.#notify();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}
