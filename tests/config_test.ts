import {
  CONFIG_SECTIONS,
  ConfigError,
  ENV_VARIABLES,
  levelFromRustLog,
  loadConfig,
  type LoadConfigOptions,
  parseConfigText,
  validateConfig,
} from "../src/config.ts";
import { DestinationSchema } from "../src/control_plane/destination.ts";
import {
  assert,
  assertEquals,
  assertMatch,
  assertRejects,
  assertThrows,
} from "./helpers/assert.ts";
import { tempDir } from "./helpers/process.ts";

/** The Rust server's example file, verbatim: it must load unchanged (drop-in compatibility). */
const RUST_CONFIG = `
[control_plane]
url = "https://api.neustream.app"
timeout_seconds = 10
retry_attempts = 3

[rtmp]
port = 1935
chunk_size = 60000
gop_cache = true
ping_interval_seconds = 30
ping_timeout_seconds = 60

[http]
port = 8000
allow_origin = "*"

[streaming]
max_destinations_per_stream = 10
memory_pool_size_mb = 64
buffer_size_kb = 64
connection_timeout_seconds = 30
stats_update_interval_seconds = 5

[logging]
level = "info"
format = "json"
`;

Deno.test("loadConfig() reads the Rust server's config file unchanged", async () => {
  await using dir = await tempDir();
  await Deno.writeTextFile(`${dir.path}/config.toml`, RUST_CONFIG);
  const config = await loadConfig({ path: `${dir.path}/config.toml` });
  assertEquals(config.control_plane.url, "https://api.neustream.app");
  assertEquals(config.rtmp.chunk_size, 60000);
  assertEquals(config.logging.format, "json");
  assertEquals(config.rtmp.app, "live", "defaults fill what the file leaves out");
});

