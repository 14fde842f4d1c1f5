import {
  ChunkDecoder,
  ChunkEncoder,
  MessageType,
  type OutgoingMessage,
  type RtmpMessage,
} from "../../src/rtmp/chunk.ts";
import { setChunkSize } from "../../src/rtmp/messages.ts";
import { hex } from "../helpers/bytes.ts";
import { assertEquals, assertThrows } from "../helpers/assert.ts";

function decodeAll(bytes: Uint8Array, decoder = new ChunkDecoder(), split = 0): RtmpMessage[] {
  const out: RtmpMessage[] = [];
  if (split <= 0) decoder.push(bytes, (m) => out.push(m));
  else {
    for (let i = 0; i < bytes.length; i += split) {
      decoder.push(bytes.subarray(i, i + split), (m) => out.push(m));
    }
  }
  return out;
}

function message(overrides: Partial<OutgoingMessage> & { payload: Uint8Array }): OutgoingMessage {
  return { chunkStreamId: 4, typeId: MessageType.Audio, timestamp: 0, streamId: 1, ...overrides };
}

Deno.test("ChunkDecoder.push() decodes the four header types from byte fixtures", () => {
  const bytes = hex(`
    04 000064 000002 08 01000000 aabb
    44 000010 000003 09 ccddee
    84 000005 112233
  `);
  const got = decodeAll(bytes).map((
    m,
  ) => [m.chunkStreamId, m.typeId, m.timestamp, m.streamId, [...m.payload]]);
  assertEquals(got, [
    [4, 8, 100, 1, [0xaa, 0xbb]], // type 0: absolute 100
    [4, 9, 116, 1, [0xcc, 0xdd, 0xee]], // type 1: +16, new length and type
    [4, 9, 121, 1, [0x11, 0x22, 0x33]], // type 2: +5, split into a type 3 continuation
  ]);
});

Deno.test("ChunkDecoder.push() applies a type-3 start with the last delta, as the specification says", () => {
  // Type 0 at 1000 (length 1), then type 3 starting a new message: delta = 1000 again.
  const bytes = hex("04 0003e8 000001 08 01000000 aa c4 bb");
  const got = decodeAll(bytes).map((m) => [m.timestamp, [...m.payload]]);
  assertEquals(got, [[1000, [0xaa]], [2000, [0xbb]]]);
  // After a type 2 delta of 20, a type-3 start adds 20.
  const deltas = hex("04 000000 000001 08 01000000 aa 84 000014 bb c4 cc");
  assertEquals(decodeAll(deltas).map((m) => m.timestamp), [0, 20, 40]);
});

Deno.test("ChunkDecoder.push() reassembles a message split over chunks and over reads", () => {
  const payload = new Uint8Array(1000).map((_, i) => i & 0xff);
  const encoder = new ChunkEncoder(128);
  const bytes = encoder.encode(message({ payload, typeId: MessageType.Video, timestamp: 40 }));
  for (const split of [0, 1, 3, 7, 128, 129, 999]) {
    const got = decodeAll(bytes, new ChunkDecoder(), split);
    assertEquals(got.length, 1, `split ${split}`);
    assertEquals(got[0]!.payload, payload, `split ${split}`);
    assertEquals(got[0]!.timestamp, 40);
  }
});

Deno.test("ChunkDecoder.push() handles extended timestamp, repeated or omitted on type-3 chunks", () => {
  // 200 bytes at chunk size 128: type 0 with 0xFFFFFF, extended 0x01000000, then a type 3 chunk.
  const body = new Uint8Array(200).fill(7);
  const head = hex("04 ffffff 0000c8 09 01000000 01000000");
  const withRepeat = new Uint8Array([
    ...head,
    ...body.subarray(0, 128),
    0xc4,
    1,
    0,
    0,
    0,
    ...body.subarray(128),
  ]);
  const withoutRepeat = new Uint8Array([
    ...head,
    ...body.subarray(0, 128),
    0xc4,
    ...body.subarray(128),
  ]);
  for (const [name, bytes] of [["repeated", withRepeat], ["omitted", withoutRepeat]] as const) {
    const got = decodeAll(bytes);
    assertEquals(got.length, 1, name);
    assertEquals(got[0]!.timestamp, 0x01000000, name);
    assertEquals(got[0]!.payload, body, name);
  }
});

