/**
 * SIGHUP and `[streaming]` as an operator meets them: `main.ts` with a config.toml the test
 * rewrites. What can take effect without dropping anyone is applied on reload; what needs a
 * restart is named by every reload until the relay is restarted.
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { fixture } from "../helpers/media.ts";
import { freePort, tempDir, waitFor } from "../helpers/process.ts";
import { relayConfigText, type RelayProcess, spawnRelay } from "../helpers/relay.ts";
import { ffmpegPublish } from "../helpers/peers.ts";

/** Rewrites the relay's config file (same ports unless `httpPort` says) and waits for its reload. */
async function reload(relay: RelayProcess, body: string, httpPort = relay.httpPort) {
  const before = reloadLines(relay).length;
  await Deno.writeTextFile(relay.configPath, relayConfigText(relay.rtmpPort, httpPort, body));
  relay.process.kill("SIGHUP");
  return await waitFor(() => reloadLines(relay)[before], "the reload's log line");
}

function reloadLines(relay: RelayProcess): string[] {
  return relay.process.stderr.split("\n").filter((line) => line.includes("configuration reloaded"));
}

/**
 * An FFmpeg that takes 2 s to answer and says when it was asked (`asked()`): a reload or a
 * start-up waiting on its check is then held there, for certain, while the test acts. With the
 * relay's permissions for it (run: this script only).
 */
async function slowFfmpeg(dir: string) {
  const askedFile = `${dir}/ffmpeg-asked`;
  const path = `${dir}/slow-ffmpeg`;
  await Deno.writeTextFile(
    path,
    `#!/bin/sh\ntouch '${askedFile}'\nsleep 2\nexec ffmpeg "$@"\n`,
    { mode: 0o755 },
  );
  return {
    /** `[streaming]` with this FFmpeg, and the state directory in `dir`. */
    streaming: `[streaming]\nffmpeg_path = "${path}"\nstate_dir = "${dir}/state"\n`,
    permissions: [
      "--allow-net",
      "--allow-read",
      `--allow-write=${dir}`,
      "--allow-env",
      `--allow-run=${path}`,
    ],
    /** Resolves once the relay has asked it (its check is under way). */
    asked: () =>
      waitFor(() => Deno.stat(askedFile).then(() => true, () => false), "the FFmpeg check"),
  };
}

interface DestinationView {
  id: string;
  status: { engine: string; state: string };
}

async function destinationsOf(relay: RelayProcess, key: string): Promise<DestinationView[]> {
  const response = await fetch(
    `http://127.0.0.1:${relay.httpPort}/api/streams/forwarding/${key}`,
  );
  const body = await response.json();
  return response.ok ? body.destinations : [];
}

Deno.test("SIGHUP applies [streaming] engine, max_destinations_per_stream and max_attempts to streams that start afterwards", async () => {
  await using dir = await tempDir();
  await using relay = await spawnRelay(dir.path, `[[streams]]\nkey = "reload-old-key"\n`);
  // Nothing listens there: each attempt fails at once, so max_attempts = 1 shows quickly.
  const refused = `rtmp://127.0.0.1:${freePort()}/live`;
  const line = await reload(
    relay,
    `[streaming]\nengine = "native"\nmax_destinations_per_stream = 1\nmax_attempts = 1\n` +
      `[[streams]]\nkey = "reload-old-key"\n[[streams]]\nkey = "reload-new-key"\n` +
      `[[streams.destinations]]\nid = "first"\nrtmp_url = "${refused}"\nstream_key = "d1"\n` +
      `[[streams.destinations]]\nid = "second"\nrtmp_url = "${refused}"\nstream_key = "d2"\n`,
  );

  await using _publisher = ffmpegPublish(
    await fixture({ seconds: 10 }),
    relay.rtmpUrl("reload-new-key"),
  );
  const destinations = await waitFor(async () => {
    const found = await destinationsOf(relay, "reload-new-key");
    const tried = found.length > 0 && found.every((d) => d.status.state !== "starting");
    return tried ? found : undefined;
  }, "the new stream's destinations to be tried");
  assertEquals(
    destinations.map((d) => [d.id, d.status.engine]),
    [["first", "native"]],
    "one destination (the cap), on the native engine",
  );
  await waitFor(
    async () => (await destinationsOf(relay, "reload-new-key"))[0]?.status.state === "exhausted",
    "the destination to give up after its one attempt",
  );
  assertMatch(
    line,
    /for_new_streams=streaming\.max_destinations_per_stream,streaming\.engine,streaming\.max_attempts/,
  );
  assert(!line.includes("needs_restart"), line);
});

