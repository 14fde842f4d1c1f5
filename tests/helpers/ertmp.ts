/**
 * A test publisher of Enhanced RTMP: real HEVC (libx265), AV1 (libsvtav1) and H.264 (libx264)
 * elementary streams from FFmpeg, wrapped into Enhanced RTMP tags (hvcC / av1C / avcC sequence
 * starts, length-prefixed NAL units or OBUs as coded frames), single-track or as an Enhanced RTMP
 * v2 multitrack stream, with AAC audio. Debian's FFmpeg 5.1 cannot publish Enhanced RTMP itself.
 * And the way back: the elementary stream extracted from received tags, for FFmpeg to decode.
 *
 * @module
 */

import {
  buildExTag,
  isExVideo,
  MultitrackType,
  parseExVideo,
  VideoPacketType,
} from "../../src/media/enhanced_rtmp.ts";
import { type MediaPacket, TagType } from "../../src/media/flv.ts";
import { encodeAmf0 } from "../../src/rtmp/amf0.ts";
import { MessageType } from "../../src/rtmp/chunk.ts";
import { ChunkStream } from "../../src/rtmp/messages.ts";
import { run } from "./process.ts";
import type { TestRtmpClient } from "./rtmp_client.ts";

export type Tag = Pick<MediaPacket, "type" | "timestamp" | "payload">;
/**
 * A tag as sent, with what it is (known from the encoder, not parsed from the bytes): a video
 * keyframe, or a header a late reader needs (metadata, sequence start).
 */
export type SentTag = Tag & { keyframe: boolean; header: boolean };

/** One coded picture: its bytes as they go in a tag (NAL units length-prefixed, or OBUs). */
export interface VideoFrame {
  keyframe: boolean;
  data: Uint8Array;
}

/** A video elementary stream ready for Enhanced RTMP: FourCC, configuration record, frames. */
export interface VideoElementary {
  fourCc: "hvc1" | "av01" | "avc1";
  config: Uint8Array;
  frames: VideoFrame[];
  /** The file FFmpeg wrote, and its format (`-f`), to decode for reference. */
  file: string;
  format: "hevc" | "obu" | "h264";
}

export interface AudioElementary {
  /** AudioSpecificConfig. */
  config: Uint8Array;
  frames: Uint8Array[];
  sampleRate: number;
}

export const FPS = 25;
const FRAME_MS = 1000 / FPS;

const ENCODERS = {
  hevc: [
    "-c:v",
    "libx265",
    "-preset",
    "ultrafast",
    // No B-frames (composition time 0), closed GOPs with IDR keyframes.
    "-x265-params",
    "keyint=10:min-keyint=10:bframes=0:open-gop=0:log-level=error",
  ],
  obu: ["-c:v", "libsvtav1", "-preset", "12", "-g", "10"],
  h264: ["-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-bf", "0"],
} as const;

/** Encodes `frames` of `testsrc` with the codec for `format`; parses what FFmpeg wrote. */
export async function encodeVideo(
  dir: string,
  format: VideoElementary["format"],
  frames: number,
  size = "320x240",
): Promise<VideoElementary> {
  const file = `${dir}/source-${size}.${format}`;
  await run("ffmpeg", [
    "-v",
    "error",
    "-y",
    "-f",
    "lavfi",
    "-i",
    `testsrc=size=${size}:rate=${FPS}`,
    "-frames:v",
    String(frames),
    ...ENCODERS[format],
    "-f",
    format,
    file,
  ]);
  const bytes = await Deno.readFile(file);
  if (format === "obu") return { ...av1Elementary(bytes), file, format };
  return { ...nalElementary(bytes, format === "hevc"), file, format };
}

