/**
 * The running relay: hub, authority, RTMP listener, relay manager and HTTP API, built from a
 * `Config`, started in one call and stopped in one call. `main.ts` adds flags and signals on top;
 * tests start it in-process on port 0.
 *
 * @module
 */

import { isDeepStrictEqual } from "node:util";
import type { Config, CONFIG_SECTIONS } from "./config.ts";
import { ControlPlaneClient } from "./control_plane/http_client.ts";
import { HttpServer } from "./http/http_server.ts";
import { openOutbox, type StreamEndOutbox } from "./control_plane/outbox.ts";
import { LiveRecord } from "./control_plane/live_record.ts";
import { streamFields } from "./stream_id.ts";
import { StaticAuthority } from "./control_plane/static_authority.ts";
import type { StreamAuthority } from "./control_plane/stream_authority.ts";
import { createApp } from "./http/app.ts";
import { RelayEvents } from "./http/events.ts";
import { createReadModel } from "./http/read_model.ts";
import { log } from "./log.ts";
import { StreamHub } from "./media/live_stream.ts";
import { Thumbnailer } from "./media/thumbnail.ts";
import type { BackoffOptions } from "./relay/backoff.ts";
import type { SupervisorOptions } from "./relay/destination_supervisor.ts";
import { RelayManager, type RelayManagerOptions } from "./relay/relay_manager.ts";
import { ProcessPool } from "./relay/process_pool.ts";
import { prepareTlsTrust, type TlsSettings, type TlsTrust } from "./relay/tls_trust.ts";
import { RtmpServer } from "./rtmp/server.ts";
import { describeFsError, STATE_DIR_HINT } from "./fs_errors.ts";

const serviceLog = log("service");

export interface ServiceOptions {
  version: string;
  /** Destination restart delays (tests shorten them). */
  backoff?: BackoffOptions;
  /** First control-plane retry delay (tests shorten it). */
  controlPlaneBackoffMs?: number;
}

/**
 * Floor for a destination's queue, whatever the config says: what a platform slow to accept the
 * publish (a TLS handshake far away, FFmpeg's half-second probe) must not lose of the stream's
 * start, and a few seconds of catching up: about 4 s at 30 Mbit/s, 2.6 s at 50. Only a destination
 * behind holds it; the packets are shared with the stream's other destinations.
 */
const MIN_DESTINATION_QUEUE_BYTES = 16 * 1024 * 1024;
/** Floor for a player's queue (beside twice the GOP cache): keyframes fit; a player may drop. */
const MIN_PLAYER_QUEUE_BYTES = 4 * 1024 * 1024;
/**
 * A stopping destination that shows no progress for this long is stuck, not slow: cut off. Above
 * both engines' own 10 s I/O timeout (FFmpeg's `-rw_timeout`, the native publisher's), so each
 * engine decides for its destination and this catches only a hung engine: a socket's send buffer
 * opens in bursts of a megabyte or more, so a slow destination can take seconds between them.
 */
const DRAIN_STALL_MS = 12_000;

/**
 * What a reload (SIGHUP) does with each setting of the sections (`[[streams]]` goes to the
 * authority: new keys and destinations for streams that start afterwards, and for a live stream
 * on a destinations refresh). Every key must be named here, so a new one cannot be ignored on
 * reload without anyone deciding it.
 *
 * - `restart`: read once at start: the sockets, the RTMP server's options, the hub's options (it
 *   copies them: GOP cache, reconnect and publisher-idle windows), the HTTP app, the control-plane
 *   client, the stream-end outbox and the CA bundle's place (`state_dir`), the FFmpeg checked at
 *   start (also the thumbnailer's). A reload that changes one is logged as `needs_restart`, and so
 *   is every later reload until the restart: it is compared with what runs, not with the file
 *   read last.
 * - `new streams`: given to each stream as it goes live. A stream live at the reload keeps what
 *   it started with, destinations added or restarted on it later included: nothing changes under
 *   a broadcast.
 * - `at once`: relay-wide and read where used: the grace of the next stop (streams live now
 *   included), the rtmps trust (rebuilt on every reload, read at each FFmpeg start), the log
 *   (main.ts sets it up again).
 * - `unused`: accepted for the Rust server's file, nothing reads it.
 */
type ReloadEffect = "restart" | "new streams" | "at once" | "unused";
type ReloadTable = {
  [S in keyof typeof CONFIG_SECTIONS]: { [K in keyof Config[S]]-?: ReloadEffect };
};

