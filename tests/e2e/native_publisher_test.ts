/**
 * The native publisher against real servers: the tags of an FFmpeg-made FLV file go out through
 * `RtmpPublisher` to nginx-rtmp, `ffmpeg -listen 1`, our own server and a TLS ingest on loopback,
 * and what each received is compared with the file packet by packet (framemd5). Then every
 * failure kind, each made by a real server behaving that way.
 */

import { readFlvTags } from "../../bench/flv_file.ts";
import { createMediaPacket, type MediaPacket, TagType } from "../../src/media/flv.ts";
import { DestinationFailure } from "../../src/relay/destination_failure.ts";
import { RtmpPublisher, type RtmpPublisherOptions } from "../../src/relay/rtmp_publisher.ts";
import { trustedCertificates } from "../../src/relay/tls_trust.ts";
import {
  ChunkDecoder,
  ChunkEncoder,
  MessageType,
  type OutgoingMessage,
  type RtmpMessage,
} from "../../src/rtmp/chunk.ts";
import { parseCommand } from "../../src/rtmp/messages.ts";
import { createServerHandshake, HANDSHAKE_SIZE } from "../../src/rtmp/handshake.ts";
import { ServerConversation } from "../../src/rtmp/server_conversation.ts";
import { redactKey } from "../../src/redact.ts";
import { assert, assertEquals, assertMatch, assertRejects } from "../helpers/assert.ts";
import { assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { ffmpegPlay } from "../helpers/peers.ts";
import { freePort, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay, type TestRelay } from "../helpers/relay.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";
import { NginxSink, settledFile, startFfmpegSink } from "../helpers/sinks.ts";
import { type CertificatePair, makeTestPki, type TestPki, TlsFront } from "../helpers/tls.ts";

const KEY = "native-destination-key-0001";
/** Packets per `write()`: a few frames at a time, as a live queue hands them over. */
const BATCH = 8;

/** Opens a publisher to `url` and writes `packets` in batches; returns it still open. */
async function publishPackets(
  url: string,
  packets: readonly MediaPacket[],
  options: Partial<RtmpPublisherOptions> = {},
): Promise<RtmpPublisher> {
  const publisher = await RtmpPublisher.open({ url, timeoutMs: 15_000, ...options });
  for (let at = 0; at < packets.length; at += BATCH) {
    await publisher.write(packets.slice(at, at + BATCH));
  }
  return publisher;
}

/** Publishes the whole of `source` to `url` and ends the publish. */
async function publishFile(
  url: string,
  source: string,
  options: Partial<RtmpPublisherOptions> = {},
): Promise<void> {
  const publisher = await publishPackets(url, await readFlvTags(source), options);
  await publisher.close();
  assertEquals(await publisher.ended, undefined, "a clean end");
}

/** The failure `promise` rejected with, checked to be a `DestinationFailure` of `kind`. */
async function failureOf(
  promise: () => Promise<unknown>,
  kind: DestinationFailure["kind"],
): Promise<DestinationFailure> {
  const error = await assertRejects(promise, DestinationFailure) as DestinationFailure;
  assertEquals(error.kind, kind, error.message);
  assert(!error.message.includes(KEY), `the key never shows: ${error.message}`);
  return error;
}

function startRelay(): Promise<TestRelay> {
  return startTestRelay({ streams: [{ key: KEY }] });
}

Deno.test("RtmpPublisher delivers an FFmpeg-made stream to nginx-rtmp bit-exact", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4, gop: 60 });
  await using sink = await NginxSink.start(dir.path);
  await publishFile(`${sink.baseUrl}/${KEY}`, source);
  await settledFile(sink.recording(KEY));
  assertSamePackets(await framemd5(sink.recording(KEY)), await framemd5(source), "nginx-rtmp");
});

Deno.test("RtmpPublisher delivers an FFmpeg-made stream to ffmpeg -listen 1 bit-exact", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4, gop: 60 });
  const port = freePort();
  const out = `${dir.path}/sink.flv`;
  await using sink = await startFfmpegSink(port, KEY, out);
  await publishFile(`rtmp://127.0.0.1:${port}/live/${KEY}`, source);
  assertEquals((await sink.wait()).code, 0, sink.stderr);
  assertSamePackets(await framemd5(out), await framemd5(source), "ffmpeg -listen 1");
});

