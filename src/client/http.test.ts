import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';

import { generate } from 'selfsigned';

import { isReimageError, type ErrorCode, type ReimageError } from '../errors.js';
import { ApiClient, parseFingerprint } from './http.js';

interface Pem {
  cert: string;
  key: string;
  fingerprint: string;
}

type AltName = { type: 2; value: string } | { type: 7; ip: string };

async function selfSigned(
  altNames: AltName[] = [
    { type: 2, value: 'localhost' },
    { type: 7, ip: '127.0.0.1' },
  ],
): Promise<Pem> {
  const r = await generate([{ name: 'commonName', value: 'reimage-server' }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: new Date(Date.now() - 86_400_000),
    notAfterDate: new Date(Date.now() + 86_400_000),
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames },
    ],
  });
  return {
    cert: r.cert,
    key: r.private,
    fingerprint: `sha256:${new X509Certificate(r.cert).fingerprint256}`,
  };
}

const TOKEN = 'rmt_secret-token-123';

let good: Pem;
let other: Pem;

/** The API server of the tests: echoes requests and answers errors on some paths. */
let api: https.Server;
let apiUrl: string;
let handled = 0;
let tlsConnections = 0;

function handler(req: http.IncomingMessage, res: http.ServerResponse): void {
  handled++;
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    const send = (status: number, body: unknown, type = 'application/json') => {
      const text = typeof body === 'string' ? body : JSON.stringify(body);
      res.writeHead(status, { 'content-type': type });
      res.end(text);
    };
    const url = new URL(req.url ?? '/', 'http://x');
    switch (url.pathname) {
      case '/base/v1/not-found':
        return send(404, {
          error: { code: 'NOT_FOUND', message: 'No image "x".', details: { kind: 'image' } },
        });
      case '/base/v1/unknown-code':
        return send(500, { error: { code: 'FROM_THE_FUTURE', message: 'new', details: { a: 1 } } });
      case '/base/v1/echo-token-error':
        return send(401, {
          error: { code: 'UNAUTHENTICATED', message: `bad token ${TOKEN} given` },
        });
      case '/base/v1/proxy':
        return send(502, '<html>bad gateway</html>', 'text/html');
      case '/base/v1/empty':
        res.writeHead(204);
        return res.end();
      case '/base/v1/hang':
        return; // never answers
      default:
        return send(200, {
          method: req.method,
          path: url.pathname,
          query: url.search,
          authorization: req.headers.authorization ?? null,
          userAgent: req.headers['user-agent'],
          body: chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf8')) : null,
        });
    }
  });
}

function listen(server: net.Server, host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve) => {
    server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port));
  });
}

before(async () => {
  good = await selfSigned();
  other = await selfSigned();
  api = https.createServer({ cert: good.cert, key: good.key }, handler);
  api.on('secureConnection', () => tlsConnections++);
  apiUrl = `https://127.0.0.1:${await listen(api)}/base`;
});
after(() => {
  api.closeAllConnections();
  api.close();
});

async function rejectsWith(p: Promise<unknown>, code: ErrorCode): Promise<ReimageError> {
  try {
    await p;
  } catch (e) {
    assert.ok(isReimageError(e, code), `expected ${code}, got ${String(e)}`);
    return e;
  }
  assert.fail(`expected ${code}, but it succeeded`);
}

/**
 * A TLS server with a certificate that is not the pinned one, behind a TCP proxy that
 * records every byte the client sends: both the decrypted bytes the TLS server reads and
 * the client's TLS records on the wire, and says when the client has hung up.
 */
