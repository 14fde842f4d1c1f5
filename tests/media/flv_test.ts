import {
  createMediaPacket,
  encodeFlvTags,
  flvFileHeader,
  inspectAudio,
  inspectVideo,
  stripSetDataFrame,
  TagType,
} from "../../src/media/flv.ts";
import { encodeAmf0 } from "../../src/rtmp/amf0.ts";
import { hex } from "../helpers/bytes.ts";
import { assertEquals, assertMatch, assertThrows } from "../helpers/assert.ts";

Deno.test("inspectVideo() classifies legacy AVC and Enhanced RTMP headers", () => {
  const table: [string, string, { keyframe: boolean; sequenceHeader: boolean; codec: string }][] = [
    ["AVC sequence header", "17 00 000000 01", {
      keyframe: false,
      sequenceHeader: true,
      codec: "avc1",
    }],
    ["AVC keyframe", "17 01 000000 65", { keyframe: true, sequenceHeader: false, codec: "avc1" }],
    // The end of sequence carries no picture: no reader can start there.
    ["AVC end of sequence", "17 02 000000", {
      keyframe: false,
      sequenceHeader: false,
      codec: "avc1",
    }],
    ["AVC inter frame", "27 01 000000 41", {
      keyframe: false,
      sequenceHeader: false,
      codec: "avc1",
    }],
    ["HEVC sequence start (E-RTMP)", "90 68766331 01", {
      keyframe: false,
      sequenceHeader: true,
      codec: "hvc1",
    }],
    ["HEVC coded keyframe (E-RTMP)", "91 68766331 000000", {
      keyframe: true,
      sequenceHeader: false,
      codec: "hvc1",
    }],
    ["AV1 inter frame (E-RTMP)", "a3 61763031 00", {
      keyframe: false,
      sequenceHeader: false,
      codec: "av01",
    }],
    ["empty payload", "", { keyframe: false, sequenceHeader: false, codec: "none" }],
    ["HEVC CodedFramesX keyframe (E-RTMP)", "93 68766331 2601", {
      keyframe: true,
      sequenceHeader: false,
      codec: "hvc1",
    }],
    ["AV1 MPEG2TSSequenceStart", "95 61763031 80", {
      keyframe: false,
      sequenceHeader: true,
      codec: "av01",
    }],
    ["HEVC SequenceEnd is neither", "92 68766331", {
      keyframe: false,
      sequenceHeader: false,
      codec: "hvc1",
    }],
    // Metadata (colorInfo, HDR) configures the decoder like a sequence start: kept for readers.
    ["keyframe-typed Metadata is configuration, no keyframe", "94 68766331 02", {
      keyframe: false,
      sequenceHeader: true,
      codec: "hvc1",
    }],
    ["multitrack OneTrack keyframe, track 1", "96 01 61763031 01 12", {
      keyframe: true,
      sequenceHeader: false,
      codec: "av01",
    }],
    [
      "multitrack ManyTracks sequence start, tracks 0 and 1",
      "96 10 68766331 00 000001 aa 01 000001 bb",
      {
        keyframe: false,
        sequenceHeader: true,
        codec: "hvc1",
      },
    ],
    [
      "multitrack ManyTracksManyCodecs inter frame",
      "a6 21 68766331 00 000001 aa 61763031 01 000001 bb",
      {
        keyframe: false,
        sequenceHeader: false,
        codec: "hvc1,av01",
      },
    ],
    ["ModEx (nano offset) before a keyframe", "97 02 0f4240 01 68766331 000000", {
      keyframe: true,
      sequenceHeader: false,
      codec: "hvc1",
    }],
    ["ModEx before a multitrack sequence start", "97 02 0f4240 06 00 68766331 00 aa", {
      keyframe: false,
      sequenceHeader: true,
      codec: "hvc1",
    }],
    ["command frame (start seek)", "d1 00", {
      keyframe: false,
      sequenceHeader: false,
      codec: "none",
    }],
  ];
  for (const [name, bytes, expected] of table) {
    assertEquals(inspectVideo(hex(bytes)), expected, name);
  }
});

Deno.test("inspectAudio() classifies AAC and Enhanced RTMP audio", () => {
  assertEquals(inspectAudio(hex("af 00 1210")), { sequenceHeader: true, codec: "aac" });
  assertEquals(inspectAudio(hex("af 01 2100")), { sequenceHeader: false, codec: "aac" });
  assertEquals(inspectAudio(hex("2f 0000")), { sequenceHeader: false, codec: "mp3" });
  assertEquals(inspectAudio(hex("90 4f707573 00")), { sequenceHeader: true, codec: "Opus" });
  assertEquals(inspectAudio(hex("91 2e6d7033 ff")), { sequenceHeader: false, codec: ".mp3" });
  assertEquals(inspectAudio(hex("95 00 6d703461 01 1210")), {
    sequenceHeader: true,
    codec: "mp4a",
  });
  assertEquals(
    inspectAudio(hex("95 21 4f707573 00 000001 aa 664c6143 01 000001 bb")),
    { sequenceHeader: false, codec: "Opus,fLaC" },
  );
  assertEquals(inspectAudio(hex("97 02 0f4240 00 4f707573 00")), {
    sequenceHeader: true,
    codec: "Opus",
  });
  // MultichannelConfig (the channel layout an empty Opus sequence start leaves out): configuration.
  assertEquals(inspectAudio(hex("94 4f707573 01 06 0000003f")), {
    sequenceHeader: true,
    codec: "Opus",
  });
});

Deno.test("inspectVideo() and inspectAudio() throw SyntaxError on a malformed Enhanced RTMP tag", () => {
  const video: [string, string][] = [
    ["96 10 68766331 00 000009 aa", "truncated in track 0"],
    ["96 10 6876", "truncated in FourCC"],
    ["97 05 0102", "truncated in ModEx data"],
    ["96 36 68766331 00 aa", "Multitrack inside Multitrack"],
    ["96 30 68766331 00 aa", "unknown multitrack type 3"],
  ];
  for (const [bytes, reason] of video) {
    const error = assertThrows(() => inspectVideo(hex(bytes)), SyntaxError, reason);
    assertMatch(error.message, /^malformed Enhanced RTMP video tag: /, bytes);
  }
  const error = assertThrows(() => inspectAudio(hex("95 10 4f707573 00 000009 aa")), SyntaxError);
  assertMatch(error.message, /^malformed Enhanced RTMP audio tag: .*truncated in track 0/);
  assertThrows(() => createMediaPacket(TagType.Video, 0, hex("96 10 6876")), SyntaxError);
});

Deno.test("stripSetDataFrame() leaves onMetaData byte for byte", () => {
  const metadata = encodeAmf0("onMetaData", { width: 1280 });
  const wrapped = new Uint8Array([...encodeAmf0("@setDataFrame"), ...metadata]);
  assertEquals(stripSetDataFrame(wrapped), metadata);
  assertEquals(stripSetDataFrame(metadata), metadata);
});

Deno.test("encodeFlvTags() frames tags with 24+8-bit timestamps and PreviousTagSize", () => {
  assertEquals(flvFileHeader(), hex("464c5601 05 00000009 00000000"));
  const packet = createMediaPacket(TagType.Video, 0x12345678, hex("17 01 000000 65"));
  assertEquals(
    encodeFlvTags([packet]),
    hex("09 000006 345678 12 000000 17 01 000000 65 00000011"),
  );
});
