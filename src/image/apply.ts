import { availableParallelism } from 'node:os';
import {
  chmodSync,
  linkSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  realpathSync,
  renameSync,
  rmSync,
  statfsSync,
  symlinkSync,
} from 'node:fs';
import { resolve } from 'node:path';
import type { KeyObject } from 'node:crypto';
import { ReimageError, type ErrorCode } from '../errors.js';
import type { ContentStore } from '../content/store.js';
import { ImageLibrary, checkSignature, type ImageRecord } from './library.js';
import { showPath, type Entry } from './manifest.js';
import { mknod, setXattr, utimensNs } from './posix.js';
import { ProgressMeter, type Progress, type Warning } from './progress.js';
import { BatchQueue, batch, runPool } from './pool.js';
import type { ApplyWorkerData, FileJob, FromApplyWorker } from './apply-worker.js';
import { matchesEntry } from './reuse-check.js';

export interface ApplyOptions {
  store: ContentStore;
  image: string;
  target: string;
  trustedKey?: KeyObject;
  /** Set owners and create devices (default: when running as root). */
  owners?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
  onWarning?: (w: Warning) => void;
  workers?: number;
  /**
   * Reuse the identical files of another tree on the same filesystem (the old OS, in a
   * deployment) by hard link instead of writing them: see docs/deploy-performance.md.
   */
  reuse?: ReuseOptions;
}

export interface ReuseOptions {
  /** The tree to reuse from: the image's path P is looked up at ROOT/P. */
  root: string;
  /** Which image paths (relative, '/'-separated) may be reused; default: every one. */
  include?: (rel: string) => boolean;
}

export interface ApplyResult {
  record: ImageRecord;
  entries: number;
  bytes: number;
  warnings: Warning[];
  /** Files hard-linked from `reuse.root` instead of written, and their bytes. */
  reused: { files: number; bytes: number };
  /** Manifest indices of the reused files (for `restoreReused` and `unshareReused`). */
  reusedEntries: number[];
}

const SLASH = Buffer.from('/');

/**
 * Lays an image out in a new or empty directory, exactly: every type, mode, owner, time and
 * xattr. It never writes outside the target: the manifest is validated first (no absolute or
 * `..` paths, nothing below a symlink, hard links only to earlier files), every file is
 * created with O_EXCL|O_NOFOLLOW in directories this apply made, and symlinks are created
 * last and never followed. On failure, what was written is removed again.
 */
