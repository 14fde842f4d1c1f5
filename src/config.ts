/**
 * Configuration: `config.toml`, compatible with the Rust server's file, then environment
 * variables, then command-line flags (flags beat env, env beats file, file beats defaults).
 * Validated with zod; a wrong value is reported with its key, its value and what is allowed.
 *
 * @module
 */

import { parse as parseToml } from "smol-toml";
import { z } from "zod";
import { DestinationSchema, validateDestination } from "./control_plane/destination.ts";
import { LOG_LEVELS } from "./log.ts";
import { ENGINE_NAMES, isEngineName } from "./relay/relay_engine.ts";

// 0 asks the OS for any free port (tests use it).
const port = z.number().int().min(0).max(65535);
const positiveSeconds = z.number().positive().max(86_400);

const ControlPlaneSchema = z.strictObject({
  url: z.string().url().refine((url) => /^https?:\/\//.test(url), {
    message: "must be an http:// or https:// URL",
  }).optional(),
  timeout_seconds: positiveSeconds.default(10),
  retry_attempts: z.number().int().min(0).max(20).default(3),
});

const RtmpSchema = z.strictObject({
  port: port.default(1935),
  bind: z.string().min(1).default("0.0.0.0"),
  app: z.string().min(1).regex(/^[A-Za-z0-9_.-]+$/, "must be letters, digits, _ . or -").default(
    "live",
  ),
  chunk_size: z.number().int().min(128).max(16_777_215).default(60000),
  gop_cache: z.boolean().default(true),
  gop_cache_max_kb: z.number().int().min(0).max(1_048_576).default(32_768),
  max_message_size_kb: z.number().int().min(64).max(16_384).default(16_384),
  ping_interval_seconds: positiveSeconds.default(30),
  ping_timeout_seconds: positiveSeconds.default(60),
});

const HttpSchema = z.strictObject({
  port: port.default(8000),
  bind: z.string().min(1).default("0.0.0.0"),
  allow_origin: z.string().default("*"),
  api_token: z.string().min(16, "must be at least 16 characters").optional(),
  allow_unauthenticated_control: z.boolean().default(false),
});

const StreamingSchema = z.strictObject({
  max_destinations_per_stream: z.number().int().min(1).max(100).default(10),
  /** Accepted for compatibility with the Rust server's file; this relay has no buffer pool. */
  memory_pool_size_mb: z.number().int().min(0).default(64),
  buffer_size_kb: z.number().int().min(1).max(1_048_576).default(64),
  connection_timeout_seconds: positiveSeconds.default(30),
  stats_update_interval_seconds: positiveSeconds.default(5),
  ffmpeg_path: z.string().min(1).default("ffmpeg"),
  shutdown_grace_seconds: positiveSeconds.default(10),
  /** A stream outlives its publisher's connection this long, waiting for it to come back. */
  reconnect_grace_seconds: z.number().min(0).max(3600).default(10),
  /** A publisher silent this long can be replaced by a new connection for the same key. */
  publisher_idle_seconds: positiveSeconds.default(5),
  /**
   * Where the relay keeps what must survive a restart (the stream-end outbox, the CA bundle given
   * to FFmpeg). systemd's `StateDirectory=` sets `STATE_DIRECTORY`, which overrides it.
   */
  state_dir: z.string().min(1).default("state"),
  /**
   * PEM file of extra certificate authorities trusted for `rtmps://` destinations, on top of the
   * system's roots (an operator's own ingest, a test CA).
   */
  tls_ca_file: z.string().min(1).optional(),
  /**
   * What pushes to destinations that do not name an engine: "ffmpeg" (one `ffmpeg -c copy` each)
   * or "native" (our own RTMP publisher: no process, Enhanced RTMP and multitrack).
   */
  engine: z.enum(ENGINE_NAMES).default("ffmpeg"),
  /** Failed attempts in a row before a destination gives up (`exhausted`); 0: never. */
  max_attempts: z.number().int().min(0).max(1_000_000).default(0),
});

const LoggingSchema = z.strictObject({
  level: z.enum(LOG_LEVELS).default("info"),
  format: z.enum(["text", "json"]).default("text"),
});