Deno.test("RtmpPublisher delivers an FFmpeg-made stream through our own server to a player bit-exact", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 4, gop: 60 });
  await using relay = await startRelay();
  const out = `${dir.path}/played.flv`;
  await using player = ffmpegPlay(relay.rtmpUrl(KEY), out);
  await waitFor(() => (relay.service.hub.get(KEY)?.subscriberCount ?? 0) >= 1, "the player");
  await publishFile(relay.rtmpUrl(KEY), source);
  assertEquals((await player.wait()).code, 0, player.stderr);
  assertSamePackets(await framemd5(out), await framemd5(source), "our server");
  assert(!relay.logText().includes(KEY), "the key is never logged");
});

/** Enhanced RTMP tags (ExVideoTagHeader, FourCC, multitrack) that no FFmpeg here can make. */
function enhancedPackets(): MediaPacket[] {
  const bytes = (...parts: (number[] | string)[]) =>
    new Uint8Array(
      parts.flatMap((part) =>
        typeof part === "string" ? [...new TextEncoder().encode(part)] : part
      ),
    );
  const frames: MediaPacket[] = [
    // Sequence starts: HEVC (frame type 1, packet type 0) and Opus (sound format 9).
    createMediaPacket(TagType.Video, 0, bytes([0x90], "hvc1", [1, 2, 3, 4, 5])),
    createMediaPacket(TagType.Audio, 0, bytes([0x90], "Opus", [9, 8, 7])),
    createMediaPacket(TagType.Video, 0, bytes([0x91], "hvc1", [0, 0, 0], [0xaa, 0xbb])),
  ];
  for (let i = 1; i <= 20; i++) {
    // Coded frames X (packet type 3), then AV1 and VP9, then a multitrack packet (type 6).
    const codec = ["hvc1", "av01", "vp09", "avc1"][i % 4]!;
    frames.push(createMediaPacket(TagType.Video, i * 33, bytes([0xa3], codec, [i, i, i])));
    frames.push(createMediaPacket(TagType.Audio, i * 20, bytes([0x91], "Opus", [i])));
  }
  frames.push(createMediaPacket(TagType.Video, 700, bytes([0x96, 0x01], "hvc1", [0, 1, 2])));
  return frames;
}

Deno.test("RtmpPublisher passes Enhanced RTMP tags through untouched", async () => {
  await using relay = await startRelay();
  await using player = await TestRtmpClient.connect(relay.rtmpPort);
  await player.handshake();
  await player.play(KEY);
  const sent = enhancedPackets();
  await using _publisher = await publishPackets(relay.rtmpUrl(KEY), sent, {
    fourCcList: ["hvc1", "av01", "vp09", "avc1"],
  });
  const received: { type: number; timestamp: number; payload: number[] }[] = [];
  while (received.length < sent.length) {
    const message = await player.nextMedia(10_000);
    assert(message !== null, "the stream continues");
    if (message.typeId === MessageType.DataAmf0) continue;
    received.push({
      type: message.typeId,
      timestamp: message.timestamp,
      payload: [...message.payload],
    });
  }
  assertEquals(
    received,
    sent.map((p) => ({ type: p.type, timestamp: p.timestamp, payload: [...p.payload] })),
  );
});

// ---- RTMPS ----

interface TlsCase {
  pair: (pki: TestPki) => CertificatePair;
  trust: (pki: TestPki) => string[];
}

/**
 * Publishes a fixture through a TLS front with `pair` to an `ffmpeg -listen 1` sink; when it
 * published, checks the sink got it bit-exact. Returns the outcome and what the front saw.
 */
async function publishOverTls(
  dir: string,
  pki: TestPki,
  { pair, trust }: TlsCase,
): Promise<{ outcome: unknown; front: TlsFront["stats"] }> {
  const source = await fixture({ seconds: 2, gop: 30 });
  const port = freePort();
  const out = `${dir}/tls-sink.flv`;
  await using sink = await startFfmpegSink(port, KEY, out);
  await using front = await TlsFront.start(pair(pki), port);
  const outcome = await publishFile(`${front.baseUrl}/${KEY}`, source, { caCerts: trust(pki) })
    .then(() => "published", (error) => error);
  if (outcome !== "published") return { outcome, front: { ...front.stats } };
  assertEquals((await sink.wait()).code, 0, sink.stderr);
  assertSamePackets(await framemd5(out), await framemd5(source), "rtmps");
  return { outcome, front: { ...front.stats } };
}

