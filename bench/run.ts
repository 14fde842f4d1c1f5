/**
 * `deno task bench [section...]`: throughput, idle memory, relay latency, fan-out cost of the
 * native and ffmpeg engines next to nginx-rtmp `push`, scale, start-up time, Deno's cost per read
 * and write. The relay runs as its own process (`deno run main.ts`), measured from /proc.
 * Sections: throughput idle latency fanout scale startup io (default: all); `engines` is latency,
 * fanout, scale and io (issue 16's figures; the engines are printed as a table at the end).
 * Latency's publisher and sink run in this process; fanout's and scale's run in
 * `bench/load_worker.ts` children (publishers, 50 streams per process, and one sink process per
 * destination). Fanout and scale also measure `bench/tcp_tee.ts`, a TCP tee in Deno that parses
 * nothing: the floor under any relay written for Deno, with the same reads and writes; and the
 * same tee that also decodes the chunk stream (`tee+decode`): the floor under any relay written
 * for Deno that reads the RTMP it forwards. `io` prices a Deno process's reads and writes by
 * themselves (`bench/io_cost.ts`), with no RTMP at all.
 */

import { StreamHub } from "../src/media/live_stream.ts";
import type { MediaPacket } from "../src/media/flv.ts";
import { ChunkEncoder } from "../src/rtmp/chunk.ts";
import { mediaMessage } from "../src/rtmp/messages.ts";
import { RtmpServer } from "../src/rtmp/server.ts";
import { fixture } from "../tests/helpers/media.ts";
import { freePort, run, sleep, tempDir, TestProcess, waitFor } from "../tests/helpers/process.ts";
import { spawnRelay } from "../tests/helpers/relay.ts";
import { TestRtmpClient } from "../tests/helpers/rtmp_client.ts";
import { loadFixture } from "../tests/reliability/harness.ts";
import { readFlvTags } from "./flv_file.ts";
import type { SentCounts, SinkReport } from "./load_worker.ts";
import { cpuSeconds, cpuTimes, processTree, pssBytes, rssBytes } from "./proc.ts";
import { V8_FLAGS } from "../src/permissions.ts";

const ALL = ["throughput", "idle", "latency", "fanout", "scale", "startup", "io"];
const GROUPS: Record<string, string[]> = { engines: ["latency", "fanout", "scale", "io"] };
const sections = (Deno.args.length > 0 ? Deno.args : ALL).flatMap((name) => GROUPS[name] ?? name);
const results: string[] = [];
const MB = 1024 * 1024;

function report(line: string): void {
  console.log(line);
  results.push(line);
}

async function publisher(
  port: number,
  key: string,
): Promise<{ client: TestRtmpClient; streamId: number }> {
  const client = await TestRtmpClient.connect(port);
  await client.handshake();
  const { streamId, code } = await client.publish(key);
  if (code !== "NetStream.Publish.Start") throw new Error(`publish of ${key} refused: ${code}`);
  return { client, streamId };
}

/** Sends `packets` in real time, looping, until `until` (ms, performance.now()). */
async function pacedPublish(
  client: TestRtmpClient,
  streamId: number,
  packets: MediaPacket[],
  until: number,
  onVideoSent?: (timestamp: number, at: number) => void,
): Promise<void> {
  const duration = packets.at(-1)!.timestamp + 33;
  const start = performance.now();
  for (let loop = 0;; loop++) {
    for (const packet of packets) {
      if (loop > 0 && (packet.sequenceHeader || packet.type === 18)) continue;
      const ts = packet.timestamp + loop * duration;
      const due = start + ts;
      const now = performance.now();
      if (due > now) await sleep(due - now);
      if (performance.now() >= until) return;
      await client.send(mediaMessage(packet, streamId, (packet.timestamp + loop * duration) >>> 0));
      if (onVideoSent && packet.type === 9 && !packet.sequenceHeader) {
        onVideoSent(ts, performance.now());
      }
    }
  }
}

/** An in-process RTMP server standing for a platform: accepts any key, timestamps video arrivals. */
class BenchSink implements AsyncDisposable {
  readonly hub = new StreamHub({ gopCache: false, gopCacheMaxBytes: 0 });
  readonly server: RtmpServer;
  onVideo: ((timestamp: number, at: number) => void) | undefined;

