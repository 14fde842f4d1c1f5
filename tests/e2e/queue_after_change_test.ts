/**
 * A native destination keeps its queue when the publisher comes back with another stream. When the
 * returning publisher has no video, a drop on that queue must end on audio: the keyframe it would
 * otherwise wait for never comes, and the destination would get nothing more for the rest of the
 * stream. Our test publisher sends the stream (it can send audio far faster than real time, to
 * overflow the queue in a second); the destination is our own relay behind a proxy that stops
 * forwarding, a platform that hangs, then recovers.
 */

import { TagType } from "../../src/media/flv.ts";
import { ChunkStream } from "../../src/rtmp/messages.ts";
import type { DestinationSupervisor } from "../../src/relay/destination_supervisor.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { sleep, waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";
import { ThrottledProxy } from "../helpers/throttled_proxy.ts";

const KEY = "queue-change-0001";

/** AVC decoder configuration: version 1, High profile, level 3.1, one SPS and one PPS. */
const AVC_CONFIG = [1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 4, 0x67, 0x64, 0, 0x1f, 1, 0, 1, 0x68];

class Publisher implements AsyncDisposable {
  #timestamp = 0;
  private constructor(readonly client: TestRtmpClient, readonly streamId: number) {}

  static async open(relay: TestRelay): Promise<Publisher> {
    const client = await TestRtmpClient.connect(relay.rtmpPort);
    await client.handshake();
    const { streamId, code } = await client.publish(KEY);
    assertEquals(code, "NetStream.Publish.Start");
    return new Publisher(client, streamId);
  }

  send(type: typeof TagType.Audio | typeof TagType.Video, body: Uint8Array): Promise<void> {
    return this.client.send({
      chunkStreamId: type === TagType.Audio ? ChunkStream.Audio : ChunkStream.Video,
      typeId: type,
      timestamp: this.#timestamp,
      streamId: this.streamId,
      payload: body,
    });
  }

  /** An AAC frame of `size` bytes (its contents are never decoded on the way). */
  async audio(size: number): Promise<void> {
    const body = new Uint8Array(size);
    body.set([0xaf, 0x01]);
    await this.send(TagType.Audio, body);
    this.#timestamp += 21;
  }

  audioHeader(): Promise<void> {
    return this.send(TagType.Audio, new Uint8Array([0xaf, 0x00, 0x12, 0x10]));
  }

  async videoKeyframe(): Promise<void> {
    await this.send(TagType.Video, new Uint8Array([0x17, 0x01, 0, 0, 0, ...new Array(200)]));
  }

  videoHeader(): Promise<void> {
    return this.send(TagType.Video, new Uint8Array([0x17, 0x00, 0, 0, 0, ...AVC_CONFIG]));
  }

  [Symbol.asyncDispose](): Promise<void> {
    this.client.close();
    return Promise.resolve();
  }
}

/** The destination's status once nothing is queued and its writes have stopped moving. */
async function drained(destination: DestinationSupervisor) {
  const deadline = performance.now() + 30_000;
  for (let last = -1;; await sleep(1_000)) {
    const status = destination.status();
    if (status.queue_lag_ms === 0 && status.packets_sent === last) return status;
    assert(performance.now() < deadline, "the destination never drained its queue");
    last = status.packets_sent;
  }
}

Deno.test("a native destination that falls behind after the publisher came back without video resumes on audio", async () => {
  await using sink = await startTestRelay({ streams: [{ key: "queue-change-sink" }] });
  await using proxy = new ThrottledProxy(sink.rtmpPort, 100_000_000);
  await using relay = await startTestRelay({
    streams: [{
      key: KEY,
      destinations: [{
        id: "dest",
        rtmp_url: `rtmp://127.0.0.1:${proxy.port}/live`,
        stream_key: "queue-change-sink",
        engine: "native",
      }],
    }],
    streaming: { reconnect_grace_seconds: 10 },
  });

  // Audio and video, until the destination is live.
  {
    await using first = await Publisher.open(relay);
    await first.videoHeader();
    await first.audioHeader();
    for (let i = 0; i < 5; i++) {
      await first.videoKeyframe();
      await first.audio(200);
    }
    const destination: DestinationSupervisor = await waitFor(
      () => relay.service.manager.relayFor(KEY)?.get("dest"),
      "the destination",
    );
    await waitFor(() => destination.status().packets_sent >= 10, "the first packets sent", 20_000);
  } // the encoder drops

  // It comes back within the window with audio only: the same destination connection goes on.
  await using second = await Publisher.open(relay);
  await second.audioHeader();
  await second.audio(200);
  await waitFor(
    () => relay.logText().includes("the returning publisher changed the stream: video removed"),
    "the change to be seen",
  );
  const destination = relay.service.manager.relayFor(KEY)!.get("dest")!;
  assertEquals(destination.status().reconnects, 0, "one destination connection throughout");

  // The platform hangs: socket buffers and then the queue fill up, and the queue drops.
  proxy.paused = true;
  const frame = 32 * 1024;
  for (let sent = 0; destination.status().drop_episodes === 0; sent += frame) {
    assert(sent < 256 * 1024 * 1024, "256 MiB of audio sent and the queue never dropped");
    await second.audio(frame);
    if (sent % (32 * frame) === 0) await sleep(1); // lets the relay read and count
  }

  // It recovers: once what was queued has gone, new audio goes out again.
  proxy.paused = false;
  const before = await drained(destination);
  const fresh = 20;
  for (let i = 0; i < fresh; i++) {
    await second.audio(200);
    await sleep(20);
  }
  const after = await waitFor(
    () => {
      const status = destination.status();
      return status.packets_sent + status.dropped_packets >= before.packets_sent +
          before.dropped_packets + fresh
        ? status
        : undefined;
    },
    "the new audio to reach the destination's queue",
  );
  assertEquals(
    [after.packets_sent - before.packets_sent, after.dropped_packets - before.dropped_packets],
    [fresh, 0],
    "every new audio packet sent, none dropped",
  );
  assertMatch(after.state, /^(connected|degraded)$/);
});