Deno.test("RtmpPublisher over rtmps trusts tls_ca_file on top of the system roots", async () => {
  await using dir = await tempDir();
  const result = await publishOverTls(dir.path, await makeTestPki(`${dir.path}/pki`), {
    pair: (pki) => pki.trusted,
    trust: (pki) => trustedCertificates({ caFile: pki.caFile }),
  });
  assertEquals(result.outcome, "published");
  assertEquals(result.front.forwarded, 1);
});

Deno.test("RtmpPublisher over rtmps trusts the system bundle without tls_ca_file", async () => {
  await using dir = await tempDir();
  // The test CA stands in as the system bundle: what that file holds is what is trusted.
  const result = await publishOverTls(dir.path, await makeTestPki(`${dir.path}/pki`), {
    pair: (pki) => pki.trusted,
    trust: (pki) => trustedCertificates({ caFile: undefined, systemBundles: [pki.caFile] }),
  });
  assertEquals(result.outcome, "published");
});

Deno.test("RtmpPublisher over rtmps refuses an untrusted certificate or another host's, before any RTMP byte", async () => {
  const cases: [string, TlsCase, RegExp][] = [
    ["self-signed", {
      pair: (pki) => pki.selfSigned,
      trust: (pki) => trustedCertificates({ caFile: pki.caFile }),
      // rustls names a self-signed server certificate by its CA flag (CaUsedAsEndEntity).
    }, /^TLS certificate not trusted: .*(UnknownIssuer|CaUsedAsEndEntity)/],
    ["CA not given", {
      pair: (pki) => pki.trusted,
      trust: () => trustedCertificates({ caFile: undefined }),
    }, /^TLS certificate not trusted: .*UnknownIssuer/],
    ["other host", {
      pair: (pki) => pki.otherHost,
      trust: (pki) => trustedCertificates({ caFile: pki.caFile }),
    }, /^TLS certificate not trusted: .*not valid for name "127\.0\.0\.1"/],
  ];
  await using dir = await tempDir();
  const pki = await makeTestPki(`${dir.path}/pki`);
  for (const [label, tlsCase, pattern] of cases) {
    const { outcome, front } = await publishOverTls(dir.path, pki, tlsCase);
    assert(outcome instanceof DestinationFailure, `${label}: ${outcome}`);
    assertEquals(outcome.kind, "tls", `${label}: ${outcome.message}`);
    assertMatch(outcome.message, pattern, label);
    assertEquals({ forwarded: front.forwarded, bytesIn: front.bytesIn }, {
      forwarded: 0,
      bytesIn: 0,
    }, `${label}: the ingest never got an RTMP byte`);
  }
});

// ---- Failure kinds ----

Deno.test("RtmpPublisher reports a key our server refuses as rejected, with the status code", async () => {
  await using relay = await startRelay();
  const error = await failureOf(
    () => RtmpPublisher.open({ url: relay.rtmpUrl(`${KEY}-unknown`), timeoutMs: 10_000 }),
    "rejected",
  );
  assertEquals(
    error.message,
    "rejected by destination: NetStream.Publish.BadName publish not authorised",
  );
});

/** Reads exactly `count` bytes from `conn`. */
async function readExactly(conn: Deno.Conn, count: number): Promise<Uint8Array> {
  const out = new Uint8Array(count);
  for (let filled = 0; filled < count;) {
    const n = await conn.read(out.subarray(filled));
    if (n === null) throw new Error(`closed after ${filled} of ${count} bytes`);
    filled += n;
  }
  return out;
}

/**
 * One connection served by our own server conversation, recording every message as it arrived on
 * the wire. With `refusal`, the publish is refused with that description (given the key), as some
 * ingests word it ("Already publishing: <key>"), or, given `hangUpOn`, the connection is closed
 * unanswered on that command (nginx-rtmp's `on_publish` and Twitch refuse a key so); otherwise
 * accepted, and served until the client hangs up.
 */
