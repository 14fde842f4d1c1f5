/**
 * The native engine: our own RTMP/RTMPS publisher, no process. Tag bodies go out untouched
 * (Enhanced RTMP included), or reduced to one rendition of a multitrack stream when the
 * destination names a `video_track` / `audio_track`.
 *
 * @module
 */

import { type MediaPacket, TagType } from "../media/flv.ts";
import { isExAudio, isExVideo, selectRendition } from "../media/enhanced_rtmp.ts";
import type { StreamConfiguration } from "../media/stream_configuration.ts";
import { DestinationFailure } from "./destination_failure.ts";
import { RtmpPublisher } from "./rtmp_publisher.ts";
import { trustedCertificates } from "./tls_trust.ts";
import type { EngineAttempt, EngineContext, RelayEngine } from "./relay_engine.ts";
import type { RenditionSelection } from "../media/enhanced_rtmp.ts";

export interface NativeEngineOptions {
  /** Time from the first TCP packet to `NetStream.Publish.Start`. */
  timeoutMs: number;
  /** `tls_ca_file`, read at each `rtmps://` start (a reload may replace it). */
  tls?: { readonly caFile: string | undefined };
}

/** FourCCs announced in `connect` when the stream is Enhanced RTMP. */
const ENHANCED_FOURCCS = ["hvc1", "av01", "vp09", "avc1", "mp4a", "Opus"];

function isEnhanced(configuration: StreamConfiguration): boolean {
  const { video, audio } = configuration;
  return (video?.header !== undefined && isExVideo(video.header)) ||
    (audio?.header !== undefined && isExAudio(audio.header));
}

export class NativeEngine implements RelayEngine {
  readonly name = "native";
  readonly #options: NativeEngineOptions;

  constructor(options: NativeEngineOptions) {
    this.#options = options;
  }

  start(context: EngineContext): EngineAttempt {
    return new NativeAttempt(this.#options, context);
  }
}

function asFailure(error: unknown): DestinationFailure | undefined {
  if (error === undefined) return undefined;
  if (error instanceof DestinationFailure) return error;
  return new DestinationFailure("internal", (error as Error).message ?? String(error), {
    cause: error,
  });
}

class NativeAttempt implements EngineAttempt {
  readonly #abort = new AbortController();
  readonly #opening: Promise<RtmpPublisher>;
  readonly #selection: RenditionSelection | undefined;
  #publisher: RtmpPublisher | undefined;
  readonly ended: Promise<DestinationFailure | undefined>;

  constructor(options: NativeEngineOptions, context: EngineContext) {
    const { destination } = context;
    this.#selection = destination.videoTrack === undefined && destination.audioTrack === undefined
      ? undefined
      : { videoTrack: destination.videoTrack ?? 0, audioTrack: destination.audioTrack ?? 0 };
    this.#opening = (async () => {
      let caCerts: string[] | undefined;
      if (destination.pushUrl.startsWith("rtmps://")) {
        try {
          caCerts = trustedCertificates({ caFile: options.tls?.caFile });
        } catch (error) {
          throw new DestinationFailure("tls", `TLS trust store unreadable: ${error}`, {
            cause: error,
          });
        }
      }
      const publisher = await RtmpPublisher.open({
        url: destination.pushUrl,
        caCerts,
        timeoutMs: options.timeoutMs,
        signal: this.#abort.signal,
        fourCcList: isEnhanced(context.configuration) ? ENHANCED_FOURCCS : undefined,
      });
      this.#publisher = publisher;
      context.onConnected();
      return publisher;
    })();
    this.ended = this.#opening.then(
      (publisher) => publisher.ended.then(asFailure),
      asFailure,
    );
  }

  get pid(): null {
    return null;
  }

  get bytesOut(): number {
    return this.#publisher?.bytesOut ?? 0;
  }

  get bytesAcknowledged(): number {
    return this.#publisher?.bytesAcknowledged ?? 0;
  }

  write(packets: readonly MediaPacket[]): Promise<void> {
    const publisher = this.#publisher;
    if (publisher === undefined) return this.#opening.then(() => this.write(packets));
    return publisher.write(this.#selection === undefined ? packets : this.#select(packets));
  }

  #select(packets: readonly MediaPacket[]): MediaPacket[] {
    const out: MediaPacket[] = [];
    for (const packet of packets) {
      if (packet.type === TagType.Script) {
        out.push(packet);
        continue;
      }
      const payload = selectRendition(packet, this.#selection!);
      if (payload !== undefined) out.push({ ...packet, payload });
    }
    return out;
  }

  async finish(): Promise<void> {
    const publisher = await this.#opening.catch(() => undefined);
    await publisher?.close();
  }

  async abort(): Promise<void> {
    this.#abort.abort(new DestinationFailure("closed", "connection cut off by the relay"));
    await this.#publisher?.close();
    await this.ended;
  }
}
