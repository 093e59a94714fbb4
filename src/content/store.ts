import {
  closeSync,
  fdatasync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { createHash, randomUUID, type Hash } from 'node:crypto';
import { dirname, join } from 'node:path';
import { Decompressor } from 'zstd-napi';
import { ReimageError } from '../errors.js';
import { HASH_BYTES, hashKey, isHexId } from './digest.js';
import {
  decodeIndex,
  decompressBounded,
  encodeIndex,
  FRAME_CHUNK_RECORD,
  MAX_FRAME_RAW,
  PACK_MAGIC,
  type ChunkLocation,
  type Frame,
  type IndexEntry,
} from './pack.js';
import { acquireLock, lockHolders, type HeldLock, type LockKind, type LockHolder } from './lock.js';

/**
 * A content store in a local (or mounted) folder. Layout (documented in docs/content-store.md):
 *
 *   reimage-store.json          format marker and version
 *   packs/ab/<sha256>.pack      zstd frames of chunks; named by the hash of the pack file
 *   packs/ab/<sha256>.idx       the pack's index, sorted by chunk hash
 *   objects/<kind>/...          small files written by the layers above (manifests, records)
 *   locks/<uuid>.json           shared / exclusive lock files
 *   tmp/<session>/              packs being written; never read by anyone else
 *
 * Every file is written under tmp/ or beside its final name and renamed into place, so a
 * reader sees whole files only and a killed writer leaves nothing but tmp/ behind.
 */
export const STORE_FORMAT = 'reimage-store';
export const STORE_VERSION = 1;
/** A pack is closed once it holds this much compressed data. */
export const PACK_TARGET = 256 * 1024 * 1024;
const FLUSH_EVERY = 16 * 1024 * 1024;
const PACK_FILE = /^([0-9a-f]{64})\.(pack|idx)$/;

export interface StoreInfo {
  format: string;
  version: number;
  created: string;
}

export class ContentStore {
  private constructor(readonly root: string) {}

  static open(root: string, opts: { create?: boolean } = {}): ContentStore {
    const marker = join(root, 'reimage-store.json');
    if (!existsSync(marker)) {
      if (!opts.create) {
        throw new ReimageError('STORE_NOT_FOUND', `no content store at ${root}`, {
          details: { store: root },
        });
      }
      if (existsSync(root) && (!statSync(root).isDirectory() || readdirSync(root).length > 0)) {
        throw new ReimageError(
          'STORE_INVALID',
          `${root} is not empty and is not a content store; refusing to create one in it`,
          { details: { store: root } },
        );
      }
      mkdirSync(root, { recursive: true });
      const info: StoreInfo = {
        format: STORE_FORMAT,
        version: STORE_VERSION,
        created: new Date().toISOString(),
      };
      for (const d of ['packs', 'objects', 'locks', 'tmp'])
        mkdirSync(join(root, d), { recursive: true });
      writeAtomic(marker, JSON.stringify(info, null, 2) + '\n');
    }
    let info: StoreInfo | null;
    try {
      info = JSON.parse(readFileSync(marker, 'utf8')) as StoreInfo | null;
    } catch (e) {
      throw new ReimageError('STORE_INVALID', `cannot read ${marker}`, { cause: e });
    }
    if (!info || typeof info !== 'object') {
      throw new ReimageError('STORE_INVALID', `${marker} is not a store marker`);
    }
    if (info.format !== STORE_FORMAT || info.version !== STORE_VERSION) {
      throw new ReimageError(
        'STORE_INVALID',
        `${root} holds format ${String(info.format)} version ${String(info.version)}; this reimage reads ${STORE_FORMAT} version ${STORE_VERSION}`,
      );
    }
    return new ContentStore(root);
  }

  packPath(id: string): string {
    return join(this.root, 'packs', id.slice(0, 2), `${id}.pack`);
  }

  indexPath(id: string): string {
    return join(this.root, 'packs', id.slice(0, 2), `${id}.idx`);
  }

  /** Every pack with a complete index. */
  listPacks(): string[] {
    const out: string[] = [];
    const top = join(this.root, 'packs');
    for (const d of safeReaddir(top)) {
      if (!/^[0-9a-f]{2}$/.test(d)) continue; // e.g. .DS_Store left by a file share
      for (const f of safeReaddir(join(top, d))) {
        if (PACK_FILE.test(f) && f.endsWith('.idx')) out.push(f.slice(0, -4));
      }
    }
    return out.sort();
  }

  /** Pack files without an index, and leftover temporary files, in packs/ (gc only). */
  strayPackFiles(): string[] {
    const out: string[] = [];
    const top = join(this.root, 'packs');
    const indexed = new Set(this.listPacks());
    for (const d of safeReaddir(top)) {
      if (!/^[0-9a-f]{2}$/.test(d)) continue;
      for (const f of safeReaddir(join(top, d))) {
        const m = PACK_FILE.exec(f);
        if ((m && m[2] === 'pack' && !indexed.has(m[1]!)) || f.includes('.tmp-'))
          out.push(join(top, d, f));
      }
    }
    return out;
  }

  /** Loads the indexes of the given packs (all packs by default) into one lookup table. */
  loadIndex(packIds: string[] = this.listPacks()): ChunkIndex {
    const index = new ChunkIndex();
    for (const id of packIds) {
      if (!isHexId(id)) {
        throw new ReimageError('PACK_CORRUPT', `${JSON.stringify(id)} is not a pack id`, {
          details: { pack: id },
        });
      }
      const packNo = index.addPack(id, this.packPath(id));
      let buf: Buffer;
      let size: number;
      try {
        buf = readFileSync(this.indexPath(id));
        size = statSync(this.packPath(id)).size;
      } catch (e) {
        throw new ReimageError('PACK_CORRUPT', `pack ${id} is missing or unreadable`, {
          cause: e,
          details: { pack: id },
        });
      }
      decodeIndex(buf, size, id, (hash, frameOffset, frameLength, offset, length) => {
        index.set(hash, { pack: packNo, frameOffset, frameLength, offset, length });
      });
    }
    return index;
  }

  objectPath(kind: string, name: string): string {
    return join(this.root, 'objects', kind, name);
  }

  /** Written durably (file and directory fsynced) unless `durable` is false, as for caches. */
  writeObject(kind: string, name: string, data: string | Uint8Array, durable = true): void {
    const dir = join(this.root, 'objects', kind);
    mkdirSync(dir, { recursive: true });
    writeAtomic(join(dir, name), data, durable);
  }

  readObject(kind: string, name: string): Buffer | undefined {
    try {
      return readFileSync(this.objectPath(kind, name));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw e;
    }
  }

  listObjects(kind: string): string[] {
    return safeReaddir(join(this.root, 'objects', kind))
      .filter((n) => !n.includes('.tmp-'))
      .sort();
  }

  deleteObject(kind: string, name: string): void {
    rmSync(this.objectPath(kind, name), { force: true });
  }

  lock(
    kind: LockKind,
    purpose: string,
    opts: { waitMs?: number; onWait?: (holders: LockHolder[]) => void } = {},
  ): Promise<HeldLock> {
    return acquireLock(join(this.root, 'locks'), kind, purpose, opts);
  }

  lockHolders(): LockHolder[] {
    return lockHolders(join(this.root, 'locks'));
  }

  /** Starts writing new packs; `known` says which chunks the store already has. */
  beginSession(known: ChunkIndex): WriteSession {
    return new WriteSession(this, known);
  }

  /** Removes a pack (gc only, under the exclusive lock): index first, so readers never see an index without its pack. */
  deletePack(id: string): void {
    rmSync(this.indexPath(id), { force: true });
    rmSync(this.packPath(id), { force: true });
  }

  /** Temporary folders of sessions whose process is gone (gc only). */
  staleSessions(): string[] {
    const holders = new Set(this.lockHolders().map((h) => h.pid));
    const out: string[] = [];
    for (const name of safeReaddir(join(this.root, 'tmp'))) {
      const pid = Number(name.split('-')[0]);
      if (!holders.has(pid)) out.push(join(this.root, 'tmp', name));
    }
    return out;
  }
}

/** Where every chunk is: a table from chunk hash to its pack and frame. */
export class ChunkIndex {
  readonly packs: string[] = [];
  readonly packPaths: string[] = [];
  private readonly map = new Map<string, ChunkLocation>();

  addPack(id: string, path: string): number {
    this.packs.push(id);
    this.packPaths.push(path);
    return this.packs.length - 1;
  }

  set(hash: Uint8Array, loc: ChunkLocation): void {
    const k = hashKey(hash);
    if (!this.map.has(k)) this.map.set(k, loc);
  }

  get(hash: Uint8Array, offset = 0): ChunkLocation | undefined {
    return this.map.get(hashKey(hash, offset));
  }

  getByKey(key: string): ChunkLocation | undefined {
    return this.map.get(key);
  }

  has(hash: Uint8Array, offset = 0): boolean {
    return this.map.has(hashKey(hash, offset));
  }

  get size(): number {
    return this.map.size;
  }

  keys(): IterableIterator<string> {
    return this.map.keys();
  }

  entries(): IterableIterator<[string, ChunkLocation]> {
    return this.map.entries();
  }

  /**
   * All known hashes, sorted, in shared memory: capture workers binary-search it to skip
   * chunks the store already has without a round trip to the main thread.
   */
  sortedHashes(): SharedArrayBuffer {
    const keys = [...this.map.keys()].sort();
    const sab = new SharedArrayBuffer(keys.length * HASH_BYTES);
    const view = Buffer.from(sab);
    keys.forEach((k, i) => view.write(k, i * HASH_BYTES, 'latin1'));
    return sab;
  }
}

/** Binary search in a `sortedHashes()` table. */
export function sortedHashesHas(table: Uint8Array, hash: Uint8Array): boolean {
  let lo = 0;
  let hi = table.length / HASH_BYTES - 1;
  const t = Buffer.from(table.buffer, table.byteOffset, table.length);
  const h = Buffer.from(hash.buffer, hash.byteOffset, HASH_BYTES);
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = t.compare(h, 0, HASH_BYTES, mid * HASH_BYTES, mid * HASH_BYTES + HASH_BYTES);
    if (c === 0) return true;
    // c > 0: the table's entry sorts after the hash, so the hash is to the left.
    if (c > 0) hi = mid - 1;
    else lo = mid + 1;
  }
  return false;
}