export async function applyImage(opts: ApplyOptions): Promise<ApplyResult> {
  const lib = new ImageLibrary(opts.store);
  const lock = await opts.store.lock('shared', `apply ${opts.image}`);
  const warnings: Warning[] = [];
  const warn = (w: Warning) => {
    warnings.push(w);
    opts.onWarning?.(w);
  };
  const target = resolve(opts.target);
  let created: 'dir' | 'contents' | undefined;
  const queue = new BatchQueue<FileJob>();
  let pool: Promise<void> | undefined;
  const reused = { files: 0, bytes: 0 };
  const reusedEntries: number[] = [];
  try {
    const record = lib.resolve(opts.image);
    if (opts.trustedKey) checkSignature(record, opts.trustedKey);
    if (record.imageFormat === 'opaque') {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `image ${record.id} holds a ${record.opaqueFormat} file: it is applied by its format (applyOpaque)`,
      );
    }
    const { manifest } = lib.loadManifest(record.id);
    const entries = manifest.entries;
    const index = opts.store.loadIndex(record.packs);
    const owners = opts.owners ?? process.getuid?.() === 0;
    const meter = new ProgressMeter('apply', opts.onProgress);
    // Workers start now and load while the jobs are prepared; they get work once the
    // target is ready.
    pool = runPool<FileJob, FromApplyWorker>({
      script: new URL('./apply-worker.js', import.meta.url),
      workerData: { packPaths: index.packPaths, owners } satisfies ApplyWorkerData,
      workers: opts.workers ?? availableParallelism(),
      batches: queue,
      signal: opts.signal,
      cancelled: () =>
        new ReimageError('CANCELLED', 'apply cancelled; what was written has been removed'),
      onMessage: (m) => {
        if (m.type === 'files-done') {
          reused.files += m.reused.length;
          reused.bytes += m.reusedBytes;
          for (const i of m.reused) reusedEntries.push(i);
          meter.bytesDone += m.bytes;
          meter.filesDone += m.files.length;
          const last = m.files.at(-1);
          if (last !== undefined) meter.file = showPath(entries[last]!.path);
          meter.tick();
        } else if (m.type === 'warning') {
          warn({ code: m.code, path: showPath(entries[m.i]!.path), message: m.message });
        } else {
          const code: ErrorCode =
            m.code === 'CHUNK_CORRUPT' || m.code === 'PACK_CORRUPT' || m.code === 'DISK_FULL'
              ? m.code
              : 'APPLY_FAILED';
          const details: Record<string, unknown> = {
            path: showPath(entries[m.i]!.path),
            image: record.id,
          };
          if (m.chunk) details.chunk = m.chunk;
          throw new ReimageError(code, m.message, { details });
        }
      },
    });
    pool.catch(() => {}); // awaited below; no unhandled rejection meanwhile

    // Every chunk must be in the store before anything is written.
    const jobs: FileJob[] = [];
    let bytesTotal = 0;
    const reuseFrom = opts.reuse && reuseSource(opts.reuse);
    entries.forEach((e, i) => {
      if (e.type !== 'file') return;
      const job = fileJob(e, i, abs(target, e.path), index, record.id);
      if (reuseFrom) {
        const from = reuseFrom(e);
        if (from) job.reuse = from;
      }
      bytesTotal += e.size;
      jobs.push(job);
    });

    created = prepareTarget(target);
    meter.bytesTotal = bytesTotal;
    meter.filesTotal = jobs.length;

    // Directories first, writable by us until their own metadata is set at the end.
    for (const e of entries) {
      if (e.type !== 'dir' || e.path.length === 0) continue;
      try {
        mkdirSync(abs(target, e.path), { mode: 0o700 });
      } catch (err) {
        throw applyError(`cannot create ${showPath(e.path)}`, err, { path: showPath(e.path) });
      }
    }

    meter.setPhase('data');
    // In pack order, so that each frame is read and decompressed by one worker, once.
    jobs.sort(
      (a, b) => (a.locs[0] ?? -1) - (b.locs[0] ?? -1) || (a.locs[1] ?? -1) - (b.locs[1] ?? -1),
    );
    for (const b of batch(jobs, (j) => j.size, 256, 4 * 1024 * 1024)) queue.push(b);
    queue.close();
    await pool;

    meter.setPhase('metadata');
    for (const e of entries) {
      if (e.type === 'file' || e.type === 'dir') continue;
      applyOther(target, e, owners, warn);
    }
    // Deepest directories first, the root last, so that setting a directory's time is the
    // last change made inside its parent.
    for (let i = entries.length - 1; i >= 0; i--) {
      const e = entries[i]!;
      if (e.type === 'dir') setMeta(abs(target, e.path), e, owners, warn, true);
    }
    meter.file = undefined;
    meter.setPhase('done');
    reusedEntries.sort((a, b) => a - b);
    return {
      record,
      entries: entries.length,
      bytes: bytesTotal,
      warnings,
      reused,
      reusedEntries,
    };
  } catch (e) {
    queue.close();
    await pool?.catch(() => {});
    if (created) undoTarget(target, created);
    throw e;
  } finally {
    lock.release();
  }
}

export function abs(target: string, rel: Buffer): Buffer {
  return rel.length === 0 ? Buffer.from(target) : Buffer.concat([Buffer.from(target), SLASH, rel]);
}

/** The target must be new or an empty directory: nothing already there can redirect a write. */
/**
 * Removes what an apply wrote: the target itself if the apply made it, else its contents.
 * Never throws, so that the error that made us undo is the one reported.
 */
export function undoTarget(target: string, created: 'dir' | 'contents'): void {
  try {
    if (created === 'dir') rmSync(target, { recursive: true, force: true });
    else
      for (const n of readdirSync(target))
        rmSync(resolve(target, n), { recursive: true, force: true });
  } catch {
    /* best effort: the original error matters more */
  }
}

export function prepareTarget(target: string): 'dir' | 'contents' {
  let st;
  try {
    st = lstatSync(target);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    try {
      mkdirSync(target, { mode: 0o700 });
    } catch (err) {
      throw new ReimageError(
        'APPLY_FAILED',
        `cannot create the target ${target}: ${(err as Error).message}`,
        { cause: err },
      );
    }
    return 'dir';
  }
  if (st.isDirectory() && readdirSync(target).length === 0) {
    // Nobody else may create entries in it while we work: ours, and closed to others.
    const me = process.getuid?.();
    if (me !== undefined && st.uid !== me) {
      throw new ReimageError(
        'TARGET_UNSAFE',
        `${target} belongs to uid ${st.uid}, not to us (uid ${me})`,
        {
          details: { target },
        },
      );
    }
    chmodSync(target, 0o700);
    return 'contents';
  }
  throw new ReimageError(
    'TARGET_NOT_EMPTY',
    `${target} is ${st.isDirectory() ? 'not empty' : 'not a directory'}`,
    {
      details: { target },
    },
  );
}

