/**
 * The control-plane client against a fake control plane over real HTTP: every way of saying no,
 * or of not answering, refuses the publish promptly with a reason.
 */

import { Hono } from "hono";
import { delay } from "../../src/async.ts";
import { ControlPlaneClient, whyUnreachable } from "../../src/control_plane/http_client.ts";
import { StreamEndOutbox } from "../../src/control_plane/outbox.ts";
import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { freePort, tempDir, waitFor } from "../helpers/process.ts";

const client = (
  url: string,
  timeoutMs = 1_000,
  retryAttempts = 2,
  outbox?: StreamEndOutbox,
) => new ControlPlaneClient({ url, timeoutMs, retryAttempts, backoffBaseMs: 20, outbox });

Deno.test("authorize() accepts code 0 and passes data.forward on", async () => {
  await using cp = new FakeControlPlane({
    auth: () => ({ body: { code: 0, data: { forward: false }, extra: 1 } }),
  });
  assertEquals(await client(cp.url).authorize("key-1"), { allowed: true, forward: false });
  assertEquals(cp.authCalls, ["key-1"]);
});

Deno.test("authorize() refuses every answer but a well-formed yes, with the reason", async () => {
  const cases: [string, ReturnType<FakeControlPlane["behaviour"]["auth"]>, RegExp][] = [
    [
      "code 1",
      { body: { code: 1, msg: "unknown key" } },
      /refused the key \(code 1: unknown key\)/,
    ],
    ["HTTP 403", { status: 403, body: { code: 0, data: { forward: true } } }, /HTTP 403/],
    ["HTTP 500", { status: 500, body: {} }, /HTTP 500/],
    ["not JSON", { text: "<html>oops</html>" }, /not JSON/],
    ["missing code", { body: { data: { forward: true } } }, /invalid: code: /],
    ["missing data.forward", { body: { code: 0, data: {} } }, /invalid: data\.forward: /],
    ["missing data", { body: { code: 0 } }, /data: missing/],
    [
      "code 1 with the key in its message",
      { body: { code: 1, msg: "key refused-key-0002 is banned" } },
      /refused the key \(code 1: key refu…\(16\) is banned\)$/,
    ],
  ];
  await using cp = new FakeControlPlane();
  for (const [name, answer, reason] of cases) {
    cp.behaviour.auth = () => answer;
    const started = performance.now();
    const decision = await client(cp.url).authorize("refused-key-0002");
    assertEquals(decision.allowed, false, name);
    if (!decision.allowed) assertMatch(decision.reason, reason, name);
    assert(performance.now() - started < 1_000, `${name}: refused promptly`);
  }
});

Deno.test("authorize() retries a 500 and then succeeds", async () => {
  let calls = 0;
  await using cp = new FakeControlPlane({
    auth: () => (++calls < 2
      ? { status: 500, body: {} }
      : { body: { code: 0, data: { forward: true } } }),
  });
  assertEquals(await client(cp.url).authorize("key-3"), { allowed: true, forward: true });
  assertEquals(calls, 2);
});

Deno.test("authorize() fails closed when the control plane is down or too slow", async () => {
  const down = await client(`http://127.0.0.1:${freePort()}`).authorize("key-4");
  assertEquals(down.allowed, false);
  if (!down.allowed) assertMatch(down.reason, /unreachable/);

  await using cp = new FakeControlPlane({
    auth: () => ({ delayMs: 3_000, body: { code: 0, data: { forward: true } } }),
  });
  const started = performance.now();
  const slow = await client(cp.url, 400, 3).authorize("key-5");
  const elapsed = performance.now() - started;
  assertEquals(slow.allowed, false);
  if (!slow.allowed) assertMatch(slow.reason, /timed out/);
  // Not retried past the 400 ms timeout: three attempts would take 1,200 ms at least.
  assert(
    elapsed < 1_100,
    `an encoder must not wait past the timeout (waited ${Math.round(elapsed)} ms)`,
  );
});

