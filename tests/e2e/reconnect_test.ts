/**
 * Encoder reconnects: the stream and its destinations outlive the publisher's connection for the
 * grace window, a returning (or replacing) publisher continues the same stream on the same
 * destination connections, and timestamps stay monotonic across the join. A publisher that comes
 * back with another stream (a track added, another resolution) is what players and destinations
 * get from then on.
 */

import { StreamsSchema } from "../../src/http/schemas.ts";
import { encodeFlvTags, flvFileHeader, TagType } from "../../src/media/flv.ts";
import { readFlvTags } from "../../bench/flv_file.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import {
  assertContiguousRun,
  assertSamePackets,
  fixture,
  framemd5,
  type PacketDigest,
} from "../helpers/media.ts";
import {
  ffmpegProcessesWith,
  run,
  sleep,
  tempDir,
  TestProcess,
  waitFor,
} from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { NginxSink, settledFile } from "../helpers/sinks.ts";
import { ffmpegPlay, ffmpegPublish } from "../helpers/peers.ts";

const KEY = "reconnect-key-0001";

async function streamsOf(relay: TestRelay) {
  const response = await fetch(relay.httpUrl("/api/streams"));
  return StreamsSchema.parse(await response.json()).streams;
}

/**
 * DTS in ms of one kind of stream, from ffprobe. Selected by type: the FLV demuxer numbers streams
 * in the order their first packet appears, which need not be framemd5's video-then-audio order.
 */
async function dtsOf(file: string, kind: "v" | "a"): Promise<number[]> {
  const text = await run("ffprobe", [
    "-v",
    "error",
    "-select_streams",
    kind,
    "-show_entries",
    "packet=dts_time",
    "-of",
    "csv=p=0",
    file,
  ]);
  return text.split("\n").filter((line) => line.trim() !== "").map((line) =>
    Math.round(Number(line) * 1000)
  );
}

async function relayWithSink(dir: string, streaming: Record<string, number>, cp: FakeControlPlane) {
  const nginx = await NginxSink.start(`${dir}/nginx`, { unique: true });
  cp.behaviour.forwarding = () => ({
    body: {
      destinations: [{
        id: "yt",
        platform: "youtube",
        rtmp_url: nginx.baseUrl,
        stream_key: "reconnect-out",
      }],
    },
  });
  const relay = await startTestRelay({
    control_plane: { url: cp.url, timeout_seconds: 2 },
    streaming,
  });
  return { nginx, relay };
}

/** Width and height of every decoded video frame of `file`, as "640x360". */
async function frameSizesOf(file: string): Promise<string[]> {
  const text = await run("ffprobe", [
    "-v",
    "error",
    "-select_streams",
    "v",
    "-show_entries",
    "frame=width,height",
    "-of",
    "csv=p=0:s=x",
    file,
  ]);
  // A frame carrying side data (the new sequence header) gets an extra empty field: "640x360x".
  return text.split("\n").flatMap((line) => line.match(/^\d+x\d+/)?.[0] ?? []);
}

/**
 * Decodes all of `file`; returns FFmpeg's complaints (empty when every frame decodes cleanly).
 *
 * `-enc_time_base -1` keeps the file's own millisecond time base. By default the null muxer gets
 * 1/30 s ticks: 30 fps frames are 33 or 34 ms apart, and after a join at some gaps two frames
 * round to the same tick, so FFmpeg reports "non monotonically increasing dts" for a file whose
 * DTS do increase (about 1 run in 10 of the resolution test below). In milliseconds an equal or
 * backward DTS is still reported.
 */
async function decodeErrorsOf(file: string, timeBase: "file" | "ffmpeg default" = "file") {
  const decode = new TestProcess("ffmpeg", [
    "-v",
    "error",
    "-i",
    file,
    ...(timeBase === "file" ? ["-enc_time_base", "-1"] : []),
    "-f",
    "null",
    "-",
  ]);
  const status = await decode.wait();
  return status.code === 0 ? decode.stderr.trim() : `exit ${status.code}: ${decode.stderr}`;
}

