/**
 * The Aggregate message codec against hand-written bytes: each record is
 * `type size(3) timestamp(3) extension(1) stream(3) | data | back pointer(4)`.
 */

import { type AggregatePart, splitAggregate } from "../../src/rtmp/aggregate.ts";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { hex } from "../helpers/bytes.ts";

function split(body: Uint8Array, timestamp: number): { type: number; ts: number; data: string }[] {
  const parts: AggregatePart[] = [];
  splitAggregate(body, timestamp, (part) => parts.push(part));
  return parts.map((part) => ({
    type: part.typeId,
    ts: part.timestamp,
    data: Array.from(part.payload, (byte) => byte.toString(16).padStart(2, "0")).join(""),
  }));
}

const GOOD: {
  name: string;
  body: string;
  timestamp: number;
  parts: { type: number; ts: number; data: string }[];
}[] = [
  {
    name: "two parts, first at the aggregate's timestamp",
    body: "09 000002 000064 00 000000 1701 0000000d" +
      "08 000003 000085 00 000000 af0121 0000000e",
    timestamp: 100,
    parts: [{ type: 9, ts: 100, data: "1701" }, { type: 8, ts: 133, data: "af0121" }],
  },
  {
    name: "three parts moved onto the aggregate's timeline (offset from the first kept)",
    body: "12 000001 0003e8 00 000001 05 0000000c" +
      "09 000002 000406 00 000001 2701 0000000d" +
      "08 000000 000410 00 000001 0000000b",
    timestamp: 5_000,
    parts: [
      { type: 18, ts: 5_000, data: "05" },
      { type: 9, ts: 5_030, data: "2701" },
      { type: 8, ts: 5_040, data: "" },
    ],
  },
  {
    name: "the extension byte is the upper 8 bits of each part's timestamp",
    // 0x00fffff0 then 0x01000010: 32 ms apart across the 24-bit boundary.
    body: "09 000001 fffff0 00 000000 17 0000000c" +
      "09 000001 000010 01 000000 27 0000000c",
    timestamp: 0x00fffff0,
    parts: [{ type: 9, ts: 0x00fffff0, data: "17" }, { type: 9, ts: 0x01000010, data: "27" }],
  },
  {
    name: "an aggregate timestamp above 24 bits with parts that start at zero",
    body: "09 000001 000000 00 000000 17 0000000c" +
      "09 000001 000021 00 000000 27 0000000c",
    timestamp: 0x12345678,
    parts: [{ type: 9, ts: 0x12345678, data: "17" }, { type: 9, ts: 0x12345699, data: "27" }],
  },
  {
    name: "part timestamps wrapping at 2^32 keep their offset",
    body: "09 000001 fffff0 ff 000000 17 0000000c" +
      "09 000001 000010 00 000000 27 0000000c",
    timestamp: 1_000,
    parts: [{ type: 9, ts: 1_000, data: "17" }, { type: 9, ts: 1_032, data: "27" }],
  },
  {
    name: "the result wraps at 2^32 when the aggregate sits just below it",
    body: "08 000001 000000 00 000000 af 0000000c" +
      "08 000001 000040 00 000000 af 0000000c",
    timestamp: 0xffffffe0,
    parts: [{ type: 8, ts: 0xffffffe0, data: "af" }, { type: 8, ts: 0x20, data: "af" }],
  },
  {
    name: "a wrong back pointer is tolerated (nginx-rtmp, SRS, FFmpeg and red5 ignore it)",
    body: "09 000001 000000 00 000000 17 00000001" +
      "09 000001 000021 00 000000 27 ffffffff",
    timestamp: 0,
    parts: [{ type: 9, ts: 0, data: "17" }, { type: 9, ts: 33, data: "27" }],
  },
  {
    name: "an empty body has no parts",
    body: "",
    timestamp: 7,
    parts: [],
  },
];

for (const { name, body, timestamp, parts } of GOOD) {
  Deno.test(`splitAggregate() splits: ${name}`, () => {
    assertEquals(split(hex(body), timestamp), parts);
  });
}

const BAD: { name: string; body: string; error: typeof SyntaxError; includes: string }[] = [
  {
    name: "a header cut short",
    body: "09 000001 000000 00 000000 17 0000000c 09 0000",
    error: SyntaxError,
    includes: "sub-message 1 at byte 16 of a 19-byte aggregate: header truncated (3 of 11",
  },
  {
    name: "a data size past the end",
    body: "09 000010 000000 00 000000 1701 0000001b",
    error: RangeError,
    includes: "16 bytes of data run past the end",
  },
  {
    name: "a data size that swallows the back pointer",
    body: "09 000006 000000 00 000000 1701 0000000d",
    error: SyntaxError,
    includes: "back pointer truncated (0 of 4 bytes)",
  },
  {
    name: "a missing back pointer",
    body: "09 000002 000000 00 000000 1701",
    error: SyntaxError,
    includes: "back pointer truncated (0 of 4 bytes)",
  },
  {
    name: "a back pointer cut short",
    body: "09 000002 000000 00 000000 1701 0000",
    error: SyntaxError,
    includes: "back pointer truncated (2 of 4 bytes)",
  },
  {
    name: "a nested aggregate",
    body: "16 000010 000000 00 000000 09 000001 000000 00 000000 17 0000000c 0000001b",
    error: SyntaxError,
    includes: "nested aggregate",
  },
  {
    name: "a command inside",
    body: "14 000001 000000 00 000000 05 0000000c",
    error: SyntaxError,
    includes: "type 20 (only audio 8, video 9 and data 18",
  },
  {
    name: "a protocol control message inside",
    body: "09 000001 000000 00 000000 17 0000000c 01 000004 000000 00 000000 00001000 0000000f",
    error: SyntaxError,
    includes: "sub-message 1 at byte 16 of a 35-byte aggregate: type 1",
  },
  {
    name: "AMF3 data inside",
    body: "0f 000001 000000 00 000000 00 0000000c",
    error: SyntaxError,
    includes: "type 15",
  },
];

for (const { name, body, error, includes } of BAD) {
  Deno.test(`splitAggregate() rejects ${name}`, () => {
    assertThrows(() => split(hex(body), 0), error, includes);
  });
}

Deno.test("splitAggregate() delivers nothing from a body that fails after good parts", () => {
  const parts: AggregatePart[] = [];
  const body = hex("09 000001 000000 00 000000 17 0000000c 14 000001 000000 00 000000 05 0000000c");
  assertThrows(() => splitAggregate(body, 0, (part) => parts.push(part)), SyntaxError, "type 20");
  assertEquals(parts.length, 0);
});

Deno.test("splitAggregate() hands out views of the body, not copies", () => {
  const body = hex(
    "09 000002 000000 00 000000 1701 0000000d 08 000001 000000 00 000000 af 0000000c",
  );
  const parts: AggregatePart[] = [];
  splitAggregate(body, 0, (part) => parts.push(part));
  assertEquals(parts.map((part) => part.payload.byteOffset), [11, 28]);
  assert(parts.every((part) => part.payload.buffer === body.buffer), "payloads share the body");
});
