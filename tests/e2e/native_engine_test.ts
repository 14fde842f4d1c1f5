/**
 * The native engine behind the destination supervisor, in the real relay: a real encoder (FFmpeg,
 * or our Enhanced RTMP test publisher) publishes to relay A, whose destinations name
 * `engine = "native"`; real sinks receive (nginx-rtmp, `ffmpeg -listen 1`, our own relay B read
 * back by a player, a TLS ingest with the test CA), and what arrived is compared with what was
 * sent, packet by packet. Then what only the native engine can do (HEVC, one rendition of a
 * multitrack stream) and what the FFmpeg engine says instead, and a refused key.
 */

import { selectRendition } from "../../src/media/enhanced_rtmp.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import {
  asPlayed,
  decodedFrames,
  describeTags,
  encodeVideo,
  enhancedTags,
  extractElementary,
  publishEnhanced,
  type SentTag,
  type Tag,
} from "../helpers/ertmp.ts";
import { assertContiguousRun, assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { ffmpegPlay, ffmpegPublish } from "../helpers/peers.ts";
import { freePort, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";
import { SilentRtmpServer } from "../helpers/silent_server.ts";
import { RecordingSink } from "../helpers/recording_sink.ts";
import { ThrottledProxy } from "../helpers/throttled_proxy.ts";
import { NginxSink, settledFile, startFfmpegSink } from "../helpers/sinks.ts";
import { makeTestPki, TlsFront } from "../helpers/tls.ts";
import type { DestinationSupervisor } from "../../src/relay/destination_supervisor.ts";

const KEY = "native-engine-0001";

function relayBase(relay: TestRelay): string {
  return `rtmp://127.0.0.1:${relay.rtmpPort}/live`;
}

function destinationOf(relay: TestRelay, id: string): Promise<DestinationSupervisor> {
  return waitFor(() => relay.service.manager.relayFor(KEY)?.get(id), `destination ${id}`);
}

/** A player of ours on `relay`, waiting for `key` before it is published. */
async function player(relay: TestRelay, key: string): Promise<TestRtmpClient> {
  const client = await TestRtmpClient.connect(relay.rtmpPort);
  await client.handshake();
  await client.play(key);
  return client;
}

Deno.test("native engine: one FFmpeg-published stream reaches nginx-rtmp, ffmpeg -listen 1, our own relay and a TLS ingest bit-exact", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4, gop: 60 });
  const pki = await makeTestPki(`${dir.path}/pki`);
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  const listenPort = freePort();
  await using listenSink = await startFfmpegSink(listenPort, "dest-l", `${dir.path}/l.flv`);
  const tlsPort = freePort();
  await using tlsSink = await startFfmpegSink(tlsPort, "dest-t", `${dir.path}/t.flv`);
  await using front = await TlsFront.start(pki.trusted, tlsPort);
  await using relayB = await startTestRelay({ streams: [{ key: "dest-r" }] });
  await using played = ffmpegPlay(relayB.rtmpUrl("dest-r"), `${dir.path}/r.flv`);
  await waitFor(() => relayB.service.hub.get("dest-r")?.subscriberCount === 1, "the player");
  const native = (id: string, rtmp_url: string, stream_key: string) => ({
    id,
    rtmp_url,
    stream_key,
    engine: "native",
  });
  await using relay = await startTestRelay({
    streaming: { tls_ca_file: pki.caFile, state_dir: `${dir.path}/state` },
    streams: [{
      key: KEY,
      destinations: [
        native("nginx", nginx.baseUrl, "dest-n"),
        native("listen", `rtmp://127.0.0.1:${listenPort}/live`, "dest-l"),
        native("relay", relayBase(relayB), "dest-r"),
        native("tls", front.baseUrl, "dest-t"),
      ],
    }],
  });
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  await waitFor(
    () => relay.service.manager.relayFor(KEY)?.list().every((d) => d.state === "connected"),
    "all four destinations connected",
  );
  const statuses = relay.service.manager.relayFor(KEY)!.list().map((d) => d.status());
  assert(
    statuses.every((s) => s.engine === "native" && s.pid === null && s.attempt === 1),
    JSON.stringify(statuses),
  );
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await listenSink.wait(15_000);
  await tlsSink.wait(15_000);
  assertEquals((await played.wait()).code, 0, played.stderr);
  await settledFile(nginx.recording("dest-n"));
  const sent = await framemd5(source);
  assertSamePackets(await framemd5(nginx.recording("dest-n")), sent, "nginx-rtmp");
  assertSamePackets(await framemd5(`${dir.path}/l.flv`), sent, "ffmpeg -listen 1");
  assertSamePackets(await framemd5(`${dir.path}/r.flv`), sent, "our own relay");
  assertSamePackets(await framemd5(`${dir.path}/t.flv`), sent, "TLS ingest");
  assertEquals(front.stats.forwarded, 1, "one TLS session carried the stream");
  const logs = relay.logText();
  for (const key of ["dest-n", "dest-l", "dest-r", "dest-t", KEY]) {
    assert(!logs.includes(key), `${key} must not appear in the logs`);
  }
});