const StaticStreamSchema = z.strictObject({
  key: z.string().min(1).regex(/^[^\s/?#]+$/, "must not contain whitespace, /, ? or #"),
  destinations: z.array(DestinationSchema).default([]),
});

/** The sections of `config.toml` with a fixed set of keys, by name (the config test lists them). */
export const CONFIG_SECTIONS = {
  control_plane: ControlPlaneSchema,
  rtmp: RtmpSchema,
  http: HttpSchema,
  streaming: StreamingSchema,
  logging: LoggingSchema,
} as const;

export const ConfigSchema = z.strictObject({
  control_plane: ControlPlaneSchema.default(ControlPlaneSchema.parse({})),
  rtmp: RtmpSchema.default(RtmpSchema.parse({})),
  http: HttpSchema.default(HttpSchema.parse({})),
  streaming: StreamingSchema.default(StreamingSchema.parse({})),
  logging: LoggingSchema.default(LoggingSchema.parse({})),
  streams: z.array(StaticStreamSchema).default([]),
}).superRefine((config, context) => {
  config.streams.forEach((stream, streamIndex) => {
    stream.destinations.forEach((destination, index) => {
      // An unknown engine is an error of that destination alone: it is skipped with a log line
      // when the stream publishes (`selectDestinations`), the others go out.
      if (destination.engine !== undefined && !isEngineName(destination.engine)) return;
      try {
        validateDestination(destination);
      } catch (error) {
        context.addIssue({
          code: "custom",
          path: ["streams", streamIndex, "destinations", index, "rtmp_url"],
          message: (error as Error).message,
        });
      }
    });
  });
});

export type Config = z.output<typeof ConfigSchema>;

/** A configuration that failed validation or could not be read; the message is for the operator. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

function valueAt(input: unknown, path: readonly PropertyKey[]): unknown {
  let value = input;
  for (const key of path) {
    if (value === null || typeof value !== "object") return undefined;
    value = (value as Record<PropertyKey, unknown>)[key];
  }
  return value;
}

function describe(value: unknown): string {
  if (value === undefined) return "(missing)";
  const text = JSON.stringify(value);
  return text.length > 80 ? text.slice(0, 77) + "..." : text;
}

function formatPath(path: readonly PropertyKey[]): string {
  return path.map((key, index) =>
    typeof key === "number" ? `[${key}]` : `${index > 0 ? "." : ""}${String(key)}`
  ).join("");
}

/** Validates a raw object; throws `ConfigError` with one line per problem. */
export function validateConfig(raw: unknown, source: string): Config {
  const result = ConfigSchema.safeParse(raw);
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => {
    if (issue.code === "unrecognized_keys") {
      const where = formatPath(issue.path);
      return `${source}: unknown key ${
        issue.keys.map((key) => (where ? `${where}.${key}` : key)).join(", ")
      } (check the spelling against the configuration reference)`;
    }
    const path = formatPath(issue.path);
    // Secrets are never echoed back, even in an error.
    const secret = /stream_key|api_token|(^|\.)key$/.test(path);
    const value = secret ? "(hidden)" : describe(valueAt(raw, issue.path));
    return `${source}: ${path} = ${value}: ${issue.message}`;
  });
  throw new ConfigError(lines.join("\n"));
}

/** Overrides from the command line. */
export interface FlagOverrides {
  rtmpPort?: number;
  httpPort?: number;
}

/** The environment variables we read, shared with the compile task's `--allow-env` list. */
export const ENV_VARIABLES = [
  "RTMP_PORT",
  "HTTP_PORT",
  "CONTROL_PLANE_URL",
  "LOG_LEVEL",
  "RUST_LOG",
  "API_TOKEN",
  "STATE_DIRECTORY",
] as const;

/** Picks a level out of a Rust `RUST_LOG` filter such as `rust_media_server=debug,tower=info`. */
export function levelFromRustLog(value: string): string | undefined {
  const match = value.toLowerCase().match(/\b(trace|debug|info|warn|warning|error)\b/);
  return match?.[1];
}

function applyOverrides(
  raw: Record<string, Record<string, unknown>>,
  env: Record<string, string | undefined>,
  flags: FlagOverrides,
): void {
  const section = (name: string) => (raw[name] ??= {});
  const number = (value: string) => (/^\s*\d+\s*$/.test(value) ? Number(value) : value);
  if (env.RTMP_PORT !== undefined) section("rtmp").port = number(env.RTMP_PORT);
  if (env.HTTP_PORT !== undefined) section("http").port = number(env.HTTP_PORT);
  if (env.CONTROL_PLANE_URL !== undefined && env.CONTROL_PLANE_URL !== "") {
    section("control_plane").url = env.CONTROL_PLANE_URL;
  }
  if (env.API_TOKEN !== undefined && env.API_TOKEN !== "") {
    section("http").api_token = env.API_TOKEN;
  }
  if (env.STATE_DIRECTORY !== undefined && env.STATE_DIRECTORY !== "") {
    // systemd may list several directories separated by ':'; ours is the first.
    section("streaming").state_dir = env.STATE_DIRECTORY.split(":")[0];
  }
  const level = env.LOG_LEVEL ??
    (env.RUST_LOG ? levelFromRustLog(env.RUST_LOG) ?? env.RUST_LOG : undefined);
  if (level !== undefined && level !== "") section("logging").level = level.toLowerCase();
  if (flags.rtmpPort !== undefined) section("rtmp").port = flags.rtmpPort;
  if (flags.httpPort !== undefined) section("http").port = flags.httpPort;
}

/** Parses TOML text; a syntax error becomes a `ConfigError` naming the file and line. */
export function parseConfigText(text: string, source: string): Record<string, unknown> {
  try {
    return parseToml(text) as Record<string, unknown>;
  } catch (error) {
    throw new ConfigError(`${source}: not valid TOML: ${(error as Error).message.split("\n")[0]}`);
  }
}

export interface LoadConfigOptions {
  /** Path of the config file; when absent, `config.toml` is used if it exists. */
  path?: string;
  env?: Record<string, string | undefined>;
  flags?: FlagOverrides;
}

/** Reads, merges and validates the configuration. Throws `ConfigError`. */
export async function loadConfig(options: LoadConfigOptions = {}): Promise<Config> {
  const path = options.path ?? "config.toml";
  let raw: Record<string, unknown> = {};
  try {
    raw = parseConfigText(await Deno.readTextFile(path), path);
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    const missingDefault = options.path === undefined && error instanceof Deno.errors.NotFound;
    if (!missingDefault) {
      throw new ConfigError(`cannot read config file ${path}: ${(error as Error).message}`);
    }
  }
  applyOverrides(
    raw as Record<string, Record<string, unknown>>,
    options.env ?? {},
    options.flags ?? {},
  );
  return validateConfig(raw, options.path ?? "config");
}

/** Reads the environment variables we use, and only those (narrow `--allow-env`). */
export function readEnv(): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {};
  for (const name of ENV_VARIABLES) env[name] = Deno.env.get(name);
  return env;
}
