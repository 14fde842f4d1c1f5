/**
 * The server side of the RTMP command conversation, without a socket: client messages go in as
 * bytes through the real chunk decoder, and what comes out (replies, intents) is compared with
 * tables of what OBS, FFmpeg, GStreamer and librtmp expect.
 */

import { type AmfValue, encodeAmf0 } from "../../src/rtmp/amf0.ts";
import {
  ChunkDecoder,
  ChunkEncoder,
  MessageType,
  type OutgoingMessage,
} from "../../src/rtmp/chunk.ts";
import { command, parseCommand, pingRequest, userControl } from "../../src/rtmp/messages.ts";
import {
  type Intent,
  loggableApp,
  ServerConversation,
  type Step,
} from "../../src/rtmp/server_conversation.ts";
import { TagType } from "../../src/media/flv.ts";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { FFMPEG_CONNECT, hex } from "../helpers/bytes.ts";

const MESSAGE_NAMES: Record<number, string> = {
  [MessageType.SetChunkSize]: "Set Chunk Size",
  [MessageType.Acknowledgement]: "Acknowledgement",
  [MessageType.UserControl]: "User Control",
  [MessageType.WindowAckSize]: "Window Ack Size",
  [MessageType.SetPeerBandwidth]: "Set Peer Bandwidth",
};

function toHex(bytes: Uint8Array): string {
  return [...bytes].map((byte) => byte.toString(16).padStart(2, "0")).join("");
}

/**
 * A reply as a table row: `[message stream, name, payload hex]` for control messages,
 * `[message stream, command name, transaction id, command object, ...arguments]` for commands.
 */
function row(reply: OutgoingMessage): AmfValue[] {
  if (reply.typeId === MessageType.CommandAmf0) {
    const { name, transactionId, commandObject, args } = parseCommand(reply);
    return [reply.streamId, name, transactionId, commandObject, ...args];
  }
  return [
    reply.streamId,
    MESSAGE_NAMES[reply.typeId] ?? `type ${reply.typeId}`,
    toHex(reply.payload),
  ];
}

const rows = (replies: readonly OutgoingMessage[]): AmfValue[][] => replies.map(row);

/** The row of an `onStatus` reply. */
function statusRow(streamId: number, level: string, code: string, description: string): AmfValue[] {
  return [streamId, "onStatus", 0, null, { level, code, description }];
}

/** One error status on the message stream, then a close: how every refusal goes. */
function assertRefusal(step: Step, status: AmfValue[], reason: string): void {
  assertEquals(rows(step.replies), [status]);
  assertEquals(step.intent, { kind: "close", reason });
}

/** A client talking to one `ServerConversation` over the real chunk codec. */
class Client {
  readonly conversation = new ServerConversation({ app: "live", chunkSize: 4096 });
  readonly #encoder = new ChunkEncoder();
  readonly #decoder = new ChunkDecoder();

  /** Feeds raw chunk-stream bytes; returns one step per message they complete. */
  bytes(data: Uint8Array): Step[] {
    const steps: Step[] = [];
    this.#decoder.push(data, (message) => steps.push(this.conversation.receive(message)));
    return steps;
  }

