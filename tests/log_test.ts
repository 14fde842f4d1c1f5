/**
 * Logging as an operator reads it: under systemd, journald takes each line's priority from a
 * `<N>` prefix (SyslogLevelPrefix=yes, its default), so `journalctl -p warning` shows warnings and
 * errors; elsewhere lines start with their timestamp.
 */

import { assertEquals } from "./helpers/assert.ts";

async function logLines(env: Record<string, string>): Promise<string[]> {
  const script = `
    import { log, setupLogging } from ${
    JSON.stringify(new URL("../src/log.ts", import.meta.url).href)
  };
    await setupLogging({ level: "debug", format: "text" });
    const l = log("test");
    l.debug("d"); l.info("i"); l.warn("w"); l.error("e"); l.fatal("f");
  `;
  const inherited = Deno.env.toObject();
  delete inherited.JOURNAL_STREAM; // a test run under systemd must not decide the plain case
  const output = await new Deno.Command("deno", {
    args: ["eval", "--no-lock", script],
    env: { ...inherited, ...env },
    clearEnv: true,
    stdout: "null",
    stderr: "piped",
  }).output();
  return new TextDecoder().decode(output.stderr).trimEnd().split("\n");
}

Deno.test("log lines carry journald's priority prefix when stderr goes to the journal", async () => {
  const lines = await logLines({ JOURNAL_STREAM: "8:123456" });
  assertEquals(lines.map((line) => line.slice(0, 3)), ["<7>", "<6>", "<4>", "<3>", "<2>"]);
  assertEquals(lines.map((line) => line.match(/ (\w+) +test: /)?.[1]), [
    "DEBUG",
    "INFO",
    "WARNING",
    "ERROR",
    "FATAL",
  ]);
  const plain = await logLines({});
  assertEquals(plain.filter((line) => line.startsWith("<")), [], plain.join("\n"));
  assertEquals(plain.length, 5);
});
