import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Distribution, PackageRecord } from '../src/catalog/catalog.js';
import { fetchImage } from '../src/content/fetch.js';
import { httpRemote, dirRemote, type RemoteStore } from '../src/content/remote.js';
import { ContentStore } from '../src/content/store.js';
import { captureImage } from '../src/image/capture.js';
import { createPackage, expectStatus, packageFiles, registerImage } from './support/fixtures.js';
import { filesUnder } from './support/library-image.js';
import { nginxSkip, startNginx, type Nginx } from './support/nginx.js';
import { randomData } from './support/random.js';
import { makeTestServer, type TestServer } from './support/server.js';

type Row = Distribution & { dpName: string; sourceDpName: string | null };

/**
 * A clock for the DP windows that the test moves by hand: sleeping waits until the test
 * sets a new time, so "waiting for the window" can be seen and ended without real waiting.
 */
class HandClock {
  private wake: Array<() => void> = [];
  constructor(public t: number) {}
  now = () => this.t;
  sleep = (_ms: number, signal?: AbortSignal) =>
    new Promise<void>((resolve, reject) => {
      this.wake.push(resolve);
      signal?.addEventListener('abort', () => reject(signal.reason), { once: true });
    });
  set(t: number): void {
    this.t = t;
    const w = this.wake;
    this.wake = [];
    for (const f of w) f();
  }
}

async function rowsOf(server: TestServer, pkg: string): Promise<Row[]> {
  const res = await server.call<{ items: Row[] }>('GET', `/api/v1/packages/${pkg}/distribution`, {
    role: 'read-only',
  });
  expectStatus(res, 200, 'list distribution');
  return res.body.items;
}

