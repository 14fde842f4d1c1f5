/**
 * Starts the real relay service in-process on free loopback ports, with its log records captured
 * so tests can check what was logged (and that no secret was).
 *
 * @module
 */

import { validateConfig } from "../../src/config.ts";
import { type LogRecord, setupLogging } from "../../src/log.ts";
import { RelayService, type ServiceOptions } from "../../src/service.ts";
import { textFormatter } from "../../src/log.ts";

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

  constructor(service: RelayService, logs: LogRecord[]) {
    this.service = service;
    this.logs = logs;
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
  }
}

/** Starts a relay with test defaults (loopback, port 0, quick backoff) and `overrides`. */
export async function startTestRelay(
  overrides: ConfigOverrides = {},
  options: Partial<ServiceOptions> = {},
): Promise<TestRelay> {
  const logs: LogRecord[] = [];
  const config = validateConfig(
    merge({
      rtmp: { port: 0, bind: "127.0.0.1" },
      http: { port: 0, bind: "127.0.0.1" },
      logging: { level: "debug" },
      streaming: { shutdown_grace_seconds: 8 },
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
  return new TestRelay(service, logs);
}
