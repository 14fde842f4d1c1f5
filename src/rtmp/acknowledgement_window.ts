/**
 * What either end of an RTMP connection owes its peer for flow control, the same for a server and
 * a client: the Acknowledgement due each time the peer's Window Acknowledgement Size worth of bytes
 * has arrived, and the Ping Response to each Ping Request.
 *
 * @module
 */

import type { OutgoingMessage } from "./chunk.ts";
import {
  acknowledgement,
  parseU32,
  parseUserControl,
  pingResponse,
  UserControlEvent,
} from "./messages.ts";

export class AcknowledgementWindow {
  #window = 0;
  #lastSent = 0;

  /** Applies the peer's Window Acknowledgement Size message; throws on a malformed or zero size. */
  receiveWindowSize(payload: Uint8Array): void {
    const size = parseU32(payload, "Window Acknowledgement Size");
    if (size === 0) throw new RangeError("Window Acknowledgement Size of 0");
    this.#window = size;
  }

  /**
   * The Acknowledgement due once `totalBytes` (everything received, handshake included) has
   * crossed the window the peer asked for since the last one, if any.
   */
  acknowledgementFor(totalBytes: number): OutgoingMessage | undefined {
    if (this.#window === 0 || totalBytes - this.#lastSent < this.#window) return undefined;
    this.#lastSent = totalBytes;
    // The sequence number is a 32-bit counter that wraps.
    return acknowledgement(totalBytes >>> 0);
  }
}

/** The answer to a User Control message: a Ping Response to a Ping Request, nothing otherwise. */
export function answerUserControl(payload: Uint8Array): OutgoingMessage[] {
  const event = parseUserControl(payload);
  return event.event === UserControlEvent.PingRequest ? [pingResponse(event.value)] : [];
}
