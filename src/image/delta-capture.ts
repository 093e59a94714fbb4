/**
 * Delta chunks at capture time (docs/content-store.md, "Delta packs"): for each chunk a
 * capture with `--parent` added to the store, of a file the parent image also has (same path,
 * or renamed), a zstd delta against a window of the parent's file around the same relative
 * position, or the chunk compressed alone when that is smaller; plus, compressed alone, the
 * other new chunks of the frames those touch. A machine holding the old chunks then takes a
 * frame's missing chunks from the delta pack instead of the frame when that is fewer bytes.
 */
import { closeSync, constants, openSync, readSync } from 'node:fs';
import zstd from 'zstd-napi/binding.js';
import { hashKey, sha256 } from '../content/digest.js';
import { DeltaPackWriter, makeDelta, MAX_REF_BYTES, MAX_REF_CHUNKS } from '../content/delta.js';
import { CHUNK_AVG } from '../content/chunker.js';
import { PackReader, RawFrames, type ChunkIndex, type ContentStore } from '../content/store.js';
import { availableParallelism } from 'node:os';
import { ReimageError } from '../errors.js';
import { batch, runPool } from './pool.js';
import type { Entry } from './manifest.js';

/**
 * Old data taken around a chunk's proportional position, in all. zstd indexes only the last
 * 2^(hashLog+3) bytes of a dictionary (1 MiB at level 3), and loading the dictionary is most
 * of the cost of a delta. Measured on bookworm → trixie, same-path files, chunks compressed
 * alone 61.0 MB: deltas against 1 MiB windows 45.93 MB, 512 KiB windows 45.90 MB in half
 * the time (docs/transfer.md).
 */
export const DELTA_WINDOW = 512 * 1024;

/** Deltas under this share of the chunk compressed alone are counted as `chunks` (a figure). */
export const DELTA_KEEP_RATIO = 0.7;
const FRAME_CACHE = 6;

export interface DeltaResult {
  /** The delta pack written (undefined: no chunk to write). */
  id: string | undefined;
  /** Entries of the delta pack: chunks as deltas, and chunks compressed alone (`alone`). */
  entries: number;
  /** Of the deltas: those under 70 % of the chunk compressed alone. */
  chunks: number;
  alone: number;
  /** Bytes of the delta pack's entries, and of the same chunks compressed alone. */
  bytes: number;
  plainBytes: number;
  /** Chunks tried. */
  tried: number;
  ms: number;
}

export interface DeltaOptions {
  store: ContentStore;
  /** The store's chunks before the capture: the parent's chunks are read from there. */
  known: ChunkIndex;
  /** Root of the captured tree. */
  source: string;
  /** The parent image's regular files by path (latin1). */
  parent: Map<string, Entry>;
  entries: Entry[];
  signal?: AbortSignal | undefined;
  window?: number;
  level?: number;
  /** Worker threads (default: one per core). */
  workers?: number | undefined;
  /** The frame (any stable name) a chunk new in this capture was written to. */
  frameOf?: ((key: string) => string | undefined) | undefined;
}

/** The work on one file, as handed to a delta worker. */
export interface DeltaTask {
  /** absolute path of the new file */
  path: Uint8Array;
  chunks: Uint8Array;
  lengths: number[];
  /** indexes of the chunks to make deltas of */
  fresh: number[];
  oldChunks: Uint8Array;
  oldLengths: number[];
  /** per old chunk: pack number, frame offset, frame length, offset, length (pack -1: absent) */
  oldLocs: Float64Array;
}

export interface DeltaFileResult {
  entries: Array<{
    hash: Uint8Array;
    length: number;
    delta: Uint8Array;
    first: number;
    count: number;
  }>;
  /** the run of old digests the entries' `first` and `count` refer to */
  seq: Uint8Array;
  tried: number;
  plainBytes: number;
  chunks: number;
  alone: number;
}

export interface DeltaWorkerData {
  packPaths: string[];
  window: number;
  level: number;
}

/** Makes the deltas of one file at a time (in a worker, or inline for small jobs). */
export class DeltaMaker {
  private readonly cctx = new zstd.CCtx();
  private readonly dctx = new zstd.DCtx();
  private readonly reader: PackReader;
  private readonly frames: RawFrames;
  private readonly plainBuf = Buffer.allocUnsafe(zstd.compressBound(16 * 1024 * 1024));

