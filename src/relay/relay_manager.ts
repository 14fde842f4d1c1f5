/**
 * Ties stream lifecycles to the relay: asks the authority before a publish, starts the stream's
 * destinations when it goes live, stops them and reports the end when it stops. A publisher that
 * resumes a stream brings its own authorisation: its `forward` starts or stops the destinations.
 *
 * The authorisation's answer travels with the publisher (`PublisherInfo.forward`), not in a table
 * here: nothing is kept per connection, so nothing outlives one.
 *
 * @module
 */

import { selectDestinations } from "../control_plane/destination.ts";
import type { CallStats } from "../control_plane/http_client.ts";
import type { StreamAuthority } from "../control_plane/stream_authority.ts";
import type { LiveStream, StreamHubListener } from "../media/live_stream.ts";
import type { PublishDecision, PublishRequest } from "../rtmp/publish_authorizer.ts";
import { delay, settlesWithin } from "../async.ts";
import { log } from "../log.ts";
import { Backoff, type BackoffOptions } from "./backoff.ts";
import type { SupervisorOptions } from "./destination_supervisor.ts";
import { type DestinationChanges, StreamRelay } from "./stream_relay.ts";
import { streamFields } from "../stream_id.ts";

const managerLog = log("relay");

/**
 * Between two requests for a live stream's destinations that failed: a control plane that is
 * deploying or overloaded at go-live is asked again, more and more rarely, for as long as the
 * stream is live.
 */
const DESTINATIONS_RETRY: BackoffOptions = {
  initialMs: 2_000,
  maxMs: 30_000,
  resetAfterMs: Infinity,
};

export interface RelayManagerOptions {
  supervisor: SupervisorOptions;
  maxDestinationsPerStream: number;
}

export class RelayManager implements StreamHubListener {
  #authority: StreamAuthority;
  #options: RelayManagerOptions;
  readonly #relays = new Map<string, StreamRelay>();
  readonly #background = new Set<Promise<void>>();
  /**
   * Relays of ended streams whose destinations are still being stopped: counted in
   * `destinationBytesSent` until their bytes move to `#endedRelayBytes`, or the total would drop
   * for as long as the stop takes (seconds of draining) and Prometheus would read a reset.
   */
  readonly #ending = new Set<StreamRelay>();
  #endedRelayBytes = 0;

  constructor(authority: StreamAuthority, options: RelayManagerOptions) {
    this.#authority = authority;
    this.#options = options;
  }

  /**
   * Options for streams that go live from now on (a reload); a live stream keeps those it was
   * given, so nothing changes under a broadcast.
   */
  updateOptions(options: RelayManagerOptions): void {
    this.#options = options;
  }

  get authority(): StreamAuthority {
    return this.#authority;
  }

  /** Call counts and time of the control plane, when one is configured. */
  controlPlaneStats(): Readonly<Record<string, Readonly<CallStats>>> | undefined {
    return this.#authority.callStats?.();
  }

  /** Stream-end reports waiting for the control plane, when one is configured. */
  get pendingStreamEnds(): number | undefined {
    return this.#authority.pendingStreamEnds;
  }

  /** The relay of a live stream, if it has one. */
  relayFor(key: string): StreamRelay | undefined {
    return this.#relays.get(key);
  }

