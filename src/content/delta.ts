import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  renameSync,
  rmSync,
} from 'node:fs';
import { createHash, randomUUID, type Hash } from 'node:crypto';
import { join } from 'node:path';
import zstd from 'zstd-napi/binding.js';
import { ReimageError } from '../errors.js';
import { HASH_BYTES, hashKey } from './digest.js';
import { MAX_CHUNK_BYTES } from './pack.js';
import { writeAll, writeAtomic, type ContentStore } from './store.js';

/**
 * Delta chunks (docs/content-store.md, "Delta packs"): a chunk stored a second time as a zstd
 * frame compressed with a *reference* as raw-content dictionary. The reference is the
 * concatenation of a run of chunks of an older image (named by their digests, so it is
 * identified by content, not by path). A machine that holds those old chunks rebuilds the new
 * chunk from a few hundred bytes instead of fetching its frame.
 *
 *   deltas/<ab>/<sha256>.dpack   "RIMGDP01" then delta frames back to back; named by its hash
 *   deltas/<ab>/<sha256>.didx    its index:
 *     "RIMGDX01" u32le(nseq) u32le(count)
 *     seq[nseq]   := u32le(n) digest[32]×n           runs of old chunk digests
 *     entry[count] := chunk-digest[32] u32le(chunk length) u64le(offset) u32le(delta length)
 *                     u32le(seq) u32le(first) u32le(n)   reference = seq[first .. first+n)
 *   n = 0: no reference, the frame is the chunk compressed alone (so that a reader can take
 *   every new chunk of a frame from the delta pack, instead of the whole frame).
 *     sha256(everything before)[32]
 *   entries sorted by chunk digest, one per chunk.
 *
 * Deltas are optional: an image record lists its delta packs in `deltas`; a store or DP
 * without them is read exactly as before, and a reader verifies every rebuilt chunk against
 * its digest (a bad delta only means the chunk is fetched the normal way).
 */
export const DELTA_PACK_MAGIC = Buffer.from('RIMGDP01');
export const DELTA_INDEX_MAGIC = Buffer.from('RIMGDX01');
/** At most this many old chunks make one reference. */
export const MAX_REF_CHUNKS = 256;
/** A reference is at most this large (bounds memory of reader and writer). */
export const MAX_REF_BYTES = 8 * 1024 * 1024;
const ENTRY = HASH_BYTES + 4 + 8 + 4 + 4 + 4 + 4;
/** zstd's worst case for a chunk, plus its frame header. */
export const MAX_DELTA_BYTES = MAX_CHUNK_BYTES + MAX_CHUNK_BYTES / 128 + 1024;
/** Bounds on an index from an untrusted store. */
const MAX_SEQS = 1 << 22;
const MAX_SEQ_LEN = 1 << 22;

export interface DeltaEntry {
  /** the new chunk's digest */
  hash: Buffer;
  length: number;
  /** where its delta frame is in the delta pack */
  offset: number;
  deltaLength: number;
  seq: number;
  first: number;
  count: number;
}

export interface DeltaIndex {
  /** runs of old chunk digests, each a Buffer of n × 32 bytes */
  seqs: Buffer[];
  /** by chunk key (hashKey) */
  entries: Map<string, DeltaEntry>;
  /** end of the last delta frame: the delta pack's size */
  packSize: number;
}

/** The reference chunk digests of an entry (views into the index). */
export function refsOf(index: DeltaIndex, e: DeltaEntry): Buffer[] {
  const seq = index.seqs[e.seq]!;
  const out: Buffer[] = [];
  for (let i = e.first; i < e.first + e.count; i++)
    out.push(seq.subarray(i * HASH_BYTES, (i + 1) * HASH_BYTES));
  return out;
}

export function encodeDeltaIndex(seqs: Buffer[], entries: DeltaEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => Buffer.compare(a.hash, b.hash));
  const seqBytes = seqs.reduce((n, s) => n + 4 + s.length, 0);
  const body = Buffer.alloc(16 + seqBytes + sorted.length * ENTRY);
  DELTA_INDEX_MAGIC.copy(body, 0);
  body.writeUInt32LE(seqs.length, 8);
  body.writeUInt32LE(sorted.length, 12);
  let p = 16;
  for (const s of seqs) {
    body.writeUInt32LE(s.length / HASH_BYTES, p);
    s.copy(body, p + 4);
    p += 4 + s.length;
  }
  for (const e of sorted) {
    e.hash.copy(body, p);
    body.writeUInt32LE(e.length, p + 32);
    body.writeBigUInt64LE(BigInt(e.offset), p + 36);
    body.writeUInt32LE(e.deltaLength, p + 44);
    body.writeUInt32LE(e.seq, p + 48);
    body.writeUInt32LE(e.first, p + 52);
    body.writeUInt32LE(e.count, p + 56);
    p += ENTRY;
  }
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

