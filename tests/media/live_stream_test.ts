import { createMediaPacket, type MediaPacket, TagType } from "../../src/media/flv.ts";
import { type PublisherInfo, StreamHub } from "../../src/media/live_stream.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { sleep } from "../helpers/process.ts";

const video = (ts: number, keyframe = false) =>
  createMediaPacket(TagType.Video, ts, new Uint8Array([keyframe ? 0x17 : 0x27, 1, 0, 0, 0]));

function publisher(sessionId: number, detached: string[]): PublisherInfo {
  return {
    sessionId,
    remoteAddress: "127.0.0.1:1",
    encoder: "test",
    startedAt: new Date(),
    detach: (reason) => detached.push(`${sessionId}: ${reason}`),
  };
}

Deno.test("StreamHub.claim() refuses an active key, resumes a waiting one, takes over a stalled one", async () => {
  const hub = new StreamHub({
    gopCache: true,
    gopCacheMaxBytes: 1 << 20,
    reconnectGraceMs: 60_000,
    publisherIdleMs: 50,
  });
  const detached: string[] = [];
  const first = hub.claim("k");
  assert(!("refused" in first) && first.kind === "new");
  assertEquals("refused" in hub.claim("k"), true, "one publish authorised at a time");
  hub.accept(first, publisher(1, detached));
  const stream = first.stream;
  stream.write(video(0, true));
  assertEquals(hub.claim("k"), { refused: "stream key already publishing" });

  await sleep(80); // the publisher goes quiet past publisherIdleMs
  const takeover = hub.claim("k");
  assert(!("refused" in takeover) && takeover.kind === "takeover");
  hub.accept(takeover, publisher(2, detached));
  assertEquals(detached, ["1: taken over by a new connection for the same key"]);

  hub.publisherLeft(stream, "connection reset");
  assertEquals(stream.state, "reconnecting");
  const resume = hub.claim("k");
  assert(!("refused" in resume) && resume.kind === "resume");
  hub.refuse(resume, "revoked");
  assertEquals(stream.state, "idle", "a refused reconnect ends the stream");
  assertEquals(hub.live(), []);
});

Deno.test("LiveStream rebases a returning publisher's timestamps after the real gap", async () => {
  const hub = new StreamHub({
    gopCache: true,
    gopCacheMaxBytes: 1 << 20,
    reconnectGraceMs: 60_000,
  });
  const seen: MediaPacket[] = [];
  const claim = hub.claim("k");
  assert(!("refused" in claim));
  hub.accept(claim, publisher(1, []));
  claim.stream.subscribe({ onPacket: (p) => seen.push(p), onEnd: () => {} });
  for (const ts of [0, 33, 66]) claim.stream.write(video(ts, ts === 0));
  hub.publisherLeft(claim.stream, "gone");
  await sleep(200);
  const again = hub.claim("k");
  assert(!("refused" in again) && again.kind === "resume");
  hub.accept(again, publisher(2, []));
  for (const ts of [0, 33]) claim.stream.write(video(ts, ts === 0)); // the encoder restarted at 0
  const times = seen.map((p) => p.timestamp);
  assertEquals(times.slice(0, 3), [0, 33, 66]);
  const gap = times[3]! - 66;
  assert(gap >= 190 && gap < 400, `gap ${gap} ms should be the ~200 ms that passed`);
  assertEquals(times[4]! - times[3]!, 33, "spacing within the new publisher is kept");
  assertEquals(claim.stream.reconnects, 1);
  hub.endAll("test over");
});
