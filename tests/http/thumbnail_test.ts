/**
 * `GET /api/streams/{key}/thumbnail.jpg` with a real FFmpeg publisher: a JPEG FFmpeg can read, of
 * the stream's size; cached; 404 when not live; at most `maxConcurrent` decodes at once.
 */

import { ThumbnailBusyError, Thumbnailer } from "../../src/media/thumbnail.ts";
import { assert, assertEquals, assertThrows } from "../helpers/assert.ts";
import { fixture } from "../helpers/media.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { run, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay } from "../helpers/relay.ts";

const KEY = "thumb-stream-key-0001";
const TOKEN = "thumbnail-api-token-0123456789";
const auth = { headers: { authorization: `Bearer ${TOKEN}` } };

Deno.test("GET /api/streams/{key}/thumbnail.jpg is the latest keyframe as a JPEG of the stream's size", async () => {
  await using dir = await tempDir();
  const source = await fixture({ seconds: 6, gop: 30, size: "640x360" });
  await using relay = await startTestRelay({
    http: { api_token: TOKEN },
    streams: [{ key: KEY, destinations: [] }],
  });
  const notLive = await fetch(relay.httpUrl(`/api/streams/${KEY}/thumbnail.jpg`), auth);
  assertEquals(notLive.status, 404);
  await notLive.body?.cancel();

  await using publisher = ffmpegPublish(source, relay.rtmpUrl(KEY));
  const stream = await waitFor(
    () => relay.service.hub.get(KEY)?.gop.videoSequenceHeader && relay.service.hub.get(KEY),
    "the stream's first keyframe",
  );
  await waitFor(() => stream.gop.bytes > 0, "a keyframe in the GOP cache");
  const unauthorized = await fetch(relay.httpUrl(`/api/streams/${KEY}/thumbnail.jpg`));
  assertEquals(unauthorized.status, 401);
  await unauthorized.body?.cancel();

  // By key, and by the stream's public id (as the dashboard asks).
  const response = await fetch(relay.httpUrl(`/api/streams/${KEY}/thumbnail.jpg`), auth);
  assertEquals(response.status, 200);
  assertEquals(response.headers.get("content-type"), "image/jpeg");
  const jpeg = new Uint8Array(await response.arrayBuffer());
  assertEquals([...jpeg.subarray(0, 2)], [0xff, 0xd8], "a JPEG starts with SOI");
  const path = `${dir.path}/thumb.jpg`;
  await Deno.writeFile(path, jpeg);
  const probe = JSON.parse(
    await run("ffprobe", [
      "-v",
      "error",
      "-show_entries",
      "stream=codec_name,width,height",
      "-of",
      "json",
      path,
    ]),
  ) as { streams: { codec_name: string; width: number; height: number }[] };
  assertEquals(probe.streams, [{ codec_name: "mjpeg", width: 640, height: 360 }]);
  // The picture decodes, every pixel of it.
  await run("ffmpeg", ["-v", "error", "-xerror", "-i", path, "-f", "null", "-"]);

  const id = (await (await fetch(relay.httpUrl("/api/streams"), auth)).json()).streams[0].id;
  const byId = await fetch(relay.httpUrl(`/api/streams/${id}/thumbnail.jpg`), auth);
  assertEquals(byId.status, 200);
  // Within the cache period it is the same picture, not a new decode.
  assertEquals(new Uint8Array(await byId.arrayBuffer()), jpeg);
  await publisher.wait();
});

Deno.test("Thumbnailer.get() decodes at most maxConcurrent at once and says busy beyond", async () => {
  const source = await fixture({ seconds: 4, gop: 30 });
  await using relay = await startTestRelay({
    streams: [{ key: `${KEY}-a`, destinations: [] }, { key: `${KEY}-b`, destinations: [] }],
  });
  await using a = ffmpegPublish(source, relay.rtmpUrl(`${KEY}-a`));
  await using b = ffmpegPublish(source, relay.rtmpUrl(`${KEY}-b`));
  const gop = (key: string) => relay.service.hub.get(key)!.gop;
  await waitFor(
    () =>
      relay.service.hub.get(`${KEY}-a`)?.gop.bytes && relay.service.hub.get(`${KEY}-b`)?.gop.bytes,
    "both streams' keyframes",
  );
  const thumbnails = new Thumbnailer({ ffmpegPath: "ffmpeg", maxConcurrent: 1 });
  const first = thumbnails.get("a", gop(`${KEY}-a`));
  assertEquals(thumbnails.running, 1);
  assertThrows(() => thumbnails.get("b", gop(`${KEY}-b`)), ThumbnailBusyError);
  // The same stream again shares the decode under way.
  assert(thumbnails.get("a", gop(`${KEY}-a`)) === first, "one decode per stream");
  assert((await first)!.length > 0);
  assertEquals(thumbnails.running, 0);
  assert((await thumbnails.get("b", gop(`${KEY}-b`)))!.length > 0);
  await Promise.all([a.wait(), b.wait()]);
});
