import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { isReimageError } from '../errors.js';
import { dirRemote, httpRemote } from './remote.js';

/** Faults the test server injects; counters count down as they are used. */
interface Faults {
  /** Responses that send only this many body bytes and then drop the connection. */
  drops: number;
  dropAfter: number;
  /** Responses answered 503. */
  unavailable: number;
  /** Answer 200 with the whole file, ignoring Range. */
  ignoreRange: boolean;
}

/** A static file server with single byte ranges, counting what it sends. */
class TestServer {
  requests = 0;
  bytesServed = 0;
  faults: Faults = { drops: 0, dropAfter: 0, unavailable: 0, ignoreRange: false };
  url = '';
  private server: Server;

  constructor(private readonly root: string) {
    this.server = createServer((req, res) => {
      this.requests++;
      const file = join(
        this.root,
        decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname),
      );
      if (!existsSync(file)) {
        res.writeHead(404).end('not found');
        return;
      }
      if (this.faults.unavailable > 0) {
        this.faults.unavailable--;
        res.writeHead(503).end();
        return;
      }
      const data = readFileSync(file);
      const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      let body = data;
      if (m && !this.faults.ignoreRange) {
        const a = Number(m[1]);
        const b = m[2] ? Math.min(Number(m[2]), data.length - 1) : data.length - 1;
        body = data.subarray(a, b + 1);
        res.writeHead(206, {
          'content-range': `bytes ${a}-${b}/${data.length}`,
          'content-length': body.length,
        });
      } else {
        res.writeHead(200, { 'content-length': body.length });
      }
      if (this.faults.drops > 0) {
        this.faults.drops--;
        const part = body.subarray(0, this.faults.dropAfter);
        this.bytesServed += part.length;
        res.write(part, () => setTimeout(() => res.socket?.destroy(), 10));
        return;
      }
      this.bytesServed += body.length;
      res.end(body);
    });
  }

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    const a = this.server.address();
    assert.ok(a && typeof a === 'object');
    this.url = `http://127.0.0.1:${a.port}/`;
  }

  reset(): void {
    this.requests = 0;
    this.bytesServed = 0;
    this.faults = { drops: 0, dropAfter: 0, unavailable: 0, ignoreRange: false };
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((r) => this.server.close(() => r()));
  }
}

let dir: string;
let server: TestServer;
const FILE = randomBytes(1024 * 1024);

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'reimage-remote-'));
  mkdirSync(join(dir, 'packs', 'ab'), { recursive: true });
  writeFileSync(join(dir, 'packs', 'ab', 'x.pack'), FILE);
  server = new TestServer(dir);
  await server.start();
});

