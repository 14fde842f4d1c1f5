/**
 * One RTMP connection: handshake, then the chunk stream, then the command state machine that OBS,
 * FFmpeg, GStreamer and librtmp clients drive (connect, createStream, publish or play, media,
 * deleteStream). A publisher feeds a `LiveStream`; a player reads one through a bounded queue.
 *
 * Any protocol error closes this connection with one log line; nothing leaks to other sessions.
 *
 * @module
 */

import { type AmfObject, type AmfValue, isAmfObject } from "./amf0.ts";
import {
  ChunkDecoder,
  ChunkEncoder,
  MessageType,
  type OutgoingMessage,
  type RtmpMessage,
} from "./chunk.ts";
import { createServerHandshake, HANDSHAKE_SIZE } from "./handshake.ts";
import {
  acknowledgement,
  type Command,
  command,
  mediaMessage,
  onStatus,
  parseCommand,
  parseData,
  parseU32,
  parseUserControl,
  setChunkSize,
  setPeerBandwidth,
  statusInfo,
  userControl,
  UserControlEvent,
  windowAckSize,
} from "./messages.ts";
import { createMediaPacket, type MediaPacket, stripSetDataFrame, TagType } from "../media/flv.ts";
import type { LiveStream, StreamHub, StreamSubscriber } from "../media/live_stream.ts";
import { MediaQueue } from "../media/media_queue.ts";
import { log } from "../log.ts";
import { redactKey } from "../redact.ts";

/** Settings a session needs, derived from `[rtmp]` and `[streaming]`. */
export interface SessionOptions {
  app: string;
  chunkSize: number;
  maxMessageSize: number;
  pingIntervalMs: number;
  pingTimeoutMs: number;
  /** Time allowed from accept to a completed `connect`. */
  handshakeTimeoutMs: number;
  /** Media bytes queued for a slow player before it drops to the next keyframe. */
  playerQueueBytes: number;
}

/** What the authorisation hook is asked. */
export interface PublishRequest {
  key: string;
  app: string;
  remoteAddress: string;
  sessionId: number;
}

/** `forward`: whether the stream goes to its destinations (carried to the hub with the publisher). */
export type PublishDecision =
  | { allowed: true; forward?: boolean }
  | { allowed: false; reason: string };

/** Decides whether a key may publish. Must settle within its own timeout. */
export type PublishAuthorizer = (request: PublishRequest) => Promise<PublishDecision>;

export interface SessionDeps {
  hub: StreamHub;
  options: SessionOptions;
  authorize: PublishAuthorizer;
}

/** Window we ask peers to acknowledge, and the bandwidth we announce (both as nginx-rtmp does). */
const WINDOW_ACK_SIZE = 5_000_000;
const READ_BUFFER_SIZE = 256 * 1024;
/** Output buffer sizes per connection: it grows to the largest batch, up to the cap. */
const SCRATCH_INITIAL_SIZE = 64 * 1024;
const SCRATCH_MAX_SIZE = 4 * 1024 * 1024;
/** Message streams one connection may create; real clients create one. */
const MAX_MESSAGE_STREAMS = 8;
/** Largest onMetaData relayed; encoders send a few hundred bytes. */
const MAX_METADATA_BYTES = 64 * 1024;
/** How long a closing connection may take to flush its last messages. */
const FLUSH_TIMEOUT_MS = 2_000;

const sessionLog = log("rtmp");

type Role = "none" | "publisher" | "player";

/** Closes a session on purpose, with a reason for the log line. */
class SessionClosed extends Error {
  override name = "SessionClosed";
}

function remoteAddressOf(conn: Deno.Conn): string {
  const address = conn.remoteAddr as Deno.NetAddr;
  return address.hostname.includes(":")
    ? `[${address.hostname}]:${address.port}`
    : `${address.hostname}:${address.port}`;
}

/** `live/key?x=y` and `live?x=y` both name app `live`. */
function stripQuery(name: string): string {
  const at = name.indexOf("?");
  return at === -1 ? name : name.slice(0, at);
}

