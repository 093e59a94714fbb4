import { randomUUID } from 'node:crypto';
import { sql } from 'kysely';
import type { Kysely, Transaction } from 'kysely';
import { ReimageError } from '../errors.js';
import type { CatalogDb, Dialect } from './db.js';
import { fromJson, isoNow, notFound, num, toJson, write } from './rows.js';
import { StatusStore } from './status-store.js';
import type { AdvertisementRow, MachineRow, PackageRow, Tables } from './tables.js';

export type Role = 'admin' | 'operator' | 'read-only';
export const roles: readonly Role[] = ['admin', 'operator', 'read-only'];

export interface User {
  id: string;
  username: string;
  role: Role;
  disabled: boolean;
  createdAt: string;
}

export interface ApiToken {
  id: string;
  userId: string;
  name: string;
  createdAt: string;
  expiresAt: string | null;
  lastUsedAt: string | null;
}

export interface ImageRecord {
  id: string;
  name: string;
  format: string;
  properties: Record<string, string>;
  size: number;
  storedSize: number;
  fileCount: number;
  sourceMachine: string | null;
  /** The source machine's inventory as the capturing client sent it (uploads), else null. */
  inventory: Record<string, unknown> | null;
  registeredAt: string;
  registeredBy: string;
}

/** A package as the catalog keeps it: settings are public (secrets replaced by markers); the secrets are ciphertext. */
export interface PackageRecord {
  id: string;
  name: string;
  version: string;
  description: string;
  imageId: string;
  definition: unknown;
  settings: unknown;
  revision: number;
  createdAt: string;
  updatedAt: string;
}

export interface Bandwidth {
  rateLimitKbps?: number;
  windows?: { days?: string[]; from: string; to: string }[];
}

export interface DistributionPoint {
  id: string;
  name: string;
  address: string;
  site: string;
  boundaries: string[];
  bandwidth: Bandwidth;
  /** Whether credentials for writing to the DP are stored (they are never returned). */
  hasCredentials: boolean;
  createdAt: string;
  updatedAt: string;
}

export type DistributionState = 'pending' | 'copying' | 'waiting' | 'done' | 'failed';

/** A package's content on one distribution point: replication state and progress. */
export interface Distribution {
  packageId: string;
  dpId: string;
  state: DistributionState;
  bytesDone: number;
  bytesTotal: number;
  error: string | null;
  /** The DP the copy reads from (hub and spoke); null for the server's library. */
  sourceDpId: string | null;
  /** What a running copy is waiting for, e.g. "waiting for window until 22:00". */
  note: string | null;
  updatedAt: string;
}

export interface Machine {
  id: string;
  name: string;
  site: string | null;
  inventory: Record<string, unknown>;
  tags: string[];
  appliedImageId: string | null;
  clientVersion: string | null;
  enrolledAt: string;
  lastContactAt: string | null;
}

export interface EnrollmentToken {
  id: string;
  site: string | null;
  usesLeft: number | null;
  expiresAt: string;
  createdBy: string;
  createdAt: string;
  revoked: boolean;
}

export interface Collection {
  id: string;
  name: string;
  description: string;
  rule: string | null;
  include: string[];
  exclude: string[];
  createdAt: string;
  updatedAt: string;
}

export interface Advertisement {
  id: string;
  name: string;
  packageId: string;
  collectionId: string;
  availableFrom: string | null;
  deadline: string | null;
  policy: Record<string, unknown>;
  schedule: Record<string, unknown>;
  enabled: boolean;
  createdAt: string;
  updatedAt: string;
}

export interface StatusMessage {
  seq: number;
  messageId: number;
  component: string;
  phase: string;
  severity: string;
  advertisementId: string | null;
  time: string;
  properties: Record<string, unknown>;
}

export interface StoredStatusMessage extends StatusMessage {
  machineId: string;
  receivedAt: string;
}

export interface AuditEntry {
  id: string;
  at: string;
  actor: string;
  action: string;
  kind: string;
  target: string;
  summary: string;
}

type Db = Kysely<Tables> | Transaction<Tables>;

const machine = (r: MachineRow): Machine => ({
  id: r.id,
  name: r.name,
  site: r.site,
  inventory: fromJson(r.inventory),
  tags: fromJson(r.tags),
  appliedImageId: r.applied_image_id,
  clientVersion: r.client_version,
  enrolledAt: r.enrolled_at,
  lastContactAt: r.last_contact_at,
});

