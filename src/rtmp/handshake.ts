/**
 * The server side of the RTMP handshake: given C0+C1, produce S0+S1+S2. Pure, no socket.
 *
 * Two forms exist. The plain one (RTMP specification 5.2) has a zero version in S1 and S2 echoes
 * C1. The digest form (Flash Player 9+, FFmpeg) embeds an HMAC-SHA256 digest in C1; a server that
 * answers with a digest of its own must make S1 and S2 verifiable, because FFmpeg as a player checks
 * both when S1's version says so. We answer a client that sent a valid digest with the digest form
 * and everyone else with the plain form.
 *
 * @module
 */

import { createHmac } from "node:crypto";

/** Size of C1, C2, S1 and S2. */
export const HANDSHAKE_SIZE = 1536;

/** The only RTMP version byte (C0/S0) we speak: plain, unencrypted RTMP. */
export const RTMP_VERSION = 3;

const DIGEST_LENGTH = 32;

const COMMON_KEY_TAIL = [
  0xf0,
  0xee,
  0xc2,
  0x4a,
  0x80,
  0x68,
  0xbe,
  0xe8,
  0x2e,
  0x00,
  0xd0,
  0xd1,
  0x02,
  0x9e,
  0x7e,
  0x57,
  0x6e,
  0xec,
  0x5d,
  0x2d,
  0x29,
  0x80,
  0x6f,
  0xab,
  0x93,
  0xb8,
  0xe6,
  0x36,
  0xcf,
  0xeb,
  0x31,
  0xae,
];

const encoder = new TextEncoder();
/** "Genuine Adobe Flash Player 001": the first 30 bytes sign C1. */
const PLAYER_KEY = new Uint8Array([
  ...encoder.encode("Genuine Adobe Flash Player 001"),
  ...COMMON_KEY_TAIL,
]);
const PLAYER_KEY_OPEN_LENGTH = 30;
/** "Genuine Adobe Flash Media Server 001": the first 36 bytes sign S1, all 68 key S2. */
const SERVER_KEY = new Uint8Array([
  ...encoder.encode("Genuine Adobe Flash Media Server 001"),
  ...COMMON_KEY_TAIL,
]);
const SERVER_KEY_OPEN_LENGTH = 36;

/** Version we claim in a digest S1 (FMS 4.5.0.1, as other servers do). */
const SERVER_VERSION = [0x04, 0x05, 0x00, 0x01];

/** Which digest layout a C1 used: where its 4 offset bytes live. */
export type DigestScheme = 0 | 1;

function hmacSha256(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const hmac = createHmac("sha256", key);
  for (const part of parts) hmac.update(part);
  return new Uint8Array(hmac.digest());
}

/** Offset of the 32-byte digest in a 1536-byte block for the given scheme. */
export function digestOffset(block: Uint8Array, scheme: DigestScheme): number {
  const base = scheme === 0 ? 772 : 8;
  const sum = block[base]! + block[base + 1]! + block[base + 2]! + block[base + 3]!;
  return (sum % 728) + base + 4;
}

function digestOf(block: Uint8Array, offset: number, key: Uint8Array): Uint8Array {
  return hmacSha256(
    key,
    block.subarray(0, offset),
    block.subarray(offset + DIGEST_LENGTH),
  );
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let difference = 0;
  for (let i = 0; i < a.length; i++) difference |= a[i]! ^ b[i]!;
  return difference === 0;
}

/**
 * Finds a valid client digest in C1. Returns its scheme and offset, or `undefined` when C1 carries
 * none (a plain-handshake client).
 */
export function findClientDigest(
  c1: Uint8Array,
): { scheme: DigestScheme; offset: number } | undefined {
  if (c1.length !== HANDSHAKE_SIZE) {
    throw new RangeError(`C1 must be ${HANDSHAKE_SIZE} bytes, got ${c1.length}`);
  }
  // A zero version means the client expects the plain handshake.
  if (c1[4] === 0 && c1[5] === 0 && c1[6] === 0 && c1[7] === 0) return undefined;
  const key = PLAYER_KEY.subarray(0, PLAYER_KEY_OPEN_LENGTH);
  for (const scheme of [1, 0] as const) {
    const offset = digestOffset(c1, scheme);
    const expected = digestOf(c1, offset, key);
    if (equalBytes(expected, c1.subarray(offset, offset + DIGEST_LENGTH))) {
      return { scheme, offset };
    }
  }
  return undefined;
}

/** Inputs a handshake response depends on besides C1, injectable for repeatable tests. */
export interface HandshakeEntropy {
  /** Milliseconds since our epoch, for S1's time field. */
  time: number;
  /** Fills a buffer with random bytes. */
  fillRandom(bytes: Uint8Array): void;
}