function applyOther(target: string, e: Entry, owners: boolean, warn: (w: Warning) => void): void {
  const path = abs(target, e.path);
  try {
    switch (e.type) {
      case 'symlink':
        symlinkSync(e.target!, path);
        break;
      case 'hardlink':
        linkSync(abs(target, e.target!), path);
        return; // shares the inode, and so every attribute, of its target
      case 'fifo':
        mknod(path, 'fifo', e.mode & 0o777);
        break;
      case 'char':
      case 'block':
        if (!owners) {
          warn({
            code: 'DEVICE_SKIPPED',
            path: showPath(e.path),
            message: `device ${showPath(e.path)} not created: creating devices needs root`,
          });
          return;
        }
        mknod(path, e.type, e.mode & 0o777, e.major, e.minor);
        break;
      default:
        return;
    }
  } catch (err) {
    throw applyError(`cannot create ${showPath(e.path)}`, err, { path: showPath(e.path) });
  }
  setMeta(path, e, owners, warn, e.type !== 'symlink');
}

/**
 * Owner first (chown clears setuid bits and capabilities), then xattrs (before chmod, so a
 * read-only mode does not stop them when not root), then mode, then times.
 */
export function setMeta(
  path: Buffer,
  e: Entry,
  owners: boolean,
  warn: (w: Warning) => void,
  chmod: boolean,
): void {
  try {
    if (owners) lchownSync(path, e.uid, e.gid);
    for (const [name, value] of e.xattrs) {
      try {
        setXattr(path, name, value);
      } catch (err) {
        if (owners) throw err;
        warn({
          code: 'XATTR_SKIPPED',
          path: showPath(e.path),
          message: `${showPath(e.path)}: xattr ${name.toString()} not set: ${(err as Error).message}`,
        });
      }
    }
    if (chmod) chmodSync(path, e.mode);
    utimensNs(path, e.mtimeNs, e.mtimeNs);
  } catch (err) {
    throw applyError(`cannot set the attributes of ${showPath(e.path)}`, err, {
      path: showPath(e.path),
    });
  }
}

/** An apply error: DISK_FULL when the disk is full, APPLY_FAILED otherwise. */
function applyError(what: string, err: unknown, details: Record<string, unknown>): ReimageError {
  const code = (err as NodeJS.ErrnoException).code;
  const full = code === 'ENOSPC' || code === 'EDQUOT';
  return new ReimageError(
    full ? 'DISK_FULL' : 'APPLY_FAILED',
    `${what}: ${full ? 'no space left on the disk' : (err as Error).message}`,
    { cause: err, details },
  );
}

type ChunkIndex = ReturnType<ContentStore['loadIndex']>;

/** The worker's job for one file entry; every chunk must be in the store. */
function fileJob(e: Entry, i: number, path: Buffer, index: ChunkIndex, image: string): FileJob {
  const n = e.lengths!.length;
  const locs = new Float64Array(n * 4);
  for (let c = 0; c < n; c++) {
    const loc = index.get(e.chunks!, c * 32);
    if (!loc) {
      const hex = e.chunks!.subarray(c * 32, c * 32 + 32).toString('hex');
      throw new ReimageError(
        'CHUNK_MISSING',
        `chunk ${hex} of ${showPath(e.path)} is not in the store`,
        {
          details: { chunk: hex, path: showPath(e.path), image },
        },
      );
    }
    locs[c * 4] = loc.pack;
    locs[c * 4 + 1] = loc.frameOffset;
    locs[c * 4 + 2] = loc.frameLength;
    locs[c * 4 + 3] = loc.offset;
  }
  return {
    i,
    path,
    show: showPath(e.path),
    size: e.size,
    mode: e.mode,
    uid: e.uid,
    gid: e.gid,
    mtimeNs: e.mtimeNs,
    xattrs: e.xattrs,
    segments: e.segments,
    chunks: e.chunks!,
    lengths: e.lengths!,
    locs,
  };
}