Deno.test("decodeErrorsOf() accepts a join that FFmpeg's default time base misreports, and reports an equal DTS", async () => {
  await using dir = await tempDir();
  // Three seconds at 320x240, then five at 640x360 (without its metadata, as in a recording).
  const before = await readFlvTags(await fixture({ seconds: 3, gop: 30 }));
  before.splice(before.findIndex((packet) => packet.timestamp > 3_000));
  const after = (await readFlvTags(await fixture({ seconds: 5, gop: 30, size: "640x360" })))
    .filter((packet) => packet.type !== TagType.Script);
  const last = before.at(-1)!.timestamp;
  const joined = async (gap: number) => {
    const file = `${dir.path}/joined_${gap}.flv`;
    const moved = after.map((p) => ({ ...p, timestamp: p.timestamp + last + gap }));
    const tags = encodeFlvTags([...before, ...moved]);
    await Deno.writeFile(file, new Uint8Array([...flvFileHeader(), ...tags]));
    return file;
  };
  // A gap found by trying every millisecond from 3,000 to 3,034 with FFmpeg 5.1: the only one
  // its 1/30 s ticks misreport. (The relay's join gap is the real time between the publishers.)
  const misreported = await joined(3_032);
  assertMatch(await decodeErrorsOf(misreported, "ffmpeg default"), /non monotonically/);
  assertEquals(await decodeErrorsOf(misreported), "");
  assertEquals(await decodeErrorsOf(await joined(3_031)), "");
  assertMatch(await decodeErrorsOf(await joined(0)), /non monotonically increasing dts/);
});

/** The relay's one destination for KEY, once its FFmpeg has connected to the sink. */
async function connectedDestination(relay: TestRelay) {
  const destination = await waitFor(() => relay.service.manager.relayFor(KEY)?.get("yt"), "relay");
  await waitFor(() => destination.state === "connected", "destination connected");
  return destination;
}

