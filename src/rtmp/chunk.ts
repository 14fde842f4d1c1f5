/**
 * The RTMP chunk stream (RTMP specification 5.3): splits messages into chunks and joins them again.
 * Pure: `ChunkDecoder` takes bytes as they arrive and yields whole messages, `ChunkEncoder` turns
 * messages into bytes. Neither touches a socket.
 *
 * @module
 */

/** RTMP message type ids (RTMP specification 5.4, 6.1, 7.1). */
export const MessageType = {
  SetChunkSize: 1,
  Abort: 2,
  Acknowledgement: 3,
  UserControl: 4,
  WindowAckSize: 5,
  SetPeerBandwidth: 6,
  Audio: 8,
  Video: 9,
  DataAmf3: 15,
  SharedObjectAmf3: 16,
  CommandAmf3: 17,
  DataAmf0: 18,
  SharedObjectAmf0: 19,
  CommandAmf0: 20,
  Aggregate: 22,
} as const;

/** One whole RTMP message. `payload` belongs to the receiver and is never reused by the codec. */
export interface RtmpMessage {
  chunkStreamId: number;
  typeId: number;
  /** Milliseconds, unsigned 32-bit, wrapping. */
  timestamp: number;
  streamId: number;
  payload: Uint8Array;
}

/** Limits that keep one connection's memory and CPU bounded whatever the peer declares. */
export interface ChunkDecoderLimits {
  /** Largest message accepted, in bytes. */
  maxMessageSize: number;
  /** Most chunk streams one connection may use. */
  maxChunkStreams: number;
  /** Smallest Set Chunk Size accepted: tiny chunks cost a header each, an amplification vector. */
  minChunkSize: number;
}

export const DEFAULT_DECODER_LIMITS: ChunkDecoderLimits = {
  maxMessageSize: 16 * 1024 * 1024,
  maxChunkStreams: 64,
  minChunkSize: 64,
};

/** The chunk size every RTMP peer starts with. */
export const DEFAULT_CHUNK_SIZE = 128;
/** Largest chunk size the specification allows (31 bits). */
export const MAX_CHUNK_SIZE = 0x7fffffff;
const EXTENDED_TIMESTAMP = 0xffffff;
/** A partial message starts with at most this much storage, and grows only as bytes arrive. */
const INITIAL_PAYLOAD_CAPACITY = 64 * 1024;
/**
 * Payloads up to `SLAB_PIECE_MAX` bytes (audio, most video frames at live bitrates) are cut from
 * slabs of `MIN_SLAB_SIZE` growing to `SLAB_SIZE`. A slab lives as long as any payload in it (the
 * GOP cache holds seconds of them), so slabs stay small: 128 KiB ones saved no more CPU than 64
 * KiB and kept 0.35 MiB more per stream.
 */
const SLAB_SIZE = 64 * 1024;
const MIN_SLAB_SIZE = 4 * 1024;
const SLAB_PIECE_MAX = 16 * 1024;
/** Longest chunk header: 3-byte basic header, 11-byte message header, 4-byte extended timestamp. */
const MAX_HEADER_LENGTH = 18;
const MESSAGE_HEADER_LENGTH = [11, 7, 3, 0] as const;

interface ChunkStreamState {
  id: number;
  timestamp: number;
  /** The last timestamp field as sent: absolute after type 0, a delta after type 1 or 2. */
  timestampField: number;
  extended: boolean;
  length: number;
  typeId: number;
  streamId: number;
  payload: Uint8Array | null;
  received: number;
}

interface ParsedHeader {
  headerLength: number;
  fmt: number;
  chunkStreamId: number;
  timestampField: number;
  extended: boolean;
  length: number;
  typeId: number;
  streamId: number;
}

const EMPTY = new Uint8Array(0);

/**
 * Reassembles messages from chunks. Feed it bytes in any split with `push`; it calls back once per
 * whole message. Set Chunk Size and Abort from the peer take effect inside the decoder, at the
 * exact byte where they arrive, and are also passed on.
 *
 * Throws `SyntaxError` on a malformed chunk stream and `RangeError` when the peer exceeds a limit;
 * the decoder is unusable after either.
 */
export class ChunkDecoder {
  readonly limits: ChunkDecoderLimits;
  #chunkSize = DEFAULT_CHUNK_SIZE;
  #streams = new Map<number, ChunkStreamState>();
  /** Header bytes that arrived without the rest of their header. */
  #pending: Uint8Array = EMPTY;
  /** The chunk stream whose chunk body is being read, if any. */
  #inBody: ChunkStreamState | null = null;
  #bodyRemaining = 0;
  /** Bytes held in partial messages across all chunk streams. */
  #bufferedBytes = 0;
  /** Where small payloads are cut from (`#fromSlab`), and how much of it is cut. */
  #slab: Uint8Array = EMPTY;
  #slabUsed = 0;

