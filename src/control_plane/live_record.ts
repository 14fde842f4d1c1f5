/**
 * The keys live right now, kept on disk beside the stream-end outbox. A relay that dies without a
 * graceful stop (`kill -9`, the OOM killer, a power cut) tells the control plane nothing, which
 * would think those streams live until their keys publish again; at the next start the keys left
 * here are reported as ended (through the outbox, in order, like any other stream-end).
 *
 * The file holds stream keys: mode 0600, in the state directory (0700). Written whole (temporary
 * file, sync, rename) at each start and end of a stream, which are rare.
 *
 * @module
 */

import { log } from "../log.ts";
import { writeFileAtomic } from "./outbox.ts";

export const LIVE_FILE_NAME = "live_streams.json";

const liveLog = log("control_plane");
const encoder = new TextEncoder();

/** A key found live in the file at start: its stream ended with the relay, at about `since`. */
export interface OrphanedStream {
  key: string;
  /** When the file was last written: the relay was alive then, so the end came after. */
  lastSeenAlive: Date;
}

export class LiveRecord {
  readonly path: string | undefined;
  readonly #keys = new Set<string>();
  /** Writes in order, one at a time. */
  #writes: Promise<void> = Promise.resolve();

  private constructor(path: string | undefined) {
    this.path = path;
  }

  /** A record that keeps nothing on disk (no state directory): crashes then go unreported. */
  static inMemory(): LiveRecord {
    return new LiveRecord(undefined);
  }

  /**
   * Opens the record in `dir`, with the keys an earlier run left live (it died with them) still
   * in it: the caller queues each one's end in the outbox, then `remove`s it (the outbox first, as
   * for any stream's end, so that a crash in between repeats a report rather than losing it).
   * Throws when the directory cannot be used.
   */
  static async open(dir: string): Promise<{ record: LiveRecord; orphaned: OrphanedStream[] }> {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    const path = `${dir}/${LIVE_FILE_NAME}`;
    const orphaned: OrphanedStream[] = [];
    try {
      const [text, info] = await Promise.all([Deno.readTextFile(path), Deno.stat(path)]);
      const lastSeenAlive = info.mtime ?? new Date();
      for (const key of parseKeys(text, path)) orphaned.push({ key, lastSeenAlive });
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    const record = new LiveRecord(path);
    for (const { key } of orphaned) record.#keys.add(key);
    // Written once now: proves the directory takes it before any stream depends on it.
    await record.#save();
    return { record, orphaned };
  }

  get keys(): string[] {
    return [...this.#keys];
  }

  /** The stream of `key` went live. Resolves once that is on disk; never throws (logged). */
  add(key: string): Promise<void> {
    if (this.#keys.has(key)) return this.#writes;
    this.#keys.add(key);
    return this.#queueSave();
  }

  /** The stream of `key` ended (its end is in the outbox). Never throws (logged). */
  remove(key: string): Promise<void> {
    if (!this.#keys.delete(key)) return this.#writes;
    return this.#queueSave();
  }

  /** Waits for the writes under way. */
  async close(): Promise<void> {
    await this.#writes;
  }

  #queueSave(): Promise<void> {
    this.#writes = this.#writes.then(() => this.#save()).catch((error) => {
      liveLog.error("cannot record live streams in {file}: {reason}", {
        file: this.path,
        reason: (error as Error).message,
      });
    });
    return this.#writes;
  }

  async #save(): Promise<void> {
    if (this.path === undefined) return;
    await writeFileAtomic(
      this.path,
      encoder.encode(JSON.stringify({ live: [...this.#keys] }) + "\n"),
    );
  }
}

/** The keys in the file's text; an unreadable file is logged (without its content) and ignored. */
function parseKeys(text: string, path: string): string[] {
  try {
    const value: unknown = JSON.parse(text);
    const live = (value as { live?: unknown })?.live;
    if (Array.isArray(live)) {
      return live.filter((key): key is string => typeof key === "string" && key !== "");
    }
  } catch {
    // reported below
  }
  liveLog.error("unreadable record of live streams, ignored: {file}", { file: path });
  return [];
}
