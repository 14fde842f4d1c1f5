/**
 * A small RTMP client built on our own codecs, for tests that need exact control over what goes on
 * the wire (bad input, timing) and for benchmarks. Real-client interop is tested with FFmpeg,
 * GStreamer and rtmpdump; this client is for what they cannot be made to send.
 *
 * @module
 */

import { type AmfValue, isAmfObject } from "../../src/rtmp/amf0.ts";
import {
  ChunkDecoder,
  ChunkEncoder,
  MessageType,
  type OutgoingMessage,
  type RtmpMessage,
} from "../../src/rtmp/chunk.ts";
import { createClientC1, HANDSHAKE_SIZE } from "../../src/rtmp/handshake.ts";
import { ChunkStream, command, parseCommand, setChunkSize } from "../../src/rtmp/messages.ts";

const AGGREGATE_SUB_HEADER_LENGTH = 11;

/**
 * `packets` packed into one Aggregate message (type 22), each framed like an FLV tag with its back
 * pointer (any type is written as given, so bad input can be made too). The aggregate carries the
 * first packet's timestamp; each sub-message carries its own plus `skew` (mod 2^32), as a sender
 * keeping its own timeline would, which a receiver must take back out.
 */
export function aggregateMessage(
  packets: readonly { type: number; timestamp: number; payload: Uint8Array }[],
  streamId: number,
  skew = 0,
): OutgoingMessage {
  let length = 0;
  for (const packet of packets) length += AGGREGATE_SUB_HEADER_LENGTH + packet.payload.length + 4;
  const body = new Uint8Array(length);
  const view = new DataView(body.buffer);
  let offset = 0;
  for (const packet of packets) {
    const size = packet.payload.length;
    const timestamp = (packet.timestamp + skew) >>> 0;
    // Type, 24-bit size, lower 24 bits of the timestamp, its upper 8 bits, 24-bit stream id.
    body.set([
      packet.type,
      size >> 16,
      size >> 8,
      size,
      timestamp >> 16,
      timestamp >> 8,
      timestamp,
      timestamp >>> 24,
      streamId >> 16,
      streamId >> 8,
      streamId,
    ], offset);
    body.set(packet.payload, offset + AGGREGATE_SUB_HEADER_LENGTH);
    offset += AGGREGATE_SUB_HEADER_LENGTH + size;
    view.setUint32(offset, AGGREGATE_SUB_HEADER_LENGTH + size);
    offset += 4;
  }
  return {
    chunkStreamId: ChunkStream.Video,
    typeId: MessageType.Aggregate,
    timestamp: packets[0]?.timestamp ?? 0,
    streamId,
    payload: body,
  };
}

export class TestRtmpClient implements AsyncDisposable {
  readonly conn: Deno.TcpConn;
  readonly encoder = new ChunkEncoder();
  readonly #decoder = new ChunkDecoder({ maxMessageSize: 64 * 1024 * 1024, maxChunkStreams: 1000 });
  readonly #inbox: RtmpMessage[] = [];
  readonly #buffer = new Uint8Array(64 * 1024);
  #eof = false;
  #transaction = 1;
  /** The server's answer to `connect` (name and values), once connected. */
  connected: { name: string; values: AmfValue[] } | undefined;

  private constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  static async connect(port: number): Promise<TestRtmpClient> {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    conn.setNoDelay(true);
    return new TestRtmpClient(conn);
  }

  /** A player of ours: connected, handshaken and playing `key` (closed again if any step fails). */
  static async player(port: number, key: string): Promise<TestRtmpClient> {
    const client = await TestRtmpClient.connect(port);
    try {
      await client.handshake();
      await client.play(key);
      return client;
    } catch (error) {
      client.close();
      throw error;
    }
  }

  async write(bytes: Uint8Array): Promise<void> {
    let written = 0;
    while (written < bytes.length) written += await this.conn.write(bytes.subarray(written));
  }

  async send(...messages: OutgoingMessage[]): Promise<void> {
    await this.write(this.encoder.encode(...messages));
  }

  /** Reads exactly `count` raw bytes (handshake). */
  async readRaw(count: number): Promise<Uint8Array> {
    const out = new Uint8Array(count);
    let filled = 0;
    while (filled < count) {
      const n = await this.conn.read(out.subarray(filled));
      if (n === null) throw new Error(`connection closed after ${filled} of ${count} bytes`);
      filled += n;
    }
    return out;
  }

  /** Digest-form handshake, as FFmpeg does it. */
  async handshake(): Promise<{ s1: Uint8Array; s2: Uint8Array; c1: Uint8Array }> {
    const c1 = createClientC1(1);
    await this.write(new Uint8Array([3, ...c1]));
    const response = await this.readRaw(1 + 2 * HANDSHAKE_SIZE);
    const s1 = response.subarray(1, 1 + HANDSHAKE_SIZE);
    await this.write(s1); // C2 echoes S1
    return { s1, s2: response.subarray(1 + HANDSHAKE_SIZE), c1 };
  }