  constructor(limits: Partial<ChunkDecoderLimits> = {}) {
    this.limits = { ...DEFAULT_DECODER_LIMITS, ...limits };
  }

  /** The peer's current chunk size. */
  get chunkSize(): number {
    return this.#chunkSize;
  }

  /** Size of the slab small payloads are cut from now (see `SLAB_SIZE`). */
  get slabBytes(): number {
    return this.#slab.length;
  }

  /** Bytes held for partial messages and headers: what this connection costs in buffers. */
  get bufferedBytes(): number {
    return this.#bufferedBytes + this.#pending.length;
  }

  /** Consumes `data`, calling `onMessage` for every message it completes. */
  push(data: Uint8Array, onMessage: (message: RtmpMessage) => void): void {
    let offset = 0;
    if (this.#pending.length > 0) {
      // Complete the split header from a few new bytes, never by copying the whole read.
      const take = Math.min(data.length, MAX_HEADER_LENGTH + 4);
      const joined = new Uint8Array(this.#pending.length + take);
      joined.set(this.#pending);
      joined.set(data.subarray(0, take), this.#pending.length);
      const header = this.#parseHeader(joined, 0);
      if (header === undefined) {
        if (take < data.length) throw new SyntaxError("chunk header could not be parsed");
        this.#pending = joined;
        return;
      }
      offset = header.headerLength - this.#pending.length;
      this.#pending = EMPTY;
      this.#startChunk(header, onMessage);
    }
    while (offset < data.length) {
      const stream = this.#inBody;
      if (stream !== null) {
        const count = Math.min(this.#bodyRemaining, data.length - offset);
        this.#append(stream, data.subarray(offset, offset + count));
        offset += count;
        this.#bodyRemaining -= count;
        if (this.#bodyRemaining > 0) return;
        this.#inBody = null;
        if (stream.received === stream.length) this.#finish(stream, onMessage);
        continue;
      }
      const header = this.#parseHeader(data, offset);
      if (header === undefined) {
        this.#pending = data.slice(offset);
        return;
      }
      offset += header.headerLength;
      this.#startChunk(header, onMessage);
    }
  }

  #parseHeader(buf: Uint8Array, start: number): ParsedHeader | undefined {
    const end = buf.length;
    if (start >= end) return undefined;
    const first = buf[start]!;
    const fmt = first >> 6;
    let chunkStreamId = first & 0x3f;
    let pos = start + 1;
    if (chunkStreamId === 0) {
      if (pos + 1 > end) return undefined;
      chunkStreamId = buf[pos]! + 64;
      pos += 1;
    } else if (chunkStreamId === 1) {
      if (pos + 2 > end) return undefined;
      chunkStreamId = buf[pos]! + buf[pos + 1]! * 256 + 64;
      pos += 2;
    }
    const headerLength = MESSAGE_HEADER_LENGTH[fmt as 0 | 1 | 2 | 3];
    if (pos + headerLength > end) return undefined;
    const previous = this.#streams.get(chunkStreamId);
    if (fmt !== 0 && previous === undefined) {
      throw new SyntaxError(
        `chunk type ${fmt} on chunk stream ${chunkStreamId} with no earlier header`,
      );
    }
    let timestampField = previous?.timestampField ?? 0;
    let length = previous?.length ?? 0;
    let typeId = previous?.typeId ?? 0;
    let streamId = previous?.streamId ?? 0;
    let extended = previous?.extended ?? false;
    if (fmt <= 2) {
      timestampField = (buf[pos]! << 16) | (buf[pos + 1]! << 8) | buf[pos + 2]!;
      extended = timestampField === EXTENDED_TIMESTAMP;
      if (fmt <= 1) {
        length = (buf[pos + 3]! << 16) | (buf[pos + 4]! << 8) | buf[pos + 5]!;
        typeId = buf[pos + 6]!;
      }
      if (fmt === 0) {
        // The message stream id is the one little-endian field in RTMP.
        streamId = (buf[pos + 7]! | (buf[pos + 8]! << 8) | (buf[pos + 9]! << 16) |
          (buf[pos + 10]! << 24)) >>> 0;
      }
    }
    pos += headerLength;
    if (extended) {
      if (pos + 4 > end) return undefined;
      const value = ((buf[pos]! << 24) | (buf[pos + 1]! << 16) | (buf[pos + 2]! << 8) |
        buf[pos + 3]!) >>> 0;
      if (fmt <= 2) {
        timestampField = value;
        pos += 4;
      } else if (value === timestampField) {
        // Type-3 chunks repeat the extended timestamp; some old encoders omit it, so only
        // consume the four bytes when they carry the value we expect.
        pos += 4;
      }
    }
    if (length > this.limits.maxMessageSize) {
      throw new RangeError(
        `message of ${length} bytes on chunk stream ${chunkStreamId} exceeds the limit of ${this.limits.maxMessageSize}`,
      );
    }
    return {
      headerLength: pos - start,
      fmt,
      chunkStreamId,
      timestampField,
      extended,
      length,
      typeId,
      streamId,
    };
  }

  #startChunk(header: ParsedHeader, onMessage: (message: RtmpMessage) => void): void {
    let stream = this.#streams.get(header.chunkStreamId);
    if (stream === undefined) {
      if (this.#streams.size >= this.limits.maxChunkStreams) {
        throw new RangeError(
          `more than ${this.limits.maxChunkStreams} chunk streams on one connection`,
        );
      }
      stream = {
        id: header.chunkStreamId,
        timestamp: 0,
        timestampField: 0,
        extended: false,
        length: 0,
        typeId: 0,
        streamId: 0,
        payload: null,
        received: 0,
      };
      this.#streams.set(header.chunkStreamId, stream);
    }
    const continuing = stream.received > 0;
    if (continuing && header.fmt !== 3) {
      throw new SyntaxError(
        `new message header on chunk stream ${header.chunkStreamId} before its previous message ended`,
      );
    }
    if (!continuing) {
      if (header.fmt === 0) stream.timestamp = header.timestampField;
      else stream.timestamp = (stream.timestamp + header.timestampField) >>> 0;
      // A type-3 chunk that starts a message reuses the last field, as the specification says:
      // after type 0 that is the absolute timestamp, after type 1 or 2 the delta.
      stream.timestampField = header.timestampField;
      stream.extended = header.extended;
      stream.length = header.length;
      stream.typeId = header.typeId;
      stream.streamId = header.streamId;
    }
    if (stream.length === 0) {
      this.#emit(stream, EMPTY, onMessage);
      return;
    }
    this.#inBody = stream;
    this.#bodyRemaining = Math.min(this.#chunkSize, stream.length - stream.received);
  }

  #append(stream: ChunkStreamState, bytes: Uint8Array): void {
    const needed = stream.received + bytes.length;
    let payload = stream.payload;
    if (payload === null && stream.length <= SLAB_PIECE_MAX) {
      payload = this.#fromSlab(stream.length);
      stream.payload = payload;
      this.#bufferedBytes += payload.length;
    } else if (payload === null || needed > payload.length) {
      const capacity = Math.min(
        stream.length,
        Math.max(needed, payload === null ? INITIAL_PAYLOAD_CAPACITY : payload.length * 2),
      );
      const grown = new Uint8Array(capacity);
      if (payload !== null) grown.set(payload.subarray(0, stream.received));
      this.#bufferedBytes += capacity - (payload?.length ?? 0);
      if (this.#bufferedBytes > 2 * this.limits.maxMessageSize) {
        throw new RangeError(
          `partial messages hold ${this.#bufferedBytes} bytes, over twice the message limit`,
        );
      }
      payload = grown;
      stream.payload = grown;
    }
    payload.set(bytes, stream.received);
    stream.received = needed;
  }

  /**
   * A message's payload cut from the connection's current slab: one allocation for many small
   * messages instead of one each (allocating, zeroing and collecting a buffer per message was
   * about half of decoding). Pieces are never reused; a slab is let go once no payload cut from
   * it is referenced.
   */
  #fromSlab(size: number): Uint8Array {
    if (this.#slabUsed + size > this.#slab.length) {
      // Slabs grow with the traffic: a connection that only gets acknowledgements and answers (a
      // destination's) keeps a small one, a publisher's soon reaches the full size.
      const grown = Math.min(SLAB_SIZE, Math.max(MIN_SLAB_SIZE, 2 * this.#slab.length));
      this.#slab = new Uint8Array(Math.max(grown, size));
      this.#slabUsed = 0;
    }
    const piece = this.#slab.subarray(this.#slabUsed, this.#slabUsed + size);
    this.#slabUsed += size;
    return piece;
  }

  #finish(stream: ChunkStreamState, onMessage: (message: RtmpMessage) => void): void {
    const payload = stream.payload!;
    this.#bufferedBytes -= payload.length;
    stream.payload = null;
    stream.received = 0;
    this.#emit(stream, payload, onMessage);
  }

  #emit(
    stream: ChunkStreamState,
    payload: Uint8Array,
    onMessage: (message: RtmpMessage) => void,
  ): void {
    const message: RtmpMessage = {
      chunkStreamId: stream.id,
      typeId: stream.typeId,
      timestamp: stream.timestamp,
      streamId: stream.streamId,
      payload,
    };
    if (message.typeId === MessageType.SetChunkSize) this.#applyChunkSize(payload);
    else if (message.typeId === MessageType.Abort) this.#applyAbort(payload);
    onMessage(message);
  }

  #applyChunkSize(payload: Uint8Array): void {
    if (payload.length < 4) throw new SyntaxError("Set Chunk Size shorter than 4 bytes");
    const value = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0);
    if (value > MAX_CHUNK_SIZE) {
      throw new SyntaxError(`Set Chunk Size ${value} has the reserved top bit set`);
    }
    if (value < this.limits.minChunkSize) {
      throw new RangeError(
        `Set Chunk Size ${value} is below the minimum of ${this.limits.minChunkSize}`,
      );
    }
    this.#chunkSize = value;
  }

  #applyAbort(payload: Uint8Array): void {
    if (payload.length < 4) throw new SyntaxError("Abort message shorter than 4 bytes");
    const id = new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0);
    const stream = this.#streams.get(id);
    if (stream?.payload) {
      this.#bufferedBytes -= stream.payload.length;
      stream.payload = null;
    }
    if (stream) stream.received = 0;
  }
}

