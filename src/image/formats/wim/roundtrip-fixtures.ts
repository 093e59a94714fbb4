/**
 * Shared by the wim and squashfs tests (not a test file itself): a small source tree with one
 * of every attribute a format may or may not keep, and a comparison of two tree-entry streams
 * that honours a format's capabilities.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { FormatCapabilities, TreeEntry } from '../api.js';
import { mknod, setXattr, utimensNs } from '../../posix.js';
import { showPath, type Entry } from '../../manifest.js';

export const asRoot = process.getuid?.() === 0;
const MiB = 1024 * 1024;

/** A name that is not valid UTF-8. */
export const RAW_NAME = Buffer.from([0x62, 0x61, 0x64, 0x2d, 0xff, 0xfe, 0x2e, 0x62, 0x69, 0x6e]);

export interface SourceOptions {
  /** include a file whose name is not valid UTF-8 (default true) */
  rawName?: boolean;
  /** include a symlink with an absolute target (default true) */
  absoluteLink?: boolean;
}

/**
 * Builds the source tree in `root` (created): owners, setuid/setgid/sticky, xattrs (user.*,
 * and as root security.capability and trusted.*), hard links, devices (root), a FIFO,
 * nanosecond mtimes, a sparse file, symlinks, an empty file and directory, and a non-UTF-8
 * name. Returns the relative paths of what it made that only root can make.
 */
export function makeSourceTree(root: string, opts: SourceOptions = {}): void {
  const p = (rel: string | Buffer) =>
    Buffer.concat([Buffer.from(root + '/'), typeof rel === 'string' ? Buffer.from(rel) : rel]);
  fs.mkdirSync(root);
  fs.mkdirSync(p('etc'));
  fs.mkdirSync(p('etc/empty.d'));
  fs.writeFileSync(p('etc/hostname'), 'reimage-test\n');
  fs.writeFileSync(p('etc/shadow'), 'root:*:19000::::::\n', { mode: 0o640 });
  fs.chmodSync(p('etc/shadow'), 0o640);
  fs.mkdirSync(p('usr/bin'), { recursive: true });
  fs.writeFileSync(p('usr/bin/su'), Buffer.alloc(3000, 0x5a));
  fs.chmodSync(p('usr/bin/su'), 0o4755);
  fs.writeFileSync(p('usr/bin/wall'), 'wall');
  fs.chmodSync(p('usr/bin/wall'), 0o2711);
  fs.writeFileSync(p('usr/bin/ping'), 'ping');
  setXattr(p('usr/bin/ping'), 'user.comment', Buffer.from([0, 1, 0xff]));
  setXattr(p('usr/bin/ping'), 'user.empty', Buffer.alloc(0));
  setXattr(p('etc'), 'user.dir', Buffer.from('on a directory'));
  fs.mkdirSync(p('tmp'));
  fs.chmodSync(p('tmp'), 0o1777);
  fs.writeFileSync(p('usr/bin/python3.11'), 'interpreter');
  fs.linkSync(p('usr/bin/python3.11'), p('usr/bin/python3'));
  fs.linkSync(p('usr/bin/python3.11'), p('etc/python-link'));
  fs.symlinkSync('python3', p('usr/bin/python'));
  if (opts.absoluteLink ?? true) fs.symlinkSync('/etc/hostname', p('etc/hostname.abs'));
  fs.writeFileSync(p('empty'), '');
  fs.writeFileSync(p('text with spaces & :*?\\'), 'windows-hostile name');
  fs.writeFileSync(p('ünïcödé'), 'utf-8 name');
  mknod(p('tmp/fifo'), 'fifo', 0o640);
  fs.chmodSync(p('tmp/fifo'), 0o640);
  // Sparse: 4 KiB of data at 0, 10 MiB and the end of 24 MiB.
  const fd = fs.openSync(p('disk.img'), 'w');
  fs.ftruncateSync(fd, 24 * MiB);
  for (const [off, byte] of [
    [0, 1],
    [10 * MiB, 2],
    [24 * MiB - 4096, 3],
  ] as const) {
    fs.writeSync(fd, Buffer.alloc(4096, byte), 0, 4096, off);
  }
  fs.closeSync(fd);
  // Dense, with a MiB of zeros inside: must not come back sparse.
  fs.writeFileSync(
    p('zeros.bin'),
    Buffer.concat([Buffer.alloc(128 * 1024, 9), Buffer.alloc(MiB), Buffer.alloc(128 * 1024, 9)]),
  );
  if (opts.rawName ?? true) fs.writeFileSync(p(RAW_NAME), 'raw name');
  if (asRoot) {
    fs.mkdirSync(p('dev'));
    mknod(p('dev/null'), 'char', 0o666, 1, 3);
    fs.chmodSync(p('dev/null'), 0o666);
    mknod(p('dev/loop200'), 'block', 0o660, 7, 200);
    fs.chmodSync(p('dev/loop200'), 0o660);
    fs.mkdirSync(p('home/user'), { recursive: true });
    fs.writeFileSync(p('home/user/notes'), 'mine');
    fs.chownSync(p('home/user'), 1000, 1000);
    fs.chownSync(p('home/user/notes'), 1000, 1001);
    fs.symlinkSync('notes', p('home/user/link'));
    fs.lchownSync(p('home/user/link'), 1234, 5678);
    fs.chownSync(p('etc/shadow'), 0, 42);
    setXattr(
      p('usr/bin/ping'),
      'security.capability',
      Buffer.from('0100000200200000000000000000000000000000', 'hex'),
    );
    setXattr(p('usr/bin/ping'), 'trusted.reimage', Buffer.from('trusted'));
  }
  // Nanosecond mtimes everywhere (symlinks too), directories last (children change them).
  let t = 1_700_000_000_123_456_789n;
  const all: Buffer[] = [];
  const walk = (rel: Buffer) => {
    for (const name of fs.readdirSync(p(rel), { encoding: 'buffer' })) {
      const child = rel.length ? Buffer.concat([rel, Buffer.from('/'), name]) : name;
      if (fs.lstatSync(p(child)).isDirectory()) walk(child);
      all.push(child);
    }
  };
  walk(Buffer.alloc(0));
  for (const rel of all) {
    utimensNs(p(rel), t, t);
    t += 86_400_000_000_001n;
  }
  utimensNs(root, t, t);
}