const pkg = (r: PackageRow): PackageRecord => ({
  id: r.id,
  name: r.name,
  version: r.version,
  description: r.description,
  imageId: r.image_id,
  definition: fromJson(r.definition),
  settings: fromJson(r.settings),
  revision: r.revision,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

const advertisement = (r: AdvertisementRow): Advertisement => ({
  id: r.id,
  name: r.name,
  packageId: r.package_id,
  collectionId: r.collection_id,
  availableFrom: r.available_from,
  deadline: r.deadline,
  policy: fromJson(r.policy),
  schedule: fromJson(r.schedule),
  enabled: r.enabled === 1,
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * The catalog: every table behind one object, over SQLite or PostgreSQL alike. It stores and
 * finds; policy (who may, what is valid, what a secret is) lives in the server. Objects are
 * named by id or by name wherever a name is unique.
 */
export class Catalog {
  readonly dialect: Dialect;
  private readonly db: Kysely<Tables>;
  private readonly now: () => string;
  /** Status ingest and the tables derived from it (not part of `transaction`: it has its own). */
  readonly status: StatusStore;

  constructor(catalogDb: CatalogDb, clock: () => number = Date.now) {
    this.db = catalogDb.db;
    this.dialect = catalogDb.dialect;
    this.now = () => isoNow(clock);
    this.status = new StatusStore(catalogDb, clock);
  }

  /** Runs `fn` in one transaction: everything it writes lands, or nothing does. */
  transaction<T>(fn: (tx: Catalog) => Promise<T>): Promise<T> {
    return this.db.transaction().execute((trx) => fn(this.within(trx)));
  }

  private within(trx: Transaction<Tables>): Catalog {
    const tx = Object.create(Catalog.prototype) as Catalog;
    Object.assign(tx, { db: trx, dialect: this.dialect, now: this.now });
    return tx;
  }

  private get q(): Db {
    return this.db;
  }

  // ---- users and tokens ----

  async createUser(u: { username: string; passwordHash: string; role: Role }): Promise<User> {
    const row = {
      id: randomUUID(),
      username: u.username,
      password_hash: u.passwordHash,
      role: u.role,
      disabled: 0,
      created_at: this.now(),
    };
    await write({ kind: 'user', name: u.username }, () =>
      this.q.insertInto('users').values(row).execute(),
    );
    return {
      id: row.id,
      username: row.username,
      role: u.role,
      disabled: false,
      createdAt: row.created_at,
    };
  }

  async userCount(): Promise<number> {
    const r = await this.q
      .selectFrom('users')
      .select((e) => e.fn.countAll().as('n'))
      .executeTakeFirstOrThrow();
    return num(r.n as number | string);
  }

  /** The user and their password hash, for login. */
  async findUserForLogin(username: string): Promise<(User & { passwordHash: string }) | undefined> {
    const r = await this.q
      .selectFrom('users')
      .selectAll()
      .where('username', '=', username)
      .executeTakeFirst();
    return r && { ...this.user(r), passwordHash: r.password_hash };
  }

  private user(r: Tables['users']): User {
    return {
      id: r.id,
      username: r.username,
      role: r.role as Role,
      disabled: r.disabled === 1,
      createdAt: r.created_at,
    };
  }

  async listUsers(): Promise<User[]> {
    const rows = await this.q.selectFrom('users').selectAll().orderBy('username').execute();
    return rows.map((r) => this.user(r));
  }

  async getUser(ref: string): Promise<User> {
    const r = await this.q
      .selectFrom('users')
      .selectAll()
      .where((e) =>
        UUID.test(ref)
          ? e.or([e('id', '=', ref), e('username', '=', ref)])
          : e('username', '=', ref),
      )
      .executeTakeFirst();
    if (!r) throw notFound('user', ref);
    return this.user(r);
  }

  async updateUser(
    id: string,
    change: { role?: Role; disabled?: boolean; passwordHash?: string },
  ): Promise<void> {
    const set: Partial<Tables['users']> = {};
    if (change.role) set.role = change.role;
    if (change.disabled !== undefined) set.disabled = change.disabled ? 1 : 0;
    if (change.passwordHash) set.password_hash = change.passwordHash;
    if (Object.keys(set).length > 0)
      await this.q.updateTable('users').set(set).where('id', '=', id).execute();
  }

  async deleteUser(id: string): Promise<void> {
    await this.q.deleteFrom('users').where('id', '=', id).execute();
  }

  async createToken(t: {
    userId: string;
    name: string;
    tokenHash: string;
    expiresAt: string | null;
  }): Promise<ApiToken> {
    const row = {
      id: randomUUID(),
      user_id: t.userId,
      name: t.name,
      token_hash: t.tokenHash,
      created_at: this.now(),
      expires_at: t.expiresAt,
      last_used_at: null,
    };
    await write({ kind: 'token', name: t.name }, () =>
      this.q.insertInto('api_tokens').values(row).execute(),
    );
    return {
      id: row.id,
      userId: t.userId,
      name: t.name,
      createdAt: row.created_at,
      expiresAt: t.expiresAt,
      lastUsedAt: null,
    };
  }

  /** The enabled user behind an unexpired token, or undefined. */
  async userByTokenHash(
    tokenHash: string,
  ): Promise<{ user: User; tokenId: string; lastUsedAt: string | null } | undefined> {
    const r = await this.q
      .selectFrom('api_tokens as t')
      .innerJoin('users as u', 'u.id', 't.user_id')
      .select([
        't.id as token_id',
        't.expires_at',
        't.last_used_at',
        'u.id',
        'u.username',
        'u.role',
        'u.disabled',
        'u.created_at',
        'u.password_hash',
      ])
      .where('t.token_hash', '=', tokenHash)
      .executeTakeFirst();
    if (!r || r.disabled === 1 || (r.expires_at !== null && r.expires_at <= this.now()))
      return undefined;
    return { user: this.user(r), tokenId: r.token_id, lastUsedAt: r.last_used_at };
  }

  async touchToken(id: string): Promise<void> {
    await this.q
      .updateTable('api_tokens')
      .set({ last_used_at: this.now() })
      .where('id', '=', id)
      .execute();
  }

  async listTokens(userId?: string): Promise<ApiToken[]> {
    let q = this.q.selectFrom('api_tokens').selectAll().orderBy('created_at');
    if (userId) q = q.where('user_id', '=', userId);
    const rows = await q.execute();
    return rows.map((r) => ({
      id: r.id,
      userId: r.user_id,
      name: r.name,
      createdAt: r.created_at,
      expiresAt: r.expires_at,
      lastUsedAt: r.last_used_at,
    }));
  }

  /** Forgets tokens that have expired (login tokens pile up otherwise). */
  async deleteExpiredTokens(): Promise<void> {
    await this.q.deleteFrom('api_tokens').where('expires_at', '<=', this.now()).execute();
  }

  async deleteUserTokens(userId: string): Promise<void> {
    await this.q.deleteFrom('api_tokens').where('user_id', '=', userId).execute();
  }

  async deleteToken(id: string): Promise<boolean> {
    const r = await this.q.deleteFrom('api_tokens').where('id', '=', id).executeTakeFirst();
    return Number(r.numDeletedRows) > 0;
  }

  // ---- images ----

  async registerImage(
    i: Omit<ImageRecord, 'registeredAt'>,
  ): Promise<{ image: ImageRecord; created: boolean }> {
    const existing = await this.q
      .selectFrom('images')
      .select('id')
      .where('id', '=', i.id)
      .executeTakeFirst();
    const row = {
      id: i.id,
      name: i.name,
      format: i.format,
      properties: toJson(i.properties),
      size: i.size,
      stored_size: i.storedSize,
      file_count: i.fileCount,
      source_machine: i.sourceMachine,
      inventory: i.inventory === null ? null : toJson(i.inventory),
      registered_at: this.now(),
      registered_by: i.registeredBy,
    };
    if (existing) {
      const { registered_at: _r, registered_by: _b, ...change } = row;
      await this.q.updateTable('images').set(change).where('id', '=', i.id).execute();
    } else {
      await write({ kind: 'image', name: i.name }, () =>
        this.q.insertInto('images').values(row).execute(),
      );
    }
    return { image: await this.getImage(i.id), created: !existing };
  }

  private image(r: Tables['images']): ImageRecord {
    return {
      id: r.id,
      name: r.name,
      format: r.format,
      properties: fromJson(r.properties),
      size: num(r.size),
      storedSize: num(r.stored_size),
      fileCount: r.file_count,
      sourceMachine: r.source_machine,
      inventory: r.inventory === null ? null : fromJson(r.inventory),
      registeredAt: r.registered_at,
      registeredBy: r.registered_by,
    };
  }

  async listImages(): Promise<ImageRecord[]> {
    const rows = await this.q
      .selectFrom('images')
      .selectAll()
      .orderBy('name')
      .orderBy('registered_at')
      .execute();
    return rows.map((r) => this.image(r));
  }

  /** By id, unambiguous id prefix (8+ hex), or name (the most recently registered image of that name). */
  async getImage(ref: string): Promise<ImageRecord> {
    let q = this.q.selectFrom('images').selectAll();
    if (/^[0-9a-f]{64}$/.test(ref)) q = q.where('id', '=', ref);
    else if (/^[0-9a-f]{8,63}$/.test(ref))
      q = q.where((e) => e.or([e('id', 'like', `${ref}%`), e('name', '=', ref)]));
    else q = q.where('name', '=', ref);
    const rows = await q.orderBy('registered_at', 'desc').limit(2).execute();
    const exact =
      rows.find((r) => r.id === ref || r.name === ref) ?? (rows.length === 1 ? rows[0] : undefined);
    if (!exact) throw notFound('image', ref);
    return this.image(exact);
  }

  async deleteImage(id: string): Promise<void> {
    await write({ kind: 'image', name: id, onForeignKey: 'IN_USE' }, () =>
      this.q.deleteFrom('images').where('id', '=', id).execute(),
    );
  }

  // ---- packages ----

  async createPackage(p: {
    name: string;
    version: string;
    description: string;
    imageId: string;
    definition: unknown;
    settings: unknown;
    secrets: string | null;
  }): Promise<PackageRecord> {
    const at = this.now();
    const row: PackageRow = {
      id: randomUUID(),
      name: p.name,
      version: p.version,
      description: p.description,
      image_id: p.imageId,
      definition: toJson(p.definition),
      settings: toJson(p.settings),
      secrets: p.secrets,
      revision: 1,
      created_at: at,
      updated_at: at,
    };
    await write({ kind: 'package', name: `${p.name}@${p.version}` }, () =>
      this.q.insertInto('packages').values(row).execute(),
    );
    return pkg(row);
  }

  async updatePackage(
    id: string,
    p: {
      description: string;
      imageId: string;
      definition: unknown;
      settings: unknown;
      secrets: string | null;
    },
  ): Promise<PackageRecord> {
    const current = await this.getPackage(id);
    await write({ kind: 'package', name: current.name }, () =>
      this.q
        .updateTable('packages')
        .set({
          description: p.description,
          image_id: p.imageId,
          definition: toJson(p.definition),
          settings: toJson(p.settings),
          secrets: p.secrets,
          revision: sql<number>`revision + 1`,
          updated_at: this.now(),
        })
        .where('id', '=', id)
        .execute(),
    );
    return this.getPackage(id);
  }

  async listPackages(): Promise<PackageRecord[]> {
    const rows = await this.q
      .selectFrom('packages')
      .selectAll()
      .orderBy('name')
      .orderBy('version')
      .execute();
    return rows.map(pkg);
  }

  /** By id, `name@version`, or name alone when only one version exists (else the newest by creation). */
  async getPackage(ref: string): Promise<PackageRecord> {
    return pkg(await this.packageRow(ref));
  }

  /**
   * Holds the package row until the transaction ends, so that checks across rows (an
   * advertisement may only tighten its package; revisions count up) are not raced by another
   * server process. SQLite runs one write transaction at a time already.
   */
  async lockPackage(id: string): Promise<void> {
    if (this.dialect === 'postgres')
      await this.q.selectFrom('packages').select('id').where('id', '=', id).forUpdate().execute();
  }

  /** Like lockPackage, for the set of admins (the last enabled admin cannot be removed). */
  async lockAdmins(): Promise<void> {
    if (this.dialect === 'postgres')
      await this.q
        .selectFrom('users')
        .select('id')
        .where('role', '=', 'admin')
        .forUpdate()
        .execute();
  }

  /** The stored ciphertext of a package's secrets (null when it has none). */
  async packageSecrets(id: string): Promise<string | null> {
    const r = await this.q
      .selectFrom('packages')
      .select('secrets')
      .where('id', '=', id)
      .executeTakeFirst();
    return r?.secrets ?? null;
  }

  private async packageRow(ref: string): Promise<PackageRow> {
    let q = this.q.selectFrom('packages').selectAll();
    const at = ref.lastIndexOf('@');
    if (UUID.test(ref)) q = q.where('id', '=', ref);
    else if (at > 0)
      q = q.where('name', '=', ref.slice(0, at)).where('version', '=', ref.slice(at + 1));
    else q = q.where('name', '=', ref);
    const r = await q.orderBy('created_at', 'desc').executeTakeFirst();
    if (!r) throw notFound('package', ref);
    return r;
  }

  async deletePackage(id: string): Promise<void> {
    await this.refuseIfReferenced('package', id, 'package_id');
    await this.q.deleteFrom('packages').where('id', '=', id).execute();
  }

  private async refuseIfReferenced(
    kind: string,
    id: string,
    column: 'package_id' | 'collection_id',
  ): Promise<void> {
    const refs = await this.q
      .selectFrom('advertisements')
      .select('name')
      .where(column, '=', id)
      .execute();
    if (refs.length > 0)
      throw new ReimageError(
        'IN_USE',
        `The ${kind} is used by advertisement(s) ${refs.map((r) => r.name).join(', ')}.`,
        {
          details: { kind, referrers: refs.map((r) => ({ kind: 'advertisement', name: r.name })) },
        },
      );
  }

  // ---- distribution points ----

  private dp(r: Tables['distribution_points']): DistributionPoint {
    return {
      id: r.id,
      name: r.name,
      address: r.address,
      site: r.site,
      boundaries: fromJson(r.boundaries),
      bandwidth: fromJson(r.bandwidth),
      hasCredentials: r.credentials !== null,
      createdAt: r.created_at,
      updatedAt: r.updated_at,
    };
  }

  async createDp(d: {
    name: string;
    address: string;
    site: string;
    boundaries: string[];
    bandwidth: Bandwidth;
    credentials?: string | null;
  }): Promise<DistributionPoint> {
    const at = this.now();
    const row = {
      id: randomUUID(),
      name: d.name,
      address: d.address,
      site: d.site,
      boundaries: toJson(d.boundaries),
      bandwidth: toJson(d.bandwidth),
      credentials: d.credentials ?? null,
      created_at: at,
      updated_at: at,
    };
    await write({ kind: 'distribution point', name: d.name }, () =>
      this.q.insertInto('distribution_points').values(row).execute(),
    );
    return this.dp(row);
  }

  async updateDp(
    id: string,
    d: {
      address?: string;
      site?: string;
      boundaries?: string[];
      bandwidth?: Bandwidth;
      credentials?: string | null;
    },
  ): Promise<DistributionPoint> {
    const set: Partial<Tables['distribution_points']> = { updated_at: this.now() };
    if (d.address !== undefined) set.address = d.address;
    if (d.site !== undefined) set.site = d.site;
    if (d.boundaries !== undefined) set.boundaries = toJson(d.boundaries);
    if (d.bandwidth !== undefined) set.bandwidth = toJson(d.bandwidth);
    if (d.credentials !== undefined) set.credentials = d.credentials;
    await this.q.updateTable('distribution_points').set(set).where('id', '=', id).execute();
    return this.getDp(id);
  }

  async listDps(): Promise<DistributionPoint[]> {
    const rows = await this.q
      .selectFrom('distribution_points')
      .selectAll()
      .orderBy('name')
      .execute();
    return rows.map((r) => this.dp(r));
  }

  async getDp(ref: string): Promise<DistributionPoint> {
    const r = await this.byIdOrName('distribution_points', ref);
    if (!r) throw notFound('distribution point', ref);
    return this.dp(r);
  }

  /** The sealed credentials of a DP (null when it has none). */
  async dpCredentials(id: string): Promise<string | null> {
    const r = await this.q
      .selectFrom('distribution_points')
      .select('credentials')
      .where('id', '=', id)
      .executeTakeFirst();
    return r?.credentials ?? null;
  }

  async deleteDp(id: string): Promise<void> {
    await this.q.deleteFrom('distribution_points').where('id', '=', id).execute();
  }

  // ---- distribution (replication of packages to DPs) ----

  /** Creates or replaces the state of a package on a DP. */
  async setDistribution(d: {
    packageId: string;
    dpId: string;
    state: DistributionState;
    bytesDone?: number;
    bytesTotal?: number;
    error?: string | null;
    sourceDpId?: string | null;
    note?: string | null;
  }): Promise<Distribution> {
    const row = {
      package_id: d.packageId,
      dp_id: d.dpId,
      state: d.state,
      bytes_done: d.bytesDone ?? 0,
      bytes_total: d.bytesTotal ?? 0,
      error: d.error ?? null,
      source_dp_id: d.sourceDpId ?? null,
      note: d.note ?? null,
      updated_at: this.now(),
    };
    await write({ kind: 'distribution', name: `${d.packageId} on ${d.dpId}` }, () =>
      this.q
        .insertInto('distributions')
        .values(row)
        .onConflict((oc) =>
          oc.columns(['package_id', 'dp_id']).doUpdateSet({
            state: row.state,
            bytes_done: row.bytes_done,
            bytes_total: row.bytes_total,
            error: row.error,
            source_dp_id: row.source_dp_id,
            note: row.note,
            updated_at: row.updated_at,
          }),
        )
        .execute(),
    );
    return this.distribution(row);
  }

  async listDistributions(
    filter: { packageId?: string; dpId?: string; states?: DistributionState[] } = {},
  ): Promise<Distribution[]> {
    let q = this.q.selectFrom('distributions').selectAll();
    if (filter.states) q = q.where('state', 'in', filter.states);
    if (filter.packageId) q = q.where('package_id', '=', filter.packageId);
    if (filter.dpId) q = q.where('dp_id', '=', filter.dpId);
    const rows = await q.orderBy('package_id').orderBy('dp_id').execute();
    return rows.map((r) => this.distribution(r));
  }

  private distribution(r: Tables['distributions']): Distribution {
    return {
      packageId: r.package_id,
      dpId: r.dp_id,
      state: r.state as DistributionState,
      bytesDone: num(r.bytes_done),
      bytesTotal: num(r.bytes_total),
      error: r.error,
      sourceDpId: r.source_dp_id,
      note: r.note,
      updatedAt: r.updated_at,
    };
  }

  private byIdOrName<T extends 'distribution_points' | 'collections' | 'advertisements'>(
    table: T,
    ref: string,
  ) {
    return (this.q as Kysely<Tables>)
      .selectFrom(table as 'collections')
      .selectAll()
      .where(UUID.test(ref) ? 'id' : 'name', '=', ref)
      .executeTakeFirst() as Promise<Tables[T] | undefined>;
  }

  // ---- machines and enrollment ----

  async createEnrollmentToken(t: {
    tokenHash: string;
    site: string | null;
    usesLeft: number | null;
    expiresAt: string;
    createdBy: string;
  }): Promise<EnrollmentToken> {
    const row = {
      id: randomUUID(),
      token_hash: t.tokenHash,
      site: t.site,
      uses_left: t.usesLeft,
      expires_at: t.expiresAt,
      created_by: t.createdBy,
      created_at: this.now(),
      revoked: 0,
    };
    await this.q.insertInto('enrollment_tokens').values(row).execute();
    return this.enrollmentToken(row);
  }

  private enrollmentToken(r: Tables['enrollment_tokens']): EnrollmentToken {
    return {
      id: r.id,
      site: r.site,
      usesLeft: r.uses_left,
      expiresAt: r.expires_at,
      createdBy: r.created_by,
      createdAt: r.created_at,
      revoked: r.revoked === 1,
    };
  }

  async listEnrollmentTokens(): Promise<EnrollmentToken[]> {
    const rows = await this.q
      .selectFrom('enrollment_tokens')
      .selectAll()
      .orderBy('created_at')
      .execute();
    return rows.map((r) => this.enrollmentToken(r));
  }

  async revokeEnrollmentToken(id: string): Promise<boolean> {
    const r = await this.q
      .updateTable('enrollment_tokens')
      .set({ revoked: 1 })
      .where('id', '=', id)
      .executeTakeFirst();
    return Number(r.numUpdatedRows) > 0;
  }

  /**
   * Takes one use of an enrollment token: returns it when valid (not revoked, not expired,
   * uses left), counting the use down; call inside a transaction with the machine's creation.
   */
  async consumeEnrollmentToken(tokenHash: string): Promise<EnrollmentToken | undefined> {
    const r = await this.q
      .selectFrom('enrollment_tokens')
      .selectAll()
      .where('token_hash', '=', tokenHash)
      .executeTakeFirst();
    if (
      !r ||
      r.revoked === 1 ||
      r.expires_at <= this.now() ||
      (r.uses_left !== null && r.uses_left <= 0)
    )
      return undefined;
    if (r.uses_left !== null) {
      // One statement that decrements only while uses are left: concurrent enrollments (even on
      // several server processes) each take one use, and none takes the last use twice.
      const u = await this.q
        .updateTable('enrollment_tokens')
        .set((e) => ({ uses_left: e('uses_left', '-', 1) }))
        .where('id', '=', r.id)
        .where('uses_left', '>', 0)
        .returning('uses_left')
        .executeTakeFirst();
      if (!u) return undefined; // the last use went to a concurrent enrollment
      return this.enrollmentToken({ ...r, uses_left: u.uses_left });
    }
    return this.enrollmentToken(r);
  }

  async createMachine(m: {
    id: string;
    name: string;
    site: string | null;
    credentialHash: string;
    inventory: Record<string, unknown>;
    clientVersion: string | null;
    appliedImageId: string | null;
  }): Promise<Machine> {
    const at = this.now();
    const row: MachineRow = {
      id: m.id,
      name: m.name,
      site: m.site,
      credential_hash: m.credentialHash,
      inventory: toJson(m.inventory),
      tags: '[]',
      applied_image_id: m.appliedImageId,
      client_version: m.clientVersion,
      enrolled_at: at,
      last_contact_at: at,
    };
    await write({ kind: 'machine', name: m.id }, () =>
      this.q.insertInto('machines').values(row).execute(),
    );
    return machine(row);
  }

  async machineByCredentialHash(hash: string): Promise<Machine | undefined> {
    const r = await this.q
      .selectFrom('machines')
      .selectAll()
      .where('credential_hash', '=', hash)
      .executeTakeFirst();
    return r && machine(r);
  }

  async listMachines(): Promise<Machine[]> {
    const rows = await this.q.selectFrom('machines').selectAll().orderBy('name').execute();
    return rows.map(machine);
  }

  /** By GUID or by name (a name shared by several machines is ambiguous: use the GUID). */
  async getMachine(ref: string): Promise<Machine> {
    const rows = await this.q
      .selectFrom('machines')
      .selectAll()
      .where(UUID.test(ref) ? 'id' : 'name', '=', UUID.test(ref) ? ref.toLowerCase() : ref)
      .limit(2)
      .execute();
    if (rows.length === 0) throw notFound('machine', ref);
    if (rows.length > 1)
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `Several machines are named '${ref}'; name one by its GUID.`,
        {
          details: { ids: rows.map((r) => r.id) },
        },
      );
    return machine(rows[0]!);
  }

  async updateMachine(
    id: string,
    m: {
      name?: string;
      site?: string | null;
      tags?: string[];
      inventory?: Record<string, unknown>;
      clientVersion?: string | null;
      appliedImageId?: string | null;
      contact?: boolean;
    },
  ): Promise<Machine> {
    const set: Partial<MachineRow> = {};
    if (m.name !== undefined) set.name = m.name;
    if (m.site !== undefined) set.site = m.site;
    if (m.tags !== undefined) set.tags = toJson(m.tags);
    if (m.inventory !== undefined) set.inventory = toJson(m.inventory);
    if (m.clientVersion !== undefined) set.client_version = m.clientVersion;
    if (m.appliedImageId !== undefined) set.applied_image_id = m.appliedImageId;
    if (m.contact) set.last_contact_at = this.now();
    if (Object.keys(set).length > 0)
      await this.q.updateTable('machines').set(set).where('id', '=', id).execute();
    return this.getMachine(id);
  }

  /** Records that the machine was in contact now (one UPDATE; the policy poll and status ingest call it). */
  async touchMachine(id: string): Promise<void> {
    await this.q
      .updateTable('machines')
      .set({ last_contact_at: this.now() })
      .where('id', '=', id)
      .execute();
  }

  async deleteMachine(id: string): Promise<void> {
    await this.q.deleteFrom('machines').where('id', '=', id).execute();
  }

  // ---- collections ----

  private collection(r: Tables['collections']): Collection {
    return {
      id: r.id,
      name: r.name,
      description: r.description,
      rule: r.rule,
      include: fromJson(r.include_machines),
      exclude: fromJson(r.exclude_machines),
      createdAt: r.created_at,
      updatedAt: r.updated_at,
    };
  }

  async createCollection(c: {
    name: string;
    description: string;
    rule: string | null;
    include: string[];
    exclude: string[];
  }): Promise<Collection> {
    const at = this.now();
    const row = {
      id: randomUUID(),
      name: c.name,
      description: c.description,
      rule: c.rule,
      include_machines: toJson(c.include),
      exclude_machines: toJson(c.exclude),
      created_at: at,
      updated_at: at,
    };
    await write({ kind: 'collection', name: c.name }, () =>
      this.q.insertInto('collections').values(row).execute(),
    );
    return this.collection(row);
  }

  async updateCollection(
    id: string,
    c: { description?: string; rule?: string | null; include?: string[]; exclude?: string[] },
  ): Promise<Collection> {
    const set: Partial<Tables['collections']> = { updated_at: this.now() };
    if (c.description !== undefined) set.description = c.description;
    if (c.rule !== undefined) set.rule = c.rule;
    if (c.include !== undefined) set.include_machines = toJson(c.include);
    if (c.exclude !== undefined) set.exclude_machines = toJson(c.exclude);
    await this.q.updateTable('collections').set(set).where('id', '=', id).execute();
    return this.getCollection(id);
  }

  async listCollections(): Promise<Collection[]> {
    const rows = await this.q.selectFrom('collections').selectAll().orderBy('name').execute();
    return rows.map((r) => this.collection(r));
  }

  async getCollection(ref: string): Promise<Collection> {
    const r = await this.byIdOrName('collections', ref);
    if (!r) throw notFound('collection', ref);
    return this.collection(r);
  }

  async deleteCollection(id: string): Promise<void> {
    await this.refuseIfReferenced('collection', id, 'collection_id');
    await this.q.deleteFrom('collections').where('id', '=', id).execute();
  }

  // ---- advertisements ----

  async createAdvertisement(
    a: Omit<Advertisement, 'id' | 'createdAt' | 'updatedAt'>,
  ): Promise<Advertisement> {
    const at = this.now();
    const row: AdvertisementRow = {
      id: randomUUID(),
      name: a.name,
      package_id: a.packageId,
      collection_id: a.collectionId,
      available_from: a.availableFrom,
      deadline: a.deadline,
      policy: toJson(a.policy),
      schedule: toJson(a.schedule),
      enabled: a.enabled ? 1 : 0,
      created_at: at,
      updated_at: at,
    };
    await write({ kind: 'advertisement', name: a.name }, () =>
      this.q.insertInto('advertisements').values(row).execute(),
    );
    return advertisement(row);
  }

  async updateAdvertisement(
    id: string,
    a: Partial<Omit<Advertisement, 'id' | 'name' | 'createdAt' | 'updatedAt'>>,
  ): Promise<Advertisement> {
    const set: Partial<AdvertisementRow> = { updated_at: this.now() };
    if (a.packageId !== undefined) set.package_id = a.packageId;
    if (a.collectionId !== undefined) set.collection_id = a.collectionId;
    if (a.availableFrom !== undefined) set.available_from = a.availableFrom;
    if (a.deadline !== undefined) set.deadline = a.deadline;
    if (a.policy !== undefined) set.policy = toJson(a.policy);
    if (a.schedule !== undefined) set.schedule = toJson(a.schedule);
    if (a.enabled !== undefined) set.enabled = a.enabled ? 1 : 0;
    await this.q.updateTable('advertisements').set(set).where('id', '=', id).execute();
    return this.getAdvertisement(id);
  }

  async listAdvertisements(): Promise<Advertisement[]> {
    const rows = await this.q.selectFrom('advertisements').selectAll().orderBy('name').execute();
    return rows.map(advertisement);
  }

  async getAdvertisement(ref: string): Promise<Advertisement> {
    const r = await this.byIdOrName('advertisements', ref);
    if (!r) throw notFound('advertisement', ref);
    return advertisement(r);
  }

  async deleteAdvertisement(id: string): Promise<void> {
    await this.q.deleteFrom('advertisements').where('id', '=', id).execute();
  }

  // ---- status messages ----

  async listStatus(filter: {
    machineId?: string;
    advertisementId?: string;
    afterSeq?: number;
    limit?: number;
  }): Promise<StoredStatusMessage[]> {
    let q = this.q.selectFrom('status_messages').selectAll();
    if (filter.machineId) q = q.where('machine_id', '=', filter.machineId);
    if (filter.advertisementId) q = q.where('advertisement_id', '=', filter.advertisementId);
    if (filter.afterSeq !== undefined) q = q.where('seq', '>', filter.afterSeq);
    // By machine: its timeline; by advertisement: as received (the index's order, see
    // migration 0007); otherwise by message time.
    q = filter.machineId
      ? q.orderBy('seq')
      : filter.advertisementId
        ? q.orderBy('received_at').orderBy('time').orderBy('machine_id').orderBy('seq')
        : q.orderBy('time');
    const rows = await q.limit(Math.min(filter.limit ?? 1000, 10000)).execute();
    return rows.map((r) => ({
      machineId: r.machine_id,
      seq: num(r.seq),
      messageId: r.message_id,
      component: r.component,
      phase: r.phase,
      severity: r.severity,
      advertisementId: r.advertisement_id,
      time: r.time,
      receivedAt: r.received_at,
      properties: fromJson(r.properties),
    }));
  }

  // ---- audit log ----

  async audit(e: Omit<AuditEntry, 'id' | 'at'>): Promise<void> {
    await this.q
      .insertInto('audit_log')
      .values({ id: randomUUID(), at: this.now(), ...e })
      .execute();
  }

  async listAudit(limit = 200): Promise<AuditEntry[]> {
    return this.q
      .selectFrom('audit_log')
      .selectAll()
      .orderBy('at', 'desc')
      .orderBy('id')
      .limit(Math.min(limit, 5000))
      .execute();
  }
}
