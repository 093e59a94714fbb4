import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { connect, createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestTree } from './support/tree.js';
import { randomData } from './support/random.js';
import { independentListing, diffListings } from './support/listing.js';
import { nginxSkip, startNginx, type Nginx } from './support/nginx.js';
import { namespaceUnavailable, startLink, startNamespaceLink, type Link } from './support/wan.js';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { ContentStore } from '../src/content/store.js';
import { captureImage } from '../src/image/capture.js';
import { applyImage } from '../src/image/apply.js';
import { decodeManifest } from '../src/image/formats/native/v1/manifest-codec.js';
import { httpRemote } from '../src/content/remote.js';
import { fetchImage } from '../src/content/fetch.js';

const MB = 1024 * 1024;

function listenLocal(server: Server | http.Server): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const a = server.address();
      if (typeof a === 'object' && a) resolve(a.port);
      else reject(new Error('no port'));
    });
  });
}

describe('the emulated WAN link', () => {
  test('rate limit: 1 MiB at 8 Mbit/s takes at least 0.8 s', async () => {
    const payload = randomData('wan-rate', MB);
    const target = createServer((s) => s.end(payload));
    const port = await listenLocal(target);
    const link = await startLink({ target: { host: '127.0.0.1', port }, rateBitsPerSec: 8e6 });
    try {
      const t0 = Date.now();
      const got = await new Promise<number>((resolve, reject) => {
        let n = 0;
        const c = connect({ host: '127.0.0.1', port: link.port });
        c.on('data', (d: Buffer) => (n += d.length));
        c.on('end', () => resolve(n));
        c.on('error', reject);
      });
      const secs = (Date.now() - t0) / 1000;
      console.log(`rate: ${got} B in ${secs.toFixed(2)} s through an 8 Mbit/s link`);
      assert.equal(got, MB);
      assert.equal(link.bytesDown(), MB);
      assert.ok(secs >= 0.8, `1 MiB took ${secs} s at 8 Mbit/s`);
      assert.ok(secs < 3, `1 MiB took ${secs} s at 8 Mbit/s`);
    } finally {
      await link.close();
      await new Promise((r) => target.close(r));
    }
  });

  test('loss: at 100 % per MB a connection is reset within its first MB', async () => {
    const target = createServer((s) => {
      s.on('error', () => {}); // the link resets the target side too
      s.end(randomData('wan-loss', 3 * MB));
    });
    const port = await listenLocal(target);
    const link = await startLink({
      target: { host: '127.0.0.1', port },
      lossPercent: 100,
      seed: 1,
    });
    try {
      const r = await new Promise<{ n: number; error?: string }>((resolve) => {
        let n = 0;
        const c = connect({ host: '127.0.0.1', port: link.port });
        c.on('data', (d: Buffer) => (n += d.length));
        c.on('end', () => resolve({ n }));
        c.on('error', (e: NodeJS.ErrnoException) => resolve({ n, error: e.code }));
      });
      assert.equal(r.error, 'ECONNRESET');
      assert.ok(r.n <= MB + 16 * 1024, `${r.n} B before the reset`);
      assert.deepEqual(
        link.events().map((e) => e.event),
        ['connect', 'reset'],
      );
    } finally {
      await link.close();
      await new Promise((r) => target.close(r));
    }
  });

  test('outage: an open connection is blackholed until restore, a new one is refused', async () => {
    const target = http.createServer((_req, res) => res.end('hello'));
    const port = await listenLocal(target);
    const link = await startLink({ target: { host: '127.0.0.1', port }, latencyMs: 20 });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const get = () =>
      new Promise<string>((resolve, reject) => {
        http
          .get(link.url, { agent }, (res) => {
            let body = '';
            res.on('data', (d: Buffer) => (body += d.toString()));
            res.on('end', () => resolve(body));
          })
          .on('error', reject);
      });
    try {
      assert.equal(await get(), 'hello'); // opens the keep-alive connection
      link.cut();
      let done = false;
      const during = get().then((b) => {
        done = true;
        return b;
      });
      // A fresh connection while the link is down is refused (the listener is closed).
      await assert.rejects(
        new Promise((resolve, reject) => {
          const c = connect({ host: '127.0.0.1', port: link.port });
          c.on('connect', () =>
            c.once('data', resolve).once('close', () => reject(new Error('closed'))),
          );
          c.on('error', reject);
        }),
        (e: NodeJS.ErrnoException) => e.code === 'ECONNREFUSED' || e.code === 'ECONNRESET',
      );
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(done, false, 'the request completed while the link was down');
      const t = Date.now();
      link.restore();
      assert.equal(await during, 'hello');
      console.log(`outage: the held request completed ${Date.now() - t} ms after restore`);
      // New connections work again once the link is back.
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(await get(), 'hello');
      assert.deepEqual(
        link
          .events()
          .map((e) => e.event)
          .filter((e) => e === 'cut' || e === 'restore' || e === 'refused'),
        ['cut', 'restore'],
      );
    } finally {
      agent.destroy();
      await link.close();
      await new Promise((r) => target.close(r));
    }
  });
});

