/**
 * Test media: H.264 + AAC FLV fixtures made by FFmpeg, and packet-by-packet comparison through
 * `-f framemd5` (stream index, size and hash of every packet).
 *
 * @module
 */

import { assert, assertEquals } from "./assert.ts";
import { run } from "./process.ts";

const FIXTURE_DIR = "/tmp/neustream-fixtures";
const pending = new Map<string, Promise<string>>();

export interface FixtureOptions {
  seconds: number;
  /** Keyframe interval in frames (30 fps). */
  gop?: number;
  /** Video bitrate, e.g. "1M"; the default is what x264 ultrafast makes of the test pattern. */
  videoBitrate?: string;
  size?: string;
  /** Start timestamp in seconds (a large one exercises extended timestamps at once). */
  startSeconds?: number;
}

/** An FLV file with H.264 (baseline-ish, ultrafast) and AAC, generated once and cached. */
export function fixture(options: FixtureOptions): Promise<string> {
  const { seconds, gop = 30, videoBitrate, size = "320x240", startSeconds = 0 } = options;
  const name = `h264_aac_${seconds}s_g${gop}_${videoBitrate ?? "crf"}_${size}_t${startSeconds}.flv`;
  const path = `${FIXTURE_DIR}/${name}`;
  let made = pending.get(path);
  if (made === undefined) {
    made = (async () => {
      await Deno.mkdir(FIXTURE_DIR, { recursive: true });
      try {
        await Deno.stat(path);
        return path;
      } catch (error) {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      }
      const tmp = `${path}.${crypto.randomUUID()}.tmp`;
      const rate = videoBitrate
        ? ["-b:v", videoBitrate, "-maxrate", videoBitrate, "-bufsize", videoBitrate]
        : ["-crf", "30"];
      await run("ffmpeg", [
        "-hide_banner",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        `testsrc2=size=${size}:rate=30`,
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        String(seconds),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-g",
        String(gop),
        "-keyint_min",
        String(gop),
        "-sc_threshold",
        "0",
        "-pix_fmt",
        "yuv420p",
        ...rate,
        "-c:a",
        "aac",
        "-b:a",
        "96k",
        ...(startSeconds ? ["-output_ts_offset", String(startSeconds)] : []),
        "-f",
        "flv",
        tmp,
      ]);
      await Deno.rename(tmp, path);
      return path;
    })();
    pending.set(path, made);
  }
  return made;
}

/** One packet as framemd5 sees it. */
export interface PacketDigest {
  stream: number;
  size: number;
  hash: string;
}

/** Packets of `input` (file or URL), video first then audio, as framemd5 lists them. */
export async function framemd5(input: string): Promise<PacketDigest[]> {
  const text = await run("ffmpeg", [
    "-hide_banner",
    "-loglevel",
    "error",
    "-i",
    input,
    "-map",
    "0:v?",
    "-map",
    "0:a?",
    "-c",
    "copy",
    "-f",
    "framemd5",
    "-",
  ]);
  return text.split("\n")
    .filter((line) => line !== "" && !line.startsWith("#"))
    .map((line) => {
      const fields = line.split(",").map((field) => field.trim());
      return { stream: Number(fields[0]), size: Number(fields[4]), hash: fields[5]! };
    });
}

const key = (packet: PacketDigest) => `${packet.stream}:${packet.size}:${packet.hash}`;

/** Every packet equal, in order, with nothing missing or extra. */
export function assertSamePackets(
  actual: PacketDigest[],
  expected: PacketDigest[],
  label: string,
): void {
  assert(expected.length > 0, `${label}: the source has no packets`);
  const firstDifference = actual.findIndex((packet, index) =>
    expected[index] === undefined || key(packet) !== key(expected[index]!)
  );
  assertEquals(
    { count: actual.length, firstDifference },
    { count: expected.length, firstDifference: -1 },
    `${label}: received ${actual.length} packets, sent ${expected.length}`,
  );
}

/**
 * The received packets are a contiguous run of the source's, per stream (a reader that joined
 * mid-stream or reconnected). Audio and video are checked separately because a join may start
 * them at slightly different points. Returns where in the source each stream's run starts.
 */
export function assertContiguousRun(
  actual: PacketDigest[],
  source: PacketDigest[],
  label: string,
  options: { allowTruncatedEnd?: boolean } = {},
): number[] {
  const starts: number[] = [];
  for (const stream of new Set(source.map((packet) => packet.stream))) {
    const got = actual.filter((packet) => packet.stream === stream).map(key);
    const sent = source.filter((packet) => packet.stream === stream).map(key);
    assert(got.length > 0, `${label}: nothing received on stream ${stream}`);
    const start = sent.indexOf(got[0]!);
    assert(start >= 0, `${label}: first packet of stream ${stream} is not in the source`);
    const expected = sent.slice(start, start + got.length);
    const mismatch = got.findIndex((packet, index) => packet !== expected[index]);
    assertEquals(mismatch, -1, `${label}: stream ${stream} differs from the source at ${mismatch}`);
    if (!options.allowTruncatedEnd) {
      assertEquals(start + got.length, sent.length, `${label}: stream ${stream} ends early`);
    }
    starts.push(start);
  }
  return starts;
}