  constructor() {
    this.server = new RtmpServer(
      {
        hostname: "127.0.0.1",
        port: 0,
        app: "live",
        chunkSize: 4096,
        maxMessageSize: 16 * MB,
        pingIntervalMs: 30_000,
        pingTimeoutMs: 60_000,
        handshakeTimeoutMs: 10_000,
        playerQueueBytes: 4 * MB,
      },
      this.hub,
      () => Promise.resolve({ allowed: true }),
    );
    this.hub.addListener({
      onLive: (stream) =>
        stream.subscribe({
          onPacket: (packet) => {
            if (packet.type === 9 && !packet.sequenceHeader) {
              this.onVideo?.(packet.timestamp, performance.now());
            }
          },
          onEnd: () => {},
        }),
    });
  }

  get url(): string {
    return `rtmp://127.0.0.1:${this.server.port}/live`;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.server.close();
  }
}

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function throughput(): Promise<void> {
  const source = await fixture({ seconds: 10, gop: 60, videoBitrate: "20M", size: "1280x720" });
  const packets = await readFlvTags(source);
  await using dir = await tempDir();
  await using relay = await spawnRelay(dir.path, `[[streams]]\nkey = "bench-throughput"\n`);
  const tree = await processTree(relay.process.pid);
  await using player = await TestRtmpClient.connect(relay.rtmpPort);
  await player.handshake();
  await player.play("bench-throughput");
  let received = 0;
  const reading = (async () => {
    const buffer = new Uint8Array(256 * 1024);
    for (;;) {
      const n = await player.conn.read(buffer).catch(() => null);
      if (n === null) return;
      received += n;
    }
  })();
  const { client, streamId } = await publisher(relay.rtmpPort, "bench-throughput");
  const pass = new ChunkEncoder(4096).encode(...packets.map((p) => mediaMessage(p, streamId)));
  const start = performance.now();
  const writing = (async () => {
    while (performance.now() - start < 11_000) await client.write(pass);
  })();
  // Three 3-second windows after a 1-second ramp; the machine is shared, so report the median.
  await sleep(1_000);
  const windows: { mbits: number; cpuPerGb: number; cpuPercent: number; systemShare: number }[] =
    [];
  for (let i = 0; i < 3; i++) {
    const [bytes0, times0, t0] = [received, await cpuTimes(tree), performance.now()];
    await sleep(3_000);
    const [bytes1, times1, t1] = [received, await cpuTimes(tree), performance.now()];
    const cpu = times1.user + times1.system - times0.user - times0.system;
    windows.push({
      mbits: ((bytes1 - bytes0) * 8) / ((t1 - t0) / 1000) / 1e6,
      cpuPerGb: cpu / ((bytes1 - bytes0) / 1e9),
      cpuPercent: (cpu / ((t1 - t0) / 1000)) * 100,
      systemShare: (times1.system - times0.system) / cpu,
    });
  }
  windows.sort((a, b) => a.mbits - b.mbits);
  const median = windows[1]!;
  await writing;
  client.close();
  player.close();
  await reading;
  report(
    `throughput: ${median.mbits.toFixed(0)} Mbit/s (windows: ${
      windows.map((w) => w.mbits.toFixed(0)).join(", ")
    }) publisher -> relay -> player, 20 Mbit/s H.264 replayed as fast as the socket allows; ${
      median.cpuPerGb.toFixed(1)
    } CPU s per GB through the relay, relay CPU ${median.cpuPercent.toFixed(0)}% (${
      (median.systemShare * 100).toFixed(0)
    }% in the kernel); the load generator shares the 2 cores`,
  );
}

