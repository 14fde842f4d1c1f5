/**
 * The server side of the RTMP command conversation, without a socket, a timer or the stream hub.
 * Fed the messages a client sends (as `ChunkDecoder` yields them), it returns the protocol replies
 * to send and what the client asked for: an intent (connected, publish or play requested, media,
 * left, close). Where the answer is the caller's to decide (may this key publish?), the caller
 * tells the conversation (`acceptPublish`, `refusePublish`, `acceptPlay`) and gets the replies for
 * that decision. `session.ts` does the socket, the timers and the hub around it.
 *
 * The order of replies is the one OBS, FFmpeg, GStreamer and librtmp expect; see
 * `/work/shared/notes/rtmp-interop.md` for why each detail is there.
 *
 * @module
 */

import { type AmfObject, type AmfValue, isAmfObject } from "./amf0.ts";
import { MessageType, type OutgoingMessage, type RtmpMessage } from "./chunk.ts";
import { AcknowledgementWindow, answerUserControl } from "./acknowledgement_window.ts";
import {
  type Command,
  command,
  commandResult,
  netStatus,
  parseCommand,
  parseData,
  setChunkSize,
  setPeerBandwidth,
  statusInfo,
  streamBegin,
  streamEof,
  windowAckSize,
} from "./messages.ts";
import { createMediaPacket, type MediaPacket, stripSetDataFrame, TagType } from "../media/flv.ts";
import { redactKey } from "../redact.ts";

export interface ServerConversationOptions {
  /** The one application served (`live`); `connect` to any other is refused. */
  app: string;
  /** The chunk size we send with, announced right after `connect`. */
  chunkSize: number;
}

/** What a connection is doing with its message stream. */
export type ConversationRole = "none" | "publisher" | "player";

/** What the client asked for, or what the caller must do, after one message. */
export type Intent =
  | { kind: "connected"; app: string; tcUrl: string; encoder: string }
  /** Answer with `acceptPublish()` or `refusePublish()` before feeding further messages. */
  | { kind: "publishRequested"; key: string; streamId: number }
  /** Answer with `acceptPlay()` before feeding further messages. */
  | { kind: "playRequested"; key: string; streamId: number }
  /**
   * Audio, video or `onMetaData` (`@setDataFrame` stripped) from the publisher; `metadata` is
   * the `onMetaData` object.
   */
  | { kind: "media"; packet: MediaPacket; metadata?: AmfObject | undefined }
  /** The client ended its publish or play (`FCUnpublish`, `deleteStream`, `closeStream`). */
  | { kind: "left"; role: "publisher" | "player"; reason: string }
  /** Something was not acted on; worth a log line at `level` (`message` is a log template). */
  | {
    kind: "ignored";
    level: "debug" | "warn";
    message: string;
    fields: Record<string, unknown>;
  }
  /** Close the connection once the replies are sent, on purpose (a refusal). */
  | { kind: "close"; reason: string }
  /** The client broke the protocol: close the connection. */
  | { kind: "protocolError"; error: SyntaxError | RangeError };

/** The outcome of one message or one decision: replies first, then the intent, if any. */
export interface Step {
  readonly replies: readonly OutgoingMessage[];
  readonly intent?: Intent;
}

/** Shared by the many steps that answer nothing (media): never pushed to. */
const NO_REPLIES: readonly OutgoingMessage[] = Object.freeze([]);

/** Window we ask peers to acknowledge, and the bandwidth we announce (both as nginx-rtmp does). */
export const WINDOW_ACK_SIZE = 5_000_000;
/** Message streams one connection may create; real clients create one. */
const MAX_MESSAGE_STREAMS = 8;
/** Largest onMetaData relayed; encoders send a few hundred bytes. */
const MAX_METADATA_BYTES = 64 * 1024;
/** Longest stream key accepted for a publish (config.toml's keys are held to it too). */
export const MAX_KEY_LENGTH = 512;

/** `live/key?x=y` and `live?x=y` both name app `live`. */
function stripQuery(name: string): string {
  const at = name.indexOf("?");
  return at === -1 ? name : name.slice(0, at);
}

