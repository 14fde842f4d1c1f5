/**
 * The GOP cache: what a reader joining a live stream needs to start at once. Metadata, the latest
 * video and audio sequence headers, and every packet since the last video keyframe.
 *
 * @module
 */

import { type MediaPacket, TagType } from "./flv.ts";
import { sameBytes } from "./stream_configuration.ts";

export class GopCache {
  readonly maxBytes: number;
  #metadata: MediaPacket | undefined;
  #videoSequenceHeader: MediaPacket | undefined;
  #audioSequenceHeader: MediaPacket | undefined;
  #frames: MediaPacket[] = [];
  #frameBytes = 0;
  /** True once a keyframe opened the current group and it still fits in `maxBytes`. */
  #collecting = false;

  /** `maxBytes` caps the frames kept; a larger group is dropped until the next keyframe. */
  constructor(maxBytes: number) {
    if (!(maxBytes >= 0)) throw new RangeError(`GOP cache size must be >= 0, got ${maxBytes}`);
    this.maxBytes = maxBytes;
  }

  /** Bytes held in frames (sequence headers and metadata are not counted; they are small). */
  get bytes(): number {
    return this.#frameBytes;
  }

  get metadata(): MediaPacket | undefined {
    return this.#metadata;
  }

  get videoSequenceHeader(): MediaPacket | undefined {
    return this.#videoSequenceHeader;
  }

  get audioSequenceHeader(): MediaPacket | undefined {
    return this.#audioSequenceHeader;
  }

  /** Records one packet of the live stream, in order. */
  push(packet: MediaPacket): void {
    if (packet.type === TagType.Script) {
      this.#metadata = packet;
      return;
    }
    if (packet.sequenceHeader) {
      const previous = packet.type === TagType.Video
        ? this.#videoSequenceHeader
        : this.#audioSequenceHeader;
      // Frames encoded under another configuration cannot be decoded with this one: a reader
      // joining now waits for the next keyframe instead.
      if (previous !== undefined && !sameBytes(previous.payload, packet.payload)) this.#drop();
      if (packet.type === TagType.Video) this.#videoSequenceHeader = packet;
      else this.#audioSequenceHeader = packet;
      return;
    }
    if (packet.keyframe) {
      this.#frames = [];
      this.#frameBytes = 0;
      this.#collecting = true;
    }
    if (!this.#collecting) return;
    if (this.#frameBytes + packet.payload.length > this.maxBytes) {
      // Too long a group to hold: forget it, a reader waits for the next keyframe instead.
      this.#drop();
      return;
    }
    this.#frames.push(packet);
    this.#frameBytes += packet.payload.length;
  }

  /** Headers the stream has seen so far: metadata, then video and audio sequence headers. */
  headers(): MediaPacket[] {
    const out: MediaPacket[] = [];
    if (this.#metadata) out.push(this.#metadata);
    if (this.#videoSequenceHeader) out.push(this.#videoSequenceHeader);
    if (this.#audioSequenceHeader) out.push(this.#audioSequenceHeader);
    return out;
  }

  /** Headers, then the frames from the last keyframe on: a stream a new reader can decode. */
  snapshot(): MediaPacket[] {
    return [...this.headers(), ...this.#frames];
  }

  clear(): void {
    this.#metadata = undefined;
    this.#videoSequenceHeader = undefined;
    this.#audioSequenceHeader = undefined;
    this.#drop();
  }

  /** Forgets the frames held, until the next keyframe. */
  #drop(): void {
    this.#frames = [];
    this.#frameBytes = 0;
    this.#collecting = false;
  }
}
