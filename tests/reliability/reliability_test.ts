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
  StalledSink,
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

/** Behaviour of the fake control plane during the faults test, switchable from the test. */
interface ControlPlaneMood {
  authDelayMs: number;
}

Deno.test("faults during live streams: each survived, and the streams beside it lose nothing", async () => {
  await using dir = await tempDir();
  await using good = new RecordingSink();
  const flakyPort = (() => {
    using probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    return (probe.addr as Deno.NetAddr).port;
  })();
  let flaky = new RecordingSink(flakyPort);
  await using refusing = new RecordingSink();
  await using stalled = new StalledSink();

  const keys = {
    steady1: streamKey("steady1"),
    steady2: streamKey("steady2"),
    sinkKilled: streamKey("sinkkilled"),
    sinkStalled: streamKey("sinkstalled"),
    sinkRefuses: streamKey("sinkrefuses"),
    silent: streamKey("silent"),
  };
  const extra: Record<string, { url: string; key: string }> = {
    [keys.sinkKilled]: { url: flaky.url, key: destinationKey(keys.sinkKilled, 1) },
    [keys.sinkStalled]: { url: stalled.url, key: destinationKey(keys.sinkStalled, 1) },
    [keys.sinkRefuses]: { url: refusing.url, key: destinationKey(keys.sinkRefuses, 1) },
  };
  refusing.refuse.add(extra[keys.sinkRefuses]!.key);
  const goodKey = new Map(Object.values(keys).map((key) => [key, destinationKey(key, 0)]));
  const mood: ControlPlaneMood = { authDelayMs: 0 };
  const behaviour = {
    auth: () => ({ delayMs: mood.authDelayMs, body: { code: 0, data: { forward: true } } }),
    forwarding: (key: string) => ({
      body: {
        destinations: [
          {
            id: "good",
            platform: "custom",
            rtmp_url: good.url,
            stream_key: goodKey.get(key) ?? "x",
          },
          ...(extra[key]
            ? [{
              id: "other",
              platform: "custom",
              rtmp_url: extra[key]!.url,
              stream_key: extra[key]!.key,
            }]
            : []),
        ],
      },
    }),
  };
  const cpPort = (() => {
    using probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    return (probe.addr as Deno.NetAddr).port;
  })();
  let cp = new FakeControlPlane(behaviour, cpPort);
  await using relay = await spawnRelay(
    dir.path,
    `[control_plane]\nurl = "${cp.url}"\ntimeout_seconds = 3\nretry_attempts = 2\n` +
      `[streaming]\nreconnect_grace_seconds = 0\nbuffer_size_kb = 64\n`,
    `ping_interval_seconds = 1\nping_timeout_seconds = 3\n`,
  );
  const sampler = new ResourceSampler(relay.process.pid);
  await sampler.start(5_000);
  const publishers = new Map(Object.values(keys).map((key) => [key, new PacedPublisher(key)]));
  await Promise.all([...publishers.values()].map((p) => p.start(relay.rtmpPort)));
  await waitFor(
    async () =>
      (await ffmpegProcessesWith(`127.0.0.1:${good.port}/live`)).length === publishers.size,
    "destinations up",
    30_000,
  );
  await sleep(2_000);
  let faults = 0;

  // A sink killed and restarted: its destination comes back by itself.
  await flaky.close();
  await sleep(1_500);
  flaky = new RecordingSink(flakyPort);
  faults++;

  // A publisher whose network drops silently: the ping timeout ends its stream.
  const silent = publishers.get(keys.silent)!;
  await silent.freeze();
  await waitFor(
    () => cp.streamEnds.includes(keys.silent),
    "the silent publisher's stream to end",
    10_000,
  );
  silent.close();
  faults++;

  // The control plane answering slowly: within the timeout a publish still goes through.
  mood.authDelayMs = 1_500;
  const slowKey = streamKey("slowcp");
  goodKey.set(slowKey, destinationKey(slowKey, 0));
  const slowStarted = performance.now();
  const slowPublisher = new PacedPublisher(slowKey);
  await slowPublisher.start(relay.rtmpPort);
  assert(performance.now() - slowStarted >= 1_400, "the slow answer was waited for");
  mood.authDelayMs = 0;
  faults++;

  // The control plane down for 30 s: new publishes are refused, live streams carry on.
  await cp[Symbol.asyncDispose]();
  const outageStarted = performance.now();
  const refusedKey = streamKey("outage");
  const refused = new PacedPublisher(refusedKey);
  const outcome = await refused.start(relay.rtmpPort).then(
    () => "accepted",
    (e: Error) => e.message,
  );
  assert(outcome.includes("refused"), `a publish during the outage must be refused: ${outcome}`);
  refused.kill();
  await sleep(Math.max(0, 30_000 - (performance.now() - outageStarted)));
  cp = new FakeControlPlane(behaviour, cpPort);
  const backKey = streamKey("cpback");
  goodKey.set(backKey, destinationKey(backKey, 0));
  const back = new PacedPublisher(backKey);
  await back.start(relay.rtmpPort);
  faults++;
  await sleep(3_000);

  const live = [...publishers.values()].filter((p) => p !== silent);
  await pollApi(relay, live.map((p) => p.key));
  await Promise.all([...live, slowPublisher, back].map((p) => p.stop()));
  await waitFor(
    async () => (await ffmpegProcessesWith(`127.0.0.1:${good.port}/live`)).length === 0,
    "FFmpeg gone",
    30_000,
  );
  const cpu = await sampler.stop();
  void cpu;

  let lost = 0;
  for (const publisher of [...live, slowPublisher, back]) {
    lost += lostPackets(
      publisher.sent,
      good.received.get(goodKey.get(publisher.key)!),
      `${publisher.key} → good sink`,
    );
  }
  // The restarted sink got the rest of its stream, from a keyframe, to the end.
  lost += lostPackets(
    publishers.get(keys.sinkKilled)!.sent,
    flaky.received.get(extra[keys.sinkKilled]!.key),
    "restarted sink",
  );
  faults += 2; // the stalled sink and the refusing sink, both present throughout
  assert(stalled.accepted >= 1, "the stalled sink was connected to");
  assert(!refusing.received.has(extra[keys.sinkRefuses]!.key), "the refusing sink took nothing");
  transcripts.push(relay.process.stderr);
  assert(!relay.process.exited, "the relay is still running");
  summary.push({
    part: "faults",
    cases: 6,
    faults,
    packetsLost: lost,
    peakMemoryMiB: sampler.peakPss / MiB,
    note:
      "sink killed+restarted, sink never reads, sink refuses key, silent publisher, control plane slow, control plane down 30 s",
  });
  await flaky.close();
  await cp[Symbol.asyncDispose]();
  assertEquals(lost, 0, "packets lost beside the faults");
});

