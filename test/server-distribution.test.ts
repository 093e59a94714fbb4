import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { test } from 'node:test';
import type { Distribution, PackageRecord } from '../src/catalog/catalog.js';
import { fetchImage } from '../src/content/fetch.js';
import { dirRemote } from '../src/content/remote.js';
import { ContentStore } from '../src/content/store.js';
import {
  addImage,
  createDp,
  createPackage,
  expectStatus,
  packageFiles,
} from './support/fixtures.js';
import { forEachDatabase, type TestServer } from './support/server.js';

type Row = Distribution & { dpName: string };

async function rowsOf(server: TestServer, pkg: string): Promise<Row[]> {
  const res = await server.call<{ items: Row[] }>('GET', `/api/v1/packages/${pkg}/distribution`, {
    role: 'read-only',
  });
  expectStatus(res, 200, 'list distribution');
  return res.body.items;
}

/** Polls until no row of the package is pending or copying. */
async function settled(server: TestServer, pkg: string): Promise<Row[]> {
  const until = Date.now() + 30_000;
  for (;;) {
    const rows = await rowsOf(server, pkg);
    if (rows.every((r) => r.state === 'done' || r.state === 'failed')) return rows;
    assert.ok(Date.now() < until, `still running: ${JSON.stringify(rows)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

forEachDatabase('package distribution', (get) => {
  let pkg: PackageRecord;
  let folder: string;

  test('distributes a package to a folder DP, which then serves the image', async () => {
    const server = get();
    const image = await addImage(server, 'dist-image');
    // The default PE (an image named reimage-pe) travels with every package.
    const pe = await addImage(server, 'reimage-pe');
    pkg = await createPackage(
      server,
      packageFiles({ name: 'dist', version: '1.0', image: image.id }),
    );
    folder = join(server.dir, 'dp-paris');
    await createDp(server, { name: 'paris', address: folder });
    await createDp(server, {
      name: 'lyon',
      address: pathToFileURL(join(server.dir, 'dp-lyon')).href,
    });
    await createDp(server, { name: 'nice', address: 'smb://files.example.com/reimage' });

    const res = await server.call<{ items: Row[] }>(
      'POST',
      `/api/v1/packages/dist@1.0/distribute`,
      {
        role: 'operator',
        body: { distributionPoints: ['paris', 'lyon', 'nice'] },
      },
    );
    expectStatus(res, 202, 'distribute');
    assert.deepEqual(res.body.items.map((r) => [r.dpName, r.state]).sort(), [
      ['lyon', 'pending'],
      ['nice', 'failed'],
      ['paris', 'pending'],
    ]);

    const rows = await settled(server, 'dist@1.0');
    const by = new Map(rows.map((r) => [r.dpName, r]));
    assert.equal(by.get('paris')?.state, 'done', JSON.stringify(rows));
    assert.equal(by.get('lyon')?.state, 'done', JSON.stringify(rows));
    assert.ok(by.get('paris')!.bytesDone > 0);
    assert.equal(by.get('nice')?.state, 'failed');
    assert.equal(
      by.get('nice')?.error,
      'replication to smb addresses is not supported yet: copy with rsync and it will be verified on the machines',
    );

    // The DP is a store a machine can fetch from; it holds the package document, without secrets.
    const into = ContentStore.open(join(server.dir, 'staging'), { create: true });
    const r = await fetchImage({ sources: [dirRemote(folder)], imageId: image.id, into });
    assert.equal(r.badSources.length, 0);
    const withPe = await fetchImage({ sources: [dirRemote(folder)], imageId: pe.id, into });
    assert.equal(withPe.badSources.length, 0, 'the PE is on the DP too');
    const doc = JSON.parse(
      readFileSync(join(folder, 'objects/packages', `${pkg.id}.json`), 'utf8'),
    );
    assert.equal(doc.kind, 'Package');
    assert.equal(doc.image, image.id);
    assert.ok(existsSync(join(server.dir, 'dp-lyon', 'reimage-store.json')));

    const byDp = await server.call<{ items: Row[] }>(
      'GET',
      '/api/v1/distribution-points/paris/distribution',
      { role: 'read-only' },
    );
    expectStatus(byDp, 200, 'dp distribution');
    assert.deepEqual(
      byDp.body.items.map((i) => [i.packageId, i.state]),
      [[pkg.id, 'done']],
    );
    const audit = await server.catalog.listAudit();
    assert.ok(
      audit.some((a) => a.kind === 'distribution' && a.summary === 'to paris, lyon, nice'),
      JSON.stringify(audit),
    );
  });

  test('distributing again copies nothing', async () => {
    const server = get();
    const started = Date.now();
    const res = await server.call<{ items: Row[] }>(
      'POST',
      `/api/v1/packages/${pkg.id}/distribute`,
      {
        role: 'operator',
        body: { distributionPoints: ['paris'] },
      },
    );
    expectStatus(res, 202, 'distribute again');
    const rows = await settled(server, pkg.id);
    const paris = rows.find((r) => r.dpName === 'paris')!;
    assert.equal(paris.state, 'done');
    assert.equal(paris.bytesDone, 0);
    assert.equal(paris.bytesTotal, 0);
    assert.ok(Date.now() - started < 5000);
  });

  test('refuses unknown DPs and read-only users', async () => {
    const server = get();
    const unknown = await server.call('POST', `/api/v1/packages/${pkg.id}/distribute`, {
      role: 'operator',
      body: { distributionPoints: ['nowhere'] },
    });
    expectStatus(unknown, 404, 'unknown dp');
    const ro = await server.call('POST', `/api/v1/packages/${pkg.id}/distribute`, {
      role: 'read-only',
      body: { distributionPoints: ['paris'] },
    });
    expectStatus(ro, 403, 'read-only');
  });
});
