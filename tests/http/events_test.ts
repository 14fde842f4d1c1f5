/**
 * The event source's diffing and lifecycle on hand-made read-model snapshots (the read model itself
 * is exercised against a real relay in tests/http/app_test.ts and tests/e2e/events_test.ts).
 */

import { Hono } from "hono";
import { diffSnapshots, RelayEvents, serveEvents } from "../../src/http/events.ts";
import type {
  DestinationView,
  ReadModel,
  Snapshot,
  StreamView,
} from "../../src/http/read_model.ts";
import { assertEquals } from "../helpers/assert.ts";
import { waitFor } from "../helpers/process.ts";
import { SseReader } from "../helpers/sse.ts";

function destination(
  id: string,
  state: string,
  extra: Record<string, unknown> = {},
): DestinationView {
  return {
    id,
    platform: "custom",
    rtmp_url: "rtmp://127.0.0.1/live",
    stream_key: "abcd…(16)",
    status: {
      id,
      platform: "custom",
      url: "rtmp://127.0.0.1/live/abcd…(16)",
      state,
      connected: state === "connected",
      bytes_sent: 0,
      packets_sent: 0,
      dropped_packets: 0,
      error_count: 0,
      last_error: null,
      failure: null,
      restarts: 0,
      started_at: "2026-11-25T10:00:00.000Z",
      connected_at: null,
      bitrate_kbps: 0,
      pid: 1,
      ...extra,
    } as DestinationView["status"],
  };
}

function stream(id: string, destinations: DestinationView[]): StreamView {
  return {
    id,
    stream_key: `${id}…(20)`,
    state: "live",
    live_since: "2026-11-25T10:00:00.000Z",
    reconnects: 0,
    reconnect_seconds_left: null,
    publisher: null,
    players: [],
    destinations,
    destinations_error: null,
  };
}

function snapshot(streams: StreamView[]): Snapshot {
  return {
    version: "test",
    uptime_seconds: 1,
    streams,
    total_streams: streams.length,
    rtmp: {
      serving: true,
      connections: 0,
      publishers: 0,
      players: 0,
      total_connections: 0,
      bytes_in: 0,
      bytes_out: 0,
    },
    destination_bytes_out: 0,
    memory: { rss_bytes: 0, heap_used_bytes: 0, external_bytes: 0 },
    control_plane: null,
    stream_ends_pending: null,
  };
}

/** Events without their time, for comparison. */
function summary(before: Snapshot, after: Snapshot) {
  return diffSnapshots(before, after).map((event) => {
    switch (event.type) {
      case "stream_started":
        return ["started", event.stream.id];
      case "stream_ended":
        return ["ended", event.stream_id];
      case "destination_state":
        return [event.destination_id, event.from, event.to, event.reason];
      default:
        return [event.type];
    }
  });
}

/** An app serving `events` at `/events`, heartbeats every `heartbeatMs`. */
function eventsApp(events: RelayEvents, heartbeatMs: number): Hono {
  const app = new Hono();
  app.get("/events", (c) => serveEvents(c, events, heartbeatMs));
  return app;
}

Deno.test("diffSnapshots() reports streams starting and ending and destinations changing state", () => {
  const empty = snapshot([]);
  const one = snapshot([stream("s1", [destination("a", "starting")])]);
  assertEquals(summary(empty, one), [["started", "s1"], ["a", null, "starting", null]]);
  assertEquals(summary(one, one), []);
  const failed = snapshot([
    stream("s1", [
      destination("a", "retrying", {
        last_error: "Server error: publish not authorised",
        failure: "rejected",
      }),
      destination("b", "starting"),
    ]),
  ]);
  assertEquals(summary(one, failed), [
    ["a", "starting", "retrying", "rejected: Server error: publish not authorised"],
    ["b", null, "starting", null],
  ]);
  assertEquals(summary(failed, snapshot([stream("s1", [destination("b", "starting")])])), [
    ["a", "retrying", null, "removed"],
  ]);
  assertEquals(summary(failed, empty), [["ended", "s1"]]);
});

