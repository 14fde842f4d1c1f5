/**
 * Stopping a destination at stream end: FFmpeg gets its stdin closed and is waited for as long as
 * it makes progress sending the end of the stream, however long that takes; only a destination
 * that makes no progress at all is cut off.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { ffmpegProcessesWith, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay } from "../helpers/relay.ts";
import { NginxSink, settledFile } from "../helpers/sinks.ts";
import { ThrottledProxy } from "../helpers/throttled_proxy.ts";
import type { EngineName } from "../../src/relay/relay_engine.ts";

// A short grace makes the old fixed drain timer (half of it: 1 s, then SIGTERM and 0.5 s more)
// far shorter than the drain.
const SHUTDOWN_GRACE_SECONDS = 2;

/**
 * A stream of 6.4 MB published as fast as possible to a relay whose one destination goes through a
 * 1 MB/s proxy to nginx. It reaches the relay within a second or two and takes over 6 s to get
 * through: loopback's socket buffers take in a megabyte or two at once, so the stream is much larger
 * than that, and the relay's queue is made big enough to hold it all, so that the relay still holds
 * most of it when the stream ends.
 */
async function slowDestination(
  dir: string,
  name: string,
  graceSeconds = SHUTDOWN_GRACE_SECONDS,
  engine: EngineName = "ffmpeg",
  bytesPerSecond = 1_000_000,
  seconds = 8,
) {
  await using stack = new AsyncDisposableStack();
  const key = `${name}-0001`;
  const out = `${name}-out`;
  const source = await fixture({ seconds, gop: 30, videoBitrate: "6M", size: "1280x720" });
  const nginx = stack.use(await NginxSink.start(`${dir}/nginx`));
  const proxy = stack.use(new ThrottledProxy(nginx.port, bytesPerSecond));
  const relay = stack.use(
    await startTestRelay({
      streams: [{
        key,
        destinations: [{
          id: name,
          platform: "custom",
          rtmp_url: `rtmp://127.0.0.1:${proxy.port}/live`,
          stream_key: out,
          engine,
        }],
      }],
      streaming: { shutdown_grace_seconds: graceSeconds, buffer_size_kb: 16_384 },
    }),
  );
  const publisher = stack.use(ffmpegPublish(source, relay.rtmpUrl(key), { realtime: false }));
  const resources = stack.move();
  return {
    source,
    nginx,
    proxy,
    relay,
    out,
    /** Resolves once the publisher is done and the relay has ended the stream. */
    async ended(): Promise<void> {
      assertEquals((await publisher.wait()).code, 0, publisher.stderr);
      await waitFor(() => relay.service.manager.relayFor(key) === undefined, "the stream to end");
    },
    /** Resolves once the destination's FFmpeg has exited. */
    async ffmpegGone(timeoutMs: number): Promise<void> {
      const marker = `127.0.0.1:${proxy.port}/live`;
      await waitFor(
        async () => (await ffmpegProcessesWith(marker)).length === 0,
        "FFmpeg gone",
        timeoutMs,
      );
    },
    [Symbol.asyncDispose]: () => resources.disposeAsync(),
  };
}

Deno.test("DestinationSupervisor.stop() waits while a slow destination still drains: the whole stream arrives", async () => {
  await using dir = await tempDir();
  await using scenario = await slowDestination(dir.path, "slow");
  const { proxy, relay, nginx } = scenario;
  await scenario.ended();
  const endedAt = performance.now();
  await scenario.ffmpegGone(60_000);
  const drainSeconds = (performance.now() - endedAt) / 1000;
  await waitFor(() => proxy.finished === 1, "the proxy to forward everything", 30_000);
  await settledFile(nginx.recording(scenario.out));
  assertSamePackets(
    await framemd5(nginx.recording(scenario.out)),
    await framemd5(scenario.source),
    "slow destination",
  );
  const logs = relay.logText();
  assert(!logs.includes("cut off"), `FFmpeg was cut off while it still drained:\n${logs}`);
  // The drain outlasted the old fixed timer and SIGTERM grace (1.5 s), or this proves nothing.
  assert(
    drainSeconds > SHUTDOWN_GRACE_SECONDS * 0.75,
    `the destination drained in ${drainSeconds.toFixed(1)} s: too fast to tell`,
  );
});

