/**
 * TLS for `rtmps://` tests: a throwaway CA and certificates made with `openssl` at test time, and a
 * TLS front (`Deno.listenTls`) that terminates TLS on loopback and forwards the plain bytes to an
 * RTMP sink behind it, as a platform's ingest does. FFmpeg cannot listen on `rtmps://` itself
 * ("rtmp_listen not available for rtmps").
 *
 * @module
 */

import { run } from "./process.ts";

export interface TestPki {
  /** The test CA's certificate (what `tls_ca_file` points at to trust it). */
  caFile: string;
  /** Signed by the CA, valid for 127.0.0.1 and localhost. */
  trusted: CertificatePair;
  /** Signed by the CA, valid only for ingest.example.com. */
  otherHost: CertificatePair;
  /** Self-signed, valid for 127.0.0.1: nobody vouches for it. */
  selfSigned: CertificatePair;
}

export interface CertificatePair {
  certFile: string;
  keyFile: string;
}

async function issue(
  dir: string,
  name: string,
  subjectAltName: string,
  ca: { certFile: string; keyFile: string },
): Promise<CertificatePair> {
  const keyFile = `${dir}/${name}.key`;
  const certFile = `${dir}/${name}.pem`;
  await Deno.writeTextFile(`${dir}/${name}.ext`, `subjectAltName=${subjectAltName}\n`);
  await run("openssl", [
    "req",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    keyFile,
    "-out",
    `${dir}/${name}.csr`,
    "-subj",
    `/CN=${name}`,
  ]);
  await run("openssl", [
    "x509",
    "-req",
    "-in",
    `${dir}/${name}.csr`,
    "-CA",
    ca.certFile,
    "-CAkey",
    ca.keyFile,
    "-CAcreateserial",
    "-days",
    "2",
    "-extfile",
    `${dir}/${name}.ext`,
    "-out",
    certFile,
  ]);
  return { certFile, keyFile };
}

async function selfSigned(
  dir: string,
  name: string,
  extraArgs: string[],
): Promise<CertificatePair> {
  const keyFile = `${dir}/${name}.key`;
  const certFile = `${dir}/${name}.pem`;
  await run("openssl", [
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-days",
    "2",
    "-keyout",
    keyFile,
    "-out",
    certFile,
    "-subj",
    `/CN=${name}`,
    ...extraArgs,
  ]);
  return { certFile, keyFile };
}

/** A fresh CA and three server certificates in `dir` (nothing reused between runs). */
export async function makeTestPki(dir: string): Promise<TestPki> {
  await Deno.mkdir(dir, { recursive: true });
  const ca = await selfSigned(dir, "Neustream Test CA", []);
  return {
    caFile: ca.certFile,
    trusted: await issue(dir, "trusted", "IP:127.0.0.1,DNS:localhost", ca),
    otherHost: await issue(dir, "other-host", "DNS:ingest.example.com", ca),
    selfSigned: await selfSigned(dir, "self-signed", ["-addext", "subjectAltName=IP:127.0.0.1"]),
  };
}

/** What the TLS front saw: enough to prove that nothing reached the sink. */
export interface TlsFrontStats {
  /** TCP connections accepted. */
  accepted: number;
  /** Connections whose handshake failed on our side. */
  handshakeFailures: number;
  /** Connections that closed after the handshake without sending one application byte. */
  closedBeforeAnyByte: number;
  /** Connections that sent application bytes (RTMP) and were forwarded to the sink. */
  forwarded: number;
  /** Application bytes received from clients. */
  bytesIn: number;
}

async function writeAll(to: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) offset += await to.write(bytes.subarray(offset));
}

/**
 * `rtmps://127.0.0.1:{port}` in front of a plain RTMP sink on `backendPort`. The sink is connected
 * only once a client has sent application data over an established TLS session.
 */
export class TlsFront implements AsyncDisposable {
  readonly port: number;
  readonly stats: TlsFrontStats = {
    accepted: 0,
    handshakeFailures: 0,
    closedBeforeAnyByte: 0,
    forwarded: 0,
    bytesIn: 0,
  };
  readonly #listener: Deno.TlsListener;
  readonly #backendPort: number;
  readonly #open = new Set<Deno.Conn>();
  readonly #handlers = new Set<Promise<void>>();
  readonly #accepting: Promise<void>;

  private constructor(listener: Deno.TlsListener, backendPort: number) {
    this.#listener = listener;
    this.#backendPort = backendPort;
    this.port = (listener.addr as Deno.NetAddr).port;
    this.#accepting = this.#accept();
  }

  static async start(pair: CertificatePair, backendPort: number): Promise<TlsFront> {
    const listener = Deno.listenTls({
      hostname: "127.0.0.1",
      port: 0,
      cert: await Deno.readTextFile(pair.certFile),
      key: await Deno.readTextFile(pair.keyFile),
    });
    return new TlsFront(listener, backendPort);
  }

  /** The base URL a destination pushes to. */
  get baseUrl(): string {
    return `rtmps://127.0.0.1:${this.port}/live`;
  }

  async #accept(): Promise<void> {
    try {
      for await (const conn of this.#listener) {
        this.stats.accepted++;
        const handler = this.#handle(conn);
        this.#handlers.add(handler);
        void handler.finally(() => this.#handlers.delete(handler));
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error; // closed by dispose
    }
  }

  #track(conn: Deno.Conn): void {
    this.#open.add(conn);
  }

  #close(conn: Deno.Conn): void {
    if (!this.#open.delete(conn)) return;
    try {
      conn.close();
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
  }

  async #handle(conn: Deno.TlsConn): Promise<void> {
    this.#track(conn);
    try {
      try {
        await conn.handshake();
      } catch {
        this.stats.handshakeFailures++;
        return;
      }
      const buffer = new Uint8Array(64 * 1024);
      const first = await conn.read(buffer).catch(() => null);
      if (first === null) {
        this.stats.closedBeforeAnyByte++;
        return;
      }
      this.stats.bytesIn += first;
      this.stats.forwarded++;
      const backend = await Deno.connect({ hostname: "127.0.0.1", port: this.#backendPort });
      this.#track(backend);
      try {
        await writeAll(backend, buffer.subarray(0, first));
        await Promise.all([
          this.#copy(conn, backend, (n) => this.stats.bytesIn += n),
          this.#copy(backend, conn, () => {}),
        ]);
      } finally {
        this.#close(backend);
      }
    } finally {
      this.#close(conn);
    }
  }

  /** Copies until end of input, then half-closes the other side; errors end the copy. */
  async #copy(from: Deno.Conn, to: Deno.Conn, count: (n: number) => void): Promise<void> {
    const buffer = new Uint8Array(64 * 1024);
    try {
      for (;;) {
        const n = await from.read(buffer);
        if (n === null) break;
        count(n);
        await writeAll(to, buffer.subarray(0, n));
      }
      await to.closeWrite();
    } catch {
      // One side went away (the sink closed, or dispose closed the sockets): end both.
      this.#close(from);
      this.#close(to);
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    try {
      this.#listener.close();
    } catch (error) {
      if (!(error instanceof Deno.errors.BadResource)) throw error;
    }
    await this.#accepting;
    for (const conn of [...this.#open]) this.#close(conn);
    await Promise.all([...this.#handlers]);
  }
}
