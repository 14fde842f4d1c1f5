/**
 * The client side of the RTMP publish conversation, without a socket: what it sends is compared
 * byte for byte with FFmpeg's capture and field by field with tables, and server messages go in as
 * bytes through the real chunk codec, shaped as nginx-rtmp, Twitch, YouTube and Facebook send them,
 * and from our own `ServerConversation`.
 */

import { type AmfValue } from "../../src/rtmp/amf0.ts";
import {
  ChunkDecoder,
  ChunkEncoder,
  MessageType,
  type OutgoingMessage,
  type RtmpMessage,
} from "../../src/rtmp/chunk.ts";
import {
  ClientConversation,
  type ClientIntent,
  type ClientStep,
  parsePublishUrl,
  type PublishTarget,
} from "../../src/rtmp/client_conversation.ts";
import {
  command,
  commandResult,
  netStatus,
  parseCommand,
  pingRequest,
  setChunkSize,
  setPeerBandwidth,
  streamBegin,
  windowAckSize,
} from "../../src/rtmp/messages.ts";
import { ServerConversation } from "../../src/rtmp/server_conversation.ts";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { FFMPEG_CONNECT, hex } from "../helpers/bytes.ts";

const KEY = "live_123456789_abcdefghijkl";

function rowOf(message: OutgoingMessage | RtmpMessage): AmfValue[] {
  if (message.typeId === MessageType.CommandAmf0) {
    const { name, transactionId, commandObject, args } = parseCommand(message as RtmpMessage);
    return [message.streamId, name, transactionId, commandObject, ...args];
  }
  const bytes = [...message.payload].map((b) => b.toString(16).padStart(2, "0")).join("");
  return [message.streamId, `type ${message.typeId}`, bytes];
}

const rows = (messages: readonly OutgoingMessage[]) => messages.map(rowOf);

/** A server talking to one `ClientConversation` over the real chunk codec. */
class Server {
  readonly client: ClientConversation;
  readonly encoder = new ChunkEncoder();
  readonly #decoder = new ChunkDecoder();

  constructor(url = `rtmp://ingest.example.com/app/${KEY}`) {
    this.client = new ClientConversation({ target: parsePublishUrl(url) });
  }

  /** Sends messages through the chunk codec; returns the client's steps. */
  send(...messages: OutgoingMessage[]): ClientStep[] {
    const steps: ClientStep[] = [];
    this.#decoder.push(
      this.encoder.encode(...messages),
      (message) => steps.push(this.client.receive(message)),
    );
    return steps;
  }

  /** Every reply of the steps for `messages`, in order. */
  replies(...messages: OutgoingMessage[]): AmfValue[][] {
    return this.send(...messages).flatMap((step) => rows(step.replies));
  }

  intents(...messages: OutgoingMessage[]): (ClientIntent | undefined)[] {
    return this.send(...messages).map((step) => step.intent);
  }

  /** start, connect answered, createStream answered with id 1: the client has sent publish. */
  upToPublish(): void {
    this.client.start();
    this.send(commandResult(1, null, { level: "status", code: "NetConnection.Connect.Success" }));
    this.send(commandResult(4, null, 1));
  }
}

const connectSuccess = commandResult(1, { fmsVer: "FMS/3,5,7,7009", capabilities: 31 }, {
  level: "status",
  code: "NetConnection.Connect.Success",
  description: "Connection succeeded.",
  objectEncoding: 0,
});