Deno.test("the relay killed with SIGKILL and restarted: no orphan FFmpeg, streams resume when encoders reconnect", async () => {
  await using dir = await tempDir();
  await using sink = new RecordingSink();
  const key = streamKey("sigkill");
  const outKey = destinationKey(key, 0);
  const config = `[streaming]\nreconnect_grace_seconds = 0\n[[streams]]\nkey = "${key}"\n` +
    `[[streams.destinations]]\nid = "a"\nrtmp_url = "${sink.url}"\nstream_key = "${outKey}"\n`;
  const marker = `127.0.0.1:${sink.port}/live`;
  const first = await spawnRelay(dir.path, config);
  const before = new PacedPublisher(key);
  await before.start(first.rtmpPort);
  await waitFor(async () => (await ffmpegProcessesWith(marker)).length === 1, "destination FFmpeg");
  await sleep(2_000);
  first.process.kill("SIGKILL");
  await first.process.wait();
  transcripts.push(first.process.stderr);
  await first[Symbol.asyncDispose]();
  await waitFor(
    async () => (await ffmpegProcessesWith(marker)).length === 0,
    "no orphan FFmpeg",
    10_000,
  );
  before.kill();

  // systemd restarts it on the same ports; the encoder reconnects.
  await Deno.rename(`${dir.path}/relay.toml`, `${dir.path}/old.toml`);
  await using second = await spawnRelay(dir.path, config);
  const after = new PacedPublisher(key);
  await after.start(second.rtmpPort);
  await waitFor(
    async () => (await ffmpegProcessesWith(marker)).length === 1,
    "destination FFmpeg again",
  );
  await sleep(3_000);
  await after.stop();
  await waitFor(
    async () => (await ffmpegProcessesWith(marker)).length === 0,
    "FFmpeg gone",
    15_000,
  );
  transcripts.push(second.process.stderr);
  const lost = lostPackets(after.sent, sink.received.get(outKey), "after restart");
  summary.push({
    part: "relay SIGKILL",
    cases: 1,
    faults: 1,
    packetsLost: lost,
    peakMemoryMiB: 0,
    note: "orphans gone; stream resumed after restart",
  });
  assertEquals(lost, 0);
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