Deno.test("ChunkEncoder.encode() writes extended timestamps on every chunk and round-trips", () => {
  const encoder = new ChunkEncoder(128);
  const payload = new Uint8Array(300).fill(1);
  const messages = [
    message({ payload, timestamp: 0x01000000 }),
    message({ payload, timestamp: 0x01000028 }),
    message({ payload: payload.subarray(0, 10), timestamp: 0xfffffff0 }),
    message({ payload: payload.subarray(0, 10), timestamp: 5 }), // wrapped or reset: type 0 again
  ];
  const bytes = encoder.encode(...messages);
  const got = decodeAll(bytes, new ChunkDecoder(), 5);
  assertEquals(got.map((m) => m.timestamp), [0x01000000, 0x01000028, 0xfffffff0, 5]);
  // First message: header 12 + ext 4, 3 chunks, the two continuation chunks carry 1 + 4 bytes.
  assertEquals(bytes[0], 0x04);
  assertEquals([...bytes.subarray(12, 16)], [1, 0, 0, 0]);
  assertEquals([...bytes.subarray(16 + 128, 16 + 128 + 5)], [0xc4, 1, 0, 0, 0]);
});

Deno.test("ChunkEncoder.encode() splits a message only past the chunk size, from byte fixtures", () => {
  const encoder = new ChunkEncoder(4);
  const bytes = encoder.encode(
    message({ payload: new Uint8Array([1, 2, 3, 4]), timestamp: 0x10 }),
    message({ payload: new Uint8Array([5, 6, 7, 8, 9]), timestamp: 0x20 }),
    message({ payload: new Uint8Array([]), timestamp: 0x30 }),
  );
  assertEquals(
    bytes,
    hex(
      // type 0: exactly one chunk of 4
      "04 000010 000004 08 01000000 01020304" +
        // type 1 (length changed), delta 0x10: 4 bytes, then a type-3 chunk with the fifth
        "44 000010 000005 08 05060708 c4 09" +
        // type 1 again, empty: a header and no body
        "44 000010 000000 08",
    ),
  );
});

Deno.test("ChunkEncoder.encode() writes 1-, 2- and 3-byte chunk stream ids", () => {
  const encoder = new ChunkEncoder();
  for (const id of [2, 63, 64, 319, 320, 65599]) {
    const bytes = encoder.encode(
      message({ chunkStreamId: id, payload: new Uint8Array([id & 0xff]) }),
    );
    const got = decodeAll(bytes, new ChunkDecoder({ maxChunkStreams: 10 }));
    assertEquals(got[0]!.chunkStreamId, id);
  }
});

Deno.test("ChunkDecoder.push() applies Set Chunk Size and Abort where they arrive", () => {
  const encoder = new ChunkEncoder(128);
  const setSize = {
    chunkStreamId: 2,
    typeId: MessageType.SetChunkSize,
    timestamp: 0,
    streamId: 0,
    payload: hex("00 00 10 00"),
  };
  const big = new Uint8Array(3000).fill(9);
  const bytes = encoder.encode(setSize, message({ payload: big }));
  assertEquals(encoder.chunkSize, 4096);
  const decoder = new ChunkDecoder();
  const got = decodeAll(bytes, decoder);
  assertEquals(decoder.chunkSize, 4096);
  assertEquals(got[1]!.payload.length, 3000);
  // Abort drops the partial message on chunk stream 4.
  const partial = hex("04 000000 000100 08 01000000");
  const abort = hex("02 000000 000004 02 00000000 00000004");
  const fresh = hex("04 000000 000001 08 01000000 ee");
  const aborted = decodeAll(
    new Uint8Array([...partial, ...new Uint8Array(128), ...abort, ...fresh]),
  );
  assertEquals(aborted.map((m) => m.typeId), [MessageType.Abort, MessageType.Audio]);
  assertEquals([...aborted[1]!.payload], [0xee]);
});

