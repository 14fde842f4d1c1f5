import { createMediaPacket, TagType } from "../../src/media/flv.ts";
import { MediaQueue } from "../../src/media/media_queue.ts";
import { delay } from "../../src/async.ts";
import { assert, assertEquals } from "../helpers/assert.ts";

const video = (ts: number, keyframe: boolean, size: number) =>
  createMediaPacket(
    TagType.Video,
    ts,
    new Uint8Array([keyframe ? 0x17 : 0x27, 1, ...new Uint8Array(size - 2)]),
  );
const audio = (ts: number, size = 10) =>
  createMediaPacket(TagType.Audio, ts, new Uint8Array([0xaf, 1, ...new Uint8Array(size - 2)]));
const config = createMediaPacket(TagType.Video, 0, new Uint8Array([0x17, 0, 0, 0, 0]));

Deno.test("MediaQueue drops audio and video together until the next keyframe when full", () => {
  let episodes = 0;
  const queue = new MediaQueue<string>(100, () => episodes++);
  assertEquals(queue.pushMedia(video(0, true, 60)), true);
  assertEquals(queue.pushMedia(video(33, false, 50)), false, "over the limit: dropped");
  assertEquals(queue.pushMedia(audio(40)), false, "audio drops with video");
  assertEquals(queue.pushMedia(config), true, "sequence headers are never dropped");
  queue.pushControl("status");
  queue.takeAll(); // the reader catches up
  assertEquals(queue.pushMedia(video(66, false, 10)), false, "still waiting for a keyframe");
  assertEquals(queue.pushMedia(video(99, true, 60)), true, "resumes on a keyframe");
  assertEquals(queue.pushMedia(audio(100)), true);
  assertEquals(episodes, 1);
  assertEquals(queue.droppedPackets, 3);
});

Deno.test("MediaQueue.setVideoTrack(false) lets audio end a drop once the stream has no video", () => {
  const queue = new MediaQueue<string>(100);
  queue.pushMedia(video(0, true, 60));
  assertEquals(queue.pushMedia(audio(10, 50)), false, "over the limit: dropping");
  queue.takeAll();
  // The publisher came back without video: no keyframe will ever come.
  assertEquals(queue.pushMedia(audio(20)), false, "still waiting for a keyframe");
  queue.setVideoTrack(false);
  assertEquals(queue.pushMedia(audio(30)), true, "audio ends the drop");
  queue.setVideoTrack(true);
  assertEquals(queue.pushMedia(audio(40, 95)), false, "over the limit again: dropping");
  queue.takeAll();
  assertEquals(queue.pushMedia(audio(50)), false, "with video again, audio does not end it");
  assertEquals(queue.pushMedia(video(60, true, 10)), true, "a keyframe does");
});

Deno.test("MediaQueue.wait() resolves on an item and on close", async () => {
  const queue = new MediaQueue<string>(100);
  const waiting = queue.wait();
  queue.pushControl("x");
  await waiting;
  assertEquals(queue.takeAll().length, 1);
  const closing = queue.wait();
  queue.close();
  await closing;
  assertEquals(queue.pushMedia(audio(0)), false);
});

Deno.test("MediaQueue keeps Enhanced RTMP sequence starts and resumes on an ExVideoTagHeader keyframe", () => {
  const queue = new MediaQueue<string>(100);
  // HEVC single-track (track 0) and a multitrack OneTrack tag for track 1, padded to `size`.
  const ex = (first: number, ts: number, size: number) =>
    createMediaPacket(
      TagType.Video,
      ts,
      new Uint8Array([first, 0x01, 0x68, 0x76, 0x63, 0x31, 0x01, ...new Uint8Array(size - 7)]),
    );
  const start = createMediaPacket(
    TagType.Video,
    0,
    new Uint8Array([0x96, 0x00, 0x61, 0x76, 0x30, 0x31, 0x01, 0xaa]),
  );
  assertEquals(queue.pushMedia(ex(0x96, 0, 60)), true, "multitrack keyframe");
  assertEquals(queue.pushMedia(ex(0xa6, 40, 50)), false, "over the limit: dropped");
  assertEquals(queue.pushMedia(start), true, "a multitrack sequence start is never dropped");
  queue.takeAll();
  assertEquals(queue.pushMedia(ex(0xa6, 80, 10)), false, "an inter frame: still dropping");
  assertEquals(queue.pushMedia(ex(0x96, 120, 10)), true, "resumes on the multitrack keyframe");
});

const drain = async <T>(batches: AsyncIterable<T[]>): Promise<T[][]> => {
  const seen: T[][] = [];
  for await (const batch of batches) seen.push(batch);
  return seen;
};

