/**
 * Keeping up, measured per destination: a real encoder publishes a 6 Mbit/s stream in real time;
 * its one destination (nginx-rtmp) sits behind a proxy of ours that forwards 100 kB/s, a platform
 * whose uplink cannot keep up. Before anything is dropped or fails, the destination shows
 * `degraded` with a queue lag that grows, output below input; once the proxy speeds up it is back
 * to `connected` with no lag. The API and /metrics show the same.
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { fixture } from "../helpers/media.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { sleep, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay } from "../helpers/relay.ts";
import { NginxSink } from "../helpers/sinks.ts";
import { ThrottledProxy } from "../helpers/throttled_proxy.ts";
import { DEGRADED_LAG_MS } from "../../src/relay/destination_supervisor.ts";

const KEY = "keeping-up-0001";

for (const engine of ["native", "ffmpeg"]) {
  Deno.test(`a destination that cannot keep up shows degraded with a growing lag before it drops, and recovers (${engine} engine)`, async () => {
    await using dir = await tempDir();
    const source = await fixture({ seconds: 40, gop: 30, videoBitrate: "6M", size: "1280x720" });
    await using nginx = await NginxSink.start(`${dir.path}/nginx`);
    await using proxy = new ThrottledProxy(nginx.port, 100_000);
    await using relay = await startTestRelay({
      streams: [{
        key: KEY,
        destinations: [{
          id: "slow",
          rtmp_url: `rtmp://127.0.0.1:${proxy.port}/live`,
          stream_key: `slow-${engine}`,
          engine,
        }],
      }],
    });
    await using _publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
    const destination = await waitFor(
      () => relay.service.manager.relayFor(KEY)?.get("slow"),
      "the destination",
    );
    await waitFor(() => destination.status().connected, "the destination to connect", 20_000);
    const first = await waitFor(
      () => {
        const status = destination.status();
        return status.state === "degraded" ? status : undefined;
      },
      "the destination to fall behind",
      30_000,
    );
    assertEquals(first.dropped_packets, 0, "degraded before anything is dropped");
    assert(first.queue_lag_ms > DEGRADED_LAG_MS, `lag ${first.queue_lag_ms} ms`);
    const later = await waitFor(() => {
      const status = destination.status();
      return status.queue_lag_ms > first.queue_lag_ms + 1_000 ? status : undefined;
    }, "the lag to grow");
    assertEquals([later.state, later.dropped_packets, later.failure], ["degraded", 0, null]);
    assert(
      later.output_bitrate_kbps < later.input_bitrate_kbps,
      `output ${later.output_bitrate_kbps} kbit/s, input ${later.input_bitrate_kbps} kbit/s`,
    );
    const metrics = await (await fetch(relay.httpUrl("/metrics"))).text();
    assertMatch(metrics, /^neustream_destination_state\{[^}]*state="degraded"[^}]*\} 1$/m);
    assertMatch(metrics, /^neustream_destination_queue_lag_seconds\{[^}]*\} [1-9]/m);
    const api = JSON.stringify(await (await fetch(relay.httpUrl("/api/streams"))).json());
    assert(api.includes('"state":"degraded"') && api.includes('"queue_lag_ms"'), api);

    proxy.bytesPerSecond = 100_000_000; // the uplink recovers
    const recovered = await waitFor(
      () => {
        const status = destination.status();
        return status.state === "connected" ? status : undefined;
      },
      "the destination to catch up",
      30_000,
    );
    assert(recovered.queue_lag_ms <= DEGRADED_LAG_MS, `lag ${recovered.queue_lag_ms} ms`);
    assertEquals([recovered.dropped_packets, recovered.error_count], [0, 0]);
    assert(recovered.time_to_live_ms !== null && recovered.availability > 0.5, "availability");
  });
}

Deno.test("a destination slow to connect gets a high-bitrate stream from its start, nothing dropped", async () => {
  await using dir = await tempDir();
  // 6 Mbit/s: 7 s of it is about 5 MB, more than a 4 MiB queue holds.
  const source = await fixture({ seconds: 40, gop: 30, videoBitrate: "6M", size: "1280x720" });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  await using proxy = new ThrottledProxy(nginx.port, 100_000_000);
  proxy.paused = true; // the platform's ingest takes its time to answer
  await using relay = await startTestRelay({
    streams: [{
      key: KEY,
      destinations: [{
        id: "late",
        rtmp_url: `rtmp://127.0.0.1:${proxy.port}/live`,
        stream_key: "late-out",
        engine: "native",
      }],
    }],
  });
  await using _publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const destination = await waitFor(
    () => relay.service.manager.relayFor(KEY)?.get("late"),
    "the destination",
  );
  await sleep(7_000);
  proxy.paused = false;
  await waitFor(() => destination.status().connected, "the destination to connect", 10_000);
  const caughtUp = await waitFor(
    () => {
      const status = destination.status();
      return status.queue_lag_ms < 500 ? status : undefined;
    },
    "the destination to catch up",
    15_000,
  );
  assertEquals([caughtUp.dropped_packets, caughtUp.drop_episodes], [0, 0]);
  assert(!relay.logText().includes("dropping until the next keyframe"), relay.logText());
});
