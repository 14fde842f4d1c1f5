/**
 * The relay with a real HTTP control plane (a fake one the test runs) and real publishers.
 */

import { Hono } from "hono";
import { delay } from "../../src/async.ts";
import { StreamsSchema } from "../../src/http/schemas.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { assertContiguousRun, assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { freePort, run, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay } from "../helpers/relay.ts";
import { NginxSink, settledFile, startFfmpegSink } from "../helpers/sinks.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";

const controlPlane = (url: string, timeout_seconds = 1) => ({
  control_plane: { url, timeout_seconds, retry_attempts: 2 },
});

Deno.test("an accepted key relays to the valid destinations the control plane returned", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 3, gop: 60 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  await using cp = new FakeControlPlane({
    forwarding: () => ({
      body: {
        destinations: [
          { id: "ok", platform: "custom", rtmp_url: nginx.baseUrl, stream_key: "cp-dest-key" },
          { id: "passwd", platform: "custom", rtmp_url: "file:///etc/passwd", stream_key: "" },
          { id: "option", platform: "custom", rtmp_url: "-y", stream_key: "x" },
          { id: "space", platform: "custom", rtmp_url: "rtmp://host/live key", stream_key: "x" },
          { id: "nourl", platform: "custom", stream_key: "x" },
        ],
      },
    }),
  });
  await using relay = await startTestRelay(controlPlane(cp.url));
  // The relay runs in this process: its FFmpegs are our children (other FFmpegs on the machine,
  // such as a test sink's `ffmpeg -y`, are not the relay's).
  const relayChildren = async () =>
    (await run("ps", ["-eo", "ppid=,args="])).split("\n")
      .filter((line) => line.trim().split(/\s+/)[0] === String(Deno.pid))
      .join("\n");
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("cp-stream-key-1"));
  const relayed = await waitFor(() => relay.service.manager.relayFor("cp-stream-key-1"), "relay");
  await waitFor(() => relayed.get("ok")?.state === "connected", "destination connected");
  assertEquals(relayed.list().map((d) => d.destination.id), ["ok"]);
  const processes = await relayChildren();
  assert(processes.includes("cp-dest-key"), `the relay's FFmpeg is seen:\n${processes}`);
  for (const bad of ["/etc/passwd", " -y", "live key"]) {
    assert(
      !processes.split("\n").some((l) => l.includes("ffmpeg") && l.includes(bad)),
      `${bad} reached FFmpeg`,
    );
  }
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await settledFile(nginx.recording("cp-dest-key"));
  assertSamePackets(
    await framemd5(nginx.recording("cp-dest-key")),
    await framemd5(source),
    "relayed stream",
  );
  const logs = relay.logText();
  assertMatch(logs, /destination skipped: .*scheme "file:" is not allowed/);
  assertMatch(logs, /destination skipped: .*rtmp_url is not a URL/);
  assertMatch(logs, /destination skipped: .*whitespace/);
  assertMatch(logs, /destination skipped: destinations\[4\]: rtmp_url/);
  await waitFor(() => cp.streamEnds.length === 1, "stream-end");
  assertEquals(cp.authCalls, ["cp-stream-key-1"]);
  assert(!logs.includes("cp-stream-key-1") && !logs.includes("cp-dest-key"), "no key in the logs");
});

