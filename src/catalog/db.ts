import Database from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect } from 'kysely';
import pg from 'pg';
import { ReimageError } from '../errors.js';
import type { Tables } from './tables.js';

export type Dialect = 'sqlite' | 'postgres';

/** An open catalog database: the query builder, which engine is behind it, and how to close it. */
export interface CatalogDb {
  readonly db: Kysely<Tables>;
  readonly dialect: Dialect;
  /** Where it is, with any password removed (safe to log). */
  readonly location: string;
  /** The SQLite handle behind `db` (SQLite only): the status ingest runs prepared statements on it. */
  readonly sqlite?: Database.Database;
  close(): Promise<void>;
}

/**
 * Opens the catalog database named by `url`: `postgres://…` / `postgresql://…` for PostgreSQL,
 * anything else is a SQLite file path (optionally prefixed `sqlite:`), `:memory:` included.
 */
export function openCatalogDb(url: string): CatalogDb {
  if (/^postgres(ql)?:\/\//i.test(url)) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch (cause) {
      throw new ReimageError('SERVER_CONFIG_INVALID', 'The database URL does not parse.', {
        cause,
      });
    }
    parsed.password = parsed.password ? '***' : '';
    const pool = new pg.Pool({ connectionString: url, max: 10 });
    // An idle client's error (the server restarted) must not crash the process; the next
    // query reports it.
    pool.on('error', () => {});
    const db = new Kysely<Tables>({ dialect: new PostgresDialect({ pool }) });
    return { db, dialect: 'postgres', location: parsed.toString(), close: () => db.destroy() };
  }
  const file = url.startsWith('sqlite:') ? url.slice('sqlite:'.length) : url;
  let sqlite: Database.Database;
  try {
    sqlite = new Database(file);
  } catch (cause) {
    throw new ReimageError('SERVER_CONFIG_INVALID', `Cannot open the SQLite database ${file}.`, {
      cause,
    });
  }
  // WAL lets readers run beside the one writer; FULL makes every commit durable; foreign
  // keys are off by default in SQLite and on in PostgreSQL, so turn them on.
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('synchronous = FULL');
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma('busy_timeout = 5000');
  const db = new Kysely<Tables>({ dialect: new SqliteDialect({ database: sqlite }) });
  return { db, dialect: 'sqlite', location: file, sqlite, close: () => db.destroy() };
}

/** What a database error means for the caller: a duplicate, a dangling reference, or a failure. */
export function classifyDbError(e: unknown): 'unique' | 'foreign-key' | 'other' {
  const code = (e as { code?: unknown } | null)?.code;
  if (
    code === '23505' ||
    code === 'SQLITE_CONSTRAINT_UNIQUE' ||
    code === 'SQLITE_CONSTRAINT_PRIMARYKEY'
  )
    return 'unique';
  if (code === '23503' || code === 'SQLITE_CONSTRAINT_FOREIGNKEY') return 'foreign-key';
  return 'other';
}
