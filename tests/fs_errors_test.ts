import { describeFsError, STATE_DIR_HINT } from "../src/fs_errors.ts";
import { assertEquals, assertRejects } from "./helpers/assert.ts";

Deno.test("describeFsError() words a path outside the relay's permissions for an operator", async () => {
  // The tests may write only under /tmp (a checkout may be anywhere, /tmp included): this path is
  // outside, as "state" is for an executable run by hand without STATE_DIRECTORY.
  const error = await assertRejects(
    () => Deno.writeTextFile("/var/lib/neustream-test-not-permitted.txt", "x"),
    Deno.errors.NotCapable,
  );
  assertEquals(
    describeFsError(error, "write", STATE_DIR_HINT),
    "outside what this relay may write (its --allow-write list): set [streaming] state_dir, or STATE_DIRECTORY, to the directory it writes (/var/lib/neustream when installed)",
  );
  const missing = await assertRejects(
    () => Deno.readTextFile("/tmp/neustream-no-such-file"),
    Deno.errors.NotFound,
  );
  assertEquals(describeFsError(missing, "read", "x"), missing.message, "other errors as they are");
});