const ON_RELOAD: ReloadTable = {
  control_plane: { url: "restart", timeout_seconds: "restart", retry_attempts: "restart" },
  rtmp: {
    port: "restart",
    bind: "restart",
    app: "restart",
    chunk_size: "restart",
    gop_cache: "restart",
    gop_cache_max_kb: "restart",
    max_message_size_kb: "restart",
    ping_interval_seconds: "restart",
    ping_timeout_seconds: "restart",
  },
  http: {
    port: "restart",
    bind: "restart",
    allow_origin: "restart",
    api_token: "restart",
    allow_unauthenticated_control: "restart",
  },
  streaming: {
    max_destinations_per_stream: "new streams",
    memory_pool_size_mb: "unused",
    buffer_size_kb: "new streams",
    connection_timeout_seconds: "restart",
    stats_update_interval_seconds: "unused",
    ffmpeg_path: "restart",
    shutdown_grace_seconds: "at once",
    reconnect_grace_seconds: "restart",
    publisher_idle_seconds: "restart",
    state_dir: "restart",
    tls_ca_file: "at once",
    engine: "new streams",
    max_attempts: "new streams",
  },
  logging: { level: "at once", format: "at once" },
};

/** The settings in force after a reload, and the keys it changed, by what became of them. */
interface ReloadPlan {
  /** `next`, with the values that run until a restart in place of those that need one. */
  running: Config;
  /** Named as in the log line. */
  keys: { applied: string[]; for_new_streams: string[]; needs_restart: string[] };
}

/**
 * `started` is what the relay started with (what runs for `restart` keys), `previous` what was in
 * force before this reload (to say what changed), `next` the file just read.
 */
function planReload(started: Config, previous: Config, next: Config): ReloadPlan {
  const plan: ReloadPlan = {
    running: { ...next },
    keys: { applied: [], for_new_streams: [], needs_restart: [] },
  };
  const changed = { "at once": plan.keys.applied, "new streams": plan.keys.for_new_streams };
  const section = (config: Config, name: string) =>
    config[name as keyof typeof CONFIG_SECTIONS] as Record<string, unknown>;
  for (const [name, keys] of Object.entries(ON_RELOAD)) {
    const running = { ...section(next, name) };
    for (const [key, effect] of Object.entries(keys as Record<string, ReloadEffect>)) {
      if (effect === "unused") continue;
      if (effect === "restart") {
        running[key] = section(started, name)[key];
        if (!isDeepStrictEqual(section(next, name)[key], running[key])) {
          plan.keys.needs_restart.push(`${name}.${key}`);
        }
      } else if (!isDeepStrictEqual(section(next, name)[key], section(previous, name)[key])) {
        changed[effect].push(`${name}.${key}`);
      }
    }
    (plan.running as unknown as Record<string, unknown>)[name] = running;
  }
  return plan;
}

/** True when the config could make us start FFmpeg. */
export function needsFfmpeg(config: Config): boolean {
  return config.control_plane.url !== undefined ||
    config.streams.some((stream) => stream.destinations.length > 0);
}

/** Throws a one-line `Error` when FFmpeg cannot be run from `path`. */
export async function checkFfmpeg(path: string): Promise<void> {
  try {
    const result = await new Deno.Command(path, {
      args: ["-hide_banner", "-version"],
      stdout: "null",
      stderr: "null",
    }).output();
    if (!result.success) throw new Error(`exited with code ${result.code}`);
  } catch (error) {
    const reason = error instanceof Deno.errors.NotFound
      ? "not found"
      : error instanceof Deno.errors.NotCapable || error instanceof Deno.errors.PermissionDenied
      ? "not allowed by --allow-run"
      : (error as Error).message;
    throw new Error(
      `FFmpeg (streaming.ffmpeg_path = ${JSON.stringify(path)}) cannot be run: ${reason}`,
    );
  }
}

/** What the control plane's client keeps on disk (control-plane mode only). */
interface ControlPlaneState {
  outbox: StreamEndOutbox;
  live: LiveRecord;
}

/**
 * The outbox and the record of live streams in `dir`. Streams an earlier run left live (it died
 * without a graceful stop) are reported ended: their reports go into the outbox first.
 */
