import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  existsSync,
  statSync,
  truncateSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
  closeSync,
  writeSync,
  chmodSync,
  mkdirSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { makeTestTree, mutateTree } from './support/tree.js';
import { independentListing, diffListings } from './support/listing.js';
import { reimage, reimageAsync } from './cli.js';
import { ContentStore } from '../src/content/store.js';
import { ImageLibrary } from '../src/image/library.js';
import { captureImage } from '../src/image/capture.js';
import { applyImage } from '../src/image/apply.js';
import { verifyImage } from '../src/image/verify.js';
import { collectGarbage } from '../src/image/gc.js';
import { isReimageError } from '../src/errors.js';

const isRoot = process.getuid?.() === 0;
let work: string;
let tree: string;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'reimage-image-'));
  tree = join(work, 'tree');
  await makeTestTree(tree, { seed: 7, scale: 'small' });
});

after(() => rmSync(work, { recursive: true, force: true }));

const listing = (root: string) => independentListing(root, { ignoreSockets: true });

describe('capture and apply round trip', () => {
  test('every entry type comes back exactly (independent listing)', async () => {
    const store = join(work, 'rt-store');
    const target = join(work, 'rt-target');
    const cap = reimage(['image', 'capture', tree, '--store', store, '--name', 'rt', '--json']);
    assert.equal(cap.status, 0, cap.stderr);
    assert.equal(cap.json.image.stats.hardlinks > 0, true);
    assert.ok(
      cap.json.warnings.some((w: { code: string }) => w.code === 'SOCKET_SKIPPED'),
      'the socket is skipped with a warning',
    );
    const app = reimage(['image', 'apply', 'rt', target, '--store', store, '--json']);
    assert.equal(app.status, 0, app.stderr);
    assert.equal(diffListings(listing(tree), listing(target), ['source', 'applied']), '');
  });

  test('without --json the last line of capture is the image id', () => {
    const store = join(work, 'plain-store');
    const r = reimage([
      'image',
      'capture',
      tree,
      '--store',
      store,
      '--name',
      'plain',
      '--progress',
      'none',
    ]);
    assert.equal(r.status, 0, r.stderr);
    const last = r.stdout.trim().split('\n').at(-1)!;
    assert.match(last, /^[0-9a-f]{64}$/);
    const show = reimage(['image', 'show', last, '--store', store, '--json']);
    assert.deepEqual(show.json.names, ['plain']);
  });

  test('the same tree gives the same id under another name, at another time, from a copy', () => {
    const store = join(work, 'id-store');
    const copy = join(work, 'id-copy');
    // cp -a keeps everything the manifest records (owners, xattrs, nanosecond times, links).
    assert.equal(spawnCp(tree, copy), 0);
    const a = reimage(['image', 'capture', tree, '--store', store, '--name', 'a', '--json']);
    const b = reimage([
      'image',
      'capture',
      copy,
      '--store',
      store,
      '--name',
      'b',
      '--source-machine',
      'elsewhere',
      '--json',
    ]);
    assert.equal(a.status, 0, a.stderr);
    assert.equal(b.status, 0, b.stderr);
    assert.equal(a.json.image.id, b.json.image.id);
    assert.equal(b.json.created, false);
    assert.equal(b.json.image.stats.storedBytes, 0, 'nothing new stored for an identical tree');
  });
});

function spawnCp(from: string, to: string): number | null {
  return spawnSync('cp', ['-a', from, to], { stdio: 'ignore' }).status;
}

describe('deduplication', () => {
  test('a second, similar tree stores only its new chunks', async () => {
    const storePath = join(work, 'dedup-store');
    const v2 = join(work, 'dedup-v2');
    assert.equal(spawnCp(tree, v2), 0);
    await mutateTree(v2, 3);
    const store = ContentStore.open(storePath, { create: true });
    const one = await captureImage({ source: tree, store, name: 'v1' });
    const chunksBefore = store.loadIndex().size;
    const two = await captureImage({ source: v2, store, name: 'v2' });
    const lib = new ImageLibrary(store);
    const m1 = lib.loadManifest(one.record.id).manifest;
    const m2 = lib.loadManifest(two.record.id).manifest;
    const keys = (m: typeof m1) => {
      const s = new Set<string>();
      for (const e of m.entries)
        for (let c = 0; c < (e.lengths?.length ?? 0); c++)
          s.add(e.chunks!.subarray(c * 32, c * 32 + 32).toString('hex'));
      return s;
    };
    const k1 = keys(m1);
    const fresh = [...keys(m2)].filter((k) => !k1.has(k));
    assert.ok(
      fresh.length > 0 && fresh.length < k1.size / 2,
      `few new chunks (${fresh.length} of ${k1.size})`,
    );
    assert.equal(
      store.loadIndex().size - chunksBefore,
      fresh.length,
      'exactly the new chunks were added',
    );
    assert.ok(two.record.stats.storedBytes < one.record.stats.storedBytes / 2);
  });
});

