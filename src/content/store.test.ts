import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Decompressor } from 'zstd-napi';

import { isReimageError, type ErrorCode } from '../errors.js';
import { hashKey, HASH_BYTES, sha256, sha256Hex } from './digest.js';
import { FrameBuilder, PACK_MAGIC, type Frame } from './pack.js';
import {
  ChunkIndex,
  ContentStore,
  PackReader,
  sortedHashesHas,
  STORE_FORMAT,
  STORE_VERSION,
  writeAtomic,
} from './store.js';
import { randomData } from '../../test/support/random.js';

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-store-test-'));
});
after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

let seq = 0;
/** A fresh path under the test directory. */
function fresh(name: string): string {
  return path.join(dir, `${name}-${seq++}`);
}

interface Chunk {
  hash: Buffer;
  data: Buffer;
}

function makeChunks(prefix: string, sizes: number[]): Chunk[] {
  return sizes.map((n, i) => {
    const data = randomData(`${prefix}-${i}`, n);
    return { hash: sha256(data), data };
  });
}

function framesOf(chunks: Chunk[]): Frame[] {
  const frames: Frame[] = [];
  const fb = new FrameBuilder((f) => frames.push(f));
  for (const c of chunks) fb.add(c.hash, c.data);
  fb.flush();
  return frames;
}

function expectCode(fn: () => unknown, code: ErrorCode): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isReimageError(e, code), `expected ${code}, got ${String(e)}`);
    return true;
  });
}

/** Every file under a directory, relative to it. */
function walk(root: string): string[] {
  if (!fs.existsSync(root)) return [];
  return (fs.readdirSync(root, { recursive: true }) as string[])
    .filter((p) => fs.statSync(path.join(root, p)).isFile())
    .sort();
}

function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', '']);
  assert.ok(r.pid && r.pid > 0);
  return r.pid;
}

/** Reads a chunk back through the index and a PackReader. */
function readChunk(index: ChunkIndex, reader: PackReader, hash: Uint8Array): Buffer {
  const loc = index.get(hash);
  assert.ok(loc, `chunk ${Buffer.from(hash).toString('hex')} is not in the index`);
  const frame = reader.readFrame(loc.pack, loc.frameOffset, loc.frameLength);
  const raw = new Decompressor().decompress(frame);
  return raw.subarray(loc.offset, loc.offset + loc.length);
}

describe('ContentStore.open', () => {
  it('refuses a missing store without create (STORE_NOT_FOUND)', () => {
    const root = fresh('missing');
    expectCode(() => ContentStore.open(root), 'STORE_NOT_FOUND');
    assert.equal(fs.existsSync(root), false, 'open without create must not create anything');
    const empty = fresh('empty');
    fs.mkdirSync(empty);
    expectCode(() => ContentStore.open(empty, { create: false }), 'STORE_NOT_FOUND');
    assert.deepEqual(fs.readdirSync(empty), []);
  });

  it('creates a store with its layout and marker, then opens it without create', () => {
    const root = fresh('new');
    const s = ContentStore.open(root, { create: true });
    assert.equal(s.root, root);
    for (const d of ['packs', 'objects', 'locks', 'tmp']) {
      assert.ok(fs.statSync(path.join(root, d)).isDirectory(), d);
    }
    const marker = JSON.parse(fs.readFileSync(path.join(root, 'reimage-store.json'), 'utf8')) as {
      format: string;
      version: number;
      created: string;
    };
    assert.equal(marker.format, STORE_FORMAT);
    assert.equal(marker.version, STORE_VERSION);
    assert.ok(!Number.isNaN(Date.parse(marker.created)));
    assert.deepEqual(
      fs.readdirSync(root).filter((n) => n.includes('.tmp-')),
      [],
    );
    assert.equal(ContentStore.open(root).root, root);
    // create on an existing store opens it and changes nothing.
    ContentStore.open(root, { create: true });
    const again = JSON.parse(fs.readFileSync(path.join(root, 'reimage-store.json'), 'utf8')) as {
      created: string;
    };
    assert.equal(again.created, marker.created);
    assert.deepEqual(s.listPacks(), []);
  });

  it('creates a store in an existing empty directory', () => {
    const root = fresh('emptydir');
    fs.mkdirSync(root);
    ContentStore.open(root, { create: true });
    assert.ok(fs.existsSync(path.join(root, 'reimage-store.json')));
  });

  it('refuses to create a store in a non-empty directory that is not one (STORE_INVALID)', () => {
    const root = fresh('nonempty');
    fs.mkdirSync(root);
    fs.writeFileSync(path.join(root, 'precious.txt'), 'keep me');
    expectCode(() => ContentStore.open(root, { create: true }), 'STORE_INVALID');
    assert.deepEqual(fs.readdirSync(root), ['precious.txt'], 'nothing may be written beside it');
    expectCode(() => ContentStore.open(root), 'STORE_NOT_FOUND');
  });

  it('refuses a marker of another version or format, or an unreadable one (STORE_INVALID)', () => {
    const cases = [
      JSON.stringify({ format: STORE_FORMAT, version: 99, created: new Date().toISOString() }),
      JSON.stringify({ format: 'something-else', version: STORE_VERSION }),
      JSON.stringify({ format: STORE_FORMAT, version: '1' }),
      '{"format": "reimage-store", "vers',
      '',
    ];
    for (const body of cases) {
      const root = fresh('badmarker');
      fs.mkdirSync(root);
      fs.writeFileSync(path.join(root, 'reimage-store.json'), body);
      expectCode(() => ContentStore.open(root), 'STORE_INVALID');
      expectCode(() => ContentStore.open(root, { create: true }), 'STORE_INVALID');
      // And the marker is not "repaired" by create.
      assert.equal(fs.readFileSync(path.join(root, 'reimage-store.json'), 'utf8'), body);
    }
  });

  it('refuses a marker holding JSON null or an array (STORE_INVALID)', () => {
    for (const body of ['null', '[]', '42']) {
      const root = fresh('nullmarker');
      fs.mkdirSync(root);
      fs.writeFileSync(path.join(root, 'reimage-store.json'), body);
      expectCode(() => ContentStore.open(root), 'STORE_INVALID');
    }
  });

  it('refuses to create a store on a path that is a regular file (STORE_INVALID)', () => {
    const file = fresh('afile');
    fs.writeFileSync(file, 'x');
    expectCode(() => ContentStore.open(file, { create: true }), 'STORE_INVALID');
  });
});

