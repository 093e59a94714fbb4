import { availableParallelism } from 'node:os';
import {
  chmodSync,
  linkSync,
  lchownSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  rmSync,
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
}

export interface ApplyResult {
  record: ImageRecord;
  entries: number;
  bytes: number;
  warnings: Warning[];
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
          meter.bytesDone += m.bytes;
          meter.filesDone += m.files.length;
          const last = m.files.at(-1);
          if (last !== undefined) meter.file = showPath(entries[last]!.path);
          meter.tick();
        } else if (m.type === 'warning') {
          warn({ code: m.code, path: showPath(entries[m.i]!.path), message: m.message });
        } else {
          const code: ErrorCode =
            m.code === 'CHUNK_CORRUPT' || m.code === 'PACK_CORRUPT' ? m.code : 'APPLY_FAILED';
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
    entries.forEach((e, i) => {
      if (e.type !== 'file') return;
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
              details: { chunk: hex, path: showPath(e.path), image: record.id },
            },
          );
        }
        locs[c * 4] = loc.pack;
        locs[c * 4 + 1] = loc.frameOffset;
        locs[c * 4 + 2] = loc.frameLength;
        locs[c * 4 + 3] = loc.offset;
      }
      bytesTotal += e.size;
      jobs.push({
        i,
        path: abs(target, e.path),
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
      });
    });

    created = prepareTarget(target);
    meter.bytesTotal = bytesTotal;
    meter.filesTotal = jobs.length;

    // Directories first, writable by us until their own metadata is set at the end.
    for (const e of entries) {
      if (e.type === 'dir' && e.path.length > 0) mkdirSync(abs(target, e.path), { mode: 0o700 });
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
    return { record, entries: entries.length, bytes: bytesTotal, warnings };
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
    throw new ReimageError(
      'APPLY_FAILED',
      `cannot create ${showPath(e.path)}: ${(err as Error).message}`,
      { cause: err, details: { path: showPath(e.path) } },
    );
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
    throw new ReimageError(
      'APPLY_FAILED',
      `cannot set the attributes of ${showPath(e.path)}: ${(err as Error).message}`,
      {
        cause: err,
        details: { path: showPath(e.path) },
      },
    );
  }
}
