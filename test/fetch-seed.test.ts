import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  appendFileSync,
  closeSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestTree } from './support/tree.js';
import { independentListing, diffListings } from './support/listing.js';
import { nginxSkip, startNginx, type Nginx } from './support/nginx.js';
import { randomData } from './support/random.js';
import { reimage } from './cli.js';
import { ContentStore } from '../src/content/store.js';
import { PACK_MAGIC } from '../src/content/pack.js';
import { captureImage } from '../src/image/capture.js';
import { applyImage } from '../src/image/apply.js';
import { ImageLibrary } from '../src/image/library.js';
import { dirRemote, httpRemote } from '../src/content/remote.js';
import { fetchImage } from '../src/content/fetch.js';
import { chunksOfManifest, fetchImageSeeded } from '../src/image/fetch.js';
import { hashKey } from '../src/content/digest.js';
import { seedStore } from '../src/image/seed.js';
import { decodeManifest } from '../src/image/formats/native/v1/manifest-codec.js';

const skip = nginxSkip();
let work: string;
let v1Tree: string;
let v2Tree: string;
let v1: { id: string; packs: string[] };
let v2: { id: string; packs: string[] };
/** Packs that capturing v2 added (they hold exactly v2's new chunks). */
let newPacks: string[];
let newPackBytes: number;
let v1PackBytes: number;
/** Offset of the byte flipped in dp/bad (inside the first frame of v1's first pack). */
let corruptAt: number;
let nginx: Nginx | undefined;

const listing = (root: string) => independentListing(root, { ignoreSockets: true });
const dpStore = () => ContentStore.open(join(work, 'dp', 'good'));
const sizeOf = (store: ContentStore, packs: string[]) =>
  packs.reduce((n, p) => n + statSync(store.packPath(p)).size, 0);

/** Body bytes nginx sent for these packs' `.pack` files under a DP prefix. */
function packBytesServed(prefix: string, packs: string[]): number {
  return packs.reduce(
    (n, p) => n + nginx!.bytesSent(`${prefix}packs/${p.slice(0, 2)}/${p}.pack`),
    0,
  );
}

function chunkSet(id: string): Set<string> {
  const s = new Set<string>();
  const { bytes } = new ImageLibrary(dpStore()).loadManifest(id);
  for (const h of chunksOfManifest(bytes)) s.add(hashKey(h));
  return s;
}

before(async () => {
  if (skip) return;
  work = mkdtempSync(join(tmpdir(), 'reimage-seed-'));
  v1Tree = join(work, 'v1');
  v2Tree = join(work, 'v2');
  await makeTestTree(v1Tree, { seed: 21, scale: 'small' });
  mkdirSync(join(v1Tree, 'big'));
  writeFileSync(join(v1Tree, 'big', 'data.bin'), randomData('seed-v1-big', 4 * 1024 * 1024));
  // v2: the same tree with an in-file change and a growth of big/data.bin (another size),
  // and one new file. Nothing moves, so every chunk v2 shares with v1 is at the same path.
  execFileSync('cp', ['-a', v1Tree, v2Tree]);
  const fd = openSync(join(v2Tree, 'big', 'data.bin'), 'r+');
  writeSync(fd, randomData('seed-v2-patch', 300), 0, 300, 2 * 1024 * 1024);
  closeSync(fd);
  appendFileSync(join(v2Tree, 'big', 'data.bin'), randomData('seed-v2-tail', 50 * 1024));
  writeFileSync(join(v2Tree, 'big', 'new.bin'), randomData('seed-v2-new', 1024 * 1024));

  const good = ContentStore.open(join(work, 'dp', 'good'), { create: true });
  const c1 = await captureImage({ source: v1Tree, store: good, name: 'v1' });
  const c2 = await captureImage({ source: v2Tree, store: good, name: 'v2' });
  v1 = { id: c1.record.id, packs: c1.record.packs };
  v2 = { id: c2.record.id, packs: c2.record.packs };
  newPacks = v2.packs.filter((p) => !v1.packs.includes(p));
  newPackBytes = sizeOf(good, newPacks);
  v1PackBytes = sizeOf(good, v1.packs);
  // A second good DP, and a bad one: a byte flipped in the first frame of v1's first pack.
  cpSync(join(work, 'dp', 'good'), join(work, 'dp', 'good2'), { recursive: true });
  cpSync(join(work, 'dp', 'good'), join(work, 'dp', 'bad'), { recursive: true });
  const victim = ContentStore.open(join(work, 'dp', 'bad')).packPath(v1.packs[0]!);
  corruptAt = PACK_MAGIC.length + 1000;
  const vfd = openSync(victim, 'r+');
  const b = Buffer.alloc(1);
  readSync(vfd, b, 0, 1, corruptAt);
  b[0] = b[0]! ^ 0xff;
  writeSync(vfd, b, 0, 1, corruptAt);
  closeSync(vfd);
  nginx = await startNginx(join(work, 'dp'));
});

