/**
 * Aggregate messages (type 22) over real sockets to the real relay: a real FFmpeg encoding is
 * published packed several tags to an aggregate, and players must receive every packet as if it
 * had been sent one message each. A malformed aggregate closes only its own connection.
 */

import { readFlvTags } from "../../bench/flv_file.ts";
import type { MediaPacket } from "../../src/media/flv.ts";
import { encodeAmf0 } from "../../src/rtmp/amf0.ts";
import type { OutgoingMessage } from "../../src/rtmp/chunk.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { ffmpegPlay, ffmpegPublish } from "../helpers/peers.ts";
import { tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay } from "../helpers/relay.ts";
import { aggregateMessage, TestRtmpClient } from "../helpers/rtmp_client.ts";

/**
 * Added to every sub-message timestamp (not to the aggregates'). The source starts at 16,800 s, so
 * one second in, the sub-messages' timestamps wrap past 2^32, their extension byte turning from
 * 0xff to 0x00 inside an aggregate: only the aggregate's own timestamp plus each sub-message's
 * offset from the first, read with the extension byte, gives the source's timeline back.
 */
const SKEW = 2 ** 32 - 16_801_000;

/** The tags in groups of 1, 2, ... 7, 1, 2, ...: aggregates of many sizes and chunk splits. */
function groups<T>(items: readonly T[]): T[][] {
  const out: T[][] = [];
  for (let at = 0, size = 1; at < items.length; at += size, size = size % 7 + 1) {
    out.push(items.slice(at, at + size));
  }
  return out;
}

type Tag = Pick<MediaPacket, "type" | "timestamp" | "payload">;

