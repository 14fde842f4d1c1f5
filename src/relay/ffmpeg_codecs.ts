/**
 * What the FFmpeg engine can carry. Debian's FFmpeg 5.1 reads only legacy FLV tags: H.264 (codec
 * id 7), the old FLV video codecs, AAC, MP3 and the old FLV audio formats. It knows nothing of the
 * Enhanced RTMP `ExVideoTagHeader` / `ExAudioTagHeader` (HEVC, AV1, VP9, Opus… or even H.264
 * behind a FourCC, or a multitrack stream): fed one, it writes garbage or nothing. A destination
 * on that engine says so in its status instead, and the streamer can pick the native engine,
 * which passes any tag through untouched.
 *
 * @module
 */

import { codecsOf, isExAudio, isExTag, isExVideo, parseExTag } from "../media/enhanced_rtmp.ts";
import { type MediaPacket, TagType } from "../media/flv.ts";
import type { StreamConfiguration } from "../media/stream_configuration.ts";

/** Codec names (as `inspectVideo`/`inspectAudio` give them) FFmpeg 5.1's FLV demuxer reads. */
const FFMPEG_VIDEO = new Set(["h263", "screen", "vp6", "vp6a", "screen2", "avc1"]);
const FFMPEG_AUDIO = new Set([
  "pcm",
  "adpcm",
  "mp3",
  "pcm-le",
  "nellymoser-16k",
  "nellymoser-8k",
  "nellymoser",
  "g711a",
  "g711u",
  "aac",
  "speex",
  "mp3-8k",
]);

/**
 * Undefined when the FFmpeg engine can relay a stream of `configuration`, else the status line:
 * "codec hvc1 not supported by the ffmpeg engine; use engine = native". A track whose codec is
 * not known yet (only announced) is no reason to refuse. `headers` (the GOP cache's, every
 * track's latest) are checked too: the configuration keeps one header per kind, the last one, and
 * a multitrack stream's other tracks (HEVC on track 1 before legacy H.264 on track 0) hide there.
 */
export function ffmpegCodecProblem(
  configuration: StreamConfiguration,
  headers: readonly MediaPacket[] = [],
): string | undefined {
  for (const track of ["video", "audio"] as const) {
    const config = configuration[track];
    if (config === undefined || config.codec === undefined) continue;
    const header = config.header;
    const enhanced = header !== undefined &&
      (track === "video" ? isExVideo(header) : isExAudio(header));
    const problem = problemOf(track, config.codec, enhanced, config.codec.includes(","));
    if (problem !== undefined) return problem;
  }
  for (const header of headers) {
    if (header.type === TagType.Script) continue;
    if (!isExTag(header)) continue;
    const tag = parseExTag(header);
    const kind = header.type === TagType.Video ? "video" : "audio";
    const problem = problemOf(kind, codecsOf(tag), true, tag.multitrack !== undefined);
    if (problem !== undefined) return problem;
  }
  return undefined;
}

function problemOf(
  track: "video" | "audio",
  codec: string,
  enhanced: boolean,
  multitrack: boolean,
): string | undefined {
  const known = track === "video" ? FFMPEG_VIDEO : FFMPEG_AUDIO;
  if (!enhanced && known.has(codec)) return undefined;
  const what = multitrack
    ? `multitrack ${track} (${codec.split(",").join(", ")})`
    : `codec ${codec}${enhanced && known.has(codec) ? " (Enhanced RTMP)" : ""}`;
  return `${what} not supported by the ffmpeg engine; use engine = native`;
}