Deno.test("SIGHUP: a pending restart is named by every reload; a new shutdown_grace_seconds bounds the next stop", async () => {
  await using dir = await tempDir();
  // A destination that accepts and never answers: at shutdown it makes no progress, so what ends
  // its drain is the shutdown grace (half of it), not the 5 s stall limit.
  using silent = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of silent) accepted.push(conn);
  })();
  const streams =
    `[[streams]]\nkey = "reload-grace-key"\n[[streams.destinations]]\nid = "silent"\n` +
    `engine = "native"\nrtmp_url = "rtmp://127.0.0.1:${silent.addr.port}/live"\nstream_key = "d"\n`;
  await using relay = await spawnRelay(
    dir.path,
    `[streaming]\nshutdown_grace_seconds = 30\n${streams}`,
  );

  const changed = `[streaming]\nshutdown_grace_seconds = 2\n${streams}`;
  const first = await reload(relay, changed, freePort());
  assertMatch(first, /needs_restart=http\.port/);
  assertMatch(first, /applied=streaming\.shutdown_grace_seconds/);
  // The file did not change again, but the relay still runs on the old port.
  relay.process.kill("SIGHUP");
  const second = await waitFor(() => reloadLines(relay)[1], "the second reload's log line");
  assertMatch(second, /needs_restart=http\.port/);
  assert(!second.includes("applied="), second);
  const health = await fetch(`http://127.0.0.1:${relay.httpPort}/health`);
  assertMatch(await health.text(), /"ok"/, "still serving the port it started on");

  await using _publisher = ffmpegPublish(
    await fixture({ seconds: 10 }),
    relay.rtmpUrl("reload-grace-key"),
  );
  await waitFor(() => accepted.length > 0, "the destination to connect");
  relay.process.kill("SIGTERM");
  assertEquals((await relay.process.wait()).code, 0, relay.process.stderr);
  assertMatch(relay.process.stderr, /destination still draining 1 s into shutdown: cut off/);
  silent.close();
  await accepting;
  for (const conn of accepted) conn.close();
});

Deno.test("SIGHUP that gives destinations to a relay started without any, and without a usable FFmpeg, is rejected", async () => {
  await using dir = await tempDir();
  const missing = "/nonexistent/ffmpeg"; // not checked at start: nothing needed FFmpeg then
  const base = `[streaming]\nffmpeg_path = "${missing}"\n[[streams]]\nkey = "reload-ffmpeg-key"\n`;
  await using relay = await spawnRelay(dir.path, base);
  const before = relay.process.stderr.length;
  await Deno.writeTextFile(
    relay.configPath,
    relayConfigText(
      relay.rtmpPort,
      relay.httpPort,
      `${base}[[streams.destinations]]\nid = "d"\nrtmp_url = "rtmp://127.0.0.1:1/live"\n` +
        `stream_key = "k"\n`,
    ),
  );
  relay.process.kill("SIGHUP");
  const rejected = await waitFor(
    () => relay.process.stderr.slice(before).match(/configuration reload rejected[^\n]*/)?.[0],
    "the reload to be rejected",
    5_000,
  );
  assertMatch(
    rejected,
    /FFmpeg \(streaming\.ffmpeg_path = "\/nonexistent\/ffmpeg"\) cannot be run/,
  );
  assert(reloadLines(relay).length === 0, "nothing reloaded");
});

Deno.test("SIGHUP: reloads apply in the order of the signals, a later one waiting for one still checking FFmpeg", async () => {
  await using dir = await tempDir();
  // The first reload is held on its FFmpeg check, for certain, when the second signal comes.
  const ffmpeg = await slowFfmpeg(dir.path);
  const first = `${ffmpeg.streaming}[[streams]]\nkey = "order-first"\n`;
  await using relay = await spawnRelay(dir.path, first, "", ffmpeg.permissions);
  const write = (body: string) =>
    Deno.writeTextFile(relay.configPath, relayConfigText(relay.rtmpPort, relay.httpPort, body));

  // Reload 1 gives FFmpeg its first work (one stream, a destination): FFmpeg is checked first.
  await write(
    `${first}[[streams.destinations]]\nid = "d"\nrtmp_url = "rtmp://127.0.0.1:1/live"\n` +
      `stream_key = "k"\n`,
  );
  relay.process.kill("SIGHUP");
  await ffmpeg.asked();
  // Reload 2, while 1 is held there: two streams, nothing for FFmpeg.
  await write(`${first}[[streams]]\nkey = "order-second"\n`);
  relay.process.kill("SIGHUP");

  const lines = await waitFor(
    () => reloadLines(relay).length === 2 ? reloadLines(relay) : undefined,
    "both reloads",
    10_000,
  );
  assertMatch(lines[0]!, /streams=1\b/);
  assertMatch(lines[1]!, /streams=2\b/, "the file as it was at the last signal is what runs");
});

Deno.test("SIGHUP while the relay is still starting is applied once it has started, not fatal", async () => {
  await using dir = await tempDir();
  // Start-up checks FFmpeg (a destination needs it): the signal lands in the middle of it.
  const ffmpeg = await slowFfmpeg(dir.path);
  const body = `${ffmpeg.streaming}[[streams]]\nkey = "early-key"\n[[streams.destinations]]\n` +
    `id = "d"\nrtmp_url = "rtmp://127.0.0.1:1/live"\nstream_key = "k"\n`;
  await using relay = await spawnRelay(dir.path, body, "", ffmpeg.permissions, async (process) => {
    await ffmpeg.asked();
    process.kill("SIGHUP"); // `systemctl reload` right after `start`
  });
  const line = await waitFor(() => reloadLines(relay)[0], "the held reload", 10_000);
  assertMatch(line, /configuration reloaded streams=1/);
  assert(!relay.process.exited, "the relay still runs");
});
