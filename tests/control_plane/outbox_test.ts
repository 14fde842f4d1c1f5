/**
 * The stream-end outbox on a real file system: order and exactly-once across reopening, a torn last
 * line, the size bound, the file's mode, and the fallback when the disk refuses.
 */

import {
  COMPACT_AFTER_ACKS,
  openOutbox,
  OUTBOX_FILE_NAME,
  StreamEndOutbox,
} from "../../src/control_plane/outbox.ts";
import { type LogRecord, setupLogging, textFormatter } from "../../src/log.ts";
import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { tempDir } from "../helpers/process.ts";

async function captureLogs(): Promise<LogRecord[]> {
  const logs: LogRecord[] = [];
  await setupLogging({
    level: "debug",
    format: "text",
    stderr: Deno.env.get("TEST_LOG") === "1",
    extraSink: (record) => {
      logs.push(record);
    },
  });
  return logs;
}

const names = (outbox: StreamEndOutbox) => outbox.entries().map((entry) => entry.name);

Deno.test("StreamEndOutbox keeps reports in order across a reopen and never brings back a removed one", async () => {
  await using dir = await tempDir();
  const first = await StreamEndOutbox.open(dir.path);
  const a = await first.add("outbox-key-a");
  const b = await first.add("outbox-key-b");
  const c = await first.add("outbox-key-a"); // the same key again: a second stream of it
  assert(a && b && c);
  assertEquals(names(first), ["outbox-key-a", "outbox-key-b", "outbox-key-a"]);
  await first.remove(a.seq);
  await first.close();

  // As after a restart (or a crash: every change was synced before it resolved).
  const second = await StreamEndOutbox.open(dir.path);
  assertEquals(second.entries(), [b, c]);
  const d = await second.add("outbox-key-d");
  assert(d && d.seq > c.seq, "numbering continues after the restart");
  await second.remove(b.seq);
  await second.close();

  const third = await StreamEndOutbox.open(dir.path);
  assertEquals(names(third), ["outbox-key-a", "outbox-key-d"]);
  assertEquals(third.peek(), c);
  await third.remove(c.seq);
  await third.remove(d.seq);
  await third.close();
  const empty = await StreamEndOutbox.open(dir.path);
  assertEquals(empty.size, 0);
  await empty.close();
  assertEquals(await Deno.readTextFile(`${dir.path}/${OUTBOX_FILE_NAME}`), "");
});

Deno.test("StreamEndOutbox removes each report once, through many acknowledgements and compactions", async () => {
  await using dir = await tempDir();
  const outbox = await StreamEndOutbox.open(dir.path);
  const count = COMPACT_AFTER_ACKS * 2 + 10;
  const added = [];
  for (let i = 0; i < count; i++) added.push((await outbox.add(`many-key-${i}`))!);
  // Deliver all but the last five, oldest first, as the delivery loop does.
  for (const entry of added.slice(0, -5)) await outbox.remove(entry.seq);
  const lines = (await Deno.readTextFile(`${dir.path}/${OUTBOX_FILE_NAME}`)).split("\n").length;
  assert(lines < COMPACT_AFTER_ACKS + 10, `the file was compacted (${lines} lines)`);
  await outbox.close();
  const reopened = await StreamEndOutbox.open(dir.path);
  assertEquals(reopened.entries(), added.slice(-5));
  await reopened.close();
});

Deno.test("StreamEndOutbox.open() drops a torn last line and keeps every whole one", async () => {
  await using dir = await tempDir();
  const logs = await captureLogs();
  const path = `${dir.path}/${OUTBOX_FILE_NAME}`;
  await Deno.writeTextFile(
    path,
    '{"seq":1,"name":"torn-key-one","ended_at":"2026-11-25T10:00:00.000Z"}\n' +
      '{"seq":2,"name":"torn-key-two","ended_at":"2026-11-25T10:00:01.000Z"}\n' +
      '{"ack":1}\n' +
      '{"seq":3,"name":"torn-key-thr',
    { mode: 0o600 },
  );
  const outbox = await StreamEndOutbox.open(dir.path);
  assertEquals(names(outbox), ["torn-key-two"]);
  // The next append must not be glued to the torn bytes.
  await outbox.add("torn-key-four");
  await outbox.close();
  const reopened = await StreamEndOutbox.open(dir.path);
  assertEquals(names(reopened), ["torn-key-two", "torn-key-four"]);
  await reopened.close();
  const text = logs.map(textFormatter).join("");
  assertMatch(text, /dropped a torn last line/);
  assert(!text.includes("torn-key"), "no key in the logs");
});