Deno.test("diffSnapshots() reports a restart that happened between two looks as down and up", () => {
  const before = snapshot([stream("s1", [destination("a", "connected")])]);
  const after = snapshot([
    stream("s1", [destination("a", "connected", { started_at: "2026-11-25T10:00:05.000Z" })]),
  ]);
  assertEquals(summary(before, after), [
    ["a", "connected", "starting", null],
    ["a", "starting", "connected", null],
  ]);
});

Deno.test("RelayEvents reads the relay only while someone listens, and close() ends every listener", async () => {
  let reads = 0;
  let current = snapshot([]);
  const readModel: ReadModel = {
    snapshot: () => {
      reads++;
      return current;
    },
    stream: () => undefined,
  };
  const events = new RelayEvents(readModel, { intervalMs: 20, snapshotEveryMs: 40 });
  const seen: string[] = [];
  const unsubscribe = events.subscribe((event) => seen.push(event.type));
  current = snapshot([stream("s1", [])]);
  await waitFor(() => seen.includes("stream_started") && seen.includes("snapshot"), "events");
  unsubscribe();
  const readsAfter = reads;
  await new Promise((resolve) => setTimeout(resolve, 100));
  assertEquals(reads, readsAfter, "no reads without listeners");

  let closed = 0;
  events.subscribe(() => {}, () => closed++);
  events.subscribe(() => {}, () => closed++);
  events.close();
  assertEquals([closed, events.listeners], [2, 0]);
});

Deno.test("serveEvents() sends a snapshot at once, then events and heartbeats, and forgets a client that goes", async () => {
  let current = snapshot([]);
  const events = new RelayEvents({ snapshot: () => current, stream: () => undefined }, {
    intervalMs: 20,
    snapshotEveryMs: 10_000,
  });
  const app = eventsApp(events, 50);
  const response = await app.request("/events");
  assertEquals(response.headers.get("content-type"), "text/event-stream");
  await using reader = new SseReader(response);
  await reader.next((event) => event.type === "snapshot", "the first snapshot");
  current = snapshot([stream("s1", [destination("a", "connected")])]);
  await reader.next((event) => event.type === "stream_started", "stream_started");
  await reader.next(
    (event) => event.type === "destination_state" && event.to === "connected",
    "destination_state",
  );
  await waitFor(async () => {
    await reader.next(() => false, "a heartbeat", 100).catch(() => {});
    return reader.comments > 0;
  }, "a heartbeat");
  assertEquals(events.listeners, 1);
  await reader[Symbol.asyncDispose]();
  await waitFor(() => events.listeners === 0, "the client to be forgotten");
  events.close();
});

/**
 * A relay whose `count` destinations all change state at every look: `count` events per tick, each
 * carrying `padding` bytes of error text, so a client that stops reading falls behind within a few
 * ticks and its socket fills within a few more.
 */
function churningEvents(count: number, padding: number, intervalMs = 10): RelayEvents {
  let looks = 0;
  const readModel: ReadModel = {
    snapshot: () => {
      const state = looks++ % 2 === 0 ? "connected" : "retrying";
      return snapshot([
        stream(
          "s1",
          Array.from(
            { length: count },
            (_, i) => destination(`d${i}`, state, { last_error: "x".repeat(padding) }),
          ),
        ),
      ]);
    },
    stream: () => undefined,
  };
  return new RelayEvents(readModel, { intervalMs, snapshotEveryMs: 60_000 });
}

/** `events.close()` on the way out, so no read-model timer outlives a failing test. */
function closing(events: RelayEvents): Disposable {
  return { [Symbol.dispose]: () => events.close() };
}

/** Cancels a response body on the way out unless an `SseReader` took it (and cancels it itself). */
function cancelling(response: Response): AsyncDisposable {
  return {
    [Symbol.asyncDispose]: async () => {
      if (response.body !== null && !response.body.locked) await response.body.cancel();
    },
  };
}

