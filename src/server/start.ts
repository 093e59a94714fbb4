import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { FastifyBaseLogger } from 'fastify';
import { Catalog } from '../catalog/catalog.js';
import { openCatalogDb } from '../catalog/db.js';
import { migrateToLatest } from '../catalog/migrations.js';
import { ContentStore } from '../content/store.js';
import { createServer } from './app.js';
import { hashPassword } from './credentials.js';
import { registerLibrary } from './routes/images.js';
import { SecretBox } from './secret-box.js';
import { checkListenAddress, loadOrCreateCertificate } from './tls.js';

export interface StartOptions {
  /** Where the server keeps its SQLite catalog, secret key, TLS certificate and image library. */
  dataDir: string;
  /** `postgres://…` for PostgreSQL; default the SQLite file `<dataDir>/catalog.sqlite`. */
  database?: string;
  host: string;
  port: number;
  certFile?: string;
  keyFile?: string;
  /** Plain HTTP, on a loopback address only. */
  insecureHttp?: boolean;
  /** The image library (default `<dataDir>/library`). */
  store?: string;
  logger?: FastifyBaseLogger | boolean | object;
}

export interface RunningServer {
  url: string;
  fingerprint: string | null;
  /** Set only on the first start: where the generated admin password was written. */
  initialAdminPasswordFile?: string;
  close(): Promise<void>;
}

/**
 * Starts the management server the way `reimage server` does: opens and migrates the
 * database, loads (or makes) the secret key and TLS certificate, makes the first admin on
 * first start, registers the library's images, and listens.
 */
export async function startServer(o: StartOptions): Promise<RunningServer> {
  checkListenAddress(o.host, !o.insecureHttp);
  mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
  const catalogDb = openCatalogDb(o.database ?? join(o.dataDir, 'catalog.sqlite'));
  try {
    await migrateToLatest(catalogDb);
    const catalog = new Catalog(catalogDb);
    const secrets = SecretBox.loadOrCreate(join(o.dataDir, 'secret.key'));
    const store = ContentStore.open(o.store ?? join(o.dataDir, 'library'), { create: true });
    const tls = o.insecureHttp
      ? undefined
      : await loadOrCreateCertificate({
          dataDir: o.dataDir,
          certFile: o.certFile,
          keyFile: o.keyFile,
          hostnames: [o.host],
        });
    let initialAdminPasswordFile: string | undefined;
    if ((await catalog.userCount()) === 0) {
      // Like Jenkins' initialAdminPassword: never printed, written where only root can read it.
      const password = randomBytes(18).toString('base64url');
      await catalog.createUser({
        username: 'admin',
        passwordHash: await hashPassword(password),
        role: 'admin',
      });
      initialAdminPasswordFile = join(o.dataDir, 'initial-admin-password');
      writeFileSync(initialAdminPasswordFile, password + '\n', { mode: 0o600 });
    }
    await registerLibrary(catalog, store, 'server');
    const app = await createServer({
      catalog,
      secrets,
      store,
      fingerprint: tls?.fingerprint,
      https: tls ? { cert: tls.cert, key: tls.key } : undefined,
      logger: o.logger ?? false,
    });
    await app.listen({ host: o.host, port: o.port });
    const addr = app.server.address();
    const port = typeof addr === 'object' && addr ? addr.port : o.port;
    const host = o.host.includes(':') ? `[${o.host}]` : o.host;
    return {
      url: `${tls ? 'https' : 'http'}://${host}:${port}`,
      fingerprint: tls?.fingerprint ?? null,
      initialAdminPasswordFile,
      close: async () => {
        await app.close();
        await catalogDb.close();
      },
    };
  } catch (e) {
    await catalogDb.close();
    throw e;
  }
}
