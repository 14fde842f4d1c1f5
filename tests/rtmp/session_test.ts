/**
 * Hostile and broken clients against the real server, each on its own socket, while a real FFmpeg
 * stream runs beside them: every bad connection is closed with one log line, and the good stream
 * loses nothing.
 */

import { encodeAmf0 } from "../../src/rtmp/amf0.ts";
import { MessageType, type OutgoingMessage } from "../../src/rtmp/chunk.ts";
import { command, setChunkSize } from "../../src/rtmp/messages.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { hex } from "../helpers/bytes.ts";
import { assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { ffmpegPlay, ffmpegPublish } from "../helpers/peers.ts";
import { tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";

const raw = (typeId: number, payload: Uint8Array, chunkStreamId = 3): OutgoingMessage => ({
  chunkStreamId,
  typeId,
  timestamp: 0,
  streamId: 0,
  payload,
});

function nestedConnect(depth: number): Uint8Array {
  const head = encodeAmf0("connect", 1);
  const nest = new Uint8Array(depth * 4);
  for (let i = 0; i < depth; i++) nest.set([0x03, 0x00, 0x01, 0x61], i * 4);
  return new Uint8Array([...head, ...nest]);
}

/** Each case: what a misbehaving client does once it has a socket. */
const BAD_CLIENTS: { name: string; act: (client: TestRtmpClient) => Promise<void>; log: RegExp }[] =
  [
    {
      name: "RTMPE version byte in C0",
      act: (c) => c.write(new Uint8Array([6, ...new Uint8Array(1536)])),
      log: /unsupported RTMP version 6/,
    },
    {
      name: "stalls mid-handshake",
      act: (c) => c.write(new Uint8Array([3, ...new Uint8Array(100)])),
      log: /no connect within 1 s/,
    },
    {
      name: "chunk size 1",
      act: async (c) => {
        await c.handshake();
        await c.write(hex("02 000000 000004 01 00000000 00000001"));
      },
      log: /Set Chunk Size 1 is below the minimum/,
    },
    {
      name: "declares a 16 MiB message",
      act: async (c) => {
        await c.handshake();
        await c.write(hex("03 000000 ffffff 14 00000000 00"));
      },
      log: /message of 16777215 bytes .* exceeds the limit/,
    },
    {
      name: "type 3 chunk on an unknown chunk stream",
      act: async (c) => {
        await c.handshake();
        await c.write(hex("c9 00 00 00"));
      },
      log: /chunk type 3 on chunk stream 9 with no earlier header/,
    },
    {
      name: "AMF nested 10,000 deep",
      act: async (c) => {
        await c.handshake();
        await c.send(raw(MessageType.CommandAmf0, nestedConnect(10_000)));
      },
      log: /AMF0 nesting deeper than/,
    },
    {
      name: "truncated AMF",
      act: async (c) => {
        await c.handshake();
        await c.send(raw(MessageType.CommandAmf0, encodeAmf0("connect", 1).subarray(0, 12)));
      },
      log: /AMF0 value truncated/,
    },
    {
      name: "publish before createStream",
      act: async (c) => {
        await c.handshake();
        await c.send(setChunkSize(4096));
        await c.call(0, "connect", { app: "live" });
        await c.send({ ...command(1, "publish", 3, null, "sess-key-0001", "live") });
      },
      log: /publish on message stream 1 before createStream/,
    },
    {
      name: "second connect",
      act: async (c) => {
        await c.handshake();
        await c.call(0, "connect", { app: "live" });
        await c.call(0, "connect", { app: "live" });
      },
      log: /second connect on one connection/,
    },
    {
      name: "thousands of chunk stream ids",
      act: async (c) => {
        await c.handshake();
        const parts: number[] = [];
        for (let id = 3; id < 300; id++) {
          // Basic header (1 or 2 bytes), a type 0 header for a 1-byte audio message, its byte.
          parts.push(...(id < 64 ? [id] : [0x00, id - 64]), 0, 0, 0, 0, 0, 1, 8, 1, 0, 0, 0, 0xaf);
        }
        await c.write(new Uint8Array(parts)).catch(() => {});
      },
      log: /more than 64 chunk streams/,
    },
    {
      name: "a publisher sending a malformed Enhanced RTMP tag",
      act: async (c) => {
        await c.handshake();
        const { streamId, code } = await c.publish("sess-key-0002");
        assertEquals(code, "NetStream.Publish.Start");
        await c.send({
          chunkStreamId: 6,
          typeId: MessageType.Video,
          timestamp: 40,
          streamId,
          // Multitrack ManyTracks HEVC: track 0's size (64 bytes) runs past the tag's end.
          payload: hex("96 10 68766331 00 000040 aa"),
        });
      },
      log:
        /WARNING rtmp: closing connection: SyntaxError: malformed Enhanced RTMP video tag at 40 ms: Enhanced RTMP tag truncated in track 0/,
    },
    {
      name: "connect to an unknown application",
      act: async (c) => {
        await c.handshake();
        await c.call(0, "connect", { app: "admin" });
      },
      log:
        /WARNING rtmp: closing connection: connect to unknown application "a…\(5\)" \(this server's is "live"\)/,
    },
    {
      name: "connect with the key in the application (the whole URL in OBS's server field)",
      act: async (c) => {
        await c.handshake();
        await c.call(0, "connect", { app: "live/app-secret-key-123456" });
      },
      log: /WARNING rtmp: closing connection: connect to unknown application "live\/app-…\(21\)"/,
    },
  ];

Deno.test("bad clients are closed with one log line while a real stream loses nothing", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4 });
  await using relay = await startTestRelay({
    streams: [{ key: "sess-key-0001" }, { key: "sess-key-0002" }],
    streaming: { connection_timeout_seconds: 1 },
    rtmp: { max_message_size_kb: 1024 },
  });
  const out = `${dir.path}/good.flv`;
  await using player = ffmpegPlay(relay.rtmpUrl("sess-key-0001"), out);
  await waitFor(() => relay.service.hub.get("sess-key-0001")?.subscriberCount === 1, "player");
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("sess-key-0001"));
  await waitFor(() => relay.service.hub.get("sess-key-0001")?.state === "live", "stream live");

  const outcomes = await Promise.all(BAD_CLIENTS.map(async (bad) => {
    await using client = await TestRtmpClient.connect(relay.rtmpPort);
    const started = performance.now();
    await bad.act(client).catch(() => {}); // the server may hang up while we still write
    const closed = await client.closedByServer(4_000);
    return { name: bad.name, closed, ms: performance.now() - started };
  }));
  for (const outcome of outcomes) {
    assert(outcome.closed, `${outcome.name}: the server should close the connection`);
    assert(outcome.ms < 3_500, `${outcome.name}: closed after ${Math.round(outcome.ms)} ms`);
  }
  const text = relay.logText();
  for (const bad of BAD_CLIENTS) {
    assert(bad.log.test(text), `${bad.name}: no log line matching ${bad.log}`);
  }
  assert(!text.includes("app-secret-key"), "a key in the application is redacted");

  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  assertEquals((await player.wait()).code, 0, player.stderr);
  assertSamePackets(await framemd5(out), await framemd5(source), "the good stream");
  assertEquals(relay.service.rtmp.sessions.size, 0, "every connection is gone");
});