describe('WriteSession', () => {
  it('writes frames into a pack that commit moves into the store, readable through the index', async () => {
    const store = ContentStore.open(fresh('s1'), { create: true });
    const chunks = makeChunks('s1', [
      100,
      5000,
      70_000,
      200_000,
      1_000_000,
      900_000,
      300_000,
      64 * 1024,
      1,
      12_345,
    ]);
    const frames = framesOf(chunks);
    assert.ok(frames.length >= 2, 'the test wants several frames');

    const session = store.beginSession(store.loadIndex());
    assert.ok(fs.statSync(session.dir).isDirectory());
    assert.equal(path.dirname(session.dir), path.join(store.root, 'tmp'));
    assert.ok(path.basename(session.dir).startsWith(`${process.pid}-`));
    for (const f of frames) session.addFrame(f);
    for (const c of chunks) assert.ok(session.has(c.hash));
    assert.equal(session.has(sha256(Buffer.from('absent'))), false);
    const total = frames.reduce((a, f) => a + f.data.length, 0);
    assert.equal(session.bytesWritten, total);
    // Nothing is visible before commit.
    assert.deepEqual(store.listPacks(), []);
    assert.deepEqual(walk(path.join(store.root, 'packs')), []);

    const committed = await session.commit();
    assert.equal(committed.packs.length, 1);
    const id = committed.packs[0]!;
    assert.deepEqual(store.listPacks(), [id]);
    // The pack is named by its own hash and starts with the magic.
    const packBytes = fs.readFileSync(store.packPath(id));
    assert.equal(sha256Hex(packBytes), id);
    assert.ok(packBytes.subarray(0, PACK_MAGIC.length).equals(PACK_MAGIC));
    assert.equal(packBytes.length, PACK_MAGIC.length + total);
    assert.ok(fs.existsSync(store.indexPath(id)));
    for (const c of chunks) assert.equal(committed.packOf(hashKey(c.hash)), id);
    assert.equal(committed.packOf(hashKey(sha256(Buffer.from('absent')))), undefined);

    session.close();
    assert.equal(fs.existsSync(session.dir), false);
    assert.deepEqual(walk(path.join(store.root, 'tmp')), []);

    const index = store.loadIndex();
    assert.equal(index.size, chunks.length);
    assert.deepEqual(index.packs, [id]);
    assert.deepEqual(index.packPaths, [store.packPath(id)]);
    const reader = new PackReader(index.packPaths);
    try {
      // Every frame is read back byte for byte at the offset the index gives.
      let offset = PACK_MAGIC.length;
      for (const f of frames) {
        const first = index.get(f.chunks.subarray(0, HASH_BYTES));
        assert.ok(first);
        assert.equal(first.frameOffset, offset);
        assert.equal(first.frameLength, f.data.length);
        assert.ok(
          reader.readFrame(first.pack, first.frameOffset, first.frameLength).equals(f.data),
        );
        offset += f.data.length;
      }
      for (const c of chunks) assert.ok(readChunk(index, reader, c.hash).equals(c.data));
    } finally {
      reader.close();
    }
  });

  it('does not write a frame whose chunks are all known, and only indexes the new ones', async () => {
    const store = ContentStore.open(fresh('dedup'), { create: true });
    const old = makeChunks('dedup-old', [3000, 4000, 5000]);
    const s1 = store.beginSession(store.loadIndex());
    const [f1] = framesOf(old);
    assert.ok(f1);
    s1.addFrame(f1);
    s1.addFrame(f1); // the same frame again in the same session
    assert.equal(s1.bytesWritten, f1.data.length);
    const c1 = await s1.commit();
    s1.close();
    assert.equal(c1.packs.length, 1);
    assert.equal(
      fs.statSync(store.packPath(c1.packs[0]!)).size,
      PACK_MAGIC.length + f1.data.length,
    );

    // A second session that knows the first pack.
    const known = store.loadIndex();
    assert.equal(known.size, 3);
    const s2 = store.beginSession(known);
    for (const c of old) assert.ok(s2.has(c.hash));
    const [again] = framesOf(old);
    s2.addFrame(again!);
    assert.equal(s2.bytesWritten, 0, 'a frame of known chunks is written');
    const fresh2 = makeChunks('dedup-new', [6000, 7000]);
    const [mixed] = framesOf([old[0]!, fresh2[0]!, old[2]!, fresh2[1]!]);
    s2.addFrame(mixed!);
    assert.equal(s2.bytesWritten, mixed!.data.length);
    const c2 = await s2.commit();
    s2.close();
    assert.equal(c2.packs.length, 1);
    const id2 = c2.packs[0]!;
    assert.notEqual(id2, c1.packs[0]);
    assert.equal(
      c2.packOf(hashKey(old[0]!.hash)),
      undefined,
      'a known chunk is not claimed by the new pack',
    );
    assert.equal(c2.packOf(hashKey(fresh2[0]!.hash)), id2);

    // The new pack's index lists only the new chunks; the old ones stay in the old pack.
    const onlyNew = store.loadIndex([id2]);
    assert.equal(onlyNew.size, 2);
    for (const c of fresh2) assert.ok(onlyNew.has(c.hash));
    const all = store.loadIndex();
    assert.equal(all.size, 5);
    assert.equal(all.packs[all.get(old[0]!.hash)!.pack], c1.packs[0]);
    const reader = new PackReader(all.packPaths);
    try {
      for (const c of [...old, ...fresh2]) assert.ok(readChunk(all, reader, c.hash).equals(c.data));
    } finally {
      reader.close();
    }

    // A session with nothing new commits no pack.
    const s3 = store.beginSession(store.loadIndex());
    for (const f of framesOf([...old, ...fresh2])) s3.addFrame(f);
    const c3 = await s3.commit();
    s3.close();
    assert.deepEqual(c3.packs, []);
    assert.equal(store.listPacks().length, 2);
  });

  it('abort leaves no tmp folder and no pack', async () => {
    const store = ContentStore.open(fresh('abort'), { create: true });
    const s = store.beginSession(store.loadIndex());
    for (const f of framesOf(makeChunks('abort', [10_000, 3_000_000]))) s.addFrame(f);
    assert.ok(walk(s.dir).length > 0);
    await s.abort();
    assert.equal(fs.existsSync(s.dir), false);
    assert.deepEqual(fs.readdirSync(path.join(store.root, 'tmp')), []);
    assert.deepEqual(walk(path.join(store.root, 'packs')), []);
    assert.deepEqual(store.listPacks(), []);
    assert.equal(store.loadIndex().size, 0);
    // An empty session aborts cleanly too.
    const empty = store.beginSession(store.loadIndex());
    await empty.abort();
    assert.deepEqual(fs.readdirSync(path.join(store.root, 'tmp')), []);
  });

  it('abort after commit does not close a descriptor it no longer owns', async () => {
    // capture.ts calls session.abort() when anything after session.commit() throws.
    const store = ContentStore.open(fresh('dblclose'), { create: true });
    const s = store.beginSession(store.loadIndex());
    for (const f of framesOf(makeChunks('dbl', [5000]))) s.addFrame(f);
    await s.commit();
    // Files opened after the commit reuse the lowest free descriptor numbers.
    const mine = Array.from({ length: 8 }, (_, i) => {
      const p = path.join(dir, `dblclose-${seq}-${i}`);
      fs.writeFileSync(p, 'mine');
      return fs.openSync(p, 'r');
    });
    try {
      await s.abort();
      for (const fd of mine) {
        assert.doesNotThrow(() => fs.fstatSync(fd), `fd ${fd} was closed by abort()`);
      }
    } finally {
      for (const fd of mine) {
        try {
          fs.closeSync(fd);
        } catch {
          /* closed by the bug */
        }
      }
    }
  });
});