async function idle(): Promise<void> {
  await using dir = await tempDir();
  const keys = Array.from({ length: 50 }, (_, i) => `bench-idle-${i}`);
  await using relay = await spawnRelay(
    dir.path,
    keys.map((key) => `[[streams]]\nkey = "${key}"\n`).join(""),
  );
  await sleep(1_000);
  const pid = [relay.process.pid];
  const [rss0, pss0] = [await rssBytes(pid), await pssBytes(pid)];
  const clients = [];
  for (const key of keys) clients.push((await publisher(relay.rtmpPort, key)).client);
  await sleep(1_500);
  const [rss1, pss1] = [await rssBytes(pid), await pssBytes(pid)];
  for (const client of clients) client.close();
  report(
    `idle memory: RSS ${(rss0 / MB).toFixed(1)} MiB (PSS ${(pss0 / MB).toFixed(1)}) idle; ${
      (rss1 / MB).toFixed(1)
    } MiB (PSS ${(pss1 / MB).toFixed(1)}) with 50 idle publishers = ${
      ((rss1 - rss0) / 50 / 1024).toFixed(0)
    } KiB per publisher`,
  );
}

/**
 * The ways of pushing one stream to several destinations that `engines` compares, and `tee` and
 * `tee+decode`: no relay at all but the floors under one written for Deno (`bench/tcp_tee.ts`).
 */
type Engine = "native" | "ffmpeg" | "nginx" | "tee" | "tee+decode";

/** A relay under test: where publishers go, and what to measure. */
interface Target extends AsyncDisposable {
  port: number;
  /** The processes doing the relaying (the relay and its FFmpeg children, or nginx). */
  pids(): Promise<number[]>;
  /** Drops the relay itself reports (undefined for nginx-rtmp, which reports none). */
  drops(): Promise<
    | {
      droppedPackets: number;
      episodes: number;
      logLines: number;
      /** The relay's own view of its memory (`/stats`), to see what its PSS is made of. */
      heapUsed: number;
      external: number;
    }
    | undefined
  >;
}

async function portOpen(port: number): Promise<boolean> {
  try {
    (await Deno.connect({ hostname: "127.0.0.1", port })).close();
    return true;
  } catch {
    return false;
  }
}

/** nginx-rtmp with `push` of every stream of application `live` to each of `sinkUrls`. */
async function startNginx(dir: string, sinkUrls: string[]): Promise<Target> {
  const port = freePort();
  await Deno.mkdir(`${dir}/nginx`);
  await Deno.writeTextFile(
    `${dir}/nginx/nginx.conf`,
    `daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log ${dir}/nginx/error.log warn;\npid ${dir}/nginx/nginx.pid;\n` +
      `load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\nevents { worker_connections 4096; }\n` +
      `rtmp { server { listen 127.0.0.1:${port}; chunk_size 4096; application live { live on; ` +
      sinkUrls.map((url) => `push ${url};`).join(" ") + ` } } }\n`,
  );
  const nginx = new TestProcess("nginx", [
    "-p",
    `${dir}/nginx`,
    "-e",
    `${dir}/nginx/error.log`,
    "-c",
    `${dir}/nginx/nginx.conf`,
  ]);
  await waitFor(() => {
    if (nginx.exited) throw new Error(`nginx exited:\n${nginx.stderr}`);
    return portOpen(port);
  }, "nginx");
  return {
    port,
    pids: () => Promise.resolve([nginx.pid]),
    drops: () => Promise.resolve(undefined),
    [Symbol.asyncDispose]: () => nginx[Symbol.asyncDispose](),
  };
}

