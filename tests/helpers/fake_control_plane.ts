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
  forwarding: (key: string) => { status?: number; body?: unknown };
  /** Answer to POST /api/auth/stream-end (status only). */
  streamEnd: (name: string) => number;
}

export class FakeControlPlane implements AsyncDisposable {
  readonly server: Deno.HttpServer<Deno.NetAddr>;
  readonly authCalls: string[] = [];
  readonly forwardingCalls: string[] = [];
  /** Names whose stream-end was accepted (2xx), in order. */
  readonly streamEnds: string[] = [];
  readonly streamEndAttempts: string[] = [];
  behaviour: FakeControlPlaneBehaviour;
  /** Delayed answers still waiting; released at shutdown so the server can close. */
  #delays = new Map<ReturnType<typeof setTimeout>, () => void>();

  constructor(behaviour: Partial<FakeControlPlaneBehaviour> = {}, port = 0) {
    this.behaviour = {
      auth: () => ({ body: { code: 0, data: { forward: true } } }),
      forwarding: () => ({ body: { destinations: [] } }),
      streamEnd: () => 200,
      ...behaviour,
    };
    const app = new Hono();
    app.post("/api/auth/stream", async (c) => {
      const { name } = await c.req.json<{ name: string }>();
      this.authCalls.push(name);
      const answer = this.behaviour.auth(name);
      if (answer.delayMs) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            this.#delays.delete(timer);
            resolve();
          }, answer.delayMs);
          this.#delays.set(timer, resolve);
        });
      }
      if (answer.text !== undefined) return c.text(answer.text, (answer.status ?? 200) as 200);
      return c.json(answer.body ?? {}, (answer.status ?? 200) as 200);
    });
    app.get("/api/streams/forwarding/:key", (c) => {
      const key = c.req.param("key");
      this.forwardingCalls.push(key);
      const answer = this.behaviour.forwarding(key);
      return c.json(answer.body ?? {}, (answer.status ?? 200) as 200);
    });
    app.post("/api/auth/stream-end", async (c) => {
      const { name } = await c.req.json<{ name: string }>();
      this.streamEndAttempts.push(name);
      const status = this.behaviour.streamEnd(name);
      if (status >= 200 && status < 300) this.streamEnds.push(name);
      return c.json({ code: status < 300 ? 0 : 1 }, status as 200);
    });
    this.server = Deno.serve({ hostname: "127.0.0.1", port, onListen: () => {} }, app.fetch);
  }

  get url(): string {
    return `http://127.0.0.1:${this.server.addr.port}`;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const [timer, release] of this.#delays) {
      clearTimeout(timer);
      release();
    }
    await this.server.shutdown();
  }
}