describe('loadIndex', () => {
  it('refuses a corrupt index or a missing pack (PACK_CORRUPT)', async () => {
    const store = ContentStore.open(fresh('corrupt'), { create: true });
    const s = store.beginSession(store.loadIndex());
    for (const f of framesOf(makeChunks('corrupt', [1000, 2000]))) s.addFrame(f);
    const [id] = (await s.commit()).packs;
    s.close();
    assert.ok(id);
    assert.equal(store.loadIndex().size, 2);

    const idx = fs.readFileSync(store.indexPath(id));
    const bad = Buffer.from(idx);
    bad[20] = bad[20]! ^ 0x40;
    fs.writeFileSync(store.indexPath(id), bad);
    expectCode(() => store.loadIndex(), 'PACK_CORRUPT');
    fs.writeFileSync(store.indexPath(id), idx);
    assert.equal(store.loadIndex().size, 2);

    // A truncated pack: the index points past its end.
    const pack = fs.readFileSync(store.packPath(id));
    fs.writeFileSync(store.packPath(id), pack.subarray(0, pack.length - 1));
    expectCode(() => store.loadIndex(), 'PACK_CORRUPT');
    fs.rmSync(store.packPath(id));
    expectCode(() => store.loadIndex(), 'PACK_CORRUPT');
  });
});

