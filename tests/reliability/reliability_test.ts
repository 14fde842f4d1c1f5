/**
 * Proves the relay holds: load, faults during live streams, hostile input, secrets. The short form
 * runs with `deno task test` (sized in `SIZE` for a busy 2-core machine); `deno task soak` runs the
 * long form at full size (NEUSTREAM_SOAK=long, NEUSTREAM_SOAK_SECONDS).
 * The relay runs as its own process; sinks, publishers and the control plane live here.
 */

import { pssBytes } from "../../bench/proc.ts";
import { encodeAmf0 } from "../../src/rtmp/amf0.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { fixture } from "../helpers/media.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { ffmpegProcessesWith, sleep, tempDir, TestProcess, waitFor } from "../helpers/process.ts";
import { type RelayProcess, spawnRelay } from "../helpers/relay.ts";
import type { DestinationView } from "../../src/http/read_model.ts";
import { ENGINE_NAMES, type EngineName } from "../../src/relay/relay_engine.ts";
import {
  findSecret,
  LONG,
  lossReports,
  lostPackets,
  missingEnds,
  mutateSession,
  PacedPublisher,
  printSummary,
  ResourceSampler,
  seededRandom,
  SIZE,
  summary,
} from "./harness.ts";
import { StalledSink } from "../helpers/silent_server.ts";
import { readToEnd, RecordingSink } from "../helpers/recording_sink.ts";

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

/** The statuses of `key`'s destinations as the API gives them to an operator (none if not live). */
async function destinationStatuses(
  relay: RelayProcess,
  key: string,
): Promise<DestinationView["status"][]> {
  const response = await fetch(
    `http://127.0.0.1:${relay.httpPort}/api/streams/forwarding/${key}`,
  );
  if (!response.ok) {
    await response.body?.cancel();
    return [];
  }
  const { destinations } = await response.json() as { destinations: DestinationView[] };
  return destinations.map((destination) => destination.status);
}

/** Whether the destination `id` of `key` is connected, on `engine`. */
async function connectedOn(
  relay: RelayProcess,
  key: string,
  id: string,
  engine: EngineName,
): Promise<boolean> {
  const status = (await destinationStatuses(relay, key)).find((status) => status.id === id);
  return status?.state === "connected" && status.engine === engine;
}

for (const engine of ENGINE_NAMES) {
  Deno.test({
    name:
      `load (${engine} engine): ${SIZE.loadStreams} publishers at 3 Mbit/s, ${SIZE.loadDestinations} destinations each, ${SIZE.loadSeconds} s, nothing lost, no FFmpeg left`,
    sanitizeOps: true,
    fn: () => load(engine),
  });
}

