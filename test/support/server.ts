import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe } from 'node:test';
import { Catalog } from '../../src/catalog/catalog.js';
import { openCatalogDb } from '../../src/catalog/db.js';
import type { CatalogDb } from '../../src/catalog/db.js';
import { migrateToLatest } from '../../src/catalog/migrations.js';
import { ContentStore } from '../../src/content/store.js';
import type { Clock } from '../../src/content/window.js';
import { createServer } from '../../src/server/app.js';
import type { App } from '../../src/server/app.js';
import type { Role } from '../../src/catalog/catalog.js';
import { hashPassword, newSecret, secretHash } from '../../src/server/credentials.js';
import { SecretBox } from '../../src/server/secret-box.js';
import { postgresSkip, startPostgres } from './postgres.js';
import type { Postgres } from './postgres.js';

export type DbKind = 'sqlite' | 'postgres';

/** A server under test: the app (call it in-process with `inject`), its catalog, tokens per role, its log. */
export interface TestServer {
  kind: DbKind;
  app: App;
  catalog: Catalog;
  catalogDb: CatalogDb;
  dbUrl: string;
  dir: string;
  store: ContentStore;
  tokens: Record<Role, string>;
  /** Everything the server logged, as text. */
  log(): string;
  call<T = unknown>(
    method: string,
    url: string,
    opts?: { token?: string | null; body?: unknown; role?: Role },
  ): Promise<{ status: number; body: T; raw: string }>;
  /** Stops the app (as a server shutdown does) and starts a new one on the same database and library. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

export interface TestServerOptions {
  /** Time for the replication windows (see ServerDeps.replicationClock). */
  replicationClock?: Clock;
}

/**
 * Runs `suite` once against SQLite and once against a real PostgreSQL (skipped locally when
 * PostgreSQL cannot be started, never under CI). Each run gets a fresh database.
 */
export function forEachDatabase(name: string, suite: (get: () => TestServer) => void): void {
  for (const kind of ['sqlite', 'postgres'] as const) {
    const skip = kind === 'postgres' ? postgresSkip() : false;
    describe(`${name} [${kind}]`, { skip }, () => {
      let server: TestServer | undefined;
      let pg: Postgres | undefined;
      before(async () => {
        if (kind === 'postgres') pg = await startPostgres();
        server = await makeTestServer(kind, pg);
      });
      after(async () => {
        await server?.close();
        pg?.stop();
      });
      suite(() => server!);
    });
  }
}

export async function makeTestServer(
  kind: DbKind,
  pg?: Postgres,
  opts: TestServerOptions = {},
): Promise<TestServer> {
  const dir = mkdtempSync(join(tmpdir(), 'reimage-server-'));
  const dbUrl =
    kind === 'sqlite'
      ? join(dir, 'catalog.sqlite')
      : await pg!.createDatabase(`t_${randomBytes(6).toString('hex')}`);
  const catalogDb = openCatalogDb(dbUrl);
  await migrateToLatest(catalogDb);
  const catalog = new Catalog(catalogDb);
  const store = ContentStore.open(join(dir, 'library'), { create: true });
  let logText = '';
  const stream = new Writable({
    write(chunk, _enc, cb) {
      logText += chunk.toString();
      cb();
    },
  });
  const make = () =>
    createServer({
      catalog,
      secrets: SecretBox.loadOrCreate(join(dir, 'secret.key')),
      store,
      logger: { level: 'debug', stream },
      ...(opts.replicationClock ? { replicationClock: opts.replicationClock } : {}),
    });
  let app = await make();
  const tokens = {} as Record<Role, string>;
  for (const role of ['admin', 'operator', 'read-only'] as const) {
    const user = await catalog.createUser({
      username: role.replace('-', ''),
      passwordHash: await hashPassword(`${role}-password-long`),
      role,
    });
    tokens[role] = newSecret('rit');
    await catalog.createToken({
      userId: user.id,
      name: 'test',
      tokenHash: secretHash(tokens[role]),
      expiresAt: null,
    });
  }
  const server: TestServer = {
    kind,
    app,
    catalog,
    catalogDb,
    dbUrl,
    dir,
    store,
    tokens,
    log: () => logText,
    async call(method, url, opts = {}) {
      const token = opts.token === null ? undefined : (opts.token ?? tokens[opts.role ?? 'admin']);
      const res = await app.inject({
        method: method as 'GET',
        url,
        headers: token ? { authorization: `Bearer ${token}` } : {},
        ...(opts.body !== undefined ? { payload: opts.body as object } : {}),
      });
      return {
        status: res.statusCode,
        body: (res.body ? JSON.parse(res.body) : undefined) as never,
        raw: res.body,
      };
    },
    async restart() {
      await app.close();
      app = await make();
      server.app = app;
      await app.ready();
    },
    async close() {
      await app.close();
      await catalogDb.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return server;
}