interface OpenPack {
  tmpPath: string;
  fd: number;
  /** background flushes under way, and where the last one was started */
  flushing: Array<Promise<void>>;
  flushedAt: number;
  size: number;
  hash: Hash;
  entries: IndexEntry[];
  packNo: number;
}

/** New packs being written by one capture; nothing is visible to others until `commit`. */
export class WriteSession {
  readonly dir: string;
  private current: OpenPack | undefined;
  private readonly finished: OpenPack[] = [];
  private readonly all: OpenPack[] = [];
  private readonly closing: Array<Promise<void>> = [];
  /** Chunks written in this session, by key: location relative to the session's packs. */
  readonly added = new Map<
    string,
    { pack: OpenPack; frameOffset: number; frameLength: number; offset: number; length: number }
  >();
  bytesWritten = 0;

  constructor(
    private readonly store: ContentStore,
    private readonly known: ChunkIndex,
  ) {
    this.dir = join(store.root, 'tmp', `${process.pid}-${randomUUID()}`);
    mkdirSync(this.dir, { recursive: true });
  }

  has(hash: Uint8Array, offset = 0): boolean {
    const k = hashKey(hash, offset);
    return this.known.getByKey(k) !== undefined || this.added.has(k);
  }

  /** Appends a frame unless every chunk in it is already stored. */
  addFrame(frame: Frame): void {
    const n = frame.chunks.length / FRAME_CHUNK_RECORD;
    let fresh = 0;
    for (let i = 0; i < n; i++) if (!this.has(frame.chunks, i * FRAME_CHUNK_RECORD)) fresh++;
    if (fresh === 0) return;
    let p = this.current;
    if (!p || p.size >= PACK_TARGET) {
      if (p) this.closing.push(this.finishPack(p));
      p = this.openPack();
    }
    const frameOffset = p.size;
    writeAll(p.fd, frame.data);
    p.hash.update(frame.data);
    p.size += frame.data.length;
    this.bytesWritten += frame.data.length;
    // Flush in the background as we go, so that the fsync at commit finds little left to do.
    if (p.size - p.flushedAt >= FLUSH_EVERY) {
      p.flushedAt = p.size;
      const fd = p.fd;
      p.flushing.push(new Promise<void>((res) => fdatasync(fd, () => res())));
    }
    for (let i = 0; i < n; i++) {
      const r = i * FRAME_CHUNK_RECORD;
      const k = hashKey(frame.chunks, r);
      if (this.known.getByKey(k) !== undefined || this.added.has(k)) continue;
      const loc = {
        pack: p,
        frameOffset,
        frameLength: frame.data.length,
        offset: frame.chunks.readUInt32LE(r + HASH_BYTES),
        length: frame.chunks.readUInt32LE(r + HASH_BYTES + 4),
      };
      this.added.set(k, loc);
      p.entries.push({ hash: Buffer.from(k, 'latin1'), ...loc });
    }
  }

