/**
 * The destinations of one live stream: a supervisor each, added and removed while the stream runs.
 *
 * @module
 */

import type { Destination } from "../control_plane/destination.ts";
import type { LiveStream } from "../media/live_stream.ts";
import { DestinationSupervisor, type SupervisorOptions } from "./destination_supervisor.ts";

export class StreamRelay {
  readonly stream: LiveStream;
  readonly #options: SupervisorOptions;
  readonly #maxDestinations: number;
  readonly #supervisors = new Map<string, DestinationSupervisor>();
  #stopped = false;
  #forwarding = false;
  /** Counts forwarding decisions, so that an answer to an older one is recognised as stale. */
  #forwardingEpoch = 0;
  /** Bytes sent by destinations already removed. */
  #removedBytes = 0;

  constructor(stream: LiveStream, options: SupervisorOptions, maxDestinations: number) {
    this.stream = stream;
    this.#options = options;
    this.#maxDestinations = maxDestinations;
  }

  get size(): number {
    return this.#supervisors.size;
  }

  /** Whether the current publisher's authorisation asked for the destinations. */
  get forwarding(): boolean {
    return this.#forwarding;
  }

  get forwardingEpoch(): number {
    return this.#forwardingEpoch;
  }

  /** Records a new forwarding decision; returns its epoch. */
  setForwarding(forward: boolean): number {
    this.#forwarding = forward;
    return ++this.#forwardingEpoch;
  }

  /** Bytes written to every FFmpeg of this stream, removed destinations included. */
  get bytesSent(): number {
    let total = this.#removedBytes;
    for (const supervisor of this.#supervisors.values()) total += supervisor.status().bytes_sent;
    return total;
  }

  list(): DestinationSupervisor[] {
    return [...this.#supervisors.values()];
  }

  get(id: string): DestinationSupervisor | undefined {
    return this.#supervisors.get(id);
  }

  /** Starts relaying to `destination`. Throws `RangeError` on a duplicate id or when full. */
  add(destination: Destination): DestinationSupervisor {
    if (this.#stopped) throw new RangeError("stream relay already stopped");
    if (this.#supervisors.has(destination.id)) {
      throw new RangeError(`destination ${JSON.stringify(destination.id)} already exists`);
    }
    if (this.#supervisors.size >= this.#maxDestinations) {
      throw new RangeError(
        `stream already has ${this.#maxDestinations} destinations (the maximum)`,
      );
    }
    const supervisor = new DestinationSupervisor(destination, this.stream, this.#options);
    this.#supervisors.set(destination.id, supervisor);
    supervisor.start();
    return supervisor;
  }

  /** Stops and removes one destination; false when there is no such id. */
  async remove(id: string): Promise<boolean> {
    const supervisor = this.#supervisors.get(id);
    if (supervisor === undefined) return false;
    this.#supervisors.delete(id);
    await supervisor.stop();
    this.#removedBytes += supervisor.status().bytes_sent;
    return true;
  }

  /** Stops every destination and waits until each FFmpeg is reaped; more may be added later. */
  async removeAll(): Promise<void> {
    const supervisors = this.list();
    this.#supervisors.clear();
    await Promise.all(supervisors.map((supervisor) => supervisor.stop()));
    for (const supervisor of supervisors) this.#removedBytes += supervisor.status().bytes_sent;
  }

  /** Stops every destination for good and waits until each FFmpeg is reaped. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.removeAll();
  }
}
