import { createMediaPacket, type MediaPacket, TagType } from "../../src/media/flv.ts";
import {
  type PublisherInfo,
  StreamHub,
  type StreamSubscriber,
} from "../../src/media/live_stream.ts";
import { hex } from "../helpers/bytes.ts";
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

Deno.test("StreamHub: a reconnect window that closes while a returning publisher is authorised waits for the answer", async () => {
  const hub = new StreamHub({ gopCache: true, gopCacheMaxBytes: 1 << 20, reconnectGraceMs: 50 });
  const events: string[] = [];
  hub.addListener({
    onLive: () => events.push("live"),
    onResumed: () => events.push("resumed"),
    onEnded: (_stream, reason) => events.push(`ended: ${reason}`),
  });
  const first = hub.claim("k");
  assert(!("refused" in first));
  hub.accept(first, publisher(1, []));
  const stream = first.stream;

  // Back within the window, but authorised after it: the stream continues, nothing ended.
  hub.publisherLeft(stream, "gone");
  const back = hub.claim("k");
  assert(!("refused" in back) && back.kind === "resume");
  await sleep(150);
  assertEquals(stream.state, "reconnecting", "still waiting for the answer");
  hub.accept(back, publisher(2, []));
  assertEquals(events, ["live", "resumed"]);

  // Back within the window, then gone while authorised after it: the stream ends then.
  hub.publisherLeft(stream, "gone again");
  const abandoned = hub.claim("k");
  assert(!("refused" in abandoned) && abandoned.kind === "resume");
  await sleep(150);
  assertEquals(events, ["live", "resumed"]);
  hub.release(abandoned);
  assertEquals(events, ["live", "resumed", "ended: gone again; no reconnect within 0.05 s"]);
  assertEquals(hub.live(), []);
  assertEquals(hub.diagnostics.reconnectTimers, 0);
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
  const leftAt = performance.now();
  hub.publisherLeft(claim.stream, "gone");
  await sleep(200);
  const again = hub.claim("k");
  assert(!("refused" in again) && again.kind === "resume");
  hub.accept(again, publisher(2, []));
  const passed = performance.now() - leftAt; // 200 ms, or more on a busy machine
  for (const ts of [0, 33]) claim.stream.write(video(ts, ts === 0)); // the encoder restarted at 0
  const times = seen.map((p) => p.timestamp);
  assertEquals(times.slice(0, 3), [0, 33, 66]);
  const gap = times[3]! - 66;
  assert(
    gap >= 190 && gap >= passed - 20 && gap <= passed + 100,
    `gap ${gap} ms should be the ${Math.round(passed)} ms that passed`,
  );
  assertEquals(times[4]! - times[3]!, 33, "spacing within the new publisher is kept");
  assertEquals(claim.stream.reconnects, 1);
  hub.endAll("test over");
});

const avcConfig = (level: number) =>
  createMediaPacket(TagType.Video, 0, new Uint8Array([0x17, 0, 0, 0, 0, 1, level]));
const aacConfig = createMediaPacket(TagType.Audio, 0, hex("af 00 1210"));
const aac = (ts: number) => createMediaPacket(TagType.Audio, ts, hex("af 01 21"));

/**
 * A hub with one live stream whose publisher has left; `resume` brings a new one. `reader`, when
 * given, is subscribed before the first publisher's packets.
 */
function droppedStream(opening: MediaPacket[], reader?: StreamSubscriber) {
  const hub = new StreamHub({
    gopCache: true,
    gopCacheMaxBytes: 1 << 20,
    reconnectGraceMs: 60_000,
  });
  const claim = hub.claim("k");
  assert(!("refused" in claim));
  hub.accept(claim, publisher(1, []));
  if (reader) claim.stream.subscribe(reader);
  for (const packet of opening) claim.stream.write(packet);
  hub.publisherLeft(claim.stream, "gone");
  return {
    hub,
    stream: claim.stream,
    resume() {
      const again = hub.claim("k");
      assert(!("refused" in again) && again.kind === "resume");
      hub.accept(again, publisher(2, []));
    },
  };
}