  /** The frame a chunk written in this session is in, as `pack:offset` (undefined: not here). */
  frameOf(key: string): string | undefined {
    const loc = this.added.get(key);
    return loc ? `${loc.pack.packNo}:${loc.frameOffset}` : undefined;
  }

  private openPack(): OpenPack {
    const tmpPath = join(this.dir, `pack-${this.all.length}`);
    const fd = openSync(tmpPath, 'wx');
    writeAll(fd, PACK_MAGIC);
    const p: OpenPack = {
      tmpPath,
      fd,
      size: PACK_MAGIC.length,
      hash: createHash('sha256').update(PACK_MAGIC),
      entries: [],
      packNo: this.all.length,
      flushing: [],
      flushedAt: 0,
    };
    this.current = p;
    this.all.push(p);
    return p;
  }

  private async finishPack(p: OpenPack): Promise<void> {
    await Promise.all(p.flushing);
    fsyncSync(p.fd);
    closeSync(p.fd);
    p.fd = -1; // closed: abort() must not close the number again (it may be reused by then)
    this.finished.push(p);
    this.current = undefined;
  }

  /**
   * Moves the new packs into the store. Returns the pack id of every chunk written here
   * (by key), so the caller can record which packs its image needs.
   */
  async commit(): Promise<{ packs: string[]; packOf: (key: string) => string | undefined }> {
    if (this.current) this.closing.push(this.finishPack(this.current));
    await Promise.all(this.closing);
    const ids = new Map<OpenPack, string>();
    for (const p of this.finished) {
      const id = p.hash.digest('hex');
      ids.set(p, id);
      const dir = join(this.store.root, 'packs', id.slice(0, 2));
      mkdirSync(dir, { recursive: true });
      renameSync(p.tmpPath, this.store.packPath(id));
      // The index goes last: a pack is "in the store" once its index exists.
      writeAtomic(this.store.indexPath(id), encodeIndex(p.entries), true);
    }
    return {
      packs: [...ids.values()],
      packOf: (key) => {
        const loc = this.added.get(key);
        return loc ? ids.get(loc.pack) : undefined;
      },
    };
  }

