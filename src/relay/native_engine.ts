/**
 * The native engine: our own RTMP/RTMPS publisher, no process. Tag bodies go out untouched
 * (Enhanced RTMP included), or reduced to one rendition of a multitrack stream when the
 * destination names a `video_track` / `audio_track`.
 *
 * @module
 */

import type { MediaPacket } from "../media/flv.ts";
import { isExAudio, isExTag, isExVideo } from "../media/enhanced_rtmp.ts";
import { RenditionFilter } from "../media/rendition_filter.ts";
import { log } from "../log.ts";
import type { StreamConfiguration } from "../media/stream_configuration.ts";
import { DestinationFailure } from "./destination_failure.ts";
import { RtmpPublisher } from "./rtmp_publisher.ts";
import { trustedCertificates } from "./tls_trust.ts";
import type { EngineAttempt, EngineContext, RelayEngine } from "./relay_engine.ts";

const engineLog = log("relay", "native");

export interface NativeEngineOptions {
  /** Time from the first TCP packet to `NetStream.Publish.Start`. */
  timeoutMs: number;
  /** `tls_ca_file` as configured, read at each `rtmps://` start (a reload may replace it). */
  tls?: { readonly operatorCaFile: string | undefined };
}

/**
 * FourCCs announced in `connect` when the stream is Enhanced RTMP: every codec the specification
 * names, since the engine passes any of them through untouched.
 */
const ENHANCED_FOURCCS = [
  "hvc1",
  "av01",
  "vp09",
  "vp08",
  "avc1",
  "mp4a",
  "Opus",
  "fLaC",
  "ac-3",
  "ec-3",
  ".mp3",
];

/** Whether any track of the stream is Enhanced RTMP: its last header of a kind, or any header. */
function isEnhanced(configuration: StreamConfiguration, headers: readonly MediaPacket[]): boolean {
  const { video, audio } = configuration;
  return (video?.header !== undefined && isExVideo(video.header)) ||
    (audio?.header !== undefined && isExAudio(audio.header)) ||
    headers.some(isExTag);
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
  readonly #rendition: RenditionFilter | undefined;
  readonly #logContext: Record<string, unknown>;
  #publisher: RtmpPublisher | undefined;
  readonly ended: Promise<DestinationFailure | undefined>;

  constructor(options: NativeEngineOptions, context: EngineContext) {
    const { destination } = context;
    this.#rendition = destination.videoTrack === undefined && destination.audioTrack === undefined
      ? undefined
      : new RenditionFilter({
        videoTrack: destination.videoTrack ?? 0,
        audioTrack: destination.audioTrack ?? 0,
      });
    this.#logContext = context.logContext;
    this.#opening = (async () => {
      let caCerts: string[] | undefined;
      if (destination.pushUrl.startsWith("rtmps://")) {
        try {
          caCerts = trustedCertificates({ caFile: options.tls?.operatorCaFile });
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
        fourCcList: isEnhanced(context.configuration, context.headers)
          ? ENHANCED_FOURCCS
          : undefined,
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
    const rendition = this.#rendition;
    if (rendition === undefined) return publisher.write(packets);
    const selected = rendition.filter(packets);
    const absent = rendition.absent();
    if (absent !== undefined) {
      // Connected and healthy, yet sending nothing of that kind: the operator must hear of it.
      engineLog.warn("{absent}: this destination gets none", { ...this.#logContext, absent });
    }
    return publisher.write(selected);
  }

  async finish(): Promise<void> {
    // An opening that failed has nothing to finish: `ended` reports why.
    const publisher = await this.#opening.catch(() => undefined);
    await publisher?.close();
  }

  async abort(): Promise<void> {
    this.#abort.abort(new DestinationFailure("closed", "connection cut off by the relay"));
    await this.#publisher?.close();
    await this.ended;
  }
}