/** Our relay as its own process, every destination on `engine`. */
async function startRelay(
  dir: string,
  engine: "native" | "ffmpeg",
  keys: string[],
  sinkUrls: string[],
): Promise<Target> {
  // NEUSTREAM_BENCH_CPU_PROF=DIR: the relay writes a V8 CPU profile there when it exits.
  const profileDir = Deno.env.get("NEUSTREAM_BENCH_CPU_PROF");
  const body = `[streaming]\nengine = "${engine}"\nreconnect_grace_seconds = 0\n` +
    `state_dir = "${dir}/state"\n` +
    keys.map((key) =>
      `[[streams]]\nkey = "${key}"\n` +
      sinkUrls.map((url, i) =>
        `[[streams.destinations]]\nid = "d${i}"\nrtmp_url = "${url}"\nstream_key = "${key}"\n`
      ).join("")
    ).join("");
  const relay = await spawnRelay(
    dir,
    body,
    "",
    profileDir === undefined ? undefined : [
      `--v8-flags=${V8_FLAGS.join(",")}`,
      "--cpu-prof",
      `--cpu-prof-dir=${profileDir}`,
      "--allow-net",
      "--allow-read",
      `--allow-write=${dir}`,
      "--allow-env",
      "--allow-run=ffmpeg",
    ],
  );
  return {
    port: relay.rtmpPort,
    pids: () => processTree(relay.process.pid),
    async drops() {
      const reply = await fetch(`http://127.0.0.1:${relay.httpPort}/api/streams`);
      const { streams } = await reply.json() as {
        streams: {
          destinations: { status: { dropped_packets: number; drop_episodes: number } }[];
        }[];
      };
      let droppedPackets = 0;
      let episodes = 0;
      for (const stream of streams) {
        for (const { status } of stream.destinations) {
          droppedPackets += status.dropped_packets;
          episodes += status.drop_episodes;
        }
      }
      const logLines = relay.process.stderr.split("dropping until the next keyframe").length - 1;
      const { memory } = await fetch(`http://127.0.0.1:${relay.httpPort}/stats`).then((r) =>
        r.json()
      ) as { memory: { heap_used_bytes: number; external_bytes: number } };
      return {
        droppedPackets,
        episodes,
        logLines,
        heapUsed: memory.heap_used_bytes,
        external: memory.external_bytes,
      };
    },
    [Symbol.asyncDispose]: () => relay[Symbol.asyncDispose](),
  };
}

/**
 * `bench/tcp_tee.ts`: what the reads and writes alone cost a Deno process, and with `decode` the
 * chunk decoding on top (see there).
 */
async function startTee(sinkUrls: string[], decode: boolean): Promise<Target> {
  const port = freePort();
  const sinkPorts = sinkUrls.map((url) => new URL(url.replace(/^rtmp:/, "http:")).port);
  const tee = new TestProcess("deno", [
    "run",
    "--allow-net=127.0.0.1",
    new URL("./tcp_tee.ts", import.meta.url).pathname,
    ...(decode ? ["--decode"] : []),
    String(port),
    ...sinkPorts,
  ]);
  await workerSays(tee, "port", 30_000);
  return {
    port,
    pids: () => Promise.resolve([tee.pid]),
    drops: () => Promise.resolve(undefined),
    [Symbol.asyncDispose]: () => tee[Symbol.asyncDispose](),
  };
}

function startTarget(
  engine: Engine,
  dir: string,
  keys: string[],
  sinkUrls: string[],
): Promise<Target> {
  if (engine === "nginx") return startNginx(dir, sinkUrls);
  if (engine === "tee" || engine === "tee+decode") {
    return startTee(sinkUrls, engine === "tee+decode");
  }
  return startRelay(dir, engine, keys, sinkUrls);
}

/** A `bench/load_worker.ts` child (see there); it gets only loopback and the fixture cache. */
function loadWorker(args: string[]): TestProcess {
  return new TestProcess("deno", [
    "run",
    "--allow-net=127.0.0.1",
    "--allow-read",
    "--allow-write=/tmp",
    "--allow-env",
    "--allow-run=ffmpeg",
    new URL("./load_worker.ts", import.meta.url).pathname,
    ...args,
  ], { stdin: "piped" });
}

/** The first JSON line the worker printed that has `field`. */
async function workerSays<T>(worker: TestProcess, field: string, timeoutMs: number): Promise<T> {
  return await waitFor(
    () => {
      for (const text of worker.stdout.split("\n")) {
        if (text.startsWith("{") && text.includes(`"${field}"`)) return JSON.parse(text) as T;
      }
      if (worker.exited) throw new Error(`${worker.name} exited:\n${worker.stderr}`);
      return undefined;
    },
    `${field} from the load worker`,
    timeoutMs,
    100,
  );
}

interface EngineRow {
  engine: Engine;
  streams: number;
  cpuPercent: number;
  /** The part of `cpuPercent` spent in the kernel (system time). */
  kernelPercent: number;
  idlePss: number;
  loadedPss: number;
  processes: number;
  lost: number;
  delivered: number;
  expected: number;
  missingStreams: number;
  drops: Awaited<ReturnType<Target["drops"]>>;
  loadCpuPercent: number;
  publisherWorkers: number;
}

