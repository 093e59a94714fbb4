import { availableParallelism, hostname } from 'node:os';
import {
  closeSync,
  constants,
  lstatSync,
  openSync,
  readlinkSync,
  readSync,
  realpathSync,
  type BigIntStats,
} from 'node:fs';
import { relative, resolve, sep } from 'node:path';
import { Minimatch } from 'minimatch';
import type { KeyObject } from 'node:crypto';
import { Compressor, Decompressor } from 'zstd-napi';
import { ReimageError } from '../errors.js';
import type { ContentStore, ChunkIndex } from '../content/store.js';
import type { Frame } from '../content/pack.js';
import { hardlinkEntry, joinPath, showPath, type Entry } from './manifest.js';
import { ImageLibrary, checkImageName, type ImageProperties, type ImageRecord } from './library.js';
import { recordImage } from './record.js';
import { majorMinor, readXattrs, scanDir, ST, STAT_FIELDS, type ScanResult } from './posix.js';
import { ProgressMeter, type Progress, type Warning } from './progress.js';
import type { CaptureWorkerData, FileTask, FromWorker } from './capture-worker.js';
import { BatchQueue, runPool } from './pool.js';
import { computeDeltas, type DeltaResult } from './delta-capture.js';

/**
 * Excluded with `--system`: the contents of pseudo and volatile filesystems of a live system,
 * package caches (downloaded again when needed) and the reimage client's own state (its
 * identity, caches and state stores belong to this machine, not to an image of it).
 * docs/capture.md lists them.
 */
export const SYSTEM_EXCLUDES = [
  '/proc/*',
  '/sys/*',
  '/dev/*',
  '/run/*',
  '/tmp/*',
  '/var/tmp/*',
  '/mnt/*',
  '/media/*',
  '/lost+found/*',
  // package caches
  '/var/cache/apt/archives/*.deb',
  '/var/cache/apt/archives/partial/*',
  '/var/cache/apt/*.bin',
  '/var/cache/dnf/*',
  '/var/cache/yum/*',
  '/var/cache/zypp/packages/*',
  '/root/.cache/pip/*',
  '/root/.npm/_cacache/*',
  // the reimage client's state and caches
  '/var/lib/reimage/*',
  '/var/cache/reimage/*',
  '/root/.cache/reimage/*',
  '/etc/reimage/client.json',
  '/etc/reimage/credential',
  '/etc/reimage/policy-cache.json',
];

export interface CaptureOptions {
  source: string;
  store: ContentStore;
  name: string;
  description?: string;
  /** Typed properties (os, version, arch) and free-form ones. */
  properties?: Record<string, string>;
  sourceMachine?: string;
  excludes?: string[];
  /**
   * Regular files captured as empty (their content is not read; owner, mode and mtime are
   * kept): globs like `excludes`. Generalization empties /etc/machine-id and logs this way.
   */
  emptyFiles?: string[];
  system?: boolean;
  /** Do not descend into other filesystems (default: true with `system`). */
  oneFileSystem?: boolean;
  skipUnreadable?: boolean;
  /** Name or id of an earlier capture of the same tree: unchanged files are not read again. */
  parent?: string;
  /**
   * With `parent`: also store delta chunks of new chunks against the parent's file at the same
   * path (docs/content-store.md, "Delta packs"). Default true.
   */
  deltas?: boolean;
  signKey?: KeyObject;
  signal?: AbortSignal;
  /** Reads at most this many bytes per second (roughly), so a live machine stays usable. */
  readRate?: number;
  /**
   * Awaited after all data is read and before the image is committed: a user interface that
   * is asking "cancel?" holds the commit until it has the answer (then `signal` decides).
   */
  beforeCommit?: () => Promise<void>;
  onProgress?: (p: Progress) => void;
  onWarning?: (w: Warning) => void;
  workers?: number;
  level?: number;
}

