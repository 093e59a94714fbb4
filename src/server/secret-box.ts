import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { ReimageError } from '../errors.js';
import { writeAtomic } from '../content/store.js';

const VERSION = 'v1';

/**
 * Encrypts secrets at rest (AES-256-GCM) with the server's key. Each ciphertext is bound to
 * what it belongs to (`context`, e.g. the package id), so a secret copied onto another
 * package's row does not decrypt there.
 */
export class SecretBox {
  private constructor(private readonly key: Buffer) {}

  static fromKey(key: Buffer): SecretBox {
    if (key.length !== 32)
      throw new ReimageError('SERVER_CONFIG_INVALID', 'The secret key must be 32 bytes.');
    return new SecretBox(key);
  }

  /** Loads the key file, making a new random key (mode 0600) the first time. */
  static loadOrCreate(file: string): SecretBox {
    let text: string | undefined;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
        throw new ReimageError(
          'SERVER_CONFIG_INVALID',
          `Cannot read the secret key file ${file}.`,
          { cause: e },
        );
    }
    if (text === undefined) {
      const key = randomBytes(32);
      mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
      writeAtomic(file, key.toString('base64') + '\n', true, 0o600);
      return new SecretBox(key);
    }
    const key = Buffer.from(text.trim(), 'base64');
    if (key.length !== 32)
      throw new ReimageError(
        'SERVER_CONFIG_INVALID',
        `The secret key file ${file} does not hold a 32-byte key.`,
      );
    return new SecretBox(key);
  }

  /**
   * A 32-byte key for `context`, derived from the server key (HMAC-SHA256): the same context
   * always gives the same key, so nothing more needs storing, and no derived key reveals the
   * server key or another context's key.
   */
  derive(context: string): Buffer {
    return createHmac('sha256', this.key).update(`reimage-derive:${context}`).digest();
  }

  seal(plain: unknown, context: string): string {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.key, iv);
    c.setAAD(Buffer.from(context));
    const body = Buffer.concat([c.update(JSON.stringify(plain), 'utf8'), c.final()]);
    return `${VERSION}:${Buffer.concat([iv, c.getAuthTag(), body]).toString('base64')}`;
  }

  open<T>(sealed: string, context: string): T {
    const [version, b64] = sealed.split(':');
    const raw = Buffer.from(b64 ?? '', 'base64');
    if (version !== VERSION || raw.length < 28)
      throw new ReimageError(
        'SECRET_KEY_INVALID',
        'A stored secret is not in a form this server reads.',
      );
    try {
      const d = createDecipheriv('aes-256-gcm', this.key, raw.subarray(0, 12));
      d.setAAD(Buffer.from(context));
      d.setAuthTag(raw.subarray(12, 28));
      return JSON.parse(
        Buffer.concat([d.update(raw.subarray(28)), d.final()]).toString('utf8'),
      ) as T;
    } catch (cause) {
      throw new ReimageError(
        'SECRET_KEY_INVALID',
        'A stored secret does not decrypt with this server key.',
        { cause },
      );
    }
  }
}