Deno.test("destinations the control plane failed to give at go-live are asked for again until it gives them", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 8, gop: 30 });
  const sinkPort = freePort();
  await using sink = await startFfmpegSink(sinkPort, "late-dest-key", `${dir.path}/late.flv`);
  let down = true;
  await using cp = new FakeControlPlane({
    forwarding: () =>
      down ? { status: 503 } : {
        body: {
          destinations: [{
            id: "late",
            platform: "custom",
            rtmp_url: `rtmp://127.0.0.1:${sinkPort}/live`,
            stream_key: "late-dest-key",
          }],
        },
      },
  });
  await using relay = await startTestRelay(controlPlane(cp.url));
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("late-stream-key"));
  const streamView = async () => {
    const body = await (await fetch(relay.httpUrl("/api/streams"))).json();
    return StreamsSchema.parse(body).streams[0];
  };
  // While the control plane fails, the stream is live and its view says why.
  const failing = await waitFor(async () => {
    const view = await streamView();
    return view?.destinations_error ? view : undefined;
  }, "the failure in the stream's view");
  assertMatch(failing.destinations_error!, /^cannot fetch destinations: .*HTTP 503/);
  assertEquals(failing.destinations, []);
  const callsWhileDown = cp.forwardingCalls.length;
  down = false; // the control plane is back: the relay asks again by itself
  const relayed = await waitFor(() => relay.service.manager.relayFor("late-stream-key"), "relay");
  await waitFor(() => relayed.get("late")?.state === "connected", "the destination connected");
  assert(cp.forwardingCalls.length > callsWhileDown, "asked again");
  assertEquals((await streamView())?.destinations_error, null, "the failure is cleared");
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  assertEquals((await sink.wait(10_000)).code, 0, sink.stderr);
  // From the GOP cache's keyframe on, to the end: nothing missing after the late start.
  assertContiguousRun(
    await framemd5(`${dir.path}/late.flv`),
    await framemd5(source),
    "destination started late",
  );
  assertMatch(relay.logText(), /cannot fetch destinations: .*; asking again in 2 s/);
});

Deno.test("a stream that ends while its destinations are being asked for again stops asking at once", async () => {
  await using cp = new FakeControlPlane({ forwarding: () => ({ status: 503 }) });
  await using relay = await startTestRelay(controlPlane(cp.url));
  await using client = await TestRtmpClient.connect(relay.rtmpPort);
  await client.handshake();
  assertEquals((await client.publish("gone-key-0001")).code, "NetStream.Publish.Start");
  const manager = relay.service.manager;
  await waitFor(() => manager.relayFor("gone-key-0001")?.destinationsError, "the first failure");
  await client.end(); // the next request is 2 s away
  // The wait for it ends with the stream, not 2 s later (a shutdown waits for this work).
  await waitFor(
    () => manager.diagnostics.relays === 0 && manager.diagnostics.backgroundWork === 0,
    "the stream's work to be over",
    1_000,
  );
  const calls = cp.forwardingCalls.length;
  await delay(2_500);
  assertEquals(cp.forwardingCalls.length, calls, "not asked again");
});

Deno.test("every kind of refusal refuses the publish promptly and logs why", async () => {
  const source = await fixture({ seconds: 2 });
  await using cp = new FakeControlPlane();
  await using relay = await startTestRelay(controlPlane(cp.url, 1));
  const cases: [string, () => void, RegExp][] = [
    [
      "refused key",
      () => cp.behaviour.auth = () => ({ body: { code: 1, msg: "no such key" } }),
      /code 1: no such key/,
    ],
    ["HTTP 500", () => cp.behaviour.auth = () => ({ status: 500, body: {} }), /HTTP 500/],
    ["not JSON", () => cp.behaviour.auth = () => ({ text: "Bad Gateway" }), /not JSON/],
    [
      "too slow",
      () => cp.behaviour.auth = () => ({ delayMs: 5_000, body: { code: 0 } }),
      /timed out/,
    ],
  ];
  for (const [name, arrange, reason] of cases) {
    arrange();
    const before = relay.logs.length;
    const started = performance.now();
    await using publisher = ffmpegPublish(
      source,
      relay.rtmpUrl(`refused-${name.replace(/\W/g, "")}`),
      { realtime: false },
    );
    const status = await publisher.wait(10_000);
    const elapsed = performance.now() - started;
    assert(status.code !== 0, `${name}: the publish must fail`);
    assert(elapsed < 3_500, `${name}: took ${Math.round(elapsed)} ms`);
    const text = relay.logs.slice(before).map((r) =>
      r.message.join("") + JSON.stringify(r.properties)
    ).join("\n");
    assertMatch(text, /publish refused/, name);
    assertMatch(text, reason, name);
  }
  assertEquals(relay.service.hub.live().length, 0);
  assertEquals(cp.streamEnds, [], "a refused publish never started a stream");
});

