/**
 * Catalog fixtures for server tests: a tiny image captured into the server's library and
 * registered, packages from YAML text, distribution points, collections, advertisements and
 * enrolled machines, each made through the API the way an operator or a machine would. Also
 * a snapshot of every catalog table, to check that a refused request changed nothing.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type {
  Advertisement,
  Collection,
  DistributionPoint,
  Machine,
} from '../../src/catalog/catalog.js';
import type { ImageRecord, PackageRecord } from '../../src/catalog/catalog.js';
import type { Tables } from '../../src/catalog/tables.js';
import { captureImage } from '../../src/image/capture.js';
import { randomData } from './random.js';
import type { TestServer } from './server.js';

/** A response's status must be `status`; the message shows the body when it is not. */
export function expectStatus(
  res: { status: number; raw: string },
  status: number,
  what: string,
): void {
  assert.equal(res.status, status, `${what}: HTTP ${res.status} ${res.raw}`);
}

/** Captures a small tree (a few files, one of them seeded random bytes) into `server.store`; returns the image id. */
export async function captureTinyImage(server: TestServer, name: string): Promise<string> {
  const dir = mkdtempSync(join(server.dir, 'tree-'));
  try {
    mkdirSync(join(dir, 'etc'));
    mkdirSync(join(dir, 'usr', 'bin'), { recursive: true });
    writeFileSync(join(dir, 'etc', 'hostname'), `${name}\n`);
    writeFileSync(join(dir, 'etc', 'os-release'), 'ID=debian\nVERSION_ID="12"\n');
    writeFileSync(join(dir, 'usr', 'bin', 'tool'), randomData(name, 20_000));
    const r = await captureImage({ source: dir, store: server.store, name, workers: 1 });
    return r.record.id;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Registers an image of the server's library in the catalog (POST /api/v1/images/register). */
export async function registerImage(server: TestServer, ref: string): Promise<ImageRecord> {
  const res = await server.call<ImageRecord>('POST', '/api/v1/images/register', {
    role: 'operator',
    body: { ref },
  });
  expectStatus(res, 201, `register image ${ref}`);
  return res.body;
}

/** Captures a tiny image named `name` and registers it. */
export async function addImage(server: TestServer, name: string): Promise<ImageRecord> {
  await captureTinyImage(server, name);
  return registerImage(server, name);
}

/** The two files of a package, as an operator sends them. */
export interface PackageFiles {
  definition: string;
  settings: string;
  definitionFile: string;
  settingsFile: string;
}

/** Settings in the shape of examples/packages/debian-12.deploy.yaml (permission required, 2d postponement). */
export function exampleSettings(): Record<string, unknown> {
  return {
    apiVersion: 'reimage/v1',
    kind: 'DeploymentSettings',
    machineState: {
      computerName: 'migrate',
      organization: { set: 'Example Corp' },
      productKey: 'migrate',
      administratorPassword: 'migrate',
    },
    clientState: { guid: 'migrate', policy: 'fresh', distributionPoint: 'fresh' },
    options: {
      redeploySameImage: false,
      requireUserPermission: true,
      postponement: { allowed: true, maximum: '2d' },
      allowDecline: false,
      whenNoAnswer: 'postpone',
    },
    stateStore: { type: 'local', path: '/var/lib/reimage/state', encrypt: true },
    migration: { ruleSets: ['user-accounts', 'user-documents'] },
    rollback: { retainDays: 7 },
  };
}

/** A definition in the shape of examples/packages/debian-12.package.yaml. */
export function exampleDefinition(o: {
  name: string;
  version: string;
  image: string;
  description?: string;
}): Record<string, unknown> {
  return {
    apiVersion: 'reimage/v1',
    kind: 'PackageDefinition',
    name: o.name,
    version: o.version,
    description: o.description ?? `${o.name} for the tests`,
    image: /^[0-9a-f]{64}$/.test(o.image) ? { id: o.image } : { name: o.image },
    format: 'native',
    program: { command: '/usr/local/sbin/finish-install', arguments: ['--site', 'paris'] },
  };
}

/** The package files as YAML text; `settings` replaces the example settings when given. */
export function packageFiles(o: {
  name: string;
  version: string;
  image: string;
  description?: string;
  settings?: Record<string, unknown>;
}): PackageFiles {
  return {
    definition: stringify(exampleDefinition(o)),
    settings: stringify(o.settings ?? exampleSettings()),
    definitionFile: `${o.name}.package.yaml`,
    settingsFile: `${o.name}.deploy.yaml`,
  };
}

export async function createPackage(
  server: TestServer,
  files: PackageFiles,
): Promise<PackageRecord> {
  const res = await server.call<PackageRecord>('POST', '/api/v1/packages', {
    role: 'operator',
    body: files,
  });
  expectStatus(res, 201, `create package ${files.definitionFile}`);
  return res.body;
}

export async function createDp(
  server: TestServer,
  o: { name: string; address?: string; site?: string; boundaries?: string[] },
): Promise<DistributionPoint> {
  const res = await server.call<DistributionPoint>('POST', '/api/v1/distribution-points', {
    role: 'operator',
    body: {
      name: o.name,
      address: o.address ?? `https://dp-${o.name}.example.com/reimage`,
      site: o.site ?? 'PARIS',
      boundaries: o.boundaries ?? ['10.1.0.0/16'],
    },
  });
  expectStatus(res, 201, `create distribution point ${o.name}`);
  return res.body;
}

export async function createCollection(
  server: TestServer,
  o: { name: string; rule?: string; include?: string[]; exclude?: string[] },
): Promise<Collection> {
  const res = await server.call<Collection>('POST', '/api/v1/collections', {
    role: 'operator',
    body: o,
  });
  expectStatus(res, 201, `create collection ${o.name}`);
  return res.body;
}

export async function createAdvertisement(
  server: TestServer,
  o: {
    name: string;
    package: string;
    collection: string;
    policy?: Record<string, unknown>;
    schedule?: Record<string, unknown>;
    availableFrom?: string;
  },
): Promise<Advertisement> {
  const res = await server.call<Advertisement>('POST', '/api/v1/advertisements', {
    role: 'operator',
    body: o,
  });
  expectStatus(res, 201, `create advertisement ${o.name}`);
  return res.body;
}

/** Makes an enrollment token; returns the secret (shown once) and its id. */
export async function createEnrollmentToken(
  server: TestServer,
  o: { uses?: number; site?: string } = {},
): Promise<{ token: string; id: string }> {
  const res = await server.call<{ token: string; tokenInfo: { id: string } }>(
    'POST',
    '/api/v1/enrollment-tokens',
    { role: 'operator', body: o },
  );
  expectStatus(res, 201, 'create enrollment token');
  return { token: res.body.token, id: res.body.tokenInfo.id };
}

/** An enrolled machine: its GUID, its credential (`rim_…`) and the machine as the server sees it. */
export interface EnrolledMachine {
  id: string;
  credential: string;
  machine: Machine;
}

/** Enrolls a machine the way an agent does (with a new one-use token unless one is given). */
export async function enrollMachine(
  server: TestServer,
  o: { name: string; token?: string; inventory?: Record<string, unknown> },
): Promise<EnrolledMachine> {
  const token = o.token ?? (await createEnrollmentToken(server, { uses: 1 })).token;
  const res = await server.call<{ machine: Machine; credential: string }>(
    'POST',
    '/api/v1/client/enroll',
    {
      token: null,
      body: {
        token,
        name: o.name,
        inventory: o.inventory ?? {
          hostname: o.name,
          os: 'debian',
          osVersion: '12',
          arch: 'x86_64',
          diskFreeGb: 40,
          ips: ['10.1.2.3'],
        },
        clientVersion: '0.1.0',
      },
    },
  );
  expectStatus(res, 201, `enroll machine ${o.name}`);
  return { id: res.body.machine.id, credential: res.body.credential, machine: res.body.machine };
}

/** Status messages for POST /api/v1/client/status: message 1002 ("policy received") for each seq. */
export function statusMessages(
  seqs: number[],
  properties: (seq: number) => Record<string, unknown> = (seq) => ({ advertisements: seq }),
): { seq: number; id: number; time: string; properties: Record<string, unknown> }[] {
  return seqs.map((seq) => ({
    seq,
    id: 1002,
    time: new Date(Date.UTC(2025, 0, 1, 0, 0, seq)).toISOString(),
    properties: properties(seq),
  }));
}

export const range = (from: number, to: number): number[] =>
  Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** The catalog tables, all of them (the build fails when tables.ts gains one not listed here). */
export const catalogTables = [
  'users',
  'api_tokens',
  'images',
  'packages',
  'distribution_points',
  'machines',
  'enrollment_tokens',
  'collections',
  'advertisements',
  'status_messages',
  'audit_log',
  'distributions',
  'deployment_states',
  'machine_status',
  'status_buckets',
  'rollouts',
] as const satisfies readonly (keyof Tables)[];

// A compile-time check that the list above names every table of `Tables`.
type Missing = Exclude<keyof Tables, (typeof catalogTables)[number]>;
const _everyTable: Missing extends never ? true : Missing = true;

export type CatalogSnapshot = Record<string, Record<string, unknown>[]>;

/**
 * Every row of every catalog table, in a stable order. `api_tokens.last_used_at` is left out:
 * every authenticated request touches it (asynchronously), bad ones included.
 */
export async function snapshotCatalog(server: TestServer): Promise<CatalogSnapshot> {
  const db = server.catalogDb.db;
  const out: CatalogSnapshot = {};
  for (const table of catalogTables) {
    const rows = (await db.selectFrom(table).selectAll().execute()) as Record<string, unknown>[];
    out[table] = rows
      .map((r) => {
        const row: Record<string, unknown> = {};
        for (const k of Object.keys(r).sort())
          if (!(table === 'api_tokens' && k === 'last_used_at')) row[k] = r[k];
        return row;
      })
      .map((r) => [JSON.stringify(r), r] as const)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([, r]) => r);
  }
  return out;
}
