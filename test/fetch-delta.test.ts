import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { makeTestTree } from './support/tree.js';
import { independentListing, diffListings } from './support/listing.js';
import { nginxSkip, startNginx, type Nginx } from './support/nginx.js';
import { ContentStore } from '../src/content/store.js';
import { captureImage } from '../src/image/capture.js';
import { applyImage } from '../src/image/apply.js';
import { httpRemote } from '../src/content/remote.js';
import { fetchImageSeeded } from '../src/image/fetch.js';
import { replicateImage } from '../src/content/replicate.js';
import { collectGarbage } from '../src/image/gc.js';
import { ImageLibrary } from '../src/image/library.js';
import { hashKey } from '../src/content/digest.js';
import {
  decodeDeltaIndex,
  deltaIndexRel,
  deltaPackRel,
  listDeltaPacks,
} from '../src/content/delta.js';

/**
 * Delta chunks end to end: a text file changed a little everywhere (every 64 KiB chunk of it
 * is new) is captured with --parent; a machine holding the old tree (or the old image)
 * downloads the deltas instead of the chunks. Bytes are counted by nginx's access log.
 */
const skip = nginxSkip();
let work: string;
let v1Tree: string;
let v2Tree: string;
let v1Id: string;
let v2Id: string;
let deltaId: string;
let nginx: Nginx | undefined;

const listing = (root: string) => independentListing(root, { ignoreSockets: true });

/** A package list: 6 MiB of stanzas; `bump` changes the version of one stanza in 40. */
function packageList(bump: boolean, kind = 'Package', size = 6 * 1024 * 1024): Buffer {
  const lines: string[] = [];
  let total = 0;
  for (let i = 0; total < size; i++) {
    const v =
      bump && i % 40 === 7
        ? `${(i % 9) + 2}.0-${i % 5}+deb13u1`
        : `${(i % 9) + 1}.${i % 7}-${i % 5}`;
    const s =
      `${kind}: pkg-${i.toString(36)}-${((i * 2654435761) >>> 0).toString(16)}\n` +
      `Version: ${v}\nArchitecture: amd64\nInstalled-Size: ${(i * 37) % 9000}\n` +
      `Depends: libc6 (>= 2.${i % 40}), pkg-${(i >> 1).toString(36)}\n` +
      `SHA256: ${createHash('sha256')
        .update(`${i}:${bump && i % 40 === 7 ? 'new' : 'old'}`)
        .digest('hex')}\n\n`;
    lines.push(s);
    total += s.length;
  }
  return Buffer.from(lines.join(''));
}

