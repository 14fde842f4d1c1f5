/**
 * Proves the relay holds: load, faults during live streams, hostile input, secrets. The short form
 * runs with `deno task test`; `deno task soak` runs the long form (NEUSTREAM_SOAK=long).
 * The relay runs as its own process; sinks, publishers and the control plane live here.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { ffmpegProcessesWith, sleep, tempDir, waitFor } from "../helpers/process.ts";
import { type RelayProcess, spawnRelay } from "../helpers/relay.ts";
import {
  findSecret,
  LONG,
  lostPackets,
  PacedPublisher,
  printSummary,
  RecordingSink,
  ResourceSampler,
  summary,
} from "./harness.ts";

const MiB = 1024 * 1024;
/** Every stream key and destination key the suite uses: none may leave the relay in full. */
const secrets = new Set<string>();
/** Every log line and API reply seen. */
const transcripts: string[] = [];

function streamKey(name: string): string {
  const key = `rel-${name}-${crypto.randomUUID().slice(0, 12)}`;
  secrets.add(key);
  return key;
}

function destinationKey(stream: string, index: number): string {
  const key = `dest-${index}-${stream.slice(-12)}-${crypto.randomUUID().slice(0, 8)}`;
  secrets.add(key);
  return key;
}

/** Reads the API the way an operator's dashboard would, keeping every reply for the secret scan. */
async function pollApi(relay: RelayProcess, keys: string[]): Promise<void> {
  const base = `http://127.0.0.1:${relay.httpPort}`;
  for (
    const path of [
      "/health",
      "/stats",
      "/api/streams",
      "/metrics",
      ...keys.map((k) => `/api/streams/forwarding/${k}`),
    ]
  ) {
    const response = await fetch(base + path).catch(() => undefined);
    if (response) transcripts.push(await response.text());
  }
}

function controlPlaneFor(sinks: RecordingSink[], destinationKeys: Map<string, string[]>) {
  return new FakeControlPlane({
    forwarding: (key) => ({
      body: {
        destinations: sinks.map((sink, i) => ({
          id: `d${i}`,
          platform: "custom",
          rtmp_url: sink.url,
          stream_key: destinationKeys.get(key)![i]!,
        })),
      },
    }),
  });
}

Deno.test({
  name: `load: 30 publishers at 3 Mbit/s, 3 destinations each, ${
    LONG ? "10 minutes" : "1 minute"
  }, nothing lost`,
  sanitizeOps: true,
  async fn() {
    const streams = 30;
    const seconds = LONG ? 600 : Number(Deno.env.get("NEUSTREAM_LOAD_SECONDS") ?? 60);
    await using dir = await tempDir();
    await using sinkA = new RecordingSink();
    await using sinkB = new RecordingSink();
    await using sinkC = new RecordingSink();
    const sinks = [sinkA, sinkB, sinkC];
    const keys = Array.from({ length: streams }, (_, i) => streamKey(`load${i}`));
    const destinationKeys = new Map(
      keys.map((key) => [key, sinks.map((_, i) => destinationKey(key, i))]),
    );
    await using cp = controlPlaneFor(sinks, destinationKeys);
    await using relay = await spawnRelay(
      dir.path,
      `[control_plane]\nurl = "${cp.url}"\n[streaming]\nreconnect_grace_seconds = 0\n[logging]\nlevel = "info"\n`,
    );
    const sampler = new ResourceSampler(relay.process.pid);
    const publishers = keys.map((key) => new PacedPublisher(key));
    await Promise.all(publishers.map((p) => p.start(relay.rtmpPort)));
    await waitFor(
      async () => (await ffmpegProcessesWith(`127.0.0.1:${sinkA.port}/live`)).length === streams,
      "all destinations up",
      60_000,
    );
    await sampler.start(5_000);
    const deadline = performance.now() + seconds * 1000;
    while (performance.now() < deadline) {
      await sleep(Math.min(10_000, deadline - performance.now()));
      await pollApi(relay, keys.slice(0, 3));
    }
    const cpu = await sampler.stop();
    await Promise.all(publishers.map((p) => p.stop()));
    await waitFor(() => cp.streamEnds.length === streams, "every stream-end", 30_000);
    await waitFor(
      async () => (await ffmpegProcessesWith(`127.0.0.1:${sinkA.port}/live`)).length === 0,
      "FFmpeg gone",
      30_000,
    );

    let lost = 0;
    let delivered = 0;
    for (const publisher of publishers) {
      assert(publisher.error === undefined, `${publisher.key}: ${publisher.error}`);
      for (const [i, sink] of sinks.entries()) {
        const got = sink.received.get(destinationKeys.get(publisher.key)![i]!);
        lost += lostPackets(publisher.sent, got, `${publisher.key} → sink ${i}`);
        delivered += got?.count ?? 0;
      }
    }
    const slope = sampler.slopeMiBPerMinute(2);
    transcripts.push(relay.process.stderr);
    summary.push({
      part: "load",
      cases: streams * sinks.length,
      faults: 0,
      packetsLost: lost,
      peakMemoryMiB: sampler.peakPss / MiB,
      note: `${seconds} s; ${delivered} packets delivered; memory slope ${
        slope.toFixed(1)
      } MiB/min after warm-up; CPU ${(cpu * 100 / streams).toFixed(1)}% per stream`,
    });
    console.log(
      `load: CPU ${(cpu * 100).toFixed(0)}% for ${streams} streams, PSS peak ${
        (sampler.peakPss / MiB).toFixed(0)
      } MiB, slope ${slope.toFixed(2)} MiB/min`,
    );
    assertEquals(lost, 0, "packets lost at sinks that stayed up");
    // Flat: a leak of even 100 KiB per stream per minute would show as 3 MiB/min here.
    assert(slope < 3 + (LONG ? 0 : 5), `memory grows ${slope.toFixed(1)} MiB/min after warm-up`);
  },
});

Deno.test("secrets: no log line or API reply of the suite holds a full stream or destination key", () => {
  assert(secrets.size > 0 && transcripts.length > 0, "the suite recorded nothing to scan");
  const leaked = findSecret(transcripts, secrets);
  assertEquals(leaked, undefined, "a key appeared in a log line or an API reply");
  summary.push({
    part: "secrets",
    cases: transcripts.length,
    faults: 0,
    packetsLost: 0,
    peakMemoryMiB: 0,
    note: `${secrets.size} keys checked`,
  });
  printSummary();
});