/** "type timestamp hash" per tag: compared as a list, it shows where two runs differ. */
function describe(tags: readonly Tag[]): Promise<string[]> {
  return Promise.all(tags.map(async (tag) => {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-1", tag.payload.slice()));
    const hash = Array.from(digest.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
    return `${tag.type} ${tag.timestamp} ${hash}`;
  }));
}

/** The next `count` audio, video and data messages `client` receives, as tags. */
async function receive(client: TestRtmpClient, count: number): Promise<Tag[]> {
  const tags: Tag[] = [];
  while (tags.length < count) {
    const message = await client.nextMedia(15_000);
    if (message === null) break;
    const { typeId, timestamp, payload } = message;
    tags.push({ type: typeId as Tag["type"], timestamp, payload });
  }
  return tags;
}

Deno.test("aggregate messages reach players packet for packet, on the aggregate's timeline", async () => {
  await using dir = await tempDir();
  const key = "agg-key-0001";
  // Starting at 16,800 s, every timestamp needs the sub-message header's extension byte.
  const source = await fixture({ seconds: 2, startSeconds: 16_800 });
  const tags = await readFlvTags(source);
  await using relay = await startTestRelay({ streams: [{ key }] });
  const out = `${dir.path}/played.flv`;
  await using ffmpeg = ffmpegPlay(relay.rtmpUrl(key), out);
  await using early = await TestRtmpClient.player(relay.rtmpPort, key);
  await waitFor(() => relay.service.hub.get(key)?.subscriberCount === 2, "two players");

  await using publisher = await TestRtmpClient.connect(relay.rtmpPort);
  await publisher.handshake();
  const { streamId, code } = await publisher.publish(key);
  assertEquals(code, "NetStream.Publish.Start");
  const aggregates = groups(tags).map((group) => aggregateMessage(group, streamId, SKEW));
  assert(aggregates.some((message) => message.payload.length > 4096), "some span several chunks");
  for (const message of aggregates) await publisher.send(message);

  // A player that was there from the start: every tag, same bytes, same timestamps.
  assertEquals(
    await describe(await receive(early, tags.length)),
    await describe(tags),
    "what a player received",
  );

  // A player joining now starts from the GOP cache: metadata, sequence headers, then the frames
  // from the last keyframe, so keyframes and headers were recognised inside the aggregates.
  await using late = await TestRtmpClient.player(relay.rtmpPort, key);
  const lastKeyframe = tags.findLastIndex((tag) => tag.keyframe);
  const expected = [
    tags.find((tag) => tag.type === 18)!,
    tags.find((tag) => tag.type === 9 && tag.sequenceHeader)!,
    tags.find((tag) => tag.type === 8 && tag.sequenceHeader)!,
    ...tags.slice(lastKeyframe),
  ];
  assertEquals(
    await describe(await receive(late, expected.length)),
    await describe(expected),
    "what a player joining late received",
  );

  await publisher.call(streamId, "deleteStream", null, streamId);
  assertEquals((await ffmpeg.wait()).code, 0, ffmpeg.stderr);
  assertSamePackets(await framemd5(out), await framemd5(source), "FFmpeg player");
});

/** Each case: a malformed aggregate made from a good one (three tags), and its log line. */
const MALFORMED: { name: string; make: (good: OutgoingMessage) => OutgoingMessage; log: RegExp }[] =
  [
    {
      name: "nested aggregate",
      make: (good) =>
        aggregateMessage([{ type: 22, timestamp: 0, payload: good.payload }], good.streamId),
      log: /closing connection: SyntaxError: sub-message 0 .*: nested aggregate/,
    },
    {
      name: "command inside",
      make: (good) =>
        aggregateMessage(
          [{ type: 20, timestamp: 0, payload: encodeAmf0("deleteStream", 0) }],
          good.streamId,
        ),
      log: /closing connection: SyntaxError: sub-message 0 .*: type 20 \(only audio/,
    },
    {
      name: "truncated",
      make: (good) => ({ ...good, payload: good.payload.subarray(0, good.payload.length - 2) }),
      log: /closing connection: SyntaxError: sub-message 2 .*: back pointer truncated/,
    },
    {
      name: "data size past the end",
      make: (good) => {
        const payload = good.payload.slice();
        payload[1] = 0x7f; // the first sub-message's size, now about 8 MB
        return { ...good, payload };
      },
      log: /closing connection: RangeError: sub-message 0 .*: \d+ bytes of data run past the end/,
    },
  ];

Deno.test("a malformed aggregate closes only its connection while another stream carries on", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 6 });
  const tags = await readFlvTags(source);
  const goodKey = "agg-good-0001";
  const badKeys = MALFORMED.map((_, index) => `agg-bad-000${index}`);
  await using relay = await startTestRelay({
    streams: [{ key: goodKey }, ...badKeys.map((key) => ({ key }))],
  });
  const out = `${dir.path}/good.flv`;
  await using ffmpegPlayer = ffmpegPlay(relay.rtmpUrl(goodKey), out);
  await waitFor(() => relay.service.hub.get(goodKey)?.subscriberCount === 1, "player");
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(goodKey));
  await waitFor(() => relay.service.hub.get(goodKey)?.state === "live", "good stream live");

  await Promise.all(MALFORMED.map(async (bad, index) => {
    const key = badKeys[index]!;
    await using client = await TestRtmpClient.connect(relay.rtmpPort);
    await client.handshake();
    const { streamId, code } = await client.publish(key);
    assertEquals(code, "NetStream.Publish.Start", bad.name);
    const good = aggregateMessage(tags.slice(0, 3), streamId);
    await client.send(good);
    await waitFor(() => relay.service.hub.get(key)?.packetsIn === 3, `${bad.name}: good aggregate`);
    await client.send(bad.make(good)).catch(() => {}); // the server may hang up while we write
    assert(await client.closedByServer(8_000), `${bad.name}: the server should close`);
    await waitFor(() => relay.service.hub.get(key)?.state !== "live", `${bad.name}: stream ends`);
  }));
  assertEquals(relay.service.hub.get(goodKey)?.state, "live", "the good stream is still live");
  const lines = relay.logText().split("\n");
  for (const bad of MALFORMED) {
    const matching = lines.filter((line) => bad.log.test(line));
    assertEquals(matching.length, 1, `${bad.name}: one log line matching ${bad.log}`);
  }

  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  assertEquals((await ffmpegPlayer.wait()).code, 0, ffmpegPlayer.stderr);
  assertSamePackets(await framemd5(out), await framemd5(source), "the good stream");
});
