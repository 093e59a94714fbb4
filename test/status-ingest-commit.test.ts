/**
 * Status ingest under concurrency: batches of several machines that arrive together are
 * written together (on SQLite: one group commit, synced before the answers), each stored
 * exactly once, and a batch that fails undoes only itself.
 * Runs against SQLite and PostgreSQL.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, test } from 'node:test';
import Database from 'better-sqlite3';
import { Migrator } from 'kysely';
import { openCatalogDb } from '../src/catalog/db.js';
import { migrateToLatest, migrations } from '../src/catalog/migrations.js';
import { checkStatusBatch } from '../src/server/status-ingest.js';
import { enrollMachine, expectStatus, range, type EnrolledMachine } from './support/fixtures.js';
import { forEachDatabase, type TestServer } from './support/server.js';

const AD = 'ad-group-commit';

/** Phase 1 "prepare" messages (3000) of one deployment, one per seq. */
function prepareMessages(seqs: number[]) {
  return seqs.map((seq) => ({
    seq,
    id: 3000,
    time: new Date(Date.UTC(2026, 0, 1, 0, 0, seq)).toISOString(),
    advertisementId: AD,
    properties: { n: seq },
  }));
}

async function post(server: TestServer, m: EnrolledMachine, messages: unknown[]) {
  return server.call<{ accepted: number; duplicates: number }>('POST', '/api/v1/client/status', {
    token: m.credential,
    body: { machineId: m.id, messages },
  });
}

async function seqsOf(server: TestServer, m: EnrolledMachine): Promise<number[]> {
  const rows = await server.catalogDb.db
    .selectFrom('status_messages')
    .select('seq')
    .where('machine_id', '=', m.id)
    .orderBy('seq')
    .execute();
  return rows.map((r) => Number(r.seq));
}

