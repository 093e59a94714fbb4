import { Migrator, sql } from 'kysely';
import type { Kysely, Migration, MigrationProvider } from 'kysely';
import { ReimageError } from '../errors.js';
import type { CatalogDb } from './db.js';

/* eslint-disable @typescript-eslint/no-explicit-any -- migrations run against whatever schema the database has, not the current Tables type. */
type AnyDb = Kysely<any>;

const now = (t: any) => t.notNull();

/**
 * The catalog's migrations, in order. A migration is never edited once released: a change is
 * a new entry. Names sort in order of application.
 */
export const migrations: Record<string, Migration> = {
  '0001-initial': {
    async up(db: AnyDb) {
      await db.schema
        .createTable('users')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('username', 'text', (c) => c.notNull().unique())
        .addColumn('password_hash', 'text', (c) => c.notNull())
        .addColumn('role', 'text', (c) => c.notNull())
        .addColumn('disabled', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('created_at', 'text', now)
        .execute();
      await db.schema
        .createTable('api_tokens')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('user_id', 'text', (c) => c.notNull().references('users.id').onDelete('cascade'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('token_hash', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', 'text', now)
        .addColumn('expires_at', 'text')
        .addColumn('last_used_at', 'text')
        .execute();
      await db.schema
        .createTable('images')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('format', 'text', (c) => c.notNull())
        .addColumn('properties', 'text', (c) => c.notNull())
        .addColumn('size', 'bigint', (c) => c.notNull())
        .addColumn('stored_size', 'bigint', (c) => c.notNull())
        .addColumn('file_count', 'integer', (c) => c.notNull())
        .addColumn('source_machine', 'text')
        .addColumn('registered_at', 'text', now)
        .addColumn('registered_by', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('images_name').on('images').column('name').execute();
      await db.schema
        .createTable('packages')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('version', 'text', (c) => c.notNull())
        .addColumn('description', 'text', (c) => c.notNull())
        .addColumn('image_id', 'text', (c) => c.notNull().references('images.id'))
        .addColumn('definition', 'text', (c) => c.notNull())
        .addColumn('settings', 'text', (c) => c.notNull())
        .addColumn('secrets', 'text')
        .addColumn('revision', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'text', now)
        .addColumn('updated_at', 'text', now)
        .addUniqueConstraint('packages_name_version', ['name', 'version'])
        .execute();
      await db.schema
        .createTable('distribution_points')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('address', 'text', (c) => c.notNull())
        .addColumn('site', 'text', (c) => c.notNull())
        .addColumn('boundaries', 'text', (c) => c.notNull())
        .addColumn('bandwidth', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', now)
        .addColumn('updated_at', 'text', now)
        .execute();
      await db.schema
        .createTable('machines')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('site', 'text')
        .addColumn('credential_hash', 'text', (c) => c.notNull().unique())
        .addColumn('inventory', 'text', (c) => c.notNull())
        .addColumn('tags', 'text', (c) => c.notNull())
        .addColumn('applied_image_id', 'text')
        .addColumn('client_version', 'text')
        .addColumn('enrolled_at', 'text', now)
        .addColumn('last_contact_at', 'text')
        .execute();
      await db.schema.createIndex('machines_name').on('machines').column('name').execute();
      await db.schema
        .createTable('enrollment_tokens')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('token_hash', 'text', (c) => c.notNull().unique())
        .addColumn('site', 'text')
        .addColumn('uses_left', 'integer')
        .addColumn('expires_at', 'text', now)
        .addColumn('created_by', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', now)
        .addColumn('revoked', 'integer', (c) => c.notNull().defaultTo(0))
        .execute();
      await db.schema
        .createTable('collections')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('description', 'text', (c) => c.notNull())
        .addColumn('rule', 'text')
        .addColumn('include_machines', 'text', (c) => c.notNull())
        .addColumn('exclude_machines', 'text', (c) => c.notNull())
        .addColumn('created_at', 'text', now)
        .addColumn('updated_at', 'text', now)
        .execute();
      await db.schema
        .createTable('advertisements')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('package_id', 'text', (c) => c.notNull().references('packages.id'))
        .addColumn('collection_id', 'text', (c) => c.notNull().references('collections.id'))
        .addColumn('available_from', 'text')
        .addColumn('deadline', 'text')
        .addColumn('policy', 'text', (c) => c.notNull())
        .addColumn('schedule', 'text', (c) => c.notNull())
        .addColumn('enabled', 'integer', (c) => c.notNull())
        .addColumn('created_at', 'text', now)
        .addColumn('updated_at', 'text', now)
        .execute();
      await db.schema
        .createTable('status_messages')
        .addColumn('machine_id', 'text', (c) =>
          c.notNull().references('machines.id').onDelete('cascade'),
        )
        .addColumn('seq', 'integer', (c) => c.notNull())
        .addColumn('message_id', 'integer', (c) => c.notNull())
        .addColumn('component', 'text', (c) => c.notNull())
        .addColumn('phase', 'text', (c) => c.notNull())
        .addColumn('severity', 'text', (c) => c.notNull())
        .addColumn('advertisement_id', 'text')
        .addColumn('time', 'text', now)
        .addColumn('received_at', 'text', now)
        .addColumn('properties', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('status_messages_pk', ['machine_id', 'seq'])
        .execute();
      await db.schema
        .createIndex('status_messages_ad')
        .on('status_messages')
        .columns(['advertisement_id', 'time'])
        .execute();
      await db.schema
        .createTable('audit_log')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('at', 'text', now)
        .addColumn('actor', 'text', (c) => c.notNull())
        .addColumn('action', 'text', (c) => c.notNull())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('target', 'text', (c) => c.notNull())
        .addColumn('summary', 'text', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('audit_log_at').on('audit_log').column('at').execute();
    },
  },
  '0002-distribution': {
    async up(db: AnyDb) {
      await db.schema
        .createTable('distributions')
        .addColumn('package_id', 'text', (c) =>
          c.notNull().references('packages.id').onDelete('cascade'),
        )
        .addColumn('dp_id', 'text', (c) =>
          c.notNull().references('distribution_points.id').onDelete('cascade'),
        )
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('bytes_done', 'bigint', (c) => c.notNull().defaultTo(0))
        .addColumn('bytes_total', 'bigint', (c) => c.notNull().defaultTo(0))
        .addColumn('error', 'text')
        .addColumn('updated_at', 'text', now)
        .addPrimaryKeyConstraint('distributions_pk', ['package_id', 'dp_id'])
        .execute();
      await db.schema.createIndex('distributions_dp').on('distributions').column('dp_id').execute();
    },
  },
  '0003-distribution-source': {
    async up(db: AnyDb) {
      // Hub and spoke: the DP a copy reads from (null: the library); what a copy waits for.
      await db.schema.alterTable('distributions').addColumn('source_dp_id', 'text').execute();
      await db.schema.alterTable('distributions').addColumn('note', 'text').execute();
      // Credentials for writing to a DP (WebDAV, SMB), sealed with the server's SecretBox.
      await db.schema.alterTable('distribution_points').addColumn('credentials', 'text').execute();
    },
  },
  '0004-image-inventory': {
    async up(db: AnyDb) {
      // The source machine's inventory as the capturing client reported it (JSON), for
      // images uploaded from a model computer; null for images registered from the library.
      await db.schema.alterTable('images').addColumn('inventory', 'text').execute();
    },
  },
  '0006-status-summary': {
    async up(db: AnyDb) {
      // Derived from status messages at ingest, so that summaries and trends never scan the
      // messages: where each machine stands in each advertisement (with the attributes trends
      // group by, taken when the deployment was first seen), each machine's latest message,
      // state changes per advertisement in 5-minute buckets, and each rollout's halt.
      await db.schema
        .createTable('deployment_states')
        .addColumn('advertisement_id', 'text', (c) => c.notNull())
        .addColumn('machine_id', 'text', (c) =>
          c.notNull().references('machines.id').onDelete('cascade'),
        )
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('state_seq', 'integer', (c) => c.notNull())
        .addColumn('state_time', 'text', now)
        .addColumn('first_time', 'text', now)
        .addColumn('last_seq', 'integer', (c) => c.notNull())
        .addColumn('postponed_until', 'text')
        .addColumn('failure_message_id', 'integer')
        .addColumn('failure_code', 'text')
        .addColumn('failure_step', 'text')
        .addColumn('failure_seq', 'integer')
        .addColumn('dp', 'text')
        .addColumn('dp_seq', 'integer')
        .addColumn('site', 'text')
        .addColumn('model', 'text')
        .addColumn('client_version', 'text')
        .addColumn('disk_band', 'text')
        .addColumn('image', 'text')
        .addPrimaryKeyConstraint('deployment_states_pk', ['advertisement_id', 'machine_id'])
        .execute();
      await db.schema
        .createIndex('deployment_states_state')
        .on('deployment_states')
        .columns(['state', 'advertisement_id'])
        .execute();
      await db.schema
        .createIndex('deployment_states_machine')
        .on('deployment_states')
        .column('machine_id')
        .execute();
      await db.schema
        .createTable('machine_status')
        .addColumn('machine_id', 'text', (c) =>
          c.primaryKey().references('machines.id').onDelete('cascade'),
        )
        .addColumn('last_seq', 'integer', (c) => c.notNull())
        .addColumn('last_message_id', 'integer', (c) => c.notNull())
        .addColumn('last_time', 'text', now)
        .addColumn('last_severity', 'text', (c) => c.notNull())
        .addColumn('advertisement_id', 'text')
        .addColumn('messages', 'integer', (c) => c.notNull())
        .addColumn('updated_at', 'text', now)
        .execute();
      await db.schema
        .createTable('status_buckets')
        .addColumn('advertisement_id', 'text', (c) => c.notNull())
        .addColumn('bucket', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('entered', 'integer', (c) => c.notNull())
        .addColumn('exited', 'integer', (c) => c.notNull())
        .addPrimaryKeyConstraint('status_buckets_pk', ['advertisement_id', 'bucket', 'state'])
        .execute();
      await db.schema
        .createTable('rollouts')
        .addColumn('advertisement_id', 'text', (c) =>
          c.primaryKey().references('advertisements.id').onDelete('cascade'),
        )
        .addColumn('halted', 'integer', (c) => c.notNull())
        .addColumn('halted_wave', 'integer')
        .addColumn('reason', 'text')
        .addColumn('halted_at', 'text')
        .addColumn('acknowledged', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'text', now)
        .execute();
    },
  },
  '0007-status-ingest-index': {
    async up(db: AnyDb) {
      // The index by (advertisement, message time) took each batch's messages all over its
      // tree (a machine's batch spans minutes of time that every other machine's batches
      // span too): one dirty page per message, 15× the commit's writes (docs/status.md,
      // "Ingest performance"). By (advertisement, time received) a batch's entries go
      // together at the end; listing an advertisement's messages pages in that order.
      await db.schema.dropIndex('status_messages_ad').execute();
      await db.schema
        .createIndex('status_messages_ad_received')
        .on('status_messages')
        .columns(['advertisement_id', 'received_at'])
        .execute();
    },
  },
};

const provider: MigrationProvider = { getMigrations: async () => migrations };

/**
 * Brings the database to the latest schema. Refuses a database that a newer reimage migrated
 * (it has migrations this one does not know), rather than running against a schema it
 * does not understand.
 */
export async function migrateToLatest(catalog: CatalogDb): Promise<string[]> {
  const db = catalog.db as unknown as AnyDb;
  const applied = await appliedMigrations(db);
  const unknown = applied.filter((name) => !(name in migrations));
  if (unknown.length > 0)
    throw new ReimageError(
      'DATABASE_TOO_NEW',
      `The catalog database has migrations this reimage does not know (${unknown.join(', ')}).`,
      { details: { unknown } },
    );
  const migrator = new Migrator({ db, provider });
  const { error, results } = await migrator.migrateToLatest();
  if (error)
    throw new ReimageError(
      'DATABASE_ERROR',
      `Migrating the catalog database failed: ${String(error)}`,
      {
        cause: error,
      },
    );
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}

async function appliedMigrations(db: AnyDb): Promise<string[]> {
  try {
    const rows = await sql<{ name: string }>`select name from kysely_migration`.execute(db);
    return rows.rows.map((r) => r.name);
  } catch {
    return []; // a new database: the table does not exist yet
  }
}
