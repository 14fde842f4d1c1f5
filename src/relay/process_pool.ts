/**
 * Every child process of the relay (one FFmpeg per destination on the FFmpeg engine) is spawned,
 * counted, signalled and reaped here, after MediaMTX's `externalcmd.Pool`: one owner, so that the
 * last-resort kill on a second signal reaches them all and no code path has its own
 * kill-and-ignore block.
 *
 * @module
 */

import { settlesWithin } from "../async.ts";

export interface SpawnOptions {
  stdin?: "piped" | "null" | "inherit";
  stdout?: "piped" | "null" | "inherit";
  stderr?: "piped" | "null" | "inherit";
}

export class ProcessPool {
  readonly #children = new Set<Deno.ChildProcess>();

  /** Children alive (spawned and not yet reaped). */
  get size(): number {
    return this.#children.size;
  }

  /**
   * Starts `command` with an argument array (never a shell). The child leaves the pool once it
   * is reaped. Throws what `Deno.Command` throws (`NotFound`, `PermissionDenied`).
   */
  spawn(command: string, args: readonly string[], options: SpawnOptions = {}): Deno.ChildProcess {
    const child = new Deno.Command(command, {
      args: [...args],
      stdin: options.stdin ?? "null",
      stdout: options.stdout ?? "null",
      stderr: options.stderr ?? "null",
    }).spawn();
    this.#children.add(child);
    child.status.finally(() => this.#children.delete(child));
    return child;
  }

  /** Sends `signal`; false when the child had already exited (not an error: it raced us). */
  signal(child: Deno.ChildProcess, signal: Deno.Signal): boolean {
    try {
      child.kill(signal);
      return true;
    } catch (error) {
      // Deno throws TypeError for a child already reaped: nothing left to signal.
      if (error instanceof TypeError) return false;
      throw error;
    }
  }

  /** Whether `child` exits within `ms`. */
  exitsWithin(child: Deno.ChildProcess, ms: number): Promise<boolean> {
    return settlesWithin(child.status, ms);
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the child is reaped. */
  async terminate(
    child: Deno.ChildProcess,
    graceMs: number,
    onKill?: () => void,
  ): Promise<Deno.CommandStatus> {
    this.signal(child, "SIGTERM");
    if (!(await this.exitsWithin(child, graceMs))) {
      onKill?.();
      this.signal(child, "SIGKILL");
    }
    return await child.status;
  }

  /** Last resort (a second signal): SIGKILL every child now, so none outlives us. */
  killAll(): void {
    for (const child of this.#children) this.signal(child, "SIGKILL");
  }
}
