/**
 * Configuration: `config.toml`, compatible with the Rust server's file, then environment
 * variables, then command-line flags (flags beat env, env beats file, file beats defaults).
 * Validated with zod; a wrong value is reported with its key, its value and what is allowed.
 *
 * @module
 */

import { parse as parseToml, TomlError } from "smol-toml";
import { z } from "zod";
import {
  DestinationSchema,
  InvalidDestination,
  validateDestination,
} from "./control_plane/destination.ts";
import { LOG_LEVELS } from "./log.ts";
import { redactRtmpUrl } from "./redact.ts";
import { ENGINE_NAMES, isEngineName } from "./relay/relay_engine.ts";
import { MAX_KEY_LENGTH } from "./rtmp/server_conversation.ts";
import { describeFsError } from "./fs_errors.ts";

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
  // Any case, as `LOG_LEVEL` and `RUST_LOG` are read: `INFO` in the file is no different.
  level: z.string().toLowerCase().pipe(z.enum(LOG_LEVELS)).default("info"),
  format: z.enum(["text", "json"]).default("text"),
});

const StaticStreamSchema = z.strictObject({
  key: z.string().min(1).max(
    MAX_KEY_LENGTH,
    `must be at most ${MAX_KEY_LENGTH} characters (the longest key a publish may use)`,
  ).regex(/^[^\s/?#]+$/, "must not contain whitespace, /, ? or #"),
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
  // A key listed twice: which entry's destinations would a publish get? Neither is guessed.
  streams: z.array(StaticStreamSchema).default([]).superRefine((streams, ctx) => {
    const first = new Map<string, number>();
    streams.forEach((stream, index) => {
      const earlier = first.get(stream.key);
      if (earlier === undefined) first.set(stream.key, index);
      else {
        ctx.addIssue({
          code: "custom",
          path: [index, "key"],
          message: `the same key as streams[${earlier}]: list each key once`,
        });
      }
    });
  }),
}).superRefine((config, context) => {
  config.streams.forEach((stream, streamIndex) => {
    stream.destinations.forEach((destination, index) => {
      // An unknown engine is an error of that destination alone: it is skipped with a log line
      // when the stream publishes (`selectDestinations`), the others go out.
      if (destination.engine !== undefined && !isEngineName(destination.engine)) return;
      try {
        validateDestination(destination);
      } catch (error) {
        if (!(error instanceof InvalidDestination)) throw error;
        // Under the field at fault, so that a key's problem is reported with the key hidden.
        context.addIssue({
          code: "custom",
          path: ["streams", streamIndex, "destinations", index, error.field],
          message: error.message,
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

/**
 * A file's value as an error may show it. A destination's URL can hold its key (an empty
 * `stream_key` means the key is written in `rtmp_url`), so it is shown as the API shows it.
 */
function shownValue(raw: unknown, path: readonly PropertyKey[]): string {
  const value = valueAt(raw, path);
  const last = path.at(-1);
  // A destination written as a bare URL where a table was expected is redacted the same way.
  const destinationUrl = last === "rtmp_url" ||
    (typeof last === "number" && path.at(-2) === "destinations");
  if (!destinationUrl || typeof value !== "string") return describe(value);
  const streamKey = valueAt(raw, [...path.slice(0, -1), "stream_key"]);
  return describe(redactRtmpUrl(value, typeof streamKey === "string" ? streamKey : ""));
}

/**
 * A value that came from outside the file, so that an error about it sends the operator where it
 * is set (`neustream.env` under systemd, the unit's command line), not to `config.toml`.
 */
export interface ValueOrigin {
  /** `environment RTMP_PORT`, `--rtmp-port`. */
  name: string;
  /** As it was given, before conversion (`"abc"` for a port). */
  value: string | number;
}

/**
 * Validates a raw object; throws `ConfigError` with one line per problem. `origins` names, by path
 * (`rtmp.port`), the values that came from the environment or a flag rather than from `source`.
 */
export function validateConfig(
  raw: unknown,
  source: string,
  origins: ReadonlyMap<string, ValueOrigin> = new Map(),
): Config {
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
    const origin = origins.get(path);
    // Secrets are never echoed back, even in an error.
    const secret = /stream_key|api_token|(^|\.)key$/.test(path);
    const value = secret
      ? "(hidden)"
      : origin
      ? describe(origin.value)
      : shownValue(raw, issue.path);
    return `${origin ? origin.name : `${source}: ${path}`} = ${value}: ${issue.message}`;
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

/** The Rust server's crate: its directive in `RUST_LOG` set the Rust server's own level. */
const RUST_CRATE = "rust_media_server";

/** `target[span{field=value}]=level`, or a bare `level` or `target`: one `RUST_LOG` directive. */
const RUST_DIRECTIVE = /^([^[=]*)(?:\[.*\])?(?:=(.*))?$/;

/** What a bare `RUST_LOG` directive may be as a level; anything else is a target. */
const RUST_LEVELS: ReadonlySet<string> = new Set([...LOG_LEVELS, "off"]);

/**
 * The level a Rust `RUST_LOG` filter (env_logger's and tracing's comma-separated directives) gave
 * the Rust server, as the relay's level: that of the directive for the `rust_media_server` crate
 * (the last, if several; a module's, `rust_media_server::rtmp=debug`, is not the crate's), else the
 * bare default level (`warn,tower=debug`: warn), else undefined, and the file's or the default
 * level applies. Rust would have silenced the crate then, but a directive for another library
 * (`tower=debug`) is no reason to silence a relay; nor is a bare word that is not a level
 * (`verbose`), which Rust reads as a target too. A bare `rust_media_server` means every level:
 * trace. `off` becomes "error", the quietest level the relay has: its logger cannot be switched
 * off, and errors are what an operator who silenced the Rust server still needs to see. A crate
 * level that is not one (`rust_media_server=loud`) is returned as written, so that validation
 * rejects it naming `RUST_LOG`.
 */
export function levelFromRustLog(value: string): string | undefined {
  let crate: string | undefined;
  let fallback: string | undefined;
  for (const directive of value.split(",")) {
    const match = RUST_DIRECTIVE.exec(directive.trim());
    if (!match) continue;
    const target = match[1]!.trim();
    const level = match[2]?.trim().toLowerCase();
    if (level === undefined && RUST_LEVELS.has(target.toLowerCase())) {
      fallback = target.toLowerCase();
    } else if (target === RUST_CRATE) crate = level ?? "trace";
  }
  const level = crate ?? fallback;
  return level === "off" ? "error" : level;
}

/**
 * Writes the environment's and the flags' values over the file's, and returns where each came
 * from. An empty (or blank) variable is not set: EnvironmentFile templates leave `RTMP_PORT=`.
 */
function applyOverrides(
  raw: Record<string, unknown>,
  env: Record<string, string | undefined>,
  flags: FlagOverrides,
): Map<string, ValueOrigin> {
  const origins = new Map<string, ValueOrigin>();
  const set = (section: string, key: string, value: unknown, origin: ValueOrigin) => {
    const table = (raw[section] ??= {});
    // A section that is not a table is the file's error, reported by validation as such.
    if (table === null || typeof table !== "object" || Array.isArray(table)) return;
    (table as Record<string, unknown>)[key] = value;
    origins.set(`${section}.${key}`, origin);
  };
  const read = (name: typeof ENV_VARIABLES[number]) => {
    const value = env[name];
    return value === undefined || value.trim() === "" ? undefined : value;
  };
  const fromEnv = (
    name: typeof ENV_VARIABLES[number],
    section: string,
    key: string,
    convert: (value: string) => unknown = (value) => value,
  ) => {
    const value = read(name);
    if (value === undefined) return;
    // `undefined`: the value sets nothing here (a `RUST_LOG` with no level for the relay).
    const converted = convert(value);
    if (converted !== undefined) {
      set(section, key, converted, { name: `environment ${name}`, value });
    }
  };
  const number = (value: string) => (/^\s*\d+\s*$/.test(value) ? Number(value) : value);
  fromEnv("RTMP_PORT", "rtmp", "port", number);
  fromEnv("HTTP_PORT", "http", "port", number);
  fromEnv("CONTROL_PLANE_URL", "control_plane", "url");
  fromEnv("API_TOKEN", "http", "api_token");
  // systemd may list several directories separated by ':'; ours is the first.
  fromEnv("STATE_DIRECTORY", "streaming", "state_dir", (value) => value.split(":")[0]);
  if (read("LOG_LEVEL") !== undefined) fromEnv("LOG_LEVEL", "logging", "level");
  else fromEnv("RUST_LOG", "logging", "level", levelFromRustLog);
  const flag = (name: string, section: string, key: string, value: number | undefined) => {
    if (value !== undefined) set(section, key, value, { name, value });
  };
  flag("--rtmp-port", "rtmp", "port", flags.rtmpPort);
  flag("--http-port", "http", "port", flags.httpPort);
  return origins;
}

/**
 * Parses TOML text; a syntax error becomes a `ConfigError` naming the file, line and column. Only
 * the first line of smol-toml's message is kept: the rest quotes the offending lines, which may
 * hold a key.
 */
export function parseConfigText(text: string, source: string): Record<string, unknown> {
  try {
    return parseToml(text) as Record<string, unknown>;
  } catch (error) {
    if (!(error instanceof TomlError)) throw error;
    const reason = error.message.split("\n")[0];
    throw new ConfigError(
      `${source}: line ${error.line}, column ${error.column}: not valid TOML: ${reason}`,
    );
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
      // Deno's own words ("run again with the --allow-read flag") mean nothing to an operator
      // running the compiled executable, whose permissions are baked in.
      const why = describeFsError(
        error,
        "read",
        "put it in the directory it reads (/etc/neustream when installed)",
      );
      throw new ConfigError(`cannot read config file ${path}: ${why}`);
    }
  }
  const origins = applyOverrides(raw, options.env ?? {}, options.flags ?? {});
  return validateConfig(raw, options.path ?? "config", origins);
}

/** Reads the environment variables we use, and only those (narrow `--allow-env`). */
export function readEnv(): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {};
  for (const name of ENV_VARIABLES) env[name] = Deno.env.get(name);
  return env;
}
