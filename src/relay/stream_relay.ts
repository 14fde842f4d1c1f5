/**
 * The destinations of one live stream: a supervisor each, added, removed, replaced, enabled and
 * disabled while the stream runs. Changes are keyed by destination id: a destination whose target
 * did not change keeps its supervisor (the same FFmpeg), so the platform sees no break.
 *
 * @module
 */

import type { EngineName } from "./relay_engine.ts";
import { isDeepStrictEqual } from "node:util";
import {
  type Destination,
  type DestinationRecord,
  type DestinationSelection,
  selectDestinations,
} from "../control_plane/destination.ts";
import type { LiveStream } from "../media/live_stream.ts";
import {
  type DestinationState,
  type DestinationStatus,
  DestinationSupervisor,
  type SupervisorOptions,
} from "./destination_supervisor.ts";

/** A destination's state as the API shows it: the supervisor's, or `disabled` (no FFmpeg). */
export type RelayDestinationState = DestinationState | "disabled";

export interface RelayDestinationStatus extends Omit<DestinationStatus, "state"> {
  state: RelayDestinationState;
}

/** One destination of the stream, running or disabled, as the read model describes it. */
export interface RelayDestination {
  readonly destination: Destination;
  readonly enabled: boolean;
  status(): RelayDestinationStatus;
}

/** What `replaceDestinations` did, by destination id. */
export interface DestinationChanges {
  /** Not there before. */
  added: string[];
  /** Gone from the new list: stopped and forgotten. */
  removed: string[];
  /** Their target or `enabled` changed: the FFmpeg was stopped and/or a new one started. */
  restarted: string[];
  /** Unchanged: the same supervisor and FFmpeg carry on untouched. */
  kept: string[];
  /** Records refused by validation (not applied), with the reason. */
  rejected: { id: string; reason: string }[];
}

interface Entry {
  destination: Destination;
  /** Undefined while disabled. */
  supervisor: DestinationSupervisor | undefined;
  /** The last status of a stopped supervisor, so a disabled destination keeps its counters. */
  last: DestinationStatus | undefined;
}

/** Same push target, platform and every other validated field: nothing to restart for. */
function sameTarget(a: Destination, b: Destination): boolean {
  return isDeepStrictEqual(a, b);
}

/** A refresh whose answer came after a newer say on the stream's destinations was applied. */
export class SupersededRefresh extends Error {
  override name = "SupersededRefresh";
}

export class StreamRelay {
  readonly stream: LiveStream;
  readonly #options: SupervisorOptions;
  readonly #maxDestinations: number;
  /** Every destination by id, in the order given; disabled ones have no supervisor. */
  readonly #entries = new Map<string, Entry>();
  #stopped = false;
  #forwarding = false;
  /**
   * Says on the stream's destinations (a publisher's answer, a PUT, a refresh's fetch) are
   * numbered as they are made, or asked for; `#decided` is the newest applied. An answer to an
   * older one than that is stale.
   */
  #tickets = 0;
  #decided = 0;
  /** Aborted when a newer say is applied, or the relay stops: ends work for the old one. */
  #decision = new AbortController();
  /** Bytes sent by FFmpegs already stopped (removed, restarted or disabled destinations). */
  #removedBytes = 0;
  /**
   * Supervisors out of `#entries` whose FFmpeg is still being stopped (a drain can take seconds):
   * counted in `bytesSent` until their bytes move to `#removedBytes`, or the total would drop
   * meanwhile and Prometheus would read it as a counter reset.
   */
  readonly #stopping = new Set<DestinationSupervisor>();
  /** Replacements and enable/disable run one after the other, never interleaved. */
  #changes: Promise<unknown> = Promise.resolve();
  /**
   * Why the stream's destinations could not be fetched, while they are being asked for again;
   * undefined once they were, or when no fetch is under way.
   */
  destinationsError: string | undefined;

  constructor(stream: LiveStream, options: SupervisorOptions, maxDestinations: number) {
    this.stream = stream;
    this.#options = options;
    this.#maxDestinations = maxDestinations;
  }