Deno.test("parsePublishUrl() splits app, tcUrl and stream name as FFmpeg's rtmp_open does", () => {
  const cases: [string, Partial<PublishTarget>][] = [
    ["rtmp://127.0.0.1:1935/live/key1", {
      hostname: "127.0.0.1",
      port: 1935,
      app: "live",
      tcUrl: "rtmp://127.0.0.1:1935/live",
      streamName: "key1",
    }],
    // No port in the URL: the default is used, and tcUrl has none either.
    ["rtmp://a.rtmp.youtube.com/live2/abcd-efgh", {
      port: 1935,
      app: "live2",
      tcUrl: "rtmp://a.rtmp.youtube.com/live2",
      streamName: "abcd-efgh",
    }],
    // Facebook's key carries a query string: it stays in the stream name.
    ["rtmps://live-api-s.facebook.com:443/rtmp/FB-1-2?s_bl=1&s_sc=3&a=Ab", {
      protocol: "rtmps",
      port: 443,
      app: "rtmp",
      tcUrl: "rtmps://live-api-s.facebook.com:443/rtmp",
      streamName: "FB-1-2?s_bl=1&s_sc=3&a=Ab",
    }],
    ["rtmps://global-live.mux.com/app/key", {
      port: 443,
      tcUrl: "rtmps://global-live.mux.com/app",
    }],
    // Two segments before the name: app and instance.
    ["rtmp://host/app/instance/key", { app: "app/instance", streamName: "key" }],
    // More than three: the app takes two, the name the rest.
    ["rtmp://host/a/b/c/key", { app: "a/b", streamName: "c/key" }],
    // A query on the app stays on the app, and in tcUrl.
    ["rtmp://host/live?token=t1/key", {
      app: "live?token=t1",
      tcUrl: "rtmp://host/live?token=t1",
      streamName: "key",
    }],
    // A colon before the next slash: the rest is a name (mp4:… style), not an instance.
    ["rtmp://host/vod/mp4:dir/file", { app: "vod", streamName: "mp4:dir/file" }],
    ["rtmp://[::1]:1936/live/k", { hostname: "::1", port: 1936, tcUrl: "rtmp://[::1]:1936/live" }],
    ["rtmp://user:pw@host/live/k", { hostname: "host", tcUrl: "rtmp://host/live" }],
    ["rtmp://host/live/name.flv", { streamName: "name" }],
    ["rtmp://host/live/name.mp4", { streamName: "mp4:name.mp4" }],
  ];
  for (const [url, expected] of cases) {
    const target = parsePublishUrl(url);
    const picked = Object.fromEntries(
      Object.keys(expected).map((key) => [key, target[key as keyof PublishTarget]]),
    );
    assertEquals(picked, expected, url);
  }
  assertThrows(() => parsePublishUrl("http://host/live/k"), TypeError, "rtmp://");
  assertThrows(() => parsePublishUrl("rtmp:///live/k"), TypeError, "no host");
  assertThrows(() => parsePublishUrl("rtmp://host/live"), TypeError, "no stream name");
  assertThrows(() => parsePublishUrl("rtmp://host/live/"), TypeError, "no stream name");
  assertThrows(() => parsePublishUrl("rtmp://host:99999/live/k"), TypeError, "port");
});

Deno.test("ClientConversation.start() sends connect byte for byte as FFmpeg 5.1 does", () => {
  const client = new ClientConversation({
    target: parsePublishUrl("rtmp://127.0.0.1:19351/live/secret"),
    flashVer: "FMLE/3.0 (compatible; Lavf59.27.100)",
  });
  const bytes = new ChunkEncoder().encode(...client.start());
  assertEquals([...bytes], [...FFMPEG_CONNECT]);
  assertEquals(client.state, "connecting");
  assertThrows(() => client.start(), TypeError, "already started");
});

Deno.test("ClientConversation.start() writes app, type, flashVer, tcUrl in that order, fourCcList on request", () => {
  const target = parsePublishUrl("rtmps://live.example.com:443/live?x=y/key");
  const [connect] = new ClientConversation({ target }).start();
  const [streamId, name, transactionId, info] = rowOf(connect!);
  assertEquals([streamId, name, transactionId], [0, "connect", 1]);
  assertEquals(Object.entries(info as object), [
    ["app", "live?x=y"],
    ["type", "nonprivate"],
    ["flashVer", "FMLE/3.0 (compatible; Neustream)"],
    ["tcUrl", "rtmps://live.example.com:443/live?x=y"],
  ]);
  const enhanced = new ClientConversation({ target, fourCcList: ["hvc1", "av01"] }).start();
  assertEquals((rowOf(enhanced[0]!)[3] as Record<string, AmfValue>).fourCcList, ["hvc1", "av01"]);
});

