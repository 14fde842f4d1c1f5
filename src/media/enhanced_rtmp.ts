/**
 * Enhanced RTMP (E-RTMP v1 and v2, veovera/enhanced-rtmp) tag headers: the `ExVideoTagHeader` and
 * `ExAudioTagHeader` parsed in full (ModEx prefixes, multitrack OneTrack / ManyTracks /
 * ManyTracksManyCodecs with their track ids and sizes), and the rewrite of a multitrack tag into
 * the single-track tag one destination wants (`selectRendition`), without decoding anything.
 *
 * The relay forwards tags untouched; this module only reads them (keyframes, sequence starts,
 * codecs, tracks) and, for a destination that asks for one rendition, re-frames the bytes of the
 * chosen track under an ordinary header.
 *
 * @module
 */

/** `VideoPacketType` of the specification. */
export const VideoPacketType = {
  SequenceStart: 0,
  CodedFrames: 1,
  SequenceEnd: 2,
  /** CodedFrames with a composition time of zero left out. */
  CodedFramesX: 3,
  Metadata: 4,
  MPEG2TSSequenceStart: 5,
  Multitrack: 6,
  ModEx: 7,
} as const;

/** `AudioPacketType` of the specification. */
export const AudioPacketType = {
  SequenceStart: 0,
  CodedFrames: 1,
  SequenceEnd: 2,
  MultichannelConfig: 4,
  Multitrack: 5,
  ModEx: 7,
} as const;

/** `AvMultitrackType` of the specification. */
export const MultitrackType = { OneTrack: 0, ManyTracks: 1, ManyTracksManyCodecs: 2 } as const;

/** `VideoFrameType` of the specification. */
export const VideoFrameType = {
  KeyFrame: 1,
  InterFrame: 2,
  DisposableInterFrame: 3,
  GeneratedKeyFrame: 4,
  Command: 5,
} as const;

/** The legacy FLV sound format that announces an `ExAudioTagHeader`. */
export const SOUND_FORMAT_EX_HEADER = 9;

/** One ModEx entry: its type (high nibble) and data, in the order they were sent. */
export interface ModEx {
  readonly type: number;
  readonly data: Uint8Array;
}

/** One track of an Enhanced RTMP tag. */
export interface ExTrack {
  /** 0 for a tag without the multitrack wrapper (the default track). */
  readonly trackId: number;
  readonly fourCc: string;
  /** The track's body: what follows the header (for AVC/HEVC/VVC CodedFrames, CTS first). */
  readonly body: Uint8Array;
}

/** An `ExVideoTagHeader` (or `ExAudioTagHeader`) and its tracks. */
export interface ExTag {
  /** Video only: `VideoFrameType`; 0 for audio. */
  readonly frameType: number;
  /** The packet type of the tracks (after ModEx and Multitrack are taken off). */
  readonly packetType: number;
  readonly modEx: readonly ModEx[];
  /** The `AvMultitrackType`, or undefined without the multitrack wrapper. */
  readonly multitrack: number | undefined;
  /** Video only: the `VideoCommand` of a command frame (which has no tracks). */
  readonly command?: number;
  readonly tracks: readonly ExTrack[];
}

/** True when a video tag body starts with an `ExVideoTagHeader`. */
export function isExVideo(payload: Uint8Array): boolean {
  return payload.length > 0 && (payload[0]! & 0x80) !== 0;
}

/** True when an audio tag body starts with an `ExAudioTagHeader`. */
export function isExAudio(payload: Uint8Array): boolean {
  return payload.length > 0 && payload[0]! >> 4 === SOUND_FORMAT_EX_HEADER;
}

/** True when a tag of FLV type `type` (9 video, 8 audio; data never) has an Enhanced header. */
export function isExTag(tag: { readonly type: number; readonly payload: Uint8Array }): boolean {
  return tag.type === 9 ? isExVideo(tag.payload) : tag.type === 8 && isExAudio(tag.payload);
}

/** Parses an Enhanced video (type 9) or audio tag body; throws `SyntaxError` as they do. */
export function parseExTag(tag: { readonly type: number; readonly payload: Uint8Array }): ExTag {
  return tag.type === 9 ? parseExVideo(tag.payload) : parseExAudio(tag.payload);
}

