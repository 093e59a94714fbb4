/**
 * Delta chunks at capture time (docs/content-store.md, "Delta packs"): for each chunk a
 * capture with `--parent` added to the store, of a file whose path the parent image also has,
 * a zstd delta against a window of the parent's file around the same relative position. Kept
 * only when clearly smaller than the chunk compressed alone; a machine holding the old chunks
 * then downloads the delta instead of the chunk's frame.
 */
import { closeSync, constants, openSync, readSync } from 'node:fs';
import zstd from 'zstd-napi/binding.js';
import { Decompressor } from 'zstd-napi';
import { hashKey, sha256 } from '../content/digest.js';
import { DeltaPackWriter, makeDelta, MAX_REF_BYTES, MAX_REF_CHUNKS } from '../content/delta.js';
import { decompressBounded, MAX_FRAME_RAW } from '../content/pack.js';
import { CHUNK_AVG } from '../content/chunker.js';
import { PackReader, type ChunkIndex, type ContentStore } from '../content/store.js';
import type { Entry } from './manifest.js';

/**
 * Old data taken around a chunk's proportional position, in all: zstd indexes only the last
 * 2^(hashLog+3) bytes of a dictionary (1 MiB at level 3), so a larger reference would leave
 * its start unused. Measured on bookworm → trixie (docs/transfer.md): 1 MiB with
 * `compressUsingDict` kept 12.9 MB of 61 MB; 2 MiB with a hashLog of 20 kept 13.7 MB but took
 * 2.5× the time.
 */
export const DELTA_WINDOW = 1024 * 1024;
/** Windows move by this much: chunks whose positions fall in one step share a reference. */
export const DELTA_STEP = 256 * 1024;
/** A delta is kept when it is smaller than this share of the chunk compressed alone. */
export const DELTA_KEEP_RATIO = 0.7;
const FRAME_CACHE = 6;

export interface DeltaResult {
  /** The delta pack written (undefined: no delta was worth keeping). */
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
}

interface Pending {
  hash: Buffer;
  length: number;
  delta: Buffer;
  first: number;
  count: number;
}