/** What the encoder remembers per chunk stream to compress the next header. */
interface EncoderStreamState {
  timestamp: number;
  length: number;
  typeId: number;
  streamId: number;
}

/** A message to encode. */
export interface OutgoingMessage {
  chunkStreamId: number;
  typeId: number;
  timestamp: number;
  streamId: number;
  payload: Uint8Array;
}

/** How one message will be written: header form, timestamp field, size, chunk size. */
interface ChunkPlan {
  message: OutgoingMessage;
  fmt: 0 | 1 | 2;
  field: number;
  extended: boolean;
  size: number;
  chunkSize: number;
}

function basicHeaderLength(chunkStreamId: number): number {
  return chunkStreamId < 64 ? 1 : chunkStreamId < 320 ? 2 : 3;
}

function writeBasicHeader(out: Uint8Array, pos: number, fmt: number, id: number): number {
  if (id < 64) {
    out[pos] = (fmt << 6) | id;
    return pos + 1;
  }
  if (id < 320) {
    out[pos] = fmt << 6;
    out[pos + 1] = id - 64;
    return pos + 2;
  }
  out[pos] = (fmt << 6) | 1;
  out[pos + 1] = (id - 64) & 0xff;
  out[pos + 2] = (id - 64) >> 8;
  return pos + 3;
}

