/**
 * The live event stream behind `GET /api/events`: read-model snapshots, taken every `intervalMs`
 * while at least one client listens, diffed into events (a stream started or ended, a destination
 * changed state and why), plus a periodic `snapshot` event with every number, so a dashboard needs
 * no polling. Everything comes from the read model, so keys are redacted as in the rest of the API.
 *
 * @module
 */

import type { Context } from "hono";
import { streamSSE } from "hono/streaming";
import { log } from "../log.ts";
import type { DestinationView, ReadModel, Snapshot, StreamView } from "./read_model.ts";

/** A stream began a live period. */
export interface StreamStartedEvent {
  type: "stream_started";
  at: string;
  stream: StreamView;
}

/** A stream's live period is over. */
export interface StreamEndedEvent {
  type: "stream_ended";
  at: string;
  stream_id: string;
  stream_key: string;
}

/** A destination entered another state (or appeared, with `from` null; or went, with `to` null). */
export interface DestinationStateEvent {
  type: "destination_state";
  at: string;
  stream_id: string;
  stream_key: string;
  destination_id: string;
  from: string | null;
  to: string | null;
  /** Why, when the status says: its failure kind and last error. */
  reason: string | null;
  /** The destination's status as the read model has it (new fields included as they come). */
  status: Record<string, unknown> | null;
}

/** Everything, for the numbers on a dashboard. */
export interface SnapshotEvent {
  type: "snapshot";
  at: string;
  uptime_seconds: number;
  streams: StreamView[];
}

export type RelayEvent =
  | StreamStartedEvent
  | StreamEndedEvent
  | DestinationStateEvent
  | SnapshotEvent;

export interface RelayEventsOptions {
  /** How often the read model is read while someone listens. */
  intervalMs?: number;
  /** A `snapshot` event every this many ms (rounded to whole intervals). */
  snapshotEveryMs?: number;
}

type Listener = (event: RelayEvent) => void;

const eventsLog = log("http");

/** Why a destination is in its state, from whatever its status carries. */
function reasonOf(status: DestinationView["status"]): string | null {
  const parts = [status.failure, status.last_error].filter((part) => !!part);
  return parts.length > 0 ? parts.join(": ") : null;
}

/** The events that lead from `before` to `after`. */
export function diffSnapshots(before: Snapshot, after: Snapshot): RelayEvent[] {
  const at = new Date().toISOString();
  const events: RelayEvent[] = [];
  const old = new Map(before.streams.map((stream) => [stream.id, stream]));
  const now = new Map(after.streams.map((stream) => [stream.id, stream]));
  for (const [id, stream] of old) {
    if (now.has(id)) continue;
    events.push({ type: "stream_ended", at, stream_id: id, stream_key: stream.stream_key });
  }
  for (const [id, stream] of now) {
    if (!old.has(id)) events.push({ type: "stream_started", at, stream });
    const previous = new Map(
      (old.get(id)?.destinations ?? []).map((destination) => [destination.id, destination]),
    );
    const base = { type: "destination_state", at, stream_id: id, stream_key: stream.stream_key };
    for (const destination of stream.destinations) {
      const status = destination.status as unknown as Record<string, unknown>;
      const before = previous.get(destination.id)?.status;
      previous.delete(destination.id);
      const change = (from: string | null, to: string) => ({
        ...base,
        type: "destination_state" as const,
        destination_id: destination.id,
        from,
        to,
        reason: reasonOf(destination.status),
        status,
      });
      const to = destination.status.state;
      // A new FFmpeg run between two looks (a restart, a quick retry): every run begins in
      // `starting`, so the destination went down and up even if both looks saw the same state.
      const newRun = before !== undefined && before.started_at !== destination.status.started_at &&
        destination.status.started_at !== null;
      if (newRun && before.state !== "starting" && to !== "starting") {
        events.push(change(before.state, "starting"), change("starting", to));
      } else if ((before?.state ?? null) !== to) {
        events.push(change(before?.state ?? null, to));
      }
    }
    // Destinations removed from a stream that goes on.
    for (const [destinationId, gone] of previous) {
      events.push({
        ...base,
        type: "destination_state",
        destination_id: destinationId,
        from: gone.status.state,
        to: null,
        reason: "removed",
        status: null,
      });
    }
  }
  return events;
}

/**
 * Turns read-model snapshots into events for whoever subscribes. Reads the model only while
 * someone listens: an idle relay pays nothing for it.
 */
export class RelayEvents {
  readonly #readModel: ReadModel;
  readonly #intervalMs: number;
  readonly #snapshotEvery: number;
  readonly #listeners = new Set<Listener>();
  readonly #closers = new Set<() => void>();
  #timer: ReturnType<typeof setInterval> | undefined;
  #last: Snapshot | undefined;
  #ticks = 0;
  #closed = false;