Deno.test("a publisher killed and replaced 3 s later at another resolution continues the same stream on the same destination connection", async () => {
  await using dir = await tempDir();
  const first = await fixture({ seconds: 20, gop: 30 });
  const second = await fixture({ seconds: 5, gop: 30, size: "640x360" });
  await using cp = new FakeControlPlane();
  // A window well beyond the 3 s the test waits plus the second FFmpeg's start and authorisation
  // (3.65 s in all under load): on a slow machine a 5 s window closed before the join.
  const { nginx, relay } = await relayWithSink(dir.path, { reconnect_grace_seconds: 10 }, cp);
  await using _nginx = nginx;
  await using _relay = relay;

  await using publisherA = ffmpegPublish(first, relay.rtmpUrl(KEY));
  const destination = await connectedDestination(relay);
  const ffmpegPid = destination.status().pid;
  const watched = `${dir.path}/watched.flv`;
  await using watching = ffmpegPlay(relay.rtmpUrl(KEY), watched); // a player across the join
  await waitFor(() => relay.service.hub.get(KEY)!.subscriberCount === 2, "the player");
  await sleep(3_000);
  publisherA.kill("SIGKILL"); // no FIN handling, no deleteStream
  await publisherA.wait();
  await waitFor(async () => (await streamsOf(relay))[0]?.state === "reconnecting", "reconnecting");
  const waiting = (await streamsOf(relay))[0]!;
  assert(waiting.reconnect_seconds_left! > 0 && waiting.reconnect_seconds_left! <= 10);
  await sleep(3_000);

  await using publisherB = ffmpegPublish(second, relay.rtmpUrl(KEY));
  await waitFor(async () => (await streamsOf(relay))[0]?.state === "live", "live again");
  assertEquals((await streamsOf(relay))[0]!.reconnects, 1);
  // A player joining once the new stream has begun gets the new resolution only.
  await waitFor(
    () => relay.logText().includes("video sequence header changed (avc1)"),
    "the new stream's first frame",
  );
  const played = `${dir.path}/played.flv`;
  await using player = ffmpegPlay(relay.rtmpUrl(KEY), played);
  assertEquals((await publisherB.wait()).code, 0, publisherB.stderr);
  assertEquals(destination.status().pid, ffmpegPid, "the same FFmpeg carries on");
  assertEquals(destination.status().restarts, 0);
  assertEquals(cp.streamEnds, [], "no stream-end while the stream continues");

  // The second publisher left cleanly: after the window the stream really ends, once.
  await waitFor(() => cp.streamEnds.length === 1, "stream-end after the window", 25_000);
  assertEquals(cp.streamEnds, [KEY]);
  assertEquals(cp.authCalls, [KEY, KEY], "the control plane was asked again on reconnect");
  assertEquals((await player.wait()).code, 0, player.stderr);
  const sentB = await framemd5(second);
  assertContiguousRun(await framemd5(played), sentB, "player joining after the change");
  const playedSizes = await frameSizesOf(played);
  assert(playedSizes.length > 30, `the player decoded ${playedSizes.length} frames`);
  assertEquals([...new Set(playedSizes)], ["640x360"], "the player sees the new resolution only");
  assertEquals(await decodeErrorsOf(played), "", "the player's stream decodes cleanly");
  // The player watching across the join got the new sequence header in the stream.
  assertEquals((await watching.wait()).code, 0, watching.stderr);
  const watchedSizes = await frameSizesOf(watched);
  assertEquals([...new Set(watchedSizes)], ["320x240", "640x360"], "old, then new resolution");
  assertEquals(await decodeErrorsOf(watched), "", "the watching player's stream decodes cleanly");

  const recordings = await nginx.recordings();
  assertEquals(recordings.length, 1, `one recording per destination, got ${recordings.join(", ")}`);
  const recording = `${nginx.dir}/rec/${recordings[0]}`;
  await settledFile(recording);
  const publishes = (await nginx.errorLog()).split("\n").filter((line) =>
    /publish: name='reconnect-out'/.test(line)
  );
  assertEquals(publishes.length, 1, "nginx saw one publish");

  // Packets, per stream: a run of the first publisher's from its start, then all of the second's.
  const got = await framemd5(recording);
  const sentA = await framemd5(first);
  const key = (p: PacketDigest) => `${p.stream}:${p.size}:${p.hash}`;
  const splits = new Map<number, number>();
  for (const stream of [0, 1]) {
    const mine = got.filter((p) => p.stream === stream).map(key);
    const fromA = sentA.filter((p) => p.stream === stream).map(key);
    const fromB = sentB.filter((p) => p.stream === stream).map(key);
    // The second publisher finished cleanly, so all its packets must be the recording's tail (its
    // audio is the same sine as the first's, so searching for its first packet would be ambiguous).
    const split = mine.length - fromB.length;
    assert(
      split > 0,
      `stream ${stream}: ${mine.length} packets recorded, ${fromB.length} from the second publisher`,
    );
    assertEquals(
      mine.slice(0, split),
      fromA.slice(0, split),
      `stream ${stream}: first publisher from its start`,
    );
    assertEquals(mine.slice(split), fromB, `stream ${stream}: all of the second publisher`);
    splits.set(stream, split);
  }
  // FFmpeg carried the new sequence header into the same connection: the recording decodes
  // cleanly, the old resolution up to the join and the new one after it.
  assertEquals(await decodeErrorsOf(recording), "", "the recording decodes cleanly");
  const sizes = await frameSizesOf(recording);
  const videoFromB = sentB.filter((p) => p.stream === 0).length;
  assertEquals(sizes.length, splits.get(0)! + videoFromB, "every recorded frame decodes");
  assertEquals([...new Set(sizes.slice(0, splits.get(0)))], ["320x240"], "before the join");
  assertEquals([...new Set(sizes.slice(splits.get(0)))], ["640x360"], "after the join");

  // Timestamps never go backwards, and the join leaves a gap equal to the time that passed.
  const dts = { video: await dtsOf(recording, "v"), audio: await dtsOf(recording, "a") };
  for (const [kind, list] of Object.entries(dts)) {
    const backwards = list.findIndex((value, i) => i > 0 && value < list[i - 1]!);
    assertEquals(backwards, -1, `${kind} DTS goes backwards at packet ${backwards}`);
  }
  // ffprobe shows no DTS (N/A) for the packet carrying the new sequence header: skip such.
  const nextValid = (list: number[], from: number) =>
    list.slice(from).find((v) => !Number.isNaN(v))!;
  const videoSplit = splits.get(0)!;
  const gap = nextValid(dts.video, videoSplit) - dts.video[videoSplit - 1]!;
  assert(
    gap >= 2_500 && gap <= 8_000,
    `the join's gap should be the ~3 s that passed, was ${gap} ms (video packet ${videoSplit} of ${dts.video.length}: ${
      dts.video.slice(videoSplit - 2, videoSplit + 2).join(", ")
    })`,
  );
  const audioGap = nextValid(dts.audio, splits.get(1)!) - dts.audio[splits.get(1)! - 1]!;
  assert(
    Math.abs(audioGap - gap) < 250,
    `audio and video jump together (${audioGap} vs ${gap} ms)`,
  );
  const remux = new TestProcess("ffmpeg", [
    "-hide_banner",
    "-i",
    recording,
    "-c",
    "copy",
    "-f",
    "null",
    "-",
  ]);
  await remux.wait();
  assert(!/non-monoton/i.test(remux.stderr), `FFmpeg reports non-monotonic DTS:\n${remux.stderr}`);
});

