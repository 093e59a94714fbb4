import { ReimageError } from '../../../../errors.js';
import {
  comparePaths,
  parentOf,
  showPath,
  type Entry,
  type EntryType,
  type Manifest,
} from '../../../manifest.js';

/**
 * Native format v1, canonical tree manifest. The encoding is unique for a given tree
 * (entries in component order, xattrs by name, minimal varints, no optional padding), so
 * the image id — SHA-256 of these bytes — depends on the tree alone. The decoder refuses
 * anything a writer could not have produced: non-minimal numbers, disorder, duplicates,
 * paths that climb out of the image, entries below a symlink, dangling or forward hard
 * links, and chunk lists that disagree with sizes.
 *
 *   magic "RIMGMF01"  varint(count)  entry*
 *   entry := varint(pathLen) path u8(type)
 *            [type != hardlink: varint(mode) varint(uid) varint(gid) zigzag(mtimeSec) varint(mtimeNsec)
 *                               varint(nXattr) (varint(len) name varint(len) value)*]
 *            file:     varint(size) varint(0 | nSeg+1) (varint(off) varint(len))* varint(nChunk) (hash[32] varint(len))*
 *            symlink:  varint(len) target
 *            hardlink: varint(len) path-of-file
 *            char/block: varint(major) varint(minor)
 */
export const MANIFEST_MAGIC = Buffer.from('RIMGMF01');

const TYPE_CODES: Record<EntryType, number> = {
  dir: 1,
  file: 2,
  symlink: 3,
  hardlink: 4,
  fifo: 5,
  char: 6,
  block: 7,
};
const CODE_TYPES: Array<EntryType | undefined> = [];
for (const [t, c] of Object.entries(TYPE_CODES)) CODE_TYPES[c] = t as EntryType;

/** Limits that keep a hostile manifest from exhausting memory. */
const MAX_PATH = 4096;
const MAX_XATTR_VALUE = 64 * 1024;
const MAX_XATTRS = 1024;
const MAX_CHUNK = 16 * 1024 * 1024;

class Writer {
  buf = Buffer.allocUnsafe(1 << 16);
  pos = 0;

