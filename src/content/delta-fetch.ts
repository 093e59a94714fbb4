/**
 * Fetching chunks as deltas (docs/transfer.md, "Delta chunks"): after local seeding, a chunk
 * that is still missing and has a delta whose reference chunks are all in the local store is
 * rebuilt from the delta's bytes (a few hundred bytes instead of its share of a 2 MiB frame).
 * A DP is not trusted: every rebuilt chunk is hashed, and a delta that does not rebuild its
 * chunk is only counted; the chunk is then fetched the normal way.
 */
import zstd from 'zstd-napi/binding.js';
import { isReimageError, ReimageError } from '../errors.js';
import { hashKey, isHexId, sha256 } from './digest.js';
import {
  applyDelta,
  decodeDeltaIndex,
  deltaIndexRel,
  deltaPackRel,
  MAX_REF_BYTES,
  refsOf,
  type DeltaEntry,
  type DeltaIndex,
} from './delta.js';
import { decodeIndex, FrameBuilder } from './pack.js';
import type { RemoteStore } from './remote.js';
import { PackReader, RawFrames, type ChunkIndex, type ContentStore } from './store.js';

/** Delta bytes asked for in one `readRanges` call: what the step holds in memory at once. */
const BATCH_BYTES = 4 * 1024 * 1024;
const FRAME_CACHE = 8;

/** The delta indexes of an image, each from the first source that serves a valid one. */
export interface DeltaSet {
  packs: Array<{ id: string; index: DeltaIndex; sources: RemoteStore[] }>;
  bytesDownloaded: number;
}

export interface DeltaFetchResult {
  /** Chunks rebuilt from deltas and stored. */
  chunks: number;
  /** Their uncompressed size. */
  bytes: number;
  /** Delta bytes received (indexes counted in `DeltaSet.bytesDownloaded`). */
  bytesDownloaded: number;
  /** Deltas that did not rebuild their chunk (bad DP data): fetched the normal way. */
  bad: number;
}

/** The delta pack ids an image record lists (others ignored: deltas are optional). */
export function deltaPacksOf(record: Record<string, unknown>): string[] {
  const d = record.deltas;
  return Array.isArray(d) ? d.filter((x): x is string => typeof x === 'string' && isHexId(x)) : [];
}

/**
 * Reads the delta indexes the record lists. A source that lacks one or serves a bad one is
 * skipped; no index at all only means no deltas (never an error, except a cancel).
 */
export async function readDeltaIndexes(
  sources: RemoteStore[],
  record: Record<string, unknown>,
  signal?: AbortSignal,
): Promise<DeltaSet> {
  const out: DeltaSet = { packs: [], bytesDownloaded: 0 };
  for (const id of deltaPacksOf(record)) {
    for (let i = 0; i < sources.length; i++) {
      const s = sources[i]!;
      try {
        const buf = await s.readFile(deltaIndexRel(id), { signal });
        out.bytesDownloaded += buf.length;
        // The index's bytes are checked; the sources that may serve the pack are this one
        // and those after it (each delta is verified by the chunk it rebuilds).
        out.packs.push({ id, index: decodeDeltaIndex(buf, id), sources: sources.slice(i) });
        break;
      } catch (e) {
        if (isReimageError(e, 'CANCELLED') || signal?.aborted) throw cancelled(signal);
      }
    }
  }
  return out;
}

/** Old chunks the deltas of `wanted` chunks refer to: local seeding keeps these too. */
export function referencedChunks(set: DeltaSet, wanted: (key: string) => boolean): Set<string> {
  const refs = new Set<string>();
  for (const { index } of set.packs) {
    for (const [k, e] of index.entries) {
      if (!wanted(k)) continue;
      for (const r of refsOf(index, e)) refs.add(hashKey(r));
    }
  }
  return refs;
}

export interface DeltaPlan {
  /** Chunks to take from the delta packs. */
  chosen: Set<string>;
  /** Pack indexes read to plan, by `${source name}\0${pack}`: `fetchImage` reuses them. */
  indexCache: Map<string, Buffer>;
  bytesDownloaded: number;
  /** Frames (and their bytes) that the chosen deltas replace. */
  framesReplaced: number;
  frameBytesReplaced: number;
}

