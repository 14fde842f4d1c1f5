/**
 * Stream-end reports survive a control-plane outage and a relay restart: real FFmpeg publishers,
 * the real relay (twice, on one state directory), the fake control plane stopped and started.
 */

import { ControlPlaneClient } from "../../src/control_plane/http_client.ts";
import { OUTBOX_FILE_NAME } from "../../src/control_plane/outbox.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { fixture } from "../helpers/media.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { tempDir, waitFor } from "../helpers/process.ts";
import { spawnRelay, startTestRelay, type TestRelay } from "../helpers/relay.ts";

function clientOf(relay: TestRelay): ControlPlaneClient {
  const authority = relay.service.manager.authority;
  assert(authority instanceof ControlPlaneClient, "control-plane mode");
  return authority;
}

Deno.test("stream-ends that fail during an outage are delivered once, in order, by the restarted relay", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 30 });
  await using cp = new FakeControlPlane({
    auth: () => ({ body: { code: 0, data: { forward: false } } }),
  });
  const config = {
    control_plane: { url: cp.url, timeout_seconds: 4, retry_attempts: 1 },
    streaming: { state_dir: `${dir.path}/state` },
  };
  // Not alphabetical, so that the order checked is the order the streams ended in.
  const keys = ["outbox-e2e-key-bravo", "outbox-e2e-key-alpha", "outbox-e2e-key-charlie"];

  const first = await startTestRelay(config);
  let firstLogs = "";
  try {
    const publishers = keys.map((key) => ffmpegPublish(source, first.rtmpUrl(key)));
    try {
      for (const key of keys) {
        await waitFor(() => first.service.hub.get(key)?.state === "live", `${key} live`);
      }
      await cp.stop(); // the outage starts
      for (const [index, publisher] of publishers.entries()) {
        publisher.kill("SIGTERM");
        await waitFor(
          () => clientOf(first).pendingStreamEnds === index + 1,
          `stream-end ${index + 1} queued`,
        );
      }
    } finally {
      for (const publisher of publishers) await publisher[Symbol.asyncDispose]();
    }
    // What an operator's alert watches: reports waiting for the control plane.
    const metrics = await (await fetch(first.httpUrl("/metrics"))).text();
    assertMatch(metrics, /^neustream_control_plane_stream_ends_pending 3$/m);
    const outbox = `${dir.path}/state/${OUTBOX_FILE_NAME}`;
    assertEquals((await Deno.stat(outbox)).mode! & 0o777, 0o600, "the file holding keys");
    await first.service.shutdown("restart during the outage");
    assertEquals(cp.streamEnds, []);
    assertEquals(clientOf(first).pendingStreamEnds, 3, "kept for the next start");
  } finally {
    await first[Symbol.asyncDispose]();
    firstLogs = first.logText();
  }
  assertMatch(firstLogs, /stream end could not be reported: control plane unreachable/);
  assertMatch(firstLogs, /3 stream-end report\(s\) not delivered, kept for the next start/);

  // A new relay on the same state directory, the control plane still down. Its first retry comes
  // late, so that the publish below finds the reports still waiting when the control plane is back.
  await using second = await startTestRelay(config, { controlPlaneBackoffMs: 10_000 });
  assertEquals(clientOf(second).pendingStreamEnds, 3);
  assertMatch(second.logText(), /3 report\(s\) from an earlier run wait for delivery/);
  cp.start(); // the outage ends
  // The first key publishes again at once: its old stream's end must reach the control plane
  // before the new stream's authorisation.
  await using again = ffmpegPublish(source, second.rtmpUrl(keys[0]!));
  await waitFor(() => cp.streamEnds.length === 3, "every stream-end delivered", 60_000);
  assertEquals(cp.streamEnds, keys, "in the order the streams ended");
  await waitFor(() => second.service.hub.get(keys[0]!)?.state === "live", "the key live again");
  assertEquals(
    cp.calls.filter((call) => call.includes(keys[0]!)),
    [`auth ${keys[0]}`, `stream-end ${keys[0]}`, `auth ${keys[0]}`],
    "the old end before the new start",
  );
  again.kill("SIGTERM");
  await waitFor(() => cp.streamEnds.length === 4, "the new stream's end", 30_000);
  await second.service.shutdown("test finished");
  assertEquals(cp.streamEnds, [...keys, keys[0]!]);
  assertEquals(cp.streamEndAttempts, [...keys, keys[0]!], "each sent exactly once");
  assertEquals(clientOf(second).pendingStreamEnds, 0);
  assertEquals(
    await Deno.readTextFile(`${dir.path}/state/${OUTBOX_FILE_NAME}`),
    "",
    "nothing left to send again",
  );

  const logs = firstLogs + second.logText();
  for (const key of keys) assert(!logs.includes(key), "no stream key in the logs");
  assertMatch(logs, /stream end reported stream=outb…\(20\)/);
});

Deno.test("a graceful stop stays within shutdown_grace_seconds while the control plane hangs on stream-end, keeping the report", async () => {
  await using dir = await tempDir();
  await using cp = new FakeControlPlane({
    auth: () => ({ body: { code: 0, data: { forward: false } } }),
  });
  await using relay = await startTestRelay({
    control_plane: { url: cp.url, timeout_seconds: 10, retry_attempts: 1 },
    streaming: { state_dir: `${dir.path}/state`, shutdown_grace_seconds: 3 },
  });
  const key = "outbox-hung-key-0001";
  {
    await using _publisher = ffmpegPublish(await fixture({ seconds: 30 }), relay.rtmpUrl(key));
    await waitFor(() => relay.service.hub.get(key)?.state === "live", "live");
    cp.behaviour.streamEndDelayMs = 60_000; // the control plane takes the request, answers late
    const started = performance.now();
    await relay.service.shutdown("stop while the control plane hangs");
    const seconds = (performance.now() - started) / 1000;
    // Within the grace, or main.ts's timer exits 1 and systemd marks the unit failed.
    assert(seconds < 3, `the stop took ${seconds.toFixed(1)} s, over shutdown_grace_seconds = 3`);
  }
  assertEquals(cp.streamEnds, []);
  assertEquals(clientOf(relay).pendingStreamEnds, 1, "kept for the next start");
});

Deno.test("a relay killed outright (kill -9) reports the end of the streams it had live at its next start", async () => {
  await using dir = await tempDir();
  await using cp = new FakeControlPlane({
    auth: () => ({ body: { code: 0, data: { forward: false } } }),
  });
  const config = `[control_plane]\nurl = "${cp.url}"\ntimeout_seconds = 4\n` +
    `[streaming]\nstate_dir = "${dir.path}/state"\n`;
  const key = "crash-live-key-0001";
  {
    await using first = await spawnRelay(dir.path, config);
    await using _publisher = ffmpegPublish(await fixture({ seconds: 30 }), first.rtmpUrl(key));
    await waitFor(() => cp.authCalls.includes(key), "the publish");
    await waitFor(() => first.process.stderr.includes("publish accepted"), "live");
    const record = `${dir.path}/state/live_streams.json`;
    await waitFor(async () => (await Deno.readTextFile(record)).includes(key), "the record");
    assertEquals((await Deno.stat(record)).mode! & 0o777, 0o600, "the file holding keys");
    first.process.kill("SIGKILL"); // no graceful stop: nothing said to the control plane
    await first.process.wait();
  }
  assertEquals(cp.streamEnds, []);
  await using _second = await spawnRelay(dir.path, config);
  await waitFor(
    () => cp.streamEnds.includes(key),
    "the stream-end of the stream left live",
    10_000,
  );
  assertEquals(cp.streamEnds, [key], "reported once");
});
