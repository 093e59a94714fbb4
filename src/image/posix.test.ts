import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import util from 'node:util';
import { Worker } from 'node:worker_threads';

import { CHUNK_MAX, CHUNK_MIN, chunkLengths, cutPoint } from '../content/chunker.js';
import {
  cdcChunks,
  cdcGearTable,
  cdcInit,
  dataSegments,
  futimensNs,
  majorMinor,
  makeRdev,
  mknod,
  readXattrs,
  scanDir,
  setXattr,
  ST,
  STAT_FIELDS,
  utimensNs,
  type PosixError,
  type ScanResult,
} from './posix.js';

const isRoot = process.getuid?.() === 0;
const MiB = 1024 * 1024;

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-posix-'));
});
after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

/** A path under the test directory, as raw bytes (may be non-UTF-8). */
function bpath(...name: Array<string | number[]>): Buffer {
  const parts = name.map((n) => (typeof n === 'string' ? Buffer.from(n) : Buffer.from(n)));
  return Buffer.concat([Buffer.from(dir + '/'), ...parts]);
}

function names(list: Array<[Buffer, Buffer]>): string[] {
  return list.map(([n]) => n.toString('latin1'));
}

/** Runs fn, which must throw; returns the error for further checks. */
function thrown(fn: () => unknown): PosixError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof Error);
    return err as PosixError;
  }
  assert.fail('expected an exception');
}

describe('xattrs', () => {
  it('round-trips binary values on a file with a non-UTF-8 name, sorted by name bytes', () => {
    const file = bpath('caf', [0xe9, 0xff, 0xfe], '.bin'); // latin-1 é + invalid bytes
    fs.writeFileSync(file, 'x');
    const binary = Buffer.from([0x00, 0xff, 0x80, 0x00, 0x7f, 0x0a]);
    const oddName = Buffer.concat([Buffer.from('user.'), Buffer.from([0xff, 0x01])]);
    setXattr(file, 'user.zeta', Buffer.from('last'));
    setXattr(file, oddName, binary);
    setXattr(file, Buffer.from('user.alpha'), Buffer.alloc(0));
    setXattr(file, 'user.beta', new Uint8Array([1, 2, 3]));

    const got = readXattrs(file);
    assert.deepEqual(got, [
      [Buffer.from('user.alpha'), Buffer.alloc(0)],
      [Buffer.from('user.beta'), Buffer.from([1, 2, 3])],
      [Buffer.from('user.zeta'), Buffer.from('last')],
      [oddName, binary],
    ]);
    // Overwriting replaces the value.
    setXattr(file, 'user.zeta', Buffer.from('again'));
    assert.deepEqual(readXattrs(file)[2], [Buffer.from('user.zeta'), Buffer.from('again')]);
  });

  it('returns [] for a file without attributes', () => {
    const file = bpath('plain');
    fs.writeFileSync(file, '');
    assert.deepEqual(readXattrs(file), []);
  });

  it('reads attribute lists larger than the first-try buffer', () => {
    const file = bpath('many');
    fs.writeFileSync(file, '');
    const expected: string[] = [];
    for (let i = 0; i < 40; i++) {
      const name = `user.a-rather-long-attribute-name-${String(i).padStart(2, '0')}`;
      setXattr(file, name, Buffer.from([i]));
      expected.push(name);
    }
    const got = readXattrs(file);
    assert.deepEqual(names(got), expected); // > 1 KiB of names, still sorted
    assert.deepEqual(
      got.map(([, v]) => v[0]),
      expected.map((_, i) => i),
    );
  });

  it('reads values larger than the first-try buffer', (t) => {
    // ext4 without ea_inode caps values at one block; tmpfs (/dev/shm) does not.
    const big = Buffer.alloc(20000, 0xab);
    big.writeUInt32BE(0xdeadbeef, 19000);
    for (const base of [dir, '/dev/shm']) {
      const file = path.join(fs.mkdtempSync(path.join(base, 'reimage-big-')), 'f');
      try {
        fs.writeFileSync(file, '');
        try {
          setXattr(file, 'user.big', big);
        } catch (err) {
          const code = (err as PosixError).code;
          if (code === 'ENOSPC' || code === 'E2BIG' || code === 'ENOTSUP') continue;
          throw err;
        }
        assert.deepEqual(readXattrs(file), [[Buffer.from('user.big'), big]]);
        return;
      } finally {
        fs.rmSync(path.dirname(file), { recursive: true, force: true });
      }
    }
    t.skip('no filesystem here accepts a 20000-byte xattr value');
  });

  it('sets and reads security.capability (root only)', { skip: !isRoot && 'needs root' }, () => {
    const file = bpath('ping');
    fs.writeFileSync(file, '#!/bin/sh\n', { mode: 0o755 });
    // struct vfs_cap_data, revision 2 with the effective flag:
    // magic_etc = 0x02000001, permitted = CAP_NET_RAW (bit 13), inheritable = 0.
    const cap = Buffer.alloc(20);
    cap.writeUInt32LE(0x02000001, 0);
    cap.writeUInt32LE(1 << 13, 4);
    setXattr(file, 'security.capability', cap);
    const got = readXattrs(file);
    assert.deepEqual(got, [[Buffer.from('security.capability'), cap]]);
  });

  it('does not follow symlinks', () => {
    const target = bpath('target');
    const link = bpath('link');
    fs.writeFileSync(target, '');
    setXattr(target, 'user.on-target', Buffer.from('1'));
    fs.symlinkSync(target, link);
    assert.ok(!names(readXattrs(link)).includes('user.on-target'));
    // The kernel refuses user.* on the link itself; a follower would succeed.
    const err = thrown(() => setXattr(link, 'user.x', Buffer.from('1')));
    assert.equal(err.code, 'EPERM');
    assert.equal(err.syscall, 'lsetxattr');
    // A dangling link is still readable (no ENOENT from following it).
    const dangling = bpath('dangling');
    fs.symlinkSync(bpath('nowhere'), dangling);
    assert.ok(Array.isArray(readXattrs(dangling)));
  });

  it('rejects over-long names and names with NUL bytes', () => {
    const file = bpath('names');
    fs.writeFileSync(file, '');
    const err = thrown(() => setXattr(file, 'user.' + 'n'.repeat(300), Buffer.alloc(1)));
    assert.equal(err.code, 'ERANGE');
    assert.equal(err.syscall, 'lsetxattr');
    const nul = thrown(() => setXattr(file, 'user.a\0b', Buffer.alloc(1)));
    assert.ok(nul instanceof TypeError);
    assert.equal(nul.code, 'ERR_INVALID_ARG_VALUE');
  });
});