/**
 * Where a file entry may be reused from: ROOT/PATH, when PATH is valid UTF-8, allowed by
 * `include`, not sparse and not empty, and its parent folder is reached without any symlink
 * (so a link in the old tree can never make the apply link a file from elsewhere, such as
 * user data, into the new OS). The file itself is checked by the worker (`matchesEntry`).
 */
function reuseSource(r: ReuseOptions): (e: Entry) => Buffer | undefined {
  let root: string;
  try {
    root = realpathSync(r.root);
  } catch {
    return () => undefined;
  }
  const dirOk = new Map<string, boolean>();
  const safeDir = (rel: string): boolean => {
    let ok = dirOk.get(rel);
    if (ok === undefined) {
      const want = rel === '' ? root : `${root}/${rel}`;
      try {
        ok = realpathSync(want) === want;
      } catch {
        ok = false;
      }
      dirOk.set(rel, ok);
    }
    return ok;
  };
  return (e) => {
    if (e.type !== 'file' || e.segments || e.size === 0) return undefined;
    const rel = e.path.toString('utf8');
    if (!Buffer.from(rel, 'utf8').equals(e.path)) return undefined;
    if (r.include && !r.include(rel)) return undefined;
    const slash = rel.lastIndexOf('/');
    if (!safeDir(slash < 0 ? '' : rel.slice(0, slash))) return undefined;
    return abs(root, e.path);
  };
}

export interface ApplyEstimate {
  /** Bytes the apply will allocate on the target's filesystem (whole blocks, folders too). */
  bytes: number;
  /** Inodes it will use. */
  inodes: number;
  /** Files (and their bytes) likely reused: same path, size, mode and mtime, one name. */
  reusableFiles: number;
  reusableBytes: number;
  /** The image's regular-file bytes. */
  imageBytes: number;
}

/**
 * What applying `image` will take on the disk, counting the files of `reuse.root` that the
 * apply will probably hard-link instead of writing (same path, size, mode, mtime and one
 * name: the apply still proves their content by hash, so a wrong guess only costs space
 * that this estimate did not count — the apply then fails with DISK_FULL and undoes itself).
 * Reads the image's manifest and lstats the old files; writes nothing.
 */
export function estimateApply(opts: {
  store: ContentStore;
  image: string;
  reuse?: ReuseOptions;
  blockSize?: number;
}): ApplyEstimate {
  const lib = new ImageLibrary(opts.store);
  const record = lib.resolve(opts.image);
  const { manifest } = lib.loadManifest(record.id);
  const block = opts.blockSize ?? 4096;
  const blocks = (n: number) => Math.ceil(n / block) * block;
  const from = opts.reuse && reuseSource(opts.reuse);
  const est: ApplyEstimate = {
    bytes: 0,
    inodes: 0,
    reusableFiles: 0,
    reusableBytes: 0,
    imageBytes: 0,
  };
  for (const e of manifest.entries) {
    if (e.type === 'hardlink') continue;
    est.inodes++;
    if (e.type === 'dir') est.bytes += block;
    else if (e.type === 'symlink' && (e.target?.length ?? 0) >= 60) est.bytes += block;
    if (e.type !== 'file') continue;
    est.imageBytes += e.size;
    const src = from?.(e);
    if (src) {
      try {
        const st = lstatSync(src, { bigint: true });
        if (
          st.isFile() &&
          st.nlink === 1n &&
          st.size === BigInt(e.size) &&
          st.mtimeNs === e.mtimeNs &&
          Number(st.mode & 0o7777n) === e.mode
        ) {
          est.reusableFiles++;
          est.reusableBytes += e.size;
          est.inodes--;
          continue;
        }
      } catch {
        // not there: written
      }
    }
    const data = e.segments ? e.segments.reduce((a, [, l]) => a + l, 0) : e.size;
    est.bytes += blocks(data);
  }
  return est;
}

/** Free bytes and inodes of the filesystem holding `path` (for the unprivileged caller). */
export function freeSpace(path: string): { bytes: number; inodes: number } {
  const st = statfsSync(path);
  return { bytes: st.bavail * st.bsize, inodes: st.ffree };
}

/**
 * After a rollback: the files an apply reused (`entries`, manifest indices of `image`) are
 * the old OS's own inodes, shared with the new OS until the rollback. Each is checked again
 * at ROOT/PATH against the image entry it equalled when it was linked (content by hash,
 * metadata); one that was changed in place meanwhile (by the new OS, through its name) is
 * written again from the store — its old content is exactly the image's — to a new name and
 * renamed over. The old OS comes back byte for byte. Returns how many were checked and
 * rewritten.
 */
