import { ReimageError } from '../errors.js';
import { classifyDbError } from './db.js';

/** Time as the catalog stores it: ISO-8601 UTC with milliseconds (sorts as text). */
export const isoNow = (clock: () => number = Date.now): string => new Date(clock()).toISOString();

export const toJson = (v: unknown): string => JSON.stringify(v ?? null);

export function fromJson<T>(text: string | null): T {
  return (text === null ? null : JSON.parse(text)) as T;
}

/** bigint columns come back from PostgreSQL as strings. */
export const num = (v: number | string | bigint | null): number => (v === null ? 0 : Number(v));

/**
 * Runs a write and turns the database's complaint into the caller's words: a duplicate name
 * becomes ALREADY_EXISTS, a dangling or still-used reference REFERENCE_UNKNOWN / IN_USE,
 * anything else DATABASE_ERROR (with the cause kept).
 */
export async function write<T>(
  what: { kind: string; name: string; onForeignKey?: 'REFERENCE_UNKNOWN' | 'IN_USE' },
  run: () => Promise<T>,
): Promise<T> {
  try {
    return await run();
  } catch (e) {
    if (e instanceof ReimageError) throw e;
    const kind = classifyDbError(e);
    if (kind === 'unique')
      throw new ReimageError(
        'ALREADY_EXISTS',
        `${/^[aeio]/i.test(what.kind) ? 'An' : 'A'} ${what.kind} named '${what.name}' already exists.`,
        {
          details: { kind: what.kind, name: what.name },
        },
      );
    if (kind === 'foreign-key') {
      const code = what.onForeignKey ?? 'REFERENCE_UNKNOWN';
      throw new ReimageError(
        code,
        code === 'IN_USE'
          ? `The ${what.kind} '${what.name}' is still referenced.`
          : `The ${what.kind} '${what.name}' refers to something that does not exist.`,
        { details: { kind: what.kind, name: what.name } },
      );
    }
    throw new ReimageError(
      'DATABASE_ERROR',
      `The catalog database failed: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
}

export function notFound(kind: string, ref: string): ReimageError {
  return new ReimageError('NOT_FOUND', `No ${kind} '${ref}' in the catalog.`, {
    details: { kind, ref },
  });
}
