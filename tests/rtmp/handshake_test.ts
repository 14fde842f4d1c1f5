import {
  createClientC1,
  createServerHandshake,
  digestOffset,
  findClientDigest,
  HANDSHAKE_SIZE,
  verifyServerDigest,
} from "../../src/rtmp/handshake.ts";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";

const fixed = { time: 0x01020304, fillRandom: (bytes: Uint8Array) => bytes.fill(0x5a) };

function plainC0C1(): Uint8Array {
  const c0c1 = new Uint8Array(1 + HANDSHAKE_SIZE);
  c0c1[0] = 3;
  for (let i = 9; i < c0c1.length; i++) c0c1[i] = i & 0xff;
  return c0c1;
}

Deno.test("createServerHandshake() answers a plain C1 with version 0 and an echo in S2", () => {
  const c0c1 = plainC0C1();
  const out = createServerHandshake(c0c1, fixed);
  assertEquals(out.length, 1 + 2 * HANDSHAKE_SIZE);
  assertEquals(out[0], 3);
  assertEquals([...out.subarray(1, 9)], [1, 2, 3, 4, 0, 0, 0, 0], "S1 time then zero version");
  assertEquals(out.subarray(1 + HANDSHAKE_SIZE), c0c1.subarray(1), "S2 echoes C1");
});

Deno.test("createServerHandshake() answers a digest C1 with an S1 and S2 FFmpeg can verify", () => {
  for (const scheme of [0, 1] as const) {
    const c1 = createClientC1(scheme, fixed);
    assertEquals(findClientDigest(c1)?.scheme, scheme);
    const out = createServerHandshake(new Uint8Array([3, ...c1]), fixed);
    const s1 = out.subarray(1, 1 + HANDSHAKE_SIZE);
    assert(s1[4]! >= 3, "S1 version must announce the digest form");
    assertEquals(verifyServerDigest(c1, s1, out.subarray(1 + HANDSHAKE_SIZE)), undefined);
  }
});

Deno.test("findClientDigest() treats a C1 with a wrong digest as plain", () => {
  const c1 = createClientC1(1, fixed);
  c1[digestOffset(c1, 1)]! ^= 0xff;
  assertEquals(findClientDigest(c1), undefined);
});

Deno.test("createServerHandshake() rejects other versions and short input with RangeError", () => {
  const rtmpe = plainC0C1();
  rtmpe[0] = 6;
  assertThrows(() => createServerHandshake(rtmpe), RangeError, "version 6");
  assertThrows(() => createServerHandshake(new Uint8Array(100)), RangeError, "1537");
});