describe('re-capture with --parent', () => {
  test('unchanged files are not read again; a changed one is', async () => {
    const store = ContentStore.open(join(work, 'parent-store'), { create: true });
    const src = join(work, 'parent-src');
    assert.equal(spawnCp(tree, src), 0);
    const first = await captureImage({ source: src, store, name: 'p' });
    const again = await captureImage({ source: src, store, name: 'p', parent: 'p' });
    assert.equal(again.record.id, first.record.id);
    assert.equal(again.reused, first.record.stats.files, 'every file reused');
    const f = join(src, 'changed.txt');
    writeFileSync(f, 'new content');
    const third = await captureImage({ source: src, store, name: 'p', parent: 'p' });
    assert.notEqual(third.record.id, first.record.id);
    assert.equal(third.reused, first.record.stats.files, 'all old files reused, the new one read');
    const lib = new ImageLibrary(store);
    assert.deepEqual(
      lib.getName('p')!.previous,
      [first.record.id],
      'the older image stays reachable as the previous version',
    );
    assert.ok(lib.getRecord(first.record.id));
  });
});

describe('corruption', () => {
  test('a flipped byte in a pack is found by verify and stops apply, which leaves nothing behind', async () => {
    const storePath = join(work, 'flip-store');
    const store = ContentStore.open(storePath, { create: true });
    const cap = await captureImage({ source: tree, store, name: 'flip' });
    assert.equal((await verifyImage({ store, image: 'flip' })).problems.length, 0);
    const pack = store.packPath(cap.record.packs[0]!);
    const fd = openSync(pack, 'r+');
    const size = readFileSync(pack).length;
    const pos = Math.floor(size / 2);
    const b = readFileSync(pack).subarray(pos, pos + 1);
    writeSync(fd, Buffer.from([b[0]! ^ 0x40]), 0, 1, pos);
    closeSync(fd);
    const v = reimage(['image', 'verify', 'flip', '--store', storePath, '--json']);
    assert.equal(v.status, 1);
    assert.equal(v.json.ok, false);
    assert.ok(v.json.problems.length > 0);
    assert.equal(v.json.problems[0].code, 'CHUNK_CORRUPT');
    const target = join(work, 'flip-target');
    const a = reimage(['image', 'apply', 'flip', target, '--store', storePath, '--json']);
    assert.equal(a.status, 1);
    assert.equal(a.json.error.code, 'CHUNK_CORRUPT');
    assert.match(a.json.error.message, /chunk [0-9a-f]{64} of .+/);
    assert.equal(existsSync(target), false, 'the partly written target is removed');
  });

  test('a missing pack is named before anything is written', async () => {
    const storePath = join(work, 'missing-store');
    const store = ContentStore.open(storePath, { create: true });
    const cap = await captureImage({ source: tree, store, name: 'm' });
    rmSync(store.packPath(cap.record.packs[0]!));
    const target = join(work, 'missing-target');
    mkdirSync(target);
    await assert.rejects(applyImage({ store, image: 'm', target }), (e) =>
      isReimageError(e, 'PACK_CORRUPT'),
    );
    assert.deepEqual(readdirSync(target), []);
  });
});