before(async () => {
  if (skip) return;
  work = mkdtempSync(join(tmpdir(), 'reimage-delta-'));
  v1Tree = join(work, 'v1');
  v2Tree = join(work, 'v2');
  await makeTestTree(v1Tree, { seed: 33, scale: 'small' });
  mkdirSync(join(v1Tree, 'lists'));
  writeFileSync(join(v1Tree, 'lists', 'Packages'), packageList(false));
  // A list renamed with the release (as apt's `…_bookworm_main_…_Packages`): its deltas
  // come from the old name (the same folder, one word and digits differ).
  writeFileSync(join(v1Tree, 'lists', 'dists_v1_main_Sources'), packageList(false, 'Source', 2e6));
  execFileSync('cp', ['-a', v1Tree, v2Tree]);
  writeFileSync(join(v2Tree, 'lists', 'Packages'), packageList(true));
  rmSync(join(v2Tree, 'lists', 'dists_v1_main_Sources'));
  writeFileSync(join(v2Tree, 'lists', 'dists_v2_main_Sources'), packageList(true, 'Source', 2e6));

  // dp/lib: a library with deltas; dp/plain: the same images captured without them.
  const lib = ContentStore.open(join(work, 'dp', 'lib'), { create: true });
  v1Id = (await captureImage({ source: v1Tree, store: lib, name: 'v1' })).record.id;
  const c2 = await captureImage({ source: v2Tree, store: lib, name: 'v2', parent: 'v1' });
  v2Id = c2.record.id;
  assert.ok(c2.deltas && c2.deltas.id, 'the capture stored deltas');
  deltaId = c2.deltas.id;
  console.log(`capture v2 with --parent: ${JSON.stringify(c2.deltas)}`);
  assert.deepEqual(c2.record.deltas, [deltaId]);
  const plain = ContentStore.open(join(work, 'dp', 'plain'), { create: true });
  await captureImage({ source: v1Tree, store: plain, name: 'v1' });
  const p2 = await captureImage({
    source: v2Tree,
    store: plain,
    name: 'v2',
    parent: 'v1',
    deltas: false,
  });
  assert.equal(p2.record.id, v2Id, 'deltas do not change the image id');
  assert.equal(p2.record.deltas, undefined);
  // dp/bad: the library with one byte flipped in the middle of its first delta frame.
  cpSync(join(work, 'dp', 'lib'), join(work, 'dp', 'bad'), { recursive: true });
  const idx = decodeDeltaIndex(
    execFileSync('cat', [join(work, 'dp', 'bad', deltaIndexRel(deltaId))]),
    deltaId,
  );
  const first = [...idx.entries.values()].sort((a, b) => a.offset - b.offset)[0]!;
  const at = first.offset + Math.floor(first.deltaLength / 2);
  const fd = openSync(join(work, 'dp', 'bad', deltaPackRel(deltaId)), 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, at);
  b[0] = b[0]! ^ 0x55;
  writeSync(fd, b, 0, 1, at);
  closeSync(fd);
  // dp/nodeltas: the library whose record lists deltas the DP does not have.
  cpSync(join(work, 'dp', 'lib'), join(work, 'dp', 'nodeltas'), { recursive: true });
  rmSync(join(work, 'dp', 'nodeltas', 'deltas'), { recursive: true });
  nginx = await startNginx(join(work, 'dp'));
});