describe('mknod', () => {
  it('creates a fifo', () => {
    const p = bpath('fifo');
    mknod(p, 'fifo', 0o600);
    const st = fs.lstatSync(p);
    assert.ok(st.isFIFO());
    assert.equal(st.mode & 0o7777, 0o600); // 0600 survives any usual umask
    const err = thrown(() => mknod(p, 'fifo', 0o600));
    assert.equal(err.code, 'EEXIST');
    assert.equal(err.syscall, 'mknod');
    assert.equal(err.path, p.toString());
  });

  it('creates character and block devices (root only)', { skip: !isRoot && 'needs root' }, () => {
    const nul = bpath('null');
    mknod(nul, 'char', 0o666, 1, 3);
    const st = fs.lstatSync(nul, { bigint: true });
    assert.ok(st.isCharacterDevice());
    assert.deepEqual(majorMinor(st.rdev), [1, 3]);
    assert.equal(st.rdev, makeRdev(1, 3));

    // The largest numbers Linux can store (12-bit major, 20-bit minor).
    const blk = bpath('blk');
    mknod(blk, 'block', 0o600, 4095, 0xfffff);
    const bst = fs.lstatSync(blk, { bigint: true });
    assert.ok(bst.isBlockDevice());
    assert.equal(bst.rdev, makeRdev(4095, 0xfffff));
    assert.deepEqual(majorMinor(bst.rdev), [4095, 0xfffff]);

    // Beyond that glibc refuses instead of silently truncating.
    const err = thrown(() => mknod(bpath('toobig'), 'block', 0o600, 4096, 0));
    assert.equal(err.code, 'EINVAL');
  });

  it('validates its arguments', () => {
    assert.throws(() => mknod(bpath('x'), 'socket' as 'fifo', 0o600), TypeError);
    assert.throws(() => mknod(bpath('x'), 'fifo', 0o10000), RangeError);
    assert.throws(() => mknod(bpath('x'), 'char', 0o600, -1, 0), RangeError);
    assert.ok(!fs.existsSync(bpath('x')));
  });
});