  constructor(private readonly data: DeltaWorkerData) {
    this.reader = new PackReader(data.packPaths);
    this.frames = new RawFrames(this.reader, FRAME_CACHE);
  }

  close(): void {
    this.reader.close();
  }

  /** Bytes of old chunk `i` of a task, hashed; undefined when absent or damaged. */
  private oldChunk(t: DeltaTask, i: number): Buffer | undefined {
    const l = t.oldLocs;
    const pack = l[i * 5]!;
    if (pack < 0) return undefined;
    const [frameOffset, frameLength, offset, length] = [
      l[i * 5 + 1]!,
      l[i * 5 + 2]!,
      l[i * 5 + 3]!,
      l[i * 5 + 4]!,
    ];
    const raw = this.frames.get(pack, frameOffset, frameLength);
    if (!raw) return undefined;
    const data = raw.subarray(offset, offset + length);
    return hashKey(sha256(data)) === hashKey(t.oldChunks, i * 32) ? data : undefined;
  }

  file(t: DeltaTask): DeltaFileResult {
    const { window, level } = this.data;
    const res: DeltaFileResult = {
      entries: [],
      seq: new Uint8Array(0),
      tried: 0,
      plainBytes: 0,
      chunks: 0,
      alone: 0,
    };
    const oldStart = [0];
    for (const l of t.oldLengths) oldStart.push(oldStart[oldStart.length - 1]! + l);
    const oldLen = oldStart[oldStart.length - 1]!;
    const newStart = [0];
    for (const l of t.lengths) newStart.push(newStart[newStart.length - 1]! + l);
    const newLen = newStart[newStart.length - 1]!;
    let fd: number;
    try {
      fd = openSync(
        Buffer.from(t.path),
        constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK,
      );
    } catch {
      return res;
    }
    const cache = new Map<number, Buffer>();
    let dict: { a: number; b: number; ref: Buffer } | undefined;
    try {
      for (const c of t.fresh) {
        const len = t.lengths[c]!;
        const chunk = Buffer.allocUnsafe(len);
        let got = 0;
        try {
          while (got < len) {
            const n = readSync(fd, chunk, got, len - got, newStart[c]! + got);
            if (n === 0) break;
            got += n;
          }
        } catch {
          break;
        }
        // The file changed since it was read: no delta for what we cannot check.
        if (got !== len || hashKey(sha256(chunk)) !== hashKey(t.chunks, c * 32)) continue;
        const center = Math.floor((newStart[c]! * oldLen) / newLen);
        // Snapping to old chunks adds about half an average chunk on each side.
        const half = Math.max(0, (window - len) / 2 - CHUNK_AVG / 2);
        const lo = center - half;
        const hi = center + len + half;
        let a = 0;
        while (a < t.oldLengths.length - 1 && oldStart[a + 1]! <= lo) a++;
        let b = a;
        let refBytes = 0;
        while (
          b < t.oldLengths.length &&
          (b === a || oldStart[b]! < hi) &&
          b - a < MAX_REF_CHUNKS &&
          refBytes + t.oldLengths[b]! <= MAX_REF_BYTES
        ) {
          refBytes += t.oldLengths[b]!;
          b++;
        }
        res.tried++;
        const plainLen = this.cctx.compress(this.plainBuf, chunk, level);
        res.plainBytes += plainLen;
        if (!dict || dict.a !== a || dict.b !== b) {
          dict = undefined;
          for (const i of cache.keys()) if (i < a) cache.delete(i);
          const parts: Buffer[] = [];
          for (let i = a; i < b; i++) {
            let d = cache.get(i);
            if (!d) {
              d = this.oldChunk(t, i);
              if (!d) break;
              cache.set(i, Buffer.from(d));
            }
            parts.push(d);
          }
          if (b > a && parts.length === b - a) dict = { a, b, ref: Buffer.concat(parts) };
        }
        const delta = dict ? makeDelta(this.cctx, this.dctx, chunk, dict.ref, level) : undefined;
        // Every new chunk of the file gets an entry: its delta when smaller, else the chunk
        // compressed alone (no reference). A reader then takes a frame's new chunks from here
        // or the frame, whichever is smaller (docs/content-store.md).
        const hash = t.chunks.subarray(c * 32, c * 32 + 32);
        if (delta && delta.length < plainLen) {
          res.entries.push({ hash, length: len, delta, first: a, count: b - a });
          if (delta.length < DELTA_KEEP_RATIO * plainLen) res.chunks++;
        } else {
          const plain = Buffer.from(this.plainBuf.subarray(0, plainLen));
          res.entries.push({ hash, length: len, delta: plain, first: 0, count: 0 });
          res.alone++;
        }
      }
    } finally {
      closeSync(fd);
    }
    // One run of the parent's digests per file, trimmed to what the deltas use.
    const used = res.entries.filter((d) => d.count > 0);
    if (used.length) {
      const lo = Math.min(...used.map((d) => d.first));
      const hi = Math.max(...used.map((d) => d.first + d.count));
      res.seq = t.oldChunks.slice(lo * 32, hi * 32);
      for (const d of used) d.first -= lo;
    }
    return res;
  }
}

