import { createMediaPacket, type MediaPacket, TagType } from "../../src/media/flv.ts";
import { RenditionFilter } from "../../src/media/rendition_filter.ts";
import { hex } from "../helpers/bytes.ts";
import { assertEquals } from "../helpers/assert.ts";

// OBS Enhanced Broadcasting: H.264 track 0 as legacy tags, HEVC track 1 wrapped as OneTrack.
const legacyKey = (ts: number) => createMediaPacket(TagType.Video, ts, hex("17 01 000000 65"));
const legacyInter = (ts: number) => createMediaPacket(TagType.Video, ts, hex("27 01 000000 41"));
const track1 = (ts: number, keyframe: boolean) =>
  createMediaPacket(TagType.Video, ts, hex(`${keyframe ? "96" : "a6"} 01 68766331 01 000000 aa`));
const track1Start = createMediaPacket(TagType.Video, 0, hex("96 00 68766331 01 bb"));
const aac = (ts: number) => createMediaPacket(TagType.Audio, ts, hex("af 01 21"));
const summary = (packets: readonly MediaPacket[]) =>
  packets.map((p) =>
    `${p.type === TagType.Video ? "v" : "a"}${p.timestamp}${p.keyframe ? "k" : ""}`
  );

Deno.test("RenditionFilter starts a selected video track at that track's own keyframe", () => {
  // Track 0's keyframes every 100 ms, track 1's every 250: a reader joining at 100 (a GOP cache
  // replay from track 0's keyframe) must not get track 1's inter frames before its keyframe.
  const filter = new RenditionFilter({ videoTrack: 1, audioTrack: 0 });
  const out = filter.filter([
    track1Start,
    legacyKey(100),
    track1(100, false),
    aac(110),
    legacyInter(150),
    track1(150, false),
    track1(250, true),
    track1(300, false),
  ]);
  // The header goes first, rewritten to a single-track tag; audio flows from the start.
  assertEquals(out[0]!.payload, hex("90 68766331 bb"));
  assertEquals(summary(out), ["v0", "a110", "v250k", "v300"]);
  assertEquals(out[2]!.payload, hex("91 68766331 000000 aa"));
});

Deno.test("RenditionFilter starts the default track at its keyframe too, wherever the stream began", () => {
  // A group the GOP cache opened at track 1's keyframe: track 0 goes on with inter frames.
  const filter = new RenditionFilter({ videoTrack: 0, audioTrack: 0 });
  const out = filter.filter([track1(0, true), legacyInter(33), legacyKey(66), legacyInter(99)]);
  assertEquals(summary(out), ["v66k", "v99"]);
});

Deno.test("RenditionFilter.absent() names a selected track the stream does not carry", () => {
  const filter = new RenditionFilter({ videoTrack: 2, audioTrack: 0 });
  filter.filter([legacyKey(0), track1(0, true), aac(0)]);
  assertEquals(filter.absent(), undefined, "not yet: the track may start late");
  filter.filter([legacyKey(10_000), track1(10_000, true), aac(10_010)]);
  assertEquals(filter.absent(), "video track 2 is not in the stream (video tracks 0, 1)");
  // Said once.
  assertEquals(filter.absent(), undefined);
  // A track that does come is not absent.
  const late = new RenditionFilter({ videoTrack: 1, audioTrack: 0 });
  late.filter([legacyKey(0), legacyKey(5_000), track1(8_000, true), legacyKey(12_000)]);
  assertEquals(late.absent(), undefined);
});