export interface CaptureResult {
  record: ImageRecord;
  warnings: Warning[];
  /** false when an identical tree was already in the store */
  created: boolean;
  /** files taken from the parent image without reading them */
  reused: number;
  /** Delta chunks stored against the parent (captures with `parent` only). */
  deltas?: DeltaResult;
}

interface StatFacts {
  ino: bigint;
  ctimeNs: bigint;
}

interface ParentFile {
  ino: string;
  size: number;
  mtimeNs: string;
  ctimeNs: string;
  entry: Entry;
}

const BATCH_FILES = 64;
const BATCH_BYTES = 1024 * 1024;
const BIG_FILE = 8 * 1024 * 1024;

/** Captures a directory tree into the store as a native v1 image. */
export async function captureImage(opts: CaptureOptions): Promise<CaptureResult> {
  checkImageName(opts.name);
  const source = resolve(opts.source);
  let st: BigIntStats;
  try {
    st = lstatSync(source, { bigint: true });
  } catch (e) {
    throw new ReimageError('SOURCE_NOT_DIRECTORY', `cannot read the capture source ${source}`, {
      cause: e,
    });
  }
  if (!st.isDirectory())
    throw new ReimageError('SOURCE_NOT_DIRECTORY', `${source} is not a directory`);

  const store = opts.store;
  const lib = new ImageLibrary(store);
  const warnings: Warning[] = [];
  const warn = (w: Warning) => {
    warnings.push(w);
    opts.onWarning?.(w);
  };
  const meter = new ProgressMeter('capture', opts.onProgress);
  const lock = await store.lock('shared', `capture ${opts.name}`);
  let session: ReturnType<ContentStore['beginSession']> | undefined;
  try {
    const parent = opts.parent ? loadParent(lib, opts.parent) : undefined;
    checkAborted(opts.signal);

    // 1-3. Walk the tree in steps, handing files to the workers as they are found, so that
    // reading and compressing overlap the walk. Files unchanged since the parent are reused.
    const known = store.loadIndex();
    session = store.beginSession(known);
    meter.setPhase('data');
    const queue = new BatchQueue<FileTask>();
    const walker = new Walker(source, store.root, opts, warn, parent, meter);
    // Workers start with the first file to read: an unchanged re-capture needs none.
    let pool: Promise<Map<number, string>> | undefined;
    let poolFailure: { e: unknown } | undefined;
    const startPool = () => {
      if (pool) return;
      pool = runWorkers(queue, walker.entries, known, session!, opts, meter, warn);
      pool.catch((e: unknown) => (poolFailure ??= { e })); // stops the walk below
    };
    let pending: FileTask[] = [];
    let pendingBytes = 0;
    // With a read rate the walk still runs ahead (so the totals, and the time left, cover the
    // tree) while files are handed to the workers no faster than the rate.
    const backlog: FileTask[] = [];
    let released = 0;
    let handed = 0;
    const rateStart = Date.now();
    const release = () => {
      const allowed = (opts.readRate! * (Date.now() - rateStart)) / 1000;
      while (released < backlog.length && handed <= allowed) {
        const t = backlog[released]!;
        backlog[released++] = undefined as unknown as FileTask; // let it go
        handed += t.size;
        startPool();
        queue.push([t]);
      }
    };
    try {
      while (!walker.done) {
        walker.step(512, (t) => {
          if (opts.readRate) {
            backlog.push(t);
            return;
          }
          // A big file alone would keep one worker busy after the others run dry: start it early.
          startPool();
          if (t.size >= BIG_FILE) return queue.pushFront([t]);
          pending.push(t);
          pendingBytes += t.size;
          if (pending.length >= BATCH_FILES || pendingBytes >= BATCH_BYTES) {
            queue.push(pending);
            pending = [];
            pendingBytes = 0;
          }
        });
        checkAborted(opts.signal);
        if (poolFailure) throw poolFailure.e;
        if (opts.readRate) release();
        meter.tick();
        await new Promise<void>((r) => setImmediate(r));
      }
      while (released < backlog.length) {
        checkAborted(opts.signal);
        if (poolFailure) throw poolFailure.e;
        release();
        meter.tick();
        await new Promise((r) => setTimeout(r, 50));
      }
      if (pending.length) queue.push(pending);
      queue.close();
    } catch (e) {
      queue.close();
      await pool?.catch(() => {});
      throw e;
    }
    const failed = pool ? await pool : new Map<number, string>();
    checkAborted(opts.signal);
    await opts.beforeCommit?.();
    checkAborted(opts.signal);
    const entries = walker.entries;
    const statFacts = walker.stats;
    const kept = dropFailed(entries, failed, warn);
    let deltas: DeltaResult | undefined;
    if (parent && opts.deltas !== false) {
      meter.setPhase('commit'); // deltas are written as part of the commit
      deltas = await computeDeltas({
        store,
        known,
        source,
        parent: parent.byPath,
        entries: kept,
        signal: opts.signal,
        level: opts.level,
        workers: opts.workers,
        frameOf: (k) => session!.frameOf(k),
      });
      checkAborted(opts.signal);
    }

    // 4. Manifest, id, record.
    meter.setPhase('commit');
    lock.check();
    const { record, created } = await recordImage({
      lib,
      session,
      known,
      entries: kept,
      properties: () => makeProperties(opts, source),
      parent: parent?.id,
      signKey: opts.signKey,
      deltas: deltas?.id ? [deltas.id] : undefined,
    });
    const id = record.id;
    writeStatCache(store, id, kept, entries, statFacts);
    lib.setName(opts.name, id);
    session = undefined; // committed and closed by recordImage
    meter.file = undefined;
    meter.setPhase('done');
    return {
      record,
      warnings,
      created,
      reused: walker.reused,
      ...(deltas ? { deltas } : {}),
    };
  } catch (e) {
    await session?.abort();
    throw e;
  } finally {
    lock.release();
  }
}

function checkAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted)
    throw new ReimageError('CANCELLED', 'capture cancelled; nothing was recorded');
}

interface WalkFacts extends StatFacts {
  maybeSparse: boolean;
}

interface DirCursor {
  rel: Buffer;
  scan: ScanResult;
  next: number;
}

/** What the walk needs of an lstat, from scanDir (or fs.lstat for the root). */
interface Stat {
  mode: bigint;
  uid: bigint;
  gid: bigint;
  nlink: bigint;
  size: bigint;
  blocks: bigint;
  ino: bigint;
  dev: bigint;
  rdev: bigint;
  mtimeNs: bigint;
  ctimeNs: bigint;
}

const S_IFMT = 0o170000n;
const S_IFREG = 0o100000n;
const S_IFDIR = 0o040000n;
const S_IFLNK = 0o120000n;
const S_IFIFO = 0o010000n;
const S_IFCHR = 0o020000n;
const S_IFBLK = 0o060000n;
const S_IFSOCK = 0o140000n;

function statAt(stats: BigInt64Array, i: number): Stat {
  const b = i * STAT_FIELDS;
  return {
    mode: stats[b + ST.mode]!,
    uid: stats[b + ST.uid]!,
    gid: stats[b + ST.gid]!,
    nlink: stats[b + ST.nlink]!,
    size: stats[b + ST.size]!,
    blocks: stats[b + ST.blocks]!,
    ino: stats[b + ST.ino]!,
    dev: stats[b + ST.dev]!,
    rdev: stats[b + ST.rdev]!,
    mtimeNs: stats[b + ST.mtimeNs]!,
    ctimeNs: stats[b + ST.ctimeNs]!,
  };
}

/**
 * Depth-first walk in manifest order, a few hundred entries per step. Each directory is read
 * with one native call (names, lstat, symlink target and xattrs of every child, sorted).
 */
class Walker {
  readonly entries: Entry[] = [];
  readonly stats = new Map<number, WalkFacts>();
  done = false;
  reused = 0;
  private readonly stack: DirCursor[] = [];
  private readonly links = new Map<string, Buffer>();
  private readonly patterns: Minimatch[];
  private readonly emptied: Minimatch[];
  private readonly storeRel: string | undefined;
  private readonly oneFs: boolean;
  private readonly root: Buffer;
  private readonly rootDev: bigint;
  private started = false;

