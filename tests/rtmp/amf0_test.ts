import {
  type AmfValue,
  decodeAmf0,
  encodeAmf0,
  encodeAmf0EcmaArray,
  MAX_AMF_DEPTH,
} from "../../src/rtmp/amf0.ts";
import { hex } from "../helpers/bytes.ts";
import { assertEquals, assertThrows } from "../helpers/assert.ts";

/** Wire bytes and the value they stand for, both ways. */
const FIXTURES: { name: string; bytes: string; value: AmfValue }[] = [
  { name: "number 1", bytes: "00 3f f0 00 00 00 00 00 00", value: 1 },
  { name: "boolean true", bytes: "01 01", value: true },
  { name: "string 'live'", bytes: "02 00 04 6c 69 76 65", value: "live" },
  { name: "empty string", bytes: "02 00 00", value: "" },
  { name: "null", bytes: "05", value: null },
  { name: "undefined", bytes: "06", value: undefined },
  {
    name: "object {app: 'live'}",
    bytes: "03 00 03 61 70 70 02 00 04 6c 69 76 65 00 00 09",
    value: { app: "live" },
  },
  { name: "strict array [null]", bytes: "0a 00 00 00 01 05", value: [null] },
];

Deno.test("encodeAmf0() and decodeAmf0() agree with the byte fixtures", () => {
  for (const fixture of FIXTURES) {
    assertEquals(encodeAmf0(fixture.value), hex(fixture.bytes), `encode ${fixture.name}`);
    assertEquals(decodeAmf0(hex(fixture.bytes)), [fixture.value], `decode ${fixture.name}`);
  }
});

Deno.test("decodeAmf0() reads an ECMA array, a date and a long string", () => {
  const ecma = encodeAmf0EcmaArray({ width: 1280, height: 720 });
  assertEquals(ecma[0], 0x08);
  assertEquals(decodeAmf0(ecma), [{ width: 1280, height: 720 }]);
  const date = new Uint8Array(11);
  date[0] = 0x0b;
  new DataView(date.buffer).setFloat64(1, 1_300_000_000_000);
  assertEquals((decodeAmf0(date)[0] as Date).getTime(), 1_300_000_000_000);
  assertEquals(encodeAmf0(new Date(1_300_000_000_000)), date);
  const long = "x".repeat(70_000);
  assertEquals(decodeAmf0(encodeAmf0(long)), [long]);
});

Deno.test("decodeAmf0() round-trips a connect command", () => {
  const values: AmfValue[] = [
    "connect",
    1,
    { app: "live", flashVer: "FMLE/3.0", tcUrl: "rtmp://h/live", fpad: false, audioCodecs: 3191 },
  ];
  assertEquals(decodeAmf0(encodeAmf0(...values)), values);
});

Deno.test("decodeAmf0() rejects truncated and unknown input with SyntaxError", () => {
  const bad: [string, string][] = [
    ["number cut short", "00 3f f0"],
    ["string longer than the bytes", "02 00 10 61"],
    ["object without an end marker", "03 00 01 61 05"],
    ["unknown marker 0x42", "42"],
    ["reference marker (not supported)", "07 00 01"],
  ];
  for (const [what, bytes] of bad) {
    try {
      assertThrows(() => decodeAmf0(hex(bytes)), SyntaxError);
    } catch (error) {
      throw new Error(`${what}: ${(error as Error).message}`);
    }
  }
});

Deno.test("decodeAmf0() refuses nesting deeper than the limit instead of overflowing the stack", () => {
  const depth = 100_000;
  const bytes = new Uint8Array(depth * 4);
  for (let i = 0; i < depth; i++) bytes.set([0x03, 0x00, 0x01, 0x61], i * 4);
  assertThrows(() => decodeAmf0(bytes), SyntaxError, `deeper than ${MAX_AMF_DEPTH}`);
  const arrays = new Uint8Array(depth * 5);
  for (let i = 0; i < depth; i++) arrays.set([0x0a, 0, 0, 0, 1], i * 5);
  assertThrows(() => decodeAmf0(arrays), SyntaxError, "deeper");
});

Deno.test("decodeAmf0() does not trust a declared strict array length", () => {
  assertThrows(() => decodeAmf0(hex("0a ff ff ff ff")), SyntaxError, "exceeds");
});
