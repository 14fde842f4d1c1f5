/**
 * The stream-end outbox: a durable FIFO of stream-end reports the control plane has not taken yet,
 * kept in `[streaming] state_dir` so that a long outage or a restart never loses one (a lost report
 * leaves the stream "live" at the control plane for ever: its badge, its billing).
 *
 * The file is JSON Lines, appended to and synced before a write is reported done:
 *
 * ```
 * {"seq":7,"name":"<stream key>","ended_at":"2026-11-25T15:00:00.000Z"}   a report waiting
 * {"ack":7}                                                                 report 7 is done
 * ```
 *
 * An acknowledgement is one short append instead of a rewrite, so draining thousands of reports
 * after an outage costs thousands of small writes, not thousands of copies of the file. The file is
 * rewritten (temporary file, sync, rename, sync of the directory) when it opens, when the queue
 * empties and every {@link COMPACT_AFTER_ACKS} acknowledgements. A crash can leave a torn last line
 * (a partial append); it is dropped on opening, which is exactly "that append never happened".
 *
 * The file holds stream keys, which are secrets: it is created with mode 0600 and keys are never
 * logged (only `redactKey`).
 *
 * @module
 */

import { log } from "../log.ts";
import { streamFields } from "../stream_id.ts";
import { describeFsError, STATE_DIR_HINT } from "../fs_errors.ts";

export const OUTBOX_FILE_NAME = "stream_end_outbox.jsonl";
/** About 10,000 reports of ordinary keys: far beyond any real outage, small on disk and in memory. */
export const DEFAULT_OUTBOX_MAX_BYTES = 1024 * 1024;
/** Acknowledgement lines tolerated before the file is rewritten without them. */
export const COMPACT_AFTER_ACKS = 64;

export interface OutboxEntry {
  /** Position in the queue; increases with every report, also across restarts. */
  readonly seq: number;
  /** The stream key (a secret). */
  readonly name: string;
  readonly endedAt: string;
}

export interface OutboxOptions {
  /** Most bytes of waiting reports kept; a report beyond it is refused with an error line. */
  maxBytes?: number;
}

const outboxLog = log("control_plane", "outbox");
const encoder = new TextEncoder();

function entryLine(entry: OutboxEntry): string {
  return JSON.stringify({ seq: entry.seq, name: entry.name, ended_at: entry.endedAt }) + "\n";
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let written = 0; written < bytes.length;) {
    written += await file.write(bytes.subarray(written));
  }
}

/**
 * Replaces `path` with `bytes` so that a crash leaves the old file or the new, never a part: a
 * temporary file (mode 0600: these files hold stream keys), synced, renamed over it, then the
 * directory synced (the rename itself is durable only then).
 */
export async function writeFileAtomic(path: string, bytes: Uint8Array): Promise<void> {
  const temporary = `${path}.tmp`;
  // A leftover temporary file keeps its own mode when opened again: start from none.
  await Deno.remove(temporary).catch((error) => {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  });
  {
    using file = await Deno.open(temporary, { write: true, createNew: true, mode: 0o600 });
    await writeAll(file, bytes);
    await file.syncData();
  }
  await Deno.rename(temporary, path);
  {
    using directory = await Deno.open(path.slice(0, path.lastIndexOf("/")) || "/", {
      read: true,
    });
    await directory.sync();
  }
}

/** What a file holds: the reports still waiting (in order) and what was wrong with it. */
function parse(text: string): { entries: OutboxEntry[]; torn: boolean; bad: number[] } {
  const lines = text.split("\n");
  // Every complete line ends with "\n"; anything after the last one is a torn append.
  const tail = lines.pop()!;
  const waiting = new Map<number, OutboxEntry>();
  const bad: number[] = [];
  lines.forEach((line, index) => {
    if (line === "") return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      bad.push(index + 1);
      return;
    }
    // Valid JSON need not be an object (`null`, `7`): such a line is as unreadable as any other.
    if (value === null || typeof value !== "object") {
      bad.push(index + 1);
      return;
    }
    const record = value as Record<string, unknown>;
    if (typeof record.ack === "number") {
      waiting.delete(record.ack);
    } else if (
      typeof record.seq === "number" && Number.isSafeInteger(record.seq) &&
      typeof record.name === "string" && record.name !== "" && typeof record.ended_at === "string"
    ) {
      waiting.set(record.seq, { seq: record.seq, name: record.name, endedAt: record.ended_at });
    } else {
      bad.push(index + 1);
    }
  });
  const entries = [...waiting.values()].sort((a, b) => a.seq - b.seq);
  return { entries, torn: tail !== "", bad };
}