Deno.test("both engines report a key the destination refuses as rejected, with its words", async () => {
  const source = await fixture({ seconds: 6, gop: 30 });
  await using relayB = await startTestRelay({ streams: [{ key: "known" }] });
  const refused = (engine: string) => ({
    id: engine,
    rtmp_url: relayBase(relayB),
    stream_key: "unknown-key",
    engine,
  });
  await using relay = await startTestRelay({
    streams: [{ key: KEY, destinations: [refused("native"), refused("ffmpeg")] }],
  });
  await using _publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const expected: Record<string, string> = {
    native: "rejected by destination: NetStream.Publish.BadName publish not authorised",
    ffmpeg: "rejected by destination: publish not authorised",
  };
  for (const engine of ["native", "ffmpeg"]) {
    const destination = await destinationOf(relay, engine);
    await waitFor(() => destination.status().error_count >= 2, `${engine}: two refusals`, 30_000);
    const status = destination.status();
    assertEquals([status.failure, status.last_error], ["rejected", expected[engine]], engine);
    assert(status.attempt >= 2, `${engine}: attempt ${status.attempt}`);
  }
});

Deno.test("both engines report a destination that never answers connect as timed out", async () => {
  const source = await fixture({ seconds: 20, gop: 30 });
  await using silent = new SilentRtmpServer();
  const hung = (engine: string) => ({
    id: engine,
    rtmp_url: `rtmp://127.0.0.1:${silent.port}/live`,
    stream_key: "hung-key",
    engine,
  });
  await using relay = await startTestRelay({
    streams: [{ key: KEY, destinations: [hung("native"), hung("ffmpeg")] }],
  });
  await using _publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  // Both give up after the I/O timeout (10 s): FFmpeg prints only "Input/output error" then,
  // as it does for a server that hangs up, so how long the attempt lasted tells them apart.
  for (const engine of ["native", "ffmpeg"]) {
    const destination = await destinationOf(relay, engine);
    await waitFor(() => destination.status().error_count >= 1, `${engine}: a failure`, 20_000);
    const status = destination.status();
    assertEquals(status.failure, "timeout", `${engine}: ${status.last_error}`);
    assertMatch(status.last_error ?? "", /no answer within 10 s/, engine);
  }
  assert(silent.handshakes >= 2);
});