/** "V", "A" or "S" (script data), with "h" for a sequence header. */
const kindOf = (p: MediaPacket) =>
  `${p.type === TagType.Video ? "V" : p.type === TagType.Audio ? "A" : "S"}${
    p.sequenceHeader ? "h" : ""
  }`;

/** A reader noting its packets ("V", "Ah"...) and changes ("change: ..."). */
function recorder() {
  const seen: string[] = [];
  return {
    seen,
    onPacket: (p: MediaPacket) => seen.push(kindOf(p)),
    onEnd: () => {},
    onConfigurationChange: (change: { description: string }) =>
      seen.push(`change: ${change.description}`),
  };
}

Deno.test("LiveStream tells readers of a returning publisher's new layout before its headers", () => {
  const { hub, stream, resume } = droppedStream([avcConfig(1), aacConfig, video(0, true), aac(10)]);
  const reader = recorder();
  stream.subscribe(reader);
  reader.seen.length = 0;
  resume();
  stream.write(aacConfig); // held: headers alone do not say that the video went away
  assertEquals(reader.seen, []);
  stream.write(aac(0));
  assertEquals(reader.seen, ["change: video removed (avc1)", "Ah", "A"]);
  assertEquals(stream.configuration.video, undefined);
  // A reader joining now gets no stale video header or frames, and starts on audio at once.
  const joiner = recorder();
  stream.subscribe(joiner);
  stream.write(aac(23));
  assertEquals(joiner.seen, ["Ah", "A"]);
  hub.endAll("test over");
});

Deno.test("LiveStream reports a new sequence header on resume and keeps an unchanged stream as is", () => {
  const { hub, stream, resume } = droppedStream([avcConfig(1), aacConfig, video(0, true)]);
  const reader = recorder();
  stream.subscribe(reader);
  reader.seen.length = 0;
  resume();
  for (const packet of [avcConfig(1), aacConfig, video(0, true)]) stream.write(packet);
  assertEquals(reader.seen, ["Vh", "Ah", "V"], "the same stream again: nothing to tell");
  hub.publisherLeft(stream, "gone again");
  resume();
  for (const packet of [avcConfig(2), aacConfig, video(0, true)]) stream.write(packet);
  assertEquals(reader.seen.slice(3), [
    "change: video sequence header changed (avc1)",
    "Vh",
    "Ah",
    "V",
  ]);
  assertEquals(stream.gop.snapshot().map((p) => p.payload.at(-1)), [2, 0x10, 0]);
  hub.endAll("test over");
});

/** `kindOf` with "k" for a keyframe: "Vk", "V", "Vh", "A", "Ah", "S". */
const labelOf = (p: MediaPacket) => `${kindOf(p)}${p.keyframe ? "k" : ""}`;

/** Packets from their labels and timestamps: "S@0 Vh@0 Ah@0 Vk@16800000 A@16800023". */
function tags(text: string): MediaPacket[] {
  const make: Record<string, (ts: number) => MediaPacket> = {
    S: (ts) => createMediaPacket(TagType.Script, ts, hex("02 000a 6f6e4d65746144617461")),
    Vh: (ts) => ({ ...avcConfig(1), timestamp: ts }),
    Ah: (ts) => ({ ...aacConfig, timestamp: ts }),
    Vk: (ts) => video(ts, true),
    V: (ts) => video(ts),
    A: aac,
  };
  return text.split(" ").map((word) => {
    const [label, ts] = word.split("@") as [string, string];
    return make[label]!(Number(ts));
  });
}