/**
 * Splits messages into chunks. Headers are compressed only in the ways every reader agrees on: a
 * type 0 header starts each chunk stream (and any message whose timestamp goes backwards or whose
 * message stream changes), type 1 or 2 headers carry deltas, and type 3 headers only continue a
 * message. Extended timestamps are written on every chunk of the messages that need them.
 *
 * A Set Chunk Size message passed through the encoder changes the chunk size for the messages
 * after it, exactly where the peer will apply it.
 */
export class ChunkEncoder {
  #chunkSize: number;
  #streams = new Map<number, EncoderStreamState>();

  constructor(chunkSize = DEFAULT_CHUNK_SIZE) {
    this.#chunkSize = ChunkEncoder.#checkChunkSize(chunkSize);
  }

  static #checkChunkSize(size: number): number {
    if (!Number.isInteger(size) || size < 1 || size > MAX_CHUNK_SIZE) {
      throw new RangeError(
        `chunk size must be an integer from 1 to ${MAX_CHUNK_SIZE}, got ${size}`,
      );
    }
    return size;
  }

  get chunkSize(): number {
    return this.#chunkSize;
  }

  /** Changes the outgoing chunk size; send Set Chunk Size to the peer before the next message. */
  set chunkSize(size: number) {
    this.#chunkSize = ChunkEncoder.#checkChunkSize(size);
  }

  /** Encodes `messages` into one new buffer, ready for a single write. */
  encode(...messages: OutgoingMessage[]): Uint8Array {
    return this.encodeInto(undefined, messages);
  }

  /**
   * Encodes `messages` into `scratch` when they fit (the caller reuses it between writes, so the
   * hot path allocates nothing), otherwise into a new buffer. Returns the bytes written.
   */
  encodeInto(scratch: Uint8Array | undefined, messages: readonly OutgoingMessage[]): Uint8Array {
    const plans: ChunkPlan[] = new Array(messages.length);
    let total = 0;
    for (let i = 0; i < messages.length; i++) {
      const plan = this.#plan(messages[i]!);
      plans[i] = plan;
      total += plan.size;
    }
    const out = scratch !== undefined && scratch.length >= total ? scratch : new Uint8Array(total);
    let pos = 0;
    for (const plan of plans) pos = this.#write(out, pos, plan);
    return out.subarray(0, total);
  }

  #plan(message: OutgoingMessage): ChunkPlan {
    if (message.payload.length > 0xffffff) {
      throw new RangeError(`message of ${message.payload.length} bytes exceeds 16 MiB - 1`);
    }
    const timestamp = message.timestamp >>> 0;
    const previous = this.#streams.get(message.chunkStreamId);
    let fmt: 0 | 1 | 2;
    let field: number;
    if (
      previous === undefined || previous.streamId !== message.streamId ||
      timestamp < previous.timestamp
    ) {
      fmt = 0;
      field = timestamp;
    } else {
      field = timestamp - previous.timestamp;
      fmt = previous.length === message.payload.length && previous.typeId === message.typeId
        ? 2
        : 1;
    }
    this.#streams.set(message.chunkStreamId, {
      timestamp,
      length: message.payload.length,
      typeId: message.typeId,
      streamId: message.streamId,
    });
    const extended = field >= EXTENDED_TIMESTAMP;
    const basic = basicHeaderLength(message.chunkStreamId);
    const chunkSize = this.#chunkSize;
    const chunks = Math.max(1, Math.ceil(message.payload.length / chunkSize));
    const extra = extended ? 4 : 0;
    const size = basic + MESSAGE_HEADER_LENGTH[fmt] + extra + message.payload.length +
      (chunks - 1) * (basic + extra);
    if (message.typeId === MessageType.SetChunkSize && message.payload.length >= 4) {
      const view = new DataView(message.payload.buffer, message.payload.byteOffset, 4);
      this.chunkSize = view.getUint32(0);
    }
    return { message, fmt, field, extended, size, chunkSize };
  }

  #write(
    out: Uint8Array,
    start: number,
    plan: ChunkPlan,
  ): number {
    const { message, fmt, field, extended, chunkSize } = plan;
    const { payload, chunkStreamId } = message;
    let pos = writeBasicHeader(out, start, fmt, chunkStreamId);
    const wire = extended ? EXTENDED_TIMESTAMP : field;
    out[pos] = wire >> 16;
    out[pos + 1] = (wire >> 8) & 0xff;
    out[pos + 2] = wire & 0xff;
    pos += 3;
    if (fmt <= 1) {
      out[pos] = payload.length >> 16;
      out[pos + 1] = (payload.length >> 8) & 0xff;
      out[pos + 2] = payload.length & 0xff;
      out[pos + 3] = message.typeId;
      pos += 4;
    }
    if (fmt === 0) {
      const id = message.streamId;
      out[pos] = id & 0xff;
      out[pos + 1] = (id >> 8) & 0xff;
      out[pos + 2] = (id >> 16) & 0xff;
      out[pos + 3] = (id >>> 24) & 0xff;
      pos += 4;
    }
    const writeExtended = () => {
      out[pos] = (field >>> 24) & 0xff;
      out[pos + 1] = (field >> 16) & 0xff;
      out[pos + 2] = (field >> 8) & 0xff;
      out[pos + 3] = field & 0xff;
      pos += 4;
    };
    if (extended) writeExtended();
    if (payload.length <= chunkSize) {
      // Most audio and many video messages fit one chunk: no view of the payload needed.
      out.set(payload, pos);
      return pos + payload.length;
    }
    let sent = 0;
    for (;;) {
      const count = Math.min(chunkSize, payload.length - sent);
      out.set(payload.subarray(sent, sent + count), pos);
      pos += count;
      sent += count;
      if (sent >= payload.length) break;
      pos = writeBasicHeader(out, pos, 3, chunkStreamId);
      if (extended) writeExtended();
    }
    return pos;
  }
}
