/**
 * The reliability suite's tools: paced publishers that fingerprint every media packet they send
 * per track, checked against what the sinks of `../helpers/recording_sink.ts` received, so "no
 * packet lost" is checked packet by packet; the relay as a real process (so it can be killed and
 * measured); a summary of everything the suite tried.
 *
 * `NEUSTREAM_SOAK=long` (set by `deno task soak`) selects the long form; `NEUSTREAM_SOAK_SECONDS`
 * (default 600) is how long its load runs and how long its fuzzer may take.
 *
 * @module
 */

import { readFlvTags } from "../../bench/flv_file.ts";
import { cpuSeconds, processTree, pssBytes } from "../../bench/proc.ts";
import type { MediaPacket } from "../../src/media/flv.ts";
import { mediaMessage } from "../../src/rtmp/messages.ts";
import { assert } from "../helpers/assert.ts";
import { fixture } from "../helpers/media.ts";
import { sleep } from "../helpers/process.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";
import { TrackLog } from "../helpers/recording_sink.ts";

export const LONG = Deno.env.get("NEUSTREAM_SOAK") === "long";

function soakSeconds(): number {
  const text = Deno.env.get("NEUSTREAM_SOAK_SECONDS") ?? "600";
  const seconds = Number(text);
  if (!Number.isFinite(seconds) || seconds < 10) {
    throw new RangeError(`NEUSTREAM_SOAK_SECONDS must be a number of seconds >= 10, not ${text}`);
  }
  return seconds;
}

/**
 * How big each part of the suite is. The gate's short form (every `deno task test`) must pass on
 * a fresh 2-core machine busy with other work, every time, so it is sized for a wide margin there:
 * the load part at 6 streams × 2 destinations is 12 FFmpegs and 54 Mbit/s through the relay,
 * against 90 FFmpegs and 360 Mbit/s at full size, which lost the end of streams on such a machine
 * when two cores were shared by 90 FFmpegs, 30 publishers and the sinks. The soak is the full
 * size, for a quiet machine.
 */
export const SIZE = LONG
  ? {
    loadStreams: 30,
    loadDestinations: 3,
    loadSeconds: soakSeconds(),
    outageSeconds: 30,
    halfOpen: 1_000,
    floodSpeed: 33,
    fuzzCases: 100_000,
    fuzzSeconds: soakSeconds(),
    /** As a platform might: the soak keeps FFmpeg's one known race with a ping at its close. */
    sinkPingMs: 30_000,
  }
  : {
    loadStreams: 6,
    loadDestinations: 2,
    loadSeconds: 20,
    outageSeconds: 10,
    halfOpen: 200,
    floodSpeed: 10,
    fuzzCases: 2_000,
    fuzzSeconds: 40,
    /**
     * Past the load's end: a ping arriving between FFmpeg's last write and its close can reset the
     * connection and lose its last packets (README, "Reliability suite"), a race left to the soak;
     * the gate must pass every time.
     */
    sinkPingMs: 120_000,
  };

/** Details of every loss found, for the failure message. */
export const lossReports: string[] = [];
/** Every sink and track whose last packet is not the last one sent: the stream's end was cut. */
export const missingEnds: string[] = [];

/**
 * What a sink that stayed up must hold: per track, the tail of what was sent, starting at the
 * point the destination joined and missing nothing after it. Returns packets lost (0 when whole).
 */
export function lostPackets(sent: TrackLog, received: TrackLog | undefined, label: string): number {
  assert(
    received !== undefined && received.video.length > 0,
    `${label}: the sink received no video`,
  );
  let lost = 0;
  for (const track of ["audio", "video"] as const) {
    const got = received[track];
    const all = sent[track];
    // The sent sequence loops the same fixture, so locate the run from the end: it must be the
    // last got.length packets sent, exactly. A stream whose last packets never arrived would look
    // shifted by that much, every packet "lost": a run that matches exactly once the last one to
    // three sent are set aside is counted as those packets, missing at the end.
    const runEndsAt = (end: number) =>
      end - got.length >= 0 && got.every((fp, i) => fp === all[end - got.length + i]);
    const tailMissing = got.length === 0 || runEndsAt(all.length)
      ? 0
      : [1, 2, 3].find((missing) => runEndsAt(all.length - missing)) ?? 0;
    const start = all.length - tailMissing - got.length;
    let mismatches = tailMissing;
    let first = -1;
    for (let i = 0; i < got.length; i++) {
      if (got[i] !== all[start + i]) {
        mismatches++;
        if (first < 0) first = i;
      }
    }
    if (mismatches > 0 || start < 0) {
      lossReports.push(
        tailMissing > 0
          ? `${label} ${track}: sent ${all.length}, received ${got.length}, whole but for the last ${tailMissing} sent`
          : `${label} ${track}: sent ${all.length}, received ${got.length}, ${mismatches} differ from index ${first}` +
            ` (received[${first}] ${got[first]}, expected ${all[start + first]}; received ${
              got.indexOf(all[start + first]!)
            } has the expected one)`,
      );
    }
    lost += mismatches + Math.max(0, -start);
    if (all.length > 0 && got.at(-1) !== all.at(-1)) {
      missingEnds.push(
        `${label} ${track}: ends with ${got.slice(-3).join(" ")}, sent ended with ${
          all.slice(-3).join(" ")
        }`,
      );
    }
  }
  return lost;
}

