/**
 * `deno task compile`: one executable, `dist/neustream`, with the flags of src/permissions.ts
 * (permissions, V8's heap settings) baked in, and proof that it is our relay before we say "built".
 *
 * `deno compile` copies Deno's runtime (denort) and appends our program to it. It downloads denort
 * unless DENORT_BIN names a local copy, and it takes any file as that copy: given the plain `deno`
 * CLI it "succeeds" and the result is a `deno` that prints its own help. So we check the runtime
 * before compiling and the executable after; each refusal is one line (cause, then fix), exit 1,
 * and a refused build leaves no executable behind, not even an older one.
 *
 * Environment: DENORT_BIN (path to denort), NEUSTREAM_FFMPEG (FFmpeg allowed to run, default
 * "ffmpeg"), NEUSTREAM_CONFIG_DIR (readable config directory, default /etc/neustream),
 * NEUSTREAM_STATE_DIR (readable and writable state directory, default /var/lib/neustream, where
 * neustream.service's StateDirectory= puts it).
 */

import denoJson from "../deno.json" with { type: "json" };
import { INSTALLED_PATHS, type PermissionPaths, runtimeFlags } from "../src/permissions.ts";

export const OUTPUT = "dist/neustream";

/** How long a runtime or an executable may take to answer `--version`/`--help` on a busy machine. */
const ANSWER_TIMEOUT_MS = 30_000;

/** What a bare denort says, whatever its arguments: it has no program of ours appended yet. */
const BARE_DENORT_MESSAGE = /Could not find standalone binary section/;

/** The flag used to check that a bad flag gets main.ts's answer (exit 2, "neustream: ..."). */
const BAD_FLAG = "--no-such-flag";

/** The paths baked into the executable: the systemd install's, unless the environment says. */
export function compilePaths(env: (name: string) => string | undefined): PermissionPaths {
  return {
    configDir: env("NEUSTREAM_CONFIG_DIR") || INSTALLED_PATHS.configDir,
    stateDir: env("NEUSTREAM_STATE_DIR") || INSTALLED_PATHS.stateDir,
    ffmpeg: env("NEUSTREAM_FFMPEG") || INSTALLED_PATHS.ffmpeg,
  };
}

/** The `deno` arguments that build the executable. */
export function compileArgs(paths: PermissionPaths): string[] {
  return ["compile", "--output", OUTPUT, ...runtimeFlags(paths), "main.ts"];
}

