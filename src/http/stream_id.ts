/**
 * A stream's public id: what the API and the dashboard call a stream by, since its key (a secret)
 * never leaves the relay. An HMAC of the key under a secret drawn at start: stable for the life of
 * the process, the same for every reader, and no use for guessing the key offline.
 *
 * @module
 */

import { createHmac } from "node:crypto";

const SECRET = crypto.getRandomValues(new Uint8Array(32));

/** 16 hex characters naming the stream with key `key` in this process. */
export function streamId(key: string): string {
  return createHmac("sha256", SECRET).update(key).digest("hex").slice(0, 16);
}
