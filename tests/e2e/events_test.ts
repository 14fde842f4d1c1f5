/**
 * `GET /api/events` on a running relay with a real FFmpeg publisher and real sinks: the stream's
 * start and end, and each destination's state changes with their reason, arrive as events, keys
 * redacted; the event source stops reading the relay once the last client has gone.
 */

import type {
  DestinationStateEvent,
  RelayEvent,
  SnapshotEvent,
  StreamEndedEvent,
  StreamStartedEvent,
} from "../../src/http/events.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { fixture } from "../helpers/media.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { freePort, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay } from "../helpers/relay.ts";
import { NginxSink } from "../helpers/sinks.ts";
import { SseReader } from "../helpers/sse.ts";

const KEY = "events-stream-key-0001";
const DEST_KEY = "events-destination-key-0001";
const TOKEN = "events-api-token-0123456789";

const isStarted = (event: RelayEvent): event is StreamStartedEvent =>
  event.type === "stream_started";
const destinationTo =
  (id: string, state: string) => (event: RelayEvent): event is DestinationStateEvent =>
    event.type === "destination_state" && event.destination_id === id && event.to === state;

Deno.test("GET /api/events streams a stream's start, its destinations' states and its end", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4, gop: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  // Nothing listens there: that destination fails and retries, and says why.
  const deadPort = freePort();
  await using relay = await startTestRelay({
    http: { api_token: TOKEN },
    streams: [{
      key: KEY,
      destinations: [
        { id: "yt", platform: "youtube", rtmp_url: nginx.baseUrl, stream_key: DEST_KEY },
        {
          id: "dead",
          platform: "custom",
          rtmp_url: `rtmp://127.0.0.1:${deadPort}/live`,
          stream_key: DEST_KEY,
        },
      ],
    }],
  });
  const unauthorized = await fetch(relay.httpUrl("/api/events"));
  assertEquals(unauthorized.status, 401);
  await unauthorized.body?.cancel();

  const response = await fetch(relay.httpUrl("/api/events"), {
    headers: { authorization: `Bearer ${TOKEN}` },
  });
  assertEquals(response.status, 200);
  assertEquals(response.headers.get("content-type"), "text/event-stream");
  await using events = new SseReader(response);
  const first = await events.next((event) => event.type === "snapshot", "first snapshot");
  assertEquals((first as SnapshotEvent).streams, []);
  assertEquals(relay.service.events.listeners, 1);

  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const started = await events.next(isStarted, "stream_started");
  assertEquals(started.stream.stream_key, "even…(22)");
  const id = started.stream.id;
  assertEquals((await events.next(destinationTo("yt", "connected"), "yt connected")).stream_id, id);
  const failed = await events.next(destinationTo("dead", "retrying"), "dead retrying");
  assert(failed.reason !== null && failed.reason.length > 0, "a failure says why");
  assertEquals(failed.status?.failure, "unreachable");
  assertEquals(failed.reason, `unreachable: ${failed.status?.last_error}`);
  const snapshot = await events.next(
    (event) => event.type === "snapshot" && event.streams.length === 1,
    "a snapshot with the stream",
  ) as SnapshotEvent;
  assertEquals(snapshot.streams[0]!.destinations.map((d) => d.id).sort(), ["dead", "yt"]);

  assertEquals((await publisher.wait()).code, 0);
  const ended = await events.next(
    (event) => event.type === "stream_ended",
    "stream_ended",
  ) as StreamEndedEvent;
  assertEquals([ended.stream_id, ended.stream_key], [id, "even…(22)"]);

  const text = JSON.stringify(events.events);
  assert(!text.includes(KEY) && !text.includes(DEST_KEY), "no key in an event");

  // The client goes: the source forgets it and stops reading the relay.
  await events[Symbol.asyncDispose]();
  await waitFor(() => relay.service.events.listeners === 0, "the listener to go");
});

Deno.test("GET /api/events ends open streams when the relay shuts down", async () => {
  await using relay = await startTestRelay();
  const response = await fetch(relay.httpUrl("/api/events"));
  await using events = new SseReader(response);
  await events.next((event) => event.type === "snapshot", "first snapshot");
  await relay.service.shutdown("test");
  await events.end();
  assert(events.ended, "the server ended the stream");
});
