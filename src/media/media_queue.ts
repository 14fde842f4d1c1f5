/**
 * A bounded queue between a live stream and one slow reader (a player socket, an FFmpeg stdin).
 * The publisher never waits on it: when the reader falls behind and the queue is full, media is
 * dropped until the next video keyframe (audio and video together, so they stay in sync), and the
 * reader resumes on a picture it can decode. Control items (protocol messages) are never dropped.
 *
 * @module
 */

import { type MediaPacket, TagType } from "./flv.ts";

/** An item in the queue: media subject to the drop policy, or a control item that is not. */
export type QueueItem<Control> =
  | { readonly kind: "media"; readonly packet: MediaPacket }
  | { readonly kind: "control"; readonly control: Control };

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
  /**
   * When the oldest queued item was queued (`performance.now()`), for `oldestAgeMs`. Items are
   * only ever taken all at once, so the oldest is the first one queued into an empty queue: one
   * clock read per batch, none per packet.
   */
  #oldestAt = 0;
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
    if (this.#items.length === 0) this.#oldestAt = now;
    this.#items.push({ kind: "media", packet });
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
    if (this.#items.length === 0) this.#oldestAt = performance.now();
    this.#items.push({ kind: "control", control });
    this.#notify();
  }

  /**
   * How long the oldest queued item has waited, in milliseconds (0 when the queue is empty): how
   * far the reader lags behind the stream. `now` is a `performance.now()` reading.
   */
  oldestAgeMs(now: number = performance.now()): number {
    return this.#items.length === 0 ? 0 : Math.max(0, now - this.#oldestAt);
  }

  /**
   * The way to drain the queue: yields everything queued as one batch (oldest first) each time
   * something is, so a reader writes it in one call. Ends when the queue is closed and empty, or
   * as soon as `signal` aborts (what is still queued is then left in it).
   *
   * ```ts
   * for await (const batch of queue.batches(signal)) await write(batch);
   * ```
   */
  async *batches(signal?: AbortSignal): AsyncGenerator<QueueItem<Control>[], void, undefined> {
    while (!signal?.aborted) {
      if (this.#items.length > 0) {
        yield this.takeAll();
      } else if (this.#closed) {
        return;
      } else {
        await this.#waitOrAbort(signal);
      }
    }
  }

  /**
   * Removes and returns everything queued, oldest first. With `wait`, the cheaper way to drain for
   * a reader that takes one packet at a time most of the time (a destination's pump): no async
   * generator in between.
   */
  takeAll(): QueueItem<Control>[] {
    const items = this.#items;
    this.#items = [];
    this.#queuedBytes = 0;
    return items;
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
