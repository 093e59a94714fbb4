import type { Decompressor } from 'zstd-napi';
import { ReimageError } from '../errors.js';
import { HASH_BYTES, sha256 } from './digest.js';
import {
  decompressBounded,
  FRAME_CHUNK_RECORD,
  MAX_CHUNK_BYTES,
  MAX_FRAME_BYTES,
  MAX_FRAME_RAW,
  type Frame,
} from './pack.js';

/**
 * A frame stream: pack frames with their chunk records, back to back, as an upload sends
 * them to a server's library (docs/upload.md):
 *
 *   "RIMGFS01"
 *   per frame: u32le chunk count, u32le frame length,
 *              count × (32-byte SHA-256, u32le offset, u32le length) in the raw frame,
 *              the zstd frame itself (as stored in a pack)
 *
 * The receiver trusts none of it: `decodeFrameStream` checks every bound and hashes every
 * chunk before returning anything, so a caller stores all of a body or none of it.
 */
export const FRAME_STREAM_MAGIC = Buffer.from('RIMGFS01');
const FRAME_HEADER = 8;
/** More chunk records than this in one frame is refused (a 2 MiB frame of 16 KiB chunks has ~128). */
export const MAX_CHUNKS_PER_FRAME = 16384;

/** Encodes frames into one body. */
export function encodeFrameStream(frames: readonly Frame[]): Buffer {
  const parts: Buffer[] = [FRAME_STREAM_MAGIC];
  for (const f of frames) {
    const h = Buffer.alloc(FRAME_HEADER);
    h.writeUInt32LE(f.chunks.length / FRAME_CHUNK_RECORD, 0);
    h.writeUInt32LE(f.data.length, 4);
    parts.push(h, f.chunks, f.data);
  }
  return Buffer.concat(parts);
}

/** Bytes a frame adds to a frame stream. */
export function frameStreamSize(f: Frame): number {
  return FRAME_HEADER + f.chunks.length + f.data.length;
}

/**
 * Decodes a frame stream and verifies it whole: each frame decompresses within bounds and
 * every chunk record lies inside it and hashes to its name. Throws UPLOAD_DATA_INVALID
 * (naming the frame and chunk) on the first problem; returns the frames only when all are good.
 */
export function decodeFrameStream(body: Buffer, dz: Decompressor): Frame[] {
  const bad = (why: string, details: Record<string, unknown> = {}) =>
    new ReimageError('UPLOAD_DATA_INVALID', `The frames sent are not valid: ${why}.`, { details });
  if (body.length < FRAME_STREAM_MAGIC.length || !body.subarray(0, 8).equals(FRAME_STREAM_MAGIC))
    throw bad('the body does not start with the frame stream magic "RIMGFS01"');
  const frames: Frame[] = [];
  let p = FRAME_STREAM_MAGIC.length;
  while (p < body.length) {
    const at = frames.length;
    if (body.length - p < FRAME_HEADER) throw bad(`frame ${at} has a truncated header`);
    const count = body.readUInt32LE(p);
    const length = body.readUInt32LE(p + 4);
    p += FRAME_HEADER;
    if (count === 0 || count > MAX_CHUNKS_PER_FRAME)
      throw bad(`frame ${at} claims ${count} chunks (1 to ${MAX_CHUNKS_PER_FRAME} allowed)`);
    if (length === 0 || length > MAX_FRAME_BYTES)
      throw bad(`frame ${at} claims ${length} bytes (1 to ${MAX_FRAME_BYTES} allowed)`);
    const recordsEnd = p + count * FRAME_CHUNK_RECORD;
    if (recordsEnd + length > body.length) throw bad(`frame ${at} runs past the end of the body`);
    const chunks = body.subarray(p, recordsEnd);
    const data = body.subarray(recordsEnd, recordsEnd + length);
    p = recordsEnd + length;
    let raw: Buffer;
    try {
      raw = decompressBounded(dz, data, MAX_FRAME_RAW, `frame ${at}`);
    } catch (e) {
      throw bad(`frame ${at} cannot be decompressed (${(e as Error).message})`, { frame: at });
    }
    for (let i = 0; i < count; i++) {
      const r = i * FRAME_CHUNK_RECORD;
      const hash = chunks.subarray(r, r + HASH_BYTES);
      const offset = chunks.readUInt32LE(r + HASH_BYTES);
      const len = chunks.readUInt32LE(r + HASH_BYTES + 4);
      const chunk = hash.toString('hex');
      if (len > MAX_CHUNK_BYTES || offset + len > raw.length)
        throw bad(`chunk ${chunk} of frame ${at} lies outside the frame`, { frame: at, chunk });
      if (!sha256(raw.subarray(offset, offset + len)).equals(hash))
        throw bad(`chunk ${chunk} of frame ${at} does not hash to its name`, {
          frame: at,
          chunk,
        });
    }
    frames.push({ data, chunks });
  }
  if (frames.length === 0) throw bad('the body holds no frame');
  return frames;
}
