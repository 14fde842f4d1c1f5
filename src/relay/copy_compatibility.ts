/**
 * Which changes of a live stream a running `ffmpeg -c copy` destination carries on its own, and
 * which need it started over on the new stream (an encoder that reconnected with other settings).
 *
 * FFmpeg fixes its output tracks when it starts: a track added later is ignored ("new stream"),
 * one removed leaves the platform waiting for it, another codec is another track. A new sequence
 * header of the same codec is different: FFmpeg's FLV demuxer passes it on as new extradata and
 * its FLV muxer writes it out before the next frame, so the platform sees a resolution change in
 * the same connection. That was checked for H.264 (tests/e2e/reconnect_test.ts records a 320x240
 * to 640x360 change through one FFmpeg and decodes it); other codecs restart until checked.
 *
 * @module
 */

import {
  type ConfigurationChange,
  sameBytes,
  type TrackConfiguration,
} from "../media/stream_configuration.ts";

/** Codecs whose new sequence header a running FFmpeg was seen to carry correctly. */
const HEADER_CHANGES_FOLLOWED = new Set(["avc1"]);

/** True when a destination's FFmpeg can carry on through `change` without a restart. */
export function copyFollows(change: ConfigurationChange): boolean {
  if (change.tracksChanged || change.codecChanged) return false;
  for (const track of ["video", "audio"] as const) {
    const before = change.before[track];
    const after = change.after[track];
    if (headerChanged(before, after) && !HEADER_CHANGES_FOLLOWED.has(after?.codec ?? "")) {
      return false;
    }
  }
  return true;
}

function headerChanged(
  before: TrackConfiguration | undefined,
  after: TrackConfiguration | undefined,
): boolean {
  return before?.header !== undefined && after?.header !== undefined &&
    !sameBytes(before.header, after.header);
}
