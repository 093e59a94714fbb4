/**
 * Uploading images from a model computer's local store into the server's library
 * (docs/upload.md): only missing chunks cross, counted by the server; a killed uploader and a
 * cut link resume without re-sending what arrived; bad input changes nothing.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { ApiClient } from '../src/client/http.js';
import { UploadClient, type UploadStatus } from '../src/client/uploads.js';
import { encodeFrameStream } from '../src/content/frame-stream.js';
import { FRAME_CHUNK_RECORD } from '../src/content/pack.js';
import { ContentStore, PackReader } from '../src/content/store.js';
import { captureImage } from '../src/image/capture.js';
import { ImageLibrary } from '../src/image/library.js';
import { uploadImage } from '../src/image/upload.js';
import { verifyImage } from '../src/image/verify.js';
import { makeMachineTree } from '../src/lab/machine-tree.js';
import { reimageAsync } from './cli.js';
import { expectStatus, snapshotCatalog } from './support/fixtures.js';
import { randomData } from './support/random.js';
import { forEachDatabase, type TestServer } from './support/server.js';
import { startLink } from './support/wan.js';

const MB = 1024 * 1024;
/** One request in flight at a break: a batch is ~1 MiB of frames, or one frame (≤ ~2.1 MiB of incompressible data). */
const IN_FLIGHT = 2.2 * MB;

interface Version {
  id: string;
  /** compressed bytes the local capture added: the new content */
  stored: number;
  chunks: number;
  manifestBytes: number;
}

let work: string;
let model: ContentStore;
const v: Record<'v1' | 'v2' | 'v3' | 'v4' | 'v5', Version> = {} as never;

async function captureVersion(tree: string, key: keyof typeof v): Promise<void> {
  const r = await captureImage({
    source: tree,
    store: model,
    name: 'model',
    description: 'lab model computer',
    properties: { os: 'debian', version: '12', arch: 'amd64', owner: 'lab' },
    sourceMachine: 'model-01',
    parent: key === 'v1' ? undefined : 'model',
    workers: 2,
  });
  v[key] = {
    id: r.record.id,
    stored: r.record.stats.storedBytes,
    chunks: r.record.stats.uniqueChunks,
    manifestBytes: r.record.stats.manifestBytes,
  };
}

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'reimage-upload-'));
  model = ContentStore.open(join(work, 'model-store'), { create: true });
  const tree = join(work, 'model');
  await makeMachineTree(tree, { scale: 'small', seed: 9, hostname: 'model-01' });
  await captureVersion(tree, 'v1');
  // v2: small changes, as between two captures of a model computer.
  writeFileSync(join(tree, 'etc', 'motd'), 'Welcome to the lab model, version 2\n');
  mkdirSync(join(tree, 'opt', 'tool'), { recursive: true });
  writeFileSync(join(tree, 'opt', 'tool', 'tool.bin'), randomData('upload-v2', 600_000));
  await captureVersion(tree, 'v2');
  // v3 and v4: 8 MB of new data each, for the interrupted uploads; v5 for bad input.
  for (let i = 0; i < 4; i++)
    writeFileSync(join(tree, 'opt', 'tool', `v3-${i}.bin`), randomData(`upload-v3-${i}`, 2 * MB));
  await captureVersion(tree, 'v3');
  for (let i = 0; i < 4; i++)
    writeFileSync(join(tree, 'opt', 'tool', `v4-${i}.bin`), randomData(`upload-v4-${i}`, 2 * MB));
  await captureVersion(tree, 'v4');
  writeFileSync(join(tree, 'opt', 'tool', 'v5.bin'), randomData('upload-v5', 300_000));
  await captureVersion(tree, 'v5');
  for (const [k, x] of Object.entries(v))
    console.log(
      `${k}: ${x.id.slice(0, 12)} new content ${x.stored} B compressed, ${x.chunks} chunks, manifest ${x.manifestBytes} B`,
    );
});

