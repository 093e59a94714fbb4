// Typed wrapper around the `reimage_native` addon (native/reimage_native.c): the
// Linux POSIX calls Node's fs lacks, needed to capture and apply OS images
// faithfully — extended attributes, device nodes, nanosecond timestamps, the
// data segments of sparse files, and a one-call-per-directory scan for tree walks.
// Also cdcChunks, a C version of the FastCDC chunker (src/content/chunker.ts).
//
// Paths and xattr names are raw bytes: real trees contain names that are not
// valid UTF-8, so pass Buffers whenever a name came from the filesystem.
// Strings are accepted for convenience and encoded as UTF-8.
//
// All calls are synchronous and safe to use from worker_threads (the addon is
// context-aware and keeps no global state). Failures throw Node-style system
// errors: `.code` ('ENOENT'), `.errno` (negative), `.syscall`, `.path`.
//
// Linux only.

import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gearTable } from '../content/chunker.js';

/** A path or xattr name: raw bytes, or a string encoded as UTF-8. */
export type PathArg = Buffer | string;

/** Kinds of special file `mknod` can create. */
export type NodeType = 'char' | 'block' | 'fifo';

/** The shape of errors thrown by the native calls (like Node's fs errors). */
export interface PosixError extends Error {
  code: string;
  errno: number;
  syscall: string;
  path?: string;
}

interface NativeBinding {
  readXattrs(path: Buffer): Array<[Buffer, Buffer]>;
  setXattr(path: Buffer, name: Buffer, value: Uint8Array): void;
  mknod(path: Buffer, type: NodeType, perm: number, major: number, minor: number): void;
  utimensNs(path: Buffer, atimeNs: bigint, mtimeNs: bigint): void;
  futimensNs(fd: number, atimeNs: bigint, mtimeNs: bigint): void;
  dataSegments(fd: number, size: number): Array<[number, number]>;
  scanDir(dir: Buffer, xattrs: boolean): RawScan;
  cdcInit(gear: Int32Array): void;
  cdcChunks(data: Uint8Array, start: number, end: number, final: boolean, out: Uint32Array): number;
}

/**
 * What the native scanDir returns: the names back to back in one ArrayBuffer,
 * and targets/xattrs/errors as sparse arrays (elements only where there is
 * one). Cheaper to build in C than a Buffer and three elements per entry;
 * scanDir below turns it into a ScanResult.
 */
interface RawScan {
  names: ArrayBuffer;
  nameEnds: Uint32Array;
  stats: BigInt64Array;
  targets: Array<Buffer | undefined>;
  xattrs: Array<Array<[Buffer, Buffer]> | undefined>;
  errors: Array<string | undefined>;
}

const PACKAGE_NAME = 'reimage';
const ADDON_RELATIVE = join('build', 'Release', 'reimage_native.node');

/**
 * Where the addon lives: `$REIMAGE_NATIVE` if set (for code compiled outside the
 * package tree), else `build/Release/reimage_native.node` under the nearest
 * ancestor directory whose package.json is named "reimage". Walking up keeps
 * this independent of where tsc puts the compiled file (dist/src/image/...).
 */
function addonPath(): string {
  const fromEnv = process.env['REIMAGE_NATIVE'];
  if (fromEnv) return fromEnv;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (packageNameAt(dir) === PACKAGE_NAME) return join(dir, ADDON_RELATIVE);
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw new Error(
    `reimage native addon not found: no package.json named "${PACKAGE_NAME}" above ` +
      `${dirname(fileURLToPath(import.meta.url))}; set REIMAGE_NATIVE to the .node file`,
  );
}

function packageNameAt(dir: string): string | undefined {
  let text: string;
  try {
    text = readFileSync(join(dir, 'package.json'), 'utf8');
  } catch {
    return undefined; // no package.json here (or unreadable): keep walking
  }
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed === 'object' && parsed !== null && 'name' in parsed) {
      return typeof parsed.name === 'string' ? parsed.name : undefined;
    }
  } catch {
    // A malformed package.json is not ours; keep walking.
  }
  return undefined;
}

// Loaded on first use, so importing this module (e.g. for majorMinor) does not
// require a built addon. Module state is per thread, which is what we want.
let binding: NativeBinding | undefined;

