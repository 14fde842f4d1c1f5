/**
 * CPU time and memory of a process tree, read from /proc through `cat` and `ps` (Deno reads
 * /proc only with --allow-all; a child `cat` needs just --allow-run=cat).
 *
 * @module
 */

const CLOCK_TICKS_PER_SECOND = 100;

async function text(command: string, args: string[]): Promise<string> {
  // Exit codes are ignored on purpose: a process that exits between listing and reading makes
  // `cat` fail for that one file, and the others are still printed.
  const output = await new Deno.Command(command, { args, stdout: "piped", stderr: "null" })
    .output();
  return new TextDecoder().decode(output.stdout);
}

/** `root` and all its descendants. */
export async function processTree(root: number): Promise<number[]> {
  const rows = (await text("ps", ["-eo", "pid=,ppid="])).trim().split("\n").map((line) => {
    const [pid, ppid] = line.trim().split(/\s+/).map(Number);
    return { pid: pid!, ppid: ppid! };
  });
  const tree = [root];
  for (let i = 0; i < tree.length; i++) {
    for (const row of rows) if (row.ppid === tree[i]) tree.push(row.pid);
  }
  return tree;
}

/** CPU seconds used so far by `pids`, in user and in system (kernel) mode. */
export async function cpuTimes(pids: number[]): Promise<{ user: number; system: number }> {
  const out = await text("cat", pids.map((pid) => `/proc/${pid}/stat`));
  let user = 0;
  let system = 0;
  for (const line of out.split("\n")) {
    if (!line) continue;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    const fields = line.slice(line.lastIndexOf(")") + 2).split(" ");
    user += Number(fields[11]);
    system += Number(fields[12]);
  }
  return { user: user / CLOCK_TICKS_PER_SECOND, system: system / CLOCK_TICKS_PER_SECOND };
}

/** CPU seconds (user + system) used so far by `pids`. */
export async function cpuSeconds(pids: number[]): Promise<number> {
  const { user, system } = await cpuTimes(pids);
  return user + system;
}

/** Proportional set size in bytes of `pids` together (shared pages counted once overall). */
export async function pssBytes(pids: number[]): Promise<number> {
  const out = await text("cat", pids.map((pid) => `/proc/${pid}/smaps_rollup`));
  let kb = 0;
  for (const match of out.matchAll(/^Pss:\s+(\d+) kB/gm)) kb += Number(match[1]);
  return kb * 1024;
}

/** Resident set size in bytes of `pids` together. */
export async function rssBytes(pids: number[]): Promise<number> {
  const out = await text("cat", pids.map((pid) => `/proc/${pid}/smaps_rollup`));
  let kb = 0;
  for (const match of out.matchAll(/^Rss:\s+(\d+) kB/gm)) kb += Number(match[1]);
  return kb * 1024;
}
