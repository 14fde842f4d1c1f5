/**
 * Live changes of a stream's destinations, keyed by id, with a real FFmpeg publisher and nginx-rtmp
 * sinks: a replacement, a refresh from the control plane, enable and disable. Destinations that did
 * not change keep their FFmpeg (same pid) and lose no packet.
 */

import { DestinationChangesSchema, ForwardingSchema } from "../../src/http/schemas.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { assertContiguousRun, assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { ffmpegProcessesWith, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { NginxSink, settledFile } from "../helpers/sinks.ts";
import { ffmpegPublish } from "../helpers/peers.ts";

const KEY = "live-change-key-0001";

const destination = (id: string, nginx: NginxSink, stream_key: string) => ({
  id,
  platform: "custom",
  rtmp_url: nginx.baseUrl,
  stream_key,
});

async function call(relay: TestRelay, method: string, path: string, body?: unknown) {
  const response = await fetch(relay.httpUrl(path), {
    method,
    headers: { "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await response.text();
  assertEquals(response.status, 200, `${method} ${path}: ${text}`);
  return { text, body: JSON.parse(text) as unknown };
}

async function putDestinations(relay: TestRelay, destinations: unknown[]) {
  const reply = await call(relay, "PUT", `/api/streams/${KEY}/destinations`, { destinations });
  return { text: reply.text, changes: DestinationChangesSchema.parse(reply.body) };
}

/** The pid of each destination's FFmpeg once every one named is connected. */
async function connectedPids(relay: TestRelay, ids: string[]): Promise<Record<string, number>> {
  return await waitFor(
    () => {
      const relayed = relay.service.manager.relayFor(KEY);
      const statuses = ids.map((id) => relayed?.get(id)?.status());
      if (!statuses.every((status) => status?.state === "connected" && status.pid !== null)) {
        return undefined;
      }
      return Object.fromEntries(statuses.map((status) => [status!.id, status!.pid!]));
    },
    `${ids.join(", ")} connected`,
    20_000,
  );
}

async function forwardingStatus(relay: TestRelay, id: string) {
  const reply = await call(relay, "GET", `/api/streams/forwarding/${KEY}`);
  return ForwardingSchema.parse(reply.body).destinations.find((d) => d.id === id)?.status;
}

Deno.test("PUT keeps two destinations and adds one: the two keep their FFmpeg and lose no packet", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 10, gop: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  const a = destination("a", nginx, "lc1-a-key-0001");
  const b = destination("b", nginx, "lc1-b-key-0001");
  const c = destination("c", nginx, "lc1-c-key-0001");
  await using relay = await startTestRelay({
    http: { allow_unauthenticated_control: true },
    streams: [{ key: KEY, destinations: [a, b] }],
  });
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const before = await connectedPids(relay, ["a", "b"]);

  const { text, changes } = await putDestinations(relay, [a, b, c]);
  assertEquals(
    [changes.added, changes.removed, changes.restarted, changes.kept, changes.skipped],
    [["c"], [], [], ["a", "b"], []],
  );
  assertEquals(changes.destinations.map((d) => d.id), ["a", "b", "c"]);
  for (const id of ["a", "b"]) {
    assertEquals(changes.destinations.find((d) => d.id === id)?.status.pid, before[id], id);
  }
  for (const key of [a, b, c].map((d) => d.stream_key)) {
    assert(!text.includes(key), "destination keys are redacted in the reply");
  }
  const after = await connectedPids(relay, ["a", "b", "c"]);
  assertEquals([after.a, after.b], [before.a, before.b], "a and b keep their FFmpeg");

  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  for (const d of [a, b, c]) await settledFile(nginx.recording(d.stream_key));
  const sent = await framemd5(source);
  assertSamePackets(await framemd5(nginx.recording(a.stream_key)), sent, "kept destination a");
  assertSamePackets(await framemd5(nginx.recording(b.stream_key)), sent, "kept destination b");
  assertContiguousRun(await framemd5(nginx.recording(c.stream_key)), sent, "added destination c");
});

Deno.test("a changed key restarts only that destination; disable stops its FFmpeg, enable brings it back", async () => {
  await using dir = await tempDir();
  // Long enough for every step on a busy machine: the stream must still be live at the end.
  const source = await fixture({ seconds: 18, gop: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  const a = destination("a", nginx, "lc2-a-key-0001");
  const b = destination("b", nginx, "lc2-b-key-0001");
  const c = destination("c", nginx, "lc2-c-key-0001");
  await using relay = await startTestRelay({
    http: { allow_unauthenticated_control: true },
    streams: [{ key: KEY, destinations: [a, b, c] }],
  });
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const before = await connectedPids(relay, ["a", "b", "c"]);

  const b2 = { ...b, stream_key: "lc2-b-new-key-0001" };
  const { changes } = await putDestinations(relay, [a, b2, c]);
  assertEquals(
    [changes.added, changes.removed, changes.restarted, changes.kept],
    [[], [], ["b"], ["a", "c"]],
  );
  const after = await connectedPids(relay, ["a", "b", "c"]);
  assertEquals([after.a, after.c], [before.a, before.c], "a and c keep their FFmpeg");
  assert(after.b !== before.b, "b runs a new FFmpeg");
  assertEquals(await ffmpegProcessesWith(b.stream_key), [], "b's old FFmpeg is gone");
  assertEquals((await ffmpegProcessesWith(b2.stream_key)).length, 1, "b pushes to its new key");

  const disabled = await call(relay, "POST", `/api/streams/${KEY}/destinations/a/disable`);
  assertEquals(disabled.body, { id: "a", enabled: false });
  assertEquals(await ffmpegProcessesWith(a.stream_key), [], "a's FFmpeg is gone");
  const status = await forwardingStatus(relay, "a");
  assertEquals([status?.state, status?.pid], ["disabled", null]);
  assert(status!.bytes_sent > 0, "a disabled destination keeps the counters of its last run");
  assertEquals(relay.service.manager.relayFor(KEY)?.get("c")?.status().pid, before.c);

  const enabled = await call(relay, "POST", `/api/streams/${KEY}/destinations/a/enable`);
  assertEquals(enabled.body, { id: "a", enabled: true });
  await waitFor(
    async () => (await forwardingStatus(relay, "a"))?.state === "connected",
    "a connected again",
    20_000,
  );
  const again = await connectedPids(relay, ["a", "b", "c"]);
  assertEquals([again.b, again.c], [after.b, after.c], "enabling a touches nothing else");

  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await settledFile(nginx.recording(c.stream_key));
  await settledFile(nginx.recording(b2.stream_key));
  const sent = await framemd5(source);
  assertSamePackets(await framemd5(nginx.recording(c.stream_key)), sent, "untouched destination c");
  assertContiguousRun(await framemd5(nginx.recording(b2.stream_key)), sent, "restarted b");
});

Deno.test("a refresh applies the control plane's changed list; unchanged destinations carry on", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 10, gop: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  const a = destination("a", nginx, "lc3-a-key-0001");
  const b = destination("b", nginx, "lc3-b-key-0001");
  const c = destination("c", nginx, "lc3-c-key-0001");
  let list: unknown[] = [a, b];
  await using cp = new FakeControlPlane({ forwarding: () => ({ body: { destinations: list } }) });
  await using relay = await startTestRelay({
    control_plane: { url: cp.url, timeout_seconds: 5 },
    http: { allow_unauthenticated_control: true },
  });
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const before = await connectedPids(relay, ["a", "b"]);

  list = [a, c, { id: "broken" }];
  const reply = await call(relay, "POST", `/api/streams/${KEY}/destinations/refresh`);
  const changes = DestinationChangesSchema.parse(reply.body);
  assertEquals(
    [changes.added, changes.removed, changes.restarted, changes.kept],
    [["c"], ["b"], [], ["a"]],
  );
  assertEquals(changes.skipped.length, 1, "the malformed record is reported");
  assertEquals(cp.forwardingCalls, [KEY, KEY]);
  const after = await connectedPids(relay, ["a", "c"]);
  assertEquals(after.a, before.a, "a keeps its FFmpeg");
  assertEquals(relay.service.manager.relayFor(KEY)?.get("b"), undefined);

  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  for (const d of [a, c]) await settledFile(nginx.recording(d.stream_key));
  const sent = await framemd5(source);
  assertSamePackets(await framemd5(nginx.recording(a.stream_key)), sent, "kept destination a");
  assertContiguousRun(await framemd5(nginx.recording(c.stream_key)), sent, "added destination c");
  const logs = relay.logText();
  for (const key of [KEY, a.stream_key, c.stream_key]) assert(!logs.includes(key), key);
});

Deno.test("destinations PUT on a key without any of its own keep their FFmpeg when the encoder reconnects", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  // No destinations in the config: the publisher's answer is `forward: false`, before and after.
  await using relay = await startTestRelay({
    http: { allow_unauthenticated_control: true },
    streaming: { reconnect_grace_seconds: 10 },
    streams: [{ key: KEY }],
  });
  const first = ffmpegPublish(source, relay.rtmpUrl(KEY));
  await waitFor(() => relay.service.manager.relayFor(KEY), "live");
  await putDestinations(relay, [destination("api", nginx, "api-dest-key")]);
  const { api: pid } = await connectedPids(relay, ["api"]);
  assertEquals((await first.wait()).code, 0, first.stderr);
  await using second = ffmpegPublish(source, relay.rtmpUrl(KEY));
  await waitFor(() => relay.service.hub.get(KEY)?.reconnects === 1, "the encoder back");
  const before = await forwardingStatus(relay, "api");
  assert(before !== undefined, "the destination is still there after the reconnect");
  assertEquals((await second.wait()).code, 0, second.stderr);
  const after = await forwardingStatus(relay, "api");
  assertEquals(after?.pid, pid, "the same FFmpeg carries on");
  assert(after!.packets_sent > before.packets_sent, "and carries the returning encoder's stream");
  assert(!/not to be forwarded/.test(relay.logText()), relay.logText());
});
