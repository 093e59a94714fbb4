/**
 * Local seeding: before a machine downloads an image, the chunks it already has on disk are
 * put into the local store, so the fetch asks distribution points only for the rest.
 *
 * Two sources: the files of the old OS (each file of the new image whose path exists under
 * the old root is cut with the capture's content-defined chunker, so a changed file still
 * gives the chunks it shares with its new version), and other content stores (a previous
 * image's store, a cache folder). Every chunk is hashed before it is stored.
 */
import { constants, type Stats } from 'node:fs';
import { lstat, open, readdir, type FileHandle } from 'node:fs/promises';
import { Decompressor } from 'zstd-napi';
import { ReimageError } from '../errors.js';
import { hashKey, sha256 } from '../content/digest.js';
import { decompressBounded, FrameBuilder, MAX_FRAME_RAW } from '../content/pack.js';
import {
  PackReader,
  type ChunkIndex,
  type ContentStore,
  type WriteSession,
} from '../content/store.js';
import type { Entry, Manifest } from './manifest.js';
import { cdcChunks, dataSegments } from './posix.js';

/** Verified chunks are committed to the store this often, so an interrupted seed keeps them. */
const COMMIT_EVERY = 64 * 1024 * 1024;
const READ_BUF = 8 * 1024 * 1024;
/** Old files read for one new file the old tree lacks (see `fromRenamed`). */
const RENAME_CANDIDATES = 2;
/** Old folders that may stand for one new folder. */
const DIR_CANDIDATES = 4;

export interface SeedOptions {
  /** The local store the image is fetched into. */
  into: ContentStore;
  /** The manifest of the image about to be fetched. */
  manifest: Manifest;
  /** Root of the old tree (the running OS, `/`, or a machine's disk folder). */
  root?: string;
  /** Other content stores to copy chunks from. */
  stores?: ContentStore[];
  /**
   * Chunks the image does not name but that are to be kept too when found: the old chunks
   * that delta chunks refer to (`referencedChunks` in src/content/delta-fetch.ts).
   */
  keep?: Set<string>;
  signal?: AbortSignal | undefined;
  onProgress?: (p: SeedProgress) => void;
}

export interface SeedProgress {
  filesRead: number;
  bytesRead: number;
  chunksSeeded: number;
}

export interface SeedResult {
  /** Distinct chunks the image names. */
  chunksNeeded: number;
  /** Of those, chunks the local store had before seeding. */
  chunksPresent: number;
  /** Chunks put into the local store (from stores and from old files). */
  chunksSeeded: number;
  /** Their uncompressed size. */
  bytesSeeded: number;
  chunksFromStores: number;
  chunksFromFiles: number;
  /** Bytes read: old files' data plus compressed frames of other stores. */
  bytesRead: number;
  filesRead: number;
  /** Of `filesRead`: old files read under another path than the new file's (renamed). */
  filesReadRenamed: number;
  /** Of `chunksFromFiles`: chunks found in those. */
  chunksFromRenamed: number;
  /** Chunks of `keep` (delta references) put into the local store, and their size. */
  refChunksKept: number;
  refBytesKept: number;
  /**
   * Old files that exist but could not be used: unreadable, a symlink or not a regular file,
   * or behind a symlinked folder (paths absent from the old tree are not counted).
   */
  filesSkipped: number;
}

function cancelled(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    throw new ReimageError('CANCELLED', 'seeding was cancelled', { cause: signal.reason });
  }
}

/**
 * Puts the chunks of `manifest` that `into` lacks and that are found in `stores` or in the
 * files under `root` into `into`. Safe to run again (only what is still missing is looked
 * for) and to cancel (what was verified is committed first).
 */
export async function seedStore(opts: SeedOptions): Promise<SeedResult> {
  const lock = await opts.into.lock('shared', 'seed an image');
  try {
    return await new Seeder(opts).run();
  } finally {
    lock.release();
  }
}

