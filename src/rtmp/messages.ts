/**
 * Builders and parsers for RTMP protocol control, user control and command messages, for either
 * end of a connection: the server conversation (`server_conversation.ts`) answers with them, and a
 * client sends the same commands and reads the same replies. Pure.
 *
 * @module
 */

import { type AmfObject, type AmfValue, decodeAmf0, encodeAmf0 } from "./amf0.ts";
import { MessageType, type OutgoingMessage, type RtmpMessage } from "./chunk.ts";
import { type MediaPacket, TagType } from "../media/flv.ts";

/** Chunk stream ids we send on, by purpose (the split FFmpeg and librtmp use). */
export const ChunkStream = {
  Control: 2,
  Command: 3,
  Audio: 4,
  Video: 6,
  Data: 5,
} as const;

/** User Control event types (RTMP specification 7.1.7). */
export const UserControlEvent = {
  StreamBegin: 0,
  StreamEof: 1,
  StreamDry: 2,
  SetBufferLength: 3,
  StreamIsRecorded: 4,
  PingRequest: 6,
  PingResponse: 7,
} as const;

function u32(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value >>> 0);
  return bytes;
}

function control(typeId: number, payload: Uint8Array): OutgoingMessage {
  return { chunkStreamId: ChunkStream.Control, typeId, timestamp: 0, streamId: 0, payload };
}

export function setChunkSize(size: number): OutgoingMessage {
  return control(MessageType.SetChunkSize, u32(size & 0x7fffffff));
}

export function acknowledgement(sequence: number): OutgoingMessage {
  return control(MessageType.Acknowledgement, u32(sequence));
}

export function windowAckSize(size: number): OutgoingMessage {
  return control(MessageType.WindowAckSize, u32(size));
}

/** Set Peer Bandwidth with limit type 2 (dynamic). */
export function setPeerBandwidth(size: number, limitType = 2): OutgoingMessage {
  const payload = new Uint8Array(5);
  new DataView(payload.buffer).setUint32(0, size >>> 0);
  payload[4] = limitType;
  return control(MessageType.SetPeerBandwidth, payload);
}

export function userControl(event: number, value: number): OutgoingMessage {
  const payload = new Uint8Array(6);
  const view = new DataView(payload.buffer);
  view.setUint16(0, event);
  view.setUint32(2, value >>> 0);
  return control(MessageType.UserControl, payload);
}

/** Stream Begin: message stream `streamId` is ready (0 for the connection itself). */
export function streamBegin(streamId: number): OutgoingMessage {
  return userControl(UserControlEvent.StreamBegin, streamId);
}

/** Stream EOF: no more media on message stream `streamId`. */
export function streamEof(streamId: number): OutgoingMessage {
  return userControl(UserControlEvent.StreamEof, streamId);
}

/** Ping request carrying `timestamp`, which the peer echoes in its ping response. */
export function pingRequest(timestamp: number): OutgoingMessage {
  return userControl(UserControlEvent.PingRequest, timestamp);
}

export function pingResponse(timestamp: number): OutgoingMessage {
  return userControl(UserControlEvent.PingResponse, timestamp);
}

/** A parsed User Control message. */
export interface UserControlMessage {
  event: number;
  value: number;
}

export function parseUserControl(payload: Uint8Array): UserControlMessage {
  if (payload.length < 6) {
    throw new SyntaxError(`User Control message of ${payload.length} bytes, need at least 6`);
  }
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  return { event: view.getUint16(0), value: view.getUint32(2) };
}

export function parseU32(payload: Uint8Array, what: string): number {
  if (payload.length < 4) throw new SyntaxError(`${what} shorter than 4 bytes`);
  return new DataView(payload.buffer, payload.byteOffset, 4).getUint32(0);
}

/** An AMF command: `name`, transaction id, command object, then arguments. */
export interface Command {
  name: string;
  transactionId: number;
  commandObject: AmfValue;
  args: AmfValue[];
}

/**
 * Decodes a command message (type 20, or type 17 whose AMF3 body wraps AMF0 after a leading 0x00
 * byte, which is how Flash-derived clients send commands in AMF3 mode).
 */
export function parseCommand(message: RtmpMessage): Command {
  let body = message.payload;
  if (message.typeId === MessageType.CommandAmf3) {
    if (body.length > 0 && body[0] === 0x00) body = body.subarray(1);
  }
  const values = decodeAmf0(body);
  const [name, transactionId, commandObject, ...args] = values;
  if (typeof name !== "string") throw new SyntaxError("command name is not a string");
  return {
    name,
    transactionId: typeof transactionId === "number" ? transactionId : 0,
    commandObject: commandObject ?? null,
    args,
  };
}

/** Decodes a data message (type 18, or 15 wrapping AMF0) into its values. */
export function parseData(message: RtmpMessage): AmfValue[] {
  let body = message.payload;
  if (message.typeId === MessageType.DataAmf3 && body.length > 0 && body[0] === 0x00) {
    body = body.subarray(1);
  }
  return decodeAmf0(body);
}

export function command(
  streamId: number,
  name: string,
  transactionId: number,
  commandObject: AmfValue,
  ...args: AmfValue[]
): OutgoingMessage {
  return {
    chunkStreamId: ChunkStream.Command,
    typeId: MessageType.CommandAmf0,
    timestamp: 0,
    streamId,
    payload: encodeAmf0(name, transactionId, commandObject, ...args),
  };
}

/**
 * `_result` answering transaction `transactionId` on message stream 0. Peers match
 * replies by transaction id: one with an id they did not send is dropped and the caller hangs.
 */
export function commandResult(
  transactionId: number,
  commandObject: AmfValue,
  ...args: AmfValue[]
): OutgoingMessage {
  return command(0, "_result", transactionId, commandObject, ...args);
}

/** `onStatus` on a message stream, the way NetStream events reach a client. */
export function onStatus(streamId: number, info: AmfObject): OutgoingMessage {
  return command(streamId, "onStatus", 0, null, info);
}

export type StatusLevel = "status" | "error" | "warning";

export function statusInfo(level: StatusLevel, code: string, description: string): AmfObject {
  return { level, code, description };
}

/** `onStatus` with a fresh info object: `netStatus(1, "status", "NetStream.Play.Start", "…")`. */
export function netStatus(
  streamId: number,
  level: StatusLevel,
  code: string,
  description: string,
): OutgoingMessage {
  return onStatus(streamId, statusInfo(level, code, description));
}

/**
 * A media packet as an RTMP message on message stream `streamId`, on the chunk stream for its kind.
 * The payload is shared, not copied. `timestamp` defaults to the packet's own.
 */
export function mediaMessage(
  packet: MediaPacket,
  streamId: number,
  timestamp = packet.timestamp,
): OutgoingMessage {
  return {
    chunkStreamId: packet.type === TagType.Audio
      ? ChunkStream.Audio
      : packet.type === TagType.Video
      ? ChunkStream.Video
      : ChunkStream.Data,
    typeId: packet.type,
    timestamp,
    streamId,
    payload: packet.payload,
  };
}
