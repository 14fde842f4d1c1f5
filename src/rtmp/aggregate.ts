/**
 * RTMP Aggregate messages (type 22, RTMP specification 7.1.6): one message carrying several
 * audio, video and data messages, each framed like an FLV tag. Some servers (FMS/AMS, Wowza) and
 * restreaming tools send them. Pure: no sockets.
 *
 * Each sub-message: type (1 byte), data size (3), timestamp (3, then 1 byte holding the upper 8
 * bits), stream id (3, ignored: the aggregate's own stream id applies), the data, then a 4-byte
 * back pointer (the previous tag size, 11 + data size).
 *
 * Timestamps: the first sub-message takes the aggregate's timestamp and the others keep their
 * offset from the first, modulo 2^32 (as nginx-rtmp and FFmpeg compute it; SRS also masks to 31
 * bits, which we do not, since the chunk layer carries full 32-bit timestamps).
 *
 * @module
 */

import { MessageType } from "./chunk.ts";

/** Type, size, timestamp, timestamp extension, stream id. */
const SUB_HEADER_LENGTH = 11;
const BACK_POINTER_LENGTH = 4;

/** The message types an aggregate may carry here. */
export type AggregatePartType =
  | typeof MessageType.Audio
  | typeof MessageType.Video
  | typeof MessageType.DataAmf0;

/** One message taken out of an aggregate. */
export interface AggregatePart {
  typeId: AggregatePartType;
  /** Milliseconds, unsigned 32-bit: already moved onto the aggregate's timeline. */
  timestamp: number;
  /** A view of the aggregate's body, not a copy. */
  payload: Uint8Array;
}

type Visit = (typeId: AggregatePartType, timestamp: number, payload: Uint8Array) => void;

function walk(body: Uint8Array, visit: Visit | undefined): void {
  let offset = 0;
  for (let index = 0; offset < body.length; index++) {
    const at = `sub-message ${index} at byte ${offset} of a ${body.length}-byte aggregate`;
    if (body.length - offset < SUB_HEADER_LENGTH) {
      throw new SyntaxError(`${at}: header truncated (${body.length - offset} of 11 bytes)`);
    }
    const typeId = body[offset]!;
    const size = (body[offset + 1]! << 16) | (body[offset + 2]! << 8) | body[offset + 3]!;
    if (typeId === MessageType.Aggregate) {
      throw new SyntaxError(`${at}: nested aggregate`);
    }
    if (
      typeId !== MessageType.Audio && typeId !== MessageType.Video &&
      typeId !== MessageType.DataAmf0
    ) {
      throw new SyntaxError(`${at}: type ${typeId} (only audio 8, video 9 and data 18 may be)`);
    }
    const dataStart = offset + SUB_HEADER_LENGTH;
    const dataEnd = dataStart + size;
    if (dataEnd > body.length) {
      throw new RangeError(`${at}: ${size} bytes of data run past the end`);
    }
    // The back pointer is required (SRS and FFmpeg require it too) but its value is not checked:
    // it repeats what the header said, and nginx-rtmp, SRS, FFmpeg and red5 all ignore it, so a
    // sender that gets it wrong works with them and must work with us.
    if (body.length - dataEnd < BACK_POINTER_LENGTH) {
      throw new SyntaxError(`${at}: back pointer truncated (${body.length - dataEnd} of 4 bytes)`);
    }
    if (visit !== undefined) {
      const timestamp = ((body[offset + 7]! << 24) | (body[offset + 4]! << 16) |
        (body[offset + 5]! << 8) | body[offset + 6]!) >>> 0;
      visit(typeId, timestamp, body.subarray(dataStart, dataEnd));
    }
    offset = dataEnd + BACK_POINTER_LENGTH;
  }
}

/**
 * Calls `onPart` for each message in an aggregate's `body`, in order, with timestamps moved onto
 * the timeline of the aggregate's own `timestamp`. The whole body is checked before the first
 * call, so a malformed aggregate delivers nothing; parts are handed out one at a time rather than
 * collected, so a body of many tiny parts costs no more memory than the body itself.
 *
 * Throws `SyntaxError` for a truncated record, a nested aggregate or a type other than audio,
 * video or data, and `RangeError` for a data size past the end. An empty body has no parts.
 */
export function splitAggregate(
  body: Uint8Array,
  timestamp: number,
  onPart: (part: AggregatePart) => void,
): void {
  walk(body, undefined);
  let first: number | undefined;
  walk(body, (typeId, partTimestamp, payload) => {
    first ??= partTimestamp;
    onPart({ typeId, timestamp: (timestamp + partTimestamp - first) >>> 0, payload });
  });
}