const engineRows: EngineRow[] = [];
const latencyRows: { engine: Engine; median: number; p99: number; frames: number }[] = [];

/** Streams per publisher worker: one event loop paces at most this many 3 Mbit/s publishers. */
const STREAMS_PER_PUBLISHER = 50;

/**
 * `count` streams × 3 destinations at 3 Mbit/s through `engine`: publishers and 3 sinks (one per
 * destination) in worker processes; the relay's tree measured over 10 s after 5 s of warm-up.
 */
async function measureEngine(engine: Engine, count: number): Promise<EngineRow> {
  const keys = Array.from({ length: count }, (_, i) => `bench-${engine}-${i}`);
  await using dir = await tempDir();
  await using sink0 = loadWorker(["sink"]);
  await using sink1 = loadWorker(["sink"]);
  await using sink2 = loadWorker(["sink"]);
  const sinks = [sink0, sink1, sink2];
  const sinkUrls: string[] = [];
  for (const sink of sinks) {
    const { port } = await workerSays<{ port: number }>(sink, "port", 60_000);
    sinkUrls.push(`rtmp://127.0.0.1:${port}/live`);
  }
  await using target = await startTarget(engine, dir.path, keys, sinkUrls);
  await waitFor(async () => (await target.pids()).length > 0, "relay process");
  await sleep(1_000);
  const idlePss = await pssBytes(await target.pids());

  const seconds = 17;
  const groups: string[][] = [];
  for (let i = 0; i < keys.length; i += STREAMS_PER_PUBLISHER) {
    groups.push(keys.slice(i, i + STREAMS_PER_PUBLISHER));
  }
  const publishers = groups.map((group) =>
    loadWorker(["publish", String(target.port), String(seconds), ...group])
  );
  try {
    for (const publisher of publishers) await workerSays(publisher, "started", 60_000);
    const workerPids = [...sinks, ...publishers].map((worker) => worker.pid);
    await sleep(5_000);
    const tree0 = await target.pids();
    const [cpu0, load0, t0] = [
      await cpuTimes(tree0),
      await cpuSeconds(workerPids),
      performance.now(),
    ];
    await sleep(10_000);
    const tree1 = await target.pids();
    const [cpu1, load1, t1] = [
      await cpuTimes(tree1),
      await cpuSeconds(workerPids),
      performance.now(),
    ];
    const loadedPss = await pssBytes(tree1);
    const drops = await target.drops();
    const sent: SentCounts = {};
    for (const publisher of publishers) {
      Object.assign(sent, (await workerSays<{ sent: SentCounts }>(publisher, "sent", 60_000)).sent);
    }
    const request = new TextEncoder().encode(JSON.stringify({ sent }) + "\n");
    const reports: SinkReport[] = [];
    for (const sink of sinks) {
      const writer = sink.child.stdin.getWriter();
      await writer.write(request);
      await writer.close();
    }
    for (const sink of sinks) reports.push(await workerSays<SinkReport>(sink, "lost", 120_000));
    for (const report of reports) for (const text of report.reports) console.log(`  ${text}`);
    const seconds = (t1 - t0) / 1000;
    return {
      engine,
      streams: count,
      cpuPercent: ((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / seconds) * 100,
      kernelPercent: ((cpu1.system - cpu0.system) / seconds) * 100,
      idlePss,
      loadedPss,
      processes: tree1.length,
      lost: reports.reduce((sum, r) => sum + r.lost, 0),
      delivered: reports.reduce((sum, r) => sum + r.delivered, 0),
      expected: reports.reduce((sum, r) => sum + r.expected, 0),
      missingStreams: reports.reduce((sum, r) => sum + r.missingStreams, 0),
      drops,
      loadCpuPercent: ((load1 - load0) / seconds) * 100,
      publisherWorkers: publishers.length,
    };
  } finally {
    for (const publisher of publishers) await publisher[Symbol.asyncDispose]();
  }
}

function reportEngine(row: EngineRow): void {
  engineRows.push(row);
  const perStream = (row.loadedPss - row.idlePss) / row.streams / MB;
  const drops = row.drops === undefined
    ? `drops not reported by ${row.engine.startsWith("tee") ? "the tee" : "nginx-rtmp"}`
    : `${row.drops.episodes} drop episodes (${row.drops.droppedPackets} packets dropped, ${row.drops.logLines} log lines); V8 heap used ${
      (row.drops.heapUsed / MB).toFixed(1)
    } MiB, external ${(row.drops.external / MB).toFixed(1)} MiB`;
  report(
    `${row.engine} ${row.streams} x 3 at 3 Mbit/s: CPU ${row.cpuPercent.toFixed(0)}% (${
      row.kernelPercent.toFixed(0)
    }% in the kernel), PSS ${(row.loadedPss / MB).toFixed(1)} MiB (idle ${
      (row.idlePss / MB).toFixed(1)
    }; ${
      perStream.toFixed(2)
    } MiB per stream above idle; ${row.processes} processes), sinks: ${row.lost} packets lost, ${row.missingStreams} streams missing, ${row.delivered}/${row.expected} packets delivered; ${drops}; load workers (${row.publisherWorkers} publisher + 3 sink processes) CPU ${
      row.loadCpuPercent.toFixed(0)
    }%`,
  );
}

async function fanout(): Promise<void> {
  await loadFixture();
  for (const count of [1, 10, 30]) {
    for (const engine of ["native", "ffmpeg", "nginx", "tee", "tee+decode"] as const) {
      reportEngine(await measureEngine(engine, count));
    }
  }
}

async function scale(): Promise<void> {
  await loadFixture();
  report("scale: 100 x 3 not run with the ffmpeg engine (300 FFmpeg processes do not fit 2 cores)");
  for (const engine of ["native", "nginx", "tee", "tee+decode"] as const) {
    reportEngine(await measureEngine(engine, 100));
  }
}

async function latency(): Promise<void> {
  const packets = await loadFixture();
  for (const engine of ["native", "ffmpeg", "nginx"] as const) {
    await using sink = new BenchSink();
    await using dir = await tempDir();
    await using target = await startTarget(engine, dir.path, ["bench-latency"], [sink.url]);
    const sent = new Map<number, number>();
    const arrived = new Map<number, number>();
    sink.onVideo = (ts, at) => arrived.set(ts, at);
    const { client, streamId } = await publisher(target.port, "bench-latency");
    await pacedPublish(
      client,
      streamId,
      packets,
      performance.now() + 15_000,
      (ts, at) => sent.set(ts, at),
    );
    await sleep(1_000);
    client.close();
    const samples: number[] = [];
    for (const [ts, at] of sent) {
      const got = arrived.get(ts);
      if (got !== undefined && ts > 3_000) samples.push(got - at); // after FFmpeg's start-up
    }
    samples.sort((a, b) => a - b);
    const row = {
      engine,
      median: percentile(samples, 50),
      p99: percentile(samples, 99),
      frames: samples.length,
    };
    latencyRows.push(row);
    report(
      `latency publisher -> ${engine} -> sink at 3 Mbit/s: median ${
        row.median.toFixed(1)
      } ms, p99 ${row.p99.toFixed(1)} ms (${samples.length} video frames; ${
        sent.size - samples.length
      } not matched or in warm-up)`,
    );
  }
}

/** Issue 16's figures as a Markdown table, from whatever of latency/fanout/scale ran. */
function engineTable(): string {
  const lines = engineRows.length === 0 ? [] : [
    "| streams × 3 dest. | engine | CPU % | of it kernel % | PSS MiB (idle) | MiB/stream above idle | MiB/stream marginal | lost | delivered | drop episodes | load CPU % |",
    "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const row of engineRows) {
    // PSS per extra stream between this size and the next smaller one of the same engine: fixed
    // costs (a heap grown once, code compiled once) fall out.
    const smaller = engineRows.filter((r) => r.engine === row.engine && r.streams < row.streams)
      .at(-1);
    const marginal = smaller === undefined
      ? "-"
      : ((row.loadedPss - smaller.loadedPss) / (row.streams - smaller.streams) / MB).toFixed(2);
    const nginx = engineRows.find((r) => r.engine === "nginx" && r.streams === row.streams);
    const ratio = nginx && row.engine !== "nginx"
      ? ` (${(row.cpuPercent / nginx.cpuPercent).toFixed(1)}× nginx)`
      : "";
    lines.push(
      `| ${row.streams} | ${row.engine} | ${row.cpuPercent.toFixed(0)}${ratio} | ${
        row.kernelPercent.toFixed(0)
      } | ${(row.loadedPss / MB).toFixed(0)} (${(row.idlePss / MB).toFixed(0)}) | ${
        ((row.loadedPss - row.idlePss) / row.streams / MB).toFixed(2)
      } | ${marginal} | ${row.lost}${
        row.missingStreams ? ` (${row.missingStreams} streams missing)` : ""
      } | ${row.delivered}/${row.expected} | ${row.drops?.episodes ?? "n/a"} | ${
        row.loadCpuPercent.toFixed(0)
      } |`,
    );
  }
  for (const row of latencyRows) {
    lines.push(
      `latency ${row.engine}: median ${row.median.toFixed(1)} ms, p99 ${
        row.p99.toFixed(1)
      } ms (${row.frames} frames)`,
    );
  }
  return lines.join("\n");
}

async function timeToAccept(command: string, args: string[], port: number): Promise<number> {
  const started = performance.now();
  await using process = new TestProcess(command, args);
  await waitFor(
    async () => {
      if (process.exited) throw new Error(`${command} exited:\n${process.stderr}`);
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port })).close();
        return true;
      } catch {
        return false;
      }
    },
    "RTMP port",
    30_000,
    2,
  );
  return performance.now() - started;
}