after(() => rmSync(work, { recursive: true, force: true }));

/** A server listening on loopback (plain HTTP is allowed there), for the CLI and the link. */
async function listen(server: TestServer): Promise<string> {
  const addr = server.app.server.address();
  if (addr && typeof addr === 'object') return `http://127.0.0.1:${addr.port}`;
  await server.app.listen({ host: '127.0.0.1', port: 0 });
  const a = server.app.server.address();
  assert.ok(a && typeof a === 'object');
  return `http://127.0.0.1:${a.port}`;
}

async function uploadsOf(server: TestServer, imageId: string): Promise<UploadStatus[]> {
  const res = await server.call<{ items: UploadStatus[] }>('GET', '/api/v1/uploads');
  expectStatus(res, 200, 'list uploads');
  return res.body.items.filter((u) => u.imageId === imageId);
}

function cliEnv(server: TestServer): NodeJS.ProcessEnv {
  return {
    ...process.env,
    XDG_CONFIG_HOME: join(work, 'config'),
    REIMAGE_TOKEN: server.tokens.operator,
    REIMAGE_SERVER: '',
    REIMAGE_STORE: '',
  };
}

/** What a library holds apart from packs: names, records, manifests. */
function libraryObjects(store: ContentStore): string[] {
  return ['names', 'images', 'manifests'].flatMap((k) =>
    store.listObjects(k).map((n) => `${k}/${n}`),
  );
}