Deno.test("a publisher that does not come back ends the stream after the window", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 20 });
  await using cp = new FakeControlPlane();
  const { nginx, relay } = await relayWithSink(dir.path, { reconnect_grace_seconds: 2 }, cp);
  await using _nginx = nginx;
  await using _relay = relay;
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const destination = await connectedDestination(relay);
  publisher.kill("SIGKILL");
  const left = performance.now();
  await waitFor(async () => (await streamsOf(relay))[0]?.state === "reconnecting", "reconnecting");
  assert(destination.state === "connected", "destinations stay up during the window");
  await waitFor(() => cp.streamEnds.length === 1, "stream-end", 10_000);
  const waited = (performance.now() - left) / 1000;
  assert(waited >= 1.8 && waited < 5, `ended after ${waited.toFixed(1)} s for a 2 s window`);
  await waitFor(
    async () => (await ffmpegProcessesWith(`127.0.0.1:${nginx.port}/live`)).length === 0,
    "FFmpeg stopped",
  );
  assertEquals(await streamsOf(relay), []);
  assertMatch(relay.logText(), /no reconnect within 2 s/);
});

Deno.test("a stalled publisher is taken over by a new one after publisher_idle_seconds", async () => {
  await using dir = await tempDir();
  const first = await fixture({ seconds: 20, gop: 30 });
  const second = await fixture({ seconds: 3, gop: 30, size: "352x288" });
  await using cp = new FakeControlPlane();
  const { nginx, relay } = await relayWithSink(dir.path, {
    reconnect_grace_seconds: 5,
    publisher_idle_seconds: 1,
  }, cp);
  await using _nginx = nginx;
  await using _relay = relay;
  await using stalled = ffmpegPublish(first, relay.rtmpUrl(KEY));
  const destination = await connectedDestination(relay);
  await run("kill", ["-STOP", String(stalled.pid)]); // frozen: the socket stays open, nothing arrives
  await sleep(1_500);
  await using replacement = ffmpegPublish(second, relay.rtmpUrl(KEY));
  await waitFor(() => relay.logText().includes("stalled publisher replaced"), "takeover");
  await run("kill", ["-CONT", String(stalled.pid)]);
  const stalledStatus = await stalled.wait(10_000);
  assert(stalledStatus.code !== 0, "the stalled publisher's connection was closed");
  assertEquals((await replacement.wait()).code, 0, replacement.stderr);
  assertEquals(destination.status().restarts, 0);
  await waitFor(() => cp.streamEnds.length === 1, "stream-end", 15_000);
  assertEquals((await nginx.recordings()).length, 1);
});

Deno.test("a key revoked before the publisher comes back is refused and the stream ends", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 20 });
  await using cp = new FakeControlPlane();
  const { nginx, relay } = await relayWithSink(dir.path, { reconnect_grace_seconds: 30 }, cp);
  await using _nginx = nginx;
  await using _relay = relay;
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  await connectedDestination(relay);
  publisher.kill("SIGKILL");
  await waitFor(async () => (await streamsOf(relay))[0]?.state === "reconnecting", "reconnecting");
  cp.behaviour.auth = () => ({ body: { code: 1, msg: "revoked" } });
  await using again = ffmpegPublish(source, relay.rtmpUrl(KEY));
  assert((await again.wait(10_000)).code !== 0, "the revoked key is refused");
  await waitFor(() => cp.streamEnds.length === 1, "the stream ends at once, not after 30 s", 5_000);
  await waitFor(
    async () => (await ffmpegProcessesWith(`127.0.0.1:${nginx.port}/live`)).length === 0,
    "FFmpeg stopped",
  );
  assertMatch(
    relay.logText(),
    /publish refused on reconnect: control plane refused the key \(code 1: revoked\)/,
  );
});

/** The audio of `source` alone, as an encoder set to send no video would publish it. */
async function audioOnlyCopy(source: string, dir: string): Promise<string> {
  const out = `${dir}/audio_only.flv`;
  await run("ffmpeg", [
    "-hide_banner",
    "-loglevel",
    "error",
    "-i",
    source,
    "-map",
    "0:a",
    "-c",
    "copy",
    "-f",
    "flv",
    out,
  ]);
  return out;
}