async function load(engine: EngineName): Promise<void> {
  const streams = SIZE.loadStreams;
  const seconds = SIZE.loadSeconds;
  await using dir = await tempDir();
  await using sinkA = new RecordingSink({ pingIntervalMs: SIZE.sinkPingMs });
  await using sinkB = new RecordingSink({ pingIntervalMs: SIZE.sinkPingMs });
  await using sinkC = new RecordingSink({ pingIntervalMs: SIZE.sinkPingMs });
  const sinks = [sinkA, sinkB, sinkC].slice(0, SIZE.loadDestinations);
  const ffmpegsOf = async (sink: RecordingSink) =>
    (await ffmpegProcessesWith(`127.0.0.1:${sink.port}/live`)).length;
  const keys = Array.from({ length: streams }, (_, i) => streamKey(`load${i}`));
  const destinationKeys = new Map(
    keys.map((key) => [key, sinks.map((_, i) => destinationKey(key, i))]),
  );
  await using cp = controlPlaneFor(sinks, destinationKeys);
  await using relay = await spawnRelay(
    dir.path,
    `[control_plane]\nurl = "${cp.url}"\n[streaming]\nengine = "${engine}"\n` +
      `reconnect_grace_seconds = 0\n[logging]\nlevel = "info"\n`,
  );
  const sampler = new ResourceSampler(relay.process.pid);
  const publishers = keys.map((key) => new PacedPublisher(key));
  await Promise.all(publishers.map((p) => p.start(relay.rtmpPort)));
  const everyDestinationUp = engine === "ffmpeg"
    ? async () => (await Promise.all(sinks.map(ffmpegsOf))).every((n) => n === streams)
    : async () => {
      for (const key of keys) {
        const statuses = await destinationStatuses(relay, key);
        const up = statuses.filter((status) =>
          status.state === "connected" && status.engine === engine
        );
        if (up.length !== sinks.length) return false;
      }
      return true;
    };
  await waitFor(everyDestinationUp, "all destinations up", 60_000);
  await sampler.start(5_000);
  const deadline = performance.now() + seconds * 1000;
  while (performance.now() < deadline) {
    await sleep(Math.min(10_000, deadline - performance.now()));
    await pollApi(relay, keys.slice(0, 3));
  }
  const cpu = await sampler.stop();
  await Promise.all(publishers.map((p) => p.stop()));
  await waitFor(() => cp.streamEnds.length === streams, "every stream-end", 60_000);
  // Each FFmpeg sends the end of its stream before it exits, however long that takes under
  // load; it is cut off only after a stall, so this waits for progress, not for a timer.
  await waitFor(
    async () => (await Promise.all(sinks.map(ffmpegsOf))).every((n) => n === 0),
    "every destination FFmpeg gone",
    120_000,
  );
  await readToEnd(
    keys.flatMap((key) => sinks.map((sink, i) => [sink, destinationKeys.get(key)![i]!] as const)),
  );

  let lost = 0;
  let delivered = 0;
  const endsBefore = missingEnds.length;
  for (const publisher of publishers) {
    assert(publisher.error === undefined, `${publisher.key}: ${publisher.error}`);
    for (const [i, sink] of sinks.entries()) {
      const outKey = destinationKeys.get(publisher.key)![i]!;
      const got = sink.received.get(outKey);
      const label = `${publisher.key} → sink ${i} (its session ended: ${sink.endReason(outKey)})`;
      lost += lostPackets(publisher.sent, got, label);
      delivered += got?.count ?? 0;
    }
  }
  const endsCut = missingEnds.length - endsBefore;
  const slope = sampler.slopeMiBPerMinute(2);
  transcripts.push(relay.process.stderr);
  // A destination that falls behind drops to the next keyframe (by design); on a machine busy
  // with other work that shows here first, so say how often it happened.
  const relayLines = relay.process.stderr.split("\n");
  const dropEpisodes =
    relayLines.filter((line) => line.includes("dropping until the next keyframe")).length;
  const cutShort = relayLines.filter((line) => /destination .*: SIGTERM/.test(line)).length;
  summary.push({
    part: `load (${engine})`,
    cases: streams * sinks.length,
    faults: 0,
    packetsLost: lost,
    peakMemoryMiB: sampler.peakPss / MiB,
    note: `${seconds} s; ${delivered} packets delivered; memory slope ${
      slope.toFixed(1)
    } MiB/min after warm-up; CPU ${
      (cpu * 100 / streams).toFixed(1)
    }% per stream; ${dropEpisodes} drop episodes; ${cutShort} destinations SIGTERMed at the end; ${endsCut} tracks missing their end`,
  });
  console.log(
    `load (${engine} engine): ${streams} streams × ${sinks.length} destinations, ${seconds} s: ${lost} packets lost of ${delivered} delivered, CPU ${
      (cpu * 100).toFixed(0)
    }% (of one core), PSS peak ${(sampler.peakPss / MiB).toFixed(0)} MiB, slope ${
      slope.toFixed(2)
    } MiB/min, ${dropEpisodes} drop episodes, ${cutShort} destinations SIGTERMed at the end, ${endsCut} of ${
      streams * sinks.length * 2
    } tracks missing their end`,
  );
  assertEquals(
    lost,
    0,
    `packets lost at sinks that stayed up:\n${lossReports.slice(0, 12).join("\n")}`,
  );
  // Bounded: queues are capped per reader. With FFmpeg, the relay plus its FFmpegs, about 50 MiB
  // per stream at 3 destinations; native, the relay's 40 to 50 MiB idle and 1.5 to 4 MiB per stream
  // (`deno task bench scale`), with room to spare for a busy machine's slower collector.
  const bound = engine === "ffmpeg" ? streams * 80 * MiB : 120 * MiB + streams * 8 * MiB;
  assert(
    sampler.peakPss < bound,
    `peak ${(sampler.peakPss / MiB).toFixed(0)} MiB for ${streams} streams (bound ${
      (bound / MiB).toFixed(0)
    } MiB)`,
  );
  if (LONG && seconds >= 300) {
    // Flat: over 10 minutes a leak of 100 KiB per stream per minute shows as 3 MiB/min. (A
    // minute or two is too short to tell a leak from queues breathing, so shorter runs only
    // report it.)
    assert(slope < 3, `memory grows ${slope.toFixed(1)} MiB/min after warm-up`);
  }
}