/** A process of `bench/io_cost.ts` in `role`. */
function ioProcess(args: string[]): TestProcess {
  return new TestProcess("deno", [
    "run",
    "--allow-net=127.0.0.1",
    new URL("./io_cost.ts", import.meta.url).pathname,
    ...args,
  ], { stdin: "piped" });
}

/** CPU seconds and call counts of one `bench/io_cost.ts` receiver over `seconds`. */
interface IoSample {
  reads: number;
  writes: number;
  user: number;
  system: number;
}

async function ioSample(
  connections: number,
  copies: number,
  seconds: number,
): Promise<IoSample> {
  const [rate, size] = [66, 5_700];
  await using discard = ioProcess(["discard"]);
  const { port: discardPort } = await workerSays<{ port: number }>(discard, "port", 30_000);
  await using receiver = ioProcess(["receive", String(discardPort), String(copies)]);
  const { port } = await workerSays<{ port: number }>(receiver, "port", 30_000);
  const sendArgs = ["send", String(port), String(connections), String(rate), String(size)];
  await using sender = ioProcess(sendArgs);
  await workerSays(sender, "started", 30_000);
  const writer = receiver.child.stdin.getWriter();
  let asked = 0;
  const counts = async () => {
    await writer.write(new TextEncoder().encode("count\n"));
    const n = ++asked;
    return await waitFor(
      () => {
        for (const text of receiver.stdout.split("\n")) {
          if (text.startsWith(`{"count":${n},`)) {
            return JSON.parse(text) as { reads: number; writes: number };
          }
        }
        return undefined;
      },
      "counts from the receiver",
      10_000,
      20,
    );
  };
  await sleep(3_000);
  const [calls0, cpu0] = [await counts(), await cpuTimes([receiver.pid])];
  await sleep(seconds * 1000);
  const [calls1, cpu1] = [await counts(), await cpuTimes([receiver.pid])];
  await writer.close();
  return {
    reads: calls1.reads - calls0.reads,
    writes: calls1.writes - calls0.writes,
    user: cpu1.user - cpu0.user,
    system: cpu1.system - cpu0.system,
  };
}