/** Polls until the row of `dp` satisfies `ok` (30 s at most). */
async function until(
  server: TestServer,
  pkg: string,
  dp: string,
  ok: (r: Row) => boolean,
): Promise<Row> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const row = (await rowsOf(server, pkg)).find((r) => r.dpName === dp);
    if (row && ok(row)) return row;
    assert.ok(Date.now() < deadline, `${dp}: ${JSON.stringify(row)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
const finished = (r: Row) => r.state === 'done' || r.state === 'failed';

async function distribute(server: TestServer, pkg: string, body: object) {
  return server.call<{ items: Row[] } & { error?: { code: string; message: string } }>(
    'POST',
    `/api/v1/packages/${pkg}/distribute`,
    { role: 'operator', body },
  );
}

async function createDp(server: TestServer, body: Record<string, unknown>): Promise<void> {
  const res = await server.call('POST', '/api/v1/distribution-points', {
    role: 'operator',
    body: { site: 'LYON', boundaries: ['10.2.0.0/16'], ...body },
  });
  expectStatus(res, 201, `create DP ${String(body.name)}`);
}

async function readable(remote: RemoteStore, imageId: string, dir: string): Promise<void> {
  const into = ContentStore.open(mkdtempSync(join(dir, 'staging-')), { create: true });
  const r = await fetchImage({ sources: [remote], imageId, into });
  assert.equal(r.badSources.length, 0);
}

/** Bytes of what a replication puts on a DP (its packs and objects), counted on the DP. */
function storeBytes(dp: string): number {
  let n = 0;
  for (const [rel, size] of filesUnder(dp)) if (/^(packs|objects)\//.test(rel)) n += size;
  return n;
}

describe('replication to distribution points', () => {
  let server: TestServer;
  let pkg: PackageRecord;
  const clock = new HandClock(new Date(2026, 0, 5, 12, 0).getTime());

  before(async () => {
    server = await makeTestServer('sqlite', undefined, { replicationClock: clock });
    // ~3 MiB of incompressible data: big enough to be cut in the middle.
    const tree = join(server.dir, 'tree');
    mkdirSync(join(tree, 'etc'), { recursive: true });
    writeFileSync(join(tree, 'etc', 'hostname'), 'big\n');
    writeFileSync(join(tree, 'big.bin'), randomData('replication', 3 * 1024 * 1024));
    await captureImage({ source: tree, store: server.store, name: 'big', workers: 1 });
    const image = await registerImage(server, 'big');
    pkg = await createPackage(server, packageFiles({ name: 'big', version: '1', image: image.id }));
  });
  after(() => server.close());

  test('fills a spoke from a hub DP, and refuses a hub that is not done', async () => {
    const hub = join(server.dir, 'dp-hub');
    await createDp(server, { name: 'lyon-hub', address: hub });
    await createDp(server, { name: 'lyon-2', address: join(server.dir, 'dp-lyon-2') });

    const early = await distribute(server, pkg.id, {
      distributionPoints: ['lyon-2'],
      fromDistributionPoint: 'lyon-hub',
    });
    expectStatus(early, 409, 'hub not done');
    assert.equal(early.body.error?.code, 'DISTRIBUTION_SOURCE_NOT_READY');
    assert.match(early.body.error!.message, /not distributed on lyon-hub/);
    assert.equal((await rowsOf(server, pkg.id)).length, 0, 'a refused request changes nothing');

    expectStatus(await distribute(server, pkg.id, { distributionPoints: ['lyon-hub'] }), 202, '');
    assert.equal((await until(server, pkg.id, 'lyon-hub', finished)).state, 'done');
    const self = await distribute(server, pkg.id, {
      distributionPoints: ['lyon-hub'],
      fromDistributionPoint: 'lyon-hub',
    });
    expectStatus(self, 409, 'from itself');

    const res = await distribute(server, pkg.id, {
      distributionPoints: ['lyon-2'],
      fromDistributionPoint: 'lyon-hub',
    });
    expectStatus(res, 202, 'from hub');
    const row = await until(server, pkg.id, 'lyon-2', finished);
    assert.equal(row.state, 'done', JSON.stringify(row));
    assert.equal(row.sourceDpName, 'lyon-hub');
    assert.equal(row.bytesDone, storeBytes(join(server.dir, 'dp-lyon-2')));
    await readable(dirRemote(join(server.dir, 'dp-lyon-2')), pkg.imageId, server.dir);
  });

  test(
    'a hub served over HTTP: the link carries each byte once',
    { skip: nginxSkip() },
    async () => {
      const nginx = await startNginx(join(server.dir, 'dp-hub'));
      try {
        await server.call('PATCH', '/api/v1/distribution-points/lyon-hub', {
          role: 'operator',
          body: { address: nginx.url },
        });
        const spoke = join(server.dir, 'dp-lyon-3');
        await createDp(server, { name: 'lyon-3', address: spoke });
        expectStatus(
          await distribute(server, pkg.id, {
            distributionPoints: ['lyon-3'],
            fromDistributionPoint: 'lyon-hub',
          }),
          202,
          'from http hub',
        );
        const row = await until(server, pkg.id, 'lyon-3', finished);
        assert.equal(row.state, 'done', JSON.stringify(row));
        const packBytes = [...filesUnder(spoke)]
          .filter(([rel]) => rel.endsWith('.pack'))
          .reduce((n, [, s]) => n + s, 0);
        // Counted by nginx: each pack byte crossed the link once.
        const packsSent = nginx
          .log()
          .filter((l) => l.uri.endsWith('.pack'))
          .reduce((n, l) => n + l.bytes, 0);
        assert.equal(packsSent, packBytes);
      } finally {
        await nginx.stop();
      }
    },
  );

  test('outside its window a copy waits, and goes on when the window opens', async () => {
    const dp = join(server.dir, 'dp-night');
    await createDp(server, {
      name: 'night',
      address: dp,
      bandwidth: { windows: [{ from: '22:00', to: '06:00' }] },
    });
    expectStatus(await distribute(server, pkg.id, { distributionPoints: ['night'] }), 202, '');
    const waiting = await until(server, pkg.id, 'night', (r) => r.state === 'waiting');
    assert.equal(waiting.note, 'waiting for window until 22:00');
    assert.equal(storeBytes(dp), 0, 'nothing copied outside the window');
    clock.set(new Date(2026, 0, 5, 22, 0).getTime());
    const row = await until(server, pkg.id, 'night', finished);
    assert.equal(row.state, 'done', JSON.stringify(row));
    assert.equal(row.note, null);
    await readable(dirRemote(dp), pkg.imageId, server.dir);
  });

  test('a copy cut by a server restart resumes at start, copying nothing twice', async () => {
    const dp = join(server.dir, 'dp-restart');
    // 8 Mbit/s: ~3 s for the image, cut after its first MiB.
    await createDp(server, {
      name: 'restart',
      address: dp,
      bandwidth: { rateLimitKbps: 8000 },
    });
    expectStatus(await distribute(server, pkg.id, { distributionPoints: ['restart'] }), 202, '');
    await until(server, pkg.id, 'restart', (r) => r.state === 'copying' && r.bytesDone > 0);
    await server.restart();
    const tmp = join(dp, 'tmp', 'replicate');
    const partial = readdirSync(tmp).reduce((n, f) => n + statSync(join(tmp, f)).size, 0);
    assert.ok(partial > 0, 'a partial file was left on the DP');
    const row = await until(server, pkg.id, 'restart', finished);
    assert.equal(row.state, 'done', JSON.stringify(row));
    // The resumed run copied exactly what had not arrived yet.
    assert.equal(partial + row.bytesDone, storeBytes(dp));
    assert.deepEqual(readdirSync(tmp), []);
    assert.match(server.log(), /resuming a replication the server was running when it stopped/);
  });
});

describe('replication to a WebDAV distribution point', { skip: nginxSkip() }, () => {
  let server: TestServer;
  let nginx: Nginx;
  let dav: string;
  let pkg: PackageRecord;
  const password = 'dav-secret-3f9a71';

  before(async () => {
    server = await makeTestServer('sqlite');
    const tree = join(server.dir, 'tree');
    mkdirSync(tree, { recursive: true });
    writeFileSync(join(tree, 'big.bin'), randomData('dav', 2 * 1024 * 1024));
    await captureImage({ source: tree, store: server.store, name: 'davimg', workers: 1 });
    const image = await registerImage(server, 'davimg');
    pkg = await createPackage(server, packageFiles({ name: 'dav', version: '1', image: image.id }));
    dav = join(server.dir, 'dav-root');
    mkdirSync(dav);
    nginx = await startNginx(dav, { dav: { auth: { username: 'writer', password } } });
  });
  after(async () => {
    await nginx?.stop();
    await server?.close();
  });

  test('puts each file under tmp/ and moves it into place, with sealed credentials', async () => {
    const wrong = await server.call('POST', '/api/v1/distribution-points', {
      role: 'operator',
      body: { name: 'dav-nocreds', address: nginx.url, site: 'NICE', boundaries: [] },
    });
    expectStatus(wrong, 201, 'dp without credentials');
    expectStatus(
      await distribute(server, pkg.id, { distributionPoints: ['dav-nocreds'] }),
      202,
      '',
    );
    const refused = await until(server, pkg.id, 'dav-nocreds', finished);
    assert.equal(refused.state, 'failed');
    assert.match(refused.error ?? '', /HTTP 401/);

    const created = await server.call<{ hasCredentials: boolean; credentials?: unknown }>(
      'POST',
      '/api/v1/distribution-points',
      {
        role: 'operator',
        body: {
          name: 'dav',
          address: nginx.url,
          site: 'NICE',
          boundaries: [],
          credentials: { username: 'writer', password },
        },
      },
    );
    expectStatus(created, 201, 'dav dp');
    assert.equal(created.body.hasCredentials, true);
    assert.equal(created.body.credentials, undefined);
    expectStatus(await distribute(server, pkg.id, { distributionPoints: ['dav'] }), 202, '');
    const row = await until(server, pkg.id, 'dav', finished);
    assert.equal(row.state, 'done', JSON.stringify(row));
    assert.equal(row.bytesDone, storeBytes(dav));
    assert.deepEqual(readdirSync(join(dav, 'tmp', 'replicate')), []);
    // Every file went up once, into tmp/, and was moved: no PUT wrote a final name.
    const puts = nginx.log().filter((l) => l.method === 'PUT');
    assert.ok(puts.length > 0 && puts.every((l) => l.uri.startsWith('/tmp/')));
    await readable(httpRemote(nginx.url), pkg.imageId, server.dir);

    // Again: nothing is sent.
    const before = nginx.log().filter((l) => l.method === 'PUT').length;
    expectStatus(await distribute(server, pkg.id, { distributionPoints: ['dav'] }), 202, '');
    const again = await until(server, pkg.id, 'dav', finished);
    assert.equal(again.bytesDone, 0);
    assert.equal(nginx.log().filter((l) => l.method === 'PUT').length, before);

    // The password is in neither the catalog's clear text nor the log nor the API.
    const raw = await server.catalog.dpCredentials((await server.catalog.getDp('dav')).id);
    assert.ok(raw && !raw.includes(password));
    assert.ok(!server.log().includes(password));
    const listed = await server.call('GET', '/api/v1/distribution-points/dav', {
      role: 'read-only',
    });
    assert.ok(!JSON.stringify(listed.body).includes(password));
  });
});
