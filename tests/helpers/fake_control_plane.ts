/**
 * A fake Neustream control plane: a small Hono app on a loopback port whose answers each test
 * sets. It stands for an outside party; the client under test talks to it over real HTTP.
 *
 * @module
 */

import { Hono } from "hono";

export interface FakeControlPlaneBehaviour {
  /** Answer to POST /api/auth/stream: a JSON body and status, raw text, or a delay first. */
  auth: (name: string) => { status?: number; body?: unknown; text?: string; delayMs?: number };
  forwarding: (key: string) => { status?: number; body?: unknown; delayMs?: number };
  /** Answer to POST /api/auth/stream-end (status only). */
  streamEnd: (name: string) => number;
  /** Holds every stream-end answer this long first (a control plane that hangs). */
  streamEndDelayMs?: number;
}

export class FakeControlPlane implements AsyncDisposable {
  readonly authCalls: string[] = [];
  readonly forwardingCalls: string[] = [];
  /** Names whose stream-end was accepted (2xx), in order. */
  readonly streamEnds: string[] = [];
  readonly streamEndAttempts: string[] = [];
  /** Every call taken, in arrival order: `auth <name>`, `forwarding <key>`, `stream-end <name>`. */
  readonly calls: string[] = [];
  behaviour: FakeControlPlaneBehaviour;
  /** Delayed answers still waiting; released at shutdown so the server can close. */
  #delays = new Map<ReturnType<typeof setTimeout>, () => void>();
  readonly #app = new Hono();
  readonly #port: number;
  #server: Deno.HttpServer<Deno.NetAddr> | undefined;

  constructor(behaviour: Partial<FakeControlPlaneBehaviour> = {}, port = 0) {
    this.behaviour = {
      auth: () => ({ body: { code: 0, data: { forward: true } } }),
      forwarding: () => ({ body: { destinations: [] } }),
      streamEnd: () => 200,
      ...behaviour,
    };
    const app = this.#app;
    app.post("/api/auth/stream", async (c) => {
      const { name } = await c.req.json<{ name: string }>();
      this.authCalls.push(name);
      this.calls.push(`auth ${name}`);
      const answer = this.behaviour.auth(name);
      await this.#delay(answer.delayMs);
      if (answer.text !== undefined) return c.text(answer.text, (answer.status ?? 200) as 200);
      return c.json(answer.body ?? {}, (answer.status ?? 200) as 200);
    });
    app.get("/api/streams/forwarding/:key", async (c) => {
      const key = c.req.param("key");
      this.forwardingCalls.push(key);
      this.calls.push(`forwarding ${key}`);
      const answer = this.behaviour.forwarding(key);
      await this.#delay(answer.delayMs);
      return c.json(answer.body ?? {}, (answer.status ?? 200) as 200);
    });
    app.post("/api/auth/stream-end", async (c) => {
      const { name } = await c.req.json<{ name: string }>();
      this.streamEndAttempts.push(name);
      await this.#delay(this.behaviour.streamEndDelayMs);
      const status = this.behaviour.streamEnd(name);
      if (status >= 200 && status < 300) {
        this.streamEnds.push(name);
        this.calls.push(`stream-end ${name}`);
      }
      return c.json({ code: status < 300 ? 0 : 1 }, status as 200);
    });
    this.#server = this.#listen(port);
    this.#port = this.#server.addr.port;
  }
  /** Holds an answer `ms` (none when undefined); released at once when the fake stops. */
  async #delay(ms: number | undefined): Promise<void> {
    if (!ms) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.#delays.delete(timer);
        resolve();
      }, ms);
      this.#delays.set(timer, resolve);
    });
  }

  #listen(port: number): Deno.HttpServer<Deno.NetAddr> {
    return Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, this.#app.fetch);
  }

  get server(): Deno.HttpServer<Deno.NetAddr> {
    if (this.#server === undefined) throw new Error("the fake control plane is stopped");
    return this.#server;
  }

  get url(): string {
    return `http://127.0.0.1:${this.#port}`;
  }

  /** An outage: the port stops answering (connections refused) until `start()`. */
  async stop(): Promise<void> {
    for (const [timer, release] of this.#delays) {
      clearTimeout(timer);
      release();
    }
    await this.#server?.shutdown();
    this.#server = undefined;
  }

  /** Back after `stop()`, on the same address, with the same records and behaviour. */
  start(): void {
    this.#server ??= this.#listen(this.#port);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}