/** What is compared of an entry: everything, as strings, data as a hash. */
export interface Shown {
  path: string;
  type: Entry['type'];
  mode: string;
  owner: string;
  mtimeNs: bigint;
  size: number;
  target?: string;
  rdev?: string;
  xattrs: string;
  segments?: string;
  data?: string;
}

/** Reads a stream fully (consuming each file's data before the next entry), by path. */
export async function collect(entries: AsyncIterable<TreeEntry>): Promise<Map<string, Shown>> {
  const out = new Map<string, Shown>();
  for await (const te of entries) {
    const e = te.entry;
    const s: Shown = {
      path: showPath(e.path),
      type: e.type,
      mode: e.mode.toString(8),
      owner: `${e.uid}:${e.gid}`,
      mtimeNs: e.mtimeNs,
      size: e.size,
      xattrs: e.xattrs.map(([k, v]) => `${k.toString('latin1')}=${v.toString('hex')}`).join(' '),
    };
    if (e.target) s.target = e.target.toString('latin1');
    if (e.type === 'char' || e.type === 'block') s.rdev = `${e.major}:${e.minor}`;
    if (e.segments) s.segments = JSON.stringify(e.segments);
    if (te.data) {
      const h = createHash('sha256');
      let n = 0;
      for await (const piece of te.data()) {
        h.update(piece);
        n += piece.length;
      }
      s.data = `${n}:${h.digest('hex')}`;
    }
    assert.ok(!out.has(s.path), `${s.path} twice in the stream`);
    out.set(s.path, s);
  }
  return out;
}

export interface CompareOptions {
  caps: FormatCapabilities;
  /** what mtimes are truncated to when caps.mtimeNs is false (ns): 1e9 for seconds */
  mtimeUnitNs: bigint;
  /** the root's mtime and mode are not compared (a tool-made file may set them) */
  ignoreRootMeta?: boolean;
  /** mode bits compared (default all): a tool that drops setuid/setgid when not root */
  modeMask?: number;
  /** paths expected to be missing from `actual` (e.g. names the format cannot hold) */
  missing?: string[];
}

/**
 * Asserts that `actual` (read back through a format) is `expected` as far as the format's
 * capabilities go: what a capability says is kept must be equal, what it says is lost must be
 * lost in the documented way (mtimes truncated, owners ignored, ...).
 */
export function assertSameTree(
  expected: Map<string, Shown>,
  actual: Map<string, Shown>,
  opts: CompareOptions,
): void {
  const { caps } = opts;
  const missing = new Set(opts.missing ?? []);
  const problems: string[] = [];
  for (const [key, want] of expected) {
    if (missing.has(key)) {
      if (actual.has(key)) problems.push(`${key}: expected to be left out, but is there`);
      continue;
    }
    const got = actual.get(key);
    if (!got) {
      problems.push(`${key}: missing`);
      continue;
    }
    const w: Partial<Shown> = { ...want };
    const g: Partial<Shown> = { ...got };
    const drop = (field: keyof Shown) => {
      delete w[field];
      delete g[field];
    };
    if (!caps.owners) drop('owner');
    if (!caps.xattrs) drop('xattrs');
    if (!caps.sparse) drop('segments');
    if (opts.modeMask !== undefined && w.mode !== undefined) {
      w.mode = (parseInt(w.mode, 8) & opts.modeMask).toString(8);
    }
    if (!caps.mtimeNs && w.mtimeNs !== undefined) w.mtimeNs -= w.mtimeNs % opts.mtimeUnitNs;
    if (key === '/' && opts.ignoreRootMeta) {
      drop('mtimeNs');
      drop('mode');
    }
    if (!caps.hardlinks && want.type === 'hardlink') continue; // comes back as a copy
    for (const field of new Set([...Object.keys(w), ...Object.keys(g)]) as Set<keyof Shown>) {
      if (w[field] !== g[field]) {
        problems.push(`${key}: ${field} ${String(w[field])} -> ${String(g[field])}`);
      }
    }
  }
  for (const key of actual.keys()) if (!expected.has(key)) problems.push(`${key}: unexpected`);
  assert.deepEqual(problems, [], problems.join('\n'));
}

/** Entries of a stream that each pass `keep`. */
export async function* filterTree(
  entries: AsyncIterable<TreeEntry>,
  keep: (e: Entry) => boolean,
): AsyncGenerator<TreeEntry> {
  for await (const te of entries) if (keep(te.entry)) yield te;
}

/** The names of what is left in `dir` whose names start with `prefix`. */
export function leftovers(dir: string, prefix: string): string[] {
  return fs.readdirSync(dir).filter((n) => n.startsWith(prefix));
}

/** A path under `dir`. */
export function under(dir: string, ...rel: string[]): string {
  return path.join(dir, ...rel);
}
