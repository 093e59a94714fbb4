/**
 * The management server's TLS identity: the administrator's certificate, or a self-signed
 * one made at first start and kept in the data directory, whose fingerprint machines and
 * the admin CLI pin at enrollment. Plain HTTP is allowed on loopback only.
 */
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { generate } from 'selfsigned';

import { ReimageError } from '../errors.js';
import { writeAtomic } from '../content/store.js';

/** The certificate and key the server listens with. */
export interface ServerCertificate {
  /** The certificate in PEM form; may hold the chain after the server's own certificate. */
  cert: string;
  /** The private key in PEM form. */
  key: string;
  /** `sha256:AB:CD:...`: the SHA-256 of the server's own (first) certificate, as clients pin it. */
  fingerprint: string;
  /** True when reimage made the certificate (no administrator's certificate was given). */
  selfSigned: boolean;
  notAfter: Date;
}

export interface CertificateOptions {
  /** The server's data directory; a self-signed certificate is kept in `<dataDir>/tls/`. */
  dataDir: string;
  /** The administrator's certificate (PEM); given together with `keyFile`. */
  certFile?: string;
  /** The administrator's private key (PEM, unencrypted). */
  keyFile?: string;
  /** Names and addresses (besides this host's) put in a newly made self-signed certificate. */
  hostnames?: string[];
}

const SELF_SIGNED_YEARS = 10;

/**
 * The administrator's certificate when `certFile` and `keyFile` are given; otherwise the
 * self-signed certificate in `<dataDir>/tls/`, made on first call and reused ever after
 * (its fingerprint is pinned by clients, so it is never silently replaced).
 */
export async function loadOrCreateCertificate(
  options: CertificateOptions,
): Promise<ServerCertificate> {
  const { certFile, keyFile } = options;
  if (certFile !== undefined || keyFile !== undefined) {
    if (certFile === undefined || keyFile === undefined) {
      throw new ReimageError(
        'SERVER_CONFIG_INVALID',
        'A TLS certificate file and its key file go together: give both, or neither to use a self-signed certificate.',
        { details: { certFile, keyFile } },
      );
    }
    return loadPair(certFile, keyFile, false);
  }

  const dir = path.join(options.dataDir, 'tls');
  const certPath = path.join(dir, 'server.crt');
  const keyPath = path.join(dir, 'server.key');
  if (await exists(certPath)) {
    if (!(await exists(keyPath))) {
      throw new ReimageError(
        'SERVER_CONFIG_INVALID',
        `The self-signed certificate ${certPath} has no key beside it (${keyPath}). Restore the key, or remove the certificate to make a new one (machines and admins must then pin the new fingerprint).`,
        { details: { certFile: certPath, keyFile: keyPath } },
      );
    }
    return loadPair(certPath, keyPath, true);
  }
  // The key is written before the certificate, so a key without a certificate is left
  // over from an interrupted first start: it was never served or pinned, and is replaced.
  return createSelfSigned(dir, certPath, keyPath, options.hostnames ?? []);
}

/** `sha256:AB:CD:...` of the first certificate in `pem` (the form clients pin). */
export function certificateFingerprint(pem: string): string {
  return `sha256:${new X509Certificate(pem).fingerprint256}`;
}

/**
 * Refuses to serve plain HTTP on anything but loopback (127.0.0.0/8, ::1, localhost):
 * machines' and admins' tokens would cross the network in clear.
 */
export function checkListenAddress(host: string, tls: boolean): void {
  if (tls || isLoopback(host)) return;
  throw new ReimageError(
    'SERVER_CONFIG_INVALID',
    `Plain HTTP is only served on loopback (127.0.0.1, ::1, localhost), not on "${host}": tokens would cross the network in clear. Listen with TLS, or on a loopback address behind a TLS proxy.`,
    { details: { host } },
  );
}

function isLoopback(host: string): boolean {
  const h = host
    .trim()
    .toLowerCase()
    .replace(/^\[(.*)\]$/, '$1');
  if (h === 'localhost') return true;
  const v4 = h.startsWith('::ffff:') ? h.slice('::ffff:'.length) : h;
  if (net.isIPv4(v4)) return v4.split('.')[0] === '127';
  if (net.isIPv6(h)) {
    // Both spellings of ::1 (::1, 0:0:0:0:0:0:0:1, ...).
    const list = new net.BlockList();
    list.addAddress('::1', 'ipv6');
    return list.check(h, 'ipv6');
  }
  return false;
}

