import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { generate } from 'selfsigned';

import { isReimageError, type ReimageError } from '../errors.js';
import { certificateFingerprint, checkListenAddress, loadOrCreateCertificate } from './tls.js';

let root: string;
before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-tls-test-'));
});
after(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

let seq = 0;
function freshDir(): string {
  const d = path.join(root, `d${seq++}`);
  fs.mkdirSync(d);
  return d;
}

async function refused(p: Promise<unknown>, mentions: string): Promise<ReimageError> {
  try {
    await p;
  } catch (e) {
    assert.ok(isReimageError(e, 'SERVER_CONFIG_INVALID'), `expected SERVER_CONFIG_INVALID: ${e}`);
    assert.ok(e.message.includes(mentions), `"${e.message}" should name ${mentions}`);
    return e;
  }
  assert.fail('the certificate was accepted');
}

async function makePair(notBefore: Date, notAfter: Date): Promise<{ cert: string; key: string }> {
  const r = await generate([{ name: 'commonName', value: 'admin.example' }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: notBefore,
    notAfterDate: notAfter,
  });
  return { cert: r.cert, key: r.private };
}

const DAY = 24 * 3600 * 1000;

describe('loadOrCreateCertificate, self-signed', () => {
  it('makes a certificate at first start and reuses it after', async () => {
    const dataDir = freshDir();
    const first = await loadOrCreateCertificate({ dataDir, hostnames: ['reimage.example'] });
    assert.equal(first.selfSigned, true);
    assert.match(first.fingerprint, /^sha256:([0-9A-F]{2}:){31}[0-9A-F]{2}$/);

    const x509 = new X509Certificate(first.cert);
    assert.match(x509.subject, /CN=reimage-server/);
    const san = x509.subjectAltName ?? '';
    for (const name of ['DNS:localhost', 'IP Address:127.0.0.1', 'DNS:reimage.example']) {
      assert.ok(san.includes(name), `${san} should hold ${name}`);
    }
    assert.ok(san.includes(`DNS:${os.hostname()}`), san);
    const years = (first.notAfter.getTime() - Date.now()) / (365.25 * DAY);
    assert.ok(years > 9.9 && years < 10.1, `valid for ${years} years`);
    assert.equal(x509.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');

    const tlsDir = path.join(dataDir, 'tls');
    if (process.platform !== 'win32') {
      assert.equal(fs.statSync(tlsDir).mode & 0o777, 0o700);
      assert.equal(fs.statSync(path.join(tlsDir, 'server.key')).mode & 0o777, 0o600);
    }
    assert.deepEqual(fs.readdirSync(tlsDir).sort(), ['server.crt', 'server.key']);

    const second = await loadOrCreateCertificate({ dataDir });
    assert.equal(second.fingerprint, first.fingerprint);
    assert.equal(second.cert, first.cert);
    assert.equal(second.key, first.key);
    assert.equal(second.selfSigned, true);
    assert.equal(second.notAfter.getTime(), first.notAfter.getTime());
  });

  it('replaces a key left without its certificate by an interrupted first start', async () => {
    const dataDir = freshDir();
    fs.mkdirSync(path.join(dataDir, 'tls'));
    fs.writeFileSync(path.join(dataDir, 'tls', 'server.key'), 'half-written');
    const made = await loadOrCreateCertificate({ dataDir });
    assert.equal(made.selfSigned, true);
    const again = await loadOrCreateCertificate({ dataDir });
    assert.equal(again.fingerprint, made.fingerprint);
  });

  it('refuses a certificate whose key is gone, rather than replacing a pinned certificate', async () => {
    const dataDir = freshDir();
    await loadOrCreateCertificate({ dataDir });
    fs.rmSync(path.join(dataDir, 'tls', 'server.key'));
    await refused(loadOrCreateCertificate({ dataDir }), 'server.key');
    assert.ok(fs.existsSync(path.join(dataDir, 'tls', 'server.crt')), 'nothing was changed');
  });
});

describe("loadOrCreateCertificate, the administrator's certificate", () => {
  it('uses a matching certificate and key', async () => {
    const dir = freshDir();
    const pair = await makePair(new Date(Date.now() - DAY), new Date(Date.now() + 30 * DAY));
    const certFile = path.join(dir, 'a.crt');
    const keyFile = path.join(dir, 'a.key');
    fs.writeFileSync(certFile, pair.cert);
    fs.writeFileSync(keyFile, pair.key);
    const got = await loadOrCreateCertificate({ dataDir: dir, certFile, keyFile });
    assert.equal(got.selfSigned, false);
    assert.equal(got.cert, pair.cert);
    assert.equal(got.fingerprint, certificateFingerprint(pair.cert));
    assert.equal(got.fingerprint, `sha256:${new X509Certificate(pair.cert).fingerprint256}`);
    assert.ok(!fs.existsSync(path.join(dir, 'tls')), 'no self-signed certificate was made');
  });

  it('refuses a key that is not the certificate’s', async () => {
    const dir = freshDir();
    const a = await makePair(new Date(Date.now() - DAY), new Date(Date.now() + 30 * DAY));
    const b = await makePair(new Date(Date.now() - DAY), new Date(Date.now() + 30 * DAY));
    const certFile = path.join(dir, 'a.crt');
    const keyFile = path.join(dir, 'b.key');
    fs.writeFileSync(certFile, a.cert);
    fs.writeFileSync(keyFile, b.key);
    await refused(loadOrCreateCertificate({ dataDir: dir, certFile, keyFile }), keyFile);
  });

  it('refuses an expired certificate', async () => {
    const dir = freshDir();
    const old = await makePair(new Date(Date.now() - 10 * DAY), new Date(Date.now() - DAY));
    const certFile = path.join(dir, 'old.crt');
    const keyFile = path.join(dir, 'old.key');
    fs.writeFileSync(certFile, old.cert);
    fs.writeFileSync(keyFile, old.key);
    const e = await refused(loadOrCreateCertificate({ dataDir: dir, certFile, keyFile }), certFile);
    assert.match(e.message, /expired/);
  });

  it('refuses a certificate not valid yet', async () => {
    const dir = freshDir();
    const future = await makePair(new Date(Date.now() + DAY), new Date(Date.now() + 10 * DAY));
    const certFile = path.join(dir, 'f.crt');
    const keyFile = path.join(dir, 'f.key');
    fs.writeFileSync(certFile, future.cert);
    fs.writeFileSync(keyFile, future.key);
    await refused(loadOrCreateCertificate({ dataDir: dir, certFile, keyFile }), certFile);
  });

  it('refuses files that are missing, not PEM, or given alone', async () => {
    const dir = freshDir();
    const good = await makePair(new Date(Date.now() - DAY), new Date(Date.now() + 30 * DAY));
    const certFile = path.join(dir, 'g.crt');
    const keyFile = path.join(dir, 'g.key');
    const junk = path.join(dir, 'junk.pem');
    fs.writeFileSync(certFile, good.cert);
    fs.writeFileSync(keyFile, good.key);
    fs.writeFileSync(junk, 'not a pem\n');
    const missing = path.join(dir, 'missing.crt');

    await refused(loadOrCreateCertificate({ dataDir: dir, certFile: missing, keyFile }), missing);
    await refused(loadOrCreateCertificate({ dataDir: dir, certFile: junk, keyFile }), junk);
    await refused(loadOrCreateCertificate({ dataDir: dir, certFile, keyFile: junk }), junk);
    await refused(loadOrCreateCertificate({ dataDir: dir, certFile }), 'key file');
    await refused(loadOrCreateCertificate({ dataDir: dir, keyFile }), 'key file');
  });
});

describe('checkListenAddress', () => {
  const loopback = ['127.0.0.1', '127.1.2.3', '::1', '[::1]', '0:0:0:0:0:0:0:1', 'localhost'];
  const other = ['0.0.0.0', '::', '192.168.1.10', '10.0.0.1', 'reimage.example', '', '::2'];

  for (const host of loopback) {
    it(`serves plain HTTP on ${host}`, () => {
      checkListenAddress(host, false);
    });
  }
  for (const host of other) {
    it(`refuses plain HTTP on "${host}" but serves TLS there`, () => {
      assert.throws(
        () => checkListenAddress(host, false),
        (e: unknown) => isReimageError(e, 'SERVER_CONFIG_INVALID') && e.message.includes(host),
      );
      checkListenAddress(host, true);
    });
  }
});
