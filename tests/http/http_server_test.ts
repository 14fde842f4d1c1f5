import { deadline } from "../../src/async.ts";
import { HttpServer } from "../../src/http/http_server.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { sleep, waitFor } from "../helpers/process.ts";

/**
 * A server whose `/stream` sends 256 KiB chunks until `ending` aborts (as `/api/events` does until
 * the relay's stop closes its source), and whose `/` answers at once. `queued.bytes` counts what
 * its streams were given to send.
 */
function streamingServer(
  ending: AbortSignal,
  queued: { bytes: number } = { bytes: 0 },
): HttpServer {
  const chunk = new Uint8Array(256 * 1024).fill(0x61);
  return new HttpServer({ hostname: "127.0.0.1", port: 0 }, (request) => {
    if (new URL(request.url).pathname !== "/stream") return new Response("ok");
    let timer: ReturnType<typeof setInterval> | undefined;
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        const end = () => {
          clearInterval(timer);
          controller.close();
        };
        if (ending.aborted) return end();
        ending.addEventListener("abort", end, { once: true });
        timer = setInterval(() => {
          controller.enqueue(chunk);
          queued.bytes += chunk.length;
        }, 5);
      },
      cancel() {
        clearInterval(timer);
      },
    });
    return new Response(body);
  });
}

/** Sends a GET for `path` and reads nothing back: the server's writes fill the socket and wait. */
async function stalledGet(port: number, path: string): Promise<Deno.Conn> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await conn.write(new TextEncoder().encode(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`));
  return conn;
}

Deno.test("HttpServer.shutdown() cuts off a client that stopped reading at the deadline", async () => {
  const ending = new AbortController();
  const queued = { bytes: 0 };
  await using server = streamingServer(ending.signal, queued);
  using _client = await stalledGet(server.addr.port, "/stream");
  // Far more than loopback's socket buffers hold (a few MB): the rest waits in the server.
  await waitFor(() => queued.bytes > 32 * 1024 * 1024, "32 MiB given to the response", 30_000);
  ending.abort(); // the body ends; what the server holds for the client is never taken
  const started = performance.now();
  // Bounded here, so that a stop that waits for the client fails the test instead of hanging it.
  const cut = await deadline(server.shutdown(started + 1_500), 10_000);
  const took = performance.now() - started;
  assertEquals(cut, 1);
  assert(took >= 1_400, `waited ${Math.round(took)} ms: the client had until the deadline`);
  assert(took < 5_000, `took ${Math.round(took)} ms: the deadline did not hold`);
});

Deno.test("HttpServer.shutdown() lets finished and finishing responses end gracefully", async () => {
  const ending = new AbortController();
  await using server = streamingServer(ending.signal);
  const plain = await fetch(`http://127.0.0.1:${server.addr.port}/`);
  assertEquals(await plain.text(), "ok");
  // A reader that keeps reading gets its stream to the end, then the stop is over at once.
  const streaming = await fetch(`http://127.0.0.1:${server.addr.port}/stream`);
  const reading = streaming.body!.pipeTo(new WritableStream());
  await sleep(200);
  ending.abort();
  const started = performance.now();
  assertEquals(await server.shutdown(started + 10_000), 0);
  await reading;
  assert(performance.now() - started < 5_000, "no wait for the deadline");
});
