import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Compressor } from 'zstd-napi';
import { isReimageError } from '../errors.js';
import { randomData } from '../../test/support/random.js';
import { sha256, sha256Hex } from './digest.js';
import { fetchImage } from './fetch.js';
import { FrameBuilder, type Frame } from './pack.js';
import { dirRemote } from './remote.js';
import { replicateImage } from './replicate.js';
import { ContentStore } from './store.js';

let dir: string;
let lib: ContentStore;
let imageId: string;
let packs: string[];
let totalBytes: number;

/** An image in a library store: ~3 MiB of incompressible chunks in one pack, a manifest, a record. */
async function makeImage(): Promise<void> {
  lib = ContentStore.open(path.join(dir, 'library'), { create: true });
  const frames: Frame[] = [];
  const fb = new FrameBuilder((f) => frames.push(f));
  for (let i = 0; i < 48; i++) {
    const data = randomData(`chunk-${i}`, 64 * 1024);
    fb.add(sha256(data), data);
  }
  fb.flush();
  const session = lib.beginSession(lib.loadIndex());
  for (const f of frames) session.addFrame(f);
  packs = (await session.commit()).packs;
  session.close();
  const manifest = Buffer.from(`a manifest naming 48 chunks ${'x'.repeat(1000)}`);
  imageId = sha256Hex(manifest);
  const c = new Compressor();
  lib.writeObject('manifests', `${imageId}.zst`, c.compress(manifest));
  lib.writeObject(
    'images',
    `${imageId}.json`,
    JSON.stringify({ id: imageId, name: 'test', packs }, null, 2) + '\n',
  );
  totalBytes = 0;
  for (const p of packs) {
    totalBytes += fs.statSync(lib.packPath(p)).size + fs.statSync(lib.indexPath(p)).size;
  }
  totalBytes += fs.statSync(lib.objectPath('manifests', `${imageId}.zst`)).size;
  totalBytes += fs.statSync(lib.objectPath('images', `${imageId}.json`)).size;
}

async function readableByFetch(dp: string): Promise<void> {
  const into = ContentStore.open(path.join(dir, `staging-${Math.random()}`), { create: true });
  const r = await fetchImage({ sources: [dirRemote(dp)], imageId, into });
  assert.equal(r.badSources.length, 0);
  assert.ok(r.chunksFetched >= 48);
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-replicate-test-'));
  await makeImage();
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('replicateImage', () => {
  it('copies an image and its extra objects, then nothing the second time', async () => {
    const dp = path.join(dir, 'dp-plain');
    const doc = Buffer.from('{"kind":"Package"}\n');
    const seen: number[] = [];
    const r = await replicateImage({
      from: lib.root,
      to: dp,
      imageId,
      extraObjects: [{ path: 'objects/packages/p1.json', data: doc }],
      onProgress: (p) => seen.push(p.bytesDone),
    });
    assert.equal(r.bytesCopied, totalBytes + doc.length);
    assert.equal(r.filesCopied, packs.length * 2 + 3);
    assert.equal(r.filesSkipped, 0);
    assert.ok(seen.length > 1);
    assert.equal(seen.at(-1), totalBytes + doc.length);
    assert.deepEqual(fs.readFileSync(path.join(dp, 'objects/packages/p1.json')), doc);
    assert.ok(fs.existsSync(path.join(dp, 'reimage-store.json')));
    assert.deepEqual(ContentStore.open(dp).listPacks(), [...packs].sort());
    assert.deepEqual(fs.readdirSync(path.join(dp, 'tmp', 'replicate')), []);
    await readableByFetch(dp);

    const again = await replicateImage({
      from: lib.root,
      to: `file://${dp}`,
      imageId,
      extraObjects: [{ path: 'objects/packages/p1.json', data: doc }],
    });
    assert.deepEqual(again, { bytesCopied: 0, filesCopied: 0, filesSkipped: packs.length * 2 + 3 });
  });

  it('resumes an interrupted copy without copying anything twice', async () => {
    const dp = path.join(dir, 'dp-resume');
    const ac = new AbortController();
    let firstRun = 0;
    await assert.rejects(
      replicateImage({
        from: lib.root,
        to: dp,
        imageId,
        signal: ac.signal,
        onProgress: (p) => {
          firstRun = p.bytesDone;
          if (p.bytesDone > 1.5 * 1024 * 1024) ac.abort();
        },
      }),
      (e: unknown) => isReimageError(e, 'CANCELLED'),
    );
    assert.ok(firstRun > 0 && firstRun < totalBytes);
    // Nothing half-copied is visible: no pack in the store yet, a partial file in tmp/.
    assert.deepEqual(ContentStore.open(dp).listPacks(), []);
    const partial = fs.readdirSync(path.join(dp, 'tmp', 'replicate'));
    assert.equal(partial.length, 1);
    const r = await replicateImage({ from: lib.root, to: dp, imageId });
    assert.equal(firstRun + r.bytesCopied, totalBytes, 'each byte copied once');
    await readableByFetch(dp);
  });

  it('detects a corrupted partial file and copies it again', async () => {
    const dp = path.join(dir, 'dp-corrupt');
    const ac = new AbortController();
    let firstRun = 0;
    await assert.rejects(
      replicateImage({
        from: lib.root,
        to: dp,
        imageId,
        signal: ac.signal,
        onProgress: (p) => {
          firstRun = p.bytesDone;
          if (p.bytesDone > 1024 * 1024) ac.abort();
        },
      }),
    );
    const tmpDir = path.join(dp, 'tmp', 'replicate');
    const [partial] = fs.readdirSync(tmpDir);
    assert.ok(partial);
    const fd = fs.openSync(path.join(tmpDir, partial), 'r+');
    fs.writeSync(fd, Buffer.from('garbage!'), 0, 8, 100);
    fs.closeSync(fd);
    const r = await replicateImage({ from: lib.root, to: dp, imageId, rateLimitBytesPerSec: 50e6 });
    // The resumed part, then the whole file again once its hash was wrong.
    const packSize = fs.statSync(lib.packPath(packs[0]!)).size;
    assert.equal(firstRun + r.bytesCopied, totalBytes + packSize);
    assert.equal(
      sha256Hex(fs.readFileSync(path.join(dp, path.relative(lib.root, lib.packPath(packs[0]!))))),
      packs[0],
    );
    await readableByFetch(dp);
  });

  it('honours the rate limit', async () => {
    const dp = path.join(dir, 'dp-slow');
    const started = Date.now();
    const r = await replicateImage({
      from: lib.root,
      to: dp,
      imageId,
      rateLimitBytesPerSec: 8 * 1024 * 1024,
    });
    assert.equal(r.bytesCopied, totalBytes);
    // ~3 MiB at 8 MiB/s, minus the initial burst: at least ~250 ms.
    assert.ok(Date.now() - started >= 200, `took ${Date.now() - started} ms`);
  });

  it('refuses an image the library does not have', async () => {
    await assert.rejects(
      replicateImage({ from: lib.root, to: path.join(dir, 'dp-none'), imageId: 'ab'.repeat(32) }),
      (e: unknown) => isReimageError(e, 'IMAGE_NOT_FOUND'),
    );
  });
});