/** Decodes and checks a delta index (checksum, order, every bound); throws PACK_CORRUPT. */
export function decodeDeltaIndex(buf: Buffer, name: string): DeltaIndex {
  const bad = (why: string) =>
    new ReimageError('PACK_CORRUPT', `delta index ${name} is corrupt: ${why}`, {
      details: { pack: name },
    });
  if (buf.length < 16 + 32 || !buf.subarray(0, 8).equals(DELTA_INDEX_MAGIC))
    throw bad('bad header');
  const sum = createHash('sha256')
    .update(buf.subarray(0, buf.length - 32))
    .digest();
  if (!sum.equals(buf.subarray(buf.length - 32))) throw bad('checksum mismatch');
  const nseq = buf.readUInt32LE(8);
  const count = buf.readUInt32LE(12);
  if (nseq > MAX_SEQS) throw bad('too many reference runs');
  const end = buf.length - 32;
  let p = 16;
  const seqs: Buffer[] = [];
  for (let i = 0; i < nseq; i++) {
    if (p + 4 > end) throw bad('truncated');
    const n = buf.readUInt32LE(p);
    if (n > MAX_SEQ_LEN || p + 4 + n * HASH_BYTES > end) throw bad(`run ${i} out of bounds`);
    seqs.push(buf.subarray(p + 4, p + 4 + n * HASH_BYTES));
    p += 4 + n * HASH_BYTES;
  }
  if (p + count * ENTRY !== end) throw bad('wrong length');
  const entries = new Map<string, DeltaEntry>();
  let prev: Buffer | undefined;
  let packSize = DELTA_PACK_MAGIC.length;
  for (let i = 0; i < count; i++, p += ENTRY) {
    const hash = buf.subarray(p, p + 32);
    if (prev && Buffer.compare(prev, hash) >= 0) throw bad('entries out of order');
    prev = hash;
    const e: DeltaEntry = {
      hash,
      length: buf.readUInt32LE(p + 32),
      offset: Number(buf.readBigUInt64LE(p + 36)),
      deltaLength: buf.readUInt32LE(p + 44),
      seq: buf.readUInt32LE(p + 48),
      first: buf.readUInt32LE(p + 52),
      count: buf.readUInt32LE(p + 56),
    };
    const seq = seqs[e.seq];
    if (
      e.length === 0 ||
      e.length > MAX_CHUNK_BYTES ||
      e.offset < DELTA_PACK_MAGIC.length ||
      !Number.isSafeInteger(e.offset) ||
      e.deltaLength === 0 ||
      e.deltaLength > MAX_DELTA_BYTES ||
      !seq ||
      e.count > MAX_REF_CHUNKS ||
      e.first + e.count > seq.length / HASH_BYTES
    )
      throw bad(`entry ${i} out of bounds`);
    packSize = Math.max(packSize, e.offset + e.deltaLength);
    entries.set(hashKey(hash), e);
  }
  return { seqs, entries, packSize };
}

/**
 * Compresses `chunk` with `ref` as raw-content dictionary (or `dict`, the same prepared as a
 * CDict, which is much cheaper for several chunks). The dictionary is used as raw
 * content even when it happens to begin with zstd's dictionary magic: `makeDelta` checks the
 * round trip, and a delta that does not rebuild its chunk is not kept.
 */