async function impostor(maxVersion: tls.SecureVersion = 'TLSv1.3'): Promise<{
  url: string;
  /** The decrypted bytes the TLS server read. */
  received: () => Buffer;
  /** The client's TLS records on the wire, by content type (23 = application data). */
  records: () => { type: number; length: number }[];
  closed: () => Promise<void>;
  stop: () => void;
}> {
  const received: Buffer[] = [];
  const wire: Buffer[] = [];
  const closes: Promise<void>[] = [];
  const server = tls.createServer({ cert: other.cert, key: other.key, maxVersion }, (socket) => {
    socket.on('data', (c: Buffer) => received.push(c));
    socket.on('error', () => {});
  });
  const tlsPort = await listen(server);
  const proxy = net.createServer((client) => {
    closes.push(new Promise((resolve) => client.once('close', () => resolve())));
    const upstream = net.connect(tlsPort, '127.0.0.1');
    client.on('data', (c: Buffer) => wire.push(c));
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('error', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
  });
  const port = await listen(proxy);
  return {
    url: `https://127.0.0.1:${port}`,
    received: () => Buffer.concat(received),
    records: () => {
      const buf = Buffer.concat(wire);
      const out: { type: number; length: number }[] = [];
      for (let i = 0; i + 5 <= buf.length;) {
        const length = buf.readUInt16BE(i + 3);
        out.push({ type: buf[i] ?? -1, length });
        i += 5 + length;
      }
      return out;
    },
    closed: async () => {
      await Promise.all(closes);
    },
    stop: () => {
      proxy.close();
      server.close();
    },
  };
}

describe('ApiClient, pinned', () => {
  it('talks to the server whose certificate is pinned, and keeps the connection', async () => {
    const client = new ApiClient({ server: apiUrl, token: TOKEN, fingerprint: good.fingerprint });
    try {
      const before = tlsConnections;
      const a = await client.request<Record<string, unknown>>('POST', '/v1/images', {
        body: { name: 'win11' },
        query: { limit: 5, tag: ['a', 'b c'], skip: undefined },
      });
      assert.deepEqual(a, {
        method: 'POST',
        path: '/base/v1/images',
        query: '?limit=5&tag=a&tag=b+c',
        authorization: `Bearer ${TOKEN}`,
        userAgent: 'reimage',
        body: { name: 'win11' },
      });
      const b = await client.request<{ method: string }>('GET', '/v1/images');
      assert.equal(b.method, 'GET');
      assert.equal(tlsConnections - before, 1, 'the second request reused the connection');
    } finally {
      client.close();
    }
  });

  it('accepts the pin in lower case, without the prefix or colons', async () => {
    const bare = good.fingerprint.slice('sha256:'.length).replace(/:/g, '').toLowerCase();
    const client = new ApiClient({ server: apiUrl, fingerprint: bare });
    try {
      const r = await client.request<{ authorization: string | null }>('GET', '/v1/x');
      assert.equal(r.authorization, null, 'no token, no Authorization header');
    } finally {
      client.close();
    }
  });

  for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
    it(`sends not one byte of the request to a server with another certificate (${version})`, async () => {
      const fake = await impostor(version);
      const client = new ApiClient({
        server: fake.url,
        token: TOKEN,
        fingerprint: good.fingerprint,
      });
      try {
        const e = await rejectsWith(
          client.request('POST', '/v1/login', { body: { password: 'hunter2' } }),
          'SERVER_CERT_MISMATCH',
        );
        assert.equal(e.details.expected, good.fingerprint);
        assert.equal(e.details.presented, other.fingerprint);
        assert.ok(!e.message.includes(TOKEN));
        // The client hung up: everything it sent has arrived at the proxy by now.
        await fake.closed();
        const records = fake.records();
        assert.ok(records.length > 0, 'the handshake was seen on the wire');
        assert.equal(records[0]?.type, 22, 'the first record is the ClientHello');
        const appData = records.filter((r) => r.type === 23);
        if (version === 'TLSv1.2') {
          // TLS 1.2 sends its Finished as a handshake record: no application data at all.
          assert.deepEqual(appData, []);
        } else {
          // TLS 1.3 encrypts the client's Finished as one application-data record of
          // 32 bytes of MAC + type + tag; an HTTP request with its header would be far longer.
          assert.ok(appData.length <= 1, `application data records: ${JSON.stringify(appData)}`);
          for (const r of appData) assert.ok(r.length < 80, `record of ${r.length} bytes`);
        }
        assert.equal(fake.received().length, 0, fake.received().toString('latin1'));
      } finally {
        client.close();
        fake.stop();
      }
    });
  }

  it('does not reach the request handler of an https server with another certificate', async () => {
    const wrong = await selfSigned();
    const client = new ApiClient({ server: apiUrl, token: TOKEN, fingerprint: wrong.fingerprint });
    const before = handled;
    try {
      await rejectsWith(client.request('GET', '/v1/images'), 'SERVER_CERT_MISMATCH');
      await rejectsWith(client.request('GET', '/v1/images'), 'SERVER_CERT_MISMATCH');
      assert.equal(handled, before);
    } finally {
      client.close();
    }
  });

  it('refuses a malformed pin up front', () => {
    assert.throws(
      () => new ApiClient({ server: apiUrl, fingerprint: 'sha256:AB:CD' }),
      (e: unknown) => isReimageError(e, 'INVALID_ARGUMENT'),
    );
    assert.equal(
      parseFingerprint(good.fingerprint.toLowerCase().replace('sha256:', '')),
      good.fingerprint,
    );
  });

  it('times out a server that never finishes the handshake', async () => {
    const silent = net.createServer(() => {});
    const port = await listen(silent);
    const client = new ApiClient({
      server: `https://127.0.0.1:${port}`,
      fingerprint: good.fingerprint,
      timeoutMs: 200,
    });
    try {
      const e = await rejectsWith(client.request('GET', '/v1/x'), 'SERVER_UNREACHABLE');
      assert.equal(e.details.reason, 'timeout');
    } finally {
      client.close();
      silent.close();
    }
  });
});

