/**
 * Ties stream lifecycles to the relay: asks the authority before a publish, starts the stream's
 * destinations when it goes live, stops them and reports the end when it stops.
 *
 * @module
 */

import { selectDestinations } from "../control_plane/destination.ts";
import type { CallStats } from "../control_plane/http_client.ts";
import type { StreamAuthority } from "../control_plane/stream_authority.ts";
import type { LiveStream, StreamHubListener } from "../media/live_stream.ts";
import type { PublishDecision, PublishRequest } from "../rtmp/session.ts";
import { log } from "../log.ts";
import { redactKey } from "../redact.ts";
import type { SupervisorOptions } from "./destination_supervisor.ts";
import { StreamRelay } from "./stream_relay.ts";

const managerLog = log("relay");

export interface RelayManagerOptions {
  supervisor: SupervisorOptions;
  maxDestinationsPerStream: number;
}

export class RelayManager implements StreamHubListener {
  #authority: StreamAuthority;
  readonly #options: RelayManagerOptions;
  readonly #relays = new Map<string, StreamRelay>();
  /** Whether to forward, per publishing session, from authorisation until the stream is live. */
  readonly #forward = new Map<number, boolean>();
  readonly #background = new Set<Promise<void>>();
  #endedRelayBytes = 0;

  constructor(authority: StreamAuthority, options: RelayManagerOptions) {
    this.#authority = authority;
    this.#options = options;
  }

  get authority(): StreamAuthority {
    return this.#authority;
  }

  /** Call counts and time of the control plane, when one is configured. */
  controlPlaneStats(): Readonly<Record<string, Readonly<CallStats>>> | undefined {
    return this.#authority.callStats?.();
  }

  /** The relay of a live stream, if it has one. */
  relayFor(key: string): StreamRelay | undefined {
    return this.#relays.get(key);
  }

  relays(): StreamRelay[] {
    return [...this.#relays.values()];
  }

  /** Bytes written to FFmpeg for every destination since start. */
  get destinationBytesSent(): number {
    let total = this.#endedRelayBytes;
    for (const relay of this.#relays.values()) total += relay.bytesSent;
    return total;
  }

  /** The RTMP server's authorisation hook. */
  authorize = async (request: PublishRequest): Promise<PublishDecision> => {
    const decision = await this.#authority.authorize(request.key);
    if (!decision.allowed) return decision;
    this.#forward.set(request.sessionId, decision.forward);
    return { allowed: true };
  };

  onLive(stream: LiveStream): void {
    const sessionId = stream.publisher?.sessionId ?? -1;
    const forward = this.#forward.get(sessionId) ?? false;
    this.#forward.delete(sessionId);
    const relay = new StreamRelay(
      stream,
      this.#options.supervisor,
      this.#options.maxDestinationsPerStream,
    );
    this.#relays.set(stream.key, relay);
    if (forward) this.#track(this.#startDestinations(relay));
  }

  onEnded(stream: LiveStream, reason: string): void {
    managerLog.info("stream ended: {reason}", { stream: redactKey(stream.key), reason });
    const relay = this.#relays.get(stream.key);
    if (relay?.stream === stream) this.#relays.delete(stream.key);
    if (relay) {
      this.#track(
        relay.stop().then(() => {
          this.#endedRelayBytes += relay.bytesSent;
        }),
      );
    }
    this.#track(this.#authority.streamEnded(stream.key));
  }

  async #startDestinations(relay: StreamRelay): Promise<void> {
    const key = relay.stream.key;
    const context = { stream: redactKey(key) };
    let fetched;
    try {
      fetched = await this.#authority.destinations(key);
    } catch (error) {
      managerLog.error("cannot fetch destinations: {reason}", {
        ...context,
        reason: (error as Error).message,
      });
      return;
    }
    if (this.#relays.get(key) !== relay) return; // the stream ended while we asked
    for (const problem of fetched.malformed) {
      managerLog.warn("destination skipped: {reason}", { ...context, reason: problem });
    }
    const selection = selectDestinations(fetched.records, this.#options.maxDestinationsPerStream);
    for (const rejected of selection.rejected) {
      managerLog.warn("destination skipped: {reason}", {
        ...context,
        destination: rejected.id,
        reason: rejected.reason,
      });
    }
    for (const destination of selection.accepted) relay.add(destination);
    managerLog.info("relaying to {count} destination(s)", {
      ...context,
      count: selection.accepted.length,
    });
  }

  #track(work: Promise<void>): void {
    this.#background.add(work);
    void work.finally(() => this.#background.delete(work));
  }

  /** Waits for destinations being stopped and stream ends being reported. */
  async settle(): Promise<void> {
    while (this.#background.size > 0) await Promise.all(this.#background);
    await this.#authority.flush();
  }
}
