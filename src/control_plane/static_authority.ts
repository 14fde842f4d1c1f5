/**
 * Static mode: with no control plane configured, the `[[streams]]` of `config.toml` say which keys
 * may publish and where each goes. `reload` swaps the table in one step (SIGHUP); streams already
 * live keep the destinations they started with until refreshed through the API.
 *
 * @module
 */

import type { DestinationRecord } from "./destination.ts";
import type { AuthDecision, StaticStream, StreamAuthority } from "./stream_authority.ts";

export type { StaticStream };

export class StaticAuthority implements StreamAuthority {
  readonly mode = "static";
  #streams = new Map<string, DestinationRecord[]>();

  constructor(streams: readonly StaticStream[]) {
    this.reload({ streams });
  }

  reload({ streams }: { readonly streams: readonly StaticStream[] }): void {
    this.#streams = new Map(streams.map((stream) => [stream.key, stream.destinations]));
  }

  authorize(key: string): Promise<AuthDecision> {
    const destinations = this.#streams.get(key);
    if (destinations === undefined) {
      return Promise.resolve({ allowed: false, reason: "stream key not in config.toml" });
    }
    return Promise.resolve({ allowed: true, forward: destinations.length > 0 });
  }

  destinations(key: string): Promise<{ records: DestinationRecord[]; malformed: string[] }> {
    return Promise.resolve({ records: [...(this.#streams.get(key) ?? [])], malformed: [] });
  }

  streamEnded(_key: string): Promise<void> {
    return Promise.resolve();
  }

  flush(_deadlineAt?: number): Promise<void> {
    return Promise.resolve();
  }
}