  constructor(
    source: string,
    storeRoot: string,
    private readonly opts: CaptureOptions,
    private readonly warn: (w: Warning) => void,
    private readonly parent: { files: Map<string, ParentFile> } | undefined,
    private readonly meter: ProgressMeter,
  ) {
    const glob = (p: string) =>
      new Minimatch(p.startsWith('/') ? p : `**/${p}`, {
        dot: true,
        nocomment: true,
        nonegate: true,
      });
    this.patterns = [...(opts.system ? SYSTEM_EXCLUDES : []), ...(opts.excludes ?? [])].map(glob);
    this.emptied = (opts.emptyFiles ?? []).map(glob);
    // Never capture the store into itself.
    try {
      const r = relative(realpathSync(source), realpathSync(storeRoot));
      if (r && !r.startsWith('..') && !r.startsWith(sep))
        this.storeRel = '/' + r.split(sep).join('/');
    } catch {
      /* the store is elsewhere */
    }
    this.oneFs = opts.oneFileSystem ?? opts.system ?? false;
    this.root = Buffer.from(source);
    this.rootDev = lstatSync(this.root, { bigint: true }).dev;
  }

  private abs(rel: Buffer): Buffer {
    return rel.length === 0 ? this.root : Buffer.concat([this.root, SLASH, rel]);
  }

  private excluded(rel: Buffer): boolean {
    if (this.patterns.length === 0 && !this.storeRel) return false;
    const p = '/' + rel.toString('utf8');
    if (this.storeRel && p === this.storeRel) return true;
    return this.patterns.some((m) => m.match(p));
  }

  /** Visits up to `max` entries; files to read are handed to `onFile`. */
  step(max: number, onFile: (t: FileTask) => void): void {
    if (!this.started) {
      this.started = true;
      const st = lstatSync(this.root, { bigint: true });
      let xattrs: Array<[Buffer, Buffer]> = [];
      try {
        xattrs = readXattrs(this.root);
      } catch (err) {
        this.unreadable(Buffer.alloc(0), err);
      }
      this.visit(Buffer.alloc(0), st, undefined, xattrs, onFile);
    }
    for (let n = 0; n < max; n++) {
      const top = this.stack[this.stack.length - 1];
      if (!top) {
        this.done = true;
        return;
      }
      const { scan } = top;
      if (top.next >= scan.names.length) {
        this.stack.pop();
        continue;
      }
      const i = top.next++;
      const rel = joinPath(top.rel, scan.names[i]!);
      if (this.excluded(rel)) continue;
      const error = scan.errors[i];
      const st = statAt(scan.stats, i);
      if (error !== undefined) {
        if (st.mode === 0n && error === 'ENOENT') continue; // vanished: as if it never was
        this.unreadable(
          rel,
          Object.assign(new Error(`${error} (reading its attributes)`), {
            code: error,
            syscall: 'scandir',
          }),
        );
        if (st.mode === 0n) continue;
      }
      this.visit(rel, st, scan.targets[i], scan.xattrs[i] ?? [], onFile);
    }
  }