/**
 * What one read and one write cost a Deno process (`bench/io_cost.ts`), the floor under every
 * per-packet cost of a relay written for Deno. Connections each bring 5,700 bytes 66 times a second
 * (a 3 Mbit/s publisher's arrivals, as the relay reads them in `scale`): 10 of them, whose
 * arrivals are 1.5 ms apart, so that each read wakes the event loop by itself; 100, whose arrivals
 * come in bunches (the sender's timer fires about once a millisecond), so that one wake-up serves
 * many reads; and the 100 again with every read also written to 3 connections, as a tee does.
 */
async function io(): Promise<void> {
  const seconds = 10;
  const us = (cpu: number, calls: number) => ((cpu / calls) * 1e6).toFixed(1);
  const percent = (sample: IoSample) =>
    (((sample.user + sample.system) / seconds) * 100).toFixed(1);
  const alone = await ioSample(10, 0, seconds);
  report(
    `io: Deno ${Deno.version.deno}, a read that wakes the event loop by itself (10 connections x 66/s x 5700 B, ${
      (alone.reads / seconds).toFixed(0)
    } reads/s, CPU ${percent(alone)}%): ${us(alone.user, alone.reads)} µs user + ${
      us(alone.system, alone.reads)
    } µs kernel`,
  );
  const bunched = await ioSample(100, 0, seconds);
  report(
    `io: a read among many at one wake-up (100 connections, ${
      (bunched.reads / seconds).toFixed(0)
    } reads/s, CPU ${percent(bunched)}%): ${us(bunched.user, bunched.reads)} µs user + ${
      us(bunched.system, bunched.reads)
    } µs kernel`,
  );
  // The copies' cost is what this run spent beyond its reads, priced as in the bunched run.
  const copied = await ioSample(100, 3, seconds);
  const [readUser, readSystem] = [bunched.user / bunched.reads, bunched.system / bunched.reads];
  report(
    `io: a write the socket takes at once (each of those reads written to 3 connections, ${
      (copied.writes / seconds).toFixed(0)
    } writes/s, CPU ${percent(copied)}%): ${
      us(copied.user - readUser * copied.reads, copied.writes)
    } µs user + ${us(copied.system - readSystem * copied.reads, copied.writes)} µs kernel`,
  );
}