class Seeder {
  private readonly missing = new Set<string>();
  private session!: WriteSession;
  private known!: ChunkIndex;
  private readonly builder: FrameBuilder;
  private readonly result: SeedResult = {
    chunksNeeded: 0,
    chunksPresent: 0,
    chunksSeeded: 0,
    bytesSeeded: 0,
    chunksFromStores: 0,
    chunksFromFiles: 0,
    bytesRead: 0,
    filesRead: 0,
    filesReadRenamed: 0,
    chunksFromRenamed: 0,
    refChunksKept: 0,
    refBytesKept: 0,
    filesSkipped: 0,
  };
  /** Chunks of `keep` the store lacks. */
  private readonly extra = new Set<string>();
  private readonly signal: AbortSignal | undefined;

  constructor(private readonly opts: SeedOptions) {
    this.signal = opts.signal;
    this.builder = new FrameBuilder((frame) => this.session.addFrame(frame));
  }

  async run(): Promise<SeedResult> {
    const known = (this.known = this.opts.into.loadIndex());
    const all = new Set<string>();
    for (const e of this.opts.manifest.entries) {
      if (!e.chunks) continue;
      for (let i = 0; i < e.chunks.length; i += 32) all.add(hashKey(e.chunks, i));
    }
    for (const k of all) if (!known.getByKey(k)) this.missing.add(k);
    for (const k of this.opts.keep ?? []) {
      if (!known.getByKey(k) && !this.missing.has(k)) this.extra.add(k);
    }
    this.result.chunksNeeded = all.size;
    this.result.chunksPresent = all.size - this.missing.size;
    if (this.missing.size === 0) return this.result;
    this.session = this.opts.into.beginSession(known);
    try {
      for (const store of this.opts.stores ?? []) {
        if (this.missing.size === 0) break;
        if (store.root === this.opts.into.root) continue;
        await this.fromStore(store);
      }
      if (this.opts.root !== undefined && this.missing.size > 0) await this.fromFiles();
      await this.commit(false);
    } catch (e) {
      // Keep what was verified: a re-run starts from there.
      await this.commit(false).catch(() => this.session.abort());
      throw e;
    }
    return this.result;
  }

  private add(hash: Buffer, data: Uint8Array, from: 'stores' | 'files'): void {
    this.builder.add(hash, data);
    const k = hashKey(hash);
    if (this.extra.delete(k)) {
      this.result.refChunksKept++;
      this.result.refBytesKept += data.length;
      return;
    }
    this.missing.delete(k);
    this.result.chunksSeeded++;
    this.result.bytesSeeded += data.length;
    if (from === 'stores') this.result.chunksFromStores++;
    else this.result.chunksFromFiles++;
  }

  private async commit(ifLarge: boolean): Promise<void> {
    if (ifLarge && this.session.bytesWritten < COMMIT_EVERY) return;
    this.builder.flush();
    const s = this.session;
    this.session = this.opts.into.beginSession(this.known);
    await s.commit();
    s.close();
  }

  private progress(): void {
    this.opts.onProgress?.({
      filesRead: this.result.filesRead,
      bytesRead: this.result.bytesRead,
      chunksSeeded: this.result.chunksSeeded,
    });
  }

  /** Copies the missing chunks another store has (each one checked against its hash). */
  private async fromStore(store: ContentStore): Promise<void> {
    // A shared lock keeps a gc there from deleting packs under us; a read-only store (a
    // mounted cache) cannot be locked and is read as it is: every chunk is hashed anyway.
    const lock = await store.lock('shared', 'seed another store from it').catch((e: unknown) => {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EACCES' || code === 'EROFS' || code === 'EPERM') return undefined;
      throw e;
    });
    const idx = store.loadIndex();
    const dz = new Decompressor();
    try {
      // Group by frame: each frame is read and decompressed once.
      const frames = new Map<string, Array<{ key: string; offset: number; length: number }>>();
      for (const k of [...this.missing, ...this.extra]) {
        const loc = idx.getByKey(k);
        if (!loc) continue;
        const f = `${loc.pack}:${loc.frameOffset}:${loc.frameLength}`;
        let list = frames.get(f);
        if (!list) frames.set(f, (list = []));
        list.push({ key: k, offset: loc.offset, length: loc.length });
      }
      const readerFor = new PackReader(idx.packPaths);
      try {
        for (const [f, chunks] of frames) {
          cancelled(this.signal);
          const [pack, frameOffset, frameLength] = f.split(':').map(Number) as [
            number,
            number,
            number,
          ];
          let raw: Buffer;
          try {
            const data = readerFor.readFrame(pack, frameOffset, frameLength);
            this.result.bytesRead += data.length;
            raw = decompressBounded(dz, data, MAX_FRAME_RAW, 'frame');
          } catch {
            continue; // a damaged pack there: those chunks come from elsewhere
          }
          for (const c of chunks) {
            if (!this.missing.has(c.key) && !this.extra.has(c.key)) continue;
            const data = raw.subarray(c.offset, c.offset + c.length);
            const hash = sha256(data);
            if (c.offset + c.length > raw.length || hashKey(hash) !== c.key) continue;
            this.add(hash, data, 'stores');
          }
          await this.commit(true);
          this.progress();
        }
      } finally {
        readerFor.close();
      }
    } finally {
      lock?.release();
    }
  }