describe('timestamps', () => {
  const atime = 1_600_000_000_987_654_321n;
  const mtime = 1_700_000_000_123_456_789n;

  it('sets exact nanoseconds on a file', () => {
    const file = bpath('times');
    fs.writeFileSync(file, '');
    utimensNs(file, atime, mtime);
    const st = fs.lstatSync(file, { bigint: true });
    assert.equal(st.atimeNs, atime);
    assert.equal(st.mtimeNs, mtime);
  });

  it('handles times before 1970', () => {
    const file = bpath('old');
    fs.writeFileSync(file, '');
    utimensNs(file, -1n, -1_500_000_001n);
    const st = fs.lstatSync(file, { bigint: true });
    assert.equal(st.atimeNs, -1n);
    assert.equal(st.mtimeNs, -1_500_000_001n);
  });

  it('sets the symlink itself, not its target', () => {
    const target = bpath('t-target');
    const link = bpath('t-link');
    fs.writeFileSync(target, '');
    utimensNs(target, 1_000_000_000_000_000_001n, 1_000_000_000_000_000_002n);
    fs.symlinkSync(target, link);
    utimensNs(link, atime, mtime);
    const lst = fs.lstatSync(link, { bigint: true });
    assert.equal(lst.mtimeNs, mtime);
    assert.equal(lst.atimeNs, atime);
    const tst = fs.statSync(target, { bigint: true });
    assert.equal(tst.mtimeNs, 1_000_000_000_000_000_002n);
  });

  it('sets exact nanoseconds through an fd', () => {
    const file = bpath('ftimes');
    const fd = fs.openSync(file, 'w');
    try {
      fs.writeSync(fd, 'data'); // writing would bump mtime; futimens must win
      futimensNs(fd, atime, mtime);
    } finally {
      fs.closeSync(fd);
    }
    const st = fs.lstatSync(file, { bigint: true });
    assert.equal(st.atimeNs, atime);
    assert.equal(st.mtimeNs, mtime);
  });

  it('reports errors', () => {
    const missing = bpath('missing-', [0xff]);
    const err = thrown(() => utimensNs(missing, 0n, 0n));
    assert.equal(err.code, 'ENOENT');
    assert.equal(err.syscall, 'utimensat');
    assert.throws(() => utimensNs(missing, 2n ** 63n, 0n), RangeError);
    assert.throws(() => utimensNs(missing, 5 as unknown as bigint, 0n), TypeError);
    const ferr = thrown(() => futimensNs(2 ** 30, 0n, 0n));
    assert.equal(ferr.code, 'EBADF');
    assert.equal(ferr.syscall, 'futimens');
    assert.equal(ferr.message, 'EBADF: bad file descriptor, futimens');
    assert.equal(ferr.path, undefined);
  });
});

describe('dataSegments', () => {
  /** Whether the filesystem under `file` stores holes (fewer blocks than bytes). */
  function isSparse(file: string): boolean {
    const st = fs.statSync(file);
    return st.blocks * 512 < st.size;
  }

  it('finds the two data regions of a sparse file', () => {
    const file = path.join(dir, 'sparse');
    const size = 16 * MiB; // trailing 8 MiB hole
    const fd = fs.openSync(file, 'w+');
    try {
      fs.ftruncateSync(fd, size);
      fs.writeSync(fd, Buffer.from('head'), 0, 4, 0);
      fs.writeSync(fd, Buffer.from('tail'), 0, 4, 8 * MiB);
      fs.fsyncSync(fd);

      const segs = dataSegments(fd, size);
      if (!isSparse(file)) {
        // No holes on this filesystem: everything is data.
        assert.deepEqual(segs, [[0, size]]);
        return;
      }
      assert.equal(segs.length, 2, `segments: ${JSON.stringify(segs)}`);
      const [first, second] = segs as [[number, number], [number, number]];
      assert.equal(first[0], 0);
      assert.ok(first[1] >= 4 && first[1] < 8 * MiB);
      assert.ok(second[0] > first[0] + first[1] && second[0] <= 8 * MiB);
      assert.ok(second[0] + second[1] >= 8 * MiB + 4 && second[0] + second[1] < size);

      // Copying only the segments reproduces the file.
      const copy = Buffer.alloc(size);
      for (const [off, len] of segs) fs.readSync(fd, copy, off, len, off);
      assert.ok(copy.equals(fs.readFileSync(file)));
    } finally {
      fs.closeSync(fd);
    }
  });

  it('clamps to size, handles empty and all-hole files, keeps the file offset', () => {
    const file = path.join(dir, 'small');
    fs.writeFileSync(file, 'hello world');
    const fd = fs.openSync(file, 'r');
    try {
      assert.deepEqual(dataSegments(fd, 0), []);
      const buf = Buffer.alloc(5);
      fs.readSync(fd, buf, 0, 5, null); // file offset now 5
      assert.deepEqual(dataSegments(fd, 3), [[0, 3]]);
      assert.deepEqual(dataSegments(fd, 11), [[0, 11]]);
      fs.readSync(fd, buf, 0, 5, null);
      assert.equal(buf.toString(), ' worl'); // continued from offset 5
    } finally {
      fs.closeSync(fd);
    }

    const hole = path.join(dir, 'hole');
    fs.writeFileSync(hole, '');
    fs.truncateSync(hole, 4 * MiB);
    const hfd = fs.openSync(hole, 'r');
    try {
      assert.deepEqual(dataSegments(hfd, 4 * MiB), isSparse(hole) ? [] : [[0, 4 * MiB]]);
    } finally {
      fs.closeSync(hfd);
    }
  });

  it('reports errors', () => {
    const err = thrown(() => dataSegments(2 ** 30, 10));
    assert.equal(err.code, 'EBADF');
    assert.equal(err.syscall, 'lseek');
    assert.throws(() => dataSegments(0, -1), RangeError);
  });
});