/**
 * Which missing chunks to take from the delta packs. A frame of the packs is fetched whole as
 * soon as one of its chunks is missing, so a delta saves nothing unless every missing chunk of
 * that frame can come from the delta packs (a delta whose reference chunks are all local, or
 * a chunk stored alone): then the frame's missing chunks are taken from there when that is
 * fewer bytes than the frame. (Asking for 80 % of the frame or less was tried: bookworm →
 * trixie took 1.5 MB more, v1 → v2 the same.) Indexes are read in the record's order until
 * every chunk that has a usable entry has been seen in one. Reads the image's pack indexes (once; `fetchImage` reuses them).
 */
export async function planDeltas(opts: {
  sources: RemoteStore[];
  packs: string[];
  set: DeltaSet;
  into: ContentStore;
  needed: Set<string>;
  signal?: AbortSignal | undefined;
}): Promise<DeltaPlan> {
  const plan: DeltaPlan = {
    chosen: new Set(),
    indexCache: new Map(),
    bytesDownloaded: 0,
    framesReplaced: 0,
    frameBytesReplaced: 0,
  };
  const known = opts.into.loadIndex();
  const usable = new Map<string, DeltaEntry>();
  for (const k of opts.needed) {
    if (known.getByKey(k)) continue;
    for (const { index } of opts.set.packs) {
      const e = index.entries.get(k);
      if (e && refsOf(index, e).every((r) => known.has(r))) {
        usable.set(k, e);
        break;
      }
    }
  }
  if (usable.size === 0) return plan;
  const unseen = new Set(usable.keys());
  for (const pack of opts.packs) {
    if (unseen.size === 0) break;
    let frames: Map<number, { length: number; keys: string[] }> | undefined;
    for (const s of opts.sources) {
      try {
        const buf = await s.readFile(`packs/${pack.slice(0, 2)}/${pack}.idx`, {
          signal: opts.signal,
        });
        plan.bytesDownloaded += buf.length;
        const f = new Map<number, { length: number; keys: string[] }>();
        decodeIndex(buf, Number.MAX_SAFE_INTEGER, pack, (hash, fo, fl) => {
          let x = f.get(fo);
          if (!x) f.set(fo, (x = { length: fl, keys: [] }));
          const k = hashKey(hash);
          x.keys.push(k);
          unseen.delete(k);
        });
        plan.indexCache.set(`${s.name}\0${pack}`, buf);
        frames = f;
        break;
      } catch (e) {
        if (isReimageError(e, 'CANCELLED') || opts.signal?.aborted) throw cancelled(opts.signal);
      }
    }
    for (const f of frames?.values() ?? []) {
      const miss = f.keys.filter((k) => opts.needed.has(k) && !known.getByKey(k));
      if (miss.length === 0 || !miss.every((k) => usable.has(k))) continue;
      const cost = miss.reduce((n, k) => n + usable.get(k)!.deltaLength, 0);
      if (cost >= f.length) continue;
      for (const k of miss) plan.chosen.add(k);
      plan.framesReplaced++;
      plan.frameBytesReplaced += f.length;
    }
  }
  return plan;
}

function cancelled(signal: AbortSignal | undefined): ReimageError {
  return new ReimageError('CANCELLED', 'the fetch was cancelled', { cause: signal?.reason });
}

/**
 * Rebuilds the `needed` chunks that `into` lacks from deltas whose references `into` has,
 * and stores them. Returns what it did; a source failing only leaves chunks for the normal
 * fetch.
 */
