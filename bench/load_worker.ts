/**
 * A load generator process for `bench/run.ts`, so paced publishers and sinks do not share one
 * event loop with each other (at 100 streams × 3 destinations that is 300 Mbit/s in and 900 Mbit/s
 * out). It reuses the reliability suite's tools: `PacedPublisher` (the 3 Mbit/s fixture in real
 * time, fingerprinting what it sends) and `RecordingSink` (our own RTMP server, fingerprinting
 * what arrives per key and track).
 *
 * `deno run … load_worker.ts publish PORT SECONDS KEY…`: publishes every KEY to
 * `rtmp://127.0.0.1:PORT/live` (one after the other), prints `{"started": true}` once all are accepted, sends for
 * SECONDS, stops cleanly and prints `{"sent": {key: {audio, video}}}` (media packets sent).
 *
 * `deno run … load_worker.ts sink`: prints `{"port": N}`, then waits for one line on stdin,
 * `{"sent": …}` as the publishers printed it. It waits until nothing has arrived for 2 s (the
 * relay has flushed), compares every key's packets with what was sent and prints
 * `{"lost", "delivered", "expected", "missingStreams", "reports"}`, then exits.
 *
 * @module
 */

import {
  loadFixture,
  lossReports,
  lostPackets,
  PacedPublisher,
} from "../tests/reliability/harness.ts";
import { RecordingSink, TrackLog } from "../tests/helpers/recording_sink.ts";
import { sleep } from "../tests/helpers/process.ts";

export type SentCounts = Record<string, { audio: number; video: number }>;

export interface SinkReport {
  /** Packets missing or out of order (0 when every stream arrived whole, in order). */
  lost: number;
  delivered: number;
  expected: number;
  /** Keys sent but never seen at this sink. */
  missingStreams: number;
  reports: string[];
}

function line(value: unknown): void {
  console.log(JSON.stringify(value));
}

async function publish(port: number, seconds: number, keys: string[]): Promise<void> {
  const publishers = keys.map((key) => new PacedPublisher(key));
  // One after the other: with the ffmpeg engine each publish starts 3 FFmpegs, and 30 publishes
  // at once kept the relay from answering within the client's 5 s on a busy 2-core machine.
  for (const publisher of publishers) await publisher.start(port);
  line({ started: true });
  await sleep(seconds * 1000);
  await Promise.all(publishers.map((publisher) => publisher.stop()));
  const failed = publishers.find((publisher) => publisher.error !== undefined);
  if (failed) throw new Error(`${failed.key}: sending failed: ${failed.error}`);
  const sent: SentCounts = {};
  for (const publisher of publishers) {
    sent[publisher.key] = {
      audio: publisher.sent.audio.length,
      video: publisher.sent.video.length,
    };
  }
  line({ sent });
}

/** What a publisher of the looped fixture sent, rebuilt from its counts per track. */
function expectedLog(once: TrackLog, counts: { audio: number; video: number }): TrackLog {
  const log = new TrackLog();
  for (const track of ["audio", "video"] as const) {
    for (let i = 0; i < counts[track]; i++) log[track].push(once[track][i % once[track].length]!);
  }
  return log;
}

async function stdinLine(): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  for await (const chunk of Deno.stdin.readable) {
    text += decoder.decode(chunk, { stream: true });
    const end = text.indexOf("\n");
    if (end >= 0) return text.slice(0, end);
  }
  throw new Error("stdin closed before the sent counts arrived");
}

function receivedTotal(sink: RecordingSink): number {
  let total = 0;
  for (const log of sink.received.values()) total += log.count;
  return total;
}

async function sink(): Promise<void> {
  const once = new TrackLog();
  for (const packet of await loadFixture()) once.add(packet);
  await using recording = new RecordingSink();
  line({ port: recording.port });
  const { sent } = JSON.parse(await stdinLine()) as { sent: SentCounts };
  // The relay flushes its queues after the publishers left: wait until the flow has stopped.
  for (let last = -1; receivedTotal(recording) !== last;) {
    last = receivedTotal(recording);
    await sleep(2_000);
  }
  const report: SinkReport = { lost: 0, delivered: 0, expected: 0, missingStreams: 0, reports: [] };
  for (const [key, counts] of Object.entries(sent)) {
    const received = recording.received.get(key);
    report.expected += counts.audio + counts.video;
    if (received === undefined || received.video.length === 0) {
      report.missingStreams++;
      continue;
    }
    report.delivered += received.count;
    report.lost += lostPackets(expectedLog(once, counts), received, key);
  }
  report.reports = lossReports.slice(0, 5);
  line(report);
}

if (import.meta.main) {
  const [role, ...rest] = Deno.args;
  if (role === "publish") {
    const [port, seconds, ...keys] = rest;
    await publish(Number(port), Number(seconds), keys);
  } else if (role === "sink") {
    await sink();
  } else {
    throw new TypeError(`unknown role ${role}: publish or sink`);
  }
}
