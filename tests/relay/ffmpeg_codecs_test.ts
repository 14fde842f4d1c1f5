import { ffmpegCodecProblem } from "../../src/relay/ffmpeg_codecs.ts";
import { createMediaPacket, TagType } from "../../src/media/flv.ts";
import { openingConfiguration } from "../../src/media/stream_configuration.ts";
import { hex } from "../helpers/bytes.ts";
import { assertEquals } from "../helpers/assert.ts";

const video = (bytes: string) => createMediaPacket(TagType.Video, 0, hex(bytes));
const audio = (bytes: string) => createMediaPacket(TagType.Audio, 0, hex(bytes));

Deno.test("ffmpegCodecProblem() names the codec FFmpeg 5.1's FLV demuxer cannot read", () => {
  const table: [string, ReturnType<typeof video>[], string | undefined][] = [
    ["legacy H.264 + AAC", [video("17 00 000000 01"), audio("af 00 1210")], undefined],
    ["legacy MP3 without a header", [audio("2f 00")], undefined],
    [
      "HEVC (E-RTMP)",
      [video("90 68766331 01"), audio("af 00 1210")],
      "codec hvc1 not supported by the ffmpeg engine; use engine = native",
    ],
    [
      "AV1 (E-RTMP)",
      [video("90 61763031 81")],
      "codec av01 not supported by the ffmpeg engine; use engine = native",
    ],
    [
      "H.264 behind a FourCC",
      [video("90 61766331 01")],
      "codec avc1 (Enhanced RTMP) not supported by the ffmpeg engine; use engine = native",
    ],
    [
      "Opus audio",
      [video("17 00 000000 01"), audio("90 4f707573 00")],
      "codec Opus not supported by the ffmpeg engine; use engine = native",
    ],
    [
      "multitrack video",
      [video("96 20 68766331 00 000001 aa 61766331 01 000001 bb")],
      "multitrack video (hvc1, avc1) not supported by the ffmpeg engine; use engine = native",
    ],
  ];
  for (const [name, packets, expected] of table) {
    assertEquals(ffmpegCodecProblem(openingConfiguration(undefined, packets)), expected, name);
  }
  const announced = openingConfiguration({ videocodecid: 12 }, []);
  assertEquals(ffmpegCodecProblem(announced), undefined, "a codec only announced");
});
