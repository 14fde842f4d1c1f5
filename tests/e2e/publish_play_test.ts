/**
 * Real encoders publish to the real server over real sockets; real players read it back; every
 * packet a player receives is compared with what was published (framemd5: stream, size, hash).
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { assertContiguousRun, assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { sleep, tempDir, TestProcess, waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { ffmpegPlay, ffmpegPublish } from "../helpers/peers.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";
import { readFlvTags } from "../../bench/flv_file.ts";
import { TagType } from "../../src/media/flv.ts";

const OPEN_KEY = {
  streams: [{ key: "e2e-key-0001" }, { key: "e2e-key-0002" }, { key: "e2e-ext-0003" }],
};

function waitForPlayers(relay: TestRelay, key: string, count: number) {
  return waitFor(
    () => (relay.service.hub.get(key)?.subscriberCount ?? 0) >= count,
    `${count} player(s) on the stream`,
  );
}

/** An FFmpeg player on `key` records to `out` while FFmpeg publishes `source` as fast as it can. */
async function playWhileFfmpegPublishes(
  relay: TestRelay,
  key: string,
  source: string,
  out: string,
) {
  await using player = ffmpegPlay(relay.rtmpUrl(key), out);
  await waitForPlayers(relay, key, 1);
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(key), { realtime: false });
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  assertEquals((await player.wait()).code, 0, player.stderr);
}

function gstreamerPublish(
  sink: "rtmp2sink" | "rtmpsink",
  source: string,
  url: string,
  sent: string,
) {
  const location = sink === "rtmpsink" ? `${url} live=1` : url;
  return new TestProcess("gst-launch-1.0", [
    "-q",
    "filesrc",
    `location=${source}`,
    "!",
    "flvdemux",
    "name=d",
    "flvmux",
    "name=m",
    "streamable=true",
    "!",
    "tee",
    "name=t",
    "t.",
    "!",
    "queue",
    "!",
    sink,
    `location=${location}`,
    "t.",
    "!",
    "queue",
    "!",
    "filesink",
    `location=${sent}`,
    "d.video",
    "!",
    "queue",
    "!",
    "m.video",
    "d.audio",
    "!",
    "queue",
    "!",
    "m.audio",
  ]);
}

Deno.test("FFmpeg publishes and FFmpeg plays back every packet unchanged", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4 });
  await using relay = await startTestRelay(OPEN_KEY);
  const out = `${dir.path}/played.flv`;
  await playWhileFfmpegPublishes(relay, "e2e-key-0001", source, out);
  assertSamePackets(await framemd5(out), await framemd5(source), "ffmpeg player");
});

Deno.test("rtmpdump plays back every packet unchanged", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4 });
  await using relay = await startTestRelay(OPEN_KEY);
  const out = `${dir.path}/rtmpdump.flv`;
  await using player = new TestProcess("rtmpdump", [
    "-q",
    "--live",
    "-r",
    relay.rtmpUrl("e2e-key-0001"),
    "-o",
    out,
  ]);
  await waitForPlayers(relay, "e2e-key-0001", 1);
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("e2e-key-0001"), { realtime: false });
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await player.wait();
  assertSamePackets(await framemd5(out), await framemd5(source), "rtmpdump player");
});

for (const sink of ["rtmp2sink", "rtmpsink"] as const) {
  Deno.test(`GStreamer ${sink} publishes and the player gets exactly what it sent`, async () => {
    await using dir = await tempDir();
    const source = await fixture({ seconds: 4 });
    await using relay = await startTestRelay(OPEN_KEY);
    const out = `${dir.path}/played.flv`;
    const sent = `${dir.path}/sent.flv`;
    await using player = ffmpegPlay(relay.rtmpUrl("e2e-key-0002"), out);
    await waitForPlayers(relay, "e2e-key-0002", 1);
    await using publisher = gstreamerPublish(sink, source, relay.rtmpUrl("e2e-key-0002"), sent);
    assertEquals((await publisher.wait()).code, 0, publisher.stderr);
    // rtmp2sink and librtmp keep the connection open after EOS in some versions: end it.
    await sleep(500);
    publisher.kill();
    assertEquals((await player.wait()).code, 0, player.stderr);
    const sentPackets = await framemd5(sent);
    assert(sentPackets.length > 100, `GStreamer sent ${sentPackets.length} packets`);
    assertSamePackets(await framemd5(out), sentPackets, `${sink} publisher`);
  });
}