Deno.test("ChunkDecoder.push() rejects hostile chunk streams with SyntaxError or RangeError", () => {
  const cases: [string, Uint8Array, new (...args: never[]) => Error, string][] = [
    ["type 3 with no earlier header", hex("c4 00"), SyntaxError, "no earlier header"],
    [
      "type 1 with no earlier header",
      hex("44 000000 000001 08 00"),
      SyntaxError,
      "no earlier header",
    ],
    [
      "chunk size 1 (CPU amplification)",
      hex("02 000000 000004 01 00000000 00000001"),
      RangeError,
      "below the minimum",
    ],
    [
      "chunk size with the top bit set",
      hex("02 000000 000004 01 00000000 ffffffff"),
      SyntaxError,
      "top bit",
    ],
    [
      "message longer than the limit",
      hex("04 000000 ffffff 09 01000000"),
      RangeError,
      "exceeds the limit",
    ],
    [
      "new header before the message ended",
      new Uint8Array([
        ...hex("04 000000 000100 09 01000000"),
        ...new Uint8Array(128),
        ...hex("04 000000 000001 09 01000000 00"),
      ]),
      SyntaxError,
      "before its previous",
    ],
  ];
  for (const [name, bytes, type, text] of cases) {
    const decoder = new ChunkDecoder({ maxMessageSize: 1024 * 1024 });
    try {
      assertThrows(() => decodeAll(bytes, decoder), type, text);
    } catch (error) {
      throw new Error(`${name}: ${(error as Error).message}`);
    }
  }
});

Deno.test("ChunkDecoder.push() caps chunk streams per connection", () => {
  const decoder = new ChunkDecoder({ maxChunkStreams: 8 });
  const parts: number[] = [];
  for (let id = 3; id < 20; id++) parts.push(id, 0, 0, 0, 0, 0, 0, 8, 1, 0, 0, 0);
  assertThrows(
    () => decodeAll(new Uint8Array(parts), decoder),
    RangeError,
    "more than 8 chunk streams",
  );
});

Deno.test("ChunkDecoder.push() allocates only as the bytes of a large declared message arrive", () => {
  const decoder = new ChunkDecoder({ maxMessageSize: 16 * 1024 * 1024 });
  decodeAll(hex("04 000000 ffffff 09 01000000 00 00 00 00"), decoder);
  // 16 MiB declared, 4 bytes sent: the decoder holds far less than the declared length.
  assertEquals(decoder.bufferedBytes <= 64 * 1024, true);
});

Deno.test("ChunkDecoder.push() gives each small message bytes of its own, cut from small slabs", () => {
  const encoder = new ChunkEncoder();
  const sent = Array.from(
    { length: 300 },
    (_, i) => message({ timestamp: i, payload: new Uint8Array(1000 + i).fill(i & 0xff) }),
  );
  const decoder = new ChunkDecoder();
  const received = decodeAll(encoder.encode(...sent), decoder, 777);
  // Every payload intact after all the others were decoded: no piece of a slab is reused.
  assertEquals(received.map((m) => m.payload), sent.map((m) => m.payload));
  assertEquals(decoder.slabBytes, 64 * 1024, "a busy connection's slabs grow to 64 KiB");
  // A connection that only gets small control messages (a destination's) keeps a small slab.
  const quiet = new ChunkDecoder();
  decodeAll(hex("02 000000 000004 03 00000000 00001000".repeat(50)), quiet);
  assertEquals(quiet.slabBytes, 4 * 1024);
  // The largest piece, in one chunk, as a connection's first message: the first slab is made
  // big enough for it.
  const [, first] = decodeAll(
    new ChunkEncoder().encode(
      setChunkSize(64 * 1024),
      message({ timestamp: 500, payload: new Uint8Array(16 * 1024).fill(9) }),
    ),
  );
  assertEquals(first!.payload, new Uint8Array(16 * 1024).fill(9));
  // Large messages (keyframes) still get a buffer of their own, not a slab piece.
  const [big] = decodeAll(
    encoder.encode(message({ timestamp: 400, payload: new Uint8Array(100_000).fill(7) })),
    decoder,
  );
  assertEquals(big!.payload.buffer.byteLength, 100_000);
});