interface PendingRequest {
  role: "publisher" | "player";
  key: string;
  streamId: number;
}

export class ServerConversation {
  readonly #options: ServerConversationOptions;
  #connected = false;
  #app = "";
  #encoder = "";
  #role: ConversationRole = "none";
  #pending: PendingRequest | undefined;
  #mediaStreamId = 0;
  #createdStreams = new Set<number>();
  #nextStreamId = 1;
  readonly #window = new AcknowledgementWindow();

  constructor(options: ServerConversationOptions) {
    this.#options = options;
  }

  get connected(): boolean {
    return this.#connected;
  }

  /** The application connected to, query stripped. */
  get app(): string {
    return this.#app;
  }

  /** The client's `flashVer` (OBS, FFmpeg…), at most 64 characters. */
  get encoder(): string {
    return this.#encoder;
  }

  get role(): ConversationRole {
    return this.#role;
  }

  /** Message stream id the publish or play runs on. */
  get mediaStreamId(): number {
    return this.#mediaStreamId;
  }

  /**
   * The Acknowledgement due once `totalBytes` (everything received, handshake included) has
   * crossed the window the peer asked for since the last one, if any.
   */
  acknowledgementFor(totalBytes: number): OutgoingMessage | undefined {
    return this.#window.acknowledgementFor(totalBytes);
  }

  /** One message from the client. Never throws on bad input: that is a `protocolError` intent. */
  receive(message: RtmpMessage): Step {
    try {
      return this.#receive(message);
    } catch (error) {
      if (error instanceof SyntaxError || error instanceof RangeError) {
        return { replies: NO_REPLIES, intent: { kind: "protocolError", error } };
      }
      throw error;
    }
  }

  /** The publish asked for may go ahead: the client is told it is live. */
  acceptPublish(): OutgoingMessage[] {
    const { streamId, key } = this.#takePending("publisher");
    this.#role = "publisher";
    this.#mediaStreamId = streamId;
    return [
      streamBegin(streamId),
      netStatus(
        streamId,
        "status",
        "NetStream.Publish.Start",
        `${redactKey(key)} is now published.`,
      ),
    ];
  }

  /**
   * The publish asked for is refused: the client is told, then the connection closes, because
   * librtmp clients (GStreamer rtmpsink, older OBS) hang on a refusal if the socket stays open.
   */
  refusePublish(description: string): Step {
    const { streamId } = this.#takePending("publisher");
    return refuse(
      streamId,
      "NetStream.Publish.BadName",
      description,
      `publish refused: ${description}`,
    );
  }

  /** The play asked for goes ahead (a stream with no publisher yet is waited for). */
  acceptPlay(): OutgoingMessage[] {
    const { streamId } = this.#takePending("player");
    this.#role = "player";
    this.#mediaStreamId = streamId;
    return [
      streamBegin(streamId),
      netStatus(streamId, "status", "NetStream.Play.Reset", "Playing and resetting."),
      netStatus(streamId, "status", "NetStream.Play.Start", "Started playing."),
    ];
  }