describe('scanDir', () => {
  /** Entry `i`'s stat slots as an object keyed like ST. */
  function statsOf(r: ScanResult, i: number): Record<keyof typeof ST, bigint> {
    const out = {} as Record<keyof typeof ST, bigint>;
    for (const [key, slot] of Object.entries(ST) as Array<[keyof typeof ST, number]>) {
      out[key] = r.stats[i * STAT_FIELDS + slot]!;
    }
    return out;
  }

  /** The same fields from Node's own lstat. */
  function lstatFields(p: Buffer): Record<keyof typeof ST, bigint> {
    const st = fs.lstatSync(p, { bigint: true });
    const out = {} as Record<keyof typeof ST, bigint>;
    for (const key of Object.keys(ST) as Array<keyof typeof ST>) out[key] = st[key];
    return out;
  }

  /** Checks every entry of `r` (a scan of `base`) against lstat/readlink/readXattrs. */
  function assertMatchesNode(r: ScanResult, base: Buffer, withXattrs = true): void {
    const n = r.names.length;
    assert.equal(r.stats.length, n * STAT_FIELDS);
    for (const arr of [r.targets, r.xattrs, r.errors]) {
      assert.equal(arr.length, n);
      let visited = 0;
      arr.forEach(() => visited++); // dense: no holes for forEach/map to skip
      assert.equal(visited, n);
    }
    const onDisk = fs.readdirSync(base, { encoding: 'buffer' }).sort(Buffer.compare);
    assert.deepEqual(r.names, onDisk);
    for (let i = 0; i < n; i++) {
      const p = Buffer.concat([base, Buffer.from('/'), r.names[i]!]);
      const what: string = `entry ${r.names[i]!.toString('latin1')}`;
      assert.equal(r.errors[i], undefined, what);
      assert.deepEqual(statsOf(r, i), lstatFields(p), what);
      const st = fs.lstatSync(p);
      assert.deepEqual(
        r.targets[i],
        st.isSymbolicLink() ? fs.readlinkSync(p, { encoding: 'buffer' }) : undefined,
        what,
      );
      const attrs = withXattrs ? readXattrs(p) : [];
      assert.deepEqual(r.xattrs[i], attrs.length > 0 ? attrs : undefined, what);
    }
  }

  let tree: Buffer;
  before(() => {
    tree = bpath('scan');
    fs.mkdirSync(tree);
    const at = (...name: Array<string | number[]>): Buffer =>
      Buffer.concat([tree, Buffer.from('/'), ...name.map((n) => Buffer.from(n as string))]);
    fs.writeFileSync(at('file'), 'hello');
    fs.writeFileSync(at('file2'), ''); // 'file' is its prefix: sorts first
    fs.writeFileSync(at('File'), ''); // upper case sorts before lower case
    fs.mkdirSync(at('sub'));
    fs.writeFileSync(at('sub', '/inner'), 'not listed');
    fs.symlinkSync(Buffer.from([0x2e, 0x2e, 0x2f, 0xff, 0xfe, 0x80]), at('link')); // "../\xff\xfe\x80"
    fs.symlinkSync('x'.repeat(4000), at('longlink'));
    fs.writeFileSync(at('caf', [0xe9, 0xff]), 'latin-1 name'); // not UTF-8
    fs.writeFileSync(at([0xff], 'z'), ''); // high bytes sort after ASCII
    mknod(at('fifo'), 'fifo', 0o640);
    const attrs = at('attrs');
    fs.writeFileSync(attrs, '');
    setXattr(attrs, 'user.zeta', Buffer.from('z'));
    setXattr(attrs, 'user.alpha', Buffer.from([0, 0xff, 0]));
    setXattr(attrs, 'user.empty', Buffer.alloc(0));
    fs.writeFileSync(at('hard1'), 'shared');
    fs.linkSync(at('hard1'), at('hard2'));
    const times = at('times');
    fs.writeFileSync(times, '');
    utimensNs(times, 0n, 1_700_000_000_123_456_789n);
    if (isRoot) mknod(at('null'), 'char', 0o666, 1, 3);
  });

  it('describes every entry exactly like lstat, readlink and readXattrs', () => {
    const r = scanDir(tree);
    assertMatchesNode(r, tree);

    const index = (name: string | number[]): number =>
      r.names.findIndex((n) => n.equals(Buffer.from(name as string)));
    assert.deepEqual(
      r.names.map((n) => n.toString('latin1')),
      [
        'File',
        'attrs',
        'caf\xe9\xff',
        'fifo',
        'file',
        'file2',
        'hard1',
        'hard2',
        'link',
        'longlink',
        ...(isRoot ? ['null'] : []),
        'sub',
        'times',
        '\xffz',
      ],
    );
    assert.ok(index([0x63, 0x61, 0x66, 0xe9, 0xff]) >= 0);
    const f = (name: string): Record<keyof typeof ST, bigint> => statsOf(r, index(name));
    assert.equal(f('file').size, 5n);
    assert.equal(f('sub').mode & 0o170000n, 0o040000n);
    assert.equal(f('fifo').mode, 0o010640n);
    assert.equal(f('times').mtimeNs, 1_700_000_000_123_456_789n);
    assert.equal(f('hard1').nlink, 2n);
    assert.equal(f('hard1').ino, f('hard2').ino);
    assert.equal(f('hard1').dev, f('hard2').dev);
    if (isRoot) assert.deepEqual(majorMinor(f('null').rdev), [1, 3]);
    assert.deepEqual(r.targets[index('link')], Buffer.from([0x2e, 0x2e, 0x2f, 0xff, 0xfe, 0x80]));
    assert.equal(r.targets[index('longlink')]?.length, 4000);
    assert.deepEqual(r.xattrs[index('attrs')], [
      [Buffer.from('user.alpha'), Buffer.from([0, 0xff, 0])],
      [Buffer.from('user.empty'), Buffer.alloc(0)],
      [Buffer.from('user.zeta'), Buffer.from('z')],
    ]);
    assert.equal(r.xattrs[index('file')], undefined);

    // A trailing slash and a string path give the same result.
    assert.deepEqual(scanDir(Buffer.concat([tree, Buffer.from('/')])), r);
  });

  it('skips xattrs when asked', () => {
    const r = scanDir(tree, { xattrs: false });
    assertMatchesNode(r, tree, false);
    assert.ok(r.xattrs.every((x) => x === undefined));
    assert.throws(() => scanDir(tree, { xattrs: 1 as unknown as boolean }), TypeError);
  });

  it('reads symlinks whose st_size is 0 (procfs)', () => {
    const r = scanDir('/proc/self', { xattrs: false });
    for (const name of ['cwd', 'exe', 'root']) {
      const i = r.names.findIndex((n) => n.toString() === name);
      assert.ok(i >= 0, name);
      assert.equal(r.errors[i], undefined, name);
      assert.deepEqual(r.targets[i], fs.readlinkSync(`/proc/self/${name}`, { encoding: 'buffer' }));
    }
  });

  it('returns empty results for an empty directory', () => {
    const empty = bpath('scan-empty');
    fs.mkdirSync(empty);
    const r = scanDir(empty);
    assert.deepEqual(r.names, []);
    assert.ok(r.stats instanceof BigInt64Array);
    assert.equal(r.stats.length, 0);
    assert.deepEqual([r.targets, r.xattrs, r.errors], [[], [], []]);
  });

  it('handles thousands of entries, sorted by raw bytes', () => {
    const big = bpath('scan-big');
    fs.mkdirSync(big);
    const expected: Buffer[] = [];
    for (let i = 0; i < 3000; i++) {
      // Long names (> 16 KiB in total), with high bytes and shared prefixes.
      const name = Buffer.from(`${(i * 7919) % 3000}-${'n'.repeat(i % 50)}`);
      if (i % 3 === 0) name[0] = 0x80 + (i % 0x7f);
      expected.push(name);
      fs.writeFileSync(Buffer.concat([big, Buffer.from('/'), name]), '');
    }
    expected.sort(Buffer.compare);
    const r = scanDir(big);
    assert.deepEqual(r.names, expected);
    assert.ok(r.errors.every((e) => e === undefined));
    for (let i = 0; i < expected.length; i++) {
      assert.equal(r.stats[i * STAT_FIELDS + ST.mode]! & 0o170000n, 0o100000n);
    }
  });

  it('reports per-entry failures in errors, with the stats still valid', () => {
    // A directory path so long that "dir/name" exceeds PATH_MAX (4096): fstatat
    // (relative to the directory) works, the path-based xattr calls cannot.
    const levels = [bpath('scan-deep')];
    while (levels.at(-1)!.length < 3900) {
      levels.push(Buffer.concat([levels.at(-1)!, Buffer.from('/' + 'd'.repeat(200))]));
    }
    const deep = levels.at(-1)!;
    fs.mkdirSync(deep, { recursive: true });
    const short = bpath('scan-deep-link'); // reaches the same directory in few bytes
    fs.symlinkSync(deep, short);
    const file = Buffer.concat([short, Buffer.from('/' + 'f'.repeat(250))]);
    fs.writeFileSync(file, 'data');
    try {
      const r = scanDir(deep);
      assert.deepEqual(r.names, [Buffer.from('f'.repeat(250))]);
      assert.deepEqual(r.errors, ['ENAMETOOLONG']);
      assert.equal(r.xattrs[0], undefined);
      assert.deepEqual(statsOf(r, 0), lstatFields(file));
      // Without xattrs there is nothing that needs the full path.
      assert.deepEqual(scanDir(deep, { xattrs: false }).errors, [undefined]);
      // Through the short symlink, everything works.
      assertMatchesNode(scanDir(short), short);
    } finally {
      // fs.rmSync cannot delete below PATH_MAX either: go bottom-up.
      fs.rmSync(file, { force: true });
      for (const level of levels.reverse()) fs.rmdirSync(level);
      fs.unlinkSync(short);
    }
  });

  it('throws Node-style errors when the directory cannot be read', () => {
    const missing = bpath('scan-missing-', [0xff]);
    const err = thrown(() => scanDir(missing));
    assert.equal(err.code, 'ENOENT');
    assert.equal(err.errno, -os.constants.errno.ENOENT);
    assert.equal(err.syscall, 'opendir');
    assert.equal(err.path, missing.toString());
    assert.equal(err.message, `ENOENT: no such file or directory, opendir '${missing.toString()}'`);

    const file = bpath('scan-not-a-dir');
    fs.writeFileSync(file, '');
    const notDir = thrown(() => scanDir(file));
    assert.equal(notDir.code, 'ENOTDIR');
    assert.equal(notDir.syscall, 'opendir');

    const nul = thrown(() => scanDir(Buffer.from('/tmp/a\0b')));
    assert.ok(nul instanceof TypeError);
    const long = thrown(() => scanDir('/' + 'x'.repeat(5000)));
    assert.equal(long.code, 'ENAMETOOLONG');
    assert.equal(long.syscall, 'opendir');
  });

  it('works in several workers at once', async () => {
    const source = `
      const { parentPort, workerData } = require('node:worker_threads');
      import(workerData.url).then((m) => {
        const r = m.scanDir(Buffer.from(workerData.dir)); // cloned as a Uint8Array
        parentPort.postMessage(r.names.map((n) => n.toString('hex')).join(','));
      });
    `;
    const url = new URL('./posix.js', import.meta.url).href;
    const results = await Promise.all(
      [1, 2, 3].map(
        () =>
          new Promise((resolve, reject) => {
            const w = new Worker(source, { eval: true, workerData: { url, dir: tree } });
            w.once('message', resolve);
            w.once('error', reject);
          }),
      ),
    );
    const expected = scanDir(tree)
      .names.map((n) => n.toString('hex'))
      .join(',');
    assert.deepEqual(results, [expected, expected, expected]);
  });
});