/** Behaviour of the fake control plane during the faults test, switchable from the test. */
interface ControlPlaneMood {
  authDelayMs: number;
}

for (const engine of ENGINE_NAMES) {
  Deno.test(
    `faults during live streams (${engine} engine): each survived, and the streams beside it lose nothing`,
    () => faults(engine),
  );
}

async function faults(engine: EngineName): Promise<void> {
  await using dir = await tempDir();
  await using good = new RecordingSink();
  const flakyPort = (() => {
    using probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    return (probe.addr as Deno.NetAddr).port;
  })();
  let flaky = new RecordingSink({ port: flakyPort });
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
      `[streaming]\nengine = "${engine}"\nreconnect_grace_seconds = 0\nbuffer_size_kb = 64\n`,
    `ping_interval_seconds = 1\nping_timeout_seconds = 3\n`,
  );
  /**
   * Whether the good sink's destination of `key` runs: its FFmpeg (whose command line names its
   * key), or on the native engine, connected as the API shows it.
   */
  const goodRunning = async (key: string) =>
    engine === "ffmpeg"
      ? (await ffmpegProcessesWith(`/live/${goodKey.get(key)}`)).length === 1
      : await connectedOn(relay, key, "good", engine);
  const destinationRunning = (key: string) =>
    waitFor(() => goodRunning(key), "the good destination of a new stream to run", 30_000);
  const sampler = new ResourceSampler(relay.process.pid);
  await sampler.start(5_000);
  const publishers = new Map(Object.values(keys).map((key) => [key, new PacedPublisher(key)]));
  await Promise.all([...publishers.values()].map((p) => p.start(relay.rtmpPort)));
  await waitFor(
    async () => (await Promise.all([...publishers.keys()].map(goodRunning))).every(Boolean),
    "destinations up",
    30_000,
  );
  await sleep(2_000);
  let faults = 0;

  // A sink killed and restarted: its destination comes back by itself.
  await flaky.close();
  await sleep(1_500);
  flaky = new RecordingSink({ port: flakyPort });
  faults++;

  // A publisher whose network drops silently: the ping timeout ends its stream.
  const silent = publishers.get(keys.silent)!;
  await silent.freeze();
  await waitFor(
    () => cp.streamEnds.includes(keys.silent),
    "the silent publisher's stream to end",
    30_000,
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
  // Its destinations are asked for after the publish is accepted: the outage below must not
  // begin before they are running.
  await destinationRunning(slowKey);
  faults++;

  // The control plane down for a while: new publishes are refused, live streams carry on.
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
  await sleep(Math.max(0, SIZE.outageSeconds * 1000 - (performance.now() - outageStarted)));
  cp = new FakeControlPlane(behaviour, cpPort);
  const backKey = streamKey("cpback");
  goodKey.set(backKey, destinationKey(backKey, 0));
  const back = new PacedPublisher(backKey);
  await back.start(relay.rtmpPort);
  await destinationRunning(backKey);
  faults++;
  await sleep(3_000);
  // The killed sink's destination came back by itself (with backoff) and is delivering again.
  await waitFor(
    () => (flaky.received.get(extra[keys.sinkKilled]!.key)?.video.length ?? 0) > 0,
    "the restarted sink to receive again",
    30_000,
  );

  // The refusing sink's destination says why, as the operator reads it in the API.
  const refusal = await waitFor(
    async () =>
      (await destinationStatuses(relay, keys.sinkRefuses)).find((status) =>
        status.id === "other" && status.failure === "rejected"
      ),
    "the refused destination to show the refusal",
    30_000,
  );
  assert(
    refusal.last_error?.startsWith("rejected by destination"),
    `the refused destination's last error: ${refusal.last_error}`,
  );
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
  await readToEnd([
    ...[...live, slowPublisher, back].map((p) => [good, goodKey.get(p.key)!] as const),
    [flaky, extra[keys.sinkKilled]!.key] as const,
  ]);

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
    part: `faults (${engine})`,
    cases: 6,
    faults,
    packetsLost: lost,
    peakMemoryMiB: sampler.peakPss / MiB,
    note:
      `sink killed+restarted, sink never reads, sink refuses key, silent publisher, control plane slow, control plane down ${SIZE.outageSeconds} s`,
  });
  await flaky.close();
  await cp[Symbol.asyncDispose]();
  assertEquals(lost, 0, "packets lost beside the faults");
}

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
    30_000,
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
    60_000,
  );
  transcripts.push(second.process.stderr);
  await readToEnd([[sink, outKey]]);
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

