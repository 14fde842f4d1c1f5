import { createMediaPacket, TagType } from "../../src/media/flv.ts";
import {
  compareConfigurations,
  openingConfiguration,
  withPacket,
} from "../../src/media/stream_configuration.ts";
import { hex } from "../helpers/bytes.ts";
import { assertEquals } from "../helpers/assert.ts";

const video = (bytes: string) => createMediaPacket(TagType.Video, 0, hex(bytes));
const audio = (bytes: string) => createMediaPacket(TagType.Audio, 0, hex(bytes));

Deno.test("withPacket() takes a track's codec and header from its sequence start only", () => {
  const hevcStart = video("90 68766331 01");
  const opusStart = audio("90 4f707573");
  let configuration = openingConfiguration(undefined, [hevcStart, opusStart]);
  assertEquals(configuration, {
    video: { codec: "hvc1", header: hevcStart.payload },
    audio: { codec: "Opus", header: opusStart.payload },
  });
  // Metadata (colorInfo) and MultichannelConfig configure the decoder too, but are no sequence
  // start: the stream's configuration, and what a returning encoder is compared against, stay.
  const before = configuration;
  configuration = withPacket(configuration, video("94 68766331 0a"));
  configuration = withPacket(configuration, audio("94 4f707573 01 06 0000003f"));
  assertEquals(configuration, before);
  const returning = openingConfiguration(undefined, [
    video("94 68766331 0b"),
    hevcStart,
    opusStart,
  ]);
  assertEquals(compareConfigurations(before, returning), undefined, "nothing a reader must redo");
  // A new sequence start is a change.
  const resized = withPacket(configuration, video("90 68766331 02"));
  assertEquals(
    compareConfigurations(before, resized)?.description,
    "video sequence header changed (hvc1)",
  );
});

Deno.test("withPacket() adds a track without a sequence header from its first frame", () => {
  const mp3 = audio("2f 0000");
  const configuration = withPacket({}, mp3);
  assertEquals(configuration, { audio: { codec: "mp3", header: undefined } });
  assertEquals(withPacket(configuration, audio("2f 0101")), configuration, "the same object");
});
