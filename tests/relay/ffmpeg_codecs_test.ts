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

Deno.test("ffmpegCodecProblem() sees every track's header, whichever came last", () => {
  // OBS Enhanced Broadcasting: HEVC on track 1 (wrapped), H.264 on track 0 (legacy), in either
  // order. The configuration holds the last header of each kind; the GOP cache holds them all.
  const cases: [string, ReturnType<typeof video>[], string][] = [
    [
      "hvc1 track 1, then legacy H.264",
      [video("96 00 68766331 01 aa"), video("17 00 000000 01"), audio("af 00 1210")],
      "multitrack video (hvc1) not supported by the ffmpeg engine; use engine = native",
    ],
    [
      "Opus track 1, then legacy AAC",
      [video("17 00 000000 01"), audio("95 00 4f707573 01 cc"), audio("af 00 1210")],
      "multitrack audio (Opus) not supported by the ffmpeg engine; use engine = native",
    ],
  ];
  for (const [name, headers, expected] of cases) {
    const configuration = openingConfiguration(undefined, headers);
    assertEquals(ffmpegCodecProblem(configuration, headers), expected, name);
  }
  const plain = [video("17 00 000000 01"), audio("af 00 1210")];
  assertEquals(ffmpegCodecProblem(openingConfiguration(undefined, plain), plain), undefined);
});