// Skipped locally without root or iproute2; in CI (which installs them) it must run.
const nsSkip = process.env['CI'] ? false : (namespaceUnavailable() ?? false);
describe('the namespace link (veth + tc tbf)', { skip: nsSkip }, () => {
  test('1 MiB at 8 Mbit/s through tbf takes at least 0.8 s; a cut link stalls', async () => {
    const ns = startNamespaceLink({ rateBitsPerSec: 8e6 });
    const server = spawn(
      ns.argv('server')[0]!,
      [
        ...ns.argv('server').slice(1),
        process.execPath,
        '-e',
        `require('net').createServer((s) => s.end(Buffer.alloc(${MB}))).listen(9000, '${ns.serverAddr}', () => console.log('up'))`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        server.stdout.once('data', () => resolve());
        server.once('exit', (code) => reject(new Error(`server exited ${code}`)));
      });
      const client = (timeoutMs: number) =>
        execFileSync(
          ns.argv('client')[0]!,
          [
            ...ns.argv('client').slice(1),
            process.execPath,
            '-e',
            `const t = Date.now(); let n = 0; const c = require('net').connect(9000, '${ns.serverAddr}');
             c.on('data', (d) => (n += d.length)); c.on('end', () => { console.log(JSON.stringify({ n, ms: Date.now() - t })); process.exit(0); });
             c.on('error', (e) => { console.log(JSON.stringify({ error: e.code })); process.exit(0); });
             setTimeout(() => { console.log(JSON.stringify({ n, stalled: true })); process.exit(0); }, ${timeoutMs});`,
          ],
          { encoding: 'utf8' },
        );
      const ok = JSON.parse(client(10_000)) as { n: number; ms: number };
      console.log(`namespace rate: ${ok.n} B in ${ok.ms} ms through tbf 8 Mbit/s`);
      assert.equal(ok.n, MB);
      assert.ok(ok.ms >= 800, `1 MiB took ${ok.ms} ms`);
      ns.cut();
      const cut = JSON.parse(client(1500)) as { n?: number; stalled?: boolean; error?: string };
      assert.ok(cut.stalled || cut.error, JSON.stringify(cut));
      assert.ok((cut.n ?? 0) < MB);
      ns.restore();
    } finally {
      server.kill();
      ns.close();
    }
  });

  test('with 3 % of packets dropped by nftables, 1 MiB still arrives whole (TCP retransmits)', async () => {
    const ns = startNamespaceLink({ rateBitsPerSec: 8e6, lossPercent: 3 });
    const data = Buffer.from(Array.from({ length: MB }, (_, i) => (i * 7919) % 251));
    const server = spawn(
      ns.argv('server')[0]!,
      [
        ...ns.argv('server').slice(1),
        process.execPath,
        '-e',
        `const d = Buffer.from(Array.from({ length: ${MB} }, (_, i) => (i * 7919) % 251));
         require('net').createServer((s) => s.end(d)).listen(9000, '${ns.serverAddr}', () => console.log('up'))`,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        server.stdout.once('data', () => resolve());
        server.once('exit', (code) => reject(new Error(`server exited ${code}`)));
      });
      const out = execFileSync(
        ns.argv('client')[0]!,
        [
          ...ns.argv('client').slice(1),
          process.execPath,
          '-e',
          `const h = require('crypto').createHash('sha256'); let n = 0;
           const c = require('net').connect(9000, '${ns.serverAddr}');
           c.on('data', (d) => { n += d.length; h.update(d); });
           c.on('end', () => { console.log(JSON.stringify({ n, sha: h.digest('hex') })); process.exit(0); });
           setTimeout(() => { console.log(JSON.stringify({ n, stalled: true })); process.exit(0); }, 60000);`,
        ],
        { encoding: 'utf8' },
      );
      const got = JSON.parse(out) as { n: number; sha?: string };
      assert.equal(got.n, MB);
      assert.equal(got.sha, createHash('sha256').update(data).digest('hex'));
      const dropped = ns.dropped();
      console.log(`namespace loss: ${dropped} packets dropped by nftables for 1 MiB`);
      assert.ok(dropped > 0, 'nftables dropped packets');
    } finally {
      server.kill();
      ns.close();
    }
  });
});

const skip = nginxSkip();

function* chunksOf(manifest: Buffer): Iterable<Uint8Array> {
  for (const e of decodeManifest(manifest).entries) {
    if (!e.chunks) continue;
    for (let i = 0; i < e.chunks.length; i += 32) yield e.chunks.subarray(i, i + 32);
  }
}
const listing = (root: string) => independentListing(root, { ignoreSockets: true });