Deno.test("a silent publisher is dropped by the ping timeout", async () => {
  await using relay = await startTestRelay({
    streams: [{ key: "ping-key-0001" }],
    rtmp: { ping_interval_seconds: 0.2, ping_timeout_seconds: 1 },
  });
  await using client = await TestRtmpClient.connect(relay.rtmpPort);
  await client.handshake();
  const { code } = await client.publish("ping-key-0001");
  assertEquals(code, "NetStream.Publish.Start");
  // We answer nothing and send nothing from here on: a dead uplink without FIN.
  const started = performance.now();
  await waitFor(() => relay.service.hub.live().length === 0, "stream to end", 5_000);
  assert(performance.now() - started < 3_000, "the timeout should apply within about a second");
  assert(/ping timeout/.test(relay.logText()), "the reason is logged");
  // Every line about a connection carries its id and peer, and its stream (redacted, and its id)
  // once it has one.
  const text = relay.logText();
  const context = String
    .raw`session=\d+ remote=127\.0\.0\.1:\d+ stream=ping…\(13\) stream_id=[0-9a-f]{16}`;
  assertMatch(text, new RegExp(String.raw` rtmp: publish accepted ${context} encoder=`));
  assertMatch(
    text,
    new RegExp(String.raw` rtmp: closing connection: ping timeout[^\n]* ${context}\n`),
  );
});

