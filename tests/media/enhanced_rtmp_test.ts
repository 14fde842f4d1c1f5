/**
 * Enhanced RTMP tag headers as byte fixtures: parsing (ModEx, multitrack) and the rewrite of a
 * multitrack tag into the single-track tag a destination wants.
 */

import {
  buildExTag,
  MultitrackType,
  parseExAudio,
  parseExVideo,
  selectRendition,
} from "../../src/media/enhanced_rtmp.ts";
import { hex } from "../helpers/bytes.ts";
import { assertEquals, assertThrows } from "../helpers/assert.ts";

const toHex = (bytes: Uint8Array | undefined) =>
  bytes === undefined ? undefined : [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");

Deno.test("parseExVideo() reads ModEx, multitrack types, track ids and per-track sizes", () => {
  const manyCodecs = parseExVideo(hex("a6 21 68766331 00 000002 aabb 61763031 01 000001 cc"));
  assertEquals(manyCodecs.frameType, 2);
  assertEquals(manyCodecs.packetType, 1);
  assertEquals(manyCodecs.multitrack, MultitrackType.ManyTracksManyCodecs);
  assertEquals(
    manyCodecs.tracks.map((t) => [t.trackId, t.fourCc, toHex(t.body)]),
    [[0, "hvc1", "aabb"], [1, "av01", "cc"]],
  );
  const modEx = parseExVideo(hex("97 00 00 07 02 0f4240 03 68766331 99"));
  assertEquals(modEx.modEx.map((m) => [m.type, m.data.length]), [[0, 1], [0, 3]]);
  assertEquals([modEx.packetType, modEx.tracks[0]?.fourCc], [3, "hvc1"]);
  const command = parseExVideo(hex("d1 01"));
  assertEquals([command.command, command.tracks.length], [1, 0]);
  const audio = parseExAudio(hex("95 10 6d703461 00 000001 aa 01 000001 bb"));
  assertEquals(audio.tracks.map((t) => [t.trackId, t.fourCc]), [[0, "mp4a"], [1, "mp4a"]]);
});

Deno.test("parseExVideo() refuses truncated and nested-multitrack tags with SyntaxError", () => {
  for (
    const bytes of [
      "96 10 68766331 00 000009 aa", // track size past the end
      "96 16 68766331", // Multitrack inside Multitrack
      "97 05 0000", // ModEx data cut short
      "91 6876", // FourCC cut short
      "96 31 68766331 00", // unknown multitrack type
    ]
  ) {
    assertThrows(() => parseExVideo(hex(bytes)), SyntaxError);
  }
});

Deno.test("selectRendition() rewrites the chosen track of multitrack tags into single-track tags", () => {
  const hevc1 = { videoTrack: 1, audioTrack: 0 };
  const table: [
    string,
    number,
    string,
    typeof hevc1 & { legacyAvcAac?: boolean },
    string | undefined,
  ][] = [
    [
      "OneTrack HEVC keyframe, track 1",
      9,
      "96 01 68766331 01 000021 aabb",
      hevc1,
      "91 68766331 000021 aabb",
    ],
    ["OneTrack HEVC keyframe, other track", 9, "96 01 68766331 02 000021 aabb", hevc1, undefined],
    [
      "ManyTracks sequence start, track 1 of 0+1",
      9,
      "96 10 68766331 00 000001 aa 01 000002 bbcc",
      hevc1,
      "90 68766331 bbcc",
    ],
    [
      "ManyTracksManyCodecs inter frame",
      9,
      "a6 23 61763031 00 000001 aa 68766331 01 000002 bbcc",
      hevc1,
      "a3 68766331 bbcc",
    ],
    [
      "ModEx kept before the rewritten header",
      9,
      "97 02 0f4240 06 01 68766331 01 000000 dd",
      hevc1,
      "97 02 0f4240 01 68766331 000000 dd",
    ],
    [
      "legacy AVC is track 0",
      9,
      "17 01 000000 65",
      { videoTrack: 0, audioTrack: 0 },
      "17 01 000000 65",
    ],
    ["legacy AVC dropped for track 1", 9, "17 01 000000 65", hevc1, undefined],
    ["single-track E-RTMP is track 0", 9, "91 61763031 12", hevc1, undefined],
    ["avc1 track to legacy AVC sequence header", 9, "96 00 61766331 02 0164", {
      videoTrack: 2,
      audioTrack: 0,
    }, "17 00 000000 0164"],
    ["avc1 track to legacy AVC NALUs with CTS", 9, "a6 01 61766331 02 000042 00000002 0910", {
      videoTrack: 2,
      audioTrack: 0,
    }, "27 01 000042 00000002 0910"],
    ["avc1 CodedFramesX to legacy CTS 0", 9, "96 03 61766331 02 00000002 0910", {
      videoTrack: 2,
      audioTrack: 0,
    }, "17 01 000000 00000002 0910"],
    ["avc1 kept Enhanced when asked", 9, "96 03 61766331 02 ee", {
      videoTrack: 2,
      audioTrack: 0,
      legacyAvcAac: false,
    }, "93 61766331 ee"],
    ["mp4a track to legacy AAC", 8, "95 11 6d703461 01 000002 2100 02 000001 ff", {
      videoTrack: 0,
      audioTrack: 1,
    }, "af 01 2100"],
    [
      "Opus track stays Enhanced",
      8,
      "95 00 4f707573 01 4f70",
      { videoTrack: 0, audioTrack: 1 },
      "90 4f707573 4f70",
    ],
    [
      "legacy AAC is audio track 0",
      8,
      "af 01 2100",
      { videoTrack: 1, audioTrack: 0 },
      "af 01 2100",
    ],
    ["data passes", 18, "02 000a 6f6e4d65746144617461", hevc1, "02000a6f6e4d65746144617461"],
  ];
  for (const [name, type, bytes, selection, expected] of table) {
    const out = selectRendition({ type, payload: hex(bytes) }, selection);
    assertEquals(toHex(out), expected === undefined ? undefined : toHex(hex(expected)), name);
  }
});

Deno.test("buildExTag() writes what parseExVideo() reads", () => {
  const tracks = [
    { trackId: 0, fourCc: "hvc1", body: hex("0102") },
    { trackId: 3, fourCc: "av01", body: hex("03") },
  ];
  const bytes = buildExTag({
    video: true,
    frameType: 1,
    packetType: 1,
    multitrack: MultitrackType.ManyTracksManyCodecs,
    tracks,
  });
  assertEquals(toHex(bytes), "962168766331000000020102617630310300000103");
  const parsed = parseExVideo(bytes);
  assertEquals(parsed.tracks.map((t) => [t.trackId, t.fourCc, toHex(t.body)]), [
    [0, "hvc1", "0102"],
    [3, "av01", "03"],
  ]);
});

Deno.test("selectRendition() keeps a ModEx entry of more than 256 bytes (16-bit size) intact", () => {
  const data = "ab".repeat(300);
  // UI8 0xff says "UI16 follows": 0x012b + 1 = 300 bytes.
  const tag = hex(`97 ff 012b ${data} 06 01 68766331 01 000000 dd`);
  const out = selectRendition({ type: 9, payload: tag }, { videoTrack: 1, audioTrack: 0 });
  assertEquals(toHex(out), toHex(hex(`97 ff 012b ${data} 01 68766331 000000 dd`)));
  assertEquals(parseExVideo(out!).modEx[0]?.data.length, 300);
});