  /** The publisher lost its stream (ended, or taken over by a new connection for the key). */
  unpublished(reason: string): OutgoingMessage[] {
    if (this.#role !== "publisher") return [];
    this.#role = "none";
    return [netStatus(this.#mediaStreamId, "status", "NetStream.Unpublish.Success", reason)];
  }

  /** The stream a player watches ended: players exit on these instead of waiting forever. */
  playEnded(reason: string): OutgoingMessage[] {
    if (this.#role !== "player") return [];
    this.#role = "none";
    return [
      netStatus(this.#mediaStreamId, "status", "NetStream.Play.UnpublishNotify", reason),
      streamEof(this.#mediaStreamId),
    ];
  }

  /** The connection is going away: returns the role it had, which is now none. */
  leave(): ConversationRole {
    const role = this.#role;
    this.#role = "none";
    this.#pending = undefined;
    return role;
  }

  #receive(message: RtmpMessage): Step {
    switch (message.typeId) {
      case MessageType.Audio:
      case MessageType.Video:
        return this.#onMedia(message);
      case MessageType.DataAmf0:
      case MessageType.DataAmf3:
        return this.#onData(message);
      case MessageType.CommandAmf0:
      case MessageType.CommandAmf3:
        return this.#onCommand(parseCommand(message), message);
      case MessageType.UserControl:
        return { replies: answerUserControl(message.payload) };
      case MessageType.WindowAckSize: {
        this.#window.receiveWindowSize(message.payload);
        return { replies: NO_REPLIES };
      }
      case MessageType.SetChunkSize:
      case MessageType.Abort:
      case MessageType.Acknowledgement:
      case MessageType.SetPeerBandwidth:
        return { replies: NO_REPLIES }; // applied by the decoder, or nothing to do
      default:
        return ignored("debug", "ignoring message type {type}", { type: message.typeId });
    }
  }

  /**
   * Where every incoming audio and video message becomes media, only from a publisher. The parts
   * of an Aggregate message, split by the caller, come through here as ordinary messages.
   */
  #onMedia(message: RtmpMessage): Step {
    if (this.#role !== "publisher") return { replies: NO_REPLIES };
    const type = message.typeId === MessageType.Audio ? TagType.Audio : TagType.Video;
    let packet: MediaPacket;
    try {
      packet = createMediaPacket(type, message.timestamp, message.payload);
    } catch (error) {
      // A malformed Enhanced RTMP tag: the publisher is closed with the reason (see inspectVideo).
      if (!(error instanceof SyntaxError)) throw error;
      throw new SyntaxError(
        error.message.replace(" tag: ", ` tag at ${message.timestamp} ms: `),
      );
    }
    return { replies: NO_REPLIES, intent: { kind: "media", packet } };
  }

  #onData(message: RtmpMessage): Step {
    if (this.#role !== "publisher") return { replies: NO_REPLIES };
    let body = message.payload;
    if (message.typeId === MessageType.DataAmf3 && body[0] === 0) body = body.subarray(1);
    const stripped = stripSetDataFrame(body);
    let values: AmfValue[];
    try {
      values = parseData({ ...message, typeId: MessageType.DataAmf0, payload: stripped });
    } catch (error) {
      // A bad cue point is no reason to drop a live stream: only commands are held to the letter.
      return ignored("warn", "ignoring malformed data message: {reason}", {
        reason: (error as Error).message,
      });
    }
    if (values[0] !== "onMetaData") return { replies: NO_REPLIES }; // cue points and the like
    if (stripped.length > MAX_METADATA_BYTES) {
      // Kept in the GOP cache and replayed to every reader: a huge one is abuse, not metadata.
      return ignored("warn", "metadata of {size} bytes ignored (limit {limit})", {
        size: stripped.length,
        limit: MAX_METADATA_BYTES,
      });
    }
    const metadata = values[1];
    const packet = createMediaPacket(TagType.Script, message.timestamp, stripped);
    return {
      replies: [],
      intent: { kind: "media", packet, metadata: isAmfObject(metadata) ? metadata : undefined },
    };
  }

  #onCommand(cmd: Command, message: RtmpMessage): Step {
    switch (cmd.name) {
      case "connect":
        return this.#onConnect(cmd);
      case "createStream": {
        this.#requireConnected(cmd);
        if (this.#createdStreams.size >= MAX_MESSAGE_STREAMS) {
          throw new RangeError(`more than ${MAX_MESSAGE_STREAMS} createStream calls`);
        }
        const streamId = this.#nextStreamId++;
        this.#createdStreams.add(streamId);
        // FFmpeg needs the null before the id.
        return { replies: [commandResult(cmd.transactionId, null, streamId)] };
      }
      case "releaseStream":
      case "FCPublish":
      case "getStreamLength":
        this.#requireConnected(cmd);
        return { replies: cmd.transactionId > 0 ? [commandResult(cmd.transactionId, null)] : [] };
      case "publish":
      case "play":
        return this.#onRequest(cmd, message);
      case "FCUnpublish":
      case "deleteStream":
      case "closeStream": {
        const role = this.#role;
        if (role === "none") return { replies: NO_REPLIES };
        this.#role = "none";
        return {
          replies: NO_REPLIES,
          intent: { kind: "left", role, reason: `${role} sent ${cmd.name}` },
        };
      }
      default:
        return ignored("debug", "ignoring command {command}", { command: cmd.name });
    }
  }

  #requireConnected(cmd: Command): void {
    if (!this.#connected) throw new SyntaxError(`${cmd.name} before connect`);
  }

  #onConnect(cmd: Command): Step {
    if (this.#connected) throw new SyntaxError("second connect on one connection");
    const info: AmfObject = isAmfObject(cmd.commandObject) ? cmd.commandObject : {};
    const app = typeof info.app === "string" ? stripQuery(info.app).replace(/\/+$/, "") : "";
    // Echoed as sent: a client in AMF3 mode expects its own encoding back.
    const objectEncoding = typeof info.objectEncoding === "number" ? info.objectEncoding : 0;
    const encoder = typeof info.flashVer === "string" ? info.flashVer.slice(0, 64) : "";
    this.#encoder = encoder;
    if (app !== this.#options.app) {
      const rejected = statusInfo("error", "NetConnection.Connect.Rejected", "unknown application");
      return {
        replies: [command(0, "_error", cmd.transactionId, null, { ...rejected, objectEncoding })],
        intent: {
          kind: "close",
          reason: `connect to unknown application ${
            JSON.stringify(loggableApp(app, this.#options.app))
          } (this server's is ${JSON.stringify(this.#options.app)})`,
        },
      };
    }
    this.#app = app;
    this.#connected = true;
    const success = statusInfo("status", "NetConnection.Connect.Success", "Connection succeeded.");
    return {
      replies: [
        windowAckSize(WINDOW_ACK_SIZE),
        setPeerBandwidth(WINDOW_ACK_SIZE, 2),
        streamBegin(0),
        setChunkSize(this.#options.chunkSize),
        commandResult(cmd.transactionId, {
          fmsVer: "FMS/3,0,1,123",
          capabilities: 31,
          ...enhancedConnectProperties(info),
        }, {
          ...success,
          objectEncoding,
        }),
      ],
      intent: {
        kind: "connected",
        app,
        tcUrl: typeof info.tcUrl === "string" ? info.tcUrl : "",
        encoder,
      },
    };
  }

  /** `publish` or `play`: checked here, decided by the caller. */
  #onRequest(cmd: Command, message: RtmpMessage): Step {
    this.#requireConnected(cmd);
    const streamId = message.streamId;
    if (!this.#createdStreams.has(streamId)) {
      throw new SyntaxError(`${cmd.name} on message stream ${streamId} before createStream`);
    }
    if (this.#role !== "none" || this.#pending !== undefined) {
      const what = this.#pending?.role ?? this.#role;
      throw new SyntaxError(`${cmd.name} while already a ${what}`);
    }
    const key = stripQuery(typeof cmd.args[0] === "string" ? cmd.args[0] : "");
    if (cmd.name === "play") {
      if (key === "") {
        const reason = "play without a stream name";
        return refuse(streamId, "NetStream.Play.StreamNotFound", "no stream name", reason);
      }
      this.#pending = { role: "player", key, streamId };
      return { replies: NO_REPLIES, intent: { kind: "playRequested", key, streamId } };
    }
    if (key === "" || key.length > MAX_KEY_LENGTH) {
      const reason = "publish refused: invalid stream key";
      return refuse(streamId, "NetStream.Publish.BadName", "invalid stream key", reason);
    }
    this.#pending = { role: "publisher", key, streamId };
    return { replies: NO_REPLIES, intent: { kind: "publishRequested", key, streamId } };
  }

  #takePending(role: PendingRequest["role"]): PendingRequest {
    const pending = this.#pending;
    if (pending?.role !== role) {
      throw new TypeError(`no ${role === "publisher" ? "publish" : "play"} request to answer`);
    }
    this.#pending = undefined;
    return pending;
  }
}

/** Enhanced RTMP `FourCcInfoMask.CanForward`: we relay a codec, we neither decode nor encode it. */
const CAN_FORWARD = 0x04;
/** Enhanced RTMP `CapsExMask` bits we honour: Multitrack (0x02, relayed and selectable per
 * destination) and ModEx (0x04, parsed). Not Reconnect: we never ask a publisher to reconnect. */
const SERVER_CAPS_EX = 0x02 | 0x04;
const VIDEO_FOURCCS = new Set(["av01", "vp09", "vp08", "hvc1", "avc1", "vvc1"]);
const AUDIO_FOURCCS = new Set(["ac-3", "ec-3", "Opus", ".mp3", "fLaC", "mp4a"]);
/** More FourCCs than any client lists; a longer list is trimmed, not echoed whole. */
const MAX_FOURCCS = 64;

/**
 * What an Enhanced RTMP `connect` gets in the `_result` properties (E-RTMP v2, "Enhancing
 * NetConnection connect Command": the server states its support there, via `videoFourCcInfoMap`,
 * `capsEx` and similar). A relay forwards any codec, so every codec the client offered is accepted
 * (`fourCcList` echoed), each marked CanForward along with the "*" wildcard. A legacy `connect`
 * (none of `fourCcList`, `videoFourCcInfoMap`, `audioFourCcInfoMap`, `capsEx`) gets nothing more:
 * its reply stays byte-identical to what every legacy client has always had.
 */
export function enhancedConnectProperties(info: AmfObject): AmfObject {
  const list = Array.isArray(info.fourCcList)
    ? info.fourCcList.filter((v): v is string => typeof v === "string").slice(0, MAX_FOURCCS)
    : undefined;
  const videoMap = isAmfObject(info.videoFourCcInfoMap) ? info.videoFourCcInfoMap : undefined;
  const audioMap = isAmfObject(info.audioFourCcInfoMap) ? info.audioFourCcInfoMap : undefined;
  if (
    list === undefined && videoMap === undefined && audioMap === undefined &&
    typeof info.capsEx !== "number"
  ) {
    return {};
  }
  const forward = (keys: Iterable<string>): AmfObject => {
    const out: AmfObject = {};
    for (const key of [...keys].slice(0, MAX_FOURCCS)) out[key] = CAN_FORWARD;
    out["*"] = CAN_FORWARD;
    return out;
  };
  const offered = (known: Set<string>, map: AmfObject | undefined) =>
    new Set([
      ...(list ?? []).filter((c) => known.has(c)),
      ...Object.keys(map ?? {}).filter((c) => c !== "*"),
    ]);
  const out: AmfObject = {};
  if (list !== undefined) out.fourCcList = list;
  out.videoFourCcInfoMap = forward(offered(VIDEO_FOURCCS, videoMap));
  out.audioFourCcInfoMap = forward(offered(AUDIO_FOURCCS, audioMap));
  out.capsEx = SERVER_CAPS_EX;
  return out;
}

function ignored(
  level: "debug" | "warn",
  message: string,
  fields: Record<string, unknown>,
): Step {
  return { replies: NO_REPLIES, intent: { kind: "ignored", level, message, fields } };
}

/**
 * An application name as it may be logged. A streamer who pastes the whole URL into the server
 * field connects to `live/<key>`, and one who swaps the fields connects to `<key>`: anything but
 * this server's own application (`known`, in any case) is redacted as a key, the first segment
 * and what follows it alike. A short key is a key too.
 */
export function loggableApp(app: string, known: string): string {
  const slash = app.indexOf("/");
  const first = slash < 0 ? app : app.slice(0, slash);
  const shown = first.toLowerCase() === known.toLowerCase() ? first : redactKey(first);
  return slash < 0 ? shown : `${shown}/${redactKey(app.slice(slash + 1))}`;
}

/** An error status on the message stream, then close (`reason` is for the log). */
function refuse(streamId: number, code: string, description: string, reason: string): Step {
  return {
    replies: [netStatus(streamId, "error", code, description)],
    intent: { kind: "close", reason },
  };
}
