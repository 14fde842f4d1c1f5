/**
 * The end of a stream reaches every destination: the last packet of each track, then the
 * publisher's goodbye (`FCUnpublish`, `deleteStream`), on both engines.
 *
 * What breaks it: a publisher that closes its socket while the destination has sent it something
 * it has not read (a ping, an acknowledgement), or that arrives after the close, makes the kernel
 * answer with a reset, and a reset throws away whatever the publisher's kernel still held unsent:
 * the stream's last packets. FFmpeg 5.1 reads what the destination sends only every 10 packets it
 * writes and closes without reading: the relay runs it with `-rtmp_flush_interval 1`, a read after
 * every packet. The native engine half-closes and reads until the destination closes.
 *
 * A real FFmpeg publishes a fixture to the real relay; the destination is our own RTMP ingest
 * (`RecordingSink`) pinging its publishers every 100 ms, so that a ping is in flight at every
 * moment; what it received is compared with the fixture's packets, fingerprint by fingerprint.
 *
 * The relay's own server closes its players' connections in the same way once their stream has
 * ended: it shuts its side and reads until the player closes. Real FFmpeg players, one of them
 * slow, are compared packet by packet (framemd5) with the fixture or with each other.
 */

import { readFlvTags } from "../../bench/flv_file.ts";
import { ENGINE_NAMES } from "../../src/relay/relay_engine.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { ffmpegPlay, ffmpegPublish } from "../helpers/peers.ts";
import { sleep, tempDir, waitFor } from "../helpers/process.ts";
import { readToEnd, RecordingSink, TrackLog } from "../helpers/recording_sink.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { ThrottledProxy } from "../helpers/throttled_proxy.ts";

/** The sink's ping interval: its session timer's shortest tick, 100 ms. */
const PING_ALWAYS_MS = 1;
const OUTS = ["end-a", "end-b", "end-c"];

async function sentTracks(source: string): Promise<TrackLog> {
  const sent = new TrackLog();
  for (const packet of await readFlvTags(source)) sent.add(packet);
  return sent;
}

/** Every packet sent arrived, in order, to the last one, and the publisher said goodbye. */
function assertWhole(sink: RecordingSink, out: string, sent: TrackLog): void {
  const got = sink.received.get(out);
  assert(got !== undefined, `${out}: nothing arrived`);
  for (const track of ["audio", "video"] as const) {
    const a = got[track];
    const b = sent[track];
    const differs = a.findIndex((fp, i) => fp !== b[i]);
    assert(
      a.length === b.length && differs < 0,
      `${out} ${track}: received ${a.length} of ${b.length} packets` +
        (differs >= 0 ? `, the first different at ${differs}` : "") +
        `; received ended with ${a.slice(-2).join(" ")}, sent with ${b.slice(-2).join(" ")}` +
        `; the sink's session ended: ${sink.endReason(out)}`,
    );
  }
  assertMatch(sink.endReason(out) ?? "", /FCUnpublish|deleteStream/, `${out}: how it ended`);
}

for (const engine of ENGINE_NAMES) {
  Deno.test(`${engine} engine: a destination that pings all the time gets every track to its last packet, then the goodbye`, async () => {
    const source = await fixture({ seconds: 4, gop: 60 });
    const sent = await sentTracks(source);
    await using sink = new RecordingSink({ pingIntervalMs: PING_ALWAYS_MS });
    await using relay = await startTestRelay({
      streams: [{
        key: `end-${engine}-0001`,
        destinations: OUTS.map((out) => ({
          id: out,
          rtmp_url: sink.url,
          stream_key: out,
          engine,
        })),
      }],
    });
    await using publisher = ffmpegPublish(source, relay.rtmpUrl(`end-${engine}-0001`));
    assertEquals((await publisher.wait()).code, 0, publisher.stderr);
    await readToEnd(OUTS.map((out) => [sink, out] as const));
    for (const out of OUTS) assertWhole(sink, out, sent);
  });
}

Deno.test("native engine: a destination slow to read the stream's end, pinging all the while, still gets all of it and the goodbye", async () => {
  // 3 Mbit/s: what arrives while the destination is not reading is far more than loopback's
  // socket buffers take in before the relay's kernel has to hold it.
  const source = await fixture({ seconds: 4, gop: 60, videoBitrate: "3M", size: "1280x720" });
  const sent = await sentTracks(source);
  const key = "end-slow-0001";
  await using sink = new RecordingSink({ pingIntervalMs: PING_ALWAYS_MS });
  await using proxy = new ThrottledProxy(sink.port, 1_000_000_000);
  await using relay = await startTestRelay({
    // Room for everything the stalled destination is behind by: no drop to a keyframe.
    streaming: { buffer_size_kb: 16_384 },
    streams: [{
      key,
      destinations: [{
        id: "slow",
        rtmp_url: `rtmp://127.0.0.1:${proxy.port}/live`,
        stream_key: "end-slow",
        engine: "native",
      }],
    }],
  });
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(key));
  await waitFor(() => sink.received.has("end-slow"), "the destination to publish");
  // The destination stops reading for the last 1.5 s of the stream and 0.5 s after it, while its
  // pings still reach the relay.
  await sleep(2_500);
  proxy.paused = true;
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await sleep(500);
  assert(!sink.ended("end-slow"), "the destination read the end while paused: nothing was tested");
  proxy.paused = false;
  await readToEnd([[sink, "end-slow"]]);
  assertWhole(sink, "end-slow", sent);
});

