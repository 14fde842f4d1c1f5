/**
 * The Neustream control plane over HTTP: authorise a key, fetch its destinations, report its end.
 * Fails closed: any answer but a well-formed yes refuses the publish, within the configured timeout.
 *
 * @module
 */

import { z } from "zod";
import { log } from "../log.ts";
import { redactKey } from "../redact.ts";
import { type DestinationRecord, DestinationSchema } from "./destination.ts";
import type { AuthDecision, CallStats, StreamAuthority } from "./stream_authority.ts";

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

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

export class ControlPlaneClient implements StreamAuthority {
  readonly mode = "control_plane";
  readonly #base: string;
  readonly #timeoutMs: number;
  readonly #retryAttempts: number;
  readonly #backoffBaseMs: number;
  /** Per key, the stream-end report still under way: a new publish of that key waits for it. */
  readonly #pendingEnds = new Map<string, Promise<void>>();
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
  }

  callStats(): Readonly<Record<CallKind, Readonly<CallStats>>> {
    return this.stats;
  }

  async authorize(key: string): Promise<AuthDecision> {
    const deadline = performance.now() + this.#timeoutMs;
    const pendingEnd = this.#pendingEnds.get(key);
    if (pendingEnd) {
      // Keep the order the control plane sees: the old stream's end before the new one's start.
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        pendingEnd,
        new Promise<void>((resolve) => timer = setTimeout(resolve, this.#timeoutMs / 2)),
      ]);
      clearTimeout(timer);
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
        const text = reply.msg ?? reply.message;
        return {
          allowed: false,
          reason: `control plane refused the key (code ${reply.code}${
            text ? `: ${text.slice(0, 200)}` : ""
          })`,
        };
      }
      if (reply.data === undefined) {
        return { allowed: false, reason: "control plane reply invalid: data: missing" };
      }
      return { allowed: true, forward: reply.data.forward };
    } catch (error) {
      return { allowed: false, reason: (error as Error).message };
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

  streamEnded(key: string): Promise<void> {
    const previous = this.#pendingEnds.get(key) ?? Promise.resolve();
    const report = previous.then(() => this.#reportEnd(key));
    this.#pendingEnds.set(key, report);
    void report.then(() => {
      if (this.#pendingEnds.get(key) === report) this.#pendingEnds.delete(key);
    });
    return report;
  }

  async flush(): Promise<void> {
    await Promise.all(this.#pendingEnds.values());
  }

  async #reportEnd(key: string): Promise<void> {
    try {
      await this.#call("stream_end", "POST", "/api/auth/stream-end", { name: key }, z.unknown());
      cpLog.info("stream end reported", { stream: redactKey(key) });
    } catch (error) {
      cpLog.error("stream end could not be reported: {reason}", {
        stream: redactKey(key),
        reason: (error as Error).message,
      });
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
          await delay(wait);
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
          return result;
        } catch (error) {
          if (!(error instanceof CallFailure)) throw error;
          lastError = error;
          if (!error.retryable) break;
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
    let status: number;
    let text: string;
    try {
      const response = await fetch(this.#base + path, {
        method,
        headers: body === undefined
          ? { accept: "application/json" }
          : { accept: "application/json", "content-type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: controller.signal,
      });
      status = response.status;
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
      throw new CallFailure(`control plane unreachable: ${(error as Error).message}`, true);
    } finally {
      clearTimeout(timer);
    }
    if (status < 200 || status > 299) {
      throw new CallFailure(
        `control plane answered HTTP ${status}`,
        status >= 500 || status === 429,
      );
    }
    let json: unknown;
    try {
      json = text === "" && schema instanceof z.ZodUnknown ? null : JSON.parse(text);
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
