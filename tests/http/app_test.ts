/**
 * The HTTP API against a running relay with a real publisher (and, for the control endpoints, real
 * sinks and a fake control plane). Replies are checked with the schemas the README documents.
 */

import { HTTPException } from "hono/http-exception";
import { createApp } from "../../src/http/app.ts";
import { createReadModel, type ReadModel } from "../../src/http/read_model.ts";
import {
  ErrorSchema,
  ForwardingSchema,
  HealthSchema,
  StatsSchema,
  StreamsSchema,
} from "../../src/http/schemas.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { assertContiguousRun, fixture, framemd5 } from "../helpers/media.ts";
import { freePort, sleep, tempDir, TestProcess, waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { NginxSink, startFfmpegSink } from "../helpers/sinks.ts";
import { ffmpegPublish } from "../helpers/peers.ts";

const KEY = "api-stream-key-0001";
const DEST_KEY = "api-destination-key-0001";

async function getJson(relay: TestRelay, path: string, init: RequestInit = {}) {
  const response = await fetch(relay.httpUrl(path), init);
  const text = await response.text();
  return { status: response.status, text, body: JSON.parse(text) as unknown };
}

/** Parses Prometheus text: every sample line is `name{labels} value`. */
function parsePrometheus(text: string): Map<string, number[]> {
  const samples = new Map<string, number[]>();
  for (const line of text.trimEnd().split("\n")) {
    if (line.startsWith("# HELP ") || line.startsWith("# TYPE ")) continue;
    const match = line.match(
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+]+)$/,
    );
    assert(match, `not a Prometheus sample line: ${line}`);
    const values = samples.get(match[1]!) ?? [];
    values.push(Number(match[3]));
    samples.set(match[1]!, values);
  }
  return samples;
}

