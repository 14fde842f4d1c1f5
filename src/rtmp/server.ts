/**
 * The RTMP listener: accepts TCP connections on `Deno.listen` and runs an `RtmpSession` for each.
 *
 * @module
 */

import type { StreamHub } from "../media/live_stream.ts";
import { settlesWithin } from "../async.ts";
import { log } from "../log.ts";
import type { PublishAuthorizer } from "./publish_authorizer.ts";
import { RtmpSession, type SessionOptions } from "./session.ts";

const serverLog = log("rtmp");

export interface RtmpServerOptions extends SessionOptions {
  hostname: string;
  port: number;
}

export class RtmpServer implements AsyncDisposable {
  readonly #listener: Deno.TcpListener;
  readonly #sessions = new Set<RtmpSession>();
  readonly #running = new Set<Promise<void>>();
  readonly #acceptLoop: Promise<void>;
  #nextSessionId = 1;
  #closing = false;
  #serving = true;
  totalConnections = 0;
  /** Bytes of connections that have ended; live ones are added by `bytesIn`/`bytesOut`. */
  #closedBytesIn = 0;
  #closedBytesOut = 0;

  /** Binds the port at once (so a port in use fails here) and starts accepting. */
  constructor(
    options: RtmpServerOptions,
    hub: StreamHub,
    authorize: PublishAuthorizer,
  ) {
    this.#listener = Deno.listen({
      hostname: options.hostname,
      port: options.port,
      transport: "tcp",
    });
    this.#acceptLoop = this.#accept({ hub, options, authorize });
  }

  get port(): number {
    return (this.#listener.addr as Deno.NetAddr).port;
  }

  /** False once the listener has stopped, by `close()` or by an accept error. */
  get serving(): boolean {
    return this.#serving;
  }

  get sessions(): ReadonlySet<RtmpSession> {
    return this.#sessions;
  }

  /** Every byte received over RTMP since start. */
  get bytesIn(): number {
    let total = this.#closedBytesIn;
    for (const session of this.#sessions) total += session.bytesIn;
    return total;
  }

  /** Every byte sent over RTMP since start. */
  get bytesOut(): number {
    let total = this.#closedBytesOut;
    for (const session of this.#sessions) total += session.bytesOut;
    return total;
  }

  async #accept(deps: ConstructorParameters<typeof RtmpSession>[2]): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        if (this.#closing) {
          conn.close();
          continue;
        }
        const session = new RtmpSession(conn, this.#nextSessionId++, deps);
        this.totalConnections++;
        this.#sessions.add(session);
        const running = session.run().finally(() => {
          this.#closedBytesIn += session.bytesIn;
          this.#closedBytesOut += session.bytesOut;
          this.#sessions.delete(session);
          this.#running.delete(running);
        });
        this.#running.add(running);
      }
    } catch (error) {
      if (!this.#closing) {
        serverLog.error("RTMP listener failed: {reason}", { reason: (error as Error).message });
      }
    } finally {
      this.#serving = false;
    }
  }

  /**
   * Stops accepting and closes every connection; resolves when all sessions have ended. Sessions
   * already saying their last (a player taking the end of its stream) are given their own
   * timeouts, unless `forceAfterMs` passes first: then whatever is left is closed outright.
   */
  async close(
    reason = "server shutting down",
    options: { forceAfterMs?: number } = {},
  ): Promise<void> {
    if (!this.#closing) {
      this.#closing = true;
      try {
        this.#listener.close();
      } catch (error) {
        if (!(error instanceof Deno.errors.BadResource)) throw error;
      }
    }
    await this.#acceptLoop;
    for (const session of this.#sessions) session.close(reason);
    const ended = Promise.all(this.#running);
    const { forceAfterMs } = options;
    if (forceAfterMs !== undefined && !await settlesWithin(ended, forceAfterMs)) {
      for (const session of this.#sessions) session.close(reason, { now: true });
    }
    await ended;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