async function serveOnce(
  listener: Deno.Listener,
  refusal?: ((key: string) => string) | { hangUpOn: string },
  chunkSize = 4096,
): Promise<RtmpMessage[]> {
  using conn = await listener.accept();
  await conn.write(createServerHandshake(await readExactly(conn, 1 + HANDSHAKE_SIZE)));
  await readExactly(conn, HANDSHAKE_SIZE);
  const conversation = new ServerConversation({ app: "live", chunkSize });
  const decoder = new ChunkDecoder();
  const encoder = new ChunkEncoder();
  const buffer = new Uint8Array(64 * 1024);
  const received: RtmpMessage[] = [];
  for (let refused = false; !refused;) {
    const n = await conn.read(buffer);
    if (n === null) break;
    const replies: OutgoingMessage[] = [];
    decoder.push(buffer.subarray(0, n), (message) => {
      if (refused) return;
      received.push(message);
      if (
        typeof refusal === "object" && message.typeId === MessageType.CommandAmf0 &&
        parseCommand(message).name === refusal.hangUpOn
      ) {
        refused = true;
        return;
      }
      const step = conversation.receive(message);
      replies.push(...step.replies);
      if (step.intent?.kind !== "publishRequested") return;
      if (typeof refusal !== "function") {
        replies.push(...conversation.acceptPublish());
        return;
      }
      replies.push(...conversation.refusePublish(refusal(step.intent.key)).replies);
      refused = true;
    });
    if (replies.length > 0) await conn.write(encoder.encode(...replies));
  }
  return received;
}

/** How `open` fails against a server that hangs up on `command` instead of answering it. */
async function failureOfHangUpOn(
  command: string,
  kind: DestinationFailure["kind"],
): Promise<DestinationFailure> {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = serveOnce(listener, { hangUpOn: command });
  const port = (listener.addr as Deno.NetAddr).port;
  const error = await failureOf(
    () => RtmpPublisher.open({ url: `rtmp://127.0.0.1:${port}/live/${KEY}` }),
    kind,
  );
  await serving;
  return error;
}

Deno.test("RtmpPublisher reports a server that hangs up on publish, as nginx-rtmp and Twitch refuse a key, as rejected", async () => {
  assertEquals(
    (await failureOfHangUpOn("publish", "rejected")).message,
    "rejected by destination: the server closed the connection instead of answering publish (how nginx-rtmp and Twitch refuse a stream key: check it)",
  );
});

Deno.test("RtmpPublisher reports a server that hangs up before publish as closed", async () => {
  assertMatch(
    (await failureOfHangUpOn("connect", "closed")).message,
    /^closed by destination: .* waiting for the answer to connect$/,
  );
});

Deno.test("RtmpPublisher never repeats the key a destination quotes back", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = serveOnce(listener, (key) => `Already publishing: ${key}`);
  const port = (listener.addr as Deno.NetAddr).port;
  const error = await failureOf(
    () => RtmpPublisher.open({ url: `rtmp://127.0.0.1:${port}/live/${KEY}?token=secret-token` }),
    "rejected",
  );
  await serving;
  assertEquals(
    error.message,
    `rejected by destination: NetStream.Publish.BadName Already publishing: ${redactKey(KEY)}`,
  );
});

Deno.test("RtmpPublisher sends metadata as @setDataFrame, media as it came, then FCUnpublish and deleteStream", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = serveOnce(listener);
  const port = (listener.addr as Deno.NetAddr).port;
  const packets = (await readFlvTags(await fixture({ seconds: 2, gop: 30 }))).slice(0, 30);
  assertEquals(packets[0]?.type, TagType.Script, "the fixture starts with onMetaData");
  const publisher = await publishPackets(`rtmp://127.0.0.1:${port}/live/${KEY}`, packets);
  await publisher.close();
  const received = await serving;
  const published = received.filter((message) => message.streamId === 1);
  const setDataFrame = [0x02, 0x00, 0x0d, ...new TextEncoder().encode("@setDataFrame")];
  assertEquals(
    published.filter((m) => m.typeId !== MessageType.CommandAmf0).map((m) => ({
      type: m.typeId,
      timestamp: m.timestamp,
      payload: [...m.payload],
    })),
    packets.map((p) => ({
      type: p.type,
      timestamp: p.timestamp,
      // FFmpeg and OBS wrap data messages so; servers unwrap them.
      payload: p.type === TagType.Script ? [...setDataFrame, ...p.payload] : [...p.payload],
    })),
  );
  const commands = received.filter((m) => m.typeId === MessageType.CommandAmf0)
    .map((m) => parseCommand(m).name);
  assertEquals(commands, [
    "connect",
    "releaseStream",
    "FCPublish",
    "createStream",
    "publish",
    "FCUnpublish",
    "deleteStream",
  ]);
});

