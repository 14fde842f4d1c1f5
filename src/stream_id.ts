/**
 * A stream's public id: what the API and the dashboard call a stream by, since its key (a secret)
 * never leaves the relay. An HMAC of the key under a secret drawn at start: stable for the life of
 * the process, the same for every reader, and no use for guessing the key offline.
 *
 * @module
 */

import { createHmac } from "node:crypto";
import { redactKey } from "./redact.ts";

const SECRET = crypto.getRandomValues(new Uint8Array(32));

/** 16 hex characters naming the stream with key `key` in this process. */
export function streamId(key: string): string {
  return createHmac("sha256", SECRET).update(key).digest("hex").slice(0, 16);
}

/**
 * How log lines name a stream: its key redacted, and its id, since redacted keys can look alike
 * (`live…(25)` for two keys with one prefix) where ids never do.
 */
export function streamFields(key: string): { stream: string; stream_id: string } {
  return { stream: redactKey(key), stream_id: streamId(key) };
}
