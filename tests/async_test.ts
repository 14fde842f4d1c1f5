import { deadline, delay, isTimeout, settlesWithin } from "../src/async.ts";
import { assert, assertEquals } from "./helpers/assert.ts";

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error("expected a rejection");
}

Deno.test("delay() resolves after its time", async () => {
  const start = performance.now();
  await delay(30);
  assert(performance.now() - start >= 29, "waited");
  await delay(-5); // counts as 0
});

Deno.test("delay() rejects with the signal's reason on abort and leaves no timer", async () => {
  const controller = new AbortController();
  const waiting = delay(60_000, { signal: controller.signal });
  controller.abort();
  const error = await rejection(waiting);
  assert(error instanceof DOMException && error.name === "AbortError", String(error));

  const reason = new Error("stopping");
  assertEquals(await rejection(delay(10, { signal: AbortSignal.abort(reason) })), reason);
});

Deno.test("deadline() settles like its promise when in time", async () => {
  assertEquals(await deadline(Promise.resolve(7), 60_000), 7);
  const failure = new Error("failed");
  assertEquals(await rejection(deadline(Promise.reject(failure), 60_000)), failure);
  assertEquals(
    await deadline(delay(5).then(() => "late but in time"), Infinity),
    "late but in time",
  );
});

Deno.test("deadline() rejects with a TimeoutError when the time runs out", async () => {
  const never = new Promise<never>(() => {});
  const error = await rejection(deadline(never, 10));
  assert(isTimeout(error), String(error));
  assert(!isTimeout(new Error("other")));
  // A promise that rejects after its deadline passed is handled (no unhandled rejection).
  const { promise, reject } = Promise.withResolvers<void>();
  assert(isTimeout(await rejection(deadline(promise, 1))));
  reject(new Error("too late"));
  await delay(0);
});

Deno.test("deadline() rejects with the signal's reason on abort and leaves no timer", async () => {
  const controller = new AbortController();
  const { promise, resolve } = Promise.withResolvers<number>();
  const bounded = deadline(promise, 60_000, { signal: controller.signal });
  controller.abort();
  const error = await rejection(bounded);
  assert(error instanceof DOMException && error.name === "AbortError", String(error));
  resolve(1);
  const reason = new Error("stopping");
  assertEquals(
    await rejection(deadline(promise, 60_000, { signal: AbortSignal.abort(reason) })),
    reason,
  );
});

Deno.test("delay(Infinity) waits for its signal alone", async () => {
  const controller = new AbortController();
  let done = false;
  const waiting = delay(Infinity, { signal: controller.signal }).catch(() => done = true);
  assertEquals(await settlesWithin(waiting, 100), false);
  assertEquals(done, false);
  controller.abort();
  await waiting;
  assertEquals(done, true);
});

Deno.test("settlesWithin() tells whether a promise settles in time, rejections included", async () => {
  assertEquals(await settlesWithin(new Promise(() => {}), 10), false);
  assertEquals(await settlesWithin(Promise.reject(new Error("x")), 1_000), true);
  assertEquals(await settlesWithin(Promise.resolve(1), 1_000), true);
});