describe('apply refuses targets that could redirect writes', () => {
  test(
    'an empty target that belongs to someone else is refused',
    { skip: !isRoot && 'needs root to give the directory away' },
    async () => {
      const storePath = join(work, 'own-store');
      const store = ContentStore.open(storePath, { create: true });
      await captureImage({ source: tree, store, name: 'own' });
      const target = join(work, 'own-target');
      mkdirSync(target);
      spawnSync('chown', ['1000:1000', target]);
      const r = reimage(['image', 'apply', 'own', target, '--store', storePath, '--json']);
      assert.equal(r.json.error.code, 'TARGET_UNSAFE');
      assert.deepEqual(readdirSync(target), []);
    },
  );

  test('a non-empty target is refused and left as it was', async () => {
    const storePath = join(work, 'ne-store');
    const store = ContentStore.open(storePath, { create: true });
    await captureImage({ source: tree, store, name: 'ne' });
    const target = join(work, 'ne-target');
    mkdirSync(target);
    writeFileSync(join(target, 'keep'), 'x');
    const r = reimage(['image', 'apply', 'ne', target, '--store', storePath, '--json']);
    assert.equal(r.status, 1);
    assert.equal(r.json.error.code, 'TARGET_NOT_EMPTY');
    assert.deepEqual(readdirSync(target), ['keep']);
  });
});

describe('garbage collection', () => {
  test('gc deletes what deleted images held, and nothing a running capture needs', async () => {
    const storePath = join(work, 'gc-store');
    const big = join(work, 'gc-tree');
    await makeTestTree(big, { seed: 11, scale: 'medium' });
    const store = ContentStore.open(storePath, { create: true });
    await captureImage({ source: big, store, name: 'old' });
    await captureImage({ source: tree, store, name: 'other' });
    assert.equal(reimage(['image', 'delete', 'old', 'other', '--store', storePath]).status, 0);
    // The packs of "old" are garbage now, but a new capture of the same tree dedups against them.
    const child = reimageAsync([
      'image',
      'capture',
      big,
      '--store',
      storePath,
      '--name',
      'new',
      '--workers',
      '1',
      '--json',
    ]);
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((r) => child.on('exit', r));
    // Wait until the capture holds its lock, then collect garbage while it runs.
    const locks = join(storePath, 'locks');
    for (let i = 0; i < 500 && readdirSync(locks).length === 0; i++)
      await new Promise((r) => setTimeout(r, 10));
    assert.ok(readdirSync(locks).length > 0, 'the capture is running');
    let waited = false;
    const gc = await collectGarbage(store, { waitMs: 120_000, onWait: () => (waited = true) });
    assert.equal(await exited, 0);
    assert.ok(waited, 'gc waited for the capture');
    assert.ok(gc.packsDeleted >= 1, 'the pack only "other" used is deleted');
    const id = JSON.parse(out).image.id as string;
    const v = await verifyImage({ store, image: id });
    assert.equal(v.problems.length, 0, 'every chunk of the new image survived gc');
    const target = join(work, 'gc-target');
    await applyImage({ store, image: 'new', target });
    assert.equal(diffListings(listing(big), listing(target)), '');
  });
});