/** Encodes `seconds` of a sine as AAC (ADTS), parsed into raw frames. */
export async function encodeAac(dir: string, seconds: number): Promise<AudioElementary> {
  const file = `${dir}/source.aac`;
  await run("ffmpeg", [
    "-v",
    "error",
    "-y",
    "-f",
    "lavfi",
    "-i",
    `sine=frequency=440:sample_rate=44100:duration=${seconds}`,
    "-c:a",
    "aac",
    "-f",
    "adts",
    file,
  ]);
  const bytes = await Deno.readFile(file);
  const frames: Uint8Array[] = [];
  let config = new Uint8Array();
  for (let at = 0; at + 7 <= bytes.length;) {
    if (bytes[at] !== 0xff || (bytes[at + 1]! & 0xf0) !== 0xf0) throw new Error("ADTS sync lost");
    const headerLength = (bytes[at + 1]! & 1) === 1 ? 7 : 9;
    const objectType = (bytes[at + 2]! >> 6) + 1;
    const rateIndex = (bytes[at + 2]! >> 2) & 0x0f;
    const channels = ((bytes[at + 2]! & 1) << 2) | (bytes[at + 3]! >> 6);
    const length = ((bytes[at + 3]! & 3) << 11) | (bytes[at + 4]! << 3) | (bytes[at + 5]! >> 5);
    const asc = (objectType << 11) | (rateIndex << 7) | (channels << 3);
    config = new Uint8Array([asc >> 8, asc & 0xff]);
    frames.push(bytes.slice(at + headerLength, at + length));
    at += length;
  }
  return { config, frames, sampleRate: 44100 };
}

/** Splits an Annex B stream into NAL units (start codes dropped). */
function splitAnnexB(bytes: Uint8Array): Uint8Array[] {
  const starts: number[] = [];
  for (let i = 0; i + 2 < bytes.length; i++) {
    if (bytes[i] === 0 && bytes[i + 1] === 0 && bytes[i + 2] === 1) {
      starts.push(i + 3);
      i += 2;
    }
  }
  return starts.map((start, n) => {
    let end = n + 1 < starts.length ? starts[n + 1]! - 3 : bytes.length;
    while (end > start && bytes[end - 1] === 0) end--; // the zero of a 4-byte start code
    return bytes.subarray(start, end);
  });
}

/** Removes emulation prevention bytes (00 00 03 → 00 00). */
function unescapeRbsp(nal: Uint8Array): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < nal.length; i++) {
    if (i >= 2 && nal[i] === 3 && nal[i - 1] === 0 && nal[i - 2] === 0) continue;
    out.push(nal[i]!);
  }
  return new Uint8Array(out);
}

const u16 = (n: number) => [n >> 8, n & 0xff];
const u32 = (n: number) => [n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];

