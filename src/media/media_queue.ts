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

  /** Queues a media packet unless the drop policy says no. Returns whether it was queued. */
  pushMedia(packet: MediaPacket): boolean {
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
    this.#items.push({ kind: "media", packet });
    this.#queuedBytes += packet.payload.length;
    this.#notify();
    return true;
  }

  pushControl(control: Control): void {
    if (this.#closed) return;
    this.#items.push({ kind: "control", control });
    this.#notify();
  }

  /** Removes and returns everything queued, oldest first. */
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