async function loadPair(
  certFile: string,
  keyFile: string,
  selfSigned: boolean,
): Promise<ServerCertificate> {
  const cert = await readText(certFile, 'certificate');
  const key = await readText(keyFile, 'private key');

  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch (cause) {
    throw new ReimageError(
      'SERVER_CONFIG_INVALID',
      `The TLS certificate file ${certFile} does not hold a PEM certificate.`,
      { cause, details: { certFile } },
    );
  }
  let keyObject: KeyObject;
  try {
    keyObject = createPrivateKey(key);
  } catch (cause) {
    throw new ReimageError(
      'SERVER_CONFIG_INVALID',
      `The TLS key file ${keyFile} does not hold an unencrypted PEM private key.`,
      { cause, details: { keyFile } },
    );
  }
  if (!x509.checkPrivateKey(keyObject)) {
    throw new ReimageError(
      'SERVER_CONFIG_INVALID',
      `The TLS key file ${keyFile} is not the key of the certificate ${certFile}. Give the key that goes with the certificate.`,
      { details: { certFile, keyFile } },
    );
  }

  const now = Date.now();
  const notBefore = new Date(x509.validFrom);
  const notAfter = new Date(x509.validTo);
  if (notAfter.getTime() <= now) {
    throw new ReimageError(
      'SERVER_CONFIG_INVALID',
      `The TLS certificate ${certFile} expired on ${notAfter.toISOString()}. ` +
        (selfSigned
          ? 'Remove it and its key to make a new self-signed certificate; machines and admins must then pin the new fingerprint.'
          : 'Renew it and give the new certificate and key.'),
      { details: { certFile, notAfter: notAfter.toISOString() } },
    );
  }
  if (notBefore.getTime() > now) {
    throw new ReimageError(
      'SERVER_CONFIG_INVALID',
      `The TLS certificate ${certFile} is not valid before ${notBefore.toISOString()}. Check this computer's clock, or give a certificate valid now.`,
      { details: { certFile, notBefore: notBefore.toISOString() } },
    );
  }

  return {
    cert,
    key,
    fingerprint: `sha256:${x509.fingerprint256}`,
    selfSigned,
    notAfter,
  };
}

async function createSelfSigned(
  dir: string,
  certPath: string,
  keyPath: string,
  hostnames: string[],
): Promise<ServerCertificate> {
  const names = [...new Set(['localhost', '127.0.0.1', '::1', os.hostname(), ...hostnames])];
  const altNames = names
    .filter((n) => n !== '')
    .map((n) => (net.isIP(n) ? { type: 7 as const, ip: n } : { type: 2 as const, value: n }));

  // Back-date by a day so that a machine whose clock is slightly behind still accepts it.
  const notBefore = new Date(Date.now() - 24 * 3600 * 1000);
  const notAfter = new Date(notBefore);
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + SELF_SIGNED_YEARS);

  const made = await generate([{ name: 'commonName', value: 'reimage-server' }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: notBefore,
    notAfterDate: notAfter,
    extensions: [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames },
    ],
  });

  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await fs.chmod(dir, 0o700);
  writeAtomic(keyPath, made.private, true, 0o600);
  writeAtomic(certPath, made.cert, true, 0o644);

  const x509 = new X509Certificate(made.cert);
  return {
    cert: made.cert,
    key: made.private,
    fingerprint: `sha256:${x509.fingerprint256}`,
    selfSigned: true,
    notAfter: new Date(x509.validTo),
  };
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (cause) {
    throw new ReimageError(
      'SERVER_CONFIG_INVALID',
      `Cannot read the TLS ${what} file ${file}: ${(cause as NodeJS.ErrnoException).code ?? String(cause)}.`,
      { cause, details: { file } },
    );
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.lstat(file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    // Anything else (EACCES, ...) must not look like "absent": that would replace a pinned key.
    throw new ReimageError('SERVER_CONFIG_INVALID', `Cannot look at ${file}: ${String(e)}`, {
      cause: e,
      details: { file },
    });
  }
}