Deno.test("native engine: a destination that stops reading while live is timed out and reconnected, as FFmpeg's -rw_timeout does", async () => {
  const source = await fixture({ seconds: 40, gop: 30, videoBitrate: "6M", size: "1280x720" });
  // The platform pings every 100 ms throughout: a destination that still talks but takes nothing
  // is stuck all the same (its pings must not count as progress).
  await using sink = new RecordingSink({ pingIntervalMs: 100 });
  await using proxy = new ThrottledProxy(sink.port, 100_000_000);
  await using relay = await startTestRelay({
    streams: [{
      key: KEY,
      destinations: [{
        id: "stuck",
        rtmp_url: `rtmp://127.0.0.1:${proxy.port}/live`,
        stream_key: "stuck-out",
        engine: "native",
      }],
    }],
  });
  await using _publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const destination = await destinationOf(relay, "stuck");
  await waitFor(() => destination.status().connected, "the destination to connect", 20_000);
  // The platform stops reading, keeping the connection open: no FIN, no reset. The socket's
  // buffers fill in a few seconds, then a write waits for good; its pings still arrive.
  proxy.paused = true;
  const returnedBefore = proxy.returned;
  const timedOut = await waitFor(
    () => {
      const status = destination.status();
      return status.failure !== null ? status : undefined;
    },
    "the destination to be given up",
    40_000,
  );
  assertEquals(timedOut.failure, "timeout", timedOut.last_error ?? "");
  assertMatch(timedOut.last_error ?? "", /took nothing for 10 s while publishing/);
  // 100 pings (18 bytes each, with their chunk headers) in the 10 s the relay waited.
  assert(proxy.returned - returnedBefore >= 1_000, `${proxy.returned - returnedBefore} bytes back`);
  proxy.paused = false;
  await waitFor(
    () => {
      const status = destination.status();
      return status.connected && status.reconnects >= 1;
    },
    "the destination to reconnect",
    20_000,
  );
});

/** Publishes Enhanced RTMP `tags` to relay A (our test publisher, not FFmpeg); keeps it open. */
async function publishTags(relay: TestRelay, tags: readonly SentTag[]): Promise<TestRtmpClient> {
  const publisher = await TestRtmpClient.connect(relay.rtmpPort);
  await publisher.handshake();
  await publishEnhanced(publisher, KEY, tags);
  return publisher;
}

/** Decodes the video of single-track `tags`; FFmpeg's per-frame MD5s. */
async function decode(dir: string, name: string, tags: readonly Tag[]): Promise<string[]> {
  const { format, bytes } = extractElementary(tags);
  const file = `${dir}/${name}.${format}`;
  await Deno.writeFile(file, bytes);
  return await decodedFrames(file, format);
}

Deno.test("native engine carries Enhanced RTMP HEVC byte-exact while an FFmpeg destination of the same stream reports the codec", async () => {
  await using dir = await tempDir();
  const hevc = await encodeVideo(dir.path, "hevc", 30);
  const tags = enhancedTags([{ trackId: 0, video: hevc }]);
  await using relayB = await startTestRelay({ streams: [{ key: "hevc-n" }, { key: "hevc-f" }] });
  await using reader = await player(relayB, "hevc-n");
  await using relay = await startTestRelay({
    streams: [{
      key: KEY,
      destinations: [
        { id: "native", rtmp_url: relayBase(relayB), stream_key: "hevc-n", engine: "native" },
        { id: "ffmpeg", rtmp_url: relayBase(relayB), stream_key: "hevc-f" },
      ],
    }],
  });
  await using _publisher = await publishTags(relay, tags);
  const received = await reader.receiveTags(tags.length, 30_000) as Tag[];
  assertEquals(await describeTags(received), await describeTags(asPlayed(tags)), "byte-exact");
  assertEquals(
    await decode(dir.path, "received", received),
    await decodedFrames(hevc.file, hevc.format),
  );
  const ffmpeg = await destinationOf(relay, "ffmpeg");
  await waitFor(() => ffmpeg.state === "failed", "the FFmpeg destination to refuse the codec");
  const status = ffmpeg.status();
  assertEquals([status.engine, status.failure, status.last_error, status.pid], [
    "ffmpeg",
    "codec",
    "codec hvc1 not supported by the ffmpeg engine; use engine = native",
    null,
  ]);
  assertEquals(relayB.service.hub.get("hevc-f")?.publisher, undefined, "nothing was sent");
});