export async function restoreReused(opts: {
  store: ContentStore;
  image: string;
  root: string;
  entries: readonly number[];
  owners?: boolean;
}): Promise<{ checked: number; restored: number }> {
  const owners = opts.owners ?? process.getuid?.() === 0;
  const me: [number, number] = [process.getuid?.() ?? -1, process.getgid?.() ?? -1];
  let checked = 0;
  const restored = await rewriteFromStore(
    opts.store,
    opts.image,
    opts.root,
    opts.entries,
    owners,
    (e, path) => {
      checked++;
      const want = { ...e, chunks: e.chunks!, lengths: e.lengths! };
      return !matchesEntry(path, want, owners ? [e.uid, e.gid] : me, false);
    },
  );
  return { checked, restored };
}

/**
 * After a success that keeps the old OS for a while (`aside` = the rollback area): the files
 * an apply reused are one inode under two names, the new OS's and the rollback copy's. Each
 * rollback copy that still shares the new OS's inode is replaced by its own copy, written from
 * the store (the old file's content is exactly the image's, whatever the new OS did to the
 * shared inode since), so that the running OS changing a file in place can never change the
 * kept old OS. Returns how many were unshared.
 */
export async function unshareReused(opts: {
  store: ContentStore;
  image: string;
  root: string;
  aside: string;
  entries: readonly number[];
  owners?: boolean;
}): Promise<{ unshared: number }> {
  const owners = opts.owners ?? process.getuid?.() === 0;
  const live = resolve(opts.root);
  const unshared = await rewriteFromStore(
    opts.store,
    opts.image,
    opts.aside,
    opts.entries,
    owners,
    (e, kept) => {
      try {
        const a = lstatSync(kept, { bigint: true });
        const b = lstatSync(abs(live, e.path), { bigint: true });
        return a.isFile() && a.ino === b.ino && a.dev === b.dev;
      } catch {
        return false;
      }
    },
  );
  return { unshared };
}

/** Writes the selected file entries again from the store, each to a new name renamed over ROOT/PATH. */
async function rewriteFromStore(
  store: ContentStore,
  image: string,
  root: string,
  entries: readonly number[],
  owners: boolean,
  select: (e: Entry, path: Buffer) => boolean,
): Promise<number> {
  const lib = new ImageLibrary(store);
  const record = lib.resolve(image);
  const { manifest } = lib.loadManifest(record.id);
  const index = store.loadIndex(record.packs);
  const jobs: FileJob[] = [];
  const places: Array<[tmp: Buffer, path: Buffer]> = [];
  const dirs = new Map<string, bigint>();
  for (const i of entries) {
    const e = manifest.entries[i];
    if (!e || e.type !== 'file') continue;
    const path = abs(resolve(root), e.path);
    if (!select(e, path)) continue;
    const tmp = Buffer.concat([path, Buffer.from('.reimage-new')]);
    // The folder gets its time back at the end: a rewritten file is the old one, not a change.
    const dir = path.subarray(0, path.lastIndexOf(0x2f)).toString('latin1');
    if (!dirs.has(dir))
      dirs.set(dir, lstatSync(Buffer.from(dir, 'latin1'), { bigint: true }).mtimeNs);
    rmSync(tmp, { force: true });
    jobs.push(fileJob(e, i, tmp, index, record.id));
    places.push([tmp, path]);
  }
  if (jobs.length === 0) return 0;
  await runPool<FileJob, FromApplyWorker>({
    script: new URL('./apply-worker.js', import.meta.url),
    workerData: { packPaths: index.packPaths, owners } satisfies ApplyWorkerData,
    workers: 1,
    batches: [...batch(jobs, (j) => j.size, 256, 4 * 1024 * 1024)],
    cancelled: () => new ReimageError('CANCELLED', 'cancelled'),
    onMessage: (m) => {
      if (m.type === 'file-failed')
        throw new ReimageError(
          m.code === 'DISK_FULL' ? 'DISK_FULL' : 'APPLY_FAILED',
          `cannot write ${showPath(manifest.entries[m.i]!.path)} again: ${m.message}`,
        );
    },
  });
  for (const [tmp, path] of places) renameSync(tmp, path);
  for (const [dir, mtimeNs] of dirs) utimensNs(Buffer.from(dir, 'latin1'), mtimeNs, mtimeNs);
  return jobs.length;
}
