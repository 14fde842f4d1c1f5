/**
 * What a read and a write on a TCP connection cost a Deno process, for `bench/run.ts` (`io`): the
 * price every relay written for Deno pays per packet before it does any work of its own. Three
 * roles, each its own process so that only the receiver is measured:
 *
 * - `deno run --allow-net=127.0.0.1 io_cost.ts discard`: prints `{"port": N}`, then reads and drops
 *   whatever arrives on any connection.
 * - `… io_cost.ts receive DISCARD_PORT COPIES`: prints `{"port": N}`; reads every connection it
 *   accepts into one 64 KiB buffer and writes what each read returned to COPIES connections of its
 *   own to the discard port, as a relay's tee does. For each line on stdin it prints
 *   `{"count": LINE_NUMBER, "reads": …, "writes": …}` (totals so far).
 * - `… io_cost.ts send PORT CONNECTIONS RATE SIZE`: opens CONNECTIONS connections to PORT and writes
 *   SIZE bytes on each RATE times a second, the connections' turns spread evenly over the period,
 *   then prints `{"started": true}`. Runs until killed.
 *
 * The sender's writes are far enough apart that the receiver has read everything before the next
 * arrives: each of its reads waits for data, as a relay's read of a paced publisher does.
 *
 * @module
 */

const HOST = "127.0.0.1";

function line(value: unknown): void {
  console.log(JSON.stringify(value));
}

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<number> {
  let calls = 0;
  for (let written = 0; written < bytes.length; calls++) {
    written += await conn.write(bytes.subarray(written));
  }
  return calls;
}

async function discard(): Promise<void> {
  using listener = Deno.listen({ hostname: HOST, port: 0 });
  line({ port: listener.addr.port });
  for await (const conn of listener) {
    (async () => {
      const buffer = new Uint8Array(64 * 1024);
      while ((await conn.read(buffer).catch(() => null)) !== null);
      conn.close();
    })();
  }
}

async function receive(discardPort: number, copies: number): Promise<void> {
  let reads = 0;
  let writes = 0;
  using listener = Deno.listen({ hostname: HOST, port: 0 });
  line({ port: listener.addr.port });
  (async () => {
    const decoder = new TextDecoder();
    let text = "";
    let count = 0;
    for await (const chunk of Deno.stdin.readable) {
      text += decoder.decode(chunk, { stream: true });
      for (let end = text.indexOf("\n"); end >= 0; end = text.indexOf("\n")) {
        text = text.slice(end + 1);
        line({ count: ++count, reads, writes });
      }
    }
  })();
  for await (const conn of listener) {
    (async () => {
      conn.setNoDelay(true);
      const outs = await Promise.all(
        Array.from({ length: copies }, () => Deno.connect({ hostname: HOST, port: discardPort })),
      );
      for (const out of outs) out.setNoDelay(true);
      const buffer = new Uint8Array(64 * 1024);
      for (;;) {
        const count = await conn.read(buffer).catch(() => null);
        if (count === null) break;
        reads++;
        const bytes = buffer.subarray(0, count);
        const calls = await Promise.all(outs.map((out) => writeAll(out, bytes)));
        for (const n of calls) writes += n;
      }
      conn.close();
      for (const out of outs) out.close();
    })();
  }
}

async function send(port: number, connections: number, rate: number, size: number): Promise<void> {
  const conns: Deno.TcpConn[] = [];
  for (let i = 0; i < connections; i++) {
    const conn = await Deno.connect({ hostname: HOST, port });
    conn.setNoDelay(true);
    conns.push(conn);
  }
  const payload = new Uint8Array(size).fill(0x2a);
  const periodMs = 1000 / rate;
  const start = performance.now();
  line({ started: true });
  // One loop for all connections: each gets its turn at start + (i / connections + k) × period.
  for (let k = 0;; k++) {
    for (let i = 0; i < connections; i++) {
      const due = start + (k + i / connections) * periodMs;
      const wait = due - performance.now();
      if (wait > 1) await new Promise((resolve) => setTimeout(resolve, wait));
      await writeAll(conns[i]!, payload);
    }
  }
}

if (import.meta.main) {
  const [role, ...rest] = Deno.args;
  const numbers = rest.map(Number);
  if (role === "discard") {
    await discard();
  } else if (role === "receive") {
    await receive(numbers[0]!, numbers[1]!);
  } else if (role === "send") {
    await send(numbers[0]!, numbers[1]!, numbers[2]!, numbers[3]!);
  } else {
    throw new TypeError(`unknown role ${role}: discard, receive or send`);
  }
}