export async function fetchDeltas(opts: {
  into: ContentStore;
  set: DeltaSet;
  needed: Set<string>;
  signal?: AbortSignal | undefined;
  batchBytes?: number;
}): Promise<DeltaFetchResult> {
  const res: DeltaFetchResult = { chunks: 0, bytes: 0, bytesDownloaded: 0, bad: 0 };
  if (opts.set.packs.length === 0) return res;
  const lock = await opts.into.lock('shared', 'fetch delta chunks');
  try {
    const known = opts.into.loadIndex();
    const session = opts.into.beginSession(known);
    const builder = new FrameBuilder((f) => session.addFrame(f));
    const reader = new PackReader(known.packPaths);
    const done = new Set<string>();
    try {
      const local = new LocalChunks(known, reader);
      for (const { id, index, sources } of opts.set.packs) {
        const plan: DeltaEntry[] = [];
        for (const [k, e] of index.entries) {
          if (!opts.needed.has(k) || known.getByKey(k) || done.has(k)) continue;
          if (refsOf(index, e).every((r) => known.has(r))) plan.push(e);
        }
        plan.sort((a, b) => a.offset - b.offset);
        const batchBytes = opts.batchBytes ?? BATCH_BYTES;
        for (let i = 0; i < plan.length;) {
          let j = i;
          let bytes = 0;
          while (j < plan.length && (j === i || bytes + plan[j]!.deltaLength <= batchBytes))
            bytes += plan[j++]!.deltaLength;
          const batch = plan.slice(i, j);
          i = j;
          if (opts.signal?.aborted) throw cancelled(opts.signal);
          const data = await readFromAny(sources, id, batch, opts.signal);
          if (!data) continue;
          for (let n = 0; n < batch.length; n++) {
            const e = batch[n]!;
            res.bytesDownloaded += data[n]!.length;
            const chunk = local.rebuild(index, e, data[n]!);
            if (!chunk) {
              res.bad++;
              continue;
            }
            builder.add(e.hash, chunk);
            done.add(hashKey(e.hash));
            res.chunks++;
            res.bytes += chunk.length;
          }
        }
      }
      builder.flush();
      await session.commit();
      session.close();
    } catch (e) {
      builder.flush();
      await session
        .commit()
        .then(() => session.close())
        .catch(() => session.abort());
      throw e;
    } finally {
      reader.close();
    }
  } finally {
    lock.release();
  }
  return res;
}

/** Reads a batch of deltas from the first source that answers; undefined when none does. */
async function readFromAny(
  sources: RemoteStore[],
  id: string,
  batch: DeltaEntry[],
  signal: AbortSignal | undefined,
): Promise<Buffer[] | undefined> {
  for (const s of sources) {
    try {
      return await s.readRanges(
        deltaPackRel(id),
        batch.map((e) => ({ offset: e.offset, length: e.deltaLength })),
        { signal },
      );
    } catch (e) {
      if (isReimageError(e, 'CANCELLED') || signal?.aborted) throw cancelled(signal);
    }
  }
  return undefined;
}

/** Chunks of the local store, read by digest (frames decompressed once, each chunk hashed). */
class LocalChunks {
  private readonly frames: RawFrames;
  private readonly dctx = new zstd.DCtx();

  constructor(
    private readonly known: ChunkIndex,
    reader: PackReader,
  ) {
    this.frames = new RawFrames(reader, FRAME_CACHE);
  }

  chunk(hash: Buffer): Buffer | undefined {
    const loc = this.known.get(hash);
    if (!loc) return undefined;
    const raw = this.frames.get(loc.pack, loc.frameOffset, loc.frameLength);
    if (!raw) return undefined;
    const data = raw.subarray(loc.offset, loc.offset + loc.length);
    return sha256(data).equals(hash) ? data : undefined;
  }

  /** The chunk a delta rebuilds, verified; undefined for a bad delta or a missing reference. */
  rebuild(index: DeltaIndex, e: DeltaEntry, delta: Buffer): Buffer | undefined {
    const parts: Buffer[] = [];
    let size = 0;
    for (const r of refsOf(index, e)) {
      const c = this.chunk(r);
      if (!c) return undefined;
      size += c.length;
      if (size > MAX_REF_BYTES) return undefined;
      parts.push(c);
    }
    try {
      const out = applyDelta(this.dctx, delta, Buffer.concat(parts, size), e.length);
      return sha256(out).equals(e.hash) ? out : undefined;
    } catch {
      return undefined;
    }
  }
}