  /** Chunks the old files at the new image's paths, then old files under other names. */
  private async fromFiles(): Promise<void> {
    const root = Buffer.from(this.opts.root!.replace(/\/+$/, ''));
    const dirOk = new Map<string, 'ok' | 'absent' | 'unsafe'>();
    const buf = Buffer.allocUnsafe(READ_BUF);
    const cuts = new Uint32Array(1024);
    /** Old paths read (latin1): no old file is read twice, so seeding reads at most the tree. */
    const read = new Set<string>();
    /** New files with chunks still missing whose path the old tree lacks. */
    const absent: Entry[] = [];
    for (const e of this.opts.manifest.entries) {
      if (this.missing.size === 0) return;
      if (e.type !== 'file' || !e.chunks || e.chunks.length === 0) continue;
      // Only files with chunks still missing are worth reading.
      if (!this.wants(e)) continue;
      cancelled(this.signal);
      const r = await this.readOld(root, e.path, dirOk, buf, cuts);
      if (r === 'absent') absent.push(e);
      else if (r === 'read') read.add(e.path.toString('latin1'));
    }
    if (absent.length > 0 && this.missing.size > 0) {
      await this.fromRenamed(root, absent, read, dirOk, buf, cuts);
    }
  }

  private wants(e: Entry): boolean {
    for (let i = 0; i < e.chunks!.length; i += 32) {
      if (this.missing.has(hashKey(e.chunks!, i))) return true;
    }
    return false;
  }

  /**
   * Renamed files: for each new file the old tree lacks, the old files whose path is the same
   * once normalised (see `OldNames`): every digit run is a wildcard, the old OS's codename may
   * stand for any one word (`python3.11/x.py` → `python3.13/x.py`, `libz.so.1.2.13` →
   * `libz.so.1.3.1`, `…_bookworm_main_…_Packages` → `…_trixie_main_…_Packages`), one token of a
   * file name of three tokens or more may differ (`archive-keyring.gpg` → `.pgp`), and a folder
   * may have gained a suffix after its version (`libdb5.3` → `libdb5.3t64`). At most
   * `RENAME_CANDIDATES` per file (the same name first, then the closest rule, then the closest
   * size), each old file read once at most in a seed (so never more than the old tree); folders
   * are listed only along the paths of such files.
   */
  private async fromRenamed(
    root: Buffer,
    absent: Entry[],
    read: Set<string>,
    dirOk: Map<string, 'ok' | 'absent' | 'unsafe'>,
    buf: Buffer,
    cuts: Uint32Array,
  ): Promise<void> {
    const names = new OldNames(
      root,
      await oldCodename(root, dirOk, this.parentsAreDirs.bind(this)),
    );
    for (const e of absent) {
      if (this.missing.size === 0) return;
      if (!this.wants(e)) continue;
      cancelled(this.signal);
      const rel = e.path.toString('latin1');
      const slash = rel.lastIndexOf('/');
      const dirs = await names.dirs(slash < 0 ? '' : rel.slice(0, slash));
      const found: Array<{ path: string; far: number; size: number }> = [];
      const name = rel.slice(slash + 1);
      for (const d of dirs) {
        for (const { name: n, far } of await names.match(d, name, 'file')) {
          const path = d === '' ? n : `${d}/${n}`;
          if (path === rel || read.has(path) || found.some((f) => f.path === path)) continue;
          let size: number;
          try {
            const st = await lstat(
              Buffer.concat([root, Buffer.from('/'), Buffer.from(path, 'latin1')]),
            );
            if (!st.isFile()) continue;
            size = st.size;
          } catch {
            continue;
          }
          found.push({ path, far, size });
        }
      }
      found.sort((a, b) => a.far - b.far || Math.abs(a.size - e.size) - Math.abs(b.size - e.size));
      for (const f of found.slice(0, RENAME_CANDIDATES)) {
        if (!this.wants(e)) break;
        read.add(f.path);
        const before = this.result.chunksFromFiles;
        const r = await this.readOld(root, Buffer.from(f.path, 'latin1'), dirOk, buf, cuts);
        if (r === 'read') {
          this.result.filesReadRenamed++;
          this.result.chunksFromRenamed += this.result.chunksFromFiles - before;
        }
      }
    }
  }