  /** Stopped for good (the stream ended): no change is taken any more. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /**
   * Aborts when a say on the destinations newer than the one in force is applied, or the relay
   * stops: work for the one in force (a fetch being retried) then ends.
   */
  get decisionSignal(): AbortSignal {
    return this.#decision.signal;
  }

  /** Destinations of the stream, disabled ones included. */
  get size(): number {
    return this.#entries.size;
  }

  get maxDestinations(): number {
    return this.#maxDestinations;
  }

  /** Whether the current publisher's authorisation asked for the destinations. */
  get forwarding(): boolean {
    return this.#forwarding;
  }

  /** The newest say on the destinations applied (see `ticket`). */
  get decided(): number {
    return this.#decided;
  }

  /** A number for a say on the destinations about to be asked for (a refresh's fetch). */
  ticket(): number {
    return ++this.#tickets;
  }

  /** Records the publisher's forwarding decision, newer than any; returns its ticket. */
  setForwarding(forward: boolean): number {
    this.#forwarding = forward;
    return this.#decide(this.ticket());
  }

  /** `ticket` is in force: work for an older say is stale, and told so. */
  #decide(ticket: number): number {
    this.#decided = ticket;
    this.destinationsError = undefined; // a fetch still being retried was for the old say
    this.#decision.abort();
    this.#decision = new AbortController();
    return ticket;
  }

  /** Bytes written to every FFmpeg of this stream, stopped and stopping ones included. */
  get bytesSent(): number {
    let total = this.#removedBytes;
    for (const supervisor of this.list()) total += supervisor.status().bytes_sent;
    for (const supervisor of this.#stopping) total += supervisor.status().bytes_sent;
    return total;
  }

  /** The running destinations (disabled ones have no supervisor). */
  list(): DestinationSupervisor[] {
    return [...this.#entries.values()].flatMap((entry) => entry.supervisor ?? []);
  }

  /** Every destination, disabled ones with state `disabled`, in the order given. */
  destinations(): RelayDestination[] {
    return [...this.#entries.values()].map((entry) => {
      const supervisor = entry.supervisor;
      if (supervisor !== undefined) {
        return { destination: entry.destination, enabled: true, status: () => supervisor.status() };
      }
      return {
        destination: entry.destination,
        enabled: false,
        status: () => disabledStatus(entry, this.#options.engine ?? "ffmpeg"),
      };
    });
  }

  /** The supervisor of a running destination. */
  get(id: string): DestinationSupervisor | undefined {
    return this.#entries.get(id)?.supervisor;
  }

  /** Starts relaying to `destination`. Throws `RangeError` on a duplicate id or when full. */
  add(destination: Destination): DestinationSupervisor {
    if (this.#stopped) throw new RangeError("stream relay already stopped");
    if (this.#entries.has(destination.id)) {
      throw new RangeError(`destination ${JSON.stringify(destination.id)} already exists`);
    }
    if (this.#entries.size >= this.#maxDestinations) {
      throw new RangeError(
        `stream already has ${this.#maxDestinations} destinations (the maximum)`,
      );
    }
    const supervisor = this.#supervise(destination);
    this.#entries.set(destination.id, { destination, supervisor, last: undefined });
    supervisor.start();
    return supervisor;
  }

  /** Stops and removes one destination; false when there is no such id. */
  async remove(id: string): Promise<boolean> {
    const entry = this.#entries.get(id);
    if (entry === undefined) return false;
    this.#entries.delete(id);
    if (entry.supervisor !== undefined) await this.#retire(entry.supervisor);
    return true;
  }

  /**
   * Validates records as the control plane's are (`selectDestinations`, at most
   * `max_destinations_per_stream`), disabled ones included: they are kept, not started.
   */
  #select(records: readonly DestinationRecord[]): DestinationSelection & { enabled: Set<string> } {
    const selection = selectDestinations(
      records.map((record) => ({ ...record, enabled: true })),
      this.#maxDestinations,
    );
    const enabled = new Set<string>();
    for (const record of records) if (record.enabled) enabled.add(record.id);
    return { ...selection, enabled };
  }

  /**
   * Makes the stream's destinations exactly `records`, by id: new ones start from the last
   * keyframe, gone ones stop, those whose validated target or `enabled` changed are stopped and
   * started anew, and the rest are left untouched (same supervisor, same FFmpeg, nothing lost).
   * Records that fail validation are left out and reported in `rejected`. Resolves once every
   * stopped FFmpeg is reaped. Throws `RangeError` once the relay is stopped. `ticket` (a refresh)
   * is the say the list answers, taken when it was asked for: should a newer one have been applied
   * by the time this change's turn comes, nothing is applied and it throws `SupersededRefresh`.
   * Without one (a PUT) the list is the newest say when its turn comes.
   */
  replaceDestinations(
    records: readonly DestinationRecord[],
    ticket?: number,
  ): Promise<DestinationChanges> {
    return this.#serialised(() => this.#replace(records, ticket));
  }

  async #replace(
    records: readonly DestinationRecord[],
    ticket = this.ticket(),
  ): Promise<DestinationChanges> {
    if (this.#stopped) throw new RangeError("stream relay already stopped");
    if (ticket < this.#decided) {
      throw new SupersededRefresh(
        "the stream's destinations were decided again while they were being fetched (a returning publisher, or another change); nothing applied",
      );
    }
    // The latest list wins: a fetch for the publisher's forwarding still under way is now stale
    // and must not add its destinations on top of this list. `forwarding` stays the publisher's
    // answer: a returning publisher with the same answer leaves this list as it is.
    this.#decide(ticket);
    const selection = this.#select(records);
    const changes: DestinationChanges = {
      added: [],
      removed: [],
      restarted: [],
      kept: [],
      rejected: selection.rejected,
    };
    const old = new Map(this.#entries);
    const stopping: Promise<void>[] = [];
    const toStart: Entry[] = [];
    this.#entries.clear();
    for (const destination of selection.accepted) {
      const enabled = selection.enabled.has(destination.id);
      const previous = old.get(destination.id);
      old.delete(destination.id);
      if (previous === undefined) {
        const entry = this.#entry(destination, enabled, undefined);
        if (entry.supervisor !== undefined) toStart.push(entry);
        changes.added.push(destination.id);
        continue;
      }
      const wasEnabled = previous.supervisor !== undefined;
      if (sameTarget(previous.destination, destination) && wasEnabled === enabled) {
        this.#entries.set(destination.id, previous);
        changes.kept.push(destination.id);
        continue;
      }
      // The new FFmpeg starts only once the old one has sent its last packet and gone: never two
      // publishes to one target at once.
      if (previous.supervisor !== undefined) stopping.push(this.#retire(previous.supervisor));
      const entry = this.#entry(
        destination,
        enabled,
        previous.supervisor?.status() ?? previous.last,
      );
      if (entry.supervisor !== undefined) toStart.push(entry);
      changes.restarted.push(destination.id);
    }
    for (const [id, gone] of old) {
      if (gone.supervisor !== undefined) stopping.push(this.#retire(gone.supervisor));
      changes.removed.push(id);
    }
    // New destinations need not wait for the old ones to drain.
    for (const entry of toStart) {
      if (!changes.restarted.includes(entry.destination.id)) entry.supervisor!.start();
    }
    await Promise.all(stopping);
    for (const entry of toStart) {
      if (!changes.restarted.includes(entry.destination.id)) continue;
      // Replaced, disabled or stopped again meanwhile: that change owns it now.
      if (this.#stopped || this.#entries.get(entry.destination.id) !== entry) continue;
      entry.supervisor!.start();
    }
    return changes;
  }

  /**
   * Enables or disables one destination: disabling stops its FFmpeg and keeps its record (state
   * `disabled`); enabling starts a new FFmpeg from the last keyframe. False when there is no such
   * id. Doing what is already done changes nothing.
   */
  setEnabled(id: string, enabled: boolean): Promise<boolean> {
    return this.#serialised(async () => {
      const entry = this.#entries.get(id);
      if (entry === undefined) return false;
      if ((entry.supervisor !== undefined) === enabled || this.#stopped) return true;
      if (enabled) {
        entry.supervisor = this.#supervise(entry.destination);
        entry.supervisor.start();
        return true;
      }
      const supervisor = entry.supervisor!;
      entry.supervisor = undefined;
      entry.last = supervisor.status();
      await this.#retire(supervisor);
      entry.last = supervisor.status();
      return true;
    });
  }

  /** Stops every destination and waits until each FFmpeg is reaped; more may be added later. */
  async removeAll(): Promise<void> {
    const supervisors = this.list();
    this.#entries.clear();
    await Promise.all(supervisors.map((supervisor) => this.#retire(supervisor)));
  }

  /** Stops every destination for good and waits until each FFmpeg is reaped. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#decision.abort();
    await this.removeAll();
  }

  #supervise(destination: Destination): DestinationSupervisor {
    return new DestinationSupervisor(destination, this.stream, this.#options);
  }

  /** A new entry in the map, its supervisor created but not started yet. */
  #entry(destination: Destination, enabled: boolean, last: DestinationStatus | undefined): Entry {
    const entry: Entry = {
      destination,
      supervisor: enabled ? this.#supervise(destination) : undefined,
      last,
    };
    this.#entries.set(destination.id, entry);
    return entry;
  }

  /**
   * Stops a supervisor no longer in the map and counts what it sent. To be called in the same
   * turn as it leaves the map, before any await: `bytesSent` must find it somewhere at every
   * moment.
   */
  async #retire(supervisor: DestinationSupervisor): Promise<void> {
    this.#stopping.add(supervisor);
    try {
      await supervisor.stop();
    } finally {
      // One step, no await between: counted in exactly one of the two at every moment.
      this.#stopping.delete(supervisor);
      this.#removedBytes += supervisor.status().bytes_sent;
    }
  }

  #serialised<T>(change: () => Promise<T>): Promise<T> {
    const result = this.#changes.then(change);
    // The next change waits for this one to finish, failed or not; the caller sees the failure.
    this.#changes = result.catch(() => {});
    return result;
  }
}

/** A disabled destination's status: no engine running, the counters of its last run. */
function disabledStatus(entry: Entry, defaultEngine: EngineName): RelayDestinationStatus {
  const destination = entry.destination;
  const last = entry.last;
  return {
    id: destination.id,
    platform: destination.platform,
    url: destination.displayUrl,
    engine: last?.engine ?? destination.engine ?? defaultEngine,
    state: "disabled",
    connected: false,
    bytes_sent: last?.bytes_sent ?? 0,
    packets_sent: last?.packets_sent ?? 0,
    dropped_packets: last?.dropped_packets ?? 0,
    error_count: last?.error_count ?? 0,
    last_error: last?.last_error ?? null,
    failure: last?.failure ?? null,
    attempt: 0,
    next_attempt_at: null,
    restarts: last?.restarts ?? 0,
    started_at: last?.started_at ?? null,
    connected_at: last?.connected_at ?? null,
    bitrate_kbps: 0,
    pid: null,
    input_bitrate_kbps: 0,
    output_bitrate_kbps: 0,
    bytes_out: last?.bytes_out ?? 0,
    queue_lag_ms: 0,
    dropped_bytes: last?.dropped_bytes ?? 0,
    drop_episodes: last?.drop_episodes ?? 0,
    live_seconds: last?.live_seconds ?? 0,
    published_seconds: last?.published_seconds ?? 0,
    availability: last?.availability ?? 0,
    time_to_live_ms: last?.time_to_live_ms ?? null,
    reconnects: last?.reconnects ?? 0,
  };
}
