/**
 * Neustream relay: RTMP in, every destination out. Reads flags, loads the config, starts the
 * service, stops it on signals. Everything else lives in `src/`.
 *
 * @module
 */

import { parseArgs } from "node:util";
import denoJson from "./deno.json" with { type: "json" };
import { ConfigError, loadConfig, readEnv } from "./src/config.ts";
import { log, setupLogging } from "./src/log.ts";
import { checkFfmpeg, needsFfmpeg, RelayService } from "./src/service.ts";

const USAGE =
  `neustream ${denoJson.version}: RTMP relay to YouTube, Twitch, Facebook and any RTMP(S) URL

Usage: neustream [--config FILE] [--rtmp-port N] [--http-port N]

Options:
  -c, --config FILE    configuration file (default: ./config.toml if present)
      --rtmp-port N    RTMP port (overrides RTMP_PORT and [rtmp] port)
      --http-port N    HTTP API port (overrides HTTP_PORT and [http] port)
  -h, --help           show this help
  -V, --version        show the version

Environment: RTMP_PORT, HTTP_PORT, CONTROL_PLANE_URL, LOG_LEVEL (or RUST_LOG), API_TOKEN.
Signals: SIGTERM/SIGINT stop gracefully (a second one exits at once), SIGHUP reloads the config.`;

/** Signals closer together than this count as one (see `stop`). */
const DUPLICATE_SIGNAL_WINDOW_MS = 250;

function fail(message: string, code = 1): never {
  console.error(`neustream: ${message}`);
  Deno.exit(code);
}

function portFlag(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const port = Number(value);
  if (!/^\d+$/.test(value) || port < 1 || port > 65535) {
    fail(`--${name} = ${JSON.stringify(value)}: must be a whole number from 1 to 65535`, 2);
  }
  return port;
}

async function main(): Promise<void> {
  // SIGHUP's default action ends the process, and systemd does not restart a unit that a SIGHUP
  // ended: a `systemctl reload` right after `start` must not kill the relay. The listener comes
  // first; a reload asked for during start-up waits for it and reads the file then.
  const started = Promise.withResolvers<void>();
  let reloading: Promise<void> = started.promise;
  let applyReload = (): Promise<void> => Promise.resolve();
  let reloadRejected = (_error: unknown): void => {};
  Deno.addSignalListener("SIGHUP", () => {
    // One reload at a time, in the order of the signals: one waiting on its FFmpeg check must not
    // be applied after a later one.
    reloading = reloading.then(() => applyReload()).catch((error) => reloadRejected(error));
  });

  let flags;
  try {
    flags = parseArgs({
      args: Deno.args,
      options: {
        config: { type: "string", short: "c" },
        "rtmp-port": { type: "string" },
        "http-port": { type: "string" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (error) {
    fail(`${(error as Error).message}\n\n${USAGE}`, 2);
  }
  if (flags.help) {
    console.log(USAGE);
    return;
  }
  if (flags.version) {
    console.log(`neustream ${denoJson.version}`);
    return;
  }

  const configPath = flags.config;
  const flagOverrides = {
    rtmpPort: portFlag("rtmp-port", flags["rtmp-port"]),
    httpPort: portFlag("http-port", flags["http-port"]),
  };
  const load = () => loadConfig({ path: configPath, env: readEnv(), flags: flagOverrides });

  let config;
  try {
    config = await load();
  } catch (error) {
    // One line per problem, each naming the file, the key and what is allowed.
    if (error instanceof ConfigError) fail(error.message.replaceAll("\n", "\nneustream: "));
    throw error;
  }
  await setupLogging({ level: config.logging.level, format: config.logging.format });
  const mainLog = log("main");

  let service: RelayService;
  try {
    service = await RelayService.start(config, { version: denoJson.version });
  } catch (error) {
    fail(`cannot start: ${(error as Error).message}`);
  }

  let stopping = false;
  let firstSignalAt = 0;
  const stop = (signal: Deno.Signal) => {
    // Ctrl-C under `deno task` reaches us twice (from the terminal's process group and forwarded
    // by the task runner): a repeat within this window is the same keypress, not a second one.
    if (stopping && performance.now() - firstSignalAt < DUPLICATE_SIGNAL_WINDOW_MS) return;
    if (stopping) {
      mainLog.warn("second {signal}: killing FFmpeg and exiting now", { signal });
      service.killChildren();
      Deno.exit(130);
    }
    stopping = true;
    firstSignalAt = performance.now();
    // The grace reloaded last (SIGHUP applies it), not the one read at start.
    const graceMs = service.shutdownGraceMs;
    const timer = setTimeout(() => {
      mainLog.error("shutdown took longer than {seconds} s; exiting", { seconds: graceMs / 1000 });
      Deno.exit(1);
    }, graceMs);
    service.shutdown(`received ${signal}`).then(() => {
      clearTimeout(timer);
      Deno.exit(0);
    }, (error) => {
      mainLog.fatal("shutdown failed: {reason}", { reason: (error as Error).message });
      Deno.exit(1);
    });
  };
  Deno.addSignalListener("SIGTERM", () => stop("SIGTERM"));
  Deno.addSignalListener("SIGINT", () => stop("SIGINT"));
  applyReload = async () => {
    const next = await load();
    // A relay that started with nothing for FFmpeg to do did not check it; a reload that gives it
    // some does, so that a missing FFmpeg is one line now, not a failure per destination later.
    // The control plane's URL takes a restart: whether it is set is the running one's say.
    const running = { ...next, control_plane: service.config.control_plane };
    if (needsFfmpeg(running) && !needsFfmpeg(service.currentConfig)) {
      await checkFfmpeg(service.config.streaming.ffmpeg_path);
    }
    service.reload(next);
    await setupLogging({ level: next.logging.level, format: next.logging.format });
  };
  reloadRejected = (error) => {
    mainLog.error("configuration reload rejected, keeping the old one: {reason}", {
      reason: (error as Error).message.replaceAll("\n", "; "),
    });
  };
  started.resolve();
}

if (import.meta.main) await main();
