import { createReadStream, createWriteStream } from 'node:fs';
import { open, unlink } from 'node:fs/promises';
import type { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { constants as zlibConstants, createGunzip, createGzip, gunzipSync } from 'node:zlib';
import tarStream from 'tar-stream';
import { CompressStream, DecompressStream } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
import { ReimageError } from '../../../errors.js';
import { hardlinkEntry, showPath, type Entry } from '../../manifest.js';
import type { FormatCapabilities, ImageFormat, ReadOptions, TreeEntry } from '../api.js';

/**
 * Tar archives (POSIX/PAX), plain, gzip- or zstd-compressed, through `tar-stream`.
 *
 * Reading understands ustar, PAX (path, linkpath, size, uid, gid, mtime with nanoseconds,
 * `SCHILY.xattr.*`, libarchive's base64 `LIBARCHIVE.xattr.*`, `SCHILY.devmajor/devminor`,
 * global headers) and GNU (long names, base-256 numbers, PAX sparse files 0.0/0.1/1.0).
 * Names are raw bytes. Hard links become `hardlink` entries whose target is the linked name;
 * entry types tar-stream does not know are skipped when they hold no data (a GNU volume
 * label) and refused when they do: POSIX would read them as regular files, but the one met in
 * practice is GNU's old-format sparse file ('S', `tar -cS` without `--format=pax`), whose map
 * tar-stream does not expose, and reading only its stored regions would silently make a
 * wrong file. Old v7 archives (no ustar magic) are read too.
 *
 * Streaming: each file's `data()` yields the archive's bytes as they are read, so it must be
 * consumed before the next entry is requested; data not read by then is skipped, and calling
 * `data()` afterwards throws.
 *
 * Writing makes a PAX archive GNU tar reads: bare relative names ("a/b"; directories end in
 * "/"), the root as "./" (so an extraction takes its mode, owner and mtime), PAX records where
 * ustar cannot hold a value (names that are long or not ASCII, mtimes with nanoseconds or
 * outside 1970..2038, large ids, sizes and device numbers) and `SCHILY.xattr.NAME` records
 * with the raw value bytes (GNU tar's `--xattrs`). Hard links are `link` entries naming the
 * earlier file; sparse files are written dense (holes as zeros). No user/group names are
 * written, so GNU tar restores the numeric owners.
 *
 * tar-stream decodes PAX values as UTF-8 strings and encodes them from strings, which
 * corrupts binary values (a `security.capability` xattr, a name that is not UTF-8). So this
 * module taps two internals of tar-stream 3 to see and make the raw PAX bytes itself:
 * `Extract#_decodeLongHeader` (to keep the raw record block next to the decoded one) and
 * `Pack#_encode` (to put a raw PAX block before a header). tar-stream still does all header
 * encoding, decoding and framing. If a future tar-stream lacks them, `unavailable()` says so.
 */

const USTAR_MAX_ID = 0o777777; // tar-stream writes ids and device numbers in 6 octal digits
const USTAR_MAX_SIZE = 0o77777777777;
const USTAR_MAX_MTIME = 2 ** 31 - 1; // tar-stream truncates seconds to int32
const NS = 1_000_000_000n;
const ZEROS = Buffer.alloc(64 * 1024);
const MAX_SPARSE_REGIONS = 1 << 20;
const S_IFMT_BITS: Record<Entry['type'], number> = {
  file: 0o100000,
  hardlink: 0o100000,
  dir: 0o040000,
  symlink: 0o120000,
  fifo: 0o010000,
  char: 0o020000,
  block: 0o060000,
};

type Compression = 'none' | 'gzip' | 'zstd';
type PaxRecord = [key: Buffer, value: Buffer];

/** The header fields tar-stream 3 produces and takes (its own typings are narrower). */
interface Header {
  name: string;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtime: Date;
  type: string | null;
  linkname: string | null;
  devmajor: number;
  devminor: number;
  pax?: Record<string, string> | null;
}

interface ExtractInternals {
  _header: { type: string | null } | null;
  _pax: object | null;
  _decodeLongHeader(buf: Buffer): unknown;
}

interface PackInternals {
  _encode(header: Header): void;
  push(chunk: Buffer): boolean;
}

class TarError extends Error {}

// ---------------------------------------------------------------------------------------------
// PAX records (raw bytes)

/** Parses a PAX extended header block ("LEN KEY=VALUE\n"...) into raw records, in order. */
export function parsePax(buf: Buffer): PaxRecord[] {
  const out: PaxRecord[] = [];
  let pos = 0;
  while (pos < buf.length) {
    if (buf[pos] === 0) break; // padding (some writers leave NULs)
    const sp = buf.indexOf(0x20, pos);
    const lenText = sp < 0 ? '' : buf.toString('latin1', pos, sp);
    const len = /^[0-9]{1,9}$/.test(lenText) ? Number(lenText) : 0;
    const end = pos + len;
    if (len === 0 || end > buf.length || sp >= end || buf[end - 1] !== 0x0a) {
      throw new TarError('malformed PAX extended header');
    }
    const eq = buf.indexOf(0x3d, sp + 1);
    if (eq < 0 || eq >= end) throw new TarError('malformed PAX extended header record');
    out.push([buf.subarray(sp + 1, eq), buf.subarray(eq + 1, end - 1)]);
    pos = end;
  }
  return out;
}

/** Encodes raw records as a PAX extended header block. */
export function encodePax(records: readonly PaxRecord[]): Buffer {
  const parts: Buffer[] = [];
  for (const [key, value] of records) {
    const n = key.length + value.length + 3; // ' ', '=', '\n'
    let digits = 1;
    while (String(n + digits).length > digits) digits++;
    parts.push(Buffer.from(`${n + digits} `, 'latin1'), key, Buffer.from('='), value);
    parts.push(Buffer.from('\n'));
  }
  return Buffer.concat(parts);
}

/** `sec[.fraction]` (optionally negative) to nanoseconds, exactly (no floats). */
export function parsePaxTime(text: string): bigint | undefined {
  const m = /^(-?)([0-9]+)(?:\.([0-9]*))?$/.exec(text);
  if (!m) return undefined;
  const frac = (m[3] ?? '').slice(0, 9).padEnd(9, '0');
  const ns = BigInt(m[2]!) * NS + BigInt(frac);
  return m[1] ? -ns : ns;
}

export function formatPaxTime(ns: bigint): string {
  const neg = ns < 0n;
  const a = neg ? -ns : ns;
  const frac = a % NS;
  let s = `${neg ? '-' : ''}${a / NS}`;
  if (frac !== 0n) s += `.${frac.toString().padStart(9, '0').replace(/0+$/, '')}`;
  return s;
}

/** GNU tar escapes '%' and '=' in xattr names inside `SCHILY.xattr.` keywords. */
function encodeSchilyName(name: Buffer): Buffer {
  if (!name.includes(0x25) && !name.includes(0x3d)) return name;
  const out: number[] = [];
  for (const b of name) {
    if (b === 0x25) out.push(0x25, 0x32, 0x35);
    else if (b === 0x3d) out.push(0x25, 0x33, 0x44);
    else out.push(b);
  }
  return Buffer.from(out);
}

function decodeSchilyName(name: Buffer): Buffer {
  if (!name.includes(0x25)) return name;
  const s = name.toString('latin1').replace(/%25|%3D/gi, (m) => (m === '%25' ? '%' : '='));
  return Buffer.from(s, 'latin1');
}

/** libarchive URL-encodes the names in `LIBARCHIVE.xattr.` keywords. */
function decodeUrlName(name: Buffer): Buffer {
  const s = name.toString('latin1');
  return Buffer.from(
    s.replace(/%([0-9a-fA-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16))),
    'latin1',
  );
}

function isAscii(b: Buffer): boolean {
  for (const x of b) if (x >= 0x80 || x === 0) return false;
  return true;
}

/** A printable ASCII stand-in for a name kept in PAX (for readers that ignore PAX). */
function asciiStandIn(b: Buffer, max: number, dir: boolean): string {
  let s = '';
  for (const x of b) s += x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : '_';
  s = s.slice(0, max);
  if (!dir && s.endsWith('/')) s = `${s.slice(0, -1)}_`; // a trailing '/' would mean a directory
  return s || '_';
}

// ---------------------------------------------------------------------------------------------
// tar-stream internals (see the module comment)

function extractHooks(ex: unknown): { local: WeakMap<object, Buffer>; global: () => Buffer[] } {
  const x = ex as ExtractInternals;
  const local = new WeakMap<object, Buffer>();
  const globals: Buffer[] = [];
  const original = x._decodeLongHeader;
  x._decodeLongHeader = function (this: ExtractInternals, buf: Buffer) {
    const type = this._header?.type;
    const result = original.call(this, buf);
    if (type === 'pax-header' && this._pax) local.set(this._pax, Buffer.from(buf));
    else if (type === 'pax-global-header') globals.push(Buffer.from(buf));
    return result;
  };
  return { local, global: () => globals };
}

function hasInternals(): boolean {
  const ex = tarStream.extract({}) as unknown as Partial<ExtractInternals>;
  const pack = tarStream.pack({}) as unknown as Partial<PackInternals>;
  return typeof ex._decodeLongHeader === 'function' && typeof pack._encode === 'function';
}

let internalsChecked: boolean | undefined;
function internalsMissing(): string | undefined {
  internalsChecked ??= hasInternals();
  return internalsChecked
    ? undefined
    : 'the installed tar-stream lacks the internals this format uses for raw PAX values (tar-stream 3.x has them)';
}

// ---------------------------------------------------------------------------------------------
// Reading

/** An entry's data stream with push-back; reading stops working once the reader has moved on. */
class Body {
  private readonly it: AsyncIterator<Buffer>;
  private readonly back: Buffer[] = [];
  private ended = false;
  stale = false;
  taken = false;

  constructor(
    stream: AsyncIterable<Buffer>,
    private readonly file: string,
  ) {
    this.it = stream[Symbol.asyncIterator]();
  }

  async read(): Promise<Buffer | undefined> {
    const b = this.back.pop();
    if (b) return b;
    if (this.ended) return undefined;
    let r: IteratorResult<Buffer>;
    try {
      r = await this.it.next();
    } catch (e) {
      throw readError(this.file, e);
    }
    if (r.done) {
      this.ended = true;
      return undefined;
    }
    return r.value;
  }

  unread(b: Buffer): void {
    if (b.length) this.back.push(b);
  }

  async drain(): Promise<void> {
    while ((await this.read()) !== undefined);
  }
}

function readError(file: string, e: unknown): unknown {
  if (e instanceof ReimageError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new ReimageError('INVALID_ARGUMENT', `cannot read ${file} as a tar archive: ${msg}`, {
    cause: e,
  });
}

function decompressor(c: Compression): Transform | undefined {
  if (c === 'gzip') return createGunzip();
  if (c === 'zstd') return new DecompressStream();
  return undefined;
}

function compressor(c: Compression): Transform | undefined {
  if (c === 'gzip') return createGzip();
  if (c === 'zstd') return new CompressStream({ compressionLevel: 3 });
  return undefined;
}

/** The PAX view of one header: global records, then its own (later ones win). */
class Pax {
  private readonly map = new Map<string, Buffer>();
  constructor(readonly records: PaxRecord[]) {
    for (const [k, v] of records) this.map.set(k.toString('latin1'), v);
  }
  raw(key: string): Buffer | undefined {
    return this.map.get(key);
  }
  text(key: string): string | undefined {
    return this.map.get(key)?.toString('utf8');
  }
  int(key: string, max = Number.MAX_SAFE_INTEGER): number | undefined {
    const t = this.text(key);
    if (t === undefined) return undefined;
    if (!/^[0-9]+$/.test(t) || Number(t) > max) throw new TarError(`bad PAX ${key} "${t}"`);
    return Number(t);
  }
  xattrs(): Array<[Buffer, Buffer]> {
    const byName = new Map<string, [Buffer, Buffer]>();
    const SCHILY = Buffer.from('SCHILY.xattr.');
    const LIBARCHIVE = Buffer.from('LIBARCHIVE.xattr.');
    for (const [k, v] of this.records) {
      if (k.subarray(0, SCHILY.length).equals(SCHILY)) {
        const name = decodeSchilyName(k.subarray(SCHILY.length));
        byName.set(name.toString('latin1'), [Buffer.from(name), Buffer.from(v)]);
      }
    }
    // libarchive's base64 form cannot have been mangled by a charset conversion: it wins.
    for (const [k, v] of this.records) {
      if (k.subarray(0, LIBARCHIVE.length).equals(LIBARCHIVE)) {
        const name = decodeUrlName(k.subarray(LIBARCHIVE.length));
        byName.set(name.toString('latin1'), [name, Buffer.from(v.toString('latin1'), 'base64')]);
      }
    }
    return [...byName.values()]
      .filter(([name]) => name.length > 0)
      .sort((a, b) => Buffer.compare(a[0], b[0]));
  }
}

function headerMtimeNs(h: Header): bigint {
  const ms = h.mtime instanceof Date ? h.mtime.getTime() : NaN;
  return Number.isFinite(ms) ? BigInt(Math.round(ms / 1000)) * NS : 0n;
}

function checkedNumber(n: unknown): number {
  return typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 ? n : 0;
}

/** Sparse layout of a GNU PAX sparse file (formats 0.0, 0.1, 1.0), or undefined. */
async function sparseLayout(
  pax: Pax,
  localRecords: PaxRecord[],
  header: Header,
  body: Body,
): Promise<{ size: number; regions: Array<[number, number]> } | undefined> {
  const major = pax.text('GNU.sparse.major');
  const minor = pax.text('GNU.sparse.minor');
  let size: number | undefined;
  const pairs: number[] = [];
  let dataLen = header.size;
  if (major !== undefined) {
    if (major !== '1' || minor !== '0')
      throw new TarError(`unsupported GNU sparse format ${major}.${minor ?? '?'}`);
    size = pax.int('GNU.sparse.realsize');
    // The map heads the data: decimal numbers, one a line, padded to a 512-byte block.
    let buf = Buffer.alloc(0);
    let pos = 0;
    let count: number | undefined;
    const numbers: number[] = [];
    while (count === undefined || numbers.length < 2 * count) {
      const nl = buf.indexOf(0x0a, pos);
      if (nl < 0) {
        if (buf.length > 64 + 64 * MAX_SPARSE_REGIONS)
          throw new TarError('GNU sparse map too long');
        const more = await body.read();
        if (!more) throw new TarError('GNU sparse map truncated');
        buf = Buffer.concat([buf, more]);
        continue;
      }
      const t = buf.toString('latin1', pos, nl);
      pos = nl + 1;
      if (!/^[0-9]{1,16}$/.test(t) || !Number.isSafeInteger(Number(t)))
        throw new TarError('bad GNU sparse map');
      if (count === undefined) {
        count = Number(t);
        if (count > MAX_SPARSE_REGIONS) throw new TarError('GNU sparse map too long');
      } else numbers.push(Number(t));
    }
    const mapBytes = Math.ceil(pos / 512) * 512;
    while (buf.length < mapBytes) {
      const more = await body.read();
      if (!more) throw new TarError('GNU sparse map truncated');
      buf = Buffer.concat([buf, more]);
    }
    body.unread(buf.subarray(mapBytes));
    dataLen -= mapBytes;
    pairs.push(...numbers);
  } else if (pax.raw('GNU.sparse.map') !== undefined) {
    size = pax.int('GNU.sparse.size');
    const t = pax.text('GNU.sparse.map')!;
    for (const n of t === '' ? [] : t.split(',')) {
      if (!/^[0-9]{1,16}$/.test(n)) throw new TarError('bad GNU.sparse.map');
      pairs.push(Number(n));
    }
    if (pairs.length % 2) throw new TarError('bad GNU.sparse.map');
  } else if (pax.raw('GNU.sparse.offset') !== undefined) {
    size = pax.int('GNU.sparse.size');
    for (const [k, v] of localRecords) {
      const key = k.toString('latin1');
      if (key !== 'GNU.sparse.offset' && key !== 'GNU.sparse.numbytes') continue;
      const want = pairs.length % 2 === 0 ? 'GNU.sparse.offset' : 'GNU.sparse.numbytes';
      const t = v.toString('latin1');
      if (key !== want || !/^[0-9]{1,16}$/.test(t)) throw new TarError('bad GNU sparse records');
      pairs.push(Number(t));
    }
    if (pairs.length % 2) throw new TarError('bad GNU sparse records');
  } else {
    return undefined;
  }
  if (size === undefined) throw new TarError('GNU sparse file without its real size');
  const regions: Array<[number, number]> = [];
  let end = 0;
  let sum = 0;
  for (let i = 0; i < pairs.length; i += 2) {
    const off = pairs[i]!;
    const len = pairs[i + 1]!;
    if (off < end || off + len > size)
      throw new TarError('GNU sparse regions overlap or exceed the size');
    sum += len;
    if (len === 0) continue;
    const last = regions[regions.length - 1];
    if (last && last[0] + last[1] === off) last[1] += len;
    else regions.push([off, len]);
    end = off + len;
  }
  if (sum !== dataLen)
    throw new TarError(`GNU sparse map covers ${sum} bytes but the archive holds ${dataLen}`);
  return { size, regions };
}

async function* readTar(file: string, compression: Compression): AsyncGenerator<TreeEntry> {
  const missing = internalsMissing();
  if (missing) throw new ReimageError('FORMAT_UNAVAILABLE', `cannot read ${file}: ${missing}`);
  // latin1 keeps the raw bytes of ustar and GNU long names; PAX values come from the hook.
  const ex = tarStream.extract({
    filenameEncoding: 'latin1',
    allowUnknownFormat: true,
  } as Parameters<typeof tarStream.extract>[0]);
  const hooks = extractHooks(ex);
  const source = createReadStream(file);
  const dz = decompressor(compression);
  const piping = dz ? pipeline(source, dz, ex) : pipeline(source, ex);
  let pipeError: unknown;
  piping.catch((e: unknown) => {
    pipeError = e;
  });
  const entries = ex[Symbol.asyncIterator]();
  try {
    for (;;) {
      let next: Awaited<ReturnType<typeof entries.next>>;
      try {
        next = await entries.next();
      } catch (e) {
        throw readError(file, pipeError ?? e);
      }
      if (next.done) break;
      const stream = next.value;
      const body = new Body(stream as unknown as AsyncIterable<Buffer>, file);
      try {
        const te = await toTreeEntry(stream.header as unknown as Header, body, hooks, file);
        if (te) yield te;
      } catch (e) {
        throw readError(file, e);
      } finally {
        body.stale = true;
      }
      await body.drain();
    }
    await piping.catch((e: unknown) => {
      throw readError(file, e);
    });
  } finally {
    if (!ex.destroyed) ex.destroy();
    source.destroy();
  }
}

async function toTreeEntry(
  h: Header,
  body: Body,
  hooks: ReturnType<typeof extractHooks>,
  file: string,
): Promise<TreeEntry | undefined> {
  let local: PaxRecord[] = [];
  if (h.pax) {
    const raw = hooks.local.get(h.pax);
    if (!raw)
      throw new TarError('tar-stream did not pass its PAX header through (internals changed?)');
    local = parsePax(raw);
  }
  const pax = new Pax([...hooks.global().flatMap(parsePax), ...local]);
  const name = pax.raw('GNU.sparse.name') ?? pax.raw('path') ?? Buffer.from(h.name, 'latin1');
  const link = pax.raw('linkpath') ?? Buffer.from(h.linkname ?? '', 'latin1');
  const path = Buffer.from(name);
  const mtimeText = pax.text('mtime');
  let mtimeNs = headerMtimeNs(h);
  if (mtimeText !== undefined) {
    const t = parsePaxTime(mtimeText);
    if (t === undefined) throw new TarError(`bad PAX mtime "${mtimeText}" for ${showPath(path)}`);
    mtimeNs = t;
  }
  const entry: Entry = {
    path,
    type: 'file',
    mode: checkedNumber(h.mode) & 0o7777,
    uid: pax.int('uid', 0xffffffff) ?? checkedNumber(h.uid),
    gid: pax.int('gid', 0xffffffff) ?? checkedNumber(h.gid),
    mtimeNs,
    size: 0,
    xattrs: pax.xattrs(),
  };
  switch (h.type) {
    case 'directory':
      entry.type = 'dir';
      return { entry };
    case 'symlink':
      entry.type = 'symlink';
      entry.target = Buffer.from(link);
      return { entry };
    case 'link':
      return { entry: hardlinkEntry(path, Buffer.from(link)) };
    case 'character-device':
    case 'block-device':
      entry.type = h.type === 'character-device' ? 'char' : 'block';
      entry.major = pax.int('SCHILY.devmajor', 0xffffffff) ?? checkedNumber(h.devmajor);
      entry.minor = pax.int('SCHILY.devminor', 0xffffffff) ?? checkedNumber(h.devminor);
      return { entry };
    case 'fifo':
      entry.type = 'fifo';
      return { entry };
    case 'file':
    case 'contiguous-file':
      break;
    default:
      if (!(h.size > 0)) return undefined; // e.g. a GNU volume label
      throw new TarError(
        `${showPath(path)} is of a tar entry type this reader does not know (an old GNU sparse ` +
          `file? GNU tar writes those with -S unless --format=pax is given)`,
      );
  }
  const sparse = await sparseLayout(pax, local, h, body);
  entry.size = sparse ? sparse.size : h.size;
  if (
    sparse &&
    !(
      sparse.regions.length === 1 &&
      sparse.regions[0]![0] === 0 &&
      sparse.regions[0]![1] === sparse.size
    )
  )
    entry.segments = sparse.regions;
  return {
    entry,
    data: () => {
      if (body.stale)
        throw new Error(
          `the data of ${showPath(path)} in ${file} was requested after the next entry`,
        );
      if (body.taken)
        throw new Error(`the data of ${showPath(path)} in ${file} was requested twice`);
      body.taken = true;
      return (async function* () {
        for (;;) {
          if (body.stale)
            throw new Error(
              `the data of ${showPath(path)} in ${file} was read after the next entry`,
            );
          const b = await body.read();
          if (b === undefined) return;
          yield b;
        }
      })();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Writing

function writeError(file: string, e: unknown): unknown {
  if (e instanceof ReimageError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new ReimageError('APPLY_FAILED', `cannot write ${file} as a tar archive: ${msg}`, {
    cause: e,
  });
}

/** The entry's logical content, dense: data regions with zeros for the holes, `size` bytes. */
async function* denseData(e: Entry, data: TreeEntry['data']): AsyncGenerator<Buffer> {
  const regions = e.segments ?? [[0, e.size]];
  const it = data ? data()[Symbol.asyncIterator]() : undefined;
  let held: Buffer | undefined;
  const zeros = function* (n: number): Generator<Buffer> {
    for (let left = n; left > 0; left -= ZEROS.length)
      yield ZEROS.subarray(0, Math.min(left, ZEROS.length));
  };
  let pos = 0;
  for (const [off, len] of regions) {
    if (off < pos || off + len > e.size)
      throw new TarError(`the sparse regions of ${showPath(e.path)} overlap or exceed its size`);
    yield* zeros(off - pos);
    let need = len;
    while (need > 0) {
      if (!held?.length) {
        const r = it ? await it.next() : { done: true as const, value: undefined };
        if (r.done) throw new TarError(`${showPath(e.path)} holds less data than its size says`);
        held = Buffer.from(r.value); // a copy: the producer may reuse its buffer
        continue;
      }
      const n = Math.min(need, held.length);
      yield held.subarray(0, n);
      held = held.subarray(n);
      need -= n;
    }
    pos = off + len;
  }
  yield* zeros(e.size - pos);
  if (held?.length || (it && !(await it.next()).done))
    throw new TarError(`${showPath(e.path)} holds more data than its size says`);
}

interface Written {
  mode: number;
  uid: number;
  gid: number;
  mtime: Date;
}

class TarWriter {
  private readonly rawPax = new WeakMap<Header, Buffer>();
  private readonly files = new Map<string, Written>();

  constructor(
    private readonly pack: tarStream.Pack,
    private readonly failed: Promise<never>,
  ) {
    const p = pack as unknown as PackInternals;
    const original = p._encode;
    const rawPax = this.rawPax;
    p._encode = function (this: PackInternals, header: Header) {
      const raw = rawPax.get(header);
      if (raw) {
        const base = header.name.replace(/\/+$/, '').split('/').pop() ?? '';
        original.call(this, {
          name: `PaxHeaders/${base.slice(0, 80) || '_'}`,
          mode: 0o100644,
          uid: header.uid,
          gid: header.gid,
          size: raw.length,
          mtime: header.mtime,
          type: 'pax-header',
          linkname: null,
          devmajor: 0,
          devminor: 0,
        });
        this.push(raw);
        if (raw.length % 512) this.push(Buffer.alloc(512 - (raw.length % 512)));
      }
      original.call(this, header);
    };
  }

  async add(te: TreeEntry): Promise<void> {
    const e = te.entry;
    const records: PaxRecord[] = [];
    const isDir = e.type === 'dir';
    if (e.path.length === 0 && !isDir) throw new TarError('the root entry is not a directory');
    const nameBytes =
      e.path.length === 0
        ? Buffer.from('./')
        : isDir
          ? Buffer.concat([e.path, Buffer.from('/')])
          : e.path;
    let name = nameBytes.toString('latin1');
    if (!isAscii(nameBytes) || nameBytes.length > 100) {
      records.push([Buffer.from('path'), nameBytes]);
      name = asciiStandIn(nameBytes, 100, isDir);
    }

    let linkname: string | null = null;
    let prior: Written | undefined;
    if (e.type === 'symlink' || e.type === 'hardlink') {
      const target = e.target;
      if (!target?.length) throw new TarError(`${showPath(e.path)} has no target`);
      if (e.type === 'hardlink') {
        prior = this.files.get(target.toString('latin1'));
        if (!prior)
          throw new TarError(
            `hard link ${showPath(e.path)} names ${showPath(target)}, which is not a file written before it`,
          );
      }
      linkname = target.toString('latin1');
      if (!isAscii(target) || target.length > 100) {
        records.push([Buffer.from('linkpath'), target]);
        linkname = asciiStandIn(target, 100, true);
      }
    }

    const attrs = prior ?? e;
    const uid = attrs.uid;
    const gid = attrs.gid;
    if (!prior) {
      if (uid > USTAR_MAX_ID) records.push([Buffer.from('uid'), Buffer.from(String(uid))]);
      if (gid > USTAR_MAX_ID) records.push([Buffer.from('gid'), Buffer.from(String(gid))]);
    }
    let mtime: Date;
    if (prior) mtime = prior.mtime;
    else {
      let sec = e.mtimeNs / NS;
      if (e.mtimeNs < 0n && e.mtimeNs % NS !== 0n) sec -= 1n;
      const inRange = sec >= 0n && sec <= BigInt(USTAR_MAX_MTIME);
      if (!inRange || e.mtimeNs % NS !== 0n)
        records.push([Buffer.from('mtime'), Buffer.from(formatPaxTime(e.mtimeNs))]);
      mtime = new Date(Number(inRange ? sec : sec < 0n ? 0n : BigInt(USTAR_MAX_MTIME)) * 1000);
    }

    let devmajor = 0;
    let devminor = 0;
    if (e.type === 'char' || e.type === 'block') {
      devmajor = e.major ?? 0;
      devminor = e.minor ?? 0;
      if (devmajor > USTAR_MAX_ID || devminor > USTAR_MAX_ID) {
        records.push([Buffer.from('SCHILY.devmajor'), Buffer.from(String(devmajor))]);
        records.push([Buffer.from('SCHILY.devminor'), Buffer.from(String(devminor))]);
        devmajor = Math.min(devmajor, USTAR_MAX_ID);
        devminor = Math.min(devminor, USTAR_MAX_ID);
      }
    }

    const size = e.type === 'file' ? e.size : 0;
    if (size > USTAR_MAX_SIZE) records.push([Buffer.from('size'), Buffer.from(String(size))]);

    if (!prior) {
      for (const [xname, value] of e.xattrs) {
        records.push([
          Buffer.concat([Buffer.from('SCHILY.xattr.'), encodeSchilyName(xname)]),
          value,
        ]);
      }
    }

    const type = {
      file: 'file',
      dir: 'directory',
      symlink: 'symlink',
      hardlink: 'link',
      fifo: 'fifo',
      char: 'character-device',
      block: 'block-device',
    }[e.type];
    if (!type) throw new TarError(`${showPath(e.path)} has an unknown type ${String(e.type)}`);
    const header: Header = {
      name,
      // A type bit keeps the value non-zero: tar-stream turns mode 0 into 0644/0755.
      mode: ((prior ? prior.mode : e.mode) & 0o7777) | S_IFMT_BITS[e.type],
      uid: Math.min(uid, USTAR_MAX_ID),
      gid: Math.min(gid, USTAR_MAX_ID),
      size,
      mtime,
      type,
      linkname,
      devmajor,
      devminor,
    };
    if (records.length) this.rawPax.set(header, encodePax(records));

    let finish!: (err?: Error | null) => void;
    const done = new Promise<void>((resolve, reject) => {
      finish = (err) => (err ? reject(err) : resolve());
    });
    done.catch(() => {});
    const sink = this.pack.entry(header as unknown as tarStream.Header, (err) => finish(err));
    sink.on('error', () => {}); // reported through the callback
    if (type === 'file') {
      for await (const piece of denseData(e, te.data)) {
        if (!sink.write(piece)) await Promise.race([drained(sink), this.failed]);
      }
      (sink as unknown as { end(): void }).end();
      this.files.set(e.path.toString('latin1'), {
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        mtime,
      });
    }
    await Promise.race([done, this.failed]);
  }
}

function drained(s: NodeJS.EventEmitter): Promise<void> {
  return new Promise((resolve, reject) => {
    const off = () => {
      s.off('drain', onDrain);
      s.off('close', onClose);
      s.off('error', onError);
    };
    const onDrain = () => {
      off();
      resolve();
    };
    const onClose = () => {
      off();
      reject(new Error('tar entry closed before its data was written'));
    };
    const onError = (e: unknown) => {
      off();
      reject(e instanceof Error ? e : new Error(String(e)));
    };
    s.on('drain', onDrain);
    s.on('close', onClose);
    s.on('error', onError);
  });
}

async function writeTar(
  entries: AsyncIterable<TreeEntry>,
  file: string,
  c: Compression,
): Promise<void> {
  const missing = internalsMissing();
  if (missing) throw new ReimageError('FORMAT_UNAVAILABLE', `cannot write ${file}: ${missing}`);
  const pack = tarStream.pack();
  const out = createWriteStream(file);
  const z = compressor(c);
  const source = pack as unknown as Readable;
  const piping = z ? pipeline(source, z, out) : pipeline(source, out);
  const failed = piping.then(
    () => new Promise<never>(() => {}),
    (e: unknown) => Promise.reject(e instanceof Error ? e : new Error(String(e))),
  );
  failed.catch(() => {});
  const writer = new TarWriter(pack, failed);
  try {
    for await (const te of entries) await writer.add(te);
    pack.finalize();
    await piping;
  } catch (e) {
    pack.destroy(e instanceof Error ? e : new Error(String(e)));
    await piping.catch(() => {});
    await unlink(file).catch(() => {});
    throw writeError(file, e);
  }
}

// ---------------------------------------------------------------------------------------------
// Probing

async function readPrefix(file: string, n: number): Promise<Buffer> {
  let fh;
  try {
    fh = await open(file, 'r');
  } catch {
    return Buffer.alloc(0);
  }
  try {
    const buf = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      const { bytesRead } = await fh.read(buf, got, n - got, got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return buf.subarray(0, got);
  } catch {
    return Buffer.alloc(0);
  } finally {
    await fh.close();
  }
}

function isUstar(block: Buffer): boolean {
  return block.length >= 263 && block.toString('latin1', 257, 262) === 'ustar';
}

function gunzipPrefix(prefix: Buffer): Buffer {
  try {
    return gunzipSync(prefix, {
      finishFlush: zlibConstants.Z_SYNC_FLUSH,
      maxOutputLength: 16 << 20,
    });
  } catch {
    return Buffer.alloc(0);
  }
}

function unzstdPrefix(prefix: Buffer): Buffer {
  try {
    const dctx = new zstdBinding.DCtx();
    const out = Buffer.alloc(64 * 1024);
    let produced = 0;
    let src = prefix;
    while (produced < 512 && src.length > 0) {
      const [, n, used] = dctx.decompressStream(out.subarray(produced), src);
      produced += n;
      src = src.subarray(used);
      if (n === 0 && used === 0) break;
    }
    return out.subarray(0, produced);
  } catch {
    return Buffer.alloc(0);
  }
}

async function probe(file: string, c: Compression): Promise<boolean> {
  if (c === 'none') return isUstar(await readPrefix(file, 512));
  const prefix = await readPrefix(file, c === 'gzip' ? 8192 : 256 * 1024);
  if (c === 'gzip')
    return prefix[0] === 0x1f && prefix[1] === 0x8b && isUstar(gunzipPrefix(prefix));
  return (
    prefix.subarray(0, 4).equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd])) &&
    isUstar(unzstdPrefix(prefix))
  );
}

// ---------------------------------------------------------------------------------------------
// The formats

const capabilities: FormatCapabilities = {
  owners: true,
  xattrs: true,
  hardlinks: true,
  devices: true,
  fifos: true,
  sparse: false,
  mtimeNs: true,
  rawNames: true,
};

function makeFormat(
  name: string,
  extensions: readonly string[],
  description: string,
  c: Compression,
): ImageFormat {
  return {
    name,
    extensions,
    description,
    capabilities,
    unavailable: () => Promise.resolve(internalsMissing()),
    probe: (file: string) => probe(file, c),
    read: (file: string, _opts: ReadOptions = {}) => readTar(file, c),
    write: (entries: AsyncIterable<TreeEntry>, file: string) => writeTar(entries, file, c),
  };
}

export const tarFormat: ImageFormat = makeFormat(
  'tar',
  ['.tar'],
  'POSIX (PAX) tar archive: owners, nanosecond mtimes, xattrs, hard links, devices; sparse files written dense',
  'none',
);

export const tarGzFormat: ImageFormat = makeFormat(
  'tar.gz',
  ['.tar.gz', '.tgz'],
  'gzip-compressed POSIX (PAX) tar archive',
  'gzip',
);

export const tarZstFormat: ImageFormat = makeFormat(
  'tar.zst',
  ['.tar.zst', '.tzst'],
  'zstd-compressed POSIX (PAX) tar archive (level 3)',
  'zstd',
);
