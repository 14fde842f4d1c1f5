import { encodeAmf0 } from "../../src/rtmp/amf0.ts";
import { MessageType, type RtmpMessage } from "../../src/rtmp/chunk.ts";
import {
  parseCommand,
  parseUserControl,
  userControl,
  UserControlEvent,
} from "../../src/rtmp/messages.ts";
import { assertEquals, assertThrows } from "../helpers/assert.ts";

const message = (typeId: number, payload: Uint8Array): RtmpMessage => ({
  chunkStreamId: 3,
  typeId,
  timestamp: 0,
  streamId: 0,
  payload,
});

Deno.test("parseCommand() reads AMF0 commands and AMF3 commands that wrap AMF0", () => {
  const body = encodeAmf0("publish", 5, null, "key?token=1", "live");
  const expected = {
    name: "publish",
    transactionId: 5,
    commandObject: null,
    args: ["key?token=1", "live"],
  };
  assertEquals(parseCommand(message(MessageType.CommandAmf0, body)), expected);
  assertEquals(
    parseCommand(message(MessageType.CommandAmf3, new Uint8Array([0, ...body]))),
    expected,
  );
  assertThrows(
    () => parseCommand(message(MessageType.CommandAmf0, encodeAmf0(7))),
    SyntaxError,
    "not a string",
  );
});

Deno.test("parseUserControl() reads events and rejects short messages", () => {
  const ping = userControl(UserControlEvent.PingRequest, 123456);
  assertEquals(parseUserControl(ping.payload), { event: 6, value: 123456 });
  assertThrows(() => parseUserControl(new Uint8Array(3)), SyntaxError, "at least 6");
});