after(async () => {
  await nginx?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

/** Fetches v2 from a DP prefix into a new machine store; returns the result and bytes served. */
async function fetchV2(prefix: string, machine: string, seedRoot: string | undefined) {
  const into = ContentStore.open(join(work, machine), { create: true });
  const before = nginx!.bytesSent(`/${prefix}/`);
  const r = await fetchImageSeeded({
    sources: [httpRemote(`${nginx!.url}${prefix}/`)],
    imageId: v2Id,
    into,
    ...(seedRoot ? { seedRoot } : {}),
  });
  const served = nginx!.bytesSent(`/${prefix}/`) - before;
  const target = join(work, `${machine}-applied`);
  await applyImage({ store: into, image: v2Id, target });
  assert.equal(diffListings(listing(v2Tree), listing(target), ['v2', 'applied']), '');
  return { r, served, into };
}

describe('delta chunks', { skip }, () => {
  test('capture: deltas only for the changed file’s new chunks, much smaller', () => {
    const lib = ContentStore.open(join(work, 'dp', 'lib'));
    assert.deepEqual(listDeltaPacks(lib), [deltaId]);
    const idx = decodeDeltaIndex(
      execFileSync('cat', [join(lib.root, deltaIndexRel(deltaId))]),
      deltaId,
    );
    const packSize = statSync(join(lib.root, deltaPackRel(deltaId))).size;
    assert.equal(idx.packSize, packSize);
    assert.ok(idx.entries.size >= 100, `${idx.entries.size} deltas`);
    // The renamed list's chunks are deltas too (against its old name).
    const { manifest } = new ImageLibrary(lib).loadManifest(v2Id);
    const renamed = manifest.entries.find(
      (e) => e.path.toString() === 'lists/dists_v2_main_Sources',
    )!;
    let fromRenamed = 0;
    for (let i = 0; i < renamed.chunks!.length; i += 32)
      if (idx.entries.get(hashKey(renamed.chunks!, i))?.count) fromRenamed++;
    assert.ok(fromRenamed >= 20, `${fromRenamed} deltas of the renamed file`);
    // The changed file's chunks are all deltas (every one has its old version nearby).
    for (const e of idx.entries.values()) {
      assert.ok(e.count > 0);
      assert.ok(e.deltaLength < e.length / 4);
    }
  });

  test('seeded from the old tree: deltas instead of chunks, identical tree, fewer bytes', async () => {
    const withDeltas = await fetchV2('lib', 'machine-a', v1Tree);
    const without = await fetchV2('plain', 'machine-b', v1Tree);
    const d = withDeltas.r.deltas!;
    console.log(
      `v2 seeded from v1's tree: nginx served ${withDeltas.served} B with deltas (${d.chunks} chunks rebuilt from ${d.bytesDownloaded} B of deltas + ${d.indexBytes} B of index; ${withDeltas.r.chunksFetched} chunks fetched) against ${without.served} B without`,
    );
    assert.ok(d.chunks >= 100);
    assert.equal(d.bad, 0);
    assert.equal(without.r.deltas, undefined);
    assert.ok(withDeltas.served * 3 < without.served, 'deltas cut the bytes served');
    assert.equal(withDeltas.r.bytesDownloaded, withDeltas.served);
    // The local record lists no delta pack (the machine does not hold them).
    const rec = JSON.parse(
      withDeltas.into.readObject('images', `${v2Id}.json`)!.toString('utf8'),
    ) as { deltas?: unknown };
    assert.equal(rec.deltas, undefined);
  });

  test('old image in the local store: deltas rebuilt from its chunks', async () => {
    const into = ContentStore.open(join(work, 'machine-c'), { create: true });
    await fetchImageSeeded({ sources: [httpRemote(`${nginx!.url}lib/`)], imageId: v1Id, into });
    const { r, served } = await fetchV2('lib', 'machine-c', undefined);
    console.log(
      `v2 over v1 in the store: ${served} B served, ${r.deltas!.chunks} chunks from deltas`,
    );
    assert.ok(r.deltas!.chunks >= 40);
    assert.equal(r.deltas!.bad, 0);
  });

  test('a corrupted delta falls back to the chunk’s frame', async () => {
    const { r } = await fetchV2('bad', 'machine-d', v1Tree);
    assert.equal(r.deltas!.bad, 1);
    assert.ok(r.deltas!.chunks >= 39);
    assert.ok(r.chunksFetched >= 1);
  });

  test('a DP without the delta files: fetched the normal way', async () => {
    const { r } = await fetchV2('nodeltas', 'machine-e', v1Tree);
    assert.equal(r.deltas!.chunks, 0);
    assert.equal(r.deltas!.indexBytes, 0);
  });

  test('replication copies delta packs, only once, and a replica serves them', async () => {
    const to = join(work, 'dp', 'replica');
    const first = await replicateImage({ from: join(work, 'dp', 'lib'), to, imageId: v2Id });
    assert.ok(existsSync(join(to, deltaPackRel(deltaId))));
    assert.ok(existsSync(join(to, deltaIndexRel(deltaId))));
    const again = await replicateImage({ from: join(work, 'dp', 'lib'), to, imageId: v2Id });
    assert.ok(first.filesCopied > 0);
    assert.equal(again.filesCopied, 0);
    // A library without deltas replicates as before.
    const plainTo = join(work, 'dp', 'plain-replica');
    await replicateImage({ from: join(work, 'dp', 'plain'), to: plainTo, imageId: v2Id });
    assert.ok(!existsSync(join(plainTo, 'deltas')));
    const { r } = await fetchV2('replica', 'machine-f', v1Tree);
    assert.ok(r.deltas!.chunks >= 40);
  });

  test('gc keeps delta packs a record lists and removes the others', async () => {
    const store = ContentStore.open(join(work, 'dp', 'bad'));
    await collectGarbage(store);
    assert.deepEqual(listDeltaPacks(store), [deltaId]);
    // A delta pack without its index (a capture killed between the two) goes too.
    const stray = join(store.root, 'deltas', 'ab', `${'ab'.repeat(32)}.dpack`);
    mkdirSync(join(store.root, 'deltas', 'ab'), { recursive: true });
    writeFileSync(stray, 'RIMGDP01');
    store.deleteObject('images', `${v2Id}.json`);
    await collectGarbage(store);
    assert.ok(!existsSync(stray));
    assert.deepEqual(listDeltaPacks(store), []);
    assert.ok(!existsSync(join(store.root, deltaPackRel(deltaId))));
  });
});