  /** Next message from the server, or null when it closed the connection. */
  async nextMessage(timeoutMs = 5_000): Promise<RtmpMessage | null> {
    const deadline = performance.now() + timeoutMs;
    while (this.#inbox.length === 0) {
      if (this.#eof) return null;
      const remaining = deadline - performance.now();
      if (remaining <= 0) throw new Error("no message from the server in time");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const n = await Promise.race([
        this.conn.read(this.#buffer),
        new Promise<"timeout">((resolve) =>
          timer = setTimeout(() => resolve("timeout"), remaining)
        ),
      ]).catch((error) => {
        if (error instanceof Deno.errors.ConnectionReset) return null;
        throw error;
      }).finally(() => clearTimeout(timer));
      if (n === "timeout") throw new Error("no message from the server in time");
      if (n === null) {
        this.#eof = true;
        continue;
      }
      this.#decoder.push(this.#buffer.subarray(0, n), (message) => this.#inbox.push(message));
    }
    return this.#inbox.shift()!;
  }

  /** Next audio, video or data message (others are skipped), or null when the server closed. */
  async nextMedia(timeoutMs = 5_000): Promise<RtmpMessage | null> {
    for (;;) {
      const message = await this.nextMessage(timeoutMs);
      if (message === null) return null;
      if (
        message.typeId === MessageType.Audio || message.typeId === MessageType.Video ||
        message.typeId === MessageType.DataAmf0
      ) {
        return message;
      }
    }
  }

  /** Reads until the server closes; true when it did within the timeout. */
  async closedByServer(timeoutMs = 5_000): Promise<boolean> {
    try {
      while ((await this.nextMessage(timeoutMs)) !== null) { /* drain */ }
      return true;
    } catch {
      return false;
    }
  }

  /** Waits for a command named one of `names`; returns its decoded values. */
  async expectCommand(
    names: string[],
    timeoutMs = 5_000,
  ): Promise<{ name: string; values: AmfValue[] }> {
    for (;;) {
      const message = await this.nextMessage(timeoutMs);
      if (message === null) {
        throw new Error(`connection closed while waiting for ${names.join("/")}`);
      }
      if (message.typeId !== MessageType.CommandAmf0) continue;
      const parsed = parseCommand(message);
      if (names.includes(parsed.name)) {
        return {
          name: parsed.name,
          values: [parsed.transactionId, parsed.commandObject, ...parsed.args],
        };
      }
    }
  }

  async call(
    streamId: number,
    name: string,
    commandObject: AmfValue,
    ...args: AmfValue[]
  ): Promise<void> {
    await this.send(command(streamId, name, this.#transaction++, commandObject, ...args));
  }

  /**
   * connect + createStream; returns the message stream id. `properties` go into the connect's
   * command object (Enhanced RTMP's `fourCcList`, `capsEx`); the `_result` is kept in `connected`.
   */
  async connectAndCreateStream(
    app = "live",
    chunkSize = 4096,
    properties: Record<string, AmfValue> = {},
  ): Promise<number> {
    await this.send(setChunkSize(chunkSize));
    await this.call(0, "connect", {
      app,
      tcUrl: `rtmp://127.0.0.1/${app}`,
      flashVer: "test/1.0",
      ...properties,
    });
    this.connected = await this.expectCommand(["_result"]);
    await this.call(0, "createStream", null);
    const reply = await this.expectCommand(["_result"]);
    return reply.values[2] as number;
  }

  /** Publishes `key`; returns the onStatus code the server answered with. */
  async publish(
    key: string,
    connectProperties: Record<string, AmfValue> = {},
  ): Promise<{ streamId: number; code: string }> {
    const streamId = await this.connectAndCreateStream("live", 4096, connectProperties);
    await this.call(streamId, "publish", null, key, "live");
    const status = await this.expectCommand(["onStatus"]);
    const info = status.values[2];
    return { streamId, code: isAmfObject(info) ? String(info.code) : "" };
  }

  /** Plays `key`; returns the message stream id once the server answered Play.Start. */
  async play(key: string): Promise<number> {
    const streamId = await this.connectAndCreateStream();
    await this.call(streamId, "play", null, key, -2000);
    for (;;) {
      const status = await this.expectCommand(["onStatus"]);
      const info = status.values[2];
      if (isAmfObject(info) && info.code === "NetStream.Play.Start") return streamId;
    }
  }

  /** The next `count` audio, video and data messages received, as tags (fewer if it closed). */
  async receiveTags(
    count: number,
    timeoutMs = 15_000,
  ): Promise<{ type: number; timestamp: number; payload: Uint8Array }[]> {
    const tags: { type: number; timestamp: number; payload: Uint8Array }[] = [];
    while (tags.length < count) {
      const message = await this.nextMedia(timeoutMs);
      if (message === null) break;
      const { typeId, timestamp, payload } = message;
      tags.push({ type: typeId, timestamp, payload });
    }
    return tags;
  }

  /**
   * Ends the connection the way a well-behaved encoder does: no more writes (FIN), then what the
   * server still sends (acknowledgements, pings) is read and dropped until it closes, or for at
   * most `timeoutMs`. Closing with unread bytes makes the kernel send RST instead of FIN, and a
   * server that receives RST discards what it has not read yet: the end of the stream.
   */
  async end(timeoutMs = 10_000): Promise<void> {
    const timer = setTimeout(() => this.close(), timeoutMs);
    try {
      await this.conn.closeWrite();
      const buffer = new Uint8Array(16 * 1024);
      while (await this.conn.read(buffer) !== null);
    } catch (error) {
      // Closed by the timer above, or the connection already gone: either way it is over.
      const over = error instanceof Deno.errors.BadResource ||
        error instanceof Deno.errors.Interrupted ||
        error instanceof Deno.errors.ConnectionReset ||
        error instanceof Deno.errors.NotConnected;
      if (!over) throw error;
    } finally {
      clearTimeout(timer);
      this.close();
    }
  }

  close(): void {
    try {
      this.conn.close();
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    this.close();
    return Promise.resolve();
  }
}
