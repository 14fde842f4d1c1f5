import { assertEquals } from "../helpers/assert.ts";
import { ProcessPool } from "../../src/relay/process_pool.ts";
import { deadline, DeadlineError, delay, settlesWithin } from "../../src/async.ts";
import { waitFor } from "../helpers/process.ts";

Deno.test("ProcessPool counts its children, reaps them and kills them all", async () => {
  const pool = new ProcessPool();
  const a = pool.spawn("cat", [], { stdin: "piped" });
  const b = pool.spawn("cat", [], { stdin: "piped" });
  assertEquals(pool.size, 2);
  await a.stdin.close();
  await a.status;
  await waitFor(() => pool.size === 1, "the exited child reaped");
  pool.killAll();
  const status = await deadline(b.status, 10_000);
  assertEquals(status.signal, "SIGKILL");
  await b.stdin.abort().catch(() => {});
  await waitFor(() => pool.size === 0, "every child reaped");
  assertEquals(pool.signal(b, "SIGTERM"), false);
});

Deno.test("ProcessPool.terminate() ends a child with SIGTERM and reaps it", async () => {
  const pool = new ProcessPool();
  const child = pool.spawn("cat", [], { stdin: "piped" });
  let killed = false;
  const status = await pool.terminate(child, 10_000, () => killed = true);
  assertEquals(status.signal, "SIGTERM");
  assertEquals(killed, false);
  await child.stdin.abort().catch(() => {});
});

Deno.test("delay() and deadline() honour the time and the signal", async () => {
  const controller = new AbortController();
  const waiting = delay(60_000, { signal: controller.signal });
  controller.abort(new Error("woken"));
  let reason = "";
  await waiting.catch((error: Error) => reason = error.message);
  assertEquals(reason, "woken");
  assertEquals(await deadline(Promise.resolve(7), 60_000), 7);
  let timedOut = false;
  await deadline(new Promise(() => {}), 10).catch((error) => {
    timedOut = error instanceof DeadlineError;
  });
  assertEquals(timedOut, true);
  assertEquals(await settlesWithin(new Promise(() => {}), 10), false);
  assertEquals(await settlesWithin(Promise.reject(new Error("x")), 1_000), true);
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