/** A tag's codecs: its tracks' FourCCs, each once ("hvc1", or "hvc1,av01" when they differ). */
export function codecsOf(tag: ExTag): string {
  return [...new Set(tag.tracks.map((track) => track.fourCc.trim()))].join(",");
}

class Reader {
  offset: number;
  constructor(readonly bytes: Uint8Array, offset: number) {
    this.offset = offset;
  }
  need(count: number, what: string): void {
    if (this.offset + count > this.bytes.length) {
      throw new SyntaxError(`Enhanced RTMP tag truncated in ${what}`);
    }
  }
  u8(what: string): number {
    this.need(1, what);
    return this.bytes[this.offset++]!;
  }
  u16(what: string): number {
    this.need(2, what);
    const value = (this.bytes[this.offset]! << 8) | this.bytes[this.offset + 1]!;
    this.offset += 2;
    return value;
  }
  u24(what: string): number {
    this.need(3, what);
    const b = this.bytes;
    const value = (b[this.offset]! << 16) | (b[this.offset + 1]! << 8) | b[this.offset + 2]!;
    this.offset += 3;
    return value;
  }
  take(count: number, what: string): Uint8Array {
    this.need(count, what);
    const out = this.bytes.subarray(this.offset, this.offset + count);
    this.offset += count;
    return out;
  }
  fourCc(): string {
    const b = this.take(4, "FourCC");
    return String.fromCharCode(b[0]!, b[1]!, b[2]!, b[3]!);
  }
}

interface Kind {
  readonly multitrack: number;
  readonly modEx: number;
}
const VIDEO: Kind = { multitrack: VideoPacketType.Multitrack, modEx: VideoPacketType.ModEx };
const AUDIO: Kind = { multitrack: AudioPacketType.Multitrack, modEx: AudioPacketType.ModEx };

/**
 * Parses an `ExVideoTagHeader` tag body. Throws `SyntaxError` when it is not one, or is truncated
 * or inconsistent (a track size running past the end, a Multitrack inside a Multitrack).
 */
export function parseExVideo(payload: Uint8Array): ExTag {
  if (!isExVideo(payload)) throw new SyntaxError("not an ExVideoTagHeader");
  const first = payload[0]!;
  const frameType = (first >> 4) & 0x07;
  const reader = new Reader(payload, 1);
  const { packetType, modEx } = readModEx(reader, first & 0x0f, VIDEO.modEx);
  if (frameType === VideoFrameType.Command && packetType !== VideoPacketType.Metadata) {
    // A command frame: one UI8, no FourCC and no body.
    const command = reader.u8("video command");
    return { frameType, packetType, modEx, multitrack: undefined, command, tracks: [] };
  }
  return { frameType, ...readTracks(reader, packetType, modEx, VIDEO) };
}

/** Parses an `ExAudioTagHeader` tag body; throws `SyntaxError` like `parseExVideo`. */
export function parseExAudio(payload: Uint8Array): ExTag {
  if (!isExAudio(payload)) throw new SyntaxError("not an ExAudioTagHeader");
  const reader = new Reader(payload, 1);
  const { packetType, modEx } = readModEx(reader, payload[0]! & 0x0f, AUDIO.modEx);
  return { frameType: 0, ...readTracks(reader, packetType, modEx, AUDIO) };
}

function readModEx(
  reader: Reader,
  packetType: number,
  modExType: number,
): { packetType: number; modEx: ModEx[] } {
  const modEx: ModEx[] = [];
  while (packetType === modExType) {
    let size = reader.u8("ModEx size") + 1;
    if (size === 256) size = reader.u16("ModEx size") + 1;
    const data = reader.take(size, "ModEx data");
    const next = reader.u8("ModEx type");
    modEx.push({ type: next >> 4, data });
    packetType = next & 0x0f;
  }
  return { packetType, modEx };
}