describe('ApiClient, not pinned', () => {
  it('does not trust a self-signed certificate by itself', async () => {
    const client = new ApiClient({ server: apiUrl, token: TOKEN });
    const before = handled;
    try {
      const e = await rejectsWith(client.request('GET', '/v1/x'), 'SERVER_CERT_MISMATCH');
      assert.ok(!e.message.includes(TOKEN));
      assert.equal(handled, before);
    } finally {
      client.close();
    }
  });

  it('trusts a certificate given as ca, checking the host name', async () => {
    const client = new ApiClient({ server: apiUrl, ca: good.cert });
    try {
      const r = await client.request<{ path: string }>('GET', '/v1/ok');
      assert.equal(r.path, '/base/v1/ok');
    } finally {
      client.close();
    }
    // A trusted certificate for another name is refused.
    const elsewhere = await selfSigned([{ type: 2, value: 'reimage.example' }]);
    const server = https.createServer({ cert: elsewhere.cert, key: elsewhere.key }, handler);
    const port = await listen(server);
    const wrongName = new ApiClient({ server: `https://127.0.0.1:${port}`, ca: elsewhere.cert });
    try {
      const e = await rejectsWith(wrongName.request('GET', '/v1/ok'), 'SERVER_CERT_MISMATCH');
      assert.equal(e.details.reason, 'ERR_TLS_CERT_ALTNAME_INVALID');
    } finally {
      wrongName.close();
      server.close();
    }
  });

  it('speaks plain HTTP to loopback only', async () => {
    const plain = http.createServer(handler);
    const port = await listen(plain);
    const client = new ApiClient({ server: `http://localhost:${port}/base`, token: TOKEN });
    try {
      const r = await client.request<{ authorization: string }>('GET', '/v1/x');
      assert.equal(r.authorization, `Bearer ${TOKEN}`);
    } finally {
      client.close();
      plain.close();
    }
    for (const server of ['http://192.168.1.5:8080', 'http://reimage.example']) {
      assert.throws(
        () => new ApiClient({ server, token: TOKEN }),
        (e: unknown) => isReimageError(e, 'INVALID_ARGUMENT'),
      );
    }
    assert.throws(
      () => new ApiClient({ server: `http://127.0.0.1:${port}`, fingerprint: good.fingerprint }),
      (e: unknown) => isReimageError(e, 'INVALID_ARGUMENT'),
    );
    for (const server of ['ftp://x', 'not a url', 'https://user:pw@host', 'https://h/?a=1']) {
      assert.throws(
        () => new ApiClient({ server }),
        (e: unknown) => isReimageError(e, 'INVALID_ARGUMENT'),
        server,
      );
    }
  });
});

