/**
 * The GOP cache: what a reader joining a live stream needs to start at once. Metadata, the latest
 * video and audio sequence headers (one per track: an Enhanced RTMP v2 multitrack stream has a
 * sequence start for each of its tracks, and a reader needs all of them), and every packet since
 * the last video keyframe.
 *
 * @module
 */

import { isExTag, isSequenceStart, parseExTag } from "./enhanced_rtmp.ts";
import { isSequenceStartPacket, type MediaPacket, TagType } from "./flv.ts";
import { sameBytes } from "./stream_configuration.ts";

/**
 * Audio a stream starts with before its first video keyframe (FFmpeg's muxer writes the first AAC
 * frame, at 0 ms, before the first keyframe, at 23): kept with that keyframe's group, so that a
 * reader joining a moment after the start (a destination whose list came from the control plane)
 * gets the stream as it began. Only this long of it: a stream with no keyframe yet (audio only)
 * is not replayed from its start to a reader joining later.
 */
const START_AUDIO_MS = 1_000;

export class GopCache {
  readonly maxBytes: number;
  #metadata: MediaPacket | undefined;
  /**
   * Latest configuration per track and kind, keyed by `trackKey`, oldest first: a header that
   * replaces another moves to the end, so that a reader applies them in the order they came and
   * ends on the newest (a multitrack header for tracks 0 and 1 after one for track 1 alone).
   */
  #sequenceHeaders = new Map<string, MediaPacket>();
  #frames: MediaPacket[] = [];
  #frameBytes = 0;
  /** True once a keyframe opened the current group and it still fits in `maxBytes`. */
  #collecting = false;
  /** Timestamp of the keyframe that opened the current group. */
  #groupTimestamp = -1;
  /** A video keyframe has come: groups open at keyframes from now on. */
  #keyframeSeen = false;
  /** Timestamp of the stream's first audio frame, while it has no keyframe yet. */
  #startAt: number | undefined;
  /** The audio before the first keyframe is no longer kept (too long, or the codec changed). */
  #startGivenUp = false;

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

  /** The default (track 0, or only) video track's sequence header. */
  get videoSequenceHeader(): MediaPacket | undefined {
    return this.#sequenceHeaders.get(trackKey({ type: TagType.Video, payload: new Uint8Array() }));
  }

  /** The default (track 0, or only) audio track's sequence header. */
  get audioSequenceHeader(): MediaPacket | undefined {
    return this.#sequenceHeaders.get(trackKey({ type: TagType.Audio, payload: new Uint8Array() }));
  }

  /** Records one packet of the live stream, in order. */
  push(packet: MediaPacket): void {
    if (packet.type === TagType.Script) {
      this.#metadata = packet;
      return;
    }
    if (packet.sequenceHeader) {
      const key = trackKey(packet);
      const previous = this.#sequenceHeaders.get(key);
      // Frames encoded under another codec configuration cannot be decoded with this one: a
      // reader joining now waits for the next keyframe instead. (New colorInfo or a channel
      // layout leaves them decodable.)
      const changed = previous !== undefined && !sameBytes(previous.payload, packet.payload);
      if (changed && isSequenceStartPacket(packet)) this.#drop();
      this.#sequenceHeaders.delete(key);
      this.#sequenceHeaders.set(key, packet);
      return;
    }
    // A multitrack stream's renditions have their keyframes at the same instant, one tag per
    // track: the group opens at the first of them and keeps the others, so a reader joining gets
    // a keyframe for every track and not only for the last one sent.
    const sameInstant = this.#collecting && packet.timestamp === this.#groupTimestamp;
    if (packet.keyframe && !sameInstant) {
      this.#groupTimestamp = packet.timestamp;
      // The stream's first keyframe keeps the audio it started with (see START_AUDIO_MS).
      if (this.#keyframeSeen) {
        this.#frames = [];
        this.#frameBytes = 0;
      }
      this.#keyframeSeen = true;
      this.#collecting = true;
    }
    if (!this.#collecting) {
      if (!this.#keyframeSeen && packet.type === TagType.Audio) this.#keepStartAudio(packet);
      return;
    }
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
    for (const type of [TagType.Video, TagType.Audio]) {
      for (const header of this.#sequenceHeaders.values()) {
        if (header.type === type) out.push(header);
      }
    }
    return out;
  }

  /** Headers, then the frames from the last keyframe on: a stream a new reader can decode. */
  snapshot(): MediaPacket[] {
    return [...this.headers(), ...this.#frames];
  }

  clear(): void {
    this.#metadata = undefined;
    this.#sequenceHeaders.clear();
    this.#drop();
  }

  /** Audio before the stream's first keyframe, for its first `START_AUDIO_MS` at most. */
  #keepStartAudio(packet: MediaPacket): void {
    if (this.#startGivenUp) return;
    this.#startAt ??= packet.timestamp;
    const tooLong = packet.timestamp - this.#startAt > START_AUDIO_MS ||
      this.#frameBytes + packet.payload.length > this.maxBytes;
    if (tooLong) {
      this.#drop();
      return;
    }
    this.#frames.push(packet);
    this.#frameBytes += packet.payload.length;
  }

  /** Forgets the frames held, until the next keyframe. */
  #drop(): void {
    this.#frames = [];
    this.#frameBytes = 0;
    this.#collecting = false;
    this.#startGivenUp = true;
  }
}

/**
 * Which track(s) and kind of configuration a header is: "9:0" for the sequence start of a legacy
 * or single-track video tag, "9:0,1" for a multitrack tag starting tracks 0 and 1 together,
 * "9:0/4" for track 0's Metadata (packet type 4; audio's MultichannelConfig likewise). A new
 * header for the same key replaces the old one; others are kept beside it.
 */
function trackKey(packet: Pick<MediaPacket, "type" | "payload">): string {
  let ids = "0";
  let kind = "";
  if (isExTag(packet)) {
    try {
      const tag = parseExTag(packet);
      ids = tag.tracks.map((track) => track.trackId).join(",");
      if (!isSequenceStart(tag.packetType, packet.type === TagType.Video)) {
        kind = `/${tag.packetType}`;
      }
    } catch (error) {
      // Classified a sequence header, so it parsed once already; a failure here is a bug.
      if (!(error instanceof SyntaxError)) throw error;
      throw new TypeError(`sequence header no longer parses: ${error.message}`);
    }
  }
  return `${packet.type}:${ids}${kind}`;
}