async function startup(): Promise<void> {
  await using dir = await tempDir();
  const variants: [string, string, string[]][] = [[
    "deno run",
    "deno",
    [
      "run",
      "--allow-net",
      "--allow-read",
      "--allow-env",
      "--allow-run=ffmpeg",
      new URL("../main.ts", import.meta.url).pathname,
    ],
  ]];
  const compiled = new URL("../dist/neustream", import.meta.url).pathname;
  if (await Deno.stat(compiled).then(() => true, () => false)) {
    variants.push(["compiled", compiled, []]);
  } else {report(
      "startup: compiled executable not measured (dist/neustream not built: run deno task compile)",
    );}
  for (const [name, command, args] of variants) {
    const times: number[] = [];
    for (let i = 0; i < 5; i++) {
      const port = freePort();
      await Deno.writeTextFile(
        `${dir.path}/s.toml`,
        `[rtmp]\nport = ${port}\nbind = "127.0.0.1"\n[http]\nport = ${freePort()}\nbind = "127.0.0.1"\n`,
      );
      times.push(await timeToAccept(command, [...args, "--config", `${dir.path}/s.toml`], port));
    }
    times.sort((a, b) => a - b);
    report(
      `startup (${name}): process start to accepting RTMP, median of 5: ${
        times[2]!.toFixed(0)
      } ms (min ${times[0]!.toFixed(0)}, max ${times[4]!.toFixed(0)})`,
    );
  }
}

const cpuModel = (await run("cat", ["/proc/cpuinfo"])).match(/model name\s*:\s*(.*)/)?.[1] ?? "";
console.log(
  `machine: ${navigator.hardwareConcurrency} cores ${cpuModel}, Deno ${Deno.version.deno}; shared and noisy: compare within one run\n`,
);
const table: Record<string, () => Promise<void>> = {
  throughput,
  idle,
  latency,
  fanout,
  scale,
  startup,
  io,
};
for (const section of sections) {
  const bench = table[section];
  if (bench === undefined) {
    throw new TypeError(`unknown section ${section}; choose from ${ALL.join(", ")} or engines`);
  }
  await bench();
}
console.log("\nsummary:\n" + results.map((line) => `  ${line}`).join("\n"));
const engines = engineTable();
if (engines) console.log(`\n${engines}`);