Deno.test("a player joining mid-stream starts at once from the GOP cache", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 6, gop: 30 });
  await using relay = await startTestRelay(OPEN_KEY);
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("e2e-key-0001"));
  await waitFor(() => relay.service.hub.get("e2e-key-0001")?.state === "live", "stream live");
  await sleep(2_500);
  const out = `${dir.path}/late.flv`;
  await using player = ffmpegPlay(relay.rtmpUrl("e2e-key-0001"), out);
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  assertEquals((await player.wait()).code, 0, player.stderr);
  const starts = assertContiguousRun(await framemd5(out), await framemd5(source), "late player");
  assert(starts[0]! > 0, "the late player should have started mid-stream");
});

Deno.test("timestamps past 2^24 ms (extended timestamps) pass through unchanged", async () => {
  const source = await fixture({ seconds: 2, startSeconds: 16_800 });
  const sent = (await readFlvTags(source)).filter((tag) => tag.type !== TagType.Script);
  // Sequence headers at 0, as FFmpeg stamps them; every frame past 2^24 ms.
  const frames = sent.filter((tag) => !tag.sequenceHeader);
  assert(frames.every((tag) => tag.timestamp > 0xffffff), "the fixture needs extended timestamps");
  await using relay = await startTestRelay(OPEN_KEY);
  await using player = await TestRtmpClient.player(relay.rtmpPort, "e2e-ext-0003");
  // -copyts: FFmpeg would otherwise start what it sends at 0.
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("e2e-ext-0003"), {
    realtime: false,
    outputOptions: ["-copyts"],
  });
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  const received = (await player.receiveTags(sent.length + 1))
    .filter((tag) => tag.type !== TagType.Script);
  // Every tag, in order, with the timestamp and the bytes it was sent with.
  const summary = (tags: { type: number; timestamp: number; payload: Uint8Array }[]) =>
    tags.map((tag) => `${tag.type}@${tag.timestamp}:${tag.payload.join(",")}`);
  assertEquals(summary(received), summary(sent));
});

Deno.test("a second publisher on a live key is refused and the first carries on", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 5 });
  await using relay = await startTestRelay(OPEN_KEY);
  const out = `${dir.path}/first.flv`;
  await using player = ffmpegPlay(relay.rtmpUrl("e2e-key-0001"), out);
  await waitForPlayers(relay, "e2e-key-0001", 1);
  await using first = ffmpegPublish(source, relay.rtmpUrl("e2e-key-0001"));
  await waitFor(() => relay.service.hub.get("e2e-key-0001")?.state === "live", "stream live");
  const started = performance.now();
  await using second = ffmpegPublish(source, relay.rtmpUrl("e2e-key-0001"));
  const secondStatus = await second.wait(10_000);
  assert(secondStatus.code !== 0, "the second publisher should fail");
  assert(performance.now() - started < 4_000, "the refusal should be prompt");
  assertMatch(relay.logText(), /publish refused: stream key already publishing/);
  assertEquals((await first.wait()).code, 0, first.stderr);
  assertEquals((await player.wait()).code, 0, player.stderr);
  assertSamePackets(await framemd5(out), await framemd5(source), "first publisher's stream");
});

Deno.test("a key the hook refuses gets BadName and a closed connection (FFmpeg and librtmp)", async () => {
  const source = await fixture({ seconds: 2 });
  await using relay = await startTestRelay(OPEN_KEY);
  const started = performance.now();
  await using ffmpeg = ffmpegPublish(source, relay.rtmpUrl("not-a-listed-key"), {
    realtime: false,
  });
  assert((await ffmpeg.wait(10_000)).code !== 0, "ffmpeg should fail to publish");
  await using dir = await tempDir();
  // librtmp does not give up on BadName alone: it exits only because we close the socket.
  await using librtmp = gstreamerPublish(
    "rtmpsink",
    source,
    relay.rtmpUrl("also-not-listed"),
    `${dir.path}/x.flv`,
  );
  assert((await librtmp.wait(10_000)).code !== 0, "gst rtmpsink should fail to publish");
  assert(performance.now() - started < 8_000, "refusals should be prompt");
  const text = relay.logText();
  assertMatch(text, /publish refused: stream key not in config.toml/);
  assert(!text.includes("not-a-listed-key"), "the refused key must not be logged in full");
  assertEquals(relay.service.hub.live().length, 0);
});

Deno.test("players are told when the publisher vanishes without a goodbye", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 10 });
  await using relay = await startTestRelay(OPEN_KEY);
  await using player = ffmpegPlay(relay.rtmpUrl("e2e-key-0001"), `${dir.path}/cut.flv`);
  await waitForPlayers(relay, "e2e-key-0001", 1);
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("e2e-key-0001"));
  await waitFor(() => relay.service.hub.get("e2e-key-0001")?.state === "live", "stream live");
  await sleep(1_500);
  publisher.kill("SIGKILL");
  await publisher.wait();
  await player.wait(10_000);
  await waitFor(() => relay.service.hub.live().length === 0, "stream ended");
  assertMatch(relay.logText(), /stream ended/);
});
