/**
 * One RTMP connection on its socket: the handshake, then bytes through the chunk decoder into the
 * command conversation (`server_conversation.ts`) and its replies back out; the timers (connect
 * timeout, pings); and the hub and authorisation calls the conversation's intents lead to. A
 * publisher feeds a `LiveStream`; a player reads one through a bounded queue.
 *
 * Any protocol error closes this connection with one log line; nothing leaks to other sessions.
 *
 * @module
 */

import type { PublishAuthorizer, PublishDecision } from "./publish_authorizer.ts";
import { splitAggregate } from "./aggregate.ts";
import type { AmfObject } from "./amf0.ts";
import { ChunkDecoder, MessageType, type OutgoingMessage, type RtmpMessage } from "./chunk.ts";
import { createServerHandshake, HANDSHAKE_SIZE } from "./handshake.ts";
import { pingRequest } from "./messages.ts";
import { MessageWriter } from "./message_writer.ts";
import { type ConversationRole, ServerConversation, type Step } from "./server_conversation.ts";
import { shutWrite } from "./shut_write.ts";
import type { MediaPacket } from "../media/flv.ts";
import type { LiveStream, StreamHub, StreamSubscriber } from "../media/live_stream.ts";
import { MediaQueue } from "../media/media_queue.ts";
import { deadline, isTimeout } from "../async.ts";
import { log, type Logger } from "../log.ts";
import { streamFields } from "../stream_id.ts";

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

export interface SessionDeps {
  hub: StreamHub;
  options: SessionOptions;
  authorize: PublishAuthorizer;
}

/**
 * One read buffer per connection, reused for every read. 64 KiB holds what a 3 Mbit/s publisher
 * sends in 170 ms; the pages of a larger one stay resident once a burst has touched them.
 */
const READ_BUFFER_SIZE = 64 * 1024;
/**
 * What a connection may send while its publish is being authorised, kept to be decoded after the
 * answer; beyond it reading pauses until the answer. Reading on is how a peer that hangs up
 * meanwhile is noticed; a publisher sends little before it is told it may publish.
 */
const READ_AHEAD_BYTES = 256 * 1024;
/** How long a closing connection may take to flush its last messages. */
const FLUSH_TIMEOUT_MS = 2_000;
/**
 * How long a player may then take to close its side, after ours: to read the end of its stream
 * still in our kernel's send queue, and exit on the end of stream it finds there.
 */
const HANG_UP_TIMEOUT_MS = 2_000;

const sessionLog = log("rtmp");

/** A read that was started while a message waited: its count, or why it failed. */
type ReadOutcome = { count: number | null } | { error: unknown };

function countOf(outcome: ReadOutcome): number | null {
  if ("error" in outcome) throw outcome.error;
  return outcome.count;
}

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

export class RtmpSession implements StreamSubscriber {
  readonly id: number;
  readonly remoteAddress: string;
  readonly connectedAt = new Date();
  readonly #conn: Deno.TcpConn;
  readonly #deps: SessionDeps;
  readonly #decoder: ChunkDecoder;
  readonly #conversation: ServerConversation;
  readonly #outbox: MediaQueue<OutgoingMessage>;
  readonly #writer: MessageWriter;
  /** Every line about this connection carries its id and its peer (`#log` adds the stream). */
  readonly #connectionLog: Logger;
  #pumpDone: Promise<void> = Promise.resolve();
  #closed = false;
  /** A refused publish was logged with its reason: the close that follows says nothing new. */
  #refusalSaid = false;
  /** The last messages are queued (`#closeAfterFlush`): the session ends once they are written. */
  #ending = false;
  /** Our side is shut (`#hangUp`): what the peer still sends is read and discarded. */
  #writeShut = false;
  #hangUpTimer: ReturnType<typeof setTimeout> | undefined;
  /** The stream published or played, once the hub gave it to this connection. */
  #stream: LiveStream | undefined;
  #bytesIn = 0;
  #lastReceivedAt = performance.now();
  #lastPingAt = performance.now();
  #handshakeTimer: ReturnType<typeof setTimeout> | undefined;
  #pingTimer: ReturnType<typeof setInterval> | undefined;
  #closeReason = "";
  /** A read started while a publish was being authorised and not consumed yet: the next read. */
  #readAhead: Promise<ReadOutcome> | undefined;
  /** What was read while a publish was being authorised, not yet decoded, oldest first. */
  readonly #heldReads: Uint8Array[] = [];