Deno.test("the server acknowledges received bytes once the peer's window is reached", async () => {
  await using relay = await startTestRelay({ streams: [{ key: "ack-key-0001" }] });
  await using client = await TestRtmpClient.connect(relay.rtmpPort);
  await client.handshake();
  // Window Acknowledgement Size of 4096: the server must send an Acknowledgement every 4096 bytes.
  await client.send({
    chunkStreamId: 2,
    typeId: MessageType.WindowAckSize,
    timestamp: 0,
    streamId: 0,
    payload: hex("00001000"),
  });
  const { code } = await client.publish("ack-key-0001");
  assertEquals(code, "NetStream.Publish.Start");
  for (let i = 0; i < 4; i++) {
    await client.send({
      chunkStreamId: 6,
      typeId: MessageType.Video,
      timestamp: i * 33,
      streamId: 1,
      payload: new Uint8Array(3000).fill(0x27),
    });
  }
  for (;;) {
    const message = await client.nextMessage(3_000);
    assert(message !== null, "connection closed before an Acknowledgement");
    if (message.typeId === MessageType.Acknowledgement) {
      const sequence = new DataView(message.payload.buffer, message.payload.byteOffset).getUint32(
        0,
      );
      assert(sequence >= 4096, `acknowledged ${sequence} bytes`);
      break;
    }
  }
});

/**
 * Publishes to `key` until the one player of it, which never reads, has a full queue (loopback's
 * socket buffers take up to about 10 MiB first): the relay's writes to it block, and the rest is
 * dropped. Returns the publisher, still connected.
 */
async function stallPlayer(relay: TestRelay, key: string): Promise<TestRtmpClient> {
  const publisher = await TestRtmpClient.connect(relay.rtmpPort);
  await publisher.handshake();
  const { streamId, code } = await publisher.publish(key);
  assertEquals(code, "NetStream.Publish.Start");
  await waitFor(() => relay.service.hub.get(key)?.subscriberCount === 1, "the player");
  const player = () => [...relay.service.rtmp.sessions].find((s) => s.role === "player");
  const frame = new Uint8Array(64 * 1024).fill(0x27);
  for (let i = 0; i < 640 && !(player()?.droppedPackets); i++) {
    frame[0] = i % 30 === 0 ? 0x17 : 0x27;
    await publisher.send({
      chunkStreamId: 6,
      typeId: MessageType.Video,
      timestamp: i * 33,
      streamId,
      payload: frame,
    });
  }
  await waitFor(() => (player()?.droppedPackets ?? 0) > 0, "the player's queue to overflow");
  return publisher;
}

Deno.test("a player that stops reading is closed 2 s after its stream ends, not left open", async () => {
  await using relay = await startTestRelay({
    streams: [{ key: "flush-key-0001" }],
    rtmp: { gop_cache_max_kb: 1024 }, // a player's queue is the 4 MiB minimum
  });
  await using _player = await TestRtmpClient.player(relay.rtmpPort, "flush-key-0001");
  await using publisher = await stallPlayer(relay, "flush-key-0001");
  publisher.close(); // the stream ends: the player is told, then closed once that is written
  const endedAt = performance.now();
  await waitFor(() => relay.service.rtmp.sessions.size === 0, "the stalled player to be closed");
  const took = performance.now() - endedAt;
  assert(took >= 1_500, `closed after ${Math.round(took)} ms: it did not wait for the flush`);
  assert(took < 8_000, `closed after ${Math.round(took)} ms: the flush timeout did not apply`);
  assertMatch(relay.logText(), /closing connection: stream ended/);
});

