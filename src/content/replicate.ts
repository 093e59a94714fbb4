import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Decompressor } from 'zstd-napi';
import { isReimageError, ReimageError } from '../errors.js';
import { isHexId, sha256Hex } from './digest.js';
import { decodeIndex, decompressBounded } from './pack.js';
import { TokenBucket } from './remote.js';
import { ContentStore } from './store.js';

/** Bytes read and written at a time: also how much an interrupted copy may have in flight. */
const COPY_CHUNK = 1024 * 1024;
const MAX_MANIFEST_BYTES = 1024 * 1024 * 1024;
/** Where partial copies live on the DP, under deterministic names so a re-run resumes them. */
const TMP_DIR = join('tmp', 'replicate');

export interface ReplicateProgress {
  /** Bytes of the files being copied that are on the DP now (a resumed partial file counts). */
  bytesDone: number;
  bytesTotal: number;
  /** Store-relative path of the file being copied. */
  file: string;
}

export interface ReplicateOptions {
  /** The library's content store folder. */
  from: string;
  /** The distribution point's folder (local or mounted), or a `file://` URL. */
  to: string;
  imageId: string;
  /** Small files to put on the DP after the image (e.g. the package document), store-relative. */
  extraObjects?: Array<{ path: string; data: Buffer }>;
  rateLimitBytesPerSec?: number;
  signal?: AbortSignal;
  onProgress?: (p: ReplicateProgress) => void;
}

export interface ReplicateResult {
  /** Bytes written to the DP by this run (a resumed partial file counts only what was added). */
  bytesCopied: number;
  filesCopied: number;
  /** Files the DP already had with the right size (or, for small files, the same content). */
  filesSkipped: number;
}

interface Planned {
  rel: string;
  size: number;
  verify: (tmpPath: string) => void;
}

/**
 * Copies an image from the library into a distribution point folder: only what the DP lacks
 * (a file of the same size is taken as present; packs are named by their hash and never
 * change). Packs come first, then their indexes (an index appearing is what makes a pack part
 * of the store), then the manifest, the image record and the extra objects. Names are left
 * alone: a DP is read by image id. Every file is copied under `tmp/replicate/` on the DP,
 * verified (pack hash, index checksum, manifest hash) and renamed into place, so a reader
 * never sees half a file. An interrupted run leaves its partial file there; the next run
 * continues it from its length, and a partial file that turns out wrong is copied again.
 */
