/**
 * Timers that can be cancelled, in the manner of Deno's std `async/` (`delay`, `deadline`), which
 * cannot be installed here (JSR is unreachable). Each clears its timer as soon as it settles, so a
 * finished wait leaves no timer behind to keep the process (or a test's sanitizer) busy.
 *
 * @module
 */

export interface DelayOptions {
  /** Cancels the wait: the promise rejects with `signal.reason`. */
  signal?: AbortSignal;
}

/** Longest delay `setTimeout` takes; a longer one would fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Resolves after `ms` milliseconds (a negative or NaN `ms` counts as 0; `Infinity`: never, only
 * the signal ends the wait). Rejects with `signal.reason` (an `AbortError` DOMException unless
 * the caller gave another) when `signal` aborts first.
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
    }, Math.min(Math.max(0, ms) || 0, MAX_TIMER_MS));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

export interface DeadlineOptions {
  /** Gives up early: the promise rejects with `signal.reason`. */
  signal?: AbortSignal;
}

/**
 * Settles like `promise` if it settles within `ms` milliseconds; otherwise rejects with a
 * `DOMException` named `"TimeoutError"`. Rejects with `signal.reason` if `signal` aborts first.
 * `promise` itself is not cancelled (a promise cannot be): the caller stops the work behind it.
 * An infinite `ms` never times out.
 */
export function deadline<T>(
  promise: Promise<T>,
  ms: number,
  options: DeadlineOptions = {},
): Promise<T> {
  const { signal } = options;
  if (signal?.aborted) return Promise.reject(signal.reason);
  const { promise: bounded, resolve, reject } = Promise.withResolvers<T>();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const onAbort = () => {
    finish();
    reject(signal!.reason);
  };
  const finish = () => {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  };
  if (Number.isFinite(ms)) {
    timer = setTimeout(() => {
      finish();
      reject(new DOMException("Signal timed out.", "TimeoutError"));
    }, Math.max(0, ms) || 0);
  }
  signal?.addEventListener("abort", onAbort, { once: true });
  promise.then(
    (value) => {
      finish();
      resolve(value);
    },
    (error) => {
      finish();
      reject(error);
    },
  );
  return bounded;
}

/** Whether `error` is the rejection of a `deadline` that ran out. */
export function isTimeout(error: unknown): boolean {
  return error instanceof DOMException && error.name === "TimeoutError";
}

/** Whether `promise` settles within `ms` (a rejection counts as settled). */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  try {
    await deadline(promise.then(() => {}, () => {}), ms);
    return true;
  } catch (error) {
    if (isTimeout(error)) return false;
    throw error;
  }
}
