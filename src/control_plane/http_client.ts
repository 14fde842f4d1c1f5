/**
 * The Neustream control plane over HTTP: authorise a key, fetch its destinations, report its end.
 * Fails closed: any answer but a well-formed yes refuses the publish, within the configured timeout.
 *
 * @module
 */

import { z } from "zod";
import { deadline, delay, isTimeout, settlesWithin } from "../async.ts";
import { log } from "../log.ts";
import { redactKey } from "../redact.ts";
import { type DestinationRecord, DestinationSchema } from "./destination.ts";
import { type OutboxEntry, StreamEndOutbox } from "./outbox.ts";
import { LiveRecord } from "./live_record.ts";
import type { AuthDecision, CallStats, StreamAuthority } from "./stream_authority.ts";
import { streamFields } from "../stream_id.ts";

export type { CallStats };

const AuthReplySchema = z.looseObject({
  code: z.number(),
  msg: z.string().optional(),
  message: z.string().optional(),
  data: z.looseObject({ forward: z.boolean() }).optional(),
});

const ForwardingReplySchema = z.looseObject({
  destinations: z.array(z.unknown()),
});

export interface ControlPlaneOptions {
  /** Base URL, e.g. `https://api.neustream.app`. */
  url: string;
  timeoutMs: number;
  retryAttempts: number;
  /** First retry delay; doubles per attempt. */
  backoffBaseMs?: number;
  /** Longest wait between two stream-end attempts while the control plane is down (30 s). */
  maxRetryDelayMs?: number;
  /**
   * Where stream-end reports wait until the control plane takes them (see `openOutbox`); in memory
   * only when not given.
   */
  outbox?: StreamEndOutbox;
  /** The keys live now, on disk, so that a crash's streams are reported ended at the next start. */
  live?: LiveRecord;
}

export type CallKind = "auth" | "forwarding" | "stream_end";

const cpLog = log("control_plane");

/** An answer, or the lack of one, that the caller turns into a refusal or a retry. */
class CallFailure extends Error {
  override name = "CallFailure";
  constructor(message: string, readonly retryable: boolean) {
    super(message);
  }
}

function zodProblem(error: z.ZodError): string {
  const issue = error.issues[0]!;
  const path = issue.path.map(String).join(".") || "(root)";
  return `${path}: ${issue.message}`;
}

/**
 * Stream-end reports: every one is written to the outbox (and synced) before its first attempt, not
 * only the ones that failed. Writing only failures would lose a report whenever the relay stops
 * between the end of a stream and the last failed retry (a crash, `kill -9`, a deploy during an
 * outage), and would let a report that failed overtake or fall behind one that is still being
 * retried. With every report queued first, one delivery loop sends them strictly oldest first, one
 * at a time, and each is taken off the file only after a 2xx (the outbox writes in the order the
 * queue changed, so an acknowledgement never reaches the disk before its report, and the loop moves
 * on only once the previous write is done): nothing is lost, nothing reordered, and nothing sent
 * twice, except if the relay dies in the instant between the control plane's 2xx and the sync of
 * the acknowledgement (a repeated stream-end of a stream already ended changes nothing at the
 * control plane, and it still arrives before that key's next publish, below).
 */
export class ControlPlaneClient implements StreamAuthority {
  readonly mode = "control_plane";
  readonly #base: string;
  readonly #timeoutMs: number;
  readonly #retryAttempts: number;
  readonly #backoffBaseMs: number;
  readonly #maxRetryDelayMs: number;
  readonly #outbox: StreamEndOutbox;
  readonly #live: LiveRecord;
  /** The delivery loop, while it runs (one at most: that is what keeps the order). */
  #delivering: Promise<void> | undefined;
  /** The last stream-end attempt failed and the loop waits to retry: the control plane is down. */
  #stalled = false;
  /** Cuts the loop's wait short (the control plane answered another call, or we stop). */
  #wake: (() => void) | undefined;
  #closed = false;
  /** Aborted when a graceful stop's deadline comes with a request still waiting for its answer. */
  readonly #stopRequests = new AbortController();
  /** The start-up probe (`checkAtStart`), while it runs; cut short by `flush`. */
  #probing: Promise<void> | undefined;
  readonly #stopProbe = new AbortController();
  /** Resolved and replaced whenever the outbox shrinks or the loop stalls or stops. */
  #changed = Promise.withResolvers<void>();
  readonly stats: Record<CallKind, CallStats> = {
    auth: { ok: 0, failed: 0, totalSeconds: 0 },
    forwarding: { ok: 0, failed: 0, totalSeconds: 0 },
    stream_end: { ok: 0, failed: 0, totalSeconds: 0 },
  };