describe('fetch through a 10 Mbit/s link with 3 outages of 20 s', { skip }, () => {
  let work: string;
  let tree: string;
  let imageId: string;
  let packBytes: number;
  let nginx: Nginx | undefined;
  let link: Link | undefined;

  before(async () => {
    work = mkdtempSync(join(tmpdir(), 'reimage-wan-'));
    tree = join(work, 'tree');
    await makeTestTree(tree, { seed: 23, scale: 'small' });
    // Incompressible data so the packs are big enough for the outages to land mid-transfer.
    mkdirSync(join(tree, 'bulk'));
    for (let i = 0; i < 8; i++) {
      writeFileSync(join(tree, 'bulk', `blob${i}.bin`), randomData(`wan-bulk-${i}`, MB));
    }
    const dp = ContentStore.open(join(work, 'dp'), { create: true });
    const cap = await captureImage({ source: tree, store: dp, name: 'wan' });
    imageId = cap.record.id;
    packBytes = cap.record.packs.reduce((n, p) => n + statSync(dp.packPath(p)).size, 0);
    nginx = await startNginx(join(work, 'dp'));
  });

  after(async () => {
    await link?.close();
    await nginx?.stop();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  test('through a lossy link (25 % resets per MB, 40 ms latency): completes, nothing sent twice', async () => {
    const port = Number(new URL(nginx!.url).port);
    const lossy = await startLink({
      target: { host: '127.0.0.1', port },
      latencyMs: 40,
      lossPercent: 25,
      seed: 5,
    });
    try {
      const into = ContentStore.open(join(work, 'staging-lossy'), { create: true });
      const t0 = Date.now();
      const r = await fetchImage({
        sources: [httpRemote(lossy.url, { timeoutMs: 5000, retryForMs: 60_000 })],
        imageId,
        into,
        chunksOf,
      });
      const resets = lossy.events().filter((e) => e.event === 'reset').length;
      console.log(
        `lossy fetch: packs ${packBytes} B; at the link ${lossy.bytesDown()} B; client payload ${r.bytesDownloaded} B; ` +
          `${resets} resets; ${((Date.now() - t0) / 1000).toFixed(1)} s`,
      );
      assert.ok(resets > 0, 'the link reset some connections');
      assert.ok(lossy.bytesDown() <= packBytes * 1.05 + resets * 64 * 1024);
      const target = join(work, 'applied-lossy');
      await applyImage({ store: into, image: imageId, target });
      assert.equal(diffListings(listing(tree), listing(target), ['source', 'applied']), '');
    } finally {
      await lossy.close();
    }
  });

  test(
    'completes, applies to the same tree, and re-sends little per outage',
    { timeout: 300_000 },
    async () => {
      const port = Number(new URL(nginx!.url).port);
      link = await startLink({
        target: { host: '127.0.0.1', port },
        rateBitsPerSec: 10e6,
        // Triggered by bytes delivered, so each outage cuts a transfer in flight.
        outages: [0.25, 0.5, 0.75].map((f) => ({
          atBytes: Math.round(packBytes * f),
          forMs: 20_000,
        })),
      });
      const into = ContentStore.open(join(work, 'staging'), { create: true });
      const t0 = Date.now();
      const r = await fetchImage({
        sources: [httpRemote(link.url, { timeoutMs: 5000, retryForMs: 120_000 })],
        imageId,
        into,
        chunksOf,
      });
      const secs = (Date.now() - t0) / 1000;
      const atLink = link.bytesDown();
      const events = link.events().filter((e) => e.event === 'cut' || e.event === 'restore');
      const resent = (atLink - packBytes) / 3;
      console.log(
        `wan fetch: packs ${packBytes} B; at the link ${atLink} B (${(atLink / packBytes).toFixed(4)}x, headers and indexes included); ` +
          `served by nginx ${nginx!.bytesSent()} B; client payload ${r.bytesDownloaded} B; ` +
          `re-sent per outage ${Math.round(resent)} B (link − packs) / 3, ${Math.round((atLink - r.bytesDownloaded) / 3)} B (link − client payload) / 3; ` +
          `${secs.toFixed(1)} s; requests ${nginx!.log().length}`,
      );
      console.log(`wan events: ${JSON.stringify(events)}`);
      assert.equal(events.filter((e) => e.event === 'cut').length, 3, 'three outages happened');
      assert.equal(r.badSources.length, 0, JSON.stringify(r.badSources));
      // One request's worth per outage at most: what the link had in flight (its queue).
      const perOutage = 256 * 1024;
      assert.ok(
        atLink <= packBytes * 1.05 + 3 * perOutage,
        `${atLink} B at the link for ${packBytes} B of packs`,
      );
      const target = join(work, 'applied');
      await applyImage({ store: into, image: imageId, target });
      assert.equal(diffListings(listing(tree), listing(target), ['source', 'applied']), '');
    },
  );
});
