/**
 * `deno task bench [section...]`: throughput, idle memory, relay latency, fan-out cost next to
 * nginx-rtmp, start-up time. The relay runs as its own process (`deno run main.ts`), measured
 * from /proc; load generators and sinks run in this process. Sections: throughput idle latency
 * fanout startup (default: all).
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
import { readFlvTags } from "./flv_file.ts";
import { cpuSeconds, cpuTimes, processTree, pssBytes, rssBytes } from "./proc.ts";

const ALL = ["throughput", "idle", "latency", "fanout", "startup"];
const sections = Deno.args.length > 0 ? Deno.args : ALL;
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

/** An in-process RTMP server standing for a platform: accepts any key, counts what arrives. */
class BenchSink implements AsyncDisposable {
  readonly hub = new StreamHub({ gopCache: false, gopCacheMaxBytes: 0 });
  readonly server: RtmpServer;
  bytes = 0;
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
            this.bytes += packet.payload.length;
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

async function latency(): Promise<void> {
  const source = await fixture({ seconds: 20, gop: 60, videoBitrate: "3M", size: "1280x720" });
  const packets = await readFlvTags(source);
  await using sink = new BenchSink();
  await using dir = await tempDir();
  await using relay = await spawnRelay(
    dir.path,
    `[[streams]]\nkey = "bench-latency"\n[[streams.destinations]]\nid = "sink"\nrtmp_url = "${sink.url}"\nstream_key = "lat"\n`,
  );
  const sent = new Map<number, number>();
  const arrived = new Map<number, number>();
  sink.onVideo = (ts, at) => arrived.set(ts, at);
  const { client, streamId } = await publisher(relay.rtmpPort, "bench-latency");
  await pacedPublish(
    client,
    streamId,
    packets,
    performance.now() + 18_000,
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
  report(
    `latency publisher -> relay -> FFmpeg -> sink at 3 Mbit/s: median ${
      percentile(samples, 50).toFixed(1)
    } ms, p99 ${percentile(samples, 99).toFixed(1)} ms (${samples.length} video frames; ${
      sent.size - samples.length
    } not matched or in warm-up)`,
  );
}

async function measureLoad(
  pids: () => Promise<number[]>,
  port: number,
  keys: string[],
  packets: MediaPacket[],
): Promise<{ cpuPercent: number; pss: number; processes: number }> {
  const until = performance.now() + 16_000;
  const publishers = await Promise.all(keys.map((key) => publisher(port, key)));
  const sending = publishers.map(({ client, streamId }) =>
    pacedPublish(client, streamId, packets, until)
  );
  await sleep(5_000);
  const tree0 = await pids();
  const [cpu0, t0] = [await cpuSeconds(tree0), performance.now()];
  await sleep(10_000);
  const tree1 = await pids();
  const [cpu1, t1] = [await cpuSeconds(tree1), performance.now()];
  const pss = await pssBytes(tree1);
  await Promise.all(sending);
  for (const { client } of publishers) client.close();
  await sleep(1_500);
  return { cpuPercent: ((cpu1 - cpu0) / ((t1 - t0) / 1000)) * 100, pss, processes: tree1.length };
}

async function fanout(): Promise<void> {
  const source = await fixture({ seconds: 20, gop: 60, videoBitrate: "3M", size: "1280x720" });
  const packets = await readFlvTags(source);
  for (const count of [1, 10, 30]) {
    const keys = Array.from({ length: count }, (_, i) => `bench-fan-${i}`);
    await using sinkA = new BenchSink();
    await using sinkB = new BenchSink();
    await using sinkC = new BenchSink();
    const sinks = [sinkA, sinkB, sinkC];

    await using dir = await tempDir();
    const body = keys.map((key) =>
      `[[streams]]\nkey = "${key}"\n` +
      sinks.map((sink, i) =>
        `[[streams.destinations]]\nid = "d${i}"\nrtmp_url = "${sink.url}"\nstream_key = "${key}"\n`
      )
        .join("")
    ).join("");
    const relay = await spawnRelay(dir.path, body);
    const ours = await measureLoad(
      () => processTree(relay.process.pid),
      relay.rtmpPort,
      keys,
      packets,
    );
    const ffmpegCount = ours.processes - 1;
    await relay[Symbol.asyncDispose]();
    const oursBytes = sinks.reduce((sum, sink) => sum + sink.bytes, 0);

    for (const sink of sinks) sink.bytes = 0;
    const nginxPort = freePort();
    await Deno.mkdir(`${dir.path}/nginx`);
    await Deno.writeTextFile(
      `${dir.path}/nginx/nginx.conf`,
      `daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log ${dir.path}/nginx/error.log warn;\npid ${dir.path}/nginx/nginx.pid;\n` +
        `load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\nevents { worker_connections 1024; }\n` +
        `rtmp { server { listen 127.0.0.1:${nginxPort}; chunk_size 4096; application live { live on; ` +
        sinks.map((sink) => `push ${sink.url};`).join(" ") + ` } } }\n`,
    );
    await using nginx = new TestProcess("nginx", [
      "-p",
      `${dir.path}/nginx`,
      "-e",
      `${dir.path}/nginx/error.log`,
      "-c",
      `${dir.path}/nginx/nginx.conf`,
    ]);
    await waitFor(async () => {
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port: nginxPort })).close();
        return true;
      } catch {
        return false;
      }
    }, "nginx");
    const theirs = await measureLoad(() => Promise.resolve([nginx.pid]), nginxPort, keys, packets);
    const theirBytes = sinks.reduce((sum, sink) => sum + sink.bytes, 0);
    report(
      `fan-out ${count} stream(s) x 3 destinations at 3 Mbit/s: neustream CPU ${
        ours.cpuPercent.toFixed(0)
      }%, PSS ${(ours.pss / MB).toFixed(0)} MiB (relay + ${ffmpegCount} FFmpeg; ${
        (ours.pss / count / MB).toFixed(1)
      } MiB per stream), sinks got ${(oursBytes / MB).toFixed(0)} MiB | nginx-rtmp push CPU ${
        theirs.cpuPercent.toFixed(0)
      }%, PSS ${(theirs.pss / MB).toFixed(0)} MiB, sinks got ${(theirBytes / MB).toFixed(0)} MiB`,
    );
  }
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
const table: Record<string, () => Promise<void>> = { throughput, idle, latency, fanout, startup };
for (const section of sections) {
  const bench = table[section];
  if (bench === undefined) {
    throw new TypeError(`unknown section ${section}; choose from ${ALL.join(", ")}`);
  }
  await bench();
}
console.log("\nsummary:\n" + results.map((line) => `  ${line}`).join("\n"));