export async function replicateImage(opts: ReplicateOptions): Promise<ReplicateResult> {
  if (!isHexId(opts.imageId)) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${JSON.stringify(opts.imageId)} is not an image id`,
    );
  }
  const from = ContentStore.open(toPath(opts.from));
  const to = ContentStore.open(toPath(opts.to), { create: true });
  // gc of either store waits while we copy.
  const fromLock = await from.lock('shared', `replicate ${opts.imageId} from here`);
  try {
    const toLock = await to.lock('shared', `replicate ${opts.imageId} to here`);
    try {
      return await new Replication(opts, from, to).run();
    } finally {
      toLock.release();
    }
  } finally {
    fromLock.release();
  }
}

function toPath(p: string): string {
  return p.startsWith('file:') ? fileURLToPath(p) : p;
}

class Replication {
  private readonly bucket: TokenBucket | undefined;
  private readonly dz = new Decompressor();
  private bytesCopied = 0;
  private bytesDone = 0;
  private bytesTotal = 0;
  private filesCopied = 0;
  private filesSkipped = 0;

  constructor(
    private readonly opts: ReplicateOptions,
    private readonly from: ContentStore,
    private readonly to: ContentStore,
  ) {
    const rate = opts.rateLimitBytesPerSec;
    this.bucket = rate && rate > 0 ? new TokenBucket(rate) : undefined;
  }

  async run(): Promise<ReplicateResult> {
    const id = this.opts.imageId;
    const recordRel = `objects/images/${id}.json`;
    const manifestRel = `objects/manifests/${id}.zst`;
    const recordBuf = this.from.readObject('images', `${id}.json`);
    if (!recordBuf) {
      throw new ReimageError('IMAGE_NOT_FOUND', `the library has no image ${id}`, {
        details: { image: id, store: this.from.root },
      });
    }
    const packs = parsePacks(recordBuf, id);

    const plan: Planned[] = [];
    for (const p of packs) {
      plan.push({
        rel: rel(this.from.root, this.from.packPath(p)),
        size: this.sizeInLibrary(this.from.packPath(p)),
        verify: (tmp) => {
          if (hashFile(tmp) !== p) throw corrupt(`pack ${p}`, 'its SHA-256 is not its name');
        },
      });
    }
    // Indexes after every pack: an index makes its pack visible.
    for (const p of packs) {
      plan.push({
        rel: rel(this.from.root, this.from.indexPath(p)),
        size: this.sizeInLibrary(this.from.indexPath(p)),
        verify: (tmp) => {
          const packSize = statSync(this.to.packPath(p)).size;
          try {
            decodeIndex(readFileSync(tmp), packSize, p, () => {});
          } catch (e) {
            throw corrupt(`index of pack ${p}`, (e as Error).message);
          }
        },
      });
    }
    plan.push({
      rel: manifestRel,
      size: this.sizeInLibrary(join(this.from.root, manifestRel)),
      verify: (tmp) => {
        let ok = false;
        try {
          const m = decompressBounded(this.dz, readFileSync(tmp), MAX_MANIFEST_BYTES, 'manifest');
          ok = sha256Hex(m) === id;
        } catch {
          ok = false;
        }
        if (!ok) throw corrupt(`manifest ${id}`, 'it does not hash to the image id');
      },
    });
    plan.push({
      rel: recordRel,
      size: recordBuf.length,
      verify: (tmp) => {
        if (!readFileSync(tmp).equals(recordBuf)) throw corrupt(`image record ${id}`, 'differs');
      },
    });

    const todo = plan.filter((f) => {
      const have = sizeOf(join(this.to.root, f.rel));
      // The record is small and may be rewritten in the library: compare its content.
      const same =
        f.rel === recordRel
          ? have === f.size && readFileSync(join(this.to.root, f.rel)).equals(recordBuf)
          : have === f.size;
      if (same) this.filesSkipped++;
      return !same;
    });
    const extras = (this.opts.extraObjects ?? []).filter((x) => {
      checkRel(x.path);
      const target = join(this.to.root, x.path);
      const same = sizeOf(target) === x.data.length && readFileSync(target).equals(x.data);
      if (same) this.filesSkipped++;
      return !same;
    });
    this.bytesTotal =
      todo.reduce((n, f) => n + f.size, 0) + extras.reduce((n, x) => n + x.data.length, 0);
    for (const f of todo)
      this.bytesDone += Math.max(0, Math.min(sizeOf(this.tmpPath(f.rel)), f.size));

    for (const f of todo) await this.copy(f);
    for (const x of extras) {
      this.cancelled();
      const tmp = this.tmpPath(x.path);
      mkdirSync(dirname(tmp), { recursive: true });
      await this.bucket?.take(x.data.length, this.opts.signal).catch((e) => this.rethrow(e));
      const fd = openSync(tmp, 'w');
      try {
        writeAll(fd, x.data);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      this.place(tmp, join(this.to.root, x.path));
      this.bytesCopied += x.data.length;
      this.bytesDone += x.data.length;
      this.filesCopied++;
      this.progress(x.path);
    }
    return {
      bytesCopied: this.bytesCopied,
      filesCopied: this.filesCopied,
      filesSkipped: this.filesSkipped,
    };
  }

  private sizeInLibrary(path: string): number {
    const n = sizeOf(path);
    if (n < 0) {
      throw new ReimageError(
        'PACK_CORRUPT',
        `the library lacks ${rel(this.from.root, path)}, which image ${this.opts.imageId} needs`,
        { details: { image: this.opts.imageId, path } },
      );
    }
    return n;
  }

  private tmpPath(relPath: string): string {
    return join(this.to.root, TMP_DIR, relPath.replaceAll('/', '_'));
  }

  /** Copies one file, resuming a partial temp file; verifies it, recopying once if wrong. */
  private async copy(f: Planned): Promise<void> {
    const tmp = this.tmpPath(f.rel);
    mkdirSync(dirname(tmp), { recursive: true });
    for (let attempt = 0; ; attempt++) {
      let have = sizeOf(tmp);
      if (have > f.size) {
        rmSync(tmp, { force: true });
        this.bytesDone -= Math.min(have, f.size);
        have = -1;
      }
      await this.append(join(this.from.root, f.rel), tmp, Math.max(have, 0), f.size, f.rel);
      try {
        f.verify(tmp);
        break;
      } catch (e) {
        rmSync(tmp, { force: true });
        this.bytesDone -= f.size;
        if (attempt > 0) throw e; // the library's own copy is bad, or the DP corrupts writes
      }
    }
    this.place(tmp, join(this.to.root, f.rel));
    this.filesCopied++;
  }

  private async append(
    src: string,
    tmp: string,
    start: number,
    size: number,
    relPath: string,
  ): Promise<void> {
    const fin = openSync(src, 'r');
    const fout = openSync(tmp, start > 0 ? 'r+' : 'w');
    try {
      const buf = Buffer.allocUnsafe(COPY_CHUNK);
      let pos = start;
      while (pos < size) {
        this.cancelled();
        const n = Math.min(COPY_CHUNK, size - pos);
        await this.bucket?.take(n, this.opts.signal).catch((e) => this.rethrow(e));
        const got = readSync(fin, buf, 0, n, pos);
        if (got !== n) {
          throw new ReimageError('PACK_CORRUPT', `${src} changed while it was copied`, {
            details: { path: src },
          });
        }
        let off = 0;
        while (off < n) off += writeSync(fout, buf, off, n - off, pos + off);
        pos += n;
        this.bytesCopied += n;
        this.bytesDone += n;
        this.progress(relPath);
      }
      fsyncSync(fout);
    } finally {
      closeSync(fout);
      closeSync(fin);
    }
  }

  /** Renames a complete, verified temp file to its final name, durably. */
  private place(tmp: string, target: string): void {
    mkdirSync(dirname(target), { recursive: true });
    renameSync(tmp, target);
    const dfd = openSync(dirname(target), 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  }

  private progress(file: string): void {
    this.opts.onProgress?.({ bytesDone: this.bytesDone, bytesTotal: this.bytesTotal, file });
  }

  private cancelled(): void {
    if (this.opts.signal?.aborted) {
      throw new ReimageError('CANCELLED', 'the replication was cancelled', {
        cause: this.opts.signal.reason,
      });
    }
  }

  private rethrow(e: unknown): never {
    if (isReimageError(e)) throw e;
    this.cancelled();
    throw e;
  }
}

function parsePacks(buf: Buffer, id: string): string[] {
  let rec: unknown;
  try {
    rec = JSON.parse(buf.toString('utf8'));
  } catch (e) {
    throw new ReimageError('STORE_INVALID', `the image record of ${id} is not JSON`, { cause: e });
  }
  const packs = (rec as { packs?: unknown } | null)?.packs;
  if (!Array.isArray(packs) || !packs.every((p) => typeof p === 'string' && isHexId(p))) {
    throw new ReimageError('STORE_INVALID', `the image record of ${id} has no valid pack list`);
  }
  return packs as string[];
}

function checkRel(p: string): void {
  const parts = p.split('/');
  if (p.startsWith('/') || parts.some((x) => x === '' || x === '.' || x === '..')) {
    throw new ReimageError('INVALID_ARGUMENT', `${JSON.stringify(p)} is not a store-relative path`);
  }
}

function rel(root: string, path: string): string {
  return path
    .slice(root.length + 1)
    .split(/[\\/]/)
    .join('/');
}

function sizeOf(path: string): number {
  try {
    return statSync(path).size;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return -1;
    throw e;
  }
}

function hashFile(path: string): string {
  const h = createHash('sha256');
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.allocUnsafe(COPY_CHUNK);
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return h.digest('hex');
}

function writeAll(fd: number, data: Buffer): void {
  let off = 0;
  while (off < data.length) off += writeSync(fd, data, off, data.length - off);
}

function corrupt(what: string, why: string): ReimageError {
  return new ReimageError(
    'PACK_CORRUPT',
    `the copy of ${what} on the distribution point is wrong: ${why}`,
    {
      details: { what },
    },
  );
}
