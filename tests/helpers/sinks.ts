/**
 * Real RTMP ingest servers standing in for YouTube and Twitch: nginx with the RTMP module
 * (records every stream it receives to `<key>.flv`) and FFmpeg listening with `-listen 1`.
 *
 * @module
 */

import { freePort, sleep, TestProcess, waitFor } from "./process.ts";

/**
 * True when something listens on 127.0.0.1:`port`. Asked by trying to bind it rather than by
 * connecting, which would use up a one-shot listener such as `ffmpeg -listen 1`.
 */
export function isListening(port: number): boolean {
  try {
    const probe = Deno.listen({ hostname: "127.0.0.1", port });
    probe.close();
    return false;
  } catch (error) {
    if (error instanceof Deno.errors.AddrInUse) return true;
    throw error;
  }
}

export class NginxSink implements AsyncDisposable {
  readonly port: number;
  readonly dir: string;
  readonly process: TestProcess;

  private constructor(port: number, dir: string, process: TestProcess) {
    this.port = port;
    this.dir = dir;
    this.process = process;
  }

  /** Starts nginx-rtmp on a free port; recordings go to `dir/rec/<key>.flv`. */
  static async start(dir: string, options: { unique?: boolean } = {}): Promise<NginxSink> {
    const port = freePort();
    await Deno.mkdir(`${dir}/rec`, { recursive: true });
    await Deno.writeTextFile(
      `${dir}/nginx.conf`,
      `daemon off;
master_process off;
worker_processes 1;
error_log ${dir}/error.log info;
pid ${dir}/nginx.pid;
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
events { worker_connections 256; }
rtmp {
  server {
    listen 127.0.0.1:${port};
    chunk_size 4096;
    application live {
      live on;
      record all;
      record_path ${dir}/rec;
      record_unique ${options.unique ? "on" : "off"};
    }
  }
}
`,
    );
    const process = new TestProcess("nginx", [
      "-p",
      dir,
      "-e",
      `${dir}/error.log`,
      "-c",
      `${dir}/nginx.conf`,
    ]);
    await waitFor(() => process.exited || isListening(port), "nginx to listen");
    if (process.exited) throw new Error(`nginx failed to start:\n${process.stderr}`);
    return new NginxSink(port, dir, process);
  }

  /** Base URL a destination pushes to (the key is appended by the relay). */
  get baseUrl(): string {
    return `rtmp://127.0.0.1:${this.port}/live`;
  }

  recording(key: string): string {
    return `${this.dir}/rec/${key}.flv`;
  }

  async recordings(): Promise<string[]> {
    const names: string[] = [];
    for await (const entry of Deno.readDir(`${this.dir}/rec`)) names.push(entry.name);
    return names.sort();
  }

  async errorLog(): Promise<string> {
    return await Deno.readTextFile(`${this.dir}/error.log`).catch(() => "");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.process[Symbol.asyncDispose]();
  }
}

/** `ffmpeg -listen 1`: accepts one publisher on `port` and writes what it gets to `out`. */
export async function startFfmpegSink(
  port: number,
  key: string,
  out: string,
): Promise<TestProcess> {
  const process = new TestProcess("ffmpeg", [
    "-hide_banner",
    "-loglevel",
    "warning",
    "-y",
    "-listen",
    "1",
    "-i",
    `rtmp://127.0.0.1:${port}/live/${key}`,
    "-map",
    "0",
    "-c",
    "copy",
    "-f",
    "flv",
    out,
  ]);
  await waitFor(() => process.exited || isListening(port), "ffmpeg sink to listen");
  if (process.exited) throw new Error(`ffmpeg sink failed to start:\n${process.stderr}`);
  return process;
}

/**
 * An `ffmpeg -listen 1` sink started again whenever a session ends in an error, as a platform's
 * ingest stays up. A one-shot sink is gone after one failed connection: on a busy machine the
 * relay's reconnecting FFmpeg can reach it with an attempt that then fails, and the retry that
 * follows would find nothing. `out` holds the recording of the last session.
 */
export class ReopeningFfmpegSink implements AsyncDisposable {
  /** Sessions that ended in an error before the one that succeeded. */
  failedSessions = 0;
  #current: TestProcess;
  #stopped = false;
  #done = false;
  readonly #served: Promise<void>;

  private constructor(first: TestProcess, port: number, key: string, out: string) {
    this.#current = first;
    this.#served = (async () => {
      let current = first;
      while ((await current.status).code !== 0) {
        if (this.#stopped) throw new Error(`sink on ${port} stopped before a whole session`);
        this.failedSessions++;
        current = this.#current = await startFfmpegSink(port, key, out);
      }
      this.#done = true;
    })();
    this.#served.catch(() => {}); // observed by wait()
  }

  static async start(port: number, key: string, out: string): Promise<ReopeningFfmpegSink> {
    return new ReopeningFfmpegSink(await startFfmpegSink(port, key, out), port, key, out);
  }

  /** Waits until one session has ended cleanly (the publisher finished its stream). */
  async wait(timeoutMs: number): Promise<void> {
    await waitFor(() => this.#done, "a whole session at the sink", timeoutMs);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#stopped = true;
    await this.#current[Symbol.asyncDispose]();
    await this.#served.catch(() => {});
  }
}

/** Waits until a file exists and stops growing (a recording that was closed). */
export async function settledFile(path: string, quietMs = 500): Promise<void> {
  let last = -1;
  await waitFor(
    async () => {
      const size = await Deno.stat(path).then((info) => info.size, () => -1);
      const settled = size > 0 && size === last;
      last = size;
      if (!settled) await sleep(quietMs);
      return settled;
    },
    `${path} to be written`,
    20_000,
  );
}