interface Answer {
  code: number;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

// deno prints ANSI colours when it thinks it may.
// deno-lint-ignore no-control-regex
const plain = (bytes: Uint8Array) => new TextDecoder().decode(bytes).replace(/\x1b\[[0-9;]*m/g, "");

/** Runs `command` with no input and a deadline. Spawn errors (not found, not executable) throw. */
async function ask(command: string, args: string[]): Promise<Answer> {
  const signal = AbortSignal.timeout(ANSWER_TIMEOUT_MS);
  const result = await new Deno.Command(command, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal,
  }).output();
  return {
    code: result.code,
    stdout: plain(result.stdout),
    stderr: plain(result.stderr),
    timedOut: signal.aborted,
  };
}

function firstLine(text: string): string {
  const line = text.trim().split("\n")[0] ?? "";
  return line.length > 100 ? `${line.slice(0, 97)}...` : line;
}

/** "exited 0 printing "deno 2.9.6 (...)"": what a command did, for a refusal line. */
function describe(answer: Answer): string {
  if (answer.timedOut) return `did not exit within ${ANSWER_TIMEOUT_MS / 1000} s`;
  const output = firstLine(answer.stdout) || firstLine(answer.stderr);
  return `exited ${answer.code} ${
    output ? `printing ${JSON.stringify(output)}` : "printing nothing"
  }`;
}

function spawnFailure(error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return "it does not exist";
  if (error instanceof Deno.errors.PermissionDenied) {
    return "it is not executable (a directory, or a file without the x bit: chmod +x it)";
  }
  return `it cannot be run (${(error as Error).message})`;
}

/** Where to get the runtime `deno compile` needs. */
export function denortFix(): string {
  const target = Deno.build.target;
  const version = Deno.version.deno;
  return `fetch https://dl.deno.land/release/v${version}/denort-${target}.zip (Deno ${version}'s ` +
    `runtime) where the internet is reachable, unzip it, and run again with ` +
    "DENORT_BIN=/path/to/denort";
}

/**
 * Checks that `path` is a Deno runtime (denort) before `deno compile` is given it. Returns the
 * refusal line, or undefined. A bare denort runs no CLI: whatever its arguments, it looks for the
 * program appended to itself, finds none and exits 1 with "Could not find standalone binary
 * section" (denoland/deno cli/rt/binary.rs). The deno CLI answers `--version` with "deno x.y.z";
 * anything else (/bin/true) answers something else or nothing.
 */
export async function checkRuntime(path: string): Promise<string | undefined> {
  let answer: Answer;
  try {
    answer = await ask(path, ["--version"]);
  } catch (error) {
    return `DENORT_BIN=${path} is not Deno's runtime (denort): ${
      spawnFailure(error)
    }; ${denortFix()}`;
  }
  if (!answer.timedOut && answer.code === 1 && BARE_DENORT_MESSAGE.test(answer.stderr)) {
    return undefined;
  }
  if (!answer.timedOut && /^deno \d+\.\d+\.\d+/.test(answer.stdout)) {
    return `DENORT_BIN=${path} is the deno CLI (${
      JSON.stringify(firstLine(answer.stdout))
    }), not its runtime denort, and would build a plain deno; ${denortFix()}`;
  }
  return `DENORT_BIN=${path} is not Deno's runtime (denort): run with --version it ${
    describe(answer)
  }, where a bare denort exits 1 with "Could not find standalone binary section"; ${denortFix()}`;
}

/**
 * Checks that the executable at `path` is our relay: it starts, prints our usage for `--help`, and
 * refuses a bad flag with main.ts's message and exit code 2. Starts no server. Returns the
 * problem, or undefined.
 */
export async function verifyExecutable(
  path: string,
  version: string,
): Promise<string | undefined> {
  let help: Answer;
  let bad: Answer;
  try {
    help = await ask(path, ["--help"]);
    bad = await ask(path, [BAD_FLAG]);
  } catch (error) {
    return `it is not a working neustream: ${spawnFailure(error)}`;
  }
  const usage = `neustream ${version}:`;
  if (help.timedOut || help.code !== 0 || !help.stdout.startsWith(usage)) {
    return `it is not a working neustream: asked for --help it ${
      describe(help)
    }, not our usage ("${usage} ...")`;
  }
  const refusal = firstLine(bad.stderr);
  if (
    bad.timedOut || bad.code !== 2 || !refusal.startsWith("neustream: ") ||
    !refusal.includes(BAD_FLAG)
  ) {
    return `it is not a working neustream: given ${BAD_FLAG} it ${
      describe(bad)
    }, not "neustream: ... '${BAD_FLAG}' ..." with exit 2`;
  }
  return undefined;
}

async function removeOutput(path = OUTPUT): Promise<void> {
  try {
    await Deno.remove(path);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
}

/**
 * The check after `deno compile`: when the executable at `path` is not our relay, deletes it and
 * returns the refusal line (what it did, then which runtime to blame and the fix).
 */
export async function checkBuilt(path: string, denort?: string): Promise<string | undefined> {
  const problem = await verifyExecutable(path, denoJson.version);
  if (problem === undefined) return undefined;
  await removeOutput(path);
  const cause = denort
    ? `the runtime it was built on, DENORT_BIN=${denort}, is not Deno ${Deno.version.deno}'s ` +
      `denort for ${Deno.build.target}; ${denortFix()}`
    : "the runtime deno compile downloaded does not run our program; remove the cached one " +
      "($DENO_DIR/dl, by default ~/.cache/deno/dl) and run again";
  return `deleted ${path}: ${problem}; ${cause}`;
}

function refuse(line: string): number {
  console.error(line);
  return 1;
}

async function main(): Promise<number> {
  const paths = compilePaths((name) => Deno.env.get(name));
  const args = compileArgs(paths);
  const denort = Deno.env.get("DENORT_BIN") || undefined;
  // Whatever happens next, an old executable must not pass for the result of this build.
  await removeOutput();
  if (denort !== undefined) {
    const refusal = await checkRuntime(denort);
    if (refusal !== undefined) return refuse(refusal);
  }

  console.error(
    `compiling neustream ${denoJson.version} to ${OUTPUT}${denort ? ` (denort: ${denort})` : ""}`,
  );
  const result = await new Deno.Command("deno", { args, stdout: "inherit", stderr: "piped" })
    .output();
  if (!result.success) {
    await removeOutput();
    // deno prints a backtrace; keep the numbered causes ("0: Could not find ...").
    const stderr = plain(result.stderr);
    const causes = [...stderr.matchAll(/^\s*\d+: (.+)$/gm)].map((m) => m[1]!).filter((c) =>
      c !== "<unknown>"
    );
    if (/denort|dl\.deno\.land|base binary/i.test(stderr)) {
      return refuse(
        denort
          ? `deno compile could not use DENORT_BIN=${denort}: ${causes.join(": ")}`
          : "deno compile needs the Deno runtime (denort) for this platform: it could not be " +
            `downloaded and DENORT_BIN is not set; ${denortFix()}`,
      );
    }
    return refuse(`deno compile failed: ${causes.join(": ") || stderr.trim()}`);
  }

  const refusal = await checkBuilt(OUTPUT, denort);
  if (refusal !== undefined) return refuse(refusal);
  console.error(
    `built ${OUTPUT}: it prints neustream's usage for --help and refuses ${BAD_FLAG} with exit 2; ` +
      `flags ${runtimeFlags(paths).join(" ")}`,
  );
  return 0;
}

if (import.meta.main) Deno.exit(await main());
