import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isReimageError } from '../errors.js';
import { libraryImage } from '../../test/support/library-image.js';
import { sha256Hex } from './digest.js';
import { fetchImage } from './fetch.js';
import { dirRemote } from './remote.js';
import { replicateImage } from './replicate.js';
import { ContentStore } from './store.js';

let dir: string;
let lib: ContentStore;
let imageId: string;
let packs: string[];
let totalBytes: number;

async function makeImage(): Promise<void> {
  ({ lib, imageId, packs, totalBytes } = await libraryImage(path.join(dir, 'library')));
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
    // Counted at the DP: what arrived before the cut is what the first run reported.
    const arrived = fs.statSync(path.join(dp, 'tmp', 'replicate', partial[0]!)).size;
    assert.equal(arrived, firstRun);
    const r = await replicateImage({ from: lib.root, to: dp, imageId });
    assert.equal(arrived + r.bytesCopied, totalBytes, 'each byte copied once');
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

  it('fills a DP from another DP (hub and spoke), verifying what it reads', async () => {
    const hub = path.join(dir, 'dp-hub');
    await replicateImage({ from: lib.root, to: hub, imageId });
    const spoke = path.join(dir, 'dp-spoke');
    const r = await replicateImage({ from: dirRemote(hub), to: spoke, imageId });
    assert.equal(r.bytesCopied, totalBytes);
    await readableByFetch(spoke);

    // A hub that lacks the image, or holds a bad copy, fills nothing.
    await assert.rejects(
      replicateImage({ from: dirRemote(path.join(dir, 'dp-none')), to: spoke, imageId }),
      (e: unknown) => isReimageError(e, 'IMAGE_NOT_FOUND'),
    );
    const bad = path.join(dir, 'dp-bad-hub');
    fs.cpSync(hub, bad, { recursive: true });
    const packFile = path.join(bad, path.relative(lib.root, lib.packPath(packs[0]!)));
    const fd = fs.openSync(packFile, 'r+');
    fs.writeSync(fd, Buffer.from('garbage!'), 0, 8, 5000);
    fs.closeSync(fd);
    const victim = path.join(dir, 'dp-victim');
    await assert.rejects(
      replicateImage({ from: dirRemote(bad), to: victim, imageId }),
      (e: unknown) => isReimageError(e, 'PACK_CORRUPT'),
    );
    assert.deepEqual(ContentStore.open(victim).listPacks(), []);
  });

  it('waits outside its windows and copies inside them', async () => {
    // A clock that starts at 07:00 local time; sleeping moves it on at once.
    let now = new Date(2026, 0, 5, 7, 0).getTime(); // a Monday
    const slept: number[] = [];
    const clock = {
      now: () => now,
      sleep: async (ms: number) => {
        slept.push(ms);
        now += ms;
      },
    };
    const waits: string[] = [];
    let bytesWhenWaiting: number[] = [];
    let done = 0;
    const dp = path.join(dir, 'dp-window');
    const r = await replicateImage({
      from: lib.root,
      to: dp,
      imageId,
      windows: [{ from: '22:00', to: '22:30' }],
      clock,
      onWait: (_until, hhmm) => {
        waits.push(hhmm);
        bytesWhenWaiting.push(done);
      },
      // Each MiB "takes" 10 minutes: the window closes in the middle of the pack.
      onProgress: (p) => {
        done = p.bytesDone;
        now += 10 * 60_000;
      },
    });
    assert.equal(r.bytesCopied, totalBytes);
    // It waited from 07:00 for 22:00, then (after three MiB inside the window) for the next day.
    assert.equal(waits[0], '22:00');
    assert.ok(waits.every((w) => w === '22:00'));
    bytesWhenWaiting = [...new Set(bytesWhenWaiting)];
    assert.deepEqual(bytesWhenWaiting.slice(0, 2), [0, 3 * 1024 * 1024]);
    assert.ok(
      slept.every((ms) => ms <= 60_000),
      'long waits are slept in steps',
    );
    assert.ok(new Date(now).getDate() > 5, 'finished on a later evening');
    await readableByFetch(dp);

    await assert.rejects(
      replicateImage({
        from: lib.root,
        to: path.join(dir, 'dp-window-bad'),
        imageId,
        windows: [{ from: '25:00', to: '06:00' }],
        clock,
      }),
      (e: unknown) => isReimageError(e, 'INVALID_ARGUMENT'),
    );
    assert.equal(
      fs.existsSync(path.join(dir, 'dp-window-bad')),
      false,
      'bad input changes nothing',
    );
  });

  it('refuses an image the library does not have', async () => {
    await assert.rejects(
      replicateImage({ from: lib.root, to: path.join(dir, 'dp-none'), imageId: 'ab'.repeat(32) }),
      (e: unknown) => isReimageError(e, 'IMAGE_NOT_FOUND'),
    );
  });
});
