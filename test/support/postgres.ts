import { execFileSync, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, serviceSkip } from './services.js';

/**
 * A throwaway PostgreSQL cluster for the tests of one file: initdb in a temporary folder,
 * started on 127.0.0.1 and a free port, stopped and removed at the end. initdb refuses to run
 * as root, so it runs as the `postgres` user (Debian's package makes it).
 *
 * `REIMAGE_TEST_POSTGRES_URL` uses an existing server instead. Where neither is possible the
 * PostgreSQL tests skip, except under CI (CI=true), where that is a failure.
 */
export interface Postgres {
  /** A new, empty database on the cluster. */
  createDatabase(name: string): Promise<string>;
  stop(): void;
}

function pgBin(tool: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':'), ...listVersions()];
  for (const d of dirs) if (d && existsSync(join(d, tool))) return join(d, tool);
  return undefined;
}

function listVersions(): string[] {
  try {
    return readdirSync('/usr/lib/postgresql')
      .sort()
      .reverse()
      .map((v) => `/usr/lib/postgresql/${v}/bin`);
  } catch {
    return [];
  }
}

/** Why PostgreSQL tests cannot run here, or undefined when they can. */
export function postgresUnavailable(): string | undefined {
  if (process.env.REIMAGE_TEST_POSTGRES_URL) return undefined;
  if (!pgBin('initdb') || !pgBin('pg_ctl'))
    return 'PostgreSQL is not installed (apt-get install postgresql)';
  if (process.getuid?.() !== 0)
    return 'starting a throwaway PostgreSQL needs root (to run initdb as the postgres user)';
  if (spawnSync('id', ['postgres']).status !== 0) return 'there is no postgres user';
  return undefined;
}

/** Skip option for node:test: skip locally, fail under CI. */
export function postgresSkip(): string | false {
  return serviceSkip('PostgreSQL', postgresUnavailable());
}

export async function startPostgres(): Promise<Postgres> {
  const given = process.env.REIMAGE_TEST_POSTGRES_URL;
  const clientFor = async (url: string) => {
    const pg = (await import('pg')).default;
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    return c;
  };
  if (given) {
    return {
      async createDatabase(name) {
        const c = await clientFor(given);
        await c.query(`drop database if exists ${name}`);
        await c.query(`create database ${name}`);
        await c.end();
        const u = new URL(given);
        u.pathname = `/${name}`;
        return u.toString();
      },
      stop() {},
    };
  }
  const dir = mkdtempSync(join(tmpdir(), 'reimage-pg-'));
  chownSync(
    dir,
    Number(execFileSync('id', ['-u', 'postgres']).toString().trim()),
    Number(execFileSync('id', ['-g', 'postgres']).toString().trim()),
  );
  const asPostgres = (tool: string, args: string[]) =>
    execFileSync('runuser', ['-u', 'postgres', '--', pgBin(tool)!, ...args], { stdio: 'pipe' });
  asPostgres('initdb', [
    '-D',
    join(dir, 'data'),
    '-A',
    'trust',
    '-U',
    'postgres',
    '--no-sync',
    '-E',
    'UTF8',
  ]);
  const port = await freePort();
  asPostgres('pg_ctl', [
    '-D',
    join(dir, 'data'),
    '-w',
    '-l',
    join(dir, 'log'),
    '-o',
    `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off`,
    'start',
  ]);
  const base = `postgres://postgres@127.0.0.1:${port}`;
  return {
    async createDatabase(name) {
      const c = await clientFor(`${base}/postgres`);
      await c.query(`create database ${name}`);
      await c.end();
      return `${base}/${name}`;
    },
    stop() {
      try {
        asPostgres('pg_ctl', ['-D', join(dir, 'data'), '-m', 'immediate', 'stop']);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

/** pg_dump of a database, as text (the planted-secret test searches it). */
export function pgDump(url: string): string {
  return execFileSync(pgBin('pg_dump') ?? 'pg_dump', ['--no-owner', url], {
    maxBuffer: 256 * 1024 * 1024,
  }).toString('utf8');
}
