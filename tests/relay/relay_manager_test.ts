/**
 * The relay manager over the real relay: a publisher's authorisation (and its `forward`) lives as
 * long as that publisher, never longer, and a resumed publisher's own `forward` decides whether
 * the destinations run.
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { fixture } from "../helpers/media.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { ffmpegProcessesWith, freePort, sleep, waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";
import { StalledSink } from "../helpers/silent_server.ts";

/** A publisher of our own (no media) that has been told NetStream.Publish.Start. */
async function publisher(relay: TestRelay, key: string): Promise<TestRtmpClient> {
  const client = await TestRtmpClient.connect(relay.rtmpPort);
  await client.handshake();
  const { code } = await client.publish(key);
  assertEquals(code, "NetStream.Publish.Start");
  return client;
}

/** Closes the publisher's socket and waits for its stream to wait for a reconnect. */
async function drop(relay: TestRelay, client: TestRtmpClient, key: string): Promise<void> {
  client.close();
  await waitFor(() => relay.service.hub.get(key)?.state === "reconnecting", "reconnecting");
}

/** Connects, asks to publish `key`, and hangs up without waiting for the answer. */
async function abandonedPublish(relay: TestRelay, key: string): Promise<void> {
  await using client = await TestRtmpClient.connect(relay.rtmpPort);
  await client.handshake();
  const streamId = await client.connectAndCreateStream();
  await client.call(streamId, "publish", null, key, "live");
}

Deno.test("RelayManager keeps nothing of abandoned authorisations and reconnects", async () => {
  await using cp = new FakeControlPlane();
  let slow = (name: string) => name.startsWith("abandoned-");
  cp.behaviour.auth = (name) => ({
    body: { code: 0, data: { forward: false } },
    // Long enough for the relay to notice the hang-up (its ping fails or times out) first.
    ...(slow(name) ? { delayMs: 2_500 } : {}),
  });
  await using relay = await startTestRelay({
    control_plane: { url: cp.url, timeout_seconds: 10 },
    rtmp: { ping_interval_seconds: 0.2, ping_timeout_seconds: 0.5 },
    streaming: { reconnect_grace_seconds: 6 },
  });
  const { hub, manager, rtmp } = relay.service;

  // 50 connections that hang up while the control plane thinks.
  for (let i = 0; i < 50; i++) await abandonedPublish(relay, `abandoned-${i}`);
  await waitFor(() => cp.authCalls.length === 50, "50 authorisations asked", 30_000);

  // One stream, dropped and resumed 20 times within the window; between them, 5 reconnects
  // that hang up while being authorised.
  let client = await publisher(relay, "resumed");
  for (let i = 0; i < 20; i++) {
    await drop(relay, client, "resumed");
    if (i % 4 === 0) {
      slow = (name) => name === "resumed" || name.startsWith("abandoned-");
      const asked = cp.authCalls.length;
      await abandonedPublish(relay, "resumed");
      await waitFor(() => cp.authCalls.length > asked, "the abandoned reconnect's authorisation");
      await waitFor(() => !hub.get("resumed")?.authorizing, "the abandoned reconnect released");
      slow = (name) => name.startsWith("abandoned-");
    }
    client = await publisher(relay, "resumed");
  }
  assertEquals(hub.get("resumed")!.reconnects, 20);
  await drop(relay, client, "resumed");

  await waitFor(() => rtmp.sessions.size === 0, "every connection gone", 30_000);
  await waitFor(() => cp.streamEnds.length === 1, "the stream ends after its window", 15_000);
  await manager.settle();
  assertEquals(manager.diagnostics, { relays: 0, backgroundWork: 0 });
  assertEquals(hub.diagnostics, { streams: 0, reconnectTimers: 0 });
  // Every abandoned publish was asked about, closed during its authorisation, never live.
  assertEquals(cp.authCalls.filter((name) => name.startsWith("abandoned-")).length, 50);
  assertEquals(hub.totalStreams, 1);
});

