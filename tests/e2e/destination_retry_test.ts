/**
 * Retry state of a destination, as the status, the API and /metrics show it: the attempt number,
 * when the next attempt starts, the kind of the last failure, `exhausted` after `max_attempts`
 * failures in a row, and the API's restart, which starts an attempt at once (from backoff or
 * `exhausted`) and is never counted as an error. The destinations use the native engine (no
 * process start in the timing) against real sockets: a port nobody listens on, then our own relay.
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { fixture } from "../helpers/media.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { freePort, sleep, waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import type { DestinationSupervisor } from "../../src/relay/destination_supervisor.ts";

const KEY = "retry-stream-0001";
const DEST_KEY = "retry-destination-0001";

/** Relay A, relaying `KEY` to `rtmp://127.0.0.1:{port}/live/DEST_KEY` on the native engine. */
function relayTo(port: number, streaming: Record<string, unknown> = {}, backoffMs?: number) {
  return startTestRelay(
    {
      http: { allow_unauthenticated_control: true },
      streaming,
      streams: [{
        key: KEY,
        destinations: [{
          id: "dest",
          rtmp_url: `rtmp://127.0.0.1:${port}/live`,
          stream_key: DEST_KEY,
          engine: "native",
        }],
      }],
    },
    backoffMs === undefined ? {} : {
      backoff: { initialMs: backoffMs, maxMs: backoffMs, resetAfterMs: backoffMs * 2 },
    },
  );
}

function destinationOf(relay: TestRelay): Promise<DestinationSupervisor> {
  return waitFor(() => relay.service.manager.relayFor(KEY)?.get("dest"), "the destination");
}

async function restart(relay: TestRelay): Promise<void> {
  const response = await fetch(
    relay.httpUrl(`/api/streams/${KEY}/destinations/dest/restart`),
    { method: "POST" },
  );
  assertEquals(response.status, 200, await response.text());
}

/** Our own relay as the destination, on `port`, accepting `DEST_KEY`. */
function sinkRelay(port: number): Promise<TestRelay> {
  return startTestRelay({ rtmp: { port }, streams: [{ key: DEST_KEY }] });
}

Deno.test("a destination failing max_attempts times in a row is exhausted until the API restarts it", async () => {
  const source = await fixture({ seconds: 20, gop: 30 });
  const port = freePort();
  await using relay = await relayTo(port, { max_attempts: 2 });
  await using _publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const destination = await destinationOf(relay);
  await waitFor(() => destination.state === "exhausted", "the destination to give up", 20_000);
  const expected = {
    state: "exhausted",
    attempt: 2,
    error_count: 2,
    failure: "unreachable",
    next_attempt_at: null,
  };
  const pick = (s: Record<string, unknown>) =>
    Object.fromEntries(Object.keys(expected).map((key) => [key, s[key]]));
  assertEquals(pick({ ...destination.status() }), expected);
  // The API and /metrics read the same snapshot.
  const streams = await (await fetch(relay.httpUrl("/api/streams"))).json();
  const listed = JSON.stringify(streams);
  assert(listed.includes('"state":"exhausted"') && listed.includes('"attempt":2'), listed);
  const metrics = await (await fetch(relay.httpUrl("/metrics"))).text();
  assertMatch(
    metrics,
    /^neustream_destination_state\{[^}]*engine="native",state="exhausted",failure="unreachable"\} 1$/m,
  );
  assertMatch(metrics, /^neustream_destination_attempt\{[^}]*destination="dest"[^}]*\} 2$/m);
  // Longer than the test backoff (1 s at most): nothing more is tried on its own.
  await sleep(2_500);
  assertEquals(destination.status().error_count, 2, "no attempt after giving up");

  await using _sink = await sinkRelay(port);
  await restart(relay);
  await waitFor(() => destination.state === "connected", "the restarted destination to connect");
  assertEquals([destination.status().attempt, destination.status().error_count], [1, 2]);
  assert(relay.service.hub.get(KEY)?.publisher !== undefined, "the publisher still streams");
});

Deno.test("the API restart of a destination waiting in backoff starts at once; a restart is never an error", async () => {
  const source = await fixture({ seconds: 20, gop: 30 });
  const port = freePort();
  // A minute of backoff: only the restart can make it connect within the test.
  await using relay = await relayTo(port, {}, 60_000);
  await using _publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const destination = await destinationOf(relay);
  await waitFor(() => destination.state === "retrying", "the first failure");
  const waiting = destination.status();
  assertEquals([waiting.attempt, waiting.error_count, waiting.failure], [1, 1, "unreachable"]);
  const nextIn = Date.parse(waiting.next_attempt_at ?? "") - Date.now();
  assert(nextIn > 50_000, `next attempt in ${nextIn} ms`);

  await using sink = await sinkRelay(port);
  const restartedAt = performance.now();
  await restart(relay);
  await waitFor(() => destination.state === "connected", "the destination to connect", 10_000);
  assert(performance.now() - restartedAt < 10_000);
  assertEquals(destination.status().next_attempt_at, null);

  // A restart of a connected destination: a new connection at once, no error, no backoff.
  const restarts = destination.status().restarts;
  await waitFor(() => sink.service.hub.get(DEST_KEY)?.publisher, "the destination publishing");
  await restart(relay);
  await waitFor(
    () => destination.status().restarts > restarts && destination.state === "connected",
    "the restarted connection",
    10_000,
  );
  assertEquals(destination.status().error_count, 1, "a restart is not an error");
});

Deno.test("the API restart of a failing destination starts its backoff over", async () => {
  const source = await fixture({ seconds: 20, gop: 30 });
  await using relay = await startTestRelay(
    {
      http: { allow_unauthenticated_control: true },
      streams: [{
        key: KEY,
        destinations: [{
          id: "dest",
          rtmp_url: `rtmp://127.0.0.1:${freePort()}/live`,
          stream_key: DEST_KEY,
          engine: "native",
        }],
      }],
    },
    { backoff: { initialMs: 300, maxMs: 60_000, resetAfterMs: 120_000 } },
  );
  await using _publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const destination = await destinationOf(relay);
  // 0.3, 0.6, 1.2 s: the next wait would be 2.4 s, then 4.8.
  await waitFor(() => destination.status().error_count >= 4, "four failures", 10_000);
  const errors = destination.status().error_count;
  await restart(relay);
  const after = await waitFor(() => {
    const status = destination.status();
    return status.error_count > errors && status.next_attempt_at !== null ? status : undefined;
  }, "the restarted attempt to fail");
  const nextIn = Date.parse(after.next_attempt_at!) - Date.now();
  assert(nextIn < 1_000, `next attempt in ${nextIn} ms: the backoff went on doubling`);
});
