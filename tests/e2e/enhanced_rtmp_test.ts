/**
 * Enhanced RTMP through the real relay: real HEVC (libx265) and AV1 (libsvtav1) frames, wrapped in
 * Enhanced RTMP tags by our test publisher, published over a real socket with a connect that
 * offers `fourCcList`, and read back by players of ours. What arrives must be what was sent, tag
 * for tag and byte for byte; a player joining late must get every sequence start, then keyframes
 * (the GOP cache understands `ExVideoTagHeader`); and the elementary stream taken back out of the
 * received tags must decode in FFmpeg to the same pictures as the encoder's own output.
 */

import { selectRendition } from "../../src/media/enhanced_rtmp.ts";
import { isAmfObject } from "../../src/rtmp/amf0.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import {
  asPlayed,
  decodedFrames,
  describeTags,
  encodeAac,
  encodeVideo,
  enhancedTags,
  extractElementary,
  lateJoinerView,
  publishEnhanced,
  type SentTag,
  type Tag,
  type TrackInput,
} from "../helpers/ertmp.ts";
import { tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay } from "../helpers/relay.ts";
import { TestRtmpClient } from "../helpers/rtmp_client.ts";

const FRAMES = 30; // keyframes every 10: a late player starts at frame 20

/** Decodes the video in `tags` (single-track) and returns FFmpeg's per-frame MD5s. */
async function decode(dir: string, name: string, tags: readonly Tag[]): Promise<string[]> {
  const { format, bytes } = extractElementary(tags);
  const file = `${dir}/${name}.${format}`;
  await Deno.writeFile(file, bytes);
  return await decodedFrames(file, format);
}

/** Index of the first video frame a late player gets: the last keyframe's. */
const lastKeyframeFrame = (frames: readonly { keyframe: boolean }[]) =>
  frames.findLastIndex((frame) => frame.keyframe);

interface RoundTrip {
  early: Tag[];
  late: Tag[];
  connectResult: Record<string, unknown>;
}

/**
 * Publishes `tags` to a fresh relay with a player already waiting; once that player has them
 * all, a second player joins. Returns what both received and the connect `_result` properties.
 */
async function roundTrip(key: string, tags: readonly SentTag[]): Promise<RoundTrip> {
  await using relay = await startTestRelay({ streams: [{ key }] });
  await using early = await TestRtmpClient.player(relay.rtmpPort, key);
  await waitFor(() => relay.service.hub.get(key)?.subscriberCount === 1, "the first player");
  await using publisher = await TestRtmpClient.connect(relay.rtmpPort);
  await publisher.handshake();
  const streamId = await publishEnhanced(publisher, key, tags);
  const received = await early.receiveTags(tags.length);
  await using late = await TestRtmpClient.player(relay.rtmpPort, key);
  const lateReceived = await late.receiveTags(lateJoinerView(tags).length);
  await publisher.call(streamId, "deleteStream", null, streamId);
  const properties = publisher.connected?.values[1];
  return {
    early: received as Tag[],
    late: lateReceived as Tag[],
    connectResult: isAmfObject(properties) ? properties : {},
  };
}

Deno.test("Enhanced RTMP HEVC reaches players byte-exact, joins late from the GOP cache and decodes", async () => {
  await using dir = await tempDir();
  const hevc = await encodeVideo(dir.path, "hevc", FRAMES);
  assertEquals(hevc.frames.filter((f) => f.keyframe).length, 3, "keyframes at 0, 10, 20");
  const tags = enhancedTags([{ trackId: 0, video: hevc }]);
  const { early, late, connectResult } = await roundTrip("ertmp-hevc-0001", tags);

  assertEquals(connectResult.fourCcList, ["hvc1", "av01", "avc1", "mp4a"], "connect answered");
  assertEquals(await describeTags(early), await describeTags(asPlayed(tags)), "early player");
  assertEquals(await describeTags(late), await describeTags(lateJoinerView(tags)), "late player");

  const source = await decodedFrames(hevc.file, hevc.format);
  assertEquals(source.length, FRAMES);
  assertEquals(await decode(dir.path, "early", early), source, "decoded from the early player");
  const from = lastKeyframeFrame(hevc.frames);
  assertEquals(await decode(dir.path, "late", late), source.slice(from), "decoded, late player");
});

Deno.test("Enhanced RTMP AV1 reaches players byte-exact, joins late from the GOP cache and decodes", async () => {
  await using dir = await tempDir();
  const av1 = await encodeVideo(dir.path, "obu", FRAMES);
  assert(av1.frames.filter((f) => f.keyframe).length >= 2, "more than one keyframe");
  const tags = enhancedTags([{ trackId: 0, video: av1 }]);
  const { early, late } = await roundTrip("ertmp-av1-0001", tags);

  assertEquals(await describeTags(early), await describeTags(asPlayed(tags)), "early player");
  assertEquals(await describeTags(late), await describeTags(lateJoinerView(tags)), "late player");

  const source = await decodedFrames(av1.file, av1.format);
  assertEquals(source.length, FRAMES);
  assertEquals(await decode(dir.path, "early", early), source, "decoded from the early player");
  const from = lastKeyframeFrame(av1.frames);
  assertEquals(await decode(dir.path, "late", late), source.slice(from), "decoded, late player");
});

Deno.test("Enhanced RTMP v2 multitrack (HEVC, H.264, AV1 + AAC) is relayed byte-exact and each rendition selected decodes", async () => {
  await using dir = await tempDir();
  const tracks: TrackInput[] = [
    { trackId: 0, video: await encodeVideo(dir.path, "hevc", FRAMES) },
    { trackId: 1, video: await encodeVideo(dir.path, "h264", FRAMES, "256x144") },
    { trackId: 2, video: await encodeVideo(dir.path, "obu", FRAMES, "160x120") },
  ];
  const aac = await encodeAac(dir.path, FRAMES / 25);
  const tags = enhancedTags(tracks, aac);
  const { early, late } = await roundTrip("ertmp-multi-0001", tags);

  assertEquals(await describeTags(early), await describeTags(asPlayed(tags)), "early player");
  // Every track's sequence start, and every track's keyframe of the last instant.
  assertEquals(await describeTags(late), await describeTags(lateJoinerView(tags)), "late player");

  for (const { trackId, video } of tracks) {
    const select = (received: readonly Tag[]) =>
      received.flatMap((tag) => {
        const payload = selectRendition(tag, { videoTrack: trackId, audioTrack: 0 });
        return payload === undefined ? [] : [{ ...tag, payload }];
      });
    const rendition = select(early);
    const videoTags = rendition.filter((tag) => tag.type === 9);
    // Track 0 carries the colorInfo Metadata too (see enhancedTags).
    assertEquals(
      videoTags.length,
      FRAMES + (trackId === 0 ? 2 : 1),
      `track ${trackId}: its sequence start${trackId === 0 ? ", colorInfo" : ""} and frames`,
    );
    if (video.fourCc === "avc1") {
      assert(videoTags.every((tag) => (tag.payload[0]! & 0x8f) === 7), "H.264 as legacy tags");
    }
    const source = await decodedFrames(video.file, video.format);
    assertEquals(await decode(dir.path, `early-${trackId}`, rendition), source, `track ${trackId}`);
    const from = lastKeyframeFrame(video.frames);
    assertEquals(
      await decode(dir.path, `late-${trackId}`, select(late)),
      source.slice(from),
      `track ${trackId}, late player`,
    );
  }
});