function concat(parts: readonly (Uint8Array | number[])[]): Uint8Array {
  const arrays = parts.map((part) => part instanceof Uint8Array ? part : new Uint8Array(part));
  const out = new Uint8Array(arrays.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of arrays) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** HEVC or H.264 Annex B → configuration record and access units of length-prefixed NALs. */
function nalElementary(bytes: Uint8Array, hevc: boolean): Omit<VideoElementary, "file" | "format"> {
  const typeOf = (nal: Uint8Array) => hevc ? (nal[0]! >> 1) & 0x3f : nal[0]! & 0x1f;
  const isVcl = (type: number) => hevc ? type < 32 : type >= 1 && type <= 5;
  const firstSlice = (nal: Uint8Array) => ((hevc ? nal[2]! : nal[1]!) & 0x80) !== 0;
  const parameterSet = hevc ? [32, 33, 34] : [7, 8];
  // Non-VCL units that open an access unit (VPS/SPS/PPS, AUD, prefix SEI).
  const startsUnit = hevc ? [32, 33, 34, 35, 39] : [6, 7, 8, 9];
  const sets = new Map<number, Uint8Array>();
  const frames: VideoFrame[] = [];
  let current: Uint8Array[] = [];
  let sawVcl = false;
  let keyframe = false;
  const flush = () => {
    if (!sawVcl) return;
    frames.push({ keyframe, data: concat(current.flatMap((nal) => [u32(nal.length), nal])) });
    current = [];
    sawVcl = false;
    keyframe = false;
  };
  for (const nal of splitAnnexB(bytes)) {
    const type = typeOf(nal);
    if (sawVcl && (isVcl(type) ? firstSlice(nal) : startsUnit.includes(type))) flush();
    // The first of each parameter set goes in the configuration record; they stay in the
    // frames too, as the encoder wrote them (passed through as sent).
    if (parameterSet.includes(type) && !sets.has(type)) sets.set(type, nal);
    if (isVcl(type)) {
      sawVcl = true;
      if (hevc ? type >= 16 && type <= 23 : type === 5) keyframe = true;
    }
    if (hevc ? type === 35 : type === 9) continue; // access unit delimiters are not carried
    current.push(nal);
  }
  flush();
  const need = (type: number) => {
    const nal = sets.get(type);
    if (nal === undefined) throw new Error(`no parameter set of type ${type} in the stream`);
    return nal;
  };
  if (!hevc) {
    const sps = need(7);
    const pps = need(8);
    const config = concat([
      [1, sps[1]!, sps[2]!, sps[3]!, 0xff, 0xe1, ...u16(sps.length)],
      sps,
      [1, ...u16(pps.length)],
      pps,
    ]);
    return { fourCc: "avc1", config, frames };
  }
  const vps = need(32);
  const sps = need(33);
  const pps = need(34);
  // profile_tier_level: after the 2-byte NAL header and one byte of SPS fields, 12 bytes.
  const ptl = unescapeRbsp(sps).subarray(3, 15);
  const config = concat([
    [1],
    ptl,
    [0xf0, 0x00, 0xfc, 0xfd, 0xf8, 0xf8, 0x00, 0x00, 0x0f, 3],
    ...[vps, sps, pps].flatMap((nal) => [
      [0x80 | typeOf(nal), ...u16(1), ...u16(nal.length)],
      nal,
    ]),
  ]);
  return { fourCc: "hvc1", config, frames };
}

/** Reads a LEB128 at `at`; returns the value and its length. */
function leb128(bytes: Uint8Array, at: number): [number, number] {
  let value = 0;
  for (let i = 0; i < 8; i++) {
    const byte = bytes[at + i]!;
    value += (byte & 0x7f) * 2 ** (7 * i);
    if ((byte & 0x80) === 0) return [value, i + 1];
  }
  throw new Error("LEB128 too long");
}

/** AV1 low-overhead OBU stream → av1C and temporal units (temporal delimiters dropped). */
function av1Elementary(bytes: Uint8Array): Omit<VideoElementary, "file" | "format"> {
  const frames: VideoFrame[] = [];
  let sequenceHeader: Uint8Array | undefined;
  let unit: Uint8Array[] = [];
  let keyframe = false;
  const flush = () => {
    if (unit.length > 0) frames.push({ keyframe, data: concat(unit) });
    unit = [];
    keyframe = false;
  };
  for (let at = 0; at < bytes.length;) {
    const header = bytes[at]!;
    const type = (header >> 3) & 0x0f;
    const extension = (header & 0x04) !== 0;
    if ((header & 0x02) === 0) throw new Error("OBU without a size field");
    const [size, sizeLength] = leb128(bytes, at + 1 + (extension ? 1 : 0));
    const end = at + 1 + (extension ? 1 : 0) + sizeLength + size;
    const obu = bytes.subarray(at, end);
    at = end;
    if (type === 2) { // temporal delimiter: a new temporal unit
      flush();
      continue;
    }
    if (type === 1) { // sequence header: the encoder repeats it on each keyframe
      sequenceHeader ??= obu;
      keyframe = true;
    }
    unit.push(obu);
  }
  flush();
  if (sequenceHeader === undefined) throw new Error("no AV1 sequence header");
  // seq_profile (3 bits), still_picture, reduced_still_picture_header, then for the first
  // operating point its seq_level_idx: enough for av1C (8-bit 4:2:0, as testsrc makes).
  const [, sizeLength] = leb128(sequenceHeader, 1);
  const bits = new BitReader(sequenceHeader.subarray(1 + sizeLength));
  const profile = bits.read(3);
  bits.read(1);
  const reduced = bits.read(1);
  let level: number;
  let tier = 0;
  if (reduced) {
    level = bits.read(5);
  } else {
    if (bits.read(1)) throw new Error("AV1 timing info not handled by this test helper");
    bits.read(1); // initial_display_delay_present_flag
    bits.read(5); // operating_points_cnt_minus_1
    bits.read(12); // operating_point_idc[0]
    level = bits.read(5);
    if (level > 7) tier = bits.read(1);
  }
  const config = concat([
    [0x81, (profile << 5) | level, (tier << 7) | 0x0c, 0],
    sequenceHeader,
  ]);
  return { fourCc: "av01", config, frames };
}

class BitReader {
  #at = 0;
  constructor(readonly bytes: Uint8Array) {}
  read(count: number): number {
    let value = 0;
    for (let i = 0; i < count; i++, this.#at++) {
      value = (value << 1) | ((this.bytes[this.#at >> 3]! >> (7 - (this.#at & 7))) & 1);
    }
    return value;
  }
}

/** The four bytes of a FourCC as the number onMetaData carries (`videocodecid`). */
const fourCcNumber = (fourCc: string) => [...fourCc].reduce((n, c) => n * 256 + c.charCodeAt(0), 0);

/** The coded-frame body of one frame: SI24 composition time 0 first for NAL-unit codecs. */
function codedBody(video: VideoElementary, frame: VideoFrame): Uint8Array {
  return video.fourCc === "av01" ? frame.data : concat([[0, 0, 0], frame.data]);
}

/** A video track of a stream to publish: its elementary stream and its track id. */
export interface TrackInput {
  trackId: number;
  video: VideoElementary;
}

/** A video Metadata body: `colorInfo` for HDR10 (BT.2020, PQ), as the specification shows it. */
const COLOR_INFO = encodeAmf0("colorInfo", {
  colorConfig: {
    bitDepth: 10,
    colorPrimaries: 9,
    transferCharacteristics: 16,
    matrixCoefficients: 9,
  },
  hdrCll: { maxFall: 400, maxCLL: 1000 },
} as never);

/**
 * The tags of an Enhanced RTMP stream, in send order: `onMetaData`, every track's sequence start,
 * track 0's `colorInfo` Metadata, then per instant each video track's tag, then audio (legacy AAC). Track 0 is sent as ordinary single-track Enhanced tags,
 * the others as v2 multitrack OneTrack tags (OBS's Enhanced Broadcasting sends them so), all
 * under `CodedFrames`. Without `multitrack`, the only track is track 0.
 */
export function enhancedTags(tracks: readonly TrackInput[], audio?: AudioElementary): SentTag[] {
  const first = tracks[0]!.video;
  const metadata: Record<string, unknown> = {
    duration: 0,
    width: 320,
    height: 240,
    framerate: FPS,
    videocodecid: fourCcNumber(first.fourCc),
  };
  if (audio) metadata.audiocodecid = 10;
  const tags: SentTag[] = [{
    keyframe: false,
    header: true,
    type: TagType.Script,
    timestamp: 0,
    payload: encodeAmf0("@setDataFrame", "onMetaData", metadata as never),
  }];
  const videoTag = (
    track: TrackInput,
    frameType: number,
    packetType: number,
    body: Uint8Array,
    timestamp: number,
  ): SentTag => ({
    keyframe: frameType === 1 && packetType === 1,
    header: packetType === VideoPacketType.SequenceStart,
    type: TagType.Video,
    timestamp,
    payload: buildExTag({
      video: true,
      frameType,
      packetType,
      ...(track.trackId === 0 ? {} : { multitrack: MultitrackType.OneTrack }),
      tracks: [{ trackId: track.trackId, fourCc: track.video.fourCc, body }],
    }),
  });
  for (const track of tracks) {
    tags.push(videoTag(track, 1, VideoPacketType.SequenceStart, track.video.config, 0));
  }
  // HDR signalling, as OBS sends it after the sequence start: a reader must get it before any
  // frame, whenever it joins (it is a header, not a frame).
  tags.push({
    ...videoTag(tracks[0]!, 1, VideoPacketType.Metadata, COLOR_INFO, 0),
    header: true,
  });
  if (audio) tags.push({ ...audioTag(0, concat([[0xaf, 0], audio.config])), header: true });
  const timeline: (SentTag & { order: number })[] = [];
  tracks.forEach((track, order) => {
    track.video.frames.forEach((frame, n) => {
      const body = codedBody(track.video, frame);
      const tag = videoTag(track, frame.keyframe ? 1 : 2, 1, body, Math.round(n * FRAME_MS));
      timeline.push({ ...tag, order: n * 100 + order });
    });
  });
  if (audio) {
    audio.frames.forEach((frame, n) => {
      const timestamp = Math.round((n * 1024 * 1000) / audio.sampleRate);
      timeline.push({ ...audioTag(timestamp, concat([[0xaf, 1], frame])), order: 1e9 });
    });
  }
  // By timestamp; at one instant, video tracks in order, then audio.
  timeline.sort((a, b) => a.timestamp - b.timestamp || a.order - b.order);
  return [...tags, ...timeline.map(({ order: _, ...tag }) => tag)];
}

function audioTag(timestamp: number, payload: Uint8Array): SentTag {
  return { keyframe: false, header: false, type: TagType.Audio, timestamp, payload };
}

/** "type timestamp hash" per tag: compared as lists, they show where two runs differ. */
export function describeTags(tags: readonly Tag[]): Promise<string[]> {
  return Promise.all(tags.map(async (tag) => {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-1", tag.payload.slice()));
    const hash = Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
    return `${tag.type} ${tag.timestamp} ${tag.payload.length} ${hash}`;
  }));
}

/**
 * What a player joining now gets from the GOP cache: metadata, every sequence start, then the
 * tags from the first keyframe of the last instant that had keyframes.
 */
export function lateJoinerView(tags: readonly SentTag[]): Tag[] {
  const last = tags.findLastIndex((tag) => tag.keyframe);
  const start = tags.findIndex((tag) => tag.keyframe && tag.timestamp === tags[last]!.timestamp);
  const headers = tags.slice(0, start).filter((tag) => tag.header);
  return asPlayed([...headers, ...tags.slice(start)]);
}

/** What a player receives for `tags`: the same, `@setDataFrame` taken off the metadata. */
export function asPlayed(tags: readonly Tag[]): Tag[] {
  const prefix = encodeAmf0("@setDataFrame").length;
  return tags.map((tag) =>
    tag.type === TagType.Script ? { ...tag, payload: tag.payload.subarray(prefix) } : tag
  );
}

/** Publishes `key` with a connect that offers `fourCcList`, then sends `tags` as they are. */
export async function publishEnhanced(
  client: TestRtmpClient,
  key: string,
  tags: readonly Tag[],
  fourCcList = ["hvc1", "av01", "avc1", "mp4a"],
): Promise<number> {
  const { streamId, code } = await client.publish(key, { fourCcList, capsEx: 2 });
  if (code !== "NetStream.Publish.Start") throw new Error(`publish answered ${code}`);
  for (const tag of tags) {
    const typeId = tag.type === TagType.Script ? MessageType.DataAmf0 : tag.type;
    await client.send({
      chunkStreamId: tag.type === TagType.Audio
        ? ChunkStream.Audio
        : tag.type === TagType.Video
        ? ChunkStream.Video
        : ChunkStream.Data,
      typeId,
      timestamp: tag.timestamp,
      streamId,
      payload: tag.payload,
    });
  }
  return streamId;
}

/**
 * The elementary stream in single-track video tags (legacy AVC or Enhanced hvc1/avc1/av01), in
 * the form FFmpeg reads raw: Annex B with the parameter sets first, or low-overhead OBUs.
 */
export function extractElementary(tags: readonly Tag[]): { format: string; bytes: Uint8Array } {
  const out: (Uint8Array | number[])[] = [];
  let fourCc = "";
  for (const tag of tags) {
    if (tag.type !== TagType.Video) continue;
    let packetType: number;
    let body: Uint8Array;
    if (isExVideo(tag.payload)) {
      const parsed = parseExVideo(tag.payload);
      if (parsed.multitrack !== undefined) throw new TypeError("a multitrack tag; select first");
      const track = parsed.tracks[0];
      if (track === undefined) continue;
      fourCc = track.fourCc;
      packetType = parsed.packetType;
      body = track.body;
    } else {
      if ((tag.payload[0]! & 0x0f) !== 7) throw new TypeError("legacy video other than AVC");
      fourCc = "avc1";
      packetType = tag.payload[1] === 0 ? 0 : tag.payload[1] === 1 ? 1 : 2;
      body = tag.payload.subarray(2); // the CTS stays in front, as Enhanced CodedFrames has it
      if (packetType === 0) body = body.subarray(3);
    }
    if (fourCc === "av01") {
      // Each temporal unit behind a temporal delimiter; the configuration record is not needed.
      if (packetType === VideoPacketType.CodedFrames) out.push([0x12, 0x00], body);
      continue;
    }
    if (packetType === VideoPacketType.SequenceStart) {
      out.push(...configNals(fourCc, body).flatMap((nal) => [[0, 0, 0, 1], nal]));
    } else if (packetType === 1 || packetType === VideoPacketType.CodedFramesX) {
      let at = packetType === 1 ? 3 : 0;
      while (at + 4 <= body.length) {
        const length =
          (body[at]! << 24 | body[at + 1]! << 16 | body[at + 2]! << 8 | body[at + 3]!) >>>
          0;
        out.push([0, 0, 0, 1], body.subarray(at + 4, at + 4 + length));
        at += 4 + length;
      }
    }
  }
  const format = fourCc === "av01" ? "obu" : fourCc === "hvc1" ? "hevc" : "h264";
  return { format, bytes: concat(out) };
}

/** The parameter sets in an hvcC or avcC record. */
function configNals(fourCc: string, record: Uint8Array): Uint8Array[] {
  const nals: Uint8Array[] = [];
  const read16 = (at: number) => (record[at]! << 8) | record[at + 1]!;
  if (fourCc === "hvc1") {
    let at = 23;
    for (let array = 0; array < record[22]!; array++) {
      const count = read16(at + 1);
      at += 3;
      for (let n = 0; n < count; n++) {
        const length = read16(at);
        nals.push(record.subarray(at + 2, at + 2 + length));
        at += 2 + length;
      }
    }
    return nals;
  }
  let at = 6;
  for (const countMask of [0x1f, 0xff]) {
    const count = record[at - 1]! & countMask;
    for (let n = 0; n < count; n++) {
      const length = read16(at);
      nals.push(record.subarray(at + 2, at + 2 + length));
      at += 2 + length;
    }
    at += 1;
  }
  return nals;
}

/** FFmpeg's decoded-frame MD5s of a raw elementary stream file (`format` as FFmpeg names it). */
export async function decodedFrames(file: string, format: string): Promise<string[]> {
  const text = await run("ffmpeg", [
    "-v",
    "error",
    "-f",
    format,
    "-i",
    file,
    "-f",
    "framemd5",
    "-",
  ]);
  return text.split("\n").filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => line.split(",").at(-1)!.trim());
}
