/**
 * Verified `rtmps://` destinations. A TLS front of our own on loopback (certificates from a test CA
 * made with `openssl` in a temp dir) stands in for a platform's ingest, with a plain `ffmpeg
 * -listen 1` sink behind it. A trusted destination gets the stream bit-exact; one whose certificate
 * nobody vouches for, or that names another host, never receives a single RTMP byte (so never the
 * key) and shows why in its status while it retries.
 */

import { assert, assertEquals, assertMatch } from "../helpers/assert.ts";
import { assertSamePackets, fixture, framemd5 } from "../helpers/media.ts";
import { ffmpegPublish } from "../helpers/peers.ts";
import { freePort, tempDir, waitFor } from "../helpers/process.ts";
import { startTestRelay } from "../helpers/relay.ts";
import { startFfmpegSink } from "../helpers/sinks.ts";
import { type CertificatePair, makeTestPki, type TestPki, TlsFront } from "../helpers/tls.ts";
import { CA_BUNDLE_NAME, SYSTEM_CA_BUNDLES } from "../../src/relay/tls_trust.ts";
import type { DestinationStatus } from "../../src/relay/destination_supervisor.ts";

const STREAM_KEY = "rtmps-stream-0001";
const DESTINATION_KEY = "rtmps-destination-key-0001";

/** The relay with one destination behind `front` and the given `[streaming]` settings. */
function relayTo(front: TlsFront, streaming: Record<string, unknown>) {
  return startTestRelay({
    streaming,
    streams: [{
      key: STREAM_KEY,
      destinations: [{
        id: "tls",
        platform: "custom",
        rtmp_url: front.baseUrl,
        stream_key: DESTINATION_KEY,
      }],
    }],
  });
}

Deno.test("an rtmps destination whose certificate chains to tls_ca_file gets the stream bit-exact", async () => {
  await using dir = await tempDir();
  const pki = await makeTestPki(`${dir.path}/pki`);
  const source = await fixture({ seconds: 4, gop: 60 });
  const sinkPort = freePort();
  await using sink = await startFfmpegSink(sinkPort, DESTINATION_KEY, `${dir.path}/sink.flv`);
  await using front = await TlsFront.start(pki.trusted, sinkPort);
  await using relay = await relayTo(front, {
    tls_ca_file: pki.caFile,
    state_dir: `${dir.path}/state`,
  });
  // One bundle for FFmpeg (GnuTLS trusts only -ca_file when given): system roots + our CA, 0600.
  const bundlePath = `${dir.path}/state/${CA_BUNDLE_NAME}`;
  const bundle = await Deno.readTextFile(bundlePath);
  const systemRoots = await Deno.readTextFile(SYSTEM_CA_BUNDLES[0]!);
  assert(bundle.startsWith(systemRoots.trimEnd()), "the bundle starts with the system roots");
  assert(bundle.includes((await Deno.readTextFile(pki.caFile)).trim()), "and holds the test CA");
  assertEquals((await Deno.stat(bundlePath)).mode! & 0o777, 0o600);

  await using publisher = ffmpegPublish(source, relay.rtmpUrl(STREAM_KEY));
  const destination = await waitFor(
    () => relay.service.manager.relayFor(STREAM_KEY)?.get("tls"),
    "the destination",
  );
  await waitFor(() => destination.state === "connected", "the rtmps destination to connect");
  assertEquals((await publisher.wait()).code, 0, publisher.stderr);
  await sink.wait(15_000);
  assertSamePackets(
    await framemd5(`${dir.path}/sink.flv`),
    await framemd5(source),
    "rtmps sink",
  );
  assertEquals(front.stats.forwarded, 1, "one TLS session carried the stream");
  assertEquals(destination.status().error_count, 0);
  assert(!relay.logText().includes(DESTINATION_KEY), "the destination key is never logged");
});

/**
 * Publishes to a destination behind a front presenting `certificate` until the relay has been
 * refused twice (so it retries), and returns what the API and the front saw. The sink behind the
 * front is there to prove it is never reached.
 */