Deno.test("a publisher that hangs up while its key is being authorised is let go at once and never goes live", async () => {
  const AUTH_DELAY_MS = 3_000;
  await using cp = new FakeControlPlane({
    auth: () => ({ delayMs: AUTH_DELAY_MS, body: { code: 0, data: { forward: true } } }),
  });
  await using relay = await startTestRelay(controlPlane(cp.url, 10));
  {
    await using client = await TestRtmpClient.connect(relay.rtmpPort);
    await client.handshake();
    const streamId = await client.connectAndCreateStream();
    await client.call(streamId, "publish", null, "hangup-key-0001", "live");
    await waitFor(() => cp.authCalls.length === 1, "the publish to reach the control plane");
  } // hung up, with the answer still to come
  const hungUpAt = performance.now();
  await waitFor(
    () =>
      relay.logText().includes("peer closed the connection while its publish was being authorised"),
    "the hang-up to be noticed",
  );
  const noticedAfterMs = performance.now() - hungUpAt;
  assert(
    noticedAfterMs < AUTH_DELAY_MS / 2,
    `noticed ${Math.round(noticedAfterMs)} ms after the hang-up, not when the answer came`,
  );
  // The control plane says yes afterwards: the session ends, and nothing of the stream starts.
  await waitFor(() => relay.service.rtmp.sessions.size === 0, "the session to end", 10_000);
  const logs = relay.logText();
  assert(!logs.includes("publish accepted"), `the publish was accepted:\n${logs}`);
  assertEquals(relay.service.hub.live().length, 0);
  assertEquals(cp.forwardingCalls, [], "no destinations fetched");
  assertEquals(cp.streamEnds, [], "no stream-end for a stream that never started");
  // The key is free again.
  cp.behaviour.auth = () => ({ body: { code: 0, data: { forward: false } } });
  await using again = await TestRtmpClient.connect(relay.rtmpPort);
  await again.handshake();
  assertEquals((await again.publish("hangup-key-0001")).code, "NetStream.Publish.Start");
});

Deno.test("publishes are refused while the control plane is down and accepted once it answers", async () => {
  const source = await fixture({ seconds: 2 });
  const port = freePort();
  await using relay = await startTestRelay(controlPlane(`http://127.0.0.1:${port}`, 1));
  await using refused = ffmpegPublish(source, relay.rtmpUrl("outage-key-1"), { realtime: false });
  assert((await refused.wait(10_000)).code !== 0);
  assertMatch(relay.logText(), /publish refused: control plane unreachable/);
  // The control plane comes back on the same address.
  const app = new Hono();
  app.post("/api/auth/stream", (c) => c.json({ code: 0, data: { forward: false } }));
  app.post("/api/auth/stream-end", (c) => c.json({ code: 0 }));
  await using _back = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, app.fetch);
  await using accepted = ffmpegPublish(source, relay.rtmpUrl("outage-key-1"), { realtime: false });
  assertEquals((await accepted.wait(10_000)).code, 0, accepted.stderr);
});

Deno.test("stream-end arrives once per stream: clean end, vanished publisher, relay shutdown", async () => {
  const source = await fixture({ seconds: 20 });
  await using cp = new FakeControlPlane({
    auth: () => ({ body: { code: 0, data: { forward: false } } }),
  });
  const relay = await startTestRelay(controlPlane(cp.url));
  try {
    const short = await fixture({ seconds: 1 });
    await using clean = ffmpegPublish(short, relay.rtmpUrl("end-clean-1"), { realtime: false });
    assertEquals((await clean.wait()).code, 0, clean.stderr);
    await waitFor(() => cp.streamEnds.includes("end-clean-1"), "clean stream-end");

    await using vanished = ffmpegPublish(source, relay.rtmpUrl("end-kill-1"));
    await waitFor(() => relay.service.hub.get("end-kill-1")?.state === "live", "live");
    vanished.kill("SIGKILL");
    await waitFor(() => cp.streamEnds.includes("end-kill-1"), "stream-end after SIGKILL");

    await using survivor = ffmpegPublish(source, relay.rtmpUrl("end-shutdown-1"));
    await waitFor(() => relay.service.hub.get("end-shutdown-1")?.state === "live", "live");
    await relay.service.shutdown("test shutdown");
    assert(
      cp.streamEnds.includes("end-shutdown-1"),
      "stream-end is sent before shutdown completes",
    );
    await survivor.wait(10_000);
  } finally {
    await relay[Symbol.asyncDispose]();
  }
  assertEquals(cp.streamEnds.sort(), ["end-clean-1", "end-kill-1", "end-shutdown-1"]);
});