/** Records what a real FFmpeg publisher sends, by standing between it and the relay. */
async function captureFfmpegSession(relayPort: number, key: string): Promise<Uint8Array> {
  const source = await fixture({ seconds: 2 });
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const parts: Uint8Array[] = [];
  const proxying = (async () => {
    const client = await listener.accept();
    const upstream = await Deno.connect({ hostname: "127.0.0.1", port: relayPort });
    const toServer = (async () => {
      const buffer = new Uint8Array(64 * 1024);
      for (;;) {
        const n = await client.read(buffer).catch(() => null);
        if (n === null) break;
        parts.push(buffer.slice(0, n));
        await upstream.write(buffer.subarray(0, n)).catch(() => {});
      }
      upstream.close();
    })();
    const toClient = (async () => {
      const buffer = new Uint8Array(64 * 1024);
      for (;;) {
        const n = await upstream.read(buffer).catch(() => null);
        if (n === null) break;
        await client.write(buffer.subarray(0, n)).catch(() => {});
      }
    })();
    await Promise.all([toServer, toClient]);
    client.close();
  })();
  await using publisher = new TestProcess("ffmpeg", [
    "-hide_banner",
    "-loglevel",
    "error",
    "-i",
    source,
    "-t",
    "1",
    "-c",
    "copy",
    "-f",
    "flv",
    `rtmp://127.0.0.1:${port}/live/${key}`,
  ]);
  await publisher.wait();
  await proxying;
  const capture = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const part of parts) {
    capture.set(part, offset);
    offset += part.length;
  }
  return capture;
}

/** Sends one case on its own connection and hangs up once the relay has had a moment with it. */
async function sendCase(port: number, bytes: Uint8Array): Promise<void> {
  using conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(bytes).catch(() => 0); // the relay may hang up mid-case: that is its answer
  const buffer = new Uint8Array(16 * 1024);
  let timer: ReturnType<typeof setTimeout> | undefined;
  // Read the relay's answers for a little while, so it processes the case before we vanish.
  await Promise.race([
    (async () => {
      while ((await conn.read(buffer).catch(() => null)) !== null) { /* drain */ }
    })(),
    new Promise((resolve) => timer = setTimeout(resolve, 30)),
  ]);
  clearTimeout(timer);
}