function native(): NativeBinding {
  if (binding === undefined) {
    const path = addonPath();
    try {
      binding = createRequire(import.meta.url)(path) as NativeBinding;
    } catch (err) {
      throw new Error(`cannot load reimage native addon ${path} (run \`npx node-gyp rebuild\`)`, {
        cause: err,
      });
    }
  }
  return binding;
}

function bytes(value: PathArg, what: string): Buffer {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  if (Buffer.isBuffer(value)) return value;
  throw new TypeError(`${what} must be a Buffer or string`);
}

function checkInt(value: number, what: string, min: number, max: number): void {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${what} must be an integer in [${min}, ${max}], got ${value}`);
  }
}

function checkBigint(value: bigint, what: string): void {
  if (typeof value !== 'bigint') throw new TypeError(`${what} must be a bigint`);
}

const INT32_MAX = 2 ** 31 - 1;
const UINT32_MAX = 2 ** 32 - 1;

/**
 * All extended attributes of `path` without following a symlink (llistxattr +
 * lgetxattr, in one native call), sorted by raw name bytes. Returns [] when the
 * filesystem does not support xattrs; attributes removed concurrently are
 * skipped.
 */
export function readXattrs(path: PathArg): Array<[name: Buffer, value: Buffer]> {
  return native().readXattrs(bytes(path, 'path'));
}

/** Sets one extended attribute without following a symlink (lsetxattr, flags 0). */
export function setXattr(path: PathArg, name: PathArg, value: Uint8Array): void {
  if (!(value instanceof Uint8Array)) throw new TypeError('value must be a Buffer');
  const buf = Buffer.isBuffer(value)
    ? value
    : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  native().setXattr(bytes(path, 'path'), bytes(name, 'name'), buf);
}

/**
 * Creates a device node or FIFO. `perm` holds permission bits only (07777); the
 * process umask applies as with mknod(2), so chmod afterwards for exact bits.
 * `major`/`minor` are ignored for a FIFO. Linux stores 12-bit majors and
 * 20-bit minors; larger numbers fail with EINVAL rather than being truncated.
 */
export function mknod(
  path: PathArg,
  type: NodeType,
  perm: number,
  major: number = 0,
  minor: number = 0,
): void {
  if (type !== 'char' && type !== 'block' && type !== 'fifo') {
    throw new TypeError(`type must be 'char', 'block' or 'fifo', got ${String(type)}`);
  }
  checkInt(perm, 'perm', 0, 0o7777);
  checkInt(major, 'major', 0, UINT32_MAX);
  checkInt(minor, 'minor', 0, UINT32_MAX);
  native().mknod(bytes(path, 'path'), type, perm, major, minor);
}

/**
 * Sets access and modification times with exact nanoseconds since the epoch
 * (may be negative), on the link itself if `path` is a symlink
 * (utimensat with AT_SYMLINK_NOFOLLOW). Node's fs.lutimes rounds through a double.
 */
export function utimensNs(path: PathArg, atimeNs: bigint, mtimeNs: bigint): void {
  checkBigint(atimeNs, 'atimeNs');
  checkBigint(mtimeNs, 'mtimeNs');
  native().utimensNs(bytes(path, 'path'), atimeNs, mtimeNs);
}

/** Like utimensNs, on an open file descriptor (futimens). */
export function futimensNs(fd: number, atimeNs: bigint, mtimeNs: bigint): void {
  checkInt(fd, 'fd', 0, INT32_MAX);
  checkBigint(atimeNs, 'atimeNs');
  checkBigint(mtimeNs, 'mtimeNs');
  native().futimensNs(fd, atimeNs, mtimeNs);
}

/**
 * The data regions of the first `size` bytes of an open regular file, as
 * sorted, non-overlapping [offset, length] pairs; everything else is a hole
 * (reads as zeros). Uses lseek SEEK_DATA/SEEK_HOLE; where SEEK_DATA is not
 * supported the whole range is one segment. Filesystems report allocation at
 * block granularity, so segments may include some zero bytes. The fd's file
 * offset is restored before returning.
 */
export function dataSegments(fd: number, size: number): Array<[offset: number, length: number]> {
  checkInt(fd, 'fd', 0, INT32_MAX);
  checkInt(size, 'size', 0, Number.MAX_SAFE_INTEGER);
  return native().dataSegments(fd, size);
}

const MASK_12 = 0xfffn;
const MASK_8 = 0xffn;
const UINT64_MAX = (1n << 64n) - 1n;

/**
 * Splits a device number (stat's rdev/dev) into [major, minor] using glibc's
 * 64-bit dev_t encoding. A number rdev is exact only below 2^53; pass the
 * bigint from `stat(p, { bigint: true })` to be safe.
 */
export function majorMinor(rdev: bigint | number): [major: number, minor: number] {
  let dev: bigint;
  if (typeof rdev === 'bigint') {
    dev = rdev;
  } else {
    checkInt(rdev, 'rdev', 0, Number.MAX_SAFE_INTEGER);
    dev = BigInt(rdev);
  }
  if (dev < 0n || dev > UINT64_MAX) throw new RangeError(`rdev out of range: ${dev}`);
  const major = ((dev >> 32n) & 0xfffff000n) | ((dev >> 8n) & MASK_12);
  const minor = ((dev >> 12n) & 0xffffff00n) | (dev & MASK_8);
  return [Number(major), Number(minor)];
}

/** Inverse of majorMinor: glibc's makedev(major, minor) as a 64-bit bigint. */
export function makeRdev(major: number, minor: number): bigint {
  checkInt(major, 'major', 0, UINT32_MAX);
  checkInt(minor, 'minor', 0, UINT32_MAX);
  const ma = BigInt(major);
  const mi = BigInt(minor);
  return (
    ((ma & 0xfffff000n) << 32n) |
    ((ma & MASK_12) << 8n) |
    ((mi & 0xffffff00n) << 12n) |
    (mi & MASK_8)
  );
}

/**
 * Indexes of an entry's slots in `ScanResult.stats` (entry `i`, field `f` is
 * `stats[i * STAT_FIELDS + ST.f]`). The values are the lstat fields Node's
 * `BigIntStats` has, stored the same way (int64, so a dev/ino >= 2^63 reads
 * negative in both); `mtimeNs`/`ctimeNs` are whole nanoseconds since the epoch.
 * Must match the enum in native/reimage_native.c.
 */
export const ST = {
  mode: 0,
  uid: 1,
  gid: 2,
  nlink: 3,
  size: 4,
  blocks: 5,
  ino: 6,
  dev: 7,
  rdev: 8,
  mtimeNs: 9,
  ctimeNs: 10,
} as const;

/** Slots per entry in `ScanResult.stats`. */
export const STAT_FIELDS = 11;

export interface ScanOptions {
  /** Read each entry's extended attributes (default true). */
  xattrs?: boolean;
}

/**
 * One directory's entries, sorted by raw name bytes (Buffer.compare order).
 * Parallel arrays: index `i` of each describes `names[i]`; they are dense (no
 * holes), with `undefined` where there is nothing.
 */
export interface ScanResult {
  /** Entry names as raw bytes ("." and ".." excluded). */
  names: Buffer[];
  /** `STAT_FIELDS` slots per entry, indexed by `ST`; all 0n when lstat failed. */
  stats: BigInt64Array;
  /** Symlink targets as raw bytes; undefined for other types (or on error). */
  targets: Array<Buffer | undefined>;
  /**
   * Extended attributes as readXattrs returns them, undefined when the entry
   * has none (or xattrs were not requested, or on error).
   */
  xattrs: Array<Array<[name: Buffer, value: Buffer]> | undefined>;
  /**
   * The errno code ('ENOENT', 'EACCES', ...) of the first per-entry call that
   * failed, else undefined. If lstat failed (e.g. 'ENOENT': the entry vanished
   * after readdir) the entry's stats are all 0n — `mode` 0n is no file type.
   * Otherwise the stats are valid and the error comes from readlink or the
   * xattr calls ('ENAMETOOLONG' when "dir/name" exceeds PATH_MAX), or is
   * 'EOVERFLOW' when a timestamp lies outside int64 nanoseconds (1677–2262;
   * the slot is then clamped).
   */
  errors: Array<string | undefined>;
}

/**
 * Reads a whole directory in one native call, for tree walks: readdir, then per
 * entry lstat (fstatat relative to the directory), readlink for symlinks and,
 * unless `xattrs: false`, the extended attributes (as `readXattrs`, on
 * "dir/name"). Throws like the other calls if the directory cannot be opened
 * (syscall 'opendir') or read ('readdir'); problems with single entries are
 * reported in `errors` instead.
 *
 * The names are views into one shared ArrayBuffer per call (like Buffers from
 * Node's pool): keeping any of them keeps all of that directory's name bytes.
 */
export function scanDir(dir: PathArg, opts: ScanOptions = {}): ScanResult {
  const xattrs = opts.xattrs ?? true;
  if (typeof xattrs !== 'boolean') throw new TypeError('opts.xattrs must be a boolean');
  const raw = native().scanDir(bytes(dir, 'path'), xattrs);
  const ends = raw.nameEnds;
  const names = new Array<Buffer>(ends.length);
  let start = 0;
  for (let i = 0; i < ends.length; i++) {
    const end = ends[i]!;
    names[i] = Buffer.from(raw.names, start, end - start);
    start = end;
  }
  // Array.from turns the holes into undefined: dense arrays, so map/forEach
  // visit every entry.
  return {
    names,
    stats: raw.stats,
    targets: Array.from(raw.targets),
    xattrs: Array.from(raw.xattrs),
    errors: Array.from(raw.errors),
  };
}

// ---------------------------------------------------------------------------
// FastCDC in C

/**
 * The FastCDC gear table of image format v1, computed exactly as in
 * src/content/chunker.ts (which owns the format; the equivalence test in
 * posix.test.ts guards this copy): entry i is the first 4 bytes, little-endian
 * int32, of SHA-256("reimage-fastcdc-gear-v1:" + i).
 */
export function cdcGearTable(): Int32Array {
  // The table is part of the native format: one definition, in the chunker.
  return gearTable();
}

// Whether this thread's addon instance has its gear table (see cdcInit).
let cdcReady = false;

/**
 * Hands a gear table to the addon. The table is copied into per-addon-instance
 * data (Node-API instance data), so every thread/worker has its own copy.
 * cdcChunks calls this itself with `cdcGearTable()` on first use, so callers
 * never need to; it is exported for tests and for experiments with other tables
 * (which change every chunk boundary). `gear` must be an Int32Array of 256.
 */
export function cdcInit(gear: Int32Array): void {
  if (!(gear instanceof Int32Array) || gear.length !== 256) {
    throw new TypeError('gear must be an Int32Array of 256 entries');
  }
  native().cdcInit(gear);
  cdcReady = true;
}

/**
 * FastCDC chunking in C, with exactly the boundaries of `cutPoint` in
 * src/content/chunker.ts (CHUNK_MIN/AVG/MAX 16/64/256 KiB, same gear table and
 * masks), several times faster.
 *
 * Cuts consecutive chunks of `data` starting at `start`, writes their lengths
 * to `out` and returns how many it wrote. It stops
 * - when `out` is full,
 * - at `end` when `final` is true (the last chunk may be short), or
 * - when `final` is false, as soon as fewer than CHUNK_MAX (256 KiB) bytes
 *   remain before `end`: the next boundary may depend on bytes not supplied
 *   yet, so the caller keeps those bytes and calls again with more data.
 * The caller sums the returned lengths to learn where it stopped. Feeding a
 * stream this way (final only for the last window) gives the same chunks as
 * chunking the whole data at once.
 */
export function cdcChunks(
  data: Uint8Array,
  start: number,
  end: number,
  final: boolean,
  out: Uint32Array,
): number {
  if (!(data instanceof Uint8Array)) throw new TypeError('data must be a Uint8Array');
  if (!(out instanceof Uint32Array)) throw new TypeError('out must be a Uint32Array');
  if (typeof final !== 'boolean') throw new TypeError('final must be a boolean');
  checkInt(end, 'end', 0, data.length);
  checkInt(start, 'start', 0, end);
  if (!cdcReady) cdcInit(cdcGearTable());
  return native().cdcChunks(data, start, end, final, out);
}