  async abort(): Promise<void> {
    await Promise.all(this.all.flatMap((p) => p.flushing));
    for (const p of this.all) {
      if (p.fd >= 0) closeSync(p.fd);
      p.fd = -1;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Removes the session folder after a commit. */
  close(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Reads frames from packs with a small cache of open descriptors. */
export class PackReader {
  private readonly fds = new Map<number, number>();

  constructor(private readonly paths: readonly string[]) {}

  readFrame(pack: number, offset: number, length: number): Buffer {
    let fd = this.fds.get(pack);
    if (fd === undefined) {
      const path = this.paths[pack];
      if (path === undefined) throw new RangeError(`no pack ${pack}`);
      fd = openSync(path, 'r');
      this.fds.set(pack, fd);
    }
    const buf = Buffer.allocUnsafe(length);
    let got = 0;
    while (got < length) {
      const n = readSync(fd, buf, got, length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    if (got !== length) {
      throw new ReimageError(
        'PACK_CORRUPT',
        `pack ${this.paths[pack]} is truncated at ${offset + got}`,
      );
    }
    return buf;
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}

/**
 * Decompressed frames read through a {@link PackReader}, the last `keep` of them kept: chunks
 * read one after another mostly share frames. Damage is not thrown: the caller hashes what it
 * takes out and treats a missing frame as a missing chunk.
 */
export class RawFrames {
  private readonly frames = new Map<string, Buffer>();
  private readonly dz = new Decompressor();

  constructor(
    private readonly reader: PackReader,
    private readonly keep: number,
  ) {}

  /** The frame's raw bytes; undefined when it cannot be read or decompressed. */
  get(pack: number, frameOffset: number, frameLength: number): Buffer | undefined {
    const key = `${pack}:${frameOffset}`;
    let raw = this.frames.get(key);
    if (raw) return raw;
    try {
      raw = decompressBounded(
        this.dz,
        this.reader.readFrame(pack, frameOffset, frameLength),
        MAX_FRAME_RAW,
        'frame',
      );
    } catch {
      return undefined;
    }
    if (this.frames.size >= this.keep) this.frames.delete(this.frames.keys().next().value!);
    this.frames.set(key, raw);
    return raw;
  }
}

export function writeAll(fd: number, data: Uint8Array, position?: number): void {
  let off = 0;
  while (off < data.length) {
    off += writeSync(
      fd,
      data,
      off,
      data.length - off,
      position === undefined ? null : position + off,
    );
  }
}

/**
 * Write to a temporary name beside the target, then rename: readers see old or new, never half.
 * `mode` applies from creation (a key file is never readable by others, not even briefly).
 */
export function writeAtomic(
  path: string,
  data: string | Uint8Array,
  sync = false,
  mode = 0o666,
): void {
  const tmp = `${path}.tmp-${process.pid}-${randomUUID().slice(0, 8)}`;
  const fd = openSync(tmp, 'wx', mode);
  try {
    try {
      if (typeof data === 'string') writeAll(fd, Buffer.from(data));
      else writeAll(fd, data);
      if (sync) fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
  // The rename itself is durable only once the directory is.
  if (sync) {
    const dfd = openSync(dirname(path), 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  }
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    throw e;
  }
}
