/**
 * The client side of the RTMP command conversation for publishing, without a socket or a timer:
 * the mirror of `server_conversation.ts`. It says what to send to publish (`start()`: `connect`),
 * and fed the messages the server sends (as `ChunkDecoder` yields them) it returns the messages to
 * send next and what happened: published, rejected (with the server's code), closed.
 *
 * The sequence is FFmpeg's (`libavformat/rtmpproto.c`), which nginx-rtmp, SRS, Twitch, YouTube and
 * Facebook all accept: `connect`; on its `_result`, Set Chunk Size, `releaseStream`, `FCPublish` and
 * `createStream` together; on the `createStream` `_result`, `publish(name, "live")`; live on
 * `NetStream.Publish.Start`. Servers differ in what else they send (`onBWDone`, `onFCPublish`,
 * `_checkbw`, `_result` or `_error` for `releaseStream`); none of that decides anything here. See
 * `/work/shared/notes/rtmp-interop.md`.
 *
 * @module
 */

import { type AmfObject, type AmfValue, isAmfObject } from "./amf0.ts";
import { MessageType, type OutgoingMessage, type RtmpMessage } from "./chunk.ts";
import { AcknowledgementWindow, answerUserControl } from "./acknowledgement_window.ts";
import { redactUrl } from "../redact.ts";
import {
  type Command,
  command,
  parseCommand,
  parseU32,
  setChunkSize,
  windowAckSize,
} from "./messages.ts";

/** Where a push URL publishes, split as FFmpeg splits it. */
export interface PublishTarget {
  protocol: "rtmp" | "rtmps";
  /** Host name or address, without IPv6 brackets. */
  hostname: string;
  /** The URL's port, or the protocol's default (1935 for rtmp, 443 for rtmps). */
  port: number;
  /** `connect`'s `app`, query string kept (`live`, `live?x=y`, `app/instance`). */
  app: string;
  /** `connect`'s `tcUrl`: `protocol://host[:port]/app`, the port only when the URL had one. */
  tcUrl: string;
  /** `publish`'s stream name (the key, query string kept). Secret. */
  streamName: string;
}

/**
 * Splits `rtmp[s]://host[:port]/app[/instance]/name[?query]` the way FFmpeg 5.1's `rtmp_open`
 * does, so the native engine reaches a destination with exactly what the FFmpeg engine sent: the
 * first path segment is the app, unless the name has more segments, in which case the app takes
 * two (`/app/instance/name`); a `?query` stays where it is written (in the app or the name); a
 * name ending in `.flv` loses it, and `.mp4`/`.f4v` gain the `mp4:` prefix.
 *
 * Throws `TypeError` for another scheme, no host, or no stream name.
 */
