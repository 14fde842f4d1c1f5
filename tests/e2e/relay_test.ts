/**
 * The fan-out relay with real sinks: nginx-rtmp recording and `ffmpeg -listen 1`. Each sink's
 * recording is compared packet by packet with what the publisher sent.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { assertContiguousRun, assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { ffmpegProcessesWith, freePort, run, sleep, tempDir, waitFor } from "../helpers/process.ts";
import { spawnRelay, startTestRelay } from "../helpers/relay.ts";
import { NginxSink, ReopeningFfmpegSink, settledFile, startFfmpegSink } from "../helpers/sinks.ts";
import { ffmpegPublish } from "../helpers/peers.ts";

const destination = (id: string, rtmp_url: string, stream_key: string) => ({
  id,
  platform: "custom",
  rtmp_url,
  stream_key,
});

Deno.test("one stream reaches three sinks and every recording equals what was published", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4, gop: 60 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  const ffmpegPort = freePort();
  await using ffmpegSink = await startFfmpegSink(ffmpegPort, "dest-c-key", `${dir.path}/c.flv`);
  await using relay = await startTestRelay({
    streams: [{
      key: "fanout-key-0001",
      destinations: [
        destination("a", nginx.baseUrl, "dest-a-key"),
        destination("b", nginx.baseUrl, "dest-b-key"),
        destination("c", `rtmp://127.0.0.1:${ffmpegPort}/live`, "dest-c-key"),
      ],
    }],
  });
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("fanout-key-0001"));
  await waitFor(
    () =>
      relay.service.manager.relayFor("fanout-key-0001")?.list().every((d) =>
        d.state === "connected"
      ),
    "all three destinations connected",
  );
  const statuses = relay.service.manager.relayFor("fanout-key-0001")!.list().map((d) => d.status());
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await ffmpegSink.wait(15_000);
  await settledFile(nginx.recording("dest-a-key"));
  await settledFile(nginx.recording("dest-b-key"));
  const sent = await framemd5(source);
  assertSamePackets(await framemd5(nginx.recording("dest-a-key")), sent, "nginx sink a");
  assertSamePackets(await framemd5(nginx.recording("dest-b-key")), sent, "nginx sink b");
  assertSamePackets(await framemd5(`${dir.path}/c.flv`), sent, "ffmpeg sink c");
  assert(statuses.every((s) => s.connected && s.pid !== null), "status shows each connected");
  const logs = relay.logText();
  for (const key of ["dest-a-key", "dest-b-key", "dest-c-key", "fanout-key-0001"]) {
    assert(!logs.includes(key), `${key} must not appear in the logs`);
  }
});

Deno.test("a sink that is down at the start is reached once it comes up", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 6, gop: 30 });
  const port = freePort();
  await using relay = await startTestRelay({
    streams: [{
      key: "late-sink-0001",
      destinations: [destination("late", `rtmp://127.0.0.1:${port}/live`, "late-key")],
    }],
  });
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("late-sink-0001"));
  const supervisor = await waitFor(
    () => relay.service.manager.relayFor("late-sink-0001")?.get("late"),
    "relay",
  );
  await waitFor(() => supervisor.status().error_count >= 1, "a failed attempt");
  assert(supervisor.status().last_error !== null, "the failure is recorded");
  await using sink = await startFfmpegSink(port, "late-key", `${dir.path}/late.flv`);
  await waitFor(() => supervisor.state === "connected", "the destination to connect", 10_000);
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await sink.wait(15_000);
  assertContiguousRun(await framemd5(`${dir.path}/late.flv`), await framemd5(source), "late sink");
  assert(supervisor.status().restarts >= 1, "restarts are counted");
});

Deno.test("a sink killed mid-stream gets the stream again from a keyframe; the others lose nothing", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 8, gop: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  const port = freePort();
  const firstSink = await startFfmpegSink(port, "flaky-key", `${dir.path}/flaky-1.flv`);
  await using relay = await startTestRelay({
    streams: [{
      key: "flaky-0001",
      destinations: [
        destination("a", nginx.baseUrl, "steady-a"),
        destination("b", nginx.baseUrl, "steady-b"),
        destination("flaky", `rtmp://127.0.0.1:${port}/live`, "flaky-key"),
      ],
    }],
  });
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("flaky-0001"));
  const flaky = await waitFor(
    () => relay.service.manager.relayFor("flaky-0001")?.get("flaky"),
    "relay",
  );
  await waitFor(() => flaky.state === "connected", "flaky connected");
  await sleep(2_000);
  firstSink.kill("SIGKILL");
  await firstSink[Symbol.asyncDispose]();
  await sleep(300);
  await using secondSink = await ReopeningFfmpegSink.start(
    port,
    "flaky-key",
    `${dir.path}/flaky-2.flv`,
  );
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await secondSink.wait(15_000);
  await settledFile(nginx.recording("steady-a"));
  await settledFile(nginx.recording("steady-b"));
  const sent = await framemd5(source);
  assertSamePackets(await framemd5(nginx.recording("steady-a")), sent, "steady sink a");
  assertSamePackets(await framemd5(nginx.recording("steady-b")), sent, "steady sink b");
  const resumed = await framemd5(`${dir.path}/flaky-2.flv`);
  const [videoStart] = assertContiguousRun(resumed, sent, "restarted sink");
  assert(videoStart! > 0, "the restarted sink resumed mid-stream");
  assert(flaky.status().restarts >= 1);
});

Deno.test("a sink that stops reading does not hold up the publisher or the others", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 8, gop: 30, videoBitrate: "6M", size: "1280x720" });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  const port = freePort();
  await using stalled = await startFfmpegSink(port, "stall-key", `${dir.path}/stalled.flv`);
  await using relay = await startTestRelay({
    streams: [{
      key: "stall-0001",
      destinations: [
        destination("a", nginx.baseUrl, "fast-a"),
        destination("b", nginx.baseUrl, "fast-b"),
        destination("stalled", `rtmp://127.0.0.1:${port}/live`, "stall-key"),
      ],
    }],
    streaming: { buffer_size_kb: 64 },
  });
  const started = performance.now();
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("stall-0001"));
  const slow = await waitFor(
    () => relay.service.manager.relayFor("stall-0001")?.get("stalled"),
    "relay",
  );
  await waitFor(() => slow.state === "connected", "stalled sink connected");
  stalled.kill("SIGSTOP"); // the sink stops reading: its socket fills, its FFmpeg blocks
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  const elapsed = performance.now() - started;
  assert(elapsed < 8_000 + 3_000, `the publisher took ${Math.round(elapsed)} ms for 8 s of media`);
  await settledFile(nginx.recording("fast-a"));
  await settledFile(nginx.recording("fast-b"));
  const sent = await framemd5(source);
  assertSamePackets(await framemd5(nginx.recording("fast-a")), sent, "sink a");
  assertSamePackets(await framemd5(nginx.recording("fast-b")), sent, "sink b");
  stalled.kill("SIGCONT");
});

Deno.test("no FFmpeg of ours remains after the publisher leaves", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 3, gop: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  await using relay = await startTestRelay({
    streams: [{
      key: "reap-0001",
      destinations: [
        destination("a", nginx.baseUrl, "reap-a"),
        destination("b", nginx.baseUrl, "reap-b"),
      ],
    }],
  });
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("reap-0001"));
  await waitFor(
    async () => (await ffmpegProcessesWith(`127.0.0.1:${nginx.port}/live`)).length === 2,
    "two FFmpeg",
  );
  publisher.kill("SIGKILL"); // abrupt: no FCUnpublish, no deleteStream
  await publisher.wait();
  await waitFor(
    async () => (await ffmpegProcessesWith(`127.0.0.1:${nginx.port}/live`)).length === 0,
    "no FFmpeg",
    10_000,
  );
  assertEquals(relay.service.manager.relays().length, 0);
});

Deno.test("after kill -9 of the relay its FFmpeg children exit on their own", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 20, gop: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  await using relayProcess = await spawnRelay(
    dir.path,
    `[[streams]]\nkey = "orphan-0001"\n[[streams.destinations]]\nid = "a"\nrtmp_url = "${nginx.baseUrl}"\nstream_key = "orphan-a"\n`,
  );
  await using publisher = ffmpegPublish(source, relayProcess.rtmpUrl("orphan-0001"));
  const marker = `127.0.0.1:${nginx.port}/live`;
  await waitFor(
    async () => (await ffmpegProcessesWith(marker)).length === 1,
    "the destination FFmpeg",
  );
  relayProcess.process.kill("SIGKILL");
  await relayProcess.process.wait();
  const killedAt = performance.now();
  await waitFor(
    async () => (await ffmpegProcessesWith(marker)).length === 0,
    "orphans to exit",
    15_000,
  );
  const seconds = (performance.now() - killedAt) / 1000;
  assert(seconds < 15, `FFmpeg outlived the relay by ${seconds.toFixed(1)} s`);
  publisher.kill("SIGKILL");
  // Nothing else of the relay is left either.
  const leftovers = (await run("ps", ["-eo", "pid=,args="])).split("\n").filter((line) =>
    line.includes(`${dir.path}/relay.toml`)
  );
  assertEquals(leftovers, []);
});