export class StreamEndOutbox {
  /** The file, or undefined when the reports are kept in memory only. */
  readonly path: string | undefined;
  readonly maxBytes: number;
  readonly #entries: { entry: OutboxEntry; bytes: number }[] = [];
  #bytes = 0;
  #nextSeq = 1;
  /** Acknowledgement lines in the file since it was last rewritten. */
  #acks = 0;
  #file: Deno.FsFile | undefined;
  /** The file disagrees with memory (a write failed): the next write rewrites it whole. */
  #stale = false;
  #closed = false;
  /** File operations, one after the other, in the order the queue changed. */
  #writes: Promise<void> = Promise.resolve();

  private constructor(path: string | undefined, entries: OutboxEntry[], options: OutboxOptions) {
    this.path = path;
    this.maxBytes = options.maxBytes ?? DEFAULT_OUTBOX_MAX_BYTES;
    for (const entry of entries) {
      const bytes = encoder.encode(entryLine(entry)).length;
      this.#entries.push({ entry, bytes });
      this.#bytes += bytes;
      this.#nextSeq = Math.max(this.#nextSeq, entry.seq + 1);
    }
  }

  /**
   * Opens (creating it if needed) the outbox in `dir`, with what an earlier run left in it. Throws
   * when the directory or file cannot be used.
   */
  static async open(dir: string, options: OutboxOptions = {}): Promise<StreamEndOutbox> {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    const path = `${dir}/${OUTBOX_FILE_NAME}`;
    let text = "";
    try {
      text = await Deno.readTextFile(path);
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
    const { entries, torn, bad } = parse(text);
    if (torn) {
      outboxLog.warn("stream-end outbox: dropped a torn last line (the relay stopped mid-write)", {
        file: path,
      });
    }
    if (bad.length > 0) {
      // The content is not shown: it may hold a key.
      outboxLog.error("stream-end outbox: skipped {count} unreadable line(s)", {
        count: bad.length,
        file: path,
        lines: bad.slice(0, 10).join(","),
      });
    }
    const outbox = new StreamEndOutbox(path, entries, options);
    // Start from a clean file: no torn tail to glue the next append to, no old acknowledgements.
    await outbox.#rewrite();
    if (entries.length > 0) {
      outboxLog.info("stream-end outbox: {count} report(s) from an earlier run wait for delivery", {
        count: entries.length,
        file: path,
      });
    }
    return outbox;
  }

  /** An outbox that keeps reports in memory only: they are lost when the relay stops. */
  static inMemory(options: OutboxOptions = {}): StreamEndOutbox {
    return new StreamEndOutbox(undefined, [], options);
  }

  /** Number of reports waiting. */
  get size(): number {
    return this.#entries.length;
  }

  /** Bytes of the reports waiting (what `maxBytes` bounds). */
  get bytes(): number {
    return this.#bytes;
  }

  /** The oldest report waiting. */
  peek(): OutboxEntry | undefined {
    return this.#entries[0]?.entry;
  }

  /** Every report waiting, oldest first. */
  entries(): OutboxEntry[] {
    return this.#entries.map((item) => item.entry);
  }

  /** True while a report of `name` waits. */
  has(name: string): boolean {
    return this.#entries.some((item) => item.entry.name === name);
  }

  /** True while the report `seq` waits. */
  holds(seq: number): boolean {
    return this.#entries.some((item) => item.entry.seq === seq);
  }

  /**
   * Queues a report of `name`. The queue changes at once (so the order is the order of the calls);
   * the promise resolves once the report is on disk (or a write error was logged: it then stays in
   * memory and the next write retries the file). Resolves to undefined, with an error line, when the
   * outbox is full or closed.
   */
  add(name: string, endedAt = new Date()): Promise<OutboxEntry | undefined> {
    if (this.#closed) {
      outboxLog.error("stream-end outbox closed: the end of this stream is not kept", {
        ...streamFields(name),
      });
      return Promise.resolve(undefined);
    }
    const entry: OutboxEntry = { seq: this.#nextSeq, name, endedAt: endedAt.toISOString() };
    const line = entryLine(entry);
    const bytes = encoder.encode(line).length;
    if (this.#bytes + bytes > this.maxBytes) {
      outboxLog.error(
        "stream-end outbox full ({count} reports, {bytes} of {max} bytes): the end of this stream is not kept and the control plane will think it is still live",
        { ...streamFields(name), count: this.size, bytes: this.#bytes, max: this.maxBytes },
      );
      return Promise.resolve(undefined);
    }
    this.#nextSeq++;
    this.#entries.push({ entry, bytes });
    this.#bytes += bytes;
    return this.#write(() => this.#append(line)).then(() => entry);
  }

  /** Takes the report `seq` off the queue for good (delivered, or refused for good). */
  remove(seq: number): Promise<void> {
    const index = this.#entries.findIndex((item) => item.entry.seq === seq);
    if (index < 0) return Promise.resolve();
    const [removed] = this.#entries.splice(index, 1);
    this.#bytes -= removed!.bytes;
    return this.#write(async () => {
      if (this.#entries.length === 0 || this.#acks + 1 >= COMPACT_AFTER_ACKS) {
        await this.#rewrite();
      } else {
        await this.#append(JSON.stringify({ ack: seq }) + "\n");
        this.#acks++;
      }
    });
  }

  /** Waits for writes under way and closes the file. Waiting reports stay in it for the next start. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#writes;
    this.#file?.close();
    this.#file = undefined;
  }

  #write(operation: () => Promise<void>): Promise<void> {
    // Closed: the file is left as it was (a report still in it is sent again by the next start).
    if (this.path === undefined || this.#closed) return Promise.resolve();
    this.#writes = this.#writes.then(async () => {
      try {
        await operation();
      } catch (error) {
        this.#stale = true;
        outboxLog.error("stream-end outbox write failed (kept in memory, retried): {reason}", {
          file: this.path,
          reason: (error as Error).message,
        });
      }
    });
    return this.#writes;
  }

  async #append(line: string): Promise<void> {
    if (this.#stale || this.#file === undefined) return await this.#rewrite();
    await writeAll(this.#file, encoder.encode(line));
    // The report counts as kept only once it is on the disk, not in the page cache.
    await this.#file.syncData();
  }

  /** Replaces the file by one holding exactly the reports waiting, atomically. */
  async #rewrite(): Promise<void> {
    const path = this.path!;
    this.#file?.close();
    this.#file = undefined;
    await writeFileAtomic(
      path,
      encoder.encode(this.#entries.map((item) => entryLine(item.entry)).join("")),
    );
    this.#acks = 0;
    this.#stale = false;
    this.#file = await Deno.open(path, { append: true });
  }
}

/**
 * The outbox in `dir`, or, when the disk refuses (no permission, read-only file system), one in
 * memory with an error line saying what is lost: reports then survive an outage but not a restart.
 */
export async function openOutbox(
  dir: string,
  options: OutboxOptions = {},
): Promise<StreamEndOutbox> {
  try {
    return await StreamEndOutbox.open(dir, options);
  } catch (error) {
    outboxLog.error(
      "stream-end outbox unavailable in {dir} ({reason}): reports not yet delivered are lost on restart",
      { dir, reason: describeFsError(error, "write", STATE_DIR_HINT) },
    );
    return StreamEndOutbox.inMemory(options);
  }
}
