/**
 * Starts the real relay service in-process on free loopback ports, with its log records captured
 * so tests can check what was logged (and that no secret was).
 *
 * @module
 */

import { validateConfig } from "../../src/config.ts";
import { V8_FLAGS } from "../../src/permissions.ts";
import { type LogRecord, setupLogging } from "../../src/log.ts";
import { RelayService, type ServiceOptions } from "../../src/service.ts";
import { textFormatter } from "../../src/log.ts";
import { freePort, TestProcess, waitFor } from "./process.ts";

export type ConfigOverrides = Record<string, unknown>;

function merge(
  base: Record<string, unknown>,
  extra: Record<string, unknown>,
): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(extra)) {
    const current = out[key];
    out[key] = value !== null && typeof value === "object" && !Array.isArray(value) &&
        current !== null && typeof current === "object" && !Array.isArray(current)
      ? merge(current as Record<string, unknown>, value as Record<string, unknown>)
      : value;
  }
  return out;
}

export class TestRelay implements AsyncDisposable {
  readonly service: RelayService;
  readonly logs: LogRecord[];
  /** A `state_dir` of the test's own, removed with the relay; undefined when the test chose one. */
  readonly #stateDir: string | undefined;

  constructor(service: RelayService, logs: LogRecord[], stateDir?: string) {
    this.service = service;
    this.logs = logs;
    this.#stateDir = stateDir;
  }

  get rtmpPort(): number {
    return this.service.rtmpPort;
  }

  rtmpUrl(key: string): string {
    return `rtmp://127.0.0.1:${this.rtmpPort}/live/${key}`;
  }

  httpUrl(path: string): string {
    return `http://127.0.0.1:${this.service.httpPort}${path}`;
  }

  /** Every captured log line as text. */
  logText(): string {
    return this.logs.map(textFormatter).join("");
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.service.shutdown("test finished");
    if (this.#stateDir) await Deno.remove(this.#stateDir, { recursive: true });
  }
}

/** Starts a relay with test defaults (loopback, port 0, quick backoff) and `overrides`. */
export async function startTestRelay(
  overrides: ConfigOverrides = {},
  options: Partial<ServiceOptions> = {},
): Promise<TestRelay> {
  const logs: LogRecord[] = [];
  // Each relay gets a state directory of its own (the stream-end outbox lives there), unless the
  // test names one to share it between relays.
  const ownStateDir = (overrides.streaming as Record<string, unknown> | undefined)?.state_dir ===
      undefined
    ? await Deno.makeTempDir({ prefix: "neustream-state-" })
    : undefined;
  const config = validateConfig(
    merge({
      rtmp: { port: 0, bind: "127.0.0.1" },
      http: { port: 0, bind: "127.0.0.1" },
      logging: { level: "debug" },
      // Tests of other behaviour expect a stream to end when its publisher leaves; the reconnect
      // tests set their own window.
      streaming: {
        shutdown_grace_seconds: 8,
        reconnect_grace_seconds: 0,
        ...(ownStateDir ? { state_dir: ownStateDir } : {}),
      },
    }, overrides),
    "test config",
  );
  await setupLogging({
    level: config.logging.level,
    format: "text",
    stderr: Deno.env.get("TEST_LOG") === "1",
    extraSink: (record) => {
      logs.push(record);
    },
  });
  const service = await RelayService.start(config, {
    version: "test",
    backoff: { initialMs: 300, maxMs: 1_000, resetAfterMs: 5_000 },
    controlPlaneBackoffMs: 50,
    ...options,
  });
  return new TestRelay(service, logs, ownStateDir);
}

/** The relay run as users run it (`deno run main.ts`), for signals and `kill -9`. */
export interface RelayProcess extends AsyncDisposable {
  process: TestProcess;
  rtmpPort: number;
  httpPort: number;
  configPath: string;
  rtmpUrl(key: string): string;
}

/**
 * Broad permissions for tests of other behaviour, with `dir/state` as the state directory (through
 * STATE_DIRECTORY, as systemd sets it); tests/e2e/permissions_test.ts proves the real list. V8's
 * flags are the real ones: benchmarks measure the relay as it is run.
 */
function broadPermissions(dir: string): string[] {
  return [
    `--v8-flags=${V8_FLAGS.join(",")}`,
    "--allow-net",
    "--allow-read",
    `--allow-write=${dir}`,
    "--allow-env",
    "--allow-run=ffmpeg",
  ];
}

/**
 * Starts `main.ts` in a child Deno with `permissions` (broad ones by default, see above), on free
 * ports, with `configBody` (TOML without the [rtmp] and [http] sections, which this adds) written
 * to `dir`.
 */
export async function spawnRelay(
  dir: string,
  configBody: string,
  rtmpSettings = "",
  permissions?: string[],
  /** Runs while the relay starts, before it answers /health (signals sent during start-up). */
  whileStarting?: (process: TestProcess) => Promise<void>,
): Promise<RelayProcess> {
  const rtmpPort = freePort();
  const httpPort = freePort();
  const configPath = `${dir}/relay.toml`;
  await Deno.writeTextFile(
    configPath,
    relayConfigText(rtmpPort, httpPort, configBody, rtmpSettings),
  );
  const process = new TestProcess("deno", [
    "run",
    ...(permissions ?? broadPermissions(dir)),
    new URL("../../main.ts", import.meta.url).pathname,
    "--config",
    configPath,
    // The whole log, for tests that count log lines or scan them for secrets: a busy run (the
    // fuzzer logs every bad connection) writes far more than the default tail.
  ], {
    stderrLimit: 16 * 1024 * 1024,
    ...(permissions ? {} : { env: { STATE_DIRECTORY: `${dir}/state` } }),
  });
  await whileStarting?.(process);
  await waitFor(
    async () => {
      if (process.exited) throw new Error(`relay exited:\n${process.stderr}`);
      const health = await fetch(`http://127.0.0.1:${httpPort}/health`).then(
        (r) => r.text(),
        () => "",
      );
      return health.includes('"ok"');
    },
    "relay to start",
    30_000,
  );
  return {
    process,
    rtmpPort,
    httpPort,
    configPath,
    rtmpUrl: (key) => `rtmp://127.0.0.1:${rtmpPort}/live/${key}`,
    [Symbol.asyncDispose]: () => process[Symbol.asyncDispose](),
  };
}

/** Config text with our ports in front of `body`; `rtmpSettings` go into the [rtmp] section. */
export function relayConfigText(
  rtmpPort: number,
  httpPort: number,
  body: string,
  rtmpSettings = "",
): string {
  return `[rtmp]\nport = ${rtmpPort}\nbind = "127.0.0.1"\n${rtmpSettings}[http]\nport = ${httpPort}\nbind = "127.0.0.1"\n${body}`;
}
