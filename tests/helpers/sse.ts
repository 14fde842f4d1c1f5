/**
 * A Server-Sent Events reader for tests: parses `event:`/`data:` blocks from a response body and
 * waits for the event that matches.
 *
 * @module
 */

import type { RelayEvent } from "../../src/http/events.ts";

export class SseReader implements AsyncDisposable {
  readonly events: RelayEvent[] = [];
  /** Comment lines (heartbeats) seen. */
  comments = 0;
  readonly #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";
  #ended = false;

  constructor(response: Response) {
    if (response.body === null) throw new TypeError("the response has no body");
    this.#reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Reads until an event satisfies `match` (looking at those read before too), or times out. */
  async next<T extends RelayEvent>(
    match: (event: RelayEvent) => event is T,
    what: string,
    timeoutMs?: number,
  ): Promise<T>;
  async next(match: (event: RelayEvent) => boolean, what: string, timeoutMs?: number): Promise<
    RelayEvent
  >;
  async next(
    match: (event: RelayEvent) => boolean,
    what: string,
    timeoutMs = 15_000,
  ): Promise<RelayEvent> {
    const found = this.events.find(match);
    if (found) return found;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)),
        timeoutMs,
      );
    });
    try {
      for (;;) {
        const chunk = await Promise.race([this.#reader.read(), deadline]);
        if (chunk.done) {
          this.#ended = true;
          throw new Error(`the event stream ended before ${what}`);
        }
        for (const event of this.#parse(chunk.value)) {
          this.events.push(event);
          if (match(event)) return event;
        }
      }
    } finally {
      clearTimeout(timer);
    }
  }

  /** Reads until the server ends the stream. */
  async end(timeoutMs = 15_000): Promise<void> {
    await this.next(() => false, "the end", timeoutMs).catch((error: Error) => {
      if (!this.#ended) throw error;
    });
  }

  #parse(text: string): RelayEvent[] {
    this.#buffer += text;
    const out: RelayEvent[] = [];
    let end;
    while ((end = this.#buffer.indexOf("\n\n")) >= 0) {
      const block = this.#buffer.slice(0, end);
      this.#buffer = this.#buffer.slice(end + 2);
      const data = block.split("\n").filter((line) => line.startsWith("data: "));
      if (block.startsWith(":")) this.comments++;
      if (data.length > 0) {
        out.push(JSON.parse(data.map((line) => line.slice(6)).join("\n")) as RelayEvent);
      }
    }
    return out;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.#ended) await this.#reader.cancel();
  }
}