/**
 * An HTTP/1.1 client on a raw socket that sends its request and then reads nothing until told to:
 * the kernel buffers fill and the server's writes block, as with a browser tab that froze.
 */
class StalledClient implements AsyncDisposable {
  readonly #conn: Deno.Conn;
  #closed = false;

  private constructor(conn: Deno.Conn) {
    this.#conn = conn;
  }

  static async open(port: number, path: string): Promise<StalledClient> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const client = new StalledClient(conn);
    try {
      await conn.write(
        new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`),
      );
    } catch (error) {
      client.#close();
      throw error;
    }
    return client;
  }

  /**
   * Starts reading and goes on until the response ends (its last chunk, or the connection closed).
   * Returns the bytes read; throws if the server is still sending after `timeoutMs`.
   */
  async readToEnd(timeoutMs: number): Promise<number> {
    let timedOut = false;
    // Closing the socket is what ends a read that would otherwise wait for ever.
    const timer = setTimeout(() => {
      timedOut = true;
      this.#close();
    }, timeoutMs);
    const buffer = new Uint8Array(256 * 1024);
    let total = 0;
    let tail = "";
    try {
      for (;;) {
        let n: number | null;
        try {
          n = await this.#conn.read(buffer);
        } catch (error) {
          if (timedOut) break;
          if (error instanceof Deno.errors.ConnectionReset) return total;
          throw error;
        }
        if (n === null) return total;
        total += n;
        tail = (tail + new TextDecoder().decode(buffer.subarray(Math.max(0, n - 16), n))).slice(
          -16,
        );
        // The last chunk of a chunked body (SSE data is `\n`-separated, so `\r\n` is framing).
        if (tail.endsWith("\r\n0\r\n\r\n")) return total;
      }
    } finally {
      clearTimeout(timer);
    }
    throw new Error(`still sending after ${timeoutMs} ms (${total} bytes read)`);
  }

  #close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#conn.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    this.#close();
    return Promise.resolve();
  }
}

Deno.test("serveEvents() disconnects a client that stops reading once it is 512 events behind", async () => {
  const events = churningEvents(100, 100);
  using _events = closing(events);
  const app = eventsApp(events, 60_000);
  // Nobody reads this body: the stream's first write waits for ever.
  const response = await app.request("/events");
  await using _body = cancelling(response);
  assertEquals(events.listeners, 1);
  // 100 events a tick: past 512 within a few ticks; the wide margin is for a busy machine.
  await waitFor(() => events.listeners === 0, "the client 512 events behind to be dropped", 20_000);
  await using reader = new SseReader(response);
  await reader.end(10_000);
});

Deno.test("serveEvents() disconnects a client whose socket is full once it is 512 events behind", async () => {
  // 16 events, ~400 KB a tick: few enough for the stream to keep up while the client's socket has
  // room, so it falls behind only once the buffers (a few MB on loopback) are full and a write
  // blocks, a dozen ticks in; 32 more and it is 512 behind.
  const events = churningEvents(16, 25_000);
  using _events = closing(events);
  const app = eventsApp(events, 60_000);
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen: () => {} },
    app.fetch,
  );
  await using client = await StalledClient.open(server.addr.port, "/events");
  await waitFor(() => events.listeners === 1, "the client to subscribe");
  await waitFor(() => events.listeners === 0, "the client 512 events behind to be dropped", 30_000);
  // What was already on its way is delivered, then the response ends instead of going on.
  await client.readToEnd(15_000);
});

Deno.test("serveEvents() ends the stream of a client that stops reading at once when the source closes", async () => {
  const events = churningEvents(1, 100, 60_000);
  using _events = closing(events);
  const app = eventsApp(events, 60_000);
  const response = await app.request("/events");
  await using _body = cancelling(response);
  assertEquals(events.listeners, 1);
  events.close();
  // The snapshot still waiting to be taken is dropped with the stream: the handler did not wait
  // for a client that might never read before ending.
  await using reader = new SseReader(response);
  await reader.end(10_000);
  assertEquals(reader.events.map((event) => event.type), []);
});