  constructor(options: ControlPlaneOptions) {
    this.#base = options.url.replace(/\/+$/, "");
    this.#timeoutMs = options.timeoutMs;
    this.#retryAttempts = options.retryAttempts;
    this.#backoffBaseMs = options.backoffBaseMs ?? 250;
    this.#maxRetryDelayMs = options.maxRetryDelayMs ?? 30_000;
    this.#outbox = options.outbox ?? StreamEndOutbox.inMemory();
    this.#live = options.live ?? LiveRecord.inMemory();
    // Reports an earlier run could not deliver go out first.
    this.#deliver();
  }

  /** Stream-end reports not yet taken by the control plane, oldest first. */
  get pendingStreamEnds(): number {
    return this.#outbox.size;
  }

  callStats(): Readonly<Record<CallKind, Readonly<CallStats>>> {
    return this.stats;
  }

  async authorize(key: string): Promise<AuthDecision> {
    const deadline = performance.now() + this.#timeoutMs;
    if (this.#outbox.has(key)) {
      // Keep the order the control plane sees: the old stream's end before the new one's start.
      // Bounded, so that a control plane that refuses only stream-ends cannot block publishing.
      this.#wake?.();
      await this.#until(() => !this.#outbox.has(key), this.#timeoutMs / 2);
    }
    try {
      const reply = await this.#call(
        "auth",
        "POST",
        "/api/auth/stream",
        { name: key },
        AuthReplySchema,
        deadline,
      );
      if (reply.code !== 0) {
        // Logged: a control plane that names the key in its message must not put it in the log.
        const text = (reply.msg ?? reply.message)?.replaceAll(key, redactKey(key)).slice(0, 200);
        return {
          allowed: false,
          reason: `control plane refused the key (code ${reply.code}${text ? `: ${text}` : ""})`,
        };
      }
      if (reply.data === undefined) {
        return { allowed: false, reason: "control plane reply invalid: data: missing" };
      }
      return { allowed: true, forward: reply.data.forward };
    } catch (error) {
      // An outage (no answer, a timeout, 5xx after the retries) is not a verdict on the key.
      const unanswered = error instanceof CallFailure && error.retryable;
      return { allowed: false, reason: (error as Error).message, unanswered };
    }
  }

  async destinations(key: string): Promise<{ records: DestinationRecord[]; malformed: string[] }> {
    const reply = await this.#call(
      "forwarding",
      "GET",
      `/api/streams/forwarding/${encodeURIComponent(key)}`,
      undefined,
      ForwardingReplySchema,
    );
    const records: DestinationRecord[] = [];
    const malformed: string[] = [];
    reply.destinations.forEach((item, index) => {
      const parsed = DestinationSchema.safeParse(item);
      if (parsed.success) records.push(parsed.data);
      else malformed.push(`destinations[${index}]: ${zodProblem(parsed.error)}`);
    });
    return { records, malformed };
  }

  /** The stream of `key` went live: recorded, so that a crash cannot leave it live for good. */
  streamStarted(key: string): void {
    void this.#live.add(key);
  }

  /**
   * Queues the report (on disk before anything is sent) and resolves once it is delivered, or once
   * the control plane is found down, or after the timeout (a long queue ahead of it, a slow control
   * plane): it then waits in the outbox and goes out when its turn comes. Bounded, so that a stop
   * never waits on a backlog.
   */
  async streamEnded(key: string): Promise<void> {
    const entry = await this.#outbox.add(key);
    // Not queued (the outbox said why): the record of live streams keeps the key, so that the
    // next start reports it.
    if (entry === undefined) return;
    // In the outbox first: a crash between the two reports the end twice, never not at all.
    void this.#live.remove(key);
    this.#deliver();
    await this.#until(
      () => !this.#outbox.holds(entry.seq) || this.#stalled || this.#closed,
      this.#timeoutMs,
    );
  }

  /**
   * Graceful stop: delivers what the control plane takes within half the timeout, lets an attempt
   * under way finish (its answer decides whether the report is done), and leaves the rest in the
   * outbox for the next start. All of it by `deadlineAt` (the relay's shutdown grace): an attempt
   * still waiting for its answer then is given up, and its report kept (a control plane that
   * hangs must not make the stop overrun and exit 1).
   */
  async flush(deadlineAt = Infinity): Promise<void> {
    this.#stopProbe.abort();
    await this.#probing;
    const left = () => Math.max(0, deadlineAt - performance.now());
    await this.#until(
      () => this.#outbox.size === 0 || this.#stalled,
      Math.min(this.#timeoutMs / 2, left()),
    );
    this.#closed = true;
    this.#wake?.();
    this.#notify();
    const delivering = this.#delivering;
    if (delivering !== undefined && !await settlesWithin(delivering, left())) {
      this.#stopRequests.abort();
      await delivering;
    }
    if (this.#outbox.size > 0) {
      cpLog.warn("{count} stream-end report(s) not delivered, kept for the next start", {
        count: this.#outbox.size,
        outbox: this.#outbox.path ?? "(memory only: lost)",
      });
    }
    await this.#live.close();
    await this.#outbox.close();
  }

  /**
   * One request to the control plane's base URL, which holds no key: `undefined` if it answers at
   * all (any status but a redirect: it need not serve that path), else why not. Not retried, not counted in the
   * call statistics.
   */
  async probe(signal?: AbortSignal): Promise<string | undefined> {
    const url = `${this.#base}/`;
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), this.#timeoutMs);
    try {
      const response = await fetch(url, {
        signal: AbortSignal.any(signal ? [timeout.signal, signal] : [timeout.signal]),
        redirect: "manual",
      });
      await response.body?.cancel();
      // Every call would be refused the same way: better said now.
      if (response.status >= 300 && response.status < 400) {
        return redirectRefused(response.status, response.headers.get("location"), url);
      }
      return undefined;
    } catch (error) {
      if (timeout.signal.aborted) {
        return `control plane timed out after ${(this.#timeoutMs / 1000).toFixed(1)} s`;
      }
      if (signal?.aborted) return "control plane not probed: the relay is stopping";
      return `control plane unreachable: ${whyUnreachable(error as Error, url)}`;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Probes the control plane once, in the background, and logs the outcome: a wrong URL, a DNS
   * failure or a certificate not trusted shows when the relay starts, where the operator looks,
   * not at the first streamer's refused publish.
   */
  checkAtStart(): void {
    const origin = new URL(this.#base).origin; // a base URL's path or credentials stay out
    this.#probing = this.probe(this.#stopProbe.signal).then((problem) => {
      if (this.#stopProbe.signal.aborted) return;
      if (problem === undefined) {
        cpLog.info("control plane at {origin} answers", { origin });
      } else {
        cpLog.warn("{problem}: publishes are refused until it answers", { problem, origin });
      }
    });
  }

  #notify(): void {
    this.#changed.resolve();
    this.#changed = Promise.withResolvers<void>();
  }

  /** Waits until `done()` holds or `ms` passed; true if it holds. */
  async #until(done: () => boolean, ms = Infinity): Promise<boolean> {
    const end = performance.now() + ms;
    while (!done()) {
      const left = end - performance.now();
      if (left <= 0) return false;
      try {
        await deadline(this.#changed.promise, left);
      } catch (error) {
        if (!isTimeout(error)) throw error;
      }
    }
    return true;
  }

  /** Starts the delivery loop if there is work and it is not running. */
  #deliver(): void {
    if (this.#delivering !== undefined || this.#closed || this.#outbox.size === 0) return;
    this.#delivering = this.#deliverAll().then(
      () => {
        this.#delivering = undefined;
        this.#notify();
        this.#deliver(); // a report queued while the loop was finishing
      },
      (error) => {
        // A bug, not an outage: no restart in a loop. The reports stay on disk for the next start.
        this.#delivering = undefined;
        this.#notify();
        cpLog.error("stream-end delivery stopped: {reason}", { reason: (error as Error).message });
      },
    );
  }

  /**
   * Sends the reports oldest first, one at a time. While the control plane is down the oldest is
   * retried with backoff doubling up to `maxRetryDelayMs` (one request at a time, so at most one
   * every few seconds during a long outage), the ones behind it wait.
   */
  async #deliverAll(): Promise<void> {
    let failures = 0;
    for (let entry = this.#outbox.peek(); entry && !this.#closed; entry = this.#outbox.peek()) {
      const outcome = await this.#reportEnd(entry, failures);
      if (outcome === "retry") {
        failures++;
        this.#stalled = true;
        this.#notify();
        // A graceful stop that came during the attempt found no wait to cut short: none starts.
        if (this.#closed) break;
        const wait = Math.min(this.#backoffBaseMs * 2 ** (failures - 1), this.#maxRetryDelayMs);
        const woken = new AbortController();
        this.#wake = () => woken.abort();
        try {
          await delay(wait, { signal: woken.signal });
        } catch (error) {
          if (!woken.signal.aborted) throw error;
        } finally {
          this.#wake = undefined;
        }
        continue;
      }
      failures = 0;
      this.#stalled = false;
      await this.#outbox.remove(entry.seq);
      this.#notify();
    }
  }

  /** One attempt to report `entry`: done (taken, or refused for good) or to be retried. */
  async #reportEnd(entry: OutboxEntry, failures: number): Promise<"done" | "retry"> {
    const entryLog = cpLog.with({ ...streamFields(entry.name), ended_at: entry.endedAt });
    const started = performance.now();
    const stats = this.stats.stream_end;
    try {
      await this.#attempt(
        "POST",
        "/api/auth/stream-end",
        { name: entry.name },
        z.unknown(),
        this.#timeoutMs,
      );
      stats.ok++;
      entryLog.info("stream end reported", failures > 0 ? { after_failures: failures } : {});
      return "done";
    } catch (error) {
      if (!(error instanceof CallFailure)) throw error;
      stats.failed++;
      // Given up by a graceful stop: kept, and `flush` says so.
      if (this.#stopRequests.signal.aborted) return "retry";
      if (!error.retryable) {
        // The control plane answered and said no (4xx): asking again would get the same answer and
        // hold up every report behind this one.
        entryLog.error("stream end refused by the control plane, dropped: {reason}", {
          reason: error.message,
        });
        return "done";
      }
      // One line when an outage starts, then quietly (debug) until it ends.
      const fields = { reason: error.message, waiting: this.#outbox.size };
      if (failures === 0) {
        entryLog.error(
          "stream end could not be reported: {reason}; {waiting} report(s) wait in the outbox, retrying",
          fields,
        );
      } else entryLog.debug("stream end still not reported: {reason}", fields);
      return "retry";
    } finally {
      stats.totalSeconds += (performance.now() - started) / 1000;
    }
  }

  /**
   * One call with retries. Network errors, timeouts and 5xx answers are retried with backoff while
   * attempts (and the deadline, if any) remain; anything else fails at once.
   */
  async #call<T>(
    kind: CallKind,
    method: "GET" | "POST",
    path: string,
    body: unknown,
    schema: z.ZodType<T>,
    deadline?: number,
  ): Promise<T> {
    const started = performance.now();
    const stats = this.stats[kind];
    let lastError: CallFailure | undefined;
    try {
      for (let attempt = 0; attempt <= this.#retryAttempts; attempt++) {
        if (attempt > 0) {
          const wait = this.#backoffBaseMs * 2 ** (attempt - 1);
          if (deadline !== undefined && performance.now() + wait >= deadline) break;
          // A graceful stop cuts the wait short: no retry starts after it.
          await delay(wait, { signal: this.#stopRequests.signal }).catch(() => {});
          if (this.#stopRequests.signal.aborted) break;
        }
        const remaining = deadline === undefined ? this.#timeoutMs : deadline - performance.now();
        if (remaining <= 0) break;
        try {
          const result = await this.#attempt(
            method,
            path,
            body,
            schema,
            Math.min(remaining, this.#timeoutMs),
          );
          stats.ok++;
          // It answers again: a stream-end waiting for its next retry need not wait any longer.
          this.#wake?.();
          return result;
        } catch (error) {
          if (!(error instanceof CallFailure)) throw error;
          lastError = error;
          if (!error.retryable || this.#stopRequests.signal.aborted) break;
        }
      }
      stats.failed++;
      throw lastError ?? new CallFailure("control plane timed out", true);
    } finally {
      stats.totalSeconds += (performance.now() - started) / 1000;
    }
  }

  async #attempt<T>(
    method: "GET" | "POST",
    path: string,
    body: unknown,
    schema: z.ZodType<T>,
    timeoutMs: number,
  ): Promise<T> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    const url = this.#base + path;
    let status: number;
    let location: string | null;
    let text: string;
    try {
      const response = await fetch(url, {
        method,
        headers: body === undefined
          ? { accept: "application/json" }
          : { accept: "application/json", "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.any([controller.signal, this.#stopRequests.signal]),
        // Followed, a redirect would take the key (in the body or the path) to whatever host it
        // names, over whatever scheme, and a 301/302 would turn the POST into a GET.
        redirect: "manual",
      });
      status = response.status;
      location = response.headers.get("location");
      text = await response.text();
    } catch (error) {
      if (controller.signal.aborted) {
        throw new CallFailure(
          `control plane timed out after ${(timeoutMs / 1000).toFixed(1)} s (${method} ${
            path.split("/").slice(0, 4).join("/")
          })`,
          true,
        );
      }
      throw new CallFailure(
        `control plane unreachable: ${whyUnreachable(error as Error, url)}`,
        true,
      );
    } finally {
      clearTimeout(timer);
    }
    if (status >= 300 && status < 400) {
      throw new CallFailure(redirectRefused(status, location, url), false);
    }
    if (status < 200 || status > 299) {
      throw new CallFailure(
        `control plane answered HTTP ${status}`,
        status >= 500 || status === 429,
      );
    }
    // A call whose reply does not matter (stream-end: any 2xx is taken) reads none of it.
    if (schema instanceof z.ZodUnknown) return undefined as T;
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      throw new CallFailure(`control plane reply is not JSON (${text.length} bytes)`, false);
    }
    const parsed = schema.safeParse(json);
    if (!parsed.success) {
      throw new CallFailure(`control plane reply invalid: ${zodProblem(parsed.error)}`, false);
    }
    return parsed.data;
  }
}

/**
 * Why `fetch` could not reach `url`. Its message ("fetch failed") says nothing: the reason
 * (connection refused, a DNS failure, a TLS error) is in its `cause`, after the request's URL,
 * which holds the stream key, so only what follows the URL is kept.
 */
export function whyUnreachable(error: Error, url: string): string {
  if (!(error.cause instanceof Error)) return error.message;
  const cause = error.cause.message;
  const afterUrl = cause.indexOf(`${url}): `);
  // The URL as fetch printed it may be normalised differently: the reason starts at its client.
  const afterClient = cause.indexOf("): client error (");
  const reason = afterUrl >= 0
    ? cause.slice(afterUrl + url.length + 3)
    : afterClient >= 0
    ? cause.slice(afterClient + 3)
    : "";
  const path = new URL(url).pathname;
  return reason === "" || reason.includes(path) ? error.message : reason;
}

/** Why a call answered with a redirect is refused, and what to do about it. */
function redirectRefused(status: number, location: string | null, from: string): string {
  return `control plane answered with a redirect (HTTP ${status}) to ${
    redirectOrigin(location, from)
  }, not followed: point [control_plane] url there`;
}

/** Where a redirect points, as far as it may be logged: its origin (a path may hold the key). */
function redirectOrigin(location: string | null, from: string): string {
  if (location === null) return "(no Location)";
  try {
    return `${new URL(location, from).origin}/…`;
  } catch {
    return "(an invalid Location)";
  }
}
