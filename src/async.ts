/**
 * Timers as promises, cancelled by an `AbortSignal`, in the manner of Deno std `async/`: one place
 * for the `setTimeout` + `Promise.race` dance, so no timer is ever left behind.
 *
 * @module
 */

export interface DelayOptions {
  /** Aborting rejects the promise with the signal's reason and clears the timer. */
  signal?: AbortSignal;
}

/** Longest delay `setTimeout` takes; longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Resolves after `ms` (`Infinity`: never, only the signal ends it); rejects with `signal.reason`
 * when aborted first.
 */
export function delay(ms: number, options: DelayOptions = {}): Promise<void> {
  const { signal } = options;
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = ms === Infinity ? undefined : setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.min(Math.max(0, ms), MAX_TIMER_MS));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** What `deadline` rejects with when the time is up. */
export class DeadlineError extends Error {
  override name = "DeadlineError";
}

/**
 * `promise`'s outcome if it settles within `ms`, else rejects with `DeadlineError`; rejects with
 * `signal.reason` when aborted first. The timer is cleared either way.
 */
export function deadline<T>(
  promise: Promise<T>,
  ms: number,
  options: DelayOptions = {},
): Promise<T> {
  const controller = new AbortController();
  const signal = options.signal === undefined
    ? controller.signal
    : AbortSignal.any([controller.signal, options.signal]);
  const timeout = delay(ms, { signal }).then(() => {
    throw new DeadlineError(`deadline of ${ms} ms passed`);
  });
  return Promise.race([promise, timeout]).finally(() => controller.abort());
}

/** Whether `promise` settles within `ms` (its rejection counts as settled). */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  try {
    await deadline(promise.catch(() => {}), ms);
    return true;
  } catch (error) {
    if (error instanceof DeadlineError) return false;
    throw error;
  }
}
