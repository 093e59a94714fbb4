import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import util from 'node:util';
import { Worker } from 'node:worker_threads';

import {
  dataSegments,
  futimensNs,
  majorMinor,
  makeRdev,
  mknod,
  readXattrs,
  setXattr,
  utimensNs,
  type PosixError,
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
