/**
 * One contract, every `StreamAuthority`: the same cases run against the control-plane client (over
 * real HTTP, against the fake control plane) and the static keys of `config.toml`, so callers can
 * rely on the interface alone and never test which class they hold.
 */

import { ControlPlaneClient } from "../../src/control_plane/http_client.ts";
import {
  type DestinationInput,
  DestinationSchema,
  selectDestinations,
} from "../../src/control_plane/destination.ts";
import { StaticAuthority } from "../../src/control_plane/static_authority.ts";
import type { StreamAuthority } from "../../src/control_plane/stream_authority.ts";
import { assert, assertEquals } from "../helpers/assert.ts";
import { FakeControlPlane } from "../helpers/fake_control_plane.ts";

interface SourceStream {
  key: string;
  destinations: DestinationInput[];
}

/** An authority built on a source holding `streams`, and what the source saw of stream ends. */
interface Subject extends AsyncDisposable {
  authority: StreamAuthority;
  /** Stream ends the source received, when it is a party that can be told (the control plane). */
  endsReceived(): string[] | undefined;
}

const implementations: [string, (streams: SourceStream[]) => Subject][] = [
  ["ControlPlaneClient", (streams) => {
    const find = (key: string) => streams.find((stream) => stream.key === key);
    const cp = new FakeControlPlane({
      auth: (name) =>
        find(name) === undefined
          ? { body: { code: 1, msg: "unknown stream key" } }
          : { body: { code: 0, data: { forward: find(name)!.destinations.length > 0 } } },
      forwarding: (key) => ({ body: { destinations: find(key)?.destinations ?? [] } }),
    });
    const authority = new ControlPlaneClient({
      url: cp.url,
      timeoutMs: 3_000,
      retryAttempts: 1,
      backoffBaseMs: 20,
    });
    return {
      authority,
      endsReceived: () => cp.streamEnds,
      async [Symbol.asyncDispose]() {
        await authority.flush();
        await cp.stop();
      },
    };
  }],
  ["StaticAuthority", (streams) => {
    // As `config.toml` gives them: each destination through the same schema.
    const authority = new StaticAuthority(streams.map((stream) => ({
      key: stream.key,
      destinations: stream.destinations.map((destination) => DestinationSchema.parse(destination)),
    })));
    return {
      authority,
      endsReceived: () => undefined,
      [Symbol.asyncDispose]: () => authority.flush(),
    };
  }],
];

const FORWARDED = "contract-forwarded-key-0001";
const PLAYERS_ONLY = "contract-players-only-key-0001";
const youtube = {
  id: "yt",
  platform: "youtube",
  rtmp_url: "rtmp://a.rtmp.youtube.com/live2",
  stream_key: "contract-destination-key-0001",
};
const unusable = [
  { id: "file", rtmp_url: "file:///etc/passwd", stream_key: "" },
  { id: "option", rtmp_url: "rtmp://example.com/live", stream_key: "-y" },
];
const STREAMS: SourceStream[] = [
  { key: FORWARDED, destinations: [youtube, { id: 7, rtmp_url: "rtmps://x.example/app" }] },
  { key: PLAYERS_ONLY, destinations: [] },
  { key: "contract-unusable-key-0001", destinations: [youtube, ...unusable] },
];

for (const [name, make] of implementations) {
  Deno.test(`${name} authorize() allows a known key, with forward as its destinations say`, async () => {
    await using subject = make(STREAMS);
    assertEquals(await subject.authority.authorize(FORWARDED), { allowed: true, forward: true });
    assertEquals(await subject.authority.authorize(PLAYERS_ONLY), {
      allowed: true,
      forward: false,
    });
  });

  Deno.test(`${name} authorize() refuses an unknown key with a reason and never throws`, async () => {
    await using subject = make(STREAMS);
    const decision = await subject.authority.authorize("contract-unknown-key-0001");
    assert(!decision.allowed, "refused");
    assert(decision.reason.length > 0, "a reason");
    assert(!decision.reason.includes("contract-unknown-key-0001"), "the key is not in the reason");
  });

  Deno.test(`${name} destinations() gives the records as the source holds them, ids as strings`, async () => {
    await using subject = make(STREAMS);
    const fetched = await subject.authority.destinations(FORWARDED);
    assertEquals(fetched.malformed, []);
    assertEquals(fetched.records, [
      { ...youtube, enabled: true },
      {
        id: "7",
        platform: "custom",
        rtmp_url: "rtmps://x.example/app",
        stream_key: "",
        enabled: true,
      },
    ]);
    assertEquals(await subject.authority.destinations(PLAYERS_ONLY), {
      records: [],
      malformed: [],
    });
  });

  Deno.test(`${name} destinations() leaves unusable targets to the caller's check, which refuses them the same way`, async () => {
    await using subject = make(STREAMS);
    const fetched = await subject.authority.destinations("contract-unusable-key-0001");
    assertEquals(fetched.records.map((record) => record.id), ["yt", "file", "option"]);
    const selection = selectDestinations([...fetched.records], 10);
    assertEquals(selection.accepted.map((destination) => destination.id), ["yt"]);
    assertEquals(selection.rejected, [
      {
        id: "file",
        reason: 'destination "file": rtmp_url scheme "file:" is not allowed (rtmp: or rtmps: only)',
      },
      { id: "option", reason: 'destination "option": stream_key must not start with "-"' },
    ]);
  });

  Deno.test(`${name} streamEnded() and flush() settle without throwing`, async () => {
    await using subject = make(STREAMS);
    await subject.authority.streamEnded(FORWARDED);
    await subject.authority.flush();
    const received = subject.endsReceived();
    if (received !== undefined) assertEquals(received, [FORWARDED]);
  });

  Deno.test(`${name} reload() swaps the keys when the source is config.toml, and is absent otherwise`, async () => {
    await using subject = make(STREAMS);
    const { authority } = subject;
    if (authority.mode === "control_plane") {
      assertEquals(authority.reload, undefined, "the control plane is not configured in the file");
      return;
    }
    assert(authority.reload !== undefined, "static keys come from config.toml");
    authority.reload({ streams: [{ key: "contract-new-key-0001", destinations: [] }] });
    assertEquals(await authority.authorize("contract-new-key-0001"), {
      allowed: true,
      forward: false,
    });
    assert(!(await authority.authorize(FORWARDED)).allowed, "a key gone from the file is refused");
  });
}