const defaultEntropy = (): HandshakeEntropy => ({
  time: Math.floor(performance.now()) >>> 0,
  fillRandom: (bytes) => {
    // getRandomValues takes at most 65536 bytes at once; our blocks are 1536.
    crypto.getRandomValues(bytes);
  },
});

/**
 * Builds S0+S1+S2 (3073 bytes) in answer to C0+C1 (1537 bytes).
 *
 * Throws `RangeError` when C0 asks for a version other than 3 (RTMPE, RTMPT framing) or the input
 * is not 1537 bytes long.
 */
export function createServerHandshake(
  c0c1: Uint8Array,
  entropy: HandshakeEntropy = defaultEntropy(),
): Uint8Array {
  if (c0c1.length !== 1 + HANDSHAKE_SIZE) {
    throw new RangeError(`C0+C1 must be ${1 + HANDSHAKE_SIZE} bytes, got ${c0c1.length}`);
  }
  const version = c0c1[0]!;
  if (version !== RTMP_VERSION) {
    throw new RangeError(`unsupported RTMP version ${version} in C0 (only 3 is served)`);
  }
  const c1 = c0c1.subarray(1);
  const out = new Uint8Array(1 + 2 * HANDSHAKE_SIZE);
  out[0] = RTMP_VERSION;
  const s1 = out.subarray(1, 1 + HANDSHAKE_SIZE);
  const s2 = out.subarray(1 + HANDSHAKE_SIZE);
  const s1View = new DataView(s1.buffer, s1.byteOffset, s1.byteLength);
  entropy.fillRandom(s1.subarray(8));
  s1View.setUint32(0, entropy.time >>> 0);

  const client = findClientDigest(c1);
  if (client === undefined) {
    // Plain: S1 version zero (so FFmpeg does not demand a digest), S2 echoes C1.
    s1View.setUint32(4, 0);
    s2.set(c1);
    return out;
  }

  s1.set(SERVER_VERSION, 4);
  const s1Offset = digestOffset(s1, client.scheme);
  s1.set(
    digestOf(s1, s1Offset, SERVER_KEY.subarray(0, SERVER_KEY_OPEN_LENGTH)),
    s1Offset,
  );

  entropy.fillRandom(s2);
  const clientDigest = c1.subarray(client.offset, client.offset + DIGEST_LENGTH);
  const s2Key = hmacSha256(SERVER_KEY, clientDigest);
  const signed = HANDSHAKE_SIZE - DIGEST_LENGTH;
  s2.set(hmacSha256(s2Key, s2.subarray(0, signed)), signed);
  return out;
}

/**
 * Builds a digest-form C1, as Flash Player and FFmpeg send it. Used by tests and benchmarks that
 * act as a client.
 */
export function createClientC1(
  scheme: DigestScheme,
  entropy: HandshakeEntropy = defaultEntropy(),
): Uint8Array {
  const c1 = new Uint8Array(HANDSHAKE_SIZE);
  entropy.fillRandom(c1);
  new DataView(c1.buffer).setUint32(0, entropy.time >>> 0);
  c1.set([0x80, 0x00, 0x07, 0x02], 4);
  const offset = digestOffset(c1, scheme);
  c1.set(digestOf(c1, offset, PLAYER_KEY.subarray(0, PLAYER_KEY_OPEN_LENGTH)), offset);
  return c1;
}

/**
 * Checks a digest-form S1+S2 the way FFmpeg does as a player. Returns a reason string on failure,
 * `undefined` when both verify.
 */
export function verifyServerDigest(
  c1: Uint8Array,
  s1: Uint8Array,
  s2: Uint8Array,
): string | undefined {
  const client = findClientDigest(c1);
  if (client === undefined) return "C1 has no digest";
  const s1Offset = digestOffset(s1, client.scheme);
  const expectedS1 = digestOf(s1, s1Offset, SERVER_KEY.subarray(0, SERVER_KEY_OPEN_LENGTH));
  if (!equalBytes(expectedS1, s1.subarray(s1Offset, s1Offset + DIGEST_LENGTH))) {
    return "S1 digest does not verify";
  }
  const s2Key = hmacSha256(SERVER_KEY, c1.subarray(client.offset, client.offset + DIGEST_LENGTH));
  const signed = HANDSHAKE_SIZE - DIGEST_LENGTH;
  if (!equalBytes(hmacSha256(s2Key, s2.subarray(0, signed)), s2.subarray(signed))) {
    return "S2 signature does not verify";
  }
  return undefined;
}