  /** Reads and chunks one old file, keeping the chunks still missing. */
  private async readOld(
    root: Buffer,
    rel: Buffer,
    dirOk: Map<string, 'ok' | 'absent' | 'unsafe'>,
    buf: Buffer,
    cuts: Uint32Array,
  ): Promise<'read' | 'absent' | 'skipped'> {
    const parents = await this.parentsAreDirs(root, rel, dirOk);
    if (parents !== 'ok') {
      if (parents === 'unsafe') this.result.filesSkipped++;
      return parents === 'unsafe' ? 'skipped' : 'absent';
    }
    const path = Buffer.concat([root, Buffer.from('/'), rel]);
    let fh: FileHandle;
    let st: Stats;
    try {
      // O_NOFOLLOW: a symlink at the path is not followed (it may point out of the root);
      // O_NONBLOCK: a FIFO put there since the walk does not hang the open.
      fh = await open(
        path,
        constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY,
      );
    } catch (err) {
      // Absent in the old tree is the normal case for a new file; anything else (a symlink:
      // ELOOP, no permission) is a file that could not be used.
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return 'absent';
      this.result.filesSkipped++;
      return 'skipped';
    }
    let r: 'read' | 'skipped' = 'read';
    try {
      st = await fh.stat();
      if (!st.isFile()) {
        this.result.filesSkipped++;
        r = 'skipped';
      } else {
        await this.chunkFile(fh, st, buf, cuts);
        this.result.filesRead++;
      }
    } catch (err) {
      if ((err as { code?: string }).code === 'CANCELLED') throw err;
      this.result.filesSkipped++; // unreadable (EIO, …): its chunks come from a DP
      r = 'skipped';
    } finally {
      await fh.close();
    }
    await this.commit(true);
    this.progress();
    return r;
  }

  /**
   * Whether every parent of `rel` under `root` is a real directory: 'absent' when one does
   * not exist, 'unsafe' when one is a symlink or another kind of file.
   */
  private async parentsAreDirs(
    root: Buffer,
    rel: Buffer,
    cache: Map<string, 'ok' | 'absent' | 'unsafe'>,
  ): Promise<'ok' | 'absent' | 'unsafe'> {
    let i = rel.indexOf(0x2f);
    while (i >= 0) {
      const key = rel.subarray(0, i).toString('latin1');
      let state = cache.get(key);
      if (state === undefined) {
        try {
          const st = await lstat(Buffer.concat([root, Buffer.from('/'), rel.subarray(0, i)]));
          state = st.isDirectory() ? 'ok' : 'unsafe';
        } catch (err) {
          const code = (err as NodeJS.ErrnoException).code;
          state = code === 'ENOENT' || code === 'ENOTDIR' ? 'absent' : 'unsafe';
        }
        cache.set(key, state);
      }
      if (state !== 'ok') return state;
      i = rel.indexOf(0x2f, i + 1);
    }
    return 'ok';
  }

