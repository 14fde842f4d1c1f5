/**
 * The relay as an operator runs it: `main.ts` in its own process, stopped by signals, refusing to
 * start on a taken port or a bad config, and its systemd unit.
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";
import { fixture } from "../helpers/media.ts";
import {
  ffmpegProcessesWith,
  freePort,
  run,
  sleep,
  tempDir,
  TestProcess,
  waitFor,
} from "../helpers/process.ts";
import { relayConfigText, spawnRelay } from "../helpers/relay.ts";
import { NginxSink } from "../helpers/sinks.ts";
import { ffmpegPublish } from "../helpers/peers.ts";

const MAIN = new URL("../../main.ts", import.meta.url).pathname;

function runRelay(args: string[]): TestProcess {
  return new TestProcess("deno", [
    "run",
    "--allow-net",
    "--allow-read",
    "--allow-env",
    "--allow-run=ffmpeg",
    MAIN,
    ...args,
  ]);
}

Deno.test("SIGTERM with live streams: stream-end for each, no FFmpeg left, exit 0 within the grace period", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  await using cp = new FakeControlPlane({
    forwarding: (key) => ({
      body: {
        destinations: [{
          id: "n",
          platform: "custom",
          rtmp_url: nginx.baseUrl,
          stream_key: `${key}-out`,
        }],
      },
    }),
  });
  await using relay = await spawnRelay(
    dir.path,
    `[control_plane]\nurl = "${cp.url}"\n[streaming]\nshutdown_grace_seconds = 8\n`,
  );
  await using one = ffmpegPublish(source, relay.rtmpUrl("term-key-one"));
  await using two = ffmpegPublish(source, relay.rtmpUrl("term-key-two"));
  const marker = `127.0.0.1:${nginx.port}/live/term-key`;
  await waitFor(
    async () => (await ffmpegProcessesWith(marker)).length === 2,
    "two destination FFmpeg",
  );
  const started = performance.now();
  relay.process.kill("SIGTERM");
  const status = await relay.process.wait(15_000);
  const seconds = (performance.now() - started) / 1000;
  assertEquals(status.code, 0, relay.process.stderr);
  assert(seconds < 8, `stopped in ${seconds.toFixed(1)} s, over the grace period`);
  assertEquals(cp.streamEnds.sort(), ["term-key-one", "term-key-two"]);
  assertEquals(await ffmpegProcessesWith(marker), []);
  assertMatch(relay.process.stderr, /shutting down: received SIGTERM/);
  // The publishers were disconnected, not left hanging.
  await one.wait(5_000);
  await two.wait(5_000);
});

Deno.test("a second signal exits at once and takes the FFmpeg children with it", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  await using relay = await spawnRelay(
    dir.path,
    `[streaming]\nshutdown_grace_seconds = 20\n[[streams]]\nkey = "double-signal-1"\n[[streams.destinations]]\nid = "a"\nrtmp_url = "${nginx.baseUrl}"\nstream_key = "double-out"\n`,
  );
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("double-signal-1"));
  const marker = `127.0.0.1:${nginx.port}/live/double-out`;
  const [pid] = await waitFor(async () => {
    const pids = await ffmpegProcessesWith(marker);
    return pids.length === 1 ? pids : undefined;
  }, "the destination FFmpeg");
  // A stuck FFmpeg makes the graceful stop wait for its grace periods...
  await run("kill", ["-STOP", String(pid)]);
  relay.process.kill("SIGINT");
  await sleep(500);
  assert(!relay.process.exited, "the first signal waits for FFmpeg");
  // ...and the operator's second Ctrl-C does not.
  const started = performance.now();
  relay.process.kill("SIGINT");
  const status = await relay.process.wait(5_000);
  assert(performance.now() - started < 2_000, "the second signal exits at once");
  assertEquals(status.code, 130);
  await waitFor(async () => (await ffmpegProcessesWith(marker)).length === 0, "FFmpeg killed");
  publisher.kill();
});

Deno.test("a port in use, a bad config, an unreadable config: one clear line and a non-zero exit", async () => {
  await using dir = await tempDir();
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const takenPort = (taken.addr as Deno.NetAddr).port;
  const cases: [string, string, RegExp][] = [
    [
      "RTMP port in use",
      relayConfigText(takenPort, freePort(), ""),
      new RegExp(
        `^neustream: cannot start: RTMP port ${takenPort} on 127\\.0\\.0\\.1 is already in use`,
      ),
    ],
    [
      "HTTP port in use",
      relayConfigText(freePort(), takenPort, ""),
      new RegExp(
        `^neustream: cannot start: HTTP port ${takenPort} on 127\\.0\\.0\\.1 is already in use`,
      ),
    ],
    [
      "bad value",
      `[rtmp]\nport = 70000\n`,
      /^neustream: .*bad value\.toml: rtmp\.port = 70000: .*65535/,
    ],
    ["unknown key", `[rtmp]\nprot = 1935\n`, /^neustream: .*unknown key rtmp\.prot/],
    ["not TOML", `[rtmp\n`, /^neustream: .*not valid TOML/],
    [
      "missing FFmpeg",
      relayConfigText(
        freePort(),
        freePort(),
        `[streaming]\nffmpeg_path = "/nonexistent/ffmpeg"\n[[streams]]\nkey = "k-0001"\n[[streams.destinations]]\nid = "a"\nrtmp_url = "rtmp://127.0.0.1/live"\n`,
      ),
      /^neustream: cannot start: FFmpeg \(streaming\.ffmpeg_path = "\/nonexistent\/ffmpeg"\) cannot be run/,
    ],
  ];
  for (const [name, text, expected] of cases) {
    const path = `${dir.path}/${name}.toml`;
    await Deno.writeTextFile(path, text);
    await using relay = runRelay(["--config", path]);
    const status = await relay.wait(20_000);
    assert(status.code !== 0, `${name}: must exit non-zero`);
    const lines = relay.stderr.trim().split("\n");
    assertEquals(lines.length, 1, `${name}: one line, got:\n${relay.stderr}`);
    assertMatch(lines[0]!, expected, name);
  }
  await using missing = runRelay(["--config", `${dir.path}/nope.toml`]);
  assert((await missing.wait(20_000)).code !== 0);
  assertMatch(
    missing.stderr.trim(),
    /^neustream: cannot read config file .*nope\.toml: .*No such file/,
  );
  // A config outside what the relay may read (the installed executable reads /etc/neustream):
  // Deno's own advice (run again with --allow-read) means nothing to an operator of a binary.
  await using outside = new TestProcess("deno", [
    "run",
    `--allow-read=${dir.path}/allowed`,
    "--allow-env",
    MAIN,
    "--config",
    `${dir.path}/elsewhere.toml`,
  ]);
  assertEquals((await outside.wait(20_000)).code, 1);
  assertMatch(
    outside.stderr.trim(),
    /^neustream: cannot read config file .*elsewhere\.toml: outside what this relay may read \(its --allow-read list\): put it in the directory it reads \(\/etc\/neustream when installed\)$/,
  );
  await using badFlag = runRelay(["--rtmp-port", "http"]);
  assertEquals((await badFlag.wait(20_000)).code, 2);
  assertMatch(badFlag.stderr, /--rtmp-port = "http": must be a whole number/);
});

Deno.test("--help and --version answer without starting anything", async () => {
  await using version = runRelay(["--version"]);
  assertEquals((await version.wait(20_000)).code, 0);
  const denoJson = JSON.parse(await Deno.readTextFile(new URL("../../deno.json", import.meta.url)));
  assertEquals(version.stdout.trim(), `neustream ${denoJson.version}`);
  await using help = runRelay(["--help"]);
  assertEquals((await help.wait(20_000)).code, 0);
  assertMatch(help.stdout, /--rtmp-port N/);
});

const systemdAnalyze = await new Deno.Command("systemd-analyze", {
  args: ["--version"],
  stdout: "null",
  stderr: "null",
})
  .output().then((o) => o.success, () => false);

Deno.test({
  name: "neustream.service passes systemd-analyze verify",
  ignore: !systemdAnalyze,
  async fn() {
    await using dir = await tempDir();
    // verify checks that ExecStart exists: point it at a stand-in with the same permissions.
    const stub = `${dir.path}/neustream`;
    await Deno.writeTextFile(stub, "#!/bin/sh\nexit 0\n", { mode: 0o755 });
    const unit = (await Deno.readTextFile(new URL("../../neustream.service", import.meta.url)))
      .replace("ExecStart=/opt/neustream/neustream", `ExecStart=${stub}`);
    assertMatch(unit, /ExecStart=\S+ --config \/etc\/neustream\/config\.toml/);
    for (
      const setting of [
        "KillMode=mixed",
        "Restart=on-failure",
        "ProtectProc=invisible",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "User=neustream",
      ]
    ) {
      assert(unit.includes(setting), `unit lacks ${setting}`);
    }
    const grace = Number(unit.match(/TimeoutStopSec=(\d+)/)?.[1]);
    assert(grace > 10, "TimeoutStopSec must exceed the default shutdown_grace_seconds (10)");
    await Deno.writeTextFile(`${dir.path}/neustream.service`, unit);
    await using verify = new TestProcess("systemd-analyze", [
      "verify",
      `${dir.path}/neustream.service`,
    ]);
    const status = await verify.wait();
    assertEquals(status.code, 0, verify.stderr);
    assertEquals(
      verify.stderr.split("\n").filter((l) => l.includes("neustream.service:")),
      [],
      verify.stderr,
    );
  },
});