export function makeDelta(
  cctx: zstd.CCtx,
  dctx: zstd.DCtx,
  chunk: Uint8Array,
  ref: Uint8Array,
  dict: zstd.CDict | number = 3,
): Buffer | undefined {
  const dst = Buffer.allocUnsafe(zstd.compressBound(chunk.length));
  const n =
    typeof dict === 'number'
      ? cctx.compressUsingDict(dst, chunk, ref, dict)
      : cctx.compressUsingCDict(dst, chunk, dict);
  const delta = Buffer.from(dst.subarray(0, n));
  try {
    const back = applyDelta(dctx, delta, ref, chunk.length);
    return Buffer.compare(back, chunk) === 0 ? delta : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Rebuilds a chunk from its delta and reference. The frame must declare exactly `length`
 * bytes (so a hostile delta cannot make us allocate more); the caller hashes the result.
 */
export function applyDelta(
  dctx: zstd.DCtx,
  delta: Uint8Array,
  ref: Uint8Array,
  length: number,
): Buffer {
  let size: number | null;
  try {
    size = zstd.getFrameContentSize(delta);
  } catch (e) {
    throw new ReimageError('CHUNK_CORRUPT', 'a delta is not a zstd frame', { cause: e });
  }
  if (size !== length)
    throw new ReimageError('CHUNK_CORRUPT', `a delta claims ${size} bytes, not ${length}`);
  const out = Buffer.allocUnsafe(length);
  const n = ref.length ? dctx.decompressUsingDict(out, delta, ref) : dctx.decompress(out, delta);
  if (n !== length) throw new ReimageError('CHUNK_CORRUPT', 'a delta is short');
  return out;
}

export function deltaPackRel(id: string): string {
  return `deltas/${id.slice(0, 2)}/${id}.dpack`;
}

export function deltaIndexRel(id: string): string {
  return `deltas/${id.slice(0, 2)}/${id}.didx`;
}

/** Delta packs in a local store (those with an index). */
export function listDeltaPacks(store: ContentStore): string[] {
  const top = join(store.root, 'deltas');
  const out: string[] = [];
  for (const d of readdirOr(top)) {
    if (!/^[0-9a-f]{2}$/.test(d)) continue;
    for (const f of readdirOr(join(top, d)))
      if (/^[0-9a-f]{64}\.didx$/.test(f)) out.push(f.slice(0, 64));
  }
  return out.sort();
}

/** Delta pack files without their index (a capture killed between the two), for gc. */
export function strayDeltaFiles(store: ContentStore): string[] {
  const top = join(store.root, 'deltas');
  const out: string[] = [];
  for (const d of readdirOr(top)) {
    if (!/^[0-9a-f]{2}$/.test(d)) continue;
    const files = new Set(readdirOr(join(top, d)));
    for (const f of files) {
      const m = /^([0-9a-f]{64})\.dpack$/.exec(f);
      if ((m && !files.has(`${m[1]}.didx`)) || f.includes('.tmp-')) out.push(join(top, d, f));
    }
  }
  return out;
}

function readdirOr(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

/** Writes one delta pack and its index into a store (pack first, index last, both durable). */
export class DeltaPackWriter {
  private readonly tmp: string;
  private fd: number;
  private size = DELTA_PACK_MAGIC.length;
  private readonly hash: Hash = createHash('sha256').update(DELTA_PACK_MAGIC);
  private readonly seqs: Buffer[] = [];
  private readonly entries: DeltaEntry[] = [];
  private readonly have = new Set<string>();
  bytes = 0;

  constructor(private readonly store: ContentStore) {
    const dir = join(store.root, 'tmp');
    mkdirSync(dir, { recursive: true });
    this.tmp = join(dir, `${process.pid}-${randomUUID()}.dpack`);
    this.fd = openSync(this.tmp, 'wx');
    writeAll(this.fd, DELTA_PACK_MAGIC);
  }

  get count(): number {
    return this.entries.length;
  }

  has(key: string): boolean {
    return this.have.has(key);
  }

  /** A run of old chunk digests; returns its number for `add`. */
  addSeq(digests: Buffer): number {
    this.seqs.push(digests);
    return this.seqs.length - 1;
  }

  add(hash: Buffer, length: number, delta: Buffer, seq: number, first: number, count: number) {
    const k = hashKey(hash);
    if (this.have.has(k)) return;
    this.have.add(k);
    writeAll(this.fd, delta);
    this.hash.update(delta);
    this.entries.push({
      hash: Buffer.from(hash),
      length,
      offset: this.size,
      deltaLength: delta.length,
      seq,
      first,
      count,
    });
    this.size += delta.length;
    this.bytes += delta.length;
  }

  /** Moves the pack into the store; returns its id, or undefined when it holds nothing. */
  commit(): string | undefined {
    fsyncSync(this.fd);
    closeSync(this.fd);
    this.fd = -1;
    if (this.entries.length === 0) {
      rmSync(this.tmp, { force: true });
      return undefined;
    }
    const id = this.hash.digest('hex');
    const dir = join(this.store.root, 'deltas', id.slice(0, 2));
    mkdirSync(dir, { recursive: true });
    renameSync(this.tmp, join(this.store.root, deltaPackRel(id)));
    writeAtomic(
      join(this.store.root, deltaIndexRel(id)),
      encodeDeltaIndex(this.seqs, this.entries),
      true,
    );
    return id;
  }

  abort(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
    rmSync(this.tmp, { force: true });
  }
}