/**
 * Publishes `first`, kills it after a second at the destination, publishes `second` within the
 * window, and once the destination has restarted on it, plays the stream (as a player joining
 * after the change). Checks what is common to every change FFmpeg cannot follow and returns what
 * the player got and the sink's two recordings (before the change, after it).
 */
async function publishChangedStream(dir: string, first: string, second: string) {
  await using cp = new FakeControlPlane();
  const { nginx, relay } = await relayWithSink(dir, { reconnect_grace_seconds: 4 }, cp);
  await using _nginx = nginx;
  await using _relay = relay;

  await using publisherA = ffmpegPublish(first, relay.rtmpUrl(KEY));
  const destination = await connectedDestination(relay);
  const firstPid = destination.status().pid;
  await waitFor(() => destination.status().packets_sent > 60, "a second at the destination");
  publisherA.kill("SIGKILL");
  await publisherA.wait();
  await waitFor(async () => (await streamsOf(relay))[0]?.state === "reconnecting", "reconnecting");

  await using publisherB = ffmpegPublish(second, relay.rtmpUrl(KEY));
  await waitFor(
    () => destination.status().restarts === 1 && destination.state === "connected",
    "the destination restarted on the new stream",
  );
  assert(destination.status().pid !== firstPid, "a new FFmpeg carries the new stream");
  assertEquals(destination.status().error_count, 0, "a restart on purpose is not an error");
  const subscribers = relay.service.hub.get(KEY)!.subscriberCount;
  const played = framemd5(relay.rtmpUrl(KEY)); // a player, to the end of the stream
  await waitFor(() => relay.service.hub.get(KEY)!.subscriberCount > subscribers, "the player");
  assertEquals((await publisherB.wait()).code, 0, publisherB.stderr);
  await waitFor(() => cp.streamEnds.length === 1, "stream-end after the window", 15_000);

  const recordings = (await nginx.recordings()).map((name) => `${nginx.dir}/rec/${name}`);
  assertEquals(recordings.length, 2, `one recording per FFmpeg, got ${recordings.join(", ")}`);
  for (const recording of recordings) await settledFile(recording);
  const [before, after] = recordings as [string, string];
  // The first FFmpeg got an unbroken run of the first publisher's stream, cut at the change (an
  // audio-only stream has no keyframe to start a late joiner from, so it may not be the start).
  assertContiguousRun(await framemd5(before), await framemd5(first), "before", {
    allowTruncatedEnd: true,
  });
  return { played: await played, after, log: relay.logText() };
}

Deno.test("an audio-only publisher replaced within the window by audio and video: the destination restarts on the new stream, a player joining gets both", async () => {
  await using dir = await tempDir();
  const audioOnly = await audioOnlyCopy(await fixture({ seconds: 20, gop: 30 }), dir.path);
  const second = await fixture({ seconds: 6, gop: 30 });
  const { played, after, log } = await publishChangedStream(dir.path, audioOnly, second);
  assertMatch(log, /the returning publisher changed the stream: video added \(avc1\)/);
  const sent = await framemd5(second);
  assertContiguousRun(played, sent, "player joining after the change");
  // All of the new stream, video included, packet for packet, and every frame decodes.
  assertSamePackets(await framemd5(after), sent, "after the change");
  assertEquals(
    (await frameSizesOf(after)).length,
    sent.filter((packet) => packet.stream === 0).length,
    "every video frame of the new stream decodes from the recording",
  );
});

Deno.test("audio and video replaced within the window by audio only: no stale video reaches players or the destination", async () => {
  await using dir = await tempDir();
  const first = await fixture({ seconds: 20, gop: 30 });
  const audioOnly = await audioOnlyCopy(await fixture({ seconds: 6, gop: 30 }), dir.path);
  const { played, after, log } = await publishChangedStream(dir.path, first, audioOnly);
  assertMatch(log, /the returning publisher changed the stream: video removed \(avc1\)/);
  const sent = await framemd5(audioOnly);
  assertContiguousRun(played, sent, "player joining after the change");
  assertEquals(new Set(played.map((packet) => packet.stream)).size, 1, "audio only");
  assertSamePackets(await framemd5(after), sent, "after the change");
});