describe('PackReader', () => {
  it('refuses to read past the end of a pack (PACK_CORRUPT) and an unknown pack number', () => {
    const p = path.join(dir, `short-${seq++}.pack`);
    fs.writeFileSync(p, Buffer.concat([PACK_MAGIC, Buffer.from('0123456789')]));
    const r = new PackReader([p]);
    try {
      assert.equal(r.readFrame(0, 8, 10).toString(), '0123456789');
      assert.equal(r.readFrame(0, 10, 3).toString(), '234');
      expectCode(() => r.readFrame(0, 10, 9), 'PACK_CORRUPT');
      assert.throws(() => r.readFrame(1, 8, 1), RangeError);
    } finally {
      r.close();
    }
  });
});

describe('sortedHashes', () => {
  const loc = { pack: 0, frameOffset: 8, frameLength: 1, offset: 0, length: 1 };

  it('finds every present hash and none of 1000 random absent ones', () => {
    const index = new ChunkIndex();
    const present: Buffer[] = [];
    for (let i = 0; i < 777; i++) {
      const h = sha256(Buffer.from(`present-${i}`));
      present.push(h);
      index.set(h, loc);
    }
    // Edge values sort first and last.
    for (const b of [0x00, 0xff, 0x7f, 0x80]) {
      const h = Buffer.alloc(HASH_BYTES, b);
      present.push(h);
      index.set(h, loc);
    }
    const table = new Uint8Array(index.sortedHashes());
    assert.equal(table.length, present.length * HASH_BYTES);
    for (let i = 1; i < present.length; i++) {
      const a = Buffer.from(table.buffer, (i - 1) * HASH_BYTES, HASH_BYTES);
      const b = Buffer.from(table.buffer, i * HASH_BYTES, HASH_BYTES);
      assert.ok(Buffer.compare(a, b) < 0, `table not sorted by bytes at ${i}`);
    }
    for (const h of present) assert.ok(sortedHashesHas(table, h), h.toString('hex'));

    const presentSet = new Set(present.map((h) => h.toString('hex')));
    let checked = 0;
    while (checked < 1000) {
      const h = randomBytes(HASH_BYTES);
      if (presentSet.has(h.toString('hex'))) continue;
      assert.equal(sortedHashesHas(table, h), false, h.toString('hex'));
      checked++;
    }
    // Neighbours of present hashes (one bit off in the last byte) are absent too.
    for (const h of present.slice(0, 100)) {
      const n = Buffer.from(h);
      n[HASH_BYTES - 1] = n[HASH_BYTES - 1]! ^ 1;
      if (!presentSet.has(n.toString('hex'))) assert.equal(sortedHashesHas(table, n), false);
    }
  });

  it('reads a hash at a non-zero offset of a larger buffer, and handles tiny tables', () => {
    const index = new ChunkIndex();
    assert.equal(
      sortedHashesHas(new Uint8Array(index.sortedHashes()), sha256(Buffer.from('x'))),
      false,
    );
    const h = sha256(Buffer.from('only'));
    index.set(h, loc);
    const table = new Uint8Array(index.sortedHashes());
    const big = Buffer.alloc(100);
    h.copy(big, 17);
    assert.ok(sortedHashesHas(table, big.subarray(17, 17 + HASH_BYTES)));
    assert.equal(sortedHashesHas(table, big.subarray(16, 16 + HASH_BYTES)), false);
  });
});

