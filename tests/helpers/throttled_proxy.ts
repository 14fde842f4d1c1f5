/**
 * A slow peer on purpose, for tests of draining, keeping up and hanging up.
 *
 * @module
 */

import { sleep } from "./process.ts";

/** Which way the proxy slows and pauses: towards its target (a destination), or back from it. */
export type ThrottledDirection = "toTarget" | "fromTarget";

export interface ThrottledProxyOptions {
  /** Default `"toTarget"`: the relay publishes through the proxy to a slow destination. */
  throttled?: ThrottledDirection;
}

/**
 * A TCP proxy in front of `targetPort` that forwards one direction at `bytesPerSecond` at most:
 * by default what a client sends to the target (a destination whose uplink is slower than the
 * stream); with `throttled: "fromTarget"`, what the target sends back (a player on a slow link,
 * the relay being the target). `bytesPerSecond` may change at any time (the link recovers);
 * `paused` stops that direction altogether (a peer that hangs) while the other flows on. The end
 * of either direction, orderly or a reset, is passed on as an orderly end (FIN).
 */
export class ThrottledProxy implements AsyncDisposable {
  readonly #listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  readonly #conns = new Set<Deno.Conn>();
  readonly #serving: Promise<void>;
  readonly #throttled: ThrottledDirection;
  paused = false;
  /** Bytes forwarded in the throttled direction. */
  forwarded = 0;
  /** Bytes forwarded the other way (a destination's pings and acknowledgements). */
  returned = 0;
  /** Connections whose client side has closed and been fully forwarded. */
  finished = 0;

  constructor(
    readonly targetPort: number,
    public bytesPerSecond: number,
    options: ThrottledProxyOptions = {},
  ) {
    this.#throttled = options.throttled ?? "toTarget";
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

  async #session(client: Deno.TcpConn): Promise<void> {
    const target = await Deno.connect({ hostname: "127.0.0.1", port: this.targetPort });
    this.#conns.add(client).add(target);
    const toTarget = this.#forward(client, target, this.#throttled === "toTarget");
    const fromTarget = this.#forward(target, client, this.#throttled === "fromTarget");
    await toTarget;
    this.finished++;
    await fromTarget;
    this.#close(client);
    this.#close(target);
  }

  /** Copies `from` to `to` until `from` ends, then ends `to`'s direction. */
  async #forward(from: Deno.TcpConn, to: Deno.TcpConn, throttled: boolean): Promise<void> {
    // When the bytes forwarded so far may have left at the current rate.
    let nextAt = performance.now();
    const buffer = new Uint8Array(throttled ? 16 * 1024 : 4096);
    for (;;) {
      while (throttled && this.paused) await sleep(100);
      const n = await from.read(buffer).catch(() => null);
      if (n === null) break;
      if ((await to.write(buffer.subarray(0, n)).catch(() => -1)) < 0) break;
      if (!throttled) {
        this.returned += n;
        continue;
      }
      this.forwarded += n;
      nextAt = Math.max(nextAt, performance.now()) + n / this.bytesPerSecond * 1000;
      const ahead = nextAt - performance.now();
      if (ahead > 0) await sleep(ahead);
    }
    await to.closeWrite().catch(() => {}); // already closed or reset: nothing to pass on
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