  private visit(
    rel: Buffer,
    st: Stat,
    target: Buffer | undefined,
    xattrs: Array<[Buffer, Buffer]>,
    onFile: (t: FileTask) => void,
  ): void {
    const fmt = st.mode & S_IFMT;
    const e: Entry = {
      path: rel,
      type: 'file',
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      mtimeNs: st.mtimeNs,
      size: 0,
      xattrs,
    };
    if (fmt === S_IFREG) {
      if (st.nlink > 1n) {
        const key = `${st.dev}:${st.ino}`;
        const first = this.links.get(key);
        if (first) {
          this.entries.push(hardlinkEntry(rel, first));
          return;
        }
        this.links.set(key, rel);
      }
      e.size = Number(st.size);
      if (this.emptied.length && e.size > 0) {
        const p = '/' + rel.toString('utf8');
        if (this.emptied.some((m) => m.match(p))) e.size = 0;
      }
    } else if (fmt === S_IFDIR) {
      e.type = 'dir';
    } else if (fmt === S_IFLNK) {
      e.type = 'symlink';
      e.target = target ?? readlinkSync(this.abs(rel), { encoding: 'buffer' });
    } else if (fmt === S_IFIFO) {
      e.type = 'fifo';
    } else if (fmt === S_IFCHR || fmt === S_IFBLK) {
      e.type = fmt === S_IFCHR ? 'char' : 'block';
      [e.major, e.minor] = majorMinor(st.rdev);
    } else if (fmt === S_IFSOCK) {
      this.warn({
        code: 'SOCKET_SKIPPED',
        path: showPath(rel),
        message: `socket ${showPath(rel)} skipped: sockets are recreated by the programs that own them`,
      });
      return;
    } else {
      this.warn({
        code: 'TYPE_SKIPPED',
        path: showPath(rel),
        message: `${showPath(rel)} has an unknown file type and was skipped`,
      });
      return;
    }
    const i = this.entries.length;
    this.entries.push(e);
    if (e.type === 'file') this.addFile(i, e, st, onFile);
    if (e.type !== 'dir') return;
    if (this.oneFs && rel.length > 0 && st.dev !== this.rootDev) return;
    let scan: ScanResult;
    try {
      scan = scanDir(this.abs(rel));
    } catch (err) {
      this.unreadable(rel, err);
      return;
    }
    this.stack.push({ rel, scan, next: 0 });
  }

  private addFile(i: number, e: Entry, st: Stat, onFile: (t: FileTask) => void): void {
    const m = this.meter;
    m.bytesTotal += e.size;
    m.filesTotal++;
    const maybeSparse = st.blocks * 512n < st.size;
    this.stats.set(i, { ino: st.ino, ctimeNs: st.ctimeNs, maybeSparse });
    const p = this.parent?.files.get(e.path.toString('latin1'));
    if (
      p &&
      p.size === e.size &&
      p.mtimeNs === String(e.mtimeNs) &&
      p.ino === String(st.ino) &&
      p.ctimeNs === String(st.ctimeNs)
    ) {
      e.chunks = p.entry.chunks;
      e.lengths = p.entry.lengths;
      if (p.entry.segments) e.segments = p.entry.segments;
      this.reused++;
      m.bytesDone += e.size;
      m.filesDone++;
      return;
    }
    if (e.size === 0) {
      e.chunks = Buffer.alloc(0);
      e.lengths = [];
      m.filesDone++;
      return;
    }
    onFile({ i, path: this.abs(e.path), size: e.size, maybeSparse });
  }

  private unreadable(rel: Buffer, err: unknown): void {
    // Only a system call failing on this entry makes it unreadable; anything else is ours.
    if (typeof (err as NodeJS.ErrnoException).syscall !== 'string') throw err;
    const reason = (err as Error).message;
    if (!this.opts.skipUnreadable) {
      throw new ReimageError('SOURCE_UNREADABLE', `cannot read ${showPath(rel)}: ${reason}`, {
        cause: err,
        details: { path: showPath(rel) },
      });
    }
    this.warn({
      code: 'UNREADABLE_SKIPPED',
      path: showPath(rel),
      message: `${showPath(rel)} left out: ${reason}`,
    });
  }
}

const SLASH = Buffer.from('/');

