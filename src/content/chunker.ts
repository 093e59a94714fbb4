import { createHash } from 'node:crypto';

/**
 * Content-defined chunking, FastCDC with normalized chunking (level 2).
 * The gear table and the parameters are part of the native image format v1: changing them
 * changes every chunk boundary, so they are versioned with the format, not tuned at run time.
 */
export const CHUNK_MIN = 16 * 1024;
export const CHUNK_AVG = 64 * 1024;
export const CHUNK_MAX = 256 * 1024;

// Spread over the high bits: with a left-shifting gear hash, the high bits depend on the
// most recent 32 bytes, so the cut decision has the full window behind it.
const MASK_S = 0xffffc000 | 0; // 18 bits: harder to cut before the average size
const MASK_L = 0xfffc0000 | 0; // 14 bits: easier to cut after it

function makeGear(): Int32Array {
  const gear = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    const d = createHash('sha256').update(`reimage-fastcdc-gear-v1:${i}`).digest();
    gear[i] = d.readInt32LE(0);
  }
  return gear;
}

const GEAR = makeGear();

/** A copy of the gear table (for the native cut-point search). */
export function gearTable(): Int32Array {
  return GEAR.slice();
}

/**
 * Length of the chunk that starts at `start`, looking at no more than `end - start` bytes.
 * When fewer than CHUNK_MAX bytes are available the caller must either be at the end of
 * the data or supply more bytes first: the boundary depends on up to CHUNK_MAX bytes.
 */
export function cutPoint(data: Uint8Array, start: number, end: number): number {
  let n = end - start;
  if (n <= CHUNK_MIN) return n;
  if (n > CHUNK_MAX) n = CHUNK_MAX;
  const normal = n < CHUNK_AVG ? n : CHUNK_AVG;
  const gear = GEAR;
  let h = 0;
  let i = start + CHUNK_MIN;
  const stop1 = start + normal;
  for (; i < stop1; i++) {
    h = ((h << 1) + gear[data[i]!]!) | 0;
    if ((h & MASK_S) === 0) return i - start;
  }
  const stop2 = start + n;
  for (; i < stop2; i++) {
    h = ((h << 1) + gear[data[i]!]!) | 0;
    if ((h & MASK_L) === 0) return i - start;
  }
  return n;
}

/** Chunk lengths of a whole in-memory buffer (tests and small inputs). */
export function chunkLengths(data: Uint8Array): number[] {
  const out: number[] = [];
  let pos = 0;
  while (pos < data.length) {
    const len = cutPoint(data, pos, data.length);
    out.push(len);
    pos += len;
  }
  return out;
}

/**
 * Cuts a stream into the same chunks as `cutPoint` over the whole data, whatever the sizes of
 * the pieces pushed. Chunks are handed out as views of an internal buffer: use them (hash,
 * copy) before the next push.
 */
export class StreamChunker {
  private buf = Buffer.allocUnsafe(2 * CHUNK_MAX);
  private len = 0;

  constructor(private readonly onChunk: (chunk: Buffer) => void) {}

  push(data: Uint8Array): void {
    if (this.len + data.length > this.buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + data.length));
      this.buf.copy(bigger, 0, 0, this.len);
      this.buf = bigger;
    }
    this.buf.set(data, this.len);
    this.len += data.length;
    let pos = 0;
    while (this.len - pos >= CHUNK_MAX) {
      const n = cutPoint(this.buf, pos, this.len);
      this.onChunk(this.buf.subarray(pos, pos + n));
      pos += n;
    }
    if (pos > 0) {
      this.buf.copy(this.buf, 0, pos, this.len);
      this.len -= pos;
    }
  }

  end(): void {
    let pos = 0;
    while (pos < this.len) {
      const n = cutPoint(this.buf, pos, this.len);
      this.onChunk(this.buf.subarray(pos, pos + n));
      pos += n;
    }
    this.len = 0;
  }
}