function readTracks(
  reader: Reader,
  packetType: number,
  modEx: ModEx[],
  kind: Kind,
): Omit<ExTag, "frameType"> {
  if (packetType !== kind.multitrack) {
    const fourCc = reader.fourCc();
    const body = reader.bytes.subarray(reader.offset);
    return { packetType, modEx, multitrack: undefined, tracks: [{ trackId: 0, fourCc, body }] };
  }
  const types = reader.u8("multitrack type");
  const multitrack = types >> 4;
  const inner = types & 0x0f;
  if (inner === kind.multitrack) throw new SyntaxError("Multitrack inside Multitrack");
  if (multitrack > MultitrackType.ManyTracksManyCodecs) {
    throw new SyntaxError(`unknown multitrack type ${multitrack}`);
  }
  let fourCc = multitrack === MultitrackType.ManyTracksManyCodecs ? "" : reader.fourCc();
  const tracks: ExTrack[] = [];
  const end = reader.bytes.length;
  // The specification's loop: every track of the message is read, to the last byte.
  do {
    if (multitrack === MultitrackType.ManyTracksManyCodecs) fourCc = reader.fourCc();
    const trackId = reader.u8("track id");
    if (multitrack === MultitrackType.OneTrack) {
      tracks.push({ trackId, fourCc, body: reader.bytes.subarray(reader.offset) });
      break;
    }
    const size = reader.u24("track size");
    tracks.push({ trackId, fourCc, body: reader.take(size, `track ${trackId}`) });
  } while (reader.offset < end);
  return { packetType: inner, modEx, multitrack, tracks };
}

/** True for the packet types that carry a decoder configuration. */
export function isSequenceStart(packetType: number, video: boolean): boolean {
  return packetType === 0 || (video && packetType === VideoPacketType.MPEG2TSSequenceStart);
}

/** True for packet types that carry coded media (video: CodedFrames or CodedFramesX). */
export function isCodedFrames(packetType: number, video: boolean): boolean {
  return packetType === 1 || (video && packetType === VideoPacketType.CodedFramesX);
}

/** Which rendition a destination wants from a multitrack stream. */
export interface RenditionSelection {
  /** Video track id; tags of other video tracks are dropped. */
  videoTrack: number;
  /** Audio track id; tags of other audio tracks are dropped. */
  audioTrack: number;
  /**
   * Write AVC video and AAC audio as legacy FLV tags (codec id 7, sound format 10) instead of
   * single-track Enhanced RTMP ones. Default true: every platform ingest reads the legacy form,
   * while Enhanced `avc1`/`mp4a` is newer than most of them (FFmpeg before 6.1 included).
   */
  legacyAvcAac?: boolean;
}

/** A tag as `selectRendition` sees it: FLV tag type (8 audio, 9 video, 18 data) and body. */
export interface TagBody {
  readonly type: number;
  readonly payload: Uint8Array;
}

/**
 * The tag body a destination that wants one rendition gets for `tag`: the chosen track's data
 * under an ordinary (non-multitrack) header with its FourCC and the tag's packet type, or
 * undefined when the tag carries nothing for that track (it is dropped). Data tags pass as they
 * are.
 *
 * Track ids: a tag without the multitrack wrapper (legacy, or Enhanced without Multitrack) is
 * track 0, the specification's default track, "the representation that the publisher expects
 * most receivers to select when no additional selection logic is applied". OBS's Enhanced
 * Broadcasting sends that track so (H.264 as legacy tags) and only the others wrapped.
 */
export function selectRendition(
  tag: TagBody,
  selection: RenditionSelection,
): Uint8Array | undefined {
  const video = tag.type === 9;
  if (!video && tag.type !== 8) return tag.payload;
  const wanted = video ? selection.videoTrack : selection.audioTrack;
  const enhanced = video ? isExVideo(tag.payload) : isExAudio(tag.payload);
  if (!enhanced) return wanted === 0 ? tag.payload : undefined;
  const parsed = video ? parseExVideo(tag.payload) : parseExAudio(tag.payload);
  if (parsed.multitrack === undefined) {
    // Command frames have no track: they concern the default one.
    return wanted === 0 ? tag.payload : undefined;
  }
  const track = parsed.tracks.find((t) => t.trackId === wanted);
  if (track === undefined) return undefined;
  const legacy = selection.legacyAvcAac ?? true;
  if (legacy && video && track.fourCc === "avc1") return legacyAvc(parsed, track);
  if (legacy && !video && track.fourCc === "mp4a") return legacyAac(parsed, track);
  return singleTrack(parsed, track, video);
}

