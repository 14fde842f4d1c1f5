import { assertEquals } from "../helpers/assert.ts";
import { ProcessPool } from "../../src/relay/process_pool.ts";
import { deadline } from "../../src/async.ts";
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
