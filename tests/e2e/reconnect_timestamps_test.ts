/**
 * Encoder reconnects with an encoder whose media does not start at 0 (FFmpeg with `-copyts` or
 * `-output_ts_offset`, a camera stamping from its clock): FFmpeg stamps `onMetaData` and the
 * sequence headers 0 all the same, and the relay must continue the resumed stream from its media,
 * so that a destination sees one stream whose timestamps jump by the real time that passed.
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { fixture } from "../helpers/media.ts";
import { freePort, run, sleep, tempDir } from "../helpers/process.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { startTestRelay } from "../helpers/relay.ts";
import { ReopeningFfmpegSink } from "../helpers/sinks.ts";

const KEY = "reconnect-ts-key-0001";
const SINK_KEY = "reconnect-ts-out";

/** DTS in ms of every packet of `file`, by stream index (packets without one are left out). */
async function dtsByStream(file: string): Promise<Map<number, number[]>> {
  const csv = await run("ffprobe", [
    "-v",
    "error",
    "-show_entries",
    "packet=stream_index,dts",
    "-of",
    "csv=p=0",
    file,
  ]);
  const streams = new Map<number, number[]>();
  for (const line of csv.split("\n").filter((line) => line.trim() !== "")) {
    const [index, dts] = line.split(",").map(Number) as [number, number];
    if (Number.isNaN(dts)) continue; // "N/A"
    streams.set(index, [...(streams.get(index) ?? []), dts]);
  }
  return streams;
}

Deno.test("an encoder with timestamps 16,800 s in that reconnects continues at the destination with a gap of the real time, not 16,800 s", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 3, gop: 30 });
  const port = freePort();
  const out = `${dir.path}/destination.flv`;
  await using sink = await ReopeningFfmpegSink.start(port, SINK_KEY, out);
  await using relay = await startTestRelay({
    streaming: { reconnect_grace_seconds: 5 },
    streams: [{
      key: KEY,
      destinations: [{
        id: "platform",
        platform: "custom",
        rtmp_url: `rtmp://127.0.0.1:${port}/live`,
        stream_key: SINK_KEY,
      }],
    }],
  });
  // Media from 16,800,000 ms, metadata and sequence headers at 0: what FFmpeg sends.
  const publish = async () => {
    await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY), {
      outputOptions: ["-output_ts_offset", "16800"],
    });
    assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  };
  await publish();
  await sleep(1_000);
  await publish(); // within the grace window: the same stream, the same destination connection
  await sink.wait(30_000); // the stream ends once the window has passed

  const streams = await dtsByStream(out);
  assertEquals(streams.size, 2, "audio and video reached the destination");
  for (const [index, dts] of streams) {
    const steps = dts.slice(1).map((value, i) => value - dts[i]!);
    const backwards = steps.findIndex((step) => step < 0);
    assertEquals(backwards, -1, `stream ${index}: DTS goes back at packet ${backwards + 1}`);
    // Within one publish packets are at most tens of ms apart: the largest step is the join.
    const join = steps.indexOf(Math.max(...steps));
    assert(
      steps[join]! >= 500 && steps[join]! < 5_000,
      `stream ${index}: the join should be the second or so that passed, DTS ${
        dts.slice(join - 1, join + 3).join(", ")
      } ms`,
    );
  }
  assertMatch(relay.logText(), /the returning publisher's first frame \(16800000 ms\) continues/);
});