let fixturePackets: Promise<MediaPacket[]> | undefined;

/** A 3 Mbit/s 720p H.264 + AAC encoding, 20 s, replayed in a loop by publishers. */
export function loadFixture(): Promise<MediaPacket[]> {
  fixturePackets ??= fixture({ seconds: 20, gop: 60, videoBitrate: "3M", size: "1280x720" }).then(
    readFlvTags,
  );
  return fixturePackets;
}

/** A publisher sending the fixture in real time, looping, recording what it sent per track. */
export class PacedPublisher {
  readonly key: string;
  readonly sent = new TrackLog();
  #client: TestRtmpClient | undefined;
  #running: Promise<void> | undefined;
  #stop = false;
  error: Error | undefined;

  /** `speed` > 1 sends faster than real time (a publisher flooding the relay). */
  constructor(key: string, readonly speed = 1) {
    this.key = key;
  }

  /** Connects, publishes and starts sending; resolves once the publish was accepted. */
  async start(port: number): Promise<void> {
    const packets = await loadFixture();
    const client = await TestRtmpClient.connect(port);
    this.#client = client;
    await client.handshake();
    const { streamId, code } = await client.publish(this.key);
    if (code !== "NetStream.Publish.Start") {
      throw new Error(`${this.key}: publish refused (${code})`);
    }
    this.#running = this.#send(client, streamId, packets).catch((error) => {
      if (!this.#stop) this.error = error;
    });
  }

  async #send(client: TestRtmpClient, streamId: number, packets: MediaPacket[]): Promise<void> {
    const period = packets.at(-1)!.timestamp + 33;
    const started = performance.now();
    for (let loop = 0; !this.#stop; loop++) {
      for (const packet of packets) {
        if (this.#stop) return;
        if (loop > 0 && (packet.sequenceHeader || packet.type === 18)) continue;
        const timestamp = packet.timestamp + loop * period;
        const wait = started + timestamp / this.speed - performance.now();
        if (wait > 0) await sleep(wait);
        if (this.#stop) return;
        await client.send(mediaMessage(packet, streamId, timestamp));
        this.sent.add(packet);
      }
    }
  }

  /** Stops cleanly (deleteStream, then an orderly close) and waits for the sender. */
  async stop(): Promise<void> {
    this.#stop = true;
    await this.#running;
    const client = this.#client;
    if (client) {
      await client.call(1, "deleteStream", null, 1).catch(() => {});
      await client.end();
    }
  }

  /** Stops sending but keeps the socket open and answers nothing: a silent network drop. */
  async freeze(): Promise<void> {
    this.#stop = true;
    await this.#running;
  }

  /** Closes a frozen connection (test clean-up). */
  close(): void {
    this.#client?.close();
  }

  /** Drops the connection without a goodbye. */
  kill(): void {
    this.#stop = true;
    this.#client?.close();
  }
}

/** Samples the relay's process tree (relay + FFmpeg) for memory and CPU. */
export class ResourceSampler {
  readonly samples: { at: number; pss: number }[] = [];
  #timer: ReturnType<typeof setInterval> | undefined;
  #pending: Promise<void> = Promise.resolve();
  readonly #root: number;
  #cpuStart = 0;
  #startedAt = 0;
  peakPss = 0;

  constructor(root: number) {
    this.#root = root;
  }