describe('errors', () => {
  it('look like Node fs errors', () => {
    const missing = bpath('no-such-', [0xc3, 0x28]); // invalid UTF-8
    const err = thrown(() => readXattrs(missing));
    const asString = missing.toString(); // lossy: U+FFFD for the bad bytes
    assert.equal(err.code, 'ENOENT');
    assert.equal(err.errno, -os.constants.errno.ENOENT);
    assert.equal(util.getSystemErrorName(err.errno), err.code);
    assert.equal(err.syscall, 'llistxattr');
    assert.equal(err.path, asString);
    assert.equal(err.message, `ENOENT: no such file or directory, llistxattr '${asString}'`);

    // Same message shape as Node's own fs errors.
    const nodeErr = thrown(() => fs.lstatSync(missing));
    assert.equal(nodeErr.code, err.code);
    assert.equal(nodeErr.errno, err.errno);
    assert.equal(err.message.replace('llistxattr', 'lstat'), nodeErr.message);
  });

  it('rejects paths with NUL bytes and too long paths', () => {
    const nul = thrown(() => readXattrs(Buffer.from('/tmp/a\0b')));
    assert.ok(nul instanceof TypeError);
    assert.equal(nul.code, 'ERR_INVALID_ARG_VALUE');
    const long = thrown(() => readXattrs('/' + 'x'.repeat(5000)));
    assert.equal(long.code, 'ENAMETOOLONG');
    assert.equal(long.syscall, 'llistxattr');
  });
});