Deno.test("ClientConversation.receive() goes from connect to published against nginx-rtmp's replies", () => {
  const server = new Server();
  server.client.start();
  // nginx-rtmp's answer to connect: Window Ack Size, Set Peer Bandwidth, Set Chunk Size, _result.
  assertEquals(
    server.replies(
      windowAckSize(5_000_000),
      setPeerBandwidth(5_000_000, 2),
      setChunkSize(4096),
      connectSuccess,
    ),
    [
      // Set Peer Bandwidth is answered with a Window Acknowledgement Size of that value.
      [0, "type 5", "004c4b40"],
      [0, "type 1", "00001000"],
      // Our own window: acknowledgements every 256 KiB show the destination reading.
      [0, "type 5", "00040000"],
      [0, "releaseStream", 2, null, KEY],
      [0, "FCPublish", 3, null, KEY],
      [0, "createStream", 4, null],
    ],
  );
  assertEquals(server.client.state, "creatingStream");
  assertEquals(server.replies(commandResult(2, null), commandResult(3, null)), []);
  assertEquals(server.replies(commandResult(4, null, 1)), [[1, "publish", 5, null, KEY, "live"]]);
  assertEquals(server.client.state, "publishing");
  const intents = server.intents(
    streamBegin(1),
    netStatus(1, "status", "NetStream.Publish.Start", "Start publishing"),
  );
  assertEquals(intents, [undefined, { kind: "published", streamId: 1 }]);
  assertEquals(server.client.state, "published");
  assertEquals(server.client.streamId, 1);
  // A second Set Peer Bandwidth of the same size needs no new announcement.
  assertEquals(server.replies(setPeerBandwidth(5_000_000, 2)), []);
  // Nor does one of another size once our own window is announced: answering it would replace
  // our 256 KiB window, and a slow destination's acknowledgements would come megabytes apart.
  assertEquals(server.replies(setPeerBandwidth(2_500_000, 2)), []);
  assertEquals(rows(server.client.finish()), [
    [0, "FCUnpublish", 0, null, KEY],
    [0, "deleteStream", 0, null, 1],
  ]);
  assertEquals(server.client.finish(), []);
});

Deno.test("ClientConversation.receive() ignores onBWDone, _checkbw, onFCPublish and releaseStream's _error", () => {
  const server = new Server();
  server.client.start();
  // Twitch and YouTube: onBWDone after connect; Facebook and older FMS: _checkbw calls; some
  // servers answer releaseStream with _error; YouTube sends onFCPublish before the status.
  const steps = server.send(
    connectSuccess,
    command(0, "onBWDone", 0, null, 8192),
    command(0, "_checkbw", 7, null),
    command(0, "_error", 2, null, {
      level: "error",
      code: "NetConnection.Call.Failed",
      description: "Method not found (releaseStream).",
    }),
    command(0, "onFCPublish", 0, null, { code: "NetStream.Publish.Start", description: KEY }),
    commandResult(4, null, 7),
    netStatus(7, "status", "NetStream.Publish.Start", "live is now published"),
  );
  const kinds = steps.map((step) => step.intent?.kind);
  assertEquals(kinds, [
    undefined,
    "ignored",
    "ignored",
    "ignored",
    "ignored",
    undefined,
    "published",
  ]);
  assertEquals(rows(steps[5]!.replies), [[7, "publish", 5, null, KEY, "live"]]);
});

