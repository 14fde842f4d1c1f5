/**
 * The floor under any relay written for Deno: a TCP tee with no RTMP in it, for `bench/run.ts`.
 * Each connection accepted on PORT is joined to the first sink both ways (so the publisher's
 * handshake and commands are answered), and everything the publisher sends is also written to
 * every other sink, whose answers are read and dropped. With the same publishers and sinks as the
 * engines, its CPU is what the reads and writes alone cost a Deno process: one read per arrival
 * from the publisher, one write per read per destination, the buffer reused, nothing parsed.
 *
 * With `--decode`, everything the publisher sends after the handshake is also fed to our
 * `ChunkDecoder` (messages reassembled, then let go): the floor under any relay that reads RTMP,
 * which it must to cache a GOP and find keyframes. A decoding error ends that tee, which shows as
 * packets lost.
 *
 * `deno run --allow-net=127.0.0.1 bench/tcp_tee.ts [--decode] PORT SINK_PORT...`; prints
 * `{"port": PORT}` once it listens.
 *
 * @module
 */

import { ChunkDecoder } from "../src/rtmp/chunk.ts";
import { HANDSHAKE_SIZE } from "../src/rtmp/handshake.ts";

const decode = Deno.args[0] === "--decode";
const [port, ...sinkPorts] = Deno.args.slice(decode ? 1 : 0).map(Number);
if (port === undefined || sinkPorts.length === 0) {
  throw new TypeError("usage: tcp_tee.ts [--decode] PORT SINK_PORT...");
}
/** C0, C1 and C2: what a publisher sends before its first chunk. */
const HANDSHAKE_BYTES = 1 + 2 * HANDSHAKE_SIZE;

async function drain(conn: Deno.Conn, into?: Deno.Conn): Promise<void> {
  const buffer = new Uint8Array(64 * 1024);
  for (;;) {
    const count = await conn.read(buffer).catch(() => null);
    if (count === null) return;
    if (into) await writeAll(into, buffer.subarray(0, count));
  }
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  for (let written = 0; written < bytes.length;) {
    written += await conn.write(bytes.subarray(written));
  }
}

async function tee(client: Deno.TcpConn): Promise<void> {
  client.setNoDelay(true);
  const sinks = await Promise.all(
    sinkPorts.map((sinkPort) => Deno.connect({ hostname: "127.0.0.1", port: sinkPort })),
  );
  for (const sink of sinks) sink.setNoDelay(true);
  const answers = sinks.map((sink, i) => drain(sink, i === 0 ? client : undefined));
  const buffer = new Uint8Array(64 * 1024);
  const decoder = decode ? new ChunkDecoder() : undefined;
  let handshakeLeft = HANDSHAKE_BYTES;
  let messages = 0;
  const onMessage = () => {
    messages++;
  };
  try {
    for (;;) {
      const count = await client.read(buffer);
      if (count === null) break;
      const bytes = buffer.subarray(0, count);
      if (decoder !== undefined) {
        const skip = Math.min(handshakeLeft, count);
        handshakeLeft -= skip;
        if (skip < count) decoder.push(bytes.subarray(skip), onMessage);
      }
      await Promise.all(sinks.map((sink) => writeAll(sink, bytes)));
    }
  } catch (error) {
    // The publisher or a sink went away: end this tee. A decoding error is a bug: say so.
    if (error instanceof SyntaxError || error instanceof RangeError) {
      console.error(`tee: chunk stream not decoded after ${messages} messages: ${error.message}`);
    }
  } finally {
    for (const sink of sinks) sink.close();
    await Promise.all(answers);
    try {
      client.close();
    } catch {
      // already closed
    }
  }
}

const listener = Deno.listen({ hostname: "127.0.0.1", port });
console.log(JSON.stringify({ port }));
for await (const client of listener) void tee(client);
