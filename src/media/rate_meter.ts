/**
 * Current bitrate from a byte count: bytes over the last full window of about two seconds.
 *
 * @module
 */

export class RateMeter {
  readonly #windowMs: number;
  #windowStart: number;
  #windowBytes = 0;
  #bitsPerSecond = 0;
  #lastAdd: number;

  constructor(windowMs = 2_000, now = performance.now()) {
    this.#windowMs = windowMs;
    this.#windowStart = now;
    this.#lastAdd = now;
  }

  add(bytes: number, now = performance.now()): void {
    this.#roll(now);
    this.#windowBytes += bytes;
    this.#lastAdd = now;
  }

  /** Bits per second over the last complete window; 0 once nothing has arrived for two windows. */
  bitsPerSecond(now = performance.now()): number {
    this.#roll(now);
    if (now - this.#lastAdd > 2 * this.#windowMs) return 0;
    return this.#bitsPerSecond;
  }

  #roll(now: number): void {
    const elapsed = now - this.#windowStart;
    if (elapsed < this.#windowMs) return;
    this.#bitsPerSecond = (this.#windowBytes * 8 * 1000) / elapsed;
    this.#windowBytes = 0;
    this.#windowStart = now;
  }
}