describe('device numbers', () => {
  it('match glibc makedev/major/minor', () => {
    // Reference values printed by a C program using <sys/sysmacros.h>.
    assert.equal(makeRdev(8, 1), 2049n);
    assert.equal(makeRdev(4095, 1048575), 4294967295n);
    assert.equal(makeRdev(0xfffff123, 0xabcdef45), 18446738287833981765n);
    assert.deepEqual(majorMinor(0xfedcba9876543210n), [4275876914, 2844222736]);
    assert.deepEqual(majorMinor(18446738287833981765n), [0xfffff123, 0xabcdef45]);
    assert.deepEqual(majorMinor(2049), [8, 1]);
    assert.throws(() => majorMinor(-1), RangeError);
    assert.throws(() => makeRdev(2 ** 32, 0), RangeError);
  });

  it('decode stat rdev of /dev/null', () => {
    assert.deepEqual(majorMinor(fs.statSync('/dev/null').rdev), [1, 3]);
  });
});

describe('worker threads', () => {
  it('loads and works in several workers at once', async () => {
    const file = bpath('from-worker');
    fs.writeFileSync(file, '');
    setXattr(file, 'user.w', Buffer.from('ok'));
    const source = `
      const { parentPort, workerData } = require('node:worker_threads');
      import(workerData.url).then((m) => {
        const [[name, value]] = m.readXattrs(Buffer.from(workerData.file));
        parentPort.postMessage(name.toString() + '=' + value.toString());
      });
    `;
    const url = new URL('./posix.js', import.meta.url).href;
    const results = await Promise.all(
      [1, 2, 3].map(
        () =>
          new Promise((resolve, reject) => {
            const w = new Worker(source, { eval: true, workerData: { url, file } });
            w.once('message', resolve);
            w.once('error', reject);
          }),
      ),
    );
    assert.deepEqual(results, ['user.w=ok', 'user.w=ok', 'user.w=ok']);
  });
});

