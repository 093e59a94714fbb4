import { createHash } from 'node:crypto';

/** Chunks, manifests and packs are named by SHA-256. */
export const HASH_BYTES = 32;

export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

export function sha256Hex(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A compact Map key for a 32-byte hash (one JS string char per byte). */
export function hashKey(hash: Uint8Array, offset = 0): string {
  return Buffer.from(hash.buffer, hash.byteOffset + offset, HASH_BYTES).toString('latin1');
}

export function keyToHex(key: string): string {
  return Buffer.from(key, 'latin1').toString('hex');
}

export function isHexId(s: string): boolean {
  return /^[0-9a-f]{64}$/.test(s);
}