/** Runs the workers over the file tasks; returns the indexes of files that could not be read. */
async function runWorkers(
  queue: BatchQueue<FileTask>,
  entries: Entry[],
  known: ChunkIndex,
  session: NonNullable<ReturnType<ContentStore['beginSession']>>,
  opts: CaptureOptions,
  meter: ProgressMeter,
  warn: (w: Warning) => void,
): Promise<Map<number, string>> {
  const failed = new Map<number, string>();
  const data: CaptureWorkerData = { known: known.sortedHashes(), level: opts.level ?? 3 };
  await runPool<FileTask, FromWorker>({
    script: new URL('./capture-worker.js', import.meta.url),
    workerData: data,
    workers: opts.workers ?? availableParallelism(),
    batches: queue,
    signal: opts.signal,
    cancelled: () => new ReimageError('CANCELLED', 'capture cancelled; nothing was recorded'),
    onMessage: (m) => {
      switch (m.type) {
        case 'frame':
          session.addFrame({
            data: toBuffer(m.frame.data),
            chunks: toBuffer(m.frame.chunks),
          } satisfies Frame);
          break;
        case 'files':
          for (const r of m.results) {
            const e = entries[r.i]!;
            e.chunks = toBuffer(r.chunks);
            e.lengths = r.lengths;
            if (r.segments) e.segments = r.segments;
            if (r.changed) {
              const sum = r.lengths.reduce((a, b) => a + b, 0);
              if (!r.segments) e.size = sum;
              warn({
                code: 'FILE_CHANGED',
                path: showPath(e.path),
                message: `${showPath(e.path)} changed while it was read; captured as read (${sum} bytes)`,
              });
            }
            meter.filesDone++;
            meter.file = showPath(e.path);
          }
          meter.tick();
          break;
        case 'file-error': {
          failed.set(m.i, `${m.code}: ${m.message}`);
          // A file deleted between the walk and its read (a live system): as if it never was.
          if (!opts.skipUnreadable && m.code !== 'ENOENT') {
            const path = showPath(entries[m.i]!.path);
            throw new ReimageError('SOURCE_UNREADABLE', `cannot read ${path}: ${m.message}`, {
              details: { path, code: m.code },
            });
          }
          break;
        }
        case 'progress':
          meter.bytesDone += m.bytes;
          meter.tick();
          break;
      }
    },
  });
  return failed;
}

function toBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.length);
}

/** Leaves out files that could not be read (with --skip-unreadable), and hard links to them. */
function dropFailed(
  entries: Entry[],
  failed: Map<number, string>,
  warn: (w: Warning) => void,
): Entry[] {
  if (failed.size === 0) return entries;
  const gone = new Set<string>();
  const out: Entry[] = [];
  entries.forEach((e, i) => {
    const why = failed.get(i);
    if (why !== undefined) {
      gone.add(e.path.toString('latin1'));
      if (why.startsWith('ENOENT')) {
        warn({
          code: 'FILE_VANISHED',
          path: showPath(e.path),
          message: `${showPath(e.path)} was deleted while the capture ran; left out`,
        });
        return;
      }
      warn({
        code: 'UNREADABLE_SKIPPED',
        path: showPath(e.path),
        message: `${showPath(e.path)} left out: ${why}`,
      });
      return;
    }
    if (e.type === 'hardlink' && gone.has(e.target!.toString('latin1'))) {
      warn({
        code: 'UNREADABLE_SKIPPED',
        path: showPath(e.path),
        message: `${showPath(e.path)} left out: it is a hard link to an unreadable file`,
      });
      return;
    }
    out.push(e);
  });
  return out;
}

const TYPED: Record<string, keyof ImageProperties> = {
  os: 'osFamily',
  'os-family': 'osFamily',
  osFamily: 'osFamily',
  version: 'osVersion',
  'os-version': 'osVersion',
  osVersion: 'osVersion',
  arch: 'architecture',
  architecture: 'architecture',
};

function makeProperties(opts: CaptureOptions, source: string): ImageProperties {
  const p: ImageProperties = {
    name: opts.name,
    created: new Date().toISOString(),
    sourceMachine: opts.sourceMachine ?? hostname(),
    custom: {},
  };
  if (opts.description) p.description = opts.description;
  const osRelease = detectOsRelease(source);
  if (osRelease.ID) p.osFamily = osRelease.ID;
  if (osRelease.VERSION_ID) p.osVersion = osRelease.VERSION_ID;
  const arch = detectArch(source);
  if (arch) p.architecture = arch;
  return setProperties(p, opts.properties ?? {});
}