describe('cdcChunks (FastCDC in C)', () => {
  /** Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
  function randomBytes(n: number, seed: number): Buffer {
    const buf = Buffer.alloc(n);
    let x = seed | 0 || 1;
    for (let i = 0; i < n; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      buf[i] = x >>> 24;
    }
    return buf;
  }

  /** The reference: the JS cutPoint loop over data[start, end). */
  function jsChunks(data: Uint8Array, start = 0, end = data.length): number[] {
    const out: number[] = [];
    for (let pos = start; pos < end;) {
      const len = cutPoint(data, pos, end);
      out.push(len);
      pos += len;
    }
    return out;
  }

  /** All chunks of data[start, end) from the C version, `outSize` at a time. */
  function cChunks(data: Uint8Array, start = 0, end = data.length, outSize = 1024): number[] {
    const out = new Uint32Array(outSize);
    const lengths: number[] = [];
    for (let pos = start; pos < end;) {
      const n = cdcChunks(data, pos, end, true, out);
      assert.ok(n > 0 && n <= outSize);
      for (let i = 0; i < n; i++) {
        lengths.push(out[i]!);
        pos += out[i]!;
      }
    }
    return lengths;
  }

  /** Streams data through cdcChunks in windows of the given sizes (cycled). */
  function streamed(data: Uint8Array, windows: number[], outSize = 64): number[] {
    const out = new Uint32Array(outSize);
    const lengths: number[] = [];
    let pending = Buffer.alloc(0); // bytes received but not yet cut
    let fed = 0;
    for (let w = 0; fed < data.length; w++) {
      const size = Math.min(windows[w % windows.length]!, data.length - fed);
      pending = Buffer.concat([pending, data.subarray(fed, fed + size)]);
      fed += size;
      const final = fed === data.length;
      let pos = 0;
      for (;;) {
        const n = cdcChunks(pending, pos, pending.length, final, out);
        for (let i = 0; i < n; i++) {
          lengths.push(out[i]!);
          pos += out[i]!;
        }
        if (n < outSize) break; // stopped for lack of data, not of room
      }
      if (final) assert.equal(pos, pending.length);
      else assert.ok(pending.length - pos < CHUNK_MAX);
      pending = pending.subarray(pos);
    }
    return lengths;
  }

  function sum(xs: number[]): number {
    return xs.reduce((a, b) => a + b, 0);
  }

  const sizes = [0, 1, 16383, 16384, 16385, 16386, 65536, 65537, 262144, 262145, 300_000, 8 * MiB];
  for (const [k, size] of sizes.entries()) {
    it(`matches the JS cutPoint loop on ${size} random bytes`, () => {
      const data = randomBytes(size, 0x9e3779b9 + k);
      const expected = chunkLengths(data);
      assert.deepEqual(cChunks(data), expected);
      assert.equal(sum(expected), size);
    });
  }

  it('matches on degenerate data: all zeros, repeating patterns', () => {
    const zeros = Buffer.alloc(4 * MiB);
    const block = randomBytes(1000, 7);
    const repeated = Buffer.alloc(3 * MiB);
    for (let i = 0; i < repeated.length; i += block.length) block.copy(repeated, i);
    const abc = Buffer.alloc(2 * MiB + 12345, 'abc');
    const ramp = Buffer.alloc(MiB + 3);
    for (let i = 0; i < ramp.length; i++) ramp[i] = i & 0xff;
    for (const data of [zeros, repeated, abc, ramp]) {
      const expected = chunkLengths(data);
      assert.deepEqual(cChunks(data), expected);
      assert.equal(sum(expected), data.length);
    }
    // All zeros never hits a mask: every chunk is CHUNK_MAX long.
    assert.ok(chunkLengths(zeros).every((len) => len === CHUNK_MAX));
  });

  it('cuts a subrange [start, end), also of a view with a byte offset', () => {
    const data = randomBytes(3 * MiB, 42);
    for (const [start, end] of [
      [12345, data.length],
      [100, 2 * MiB + 7],
      [data.length - 20000, data.length],
      [5, 5],
    ] as const) {
      assert.deepEqual(cChunks(data, start, end), jsChunks(data, start, end));
    }
    const view = new Uint8Array(data.buffer, data.byteOffset + 999, 2 * MiB);
    assert.deepEqual(cChunks(view), chunkLengths(view));
  });

  it("finds cuts in the last bytes of the data (the unrolled loops' tails)", () => {
    const data = randomBytes(8 * MiB, 77);
    // Chunks ended by a mask hit before CHUNK_AVG ('early') and after it. The
    // loops step 8 bytes at a time from CHUNK_MIN; a hit at offset `len` falls
    // in the tail loop when the data ends before its 8-byte block does, which
    // needs (len - CHUNK_MIN) % 8 !== 7.
    const early: Array<[start: number, len: number]> = [];
    const late: Array<[start: number, len: number]> = [];
    let pos = 0;
    for (const len of chunkLengths(data)) {
      const list = len < 64 * 1024 ? early : late;
      if (len < CHUNK_MAX && (len - CHUNK_MIN) % 8 !== 7 && list.length < 4) list.push([pos, len]);
      pos += len;
    }
    assert.ok(early.length > 0 && late.length > 0);
    for (const [start, len] of [...early, ...late]) {
      // The same cut, found with k = 1..9 bytes left: covers every tail position.
      for (let k = 1; k <= 9; k++) {
        const view = data.subarray(start, start + len + k);
        const expected = chunkLengths(view);
        assert.equal(expected[0], len);
        assert.deepEqual(cChunks(view), expected);
      }
    }
  });

  it('stops when out is full', () => {
    const data = randomBytes(2 * MiB, 3);
    const expected = chunkLengths(data);
    assert.ok(expected.length > 5);
    assert.deepEqual(cChunks(data, 0, data.length, 1), expected);
    assert.deepEqual(cChunks(data, 0, data.length, 3), expected);
    assert.equal(cdcChunks(data, 0, data.length, true, new Uint32Array(0)), 0);
    const out = new Uint32Array(2);
    assert.equal(cdcChunks(data, 0, data.length, true, out), 2);
    assert.deepEqual([...out], expected.slice(0, 2));
  });

  it('non-final: stops when fewer than CHUNK_MAX bytes remain', () => {
    const data = randomBytes(CHUNK_MAX + 100, 11);
    const out = new Uint32Array(16);
    assert.equal(cdcChunks(data, 0, CHUNK_MAX - 1, false, out), 0);
    assert.equal(cdcChunks(data, 0, 0, false, out), 0);
    assert.equal(cdcChunks(data, 0, 0, true, out), 0);
    // Exactly CHUNK_MAX available is enough to decide one boundary.
    // After that one chunk fewer than CHUNK_MAX bytes remain, so it stops.
    assert.equal(cdcChunks(data, 0, CHUNK_MAX, false, out), 1);
    assert.equal(out[0], cutPoint(data, 0, data.length));
    // Short final data: one chunk of everything when at most CHUNK_MIN.
    assert.equal(cdcChunks(data, 0, CHUNK_MIN, true, out), 1);
    assert.equal(out[0], CHUNK_MIN);
  });

  it('streaming in windows gives the same chunks as the whole buffer', () => {
    const data = Buffer.concat([
      randomBytes(5 * MiB, 99),
      Buffer.alloc(MiB), // a run of zeros: forced CHUNK_MAX cuts
      randomBytes(MiB + 4321, 100),
    ]);
    const expected = chunkLengths(data);
    for (const windows of [[data.length], [64 * 1024], [1, 100_000, 7, CHUNK_MAX], [1 << 20]]) {
      assert.deepEqual(streamed(data, windows), expected, `windows ${windows.join(',')}`);
    }
  });

  it('validates its arguments', () => {
    const data = Buffer.alloc(10);
    const out = new Uint32Array(4);
    assert.throws(() => cdcChunks(data, 0, 11, true, out), RangeError);
    assert.throws(() => cdcChunks(data, 5, 4, true, out), RangeError);
    assert.throws(() => cdcChunks(data, -1, 4, true, out), RangeError);
    assert.throws(() => cdcChunks(data, 0.5, 4, true, out), RangeError);
    assert.throws(() => cdcChunks([1, 2] as unknown as Uint8Array, 0, 2, true, out), TypeError);
    assert.throws(() => cdcChunks(data, 0, 4, true, [0] as unknown as Uint32Array), TypeError);
    assert.throws(() => cdcChunks(data, 0, 4, true, new Int32Array(4) as never), TypeError);
    assert.throws(() => cdcChunks(data, 0, 4, 1 as unknown as boolean, out), TypeError);
    assert.throws(() => cdcInit(new Int32Array(255)), TypeError);
    assert.throws(() => cdcInit(new Uint32Array(256) as unknown as Int32Array), TypeError);
    // Re-initialising with the same table changes nothing.
    cdcInit(cdcGearTable());
    const random = randomBytes(MiB, 5);
    assert.deepEqual(cChunks(random), chunkLengths(random));
  });

  it('works in several workers at once (each with its own gear table)', async () => {
    const source = `
      const { parentPort, workerData } = require('node:worker_threads');
      import(workerData.url).then((m) => {
        const data = new Uint8Array(workerData.data);
        const out = new Uint32Array(1000);
        const n = m.cdcChunks(data, 0, data.length, true, out);
        parentPort.postMessage(Array.from(out.subarray(0, n)));
      });
    `;
    const url = new URL('./posix.js', import.meta.url).href;
    const data = randomBytes(4 * MiB, 1234);
    const results = await Promise.all(
      [1, 2, 3].map(
        () =>
          new Promise((resolve, reject) => {
            const w = new Worker(source, { eval: true, workerData: { url, data } });
            w.once('message', resolve);
            w.once('error', reject);
          }),
      ),
    );
    const expected = chunkLengths(data);
    assert.deepEqual(results, [expected, expected, expected]);
  });
});