Deno.test("StreamEndOutbox.open() skips lines that are JSON but not a record, and keeps the rest", async () => {
  await using dir = await tempDir();
  await Deno.writeTextFile(
    `${dir.path}/${OUTBOX_FILE_NAME}`,
    '{"seq":1,"name":"null-key-one","ended_at":"2026-11-25T10:00:00.000Z"}\nnull\n7\n"x"\n[]\n' +
      '{"seq":2,"name":"null-key-two","ended_at":"2026-11-25T10:00:01.000Z"}\n',
    { mode: 0o600 },
  );
  const outbox = await StreamEndOutbox.open(dir.path);
  assertEquals(names(outbox), ["null-key-one", "null-key-two"]);
  assertEquals(outbox.path, `${dir.path}/${OUTBOX_FILE_NAME}`, "still on disk");
  await outbox.close();
});

Deno.test("StreamEndOutbox refuses reports beyond its bound with an error line, and takes them again once there is room", async () => {
  await using dir = await tempDir();
  const logs = await captureLogs();
  const outbox = await StreamEndOutbox.open(dir.path, { maxBytes: 300 });
  const kept = [];
  for (let i = 0; i < 10; i++) {
    const entry = await outbox.add(`bound-key-${i}`);
    if (entry) kept.push(entry);
  }
  assert(kept.length >= 2 && kept.length < 10, `kept ${kept.length} of 10`);
  assert(outbox.bytes <= 300);
  assertEquals(names(outbox), kept.map((entry) => entry.name));
  const text = logs.map(textFormatter).join("");
  assertMatch(text, /stream-end outbox full \(\d+ reports, \d+ of 300 bytes\)/);
  assertMatch(text, /stream=bou…\(11\)/);
  assert(!text.includes("bound-key-"), "no key in the logs");
  await outbox.remove(kept[0]!.seq);
  assert(await outbox.add("bound-key-late"), "room again after a delivery");
  await outbox.close();
  const reopened = await StreamEndOutbox.open(dir.path);
  assertEquals(names(reopened), [...kept.slice(1).map((entry) => entry.name), "bound-key-late"]);
  await reopened.close();
});

Deno.test("StreamEndOutbox keeps its file at mode 0600 (it holds stream keys)", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/${OUTBOX_FILE_NAME}`;
  const mode = async () => (await Deno.stat(path)).mode! & 0o777;
  const fresh = await StreamEndOutbox.open(`${dir.path}/state`);
  await fresh.add("mode-key-1");
  await fresh.close();
  assertEquals((await Deno.stat(`${dir.path}/state/${OUTBOX_FILE_NAME}`)).mode! & 0o777, 0o600);
  // A file left readable by others (an older version, a careless copy) is replaced by a 0600 one.
  await Deno.writeTextFile(path, "", { mode: 0o644 });
  await Deno.chmod(path, 0o644);
  const outbox = await StreamEndOutbox.open(dir.path);
  assertEquals(await mode(), 0o600);
  const entry = (await outbox.add("mode-key-2"))!;
  await outbox.add("mode-key-3");
  await outbox.remove(entry.seq); // an acknowledgement appended
  assertEquals(await mode(), 0o600);
  await outbox.remove(entry.seq + 1); // emptied: rewritten
  assertEquals(await mode(), 0o600);
  await outbox.close();
});

Deno.test("openOutbox() falls back to memory with an error line when the directory cannot be used", async () => {
  await using dir = await tempDir();
  const logs = await captureLogs();
  const notADirectory = `${dir.path}/file`;
  await Deno.writeTextFile(notADirectory, "");
  const outbox = await openOutbox(notADirectory);
  assertEquals(outbox.path, undefined);
  assert(await outbox.add("memory-key-1"), "still queues");
  assertEquals(names(outbox), ["memory-key-1"]);
  await outbox.close();
  assertMatch(
    logs.map(textFormatter).join(""),
    /stream-end outbox unavailable in .*lost on restart/,
  );
});

Deno.test("openOutbox() says a state_dir outside the relay's write permission in an operator's words", async () => {
  const logs = await captureLogs();
  // The tests may write only under /tmp: this directory is outside, as a relative "state" is for
  // the executable run by hand without STATE_DIRECTORY.
  const outbox = await openOutbox("/var/lib/neustream-test-not-permitted");
  await outbox.close();
  const text = logs.map(textFormatter).join("");
  assertMatch(text, /outside what this relay may write .*STATE_DIRECTORY/);
  assert(!text.includes("run again with"), text);
});
