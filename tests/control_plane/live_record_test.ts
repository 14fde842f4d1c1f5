/**
 * The record of live streams, which lets a relay that died report its streams' ends at the next
 * start: on disk at each start and end of a stream, and never emptied of a key whose end is not in
 * the outbox.
 */

import { ControlPlaneClient } from "../../src/control_plane/http_client.ts";
import { LIVE_FILE_NAME, LiveRecord } from "../../src/control_plane/live_record.ts";
import { StreamEndOutbox } from "../../src/control_plane/outbox.ts";
import { assertEquals } from "../helpers/assert.ts";
import { freePort, tempDir } from "../helpers/process.ts";

const liveKeys = async (dir: string) =>
  JSON.parse(await Deno.readTextFile(`${dir}/${LIVE_FILE_NAME}`)).live as string[];

Deno.test("LiveRecord.open() gives the keys an earlier run left live and keeps them until removed", async () => {
  await using dir = await tempDir();
  const first = await LiveRecord.open(dir.path);
  assertEquals(first.orphaned, []);
  await first.record.add("live-key-a");
  await first.record.add("live-key-b");
  await first.record.remove("live-key-a");
  assertEquals(await liveKeys(dir.path), ["live-key-b"]);
  // The relay dies here. The next start finds the key, and keeps it until its end is queued.
  const second = await LiveRecord.open(dir.path);
  assertEquals(second.orphaned.map((o) => o.key), ["live-key-b"]);
  assertEquals(await liveKeys(dir.path), ["live-key-b"], "kept: its end is not queued yet");
  await second.record.remove("live-key-b");
  assertEquals(await liveKeys(dir.path), []);
  assertEquals((await Deno.stat(`${dir.path}/${LIVE_FILE_NAME}`)).mode! & 0o777, 0o600);
});

Deno.test("ControlPlaneClient keeps a key in the live record when the outbox cannot take its end", async () => {
  await using dir = await tempDir();
  const { record } = await LiveRecord.open(dir.path);
  // An outbox already full (a long outage): the report of the end cannot be queued.
  const outbox = StreamEndOutbox.inMemory({ maxBytes: 1 });
  const cp = new ControlPlaneClient({
    url: `http://127.0.0.1:${freePort()}`,
    timeoutMs: 200,
    retryAttempts: 0,
    outbox,
    live: record,
  });
  cp.streamStarted("full-outbox-key-0001");
  await record.close();
  assertEquals(await liveKeys(dir.path), ["full-outbox-key-0001"]);
  await cp.streamEnded("full-outbox-key-0001");
  await cp.flush();
  assertEquals(outbox.size, 0, "not queued");
  assertEquals(await liveKeys(dir.path), ["full-outbox-key-0001"], "so the next start reports it");
});
