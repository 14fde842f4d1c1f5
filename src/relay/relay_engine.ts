/**
 * What pushes a destination's media out: one connection attempt at a time, behind one small
 * interface, so that the supervisor (queue, drops, retries, states, drain) is the same for every
 * engine. Two engines: `ffmpeg` (an `ffmpeg -c copy` child fed FLV) and `native` (our own RTMP
 * publisher, no process).
 *
 * @module
 */

import type { Destination } from "../control_plane/destination.ts";
import type { MediaPacket } from "../media/flv.ts";
import type { StreamConfiguration } from "../media/stream_configuration.ts";
import type { DestinationFailure } from "./destination_failure.ts";

export const ENGINE_NAMES = ["ffmpeg", "native"] as const;
export type EngineName = typeof ENGINE_NAMES[number];

export function isEngineName(value: unknown): value is EngineName {
  return (ENGINE_NAMES as readonly unknown[]).includes(value);
}

export interface EngineContext {
  readonly destination: Destination;
  /** The stream's configuration as the attempt starts (codecs, Enhanced RTMP or not). */
  readonly configuration: StreamConfiguration;
  /**
   * Every track's latest header as the attempt starts (the GOP cache's): the configuration keeps
   * one per kind, so a multitrack stream's other tracks show only here.
   */
  readonly headers: readonly MediaPacket[];
  /** Called once, when the destination accepted the publish. */
  onConnected(): void;
  /** Fields for log lines (stream and key redacted). */
  readonly logContext: Record<string, unknown>;
}

/** One connection to a destination, from start to its end. */
export interface EngineAttempt {
  /** The child's pid (FFmpeg), or null (native). */
  readonly pid: number | null;
  /** Bytes the engine has written to the destination (FFmpeg: as it reports them). */
  readonly bytesOut: number;
  /**
   * Bytes the destination said it received (native: its RTMP Acknowledgements); absent where the
   * engine cannot tell (FFmpeg). The socket's buffer takes megabytes in bursts, so for a slow
   * destination this moves while `bytesOut` waits.
   */
  readonly bytesAcknowledged?: number;
  /** Sends one batch, in order; resolves when the engine took it (the backpressure). */
  write(packets: readonly MediaPacket[]): Promise<void>;
  /** End of input: the engine sends what it holds and ends the publish. Never rejects. */
  finish(): Promise<void>;
  /** Cuts the attempt off now; resolves once it is over (the child reaped). Never rejects. */
  abort(): Promise<void>;
  /** Settles when the attempt is over: undefined after a clean `finish`, else why. Never rejects. */
  readonly ended: Promise<DestinationFailure | undefined>;
}

export interface RelayEngine {
  readonly name: EngineName;
  /** Starts one attempt; a failure to start shows in its `ended`, never as a throw. */
  start(context: EngineContext): EngineAttempt;
}
