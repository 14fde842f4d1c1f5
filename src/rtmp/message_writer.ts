/**
 * The write side of an RTMP connection, for either end of it: takes what is queued (control
 * messages, and media packets for the connection's message stream), encodes each batch with the
 * connection's `ChunkEncoder` and writes it in one call.
 *
 * @module
 */

import { ChunkEncoder, type OutgoingMessage } from "./chunk.ts";
import { mediaMessage } from "./messages.ts";
import type { MediaQueue } from "../media/media_queue.ts";

/**
 * Output buffer sizes per connection: it grows to the largest batch up to the cap; a larger
 * batch (a GOP cache replay, a big keyframe) gets a buffer of its own that is then let go.
 * Kept buffers are most of a connection's memory, and a stream has one per destination.
 */
const SCRATCH_INITIAL_SIZE = 64 * 1024;
const SCRATCH_MAX_SIZE = 256 * 1024;
/**
 * Media bytes taken from the queue for one write: a player behind takes its backlog in pieces that
 * fit the kept buffer, and what it has not started on stays queued, under the queue's drop policy.
 */
const BATCH_BYTES = SCRATCH_MAX_SIZE / 2;

export class MessageWriter {
  readonly #conn: Deno.Conn;
  readonly #queue: MediaQueue<OutgoingMessage> | undefined;
  readonly #mediaStreamId: () => number;
  readonly #encoder = new ChunkEncoder();
  /**
   * One output buffer for the life of the connection: a write completes before the next batch is
   * encoded, so reusing it saves an allocation (and its zeroing) per write.
   */
  #scratch: Uint8Array = new Uint8Array(SCRATCH_INITIAL_SIZE);
  #bytesOut = 0;

  /**
   * `mediaStreamId` says which message stream queued media goes out on when it is written. Without
   * a `queue`, the owner writes batches itself with `send` (one at a time) and never calls `run`.
   */
  constructor(
    conn: Deno.Conn,
    queue?: MediaQueue<OutgoingMessage>,
    mediaStreamId: () => number = () => 0,
  ) {
    this.#conn = conn;
    this.#queue = queue;
    this.#mediaStreamId = mediaStreamId;
  }

  /** Bytes of output buffer kept between writes: what this connection's writer costs idle. */
  get keptBufferBytes(): number {
    return this.#scratch.length;
  }

  /**
   * Every byte the socket took, handshake included, counted as each write returns: a batch that
   * takes a slow destination seconds to take in shows its progress while it goes (a stream's end
   * is waited for as long as this moves).
   */
  get bytesOut(): number {
    return this.#bytesOut;
  }

  /**
   * Writes batches as they are queued until the queue is closed and drained. Rejects when a write
   * fails; the caller closes the connection.
   */
  async run(): Promise<void> {
    const queue = this.#queue;
    if (queue === undefined) throw new TypeError("run() needs a writer made with a queue");
    for await (const items of queue.batches(undefined, BATCH_BYTES)) {
      const streamId = this.#mediaStreamId();
      const messages = items.map((item) =>
        item.kind === "control" ? item.control : mediaMessage(item.packet, streamId)
      );
      await this.send(messages);
    }
  }

  /**
   * Encodes `messages` and writes them in one call. The caller awaits each `send` before the next
   * (the encoder's header state and the output buffer are shared between batches).
   */
  send(messages: readonly OutgoingMessage[]): Promise<void> {
    const bytes = this.#encoder.encodeInto(this.#scratch, messages);
    if (bytes.buffer !== this.#scratch.buffer && bytes.length <= SCRATCH_MAX_SIZE) {
      this.#scratch = new Uint8Array(bytes.buffer); // grown: keep the larger one
    }
    return this.writeAll(bytes);
  }

  /** Writes raw bytes (the handshake, before any chunk stream). */
  async writeAll(bytes: Uint8Array): Promise<void> {
    let written = 0;
    while (written < bytes.length) {
      const count = await this.#conn.write(bytes.subarray(written));
      written += count;
      this.#bytesOut += count;
    }
  }
}
