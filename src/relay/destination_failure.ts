/**
 * Why a push to a destination failed, in the kinds both relay engines report (the native RTMP
 * publisher, and FFmpeg's stderr as `ffmpeg_errors.ts` maps it): what `last_error` shows and what
 * the retry policy may act on. Messages never hold a stream key.
 *
 * @module
 */

export type DestinationFailureKind =
  /** The destination refused the key or the publish (`NetStream.Publish.BadName` …). */
  | "rejected"
  /** No connection: refused, host not found, network unreachable. */
  | "unreachable"
  /** The destination did not answer in time. */
  | "timeout"
  /** The destination's certificate is not trusted (unknown issuer, other host) or TLS failed. */
  | "tls"
  /** The destination hung up, or ended the publish. */
  | "closed"
  /** The stream's codecs are ones this engine cannot carry (HEVC on FFmpeg 5.1 …). */
  | "codec"
  /** A fault on our side or a protocol violation we cannot classify further. */
  | "internal";

export const FAILURE_KINDS = [
  "rejected",
  "unreachable",
  "timeout",
  "tls",
  "closed",
  "codec",
  "internal",
] as const satisfies readonly DestinationFailureKind[];

export class DestinationFailure extends Error {
  override name = "DestinationFailure";
  readonly kind: DestinationFailureKind;

  constructor(kind: DestinationFailureKind, message: string, options?: ErrorOptions) {
    super(message, options);
    this.kind = kind;
  }
}