  async start(intervalMs: number): Promise<void> {
    this.#cpuStart = await cpuSeconds(await processTree(this.#root));
    this.#startedAt = performance.now();
    this.#timer = setInterval(() => {
      this.#pending = this.#pending.then(() => this.sample());
    }, intervalMs);
  }

  async sample(): Promise<void> {
    const pss = await pssBytes(await processTree(this.#root));
    this.samples.push({ at: performance.now(), pss });
    this.peakPss = Math.max(this.peakPss, pss);
  }

  /** Stops sampling; returns CPU seconds per wall second used since `start`. */
  async stop(): Promise<number> {
    clearInterval(this.#timer);
    await this.#pending;
    const cpu = await cpuSeconds(await processTree(this.#root));
    return (cpu - this.#cpuStart) / ((performance.now() - this.#startedAt) / 1000);
  }

  /** Least-squares slope of PSS in MiB per minute, over the samples after `skip`. */
  slopeMiBPerMinute(skip: number): number {
    const points = this.samples.slice(skip);
    if (points.length < 3) return 0;
    const xs = points.map((p) => (p.at - points[0]!.at) / 60_000);
    const ys = points.map((p) => p.pss / (1024 * 1024));
    const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
    const my = ys.reduce((a, b) => a + b, 0) / ys.length;
    let num = 0;
    let den = 0;
    for (let i = 0; i < xs.length; i++) {
      num += (xs[i]! - mx) * (ys[i]! - my);
      den += (xs[i]! - mx) ** 2;
    }
    return den === 0 ? 0 : num / den;
  }
}

/** One row of the suite's closing table. */
export interface SummaryRow {
  part: string;
  cases: number;
  faults: number;
  packetsLost: number;
  peakMemoryMiB: number;
  note: string;
}

export const summary: SummaryRow[] = [];

/** Deterministic PRNG (mulberry32): the same seed gives the same fuzz cases on every machine. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const INTERESTING = [0x00, 0x01, 0x02, 0x03, 0x3f, 0x40, 0x7f, 0x80, 0xc0, 0xfe, 0xff];

/**
 * One fuzz case from a captured client session: a prefix of it with 1 to 8 mutations (bit flips,
 * random or boundary bytes, insertions, deletions, duplicated slices). Mutations land mostly after
 * the handshake, where chunk headers, AMF commands and media live.
 */
export function mutateSession(capture: Uint8Array, random: () => number): Uint8Array {
  const handshakeEnd = 1 + 1536 * 2;
  const minLength = Math.min(capture.length, handshakeEnd + 64);
  const length = minLength +
    Math.floor(random() * (Math.min(capture.length, 64 * 1024) - minLength + 1));
  let bytes = capture.slice(0, length);
  const count = 1 + Math.floor(random() * 8);
  for (let m = 0; m < count; m++) {
    const inHandshake = random() < 0.15;
    const at = inHandshake ? Math.floor(random() * Math.min(bytes.length, handshakeEnd)) : Math.min(
      bytes.length - 1,
      handshakeEnd + Math.floor(random() * Math.max(1, bytes.length - handshakeEnd)),
    );
    const kind = Math.floor(random() * 6);
    if (kind === 0) bytes[at]! ^= 1 << Math.floor(random() * 8);
    else if (kind === 1) bytes[at] = Math.floor(random() * 256);
    else if (kind === 2) bytes[at] = INTERESTING[Math.floor(random() * INTERESTING.length)]!;
    else if (kind === 3) {
      const insert = new Uint8Array(1 + Math.floor(random() * 16)).map(() =>
        Math.floor(random() * 256)
      );
      bytes = new Uint8Array([...bytes.subarray(0, at), ...insert, ...bytes.subarray(at)]);
    } else if (kind === 4) {
      bytes = new Uint8Array([
        ...bytes.subarray(0, at),
        ...bytes.subarray(at + 1 + Math.floor(random() * 16)),
      ]);
    } else {
      const from = Math.floor(random() * bytes.length);
      const slice = bytes.slice(from, from + 1 + Math.floor(random() * 64));
      bytes = new Uint8Array([...bytes.subarray(0, at), ...slice, ...bytes.subarray(at)]);
    }
  }
  return bytes;
}

export function printSummary(): void {
  const header = [
    "part",
    "cases tried",
    "faults survived",
    "packets lost",
    "peak memory (MiB)",
    "note",
  ];
  const rows = summary.map((
    r,
  ) => [
    r.part,
    String(r.cases),
    String(r.faults),
    String(r.packetsLost),
    r.peakMemoryMiB.toFixed(0),
    r.note,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((cell, i) => cell.padEnd(widths[i]!)).join(" | ");
  console.log(
    `\nreliability summary (${LONG ? "long" : "short"} form)\n${line(header)}\n${
      widths.map((w) => "-".repeat(w)).join("-|-")
    }`,
  );
  for (const row of rows) console.log(line(row));
}

/** Every secret in every text: none may appear. Returns the offending secret, if any. */
export function findSecret(texts: Iterable<string>, secrets: Iterable<string>): string | undefined {
  const list = [...secrets];
  for (const text of texts) {
    for (const secret of list) if (text.includes(secret)) return secret;
  }
  return undefined;
}