Deno.test("a control plane that cannot be reached is refused with the reason, and the URL, which holds the key, is left out", async () => {
  const port = freePort();
  const cp = client(`http://127.0.0.1:${port}`, 1_000, 0);
  const refused = await assertRejects(() => cp.destinations("unreach-secret-key"), Error);
  assertMatch(refused.message, /^control plane unreachable: .*Connection refused/);
  assert(!refused.message.includes("unreach-secret-key"), refused.message);
  // No listener speaks TLS here: the handshake fails, and says so.
  const plain = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const answering = (async () => {
    for await (const conn of plain) {
      await conn.write(new TextEncoder().encode("HTTP/1.1 200 OK\r\n\r\n")).catch(() => 0);
      conn.close();
    }
  })();
  const tls = client(`https://127.0.0.1:${(plain.addr as Deno.NetAddr).port}`, 1_000, 0);
  const untrusted = await assertRejects(() => tls.destinations("unreach-secret-key"), Error);
  plain.close();
  await answering;
  assertMatch(untrusted.message, /^control plane unreachable: .*(corrupt|TLS|tls)/);
  assert(!untrusted.message.includes("unreach-secret-key"), untrusted.message);
});

Deno.test("probe() says whether the control plane answers at all, and why not", async () => {
  // Any HTTP answer is an answer: a control plane need not serve its root.
  await using cp = new FakeControlPlane({});
  assertEquals(await client(cp.url).probe(), undefined);
  // A redirect is an answer that every later call will refuse: said at start too.
  const moved = new Hono().get("/", (c) => c.redirect("https://cp.example/v2/", 308));
  await using redirecting = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    moved.fetch,
  );
  assertEquals(
    await client(`http://127.0.0.1:${redirecting.addr.port}`).probe(),
    "control plane answered with a redirect (HTTP 308) to https://cp.example/…, not followed: point [control_plane] url there",
  );
  const down = await client(`http://127.0.0.1:${freePort()}/base`).probe();
  assertMatch(down ?? "", /^control plane unreachable: .*Connection refused/);
  // A server that accepts and never answers: timed out, within the call timeout.
  using silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const held: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of silent) held.push(conn);
  })().catch(() => {});
  const started = performance.now();
  const slow = await client(`http://127.0.0.1:${(silent.addr as Deno.NetAddr).port}`, 300).probe();
  assertMatch(slow ?? "", /^control plane timed out after 0\.3 s/);
  assert(performance.now() - started < 2_000, "one attempt, no retries");
  for (const conn of held) conn.close();
  silent.close();
  await accepting;
});

Deno.test("whyUnreachable() keeps fetch's reason and never the URL", () => {
  const url = "http://cp.example:8080/api/streams/forwarding/abc)def";
  const failed = (cause?: string) =>
    new TypeError("fetch failed", cause === undefined ? {} : { cause: new Error(cause) });
  const table: [Error, string][] = [
    [
      failed(`error sending request for url (${url}): client error (Connect): dns error: x`),
      "client error (Connect): dns error: x",
    ],
    [
      failed(
        "error sending request for url (http://CP.example:8080/api/streams/forwarding/abc)def): client error (Connect): tcp connect error: Connection refused (os error 111)",
      ),
      "client error (Connect): tcp connect error: Connection refused (os error 111)",
    ],
    [failed(`something else about ${url}`), "fetch failed"],
    [failed(), "fetch failed"],
    [
      new TypeError("Fetch failed: Requests to port 1 are blocked"),
      "Fetch failed: Requests to port 1 are blocked",
    ],
  ];
  for (const [error, expected] of table) assertEquals(whyUnreachable(error, url), expected);
});