async function openControlPlaneState(dir: string): Promise<ControlPlaneState> {
  const outbox = await openOutbox(dir);
  let opened;
  try {
    opened = await LiveRecord.open(dir);
  } catch (error) {
    serviceLog.error(
      "cannot record live streams in {dir} ({reason}): after a crash their ends go unreported",
      { dir, reason: describeFsError(error, "write", STATE_DIR_HINT) },
    );
    return { outbox, live: LiveRecord.inMemory() };
  }
  for (const { key, lastSeenAlive } of opened.orphaned) {
    serviceLog.warn("stream was live when the relay died: reporting its end", {
      ...streamFields(key),
      last_seen_alive: lastSeenAlive.toISOString(),
    });
    // Kept in the record unless queued (an outbox that is full says so): the next start tries again.
    if (await outbox.add(key, lastSeenAlive) !== undefined) await opened.record.remove(key);
  }
  return { outbox, live: opened.record };
}

function createAuthority(
  config: Config,
  options: ServiceOptions,
  state: ControlPlaneState | undefined,
): StreamAuthority {
  const url = config.control_plane.url;
  if (url === undefined) return new StaticAuthority(config.streams);
  return new ControlPlaneClient({
    url,
    timeoutMs: config.control_plane.timeout_seconds * 1000,
    retryAttempts: config.control_plane.retry_attempts,
    backoffBaseMs: options.controlPlaneBackoffMs,
    outbox: state?.outbox,
    live: state?.live,
  });
}

/** Runs `bind`, turning "address in use" into a sentence that names the port and the setting. */
function bindOrExplain<T>(what: "RTMP" | "HTTP", host: string, port: number, bind: () => T): T {
  try {
    return bind();
  } catch (error) {
    if (error instanceof Deno.errors.AddrInUse) {
      throw new Error(
        `${what} port ${port} on ${host} is already in use ([${what.toLowerCase()}] port, ${what}_PORT or --${what.toLowerCase()}-port)`,
      );
    }
    if (error instanceof Deno.errors.AddrNotAvailable) {
      throw new Error(
        `${what} bind address ${host} is not available on this machine ([${what.toLowerCase()}] bind)`,
      );
    }
    throw error;
  }
}

function tlsTrustOptions(config: Config) {
  return { caFile: config.streaming.tls_ca_file, stateDir: config.streaming.state_dir };
}

function logTlsTrust(trust: TlsTrust): void {
  if (trust.caFile === undefined) return; // FFmpeg's system trust, nothing of ours to report
  if (trust.systemBundle === undefined) {
    serviceLog.warn(
      "no system CA bundle found: rtmps destinations trust only the {count} certificate(s) of [streaming] tls_ca_file",
      { count: trust.extraCertificates, bundle: trust.caFile },
    );
    return;
  }
  serviceLog.info(
    "rtmps destinations trust the system roots and {count} certificate(s) of [streaming] tls_ca_file",
    { count: trust.extraCertificates, system: trust.systemBundle, bundle: trust.caFile },
  );
}

export class RelayService implements AsyncDisposable {
  /** What the relay started with: settings that need a restart keep these values until then. */
  readonly config: Config;
  readonly hub: StreamHub;
  readonly manager: RelayManager;
  readonly rtmp: RtmpServer;
  readonly http: HttpServer;
  /** What `GET /api/events` streams; closed on shutdown so no open event stream holds it up. */
  readonly events: RelayEvents;
  readonly startedAt = new Date();
  /** Owns every child process (FFmpeg), for the last-resort kill. */
  readonly #pool = new ProcessPool();
  /**
   * What `rtmps://` destinations trust, read by every attempt as it starts: FFmpeg's bundle
   * (system roots and `tls_ca_file`), and `tls_ca_file` itself for the native engine, which adds
   * the system roots on its own.
   */
  readonly #tls: TlsSettings = { caFile: undefined, operatorCaFile: undefined };
  /** The settings in force: `config` after reloads, but for the keys that need a restart. */
  #current: Config;
  /** What every stream's supervisors share, whatever the reloads: the start-up settings. */
  readonly #sharedSupervisorOptions: Omit<
    SupervisorOptions,
    "engine" | "maxAttempts" | "queueBytes" | "drainGraceMs" | "stopGraceMs"
  >;
  #stopping: Promise<void> | undefined;
  /** Aborted as shutdown begins: from then on FFmpeg drains within the grace period. */
  readonly #shutdownSignal = new AbortController();