export class RtmpSession implements StreamSubscriber {
  readonly id: number;
  readonly remoteAddress: string;
  readonly connectedAt = new Date();
  readonly #conn: Deno.TcpConn;
  readonly #deps: SessionDeps;
  readonly #decoder: ChunkDecoder;
  readonly #encoder = new ChunkEncoder();
  readonly #outbox: MediaQueue<OutgoingMessage>;
  #pumpDone: Promise<void> = Promise.resolve();
  #closed = false;
  #connected = false;
  #role: Role = "none";
  #stream: LiveStream | undefined;
  /** Message stream id the publish or play runs on. */
  #mediaStreamId = 0;
  #createdStreams = new Set<number>();
  #nextStreamId = 1;
  #encoderName = "";
  #app = "";
  #bytesIn = 0;
  #bytesOut = 0;
  #lastAckSent = 0;
  #peerWindow = 0;
  #lastReceivedAt = performance.now();
  #lastPingAt = performance.now();
  #handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  #pingTimer: ReturnType<typeof setInterval> | undefined;
  #closeReason = "";

  constructor(conn: Deno.TcpConn, id: number, deps: SessionDeps) {
    this.#conn = conn;
    this.id = id;
    this.#deps = deps;
    this.remoteAddress = remoteAddressOf(conn);
    this.#decoder = new ChunkDecoder({ maxMessageSize: deps.options.maxMessageSize });
    this.#outbox = new MediaQueue<OutgoingMessage>(deps.options.playerQueueBytes, (stats) => {
      sessionLog.warn("player too slow, dropping until the next keyframe", {
        ...this.#logContext(),
        queued_bytes: stats.queuedBytes,
        drop_episodes: stats.dropEpisodes,
      });
    });
  }

  get role(): Role {
    return this.#role;
  }

  get streamKey(): string | undefined {
    return this.#stream?.key;
  }

  get encoderName(): string {
    return this.#encoderName;
  }

  get bytesIn(): number {
    return this.#bytesIn;
  }

  get bytesOut(): number {
    return this.#bytesOut;
  }

  get droppedPackets(): number {
    return this.#outbox.droppedPackets;
  }

  #logContext(): Record<string, unknown> {
    const context: Record<string, unknown> = { session: this.id, remote: this.remoteAddress };
    if (this.#stream) context.stream = redactKey(this.#stream.key);
    return context;
  }

  /** Runs the connection to its end. Never throws. */
  async run(): Promise<void> {
    const { options } = this.#deps;
    this.#handshakeTimer = setTimeout(() => {
      this.#abort(`no connect within ${options.handshakeTimeoutMs / 1000} s`);
    }, options.handshakeTimeoutMs);
    try {
      this.#conn.setNoDelay(true);
      this.#pumpDone = this.#pump();
      await this.#handshake();
      this.#startPingTimer();
      await this.#readLoop();
      if (!this.#closed) this.#closeReason ||= "peer closed the connection";
    } catch (error) {
      if (!this.#closed) {
        const reason = error instanceof SessionClosed
          ? error.message
          : `${(error as Error).name}: ${(error as Error).message}`;
        this.#closeReason ||= reason;
        if (!(error instanceof SessionClosed)) {
          sessionLog.warn("closing connection: {reason}", { ...this.#logContext(), reason });
        }
      }
    } finally {
      await this.#shutdown();
    }
  }

  /**
   * Ends the session from outside (relay shutdown). A publisher's stream ends with it, and the
   * encoder is told first; players are told by the end of their stream.
   */
  close(reason: string): void {
    const stream = this.#stream;
    if (this.#role === "publisher" && stream !== undefined && !this.#closed) {
      this.#deps.hub.end(stream, reason); // detaches us: status sent, then closed after flush
      return;
    }
    this.#abort(reason);
  }

  #abort(reason: string): void {
    if (this.#closed) return;
    this.#closeReason ||= reason;
    sessionLog.info("closing connection: {reason}", { ...this.#logContext(), reason });
    this.#closed = true;
    this.#outbox.close();
    try {
      this.#conn.close();
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  }

  async #shutdown(): Promise<void> {
    clearTimeout(this.#handshakeTimer);
    clearInterval(this.#pingTimer);
    this.#leaveStream(this.#closeReason || "connection closed");
    if (!this.#closed) {
      // Let queued replies (an error status, an end of stream) reach the peer, briefly.
      this.#closed = true;
      this.#outbox.close();
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        this.#pumpDone,
        new Promise<void>((resolve) => timer = setTimeout(resolve, FLUSH_TIMEOUT_MS)),
      ]);
      clearTimeout(timer);
      try {
        this.#conn.close();
      } catch (error) {
        if (!(error instanceof Deno.errors.BadResource)) throw error;
      }
    }
    await this.#pumpDone;
    sessionLog.debug("connection ended: {reason}", {
      ...this.#logContext(),
      reason: this.#closeReason,
      bytes_in: this.#bytesIn,
      bytes_out: this.#bytesOut,
    });
  }

  #leaveStream(reason: string): void {
    const stream = this.#stream;
    if (stream === undefined) return;
    const role = this.#role;
    this.#role = "none";
    this.#stream = undefined;
    if (role === "publisher") {
      sessionLog.info("publisher left: {reason}", {
        session: this.id,
        remote: this.remoteAddress,
        stream: redactKey(stream.key),
        reason,
        bytes_in: this.#bytesIn,
      });
      this.#deps.hub.publisherLeft(stream, reason);
    } else if (role === "player") {
      this.#deps.hub.unsubscribe(stream, this);
    }
  }

  /**
   * The hub took the stream from this connection (ended, or handed to a new connection for the
   * key): tell the encoder and close, without touching the stream again.
   */
  #detachPublisher(reason: string): void {
    if (this.#role !== "publisher") return;
    this.#role = "none";
    this.#stream = undefined;
    this.#send(
      onStatus(this.#mediaStreamId, statusInfo("status", "NetStream.Unpublish.Success", reason)),
    );
    this.#closeAfterFlush(reason);
  }

  // ---- Reading ----

  async #readExactly(buffer: Uint8Array, filled: number, wanted: number): Promise<number> {
    while (filled < wanted) {
      const count = await this.#conn.read(buffer.subarray(filled));
      if (count === null) {
        throw new SessionClosed("peer closed the connection during the handshake");
      }
      this.#noteReceived(count);
      if (filled === 0 && buffer[0] !== 3) {
        throw new RangeError(`unsupported RTMP version ${buffer[0]} in C0 (only 3 is served)`);
      }
      filled += count;
    }
    return filled;
  }

  /**
   * Completes the handshake. C0+C1 and C2 are read into one buffer sized for exactly those bytes,
   * so anything the client sends after C2 stays in the socket for the chunk reader.
   */
  async #handshake(): Promise<void> {
    const buffer = new Uint8Array(1 + 2 * HANDSHAKE_SIZE);
    const filled = await this.#readExactly(buffer, 0, 1 + HANDSHAKE_SIZE);
    const response = createServerHandshake(buffer.subarray(0, 1 + HANDSHAKE_SIZE));
    await this.#writeAll(response);
    await this.#readExactly(buffer, filled, buffer.length);
  }

  async #readLoop(): Promise<void> {
    const pending: RtmpMessage[] = [];
    const collect = (message: RtmpMessage) => {
      pending.push(message);
    };
    const buffer = new Uint8Array(READ_BUFFER_SIZE);
    while (!this.#closed) {
      for (const message of pending.splice(0)) {
        const waiting = this.#handleMessage(message);
        if (waiting) await waiting;
        if (this.#closed) return;
      }
      let count: number | null;
      try {
        count = await this.#conn.read(buffer);
      } catch (error) {
        if (this.#closed) return;
        if (error instanceof Deno.errors.ConnectionReset) {
          throw new SessionClosed("connection reset by peer");
        }
        throw error;
      }
      if (count === null) return;
      this.#noteReceived(count);
      this.#decoder.push(buffer.subarray(0, count), collect);
    }
  }

  #noteReceived(count: number): void {
    this.#bytesIn += count;
    this.#lastReceivedAt = performance.now();
    if (this.#peerWindow > 0 && this.#bytesIn - this.#lastAckSent >= this.#peerWindow) {
      this.#lastAckSent = this.#bytesIn;
      this.#send(acknowledgement(this.#bytesIn));
    }
  }

  #startPingTimer(): void {
    const { pingIntervalMs, pingTimeoutMs } = this.#deps.options;
    const tick = Math.max(100, Math.min(pingIntervalMs, pingTimeoutMs / 2, 5_000));
    this.#pingTimer = setInterval(() => {
      const now = performance.now();
      if (now - this.#lastReceivedAt > pingTimeoutMs) {
        this.#abort(`ping timeout: nothing received for ${Math.round(pingTimeoutMs / 1000)} s`);
        return;
      }
      if (now - this.#lastPingAt >= pingIntervalMs) {
        this.#lastPingAt = now;
        this.#send(userControl(UserControlEvent.PingRequest, Math.floor(now) >>> 0));
      }
    }, tick);
  }

  /** Handles one message; returns a promise only when the handler must wait (authorisation). */
  #handleMessage(message: RtmpMessage): Promise<void> | undefined {
    switch (message.typeId) {
      case MessageType.Audio:
      case MessageType.Video:
        this.#onMedia(message);
        return undefined;
      case MessageType.DataAmf0:
      case MessageType.DataAmf3:
        this.#onData(message);
        return undefined;
      case MessageType.CommandAmf0:
      case MessageType.CommandAmf3:
        return this.#onCommand(parseCommand(message), message);
      case MessageType.UserControl: {
        const event = parseUserControl(message.payload);
        if (event.event === UserControlEvent.PingRequest) {
          this.#send(userControl(UserControlEvent.PingResponse, event.value));
        }
        return undefined;
      }
      case MessageType.WindowAckSize: {
        const size = parseU32(message.payload, "Window Acknowledgement Size");
        if (size === 0) throw new RangeError("Window Acknowledgement Size of 0");
        this.#peerWindow = size;
        return undefined;
      }
      case MessageType.SetChunkSize:
      case MessageType.Abort:
      case MessageType.Acknowledgement:
      case MessageType.SetPeerBandwidth:
        return undefined; // applied by the decoder, or nothing to do
      default:
        sessionLog.debug("ignoring message type {type}", {
          ...this.#logContext(),
          type: message.typeId,
        });
        return undefined;
    }
  }

  #onMedia(message: RtmpMessage): void {
    const stream = this.#stream;
    if (this.#role !== "publisher" || stream === undefined || stream.state !== "live") return;
    const type = message.typeId === MessageType.Audio ? TagType.Audio : TagType.Video;
    const packet = createMediaPacket(type, message.timestamp, message.payload);
    stream.write(packet);
  }

  #onData(message: RtmpMessage): void {
    const stream = this.#stream;
    if (this.#role !== "publisher" || stream === undefined || stream.state !== "live") return;
    let body = message.payload;
    if (message.typeId === MessageType.DataAmf3 && body[0] === 0) body = body.subarray(1);
    const stripped = stripSetDataFrame(body);
    let values: AmfValue[];
    try {
      values = parseData({ ...message, typeId: MessageType.DataAmf0, payload: stripped });
    } catch (error) {
      sessionLog.warn("ignoring malformed data message: {reason}", {
        ...this.#logContext(),
        reason: (error as Error).message,
      });
      return;
    }
    if (values[0] !== "onMetaData") return; // cue points and the like are not relayed
    if (stripped.length > MAX_METADATA_BYTES) {
      // Kept in the GOP cache and replayed to every reader: a huge one is abuse, not metadata.
      sessionLog.warn("metadata of {size} bytes ignored (limit {limit})", {
        ...this.#logContext(),
        size: stripped.length,
        limit: MAX_METADATA_BYTES,
      });
      return;
    }
    const metadata = values[1];
    if (isAmfObject(metadata)) stream.metadata = { ...metadata };
    stream.write(createMediaPacket(TagType.Script, message.timestamp, stripped));
  }

  // ---- Commands ----

  #onCommand(cmd: Command, message: RtmpMessage): Promise<void> | undefined {
    switch (cmd.name) {
      case "connect":
        this.#onConnect(cmd);
        return undefined;
      case "createStream":
        this.#requireConnected(cmd);
        if (this.#createdStreams.size >= MAX_MESSAGE_STREAMS) {
          throw new RangeError(`more than ${MAX_MESSAGE_STREAMS} createStream calls`);
        }
        {
          const streamId = this.#nextStreamId++;
          this.#createdStreams.add(streamId);
          this.#send(command(0, "_result", cmd.transactionId, null, streamId));
        }
        return undefined;
      case "releaseStream":
      case "FCPublish":
      case "getStreamLength":
        this.#requireConnected(cmd);
        if (cmd.transactionId > 0) {
          this.#send(command(0, "_result", cmd.transactionId, null));
        }
        return undefined;
      case "publish":
        return this.#onPublish(cmd, message);
      case "play":
        this.#onPlay(cmd, message);
        return undefined;
      case "FCUnpublish":
      case "deleteStream":
      case "closeStream":
        if (this.#role !== "none") this.#leaveStream(`${this.#role} sent ${cmd.name}`);
        return undefined;
      default:
        sessionLog.debug("ignoring command {command}", {
          ...this.#logContext(),
          command: cmd.name,
        });
        return undefined;
    }
  }

  #requireConnected(cmd: Command): void {
    if (!this.#connected) throw new SyntaxError(`${cmd.name} before connect`);
  }

  #onConnect(cmd: Command): void {
    if (this.#connected) throw new SyntaxError("second connect on one connection");
    const info: AmfObject = isAmfObject(cmd.commandObject) ? cmd.commandObject : {};
    const app = typeof info.app === "string" ? stripQuery(info.app).replace(/\/+$/, "") : "";
    const objectEncoding = typeof info.objectEncoding === "number" ? info.objectEncoding : 0;
    this.#encoderName = typeof info.flashVer === "string" ? info.flashVer.slice(0, 64) : "";
    clearTimeout(this.#handshakeTimer);
    if (app !== this.#deps.options.app) {
      this.#send(
        command(
          0,
          "_error",
          cmd.transactionId,
          null,
          {
            ...statusInfo("error", "NetConnection.Connect.Rejected", `unknown application`),
            objectEncoding,
          },
        ),
      );
      throw new SessionClosed(`connect to unknown application ${JSON.stringify(app.slice(0, 64))}`);
    }
    this.#app = app;
    this.#connected = true;
    this.#send(windowAckSize(WINDOW_ACK_SIZE));
    this.#send(setPeerBandwidth(WINDOW_ACK_SIZE, 2));
    this.#send(userControl(UserControlEvent.StreamBegin, 0));
    this.#send(setChunkSize(this.#deps.options.chunkSize));
    this.#send(
      command(0, "_result", cmd.transactionId, { fmsVer: "FMS/3,0,1,123", capabilities: 31 }, {
        ...statusInfo("status", "NetConnection.Connect.Success", "Connection succeeded."),
        objectEncoding,
      }),
    );
  }

  #mediaStreamFor(cmd: Command, message: RtmpMessage): number {
    this.#requireConnected(cmd);
    if (!this.#createdStreams.has(message.streamId)) {
      throw new SyntaxError(
        `${cmd.name} on message stream ${message.streamId} before createStream`,
      );
    }
    if (this.#role !== "none") {
      throw new SyntaxError(`${cmd.name} while already a ${this.#role}`);
    }
    return message.streamId;
  }

  async #onPublish(cmd: Command, message: RtmpMessage): Promise<void> {
    const streamId = this.#mediaStreamFor(cmd, message);
    const name = typeof cmd.args[0] === "string" ? cmd.args[0] : "";
    const key = stripQuery(name);
    if (key === "" || key.length > 512) {
      this.#refusePublish(streamId, "NetStream.Publish.BadName", "invalid stream key");
      return;
    }
    const hub = this.#deps.hub;
    const claim = hub.claim(key);
    const context = { ...this.#logContext(), stream: redactKey(key) };
    if ("refused" in claim) {
      sessionLog.warn("publish refused: {reason}", { ...context, reason: claim.refused });
      this.#refusePublish(streamId, "NetStream.Publish.BadName", claim.refused);
      return;
    }
    let decision: PublishDecision;
    try {
      decision = await this.#deps.authorize({
        key,
        app: this.#app,
        remoteAddress: this.remoteAddress,
        sessionId: this.id,
      });
    } catch (error) {
      decision = { allowed: false, reason: `authorisation failed: ${(error as Error).message}` };
    }
    if (this.#closed) {
      hub.release(claim);
      return;
    }
    if (!decision.allowed) {
      hub.refuse(claim, decision.reason);
      sessionLog.warn("publish refused: {reason}", { ...context, reason: decision.reason });
      this.#refusePublish(streamId, "NetStream.Publish.BadName", "publish not authorised");
      return;
    }
    this.#role = "publisher";
    this.#stream = claim.stream;
    this.#mediaStreamId = streamId;
    this.#send(userControl(UserControlEvent.StreamBegin, streamId));
    this.#send(
      onStatus(
        streamId,
        statusInfo("status", "NetStream.Publish.Start", `${redactKey(key)} is now published.`),
      ),
    );
    hub.accept(claim, {
      sessionId: this.id,
      remoteAddress: this.remoteAddress,
      encoder: this.#encoderName,
      startedAt: new Date(),
      forward: decision.forward ?? false,
      detach: (reason) => this.#detachPublisher(reason),
    });
    const what = claim.kind === "new"
      ? "publish accepted"
      : claim.kind === "resume"
      ? "publisher reconnected: the stream continues"
      : "stalled publisher replaced: the stream continues";
    sessionLog.info(what, { ...context, encoder: this.#encoderName });
  }

  /** Tells the client no, then closes: librtmp clients hang on a refusal if the socket stays open. */
  #refusePublish(streamId: number, code: string, description: string): void {
    this.#send(onStatus(streamId, statusInfo("error", code, description)));
    throw new SessionClosed(`publish refused: ${description}`);
  }

  #onPlay(cmd: Command, message: RtmpMessage): void {
    const streamId = this.#mediaStreamFor(cmd, message);
    const name = typeof cmd.args[0] === "string" ? cmd.args[0] : "";
    const key = stripQuery(name);
    if (key === "") {
      this.#send(
        onStatus(streamId, statusInfo("error", "NetStream.Play.StreamNotFound", "no stream name")),
      );
      throw new SessionClosed("play without a stream name");
    }
    const stream = this.#deps.hub.open(key);
    this.#role = "player";
    this.#stream = stream;
    this.#mediaStreamId = streamId;
    this.#send(userControl(UserControlEvent.StreamBegin, streamId));
    this.#send(
      onStatus(streamId, statusInfo("status", "NetStream.Play.Reset", "Playing and resetting.")),
    );
    this.#send(
      onStatus(streamId, statusInfo("status", "NetStream.Play.Start", "Started playing.")),
    );
    stream.subscribe(this);
    sessionLog.info("player started", { ...this.#logContext(), live: stream.state === "live" });
  }

  // ---- StreamSubscriber (player side) ----

  onPacket(packet: MediaPacket): void {
    this.#outbox.pushMedia(packet);
  }

  onEnd(reason: string): void {
    if (this.#role !== "player") return;
    const streamId = this.#mediaStreamId;
    this.#stream = undefined;
    this.#role = "none";
    this.#send(
      onStatus(streamId, statusInfo("status", "NetStream.Play.UnpublishNotify", reason)),
    );
    this.#send(userControl(UserControlEvent.StreamEof, streamId));
    // Players exit on the notification; close so that none is left waiting.
    this.#closeAfterFlush(`stream ended: ${reason}`);
  }

  /** Sends what is queued, then closes; a peer that does not read gets `FLUSH_TIMEOUT_MS`. */
  #closeAfterFlush(reason: string): void {
    if (this.#closed) return;
    this.#closeReason ||= reason;
    this.#outbox.close();
    let timer: ReturnType<typeof setTimeout> | undefined;
    void Promise.race([
      this.#pumpDone,
      new Promise<void>((resolve) => timer = setTimeout(resolve, FLUSH_TIMEOUT_MS)),
    ]).then(() => {
      clearTimeout(timer);
      this.#abort(reason);
    });
  }

  // ---- Writing ----

  #send(message: OutgoingMessage): void {
    this.#outbox.pushControl(message);
  }

  async #pump(): Promise<void> {
    // One output buffer for the life of the connection: a write completes before the next
    // batch is encoded, so reusing it saves an allocation (and its zeroing) per write.
    let scratch: Uint8Array = new Uint8Array(SCRATCH_INITIAL_SIZE);
    try {
      for (;;) {
        await this.#outbox.wait();
        const items = this.#outbox.takeAll();
        if (items.length === 0) {
          if (this.#outbox.closed) return;
          continue;
        }
        const messages = items.map((item) =>
          item.kind === "control" ? item.control : mediaMessage(item.packet, this.#mediaStreamId)
        );
        const bytes = this.#encoder.encodeInto(scratch, messages);
        if (bytes.buffer !== scratch.buffer && bytes.length <= SCRATCH_MAX_SIZE) {
          scratch = new Uint8Array(bytes.buffer); // grown: keep the larger one
        }
        await this.#writeAll(bytes);
      }
    } catch (error) {
      if (!this.#closed) {
        this.#closeReason ||= `write failed: ${(error as Error).message}`;
        this.#abort(this.#closeReason);
      }
    }
  }

  async #writeAll(bytes: Uint8Array): Promise<void> {
    let written = 0;
    while (written < bytes.length) {
      written += await this.#conn.write(bytes.subarray(written));
    }
    this.#bytesOut += bytes.length;
  }
}