/** `ts - from` on the 32-bit timeline, as "+23" or "-5". */
function since(ts: number, from: number): string {
  const delta = ((ts - from) % 2 ** 32 + 2 ** 32 + 2 ** 31) % 2 ** 32 - 2 ** 31;
  return `${delta < 0 ? "" : "+"}${delta}`;
}

Deno.test("LiveStream.write() continues a resumed stream's timestamps from its first media frame, not its metadata", async (t) => {
  const cases = [{
    name: "FFmpeg with -output_ts_offset: metadata and headers at 0, media at 16,800 s",
    before: "S@0 Vh@0 Ah@0 Vk@16800000 A@16800023 V@16800033 A@16800046",
    lastFrame: 16_800_046,
    after: "S@0 Vh@0 Ah@0 Vk@16800000 A@16800023 V@16800033",
    // Held until the first frame and sent just before it: stamped with it, not 16,800 s earlier.
    resumed: "S@+0 Vh@+0 Ah@+0 Vk@+0 A@+23 V@+33",
  }, {
    name: "an onMetaData update stamped 0 is the last message before the drop",
    before: "Vh@0 Ah@0 Vk@0 A@23 V@3034 S@0",
    lastFrame: 3_034,
    after: "Vh@0 Ah@0 Vk@0 A@23",
    resumed: "Vh@+0 Ah@+0 Vk@+0 A@+23",
  }, {
    name: "data stamped with the media (captions) moves with it, never back past a frame",
    before: "Vh@0 Ah@0 Vk@0 A@23",
    lastFrame: 23,
    after: "Vh@0 Vk@16800000 S@16800010 A@16800023 S@16800020 V@16800033",
    resumed: "Vh@+0 Vk@+0 S@+10 A@+23 S@+23 V@+33",
  }, {
    name: "OBS, restarting at 0",
    before: "S@0 Vh@0 Ah@0 Vk@0 A@23 V@33",
    lastFrame: 33,
    after: "S@0 Vh@0 Ah@0 Vk@0 A@23 V@33",
    resumed: "S@+0 Vh@+0 Ah@+0 Vk@+0 A@+23 V@+33",
  }, {
    name: "a camera clock past 2^31 ms, with a metadata update stamped 0 after the first frame",
    before: "Vh@0 Vk@3000000000 V@3000000033",
    lastFrame: 3_000_000_033,
    after: "Vh@0 Vk@3000900000 S@0 V@3000900033",
    resumed: "Vh@+0 Vk@+0 S@+0 V@+33",
  }, {
    name: "more headers than are held before the first frame",
    before: "Vh@0 Ah@0 Vk@16800000 A@16800023",
    lastFrame: 16_800_023,
    after: `${"S@0 ".repeat(9)}Vh@0 Vk@16800000 A@16800023`,
    resumed: `${"S@+0 ".repeat(9)}Vh@+0 Vk@+0 A@+23`,
  }];
  for (const { name, before, lastFrame, after, resumed } of cases) {
    await t.step(name, () => {
      const seen: MediaPacket[] = [];
      const reader = { onPacket: (p: MediaPacket) => void seen.push(p), onEnd: () => {} };
      const { hub, stream, resume } = droppedStream(tags(before), reader);
      const described = (from: (p: MediaPacket) => string) =>
        seen.map((p) => `${labelOf(p)}@${from(p)}`).join(" ");
      const sent = (p: MediaPacket) => String(p.timestamp);
      assertEquals(described(sent), before, "the first publisher's stream passes as it was sent");
      seen.length = 0;
      resume();
      for (const packet of tags(after)) stream.write(packet);
      const first = seen.find((p) => p.type !== TagType.Script && !p.sequenceHeader)!.timestamp;
      const gap = since(first, lastFrame);
      assert(
        Number(gap) >= 1 && Number(gap) < 1_000,
        `the resumed stream starts ${gap} ms after the last frame sent: ${described(sent)}`,
      );
      assertEquals(described((p) => since(p.timestamp, first)), resumed);
      hub.endAll("test over");
    });
  }
});

