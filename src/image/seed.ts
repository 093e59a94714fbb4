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
import { lstat, open, type FileHandle } from 'node:fs/promises';
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
import type { Manifest } from './manifest.js';
import { cdcChunks, dataSegments } from './posix.js';

/** Verified chunks are committed to the store this often, so an interrupted seed keeps them. */
const COMMIT_EVERY = 64 * 1024 * 1024;
const READ_BUF = 8 * 1024 * 1024;

export interface SeedOptions {
  /** The local store the image is fetched into. */
  into: ContentStore;
  /** The manifest of the image about to be fetched. */
  manifest: Manifest;
  /** Root of the old tree (the running OS, `/`, or a machine's disk folder). */
  root?: string;
  /** Other content stores to copy chunks from. */
  stores?: ContentStore[];
  signal?: AbortSignal;
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
  /** Old files that could not be used: unreadable, not a regular file, or behind a symlink. */
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
    filesSkipped: 0,
  };
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
    this.missing.delete(hashKey(hash));
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
    const lock = await store.lock('shared', 'seed another store from it');
    const idx = store.loadIndex();
    const dz = new Decompressor();
    try {
      // Group by frame: each frame is read and decompressed once.
      const frames = new Map<string, Array<{ key: string; offset: number; length: number }>>();
      for (const k of this.missing) {
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
            if (!this.missing.has(c.key)) continue;
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
      lock.release();
    }
  }

  /** Chunks the old files at the new image's paths and keeps the chunks it needs. */
  private async fromFiles(): Promise<void> {
    const root = Buffer.from(this.opts.root!.replace(/\/+$/, ''));
    const dirOk = new Map<string, boolean>();
    const buf = Buffer.allocUnsafe(READ_BUF);
    const cuts = new Uint32Array(1024);
    for (const e of this.opts.manifest.entries) {
      if (this.missing.size === 0) return;
      if (e.type !== 'file' || !e.chunks || e.chunks.length === 0) continue;
      // Only files with chunks still missing are worth reading.
      let wants = false;
      for (let i = 0; i < e.chunks.length && !wants; i += 32) {
        wants = this.missing.has(hashKey(e.chunks, i));
      }
      if (!wants) continue;
      cancelled(this.signal);
      if (!(await this.parentsAreDirs(root, e.path, dirOk))) {
        this.result.filesSkipped++;
        continue;
      }
      const path = Buffer.concat([root, Buffer.from('/'), e.path]);
      let fh: FileHandle;
      let st: Stats;
      try {
        // O_NOFOLLOW: a symlink at the path is not followed (it may point out of the root);
        // O_NONBLOCK: a FIFO put there since the walk does not hang the open.
        fh = await open(
          path,
          constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY,
        );
      } catch {
        this.result.filesSkipped++;
        continue;
      }
      try {
        st = await fh.stat();
        if (!st.isFile()) {
          this.result.filesSkipped++;
          continue;
        }
        await this.chunkFile(fh, st, buf, cuts);
        this.result.filesRead++;
      } catch (err) {
        if ((err as { code?: string }).code === 'CANCELLED') throw err;
        this.result.filesSkipped++; // unreadable (EIO, …): its chunks come from a DP
      } finally {
        await fh.close();
      }
      await this.commit(true);
      this.progress();
    }
  }

  /** Whether every parent of `rel` under `root` is a real directory (no symlink). */
  private async parentsAreDirs(
    root: Buffer,
    rel: Buffer,
    cache: Map<string, boolean>,
  ): Promise<boolean> {
    let i = rel.indexOf(0x2f);
    while (i >= 0) {
      const key = rel.subarray(0, i).toString('latin1');
      let ok = cache.get(key);
      if (ok === undefined) {
        try {
          const st = await lstat(Buffer.concat([root, Buffer.from('/'), rel.subarray(0, i)]));
          ok = st.isDirectory();
        } catch {
          ok = false;
        }
        cache.set(key, ok);
      }
      if (!ok) return false;
      i = rel.indexOf(0x2f, i + 1);
    }
    return true;
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
            if (this.missing.has(hashKey(hash))) this.add(hash, chunk, 'files');
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