Deno.test("an FFmpeg destination refused for its codec goes out once the returning publisher sends H.264", async () => {
  await using dir = await tempDir();
  const hevc = await encodeVideo(dir.path, "hevc", 30);
  const source = await fixture({ seconds: 6, gop: 30 });
  await using nginx = await NginxSink.start(`${dir.path}/nginx`);
  await using relay = await startTestRelay({
    streaming: { reconnect_grace_seconds: 20 },
    streams: [{
      key: KEY,
      destinations: [{ id: "ffmpeg", rtmp_url: nginx.baseUrl, stream_key: "after-change" }],
    }],
  });
  const hevcPublisher = await publishTags(relay, enhancedTags([{ trackId: 0, video: hevc }]));
  const destination = await destinationOf(relay, "ffmpeg");
  await waitFor(() => destination.state === "failed", "the codec refusal");
  assertEquals(destination.status().failure, "codec");
  hevcPublisher.close(); // the encoder drops; the stream waits for it
  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  await waitFor(() => destination.state === "connected", "FFmpeg on the H.264 stream", 20_000);
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  assertEquals(destination.status().error_count, 0, "a codec refusal is not a failed attempt");
  await relay.service.manager.relayFor(KEY)?.stop();
  await settledFile(nginx.recording("after-change"));
  // The H.264 stream from where FFmpeg joined it (a keyframe) to its end.
  assertContiguousRun(
    await framemd5(nginx.recording("after-change")),
    await framemd5(source),
    "after the change",
  );
});

Deno.test("native engine sends the video_track each destination chose from a multitrack stream, as a single-track stream", async () => {
  await using dir = await tempDir();
  const tracks = [
    { trackId: 0, video: await encodeVideo(dir.path, "hevc", 30) },
    { trackId: 1, video: await encodeVideo(dir.path, "h264", 30, "256x144") },
  ];
  const tags = enhancedTags(tracks);
  await using relayB = await startTestRelay({ streams: [{ key: "track-0" }, { key: "track-1" }] });
  await using reader0 = await player(relayB, "track-0");
  await using reader1 = await player(relayB, "track-1");
  const readers = [reader0, reader1];
  await using relay = await startTestRelay({
    streams: [{
      key: KEY,
      destinations: tracks.map(({ trackId }) => ({
        id: `t${trackId}`,
        rtmp_url: relayBase(relayB),
        stream_key: `track-${trackId}`,
        engine: "native",
        video_track: trackId,
      })),
    }],
  });
  await using _publisher = await publishTags(relay, tags);
  for (const { trackId, video } of tracks) {
    const expected = asPlayed(tags.flatMap((tag) => {
      const payload = selectRendition(tag, { videoTrack: trackId, audioTrack: 0 });
      return payload === undefined ? [] : [{ ...tag, payload }];
    }));
    const received = await readers[trackId]!.receiveTags(expected.length, 30_000) as Tag[];
    assertEquals(await describeTags(received), await describeTags(expected), `track ${trackId}`);
    const multitrack = received.filter((tag) =>
      tag.type === 9 && (tag.payload[0]! & 0x80) !== 0 && (tag.payload[0]! & 0x0f) === 6
    );
    assertEquals(multitrack.length, 0, `track ${trackId}: no multitrack tag left`);
    assertEquals(
      await decode(dir.path, `track-${trackId}`, received),
      await decodedFrames(video.file, video.format),
      `track ${trackId} decodes to its own pictures`,
    );
  }
});

Deno.test("a destination added through the API may name its engine; an unknown one is a 400", async () => {
  const source = await fixture({ seconds: 10, gop: 30 });
  await using relayB = await startTestRelay({ streams: [{ key: "added" }] });
  await using relay = await startTestRelay({
    http: { allow_unauthenticated_control: true },
    streams: [{ key: KEY }],
  });
  await using _publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  await waitFor(() => relay.service.manager.relayFor(KEY), "the stream relay");
  const add = (fields: Record<string, unknown>) =>
    fetch(relay.httpUrl(`/api/streams/${KEY}/destinations`), {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        id: "added",
        rtmp_url: relayBase(relayB),
        stream_key: "added",
        ...fields,
      }),
    });
  const unknown = await add({ engine: "gstreamer" });
  assertEquals(unknown.status, 400);
  assertEquals((await unknown.json()).field, "engine");
  const added = await add({ engine: "native" });
  assertEquals(added.status, 201, await added.text());
  const destination = await destinationOf(relay, "added");
  await waitFor(() => destination.state === "connected", "the added destination to connect");
  assertEquals([destination.status().engine, destination.status().pid], ["native", null]);
  await waitFor(() => relayB.service.hub.get("added")?.publisher, "publishing to relay B");
});