async function refusedDestination(
  choose: (pki: TestPki) => CertificatePair,
  streaming: (pki: TestPki, dir: string) => Record<string, unknown>,
): Promise<{ status: DestinationStatus; front: TlsFront["stats"]; sinkGotFile: boolean }> {
  await using dir = await tempDir();
  const pki = await makeTestPki(`${dir.path}/pki`);
  const source = await fixture({ seconds: 30, gop: 30 });
  const sinkPort = freePort();
  await using sink = await startFfmpegSink(sinkPort, DESTINATION_KEY, `${dir.path}/sink.flv`);
  await using front = await TlsFront.start(choose(pki), sinkPort);
  await using relay = await relayTo(front, streaming(pki, dir.path));
  await using _publisher = ffmpegPublish(source, relay.rtmpUrl(STREAM_KEY));
  const destination = await waitFor(
    () => relay.service.manager.relayFor(STREAM_KEY)?.get("tls"),
    "the destination",
  );
  await waitFor(
    // A session that got through ends the wait at once: the assertions then say what leaked.
    () =>
      front.stats.forwarded > 0 ||
      (destination.state === "retrying" && destination.status().error_count >= 2),
    "two refused attempts",
    30_000,
  );
  const response = await fetch(relay.httpUrl(`/api/streams/forwarding/${STREAM_KEY}`));
  assertEquals(response.status, 200);
  const body = await response.json() as {
    destinations: { id: string; status: DestinationStatus }[];
  };
  const status = body.destinations.find((d) => d.id === "tls")!.status;
  assert(!relay.logText().includes(DESTINATION_KEY), "the destination key is never logged");
  assert(!sink.exited, `the sink is still waiting for a publisher:\n${sink.stderr}`);
  const sinkGotFile = await Deno.stat(`${dir.path}/sink.flv`).then(() => true, () => false);
  return { status, front: { ...front.stats }, sinkGotFile };
}

/**
 * What every refusal must show: retrying with the reason, and no RTMP byte ever over TLS. (GnuTLS
 * completes the handshake, then FFmpeg checks the certificate and closes: the front sees sessions
 * that end before their first application byte, the RTMP C0/C1 that would precede the key.)
 */
function assertNeverReceived(
  result: Awaited<ReturnType<typeof refusedDestination>>,
  expected: RegExp,
): void {
  const { status, front, sinkGotFile } = result;
  assertEquals(front.bytesIn, 0, `no RTMP byte (so no key) crossed TLS: ${JSON.stringify(front)}`);
  assertEquals(front.forwarded, 0, "the sink behind the front was never connected");
  assert(!sinkGotFile, "the sink never received a publish");
  assert(front.accepted >= 2, `the relay's FFmpeg reached the TLS front: ${JSON.stringify(front)}`);
  assertEquals(status.state, "retrying");
  assertMatch(status.last_error ?? "", expected);
  assert(status.error_count >= 2, "the destination retried");
}

Deno.test("an rtmps destination with a self-signed certificate never receives the publish", async () => {
  const result = await refusedDestination(
    (pki) => pki.selfSigned,
    (pki, dir) => ({ tls_ca_file: pki.caFile, state_dir: `${dir}/state` }),
  );
  assertNeverReceived(
    result,
    /^TLS certificate not trusted: the chain does not verify against the trusted CAs/,
  );
});

Deno.test("an rtmps destination signed by a CA that is not configured never receives the publish", async () => {
  // No tls_ca_file: the system roots alone, which do not include the test CA.
  const result = await refusedDestination((pki) => pki.trusted, () => ({}));
  assertNeverReceived(
    result,
    /^TLS certificate not trusted: the chain does not verify against the trusted CAs/,
  );
});

Deno.test("an rtmps destination whose trusted certificate names another host never receives the publish", async () => {
  const result = await refusedDestination(
    (pki) => pki.otherHost,
    (pki, dir) => ({ tls_ca_file: pki.caFile, state_dir: `${dir}/state` }),
  );
  assertNeverReceived(
    result,
    /^TLS certificate not trusted: host name mismatch \(the certificate is not valid for 127\.0\.0\.1\)$/,
  );
});