Deno.test("RelayManager honours a resumed publisher's forward decision", async () => {
  await using cp = new FakeControlPlane();
  let forward = true;
  const sinkPort = freePort(); // nothing listens: the FFmpeg never gets media to send anyway
  cp.behaviour.auth = () => ({ body: { code: 0, data: { forward } } });
  cp.behaviour.forwarding = () => ({
    body: {
      destinations: [{
        id: "yt",
        platform: "youtube",
        rtmp_url: `rtmp://127.0.0.1:${sinkPort}/live`,
        stream_key: "forward-out",
      }],
    },
  });
  await using relay = await startTestRelay({
    control_plane: { url: cp.url, timeout_seconds: 5 },
    streaming: { reconnect_grace_seconds: 30 },
  });
  const { manager } = relay.service;
  const KEY = "forward-key-0001";
  const destinations = () => manager.relayFor(KEY)?.size ?? -1;
  const ffmpegs = () => ffmpegProcessesWith(`127.0.0.1:${sinkPort}/live`);

  let client = await publisher(relay, KEY);
  await waitFor(() => destinations() === 1, "forward: true starts the destination");
  const first = manager.relayFor(KEY)!.get("yt")!;
  await waitFor(async () => (await ffmpegs()).length === 1, "its FFmpeg");

  await drop(relay, client, KEY);
  client = await publisher(relay, KEY); // the same answer: nothing moves
  assertEquals(manager.relayFor(KEY)!.get("yt"), first, "the same destination carries on");
  assertEquals(cp.forwardingCalls.length, 1);

  forward = false;
  await drop(relay, client, KEY);
  client = await publisher(relay, KEY);
  await waitFor(() => destinations() === 0, "forward: false on the resume stops the destination");
  await waitFor(async () => (await ffmpegs()).length === 0, "its FFmpeg gone");
  assertEquals(relay.service.hub.get(KEY)!.state, "live", "players keep the stream");

  forward = true;
  await drop(relay, client, KEY);
  client = await publisher(relay, KEY);
  await waitFor(() => destinations() === 1, "forward: true on the resume starts it again");
  assertEquals(cp.forwardingCalls.length, 2, "the destinations are asked for again");
  await waitFor(async () => (await ffmpegs()).length === 1, "a new FFmpeg");
  assertMatch(relay.logText(), /publisher not to be forwarded: stopping 1 destination\(s\)/);
  client.close();
});

/** A relay whose stream `key` relays to destinations `ids`, each to a listener that never answers. */
async function mutedStream(key: string, ids: string[]) {
  await using stack = new AsyncDisposableStack();
  // A platform that accepts and never says a word: FFmpeg, written to, waits on its handshake,
  // and stopping it takes seconds (until its I/O timeout).
  const mute = stack.use(new StalledSink());
  const relay = stack.use(
    await startTestRelay({
      streams: [{
        key,
        destinations: ids.map((id) => ({
          id,
          platform: "custom",
          rtmp_url: mute.url,
          stream_key: `${id}-out`,
        })),
      }],
    }),
  );
  const source = await fixture({ seconds: 30 });
  stack.use(ffmpegPublish(source, relay.rtmpUrl(key)));
  const { manager } = relay.service;
  await waitFor(() => manager.relayFor(key)?.size === ids.length, "the destinations added");
  const streamRelay = manager.relayFor(key)!;
  for (const id of ids) {
    await waitFor(
      () => (streamRelay.get(id)?.status().bytes_sent ?? 0) > 0,
      `bytes written to ${id}'s FFmpeg`,
    );
  }
  const resources = stack.move();
  return {
    relay,
    streamRelay,
    [Symbol.asyncDispose]: () => resources.disposeAsync(),
  };
}

/**
 * Samples `total` from now until `work` settles: Prometheus reads a counter that goes down as a
 * reset, so every sample must be at least the one before.
 */
async function assertNeverDecreases(
  total: () => number,
  before: number,
  work: Promise<unknown>,
  what: string,
): Promise<void> {
  let settled = false;
  const done = work.finally(() => settled = true);
  let last = before;
  let samples = 0;
  const check = () => {
    const now = total();
    samples++;
    assert(
      now >= last,
      `${what}: destination bytes went down from ${last} to ${now} (sample ${samples})`,
    );
    last = now;
  };
  check(); // at once: the destination has just left the live set
  const started = performance.now();
  while (!settled) {
    await sleep(25);
    check();
  }
  await done;
  check();
  // A stop over at once would leave no time for the total to be seen going down.
  assert(performance.now() - started > 250, `${what} took too short a time to tell`);
}

Deno.test("RelayManager.destinationBytesSent never goes down while a removed destination stops", async () => {
  await using scenario = await mutedStream("bytes-removed-0001", ["gone", "kept"]);
  const { manager } = scenario.relay.service;
  const total = () => manager.destinationBytesSent;
  const gone = scenario.streamRelay.get("gone")!;
  const before = total();
  const removing = scenario.streamRelay.remove("gone");
  await assertNeverDecreases(total, before, removing, "removing a destination");
  // Counted once: what is live plus what the removed one sent, nothing twice.
  assertEquals(
    total(),
    gone.status().bytes_sent + scenario.streamRelay.get("kept")!.status().bytes_sent,
  );
});

Deno.test("RelayManager.destinationBytesSent never goes down while an ended stream's destinations stop", async () => {
  const KEY = "bytes-ended-0001";
  await using scenario = await mutedStream(KEY, ["one", "two"]);
  const { manager, hub } = scenario.relay.service;
  const total = () => manager.destinationBytesSent;
  const supervisors = scenario.streamRelay.list();
  const before = total();
  hub.end(hub.get(KEY)!, "test ends the stream");
  assertEquals(manager.relayFor(KEY), undefined, "the relay left the live set at once");
  await assertNeverDecreases(total, before, manager.settle(), "ending the stream");
  // Counted once, after the stop as during it.
  const sent = supervisors.reduce((sum, supervisor) => sum + supervisor.status().bytes_sent, 0);
  assertEquals(total(), sent);
});