/**
 * A real FFmpeg player of `key` reached through a proxy that can stop passing it what the relay
 * sends (`proxy.paused`) while what it sends still reaches the relay, recording to `out`.
 */
function slowPlayer(relay: TestRelay, key: string, out: string) {
  const proxy = new ThrottledProxy(relay.rtmpPort, 1_000_000_000, { throttled: "fromTarget" });
  const player = ffmpegPlay(`rtmp://127.0.0.1:${proxy.port}/live/${key}`, out);
  return { proxy, player };
}

/** A relay that pings its clients every 100 ms, so that a player has pings to answer at the end. */
function pingingRelay(key: string): Promise<TestRelay> {
  return startTestRelay({ rtmp: { ping_interval_seconds: 0.1 }, streams: [{ key }] });
}

async function waitForPlayers(relay: TestRelay, key: string, count: number): Promise<void> {
  await waitFor(
    () => relay.service.hub.get(key)?.subscriberCount === count,
    `${count} player(s) on the stream`,
  );
}

Deno.test("a player slow to read the stream's end, answering the relay's pings, still gets all of it", async () => {
  // As above, the other way round: the relay's server is the side that closes, once its stream
  // has ended, and the player (a real FFmpeg) answers the pings it finds in what it reads late.
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4, gop: 60, videoBitrate: "3M", size: "1280x720" });
  const key = "end-player-0001";
  await using relay = await pingingRelay(key);
  const { proxy, player } = slowPlayer(relay, key, `${dir.path}/played.flv`);
  await using _proxy = proxy;
  await using _player = player;
  await waitForPlayers(relay, key, 1);
  // The relay pings its publisher as often: FFmpeg must not lose the stream's end on its way in.
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(key), { readAfterEveryPacket: true });
  // The player stops reading for the last 1.5 s of the stream and 0.5 s after it, while what it
  // sends still reaches the relay.
  await sleep(2_500);
  proxy.paused = true;
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await sleep(500);
  assert(!player.exited, "the player read the end while paused: nothing was tested");
  proxy.paused = false;
  assertEquals((await player.wait()).code, 0, player.stderr);
  assertSamePackets(
    await framemd5(`${dir.path}/played.flv`),
    await framemd5(source),
    "slow player",
  );
});

Deno.test("on the relay's shutdown a slow player gets as much of the stream as a fast one, and the end", async () => {
  // The stream ends mid-way: what a player reading at once got is what the relay had for its
  // players when it stopped, and the slow player must get the same, though much of it is still
  // queued when the relay closes its connections.
  await using dir = await tempDir();
  const source = await fixture({ seconds: 8, gop: 60, videoBitrate: "3M", size: "1280x720" });
  const key = "end-shutdown-0001";
  await using relay = await pingingRelay(key);
  const { proxy, player: slow } = slowPlayer(relay, key, `${dir.path}/slow.flv`);
  await using _proxy = proxy;
  await using _slow = slow;
  await waitForPlayers(relay, key, 1);
  await using fast = ffmpegPlay(relay.rtmpUrl(key), `${dir.path}/fast.flv`);
  await waitForPlayers(relay, key, 2);
  await using _publisher = ffmpegPublish(source, relay.rtmpUrl(key), {
    readAfterEveryPacket: true,
  });
  // Paused for 3 s (about 1.1 MB), more than the proxy's socket takes in: the relay holds the
  // rest, in its kernel or in the player's queue, when it stops.
  await sleep(2_500);
  proxy.paused = true;
  await sleep(3_000);
  const stopping = relay.service.shutdown("relay shutting down for the test");
  await sleep(500);
  assert(!slow.exited, "the slow player read the end while paused: nothing was tested");
  proxy.paused = false;
  await stopping;
  assertEquals((await fast.wait()).code, 0, fast.stderr);
  assertEquals((await slow.wait()).code, 0, slow.stderr);
  const fastPackets = await framemd5(`${dir.path}/fast.flv`);
  assert(fastPackets.length > 100, `the fast player got ${fastPackets.length} packets`);
  assertSamePackets(
    await framemd5(`${dir.path}/slow.flv`),
    fastPackets,
    "slow player (expected: what the fast one got)",
  );
});