  constructor(readModel: ReadModel, options: RelayEventsOptions = {}) {
    this.#readModel = readModel;
    this.#intervalMs = options.intervalMs ?? 500;
    if (!(this.#intervalMs > 0)) {
      throw new RangeError(`interval must be > 0, got ${this.#intervalMs}`);
    }
    this.#snapshotEvery = Math.max(
      1,
      Math.round((options.snapshotEveryMs ?? 1000) / this.#intervalMs),
    );
  }

  get listeners(): number {
    return this.#listeners.size;
  }

  /** The current state as a `snapshot` event. */
  snapshotEvent(snapshot = this.#readModel.snapshot()): SnapshotEvent {
    return {
      type: "snapshot",
      at: new Date().toISOString(),
      uptime_seconds: snapshot.uptime_seconds,
      streams: snapshot.streams,
    };
  }

  /**
   * Calls `listener` with every event from now on; `onClose` when the source closes. Returns the
   * unsubscribe function.
   */
  subscribe(listener: Listener, onClose?: () => void): () => void {
    if (this.#closed) throw new Error("the event source is closed");
    this.#listeners.add(listener);
    if (onClose) this.#closers.add(onClose);
    if (this.#timer === undefined) {
      this.#last = this.#readModel.snapshot();
      this.#ticks = 0;
      this.#timer = setInterval(() => this.#tick(), this.#intervalMs);
    }
    return () => {
      this.#listeners.delete(listener);
      if (onClose) this.#closers.delete(onClose);
      if (this.#listeners.size === 0) this.#stop();
    };
  }

  /** Ends every subscription (the service is stopping: open event streams must not hold it). */
  close(): void {
    this.#closed = true;
    this.#stop();
    const closers = [...this.#closers];
    this.#closers.clear();
    this.#listeners.clear();
    for (const close of closers) close();
  }

  #stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.#last = undefined;
  }

  #tick(): void {
    let snapshot: Snapshot;
    try {
      snapshot = this.#readModel.snapshot();
    } catch (error) {
      eventsLog.error("event source could not read the relay: {reason}", {
        reason: (error as Error).message,
      });
      return;
    }
    const events = this.#last ? diffSnapshots(this.#last, snapshot) : [];
    this.#last = snapshot;
    if (++this.#ticks % this.#snapshotEvery === 0) events.push(this.snapshotEvent(snapshot));
    for (const event of events) {
      for (const listener of [...this.#listeners]) listener(event);
    }
  }
}

/** Most events waiting for one slow client; past it the client is dropped (it may reconnect). */
const MAX_PENDING_EVENTS = 512;

/**
 * Serves `events` as Server-Sent Events: a `snapshot` at once, then every event as it happens and
 * a comment line every `heartbeatMs` so proxies keep the connection. Ends when the client goes,
 * falls more than `MAX_PENDING_EVENTS` behind (even with a write blocked on its full socket), or
 * the source closes.
 */
export function serveEvents(c: Context, events: RelayEvents, heartbeatMs = 15_000): Response {
  c.header("X-Accel-Buffering", "no"); // nginx in front must not buffer the stream
  return streamSSE(c, async (stream) => {
    const pending: RelayEvent[] = [events.snapshotEvent()];
    let wake: (() => void) | undefined;
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      wake?.();
      // A write to a client that stopped reading waits until it reads, which may be never; the
      // loop would not see `done` until then. Aborting rejects that write (`write()` swallows
      // it), so the loop ends and unsubscribes now, and the response body ends.
      stream.abort();
    };
    const unsubscribe = events.subscribe((event) => {
      if (done) return;
      if (pending.length >= MAX_PENDING_EVENTS) {
        eventsLog.warn("event stream client more than {max} events behind: disconnected", {
          max: MAX_PENDING_EVENTS,
        });
        return finish();
      }
      pending.push(event);
      wake?.();
    }, finish);
    stream.onAbort(finish);
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      while (!done && !stream.aborted) {
        const event = pending.shift();
        if (event !== undefined) {
          await stream.writeSSE({ event: event.type, data: JSON.stringify(event) });
          continue;
        }
        const beat = await new Promise<boolean>((resolve) => {
          wake = () => resolve(false);
          timer = setTimeout(() => resolve(true), heartbeatMs);
        });
        clearTimeout(timer);
        wake = undefined;
        if (beat && !done) await stream.write(": heartbeat\n\n");
      }
    } finally {
      clearTimeout(timer);
      unsubscribe();
    }
  }, async (error) => {
    // A client gone mid-write is the normal end; anything else is worth a line.
    if (!c.req.raw.signal.aborted) {
      eventsLog.warn("event stream ended: {reason}", { reason: error.message });
    }
    await Promise.resolve();
  });
}