Deno.test("every read endpoint matches its schema and its numbers move while the stream flows", async () => {
  await using dir = await tempDir();
  // Long enough to be live through both reads (the second ~4 s after the destination connects)
  // with seconds to spare on a busy machine, where FFmpeg and the connect start slowly.
  const source = await fixture({ seconds: 10, gop: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  await using relay = await startTestRelay({
    streams: [{
      key: KEY,
      destinations: [{
        id: "yt",
        platform: "youtube",
        rtmp_url: nginx.baseUrl,
        stream_key: DEST_KEY,
      }],
    }],
  });
  const health = await getJson(relay, "/health");
  assertEquals(health.status, 200);
  assertEquals(HealthSchema.parse(health.body).active_streams, 0);

  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  await using player = new TestProcess("ffmpeg", [
    "-hide_banner",
    "-loglevel",
    "error",
    "-i",
    relay.rtmpUrl(KEY),
    "-c",
    "copy",
    "-f",
    "null",
    "-",
  ]);
  await waitFor(
    () => relay.service.manager.relayFor(KEY)?.get("yt")?.state === "connected",
    "destination",
  );
  await waitFor(() => [...relay.service.rtmp.sessions].some((s) => s.role === "player"), "player");
  await sleep(2_500);

  const readEndpoints = async () => ({
    stats: StatsSchema.parse((await getJson(relay, "/stats")).body),
    streams: StreamsSchema.parse((await getJson(relay, "/api/streams")).body),
    forwarding: ForwardingSchema.parse(
      (await getJson(relay, `/api/streams/forwarding/${KEY}`)).body,
    ),
  });
  const first = await readEndpoints();
  await sleep(1_000);
  const second = await readEndpoints();
  assertEquals(first.stats.active_streams, ["api-…(19)"]);
  assert(second.stats.bytes_in > first.stats.bytes_in, "bytes_in moves");
  assert(second.stats.bytes_out > first.stats.bytes_out, "bytes_out moves");
  const stream = second.streams.streams[0]!;
  assertEquals(stream.publisher?.video_codec, "avc1");
  assertEquals(stream.publisher?.audio_codec, "aac");
  assertEquals([stream.publisher?.width, stream.publisher?.height, stream.publisher?.fps], [
    320,
    240,
    30,
  ]);
  assert((stream.publisher?.bitrate_kbps ?? 0) > 0, "publisher bitrate is measured");
  assertEquals(stream.players.length, 1);
  assert(stream.publisher!.bytes_in > first.streams.streams[0]!.publisher!.bytes_in);
  const destination = second.forwarding.destinations[0]!;
  assertEquals([destination.id, destination.platform, destination.stream_key], [
    "yt",
    "youtube",
    "api-…(24)",
  ]);
  assertEquals(destination.rtmp_url, nginx.baseUrl);
  assert(destination.status.connected);
  assert(
    destination.status.bytes_sent > first.forwarding.destinations[0]!.status.bytes_sent,
    "bytes_sent moves",
  );
  assert(destination.status.packets_sent > first.forwarding.destinations[0]!.status.packets_sent);

  const metrics = await fetch(relay.httpUrl("/metrics"));
  assertMatch(metrics.headers.get("content-type") ?? "", /^text\/plain; version=0\.0\.4/);
  const metricsText = await metrics.text();
  const samples = parsePrometheus(metricsText);
  assertEquals(samples.get("neustream_streams_active"), [1]);
  assertEquals(samples.get("neustream_publishers"), [1]);
  assertEquals(samples.get("neustream_players"), [1]);
  assertEquals(samples.get("neustream_destination_connected"), [1]);
  assert(samples.get("neustream_destination_sent_bytes_total")![0]! > 0);
  assert(
    !metricsText.includes("neustream_control_plane"),
    "no control-plane metrics in static mode",
  );

  const everything = JSON.stringify([first, second]) + metricsText;
  assert(
    !everything.includes(KEY) && !everything.includes(DEST_KEY),
    "no key leaves the API unredacted",
  );
  assertEquals((await publisher.wait()).code, 0);
  await player.wait();
  const after = await getJson(relay, `/api/streams/forwarding/${KEY}`);
  assertEquals(after.status, 404);
  ErrorSchema.parse(after.body);
});

Deno.test("/health answers 503 with a reason once the RTMP listener stops", async () => {
  await using relay = await startTestRelay();
  await relay.service.rtmp.close();
  const health = await getJson(relay, "/health");
  assertEquals(health.status, 503);
  assertEquals(HealthSchema.parse(health.body).reason, "RTMP listener is not serving");
});

Deno.test("a token guards everything but /health; bad bodies get 400 naming the field", async () => {
  await using relay = await startTestRelay({ streams: [{ key: KEY }] });
  const { hub, manager, rtmp } = relay.service;
  const token = "a-very-secret-token-0001";
  const app = createApp({
    readModel: createReadModel({ version: "test", startedAt: new Date(), hub, manager, rtmp }),
    hub,
    manager,
    http: { allowOrigin: "*", apiToken: token, allowUnauthenticatedControl: false },
  });
  const auth = { authorization: `Bearer ${token}` };
  assertEquals((await app.request("/health")).status, 200);
  for (const path of ["/stats", "/api/streams", "/metrics", `/api/streams/forwarding/${KEY}`]) {
    assertEquals((await app.request(path)).status, 401, path);
    assertEquals(
      (await app.request(path, { headers: { authorization: "Bearer wrong" } })).status,
      401,
      path,
    );
  }
  assertEquals((await app.request("/stats", { headers: auth })).status, 200);
  // The scheme is case-insensitive (RFC 9110, 11.1).
  for (const scheme of ["bearer", "BEARER"]) {
    const headers = { authorization: `${scheme} ${token}` };
    assertEquals((await app.request("/stats", { headers })).status, 200, scheme);
  }
  assertEquals(
    (await app.request(`/api/streams/${KEY}`, { method: "DELETE", headers: auth })).status,
    404,
  );
  assertEquals((await app.request("/nope", { headers: auth })).status, 404);

  await using source = {
    path: await fixture({ seconds: 5 }),
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
  await using publisher = ffmpegPublish(source.path, relay.rtmpUrl(KEY));
  await waitFor(() => hub.get(KEY)?.state === "live", "live");
  const post = (body: string) =>
    app.request(`/api/streams/${KEY}/destinations`, {
      method: "POST",
      headers: { ...auth, "content-type": "application/json" },
      body,
    });
  const cases: [string, string, string][] = [
    ["not JSON", "{", "(body)"],
    ["missing rtmp_url", JSON.stringify({ id: "x" }), "rtmp_url"],
    ["id of the wrong type", JSON.stringify({ id: 5, rtmp_url: "rtmp://h/live" }), "id"],
    [
      "unknown field",
      JSON.stringify({ id: "x", rtmp_url: "rtmp://h/live", command: "rm" }),
      "command",
    ],
    ["file URL", JSON.stringify({ id: "x", rtmp_url: "file:///etc/passwd" }), "rtmp_url"],
    [
      "key read as an option",
      JSON.stringify({ id: "x", rtmp_url: "rtmp://h/live", stream_key: "-y" }),
      "stream_key",
    ],
  ];
  for (const [name, body, field] of cases) {
    const response = await post(body);
    assertEquals(response.status, 400, name);
    assertEquals(ErrorSchema.parse(await response.json()).field, field, name);
  }
  publisher.kill();
});

Deno.test("createApp() turns an unexpected error into a logged 500 without the key; HTTPException stands", async () => {
  await using relay = await startTestRelay(); // for its captured log
  const { hub, manager } = relay.service;
  let failure: Error = new Error("read model broken");
  const failing: ReadModel = {
    snapshot: () => {
      throw failure;
    },
    // An error about the stream the path names may carry its key.
    stream: (key) => {
      throw new Error(`read model broken while reading ${key}`);
    },
  };
  const app = createApp({
    readModel: failing,
    hub,
    manager,
    http: { allowOrigin: "*", allowUnauthenticatedControl: false },
  });
  for (const path of ["/health", "/stats", "/metrics", `/api/streams/forwarding/${KEY}`]) {
    const response = await app.request(path);
    assertEquals(response.status, 500, path);
    const text = await response.text();
    assertEquals(JSON.parse(text), { error: "internal error" }, path);
    assert(!text.includes(KEY), path);
  }
  const lines = relay.logText().split("\n").filter((line) => line.includes(" http: "));
  assertEquals(lines.length, 4, relay.logText());
  assertMatch(lines[3]!, /ERROR.*GET \/api\/streams\/forwarding\/:key failed: .*api-…\(19\)/);
  assert(!relay.logText().includes(KEY), "the key is not logged");

  failure = new HTTPException(503, { message: "busy" });
  const response = await app.request("/stats");
  assertEquals([response.status, await response.text()], [503, "busy"]);
});

Deno.test("control endpoints are refused without a token unless explicitly allowed", async () => {
  await using relay = await startTestRelay();
  const response = await fetch(relay.httpUrl("/api/streams/some-key"), { method: "DELETE" });
  assertEquals(response.status, 403);
  assertMatch((await response.json()).error, /allow_unauthenticated_control/);
});

Deno.test("DELETE ends a stream; destinations are added, restarted and removed while it runs", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 8, gop: 30 });
  await using cp = new FakeControlPlane({
    auth: () => ({ body: { code: 0, data: { forward: true } } }),
  });
  await using relay = await startTestRelay({
    control_plane: { url: cp.url, timeout_seconds: 2 },
    http: { allow_unauthenticated_control: true },
  });
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  await waitFor(() => relay.service.manager.relayFor(KEY), "stream relay");
  // The control plane's calls are counted through the authority's callStats().
  const metrics = await (await fetch(relay.httpUrl("/metrics"))).text();
  assertMatch(metrics, /^neustream_control_plane_calls_total\{call="auth",outcome="ok"\} 1$/m);
  assertMatch(metrics, /^neustream_control_plane_calls_total\{call="auth",outcome="failed"\} 0$/m);
  assertMatch(metrics, /^neustream_control_plane_call_duration_seconds_count\{call="auth"\} 1$/m);

  const port = freePort();
  await using sink = await startFfmpegSink(port, DEST_KEY, `${dir.path}/added.flv`);
  await sleep(2_000); // mid-stream
  const added = await getJson(relay, `/api/streams/${KEY}/destinations`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      id: "late",
      platform: "twitch",
      rtmp_url: `rtmp://127.0.0.1:${port}/live`,
      stream_key: DEST_KEY,
    }),
  });
  assertEquals(added.status, 201, added.text);
  assert(!added.text.includes(DEST_KEY), "the destination key is not echoed back");
  const duplicate = await getJson(relay, `/api/streams/${KEY}/destinations`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ id: "late", rtmp_url: "rtmp://127.0.0.1:1/live" }),
  });
  assertEquals(duplicate.status, 409);
  const late = relay.service.manager.relayFor(KEY)!.get("late")!;
  await waitFor(() => late.state === "connected", "added destination connected");
  const restart = await getJson(relay, `/api/streams/${KEY}/destinations/late/restart`, {
    method: "POST",
  });
  assertEquals(restart.status, 200);
  assertEquals(
    (await getJson(relay, `/api/streams/${KEY}/destinations/nope`, { method: "DELETE" })).status,
    404,
  );
  assertEquals(
    (await getJson(relay, `/api/streams/${KEY}/destinations/late`, { method: "DELETE" })).status,
    200,
  );
  assertEquals(relay.service.manager.relayFor(KEY)!.size, 0);
  await sink.wait(10_000);
  // What the added destination received is a run of the source starting at a keyframe.
  assertContiguousRun(
    await framemd5(`${dir.path}/added.flv`),
    await framemd5(source),
    "added destination",
    {
      allowTruncatedEnd: true,
    },
  );

  const ended = await getJson(relay, `/api/streams/${KEY}`, { method: "DELETE" });
  assertEquals(ended.status, 200);
  // The source has seconds left to send: an exit this soon means we disconnected it.
  await publisher.wait(1_500);
  await waitFor(() => cp.streamEnds.includes(KEY), "stream-end reported");
  assertEquals(relay.service.hub.live().length, 0);
});