Deno.test("ClientConversation.receive() reports a refused publish as rejected with the server's code", () => {
  const cases: [string, OutgoingMessage, { code: string; description: string }][] = [
    [
      "onStatus BadName (nginx-rtmp, our own server)",
      netStatus(1, "error", "NetStream.Publish.BadName", "Already publishing"),
      { code: "NetStream.Publish.BadName", description: "Already publishing" },
    ],
    [
      "onStatus Rejected",
      netStatus(1, "error", "NetStream.Publish.Rejected", "invalid key"),
      { code: "NetStream.Publish.Rejected", description: "invalid key" },
    ],
    [
      "_error answering publish, with a status",
      command(0, "_error", 5, null, {
        level: "error",
        code: "NetStream.Publish.Denied",
        description: "denied",
      }),
      { code: "NetStream.Publish.Denied", description: "denied" },
    ],
    [
      "_error answering publish, bare",
      command(0, "_error", 5, null),
      { code: "NetStream.Publish.Rejected", description: "" },
    ],
  ];
  for (const [label, refusal, expected] of cases) {
    const server = new Server();
    server.upToPublish();
    assertEquals(server.intents(refusal), [{ kind: "rejected", ...expected }], label);
    assertEquals(server.client.state, "ended", label);
  }
});

Deno.test("ClientConversation.receive() reports a refused connect or createStream as rejected", () => {
  const server = new Server();
  server.client.start();
  assertEquals(
    server.intents(command(0, "_error", 1, null, {
      level: "error",
      code: "NetConnection.Connect.Rejected",
      description: "unknown application",
    })),
    [{
      kind: "rejected",
      code: "NetConnection.Connect.Rejected",
      description: "unknown application",
    }],
  );
  // A CDN that sends the publisher elsewhere: where is shown (key redacted), not followed.
  const redirected = new Server();
  redirected.client.start();
  assertEquals(
    redirected.intents(command(0, "_error", 1, null, {
      level: "error",
      code: "NetConnection.Connect.Rejected",
      description: "Connection failed: Application rejected connection.",
      ex: { code: 302, redirect: "rtmp://edge2.example.com/app/live_123456789_abcdef" },
    })),
    [{
      kind: "rejected",
      code: "NetConnection.Connect.Rejected",
      description:
        "Connection failed: Application rejected connection. (redirect to rtmp://edge2.example.com/app/live…(21), not followed)",
    }],
  );
  const second = new Server();
  second.client.start();
  second.send(connectSuccess);
  assertEquals(second.intents(command(0, "_error", 4, null)), [{
    kind: "rejected",
    code: "NetStream.CreateStream.Failed",
    description: "",
  }]);
});

Deno.test("ClientConversation.receive() reports the end of a started publish as closed", () => {
  for (
    const ending of [
      netStatus(1, "status", "NetStream.Unpublish.Success", "taken over"),
      netStatus(1, "error", "NetStream.Publish.Idle", "idle"),
      command(0, "close", 0, null),
    ]
  ) {
    const server = new Server();
    server.upToPublish();
    server.send(netStatus(1, "status", "NetStream.Publish.Start", ""));
    const [intent] = server.intents(ending);
    assertEquals(intent?.kind, "closed", JSON.stringify(rowOf(ending)));
  }
});

Deno.test("ClientConversation.receive() answers pings with the same timestamp", () => {
  const server = new Server();
  server.client.start();
  const [step] = server.send(pingRequest(0x12345678));
  assertEquals(
    [...new ChunkEncoder().encode(...step!.replies)],
    [...hex("02 000000 000006 04 00000000 0007 12345678")],
  );
});

Deno.test("ClientConversation.receive() follows the server's Set Chunk Size", () => {
  const server = new Server();
  server.upToPublish();
  // A status longer than 128 bytes, chunked at 4096: only readable at the announced size.
  // (The encoder switches to 4096 where it encodes the Set Chunk Size, as a server does.)
  const description = "x".repeat(3000);
  const intents = server.intents(
    setChunkSize(4096),
    netStatus(1, "error", "NetStream.Publish.BadName", description),
  );
  assertEquals(intents, [undefined, {
    kind: "rejected",
    code: "NetStream.Publish.BadName",
    description,
  }]);
});