  /** Cuts a file exactly as capture does (same regions, same chunker). */
  private async chunkFile(fh: FileHandle, st: Stats, buf: Buffer, cuts: Uint32Array) {
    const size = st.size;
    let regions: Array<[number, number]> = [[0, size]];
    if (st.blocks * 512 < size) {
      const segments = dataSegments(fh.fd, size);
      const sparse = !(segments.length === 1 && segments[0]![0] === 0 && segments[0]![1] === size);
      if (sparse) regions = segments;
    }
    for (const [start, length] of regions) {
      if (length === 0) continue;
      let filled = 0;
      let pos = 0;
      let off = start;
      let remaining = length;
      for (;;) {
        cancelled(this.signal);
        while (filled < buf.length && remaining > 0) {
          const { bytesRead } = await fh.read(
            buf,
            filled,
            Math.min(buf.length - filled, remaining),
            off,
          );
          if (bytesRead === 0) {
            remaining = 0;
            break;
          }
          filled += bytesRead;
          off += bytesRead;
          remaining -= bytesRead;
          this.result.bytesRead += bytesRead;
        }
        const eof = remaining === 0;
        for (;;) {
          const n = cdcChunks(buf, pos, filled, eof, cuts);
          for (let k = 0; k < n; k++) {
            const len = cuts[k]!;
            const chunk = buf.subarray(pos, pos + len);
            const hash = sha256(chunk);
            const key = hashKey(hash);
            if (this.missing.has(key) || this.extra.has(key)) this.add(hash, chunk, 'files');
            pos += len;
          }
          if (n < cuts.length) break;
        }
        if (eof && pos === filled) break;
        buf.copy(buf, 0, pos, filled);
        filled -= pos;
        pos = 0;
      }
    }
  }
}

type ParentCheck = (
  root: Buffer,
  rel: Buffer,
  cache: Map<string, 'ok' | 'absent' | 'unsafe'>,
) => Promise<'ok' | 'absent' | 'unsafe'>;

/**
 * The old OS's codename (`VERSION_CODENAME` of its os-release, a plain word), read without
 * following symlinks; undefined when there is none.
 */
async function oldCodename(
  root: Buffer,
  dirOk: Map<string, 'ok' | 'absent' | 'unsafe'>,
  parentsAreDirs: ParentCheck,
): Promise<string | undefined> {
  for (const rel of ['usr/lib/os-release', 'etc/os-release']) {
    const relB = Buffer.from(rel);
    if ((await parentsAreDirs(root, relB, dirOk)) !== 'ok') continue;
    let fh: FileHandle | undefined;
    try {
      fh = await open(
        Buffer.concat([root, Buffer.from('/'), relB]),
        constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY,
      );
      if (!(await fh.stat()).isFile()) continue;
      const b = Buffer.alloc(16 * 1024);
      const { bytesRead } = await fh.read(b, 0, b.length, 0);
      const m = /^VERSION_CODENAME=["']?([A-Za-z]{3,32})["']?\s*$/m.exec(
        b.subarray(0, bytesRead).toString('latin1'),
      );
      if (m) return m[1];
    } catch {
      // absent, a symlink, unreadable: try the other one
    } finally {
      await fh?.close();
    }
  }
  return undefined;
}

/** A name with every digit run as NUL (no file name holds one). */
const digitless = (name: string): string => name.replace(/[0-9]+/g, '\0');

/**
 * `name` (digits free) with each one of its tokens as 0x01; none for fewer than three tokens
 * (`new.bin` would match every `*.bin` of the folder; in `a-keyring.gpg` two tokens stay).
 */
function wildcards(name: string): string[] {
  const tokens = [...name.matchAll(/[A-Za-z0-9]+/g)];
  if (tokens.length < 3) return [];
  return tokens
    .slice(0, 16)
    .map(
      (m) =>
        digitless(name.slice(0, m.index)) + '\x01' + digitless(name.slice(m.index + m[0].length)),
    );
}

/**
 * Names of the old tree by normalised name, listed folder by folder as asked (`readdir` only,
 * no symlink is followed: a symlinked folder is not a folder here). Paths are latin1 strings
 * of the raw bytes, relative to the root.
 */
