/**
 * A slow destination on purpose, for tests of draining and keeping up.
 *
 * @module
 */

import { sleep } from "./process.ts";

/**
 * A TCP proxy in front of a sink that forwards what the relay sends at `bytesPerSecond` at most: a
 * destination whose uplink is slower than the stream. `bytesPerSecond` may change at any time (the
 * uplink recovers); `paused` stops forwarding altogether (a destination that hangs).
 */
export class ThrottledProxy implements AsyncDisposable {
  readonly #listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  readonly #conns = new Set<Deno.Conn>();
  readonly #serving: Promise<void>;
  paused = false;
  /** Bytes forwarded to the sink. */
  forwarded = 0;
  /** Connections whose client side has closed and been fully forwarded. */
  finished = 0;

  constructor(readonly targetPort: number, public bytesPerSecond: number) {
    this.#serving = (async () => {
      const sessions: Promise<void>[] = [];
      try {
        for await (const client of this.#listener) sessions.push(this.#session(client));
      } catch (error) {
        if (!(error instanceof Deno.errors.BadResource)) throw error;
      }
      await Promise.all(sessions);
    })();
  }

  get port(): number {
    return (this.#listener.addr as Deno.NetAddr).port;
  }

  async #session(client: Deno.Conn): Promise<void> {
    const upstream = await Deno.connect({ hostname: "127.0.0.1", port: this.targetPort });
    this.#conns.add(client).add(upstream);
    // When the bytes forwarded so far may have left at the current rate.
    let nextAt = performance.now();
    const toSink = (async () => {
      const buffer = new Uint8Array(16 * 1024);
      for (;;) {
        while (this.paused) await sleep(100);
        const n = await client.read(buffer).catch(() => null);
        if (n === null) break;
        if ((await upstream.write(buffer.subarray(0, n)).catch(() => -1)) < 0) break;
        this.forwarded += n;
        nextAt = Math.max(nextAt, performance.now()) + n / this.bytesPerSecond * 1000;
        const ahead = nextAt - performance.now();
        if (ahead > 0) await sleep(ahead);
      }
      this.#close(upstream);
    })();
    const toClient = (async () => {
      const buffer = new Uint8Array(4096);
      for (;;) {
        const n = await upstream.read(buffer).catch(() => null);
        if (n === null) break;
        if ((await client.write(buffer.subarray(0, n)).catch(() => -1)) < 0) break;
      }
    })();
    await toSink;
    this.finished++;
    await toClient;
    this.#close(client);
  }

  #close(conn: Deno.Conn): void {
    if (!this.#conns.delete(conn)) return;
    try {
      conn.close();
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.paused = false;
    this.#listener.close();
    for (const conn of [...this.#conns]) this.#close(conn);
    await this.#serving;
  }
}
