/**
 * FLV tags: what a media payload is (keyframe, sequence header, codec), and the FLV file framing
 * we feed to FFmpeg. RTMP audio/video/data message payloads are FLV tag bodies, so the same
 * inspection serves both. Handles the legacy codec-id form and Enhanced RTMP (FourCC) headers.
 *
 * @module
 */

import {
  codecsOf,
  type ExTag,
  isCodedFrames,
  isExAudio,
  isExTag,
  isExVideo,
  isSequenceStart,
  parseExAudio,
  parseExTag,
  parseExVideo,
  VideoFrameType,
} from "./enhanced_rtmp.ts";

/** FLV tag types, equal to the RTMP message type ids that carry them. */
export const TagType = { Audio: 8, Video: 9, Script: 18 } as const;
export type TagTypeId = typeof TagType[keyof typeof TagType];

/** One media message as the relay passes it around. Immutable once made; shared by every reader. */
export interface MediaPacket {
  readonly type: TagTypeId;
  /** Milliseconds, unsigned 32-bit. */
  readonly timestamp: number;
  readonly payload: Uint8Array;
  /** A video keyframe (a point a new reader may start from). */
  readonly keyframe: boolean;
  /**
   * Decoder configuration a reader needs before any frame, kept for readers who join later: a
   * codec configuration record (AVC/HEVC/AV1 config, AAC AudioSpecificConfig), and Enhanced
   * RTMP's video Metadata (colorInfo) and audio MultichannelConfig.
   */
  readonly sequenceHeader: boolean;
}

/** What the first bytes of a video tag body say. */
export interface VideoTagInfo {
  keyframe: boolean;
  sequenceHeader: boolean;
  /** "avc1", "hvc1", "av01", "vp09", or the legacy codec id as "codec-N". */
  codec: string;
}

/** What the first bytes of an audio tag body say. */
export interface AudioTagInfo {
  sequenceHeader: boolean;
  /** "aac", "mp3", "opus", ... or "format-N". */
  codec: string;
}

const LEGACY_VIDEO_CODECS: Record<number, string> = {
  2: "h263",
  3: "screen",
  4: "vp6",
  5: "vp6a",
  6: "screen2",
  7: "avc1",
  12: "hvc1",
};

const AUDIO_FORMATS: Record<number, string> = {
  0: "pcm",
  1: "adpcm",
  2: "mp3",
  3: "pcm-le",
  4: "nellymoser-16k",
  5: "nellymoser-8k",
  6: "nellymoser",
  7: "g711a",
  8: "g711u",
  10: "aac",
  11: "speex",
  14: "mp3-8k",
};

/**
 * Classifies an Enhanced RTMP tag. Every track of a multitrack tag shares the frame and packet
 * type, so a multitrack tag is a keyframe or a sequence start as a whole; the codec is the first
 * track's FourCC (all of them, comma-separated, when the tracks differ). A tag too broken to parse
 * (truncated, a track running past its end) throws `SyntaxError`: the specification has a
 * receiver "fail in a controlled and predictable manner", and passed on, such a tag would be cached
 * and replayed to every reader.
 */
function inspectEnhanced(
  payload: Uint8Array,
  video: boolean,
): { keyframe: boolean; sequenceHeader: boolean; codec: string } {
  let tag: ExTag;
  try {
    tag = video ? parseExVideo(payload) : parseExAudio(payload);
  } catch (error) {
    if (!(error instanceof SyntaxError)) throw error;
    throw new SyntaxError(
      `malformed Enhanced RTMP ${video ? "video" : "audio"} tag: ${error.message}`,
    );
  }
  const codecs = codecsOf(tag);
  const sequenceHeader = tag.tracks.length > 0 &&
    (isSequenceStart(tag.packetType, video) || isConfiguration(tag.packetType));
  const keyframe = video && tag.frameType === VideoFrameType.KeyFrame &&
    isCodedFrames(tag.packetType, video);
  return { keyframe, sequenceHeader, codec: codecs !== "" ? codecs : "none" };
}

/**
 * Enhanced RTMP packet types that configure the decoder beside the sequence start: video Metadata
 * (colorInfo: HDR signalling, which "MUST be sent prior to the video sequence") and audio
 * MultichannelConfig (the channel layout an empty Opus sequence start defers to). Both 4.
 */
function isConfiguration(packetType: number): boolean {
  return packetType === 4;
}

/**
 * True for a packet that starts a codec's configuration (a sequence start), not for the other
 * configuration packets `sequenceHeader` also marks (Metadata, MultichannelConfig): those neither
 * change the codec nor make earlier frames undecodable.
 */
export function isSequenceStartPacket(packet: MediaPacket): boolean {
  if (!packet.sequenceHeader) return false;
  if (!isExTag(packet)) return true;
  return isSequenceStart(parseExTag(packet).packetType, packet.type === TagType.Video);
}