/** An ordinary Enhanced header (ModEx entries kept) with `track`'s FourCC and body. */
function singleTrack(tag: ExTag, track: ExTrack, video: boolean): Uint8Array {
  const head: number[] = [];
  const modExType = video ? VideoPacketType.ModEx : AudioPacketType.ModEx;
  const first = video ? 0x80 | (tag.frameType << 4) : SOUND_FORMAT_EX_HEADER << 4;
  head.push(first | (tag.modEx.length > 0 ? modExType : tag.packetType));
  const parts: Uint8Array[] = [];
  tag.modEx.forEach((entry, index) => {
    const size = entry.data.length - 1;
    if (size < 255) head.push(size);
    else head.push(0xff, size >> 8, size & 0xff);
    parts.push(new Uint8Array(head.splice(0)), entry.data);
    const last = index === tag.modEx.length - 1;
    head.push((entry.type << 4) | (last ? tag.packetType : modExType));
  });
  for (let i = 0; i < 4; i++) head.push(track.fourCc.charCodeAt(i) & 0xff);
  parts.push(new Uint8Array(head), track.body);
  return concat(parts);
}

/** A legacy AVC tag: [frameType | 7], AVCPacketType, CTS, data. Undefined for what has no form. */
function legacyAvc(tag: ExTag, track: ExTrack): Uint8Array | undefined {
  const frameType = tag.frameType === VideoFrameType.Command ? 1 : tag.frameType;
  const first = (frameType << 4) | 7;
  switch (tag.packetType) {
    case VideoPacketType.SequenceStart:
      return concat([new Uint8Array([first, 0, 0, 0, 0]), track.body]);
    case VideoPacketType.CodedFrames: // the body starts with the SI24 CTS, as legacy has it
      return concat([new Uint8Array([first, 1]), track.body]);
    case VideoPacketType.CodedFramesX:
      return concat([new Uint8Array([first, 1, 0, 0, 0]), track.body]);
    case VideoPacketType.SequenceEnd:
      return new Uint8Array([first, 2, 0, 0, 0]);
    default:
      return undefined; // Metadata and the like have no legacy form: a legacy reader gets none
  }
}

/** A legacy AAC tag: 0xAF (AAC; the rate/size/type bits are fixed for AAC), AACPacketType, data. */
function legacyAac(tag: ExTag, track: ExTrack): Uint8Array | undefined {
  if (tag.packetType !== AudioPacketType.SequenceStart && tag.packetType !== 1) return undefined;
  return concat([new Uint8Array([0xaf, tag.packetType]), track.body]);
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Uint8Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

/** Builders of Enhanced RTMP tag bodies, for publishers of our own (tests, the native engine). */
export interface ExTrackInput {
  trackId: number;
  fourCc: string;
  body: Uint8Array;
}

/**
 * An Enhanced video (or audio, with `frameType` undefined) tag body: single-track when
 * `multitrack` is undefined (one track, its id ignored), else wrapped as that multitrack type.
 */
export function buildExTag(options: {
  video: boolean;
  frameType?: number;
  packetType: number;
  multitrack?: number;
  tracks: readonly ExTrackInput[];
}): Uint8Array {
  const { video, packetType, multitrack, tracks } = options;
  const first = video ? 0x80 | ((options.frameType ?? 0) << 4) : SOUND_FORMAT_EX_HEADER << 4;
  const fourCcBytes = (fourCc: string) =>
    new Uint8Array([...fourCc].map((c) => c.charCodeAt(0) & 0xff));
  if (multitrack === undefined) {
    const track = tracks[0];
    if (track === undefined || tracks.length !== 1) {
      throw new RangeError("a single-track tag has exactly one track");
    }
    return concat([new Uint8Array([first | packetType]), fourCcBytes(track.fourCc), track.body]);
  }
  const marker = video ? VideoPacketType.Multitrack : AudioPacketType.Multitrack;
  const parts: Uint8Array[] = [new Uint8Array([first | marker, (multitrack << 4) | packetType])];
  if (multitrack !== MultitrackType.ManyTracksManyCodecs) {
    parts.push(fourCcBytes(tracks[0]?.fourCc ?? "    "));
  }
  if (multitrack === MultitrackType.OneTrack && tracks.length !== 1) {
    throw new RangeError("a OneTrack tag has exactly one track");
  }
  for (const track of tracks) {
    if (multitrack === MultitrackType.ManyTracksManyCodecs) parts.push(fourCcBytes(track.fourCc));
    const size = track.body.length;
    parts.push(
      multitrack === MultitrackType.OneTrack
        ? new Uint8Array([track.trackId])
        : new Uint8Array([track.trackId, size >> 16, (size >> 8) & 0xff, size & 0xff]),
    );
    parts.push(track.body);
  }
  return concat(parts);
}