after(async () => {
  await nginx?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('seeded and multi-DP fetch', { skip }, () => {
  test('seeding from the old tree: the DP serves only v2’s new chunks', async () => {
    const into = ContentStore.open(join(work, 'machine-a'), { create: true });
    const before = nginx!.bytesSent('/good/');
    const r = await fetchImageSeeded({
      sources: [httpRemote(`${nginx!.url}good/`)],
      imageId: v2.id,
      into,
      seedRoot: v1Tree,
    });
    const served = nginx!.bytesSent('/good/') - before;
    const oldPacks = packBytesServed('/good/', v1.packs);
    const old = chunkSet(v1.id);
    const fresh = [...chunkSet(v2.id)].filter((k) => !old.has(k)).length;
    console.log(
      `seeded fetch of v2: ${r.seed!.chunksSeeded} chunks seeded (${r.seed!.bytesSeeded} B, read ${r.seed!.bytesRead} B), ` +
        `${r.chunksFetched} fetched (${fresh} new in v2); nginx served ${served} B, v2's new packs are ${newPackBytes} B, v1's ${v1PackBytes} B`,
    );
    assert.equal(oldPacks, 0, 'nothing of v1’s packs was downloaded');
    assert.ok(
      packBytesServed('/good/', newPacks) <= newPackBytes,
      'at most the new packs were read',
    );
    assert.equal(r.chunksFetched, fresh);
    assert.ok(r.seed!.chunksFromFiles > 0);
    // big/data.bin changed size and content: its unchanged chunks still came from the old file.
    assert.ok(served < newPackBytes + 64 * 1024, `served ${served}`);
    const target = join(work, 'applied-a');
    await applyImage({ store: into, image: v2.id, target });
    assert.equal(diffListings(listing(v2Tree), listing(target), ['v2', 'applied']), '');
  });

  test('seeding from another store (a previous image’s); re-running downloads nothing', async () => {
    // The machine's previous store holds v1 (fetched earlier).
    const prev = ContentStore.open(join(work, 'machine-b-prev'), { create: true });
    await fetchImage({
      sources: [httpRemote(`${nginx!.url}good2/`)],
      imageId: v1.id,
      into: prev,
      chunksOf: chunksOfManifest,
    });
    const into = ContentStore.open(join(work, 'machine-b'), { create: true });
    const before = nginx!.bytesSent('/good/');
    const r = await fetchImageSeeded({
      sources: [httpRemote(`${nginx!.url}good/`)],
      imageId: v2.id,
      into,
      seedStores: [prev],
    });
    assert.equal(packBytesServed('/good/', v1.packs), 0);
    assert.ok(r.seed!.chunksFromStores > 0);
    assert.equal(r.seed!.chunksFromFiles, 0);
    const served = nginx!.bytesSent('/good/') - before;
    console.log(`seeded from a store: ${r.seed!.chunksSeeded} chunks; nginx served ${served} B`);
    assert.ok(served < newPackBytes + 64 * 1024, `served ${served}`);
    const target = join(work, 'applied-b');
    await applyImage({ store: into, image: v2.id, target });
    assert.equal(diffListings(listing(v2Tree), listing(target), ['v2', 'applied']), '');

    const total = nginx!.bytesSent();
    const again = await fetchImageSeeded({
      sources: [httpRemote(`${nginx!.url}good/`)],
      imageId: v2.id,
      into,
      seedStores: [prev],
    });
    assert.equal(again.bytesDownloaded, 0);
    assert.equal(again.seed, undefined);
    assert.equal(nginx!.bytesSent(), total);
  });

  test('a seed cancelled part-way keeps what it verified; the re-run completes', async () => {
    const into = ContentStore.open(join(work, 'machine-c'), { create: true });
    const ac = new AbortController();
    await assert.rejects(
      fetchImageSeeded({
        sources: [httpRemote(`${nginx!.url}good/`)],
        imageId: v2.id,
        into,
        seedRoot: v1Tree,
        signal: ac.signal,
        onSeedProgress: (p) => {
          if (p.chunksSeeded > 0) ac.abort();
        },
      }),
      (e: unknown) => (e as { code?: string }).code === 'CANCELLED',
    );
    assert.ok(into.listPacks().length > 0, 'the verified chunks were committed');
    const r = await fetchImageSeeded({
      sources: [httpRemote(`${nginx!.url}good/`)],
      imageId: v2.id,
      into,
      seedRoot: v1Tree,
    });
    assert.ok(r.seed!.chunksPresent > 0, 'the second run started from the first one’s chunks');
    const target = join(work, 'applied-c');
    await applyImage({ store: into, image: v2.id, target });
    assert.equal(diffListings(listing(v2Tree), listing(target), ['v2', 'applied']), '');
  });

  test('seeding never follows a symlink out of the old root, nor opens a FIFO', async () => {
    // The old root's paths lead, through symlinks, to files with exactly the needed data.
    const evil = join(work, 'evil-root');
    mkdirSync(join(evil, 'sizes'), { recursive: true });
    symlinkSync(join(v2Tree, 'big'), join(evil, 'big'));
    symlinkSync(join(v2Tree, 'sizes', '100k-random'), join(evil, 'sizes', '100k-random'));
    execFileSync('mkfifo', [join(evil, 'sizes', '100k-text')]);
    const into = ContentStore.open(join(work, 'machine-evil'), { create: true });
    const r = await fetchImageSeeded({
      sources: [dirRemote(join(work, 'dp', 'good'))],
      imageId: v2.id,
      into,
      seedRoot: evil,
    });
    assert.equal(r.seed!.chunksFromFiles, 0, 'nothing was read through a symlink');
    // big/data.bin and big/new.bin (behind a symlinked folder), a symlink, a FIFO.
    assert.equal(r.seed!.filesSkipped, 4);
    const target = join(work, 'applied-evil');
    await applyImage({ store: into, image: v2.id, target });
    assert.equal(diffListings(listing(v2Tree), listing(target), ['v2', 'applied']), '');
  });

  test('two DPs serve batches of one image at once', async () => {
    const into = ContentStore.open(join(work, 'machine-d'), { create: true });
    const a = httpRemote(`${nginx!.url}good/`);
    const b = httpRemote(`${nginx!.url}good2/`);
    const beforeA = packBytesServed('/good/', v1.packs);
    const beforeB = packBytesServed('/good2/', v1.packs);
    const r = await fetchImage({
      sources: [a, b],
      imageId: v1.id,
      into,
      chunksOf: chunksOfManifest,
      batchBytes: 256 * 1024,
    });
    const servedA = packBytesServed('/good/', v1.packs) - beforeA;
    const servedB = packBytesServed('/good2/', v1.packs) - beforeB;
    console.log(
      `two DPs: first served ${servedA} B, second ${servedB} B of ${v1PackBytes} B of packs; ${JSON.stringify(r.packSources)}`,
    );
    assert.ok(servedA > 0 && servedB > 0, 'both DPs served frames');
    assert.ok(servedA + servedB <= v1PackBytes, 'no frame was downloaded twice');
    assert.deepEqual(r.packSources[v1.packs[0]!], [a.name, b.name]);
    const target = join(work, 'applied-d');
    await applyImage({ store: into, image: v1.id, target });
    assert.equal(diffListings(listing(v1Tree), listing(target), ['v1', 'applied']), '');
  });

  test('a DP serving a corrupt chunk is dropped; that frame comes from the other DP', async () => {
    const into = ContentStore.open(join(work, 'machine-e'), { create: true });
    const bad = httpRemote(`${nginx!.url}bad/`);
    const good = httpRemote(`${nginx!.url}good/`);
    const pack = v1.packs[0]!;
    const packUri = (dp: string) => `/${dp}/packs/${pack.slice(0, 2)}/${pack}.pack`;
    const covers = (l: { uri: string; range: string }, dp: string) => {
      const m = /^bytes=(\d+)-(\d+)$/.exec(l.range);
      return l.uri === packUri(dp) && !!m && Number(m[1]) <= corruptAt && corruptAt <= Number(m[2]);
    };
    const logBefore = nginx!.log().length;
    const r = await fetchImage({
      sources: [bad, good],
      imageId: v1.id,
      into,
      chunksOf: chunksOfManifest,
      batchBytes: 256 * 1024,
    });
    const log = nginx!.log().slice(logBefore);
    console.log(`corrupt DP: bad sources ${JSON.stringify(r.badSources)}`);
    assert.ok(
      r.badSources.some(
        (b) =>
          b.source === bad.name &&
          b.pack === pack &&
          /CHUNK_CORRUPT|PACK_CORRUPT/.test(b.code ?? ''),
      ),
      JSON.stringify(r.badSources),
    );
    assert.ok(
      log.some((l) => covers(l, 'bad')),
      'the bad DP served the corrupt frame',
    );
    assert.ok(
      log.some((l) => covers(l, 'good')),
      'the good DP served that frame again',
    );
    const target = join(work, 'applied-e');
    await applyImage({ store: into, image: v1.id, target });
    assert.equal(diffListings(listing(v1Tree), listing(target), ['v1', 'applied']), '');
  });

  test('reimage image fetch: by name, from http and a folder, seeded, then apply', () => {
    const store = join(work, 'machine-f');
    const before = packBytesServed('/good/', v1.packs);
    const f = reimage([
      'image',
      'fetch',
      'v2',
      '--from',
      `${nginx!.url}good/`,
      '--from',
      join(work, 'dp', 'good2'),
      '--store',
      store,
      '--seed-root',
      v1Tree,
      '--background',
      '--rate',
      '1000000',
      '--json',
    ]);
    assert.equal(f.status, 0, f.stderr);
    assert.equal(f.json.imageId, v2.id);
    assert.ok(f.json.chunksSeeded > 0 && f.json.bytesSeeded > 0);
    assert.ok(f.json.chunksFetched > 0);
    for (const k of ['bytesDownloaded', 'packSources', 'badSources', 'elapsed']) {
      assert.ok(k in f.json, k);
    }
    assert.equal(packBytesServed('/good/', v1.packs), before, 'v1’s packs were not downloaded');
    const target = join(work, 'applied-f');
    const a = reimage(['image', 'apply', v2.id, target, '--store', store]);
    assert.equal(a.status, 0, a.stderr);
    assert.equal(diffListings(listing(v2Tree), listing(target), ['v2', 'applied']), '');
  });

  test('reimage image fetch refuses bad sources and names, creating nothing', () => {
    const store = join(work, 'machine-g');
    const smb = reimage(['image', 'fetch', v2.id, '--from', 'smb://x/y', '--store', store]);
    assert.equal(smb.status, 2);
    assert.match(smb.stderr, /INVALID_ARGUMENT.*smb:\/\/x\/y/);
    const nodir = reimage([
      'image',
      'fetch',
      v2.id,
      '--from',
      join(work, 'nope'),
      '--store',
      store,
    ]);
    assert.equal(nodir.status, 2);
    const noname = reimage([
      'image',
      'fetch',
      'no-such-image',
      '--from',
      `${nginx!.url}good/`,
      '--store',
      store,
    ]);
    assert.equal(noname.status, 1);
    assert.match(noname.stderr, /IMAGE_NOT_FOUND/);
    assert.equal(existsSync(store), false);
  });
});

describe('seeding from renamed old files', () => {
  test('a renamed file (version bump, codename) is seeded; an unrelated file is not read', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'reimage-rename-'));
    try {
      const oldRoot = join(dir, 'old');
      const newRoot = join(dir, 'new');
      for (const r of [oldRoot, newRoot]) {
        mkdirSync(join(r, 'usr/lib/os'), { recursive: true });
        mkdirSync(join(r, 'var/lists'), { recursive: true });
        mkdirSync(join(r, 'other'), { recursive: true });
      }
      const lib = randomData('rename-lib', 1024 * 1024);
      const list = randomData('rename-list', 512 * 1024);
      writeFileSync(join(oldRoot, 'usr/lib/os-release'), 'ID=debian\nVERSION_CODENAME=bookworm\n');
      writeFileSync(join(newRoot, 'usr/lib/os-release'), 'ID=debian\nVERSION_CODENAME=trixie\n');
      writeFileSync(join(oldRoot, 'usr/lib/libdemo.so.1.2.3'), lib);
      const lib2 = Buffer.from(lib);
      randomData('rename-patch', 200).copy(lib2, 300 * 1024);
      writeFileSync(join(newRoot, 'usr/lib/libdemo.so.1.2.4'), lib2);
      // A folder with the version in its name, and the codename in a file name.
      mkdirSync(join(oldRoot, 'usr/lib/python3.11'));
      mkdirSync(join(newRoot, 'usr/lib/python3.13'));
      const py = randomData('rename-py', 256 * 1024);
      writeFileSync(join(oldRoot, 'usr/lib/python3.11/os.py'), py);
      writeFileSync(join(newRoot, 'usr/lib/python3.13/os.py'), py);
      writeFileSync(join(oldRoot, 'var/lists/deb_bookworm_main_Packages'), list);
      writeFileSync(join(newRoot, 'var/lists/deb_trixie_main_Packages'), list);
      // A folder that gained a suffix (Debian's t64 transition), an extension that changed.
      const doc = randomData('rename-doc', 96 * 1024);
      const key = randomData('rename-key', 80 * 1024);
      mkdirSync(join(oldRoot, 'usr/share/doc/libdemo8'), { recursive: true });
      mkdirSync(join(newRoot, 'usr/share/doc/libdemo8t64'), { recursive: true });
      writeFileSync(join(oldRoot, 'usr/share/doc/libdemo8/README'), doc);
      writeFileSync(join(newRoot, 'usr/share/doc/libdemo8t64/README'), doc);
      writeFileSync(join(oldRoot, 'usr/share/doc/debian-archive-keyring.gpg'), key);
      writeFileSync(join(newRoot, 'usr/share/doc/debian-archive-keyring.pgp'), key);
      // Unrelated: other names, never read.
      const unrelated = 2 * 1024 * 1024;
      writeFileSync(join(oldRoot, 'other/unrelated.bin'), randomData('rename-u', unrelated));
      writeFileSync(join(oldRoot, 'usr/lib/libother.so.7'), randomData('rename-o', unrelated));
      writeFileSync(
        join(oldRoot, 'var/lists/deb_bookworm_contrib_Packages'),
        randomData('c', 4096),
      );
      writeFileSync(join(newRoot, 'other/new.bin'), randomData('rename-new', 64 * 1024));
      mkdirSync(join(oldRoot, 'usr/share/doc/other'));
      writeFileSync(
        join(oldRoot, 'usr/share/doc/other/README'),
        randomData('rename-o2', unrelated),
      );
      symlinkSync(join(oldRoot, 'other'), join(oldRoot, 'usr/lib/python3.12'));

      const dp = ContentStore.open(join(dir, 'dp'), { create: true });
      const c = await captureImage({ source: newRoot, store: dp, name: 'new' });
      const manifest = decodeManifest(new ImageLibrary(dp).loadManifest(c.record.id).bytes);
      const into = ContentStore.open(join(dir, 'machine'), { create: true });
      const r = await seedStore({ into, manifest, root: oldRoot });
      console.log('renamed seeding:', JSON.stringify(r));
      assert.equal(r.filesReadRenamed, 5, 'libdemo.so, os.py, the list, README, the keyring');
      assert.ok(r.chunksFromRenamed > 0);
      // os-release was read at its path too, but changed: nothing from it.
      assert.equal(r.chunksFromFiles, r.chunksFromRenamed);
      // Read: os-release (its chunks, at its path) and the five renamed files; nothing of the unrelated 6 MiB nor the contrib list.
      const expected = lib.length + list.length + py.length + doc.length + key.length;
      assert.ok(r.bytesRead < expected + 1024, `read ${r.bytesRead} B, expected ~${expected}`);
      assert.ok(r.bytesRead >= expected);
      // What is left to fetch: libdemo's changed chunk(s) and new.bin.
      const needed = new Set<string>();
      for (const e of manifest.entries) {
        for (let i = 0; e.chunks && i < e.chunks.length; i += 32) needed.add(hashKey(e.chunks, i));
      }
      const have = into.loadIndex();
      const left = [...needed].filter((k) => !have.getByKey(k)).length;
      assert.equal(left, r.chunksNeeded - r.chunksSeeded);
      assert.ok(left >= 2 && left <= 4, `${left} chunks left to fetch`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
