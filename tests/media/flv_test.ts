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
import { assertEquals } from "../helpers/assert.ts";

Deno.test("inspectVideo() classifies legacy AVC and Enhanced RTMP headers", () => {
  const table: [string, string, { keyframe: boolean; sequenceHeader: boolean; codec: string }][] = [
    ["AVC sequence header", "17 00 000000 01", {
      keyframe: false,
      sequenceHeader: true,
      codec: "avc1",
    }],
    ["AVC keyframe", "17 01 000000 65", { keyframe: true, sequenceHeader: false, codec: "avc1" }],
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