Deno.test("loadConfig() lets flags beat env, env beat the file, the file beat defaults", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/c.toml`;
  await Deno.writeTextFile(
    path,
    '[rtmp]\nport = 2000\n[http]\nport = 9000\n[logging]\nlevel = "error"\n',
  );
  const fileOnly = await loadConfig({ path });
  assertEquals([fileOnly.rtmp.port, fileOnly.http.port, fileOnly.logging.level], [
    2000,
    9000,
    "error",
  ]);
  const withEnv = await loadConfig({
    path,
    env: { RTMP_PORT: "3000", HTTP_PORT: "9100", RUST_LOG: "rust_media_server=debug" },
  });
  assertEquals([withEnv.rtmp.port, withEnv.http.port, withEnv.logging.level], [
    3000,
    9100,
    "debug",
  ]);
  const withFlags = await loadConfig({
    path,
    env: { RTMP_PORT: "3000", LOG_LEVEL: "warn" },
    flags: { rtmpPort: 4000 },
  });
  assertEquals([withFlags.rtmp.port, withFlags.logging.level], [4000, "warn"]);
  const defaults = validateConfig({}, "empty");
  assertEquals([defaults.rtmp.port, defaults.http.port, defaults.http.bind], [
    1935,
    8000,
    "0.0.0.0",
  ]);
});

Deno.test("validateConfig() names the key, the value and what is allowed", () => {
  const error = assertThrows(
    () =>
      validateConfig(
        { rtmp: { port: 70000, chunk_size: "big" }, logging: { format: "xml" } },
        "config.toml",
      ),
    ConfigError,
  );
  assertMatch(error.message, /config\.toml: rtmp\.port = 70000: .*65535/);
  assertMatch(error.message, /rtmp\.chunk_size = "big": .*number/);
  assertMatch(error.message, /logging\.format = "xml": .*"text".*"json"/);
  const typo = assertThrows(() => validateConfig({ rtmp: { chunk_sise: 1 } }, "c"), ConfigError);
  assertMatch(typo.message, /unknown key rtmp\.chunk_sise/);
});

Deno.test("validateConfig() rejects a destination that is not rtmp or rtmps, without echoing keys", () => {
  const error = assertThrows(() =>
    validateConfig({
      streams: [{
        key: "secret-stream-key",
        destinations: [{ id: "x", rtmp_url: "file:///etc/passwd", stream_key: "k" }],
      }],
    }, "c"), ConfigError);
  assertMatch(error.message, /streams\[0\]\.destinations\[0\]\.rtmp_url.*not allowed/);
  const keyError = assertThrows(
    () => validateConfig({ streams: [{ key: "has space" }] }, "c"),
    ConfigError,
  );
  assertMatch(keyError.message, /streams\[0\]\.key = \(hidden\)/);
  // Longer than any publish the RTMP server accepts: it could never go live.
  const longError = assertThrows(
    () => validateConfig({ streams: [{ key: "k".repeat(513) }] }, "c"),
    ConfigError,
  );
  assertMatch(longError.message, /streams\[0\]\.key = \(hidden\).*512 characters/);
  validateConfig({ streams: [{ key: "k".repeat(512) }] }, "c");
  const twice = assertThrows(
    () =>
      validateConfig(
        { streams: [{ key: "twice-key" }, { key: "other" }, { key: "twice-key" }] },
        "c",
      ),
    ConfigError,
  );
  assertMatch(twice.message, /streams\[2\]\.key = \(hidden\).*same key as streams\[0\]/);
  assert(!twice.message.includes("twice-key"), twice.message);
});

Deno.test("loadConfig() reports a missing named file and bad TOML as ConfigError", async () => {
  await assertRejects(
    () => loadConfig({ path: "/nonexistent/neustream.toml" }),
    ConfigError,
    "cannot read config file",
  );
  await using dir = await tempDir();
  await Deno.writeTextFile(`${dir.path}/bad.toml`, "[rtmp\nport = 1");
  await assertRejects(
    () => loadConfig({ path: `${dir.path}/bad.toml` }),
    ConfigError,
    "not valid TOML",
  );
  const env = await loadConfig({ path: `${dir.path}/missing.toml` }).catch((e) => e);
  assertEquals(env instanceof ConfigError, true);
});

/**
 * The bundled `config.toml` with its commented `# key = value` and `# [section]` lines switched on:
 * what an operator sees as the documentation of every key.
 */
async function documentedConfig(): Promise<Record<string, Record<string, unknown>>> {
  const text = await Deno.readTextFile(new URL("../config.toml", import.meta.url));
  const uncommented = text.split("\n").map((line) => {
    const match = line.match(/^#\s*(\[\[?[a-z_.]+\]\]?\s*(#.*)?|[a-z_]+\s*=.*)$/);
    return match ? match[1] : line;
  }).join("\n");
  return parseConfigText(uncommented, "config.toml") as Record<string, Record<string, unknown>>;
}

Deno.test("config.toml documents every key of src/config.ts with its default", async () => {
  const documented = await documentedConfig();
  const defaults = validateConfig({}, "defaults") as unknown as Record<
    string,
    Record<string, unknown>
  >;
  for (const [section, schema] of Object.entries(CONFIG_SECTIONS)) {
    const keys = Object.keys(schema.shape).sort();
    assertEquals(Object.keys(documented[section] ?? {}).sort(), keys, `[${section}] keys`);
    for (const key of keys) {
      const fallback = defaults[section]?.[key];
      if (fallback === undefined) continue; // optional: the file shows an example
      assertEquals(documented[section]?.[key], fallback, `[${section}] ${key} default`);
    }
  }
  const streams = documented.streams as unknown as { destinations: Record<string, unknown>[] }[];
  const example = streams[0]?.destinations[0] ?? {};
  assertEquals(Object.keys(example).sort(), Object.keys(DestinationSchema.shape).sort());
  // The documented values, examples included, form a valid file.
  validateConfig(documented, "config.toml");
});

Deno.test("validateConfig() keeps a file whose static destination names an unknown engine", () => {
  const config = validateConfig({
    streaming: { engine: "native", max_attempts: 3 },
    streams: [{
      key: "k",
      destinations: [{ id: "typo", rtmp_url: "rtmp://host/live", engine: "gstreamer" }],
    }],
  }, "test");
  assertEquals([config.streaming.engine, config.streaming.max_attempts], ["native", 3]);
  assertEquals(config.streams[0]?.destinations[0]?.engine, "gstreamer");
  assertThrows(() => validateConfig({ streaming: { engine: "gstreamer" } }, "test"), ConfigError);
});

Deno.test("validateConfig() redacts a key written in a destination's rtmp_url", () => {
  const secret = "destSECRET0987654321";
  const error = assertThrows(() =>
    validateConfig({
      streams: [{
        key: "k",
        destinations: [{ id: "x", rtmp_url: `http://youtube.com/live2/${secret}` }],
      }],
    }, "c"), ConfigError);
  assertMatch(
    error.message,
    /streams\[0\]\.destinations\[0\]\.rtmp_url = "http:\/\/youtube\.com\/live2\/dest…\(20\)": /,
  );
  assertEquals(error.message.includes(secret.slice(4)), false, error.message);
});

Deno.test("validateConfig() reports a destination's stream_key problem under stream_key", () => {
  const error = assertThrows(() =>
    validateConfig({
      streams: [{
        key: "k",
        destinations: [{ id: "x", rtmp_url: "rtmp://host/live", stream_key: "-secret-key" }],
      }],
    }, "c"), ConfigError);
  assertMatch(error.message, /^c: streams\[0\]\.destinations\[0\]\.stream_key = \(hidden\): /);
  assertEquals(error.message.includes("secret-key"), false, error.message);
});

Deno.test("validateConfig() accepts [logging] level in any case, as LOG_LEVEL does", () => {
  for (const level of ["INFO", "Warn", "debug"]) {
    assertEquals(
      validateConfig({ logging: { level } }, "c").logging.level,
      level.toLowerCase(),
      level,
    );
  }
});

Deno.test("loadConfig() names the environment variable or flag that holds a bad value", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/bad.toml`;
  await Deno.writeTextFile(path, "[rtmp]\nport = 1935\n");
  const cases: [LoadConfigOptions, RegExp][] = [
    [{ env: { RTMP_PORT: "abc" } }, /^environment RTMP_PORT = "abc": /],
    [{ env: { HTTP_PORT: "99999" } }, /^environment HTTP_PORT = "99999": .*65535/],
    [{ env: { LOG_LEVEL: "verbose" } }, /^environment LOG_LEVEL = "verbose": .*"info"/],
    [{ env: { RUST_LOG: "rust_media_server=loud" } }, /^environment RUST_LOG = "rust_media_ser/],
    [{ env: { API_TOKEN: "short" } }, /^environment API_TOKEN = \(hidden\): .*16 characters/],
    [{ env: { CONTROL_PLANE_URL: "notaurl" } }, /^environment CONTROL_PLANE_URL = "notaurl": /],
    [{ flags: { rtmpPort: 70000 } }, /^--rtmp-port = 70000: .*65535/],
    [{ flags: { httpPort: -1 } }, /^--http-port = -1: /],
  ];
  for (const [options, expected] of cases) {
    const error = await loadConfig({ path, ...options }).catch((error) => error);
    assert(error instanceof ConfigError, `${JSON.stringify(options)}: ${error}`);
    assertMatch(error.message, expected);
    assertEquals(error.message.includes("bad.toml"), false, error.message);
    assertEquals(error.message.includes("short"), false, error.message);
  }
});

Deno.test("loadConfig() treats an empty environment variable as not set", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/c.toml`;
  await Deno.writeTextFile(path, '[logging]\nlevel = "warn"\n');
  const plain = await loadConfig({ path });
  for (const name of ENV_VARIABLES) {
    for (const value of ["", "  "]) {
      const config = await loadConfig({ path, env: { [name]: value } });
      assertEquals(config, plain, `${name}=${JSON.stringify(value)}`);
    }
  }
  // An empty LOG_LEVEL leaves RUST_LOG to speak.
  const rust = await loadConfig({ path, env: { LOG_LEVEL: "", RUST_LOG: "debug" } });
  assertEquals(rust.logging.level, "debug");
});

Deno.test("levelFromRustLog() reads RUST_LOG as the Rust server's filter would", () => {
  const cases: [string, string | undefined][] = [
    ["debug", "debug"],
    ["INFO", "info"],
    ["off", "error"],
    ["rust_media_server=off", "error"],
    ["warn,rust_media_server=debug", "debug"],
    ["rust_media_server=debug,warn", "debug"],
    ["warn,tower=debug", "warn"],
    ["rust_media_server=debug,tower=info", "debug"],
    ["tower=debug", undefined],
    ["nonsense", undefined],
    ["rust_media_server", "trace"],
    ["rust_media_server[conn]=debug", "debug"],
    [" warn , rust_media_server = info ", "info"],
    ["rust_media_server=loud", "loud"],
  ];
  for (const [filter, level] of cases) assertEquals(levelFromRustLog(filter), level, filter);
});

Deno.test("parseConfigText() names the line and column of a TOML syntax error", () => {
  const error = assertThrows(
    () => parseConfigText("[rtmp]\nport = 1\nchunk_size = 6000 0\n", "bad.toml"),
    ConfigError,
  );
  assertMatch(error.message, /^bad\.toml: line 3, column 19: not valid TOML: .*end-of-line/);
  // The offending line is not quoted: it may hold a key.
  const secret = assertThrows(
    () => parseConfigText('[[streams]]\nkey = "dev-secret-key" x\n', "bad.toml"),
    ConfigError,
  );
  assertMatch(secret.message, /^bad\.toml: line 2, column /);
  assertEquals(secret.message.includes("dev-secret-key"), false, secret.message);
});