Deno.test("the relay's shutdown waits for a player that stops reading no longer than half the grace", async () => {
  // A player taking the end of its stream may have 2 s to take it and 2 s to close; the shutdown
  // has shutdown_grace_seconds in all (main.ts exits 1 beyond it), half of it for the players.
  await using relay = await startTestRelay({
    streams: [{ key: "grace-key-0001" }],
    rtmp: { gop_cache_max_kb: 1024 },
    streaming: { shutdown_grace_seconds: 1 },
  });
  await using _player = await TestRtmpClient.player(relay.rtmpPort, "grace-key-0001");
  await using _publisher = await stallPlayer(relay, "grace-key-0001");
  const started = performance.now();
  await relay.service.shutdown("relay shutting down for the test");
  const took = performance.now() - started;
  // 0.5 s expected; the player's flush alone would hold it 2 s.
  assert(took < 1_600, `the shutdown took ${Math.round(took)} ms`);
  assertEquals(relay.service.rtmp.sessions.size, 0, "every connection is gone");
});

Deno.test("a player hung up on at its stream's end is read until it closes, and what it sends then is counted, not decoded", async () => {
  await using relay = await startTestRelay({ streams: [{ key: "hangup-key-0001" }] });
  await using player = await TestRtmpClient.player(relay.rtmpPort, "hangup-key-0001");
  await using publisher = await TestRtmpClient.connect(relay.rtmpPort);
  await publisher.handshake();
  const { code } = await publisher.publish("hangup-key-0001");
  assertEquals(code, "NetStream.Publish.Start");
  await waitFor(() => relay.service.hub.get("hangup-key-0001")?.subscriberCount === 1, "player");
  await publisher.end(); // the stream ends: the player is told, then the relay shuts its side
  const { values } = await player.expectCommand(["onStatus"]);
  assertMatch(JSON.stringify(values), /NetStream\.Play\.UnpublishNotify/);
  assert(await player.closedByServer(), "the relay's end of the stream (FIN) should follow");
  // The publisher's session is gone; the player's stays, reading, until the player closes.
  assertEquals(
    relay.service.rtmp.sessions.size,
    1,
    "the relay should read until the player closes",
  );
  const before = relay.service.rtmp.bytesIn;
  // Not RTMP: decoded, it would be a protocol error; after the hang-up it is only counted.
  await player.write(new Uint8Array(5_000).fill(0xff));
  await waitFor(() => relay.service.rtmp.bytesIn - before === 5_000, "the bytes to be counted");
  player.close();
  await waitFor(() => relay.service.rtmp.sessions.size === 0, "the session to end");
  assertEquals(relay.service.rtmp.bytesIn - before, 5_000, "counted once");
  const log = relay.logText();
  assert(!/protocol error|could not shut/i.test(log), "nothing after the hang-up is an error");
  assertEquals(
    log.match(/closing connection: stream ended/g)?.length,
    1,
    "one line for the hang-up",
  );
});

Deno.test("a refused publish is one warning, with the reason and the key redacted", async () => {
  await using relay = await startTestRelay({ streams: [{ key: "known-key-0001" }] });
  await using publisher = ffmpegPublish(
    await fixture({ seconds: 2 }),
    relay.rtmpUrl("unknown-key-0001"),
  );
  await publisher.wait();
  const warnings = relay.logText().split("\n").filter((line) => line.includes(" WARNING "));
  assertEquals(warnings.length, 1, warnings.join("\n"));
  assertMatch(warnings[0]!, /rtmp: publish refused: .* stream=unkn…\(16\)/);
});
