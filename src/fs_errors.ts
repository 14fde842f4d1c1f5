/**
 * File-system errors in an operator's words. For a path outside the relay's permissions Deno
 * says "run again with the --allow-write flag", which means nothing to someone running the
 * compiled executable, whose permissions are baked in.
 *
 * @module
 */

/** Why `error` happened, for a log line or a start-up error; `hint` says what to do instead. */
export function describeFsError(error: unknown, access: "read" | "write", hint: string): string {
  if (error instanceof Deno.errors.NotCapable) {
    return `outside what this relay may ${access} (its --allow-${access} list): ${hint}`;
  }
  return error instanceof Error ? error.message : String(error);
}

/** What to do about a `state_dir` the relay may not write. */
export const STATE_DIR_HINT =
  "set [streaming] state_dir, or STATE_DIRECTORY, to the directory it writes (/var/lib/neustream when installed)";
