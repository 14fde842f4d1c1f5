/**
 * Who may publish and where a stream goes: one interface with two sources, the Neustream control
 * plane over HTTP and the static keys of `config.toml`.
 *
 * @module
 */

import type { DestinationRecord } from "./destination.ts";

/** A key of `config.toml` that may publish, with its destinations (static mode). */
export interface StaticStream {
  key: string;
  destinations: DestinationRecord[];
}

/** The answer to "may this key publish?". */
export type AuthDecision =
  | { allowed: true; forward: boolean }
  /** `unanswered`: no answer came (see `PublishDecision`). */
  | { allowed: false; reason: string; unanswered?: boolean };

/** Counts and time of one kind of call, for `/metrics`. */
export interface CallStats {
  ok: number;
  failed: number;
  totalSeconds: number;
}

export interface StreamAuthority {
  /** "control_plane" or "static", for logs and the API. */
  readonly mode: "control_plane" | "static";
  /** Decides within the configured timeout; never throws (an error is a refusal). */
  authorize(key: string): Promise<AuthDecision>;
  /**
   * The stream's destinations as given (not yet validated), and the ones the source itself found
   * malformed with the reason. Throws when the source cannot be asked.
   */
  destinations(key: string): Promise<{ records: DestinationRecord[]; malformed: string[] }>;
  /** A stream went live (the control plane's client records it against a crash). Never throws. */
  streamStarted?(key: string): void;
  /** Reports that a stream ended. Retries on its own; resolves when done or given up, never throws. */
  streamEnded(key: string): Promise<void>;
  /**
   * Waits for reports still under way (shutdown), until `deadlineAt` (`performance.now()`) at most:
   * what is not delivered by then stays for the next start.
   */
  flush(deadlineAt?: number): Promise<void>;
  /**
   * Takes a reloaded `config.toml` (SIGHUP): sources that read their keys from it (static mode)
   * swap them in one step; streams already live keep their destinations until refreshed. Sources
   * configured elsewhere (the control plane) do not have it.
   */
  reload?(config: { readonly streams: readonly StaticStream[] }): void;
  /** Calls made so far, by kind; only sources that call out (the control plane) have it. */
  callStats?(): Readonly<Record<string, Readonly<CallStats>>>;
  /** Stream-end reports waiting for the control plane (control-plane mode). */
  readonly pendingStreamEnds?: number;
}