  private room(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.allocUnsafe(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  varint(v: number): void {
    this.room(10);
    while (v >= 0x80) {
      this.buf[this.pos++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.pos++] = v;
  }

  zigzag(v: number): void {
    this.varint(v >= 0 ? v * 2 : -v * 2 - 1);
  }

  bytes(b: Uint8Array): void {
    this.varint(b.length);
    this.raw(b);
  }

  raw(b: Uint8Array): void {
    this.room(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }

  u8(v: number): void {
    this.room(1);
    this.buf[this.pos++] = v;
  }

  done(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

function splitMtime(ns: bigint): [number, number] {
  let sec = ns / 1_000_000_000n;
  let nsec = ns % 1_000_000_000n;
  if (nsec < 0n) {
    nsec += 1_000_000_000n;
    sec -= 1n;
  }
  return [Number(sec), Number(nsec)];
}

export function encodeManifest(m: Manifest): Buffer {
  const w = new Writer();
  w.raw(MANIFEST_MAGIC);
  w.varint(m.entries.length);
  for (const e of m.entries) {
    w.bytes(e.path);
    w.u8(TYPE_CODES[e.type]);
    if (e.type === 'hardlink') {
      w.bytes(e.target!);
      continue;
    }
    w.varint(e.mode);
    w.varint(e.uid);
    w.varint(e.gid);
    const [sec, nsec] = splitMtime(e.mtimeNs);
    w.zigzag(sec);
    w.varint(nsec);
    w.varint(e.xattrs.length);
    for (const [name, value] of e.xattrs) {
      w.bytes(name);
      w.bytes(value);
    }
    switch (e.type) {
      case 'file': {
        w.varint(e.size);
        // 0: the whole file is data; n + 1: sparse with n data regions (n may be 0: all hole).
        const segs = e.segments ?? [];
        w.varint(e.segments ? segs.length + 1 : 0);
        for (const [off, len] of segs) {
          w.varint(off);
          w.varint(len);
        }
        const lengths = e.lengths ?? [];
        w.varint(lengths.length);
        for (let i = 0; i < lengths.length; i++) {
          w.raw(e.chunks!.subarray(i * 32, i * 32 + 32));
          w.varint(lengths[i]!);
        }
        break;
      }
      case 'symlink':
        w.bytes(e.target!);
        break;
      case 'char':
      case 'block':
        w.varint(e.major ?? 0);
        w.varint(e.minor ?? 0);
        break;
      default:
        break;
    }
  }
  return Buffer.from(w.done());
}

class Reader {
  pos = 0;
  constructor(private readonly buf: Buffer) {}

  fail(why: string): never {
    throw new ReimageError('MANIFEST_INVALID', `manifest is invalid at byte ${this.pos}: ${why}`);
  }

  varint(): number {
    let v = 0;
    let mul = 1;
    for (let i = 0; ; i++) {
      if (this.pos >= this.buf.length) this.fail('truncated');
      if (i >= 8) this.fail('number too large');
      const b = this.buf[this.pos++]!;
      v += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        if (b === 0 && i > 0) this.fail('non-minimal number');
        if (!Number.isSafeInteger(v)) this.fail('number too large');
        return v;
      }
      mul *= 0x80;
    }
  }

  zigzag(): number {
    const v = this.varint();
    return v % 2 === 0 ? v / 2 : -(v + 1) / 2;
  }

  bytes(max: number, what: string): Buffer {
    const n = this.varint();
    if (n > max) this.fail(`${what} longer than ${max} bytes`);
    return this.raw(n);
  }

  raw(n: number): Buffer {
    if (this.pos + n > this.buf.length) this.fail('truncated');
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  u8(): number {
    if (this.pos >= this.buf.length) this.fail('truncated');
    return this.buf[this.pos++]!;
  }

  get done(): boolean {
    return this.pos === this.buf.length;
  }
}

/** Why a path cannot be in an image (absolute, empty/./.. components, NUL), or undefined. */
export function checkPath(path: Buffer, isRoot: boolean, what: string): string | undefined {
  if (isRoot)
    return path.length === 0 ? undefined : 'the first entry must be the root (empty path)';
  if (path.length === 0) return `${what} is empty`;
  if (path[0] === 0x2f) return `${what} is absolute`;
  if (path.includes(0)) return `${what} contains a NUL byte`;
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i === path.length || path[i] === 0x2f) {
      const len = i - start;
      if (len === 0) return `${what} has an empty component`;
      if (len === 1 && path[start] === 0x2e) return `${what} has a '.' component`;
      if (len === 2 && path[start] === 0x2e && path[start + 1] === 0x2e)
        return `${what} has a '..' component`;
      start = i + 1;
    }
  }
  return undefined;
}

/** Decodes and validates a canonical manifest. Throws MANIFEST_INVALID naming the entry. */
export function decodeManifest(buf: Buffer): Manifest {
  const r = new Reader(buf);
  if (!r.raw(MANIFEST_MAGIC.length).equals(MANIFEST_MAGIC)) r.fail('not a reimage v1 manifest');
  const count = r.varint();
  if (count < 1 || count > buf.length) r.fail('bad entry count');
  const entries: Entry[] = [];
  // Kinds of earlier entries, by path, to check parents and hard-link targets.
  const kinds = new Map<string, EntryType>();
  let prev: Buffer | undefined;
  for (let i = 0; i < count; i++) {
    const path = Buffer.from(r.bytes(MAX_PATH, 'path'));
    const bad: (why: string) => never = (why) => {
      throw new ReimageError(
        'MANIFEST_INVALID',
        `manifest entry ${JSON.stringify(showPath(path))} is refused: ${why}`,
        {
          details: { path: showPath(path), entry: i },
        },
      );
    };
    const pathProblem = checkPath(path, i === 0, 'path');
    if (pathProblem) bad(pathProblem);
    if (prev && comparePaths(prev, path) >= 0) {
      bad(comparePaths(prev, path) === 0 ? 'duplicate path' : 'entries are out of order');
    }
    prev = path;
    if (i > 0) {
      const parentKind = kinds.get(parentOf(path).toString('latin1'));
      if (parentKind === undefined) bad('its parent directory is not in the image');
      if (parentKind !== 'dir') bad(`it lies below a ${parentKind}, not a directory`);
    }
    const type = CODE_TYPES[r.u8()];
    if (!type) bad('unknown entry type');
    if (i === 0 && type !== 'dir') bad('the root must be a directory');
    const e: Entry = { path, type, mode: 0, uid: 0, gid: 0, mtimeNs: 0n, size: 0, xattrs: [] };
    if (type === 'hardlink') {
      const target = Buffer.from(r.bytes(MAX_PATH, 'hard link target'));
      const tp = checkPath(target, false, 'hard link target');
      if (tp) bad(tp);
      const tk = kinds.get(target.toString('latin1'));
      if (tk === undefined) bad('hard link to a path that is not an earlier entry of the image');
      if (tk !== 'file') bad(`hard link to a ${tk}; only regular files can be hard linked`);
      e.target = target;
    } else {
      e.mode = r.varint();
      if (e.mode > 0o7777) bad('mode has bits beyond 07777');
      e.uid = r.varint();
      e.gid = r.varint();
      if (e.uid > 0xffffffff || e.gid > 0xffffffff) bad('owner out of range');
      const sec = r.zigzag();
      const nsec = r.varint();
      if (nsec >= 1e9) bad('nanoseconds out of range');
      e.mtimeNs = BigInt(sec) * 1_000_000_000n + BigInt(nsec);
      const nx = r.varint();
      if (nx > MAX_XATTRS) bad('too many xattrs');
      let prevName: Buffer | undefined;
      for (let x = 0; x < nx; x++) {
        const name = Buffer.from(r.bytes(255, 'xattr name'));
        const value = Buffer.from(r.bytes(MAX_XATTR_VALUE, 'xattr value'));
        if (name.length === 0 || name.includes(0)) bad('bad xattr name');
        if (prevName && Buffer.compare(prevName, name) >= 0)
          bad('xattrs out of order or duplicated');
        prevName = name;
        e.xattrs.push([name, value]);
      }
      switch (type) {
        case 'file': {
          e.size = r.varint();
          const sparse = r.varint();
          let expected = e.size;
          if (sparse > 0) {
            const nseg = sparse - 1;
            if (nseg > buf.length) bad('bad segment count');
            e.segments = [];
            expected = 0;
            let end = 0;
            for (let s = 0; s < nseg; s++) {
              const off = r.varint();
              const len = r.varint();
              // Strictly apart: adjacent regions would be one region written two ways.
              if (len === 0 || (s > 0 && off <= end) || off + len > e.size)
                bad('sparse regions overlap, touch, or exceed the size');
              e.segments.push([off, len]);
              end = off + len;
              expected += len;
            }
          }
          const nchunk = r.varint();
          if (nchunk * 33 > buf.length) bad('bad chunk count');
          const chunks = Buffer.allocUnsafe(nchunk * 32);
          const lengths: number[] = new Array<number>(nchunk);
          let total = 0;
          for (let c = 0; c < nchunk; c++) {
            r.raw(32).copy(chunks, c * 32);
            const len = r.varint();
            if (len === 0 || len > MAX_CHUNK) bad('chunk length out of range');
            lengths[c] = len;
            total += len;
          }
          if (total !== expected)
            bad(`its chunks hold ${total} bytes but its size says ${expected}`);
          if (e.segments) {
            // Each region is chunked on its own: no chunk may cross from one region into the next.
            let seg = 0;
            let left = e.segments[0]?.[1] ?? 0;
            for (const len of lengths) {
              while (left === 0 && seg + 1 < e.segments.length) left = e.segments[++seg]![1];
              if (len > left) bad('a chunk crosses the end of a sparse region');
              left -= len;
            }
          }
          e.chunks = chunks;
          e.lengths = lengths;
          break;
        }
        case 'symlink': {
          const target = Buffer.from(r.bytes(MAX_PATH, 'symlink target'));
          if (target.length === 0 || target.includes(0)) bad('bad symlink target');
          e.target = target;
          break;
        }
        case 'char':
        case 'block':
          e.major = r.varint();
          e.minor = r.varint();
          if (e.major > 0xffffffff || e.minor > 0xffffffff) bad('device number out of range');
          break;
        default:
          break;
      }
    }
    kinds.set(path.toString('latin1'), type);
    entries.push(e);
  }
  if (!r.done) r.fail('trailing bytes');
  return { entries };
}