Deno.test("MediaQueue.batches() yields what is queued in order, one batch per wake, and ends on close", async () => {
  const queue = new MediaQueue<string>(1000);
  queue.pushControl("a");
  queue.pushMedia(audio(0));
  const draining = drain(queue.batches());
  await delay(0); // the reader has taken the first batch and waits for more
  queue.pushControl("b");
  queue.pushControl("c");
  queue.close();
  queue.pushControl("after close");
  const batches = await draining;
  const names = batches.map((batch) =>
    batch.map((item) => item.kind === "control" ? item.control : `media@${item.packet.timestamp}`)
  );
  assertEquals(names, [["a", "media@0"], ["b", "c"]]);
  assertEquals(queue.queuedBytes, 0);
});

Deno.test("MediaQueue.batches() keeps the drop policy and yields what is left after close", async () => {
  const queue = new MediaQueue<string>(100);
  queue.pushMedia(video(0, true, 60));
  queue.pushMedia(video(33, false, 50)); // over the limit: dropped
  queue.pushMedia(audio(40)); // dropped with it
  queue.pushMedia(video(66, true, 30)); // a keyframe that fits: resumes
  queue.close();
  const batches = await drain(queue.batches());
  assertEquals(
    batches.map((batch) => batch.map((item) => item.kind === "media" && item.packet.timestamp)),
    [[0, 66]],
  );
  assertEquals(queue.droppedPackets, 2);
});

Deno.test("MediaQueue.batches() ends when its signal aborts, leaving what is queued", async () => {
  const queue = new MediaQueue<string>(100);
  const controller = new AbortController();
  const draining = drain(queue.batches(controller.signal));
  queue.pushControl("a");
  await delay(0); // the reader has taken "a" and waits for more
  controller.abort();
  queue.pushControl("b");
  assertEquals((await draining).flat().map((item) => item.kind === "control" && item.control), [
    "a",
  ]);
  assertEquals(queue.closed, false);
  assertEquals(queue.takeAll().length, 1, "an aborted reader leaves the rest queued");

  // A reader blocked on an empty queue ends too, and one started on an aborted signal never runs.
  const idle = new AbortController();
  const waiting = drain(queue.batches(idle.signal));
  await delay(0);
  idle.abort();
  assertEquals(await waiting, []);
  queue.pushControl("c");
  assertEquals(await drain(queue.batches(AbortSignal.abort())), []);
});

Deno.test("MediaQueue.oldestAgeMs() is the wait of the oldest queued item", () => {
  const queue = new MediaQueue<string>(100);
  assertEquals(queue.oldestAgeMs(), 0, "empty");
  const before = performance.now();
  queue.pushMedia(audio(0));
  const after = performance.now();
  queue.pushControl("later");
  const now = after + 500;
  const age = queue.oldestAgeMs(now);
  assert(age >= now - after && age <= now - before, `age ${age}`);
  queue.takeAll();
  assertEquals(queue.oldestAgeMs(now), 0, "drained");
  queue.pushControl("next");
  assert(
    queue.oldestAgeMs(performance.now() + 10) >= 10,
    "counts from the first item after a drain",
  );
  assert(queue.oldestAgeMs(now) < 500, "not from the batch already taken");
});

Deno.test("MediaQueue.oldestAgeMs() counts from the arrival time pushMedia() was given", () => {
  const queue = new MediaQueue(100);
  queue.pushMedia(audio(0), 1_000);
  queue.pushMedia(audio(23), 1_023);
  assertEquals(queue.oldestAgeMs(1_500), 500, "from the first packet's arrival");
  queue.takeAll();
  queue.pushMedia(audio(46), 2_000);
  assertEquals(queue.oldestAgeMs(2_100), 100, "from the first packet after a drain");
});

Deno.test("MediaQueue.take() takes up to maxBytes and the packet that crosses it, leaving the rest counted", () => {
  const queue = new MediaQueue<string>(1_000);
  queue.pushMedia(video(0, true, 300), 1_000);
  queue.pushControl("status");
  queue.pushMedia(video(33, false, 300), 1_033);
  queue.pushMedia(video(66, false, 300), 1_066);
  queue.pushMedia(audio(70, 50), 1_070);
  const first = queue.take(400);
  assertEquals(first.map((item) => item.kind), ["media", "control", "media"]);
  assertEquals(queue.queuedBytes, 350, "what was not taken is still queued");
  assertEquals(queue.oldestAgeMs(2_066), 1_000, "the lag is the oldest packet not taken");
  // The part not taken still counts against the limit: 350 + 700 is over it.
  assertEquals(queue.pushMedia(video(99, false, 700), 1_099), false);
  assertEquals(queue.take(400).length, 2, "the rest fits: all of it");
  assertEquals([queue.queuedBytes, queue.oldestAgeMs(2_000)], [0, 0]);
  assertEquals(queue.pushMedia(video(132, true, 700), 1_132), true);
  assertEquals(queue.take().length, 1, "no limit: everything");
});