forEachDatabase('status ingest: concurrent batches', (get) => {
  const machines: EnrolledMachine[] = [];
  before(async () => {
    for (let i = 0; i < 6; i++)
      machines.push(await enrollMachine(get(), { name: `group-commit-${i}` }));
  });

  test('batches of several machines at once are each stored exactly once', async () => {
    const server = get();
    // Per machine: two overlapping batches, the first again (a retry), all in flight together.
    const batches = machines.flatMap((m) => [
      { m, messages: prepareMessages(range(1, 40)) },
      { m, messages: prepareMessages(range(21, 60)) },
      { m, messages: prepareMessages(range(1, 40)) },
    ]);
    const answers = await Promise.all(batches.map((b) => post(server, b.m, b.messages)));
    for (const a of answers) expectStatus(a, 200, 'post');
    for (const m of machines) {
      const mine = answers.filter((_, i) => batches[i]!.m === m).map((a) => a.body);
      assert.equal(
        mine.reduce((n, a) => n + a.accepted, 0),
        60,
        'every message accepted once',
      );
      assert.equal(
        mine.reduce((n, a) => n + a.duplicates, 0),
        120 - 60,
        'the rest counted as duplicates',
      );
      assert.deepEqual(await seqsOf(server, m), range(1, 60));
    }
    // The derived tables count each message once too.
    const status = await server.catalogDb.db
      .selectFrom('machine_status')
      .select(['machine_id', 'messages', 'last_seq'])
      .where(
        'machine_id',
        'in',
        machines.map((m) => m.id),
      )
      .execute();
    assert.equal(status.length, machines.length);
    for (const s of status) {
      assert.equal(Number(s.messages), 60);
      assert.equal(Number(s.last_seq), 60);
    }
    const states = await server.catalogDb.db
      .selectFrom('deployment_states')
      .select(['state', 'state_seq'])
      .where('advertisement_id', '=', AD)
      .execute();
    assert.equal(states.length, machines.length);
    for (const s of states) assert.deepEqual([s.state, Number(s.state_seq)], ['phase1', 60]);
  });

  test('a batch with a seq twice is refused among good ones; the good ones are stored', async () => {
    const server = get();
    const [a, b] = machines;
    const answers = await Promise.all([
      post(server, a!, prepareMessages([61, 62, 61])),
      post(server, b!, prepareMessages([61, 62])),
      post(server, a!, prepareMessages([63])),
    ]);
    assert.equal(answers[0]!.status, 400, answers[0]!.raw);
    assert.deepEqual(answers[1]!.body, { accepted: 2, duplicates: 0 });
    assert.deepEqual(answers[2]!.body, { accepted: 1, duplicates: 0 });
    assert.deepEqual(await seqsOf(server, a!), [...range(1, 60), 63]);
    assert.deepEqual(await seqsOf(server, b!), range(1, 62));
  });

  test('a batch that fails while it is written undoes only itself', async () => {
    const server = get();
    const [, , c, d] = machines;
    const attributes = { site: null, model: null, clientVersion: null, diskBand: null };
    const messages = checkStatusBatch(prepareMessages(range(100, 109)));
    // A machine deleted after it authenticated: its rows would break the foreign key.
    const results = await Promise.allSettled([
      server.catalog.status.ingest(c!.id, messages, attributes),
      server.catalog.status.ingest('00000000-0000-4000-8000-000000000000', messages, attributes),
      server.catalog.status.ingest(d!.id, messages, attributes),
    ]);
    assert.equal(results[0]!.status, 'fulfilled');
    assert.equal(results[1]!.status, 'rejected');
    assert.equal(results[2]!.status, 'fulfilled');
    const orphans = await server.catalogDb.db
      .selectFrom('status_messages')
      .select('seq')
      .where('machine_id', '=', '00000000-0000-4000-8000-000000000000')
      .execute();
    assert.deepEqual(orphans, []);
    assert.deepEqual(await seqsOf(server, c!), [...range(1, 60), ...range(100, 109)]);
    assert.deepEqual(await seqsOf(server, d!), [...range(1, 60), ...range(100, 109)]);
  });

  test('an advertisement’s messages list in the order received', async () => {
    const server = get();
    const [, , , , e] = machines;
    // A late batch (an older message time than every other) received after the others.
    const late = prepareMessages([200]).map((m) => ({ ...m, time: '2025-06-01T00:00:00.000Z' }));
    expectStatus(await post(server, e!, late), 200, 'late batch');
    const items = await server.catalog.listStatus({ advertisementId: AD, limit: 10000 });
    const last = items[items.length - 1]!;
    assert.deepEqual([last.machineId, last.seq], [e!.id, 200]);
    const received = items.map((m) => m.receivedAt);
    assert.deepEqual(received, [...received].sort());
  });

  test('SQLite: acknowledged batches are committed with synchronous FULL; the index serves listing', async (t) => {
    const server = get();
    if (server.kind !== 'sqlite') return t.skip('SQLite only');
    const sqlite = server.catalogDb.sqlite!;
    assert.equal(sqlite.pragma('synchronous', { simple: true }), 2, 'FULL');
    const [, , , , , f] = machines;
    expectStatus(await post(server, f!, prepareMessages(range(300, 349))), 200, 'post');
    assert.equal(sqlite.pragma('synchronous', { simple: true }), 2, 'FULL after a batch');
    // Another connection (another process would see the same) reads what was acknowledged.
    const other = new Database(server.dbUrl, { readonly: true });
    try {
      const n = other
        .prepare('select count(*) as n from status_messages where machine_id = ? and seq >= 300')
        .get(f!.id) as { n: number };
      assert.equal(n.n, 50);
      const plan = other
        .prepare(
          `explain query plan select * from status_messages where advertisement_id = ?
            order by received_at, time, machine_id, seq limit 10`,
        )
        .all(AD) as { detail: string }[];
      assert.ok(
        plan.some((p) => p.detail.includes('status_messages_ad_received')),
        JSON.stringify(plan),
      );
    } finally {
      other.close();
    }
  });
});

test('migration 0007 swaps the advertisement index of a database with status in it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'reimage-0007-'));
  const catalogDb = openCatalogDb(join(dir, 'catalog.sqlite'));
  try {
    const migrator = new Migrator({
      db: catalogDb.db,
      provider: { getMigrations: async () => migrations },
    });
    const to6 = await migrator.migrateTo('0006-status-summary');
    assert.equal(to6.error, undefined);
    const sqlite = catalogDb.sqlite!;
    sqlite
      .prepare(
        `insert into machines (id, name, credential_hash, inventory, tags, enrolled_at)
          values ('m-1', 'pc-1', 'h', '{}', '[]', '2026-01-01T00:00:00.000Z')`,
      )
      .run();
    sqlite
      .prepare(
        `insert into status_messages (machine_id, seq, message_id, component, phase, severity,
          advertisement_id, time, received_at, properties)
          values ('m-1', 1, 3000, 'old-client', 'phase1', 'info', 'ad-1',
            '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:01.000Z', '{}')`,
      )
      .run();
    const indexes = () =>
      (
        sqlite
          .prepare(
            `select name from sqlite_master where type = 'index' and tbl_name = 'status_messages'
              and name not like 'sqlite_autoindex%' order by name`,
          )
          .all() as { name: string }[]
      ).map((r) => r.name);
    assert.deepEqual(indexes(), ['status_messages_ad']);
    assert.deepEqual(await migrateToLatest(catalogDb), ['0007-status-ingest-index']);
    assert.deepEqual(indexes(), ['status_messages_ad_received']);
    const rows = sqlite.prepare('select machine_id, seq from status_messages').all();
    assert.deepEqual(rows, [{ machine_id: 'm-1', seq: 1 }]);
  } finally {
    await catalogDb.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
