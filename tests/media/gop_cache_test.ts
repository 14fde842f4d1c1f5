import { createMediaPacket, TagType } from "../../src/media/flv.ts";
import { GopCache } from "../../src/media/gop_cache.ts";
import { hex } from "../helpers/bytes.ts";
import { assertEquals } from "../helpers/assert.ts";

const video = (ts: number, keyframe: boolean, size = 10) =>
  createMediaPacket(
    TagType.Video,
    ts,
    new Uint8Array([keyframe ? 0x17 : 0x27, 1, ...new Uint8Array(size)]),
  );
const audio = (ts: number) => createMediaPacket(TagType.Audio, ts, hex("af 01 00"));
const meta = createMediaPacket(TagType.Script, 0, hex("02 000a 6f6e4d65746144617461"));
const avcConfig = createMediaPacket(TagType.Video, 0, hex("17 00 000000 01"));
const aacConfig = createMediaPacket(TagType.Audio, 0, hex("af 00 1210"));

Deno.test("GopCache.snapshot() gives headers then frames from the last keyframe", () => {
  const cache = new GopCache(1_000_000);
  for (
    const packet of [
      meta,
      avcConfig,
      aacConfig,
      video(0, true),
      audio(10),
      video(33, false),
      video(66, true),
      audio(70),
      video(99, false),
    ]
  ) {
    cache.push(packet);
  }
  assertEquals(cache.snapshot().map((p) => [p.type, p.timestamp, p.keyframe]), [
    [TagType.Script, 0, false],
    [TagType.Video, 0, false],
    [TagType.Audio, 0, false],
    [TagType.Video, 66, true],
    [TagType.Audio, 70, false],
    [TagType.Video, 99, false],
  ]);
});

Deno.test("GopCache drops a group larger than its limit until the next keyframe", () => {
  const cache = new GopCache(100);
  cache.push(avcConfig);
  cache.push(video(0, true, 50));
  cache.push(video(33, false, 60)); // over the limit: the group is forgotten
  cache.push(video(66, false, 10));
  assertEquals(cache.snapshot().length, 1, "only the sequence header is left");
  cache.push(video(99, true, 10));
  assertEquals(cache.snapshot().map((p) => p.timestamp), [0, 99]);
});

Deno.test("GopCache ignores video before the first keyframe (it cannot be decoded)", () => {
  const cache = new GopCache(1_000);
  cache.push(video(0, false));
  cache.push(audio(5));
  assertEquals(cache.snapshot().map((p) => p.type), [TagType.Audio], "the audio only");
});

Deno.test("GopCache forgets its frames when the codec configuration changes", () => {
  const cache = new GopCache(1_000_000);
  for (const packet of [avcConfig, aacConfig, video(0, true), audio(10), video(33, false)]) {
    cache.push(packet);
  }
  cache.push(createMediaPacket(TagType.Video, 40, hex("17 00 000000 01")));
  assertEquals(cache.snapshot().length, 5, "the same sequence header again keeps the group");
  const resized = createMediaPacket(TagType.Video, 50, hex("17 00 000000 02"));
  cache.push(resized);
  cache.push(video(66, false)); // still encoded against the old header: not a start point
  assertEquals(cache.snapshot(), [resized, aacConfig], "frames of the old configuration are gone");
  cache.push(video(99, true));
  assertEquals(cache.snapshot().map((p) => p.timestamp), [50, 0, 99]);
});

Deno.test("GopCache keeps one sequence header per track of a multitrack stream", () => {
  const cache = new GopCache(1_000_000);
  // OBS Enhanced Broadcasting: track 0 as legacy H.264, track 1 HEVC and track 2 AV1 wrapped
  // as multitrack OneTrack tags, each with its own sequence start.
  const track1 = createMediaPacket(TagType.Video, 0, hex("96 00 68766331 01 aa"));
  const track2 = createMediaPacket(TagType.Video, 0, hex("96 00 61763031 02 bb"));
  const audio1 = createMediaPacket(TagType.Audio, 0, hex("95 00 4f707573 01 cc"));
  for (const packet of [meta, avcConfig, track1, track2, aacConfig, audio1]) cache.push(packet);
  const key1 = createMediaPacket(TagType.Video, 0, hex("96 01 68766331 01 000000 01"));
  cache.push(key1);
  assertEquals(cache.snapshot(), [meta, avcConfig, track1, track2, aacConfig, audio1, key1]);
  assertEquals(cache.videoSequenceHeader, avcConfig);
  assertEquals(cache.audioSequenceHeader, aacConfig);
  // A new header for track 2 replaces only track 2's.
  const track2b = createMediaPacket(TagType.Video, 40, hex("96 00 61763031 02 bc"));
  cache.push(track2b);
  assertEquals(cache.headers(), [meta, avcConfig, track1, track2b, aacConfig, audio1]);
});