describe('cancel and failure', () => {
  test('Ctrl-C during capture lists no image and leaves no temporary data or lock', async () => {
    const storePath = join(work, 'cancel-store');
    const big = join(work, 'cancel-tree');
    await makeTestTree(big, { seed: 12, scale: 'medium' });
    const child = reimageAsync([
      'image',
      'capture',
      big,
      '--store',
      storePath,
      '--name',
      'c',
      '--workers',
      '1',
      '--progress',
      'json',
    ]);
    let err = '';
    let sent = false;
    child.stderr.on('data', (d: Buffer) => {
      err += d.toString();
      if (!sent && err.includes('"phase":"data"')) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    assert.ok(sent, 'the capture reached its data phase');
    if (code === 0) return; // finished before the signal landed: nothing to check (rare)
    assert.equal(code, 130, err);
    // The store this capture created is removed again: nothing is left behind.
    assert.equal(existsSync(storePath), false);
  });

  test(
    'an unreadable file fails the capture with its path, or is left out with --skip-unreadable',
    { skip: !isRoot && 'needs root to run the capture as another user' },
    () => {
      const src = join(work, 'unreadable');
      mkdirSync(join(src, 'd'), { recursive: true });
      writeFileSync(join(src, 'd', 'ok'), 'fine');
      writeFileSync(join(src, 'd', 'secret'), 'no');
      chmodSync(join(src, 'd', 'secret'), 0o000);
      chmodSync(src, 0o755);
      chmodSync(work, 0o755);
      const storePath = join(work, 'unreadable-store');
      mkdirSync(storePath, { mode: 0o777 });
      chmodSync(storePath, 0o777);
      const asNobody = { uid: 65534, gid: 65534 };
      const fail = reimage(
        ['image', 'capture', src, '--store', storePath, '--name', 'u', '--json'],
        asNobody,
      );
      assert.equal(fail.status, 1, fail.stderr);
      assert.equal(fail.json.error.code, 'SOURCE_UNREADABLE');
      assert.match(fail.json.error.message, /d\/secret/);
      const skip = reimage(
        [
          'image',
          'capture',
          src,
          '--store',
          storePath,
          '--name',
          'u',
          '--skip-unreadable',
          '--json',
        ],
        asNobody,
      );
      assert.equal(skip.status, 0, skip.stderr);
      assert.ok(skip.json.warnings.some((w: { path: string }) => w.path === 'd/secret'));
      assert.equal(skip.json.image.stats.files, 1);
    },
  );
});

describe('signatures', () => {
  test('verify and apply accept only images signed by the trusted key', () => {
    const storePath = join(work, 'sig-store');
    const key = join(work, 'sig.key');
    const other = join(work, 'other.key');
    assert.equal(reimage(['key', 'create', '--out', key]).status, 0);
    assert.equal(reimage(['key', 'create', '--out', other]).status, 0);
    assert.equal(
      reimage(['image', 'capture', tree, '--store', storePath, '--name', 's', '--sign-key', key])
        .status,
      0,
    );
    assert.equal(
      reimage(['image', 'verify', 's', '--store', storePath, '--trusted-key', `${key}.pub`]).status,
      0,
    );
    const wrong = reimage([
      'image',
      'verify',
      's',
      '--store',
      storePath,
      '--trusted-key',
      `${other}.pub`,
      '--json',
    ]);
    assert.equal(wrong.status, 1);
    assert.equal(wrong.json.error.code, 'SIGNATURE_INVALID');
    const target = join(work, 'sig-target');
    const a = reimage([
      'image',
      'apply',
      's',
      target,
      '--store',
      storePath,
      '--trusted-key',
      `${other}.pub`,
      '--json',
    ]);
    assert.equal(a.json.error.code, 'SIGNATURE_INVALID');
    assert.equal(existsSync(target), false);
    const other2 = join(work, 'sig-other-tree');
    mkdirSync(other2);
    writeFileSync(join(other2, 'f'), 'another tree');
    assert.equal(
      reimage(['image', 'capture', other2, '--store', storePath, '--name', 'unsigned']).status,
      0,
    );
    // Capturing the signed tree again under another name keeps its record, signature included.
    const again = reimage([
      'image',
      'capture',
      tree,
      '--store',
      storePath,
      '--name',
      's2',
      '--description',
      'ignored',
      '--json',
    ]);
    assert.equal(again.json.created, false);
    assert.equal(
      reimage(['image', 'verify', 's2', '--store', storePath, '--trusted-key', `${key}.pub`])
        .status,
      0,
    );
    const un = reimage([
      'image',
      'verify',
      'unsigned',
      '--store',
      storePath,
      '--trusted-key',
      `${key}.pub`,
      '--json',
    ]);
    assert.equal(un.json.error.code, 'SIGNATURE_MISSING');
    // Altering a signed record's properties breaks the signature.
    const lib = new ImageLibrary(ContentStore.open(storePath));
    const rec = lib.resolve('s');
    rec.properties.description = 'tampered';
    lib.putRecord(rec);
    const t = reimage([
      'image',
      'verify',
      's',
      '--store',
      storePath,
      '--trusted-key',
      `${key}.pub`,
      '--json',
    ]);
    assert.equal(t.json.error.code, 'SIGNATURE_INVALID');
  });
});

describe('diff, list, show, delete', () => {
  test('diff names what changed between two images', async () => {
    const storePath = join(work, 'diff-store');
    const v2 = join(work, 'diff-v2');
    assert.equal(spawnCp(tree, v2), 0);
    const report = await mutateTree(v2, 5);
    assert.equal(
      reimage(['image', 'capture', tree, '--store', storePath, '--name', 'd1']).status,
      0,
    );
    assert.equal(reimage(['image', 'capture', v2, '--store', storePath, '--name', 'd2']).status, 0);
    const d = reimage(['image', 'diff', 'd1', 'd2', '--store', storePath, '--json']);
    assert.equal(d.status, 0, d.stderr);
    const byPath = new Map<string, { change: string; fields?: string[] }>(
      d.json.changes.map((c: { path: string }) => [c.path, c]),
    );
    for (const p of report.added) assert.equal(byPath.get(p)?.change, 'added', p);
    for (const p of report.deleted) assert.equal(byPath.get(p)?.change, 'removed', p);
    for (const p of report.modified) assert.ok(byPath.get(p)?.fields?.includes('content'), p);
    assert.ok(d.json.newDataBytes > 0);
  });

  test('list, show and delete by name; an id with names is refused', async () => {
    const storePath = join(work, 'del-store');
    const c = reimage([
      'image',
      'capture',
      tree,
      '--store',
      storePath,
      '--name',
      'keep',
      '--description',
      'base',
      '--property',
      'os=debian',
      '--property',
      'version=12',
      '--property',
      'owner=it',
      '--json',
    ]);
    assert.equal(c.status, 0, c.stderr);
    const id = c.json.image.id as string;
    const show = reimage(['image', 'show', 'keep', '--store', storePath, '--json']);
    assert.equal(show.json.image.properties.osFamily, 'debian');
    assert.equal(show.json.image.properties.osVersion, '12');
    assert.equal(show.json.image.properties.custom.owner, 'it');
    assert.equal(show.json.image.properties.description, 'base');
    const byId = reimage(['image', 'delete', id, '--store', storePath, '--json']);
    assert.equal(byId.status, 1);
    assert.equal(byId.json.error.code, 'IMAGE_IN_USE');
    const missing = reimage(['image', 'delete', 'keep', 'nope', '--store', storePath, '--json']);
    assert.equal(missing.json.error.code, 'IMAGE_NOT_FOUND');
    assert.equal(
      reimage(['image', 'list', '--store', storePath, '--json']).json.images.length,
      1,
      'a bad name changes nothing',
    );
    assert.equal(reimage(['image', 'delete', 'keep', '--store', storePath]).status, 0);
    assert.equal(reimage(['image', 'list', '--store', storePath, '--json']).json.images.length, 0);
    const gc = reimage(['store', 'gc', '--store', storePath, '--json']);
    assert.equal(gc.status, 0, gc.stderr);
    assert.ok(gc.json.packsDeleted >= 1);
    assert.deepEqual(ContentStore.open(storePath).listPacks(), []);
  });

  test('bad input gets a clear error and a usage exit code', () => {
    const r = reimage([
      'image',
      'capture',
      join(work, 'does-not-exist'),
      '--store',
      join(work, 'bad-store'),
      '--name',
      'x',
      '--json',
    ]);
    assert.equal(r.status, 2);
    assert.equal(r.json.error.code, 'SOURCE_NOT_DIRECTORY');
    const n = reimage([
      'image',
      'capture',
      tree,
      '--store',
      join(work, 'bad-store'),
      '--name',
      '../evil',
      '--json',
    ]);
    assert.equal(n.json.error.code, 'IMAGE_NAME_INVALID');
    assert.equal(existsSync(join(work, 'bad-store', 'objects', 'names')), false);
  });
});

describe('image update', () => {
  test('changes properties, keeps the id, and drops a signature it no longer matches unless re-signed', () => {
    const storePath = join(work, 'upd-store');
    const key = join(work, 'upd.key');
    assert.equal(reimage(['key', 'create', '--out', key]).status, 0);
    const c = reimage([
      'image',
      'capture',
      tree,
      '--store',
      storePath,
      '--name',
      'u',
      '--sign-key',
      key,
      '--property',
      'team=a',
      '--json',
    ]);
    const u = reimage([
      'image',
      'update',
      'u',
      '--store',
      storePath,
      '--description',
      'new text',
      '--property',
      'version=13',
      '--unset',
      'team',
      '--json',
    ]);
    assert.equal(u.status, 0, u.stderr);
    assert.equal(u.json.image.id, c.json.image.id);
    assert.equal(u.json.image.properties.description, 'new text');
    assert.equal(u.json.image.properties.osVersion, '13');
    assert.equal(u.json.image.properties.custom.team, undefined);
    assert.match(u.stderr, /signature no longer matches/);
    assert.equal(
      reimage([
        'image',
        'verify',
        'u',
        '--store',
        storePath,
        '--trusted-key',
        `${key}.pub`,
        '--json',
      ]).json.error.code,
      'SIGNATURE_MISSING',
    );
    assert.equal(
      reimage(['image', 'update', 'u', '--store', storePath, '--sign-key', key]).status,
      0,
    );
    assert.equal(
      reimage(['image', 'verify', 'u', '--store', storePath, '--trusted-key', `${key}.pub`]).status,
      0,
    );
  });
});

describe('excludes', () => {
  test('--exclude and --system leave out what they name, and the store is never captured into itself', () => {
    const src = join(work, 'sys-src');
    for (const d of ['proc/1', 'sys/kernel', 'dev', 'run/lock', 'tmp', 'etc', 'var/log', 'var/tmp'])
      mkdirSync(join(src, d), { recursive: true });
    writeFileSync(join(src, 'proc/1/status'), 'x');
    writeFileSync(join(src, 'sys/kernel/x'), 'x');
    writeFileSync(join(src, 'run/lock/l'), 'x');
    writeFileSync(join(src, 'tmp/t'), 'x');
    writeFileSync(join(src, 'var/tmp/t'), 'x');
    writeFileSync(join(src, 'etc/hostname'), 'model');
    writeFileSync(join(src, 'var/log/syslog'), 'log');
    writeFileSync(join(src, 'var/log/app.log'), 'log');
    const storePath = join(src, 'srv-library'); // inside the tree being captured
    const r = reimage([
      'image',
      'capture',
      src,
      '--store',
      storePath,
      '--name',
      'sys',
      '--system',
      '--exclude',
      '*.log',
      '--exclude',
      '/var/log/syslog',
      '--json',
    ]);
    assert.equal(r.status, 0, r.stderr);
    const files = reimage(['image', 'show', 'sys', '--store', storePath, '--files', '--json']).json
      .files as string[];
    const paths = files.map((l) => l.slice(l.indexOf(' /') + 1));
    for (const kept of [
      '/proc',
      '/sys',
      '/dev',
      '/run',
      '/tmp',
      '/var/tmp',
      '/etc/hostname',
      '/var/log',
    ])
      assert.ok(paths.includes(kept), `${kept} kept`);
    for (const gone of [
      '/proc/1',
      '/proc/1/status',
      '/sys/kernel',
      '/run/lock',
      '/tmp/t',
      '/var/tmp/t',
      '/var/log/app.log',
      '/var/log/syslog',
      '/srv-library',
    ]) {
      assert.ok(!paths.includes(gone), `${gone} left out`);
    }
  });
});

describe('sparse files', () => {
  test('a file that is all hole, and one with data between holes, come back with their sizes and holes', () => {
    const src = join(work, 'sparse-src');
    mkdirSync(src);
    const hole = join(src, 'all-hole');
    closeSync(openSync(hole, 'w'));
    truncateSync(hole, 10 * 1024 * 1024);
    const mixed = join(src, 'mixed');
    const fd = openSync(mixed, 'w');
    writeSync(fd, Buffer.from('head'), 0, 4, 0);
    writeSync(fd, Buffer.from('tail'), 0, 4, 20 * 1024 * 1024);
    closeSync(fd);
    const storePath = join(work, 'sparse-store');
    const c = reimage(['image', 'capture', src, '--store', storePath, '--name', 'sp', '--json']);
    assert.equal(c.status, 0, c.stderr);
    assert.ok(c.json.image.stats.dataBytes < 1024 * 1024, 'holes are not stored');
    const target = join(work, 'sparse-target');
    assert.equal(reimage(['image', 'apply', 'sp', target, '--store', storePath]).status, 0);
    assert.equal(diffListings(listing(src), listing(target)), '');
    assert.ok(statSync(join(target, 'all-hole')).blocks * 512 < 1024 * 1024, 'still sparse');
  });
});
