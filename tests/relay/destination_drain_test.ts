/**
 * Stopping a destination at stream end: FFmpeg gets its stdin closed and is waited for as long as
 * it makes progress sending the end of the stream, however long that takes; only a destination
 * that makes no progress at all is cut off.
 */

import { assert, assertEquals } from "../helpers/assert.ts";
import { assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { ffmpegProcessesWith, sleep, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay } from "../helpers/relay.ts";
import { NginxSink, settledFile } from "../helpers/sinks.ts";

/**
 * A TCP proxy in front of a sink that forwards what FFmpeg sends at `bytesPerSecond` at most: a
 * destination whose uplink is slower than the stream, so the stream's end is still on its way
 * well after the publisher left. `paused` stops forwarding altogether (a destination that hangs).
 */
class ThrottledProxy implements AsyncDisposable {
  readonly #listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  readonly #conns = new Set<Deno.Conn>();
  readonly #serving: Promise<void>;
  paused = false;
  /** Bytes forwarded to the sink. */
  forwarded = 0;
  /** Connections whose client side has closed and been fully forwarded. */
  finished = 0;

  constructor(readonly targetPort: number, readonly bytesPerSecond: number) {
    this.#serving = (async () => {
      const sessions: Promise<void>[] = [];
      try {
        for await (const client of this.#listener) sessions.push(this.#session(client));
      } catch (error) {
        if (!(error instanceof Deno.errors.BadResource)) throw error;
      }
      await Promise.all(sessions);
    })();
  }

  get port(): number {
    return (this.#listener.addr as Deno.NetAddr).port;
  }

  async #session(client: Deno.Conn): Promise<void> {
    const upstream = await Deno.connect({ hostname: "127.0.0.1", port: this.targetPort });
    this.#conns.add(client).add(upstream);
    const started = performance.now();
    let sent = 0;
    const toSink = (async () => {
      const buffer = new Uint8Array(16 * 1024);
      for (;;) {
        while (this.paused) await sleep(100);
        const n = await client.read(buffer).catch(() => null);
        if (n === null) break;
        if ((await upstream.write(buffer.subarray(0, n)).catch(() => -1)) < 0) break;
        sent += n;
        this.forwarded += n;
        const ahead = started + sent / this.bytesPerSecond * 1000 - performance.now();
        if (ahead > 0) await sleep(ahead);
      }
      this.#close(upstream);
    })();
    const toClient = (async () => {
      const buffer = new Uint8Array(4096);
      for (;;) {
        const n = await upstream.read(buffer).catch(() => null);
        if (n === null) break;
        if ((await client.write(buffer.subarray(0, n)).catch(() => -1)) < 0) break;
      }
    })();
    await toSink;
    this.finished++;
    await toClient;
    this.#close(client);
  }

  #close(conn: Deno.Conn): void {
    if (!this.#conns.delete(conn)) return;
    try {
      conn.close();
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.paused = false;
    this.#listener.close();
    for (const conn of [...this.#conns]) this.#close(conn);
    await this.#serving;
  }
}

// A short grace makes the old fixed drain timer (half of it: 1 s) far shorter than the drain.
const SHUTDOWN_GRACE_SECONDS = 2;

Deno.test("DestinationSupervisor.stop() waits while a slow destination still drains: the whole stream arrives", async () => {
  await using dir = await tempDir();
  // 6.4 MB, published as fast as possible: it reaches the relay within a second or two, then
  // takes over 6 s to get through the 1 MB/s destination. Loopback's socket buffers take in a
  // megabyte or two at once, so the stream must be much larger than that to leave the relay's
  // queue (made big enough to hold it all) still full when the stream ends.
  const source = await fixture({ seconds: 8, gop: 30, videoBitrate: "6M", size: "1280x720" });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  await using proxy = new ThrottledProxy(nginx.port, 1_000_000);
  await using relay = await startTestRelay({
    streams: [{
      key: "slow-drain-0001",
      destinations: [{
        id: "slow",
        platform: "custom",
        rtmp_url: `rtmp://127.0.0.1:${proxy.port}/live`,
        stream_key: "slow-out",
      }],
    }],
    streaming: { shutdown_grace_seconds: SHUTDOWN_GRACE_SECONDS, buffer_size_kb: 16_384 },
  });
  const marker = `127.0.0.1:${proxy.port}/live`;
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("slow-drain-0001"), {
    realtime: false,
  });
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  const endedAt = performance.now();
  await waitFor(
    () => relay.service.manager.relayFor("slow-drain-0001") === undefined,
    "the stream to end",
  );
  await waitFor(
    async () => (await ffmpegProcessesWith(marker)).length === 0,
    "FFmpeg gone",
    60_000,
  );
  const drainSeconds = (performance.now() - endedAt) / 1000;
  await waitFor(() => proxy.finished === 1, "the proxy to forward everything", 30_000);
  await settledFile(nginx.recording("slow-out"));
  assertSamePackets(
    await framemd5(nginx.recording("slow-out")),
    await framemd5(source),
    "slow destination",
  );
  const logs = relay.logText();
  assert(!logs.includes("SIGTERM"), `FFmpeg was signalled while it still drained:\n${logs}`);
  // The drain outlasted the old fixed timer (1 s here) by far, or this test proves nothing.
  assert(
    drainSeconds > SHUTDOWN_GRACE_SECONDS,
    `the destination drained in ${drainSeconds.toFixed(1)} s: too fast to tell`,
  );
});

Deno.test("DestinationSupervisor.stop() cuts off a destination that makes no progress at stream end", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 8, gop: 60, videoBitrate: "1M" });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  await using proxy = new ThrottledProxy(nginx.port, 200_000);
  await using relay = await startTestRelay({
    streams: [{
      key: "hung-drain-0001",
      destinations: [{
        id: "hung",
        platform: "custom",
        rtmp_url: `rtmp://127.0.0.1:${proxy.port}/live`,
        stream_key: "hung-out",
      }],
    }],
    streaming: { shutdown_grace_seconds: SHUTDOWN_GRACE_SECONDS },
  });
  const marker = `127.0.0.1:${proxy.port}/live`;
  await using publisher = ffmpegPublish(source, relay.rtmpUrl("hung-drain-0001"), {
    realtime: false,
  });
  await waitFor(() => proxy.forwarded > 0, "the destination to receive");
  proxy.paused = true;
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await waitFor(
    () => relay.service.manager.relayFor("hung-drain-0001") === undefined,
    "the stream to end",
  );
  // Cut off after the stall (5 s), well before FFmpeg's own 10 s I/O timeout would end it.
  await waitFor(
    async () => (await ffmpegProcessesWith(marker)).length === 0,
    "FFmpeg gone",
    30_000,
  );
  assert(
    relay.logText().includes("made no progress for 5 s while draining: SIGTERM"),
    relay.logText(),
  );
});
