/**
 * The HTTP API's listener: `Deno.serve` with a stop that keeps to a deadline. Deno's graceful
 * shutdown waits until every response is written out, and the bytes it holds for a client that
 * stopped reading (a frozen dashboard tab on `/api/events`) never are: the relay's stop would wait
 * past `shutdown_grace_seconds` and exit 1. Past the deadline every connection is closed instead.
 *
 * @module
 */

import { settlesWithin } from "../async.ts";

export interface HttpServerOptions {
  hostname: string;
  port: number;
  onError?: (error: unknown) => Response | Promise<Response>;
}

export type HttpHandler = (
  request: Request,
  info: Deno.ServeHandlerInfo<Deno.NetAddr>,
) => Response | Promise<Response>;

export class HttpServer implements AsyncDisposable {
  readonly #server: Deno.HttpServer<Deno.NetAddr>;
  /** Closes every connection at once: only before `shutdown()` is asked (Deno throws after). */
  readonly #abort = new AbortController();
  /** One per response not yet written out. */
  readonly #responses = new Set<Promise<void>>();
  #stopping: Promise<number> | undefined;

  /** Listens now; throws as `Deno.serve` does (address in use, not available). */
  constructor(options: HttpServerOptions, handler: HttpHandler) {
    this.#server = Deno.serve({
      hostname: options.hostname,
      port: options.port,
      signal: this.#abort.signal,
      onListen: () => {},
      onError: options.onError,
    }, (request, info) => {
      const sent = info.completed.catch(() => {}); // a client gone mid-response: sent all the same
      this.#responses.add(sent);
      void sent.then(() => this.#responses.delete(sent));
      return handler(request, info);
    });
  }

  get addr(): Deno.NetAddr {
    return this.#server.addr;
  }

  /**
   * Stops accepting and lets the responses under way finish until `deadlineAt`
   * (`performance.now()` time); then closes the connections of those still unsent. Resolves with
   * how many were cut off. Safe to call more than once.
   */
  shutdown(deadlineAt: number): Promise<number> {
    this.#stopping ??= (async () => {
      // Requests still arrive while we wait (Deno stops accepting only in `shutdown()`, after which
      // the abort is no longer allowed): wait until none is left unsent, then shut down in the
      // same turn, so nothing new can start between the look and the shutdown.
      while (this.#responses.size > 0) {
        const waitMs = deadlineAt - performance.now();
        if (waitMs <= 0 || !await settlesWithin(Promise.all([...this.#responses]), waitMs)) {
          const cut = this.#responses.size;
          this.#abort.abort();
          await this.#server.finished;
          return cut;
        }
      }
      await this.#server.shutdown();
      return 0;
    })();
    return this.#stopping;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.shutdown(performance.now());
  }
}