/** A hub with the GOP cache on, and its stream "key" live. */
function liveStream() {
  const hub = new StreamHub({ gopCache: true, gopCacheMaxBytes: 1024 * 1024 });
  const claim = hub.claim("key");
  assert(!("refused" in claim));
  hub.accept(claim, publisher(1, []));
  return { hub, stream: claim.stream };
}

Deno.test("LiveStream.write() hands every reader the arrival time it was given, and idleMs() counts from it", () => {
  const { hub, stream } = liveStream();
  const seen: [number, number][] = [];
  const reader = (name: number) => ({
    onPacket: (_packet: MediaPacket, now: number) => void seen.push([name, now]),
    onEnd: () => {},
  });
  stream.subscribe(reader(1));
  stream.subscribe(reader(2));
  stream.write(video(0, true), 1_000);
  stream.write(video(33), 1_033);
  assertEquals(seen, [[1, 1_000], [2, 1_000], [1, 1_033], [2, 1_033]]);
  assertEquals(stream.idleMs(1_533), 500);
  // A reader joining gets the GOP cache at the time it joins.
  seen.length = 0;
  const before = performance.now();
  stream.subscribe(reader(3));
  assertEquals(seen.map(([name]) => name), [3, 3]);
  assert(seen.every(([, now]) => now >= before && now <= performance.now()));
  hub.end(stream, "done");
});

Deno.test("LiveStream.write() keeps headers it holds for the stream's life in buffers of their own", () => {
  const { hub, stream } = liveStream();
  const seen: MediaPacket[] = [];
  stream.subscribe({ onPacket: (packet) => void seen.push(packet), onEnd: () => {} });
  // Payloads as the chunk decoder gives them: views into one shared slab.
  const slab = new Uint8Array(4096);
  slab.set(hex("17 00 000000 01640028"), 0);
  slab.set(hex("af 00 1210"), 100);
  slab.set(hex("17 01 000000 65888000"), 200);
  const header = createMediaPacket(TagType.Video, 0, slab.subarray(0, 9));
  const audioHeader = createMediaPacket(TagType.Audio, 0, slab.subarray(100, 104));
  const frame = createMediaPacket(TagType.Video, 0, slab.subarray(200, 209));
  for (const packet of [header, audioHeader, frame]) stream.write(packet);
  const kept = [stream.gop.videoSequenceHeader!, stream.gop.audioSequenceHeader!];
  for (const [packet, sent] of [[kept[0]!, header], [kept[1]!, audioHeader]] as const) {
    assertEquals(packet.payload, sent.payload);
    assertEquals(packet.payload.buffer.byteLength, sent.payload.length, "not a view of the slab");
  }
  assertEquals(stream.configuration.video?.header?.buffer.byteLength, header.payload.length);
  assertEquals(
    seen.map((packet) => packet.payload),
    [header, audioHeader, frame].map((p) => p.payload),
  );
  assert(seen[2] === frame, "frames pass as they came: the GOP cache lets them go within seconds");
  hub.end(stream, "done");
});

Deno.test("LiveStream reports the codec of a track without a sequence header, as it does on resume", () => {
  // MP3 (and VP6, H.263) have no sequence header: the codec shows from the first frame.
  const mp3 = (ts: number) => createMediaPacket(TagType.Audio, ts, hex("2f 0000"));
  const { hub, stream, resume } = droppedStream([avcConfig(1), video(0, true), mp3(0)]);
  assertEquals([stream.videoCodec, stream.audioCodec], ["avc1", "mp3"]);
  resume();
  for (const packet of [avcConfig(1), video(0, true), mp3(0)]) stream.write(packet);
  assertEquals([stream.videoCodec, stream.audioCodec], ["avc1", "mp3"]);
  hub.endAll("test over");
  assertEquals([stream.videoCodec, stream.audioCodec], [undefined, undefined]);
});
