/**
 * Shutting our side of a connection (FIN after everything written) while still reading, the way
 * both ends of the relay hang up: the player sessions of its server and the native publisher.
 * Closing outright would make the kernel answer with a reset whatever the peer sends afterwards,
 * or had sent and was not read yet, and a reset throws away what our kernel still holds unsent.
 *
 * @module
 */

/**
 * Shuts our side of `conn`. Resolves false when the peer had already reset or closed it (nothing
 * is left to wait for); any other failure is thrown.
 */
export async function shutWrite(conn: Deno.Conn): Promise<boolean> {
  try {
    await conn.closeWrite();
    return true;
  } catch (error) {
    if (
      error instanceof Deno.errors.NotConnected || error instanceof Deno.errors.BadResource ||
      error instanceof Deno.errors.ConnectionReset || error instanceof Deno.errors.BrokenPipe
    ) return false;
    throw error;
  }
}