Deno.test("RtmpPublisher follows a server that sets a chunk size of 1, as FFmpeg does", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const serving = serveOnce(listener, undefined, 1);
  const port = (listener.addr as Deno.NetAddr).port;
  const packets = (await readFlvTags(await fixture({ seconds: 2, gop: 30 }))).slice(1, 20);
  const publisher = await publishPackets(`rtmp://127.0.0.1:${port}/live/${KEY}`, packets);
  await publisher.close();
  assertEquals(await publisher.ended, undefined, "a clean end");
  const received = (await serving).filter((m) => m.streamId === 1 && m.typeId !== 20);
  assertEquals(received.map((m) => [...m.payload]), packets.map((p) => [...p.payload]));
});

Deno.test("RtmpPublisher reports nothing listening as unreachable", async () => {
  const port = freePort();
  const error = await failureOf(
    () => RtmpPublisher.open({ url: `rtmp://127.0.0.1:${port}/live/${KEY}` }),
    "unreachable",
  );
  assertEquals(error.message, `destination unreachable: 127.0.0.1:${port}: connection refused`);
});

Deno.test("RtmpPublisher reports a server that accepts and never answers as timeout", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepted: Deno.Conn[] = [];
  const accepting = (async () => {
    for await (const conn of listener) accepted.push(conn);
  })().catch(() => {});
  const started = performance.now();
  let deadline: ReturnType<typeof setTimeout> | undefined;
  const error = await failureOf(
    () =>
      Promise.race([
        RtmpPublisher.open({
          url: `rtmp://127.0.0.1:${(listener.addr as Deno.NetAddr).port}/live/${KEY}`,
          timeoutMs: 1_000,
        }),
        // Without its own timeout the publisher would wait forever: fail instead of hanging.
        new Promise<never>((_, reject) =>
          deadline = setTimeout(() => reject(new Error("no timeout after 10 s")), 10_000)
        ),
      ]).finally(() => clearTimeout(deadline)),
    "timeout",
  );
  assertEquals(
    error.message,
    "destination timed out: no answer within 1 s while in the RTMP handshake",
  );
  assert(performance.now() - started < 8_000, "it gave up near its timeout");
  listener.close();
  await accepting;
  for (const conn of accepted) conn.close();
});

Deno.test("RtmpPublisher reports a server that hangs up mid-stream as closed", async () => {
  await using dir = await tempDir();
  const packets = await readFlvTags(await fixture({ seconds: 4, gop: 60 }));
  const port = freePort();
  await using sink = await startFfmpegSink(port, KEY, `${dir.path}/sink.flv`);
  await using publisher = await publishPackets(
    `rtmp://127.0.0.1:${port}/live/${KEY}`,
    packets.slice(0, 40),
  );
  sink.kill("SIGKILL");
  await sink.status;
  const error = await failureOf(async () => {
    // Writes fail once the hang-up is seen (by the reader, or by a write that hits it).
    for (let round = 0; round < 1_000; round++) {
      await publisher.write(packets.slice(40, 40 + BATCH));
      if (publisher.failure) break;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    throw publisher.failure ?? new Error("the hang-up was never noticed");
  }, "closed");
  assertMatch(error.message, /^closed by destination: /);
  assertEquals(await publisher.ended, error);
});

Deno.test("RtmpPublisher reports our server ending the publish as closed, with the status code", async () => {
  await using relay = await startRelay();
  await using publisher = await publishPackets(relay.rtmpUrl(KEY), enhancedPackets());
  relay.service.hub.end(relay.service.hub.get(KEY)!, "test ends the stream");
  const error = await publisher.ended;
  assert(error instanceof DestinationFailure, String(error));
  assertEquals(error.kind, "closed");
  assertMatch(error.message, /^closed by destination: NetStream\.Unpublish\.Success/);
});

Deno.test("RtmpPublisher stops at once when its AbortSignal fires", async () => {
  await using relay = await startRelay();
  const controller = new AbortController();
  await using publisher = await publishPackets(relay.rtmpUrl(KEY), enhancedPackets(), {
    signal: controller.signal,
  });
  controller.abort(new DOMException("destination removed", "AbortError"));
  await assertRejects(() => publisher.write(enhancedPackets()), DOMException, "removed");
  assertMatch(String(await publisher.ended), /destination removed/);
  await waitFor(() => relay.service.hub.get(KEY)?.state !== "live", "the relay to see the end");
});