describe('writeAtomic', () => {
  it('writes whole files and leaves no .tmp- files behind', () => {
    const d = fresh('atomic');
    fs.mkdirSync(d);
    const target = path.join(d, 'file.json');
    writeAtomic(target, 'first\n');
    assert.equal(fs.readFileSync(target, 'utf8'), 'first\n');
    const big = randomData('atomic', 3 * 1024 * 1024 + 17);
    writeAtomic(target, big, true);
    assert.ok(fs.readFileSync(target).equals(big));
    writeAtomic(target, new Uint8Array([1, 2, 3]));
    assert.deepEqual([...fs.readFileSync(target)], [1, 2, 3]);
    writeAtomic(target, '');
    assert.equal(fs.readFileSync(target).length, 0);
    assert.deepEqual(fs.readdirSync(d), ['file.json']);
  });

  it('never shows a reader a half-written file (old or new content only)', () => {
    const d = fresh('atomic-read');
    fs.mkdirSync(d);
    const target = path.join(d, 'f');
    const a = Buffer.alloc(1024 * 1024, 'a');
    const b = Buffer.alloc(2 * 1024 * 1024, 'b');
    writeAtomic(target, a);
    // The file descriptor opened before a replacement keeps seeing the whole old file.
    const fd = fs.openSync(target, 'r');
    try {
      writeAtomic(target, b);
      const old = Buffer.alloc(a.length + 10);
      assert.equal(fs.readSync(fd, old, 0, old.length, 0), a.length);
      assert.ok(old.subarray(0, a.length).equals(a));
    } finally {
      fs.closeSync(fd);
    }
    assert.ok(fs.readFileSync(target).equals(b));
    assert.deepEqual(fs.readdirSync(d), ['f']);
  });

  it('leaves no .tmp- file when the rename fails', () => {
    const d = fresh('atomic-fail');
    fs.mkdirSync(path.join(d, 'target', 'inside'), { recursive: true });
    assert.throws(() => writeAtomic(path.join(d, 'target'), 'data'));
    assert.deepEqual(fs.readdirSync(d), ['target']);
  });
});

describe('staleSessions', () => {
  it('reports a tmp folder named after a dead pid, not one of a lock holder', async () => {
    const store = ContentStore.open(fresh('stale'), { create: true });
    const dead = path.join(store.root, 'tmp', `${deadPid()}-0b3c2f0e-dead`);
    fs.mkdirSync(dead);
    fs.writeFileSync(path.join(dead, 'pack-0'), 'partial');
    const lock = await store.lock('shared', 'test capture');
    try {
      const live = store.beginSession(store.loadIndex());
      const stale = store.staleSessions();
      assert.deepEqual(stale, [dead]);
      await live.abort();
    } finally {
      lock.release();
    }
  });

  it('reports nothing when tmp/ is empty or missing', () => {
    const store = ContentStore.open(fresh('stale-none'), { create: true });
    assert.deepEqual(store.staleSessions(), []);
    fs.rmSync(path.join(store.root, 'tmp'), { recursive: true });
    assert.deepEqual(store.staleSessions(), []);
  });
});

describe('objects', () => {
  it('writes, lists, reads and deletes objects, hiding temporary files', () => {
    const store = ContentStore.open(fresh('objects'), { create: true });
    assert.equal(store.readObject('names', 'x'), undefined);
    assert.deepEqual(store.listObjects('names'), []);
    store.writeObject('names', 'b', 'bee');
    store.writeObject('names', 'a', Buffer.from('ay'));
    fs.writeFileSync(path.join(store.root, 'objects', 'names', 'c.tmp-123-abcd'), 'half');
    assert.deepEqual(store.listObjects('names'), ['a', 'b']);
    assert.equal(store.readObject('names', 'b')?.toString(), 'bee');
    store.writeObject('names', 'b', 'bee2');
    assert.equal(store.readObject('names', 'b')?.toString(), 'bee2');
    store.deleteObject('names', 'a');
    store.deleteObject('names', 'never');
    assert.deepEqual(store.listObjects('names'), ['b']);
  });
});