Deno.test("destinations() parses the forwarding reply and reports malformed entries by field", async () => {
  await using cp = new FakeControlPlane({
    forwarding: () => ({
      body: {
        destinations: [
          {
            id: "1",
            platform: "youtube",
            rtmp_url: "rtmp://a.rtmp.youtube.com/live2",
            stream_key: "yt",
            extra: true,
          },
          { id: 2, platform: "twitch", stream_key: "tw" },
        ],
      },
    }),
  });
  const { records, malformed } = await client(cp.url).destinations("key/with?odd#chars");
  assertEquals(records.map((r) => r.id), ["1"]);
  assertEquals(malformed.length, 1);
  assertMatch(malformed[0]!, /destinations\[1\]: rtmp_url: /);
  assertEquals(cp.forwardingCalls, ["key/with?odd#chars"]);
  cp.behaviour.forwarding = () => ({ body: { streams: [] } });
  await assertRejects(() => client(cp.url).destinations("k"), Error, "destinations: ");
});

Deno.test("streamEnded() retries until the control plane takes it, in order per key", async () => {
  let failures = 2;
  await using cp = new FakeControlPlane({ streamEnd: () => (failures-- > 0 ? 503 : 200) });
  const cp1 = client(cp.url, 1_000, 3);
  await cp1.streamEnded("key-6");
  await waitFor(() => cp.streamEnds.length === 1, "the stream-end taken");
  assertEquals(cp.streamEnds, ["key-6"]);
  assertEquals(cp.streamEndAttempts.length, 3);
  // A new publish of the same key waits for the end of the old one to be delivered first.
  failures = 1;
  const end = cp1.streamEnded("key-7");
  const auth = cp1.authorize("key-7");
  await Promise.all([end, auth]);
  assertEquals(cp.calls.slice(-2), ["stream-end key-7", "auth key-7"]);
  assertEquals(cp.streamEnds, ["key-6", "key-7"]);
  await cp1.flush();
});

Deno.test("streamEnded() keeps reports through an outage and a restart, then delivers each once, in order", async () => {
  await using dir = await tempDir();
  await using cp = new FakeControlPlane();
  await cp.stop();
  const before = client(cp.url, 500, 2, await StreamEndOutbox.open(dir.path));
  const keys = ["outage-end-1", "outage-end-2", "outage-end-1", "outage-end-3"];
  // Each resolves once the control plane is found down: the report waits in the outbox.
  for (const key of keys) await before.streamEnded(key);
  assertEquals(before.pendingStreamEnds, 4);
  await before.flush(); // graceful stop: nothing delivered, everything kept
  assert(before.stats.stream_end.failed >= 1);

  const after = client(cp.url, 500, 2, await StreamEndOutbox.open(dir.path));
  assertEquals(after.pendingStreamEnds, 4);
  cp.start();
  await waitFor(() => after.pendingStreamEnds === 0, "the outbox to drain", 10_000);
  assertEquals(cp.streamEnds, keys);
  assertEquals(cp.streamEndAttempts, keys, "each sent once");
  await after.flush();
  const reopened = await StreamEndOutbox.open(dir.path);
  assertEquals(reopened.size, 0, "nothing left to send again");
  await reopened.close();
});

Deno.test("authorize() waits for the key's stream-end, but no longer than half the timeout", async () => {
  await using cp = new FakeControlPlane({ streamEnd: () => 503 });
  const timeoutMs = 1_000;
  const cp1 = client(cp.url, timeoutMs, 2);
  await cp1.streamEnded("stuck-end-1");
  const started = performance.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const decision = await Promise.race([
    cp1.authorize("stuck-end-1"),
    new Promise<never>((_, reject) =>
      timer = setTimeout(() => reject(new Error("authorize() waited for ever")), timeoutMs * 5)
    ),
  ]).finally(() => clearTimeout(timer));
  assertEquals(decision, { allowed: true, forward: true });
  const waited = performance.now() - started;
  assert(waited >= timeoutMs / 2 - 20 && waited < timeoutMs * 2, `waited ${Math.round(waited)} ms`);
  // Another key does not wait at all.
  const other = performance.now();
  await cp1.authorize("other-key-1");
  assert(performance.now() - other < timeoutMs / 2, "another key is not held up");
  assertEquals(cp1.pendingStreamEnds, 1, "still queued, still retried");
  await cp1.flush();
});

