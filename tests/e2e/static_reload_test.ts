/**
 * Static mode (no control plane) as an operator runs it: `main.ts` with a config.toml the test
 * writes, SIGHUP to reload it.
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { fixture } from "../helpers/media.ts";
import { tempDir, TestProcess, waitFor } from "../helpers/process.ts";
import { relayConfigText, spawnRelay } from "../helpers/relay.ts";

function publishOnce(source: string, url: string): TestProcess {
  return new TestProcess("ffmpeg", [
    "-hide_banner",
    "-loglevel",
    "warning",
    "-i",
    source,
    "-c",
    "copy",
    "-f",
    "flv",
    url,
  ]);
}

Deno.test("static keys: unknown keys are refused, SIGHUP adds keys, a bad file is rejected", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 1 });
  await using relay = await spawnRelay(dir.path, `[[streams]]\nkey = "static-key-a"\n`);

  await using first = publishOnce(source, relay.rtmpUrl("static-key-a"));
  assertEquals((await first.wait()).code, 0, first.stderr);
  await using refused = publishOnce(source, relay.rtmpUrl("static-key-b"));
  assert((await refused.wait(10_000)).code !== 0, "key b is not listed yet");
  assertMatch(relay.process.stderr, /publish refused: stream key not in config.toml/);

  await Deno.writeTextFile(
    relay.configPath,
    relayConfigText(
      relay.rtmpPort,
      relay.httpPort,
      `[[streams]]\nkey = "static-key-a"\n[[streams]]\nkey = "static-key-b"\n`,
    ),
  );
  relay.process.kill("SIGHUP");
  await waitFor(() => relay.process.stderr.includes("configuration reloaded"), "reload");
  await using accepted = publishOnce(source, relay.rtmpUrl("static-key-b"));
  assertEquals((await accepted.wait()).code, 0, accepted.stderr);

  await Deno.writeTextFile(relay.configPath, `[rtmp]\nport = "not a port"\n`);
  relay.process.kill("SIGHUP");
  await waitFor(() => relay.process.stderr.includes("reload rejected"), "rejection");
  assertMatch(relay.process.stderr, /rtmp\.port = "not a port"/);
  await using still = publishOnce(source, relay.rtmpUrl("static-key-b"));
  assertEquals((await still.wait()).code, 0, "the old configuration stays in force");
  assert(!relay.process.stderr.includes("static-key-b"), "keys never appear in the log");
});
