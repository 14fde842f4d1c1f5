/**
 * The native RTMP/RTMPS publisher: pushes a stream to one destination from inside the relay, with
 * no process. The socket around `ClientConversation`: TCP (or TLS with the host name checked and
 * the system roots plus `tls_ca_file` trusted), the plain handshake (what OBS's librtmp sends to
 * Twitch, YouTube and Facebook, and what nginx-rtmp, SRS and FFmpeg accept), the publish sequence,
 * then media written as it is given, FLV tag bodies untouched (Enhanced RTMP included).
 *
 * Every failure is a `DestinationFailure` of one kind (rejected, unreachable, timeout, tls,
 * closed, internal) whose message never holds the stream key.
 *
 * @module
 */

import {
  ChunkDecoder,
  MessageType,
  type OutgoingMessage,
  type RtmpMessage,
} from "../rtmp/chunk.ts";
import {
  ClientConversation,
  type ClientIntent,
  type ClientStep,
  parsePublishUrl,
  type PublishTarget,
} from "../rtmp/client_conversation.ts";
import { HANDSHAKE_SIZE, RTMP_VERSION } from "../rtmp/handshake.ts";
import { ChunkStream, mediaMessage } from "../rtmp/messages.ts";
import { MessageWriter } from "../rtmp/message_writer.ts";
import { shutWrite } from "../rtmp/shut_write.ts";
import { type MediaPacket, TagType } from "../media/flv.ts";
import { DestinationFailure, type DestinationFailureKind } from "./destination_failure.ts";
import { trustedCertificates } from "./tls_trust.ts";
import { log } from "../log.ts";
import { redactKey } from "../redact.ts";
import { settlesWithin } from "../async.ts";

export interface RtmpPublisherOptions {
  /** The push target, `rtmp_url + "/" + stream_key` (`Destination.pushUrl`). Secret. */
  url: string;
  /**
   * PEM certificates trusted for `rtmps://`, on top of Deno's own roots; `trustedCertificates()`
   * gives the system roots plus `tls_ca_file`. Read from the system bundle when omitted.
   */
  caCerts?: readonly string[];
  /**
   * Time allowed from the first TCP packet to `NetStream.Publish.Start`; once publishing, how long
   * the destination may take nothing (no byte written, none acknowledged) while a write waits, and
   * while the stream's end leaves, before it is given up as timed out (FFmpeg's `-rw_timeout`).
   */
  timeoutMs?: number;
  /** Cancels the connection (a pending `open`, `write` or `close` rejects with its reason). */
  signal?: AbortSignal;
  /** Enhanced RTMP FourCCs announced in `connect` (see `ClientConversationOptions`). */
  fourCcList?: readonly string[];
}

export const DEFAULT_PUBLISH_TIMEOUT_MS = 10_000;
/**
 * What a destination sends us is small (acknowledgements, pings, answers): a small read buffer,
 * one per destination, is enough.
 */
const READ_BUFFER_SIZE = 8 * 1024;
/** How often a waiting write and a closing connection are checked for progress. */
const PROGRESS_CHECK_MS = 1_000;

const publisherLog = log("relay", "native");

/** "@setDataFrame" as an AMF0 string: what publishers put before `onMetaData`. */
const SET_DATA_FRAME = new Uint8Array([
  0x02,
  0x00,
  0x0d,
  ...new TextEncoder().encode("@setDataFrame"),
]);

