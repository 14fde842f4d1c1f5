import { shutWrite } from "../../src/rtmp/shut_write.ts";
import { assert, assertEquals } from "../helpers/assert.ts";

/** A connected pair on loopback: `ours` dialled, `theirs` accepted. */
async function connectedPair() {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const [ours, theirs] = await Promise.all([
    Deno.connect({ hostname: "127.0.0.1", port: (listener.addr as Deno.NetAddr).port }),
    listener.accept(),
  ]);
  return { ours, theirs };
}

async function readText(conn: Deno.Conn): Promise<string | null> {
  const buffer = new Uint8Array(64);
  const count = await conn.read(buffer);
  return count === null ? null : new TextDecoder().decode(buffer.subarray(0, count));
}

Deno.test("shutWrite() ends our side after what was written, and we still read what the peer sends", async () => {
  const { ours, theirs } = await connectedPair();
  using _ours = ours;
  using _theirs = theirs;
  await ours.write(new TextEncoder().encode("goodbye"));
  assert(await shutWrite(ours));
  assertEquals(await readText(theirs), "goodbye");
  assertEquals(await readText(theirs), null, "the peer sees our end");
  await theirs.write(new TextEncoder().encode("late ping"));
  assertEquals(await readText(ours), "late ping");
});

Deno.test("shutWrite() resolves false on a connection already closed", async () => {
  const { ours, theirs } = await connectedPair();
  using _theirs = theirs;
  ours.close();
  assertEquals(await shutWrite(ours), false);
});