  relays(): StreamRelay[] {
    return [...this.#relays.values()];
  }

  /** What the manager holds, for leak checks: relays of live streams, work under way. */
  get diagnostics(): { relays: number; backgroundWork: number } {
    return { relays: this.#relays.size, backgroundWork: this.#background.size };
  }

  /** Bytes written to FFmpeg for every destination since start. */
  get destinationBytesSent(): number {
    let total = this.#endedRelayBytes;
    for (const relay of this.#relays.values()) total += relay.bytesSent;
    for (const relay of this.#ending) total += relay.bytesSent;
    return total;
  }

  /** The RTMP server's authorisation hook. */
  authorize = async (request: PublishRequest): Promise<PublishDecision> => {
    const decision = await this.#authority.authorize(request.key);
    if (!decision.allowed) return decision;
    return { allowed: true, forward: decision.forward };
  };

  onLive(stream: LiveStream): void {
    this.#authority.streamStarted?.(stream.key);
    const relay = new StreamRelay(
      stream,
      this.#options.supervisor,
      this.#options.maxDestinationsPerStream,
    );
    this.#relays.set(stream.key, relay);
    this.#applyForwarding(relay, stream.publisher?.forward ?? false);
  }

  /**
   * The resuming publisher's own answer decides, compared with the previous publisher's:
   * `forward: false` after `true` stops every destination, API-added ones included (players keep
   * watching), `forward: true` after `false` starts the authority's, and the same answer as before
   * leaves every destination running untouched, whatever the API changed meanwhile, so the
   * platforms see no break.
   */
  onResumed(stream: LiveStream): void {
    const relay = this.#relays.get(stream.key);
    if (relay?.stream !== stream) return;
    this.#applyForwarding(relay, stream.publisher?.forward ?? false);
  }

  #applyForwarding(relay: StreamRelay, forward: boolean): void {
    if (forward === relay.forwarding) return;
    const ticket = relay.setForwarding(forward);
    if (forward) {
      this.#track(this.#startDestinations(relay, ticket));
      return;
    }
    if (relay.size > 0) {
      managerLog.info("publisher not to be forwarded: stopping {count} destination(s)", {
        ...streamFields(relay.stream.key),
        count: relay.size,
      });
    }
    this.#track(relay.removeAll());
  }

  onEnded(stream: LiveStream, reason: string): void {
    managerLog.info("stream ended: {reason}", { ...streamFields(stream.key), reason });
    const relay = this.#relays.get(stream.key);
    // Another live period's relay is not this end's to stop (nor to count twice, in the map and
    // as ended).
    if (relay?.stream === stream) {
      this.#relays.delete(stream.key);
      this.#ending.add(relay);
      this.#track(
        relay.stop().finally(() => {
          // One step, no await between: counted in exactly one of the two at every moment.
          this.#ending.delete(relay);
          this.#endedRelayBytes += relay.bytesSent;
        }),
      );
    }
    this.#track(this.#authority.streamEnded(stream.key));
  }

  async #startDestinations(relay: StreamRelay, ticket: number): Promise<void> {
    const context = { ...streamFields(relay.stream.key) };
    const fetched = await this.#fetchDestinations(relay, ticket);
    if (fetched === undefined) return;
    for (const problem of fetched.malformed) {
      managerLog.warn("destination skipped: {reason}", { ...context, reason: problem });
    }
    const selection = selectDestinations(fetched.records, relay.maxDestinations);
    for (const rejected of selection.rejected) {
      managerLog.warn("destination skipped: {reason}", {
        ...context,
        destination: rejected.id,
        reason: rejected.reason,
      });
    }
    let started = 0;
    for (const destination of selection.accepted) {
      try {
        relay.add(destination);
        started++;
      } catch (error) {
        // Already added through the API meanwhile, or the stream is full.
        if (!(error instanceof RangeError)) throw error;
        managerLog.warn("destination skipped: {reason}", {
          ...context,
          destination: destination.id,
          reason: error.message,
        });
      }
    }
    managerLog.info("relaying to {count} destination(s)", { ...context, count: started });
  }

  /**
   * The stream's destinations, asked for until the authority answers: one failed request at
   * go-live (the control plane deploying, a blip) would otherwise leave the stream live with no
   * destinations for its whole life, and an encoder's reconnect does not ask again (its stream
   * is already forwarded). Meanwhile the stream's view says why (`destinationsError`). Undefined
   * once the answer no longer matters: the stream ended, or a newer forwarding decision (a
   * resumed publisher's, or a refresh through the API) took over.
   */
  async #fetchDestinations(
    relay: StreamRelay,
    ticket: number,
  ): Promise<Awaited<ReturnType<StreamAuthority["destinations"]>> | undefined> {
    const key = relay.stream.key;
    const current = () => this.#relays.get(key) === relay && relay.decided === ticket;
    const stale = relay.decisionSignal; // aborts on a newer say, or when the stream ends
    const backoff = new Backoff(DESTINATIONS_RETRY);
    for (;;) {
      let wait: number;
      try {
        const fetched = await this.#authority.destinations(key);
        if (!current()) return undefined;
        relay.destinationsError = undefined;
        return fetched;
      } catch (error) {
        if (!current()) return undefined;
        wait = backoff.next(0);
        const reason = (error as Error).message;
        relay.destinationsError = `cannot fetch destinations: ${reason}`;
        managerLog.error("cannot fetch destinations: {reason}; asking again in {seconds} s", {
          ...streamFields(key),
          reason,
          seconds: wait / 1000,
        });
      }
      try {
        await delay(wait, { signal: stale });
      } catch (error) {
        if (stale.aborted) return undefined; // the stream ended, or a newer say took over
        throw error;
      }
      if (!current()) return undefined;
    }
  }

  /**
   * Asks the authority (control plane or static config) for the stream's destinations again and
   * applies them with `replaceDestinations`: unchanged destinations carry on untouched. Undefined
   * when the stream has no relay (not live). Throws when the authority cannot be asked, and
   * `SupersededRefresh` when the stream's destinations were decided again while it asked. What the
   * source found malformed is logged and returned in `malformed`, as at the stream's start.
   */
  async refreshDestinations(
    key: string,
  ): Promise<(DestinationChanges & { malformed: string[] }) | undefined> {
    const relay = this.#relays.get(key);
    if (relay === undefined) return undefined;
    const ticket = relay.ticket();
    const fetched = await this.#authority.destinations(key);
    // The stream ended while we asked.
    if (this.#relays.get(key) !== relay || relay.stopped) return undefined;
    // Throws SupersededRefresh if a newer say is applied before this one's turn.
    const changes = await relay.replaceDestinations(fetched.records, ticket);
    const context = { ...streamFields(key) };
    for (const problem of fetched.malformed) {
      managerLog.warn("destination skipped: {reason}", { ...context, reason: problem });
    }
    for (const rejected of changes.rejected) {
      managerLog.warn("destination skipped: {reason}", {
        ...context,
        destination: rejected.id,
        reason: rejected.reason,
      });
    }
    managerLog.info(
      "destinations refreshed: {added} added, {removed} removed, {restarted} restarted, {kept} kept",
      {
        ...context,
        added: changes.added.length,
        removed: changes.removed.length,
        restarted: changes.restarted.length,
        kept: changes.kept.length,
      },
    );
    return { ...changes, malformed: fetched.malformed };
  }

  #track(work: Promise<void>): void {
    this.#background.add(work);
    void work.finally(() => this.#background.delete(work));
  }

  /**
   * Waits for destinations being stopped and stream ends being reported, until `deadlineAt`
   * (`performance.now()`) at most: reports not delivered by then stay in the outbox.
   */
  async settle(deadlineAt = Infinity): Promise<void> {
    while (this.#background.size > 0) {
      const left = deadlineAt - performance.now();
      if (left <= 0 || !await settlesWithin(Promise.all(this.#background), left)) break;
    }
    await this.#authority.flush(deadlineAt);
  }
}
