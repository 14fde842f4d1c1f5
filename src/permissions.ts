/**
 * The Deno flags the relay runs with, in one list (its permissions and V8's heap settings):
 * `deno task compile` bakes it into the executable, `deno task start`/`dev` pass it (a test holds
 * deno.json to it), and tests/e2e/permissions_test.ts runs `main.ts` with exactly this list,
 * pointed at temporary directories, to prove that it is enough for a real relay and a clean stop.
 *
 * @module
 */

import { ENV_VARIABLES } from "./config.ts";

/** The paths a permission list is made for: only these differ between installs. */
export interface PermissionPaths {
  /** Read: the directory of `config.toml` and of an optional `[streaming] tls_ca_file`. */
  configDir: string;
  /**
   * Read and write: `[streaming] state_dir` (systemd's `StateDirectory=`, which sets
   * `STATE_DIRECTORY`), where the stream-end outbox and the CA bundle given to FFmpeg live.
   */
  stateDir: string;
  /** Run: FFmpeg as `[streaming] ffmpeg_path` names it. */
  ffmpeg: string;
}

/** The system's CA roots, read to build the bundle FFmpeg trusts for `rtmps://` destinations. */
export const SYSTEM_CA_DIR = "/etc/ssl/certs";

/** `config.toml` in the working directory: what `main.ts` reads when no `--config` is given. */
export const DEFAULT_CONFIG_FILE = "config.toml";

/** The systemd install (`neustream.service`): what the executable gets unless told otherwise. */
export const INSTALLED_PATHS: Readonly<PermissionPaths> = Object.freeze({
  configDir: "/etc/neustream",
  stateDir: "/var/lib/neustream",
  ffmpeg: "ffmpeg",
});

/** A checkout (`deno task start`): `./config.toml` and the default `state_dir`, "state". */
export const CHECKOUT_PATHS: Readonly<PermissionPaths> = Object.freeze({
  configDir: ".",
  stateDir: "state",
  ffmpeg: "ffmpeg",
});

/**
 * The permission flags for `paths`, the same shape wherever they are used. The network stays
 * open: the relay listens on configurable addresses and pushes to any destination host.
 */
export function permissionFlags(paths: PermissionPaths): string[] {
  for (const [name, value] of Object.entries(paths)) {
    // A comma would split one path into two grants; an empty one would grant nothing useful.
    if (typeof value !== "string" || value === "" || value.includes(",")) {
      throw new RangeError(`${name} = ${JSON.stringify(value)}: must be a path without commas`);
    }
  }
  return [
    "--allow-net",
    `--allow-read=${paths.configDir},${paths.stateDir},${SYSTEM_CA_DIR},${DEFAULT_CONFIG_FILE}`,
    `--allow-write=${paths.stateDir}`,
    // JOURNAL_STREAM: whether stderr is systemd's journal (log lines then carry their priority).
    `--allow-env=${[...ENV_VARIABLES, "JOURNAL_STREAM"].join(",")}`,
    `--allow-run=${paths.ffmpeg}`,
  ];
}

/**
 * V8's semi-spaces (its young generation) capped at 4 MiB. Left to itself V8 sizes them from the
 * machine's memory and grows them with the allocation rate, which on a relay is every packet's
 * short-lived objects: they grew to tens of MiB that the process kept. Measured with
 * `deno task bench scale` on a 2-core, 24 GiB machine, 3 destinations per stream: at 30 streams,
 * 1.5 MiB per stream above idle instead of 2.3–3.1, at 100 streams 1.85 instead of 2.2, the same
 * CPU (scavenges are more frequent but each is smaller). 2 MiB was worse on both.
 */
export const V8_FLAGS: readonly string[] = Object.freeze(["--max-semi-space-size=4"]);

/** Everything the relay is run with: V8's flags, then `permissionFlags(paths)`. */
export function runtimeFlags(paths: PermissionPaths): string[] {
  return [`--v8-flags=${V8_FLAGS.join(",")}`, ...permissionFlags(paths)];
}