  private constructor(
    config: Config,
    options: ServiceOptions,
    trust: TlsTrust,
    state: ControlPlaneState | undefined,
  ) {
    this.config = config;
    this.#current = config;
    this.#tls.caFile = trust.caFile;
    this.#tls.operatorCaFile = config.streaming.tls_ca_file;
    const { rtmp, streaming, http } = config;
    this.hub = new StreamHub({
      gopCache: rtmp.gop_cache,
      gopCacheMaxBytes: rtmp.gop_cache_max_kb * 1024,
      reconnectGraceMs: streaming.reconnect_grace_seconds * 1000,
      publisherIdleMs: streaming.publisher_idle_seconds * 1000,
    });
    this.#sharedSupervisorOptions = {
      ffmpegPath: streaming.ffmpeg_path,
      drainStallMs: DRAIN_STALL_MS,
      shutdown: this.#shutdownSignal.signal,
      ioTimeoutSeconds: 10,
      tls: this.#tls,
      backoff: options.backoff,
      pool: this.#pool,
    };
    this.manager = new RelayManager(
      createAuthority(config, options, state),
      this.#streamOptions(streaming),
    );
    this.hub.addListener(this.manager);
    this.rtmp = bindOrExplain("RTMP", rtmp.bind, rtmp.port, () =>
      new RtmpServer(
        {
          hostname: rtmp.bind,
          port: rtmp.port,
          app: rtmp.app,
          chunkSize: rtmp.chunk_size,
          maxMessageSize: rtmp.max_message_size_kb * 1024,
          pingIntervalMs: rtmp.ping_interval_seconds * 1000,
          pingTimeoutMs: rtmp.ping_timeout_seconds * 1000,
          handshakeTimeoutMs: streaming.connection_timeout_seconds * 1000,
          playerQueueBytes: Math.max(rtmp.gop_cache_max_kb * 1024 * 2, MIN_PLAYER_QUEUE_BYTES),
        },
        this.hub,
        this.manager.authorize,
      ));
    const readModel = createReadModel({
      version: options.version,
      startedAt: this.startedAt,
      hub: this.hub,
      manager: this.manager,
      rtmp: this.rtmp,
    });
    this.events = new RelayEvents(readModel);
    try {
      const app = createApp({
        readModel,
        hub: this.hub,
        manager: this.manager,
        events: this.events,
        thumbnails: new Thumbnailer({ ffmpegPath: streaming.ffmpeg_path }),
        http: {
          allowOrigin: http.allow_origin,
          apiToken: http.api_token,
          allowUnauthenticatedControl: http.allow_unauthenticated_control,
        },
      });
      this.http = bindOrExplain("HTTP", http.bind, http.port, () =>
        new HttpServer({
          hostname: http.bind,
          port: http.port,
          onError: (error) => {
            serviceLog.error("HTTP handler failed: {reason}", { reason: (error as Error).message });
            return new Response(JSON.stringify({ error: "internal error" }), { status: 500 });
          },
        }, app.fetch));
    } catch (error) {
      void this.rtmp.close();
      throw error;
    }
    serviceLog.info("listening: RTMP {rtmp}, HTTP {http}", {
      rtmp: `rtmp://${rtmp.bind}:${this.rtmp.port}/${rtmp.app}`,
      http: `http://${http.bind}:${this.http.addr.port}`,
      mode: this.manager.authority.mode,
    });
  }

  /** Starts the relay. Throws (one clear message) when a port is taken or FFmpeg is missing. */
  static async start(config: Config, options: ServiceOptions): Promise<RelayService> {
    if (needsFfmpeg(config)) await checkFfmpeg(config.streaming.ffmpeg_path);
    const trust = prepareTlsTrust(tlsTrustOptions(config));
    logTlsTrust(trust);
    // Stream-end reports an earlier run could not deliver are in here, and the ends of streams it
    // left live when it died (control-plane mode only).
    const state = config.control_plane.url === undefined
      ? undefined
      : await openControlPlaneState(config.streaming.state_dir);
    try {
      const service = new RelayService(config, options, trust, state);
      const authority = service.manager.authority;
      if (authority instanceof ControlPlaneClient) authority.checkAtStart();
      return service;
    } catch (error) {
      await state?.live.close();
      await state?.outbox.close();
      throw error;
    }
  }

  get rtmpPort(): number {
    return this.rtmp.port;
  }

  get httpPort(): number {
    return this.http.addr.port;
  }

  /** The configuration in force (after reloads). */
  get currentConfig(): Config {
    return this.#current;
  }

  /** The grace of our own stop, `shutdown_grace_seconds` as last reloaded. */
  get shutdownGraceMs(): number {
    return this.#current.streaming.shutdown_grace_seconds * 1000;
  }

  /**
   * What the manager gives each stream that goes live: its cap and its supervisors' options.
   *
   * A stream that ends waits for its FFmpegs as long as they make progress sending its end. Our
   * own shutdown stays within shutdown_grace_seconds: half for FFmpeg to send what it holds, a
   * quarter after SIGTERM, the rest for stream-end reports and the HTTP server. Those two are
   * read when used, so that the grace reloaded last holds for streams live since before it.
   */
  #streamOptions(streaming: Config["streaming"]): RelayManagerOptions {
    const graceMs = () => this.shutdownGraceMs;
    return {
      maxDestinationsPerStream: streaming.max_destinations_per_stream,
      supervisor: {
        ...this.#sharedSupervisorOptions,
        engine: streaming.engine,
        maxAttempts: streaming.max_attempts,
        queueBytes: Math.max(streaming.buffer_size_kb * 1024, MIN_DESTINATION_QUEUE_BYTES),
        get drainGraceMs() {
          return graceMs() / 2;
        },
        get stopGraceMs() {
          return graceMs() / 4;
        },
      },
    };
  }

  /**
   * Applies a reloaded configuration as `ON_RELOAD` says, and logs which keys it applied, which
   * only to streams that start from now on, and which still wait for a restart.
   */
  reload(config: Config): void {
    const plan = planReload(this.config, this.#current, config);
    this.#current = plan.running;
    this.manager.authority.reload?.(plan.running);
    this.#reloadTlsTrust(plan.running);
    this.manager.updateOptions(this.#streamOptions(plan.running.streaming));
    const listed = Object.entries(plan.keys).filter(([, keys]) => keys.length > 0);
    serviceLog.info("configuration reloaded", {
      streams: plan.running.streams.length,
      ...Object.fromEntries(listed.map(([name, keys]) => [name, keys.join(",")])),
    });
  }

  /** Rebuilds the rtmps trust (the operator may have changed the CA file); keeps the old on error. */
  #reloadTlsTrust(config: Config): void {
    try {
      const trust = prepareTlsTrust(tlsTrustOptions(config));
      this.#tls.caFile = trust.caFile;
      this.#tls.operatorCaFile = config.streaming.tls_ca_file;
      logTlsTrust(trust);
    } catch (error) {
      serviceLog.error("rtmps trust not reloaded, keeping the previous one: {reason}", {
        reason: (error as Error).message,
      });
    }
  }

  /**
   * Stops accepting, ends every stream (players told, FFmpeg stopped and reaped, stream-end
   * reported), then closes the HTTP API. Safe to call more than once.
   */
  shutdown(reason = "relay shutting down"): Promise<void> {
    this.#stopping ??= (async () => {
      // The whole stop fits in the grace, with a moment left to close the HTTP server: past it
      // main.ts exits 1, and systemd marks the unit failed.
      const graceMs = this.shutdownGraceMs;
      const deadlineAt = performance.now() + graceMs - Math.min(1_000, graceMs / 5);
      serviceLog.info("shutting down: {reason}", { reason });
      this.#shutdownSignal.abort();
      // End every stream now (no reconnect window on our own shutdown), then close the rest.
      this.hub.endAll(reason);
      // Players taking the end of their stream get at most half the grace, as FFmpeg does.
      const forceAfterMs = this.shutdownGraceMs / 2;
      await this.rtmp.close(reason, { forceAfterMs });
      this.hub.endAll(reason);
      await this.manager.settle(deadlineAt);
      // Past the deadline with an FFmpeg still stopping: none outlives the relay, under systemd
      // (KillMode=mixed would take it) or not.
      this.#pool.killAll();
      this.events.close();
      // An event stream whose client stopped reading is never written out: by the deadline (with
      // a moment for the ends just sent), its connection is closed.
      const cut = await this.http.shutdown(Math.max(deadlineAt, performance.now() + 250));
      if (cut > 0) {
        serviceLog.warn("{count} HTTP response(s) not taken by the deadline: connection closed", {
          count: cut,
        });
      }
      serviceLog.info("stopped");
    })();
    return this.#stopping;
  }

  /** Last resort (a second signal): SIGKILL every FFmpeg now, so none outlives us. */
  killChildren(): void {
    this.#pool.killAll();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown();
  }
}
