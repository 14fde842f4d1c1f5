/**
 * The live-change endpoints through `app.request()`: who may call them, what a bad body gets, a
 * stream that is not live, and the replies' shapes. The e2e test (tests/e2e/live_changes_test.ts)
 * covers what they do to FFmpeg and the sinks.
 */

import { createApp } from "../../src/http/app.ts";
import { createReadModel } from "../../src/http/read_model.ts";
import {
  DestinationChangesSchema,
  DestinationEnabledSchema,
  ErrorSchema,
} from "../../src/http/schemas.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { fixture } from "../helpers/media.ts";
import { waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";

const KEY = "api-live-change-key-0001";
const TOKEN = "a-very-secret-token-0002";
const DEST_KEY = "api-live-change-dest-key-0001";

function appFor(
  relay: TestRelay,
  http: { apiToken?: string; allowUnauthenticatedControl: boolean; allowOrigin?: string },
) {
  const { hub, manager, rtmp } = relay.service;
  return createApp({
    readModel: createReadModel({ version: "test", startedAt: new Date(), hub, manager, rtmp }),
    hub,
    manager,
    http: { allowOrigin: "*", ...http },
  });
}

/** The four live-change requests, each with a valid body. */
const requests: [string, string, unknown?][] = [
  ["PUT", `/api/streams/${KEY}/destinations`, { destinations: [] }],
  ["POST", `/api/streams/${KEY}/destinations/refresh`],
  ["POST", `/api/streams/${KEY}/destinations/x/enable`],
  ["POST", `/api/streams/${KEY}/destinations/x/disable`],
];

function init(method: string, body: unknown, headers: Record<string, string> = {}): RequestInit {
  return {
    method,
    headers: { "content-type": "application/json", ...headers },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  };
}

Deno.test("live-change endpoints are control endpoints: 403 without a token, 401 with a wrong one, 404 when not live", async () => {
  await using relay = await startTestRelay({ streams: [{ key: KEY }] });
  const closed = appFor(relay, { allowUnauthenticatedControl: false });
  const guarded = appFor(relay, { apiToken: TOKEN, allowUnauthenticatedControl: false });
  const open = appFor(relay, { allowUnauthenticatedControl: true });
  for (const [method, path, body] of requests) {
    const refused = await closed.request(path, init(method, body));
    assertEquals(refused.status, 403, `${method} ${path}`);
    assertMatch(ErrorSchema.parse(await refused.json()).error, /allow_unauthenticated_control/);
    const wrong = await guarded.request(path, init(method, body, { authorization: "Bearer no" }));
    assertEquals(wrong.status, 401, `${method} ${path}`);
    await wrong.body?.cancel();
    for (const app of [open, guarded]) {
      const response = await app.request(
        path,
        init(method, body, { authorization: `Bearer ${TOKEN}` }),
      );
      assertEquals(response.status, 404, `${method} ${path} on a stream that is not live`);
      assertEquals(ErrorSchema.parse(await response.json()).error, "stream not live");
    }
  }
});

Deno.test("PUT destinations: a bad body gets 400 naming the field and changes nothing", async () => {
  await using relay = await startTestRelay({
    streaming: { max_destinations_per_stream: 2 },
    streams: [{ key: KEY }],
  });
  const app = appFor(relay, { apiToken: TOKEN, allowUnauthenticatedControl: false });
  await using publisher = ffmpegPublish(await fixture({ seconds: 5 }), relay.rtmpUrl(KEY));
  await waitFor(() => relay.service.manager.relayFor(KEY), "live");
  const auth = { authorization: `Bearer ${TOKEN}` };
  const good = { id: "ok", rtmp_url: "rtmp://127.0.0.1:1/live", stream_key: DEST_KEY };
  const put = (body: string) =>
    app.request(`/api/streams/${KEY}/destinations`, {
      method: "PUT",
      headers: { ...auth, "content-type": "application/json" },
      body,
    });
  const cases: [string, string, string][] = [
    ["not JSON", "{", "(body)"],
    ["no list", "{}", "destinations"],
    ["not a list", JSON.stringify({ destinations: {} }), "destinations"],
    [
      "missing rtmp_url",
      JSON.stringify({ destinations: [good, { id: "x" }] }),
      "destinations.1.rtmp_url",
    ],
    [
      "id of the wrong type",
      JSON.stringify({ destinations: [{ ...good, id: 5 }] }),
      "destinations.0.id",
    ],
    [
      "enabled not a boolean",
      JSON.stringify({ destinations: [{ ...good, enabled: "no" }] }),
      "destinations.0.enabled",
    ],
    [
      "unknown field",
      JSON.stringify({ destinations: [{ ...good, command: "rm" }] }),
      "destinations.0.command",
    ],
    ["duplicate id", JSON.stringify({ destinations: [good, good] }), "destinations.1.id"],
    [
      "file URL",
      JSON.stringify({ destinations: [good, { id: "f", rtmp_url: "file:///etc/passwd" }] }),
      "destinations.1.rtmp_url",
    ],
    [
      "key read as an option",
      JSON.stringify({ destinations: [{ ...good, stream_key: "-y" }] }),
      "destinations.0.stream_key",
    ],
    [
      "over the maximum",
      JSON.stringify({ destinations: ["a", "b", "c"].map((id) => ({ ...good, id })) }),
      "destinations",
    ],
  ];
  for (const [name, body, field] of cases) {
    const response = await put(body);
    const text = await response.text();
    assertEquals(response.status, 400, `${name}: ${text}`);
    assertEquals(ErrorSchema.parse(JSON.parse(text)).field, field, name);
    assert(!text.includes(DEST_KEY), `${name}: the key is not echoed`);
    assertEquals(relay.service.manager.relayFor(KEY)?.size, 0, `${name}: nothing applied`);
  }

  // A valid list with a disabled destination: kept as a record, no FFmpeg.
  const response = await put(JSON.stringify({ destinations: [{ ...good, enabled: false }] }));
  const text = await response.text();
  assertEquals(response.status, 200, text);
  assert(!text.includes(DEST_KEY), "the key is redacted");
  const changes = DestinationChangesSchema.parse(JSON.parse(text));
  assertEquals(changes.added, ["ok"]);
  assertEquals(changes.destinations.map((d) => [d.id, d.status.state, d.status.pid]), [
    ["ok", "disabled", null],
  ]);
  const post = (path: string) => app.request(path, { method: "POST", headers: auth });
  const unknown = await post(`/api/streams/${KEY}/destinations/nope/enable`);
  assertEquals(unknown.status, 404);
  assertEquals(ErrorSchema.parse(await unknown.json()).error, "no such destination");
  const enabled = await post(`/api/streams/${KEY}/destinations/ok/enable`);
  assertEquals(DestinationEnabledSchema.parse(await enabled.json()), { id: "ok", enabled: true });
  assert(relay.service.manager.relayFor(KEY)?.get("ok") !== undefined, "enabled: supervised");
  const disabled = await post(`/api/streams/${KEY}/destinations/ok/disable`);
  assertEquals(DestinationEnabledSchema.parse(await disabled.json()), { id: "ok", enabled: false });
  assertEquals(relay.service.manager.relayFor(KEY)?.get("ok"), undefined, "disabled: no FFmpeg");
  publisher.kill();
});

Deno.test("refresh in static mode applies the config.toml in force after a reload", async () => {
  const unreachable = (id: string) => ({
    id,
    platform: "custom",
    rtmp_url: "rtmp://127.0.0.1:1/live",
    stream_key: `${DEST_KEY}-${id}`,
    enabled: true,
  });
  await using relay = await startTestRelay({
    http: { allow_unauthenticated_control: true },
    streams: [{ key: KEY, destinations: [unreachable("a"), unreachable("b")] }],
  });
  const app = appFor(relay, { allowUnauthenticatedControl: true });
  await using publisher = ffmpegPublish(await fixture({ seconds: 5 }), relay.rtmpUrl(KEY));
  const first = await waitFor(() => relay.service.manager.relayFor(KEY)?.get("a"), "a started");
  relay.service.reload({
    ...relay.service.currentConfig,
    streams: [{
      key: KEY,
      destinations: [unreachable("a"), { ...unreachable("c"), enabled: false }],
    }],
  });
  const response = await app.request(`/api/streams/${KEY}/destinations/refresh`, {
    method: "POST",
  });
  const text = await response.text();
  assertEquals(response.status, 200, text);
  assert(!text.includes(DEST_KEY), "keys are redacted");
  const changes = DestinationChangesSchema.parse(JSON.parse(text));
  assertEquals(
    [changes.added, changes.removed, changes.restarted, changes.kept, changes.skipped],
    [["c"], ["b"], [], ["a"], []],
  );
  assertEquals(changes.destinations.map((d) => [d.id, d.status.state === "disabled"]), [
    ["a", false],
    ["c", true],
  ]);
  assertEquals(relay.service.manager.relayFor(KEY)?.get("a"), first, "a is left untouched");
  publisher.kill();
});

Deno.test("refresh answers 502 naming the cause when the control plane cannot be asked", async () => {
  await using cp = new FakeControlPlane();
  await using relay = await startTestRelay({
    control_plane: { url: cp.url, timeout_seconds: 2, retry_attempts: 0 },
  });
  const app = appFor(relay, { allowUnauthenticatedControl: true });
  await using publisher = ffmpegPublish(await fixture({ seconds: 5 }), relay.rtmpUrl(KEY));
  await waitFor(() => relay.service.manager.relayFor(KEY), "live");
  cp.behaviour.forwarding = () => ({ status: 500, body: {} });
  const response = await app.request(`/api/streams/${KEY}/destinations/refresh`, {
    method: "POST",
  });
  const text = await response.text();
  assertEquals(response.status, 502, text);
  assertMatch(ErrorSchema.parse(JSON.parse(text)).error, /^cannot fetch destinations: /);
  assert(!text.includes(KEY), "the stream key is not echoed");
  publisher.kill();
});

Deno.test("a refresh whose answer comes after a returning publisher's forward: false applies nothing (409)", async () => {
  await using cp = new FakeControlPlane();
  await using relay = await startTestRelay({
    control_plane: { url: cp.url, timeout_seconds: 5, retry_attempts: 0 },
    streaming: { reconnect_grace_seconds: 10 },
  });
  const app = appFor(relay, { allowUnauthenticatedControl: true });
  const publish = async () => {
    const client = await TestRtmpClient.connect(relay.rtmpPort);
    await client.handshake();
    assertEquals((await client.publish(KEY)).code, "NetStream.Publish.Start");
    return client;
  };
  const first = await publish(); // forward: true, and no destinations yet
  await waitFor(() => relay.service.manager.relayFor(KEY), "live");
  cp.behaviour.forwarding = () => ({
    delayMs: 1_000,
    body: { destinations: [{ id: "late", rtmp_url: "rtmp://127.0.0.1:1/live", stream_key: "k" }] },
  });
  const refreshing = app.request(`/api/streams/${KEY}/destinations/refresh`, { method: "POST" });
  await waitFor(() => cp.forwardingCalls.length === 2, "the refresh's call");
  await first.end(); // the encoder drops and comes back, no longer to be forwarded
  cp.behaviour.auth = () => ({ body: { code: 0, data: { forward: false } } });
  await using _second = await publish();
  await waitFor(() => relay.service.hub.get(KEY)?.reconnects === 1, "the encoder back");
  const response = await refreshing;
  const text = await response.text();
  assertEquals(response.status, 409, text);
  assertMatch(ErrorSchema.parse(JSON.parse(text)).error, /decided again/);
  assertEquals(relay.service.manager.relayFor(KEY)?.size, 0, "no destination started");
});

Deno.test("of two refreshes under way, the one asked last is what stays, whichever answer comes first", async () => {
  await using cp = new FakeControlPlane();
  await using relay = await startTestRelay({
    control_plane: { url: cp.url, timeout_seconds: 5, retry_attempts: 0 },
  });
  const app = appFor(relay, { allowUnauthenticatedControl: true });
  await using _publisher = await TestRtmpClient.connect(relay.rtmpPort);
  await _publisher.handshake();
  assertEquals((await _publisher.publish(KEY)).code, "NetStream.Publish.Start");
  await waitFor(() => relay.service.manager.relayFor(KEY), "live");
  const listed = (id: string) => [{ id, rtmp_url: "rtmp://127.0.0.1:1/live", stream_key: "k" }];
  const refresh = () => app.request(`/api/streams/${KEY}/destinations/refresh`, { method: "POST" });
  const orders: [number, number][] = [[200, 800], [800, 200]];
  for (const [firstDelay, secondDelay] of orders) {
    let calls = 0;
    cp.behaviour.forwarding = () =>
      ++calls === 1
        ? { delayMs: firstDelay, body: { destinations: listed("asked-first") } }
        : { delayMs: secondDelay, body: { destinations: listed("asked-last") } };
    const first = refresh();
    await waitFor(() => calls === 1, "the first refresh's call");
    const second = refresh();
    const [a, b] = await Promise.all([first, second]);
    const label = `answers after ${firstDelay} and ${secondDelay} ms`;
    assertEquals(b.status, 200, `${label}: ${await b.text()}`);
    // The first is applied, then replaced, if it came first; refused (409) if it came last.
    assertEquals(a.status, firstDelay < secondDelay ? 200 : 409, label);
    assertEquals(
      relay.service.manager.relayFor(KEY)?.list().map((d) => d.destination.id),
      ["asked-last"],
      label,
    );
  }
});

Deno.test("control without a token refuses requests from other origins and bodies that are not JSON", async () => {
  // allow_unauthenticated_control with allow_origin = "*": nothing but the Origin header tells a
  // curl on the host from a web page the operator happens to visit.
  await using relay = await startTestRelay({ streams: [{ key: KEY }] });
  const open = appFor(relay, { allowUnauthenticatedControl: true });
  const guarded = appFor(relay, { apiToken: TOKEN, allowUnauthenticatedControl: false });
  const add = { id: "evil", rtmp_url: "rtmp://127.0.0.1:1/steal", stream_key: "x" };
  const path = `/api/streams/${KEY}/destinations`;
  const evil = { origin: "https://evil.example" };
  // The form a page may send without a preflight: a text/plain body, no custom header.
  const simple = await open.request(path, {
    method: "POST",
    headers: { "content-type": "text/plain;charset=UTF-8", ...evil },
    body: JSON.stringify(add),
  });
  assertEquals(simple.status, 403);
  assertMatch(ErrorSchema.parse(await simple.json()).error, /another origin.*api_token/);
  for (const [method, p] of [["DELETE", `${path}/x`], ["POST", `${path}/x/restart`]]) {
    const response = await open.request(p!, { method, headers: evil });
    assertEquals(response.status, 403, `${method} ${p}`);
    await response.body?.cancel();
  }
  // Same origin (the dashboard) and no Origin at all (curl) go through: 404, the stream is not live.
  const allowed: Record<string, string>[] = [{ origin: "http://localhost" }, {}];
  for (const headers of allowed) {
    const response = await open.request(path, init("POST", add, headers));
    assertEquals(response.status, 404, JSON.stringify(headers));
    await response.body?.cancel();
  }
  // DNS rebinding: a page on a name its owner points at this host is same-origin by Host and
  // Origin alike. Only an address that cannot be rebound, or allow_origin, is trusted.
  const rebound = await open.request(`http://evil.example:8000${path}`, {
    ...init("POST", add, { origin: "http://evil.example:8000" }),
  });
  assertEquals(rebound.status, 403);
  await rebound.body?.cancel();
  const named = appFor(relay, {
    allowUnauthenticatedControl: true,
    allowOrigin: "https://relay.example",
  });
  const proxied = await named.request(`http://127.0.0.1:8000${path}`, {
    ...init("POST", add, { origin: "https://relay.example" }),
  });
  assertEquals(proxied.status, 404, "allow_origin: the dashboard behind a proxy");
  await proxied.body?.cancel();
  for (const host of ["127.0.0.1:8000", "[::1]:8000"]) {
    const local = await open.request(`http://${host}${path}`, {
      ...init("POST", add, { origin: `http://${host}` }),
    });
    assertEquals(local.status, 404, host);
    await local.body?.cancel();
  }
  // A token is proof enough: a page cannot send one it does not have.
  const tokened = await guarded.request(
    path,
    init("POST", add, { ...evil, authorization: `Bearer ${TOKEN}` }),
  );
  assertEquals(tokened.status, 404);
  await tokened.body?.cancel();
  // A body must say it is JSON, whoever sends it.
  for (const app of [open, guarded]) {
    const form = await app.request(path, {
      method: "POST",
      headers: {
        "content-type": "application/x-www-form-urlencoded",
        authorization: `Bearer ${TOKEN}`,
      },
      body: JSON.stringify(add),
    });
    assertEquals(form.status, 415);
    assertMatch(ErrorSchema.parse(await form.json()).error, /application\/json/);
  }
  // Nor may it be large: a 200 MB body once took the relay from 82 to 683 MB before its 400.
  const huge = await guarded.request(
    path,
    init("POST", { ...add, platform: "x".repeat(300_000) }, { authorization: `Bearer ${TOKEN}` }),
  );
  assertEquals(huge.status, 413);
  assertMatch(ErrorSchema.parse(await huge.json()).error, /256 KiB/);
});
