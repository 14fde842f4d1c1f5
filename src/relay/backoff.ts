/**
 * Restart delays for a destination: 1 s doubling to 30 s, back to 1 s after a minute of health.
 *
 * @module
 */

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** A run at least this long counts as healthy and resets the delay. */
  resetAfterMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = {
  initialMs: 1_000,
  maxMs: 30_000,
  resetAfterMs: 60_000,
};

export class Backoff {
  readonly options: BackoffOptions;
  #next: number;

  constructor(options: BackoffOptions = DEFAULT_BACKOFF) {
    this.options = options;
    this.#next = options.initialMs;
  }

  /** Starts over from `initialMs` (an operator's restart: a fresh start, not one more failure). */
  reset(): void {
    this.#next = this.options.initialMs;
  }

  /** The delay before the next attempt, given how long the last run lasted. */
  next(lastRunMs: number): number {
    if (lastRunMs >= this.options.resetAfterMs) this.#next = this.options.initialMs;
    const delay = this.#next;
    this.#next = Math.min(this.#next * 2, this.options.maxMs);
    return delay;
  }
}