Deno.test("ClientConversation.acknowledgementFor() acknowledges each window of bytes received", () => {
  const server = new Server();
  server.client.start();
  assertEquals(server.client.acknowledgementFor(10_000_000), undefined, "no window: no ack");
  server.send(windowAckSize(2_500_000));
  assertEquals(server.client.acknowledgementFor(2_499_999), undefined);
  const ack = server.client.acknowledgementFor(2_500_000);
  assert(ack !== undefined, "an ack at the window");
  assertEquals(rowOf(ack), [0, "type 3", "002625a0"]);
  assertEquals(server.client.acknowledgementFor(4_000_000), undefined);
  assertEquals(rowOf(server.client.acknowledgementFor(5_000_001)!), [0, "type 3", "004c4b41"]);
});

Deno.test("ClientConversation.acknowledgedBytes counts the server's acknowledgements across the 32-bit wrap", () => {
  const server = new Server();
  server.client.start();
  const ack = (sequence: number): OutgoingMessage => ({
    chunkStreamId: 2,
    typeId: MessageType.Acknowledgement,
    timestamp: 0,
    streamId: 0,
    payload: new Uint8Array([sequence >>> 24, sequence >>> 16, sequence >>> 8, sequence]),
  });
  assertEquals(server.client.acknowledgedBytes, 0);
  assertEquals(server.replies(ack(262_144 + 3_073)), []);
  assertEquals(server.client.acknowledgedBytes, 265_217);
  for (const sequence of [0x7000_0000, 0xe000_0000, 0xffff_f000]) server.send(ack(sequence));
  assertEquals(server.client.acknowledgedBytes, 0xffff_f000);
  server.send(ack(0x0000_1000)); // wrapped: 8 KiB more
  assertEquals(server.client.acknowledgedBytes, 0xffff_f000 + 0x2000);
  server.send(ack(0x0000_0800)); // backwards: not counted
  assertEquals(server.client.acknowledgedBytes, 0xffff_f000 + 0x2000);
});

Deno.test("ClientConversation.receive() turns a malformed server message into a protocolError", () => {
  const server = new Server();
  server.client.start();
  const [step] = server.send(windowAckSize(0));
  assertEquals(step?.intent?.kind, "protocolError");
  const [bad] = server.send({
    chunkStreamId: 3,
    typeId: MessageType.CommandAmf0,
    timestamp: 0,
    streamId: 0,
    payload: hex("00 3ff0000000000000"), // a number where the command name goes
  });
  assertEquals(bad?.intent?.kind, "protocolError");
});

Deno.test("ClientConversation and ServerConversation publish to each other, and a refusal reads BadName", () => {
  for (const accept of [true, false]) {
    const client = new ClientConversation({
      target: parsePublishUrl(`rtmp://127.0.0.1/live/${KEY}`),
    });
    const server = new ServerConversation({ app: "live", chunkSize: 4096 });
    const toServer = new ChunkEncoder();
    const toClient = new ChunkEncoder();
    const serverDecoder = new ChunkDecoder();
    const clientDecoder = new ChunkDecoder();
    const intents: ClientIntent[] = [];
    let outbound = client.start();
    for (let round = 0; round < 10 && outbound.length > 0; round++) {
      const inbound: OutgoingMessage[] = [];
      serverDecoder.push(toServer.encode(...outbound), (message) => {
        const step = server.receive(message);
        inbound.push(...step.replies);
        if (step.intent?.kind === "publishRequested") {
          assertEquals(step.intent.key, KEY);
          if (accept) inbound.push(...server.acceptPublish());
          else inbound.push(...server.refusePublish("publish not authorised").replies);
        }
      });
      outbound = [];
      if (inbound.length === 0) break;
      clientDecoder.push(toClient.encode(...inbound), (message) => {
        const step = client.receive(message);
        outbound.push(...step.replies);
        if (step.intent && step.intent.kind !== "ignored") intents.push(step.intent);
      });
    }
    assertEquals(
      intents,
      accept ? [{ kind: "published", streamId: 1 }] : [{
        kind: "rejected",
        code: "NetStream.Publish.BadName",
        description: "publish not authorised",
      }],
    );
    assertEquals(server.role, accept ? "publisher" : "none");
  }
});
