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
  const app = new Hono();
  app.get("/events", (c) => serveEvents(c, events, 50));
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
