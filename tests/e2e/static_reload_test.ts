/**
 * Static mode (no control plane) as an operator runs it: `main.ts` with a config.toml the test
 * writes, SIGHUP to reload it.
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { fixture } from "../helpers/media.ts";
import { tempDir, waitFor } from "../helpers/process.ts";
import { relayConfigText, spawnRelay } from "../helpers/relay.ts";
import { ffmpegPublish } from "../helpers/peers.ts";

Deno.test("static keys: unknown keys are refused, SIGHUP adds keys, a bad file is rejected", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 1 });
  await using relay = await spawnRelay(dir.path, `[[streams]]\nkey = "static-key-a"\n`);

  await using first = ffmpegPublish(source, relay.rtmpUrl("static-key-a"), { realtime: false });
  assertEquals((await first.wait()).code, 0, first.stderr);
  await using refused = ffmpegPublish(source, relay.rtmpUrl("static-key-b"), { realtime: false });
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
  await using accepted = ffmpegPublish(source, relay.rtmpUrl("static-key-b"), { realtime: false });
  assertEquals((await accepted.wait()).code, 0, accepted.stderr);

  await Deno.writeTextFile(relay.configPath, `[rtmp]\nport = "not a port"\n`);
  relay.process.kill("SIGHUP");
  await waitFor(() => relay.process.stderr.includes("reload rejected"), "rejection");
  assertMatch(relay.process.stderr, /rtmp\.port = "not a port"/);
  await using still = ffmpegPublish(source, relay.rtmpUrl("static-key-b"), { realtime: false });
  assertEquals((await still.wait()).code, 0, "the old configuration stays in force");
  assert(!relay.process.stderr.includes("static-key-b"), "keys never appear in the log");
});