/** Below this many chunks to try, deltas are made on the main thread. */
const INLINE_CHUNKS = 64;

/** Computes and stores the deltas of a capture's new chunks against its parent. */
export async function computeDeltas(opts: DeltaOptions): Promise<DeltaResult> {
  const t0 = Date.now();
  const { known } = opts;
  const res: DeltaResult = {
    id: undefined,
    entries: 0,
    chunks: 0,
    alone: 0,
    bytes: 0,
    plainBytes: 0,
    tried: 0,
    ms: 0,
  };
  // The tasks: new chunks of files with a parent file (same path, or renamed).
  const renamed = new RenamedFiles(opts.parent);
  const planned = new Set<string>();
  const tasks: DeltaTask[] = [];
  let todo = 0;
  for (const e of opts.entries) {
    if (e.type !== 'file' || !e.chunks || !e.lengths || e.segments || e.lengths.length === 0)
      continue;
    const p = opts.parent.get(e.path.toString('latin1')) ?? renamed.find(e);
    if (!p?.chunks || !p.lengths || p.lengths.length === 0) continue;
    if (p.chunks.equals(e.chunks)) continue;
    const fresh: number[] = [];
    for (let c = 0; c < e.lengths.length; c++) {
      const k = hashKey(e.chunks, c * 32);
      if (!known.getByKey(k) && !planned.has(k)) {
        planned.add(k);
        fresh.push(c);
      }
    }
    if (fresh.length === 0) continue;
    const oldLocs = new Float64Array(p.lengths.length * 5);
    for (let i = 0; i < p.lengths.length; i++) {
      const loc = known.get(p.chunks, i * 32);
      oldLocs.set(
        loc
          ? [loc.pack, loc.frameOffset, loc.frameLength, loc.offset, loc.length]
          : [-1, 0, 0, 0, 0],
        i * 5,
      );
    }
    tasks.push({
      path: Buffer.concat([Buffer.from(opts.source), Buffer.from('/'), e.path]),
      chunks: e.chunks,
      lengths: e.lengths,
      fresh,
      oldChunks: p.chunks,
      oldLengths: p.lengths,
      oldLocs,
    });
    todo += fresh.length;
  }
  const data: DeltaWorkerData = {
    packPaths: known.packPaths,
    window: opts.window ?? DELTA_WINDOW,
    level: opts.level ?? 3,
  };
  const writer = new DeltaPackWriter(opts.store);
  const take = (r: DeltaFileResult) => {
    res.tried += r.tried;
    res.plainBytes += r.plainBytes;
    res.chunks += r.chunks;
    res.alone += r.alone;
    if (r.entries.length === 0) return;
    const seq = writer.addSeq(Buffer.from(r.seq));
    for (const d of r.entries) {
      writer.add(Buffer.from(d.hash), d.length, Buffer.from(d.delta), seq, d.first, d.count);
      res.entries++;
      res.bytes += d.delta.length;
    }
  };
  const run = async (list: DeltaTask[], chunks: number) => {
    if (chunks < INLINE_CHUNKS || (opts.workers ?? 2) < 2) {
      const maker = new DeltaMaker(data);
      try {
        for (const t of list) {
          if (opts.signal?.aborted) break;
          take(maker.file(t));
        }
      } finally {
        maker.close();
      }
      return;
    }
    // Large files first, so that no worker is left with a big one at the end.
    list.sort((x, y) => y.fresh.length - x.fresh.length);
    await runPool<DeltaTask, { type: 'delta-file'; result: DeltaFileResult }>({
      script: new URL('./delta-worker.js', import.meta.url),
      workerData: data,
      workers: opts.workers ?? availableParallelism(),
      batches: batch(list, (t) => t.fresh.length, 16, 32),
      signal: opts.signal,
      cancelled: () => new ReimageError('CANCELLED', 'capture cancelled; nothing was recorded'),
      onMessage: (m) => take(m.result),
    });
  };
  try {
    await run(tasks, todo);
    // The other new chunks of the frames these entries touch (files without a parent file)
    // go in compressed alone: a reader can then take such a frame's new chunks from the delta
    // pack instead of the whole frame, when that is fewer bytes.
    if (opts.frameOf && res.entries > 0 && !opts.signal?.aborted) {
      const touched = new Set<string>();
      for (const k of planned) {
        const f = opts.frameOf(k);
        if (f !== undefined) touched.add(f);
      }
      const more: DeltaTask[] = [];
      let n = 0;
      for (const e of opts.entries) {
        if (e.type !== 'file' || !e.chunks || !e.lengths || e.segments) continue;
        const fresh: number[] = [];
        for (let c = 0; c < e.lengths.length; c++) {
          const k = hashKey(e.chunks, c * 32);
          if (known.getByKey(k) || planned.has(k)) continue;
          const f = opts.frameOf(k);
          if (f === undefined || !touched.has(f)) continue;
          planned.add(k);
          fresh.push(c);
        }
        if (fresh.length === 0) continue;
        more.push({
          path: Buffer.concat([Buffer.from(opts.source), Buffer.from('/'), e.path]),
          chunks: e.chunks,
          lengths: e.lengths,
          fresh,
          oldChunks: new Uint8Array(0),
          oldLengths: [],
          oldLocs: new Float64Array(0),
        });
        n += fresh.length;
      }
      await run(more, n);
    }
    if (opts.signal?.aborted) {
      writer.abort();
      return { ...res, ms: Date.now() - t0 };
    }
    res.id = writer.commit();
  } catch (err) {
    writer.abort();
    throw err;
  }
  res.ms = Date.now() - t0;
  return res;
}

