/**
 * What a stream carries: its tracks, each track's codec and codec configuration (sequence header).
 * An encoder that reconnects may come back with another one (OBS after a settings change: a track
 * added, another resolution); comparing the two tells each reader what it has to do.
 *
 * @module
 */

import {
  inspectAudio,
  inspectVideo,
  isSequenceStartPacket,
  type MediaPacket,
  TagType,
} from "./flv.ts";

/** One track: its codec, and its sequence header when the codec has one and it was seen. */
export interface TrackConfiguration {
  /** "avc1", "aac", ... (see `inspectVideo`/`inspectAudio`); undefined when only announced. */
  readonly codec: string | undefined;
  readonly header: Uint8Array | undefined;
}

export interface StreamConfiguration {
  readonly video?: TrackConfiguration;
  readonly audio?: TrackConfiguration;
}

/** How a stream's configuration differs from before. */
export interface ConfigurationChange {
  readonly before: StreamConfiguration;
  readonly after: StreamConfiguration;
  /** A track appeared or went away. */
  readonly tracksChanged: boolean;
  /** A track present before and after has another codec. */
  readonly codecChanged: boolean;
  /** A track kept its codec but has a new sequence header (a resolution change, say). */
  readonly headersChanged: boolean;
  /** For log lines: "video added (avc1)", "video sequence header changed (avc1)". */
  readonly description: string;
}

const TRACKS = ["video", "audio"] as const;
type Track = typeof TRACKS[number];

function trackOf(packet: MediaPacket): Track | undefined {
  return packet.type === TagType.Video
    ? "video"
    : packet.type === TagType.Audio
    ? "audio"
    : undefined;
}

function codecOf(packet: MediaPacket): string {
  return packet.type === TagType.Video
    ? inspectVideo(packet.payload).codec
    : inspectAudio(packet.payload).codec;
}

/**
 * The configuration `packet` gives `current`: a sequence start sets its track's codec and header;
 * the first frame of a track not seen yet adds it (codecs without a header). Anything else leaves
 * `current` as it is (the same object, so callers can tell cheaply).
 */
export function withPacket(current: StreamConfiguration, packet: MediaPacket): StreamConfiguration {
  const track = trackOf(packet);
  if (track === undefined) return current;
  const known = current[track];
  if (isSequenceStartPacket(packet)) {
    return { ...current, [track]: { codec: codecOf(packet), header: packet.payload } };
  }
  if (known !== undefined && known.codec !== undefined) return current;
  return { ...current, [track]: { codec: codecOf(packet), header: known?.header } };
}

/**
 * The configuration an encoder opens with: its metadata's announced tracks (`videocodecid`,
 * `audiocodecid`, as FFmpeg and OBS write them), then its sequence headers and first frame.
 */
export function openingConfiguration(
  metadata: Record<string, unknown> | undefined,
  packets: readonly MediaPacket[],
): StreamConfiguration {
  let configuration: StreamConfiguration = {};
  const announced = { codec: undefined, header: undefined };
  if (metadata !== undefined && metadata.videocodecid !== undefined) {
    configuration = { ...configuration, video: announced };
  }
  if (metadata !== undefined && metadata.audiocodecid !== undefined) {
    configuration = { ...configuration, audio: announced };
  }
  for (const packet of packets) configuration = withPacket(configuration, packet);
  return configuration;
}

/** Byte-for-byte equality of two sequence headers. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** How `after` differs from `before`, or undefined when a reader cannot tell them apart. */
export function compareConfigurations(
  before: StreamConfiguration,
  after: StreamConfiguration,
): ConfigurationChange | undefined {
  const notes: string[] = [];
  let tracksChanged = false;
  let codecChanged = false;
  let headersChanged = false;
  for (const track of TRACKS) {
    const old = before[track];
    const now = after[track];
    if (old === undefined && now === undefined) continue;
    if (old === undefined || now === undefined) {
      tracksChanged = true;
      const codec = (now ?? old)?.codec;
      notes.push(`${track} ${now ? "added" : "removed"}${codec ? ` (${codec})` : ""}`);
    } else if (old.codec !== undefined && now.codec !== undefined && old.codec !== now.codec) {
      // An announced track whose header has not arrived yet matches any codec: nothing to tell.
      codecChanged = true;
      notes.push(`${track} codec ${old.codec} -> ${now.codec}`);
    } else if (
      old.header !== undefined && now.header !== undefined && !sameBytes(old.header, now.header)
    ) {
      headersChanged = true;
      notes.push(`${track} sequence header changed (${now.codec})`);
    }
  }
  if (notes.length === 0) return undefined;
  return {
    before,
    after,
    tracksChanged,
    codecChanged,
    headersChanged,
    description: notes.join(", "),
  };
}