Deno.test("/metrics keeps two streams apart whose redacted keys look the same (each sample once)", async () => {
  // Keys a control plane might hand out: the same prefix and length, so `live…(25)` for both.
  const keys = ["live_aaaaaaaaaaaaaaaaaaaa", "live_bbbbbbbbbbbbbbbbbbbb"];
  const unreachable = `rtmp://127.0.0.1:${freePort()}/live`;
  await using relay = await startTestRelay({
    streams: keys.map((key) => ({
      key,
      destinations: [{ id: "yt", rtmp_url: unreachable, stream_key: "yt-key" }],
    })),
  });
  const source = await fixture({ seconds: 10 });
  await using _a = ffmpegPublish(source, relay.rtmpUrl(keys[0]!));
  await using _b = ffmpegPublish(source, relay.rtmpUrl(keys[1]!));
  for (const key of keys) await waitFor(() => relay.service.manager.relayFor(key), key);
  const text = await (await fetch(relay.httpUrl("/metrics"))).text();
  const series = text.split("\n").filter((line) => line.startsWith("neustream_destination_"))
    .map((line) => line.slice(0, line.lastIndexOf(" ")));
  assertEquals(series.length, new Set(series).size, "a series repeated:\n" + series.join("\n"));
  const connected = series.filter((s) => s.startsWith("neustream_destination_connected{"));
  assertEquals(connected.length, 2, connected.join("\n"));
  for (const line of connected) assertMatch(line, /stream_id="[0-9a-f]+"/);
});