  constructor(conn: Deno.TcpConn, id: number, deps: SessionDeps) {
    this.#conn = conn;
    this.id = id;
    this.#deps = deps;
    this.remoteAddress = remoteAddressOf(conn);
    this.#connectionLog = sessionLog.with({ session: id, remote: this.remoteAddress });
    this.#decoder = new ChunkDecoder({ maxMessageSize: deps.options.maxMessageSize });
    this.#conversation = new ServerConversation(deps.options);
    this.#outbox = new MediaQueue<OutgoingMessage>(deps.options.playerQueueBytes, (stats) => {
      this.#log.warn("player too slow, dropping until the next keyframe", {
        queued_bytes: stats.queuedBytes,
        drop_episodes: stats.dropEpisodes,
      });
    });
    this.#writer = new MessageWriter(conn, this.#outbox, () => this.#conversation.mediaStreamId);
  }

  get role(): ConversationRole {
    return this.#conversation.role;
  }

  get streamKey(): string | undefined {
    return this.#stream?.key;
  }

  get encoderName(): string {
    return this.#conversation.encoder;
  }

  get bytesIn(): number {
    return this.#bytesIn;
  }

  get bytesOut(): number {
    return this.#writer.bytesOut;
  }

  get droppedPackets(): number {
    return this.#outbox.droppedPackets;
  }

  /** The logger for this connection, with the stream (redacted) once it has one. */
  get #log(): Logger {
    const stream = this.#stream;
    return stream ? this.#connectionLog.with({ ...streamFields(stream.key) }) : this.#connectionLog;
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
          this.#log.warn("closing connection: {reason}", { reason });
        }
      }
    } finally {
      await this.#shutdown();
    }
  }

  /**
   * Ends the session from outside (relay shutdown). A publisher's stream ends with it, and the
   * encoder is told first; players are told by the end of their stream. A session already saying
   * its last (a player its stream's end, a publisher let go its status) is left to its timeouts,
   * unless `now`.
   */
  close(reason: string, options: { now?: boolean } = {}): void {
    const stream = this.#stream;
    if (this.role === "publisher" && stream !== undefined && !this.#closed) {
      this.#deps.hub.end(stream, reason); // detaches us: status sent, then closed after flush
      return;
    }
    if (this.#ending && !options.now) return;
    this.#abort(reason);
  }

  #abort(reason: string): void {
    if (this.#closed) return;
    this.#closeReason ||= reason;
    if (!this.#writeShut) this.#log.info("closing connection: {reason}", { reason });
    this.#closeNow();
  }

  #closeNow(): void {
    this.#closed = true;
    clearTimeout(this.#hangUpTimer);
    this.#outbox.close();
    this.#closeSocket();
  }

  #closeSocket(): void {
    try {
      this.#conn.close();
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  }

  /**
   * Resolves true once what is queued is written, or false after `FLUSH_TIMEOUT_MS` if the peer
   * stalls.
   */
  async #flushed(): Promise<boolean> {
    try {
      await deadline(this.#pumpDone, FLUSH_TIMEOUT_MS);
      return true;
    } catch (error) {
      if (!isTimeout(error)) throw error;
      return false;
    }
  }

  async #shutdown(): Promise<void> {
    clearTimeout(this.#handshakeTimer);
    clearInterval(this.#pingTimer);
    clearTimeout(this.#hangUpTimer);
    this.#leaveStream(this.#conversation.leave(), this.#closeReason || "connection closed");
    if (!this.#closed) {
      // Let queued replies (an error status, an end of stream) reach the peer, briefly.
      this.#closed = true;
      this.#outbox.close();
      await this.#flushed();
      this.#closeSocket();
    }
    await this.#pumpDone;
    await this.#readAhead; // settles once the socket is closed; never rejects
    this.#log.debug("connection ended: {reason}", {
      reason: this.#closeReason,
      bytes_in: this.#bytesIn,
      bytes_out: this.bytesOut,
    });
  }

  /** This connection stops publishing or playing (`role` is what it did). */
  #leaveStream(role: ConversationRole, reason: string): void {
    const stream = this.#stream;
    if (stream === undefined) return;
    if (role === "publisher") {
      const bytes_in = this.#bytesIn;
      this.#log.info("publisher left: {reason}", { reason, bytes_in });
    }
    this.#stream = undefined;
    if (role === "publisher") this.#deps.hub.publisherLeft(stream, reason);
    else if (role === "player") this.#deps.hub.unsubscribe(stream, this);
  }

  /**
   * The hub took the stream from this connection (ended, or handed to a new connection for the
   * key): tell the encoder and close, without touching the stream again.
   */
  #detachPublisher(reason: string): void {
    if (this.role !== "publisher") return;
    this.#stream = undefined;
    this.#sendAll(this.#conversation.unpublished(reason));
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
    await this.#writer.writeAll(response);
    await this.#readExactly(buffer, filled, buffer.length);
  }

  async #readLoop(): Promise<void> {
    const pending: RtmpMessage[] = [];
    const collect = (message: RtmpMessage) => void pending.push(message);
    const buffer = new Uint8Array(READ_BUFFER_SIZE);
    while (!this.#closed) {
      for (const message of pending.splice(0)) {
        const waiting = this.#receive(message);
        if (waiting) await this.#readWhileWaiting(waiting, buffer);
        if (this.#closed) return;
      }
      const held = this.#heldReads.shift();
      if (held !== undefined) {
        this.#decoder.push(held, collect); // counted when it arrived
        continue;
      }
      let count: number | null;
      try {
        const ahead = this.#readAhead;
        this.#readAhead = undefined;
        count = ahead === undefined ? await this.#conn.read(buffer) : countOf(await ahead);
      } catch (error) {
        if (this.#closed || this.#writeShut) return;
        if (error instanceof Deno.errors.ConnectionReset) {
          throw new SessionClosed("connection reset by peer");
        }
        throw error;
      }
      if (count === null) return;
      if (this.#writeShut) {
        this.#bytesIn += count; // counted, but we have said our last: nothing is answered
        continue;
      }
      this.#noteReceived(count);
      this.#decoder.push(buffer.subarray(0, count), collect);
    }
  }

  /**
   * Waits for `waiting` (a publish being authorised, which can take the control plane's whole
   * timeout) while still reading, so that a peer that hangs up meanwhile closes the session now:
   * its claim is released when the answer comes, and its stream never goes live. What arrives
   * meanwhile is kept as it came (up to `READ_AHEAD_BYTES`) and decoded after the answer, as if
   * it had been read then. A read still open at the answer is left in `#readAhead`.
   */
  async #readWhileWaiting(waiting: Promise<void>, buffer: Uint8Array): Promise<void> {
    let answered = false;
    const answer = waiting.then(() => {
      answered = true;
    });
    let held = 0;
    while (!answered && !this.#closed && held < READ_AHEAD_BYTES) {
      this.#readAhead ??= this.#conn.read(buffer).then(
        (count) => ({ count }),
        (error) => ({ error }),
      );
      const outcome = await Promise.race([answer, this.#readAhead]);
      if (outcome === undefined) break; // answered: the open read is the read loop's next
      this.#readAhead = undefined;
      if (this.#closed) break;
      if ("error" in outcome || outcome.count === null) {
        this.#abort(
          "error" in outcome
            ? `connection failed while its publish was being authorised: ${
              (outcome.error as Error).message
            }`
            : "peer closed the connection while its publish was being authorised",
        );
        break;
      }
      held += outcome.count;
      this.#noteReceived(outcome.count);
      this.#heldReads.push(buffer.slice(0, outcome.count));
    }
    await answer;
  }

  #noteReceived(count: number): void {
    this.#bytesIn += count;
    this.#lastReceivedAt = performance.now();
    const ack = this.#conversation.acknowledgementFor(this.#bytesIn);
    if (ack) this.#sendAll([ack]);
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
        this.#sendAll([pingRequest(Math.floor(now) >>> 0)]);
      }
    }, tick);
  }

  // ---- The conversation ----

  /**
   * Every message from the client enters here, in order; returns a promise only when the answer
   * must wait (authorisation), and the next message is not read until it settles. An
   * Aggregate message is split here, each part fed in the same way.
   */
  #receive(message: RtmpMessage): Promise<void> | undefined {
    if (message.typeId === MessageType.Aggregate) {
      // Each part takes the path of an ordinary message of its type (audio, video or data only,
      // so none waits); a malformed aggregate throws before any part is used.
      splitAggregate(message.payload, message.timestamp, (part) => {
        void this.#receive({ ...message, ...part });
      });
      return undefined;
    }
    return this.#act(this.#conversation.receive(message));
  }

  /** Sends a step's replies, then does what its intent asks. */
  #act(step: Step): Promise<void> | undefined {
    this.#sendAll(step.replies);
    const intent = step.intent;
    switch (intent?.kind) {
      case "connected":
        clearTimeout(this.#handshakeTimer);
        break;
      case "media":
        this.#onMedia(intent.packet, intent.metadata);
        break;
      case "publishRequested":
        return this.#onPublish(intent.key);
      case "playRequested":
        this.#onPlay(intent.key);
        break;
      case "left":
        this.#leaveStream(intent.role, intent.reason);
        break;
      case "ignored":
        this.#log[intent.level](intent.message, intent.fields);
        break;
      case "close":
        // A client refused for what it asked (an unknown application, no stream name): the
        // streamer's mistake, which the operator is asked about, so it is said at warn, once: a
        // refused publish has said why already, with the key (redacted) and the reason.
        this.#log[this.#refusalSaid ? "debug" : "warn"]("closing connection: {reason}", {
          reason: intent.reason,
        });
        throw new SessionClosed(intent.reason);
      case "protocolError":
        throw intent.error;
    }
    return undefined;
  }

  /** Audio, video and metadata from the publisher, one packet at a time, into the stream. */
  #onMedia(packet: MediaPacket, metadata: AmfObject | undefined): void {
    const stream = this.#stream;
    if (stream?.state !== "live") return;
    if (metadata) stream.metadata = { ...metadata };
    stream.write(packet, this.#lastReceivedAt);
  }

  /** Claim the key, authorise it, then accept: in that order, so a refused key never goes live. */
  async #onPublish(key: string): Promise<void> {
    const hub = this.#deps.hub;
    const claim = hub.claim(key);
    const publishLog = this.#connectionLog.with({ ...streamFields(key) });
    if ("refused" in claim) {
      publishLog.warn("publish refused: {reason}", { reason: claim.refused });
      this.#refusalSaid = true;
      return this.#act(this.#conversation.refusePublish(claim.refused));
    }
    let decision: PublishDecision;
    try {
      decision = await this.#deps.authorize({
        key,
        app: this.#conversation.app,
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
      hub.refuse(claim, decision.reason, decision.unanswered === true);
      publishLog.warn("publish refused: {reason}", { reason: decision.reason });
      this.#refusalSaid = true;
      return this.#act(this.#conversation.refusePublish("publish not authorised"));
    }
    this.#stream = claim.stream;
    this.#sendAll(this.#conversation.acceptPublish());
    hub.accept(claim, {
      sessionId: this.id,
      remoteAddress: this.remoteAddress,
      encoder: this.encoderName,
      startedAt: new Date(),
      forward: decision.forward ?? false,
      detach: (reason) => this.#detachPublisher(reason),
    });
    const what = claim.kind === "new"
      ? "publish accepted"
      : claim.kind === "resume"
      ? "publisher reconnected: the stream continues"
      : "stalled publisher replaced: the stream continues";
    publishLog.info(what, { encoder: this.encoderName });
  }

  #onPlay(key: string): void {
    const stream = this.#deps.hub.open(key);
    this.#stream = stream;
    this.#sendAll(this.#conversation.acceptPlay());
    stream.subscribe(this);
    this.#log.info("player started", { live: stream.state === "live" });
  }

  // ---- StreamSubscriber (player side) ----

  onPacket(packet: MediaPacket, now: number): void {
    this.#outbox.pushMedia(packet, now);
  }

  onEnd(reason: string): void {
    if (this.role !== "player") return;
    this.#stream = undefined;
    this.#sendAll(this.#conversation.playEnded(reason));
    // Players exit on the notification; hang up so that none is left waiting.
    this.#closeAfterFlush(`stream ended: ${reason}`, { hangUp: true });
  }

  /**
   * Sends what is queued, then closes; a peer that does not read gets `FLUSH_TIMEOUT_MS`. With
   * `hangUp` (a player, whose stream's end is what is queued), a flush that completed is followed
   * by `#hangUp` rather than a close.
   */
  #closeAfterFlush(reason: string, options: { hangUp?: boolean } = {}): void {
    if (this.#closed || this.#ending) return;
    this.#ending = true;
    this.#closeReason ||= reason;
    this.#outbox.close();
    void this.#flushed().then((written) =>
      written && options.hangUp ? this.#hangUp(reason) : this.#abort(reason)
    );
  }

  /**
   * Shuts our side and reads, discarding, until the peer closes its own or `HANG_UP_TIMEOUT_MS`
   * has passed; the read loop's end then closes the socket. Why: `shut_write.ts` (here, a slow
   * player's answers to pings found in the end it reads late). A publisher is not waited for:
   * what it is sent at the end is one short status, and an encoder goes on sending until it
   * notices, which only the close makes it do.
   */
  async #hangUp(reason: string): Promise<void> {
    if (this.#closed) return;
    this.#log.info("closing connection: {reason}", { reason });
    this.#writeShut = true;
    clearInterval(this.#pingTimer);
    this.#hangUpTimer = setTimeout(() => {
      this.#log.debug("peer kept the connection open {seconds} s after ours closed", {
        seconds: HANG_UP_TIMEOUT_MS / 1000,
      });
      this.#closeNow();
    }, HANG_UP_TIMEOUT_MS);
    let shut = false;
    try {
      shut = await shutWrite(this.#conn); // false: reset or closed by the peer meanwhile
    } catch (error) {
      // Closed meanwhile (the server's forced close): that failure is expected.
      if (!this.#closed) {
        this.#log.warn("could not shut our side, closing: {reason}", {
          reason: `${(error as Error).name}: ${(error as Error).message}`,
        });
      }
    }
    if (!shut && !this.#closed) this.#closeNow();
  }

  // ---- Writing ----

  #sendAll(messages: readonly OutgoingMessage[]): void {
    for (const message of messages) this.#outbox.pushControl(message);
  }

  async #pump(): Promise<void> {
    try {
      await this.#writer.run();
    } catch (error) {
      if (!this.#closed) {
        this.#closeReason ||= `write failed: ${(error as Error).message}`;
        this.#abort(this.#closeReason);
      }
    }
  }
}
