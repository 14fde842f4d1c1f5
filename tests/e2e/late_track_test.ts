/**
 * A track that starts late, through the ffmpeg engine. An encoder whose camera (or video encoder)
 * comes up after its audio sends the video's sequence header and first keyframe seconds into the
 * stream. The destination's FFmpeg has fixed its tracks by then (it probes half a second of its
 * input), so the relay must start it again with both, once; a stream with both tracks from the
 * start must not be restarted. Real publisher pacing, a real sink (nginx-rtmp), and the recording
 * compared packet by packet with what was published.
 */

import { readFlvTags } from "../../bench/flv_file.ts";
import { encodeFlvTags, flvFileHeader, type MediaPacket, TagType } from "../../src/media/flv.ts";
import { RtmpPublisher } from "../../src/relay/rtmp_publisher.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { assertContiguousRun, assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { run, sleep, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { NginxSink, settledFile } from "../helpers/sinks.ts";
import { ffmpegPublish } from "../helpers/peers.ts";

const LATE_MS = 2_000;

/**
 * `tags` with one track starting `LATE_MS` in: its packets before then are left out, and its
 * sequence header moves to just before its first frame from then on (a keyframe, for video), as
 * an encoder whose track comes up late sends it. The other track and the metadata are untouched.
 */
function withLateTrack(tags: readonly MediaPacket[], type: number): MediaPacket[] {
  const header = tags.find((tag) => tag.type === type && tag.sequenceHeader)!;
  const start = tags.findIndex((tag) =>
    tag.type === type && !tag.sequenceHeader && tag.timestamp >= LATE_MS &&
    (tag.keyframe || type === TagType.Audio)
  );
  const out: MediaPacket[] = [];
  tags.forEach((tag, index) => {
    if (index === start) out.push({ ...header, timestamp: tag.timestamp });
    if (tag.type !== type || (index >= start && !tag.sequenceHeader)) out.push(tag);
  });
  return out;
}

/**
 * Publishes `tags` to `url` as an encoder does: in real time, by their timestamps, through our
 * RTMP client (FFmpeg's command sequence), which sends tags as given where FFmpeg would move every
 * sequence header to the start.
 */
async function publishInRealTime(url: string, tags: readonly MediaPacket[]): Promise<void> {
  await using publisher = await RtmpPublisher.open({ url, timeoutMs: 10_000 });
  const startedAt = performance.now();
  for (const tag of tags) {
    const wait = startedAt + tag.timestamp - performance.now();
    if (wait > 0) await sleep(wait);
    await publisher.write([tag]);
  }
  await publisher.close();
  assertEquals(await publisher.ended, undefined, "the publish ended cleanly");
}

/** The codec types of a recording's streams ("audio", "video"). */
async function trackTypes(file: string): Promise<string[]> {
  const out = await run("ffprobe", [
    "-v",
    "error",
    "-show_entries",
    "stream=codec_type",
    "-of",
    "csv=p=0",
    file,
  ]);
  return out.split("\n").filter((line) => line !== "").sort();
}

async function relayTo(nginx: NginxSink, keys: string[]): Promise<TestRelay> {
  return await startTestRelay({
    streams: keys.map((key) => ({
      key,
      destinations: [{ id: "d", rtmp_url: nginx.baseUrl, stream_key: `${key}-out` }],
    })),
  });
}

/** The destination of `key`, as soon as the relay has it. */
function destinationOf(relay: TestRelay, key: string) {
  return waitFor(() => relay.service.manager.relayFor(key)?.get("d"), `${key}'s destination`);
}

/** Waits for every stream to end and its recording to be closed. */
async function recordingsDone(relay: TestRelay, nginx: NginxSink, keys: string[]) {
  await waitFor(() => relay.service.manager.relays().length === 0, "the streams to end", 15_000);
  for (const key of keys) await settledFile(nginx.recording(`${key}-out`));
}

for (
  const [track, type] of [["video", TagType.Video], ["audio", TagType.Audio]] as const
) {
  Deno.test(`a stream whose ${track} starts ${LATE_MS / 1000} s in reaches an ffmpeg-engine destination with every ${track} packet`, async () => {
    await using dir = await tempDir();
    const tags = withLateTrack(await readFlvTags(await fixture({ seconds: 6, gop: 60 })), type);
    const source = `${dir.path}/late_${track}.flv`;
    await Deno.writeFile(source, new Uint8Array([...flvFileHeader(), ...encodeFlvTags(tags)]));
    await using nginx = await NginxSink.start(`${dir.path}/nginx`);
    const key = `late-${track}-0001`;
    await using relay = await relayTo(nginx, [key]);
    const published = publishInRealTime(relay.rtmpUrl(key), tags);
    const destination = await destinationOf(relay, key);
    await published;
    await recordingsDone(relay, nginx, [key]);

    const recording = nginx.recording(`${key}-out`);
    // The recording is the last session's: the one with both tracks.
    assertEquals(await trackTypes(recording), ["audio", "video"], `${track} reached the sink`);
    const sent = await framemd5(source);
    const starts = assertContiguousRun(await framemd5(recording), sent, `late ${track}`);
    // framemd5 numbers video 0 and audio 1; the runs come in the order the streams first appear.
    const order = [...new Set(sent.map((packet) => packet.stream))];
    const lateStart = starts[order.indexOf(track === "video" ? 0 : 1)];
    assertEquals(lateStart, 0, `every ${track} packet from its first one`);
    const status = destination.status();
    assertEquals(status.restarts, 1, "its FFmpeg was started again once, for the new track");
    assertEquals(status.error_count, 0, "a restart, not a failure");
    assert(
      relay.logText().includes(`FFmpeg started without the stream's ${track}`),
      "the log says why the destination was restarted",
    );
  });
}

Deno.test("a stream with both tracks from the start is relayed by one FFmpeg, never restarted", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4, gop: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  const key = "both-tracks-0001";
  await using relay = await relayTo(nginx, [key]);
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(key));
  const destination = await destinationOf(relay, key);
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await recordingsDone(relay, nginx, [key]);
  assertSamePackets(
    await framemd5(nginx.recording(`${key}-out`)),
    await framemd5(source),
    "both tracks",
  );
  const status = destination.status();
  assertEquals({ restarts: status.restarts, reconnects: status.reconnects }, {
    restarts: 0,
    reconnects: 0,
  });
});