/**
 * The parent's file that a new file whose path the parent lacks was probably renamed from: a
 * file of the same folder whose name differs only in digit runs and at most one word
 * (`libzstd.so.1.5.4` → `libzstd.so.1.5.7`, `…_dists_bookworm_main_…_Packages` →
 * `…_dists_trixie_main_…_Packages`), the closest in size. Seeding finds the same old files
 * (docs/transfer.md, renamed files), so the reference chunks are there on the machine.
 */
class RenamedFiles {
  /** folder → shape key (the name's non-word parts, digits as one wildcard) → files */
  private byDir: Map<string, Map<string, Array<{ entry: Entry; words: string[] }>>> | undefined;

  constructor(private readonly parent: Map<string, Entry>) {}

  find(e: Entry): Entry | undefined {
    if (!this.byDir) {
      this.byDir = new Map();
      for (const [path, entry] of this.parent) {
        const slash = path.lastIndexOf('/');
        const dir = path.slice(0, Math.max(0, slash));
        const shape = nameShape(path.slice(slash + 1));
        let shapes = this.byDir.get(dir);
        if (!shapes) this.byDir.set(dir, (shapes = new Map()));
        let list = shapes.get(shape.key);
        if (!list) shapes.set(shape.key, (list = []));
        list.push({ entry, words: shape.words });
      }
    }
    const path = e.path.toString('latin1');
    const slash = path.lastIndexOf('/');
    const shape = nameShape(path.slice(slash + 1));
    const list = this.byDir.get(path.slice(0, Math.max(0, slash)))?.get(shape.key) ?? [];
    let best: Entry | undefined;
    // Bounded: a folder of thousands of look-alike names is not searched through.
    for (const c of list.slice(0, 256)) {
      if (!closeWords(shape.words, c.words)) continue;
      if (!best || Math.abs(c.entry.size - e.size) < Math.abs(best.size - e.size)) best = c.entry;
    }
    return best;
  }
}

/** A name's words, and a key of the rest (digit runs as one wildcard) and the word count. */
function nameShape(name: string): { words: string[]; key: string } {
  const parts = name.split(/([A-Za-z]+)/);
  const words: string[] = [];
  const rest: string[] = [];
  parts.forEach((x, i) => (i % 2 ? words.push(x) : rest.push(x.replace(/[0-9]+/g, '0'))));
  return { words, key: `${words.length}/${rest.join('/')}` };
}

/** One word may change, but not in a name of fewer than three words (`a.txt` is not `b.txt`). */
function closeWords(a: string[], b: string[]): boolean {
  let differ = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) differ++;
  return differ === 0 || (differ === 1 && a.length >= 3);
}