function startsWith(bytes: Uint8Array, prefix: Uint8Array): boolean {
  if (bytes.length < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (bytes[i] !== prefix[i]) return false;
  return true;
}

/**
 * A data message as publishers send it: FFmpeg and OBS wrap every data message in
 * `@setDataFrame`, which servers strip before they store or relay `onMetaData`; an already wrapped
 * one goes as it is. The only payload we copy: metadata is a few hundred bytes.
 */
function dataMessage(packet: MediaPacket, streamId: number): OutgoingMessage {
  let payload = packet.payload;
  if (!startsWith(payload, SET_DATA_FRAME)) {
    payload = new Uint8Array(SET_DATA_FRAME.length + packet.payload.length);
    payload.set(SET_DATA_FRAME);
    payload.set(packet.payload, SET_DATA_FRAME.length);
  }
  return {
    chunkStreamId: ChunkStream.Data,
    typeId: MessageType.DataAmf0,
    timestamp: packet.timestamp,
    streamId,
    payload,
  };
}

/** The push target as it may be logged: no key, no query string. */
function displayTarget(target: PublishTarget): string {
  const host = target.hostname.includes(":") ? `[${target.hostname}]` : target.hostname;
  const app = target.app.split("?")[0]!;
  return `${target.protocol}://${host}:${target.port}/${app}/${redactKey(target.streamName)}`;
}

export class RtmpPublisher implements AsyncDisposable {
  readonly target: PublishTarget;
  /** The push target with the key redacted, for logs. */
  readonly display: string;
  readonly #options: RtmpPublisherOptions;
  readonly #conversation: ClientConversation;
  /**
   * Any chunk size the destination sets, down to 1 (FFmpeg follows one too): the floor that
   * protects our ingest from tiny chunks is for strangers' input, and a destination sends little.
   */
  readonly #decoder = new ChunkDecoder({ minChunkSize: 1 });
  #conn: Deno.Conn | undefined;
  #writer: MessageWriter | undefined;
  /** Writes in order, one at a time: the encoder's header state is shared by every batch. */
  #sending: Promise<void> = Promise.resolve();
  /** Batches given to `#send` and not yet written (or failed). */
  #inFlight = 0;
  #reading: Promise<void> = Promise.resolve();
  #phase = "connecting";
  #error: Error | undefined;
  #closing = false;
  /** Our side is shut (FIN sent): what the destination still sends is read and let go. */
  #writeShut = false;
  #bytesIn = 0;
  #published: PromiseWithResolvers<void> = Promise.withResolvers();
  /** Rejects with the failure when the connection fails: ends any wait of the opening. */
  #failed: PromiseWithResolvers<never> = Promise.withResolvers();
  readonly #connectAbort = new AbortController();
  #ended: PromiseWithResolvers<Error | undefined> = Promise.withResolvers();
  /** Removes our listener from the caller's AbortSignal, which may outlive us. */
  #stopListening = () => {};
  /** See `timeoutMs`. */
  readonly #stallMs: number;
  /** `#progress()` when last seen to move, and when (`performance.now()`). */
  #lastProgress = 0;
  #lastProgressAt = 0;

  /**
   * Publishing connections, checked once a second by one timer for all of them: a destination
   * that stopped reading (no FIN, no reset) would otherwise hold a write forever. One timer, not
   * one per connection: hundreds of destinations cost one wake-up a second.
   */
  static readonly #watched = new Set<RtmpPublisher>();
  static #watchdog: ReturnType<typeof setInterval> | undefined;

  static #watch(publisher: RtmpPublisher): void {
    publisher.#lastProgress = publisher.#progress();
    publisher.#lastProgressAt = performance.now();
    RtmpPublisher.#watched.add(publisher);
    RtmpPublisher.#watchdog ??= setInterval(() => {
      const now = performance.now();
      for (const watched of RtmpPublisher.#watched) watched.#checkStall(now);
    }, PROGRESS_CHECK_MS);
  }

  static #unwatch(publisher: RtmpPublisher): void {
    if (!RtmpPublisher.#watched.delete(publisher) || RtmpPublisher.#watched.size > 0) return;
    clearInterval(RtmpPublisher.#watchdog);
    RtmpPublisher.#watchdog = undefined;
  }

  private constructor(options: RtmpPublisherOptions, target: PublishTarget) {
    this.#options = options;
    this.#stallMs = options.timeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS;
    this.target = target;
    this.display = displayTarget(target);
    this.#conversation = new ClientConversation({
      target,
      fourCcList: options.fourCcList,
    });
    // Rejections are also delivered through `ended`; never leave one unhandled.
    this.#published.promise.catch(() => {});
    this.#failed.promise.catch(() => {});
  }

  /**
   * Connects and publishes; resolves once the destination said `NetStream.Publish.Start`.
   * Rejects with a `DestinationFailure`, or with the signal's reason when aborted. Throws
   * `TypeError` for a URL that is not an RTMP push target.
   */
  static async open(options: RtmpPublisherOptions): Promise<RtmpPublisher> {
    const publisher = new RtmpPublisher(options, parsePublishUrl(options.url));
    await publisher.#open();
    return publisher;
  }

  /** Resolves when the connection is over: with why, or undefined after `close()`. */
  get ended(): Promise<Error | undefined> {
    return this.#ended.promise;
  }

  /** Why the connection failed, once it has. */
  get failure(): Error | undefined {
    return this.#error;
  }

  get bytesOut(): number {
    return this.#writer?.bytesOut ?? 0;
  }

  get bytesIn(): number {
    return this.#bytesIn;
  }

  /**
   * Bytes the destination said it received (its Acknowledgements, about every 256 KiB, counted
   * from the handshake): how far it has read what the socket took, where `bytesOut` says only
   * what the kernel took.
   */
  get bytesAcknowledged(): number {
    return this.#conversation.acknowledgedBytes;
  }

  /**
   * Grows while the destination takes what we send: written to the socket, or acknowledged. Not
   * what it sends: a destination that pings but has stopped reading is taking nothing.
   */
  #progress(): number {
    return (this.#writer?.bytesOut ?? 0) + this.#conversation.acknowledgedBytes;
  }

  /** The watchdog's look (see `#watched`): a write waiting `#stallMs` without progress fails. */
  #checkStall(now: number): void {
    const progress = this.#progress();
    if (progress !== this.#lastProgress || this.#inFlight === 0) {
      this.#lastProgress = progress;
      this.#lastProgressAt = now;
    } else if (now - this.#lastProgressAt >= this.#stallMs) {
      this.#fail(
        "timeout",
        `destination timed out: it took nothing for ${this.#stallMs / 1000} s while publishing`,
      );
    }
  }

  /**
   * Waits for `done` while the destination makes progress: true once it resolves, false if it
   * rejects or nothing moves for `#stallMs`.
   */
  async #whileProgressing(done: Promise<unknown>): Promise<boolean> {
    const outcome = done.then(() => true, () => false);
    let last = this.#progress();
    let lastAt = performance.now();
    for (;;) {
      if (await settlesWithin(outcome, PROGRESS_CHECK_MS)) return await outcome;
      const now = performance.now();
      const progress = this.#progress();
      if (progress !== last) {
        last = progress;
        lastAt = now;
      } else if (now - lastAt >= this.#stallMs) {
        return false;
      }
    }
  }

  /**
   * Sends `packets` (metadata, sequence headers, media, in the order given) on the publish
   * stream, as one write; resolves when the socket took them, which is the backpressure. Rejects
   * with the connection's failure once it has one.
   */
  write(packets: readonly MediaPacket[]): Promise<void> {
    // Not an async function: one promise fewer per batch on the hot path.
    if (this.#error) return Promise.reject(this.#error);
    if (this.#conversation.state === "ended") {
      // Closed under a write in flight (a restart, a removal): gone, not a bug.
      return Promise.reject(new DOMException("the publisher was closed", "AbortError"));
    }
    if (this.#conversation.state !== "published") {
      return Promise.reject(new TypeError("write() before the publish started"));
    }
    const streamId = this.#conversation.streamId;
    const messages: OutgoingMessage[] = new Array(packets.length);
    for (let i = 0; i < packets.length; i++) {
      const packet = packets[i]!;
      messages[i] = packet.type === TagType.Script
        ? dataMessage(packet, streamId)
        : mediaMessage(packet, streamId);
    }
    return this.#send(messages);
  }

  /**
   * Ends the publish: `FCUnpublish` and `deleteStream` after what is already written, then our
   * side of the socket shuts and what the destination still sends is read until it closes its
   * side, then the socket closes. Each wait lasts as long as the destination makes progress (see
   * `timeoutMs`): the kernel may still hold megabytes of the stream for a slow destination, and
   * closing the socket under them loses them. Never throws for a connection that had already
   * failed.
   */
  async close(): Promise<void> {
    RtmpPublisher.#unwatch(this);
    if (!this.#closing && !this.#error && this.#writer) {
      this.#closing = true;
      const goodbye = this.#conversation.finish();
      // Not said: the write failed or stalled, and nothing is left to hang up.
      const said = await this.#whileProgressing(this.#send(goodbye));
      if (said) await this.#hangUp();
    }
    this.#closing = true;
    this.#stopListening();
    this.#closeSocket();
    await this.#reading;
    await this.#sending;
    this.#ended.resolve(this.#error);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Shuts our side and reads until the destination closes its own (why: `shut_write.ts`), so that
   * its pings and acknowledgements of the stream's last bytes cannot reset that end away.
   */
  async #hangUp(): Promise<void> {
    this.#writeShut = true;
    if (!await shutWrite(this.#conn!)) return; // already reset or closed by the destination
    if (!await this.#whileProgressing(this.#reading)) {
      publisherLog.debug(
        "destination kept the connection open {seconds} s after our goodbye, taking nothing",
        { destination: this.display, seconds: this.#stallMs / 1000 },
      );
    }
  }

  // ---- Opening ----

  async #open(): Promise<void> {
    const { signal } = this.#options;
    signal?.throwIfAborted();
    const timeoutMs = this.#options.timeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS;
    const timer = setTimeout(() => {
      this.#fail(
        "timeout",
        `destination timed out: no answer within ${timeoutMs / 1000} s while ${this.#phase}`,
      );
    }, timeoutMs);
    const onAbort = () => this.#abort(signal!.reason);
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await this.#guard(this.#connect());
      this.#writer = new MessageWriter(this.#conn!);
      await this.#guard(this.#handshake());
      this.#phase = "waiting for the answer to connect";
      this.#reading = this.#readLoop();
      await this.#send(this.#conversation.start());
      await this.#published.promise;
    } catch (error) {
      this.#closeSocket();
      await this.#reading;
      this.#ended.resolve(this.#error ?? (error as Error));
      throw this.#error ?? error;
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
    }
    if (signal) {
      const onAbortLater = () => this.#abort(signal.reason);
      signal.addEventListener("abort", onAbortLater, { once: true });
      this.#stopListening = () => signal.removeEventListener("abort", onAbortLater);
    }
  }

  /**
   * Runs one opening step; once the connection has failed (timeout, abort), the failure wins
   * over whatever the step threw when its socket was closed under it.
   */
  async #guard<T>(step: Promise<T>): Promise<T> {
    try {
      const value = await step;
      if (this.#error) throw this.#error;
      return value;
    } catch (error) {
      throw this.#error ?? error;
    }
  }

  async #connect(): Promise<void> {
    const { hostname, port, protocol } = this.target;
    const where = `${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`;
    const connecting: Promise<Deno.TcpConn | Deno.TlsConn> = protocol === "rtmps"
      ? Deno.connectTls({
        hostname,
        port,
        caCerts: [...(this.#options.caCerts ?? trustedCertificates({ caFile: undefined }))],
      })
      : Deno.connect({ hostname, port, signal: this.#connectAbort.signal });
    let conn: Deno.TcpConn | Deno.TlsConn;
    try {
      // A timeout or an abort ends the wait; connectTls takes no signal, so a socket it still
      // makes afterwards is closed as soon as it exists.
      conn = await Promise.race([connecting, this.#failed.promise]);
    } catch (error) {
      connecting.then((late) => late.close(), () => {});
      throw this.#connectFailure(error as Error, where);
    }
    this.#conn = conn;
    if (protocol === "rtmps") {
      this.#phase = "negotiating TLS";
      try {
        await (conn as Deno.TlsConn).handshake();
      } catch (error) {
        if (this.#error) throw this.#error;
        const reason = (error as Error).message;
        throw this.#fail(
          "tls",
          /certificate/i.test(reason)
            ? `TLS certificate not trusted: ${reason}`
            : `TLS handshake failed: ${reason}`,
          error,
        );
      }
    } else {
      (conn as Deno.TcpConn).setNoDelay(true);
    }
  }

  #connectFailure(error: Error, where: string): Error {
    if (this.#error) return this.#error;
    if (error instanceof Deno.errors.NotCapable) {
      return this.#fail("internal", `not allowed to connect to ${where}: ${error.message}`, error);
    }
    const reason = error instanceof Deno.errors.ConnectionRefused
      ? "connection refused"
      : /lookup|resolve|name or service|no address/i.test(error.message)
      ? "host name not found"
      : error.message;
    return this.#fail("unreachable", `destination unreachable: ${where}: ${reason}`, error);
  }

  /** The plain handshake: C0+C1 (time, zero version, random), S0+S1+S2, then C2 echoing S1. */
  async #handshake(): Promise<void> {
    this.#phase = "in the RTMP handshake";
    const c0c1 = new Uint8Array(1 + HANDSHAKE_SIZE);
    c0c1[0] = RTMP_VERSION;
    crypto.getRandomValues(c0c1.subarray(9));
    new DataView(c0c1.buffer).setUint32(1, Math.floor(performance.now()) >>> 0);
    await this.#writer!.writeAll(c0c1);
    const response = new Uint8Array(READ_BUFFER_SIZE);
    let filled = 0;
    while (filled < 1 + 2 * HANDSHAKE_SIZE) {
      const count = await this.#read(response.subarray(filled));
      if (count === null) {
        throw this.#fail("closed", "closed by destination during the RTMP handshake");
      }
      if (response[0] !== RTMP_VERSION) {
        throw this.#fail(
          "internal",
          `destination answered the handshake with version ${response[0]}, not RTMP 3`,
        );
      }
      filled += count;
    }
    const s1 = response.slice(1, 1 + HANDSHAKE_SIZE);
    await this.#writer!.writeAll(s1); // C2
    const rest = response.subarray(1 + 2 * HANDSHAKE_SIZE, filled);
    if (rest.length > 0) this.#decoder.push(rest.slice(), (message) => this.#onMessage(message));
  }

  // ---- Reading ----

  async #read(buffer: Uint8Array): Promise<number | null> {
    const count = await this.#conn!.read(buffer);
    if (count !== null) this.#bytesIn += count;
    return count;
  }

  async #readLoop(): Promise<void> {
    const buffer = new Uint8Array(READ_BUFFER_SIZE);
    try {
      while (!this.#error) {
        let count: number | null;
        try {
          count = await this.#read(buffer);
        } catch (error) {
          if (this.#error || this.#closing) return;
          if (
            error instanceof Deno.errors.ConnectionReset ||
            error instanceof Deno.errors.BrokenPipe ||
            error instanceof Deno.errors.UnexpectedEof
          ) {
            this.#fail("closed", `closed by destination: connection reset ${this.#where()}`, error);
            return;
          }
          throw error;
        }
        if (count === null) {
          if (this.#closing) return;
          // Refusing a key by hanging up on `publish` is how nginx-rtmp's `on_publish` and Twitch
          // do it: at that point it says the key is wrong, not that the server went away.
          if (this.#conversation.state === "publishing") {
            this.#fail(
              "rejected",
              "rejected by destination: the server closed the connection instead of answering publish (how nginx-rtmp and Twitch refuse a stream key: check it)",
            );
          } else {
            this.#fail("closed", `closed by destination: the server hung up ${this.#where()}`);
          }
          return;
        }
        // After our goodbye nothing is answered (our side is shut); its acknowledgements still
        // say how much of the stream's end it has read.
        if (this.#writeShut) {
          this.#decoder.push(buffer.subarray(0, count), (message) => {
            if (message.typeId === MessageType.Acknowledgement) this.#conversation.receive(message);
          });
          continue;
        }
        // The decoder owns nothing it is given: it copies into messages as they complete.
        this.#decoder.push(buffer.subarray(0, count), (message) => this.#onMessage(message));
        const ack = this.#conversation.acknowledgementFor(this.#bytesIn);
        // A failed send is recorded by #fail and reported by `ended`; nothing more to do here.
        if (ack) void this.#send([ack]).catch(() => {});
      }
    } catch (error) {
      if (this.#error || this.#closing) return;
      const kind = error instanceof SyntaxError || error instanceof RangeError
        ? "protocol error from destination"
        : "reading from destination failed";
      this.#fail("internal", `${kind}: ${(error as Error).message}`, error);
    }
  }

  #where(): string {
    return this.#conversation.state === "published" ? "while publishing" : this.#phase;
  }

  #onMessage(message: RtmpMessage): void {
    if (this.#error) return;
    this.#act(this.#conversation.receive(message));
  }

  #act(step: ClientStep): void {
    // As for acknowledgements: a failed send is recorded by #fail and reported by `ended`.
    if (step.replies.length > 0) void this.#send(step.replies).catch(() => {});
    const intent: ClientIntent | undefined = step.intent;
    switch (intent?.kind) {
      case "published":
        this.#phase = "publishing";
        this.#published.resolve();
        RtmpPublisher.#watch(this);
        break;
      case "rejected":
        this.#fail(
          "rejected",
          `rejected by destination: ${intent.code} ${intent.description}`.trimEnd(),
        );
        break;
      case "closed":
        this.#fail(
          "closed",
          `closed by destination: ${intent.code} ${intent.description}`.trimEnd(),
        );
        break;
      case "protocolError":
        this.#fail("internal", `protocol error from destination: ${intent.error.message}`);
        break;
      case "ignored":
        publisherLog.debug(intent.message, { destination: this.display, ...intent.fields });
        break;
      default:
        if (this.#conversation.state === "creatingStream") {
          this.#phase = "waiting for the answer to createStream";
        } else if (this.#conversation.state === "publishing") {
          this.#phase = "waiting for the answer to publish";
        }
    }
  }

  // ---- Writing ----

  /**
   * Sends one batch behind the others; rejects with the connection's failure. With nothing in
   * flight (the usual case: a batch per packet, each written before the next arrives) the batch
   * goes out at once rather than through the chain.
   */
  #send(messages: readonly OutgoingMessage[]): Promise<void> {
    const sent = this.#inFlight === 0
      ? this.#transmit(messages)
      : this.#sending.then(() => this.#transmit(messages));
    this.#inFlight++;
    this.#sending = sent.then(this.#sent, this.#sent);
    return sent;
  }

  readonly #sent = () => {
    this.#inFlight--;
  };

  async #transmit(messages: readonly OutgoingMessage[]): Promise<void> {
    if (this.#error) throw this.#error;
    try {
      await this.#writer!.send(messages);
    } catch (error) {
      if (this.#error) throw this.#error;
      // `close()` gave up waiting for the goodbye and closed the socket under it: not a failure.
      if (this.#closing) {
        throw new DOMException(
          `the publisher was closed: ${(error as Error).message}`,
          "AbortError",
        );
      }
      const hungUp = error instanceof Deno.errors.BrokenPipe ||
        error instanceof Deno.errors.ConnectionReset;
      throw this.#fail(
        hungUp ? "closed" : "internal",
        hungUp
          ? `closed by destination: the server hung up ${this.#where()}`
          : `writing to destination failed: ${(error as Error).message}`,
        error,
      );
    }
  }

  // ---- Ending ----

  /** Records the first failure, closes the socket, and returns the failure to throw. */
  #fail(kind: DestinationFailureKind, message: string, cause?: unknown): Error {
    if (this.#error) return this.#error;
    const failure = new DestinationFailure(kind, this.#redact(message), { cause });
    this.#end(failure);
    return failure;
  }

  #abort(reason: unknown): void {
    if (this.#error) return;
    this.#end(reason instanceof Error ? reason : new DOMException(String(reason), "AbortError"));
  }

  #end(error: Error): void {
    RtmpPublisher.#unwatch(this);
    this.#error = error;
    this.#published.reject(error);
    this.#failed.reject(error);
    this.#connectAbort.abort(error);
    this.#closeSocket();
    this.#ended.resolve(error);
  }

  /** A server's words may echo the stream name (`Already publishing: <key>`): never show it. */
  #redact(message: string): string {
    const name = this.target.streamName;
    const bare = name.split("?")[0]!;
    let out = message;
    for (const secret of [name, bare]) {
      if (secret.length >= 4) out = out.replaceAll(secret, redactKey(secret));
    }
    return out;
  }

  #closeSocket(): void {
    try {
      this.#conn?.close();
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  }
}
