/**
 * One rendition of a multitrack stream, for a destination that names its `video_track` /
 * `audio_track`: each tag reduced to the chosen track (`selectRendition`), and the chosen video
 * track started at a keyframe of its own. The tracks of a multitrack stream need not have their
 * keyframes together, and the stream (the GOP cache's replay, a reader's start) begins at any
 * track's keyframe: without this a destination could begin on the chosen track's inter frames.
 *
 * @module
 */

import { isExTag, parseExTag } from "./enhanced_rtmp.ts";
import { type RenditionSelection, selectRendition } from "./enhanced_rtmp.ts";
import { type MediaPacket, TagType } from "./flv.ts";

/** Stream time after which a chosen track never seen is reported absent. */
const ABSENT_AFTER_MS = 10_000;

export class RenditionFilter {
  readonly selection: RenditionSelection;
  /** The chosen video track has had its first keyframe: before it, its frames cannot decode. */
  #videoStarted = false;
  /** Per kind: the track ids seen while the chosen one has not come (for `absent`). */
  readonly #seen = { video: new Set<number>(), audio: new Set<number>() };
  readonly #found = { video: false, audio: false };
  #firstTimestamp: number | undefined;
  #lastTimestamp = 0;
  #reported = false;

  constructor(selection: RenditionSelection) {
    this.selection = selection;
  }

  /** What the destination gets of `packets`, in order (data tags pass as they are). */
  filter(packets: readonly MediaPacket[]): MediaPacket[] {
    const out: MediaPacket[] = [];
    for (const packet of packets) {
      if (packet.type === TagType.Script) {
        out.push(packet);
        continue;
      }
      this.#firstTimestamp ??= packet.timestamp;
      this.#lastTimestamp = packet.timestamp;
      const payload = selectRendition(packet, this.selection);
      const video = packet.type === TagType.Video;
      if (payload === undefined) {
        this.#note(packet, video);
        continue;
      }
      this.#found[video ? "video" : "audio"] = true;
      if (video && !this.#videoStarted && !packet.sequenceHeader) {
        // Every track of a multitrack tag shares its frame type: the tag's is the chosen track's.
        if (!packet.keyframe) continue;
        this.#videoStarted = true;
      }
      out.push(payload === packet.payload ? packet : { ...packet, payload });
    }
    return out;
  }

  /**
   * Once, when the stream has run `ABSENT_AFTER_MS` without a tag of a chosen track: what to tell
   * the operator ("video track 2 is not in the stream (video tracks 0, 1)"); else undefined.
   */
  absent(): string | undefined {
    if (this.#reported || this.#firstTimestamp === undefined) return undefined;
    if (this.#lastTimestamp - this.#firstTimestamp < ABSENT_AFTER_MS) return undefined;
    const notes: string[] = [];
    for (const kind of ["video", "audio"] as const) {
      const seen = this.#seen[kind];
      if (this.#found[kind] || seen.size === 0) continue;
      const wanted = kind === "video" ? this.selection.videoTrack : this.selection.audioTrack;
      const tracks = [...seen].sort((a, b) => a - b).join(", ");
      notes.push(`${kind} track ${wanted} is not in the stream (${kind} tracks ${tracks})`);
    }
    if (notes.length === 0) return undefined;
    this.#reported = true;
    return notes.join("; ");
  }

  /** Which track(s) a tag the chosen rendition does not take carries, while that matters. */
  #note(packet: MediaPacket, video: boolean): void {
    const kind = video ? "video" : "audio";
    if (this.#found[kind] || this.#reported) return;
    const seen = this.#seen[kind];
    if (!isExTag(packet)) {
      seen.add(0);
      return;
    }
    const tag = parseExTag(packet);
    if (tag.multitrack === undefined) seen.add(0);
    for (const track of tag.tracks) seen.add(track.trackId);
  }
}
