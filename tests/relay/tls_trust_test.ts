/**
 * The CA bundle given to FFmpeg for `rtmps://` destinations: system roots plus `tls_ca_file`,
 * written to `state_dir`, rebuilt on reload. Certificates come from a test CA made with openssl.
 */

import { CA_BUNDLE_NAME, prepareTlsTrust } from "../../src/relay/tls_trust.ts";
import { assert, assertEquals, assertRejects, assertThrows } from "../helpers/assert.ts";
import { tempDir } from "../helpers/process.ts";
import { startTestRelay } from "../helpers/relay.ts";
import { makeTestPki } from "../helpers/tls.ts";

Deno.test("prepareTlsTrust() leaves FFmpeg on the system roots when no tls_ca_file is set", async () => {
  await using dir = await tempDir();
  const trust = prepareTlsTrust({ caFile: undefined, stateDir: `${dir.path}/state` });
  assertEquals(trust, { caFile: undefined, systemBundle: undefined, extraCertificates: 0 });
  assert(!(await Deno.stat(`${dir.path}/state`).then(() => true, () => false)), "nothing written");
});

Deno.test("prepareTlsTrust() writes the system roots then tls_ca_file into state_dir, mode 0600", async () => {
  await using dir = await tempDir();
  const pki = await makeTestPki(`${dir.path}/pki`);
  // A stand-in for the system bundle: any PEM of roots will do.
  const system = await Deno.readTextFile(pki.selfSigned.certFile);
  await Deno.writeTextFile(`${dir.path}/system.pem`, system);
  const operator = await Deno.readTextFile(pki.caFile);
  const stateDir = `${dir.path}/state/nested`;
  const trust = prepareTlsTrust({
    caFile: pki.caFile,
    stateDir,
    systemBundles: [`${dir.path}/absent.pem`, `${dir.path}/system.pem`],
  });
  assertEquals(trust, {
    caFile: `${stateDir}/${CA_BUNDLE_NAME}`,
    systemBundle: `${dir.path}/system.pem`,
    extraCertificates: 1,
  });
  assertEquals(await Deno.readTextFile(trust.caFile!), `${system.trim()}\n${operator.trim()}\n`);
  assertEquals((await Deno.stat(trust.caFile!)).mode! & 0o777, 0o600);
  assertEquals((await Deno.stat(stateDir)).mode! & 0o777, 0o700);
  // Written again (a reload): replaced whole, still 0600, no temporary file left behind.
  await Deno.chmod(trust.caFile!, 0o644);
  prepareTlsTrust({ caFile: pki.caFile, stateDir, systemBundles: [`${dir.path}/system.pem`] });
  assertEquals((await Deno.stat(trust.caFile!)).mode! & 0o777, 0o600);
  const names: string[] = [];
  for await (const entry of Deno.readDir(stateDir)) names.push(entry.name);
  assertEquals(names, [CA_BUNDLE_NAME]);
});

Deno.test("prepareTlsTrust() trusts only tls_ca_file when no system bundle exists", async () => {
  await using dir = await tempDir();
  const pki = await makeTestPki(`${dir.path}/pki`);
  const trust = prepareTlsTrust({
    caFile: pki.caFile,
    stateDir: `${dir.path}/state`,
    systemBundles: [`${dir.path}/absent.pem`],
  });
  assertEquals(trust.systemBundle, undefined);
  assertEquals(
    await Deno.readTextFile(trust.caFile!),
    `${(await Deno.readTextFile(pki.caFile)).trim()}\n`,
  );
});

Deno.test("prepareTlsTrust() refuses a tls_ca_file that is missing, empty of certificates or broken", async () => {
  await using dir = await tempDir();
  const stateDir = `${dir.path}/state`;
  assertThrows(
    () => prepareTlsTrust({ caFile: `${dir.path}/missing.pem`, stateDir }),
    Error,
    `[streaming] tls_ca_file cannot be read: ${dir.path}/missing.pem does not exist`,
  );
  await Deno.writeTextFile(`${dir.path}/empty.pem`, "not a certificate\n");
  assertThrows(
    () => prepareTlsTrust({ caFile: `${dir.path}/empty.pem`, stateDir }),
    SyntaxError,
    "holds no PEM certificate",
  );
  await Deno.writeTextFile(
    `${dir.path}/broken.pem`,
    "-----BEGIN CERTIFICATE-----\nMIIBbroken\n-----END CERTIFICATE-----\n",
  );
  assertThrows(
    () => prepareTlsTrust({ caFile: `${dir.path}/broken.pem`, stateDir }),
    SyntaxError,
    "certificate 1 is not valid X.509",
  );
});

Deno.test("prepareTlsTrust() says so when state_dir cannot be written", async () => {
  await using dir = await tempDir();
  const pki = await makeTestPki(`${dir.path}/pki`);
  await Deno.writeTextFile(`${dir.path}/a-file`, "");
  assertThrows(
    () => prepareTlsTrust({ caFile: pki.caFile, stateDir: `${dir.path}/a-file/state` }),
    Error,
    `the rtmps CA bundle cannot be written to [streaming] state_dir ${dir.path}/a-file/state`,
  );
});

Deno.test("RelayService.start() fails with one line when tls_ca_file cannot be read", async () => {
  await using dir = await tempDir();
  await assertRejects(
    () =>
      startTestRelay({
        streaming: { tls_ca_file: `${dir.path}/missing.pem`, state_dir: `${dir.path}/state` },
      }),
    Error,
    "[streaming] tls_ca_file cannot be read",
  );
});

Deno.test("RelayService.reload() rebuilds the rtmps CA bundle and keeps the old one when the file breaks", async () => {
  await using dir = await tempDir();
  const pki = await makeTestPki(`${dir.path}/pki`);
  const caFile = `${dir.path}/operator.pem`;
  await Deno.copyFile(pki.caFile, caFile);
  await using relay = await startTestRelay({
    streaming: { tls_ca_file: caFile, state_dir: `${dir.path}/state` },
  });
  const bundle = `${dir.path}/state/${CA_BUNDLE_NAME}`;
  const first = await Deno.readTextFile(bundle);
  assert(first.includes((await Deno.readTextFile(pki.caFile)).trim()));
  // The operator adds a CA and reloads (SIGHUP): FFmpegs started from now on trust it.
  const added = (await Deno.readTextFile(pki.selfSigned.certFile)).trim();
  await Deno.writeTextFile(caFile, `${await Deno.readTextFile(pki.caFile)}${added}\n`);
  relay.service.reload(relay.service.currentConfig);
  const second = await Deno.readTextFile(bundle);
  assert(second.startsWith(first.trimEnd()) && second.trimEnd().endsWith(added), "CA added");
  // A broken file is refused with a log line; the bundle in use stays.
  await Deno.writeTextFile(caFile, "garbage\n");
  relay.service.reload(relay.service.currentConfig);
  assertEquals(await Deno.readTextFile(bundle), second);
  assert(relay.logText().includes("rtmps trust not reloaded, keeping the previous one"));
});
