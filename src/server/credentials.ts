import { createHash, randomBytes, scrypt, timingSafeEqual } from 'node:crypto';
import { promisify } from 'node:util';

const scryptAsync = promisify(scrypt) as (
  pw: string,
  salt: Buffer,
  len: number,
  opts: object,
) => Promise<Buffer>;

// scrypt N=2^15, r=8, p=1: ~50 ms and 32 MiB per hash here, OWASP's floor for scrypt.
const N = 1 << 15;
const R = 8;
const P = 1;
const MAXMEM = 64 * 1024 * 1024;

/** A password hash as stored: `scrypt$N$r$p$salt$hash` (base64). */
export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const hash = await scryptAsync(password, salt, 32, { N, r: R, p: P, maxmem: MAXMEM });
  return ['scrypt', N, R, P, salt.toString('base64'), hash.toString('base64')].join('$');
}

export async function verifyPassword(password: string, stored: string): Promise<boolean> {
  const [kind, n, r, p, salt, hash] = stored.split('$');
  if (kind !== 'scrypt' || !salt || !hash) return false;
  const expected = Buffer.from(hash, 'base64');
  const got = await scryptAsync(password, Buffer.from(salt, 'base64'), expected.length, {
    N: Number(n),
    r: Number(r),
    p: Number(p),
    maxmem: MAXMEM,
  });
  return timingSafeEqual(got, expected);
}

/**
 * A random bearer secret with a prefix that says what it is (`rit_` admin API token, `rim_`
 * machine credential, `rie_` enrollment token), so leaked ones are easy to recognize and scan for.
 */
export function newSecret(prefix: 'rit' | 'rim' | 'rie'): string {
  return `${prefix}_${randomBytes(32).toString('base64url')}`;
}

/**
 * Bearer secrets are 256 random bits, so a plain SHA-256 is a safe stored form (no
 * dictionary to attack) and lets every request be checked with one index lookup.
 */
export function secretHash(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}