after(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

const fast = { backoffBaseMs: 5, backoffCapMs: 50 };

describe('httpRemote', () => {
  test('neighbouring ranges are fetched in one request, distant ones apart', async () => {
    server.reset();
    const dp = httpRemote(server.url, fast);
    const ranges = [
      { offset: 5000, length: 1000 },
      { offset: 0, length: 1000 }, // out of order on purpose
      { offset: 10_000, length: 3000 },
      { offset: 800_000, length: 100 },
    ];
    const got = await dp.readRanges('packs/ab/x.pack', ranges);
    ranges.forEach((r, i) =>
      assert.ok(got[i]!.equals(FILE.subarray(r.offset, r.offset + r.length)), `range ${i}`),
    );
    assert.equal(server.requests, 2, 'three close ranges coalesced, the far one separate');
  });

  test('a connection dropped mid-body is resumed from the bytes already received', async () => {
    server.reset();
    server.faults.drops = 3;
    server.faults.dropAfter = 100_000;
    const dp = httpRemote(server.url, fast);
    const range = { offset: 100_000, length: 600_000 };
    const [buf] = await dp.readRanges('packs/ab/x.pack', [range]);
    assert.ok(buf!.equals(FILE.subarray(range.offset, range.offset + range.length)));
    assert.equal(server.requests, 4, 'three broken responses and one that finished');
    assert.ok(
      server.bytesServed <= range.length + 100_000,
      `resumed, not restarted: ${server.bytesServed} bytes served for a ${range.length}-byte range`,
    );
  });

  test('whole files resume too, and 5xx answers are retried', async () => {
    server.reset();
    server.faults.unavailable = 2;
    server.faults.drops = 1;
    server.faults.dropAfter = 300_000;
    const dp = httpRemote(server.url, fast);
    const buf = await dp.readFile('packs/ab/x.pack');
    assert.ok(buf.equals(FILE));
    assert.ok(server.bytesServed <= FILE.length + 1, `${server.bytesServed}`);
  });

  test('giving up after the configured retries names the DP and the path', async () => {
    server.reset();
    server.faults.unavailable = 100;
    const dp = httpRemote(server.url, { ...fast, retries: 2 });
    await assert.rejects(dp.readFile('packs/ab/x.pack'), (e: unknown) => {
      assert.ok(isReimageError(e, 'DP_UNREACHABLE'));
      assert.match(e.message, /127\.0\.0\.1.*packs\/ab\/x\.pack/);
      return true;
    });
    assert.equal(server.requests, 3);
  });

  test('404 is a clear error naming the DP and path, not retried', async () => {
    server.reset();
    const dp = httpRemote(server.url, fast);
    await assert.rejects(dp.readFile('objects/images/nope.json'), (e: unknown) => {
      assert.ok(isReimageError(e, 'DP_FILE_MISSING'));
      assert.equal(e.message, `distribution point ${server.url} has no objects/images/nope.json`);
      return true;
    });
    assert.equal(server.requests, 1);
  });

  test('a server that ignores Range is refused', async () => {
    server.reset();
    server.faults.ignoreRange = true;
    const dp = httpRemote(server.url, fast);
    await assert.rejects(
      dp.readRanges('packs/ab/x.pack', [{ offset: 10, length: 10 }]),
      (e: unknown) => isReimageError(e, 'PACK_CORRUPT') && /byte ranges/.test(e.message),
    );
  });

  test('the rate limit is roughly honoured', async () => {
    server.reset();
    const rate = 1024 * 1024; // 1 MiB/s
    const dp = httpRemote(server.url, { rateLimitBytesPerSec: rate });
    const t0 = Date.now();
    const buf = await dp.readFile('packs/ab/x.pack');
    const took = Date.now() - t0;
    assert.ok(buf.equals(FILE));
    const ideal = (FILE.length / rate) * 1000;
    assert.ok(took >= ideal * 0.5, `took ${took} ms; ideal ${ideal} ms`);
  });

  test('paths that leave the store are refused', async () => {
    const dp = httpRemote(server.url);
    await assert.rejects(dp.readFile('../etc/passwd'), (e: unknown) =>
      isReimageError(e, 'INVALID_ARGUMENT'),
    );
  });
});

describe('dirRemote', () => {
  test('reads files and ranges from a folder or a file:// URL', async () => {
    for (const dp of [dirRemote(dir), dirRemote(pathToFileURL(dir).href)]) {
      assert.ok((await dp.readFile('packs/ab/x.pack')).equals(FILE));
      const [a, b] = await dp.readRanges('packs/ab/x.pack', [
        { offset: 7, length: 9 },
        { offset: 500_000, length: 1 },
      ]);
      assert.ok(a!.equals(FILE.subarray(7, 16)));
      assert.ok(b!.equals(FILE.subarray(500_000, 500_001)));
    }
  });

  test('a missing file and a range past the end are clear errors', async () => {
    const dp = dirRemote(dir);
    await assert.rejects(
      dp.readFile('objects/images/nope.json'),
      (e: unknown) =>
        isReimageError(e, 'DP_FILE_MISSING') && e.message.includes('objects/images/nope.json'),
    );
    await assert.rejects(
      dp.readRanges('packs/ab/x.pack', [{ offset: FILE.length - 5, length: 10 }]),
      (e: unknown) => isReimageError(e, 'PACK_CORRUPT'),
    );
  });
});