export function parsePublishUrl(url: string): PublishTarget {
  const match = /^(rtmps?):\/\/([^/?#]*)(.*)$/i.exec(url);
  if (!match) throw new TypeError("push URL must start with rtmp:// or rtmps://");
  const protocol = match[1]!.toLowerCase() as "rtmp" | "rtmps";
  const authority = match[2]!.slice(match[2]!.lastIndexOf("@") + 1); // user info is not sent
  const path = match[3]!;
  const hostPort = /^(?:\[([^\]]+)\]|([^:]*))(?::(\d+))?$/.exec(authority);
  const hostname = hostPort?.[1] ?? hostPort?.[2] ?? "";
  if (hostname === "") throw new TypeError("push URL has no host");
  const explicitPort = hostPort?.[3];
  const port = explicitPort === undefined
    ? (protocol === "rtmps" ? 443 : 1935)
    : Number(explicitPort);
  if (!(port > 0 && port < 65536)) throw new TypeError("push URL port is out of range");

  let app: string;
  let name: string;
  const next = path.slice(1);
  const slash = next.indexOf("/");
  if (slash === -1) {
    throw new TypeError("push URL has no stream name after the application");
  }
  const rest = next.slice(slash + 1);
  const secondSlash = rest.indexOf("/");
  const colon = rest.indexOf(":");
  if (secondSlash === -1 || (colon !== -1 && colon < secondSlash)) {
    app = next.slice(0, slash);
    name = rest;
  } else {
    app = next.slice(0, slash + 1 + secondSlash);
    name = rest.slice(secondSlash + 1);
  }
  if (!name.includes(":") && /\.(f4v|mp4)$/.test(name)) name = `mp4:${name}`;
  else if (name.endsWith(".flv")) name = name.slice(0, -4);
  if (name === "") throw new TypeError("push URL has no stream name after the application");
  const host = hostname.includes(":") ? `[${hostname}]` : hostname;
  const tcUrl = `${protocol}://${host}${explicitPort === undefined ? "" : `:${port}`}/${app}`;
  return { protocol, hostname, port, app, tcUrl, streamName: name };
}

export interface ClientConversationOptions {
  target: PublishTarget;
  /** `connect`'s `flashVer`. FFmpeg sends `FMLE/3.0 (compatible; Lavf…)` when publishing. */
  flashVer?: string;
  /**
   * Enhanced RTMP codecs announced in `connect` (`["hvc1", "av01"]`), for servers that want to
   * know before HEVC/AV1/VP9 arrive. Omitted by default, as FFmpeg 5.1 and OBS with H.264 omit it.
   */
  fourCcList?: readonly string[];
}

export const DEFAULT_FLASH_VER = "FMLE/3.0 (compatible; Neustream)";
/** What OBS sends with: big enough to cost few headers, small enough for every server. */
export const CLIENT_CHUNK_SIZE = 4096;
/**
 * The Window Acknowledgement Size we announce once connected: the destination acknowledges every
 * 256 KiB it receives. Those acknowledgements are the only sign that it is reading what the
 * kernel holds for it (a socket's send buffer can hold megabytes and takes them in bursts), which
 * tells a slow destination from a stuck one, while live and while the stream's end drains. Servers'
 * own windows (2.5 to 5 MB) would leave a slow destination silent for many seconds.
 */
export const CLIENT_ACK_WINDOW = 256 * 1024;

/** Where the conversation is. */
export type ClientState =
  | "idle"
  | "connecting"
  | "creatingStream"
  | "publishing"
  | "published"
  | "ended";

/** What happened after one message. */
export type ClientIntent =
  /** `NetStream.Publish.Start`: media may flow on `streamId`. */
  | { kind: "published"; streamId: number }
  /** The server refused `connect`, `createStream` or `publish`: a wrong key or app, usually. */
  | { kind: "rejected"; code: string; description: string }
  /** The server ended a publish that had started (unpublished us, or an error status). */
  | { kind: "closed"; code: string; description: string }
  /** Something was not acted on; worth a debug line (`message` is a log template). */
  | { kind: "ignored"; message: string; fields: Record<string, unknown> }
  /** The server broke the protocol: close the connection. */
  | { kind: "protocolError"; error: SyntaxError | RangeError };

/** The outcome of one message: messages to send first, then the intent, if any. */
export interface ClientStep {
  readonly replies: readonly OutgoingMessage[];
  readonly intent?: ClientIntent;
}

const NO_REPLIES: readonly OutgoingMessage[] = Object.freeze([]);

/** Transaction ids, as FFmpeg numbers them (it counts every invoke it sends). */
const Transaction = {
  Connect: 1,
  ReleaseStream: 2,
  FcPublish: 3,
  CreateStream: 4,
  Publish: 5,
} as const;

function statusOf(value: AmfValue): { level: string; code: string; description: string } {
  const info: AmfObject = isAmfObject(value) ? value : {};
  let description = typeof info.description === "string" ? info.description : "";
  // FMS and some CDNs refuse a connect with where to go instead (`ex.redirect`): not followed (the
  // operator's URL says where the key goes), but shown, so that the URL can be changed.
  const ex = isAmfObject(info.ex) ? info.ex : {};
  if (typeof ex.redirect === "string" && ex.redirect !== "") {
    const target = redactUrl(ex.redirect.slice(0, 512));
    description = `${description} (redirect to ${target}, not followed)`.trimStart();
  }
  return {
    level: typeof info.level === "string" ? info.level : "",
    code: typeof info.code === "string" ? info.code : "",
    description,
  };
}

export class ClientConversation {
  readonly #target: PublishTarget;
  readonly #flashVer: string;
  readonly #fourCcList: readonly string[] | undefined;
  #state: ClientState = "idle";
  #streamId = 0;
  readonly #window = new AcknowledgementWindow();
  /** The last Set Peer Bandwidth the server sent, answered with a Window Acknowledgement Size. */
  #peerBandwidth = 0;
  /** Bytes the server has acknowledged receiving (its sequence numbers, unwrapped). */
  #acknowledged = 0;
  #lastAckSequence = 0;

  constructor(options: ClientConversationOptions) {
    this.#target = options.target;
    this.#flashVer = options.flashVer ?? DEFAULT_FLASH_VER;
    this.#fourCcList = options.fourCcList;
  }

  get state(): ClientState {
    return this.#state;
  }

  /** The message stream media goes out on, once `createStream` answered. */
  get streamId(): number {
    return this.#streamId;
  }

  /**
   * Bytes the server said it received, from its Acknowledgements (it counts from the handshake):
   * grows while it reads what we send, about every `CLIENT_ACK_WINDOW` bytes.
   */
  get acknowledgedBytes(): number {
    return this.#acknowledged;
  }

  /** What starts the conversation, right after the handshake: `connect`. */
  start(): OutgoingMessage[] {
    if (this.#state !== "idle") throw new TypeError("the conversation has already started");
    this.#state = "connecting";
    const { app, tcUrl } = this.#target;
    // Field order and `type: "nonprivate"` as FFmpeg's gen_connect writes them for a publisher.
    const info: AmfObject = { app, type: "nonprivate", flashVer: this.#flashVer, tcUrl };
    if (this.#fourCcList !== undefined) info.fourCcList = [...this.#fourCcList];
    return [command(0, "connect", Transaction.Connect, info)];
  }

  /**
   * The Acknowledgement due once `totalBytes` (everything received, handshake included) has
   * crossed the window the server asked for since the last one, if any.
   */
  acknowledgementFor(totalBytes: number): OutgoingMessage | undefined {
    return this.#window.acknowledgementFor(totalBytes);
  }

  /** Ends a publish politely: what FFmpeg and OBS send before closing the socket. */
  finish(): OutgoingMessage[] {
    const wasPublished = this.#state === "published";
    this.#state = "ended";
    if (!wasPublished) return [];
    const name = this.#target.streamName;
    return [
      command(0, "FCUnpublish", 0, null, name),
      command(0, "deleteStream", 0, null, this.#streamId),
    ];
  }

  /** One message from the server. Never throws on bad input: that is a `protocolError` intent. */
  receive(message: RtmpMessage): ClientStep {
    try {
      return this.#receive(message);
    } catch (error) {
      if (error instanceof SyntaxError || error instanceof RangeError) {
        return { replies: NO_REPLIES, intent: { kind: "protocolError", error } };
      }
      throw error;
    }
  }

  #receive(message: RtmpMessage): ClientStep {
    switch (message.typeId) {
      case MessageType.CommandAmf0:
      case MessageType.CommandAmf3:
        return this.#onCommand(parseCommand(message));
      case MessageType.UserControl: // a ping is answered; Stream Begin, Stream EOF: nothing to do
        return { replies: answerUserControl(message.payload) };
      case MessageType.WindowAckSize: {
        this.#window.receiveWindowSize(message.payload);
        return { replies: NO_REPLIES };
      }
      case MessageType.SetPeerBandwidth: {
        const size = parseU32(message.payload, "Set Peer Bandwidth");
        if (size === 0) throw new RangeError("Set Peer Bandwidth of 0");
        // RTMP specification 5.4.5: a peer told a different bandwidth answers with a Window
        // Acknowledgement Size of that value. Once connected we have announced our own window
        // (CLIENT_ACK_WINDOW) and keep it: a later answer would replace it, and a slow
        // destination's acknowledgements, our sign that it still reads, would come megabytes apart.
        if (size === this.#peerBandwidth) return { replies: NO_REPLIES };
        this.#peerBandwidth = size;
        if (this.#state !== "connecting") return { replies: NO_REPLIES };
        return { replies: [windowAckSize(size)] };
      }
      case MessageType.Acknowledgement: {
        const sequence = parseU32(message.payload, "Acknowledgement");
        // A 32-bit counter that wraps; one going backwards is ignored, not counted as 4 GB.
        const delta = (sequence - this.#lastAckSequence) >>> 0;
        if (delta < 0x8000_0000) {
          this.#acknowledged += delta;
          this.#lastAckSequence = sequence;
        }
        return { replies: NO_REPLIES };
      }
      case MessageType.SetChunkSize: // applied by the decoder where it arrived
      case MessageType.Abort:
      case MessageType.Audio:
      case MessageType.Video:
      case MessageType.DataAmf0:
      case MessageType.DataAmf3:
        return { replies: NO_REPLIES };
      default:
        return ignored("ignoring message type {type} from the server", { type: message.typeId });
    }
  }

  #onCommand(cmd: Command): ClientStep {
    switch (cmd.name) {
      case "_result":
        return this.#onResult(cmd);
      case "_error":
        return this.#onError(cmd);
      case "onStatus":
        return this.#onStatus(cmd.args[0] ?? null);
      case "close":
        // FMS and some CDNs end a connection with a `close` call.
        return this.#ended("NetConnection.Connect.Closed", "the server sent close");
      default:
        // onBWDone, onFCPublish, onFCUnpublish, _checkbw, _onbwcheck: informational for a
        // publisher, and FFmpeg's answer to them changes nothing for any server we know.
        return ignored("ignoring command {command} from the server", { command: cmd.name });
    }
  }

  #onResult(cmd: Command): ClientStep {
    if (cmd.transactionId === Transaction.Connect && this.#state === "connecting") {
      const status = statusOf(cmd.args[0] ?? null);
      if (status.level === "error") return this.#rejected(status.code, status.description);
      this.#state = "creatingStream";
      const name = this.#target.streamName;
      return {
        replies: [
          setChunkSize(CLIENT_CHUNK_SIZE),
          windowAckSize(CLIENT_ACK_WINDOW),
          command(0, "releaseStream", Transaction.ReleaseStream, null, name),
          command(0, "FCPublish", Transaction.FcPublish, null, name),
          command(0, "createStream", Transaction.CreateStream, null),
        ],
      };
    }
    if (cmd.transactionId === Transaction.CreateStream && this.#state === "creatingStream") {
      // `[_result, txn, null, id]`; a few servers put the id where the command object goes.
      const id = [...cmd.args, cmd.commandObject].find((value) => typeof value === "number");
      if (typeof id !== "number" || !Number.isInteger(id) || id < 0 || id > 0xffffffff) {
        throw new SyntaxError("createStream answered without a message stream id");
      }
      this.#streamId = id;
      this.#state = "publishing";
      return {
        replies: [
          command(id, "publish", Transaction.Publish, null, this.#target.streamName, "live"),
        ],
      };
    }
    // releaseStream and FCPublish answers, or a late or unknown transaction: nothing to do.
    return ignored("ignoring _result for transaction {transaction}", {
      transaction: cmd.transactionId,
    });
  }

  #onError(cmd: Command): ClientStep {
    const status = statusOf(cmd.args[0] ?? null);
    const decisive = (cmd.transactionId === Transaction.Connect && this.#state === "connecting") ||
      (cmd.transactionId === Transaction.CreateStream && this.#state === "creatingStream") ||
      (cmd.transactionId === Transaction.Publish && this.#state === "publishing");
    if (!decisive) {
      // Some servers answer releaseStream or FCPublish with _error (no such stream yet); FFmpeg
      // and OBS carry on, and so do we.
      return ignored("ignoring _error for transaction {transaction}: {code}", {
        transaction: cmd.transactionId,
        code: status.code,
      });
    }
    const what = cmd.transactionId === Transaction.Connect
      ? "NetConnection.Connect.Rejected"
      : cmd.transactionId === Transaction.CreateStream
      ? "NetStream.CreateStream.Failed"
      : "NetStream.Publish.Rejected";
    return this.#rejected(status.code || what, status.description);
  }

  #onStatus(info: AmfValue): ClientStep {
    const status = statusOf(info);
    if (status.code === "NetStream.Publish.Start" && this.#state === "publishing") {
      this.#state = "published";
      return { replies: NO_REPLIES, intent: { kind: "published", streamId: this.#streamId } };
    }
    const ending = status.level === "error" ||
      status.code === "NetStream.Unpublish.Success" ||
      status.code === "NetConnection.Connect.Closed";
    if (ending && this.#state !== "ended") {
      return this.#state === "published"
        ? this.#ended(status.code, status.description)
        : this.#rejected(status.code, status.description);
    }
    return ignored("ignoring status {code}", { code: status.code, level: status.level });
  }

  #rejected(code: string, description: string): ClientStep {
    this.#state = "ended";
    return { replies: NO_REPLIES, intent: { kind: "rejected", code, description } };
  }

  #ended(code: string, description: string): ClientStep {
    if (this.#state !== "published") return this.#rejected(code, description);
    this.#state = "ended";
    return { replies: NO_REPLIES, intent: { kind: "closed", code, description } };
  }
}

function ignored(message: string, fields: Record<string, unknown>): ClientStep {
  return { replies: NO_REPLIES, intent: { kind: "ignored", message, fields } };
}