/** Applies KEY=VALUE properties: os, version and arch (and their long names) are typed fields. */
export function setProperties(p: ImageProperties, kv: Record<string, string>): ImageProperties {
  for (const [k, v] of Object.entries(kv)) {
    const typed = TYPED[k];
    if (typed) (p as unknown as Record<string, string>)[typed] = v;
    else p.custom[k] = v;
  }
  return p;
}

/** Reads a small regular file inside the tree without following symlinks. */
function readSmall(path: string, max: number): Buffer | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch {
    return undefined;
  }
  try {
    const buf = Buffer.alloc(max);
    const n = readSync(fd, buf, 0, max, 0);
    return buf.subarray(0, n);
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

function detectOsRelease(source: string): Record<string, string> {
  const buf =
    readSmall(`${source}/etc/os-release`, 64 * 1024) ??
    readSmall(`${source}/usr/lib/os-release`, 64 * 1024);
  const out: Record<string, string> = {};
  if (!buf) return out;
  for (const line of buf.toString('utf8').split('\n')) {
    const m = /^([A-Z_]+)=(?:"([^"]*)"|'([^']*)'|(\S*))\s*$/.exec(line.trim());
    if (m) out[m[1]!] = m[2] ?? m[3] ?? m[4] ?? '';
  }
  return out;
}

const ELF_MACHINES: Record<number, string> = {
  0x03: 'i386',
  0x28: 'armhf',
  0x3e: 'amd64',
  0xb7: 'arm64',
  0xf3: 'riscv64',
  0x15: 'ppc64el',
  0x16: 's390x',
};

function detectArch(source: string): string | undefined {
  for (const p of ['usr/bin/env', 'bin/sh', 'usr/bin/sh']) {
    const h = readSmall(`${source}/${p}`, 20);
    if (h && h.length >= 20 && h.readUInt32BE(0) === 0x7f454c46)
      return ELF_MACHINES[h.readUInt16LE(18)];
  }
  return undefined;
}

/** Remembers inode and ctime of each captured file, so a later `--parent` capture can skip unchanged files. */
function writeStatCache(
  store: ContentStore,
  id: string,
  kept: Entry[],
  all: Entry[],
  facts: Map<number, StatFacts>,
): void {
  const index = new Map<Entry, number>();
  all.forEach((e, i) => index.set(e, i));
  const rows: Array<[string, string, number, string, string]> = [];
  for (const e of kept) {
    if (e.type !== 'file') continue;
    const f = facts.get(index.get(e)!);
    if (f)
      rows.push([
        e.path.toString('latin1'),
        String(f.ino),
        e.size,
        String(e.mtimeNs),
        String(f.ctimeNs),
      ]);
  }
  const c = new Compressor();
  store.writeObject('statcache', id, c.compress(Buffer.from(JSON.stringify(rows))), false);
}

function loadParent(
  lib: ImageLibrary,
  ref: string,
): { id: string; files: Map<string, ParentFile>; byPath: Map<string, Entry> } {
  const rec = lib.resolve(ref);
  const { manifest } = lib.loadManifest(rec.id);
  const files = new Map<string, ParentFile>();
  const byPath = new Map<string, Entry>();
  for (const e of manifest.entries) if (e.type === 'file') byPath.set(e.path.toString('latin1'), e);
  const raw = lib.store.readObject('statcache', rec.id);
  if (!raw) return { id: rec.id, files, byPath };
  const rows = JSON.parse(new Decompressor().decompress(raw).toString('utf8')) as Array<
    [string, string, number, string, string]
  >;
  for (const [path, ino, size, mtimeNs, ctimeNs] of rows) {
    const entry = byPath.get(path);
    if (entry) files.set(path, { ino, size, mtimeNs, ctimeNs, entry });
  }
  return { id: rec.id, files, byPath };
}