/** Computes and stores the deltas of a capture's new chunks against its parent. */
export function computeDeltas(opts: DeltaOptions): DeltaResult {
  const t0 = Date.now();
  const window = opts.window ?? DELTA_WINDOW;
  const level = opts.level ?? 3;
  const { known } = opts;
  const writer = new DeltaPackWriter(opts.store);
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
  const cctx = new zstd.CCtx();
  const dctx = new zstd.DCtx();
  const dz = new Decompressor();
  const reader = new PackReader(known.packPaths);
  const frames = new Map<string, Buffer>();
  const plainBuf = Buffer.allocUnsafe(zstd.compressBound(16 * 1024 * 1024));
  /** Bytes of a stored chunk, hashed; undefined when absent or damaged. */
  const oldChunk = (digests: Buffer, i: number): Buffer | undefined => {
    const loc = known.get(digests, i * 32);
    if (!loc) return undefined;
    const fk = `${loc.pack}:${loc.frameOffset}`;
    let raw = frames.get(fk);
    if (!raw) {
      try {
        raw = decompressBounded(
          dz,
          reader.readFrame(loc.pack, loc.frameOffset, loc.frameLength),
          MAX_FRAME_RAW,
          'frame',
        );
      } catch {
        return undefined;
      }
      if (frames.size >= FRAME_CACHE) frames.delete(frames.keys().next().value!);
      frames.set(fk, raw);
    }
    const data = raw.subarray(loc.offset, loc.offset + loc.length);
    return hashKey(sha256(data)) === hashKey(digests, i * 32) ? data : undefined;
  };
  const renamed = new RenamedFiles(opts.parent);
  try {
    for (const e of opts.entries) {
      if (opts.signal?.aborted) break;
      if (e.type !== 'file' || !e.chunks || !e.lengths || e.segments || e.lengths.length === 0)
        continue;
      const p = opts.parent.get(e.path.toString('latin1')) ?? renamed.find(e);
      if (!p?.chunks || !p.lengths || p.lengths.length === 0) continue;
      if (p.chunks.equals(e.chunks)) continue;
      const fresh: number[] = [];
      for (let c = 0; c < e.lengths.length; c++) {
        const k = hashKey(e.chunks, c * 32);
        if (!known.getByKey(k) && !writer.has(k)) fresh.push(c);
      }
      if (fresh.length === 0) continue;
      const oldStart = [0];
      for (const l of p.lengths) oldStart.push(oldStart[oldStart.length - 1]! + l);
      const oldLen = oldStart[oldStart.length - 1]!;
      const newStart = [0];
      for (const l of e.lengths) newStart.push(newStart[newStart.length - 1]! + l);
      const newLen = newStart[newStart.length - 1]!;
      let fd: number;
      try {
        fd = openSync(
          Buffer.concat([Buffer.from(opts.source), Buffer.from('/'), e.path]),
          constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK,
        );
      } catch {
        continue;
      }
      const cache = new Map<number, Buffer>();
      let dict: { a: number; b: number; ref: Buffer; cdict: zstd.CDict } | undefined;
      const pending: Pending[] = [];
      try {
        for (const c of fresh) {
          const len = e.lengths[c]!;
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
          if (got !== len || hashKey(sha256(chunk)) !== hashKey(e.chunks, c * 32)) continue;
          const center = Math.floor((newStart[c]! * oldLen) / newLen);
          // The window is placed by steps of DELTA_STEP, so that neighbouring chunks share
          // one reference and its prepared dictionary (building it is most of the cost).
          const q = Math.floor(center / DELTA_STEP) * DELTA_STEP;
          const lo = q + DELTA_STEP / 2 - window / 2 + CHUNK_AVG / 2;
          const hi = q + DELTA_STEP / 2 + window / 2 - CHUNK_AVG / 2;
          let a = 0;
          while (a < p.lengths.length - 1 && oldStart[a + 1]! <= lo) a++;
          let b = a;
          let refBytes = 0;
          while (
            b < p.lengths.length &&
            (b === a || oldStart[b]! < hi) &&
            b - a < MAX_REF_CHUNKS &&
            refBytes + p.lengths[b]! <= MAX_REF_BYTES
          ) {
            refBytes += p.lengths[b]!;
            b++;
          }
          res.tried++;
          const plainLen = cctx.compress(plainBuf, chunk, level);
          const plain = Buffer.from(plainBuf.subarray(0, plainLen));
          res.plainBytes += plainLen;
          if (!dict || dict.a !== a || dict.b !== b) {
            dict = undefined;
            for (const i of cache.keys()) if (i < a) cache.delete(i);
            const parts: Buffer[] = [];
            for (let i = a; i < b; i++) {
              let d = cache.get(i);
              if (!d) {
                d = oldChunk(p.chunks, i);
                if (!d) break;
                cache.set(i, Buffer.from(d));
              }
              parts.push(d);
            }
            if (b > a && parts.length === b - a) {
              const ref = Buffer.concat(parts);
              dict = { a, b, ref, cdict: new zstd.CDict(ref, level) };
            }
          }
          const delta = dict ? makeDelta(cctx, dctx, chunk, dict.ref, dict.cdict) : undefined;
          // Every new chunk of the file gets an entry: its delta when smaller, else the chunk
          // compressed alone (no reference). A reader then takes a frame's new chunks from
          // here or the frame, whichever is smaller (docs/content-store.md).
          if (delta && delta.length < plainLen) {
            pending.push({
              hash: e.chunks.subarray(c * 32, c * 32 + 32),
              length: len,
              delta,
              first: a,
              count: b - a,
            });
            if (delta.length < DELTA_KEEP_RATIO * plainLen) res.chunks++;
          } else {
            pending.push({
              hash: e.chunks.subarray(c * 32, c * 32 + 32),
              length: len,
              delta: plain,
              first: a,
              count: 0,
            });
            res.alone++;
          }
          res.bytes += pending[pending.length - 1]!.delta.length;
        }
      } finally {
        closeSync(fd);
      }
      if (pending.length === 0) continue;
      // One run of the parent's digests per file, trimmed to what the deltas use.
      const used = pending.filter((d) => d.count > 0);
      const lo = used.length ? Math.min(...used.map((d) => d.first)) : 0;
      const hi = used.length ? Math.max(...used.map((d) => d.first + d.count)) : 0;
      const seq = writer.addSeq(Buffer.from(p.chunks.subarray(lo * 32, hi * 32)));
      for (const d of pending) {
        writer.add(d.hash, d.length, d.delta, seq, d.count ? d.first - lo : 0, d.count);
        res.entries++;
      }
    }
    if (opts.signal?.aborted) {
      writer.abort();
      return { ...res, ms: Date.now() - t0 };
    }
    res.id = writer.commit();
  } catch (err) {
    writer.abort();
    throw err;
  } finally {
    reader.close();
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
  private byDir: Map<string, Entry[]> | undefined;

  constructor(private readonly parent: Map<string, Entry>) {}

  find(e: Entry): Entry | undefined {
    if (!this.byDir) {
      this.byDir = new Map();
      for (const [path, entry] of this.parent) {
        const dir = path.slice(0, Math.max(0, path.lastIndexOf('/')));
        let list = this.byDir.get(dir);
        if (!list) this.byDir.set(dir, (list = []));
        list.push(entry);
      }
    }
    const path = e.path.toString('latin1');
    const slash = path.lastIndexOf('/');
    const name = path.slice(slash + 1);
    const shape = nameShape(name);
    let best: Entry | undefined;
    for (const c of this.byDir.get(path.slice(0, Math.max(0, slash))) ?? []) {
      const cname = c.path.toString('latin1').slice(slash + 1);
      if (!sameShape(shape, nameShape(cname))) continue;
      if (!best || Math.abs(c.size - e.size) < Math.abs(best.size - e.size)) best = c;
    }
    return best;
  }
}

/** A name's words and, between them, the rest with digit runs as one wildcard. */
function nameShape(name: string): { words: string[]; rest: string[] } {
  const parts = name.split(/([A-Za-z]+)/);
  const words: string[] = [];
  const rest: string[] = [];
  parts.forEach((x, i) => (i % 2 ? words : rest).push(i % 2 ? x : x.replace(/[0-9]+/g, '0')));
  return { words, rest };
}

function sameShape(
  a: { words: string[]; rest: string[] },
  b: { words: string[]; rest: string[] },
): boolean {
  if (a.words.length !== b.words.length || a.rest.length !== b.rest.length) return false;
  if (a.rest.some((x, i) => x !== b.rest[i])) return false;
  let differ = 0;
  for (let i = 0; i < a.words.length; i++) if (a.words[i] !== b.words[i]) differ++;
  // One word may change, but not the only word of a name (`a.txt` is not `b.txt`).
  return differ === 0 || (differ === 1 && a.words.length >= 3);
}