Deno.test("GopCache.headers() gives each track's latest configuration in the order it came", () => {
  // Track 1's header comes alone, then again with track 0's: a reader must end on the newer.
  const cache = new GopCache(1_000_000);
  const both = (ts: number, one: string) =>
    createMediaPacket(TagType.Video, ts, hex(`96 10 68766331 00 000001 a0 01 000001 ${one}`));
  const alone = createMediaPacket(TagType.Video, 1_500, hex("96 00 68766331 01 b1"));
  const first = both(1_000, "a1");
  const latest = both(2_000, "c1");
  for (const packet of [first, alone, latest]) cache.push(packet);
  assertEquals(cache.headers(), [alone, latest]);
  assertEquals(cache.headers().map((p) => p.timestamp), [1_500, 2_000], "never backwards");
});

Deno.test("GopCache keeps Enhanced RTMP Metadata and MultichannelConfig beside the sequence starts", () => {
  const cache = new GopCache(1_000_000);
  const hevcStart = createMediaPacket(TagType.Video, 0, hex("90 68766331 01"));
  const colorInfo = (ts: number, body: string) =>
    createMediaPacket(TagType.Video, ts, hex(`94 68766331 ${body}`));
  const opusStart = createMediaPacket(TagType.Audio, 0, hex("90 4f707573")); // empty: see layout
  const layout = createMediaPacket(TagType.Audio, 0, hex("94 4f707573 01 06 0000003f"));
  const hdr = colorInfo(0, "0a");
  const key = createMediaPacket(TagType.Video, 0, hex("91 68766331 000000 01"));
  for (const packet of [hevcStart, hdr, opusStart, layout, key]) cache.push(packet);
  assertEquals(cache.snapshot(), [hevcStart, hdr, opusStart, layout, key]);
  // New colorInfo "invalidates and replaces the current one"; the frames stay decodable.
  const sdr = colorInfo(40, "0b");
  cache.push(sdr);
  assertEquals(cache.snapshot(), [hevcStart, sdr, opusStart, layout, key]);
  assertEquals(cache.videoSequenceHeader, hevcStart, "the default track's sequence start");
  assertEquals(cache.audioSequenceHeader, opusStart);
});

Deno.test("GopCache opens a group at the first of the keyframes several tracks have at one instant", () => {
  const cache = new GopCache(1_000_000);
  const key = (ts: number, track: number) =>
    createMediaPacket(TagType.Video, ts, hex(`96 01 68766331 0${track} 000000 01`));
  const inter = (ts: number, track: number) =>
    createMediaPacket(TagType.Video, ts, hex(`a6 01 68766331 0${track} 000000 01`));
  const frames = [key(0, 0), key(0, 1), inter(40, 0), inter(40, 1)];
  const next = [key(80, 0), key(80, 1), audio(80), inter(120, 0)];
  for (const packet of [...frames, ...next]) cache.push(packet);
  assertEquals(cache.snapshot(), next, "both tracks' keyframes at 80, then what follows");
});

Deno.test("GopCache.snapshot() keeps the stream's start: audio before the first keyframe stays with it", () => {
  // FFmpeg's muxer writes the first AAC frame (0 ms) before the first video keyframe (23 ms): a
  // destination that joins a moment late (its list came from the control plane) must get it too.
  const cache = new GopCache(1_000_000);
  for (const packet of [meta, avcConfig, aacConfig, audio(0), video(23, true), audio(23)]) {
    cache.push(packet);
  }
  assertEquals(cache.snapshot().slice(3).map((p) => [p.type, p.timestamp]), [
    [TagType.Audio, 0],
    [TagType.Video, 23],
    [TagType.Audio, 23],
  ]);
  // The next group starts at its keyframe, as before.
  for (const packet of [video(56, false), video(1_000, true), audio(1_010)]) cache.push(packet);
  assertEquals(cache.snapshot().slice(3).map((p) => p.timestamp), [1_000, 1_010]);
});

Deno.test("GopCache keeps no more than the first seconds of a stream that has no keyframe yet", () => {
  // Audio only (a radio stream): a player joining a minute in must not get a minute of the past.
  const cache = new GopCache(1_000_000);
  cache.push(aacConfig);
  for (let ts = 0; ts <= 60_000; ts += 23) cache.push(audio(ts));
  assertEquals(cache.snapshot().length, 1, "the header only");
  // Video that starts late opens a group at its keyframe as usual.
  cache.push(video(60_100, true));
  assertEquals(cache.snapshot().slice(1).map((p) => p.timestamp), [60_100]);
});
