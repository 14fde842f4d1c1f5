/**
 * Child processes for tests: real peers (FFmpeg, GStreamer, rtmpdump, nginx) started with `await
 * using`, so each is killed and reaped however the test ends.
 *
 * @module
 */

/** Keeps the last `limit` characters of a stream's text (stderr of a peer, for failure messages). */
async function collectText(
  stream: ReadableStream<Uint8Array>,
  sink: { text: string },
  limit: number,
) {
  const decoder = new TextDecoder();
  for await (const chunk of stream) {
    sink.text += decoder.decode(chunk, { stream: true });
    if (sink.text.length > limit) sink.text = sink.text.slice(-limit);
  }
}

export class TestProcess implements AsyncDisposable {
  readonly name: string;
  readonly child: Deno.ChildProcess;
  readonly status: Promise<Deno.CommandStatus>;
  readonly #stderr = { text: "" };
  readonly #stdout = { text: "" };
  readonly #reading: Promise<void>;
  #exited = false;

  /** `stderrLimit`: how much of the end of stderr is kept (64 KiB unless said). */
  constructor(
    command: string,
    args: string[],
    options: { stdin?: "piped" | "null"; env?: Record<string, string>; stderrLimit?: number } = {},
  ) {
    this.name = `${command} ${args.join(" ")}`.slice(0, 200);
    this.child = new Deno.Command(command, {
      args,
      env: childEnv(options.env),
      clearEnv: true,
      stdin: options.stdin ?? "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.status = this.child.status.then((status) => {
      this.#exited = true;
      return status;
    });
    this.#reading = Promise.all([
      collectText(this.child.stdout, this.#stdout, 256 * 1024),
      collectText(this.child.stderr, this.#stderr, options.stderrLimit ?? 64 * 1024),
    ]).then(() => {});
  }

  get pid(): number {
    return this.child.pid;
  }

  get exited(): boolean {
    return this.#exited;
  }

  get stderr(): string {
    return this.#stderr.text;
  }

  get stdout(): string {
    return this.#stdout.text;
  }

  kill(signal: Deno.Signal = "SIGTERM"): void {
    if (this.#exited) return;
    try {
      this.child.kill(signal);
    } catch (error) {
      if (!(error instanceof TypeError)) throw error; // already gone
    }
  }

  /** Waits for exit (with a deadline) and for its output to be read. */
  async wait(timeoutMs = 30_000): Promise<Deno.CommandStatus> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const status = await Promise.race([
      this.status,
      new Promise<never>((_, reject) =>
        timer = setTimeout(
          () =>
            reject(new Error(`${this.name} did not exit within ${timeoutMs} ms\n${this.stderr}`)),
          timeoutMs,
        )
      ),
    ]).finally(() => clearTimeout(timer));
    await this.#reading;
    return status;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#exited) {
      this.kill("SIGTERM");
      let timer: ReturnType<typeof setTimeout> | undefined;
      const exited = await Promise.race([
        this.status.then(() => true),
        new Promise<boolean>((resolve) => timer = setTimeout(() => resolve(false), 3_000)),
      ]);
      clearTimeout(timer);
      if (!exited) this.kill("SIGKILL");
    }
    await this.status;
    await this.#reading;
  }
}

/** Runs a command to completion; throws with its stderr when it fails. */
export async function run(command: string, args: string[]): Promise<string> {
  const output = await new Deno.Command(command, { args, stdout: "piped", stderr: "piped" })
    .output();
  if (!output.success) {
    throw new Error(
      `${command} ${args.join(" ")} failed (${output.code}):\n${
        new TextDecoder().decode(output.stderr)
      }`,
    );
  }
  return new TextDecoder().decode(output.stdout);
}

/** Polls `check` until it returns a truthy value or the deadline passes. */
export async function waitFor<T>(
  check: () => T | Promise<T>,
  what: string,
  timeoutMs = 15_000,
  intervalMs = 50,
): Promise<NonNullable<T>> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (performance.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Ports `freePort()` hands out: below Linux's ephemeral range (32768 and up), which every
 * `port: 0` listener and every outgoing connection draws from. A port taken from that range and
 * bound later by a peer could meanwhile go to one of those (about 1 in 14,000 each); from here it
 * cannot. Handed out in turn from a random start, so that no two calls in a run give the same.
 */
const PORT_RANGE = { first: 20_000, count: 10_000 };
let nextPort = Math.floor(Math.random() * PORT_RANGE.count);

/** A TCP port free at the time of asking (for peers that need a fixed port, like `-listen 1`). */
export function freePort(): number {
  for (let tries = 0; tries < PORT_RANGE.count; tries++) {
    const port = PORT_RANGE.first + (nextPort++ % PORT_RANGE.count);
    try {
      using _listener = Deno.listen({ hostname: "127.0.0.1", port });
      return port;
    } catch (error) {
      if (!(error instanceof Deno.errors.AddrInUse)) throw error;
    }
  }
  throw new Error(`no free port in ${PORT_RANGE.first}-${PORT_RANGE.first + PORT_RANGE.count - 1}`);
}

/** Process ids of running FFmpeg processes whose command line contains `marker`. */
export async function ffmpegProcessesWith(marker: string): Promise<number[]> {
  const text = await run("ps", ["-eo", "pid=,args="]);
  return text.split("\n")
    .filter((line) => line.includes("ffmpeg") && line.includes(marker) && !line.includes("ps -eo"))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

/** A fresh temporary directory under /tmp, removed on dispose. */
export async function tempDir(
  prefix = "neustream-test-",
): Promise<AsyncDisposable & { path: string }> {
  const path = await Deno.makeTempDir({ dir: "/tmp", prefix });
  return {
    path,
    async [Symbol.asyncDispose]() {
      await Deno.remove(path, { recursive: true });
    },
  };
}

/**
 * The environment for a child: ours with `extra` on top, without systemd's `JOURNAL_STREAM`. A CI
 * runner that is itself a systemd service would pass it on, and a relay told its stderr is the
 * journal prefixes each line with its priority (`<6>`), which is not what tests read.
 */
function childEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env = Deno.env.toObject();
  delete env.JOURNAL_STREAM;
  return { ...env, ...extra };
}