const floodMbps = SIZE.floodSpeed * 3;

Deno.test(`hostile input: fuzzed sessions, ${SIZE.halfOpen} half-open connections, oversized metadata, a ${floodMbps} Mbit/s publisher`, async () => {
  await using dir = await tempDir();
  await using sink = new RecordingSink();
  const goodKey = streamKey("beside");
  const goodOut = destinationKey(goodKey, 0);
  const fastKey = streamKey("flood");
  const fastOut = destinationKey(fastKey, 0);
  const fuzzKey = streamKey("fuzz");
  await using relay = await spawnRelay(
    dir.path,
    `[streaming]\nreconnect_grace_seconds = 0\nconnection_timeout_seconds = 3\n` +
      [[goodKey, goodOut], [fastKey, fastOut]].map(([key, out]) =>
        `[[streams]]\nkey = "${key}"\n[[streams.destinations]]\nid = "a"\nrtmp_url = "${sink.url}"\nstream_key = "${out}"\n`
      ).join("") + `[[streams]]\nkey = "${fuzzKey}"\n`,
    "max_message_size_kb = 4096\n",
  );
  const relayOnly = [relay.process.pid];
  let peak = 0;
  const sampleMemory = async () => {
    peak = Math.max(peak, await pssBytes(relayOnly));
  };
  const capture = await captureFfmpegSession(relay.rtmpPort, fuzzKey);
  assert(capture.length > 10_000, `captured ${capture.length} bytes of a real session`);

  const good = new PacedPublisher(goodKey);
  await good.start(relay.rtmpPort);
  const flood = new PacedPublisher(fastKey, SIZE.floodSpeed); // 3 Mbit/s of real H.264 × speed
  await flood.start(relay.rtmpPort);

  // Connections at once: half never send a byte, half drip the handshake slowly.
  const halfOpen = await Promise.all(
    Array.from(
      { length: SIZE.halfOpen },
      () => Deno.connect({ hostname: "127.0.0.1", port: relay.rtmpPort }),
    ),
  );
  let dripping = true;
  const drips = halfOpen.slice(SIZE.halfOpen / 2).map(async (conn) => {
    const c0c1 = new Uint8Array(1537);
    c0c1[0] = 3;
    for (let i = 0; dripping && i < c0c1.length; i++) {
      if ((await conn.write(c0c1.subarray(i, i + 1)).catch(() => -1)) < 0) return;
      await sleep(200);
    }
  });
  let closedCount = 0;
  const closedAt: number[] = [];
  const openedAt = performance.now();
  const closedByRelay = Promise.all(halfOpen.map(async (conn, index) => {
    const buffer = new Uint8Array(4096);
    while ((await conn.read(buffer).catch(() => null)) !== null) { /* until the relay hangs up */ }
    closedCount++;
    closedAt[index] = performance.now() - openedAt;
  }));

  // Oversized metadata: 1 MiB (under the message limit) is ignored with a log line and the
  // connection carries on; 16 MiB (over the 4 MiB limit) closes the connection.
  const bulky = await TestRtmpClient.connect(relay.rtmpPort);
  await bulky.handshake();
  const bulkyStream = (await bulky.publish(fuzzKey)).streamId;
  const metadata = (size: number) =>
    encodeAmf0("@setDataFrame", "onMetaData", { description: "x".repeat(size) });
  await bulky.send({
    chunkStreamId: 5,
    typeId: 18,
    timestamp: 0,
    streamId: bulkyStream,
    payload: metadata(1024 * 1024),
  });
  await waitFor(
    () => relay.process.stderr.includes("metadata of 1048"),
    "the ignored-metadata log line",
  );
  await bulky.send({
    chunkStreamId: 5,
    typeId: 18,
    timestamp: 0,
    streamId: bulkyStream,
    payload: metadata(0xffffff - 64),
  })
    .catch(() => {}); // the relay hangs up while we are still writing
  assert(await bulky.closedByServer(5_000), "the over-limit metadata's connection is closed");
  bulky.close();

  // The fuzzer: seeded and repeatable, bounded in count and time.
  const seed = Number(Deno.env.get("NEUSTREAM_FUZZ_SEED") ?? 20261121);
  const cases = SIZE.fuzzCases;
  const random = seededRandom(seed);
  const started = performance.now();
  let sent = 0;
  const worker = async () => {
    while (sent < cases && performance.now() - started < SIZE.fuzzSeconds * 1000) {
      sent++;
      await sendCase(relay.rtmpPort, mutateSession(capture, random));
      if (sent % 500 === 0) await sampleMemory();
    }
  };
  await Promise.all(Array.from({ length: 16 }, worker));
  const fuzzSeconds = (performance.now() - started) / 1000;

  // The relay closes them after connection_timeout_seconds (3 s here); allow for load.
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    closedByRelay,
    new Promise((resolve) => timer = setTimeout(resolve, 30_000)),
  ]);
  clearTimeout(timer);
  const stillOpen = halfOpen.length - closedCount;
  const slowestClose = Math.max(...closedAt.filter((ms) => ms !== undefined));
  dripping = false;
  await Promise.all(drips);
  for (const conn of halfOpen) {
    try {
      conn.close();
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  }
  await closedByRelay;
  await sampleMemory();

  const health = await fetch(`http://127.0.0.1:${relay.httpPort}/health`);
  assertEquals(health.status, 200, "the relay still serves");
  await health.body?.cancel();
  await pollApi(relay, [goodKey, fastKey]);
  await Promise.all([good.stop(), flood.stop()]);
  await waitFor(
    async () => (await ffmpegProcessesWith(`127.0.0.1:${sink.port}/live`)).length === 0,
    "FFmpeg gone",
    20_000,
  );
  transcripts.push(relay.process.stderr);
  assert(!relay.process.exited, "the relay never crashed");
  await readToEnd([[sink, goodOut], [sink, fastOut]]);
  const lost = lostPackets(good.sent, sink.received.get(goodOut), "the stream beside the attack");
  const floodLost = lostPackets(
    flood.sent,
    sink.received.get(fastOut),
    `the ${floodMbps} Mbit/s stream`,
  );
  summary.push({
    part: "hostile input",
    cases: sent + SIZE.halfOpen + 1,
    faults: 0,
    packetsLost: lost,
    peakMemoryMiB: peak / MiB,
    note: `seed ${seed}: ${sent} fuzz cases in ${
      fuzzSeconds.toFixed(0)
    } s from a ${capture.length}-byte FFmpeg session; ${SIZE.halfOpen} half-open all closed within ${
      (slowestClose / 1000).toFixed(1)
    } s; 1 MiB metadata ignored, 16 MiB refused; the ${floodMbps} Mbit/s stream itself: ${floodLost} packets dropped or out of place (its queue may drop to the next keyframe under overload, by design)`,
  });
  assertEquals(lost, 0, "the well-behaved stream lost packets");
  // The flood may overrun its destination's queue, which drops to the next keyframe and says so.
  // Loss without such a log line is a bug: it caught FFmpeg being stopped before it had sent the
  // end of its stream (932 packets, every run, until stopping waited for FFmpeg to drain).
  const dropEpisodes =
    relay.process.stderr.split("\n").filter((line) =>
      line.includes("dropping until the next keyframe")
    ).length;
  if (floodLost > 0) {
    assert(
      dropEpisodes > 0,
      `the ${floodMbps} Mbit/s stream lost ${floodLost} packets with no drop episode logged:\n${
        lossReports.join("\n")
      }`,
    );
  }
  assert(peak < 512 * MiB, `relay memory peaked at ${(peak / MiB).toFixed(0)} MiB`);
  assertEquals(stillOpen, 0, "every half-open or dripping connection was closed by the relay");
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