describe('ApiClient, answers and failures', () => {
  let client: ApiClient;
  before(() => {
    client = new ApiClient({
      server: apiUrl,
      token: TOKEN,
      fingerprint: good.fingerprint,
      timeoutMs: 500,
    });
  });
  after(() => client.close());

  it("rethrows the server's error with its code and details", async () => {
    const e = await rejectsWith(client.request('GET', '/v1/not-found'), 'NOT_FOUND');
    assert.equal(e.message, 'No image "x".');
    assert.deepEqual(e.details, { kind: 'image' });
  });

  it('turns a code this client does not know into INTERNAL, keeping the details', async () => {
    const e = await rejectsWith(client.request('GET', '/v1/unknown-code'), 'INTERNAL');
    assert.equal(e.details.a, 1);
    assert.equal(e.details.serverCode, 'FROM_THE_FUTURE');
    assert.equal(e.details.status, 500);
  });

  it('redacts the token from error messages', async () => {
    const e = await rejectsWith(client.request('GET', '/v1/echo-token-error'), 'UNAUTHENTICATED');
    assert.ok(!e.message.includes(TOKEN), e.message);
    assert.match(e.message, /bad token <token> given/);
  });

  it('reads a proxy’s 502 as the server being unreachable', async () => {
    await rejectsWith(client.request('GET', '/v1/proxy'), 'SERVER_UNREACHABLE');
  });

  it('resolves an empty answer with undefined', async () => {
    assert.equal(await client.request('DELETE', '/v1/empty'), undefined);
  });

  it('gives up on a server that does not answer', async () => {
    const e = await rejectsWith(client.request('GET', '/v1/hang'), 'SERVER_UNREACHABLE');
    assert.match(e.message, /did not answer/);
  });

  it('cancels on an abort signal', async () => {
    const ac = new AbortController();
    const p = client.request('GET', '/v1/hang', { signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    await rejectsWith(p, 'CANCELLED');
  });

  it('reports a refused connection as SERVER_UNREACHABLE, with the cause', async () => {
    const s = net.createServer();
    const port = await listen(s);
    await new Promise((resolve) => s.close(resolve));
    for (const fingerprint of [good.fingerprint, undefined]) {
      const c = new ApiClient({ server: `https://127.0.0.1:${port}`, token: TOKEN, fingerprint });
      try {
        const e = await rejectsWith(c.request('GET', '/v1/x'), 'SERVER_UNREACHABLE');
        assert.equal((e.cause as NodeJS.ErrnoException).code, 'ECONNREFUSED');
        assert.equal(e.details.reason, 'ECONNREFUSED');
      } finally {
        c.close();
      }
    }
  });

  it('reports an unknown host name as SERVER_UNREACHABLE', async () => {
    const c = new ApiClient({ server: 'https://no-such-host.invalid', timeoutMs: 5000 });
    try {
      await rejectsWith(c.request('GET', '/v1/x'), 'SERVER_UNREACHABLE');
    } finally {
      c.close();
    }
  });
});

describe('ApiClient.fetchFingerprint', () => {
  it('returns the fingerprint the server presents, sending nothing', async () => {
    const fake = await impostor();
    try {
      assert.equal(await ApiClient.fetchFingerprint(fake.url), other.fingerprint);
      await fake.closed();
      assert.equal(fake.received().length, 0);
    } finally {
      fake.stop();
    }
    assert.equal(await ApiClient.fetchFingerprint(apiUrl), good.fingerprint);
  });

  it('reports a server that is not there', async () => {
    const s = net.createServer();
    const port = await listen(s);
    await new Promise((resolve) => s.close(resolve));
    await rejectsWith(
      ApiClient.fetchFingerprint(`https://127.0.0.1:${port}`),
      'SERVER_UNREACHABLE',
    );
    await rejectsWith(ApiClient.fetchFingerprint('http://127.0.0.1:1'), 'INVALID_ARGUMENT');
  });
});