  /** Sends one message through the chunk encoder and decoder; returns its step. */
  send(message: OutgoingMessage): Step {
    const steps = this.bytes(this.#encoder.encode(message));
    assertEquals(steps.length, 1, "one message in, one step out");
    return steps[0]!;
  }

  call(streamId: number, name: string, transactionId: number, ...args: AmfValue[]): Step {
    return this.send(command(streamId, name, transactionId, null, ...args));
  }

  connect(app = "live"): Step {
    return this.send(command(0, "connect", 1, { app, tcUrl: `rtmp://localhost/${app}` }));
  }

  /** connect + createStream; returns the message stream id. */
  ready(): number {
    this.connect();
    return this.call(0, "createStream", 2).replies.map(row)[0]![4] as number;
  }
}

function raw(
  typeId: number,
  streamId: number,
  payload: Uint8Array,
  timestamp = 0,
): OutgoingMessage {
  return {
    chunkStreamId: typeId === MessageType.Video ? 6 : 5,
    typeId,
    timestamp,
    streamId,
    payload,
  };
}

function expectIntent<K extends Intent["kind"]>(step: Step, kind: K): Extract<Intent, { kind: K }> {
  assertEquals(step.intent?.kind, kind, `intent of ${JSON.stringify(step.intent)}`);
  return step.intent as Extract<Intent, { kind: K }>;
}

const CONNECT_RESULT = [
  0,
  "_result",
  1,
  { fmsVer: "FMS/3,0,1,123", capabilities: 31 },
  {
    level: "status",
    code: "NetConnection.Connect.Success",
    description: "Connection succeeded.",
    objectEncoding: 0,
  },
];

Deno.test("ServerConversation.receive() answers FFmpeg's connect bytes in the order clients expect", () => {
  const client = new Client();
  const steps = client.bytes(FFMPEG_CONNECT);
  assertEquals(steps.length, 1);
  assertEquals(rows(steps[0]!.replies), [
    [0, "Window Ack Size", "004c4b40"],
    [0, "Set Peer Bandwidth", "004c4b4002"],
    [0, "User Control", "000000000000"], // Stream Begin 0
    [0, "Set Chunk Size", "00001000"],
    CONNECT_RESULT,
  ]);
  assertEquals(steps[0]!.intent, {
    kind: "connected",
    app: "live",
    tcUrl: "rtmp://127.0.0.1:19351/live",
    encoder: "FMLE/3.0 (compatible; Lavf59.27.100)",
  });
  assert(client.conversation.connected);
  assertEquals(client.conversation.encoder, "FMLE/3.0 (compatible; Lavf59.27.100)");
});

Deno.test("ServerConversation.receive() accepts app variants with a query or a slash and echoes objectEncoding", () => {
  for (const app of ["live?token=1", "live/", "live"]) {
    const client = new Client();
    const step = client.send(command(0, "connect", 1, { app, objectEncoding: 3 }));
    assertEquals(expectIntent(step, "connected").app, "live", app);
    const result = rows(step.replies).at(-1)!;
    assertEquals((result[4] as Record<string, AmfValue>).objectEncoding, 3, app);
  }
});

Deno.test("ServerConversation.receive() answers an Enhanced RTMP connect with the codecs and capabilities it forwards", () => {
  const success = CONNECT_RESULT[4];
  const table: [string, Record<string, AmfValue>, Record<string, AmfValue>][] = [
    [
      "FFmpeg 7 (-rtmp_enhanced_codecs): fourCcList only",
      { fourCcList: ["hvc1", "av01", "vp09"] },
      {
        fourCcList: ["hvc1", "av01", "vp09"],
        videoFourCcInfoMap: { hvc1: 4, av01: 4, vp09: 4, "*": 4 },
        audioFourCcInfoMap: { "*": 4 },
        capsEx: 6,
      },
    ],
    [
      "E-RTMP v2: info maps and capsEx",
      {
        fourCcList: ["hvc1", "avc1", "Opus"],
        videoFourCcInfoMap: { hvc1: 7, av01: 1 },
        audioFourCcInfoMap: { mp4a: 7 },
        capsEx: 0x0f,
      },
      {
        fourCcList: ["hvc1", "avc1", "Opus"],
        videoFourCcInfoMap: { hvc1: 4, avc1: 4, av01: 4, "*": 4 },
        audioFourCcInfoMap: { Opus: 4, mp4a: 4, "*": 4 },
        capsEx: 6,
      },
    ],
    [
      "capsEx alone",
      { capsEx: 2 },
      { videoFourCcInfoMap: { "*": 4 }, audioFourCcInfoMap: { "*": 4 }, capsEx: 6 },
    ],
  ];
  for (const [name, offered, expected] of table) {
    const client = new Client();
    const step = client.send(command(0, "connect", 1, { app: "live", ...offered }));
    expectIntent(step, "connected");
    assertEquals(rows(step.replies).at(-1), [
      0,
      "_result",
      1,
      { fmsVer: "FMS/3,0,1,123", capabilities: 31, ...expected },
      success,
    ], name);
  }
});

Deno.test("ServerConversation.receive() refuses connect to another application with _error, then close", () => {
  const client = new Client();
  const step = client.connect("admin");
  assertEquals(rows(step.replies), [[0, "_error", 1, null, {
    level: "error",
    code: "NetConnection.Connect.Rejected",
    description: "unknown application",
    objectEncoding: 0,
  }]]);
  assertEquals(step.intent, {
    kind: "close",
    reason: `connect to unknown application "a…(5)" (this server's is "live")`,
  });
  assert(!client.conversation.connected);
});

Deno.test("loggableApp() shows the server's application and redacts anything else as a key", () => {
  const table: [string, string][] = [
    ["live", "live"],
    ["LIVE", "LIVE"],
    ["admin", "a…(5)"],
    ["", "(empty)"],
    ["live/abcdefghijklmnop", "live/abcd…(16)"],
    ["live/", "live/(empty)"],
    ["live_123456789_abcdefghij", "live…(25)"],
    ["live_123456789_abcdefghij/x", "live…(25)/…(1)"],
    // Key and server swapped in OBS, with a short key: the key is the application.
    ["k1", "…(2)"],
    ["abc123secret", "abc1…(12)"],
    ["sk_9f8e7d6c/live", "sk_…(11)/l…(4)"],
  ];
  for (const [app, expected] of table) assertEquals(loggableApp(app, "live"), expected, app);
});

Deno.test("ServerConversation.receive() answers createStream with [_result, txn, null, id] and echoes transaction ids", () => {
  const client = new Client();
  client.connect();
  assertEquals(rows(client.call(0, "releaseStream", 2, "key").replies), [[0, "_result", 2, null]]);
  assertEquals(rows(client.call(0, "FCPublish", 3, "key").replies), [[0, "_result", 3, null]]);
  assertEquals(rows(client.call(0, "FCPublish", 0, "key").replies), [], "transaction 0: no reply");
  assertEquals(rows(client.call(0, "createStream", 4).replies), [[0, "_result", 4, null, 1]]);
  assertEquals(rows(client.call(0, "createStream", 5).replies), [[0, "_result", 5, null, 2]]);
  for (let txn = 6; txn < 12; txn++) client.call(0, "createStream", txn);
  const error = expectIntent(client.call(0, "createStream", 12), "protocolError").error;
  assert(error instanceof RangeError && /more than 8 createStream/.test(error.message));
});

Deno.test("ServerConversation.acceptPublish() follows publishRequested with Stream Begin and Publish.Start", () => {
  const client = new Client();
  const streamId = client.ready();
  const step = client.call(streamId, "publish", 5, "conv-key-0001?token=x", "live");
  assertEquals(step.replies, [], "nothing is said until the caller decides");
  assertEquals(step.intent, { kind: "publishRequested", key: "conv-key-0001", streamId });
  assertEquals(client.conversation.role, "none");
  assertEquals(rows(client.conversation.acceptPublish()), [
    [0, "User Control", "000000000001"], // Stream Begin 1, on the control stream
    statusRow(streamId, "status", "NetStream.Publish.Start", "conv…(13) is now published."),
  ]);
  assertEquals(client.conversation.role, "publisher");
  assertEquals(client.conversation.mediaStreamId, streamId);

  const video = client.send(raw(MessageType.Video, streamId, hex("17 01 000000 aa"), 40));
  const packet = expectIntent(video, "media").packet;
  assertEquals([packet.type, packet.timestamp, packet.keyframe], [TagType.Video, 40, true]);
  const audio = client.send(raw(MessageType.Audio, streamId, hex("af 01 bb"), 41));
  assertEquals(expectIntent(audio, "media").packet.type, TagType.Audio);
});

Deno.test("ServerConversation.refusePublish() answers BadName, then close", () => {
  const client = new Client();
  const streamId = client.ready();
  expectIntent(client.call(streamId, "publish", 5, "conv-key-0001", "live"), "publishRequested");
  const step = client.conversation.refusePublish("publish not authorised");
  assertRefusal(
    step,
    statusRow(streamId, "error", "NetStream.Publish.BadName", "publish not authorised"),
    "publish refused: publish not authorised",
  );
  assertEquals(client.conversation.role, "none");
  assertThrows(() => client.conversation.acceptPublish(), TypeError, "no publish request");
});

Deno.test("ServerConversation.receive() refuses an empty or overlong stream key without asking the caller", () => {
  for (const key of ["", "?token=1", "k".repeat(513)]) {
    const client = new Client();
    const streamId = client.ready();
    const step = client.call(streamId, "publish", 5, key, "live");
    assertRefusal(
      step,
      statusRow(streamId, "error", "NetStream.Publish.BadName", "invalid stream key"),
      "publish refused: invalid stream key",
    );
  }
});

Deno.test("ServerConversation.acceptPlay() follows playRequested with Stream Begin, Play.Reset and Play.Start", () => {
  const client = new Client();
  const streamId = client.ready();
  assertEquals(rows(client.call(0, "getStreamLength", 3, "conv-key-0001").replies), [
    [0, "_result", 3, null],
  ]);
  const step = client.call(streamId, "play", 4, "conv-key-0001", -2000);
  assertEquals(step.replies, []);
  assertEquals(step.intent, { kind: "playRequested", key: "conv-key-0001", streamId });
  assertEquals(rows(client.conversation.acceptPlay()), [
    [0, "User Control", "000000000001"], // Stream Begin 1, on the control stream
    statusRow(streamId, "status", "NetStream.Play.Reset", "Playing and resetting."),
    statusRow(streamId, "status", "NetStream.Play.Start", "Started playing."),
  ]);
  assertEquals(client.conversation.role, "player");
  // A player's media is not taken as a publish.
  assertEquals(
    client.send(raw(MessageType.Video, streamId, hex("17 00 000000"))).intent,
    undefined,
  );
  // The stream ends: players are told, then get Stream EOF, so that they exit.
  assertEquals(rows(client.conversation.playEnded("publisher left")), [
    statusRow(streamId, "status", "NetStream.Play.UnpublishNotify", "publisher left"),
    [0, "User Control", "000100000001"], // Stream EOF 1
  ]);
  assertEquals(client.conversation.role, "none");
  assertEquals(client.conversation.playEnded("again"), [], "told once");
});

Deno.test("ServerConversation.receive() refuses play without a stream name with StreamNotFound, then close", () => {
  const client = new Client();
  const streamId = client.ready();
  const step = client.call(streamId, "play", 4, "");
  assertRefusal(
    step,
    statusRow(streamId, "error", "NetStream.Play.StreamNotFound", "no stream name"),
    "play without a stream name",
  );
});

Deno.test("ServerConversation.receive() turns FCUnpublish, deleteStream and closeStream into left", () => {
  for (const name of ["FCUnpublish", "deleteStream", "closeStream"]) {
    const client = new Client();
    const streamId = client.ready();
    client.call(streamId, "publish", 5, "conv-key-0001", "live");
    client.conversation.acceptPublish();
    const step = client.call(0, name, 6, name === "deleteStream" ? streamId : "conv-key-0001");
    assertEquals(step.replies, [], name);
    assertEquals(step.intent, {
      kind: "left",
      role: "publisher",
      reason: `publisher sent ${name}`,
    });
    assertEquals(client.conversation.role, "none", name);
    // What follows is not media of any stream, and a second stop says nothing more.
    assertEquals(
      client.send(raw(MessageType.Video, streamId, hex("17 00 000000"))).intent,
      undefined,
    );
    assertEquals(client.call(0, "deleteStream", 7, streamId).intent, undefined);
  }
});

Deno.test("ServerConversation.unpublished() tells a publisher whose stream was taken away, once", () => {
  const client = new Client();
  const streamId = client.ready();
  client.call(streamId, "publish", 5, "conv-key-0001", "live");
  client.conversation.acceptPublish();
  assertEquals(rows(client.conversation.unpublished("taken over")), [
    statusRow(streamId, "status", "NetStream.Unpublish.Success", "taken over"),
  ]);
  assertEquals(client.conversation.unpublished("again"), []);
  assertEquals(client.send(raw(MessageType.Audio, streamId, hex("af 01"))).intent, undefined);
});

Deno.test("ServerConversation.receive() reports out-of-order commands as protocol errors", () => {
  const cases: { name: string; act: (client: Client) => Step; error: RegExp }[] = [
    {
      name: "createStream before connect",
      act: (c) => c.call(0, "createStream", 2),
      error: /createStream before connect/,
    },
    {
      name: "second connect",
      act: (c) => (c.connect(), c.connect()),
      error: /second connect on one connection/,
    },
    {
      name: "publish before createStream",
      act: (c) => (c.connect(), c.call(1, "publish", 3, "conv-key-0001", "live")),
      error: /publish on message stream 1 before createStream/,
    },
    {
      name: "publish on a message stream never created",
      act: (c) => c.call(c.ready() + 1, "publish", 3, "conv-key-0001", "live"),
      error: /publish on message stream 2 before createStream/,
    },
    {
      name: "publish while already publishing",
      act: (c) => {
        const id = c.ready();
        c.call(id, "publish", 3, "conv-key-0001", "live");
        c.conversation.acceptPublish();
        return c.call(id, "publish", 4, "conv-key-0002", "live");
      },
      error: /publish while already a publisher/,
    },
    {
      name: "play while a publish awaits its answer",
      act: (c) => {
        const id = c.ready();
        c.call(id, "publish", 3, "conv-key-0001", "live");
        return c.call(id, "play", 4, "conv-key-0001");
      },
      error: /play while already a publisher/,
    },
    {
      // Passed on, it would be cached and replayed to every reader, and break a destination
      // that takes one track of it.
      name: "a malformed Enhanced RTMP tag from the publisher",
      act: (c) => {
        const id = c.ready();
        c.call(id, "publish", 3, "conv-key-0001", "live");
        c.conversation.acceptPublish();
        return c.send(raw(MessageType.Video, id, hex("96 10 68766331 00 000040 aa"), 3200));
      },
      error: /^malformed Enhanced RTMP video tag at 3200 ms: .*truncated in track 0/,
    },
    {
      name: "command name that is not a string",
      act: (c) => c.send(raw(MessageType.CommandAmf0, 0, encodeAmf0(7, 1))),
      error: /command name is not a string/,
    },
    {
      name: "Window Acknowledgement Size of 0",
      act: (c) =>
        c.send({ ...raw(MessageType.WindowAckSize, 0, hex("00000000")), chunkStreamId: 2 }),
      error: /Window Acknowledgement Size of 0/,
    },
    {
      name: "short User Control message",
      act: (c) => c.send({ ...raw(MessageType.UserControl, 0, hex("0006")), chunkStreamId: 2 }),
      error: /User Control message of 2 bytes/,
    },
  ];
  for (const { name, act, error } of cases) {
    const step = act(new Client());
    const intent = expectIntent(step, "protocolError");
    assert(
      intent.error instanceof SyntaxError || intent.error instanceof RangeError,
      `${name}: ${intent.error}`,
    );
    assert(error.test(intent.error.message), `${name}: ${intent.error.message}`);
    assertEquals(step.replies, [], name);
  }
});

Deno.test("ServerConversation.receive() reads AMF3-wrapped commands and data like AMF0 ones", () => {
  const amf3 = (typeId: number, streamId: number, body: Uint8Array): OutgoingMessage => ({
    chunkStreamId: 3,
    typeId,
    timestamp: 0,
    streamId,
    payload: new Uint8Array([0, ...body]),
  });
  const client = new Client();
  const connect = client.send(
    amf3(MessageType.CommandAmf3, 0, encodeAmf0("connect", 1, { app: "live" })),
  );
  assertEquals(rows(connect.replies).at(-1), CONNECT_RESULT);
  const created = client.send(
    amf3(MessageType.CommandAmf3, 0, encodeAmf0("createStream", 2, null)),
  );
  assertEquals(rows(created.replies), [[0, "_result", 2, null, 1]]);
  const publish = client.send(
    amf3(MessageType.CommandAmf3, 1, encodeAmf0("publish", 3, null, "conv-key-0001", "live")),
  );
  assertEquals(publish.intent, { kind: "publishRequested", key: "conv-key-0001", streamId: 1 });
  client.conversation.acceptPublish();
  const metadata = client.send(
    amf3(MessageType.DataAmf3, 1, encodeAmf0("@setDataFrame", "onMetaData", { width: 64 })),
  );
  const media = expectIntent(metadata, "media");
  assertEquals(media.metadata, { width: 64 });
  assertEquals(media.packet.type, TagType.Script);
  assertEquals(
    media.packet.payload,
    encodeAmf0("onMetaData", { width: 64 }),
    "@setDataFrame stripped",
  );
});

Deno.test("ServerConversation.receive() relays onMetaData only, and only what is small and well formed", () => {
  const client = new Client();
  const streamId = client.ready();
  const data = (body: Uint8Array) => client.send(raw(MessageType.DataAmf0, streamId, body));
  assertEquals(
    data(encodeAmf0("onMetaData", { width: 64 })).intent,
    undefined,
    "not yet publishing",
  );
  client.call(streamId, "publish", 5, "conv-key-0001", "live");
  client.conversation.acceptPublish();
  assertEquals(expectIntent(data(encodeAmf0("onMetaData", { width: 64 })), "media").metadata, {
    width: 64,
  });
  assertEquals(data(encodeAmf0("onCuePoint", { name: "x" })).intent, undefined);
  const malformed = expectIntent(data(hex("02 0010 6f6e")), "ignored");
  assertEquals([malformed.level, malformed.message], [
    "warn",
    "ignoring malformed data message: {reason}",
  ]);
  const huge = expectIntent(data(encodeAmf0("onMetaData", { pad: "x".repeat(70_000) })), "ignored");
  assertEquals(huge.level, "warn");
  assertEquals(huge.fields, { size: 70_027, limit: 65_536 });
});

Deno.test("ServerConversation.receive() answers ping requests with the same value", () => {
  const client = new Client();
  const ping = client.send({ ...pingRequest(0x01020304), chunkStreamId: 2 });
  assertEquals(rows(ping.replies), [[0, "User Control", "000701020304"]]);
  assertEquals(ping.intent, undefined);
  const other = client.send({ ...userControl(3, 1), chunkStreamId: 2 }); // Set Buffer Length
  assertEquals(other.replies, []);
});

Deno.test("ServerConversation.acknowledgementFor() acknowledges each time the peer's window fills", () => {
  const client = new Client();
  const conversation = client.conversation;
  assertEquals(conversation.acknowledgementFor(10_000_000), undefined, "no window asked for");
  client.send({ ...raw(MessageType.WindowAckSize, 0, hex("00001000")), chunkStreamId: 2 });
  assertEquals(conversation.acknowledgementFor(4095), undefined);
  assertEquals(row(conversation.acknowledgementFor(4096)!), [0, "Acknowledgement", "00001000"]);
  assertEquals(conversation.acknowledgementFor(8191), undefined, "the window counts from the last");
  assertEquals(row(conversation.acknowledgementFor(9000)!), [0, "Acknowledgement", "00002328"]);
});

Deno.test("ServerConversation.receive() passes over unknown commands and message types with a debug note", () => {
  const client = new Client();
  client.connect();
  const unknownCommand = expectIntent(client.call(0, "onBWDone", 0), "ignored");
  assertEquals(unknownCommand.level, "debug");
  assertEquals(unknownCommand.fields, { command: "onBWDone" });
  const shared = expectIntent(
    client.send(raw(MessageType.SharedObjectAmf0, 0, hex("00"))),
    "ignored",
  );
  assertEquals(shared.fields, { type: MessageType.SharedObjectAmf0 });
  for (const typeId of [MessageType.SetPeerBandwidth, MessageType.Acknowledgement]) {
    const step = client.send({ ...raw(typeId, 0, hex("0000100002")), chunkStreamId: 2 });
    assertEquals([step.replies, step.intent], [[], undefined]);
  }
});