export function inspectVideo(payload: Uint8Array): VideoTagInfo {
  if (payload.length === 0) return { keyframe: false, sequenceHeader: false, codec: "none" };
  if (isExVideo(payload)) return inspectEnhanced(payload, true);
  const first = payload[0]!;
  const frameType = first >> 4;
  const codecId = first & 0x0f;
  const codec = LEGACY_VIDEO_CODECS[codecId] ?? `codec-${codecId}`;
  const hasPacketType = codecId === 7 || codecId === 12;
  const sequenceHeader = hasPacketType && payload.length > 1 && payload[1] === 0;
  // AVC/HEVC: the end of sequence (packet type 2) holds no picture to start from.
  const endOfSequence = hasPacketType && payload.length > 1 && payload[1] === 2;
  return { keyframe: frameType === 1 && !sequenceHeader && !endOfSequence, sequenceHeader, codec };
}

export function inspectAudio(payload: Uint8Array): AudioTagInfo {
  if (payload.length === 0) return { sequenceHeader: false, codec: "none" };
  if (isExAudio(payload)) {
    const { sequenceHeader, codec } = inspectEnhanced(payload, false);
    return { sequenceHeader, codec };
  }
  const format = payload[0]! >> 4;
  const codec = AUDIO_FORMATS[format] ?? `format-${format}`;
  return { sequenceHeader: format === 10 && payload.length > 1 && payload[1] === 0, codec };
}

/** Builds a `MediaPacket`, classifying the payload once so readers never parse it again. */
export function createMediaPacket(
  type: TagTypeId,
  timestamp: number,
  payload: Uint8Array,
): MediaPacket {
  if (type === TagType.Video) {
    const info = inspectVideo(payload);
    return {
      type,
      timestamp,
      payload,
      keyframe: info.keyframe,
      sequenceHeader: info.sequenceHeader,
    };
  }
  if (type === TagType.Audio) {
    const info = inspectAudio(payload);
    return { type, timestamp, payload, keyframe: false, sequenceHeader: info.sequenceHeader };
  }
  return { type, timestamp, payload, keyframe: false, sequenceHeader: false };
}

/** "@setDataFrame" as an AMF0 string: marker 0x02, length 13, the name. */
const SET_DATA_FRAME = new Uint8Array([
  0x02,
  0x00,
  0x0d,
  ...new TextEncoder().encode("@setDataFrame"),
]);

/**
 * Strips a leading `@setDataFrame` from a data message, leaving `onMetaData` and its values
 * byte for byte. Publishers send the wrapped form; players and FLV files expect the bare one.
 */
export function stripSetDataFrame(payload: Uint8Array): Uint8Array {
  if (payload.length < SET_DATA_FRAME.length) return payload;
  for (let i = 0; i < SET_DATA_FRAME.length; i++) {
    if (payload[i] !== SET_DATA_FRAME[i]) return payload;
  }
  return payload.subarray(SET_DATA_FRAME.length);
}

/** The 9-byte FLV file header plus the first PreviousTagSize (0). */
export function flvFileHeader(hasAudio = true, hasVideo = true): Uint8Array {
  const flags = (hasAudio ? 0x04 : 0) | (hasVideo ? 0x01 : 0);
  return new Uint8Array([0x46, 0x4c, 0x56, 0x01, flags, 0, 0, 0, 9, 0, 0, 0, 0]);
}

/** Bytes of framing around each FLV tag body: 11-byte tag header, 4-byte PreviousTagSize. */
export const FLV_TAG_OVERHEAD = 15;

/**
 * Writes one FLV tag (header, body, PreviousTagSize) for `packet` into `out` at `offset` and returns
 * the offset after it. `out` must have `FLV_TAG_OVERHEAD + payload.length` bytes free.
 */
export function writeFlvTag(out: Uint8Array, offset: number, packet: MediaPacket): number {
  const size = packet.payload.length;
  if (size > 0xffffff) throw new RangeError(`FLV tag body of ${size} bytes exceeds 16 MiB - 1`);
  const ts = packet.timestamp >>> 0;
  out[offset] = packet.type;
  out[offset + 1] = size >> 16;
  out[offset + 2] = (size >> 8) & 0xff;
  out[offset + 3] = size & 0xff;
  out[offset + 4] = (ts >> 16) & 0xff;
  out[offset + 5] = (ts >> 8) & 0xff;
  out[offset + 6] = ts & 0xff;
  out[offset + 7] = (ts >>> 24) & 0xff; // TimestampExtended: the upper 8 bits
  out[offset + 8] = 0;
  out[offset + 9] = 0;
  out[offset + 10] = 0;
  out.set(packet.payload, offset + 11);
  const end = offset + 11 + size;
  const tagSize = 11 + size;
  out[end] = tagSize >>> 24;
  out[end + 1] = (tagSize >> 16) & 0xff;
  out[end + 2] = (tagSize >> 8) & 0xff;
  out[end + 3] = tagSize & 0xff;
  return end + 4;
}

/** Encodes packets as consecutive FLV tags in one buffer, ready for a single write. */
export function encodeFlvTags(packets: readonly MediaPacket[]): Uint8Array {
  let total = 0;
  for (const packet of packets) total += FLV_TAG_OVERHEAD + packet.payload.length;
  const out = new Uint8Array(total);
  let offset = 0;
  for (const packet of packets) offset = writeFlvTag(out, offset, packet);
  return out;
}