Deno.test("streamEnded() drops a report the control plane refuses for good (4xx) and goes on", async () => {
  await using cp = new FakeControlPlane({
    streamEnd: (name) => (name === "gone-key-1" ? 404 : 200),
  });
  const cp1 = client(cp.url);
  const ends = [cp1.streamEnded("gone-key-1"), cp1.streamEnded("next-key-1")];
  await Promise.all(ends);
  assertEquals(cp.streamEndAttempts, ["gone-key-1", "next-key-1"]);
  assertEquals(cp.streamEnds, ["next-key-1"]);
  assertEquals(cp1.pendingStreamEnds, 0);
  await cp1.flush();
});

Deno.test("flush() during a stream-end attempt that then fails does not wait out the next backoff", async () => {
  let attempts = 0;
  const app = new Hono();
  app.post("/api/auth/stream-end", async (c) => {
    // The first attempt fails at once; the second is under way when the relay stops.
    if (++attempts > 1) await delay(500);
    return c.json({ code: 1 }, 503);
  });
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    app.fetch,
  );
  const cp = new ControlPlaneClient({
    url: `http://127.0.0.1:${server.addr.port}`,
    timeoutMs: 2_000,
    retryAttempts: 0,
    backoffBaseMs: 1_000, // then 2 s before a third attempt
  });
  await cp.streamEnded("flush-key-0001");
  await waitFor(() => attempts === 2, "the second attempt", 5_000);
  const started = performance.now();
  await cp.flush();
  const took = performance.now() - started;
  assert(took < 1_500, `the stop waited ${Math.round(took)} ms: the backoff after the attempt`);
  assertEquals(cp.pendingStreamEnds, 1, "the report is kept for the next start");
});

Deno.test("streamEnded() takes any 2xx as delivered, whatever its body", async () => {
  const app = new Hono();
  const taken: string[] = [];
  app.post("/api/auth/stream-end", async (c) => {
    taken.push((await c.req.json<{ name: string }>()).name);
    return c.text(taken.length === 1 ? "OK" : "", 200);
  });
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    app.fetch,
  );
  const cp = client(`http://127.0.0.1:${server.addr.port}`);
  await cp.streamEnded("text-end-key-1");
  await cp.streamEnded("text-end-key-2");
  await waitFor(() => cp.pendingStreamEnds === 0, "both delivered");
  assertEquals(taken, ["text-end-key-1", "text-end-key-2"], "each sent once");
  assertEquals([cp.stats.stream_end.ok, cp.stats.stream_end.failed], [2, 0]);
  await cp.flush();
});

Deno.test("a control plane that answers with a redirect is not followed: the key stays put and the reason names it", async () => {
  // Another host gets every request sent to the first, the key in its body.
  let followed = 0;
  const elsewhere = new Hono();
  elsewhere.all("*", (c) => {
    followed++;
    return c.json({ code: 0, data: { forward: true } });
  });
  await using other = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    elsewhere.fetch,
  );
  const redirecting = new Hono();
  redirecting.all("*", (c) => c.redirect(`http://127.0.0.1:${other.addr.port}/steal`, 307));
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    redirecting.fetch,
  );
  const decision = await client(`http://127.0.0.1:${server.addr.port}`).authorize(
    "redirect-key-0001",
  );
  assertEquals(decision.allowed, false);
  if (!decision.allowed) {
    assertMatch(
      decision.reason,
      /redirect \(HTTP 307\) to http:\/\/127\.0\.0\.1:\d+\/…, not followed/,
    );
  }
  assertEquals(followed, 0, "the key went to the other host");
});
