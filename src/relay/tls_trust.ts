/**
 * Whom `rtmps://` destinations trust. FFmpeg verifies the server's chain and host name
 * (`-tls_verify 1`) against the system's roots; an operator's own CAs (`[streaming] tls_ca_file`)
 * come on top of those. Debian's FFmpeg uses GnuTLS, which with `-ca_file` trusts ONLY that file,
 * so with extra CAs we hand it one bundle: the system roots followed by the operator's CAs, written
 * to `<state_dir>/rtmps-ca-bundle.pem`.
 *
 * @module
 */

import { X509Certificate } from "node:crypto";

/**
 * Where the system roots are kept as one PEM file: the file GnuTLS's system trust reads on Debian
 * and Ubuntu (also Alpine and Arch), our hosts. Only this directory is in the relay's read
 * permissions (src/permissions.ts), so another distribution's path would be refused, not found.
 */
export const SYSTEM_CA_BUNDLES: readonly string[] = ["/etc/ssl/certs/ca-certificates.crt"];

export const CA_BUNDLE_NAME = "rtmps-ca-bundle.pem";

export interface TlsTrustOptions {
  /** `[streaming] tls_ca_file`: PEM of extra CAs, or undefined for the system roots alone. */
  caFile: string | undefined;
  /** `[streaming] state_dir`: where the bundle is written. */
  stateDir: string;
  /** Candidates for the system roots, first existing wins (tests point it elsewhere). */
  systemBundles?: readonly string[];
}

/** What every `rtmps://` attempt reads as it starts (a reload replaces both). */
export interface TlsSettings {
  /** FFmpeg's `-ca_file`: the bundle `prepareTlsTrust` wrote, or undefined (its own trust). */
  caFile: string | undefined;
  /** `[streaming] tls_ca_file` as configured: the native engine adds the system roots itself. */
  operatorCaFile: string | undefined;
}

/** What FFmpeg is told for `rtmps://` outputs. */
export interface TlsTrust {
  /** `-ca_file` for FFmpeg; undefined: FFmpeg's own system trust. */
  caFile: string | undefined;
  /** The system bundle included, or undefined when none was found (operator's CAs only). */
  systemBundle: string | undefined;
  /** Certificates taken from `tls_ca_file`. */
  extraCertificates: number;
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Why reading `path` failed, in words an operator can act on. */
function readFailure(path: string, error: unknown): string {
  if (error instanceof Deno.errors.NotFound) return `${path} does not exist`;
  if (error instanceof Deno.errors.NotCapable) {
    return `${path} is not readable under Deno's permissions (--allow-read)`;
  }
  if (error instanceof Deno.errors.PermissionDenied) return `${path}: permission denied`;
  return `${path}: ${(error as Error).message}`;
}

/**
 * The operator's CAs as PEM blocks, each one parsed: a truncated or garbled certificate would make
 * GnuTLS drop the rest of the bundle, system roots included.
 */
function readOperatorCertificates(path: string): string[] {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch (error) {
    throw new Error(`[streaming] tls_ca_file cannot be read: ${readFailure(path, error)}`);
  }
  const blocks = text.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) {
    throw new SyntaxError(`[streaming] tls_ca_file ${path} holds no PEM certificate`);
  }
  blocks.forEach((block, index) => {
    try {
      new X509Certificate(block);
    } catch (error) {
      throw new SyntaxError(
        `[streaming] tls_ca_file ${path}: certificate ${index + 1} is not valid X.509 (${
          (error as Error).message
        })`,
      );
    }
  });
  return blocks;
}

/** The first system bundle that exists, with its text; undefined when there is none. */
function readSystemBundle(
  candidates: readonly string[],
): { path: string; text: string } | undefined {
  for (const path of candidates) {
    try {
      return { path, text: Deno.readTextFileSync(path) };
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) continue;
      throw new Error(`the system CA bundle cannot be read: ${readFailure(path, error)}`);
    }
  }
  return undefined;
}

/**
 * Decides what FFmpeg trusts and, with `tls_ca_file`, writes the combined bundle (mode 0600,
 * replaced atomically so an FFmpeg starting meanwhile never reads half a file). Synchronous: it
 * runs at start and on reload, and reads a few hundred KiB at most. Throws `Error` (unreadable
 * file, unwritable `state_dir`) or `SyntaxError` (no or broken certificate) with one clear line.
 */
export function prepareTlsTrust(options: TlsTrustOptions): TlsTrust {
  if (options.caFile === undefined) {
    return { caFile: undefined, systemBundle: undefined, extraCertificates: 0 };
  }
  const extra = readOperatorCertificates(options.caFile);
  const system = readSystemBundle(options.systemBundles ?? SYSTEM_CA_BUNDLES);
  const bundlePath = `${options.stateDir.replace(/\/+$/, "")}/${CA_BUNDLE_NAME}`;
  const text = `${system ? `${system.text.trimEnd()}\n` : ""}${extra.join("\n")}\n`;
  const temporary = `${bundlePath}.tmp`;
  try {
    Deno.mkdirSync(options.stateDir, { recursive: true, mode: 0o700 });
    Deno.writeTextFileSync(temporary, text, { mode: 0o600 });
    Deno.chmodSync(temporary, 0o600); // mode applies only to a new file; a leftover keeps its own
    Deno.renameSync(temporary, bundlePath);
  } catch (error) {
    const reason = error instanceof Deno.errors.NotCapable
      ? "not allowed by Deno's permissions (it needs --allow-read and --allow-write of state_dir)"
      : (error as Error).message;
    throw new Error(
      `the rtmps CA bundle cannot be written to [streaming] state_dir ${options.stateDir}: ${reason}`,
    );
  }
  return { caFile: bundlePath, systemBundle: system?.path, extraCertificates: extra.length };
}

/**
 * What the native engine hands `Deno.connectTls` as `caCerts`: the system roots followed by the
 * operator's `tls_ca_file`, one PEM certificate each. Deno adds `caCerts` to its own default
 * store (Mozilla's roots bundled in Deno, unless `DENO_TLS_CA_STORE=system`), so passing the
 * system bundle makes "system roots plus tls_ca_file" true whichever store Deno starts from,
 * including CAs an operator added with update-ca-certificates. Throws as `prepareTlsTrust` does.
 */
export function trustedCertificates(
  options: { caFile: string | undefined; systemBundles?: readonly string[] },
): string[] {
  const system = readSystemBundle(options.systemBundles ?? SYSTEM_CA_BUNDLES);
  const roots = system?.text.match(PEM_CERTIFICATE) ?? [];
  const extra = options.caFile === undefined ? [] : readOperatorCertificates(options.caFile);
  return [...roots, ...extra];
}
