/**
 * The permission list of src/permissions.ts, proven without compiling: `main.ts` run with exactly
 * that list (pointed at temporary directories) relays a stream packet for packet and stops
 * cleanly, and the list is the one `deno task compile` bakes in, `deno task start` grants and
 * neustream.service provides directories for. Also `deno task compile`'s refusals: a runtime that
 * is not denort, and an executable that is not our relay.
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { ffmpegProcessesWith, freePort, tempDir, waitFor } from "../helpers/process.ts";
import { spawnRelay } from "../helpers/relay.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { makeTestPki } from "../helpers/tls.ts";
import { OUTBOX_FILE_NAME } from "../../src/control_plane/outbox.ts";
import { CA_BUNDLE_NAME } from "../../src/relay/tls_trust.ts";
import { NginxSink, startFfmpegSink } from "../helpers/sinks.ts";
import { compileArgs, compilePaths, OUTPUT } from "../../scripts/compile.ts";
import {
  CHECKOUT_PATHS,
  INSTALLED_PATHS,
  type PermissionPaths,
  runtimeFlags,
} from "../../src/permissions.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const MAIN = `${ROOT}main.ts`;
const read = (path: string) => Deno.readTextFile(`${ROOT}${path}`);

Deno.test("runtimeFlags() is what compile.ts bakes in, deno task start/dev pass and the unit provides", async () => {
  const installed = runtimeFlags(INSTALLED_PATHS);
  assertEquals(installed, [
    "--v8-flags=--max-semi-space-size=4",
    "--allow-net",
    "--allow-read=/etc/neustream,/var/lib/neustream,/etc/ssl/certs,config.toml",
    "--allow-write=/var/lib/neustream",
    "--allow-env=RTMP_PORT,HTTP_PORT,CONTROL_PLANE_URL,LOG_LEVEL,RUST_LOG,API_TOKEN,STATE_DIRECTORY,JOURNAL_STREAM",
    "--allow-run=ffmpeg",
  ]);
  // compile.ts, without NEUSTREAM_* overrides: exactly the list, nothing added.
  assertEquals(
    compileArgs(compilePaths(() => undefined)),
    ["compile", "--output", OUTPUT, ...installed, "main.ts"],
  );
  const tasks = JSON.parse(await read("deno.json")).tasks as Record<string, string>;
  const checkout = runtimeFlags(CHECKOUT_PATHS).join(" ");
  assertEquals(tasks.start, `deno run ${checkout} main.ts --config config.toml`);
  assertEquals(tasks.dev, `deno run --watch ${checkout} main.ts --config config.toml`);
  // The unit creates the state directory the executable may write, and reads its config from the
  // directory the executable may read.
  const unit = await read("neustream.service");
  assertEquals(`/var/lib/${unit.match(/^StateDirectory=(\S+)$/m)?.[1]}`, INSTALLED_PATHS.stateDir);
  assertMatch(unit, /^StateDirectoryMode=0700$/m);
  const configFile = unit.match(/^ExecStart=\S+ --config (\S+)$/m)?.[1] ?? "";
  assertEquals(configFile.slice(0, configFile.lastIndexOf("/")), INSTALLED_PATHS.configDir);
  // The README's `deno run` line for an installed config is the same list.
  assert(
    (await read("README.md")).includes(`deno run ${installed.join(" ")} main.ts`),
    "README.md shows the installed flags",
  );
});

Deno.test("main.ts under exactly the compiled flags relays every packet, keeps its state and stops on SIGTERM", async () => {
  await using dir = await tempDir();
  // Same shape as the executable's list; only the directories are the test's own.
  const paths: PermissionPaths = {
    configDir: `${dir.path}/etc`,
    stateDir: `${dir.path}/state`,
    ffmpeg: INSTALLED_PATHS.ffmpeg,
  };
  await Deno.mkdir(paths.configDir);
  await Deno.mkdir(paths.stateDir, { mode: 0o700 });
  // Every grant in use: an operator's CA file in the config directory (read, and the CA bundle
  // written to the state directory), and a control plane that refuses stream-ends, so that they
  // wait in the outbox on disk.
  const pki = await makeTestPki(`${dir.path}/pki`);
  await Deno.copyFile(pki.caFile, `${paths.configDir}/ca.pem`);
  const short = await fixture({ seconds: 4, gop: 30 });
  const long = await fixture({ seconds: 30 });
  const donePort = freePort();
  await using doneSink = await startFfmpegSink(donePort, "perm-done-out", `${dir.path}/done.flv`);
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  const targets: Record<string, [string, string]> = {
    "perm-done-key": [`rtmp://127.0.0.1:${donePort}/live`, "perm-done-out"],
    "perm-live-key": [nginx.baseUrl, "perm-live-out"],
  };
  await using controlPlane = new FakeControlPlane({
    forwarding: (key) => ({
      body: {
        destinations: [{ id: "out", rtmp_url: targets[key]![0], stream_key: targets[key]![1] }],
      },
    }),
    streamEnd: () => 503,
  });
  await using relay = await spawnRelay(
    paths.configDir,
    `[control_plane]\nurl = "${controlPlane.url}"\ntimeout_seconds = 2\nretry_attempts = 0\n` +
      `[streaming]\nstate_dir = "${paths.stateDir}"\nreconnect_grace_seconds = 0\n` +
      `shutdown_grace_seconds = 8\ntls_ca_file = "${paths.configDir}/ca.pem"\n`,
    "",
    runtimeFlags(paths),
  );
  const bundle = await Deno.readTextFile(`${paths.stateDir}/${CA_BUNDLE_NAME}`);
  assert(bundle.includes((await Deno.readTextFile(pki.caFile)).trim()), "CA bundle written");

  // A whole broadcast through the relay's FFmpeg, compared packet by packet.
  await using publisher = ffmpegPublish(short, relay.rtmpUrl("perm-done-key"));
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await doneSink.wait(20_000);
  assertSamePackets(await framemd5(`${dir.path}/done.flv`), await framemd5(short), "ffmpeg sink");

  // A stream still live when SIGTERM arrives: its FFmpeg must be reaped before exit 0.
  await using live = ffmpegPublish(long, relay.rtmpUrl("perm-live-key"));
  const liveMarker = `127.0.0.1:${nginx.port}/live/perm-live-out`;
  await waitFor(
    async () => (await ffmpegProcessesWith(liveMarker)).length === 1,
    "the live destination's FFmpeg",
  );
  relay.process.kill("SIGTERM");
  const status = await relay.process.wait(15_000);
  assertEquals(status.code, 0, relay.process.stderr);
  assertEquals(await ffmpegProcessesWith(liveMarker), []);
  assertEquals(await ffmpegProcessesWith(`127.0.0.1:${donePort}/live/perm-done-out`), []);
  assert(
    !/NotCapable|Requires \w+ access|outbox unavailable/.test(relay.process.stderr),
    `a permission was missing:\n${relay.process.stderr}`,
  );
  // Both stream-ends were refused, so both wait on disk for the next start.
  const outbox = await Deno.readTextFile(`${paths.stateDir}/${OUTBOX_FILE_NAME}`);
  for (const key of Object.keys(targets)) {
    assert(outbox.includes(JSON.stringify(key)), `${key}'s stream-end is in the outbox`);
  }
  await live.wait(5_000);
});

/** Runs `deno task compile` with DENORT_BIN set, as an operator would. */
async function compileWith(denort: string): Promise<{ code: number; stderr: string }> {
  const output = await new Deno.Command("deno", {
    args: ["task", "--quiet", "compile"],
    cwd: ROOT,
    env: { DENORT_BIN: denort, NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(60_000),
  }).output();
  return { code: output.code, stderr: new TextDecoder().decode(output.stderr) };
}

async function assertNoOutput(): Promise<void> {
  const left = await Deno.stat(`${ROOT}${OUTPUT}`).then(() => true, (error) => {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  });
  assert(!left, `${OUTPUT} was left behind`);
}

const DENORT_FIX =
  /; fetch https:\/\/dl\.deno\.land\/release\/v[\d.]+\/denort-[\w-]+\.zip .* run again with DENORT_BIN=\/path\/to\/denort$/;

Deno.test("deno task compile refuses the deno CLI, /bin/true and a non-executable as DENORT_BIN", async () => {
  await using dir = await tempDir();
  const notExecutable = `${dir.path}/denort`;
  await Deno.writeTextFile(notExecutable, "not a program\n", { mode: 0o644 });
  const deno = Deno.execPath();
  const cases: [string, RegExp][] = [
    [deno, /^DENORT_BIN=\S+ is the deno CLI \("deno \d+\.\d+\.\d+.*"\), not its runtime denort/],
    [
      "/bin/true",
      /^DENORT_BIN=\/bin\/true is not Deno's runtime \(denort\): run with --version it exited 0 printing "true .*", where a bare denort exits 1/,
    ],
    [
      notExecutable,
      /^DENORT_BIN=\S+\/denort is not Deno's runtime \(denort\): it is not executable/,
    ],
  ];
  for (const [denort, cause] of cases) {
    const result = await compileWith(denort);
    assertEquals(result.code, 1, `${denort}: exit code\n${result.stderr}`);
    const lines = result.stderr.trim().split("\n");
    assertEquals(lines.length, 1, `${denort}: one line, got:\n${result.stderr}`);
    assertMatch(lines[0]!, cause, denort);
    assertMatch(lines[0]!, DENORT_FIX, denort);
    await assertNoOutput();
  }
});

Deno.test("deno task compile's check of the built executable deletes a plain deno and a relay that accepts bad flags", async () => {
  await using dir = await tempDir();
  // Stand-ins for what `deno compile` could produce, checked by compile.ts's own code.
  const standIns: Record<string, string> = {
    "plain-deno": `exec deno "$@"`,
    "lenient": `exec deno run ${runtimeFlags(INSTALLED_PATHS).join(" ")} ${MAIN} --help`,
    "relay": `exec deno run ${runtimeFlags(INSTALLED_PATHS).join(" ")} ${MAIN} "$@"`,
  };
  for (const [name, body] of Object.entries(standIns)) {
    await Deno.writeTextFile(`${dir.path}/${name}`, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
  }
  const check = await new Deno.Command("deno", {
    args: [
      "eval",
      `import { checkBuilt } from ${JSON.stringify(`${ROOT}scripts/compile.ts`)};
       const results = {};
       for (const path of Deno.args) results[path.split("/").pop()] = await checkBuilt(path, "/x/denort") ?? null;
       console.log(JSON.stringify(results));`,
      ...Object.keys(standIns).map((name) => `${dir.path}/${name}`),
    ],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(120_000),
  }).output();
  const stderr = new TextDecoder().decode(check.stderr);
  assertEquals(check.code, 0, stderr);
  const results = JSON.parse(new TextDecoder().decode(check.stdout));
  assertMatch(
    results["plain-deno"],
    /^deleted \S+\/plain-deno: it is not a working neustream: asked for --help it exited 0 printing "A modern JavaScript and TypeScript runtime", not our usage \("neustream [\d.]+: \.\.\."\); the runtime it was built on, DENORT_BIN=\/x\/denort, is not Deno [\d.]+'s denort/,
  );
  assertMatch(
    results["lenient"],
    /^deleted \S+\/lenient: it is not a working neustream: given --no-such-flag it exited 0 printing "neustream [\d.]+: RTMP relay.*", not "neustream: \.\.\. '--no-such-flag' \.\.\." with exit 2; .*DENORT_BIN=\/path\/to\/denort$/,
  );
  assertEquals(results["relay"], null, "main.ts itself passes the check");
  const left = [];
  for await (const entry of Deno.readDir(dir.path)) left.push(entry.name);
  assertEquals(left.sort(), ["relay"], "refused executables are deleted, a good one is kept");
});