// At 500 KB/s what the native engine still holds when the stream ends takes well over the 5 s
// stall limit to get through, in writes that each take only part of it: progress must be seen
// as the socket takes bytes, not once a write is done.
Deno.test("native engine: a slow destination still draining is never cut off while it makes progress: the whole stream arrives", async () => {
  await using dir = await tempDir();
  await using scenario = await slowDestination(dir.path, "native", undefined, "native", 500_000);
  const { proxy, relay, nginx } = scenario;
  await scenario.ended();
  await waitFor(() => proxy.finished === 1, "the proxy to forward everything", 30_000);
  await settledFile(nginx.recording(scenario.out));
  const logs = relay.logText();
  assert(
    !logs.includes("cut off"),
    `the native engine was cut off while it still drained:\n${logs}`,
  );
  assertSamePackets(
    await framemd5(nginx.recording(scenario.out)),
    await framemd5(scenario.source),
    "slow native destination",
  );
});

// At 200 KB/s the socket's send buffer, full, opens only every 5 to 7 s (it takes a megabyte or
// more at a time), and what it holds when the publish ends takes longer than that to get through:
// progress must be seen in the destination's acknowledgements, and the socket must not be closed
// while it still holds the end of the stream (a reset on the destination's next acknowledgement
// would throw it away).
Deno.test("native engine: a destination slower than the socket's buffer bursts gets the whole end of the stream", async () => {
  await using dir = await tempDir();
  await using scenario = await slowDestination(dir.path, "bursts", undefined, "native", 200_000, 5);
  const { proxy, relay, nginx } = scenario;
  await scenario.ended();
  await waitFor(() => proxy.finished === 1, "the proxy to forward everything", 40_000);
  await settledFile(nginx.recording(scenario.out));
  const logs = relay.logText();
  assert(!logs.includes("cut off") && !logs.includes("kept the connection open"), logs);
  assertSamePackets(
    await framemd5(nginx.recording(scenario.out)),
    await framemd5(scenario.source),
    "native destination at 200 KB/s",
  );
});

Deno.test("DestinationSupervisor.stop() ends a destination that stops making progress at stream end", async () => {
  await using dir = await tempDir();
  await using scenario = await slowDestination(dir.path, "hung");
  await scenario.ended();
  // The platform hangs while the end of the stream is on its way (still on its way: else this
  // would test nothing).
  scenario.proxy.paused = true;
  const { size } = await Deno.stat(scenario.source);
  assert(scenario.proxy.forwarded < size, `all ${size} bytes forwarded before the pause`);
  // FFmpeg's own 10 s I/O timeout ends it, before the drain's 12 s backstop would.
  const pausedAt = performance.now();
  await scenario.ffmpegGone(30_000);
  const seconds = (performance.now() - pausedAt) / 1000;
  assert(seconds < 15, `FFmpeg lingered ${seconds.toFixed(1)} s`);
  assert(!scenario.relay.logText().includes("cut off"), scenario.relay.logText());
});

Deno.test("RelayService.shutdown() stays within shutdown_grace_seconds while a destination drains", async () => {
  await using dir = await tempDir();
  // Half of 6 s for draining, which the destination (hung: a 5 s stall would be seen later)
  // cannot finish; then SIGTERM.
  await using scenario = await slowDestination(dir.path, "shutdown", 6);
  await scenario.ended();
  scenario.proxy.paused = true;
  const started = performance.now();
  await scenario.relay.service.shutdown("test shutdown");
  const seconds = (performance.now() - started) / 1000;
  const logs = scenario.relay.logText();
  assert(logs.includes("still draining 3 s into shutdown: cut off"), logs);
  assert(seconds < 6, `shutdown took ${seconds.toFixed(1)} s, over shutdown_grace_seconds`);
  await scenario.ffmpegGone(10_000);
});
