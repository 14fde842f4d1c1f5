/** The write side of a connection over a real loopback socket, read back with the chunk decoder. */

import {
  ChunkDecoder,
  MessageType,
  type OutgoingMessage,
  type RtmpMessage,
} from "../../src/rtmp/chunk.ts";
import { MessageWriter } from "../../src/rtmp/message_writer.ts";
import { setChunkSize, streamBegin } from "../../src/rtmp/messages.ts";
import { createMediaPacket, TagType } from "../../src/media/flv.ts";
import { MediaQueue } from "../../src/media/media_queue.ts";
import { assertEquals, assertRejects } from "../helpers/assert.ts";
import { waitFor } from "../helpers/process.ts";

/** A connected loopback pair, closed on dispose. */
async function socketPair() {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [client, server] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port }),
    listener.accept(),
  ]);
  return {
    client,
    server,
    [Symbol.dispose]() {
      for (const conn of [client, server]) {
        try {
          conn.close();
        } catch (error) {
          if (!(error instanceof Deno.errors.BadResource)) throw error;
        }
      }
    },
  };
}

/** Reads to the end: the messages decoded and the bytes they came in. */
async function readMessages(conn: Deno.Conn): Promise<{ messages: RtmpMessage[]; bytes: number }> {
  const decoder = new ChunkDecoder();
  const messages: RtmpMessage[] = [];
  const buffer = new Uint8Array(64 * 1024);
  let bytes = 0;
  for (;;) {
    const count = await conn.read(buffer);
    if (count === null) return { messages, bytes };
    bytes += count;
    decoder.push(buffer.subarray(0, count), (message) => messages.push(message));
  }
}

Deno.test("MessageWriter.run() writes queued control and media in order, media on the current stream", async () => {
  using pair = await socketPair();
  const queue = new MediaQueue<OutgoingMessage>(64 * 1024 * 1024);
  let streamId = 0;
  const writer = new MessageWriter(pair.client, queue, () => streamId);
  const reading = readMessages(pair.server);
  const running = writer.run();
  queue.pushControl(setChunkSize(4096));
  queue.pushControl(streamBegin(1));
  streamId = 1;
  // Larger than the first output buffer: the writer must grow it and keep the bytes whole.
  const big = new Uint8Array(300 * 1024).map((_, i) => i & 0xff);
  queue.pushMedia(createMediaPacket(TagType.Video, 40, new Uint8Array([0x17, 1, 0, 0, 0, ...big])));
  queue.pushMedia(createMediaPacket(TagType.Audio, 41, new Uint8Array([0xaf, 1, 0xbb])));
  queue.close();
  await running;
  pair.client.close();
  const { messages, bytes } = await reading;
  assertEquals(
    messages.map((m) => [m.typeId, m.streamId, m.chunkStreamId, m.timestamp, m.payload.length]),
    [
      [MessageType.SetChunkSize, 0, 2, 0, 4],
      [MessageType.UserControl, 0, 2, 0, 6],
      [MessageType.Video, 1, 6, 40, big.length + 5],
      [MessageType.Audio, 1, 4, 41, 3],
    ],
  );
  assertEquals(messages[2]!.payload.subarray(5), big);
  assertEquals(writer.bytesOut, bytes);
});

Deno.test("MessageWriter.run() rejects when the socket is gone", async () => {
  using pair = await socketPair();
  const queue = new MediaQueue<OutgoingMessage>(1024 * 1024);
  const writer = new MessageWriter(pair.client, queue, () => 1);
  pair.client.close();
  const running = writer.run();
  queue.pushControl(setChunkSize(4096));
  await assertRejects(() => running, Deno.errors.BadResource);
});

Deno.test("MessageWriter.send() keeps a grown output buffer only up to 256 KiB", async () => {
  using pair = await socketPair();
  const writer = new MessageWriter(pair.client);
  const reading = readMessages(pair.server);
  const video = (size: number, timestamp: number) => ({
    chunkStreamId: 6,
    typeId: MessageType.Video,
    timestamp,
    streamId: 1,
    payload: new Uint8Array(size).map((_, i) => (i * 7) & 0xff),
  });
  const sent = [video(100 * 1024, 0), video(1024 * 1024, 40), video(10, 80)];
  await writer.send([sent[0]!]);
  assertEquals(writer.keptBufferBytes >= 100 * 1024, true, "a 100 KiB batch's buffer is kept");
  // A GOP cache replay: written whole from a buffer of its own, which is then let go.
  await writer.send([sent[1]!]);
  assertEquals(writer.keptBufferBytes <= 256 * 1024, true, `kept ${writer.keptBufferBytes}`);
  await writer.send([sent[2]!]);
  pair.client.close();
  const { messages } = await reading;
  assertEquals(messages.map((m) => m.payload), sent.map((m) => m.payload));
});

Deno.test("MessageWriter.bytesOut counts bytes as the socket takes them, not once a whole batch is written", async () => {
  using pair = await socketPair();
  const writer = new MessageWriter(pair.client);
  // Far more than loopback's socket buffers hold while the peer reads nothing: the send blocks.
  const payload = new Uint8Array(12 * 1024 * 1024);
  let sent = false;
  const sending = writer.send([{
    chunkStreamId: 6,
    typeId: MessageType.Video,
    timestamp: 0,
    streamId: 1,
    payload,
  }]).then(() => sent = true);
  await waitFor(() => writer.bytesOut > 0, "the first bytes to be counted", 5_000);
  assertEquals(sent, false, "the send is still blocked on the peer");
  const reading = readMessages(pair.server);
  await sending;
  pair.client.close();
  const { messages, bytes } = await reading;
  assertEquals(messages.map((m) => m.payload.length), [payload.length]);
  assertEquals(writer.bytesOut, bytes);
});