forEachDatabase('image upload', (get) => {
  test('v1, then v2 with small changes: the server receives about the new chunks only', async () => {
    const server = get();
    const url = await listen(server);
    const inventory = {
      hostname: 'model-01',
      os: 'debian',
      osVersion: '12',
      arch: 'x86_64',
      disks: [{ device: 'vda', sizeGb: 40 }],
    };
    writeFileSync(join(work, 'inventory.json'), JSON.stringify(inventory));
    const r1 = await run(
      ['image', 'upload', v.v1.id.slice(0, 12), '--store', model.root, '--server', url].concat([
        '--inventory',
        join(work, 'inventory.json'),
        '--json',
      ]),
      { env: cliEnv(server) },
    );
    assert.equal(r1.status, 0, r1.stderr);
    assert.ok(
      !r1.stdout.includes(server.tokens.operator) && !r1.stderr.includes(server.tokens.operator),
    );
    const [u1] = await uploadsOf(server, v.v1.id);
    assert.equal(u1?.state, 'committed');

    const api = new ApiClient({ server: url, token: server.tokens.operator });
    try {
      const r2 = await uploadImage({
        store: model,
        imageId: v.v2.id,
        server: new UploadClient(api),
        inventory,
      });
      assert.equal(r2.name, 'model');
      assert.ok(r2.chunksMissing > 0 && r2.chunksMissing < r2.chunksTotal / 4, JSON.stringify(r2));
    } finally {
      api.close();
    }
    const [u2] = await uploadsOf(server, v.v2.id);
    assert.equal(u2?.state, 'committed');
    console.log(
      `[${server.kind}] server received: v1 ${u1!.bytesReceived} B (new content ${v.v1.stored} B), v2 ${u2!.bytesReceived} B (new content ${v.v2.stored} B)`,
    );
    assert.ok(u1!.bytesReceived >= v.v1.stored * 0.9, 'v1 sends its content');
    assert.ok(
      u2!.bytesReceived < 2 * v.v2.stored,
      `v2: ${u2!.bytesReceived} B received for ${v.v2.stored} B of new content`,
    );
    assert.ok(u2!.bytesReceived < u1!.bytesReceived / 3, 'v2 costs far less than v1');
    assert.match(server.log(), /upload committed/);

    // Both are whole in the server's library and listed with properties and inventory.
    await verifyImage({ store: server.store, image: v.v2.id });
    const lib = new ImageLibrary(server.store);
    assert.equal(lib.getName('model')!.id, v.v2.id);
    assert.deepEqual(lib.getName('model')!.previous, [v.v1.id]);
    const res = await server.call<{ items: Array<Record<string, unknown>> }>(
      'GET',
      '/api/v1/images',
      { role: 'read-only' },
    );
    const img = res.body.items.find((i) => i.id === v.v2.id)!;
    assert.equal(img.name, 'model');
    assert.deepEqual(img.inventory, inventory);
    assert.equal((img.properties as Record<string, string>).osFamily, 'debian');
    assert.equal((img.properties as Record<string, string>)['custom.owner'], 'lab');
    assert.equal(img.sourceMachine, 'model-01');
    const list = await run(['image', 'list', '--server', url, '--json'], {
      env: { ...cliEnv(server), REIMAGE_TOKEN: server.tokens['read-only'] },
    });
    assert.equal(list.status, 0, list.stderr);
    const listed = (list.json.images as Array<Record<string, unknown>>).find(
      (i) => i.id === v.v1.id,
    );
    assert.deepEqual(listed?.inventory, inventory);
  });

  test('an uploader killed midway resumes without re-sending what arrived', async () => {
    const server = get();
    const url = await listen(server);
    // 16 Mbit/s upstream, so that the upload is still running when it is killed.
    const link = await startLink({
      target: { host: '127.0.0.1', port: Number(new URL(url).port) },
      upRateBitsPerSec: 16e6,
    });
    try {
      // v3 by id, under the name `model` (which names v5 in the model's store by now).
      const args = ['image', 'upload', v.v3.id, '--name', 'model', '--store', model.root].concat([
        '--no-inventory',
        '--json',
      ]);
      const killed = spawnUpload(server, [...args, '--server', link.url.replace(/\/$/, '')]);
      let open: UploadStatus | undefined;
      for (;;) {
        [open] = await uploadsOf(server, v.v3.id);
        if ((open?.bytesReceived ?? 0) > 3 * MB) break;
        assert.ok(
          killed.exitCode === null,
          `the uploader ended before it was killed: ${killed.stderr()}`,
        );
        await new Promise((r) => setTimeout(r, 20));
      }
      killed.child.kill('SIGKILL');
      await killed.exited;
      const atKill = (await uploadsOf(server, v.v3.id))[0]!;
      assert.equal(atKill.state, 'open');
      assert.ok(atKill.bytesReceived < v.v3.stored, 'killed midway');

      const again = await run([...args, '--server', url], { env: cliEnv(server) });
      assert.equal(again.status, 0, again.stderr);
      assert.equal(again.json.resumed, true);
      const [done] = await uploadsOf(server, v.v3.id);
      assert.equal(done?.state, 'committed');
      const overhead = 2 * v.v3.chunks * 70 + v.v3.manifestBytes + 8192;
      console.log(
        `[${server.kind}] killed at ${atKill.bytesReceived} B; total received ${done!.bytesReceived} B for ${v.v3.stored} B of new content (${done!.requests} requests)`,
      );
      assert.ok(
        done!.bytesReceived <= v.v3.stored + IN_FLIGHT + overhead,
        `received ${done!.bytesReceived} B for ${v.v3.stored} B of new content`,
      );
      await verifyImage({ store: server.store, image: v.v3.id });
    } finally {
      await link.close();
    }
  });

  test('an upload through a link that is cut midway resumes without re-sending what arrived', async () => {
    const server = get();
    const url = await listen(server);
    const link = await startLink({
      target: { host: '127.0.0.1', port: Number(new URL(url).port) },
      upRateBitsPerSec: 16e6,
      latencyMs: 10,
      // Blackholed once 4 MB went up (mid-request), then refused, for 5 s.
      outages: [{ atBytesUp: 4 * MB, forMs: 5000 }],
    });
    const api = new ApiClient({
      server: link.url.replace(/\/$/, ''),
      token: server.tokens.operator,
      timeoutMs: 4000,
    });
    try {
      const r = await uploadImage({
        store: model,
        imageId: v.v4.id,
        name: 'model',
        server: new UploadClient(api),
        inventory: { hostname: 'model-01' },
        backoffCapMs: 1000,
      });
      assert.ok(r.retries >= 1, 'the cut was noticed and retried');
      assert.ok(link.events().some((e) => e.event === 'cut'));
      const [done] = await uploadsOf(server, v.v4.id);
      assert.equal(done?.state, 'committed');
      const overhead = v.v4.chunks * 70 + 2 * 4096 + v.v4.manifestBytes + 8192;
      console.log(
        `[${server.kind}] cut link: server received ${done!.bytesReceived} B for ${v.v4.stored} B of new content; link carried ${link.bytesUp()} B up; ${r.retries} retries`,
      );
      assert.ok(
        done!.bytesReceived <= v.v4.stored + IN_FLIGHT + overhead,
        `received ${done!.bytesReceived} B for ${v.v4.stored} B of new content`,
      );
      await verifyImage({ store: server.store, image: v.v4.id });
    } finally {
      api.close();
      await link.close();
    }
  });

  test('bad input gets a clear error and changes nothing', async () => {
    const server = get();
    const catalogBefore = await snapshotCatalog(server);
    const objectsBefore = libraryObjects(server.store);
    const packsBefore = server.store.listPacks();
    const rec = new ImageLibrary(model).getRecord(v.v5.id)!;
    const start = {
      imageId: v.v5.id,
      name: 'bad-input',
      properties: { created: rec.properties.created, custom: {} },
    };

    const anon = await server.call('POST', '/api/v1/uploads', { token: null, body: start });
    expectStatus(anon, 401, 'unauthenticated');
    const ro = await server.call<{ error: { code: string } }>('POST', '/api/v1/uploads', {
      role: 'read-only',
      body: start,
    });
    expectStatus(ro, 403, 'read-only');
    assert.equal(ro.body.error.code, 'FORBIDDEN');
    const deep = await server.call<{ error: { code: string; message: string } }>(
      'POST',
      '/api/v1/uploads',
      { body: { ...start, inventory: { a: { b: { c: { d: { e: 1 } } } } } } },
    );
    expectStatus(deep, 400, 'deep inventory');
    assert.match(deep.body.error.message, /inventory: nests more than 4 levels/);
    const unknown = await server.call<{ error: { code: string } }>(
      'GET',
      '/api/v1/uploads/no-such-upload',
    );
    expectStatus(unknown, 404, 'unknown upload');
    assert.equal(unknown.body.error.code, 'UPLOAD_NOT_FOUND');

    const opened = await server.call<{ upload: UploadStatus }>('POST', '/api/v1/uploads', {
      role: 'operator',
      body: start,
    });
    expectStatus(opened, 201, 'start');
    const id = opened.body.upload.id;
    const raw = (method: 'PUT' | 'POST', path: string, payload: Buffer) =>
      server.app.inject({
        method,
        url: `/api/v1/uploads/${id}/${path}`,
        headers: {
          authorization: `Bearer ${server.tokens.operator}`,
          'content-type': 'application/octet-stream',
        },
        payload,
      });

    // A real frame of v5's new data, with a chunk record naming another hash.
    const index = model.loadIndex(rec.packs);
    const missing = (
      await server.call<{ missing: string[] }>('POST', `/api/v1/uploads/${id}/missing`, {
        body: {
          hashes: [...index.keys()]
            .slice(0, 4096)
            .map((k) => Buffer.from(k, 'latin1').toString('hex')),
        },
      })
    ).body.missing;
    assert.ok(missing.length > 0);
    const loc = index.get(Buffer.from(missing[0]!, 'hex'))!;
    const reader = new PackReader(index.packPaths);
    const data = reader.readFrame(loc.pack, loc.frameOffset, loc.frameLength);
    reader.close();
    const record = Buffer.alloc(FRAME_CHUNK_RECORD);
    Buffer.from(missing[0]!, 'hex').copy(record);
    record.writeUInt32LE(loc.offset, 32);
    record.writeUInt32LE(loc.length, 36);
    const wrong = Buffer.from(record);
    wrong[0] = wrong[0]! ^ 0xff;
    const badHash = await raw('PUT', 'frames', encodeFrameStream([{ data, chunks: wrong }]));
    assert.equal(badHash.statusCode, 400, badHash.body);
    assert.equal(badHash.json().error.code, 'UPLOAD_DATA_INVALID');
    assert.match(badHash.json().error.message, /does not hash to its name/);
    const flipped = Buffer.from(data);
    // Every 997th byte: whatever zstd did with the chunk, its bytes change.
    for (let i = 32; i < flipped.length; i += 997) flipped[i] = flipped[i]! ^ 0x55;
    const badData = await raw(
      'PUT',
      'frames',
      encodeFrameStream([{ data: flipped, chunks: record }]),
    );
    assert.equal(badData.statusCode, 400, badData.body);
    assert.equal(badData.json().error.code, 'UPLOAD_DATA_INVALID');
    const notFrames = await raw('PUT', 'frames', Buffer.from('hello'));
    assert.equal(notFrames.json().error.code, 'UPLOAD_DATA_INVALID');
    const status = await server.call<UploadStatus>('GET', `/api/v1/uploads/${id}`);
    assert.equal(status.body.chunksStored, 0, 'nothing of a bad body was stored');

    // A manifest that does not hash to the id (another image's), then the right one without its chunks.
    const otherManifest = model.readObject('manifests', `${v.v1.id}.zst`)!;
    const wrongManifest = await raw('POST', 'commit', otherManifest);
    assert.equal(wrongManifest.statusCode, 400, wrongManifest.body);
    assert.equal(wrongManifest.json().error.code, 'UPLOAD_MANIFEST_INVALID');
    assert.match(wrongManifest.json().error.message, /not to the image id/);
    const rightManifest = model.readObject('manifests', `${v.v5.id}.zst`)!;
    const incomplete = await raw('POST', 'commit', rightManifest);
    assert.equal(incomplete.statusCode, 409, incomplete.body);
    assert.equal(incomplete.json().error.code, 'UPLOAD_INCOMPLETE');
    assert.ok(incomplete.json().error.details.missing > 0);
    const asJson = await server.call<{ error: { code: string } }>(
      'PUT',
      `/api/v1/uploads/${id}/frames`,
      { body: { frames: [] } },
    );
    expectStatus(asJson, 400, 'frames as JSON');

    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(await snapshotCatalog(server), catalogBefore, 'the catalog is unchanged');
    assert.deepEqual(libraryObjects(server.store), objectsBefore, 'no name, record or manifest');
    assert.deepEqual(server.store.listPacks(), packsBefore, 'no pack');
    assert.equal(new ImageLibrary(server.store).getName('bad-input'), undefined);
  });
});

/**
 * Runs `reimage` to its end without blocking this process (the server under test runs here:
 * a synchronous spawn would deadlock).
 */
async function run(args: string[], opts: { env: NodeJS.ProcessEnv }) {
  const child = reimageAsync(args, { env: opts.env });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const status = await new Promise<number | null>((r) => child.once('close', (code) => r(code)));
  let json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  try {
    json = args.includes('--json') ? JSON.parse(stdout) : undefined;
  } catch {
    json = undefined;
  }
  return { status, stdout, stderr, json };
}

/** Runs `reimage` in the background with the server's token in its environment. */
function spawnUpload(server: TestServer, args: string[]) {
  let err = '';
  const child = reimageAsync(args, { env: cliEnv(server) });
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  child.stdout.resume();
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return {
    child,
    exited,
    get exitCode() {
      return child.exitCode;
    },
    stderr: () => err,
  };
}
