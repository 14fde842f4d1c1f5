/**
 * The relay manager over the real relay: a publisher's authorisation (and its `forward`) lives as
 * long as that publisher, never longer, and a resumed publisher's own `forward` decides whether
 * the destinations run.
 */

import { assertEquals, assertMatch } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { ffmpegProcessesWith, freePort, waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";

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
