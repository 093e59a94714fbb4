import { Compressor, type Decompressor } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
import { HASH_BYTES } from './digest.js';
import { ReimageError } from '../errors.js';
import { createHash } from 'node:crypto';

/**
 * A pack is a file of zstd frames; each frame holds one or more chunks back to back.
 * Small chunks share a frame so that they compress together (a 2 KiB file alone compresses
 * badly); a reader fetches a frame by byte range and cuts the chunk out of it.
 * The pack's index (a separate `.idx` file, sorted by chunk hash) says where each chunk is.
 */
export const PACK_MAGIC = Buffer.from('RIMGPK01');
export const INDEX_MAGIC = Buffer.from('RIMGIX01');
const INDEX_ENTRY = HASH_BYTES + 8 + 4 + 4 + 4;
/** Frames are cut once they hold this much raw data. */
export const FRAME_TARGET = 2 * 1024 * 1024;
/** Bounds that a reader enforces on an index from an untrusted store. */
export const MAX_FRAME_BYTES = 64 * 1024 * 1024;
export const MAX_CHUNK_BYTES = 16 * 1024 * 1024;

export interface ChunkLocation {
  pack: number;
  frameOffset: number;
  frameLength: number;
  offset: number;
  length: number;
}

/** One frame ready to append to a pack: compressed bytes plus (hash, offset, length) per chunk. */
export interface Frame {
  data: Buffer;
  /** HASH_BYTES + u32 offset + u32 length, per chunk */
  chunks: Buffer;
}

export const FRAME_CHUNK_RECORD = HASH_BYTES + 8;

/** Gathers chunks into frames and compresses them (runs inside capture workers). */
export class FrameBuilder {
  private readonly compressor = new Compressor();
  // One copy of each chunk, straight into the frame being built (the caller reuses its buffer).
  private raw = Buffer.allocUnsafe(FRAME_TARGET + 256 * 1024);
  private records = Buffer.allocUnsafe(FRAME_CHUNK_RECORD * 1024);
  private used = 0;
  private count = 0;

  constructor(
    private readonly emit: (frame: Frame) => void,
    level = 3,
  ) {
    this.compressor.setParameters({ compressionLevel: level, checksumFlag: false });
  }

  add(hash: Uint8Array, data: Uint8Array): void {
    if (this.used + data.length > this.raw.length) {
      this.flush();
      if (data.length > this.raw.length) this.raw = Buffer.allocUnsafe(data.length);
    }
    if ((this.count + 1) * FRAME_CHUNK_RECORD > this.records.length) {
      const bigger = Buffer.allocUnsafe(this.records.length * 2);
      this.records.copy(bigger, 0, 0, this.count * FRAME_CHUNK_RECORD);
      this.records = bigger;
    }
    const r = this.count * FRAME_CHUNK_RECORD;
    this.records.set(hash, r);
    this.records.writeUInt32LE(this.used, r + HASH_BYTES);
    this.records.writeUInt32LE(data.length, r + HASH_BYTES + 4);
    this.raw.set(data, this.used);
    this.used += data.length;
    this.count++;
    if (this.used >= FRAME_TARGET) this.flush();
  }

  flush(): void {
    if (this.count === 0) return;
    const data = this.compressor.compress(this.raw.subarray(0, this.used));
    // A fresh copy of the records: the frame is handed to another thread.
    const chunks = Buffer.from(this.records.subarray(0, this.count * FRAME_CHUNK_RECORD));
    this.emit({ data, chunks });
    this.used = 0;
    this.count = 0;
  }
}

export interface IndexEntry {
  hash: Buffer;
  frameOffset: number;
  frameLength: number;
  offset: number;
  length: number;
}

export function encodeIndex(entries: IndexEntry[]): Buffer {
  const sorted = [...entries].sort((a, b) => Buffer.compare(a.hash, b.hash));
  const body = Buffer.alloc(INDEX_MAGIC.length + 4 + sorted.length * INDEX_ENTRY);
  INDEX_MAGIC.copy(body, 0);
  body.writeUInt32LE(sorted.length, 8);
  let p = 12;
  for (const e of sorted) {
    e.hash.copy(body, p);
    body.writeBigUInt64LE(BigInt(e.frameOffset), p + 32);
    body.writeUInt32LE(e.frameLength, p + 40);
    body.writeUInt32LE(e.offset, p + 44);
    body.writeUInt32LE(e.length, p + 48);
    p += INDEX_ENTRY;
  }
  const sum = createHash('sha256').update(body).digest();
  return Buffer.concat([body, sum]);
}

/** Decodes and checks an index; `visit` is called once per entry in hash order. */
export function decodeIndex(
  buf: Buffer,
  packSize: number,
  packName: string,
  visit: (
    hash: Buffer,
    frameOffset: number,
    frameLength: number,
    offset: number,
    length: number,
  ) => void,
): number {
  const bad = (why: string) =>
    new ReimageError('PACK_CORRUPT', `pack index ${packName} is corrupt: ${why}`, {
      details: { pack: packName },
    });
  if (buf.length < 12 + 32 || !buf.subarray(0, 8).equals(INDEX_MAGIC)) throw bad('bad header');
  const count = buf.readUInt32LE(8);
  if (buf.length !== 12 + count * INDEX_ENTRY + 32) throw bad('wrong length');
  const sum = createHash('sha256')
    .update(buf.subarray(0, buf.length - 32))
    .digest();
  if (!sum.equals(buf.subarray(buf.length - 32))) throw bad('checksum mismatch');
  let prev: Buffer | undefined;
  for (let i = 0, p = 12; i < count; i++, p += INDEX_ENTRY) {
    const hash = buf.subarray(p, p + 32);
    if (prev && Buffer.compare(prev, hash) >= 0) throw bad('entries out of order');
    prev = hash;
    const frameOffset = Number(buf.readBigUInt64LE(p + 32));
    const frameLength = buf.readUInt32LE(p + 40);
    const offset = buf.readUInt32LE(p + 44);
    const length = buf.readUInt32LE(p + 48);
    if (
      frameOffset < PACK_MAGIC.length ||
      frameLength === 0 ||
      frameLength > MAX_FRAME_BYTES ||
      frameOffset + frameLength > packSize ||
      length > MAX_CHUNK_BYTES
    ) {
      throw bad(`entry ${i} out of bounds`);
    }
    visit(hash, frameOffset, frameLength, offset, length);
  }
  return count;
}

/** Largest raw frame a writer makes (a frame is cut once it passes FRAME_TARGET). */
export const MAX_FRAME_RAW = FRAME_TARGET + MAX_CHUNK_BYTES;

/**
 * Decompresses one zstd frame whose header must declare its size, and refuses a frame that
 * claims more than `max` bytes: a hostile store must not make us allocate gigabytes.
 */
export function decompressBounded(
  dz: Decompressor,
  data: Uint8Array,
  max: number,
  what: string,
): Buffer {
  let size: number | null;
  try {
    size = zstdBinding.getFrameContentSize(data);
  } catch (e) {
    throw new ReimageError('PACK_CORRUPT', `${what} is not a zstd frame`, { cause: e });
  }
  if (size === null || size > max) {
    throw new ReimageError(
      'PACK_CORRUPT',
      `${what} claims ${size === null ? 'an unknown size' : `${size} bytes`} (at most ${max} allowed)`,
    );
  }
  return dz.decompress(data);
}
