import { createCipheriv, createHash } from 'node:crypto';

/** Deterministic pseudo-random bytes (AES-256-CTR keystream), so that failures reproduce. */
export function randomData(seed: string, n: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  const c = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return Buffer.concat([c.update(Buffer.alloc(n)), c.final()]);
}