Deno.test("an encoder returning while the control plane is down keeps its stream and destinations until it is answered", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 30, gop: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  let authDown = false;
  await using cp = new FakeControlPlane({
    auth: () =>
      authDown ? { status: 503, body: {} } : { body: { code: 0, data: { forward: true } } },
    forwarding: () => ({
      body: {
        destinations: [{
          id: "tw",
          platform: "custom",
          rtmp_url: nginx.baseUrl,
          stream_key: "cp-blip-out",
          engine: "native",
        }],
      },
    }),
  });
  await using relay = await startTestRelay({
    ...controlPlane(cp.url),
    streaming: { reconnect_grace_seconds: 20 },
  });
  const key = "cp-blip-key-0001";
  {
    await using _first = ffmpegPublish(source, relay.rtmpUrl(key));
    const destination = await waitFor(
      () => relay.service.manager.relayFor(key)?.get("tw"),
      "the destination",
    );
    await waitFor(() => destination.status().connected, "the destination to connect", 15_000);
  } // the encoder drops: the reconnect window opens
  await waitFor(() => relay.service.hub.get(key)?.state === "reconnecting", "the window");

  authDown = true; // a control-plane blip, just as the encoder comes back
  {
    await using refused = ffmpegPublish(source, relay.rtmpUrl(key));
    await refused.wait();
  }
  assertEquals(relay.service.hub.get(key)?.state, "reconnecting", "the stream waits on");
  assertEquals(cp.streamEnds, [], "no stream-end for a blip");
  const destination = relay.service.manager.relayFor(key)?.get("tw");
  assert(destination !== undefined, "the destination is kept");

  authDown = false; // the encoder's next retry is answered
  await using _back = ffmpegPublish(source, relay.rtmpUrl(key));
  await waitFor(() => relay.service.hub.get(key)?.state === "live", "live again", 15_000);
  assertEquals(relay.service.manager.relayFor(key)?.get("tw"), destination, "the same destination");
  assertEquals(destination.status().reconnects, 0, "its connection to the platform never dropped");
});

for (const engine of ["ffmpeg", "native"]) {
  Deno.test(`a destination listed by a slow control plane gets the stream from its first packet (${engine} engine)`, async () => {
    await using dir = await tempDir();
    // FFmpeg's muxer writes the first audio frame before the first video keyframe. One keyframe
    // in 3 s: the GOP cache still holds the stream's start however late the answer comes on a
    // busy machine (with one a second, a start over 1 s late lost the first group).
    const source = await fixture({ seconds: 4, gop: 90 });
    const port = freePort();
    await using sink = await startFfmpegSink(port, "slow-list-out", `${dir.path}/out.flv`);
    await using cp = new FakeControlPlane({
      forwarding: () => ({
        delayMs: 300, // the stream is live and its first packets have come by the time it answers
        body: {
          destinations: [{
            id: "d",
            platform: "custom",
            rtmp_url: `rtmp://127.0.0.1:${port}/live`,
            stream_key: "slow-list-out",
            engine,
          }],
        },
      }),
    });
    await using relay = await startTestRelay(controlPlane(cp.url));
    await using publisher = ffmpegPublish(source, relay.rtmpUrl("slow-list-key-0001"));
    assertEquals((await publisher.wait()).code, 0, publisher.stderr);
    await sink.wait(20_000);
    assertSamePackets(await framemd5(`${dir.path}/out.flv`), await framemd5(source), engine);
  });
}

Deno.test("the relay says at start whether its control plane answers, before any publish", async () => {
  await using cp = new FakeControlPlane({});
  {
    await using relay = await startTestRelay(controlPlane(`${cp.url}/v1`));
    await waitFor(() => relay.logText().includes("answers"), "the start-up probe's answer");
    assertMatch(relay.logText(), new RegExp(`INFO.*control plane at ${cp.url} answers`));
  }
  await using relay = await startTestRelay(controlPlane(`http://127.0.0.1:${freePort()}`));
  await waitFor(() => relay.logText().includes("refused until"), "the start-up probe's warning");
  assertMatch(
    relay.logText(),
    /WARN.*control plane unreachable: .*Connection refused.*: publishes are refused until it answers/,
  );
});