class OldNames {
  private readonly listings = new Map<string, Map<string, Array<{ name: string; dir: boolean }>>>();
  private readonly dirCache = new Map<string, string[]>();
  private readonly codename: RegExp | undefined;

  constructor(
    private readonly root: Buffer,
    codename: string | undefined,
  ) {
    this.codename = codename ? new RegExp(`(?<![A-Za-z])${codename}(?![A-Za-z])`, 'g') : undefined;
  }

  private coded(name: string): string {
    return this.codename ? name.replace(this.codename, '/') : name;
  }

  /**
   * Old keys: the name with the codename as '/' (no file name holds one) and digit runs as
   * NUL; for a file whose name has three tokens (letters and digits) or more, also that with
   * any one token as 0x01 (`archive-keyring.gpg` may be `archive-keyring.pgp`).
   */
  private oldKeys(name: string, file: boolean): string[] {
    const s = this.coded(name);
    return [digitless(s), ...(file ? wildcards(s) : [])];
  }

  /** The keys an old name matching `name` may have, the closest first. */
  private newKeys(name: string, kind: 'file' | 'dir'): string[] {
    const forms = [name];
    if (this.codename) {
      for (const m of name.matchAll(/[A-Za-z]+/g)) {
        if (forms.length > 16) break;
        forms.push(name.slice(0, m.index) + '/' + name.slice(m.index + m[0].length));
      }
    }
    const keys = forms.map(digitless);
    if (kind === 'dir') {
      // A folder that gained a suffix after its version (Debian's 64-bit time_t transition:
      // `libnettle8` → `libnettle8t64`).
      const m = /(?<=[0-9])[a-z]+[0-9]*$/.exec(name);
      if (m) keys.push(digitless(name.slice(0, m.index)));
    } else {
      for (const f of forms) keys.push(...wildcards(f));
    }
    return keys;
  }

  private async listing(dir: string) {
    let l = this.listings.get(dir);
    if (l) return l;
    l = new Map();
    this.listings.set(dir, l);
    const path =
      dir === '' ? this.root : Buffer.concat([this.root, Buffer.from('/' + dir, 'latin1')]);
    try {
      for (const d of await readdir(path, { withFileTypes: true, encoding: 'latin1' })) {
        if (!d.isDirectory() && !d.isFile()) continue;
        for (const k of this.oldKeys(d.name, d.isFile())) {
          let list = l.get(k);
          if (!list) l.set(k, (list = []));
          list.push({ name: d.name, dir: d.isDirectory() });
        }
      }
    } catch {
      // absent or unreadable: nothing there
    }
    return l;
  }

  /**
   * Names in old folder `dir` that may be `name` renamed, the closest first: the same name,
   * then by the key that matched (`far`: 0 = only digits and the codename differ).
   */
  async match(
    dir: string,
    name: string,
    kind: 'file' | 'dir',
  ): Promise<Array<{ name: string; far: number }>> {
    const l = await this.listing(dir);
    const out: Array<{ name: string; far: number }> = [];
    const keys = this.newKeys(name, kind);
    for (let far = 0; far < keys.length; far++) {
      for (const c of l.get(keys[far]!) ?? []) {
        if (c.dir === (kind === 'dir') && !out.some((o) => o.name === c.name)) {
          out.push({ name: c.name, far: c.name === name ? -1 : far });
        }
      }
    }
    out.sort((a, b) => a.far - b.far);
    return out.slice(0, 8);
  }

  /** Old folders that may be new folder `dir` (itself first when it exists). */
  async dirs(dir: string): Promise<string[]> {
    if (dir === '') return [''];
    const cached = this.dirCache.get(dir);
    if (cached) return cached;
    const slash = dir.lastIndexOf('/');
    const name = dir.slice(slash + 1);
    const out: string[] = [];
    for (const p of await this.dirs(slash < 0 ? '' : dir.slice(0, slash))) {
      for (const { name: n } of await this.match(p, name, 'dir')) {
        if (out.length < DIR_CANDIDATES) out.push(p === '' ? n : `${p}/${n}`);
      }
    }
    this.dirCache.set(dir, out);
    return out;
  }
}
