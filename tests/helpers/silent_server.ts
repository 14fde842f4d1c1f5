/**
 * Peers that accept a connection and then say nothing, as a stuck platform does:
 * `SilentRtmpServer` completes the handshake and never answers (it reads and discards, so the
 * client sees silence, not a full socket); `StalledSink` never even reads.
 */

import { createServerHandshake, HANDSHAKE_SIZE } from "../../src/rtmp/handshake.ts";

export class SilentRtmpServer implements AsyncDisposable {
  readonly #listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  readonly #conns = new Set<Deno.Conn>();
  readonly #serving: Promise<void>;
  /** Connections that completed the handshake. */
  handshakes = 0;

  constructor() {
    this.#serving = this.#serve();
  }

  get port(): number {
    return (this.#listener.addr as Deno.NetAddr).port;
  }

  async #serve(): Promise<void> {
    const sessions: Promise<void>[] = [];
    try {
      for await (const conn of this.#listener) {
        this.#conns.add(conn);
        sessions.push(this.#session(conn));
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
    await Promise.all(sessions);
  }

  async #session(conn: Deno.Conn): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      const c0c1 = await readExactly(conn, buffer, 1 + HANDSHAKE_SIZE);
      await conn.write(createServerHandshake(c0c1));
      await readExactly(conn, buffer, HANDSHAKE_SIZE);
      this.handshakes++;
      while (await conn.read(buffer) !== null) {
        // say nothing
      }
    } catch {
      // the client gave up (reset) or we closed it: either ends the session
    } finally {
      this.#close(conn);
    }
  }

  #close(conn: Deno.Conn): void {
    if (!this.#conns.delete(conn)) return;
    conn.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    for (const conn of [...this.#conns]) this.#close(conn);
    await this.#serving;
  }
}

async function readExactly(conn: Deno.Conn, buffer: Uint8Array, count: number) {
  const out = new Uint8Array(count);
  let filled = 0;
  while (filled < count) {
    const n = await conn.read(buffer.subarray(0, count - filled));
    if (n === null) throw new Error("closed during the handshake");
    out.set(buffer.subarray(0, n), filled);
    filled += n;
  }
  return out;
}

/** A TCP listener that accepts connections and never reads from them: a stalled platform. */
export class StalledSink implements AsyncDisposable {
  readonly #listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  readonly #conns: Deno.Conn[] = [];
  readonly #accepting: Promise<void>;

  constructor() {
    this.#accepting = (async () => {
      try {
        for await (const conn of this.#listener) this.#conns.push(conn);
      } catch (error) {
        if (!(error instanceof Deno.errors.BadResource)) throw error;
      }
    })();
  }

  get url(): string {
    return `rtmp://127.0.0.1:${(this.#listener.addr as Deno.NetAddr).port}/live`;
  }

  get accepted(): number {
    return this.#conns.length;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.#listener.close();
    await this.#accepting;
    for (const conn of this.#conns) {
      try {
        conn.close();
      } catch (error) {
        if (!(error instanceof Deno.errors.BadResource)) throw error;
      }
    }
  }
}
