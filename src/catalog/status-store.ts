import type Database from 'better-sqlite3';
import { sql } from 'kysely';
import type { Kysely } from 'kysely';
import type { CatalogDb } from './db.js';
import { fromJson, isoNow, num, toJson } from './rows.js';
import type { DeploymentStateRow, Tables } from './tables.js';

/** A status message ready to store: validated, its catalog fields filled, properties redacted. */
export interface IngestMessage {
  seq: number;
  messageId: number;
  component: string;
  phase: string;
  severity: string;
  advertisementId: string | null;
  time: string;
  properties: Record<string, unknown>;
  /** `properties` as JSON, when the caller has it already. */
  propertiesJson?: string;
  /** The deployment state this message moves to (from the catalog), if any. */
  state?: string;
}

/** The machine's attributes that trends group by, taken when a deployment is first seen. */
export interface MachineAttributes {
  site: string | null;
  model: string | null;
  clientVersion: string | null;
  diskBand: string | null;
}

/** One deployment whose state a batch changed. */
export interface StateChange {
  advertisementId: string;
  machineId: string;
  from: string | null;
  to: string;
  seq: number;
}

export interface IngestResult {
  accepted: number;
  duplicates: number;
  /** The newly stored messages (duplicates left out), for live events. */
  stored: { seq: number; messageId: number; advertisementId: string | null }[];
  changes: StateChange[];
}

/** Bucket width of `status_buckets`: summaries aggregate these into wider ones. */
export const BUCKET_MS = 5 * 60 * 1000;

export const bucketOf = (iso: string): string =>
  new Date(Math.floor(Date.parse(iso) / BUCKET_MS) * BUCKET_MS).toISOString();

/** States of a deployment that was attempted (the population of the trends). */
export const ATTEMPTED = ['phase1', 'phase2', 'phase3', 'succeeded', 'failed', 'rolledBack'];
export const FAILED = ['failed', 'rolledBack'];

/** Columns of deployment_states that trends group by, by attribute name. */
export const TREND_ATTRIBUTES = {
  site: 'site',
  dp: 'dp',
  model: 'model',
  image: 'image',
  clientVersion: 'client_version',
  diskBand: 'disk_band',
} as const;
export type TrendAttribute = keyof typeof TREND_ATTRIBUTES;

const DS_COLUMNS = [
  'advertisement_id',
  'machine_id',
  'state',
  'state_seq',
  'state_time',
  'first_time',
  'last_seq',
  'postponed_until',
  'failure_message_id',
  'failure_code',
  'failure_step',
  'failure_seq',
  'dp',
  'dp_seq',
  'site',
  'model',
  'client_version',
  'disk_band',
  'image',
] as const;

interface Pending {
  machineId: string;
  messages: IngestMessage[];
  attributes: MachineAttributes;
  receivedAt: string;
  resolve: (r: IngestResult) => void;
  reject: (e: unknown) => void;
}

interface Bucket {
  advertisementId: string;
  bucket: string;
  state: string;
  entered: number;
  exited: number;
}

const str = (v: unknown): string | null =>
  v === undefined || v === null
    ? null
    : typeof v === 'string'
      ? v.slice(0, 200)
      : JSON.stringify(v).slice(0, 200);

/**
 * Status storage made for speed: one transaction per batch, every table written with one
 * statement per batch (PostgreSQL: arrays unnested server-side; SQLite: prepared statements
 * run in a loop, which is what is fast there), and the derived tables updated from the new
 * messages only, so a batch posted twice changes nothing.
 */
export class StatusStore {
  private readonly db: Kysely<Tables>;
  private readonly sqlite?: Database.Database;
  private prepared?: ReturnType<StatusStore['prepare']>;
  /** SQLite: batches waiting for the next group commit. */
  private queue: Pending[] = [];

  constructor(
    catalogDb: CatalogDb,
    private readonly clock: () => number = Date.now,
  ) {
    this.db = catalogDb.db;
    this.sqlite = catalogDb.sqlite;
  }

  /**
   * Stores one machine's batch and updates the derived tables, all in one transaction.
   * A message already stored (same machine and sequence number) is left as it was.
   */
  async ingest(
    machineId: string,
    messages: IngestMessage[],
    attributes: MachineAttributes,
  ): Promise<IngestResult> {
    if (messages.length === 0) return { accepted: 0, duplicates: 0, stored: [], changes: [] };
    const receivedAt = isoNow(this.clock);
    if (this.sqlite)
      return new Promise((resolve, reject) => {
        this.queue.push({ machineId, messages, attributes, receivedAt, resolve, reject });
        if (this.queue.length === 1) setImmediate(() => void this.flush());
      });
    return this.db.transaction().execute(async (trx) => {
      // One batch of a machine at a time: the derived rows are read, then written.
      await trx
        .selectFrom('machines')
        .select('id')
        .where('id', '=', machineId)
        .forUpdate()
        .execute();
      const seqs = messages.map((m) => m.seq);
      const inserted = await sql<{ seq: number }>`
        insert into status_messages (machine_id, seq, message_id, component, phase, severity,
          advertisement_id, time, received_at, properties)
        select ${machineId}, u.s, u.i, u.c, u.p, u.v, u.a, u.t, ${receivedAt}, u.j
        from unnest(${seqs}::int[], ${messages.map((m) => m.messageId)}::int[],
          ${messages.map((m) => m.component)}::text[], ${messages.map((m) => m.phase)}::text[],
          ${messages.map((m) => m.severity)}::text[],
          ${messages.map((m) => m.advertisementId)}::text[], ${messages.map((m) => m.time)}::text[],
          ${messages.map((m) => m.propertiesJson ?? toJson(m.properties))}::text[]) as u(s, i, c, p, v, a, t, j)
        on conflict (machine_id, seq) do nothing
        returning seq`.execute(trx);
      const fresh = new Set(inserted.rows.map((r) => num(r.seq)));
      const stored = messages.filter((m) => fresh.has(m.seq));
      const ads = [
        ...new Set(stored.flatMap((m) => (m.advertisementId ? [m.advertisementId] : []))),
      ];
      const existing =
        ads.length === 0
          ? []
          : await trx
              .selectFrom('deployment_states')
              .selectAll()
              .where('machine_id', '=', machineId)
              .where('advertisement_id', 'in', ads)
              .execute();
      const missing = ads.filter((a) => !existing.some((e) => e.advertisement_id === a));
      const images = missing.length === 0 ? new Map() : await this.imagesOf(trx, missing);
      const plan = derive(machineId, stored, existing, attributes, images);
      if (plan.rows.length > 0) {
        const cols = DS_COLUMNS;
        const arrays = cols.map((c) => plan.rows.map((r) => r[c]));
        const types = cols.map((c) => (/seq$|message_id$/.test(c) ? 'int[]' : 'text[]'));
        await sql`
          insert into deployment_states (${sql.raw(cols.join(', '))})
          select * from unnest(${sql.join(arrays.map((a, i) => sql`${a}::${sql.raw(types[i]!)}`))})
          on conflict (advertisement_id, machine_id) do update set
          ${sql.raw(
            cols
              .slice(2, 14)
              .map((c) => `${c} = excluded.${c}`)
              .join(', '),
          )}`.execute(trx);
      }
      if (plan.buckets.length > 0) {
        const b = plan.buckets;
        await sql`
          insert into status_buckets (advertisement_id, bucket, state, entered, exited)
          select * from unnest(${b.map((x) => x.advertisementId)}::text[], ${b.map((x) => x.bucket)}::text[],
            ${b.map((x) => x.state)}::text[], ${b.map((x) => x.entered)}::int[], ${b.map((x) => x.exited)}::int[])
          on conflict (advertisement_id, bucket, state) do update set
            entered = status_buckets.entered + excluded.entered,
            exited = status_buckets.exited + excluded.exited`.execute(trx);
      }
      if (stored.length > 0) {
        const last = stored.reduce((a, m) => (m.seq > a.seq ? m : a));
        await sql`
          insert into machine_status (machine_id, last_seq, last_message_id, last_time,
            last_severity, advertisement_id, messages, updated_at)
          values (${machineId}, ${last.seq}, ${last.messageId}, ${last.time}, ${last.severity},
            ${last.advertisementId}, ${stored.length}, ${receivedAt})
          on conflict (machine_id) do update set
            messages = machine_status.messages + excluded.messages,
            updated_at = excluded.updated_at,
            last_message_id = case when excluded.last_seq > machine_status.last_seq then excluded.last_message_id else machine_status.last_message_id end,
            last_time = case when excluded.last_seq > machine_status.last_seq then excluded.last_time else machine_status.last_time end,
            last_severity = case when excluded.last_seq > machine_status.last_seq then excluded.last_severity else machine_status.last_severity end,
            advertisement_id = case when excluded.last_seq > machine_status.last_seq then excluded.advertisement_id else machine_status.advertisement_id end,
            last_seq = case when excluded.last_seq > machine_status.last_seq then excluded.last_seq else machine_status.last_seq end`.execute(
          trx,
        );
      }
      await trx
        .updateTable('machines')
        .set({ last_contact_at: receivedAt })
        .where('id', '=', machineId)
        .execute();
      return result(messages.length, stored, plan.changes);
    });
  }

  /**
   * SQLite group commit: the batches that arrived since the last commit are written in one
   * transaction (one fsync), each in its own savepoint, so one batch's failure undoes only
   * that batch. Every batch is acknowledged only after the commit that holds it.
   */
  private async flush(): Promise<void> {
    const pending = this.queue;
    this.queue = [];
    const sqlite = this.sqlite!;
    try {
      // Kysely's SQLite driver has one connection behind a mutex: holding it keeps every
      // other query (and transaction) out while the synchronous transaction below runs.
      const outcomes = await this.db.connection().execute(async () => {
        const one = sqlite.transaction((p: Pending) =>
          this.ingestSqlite(p.machineId, p.messages, p.attributes, p.receivedAt),
        );
        return sqlite.transaction(() =>
          pending.map((p) => {
            try {
              return { ok: one(p) as IngestResult, error: undefined };
            } catch (error) {
              return { ok: undefined, error };
            }
          }),
        )();
      });
      outcomes.forEach((o, i) => (o.ok ? pending[i]!.resolve(o.ok) : pending[i]!.reject(o.error)));
    } catch (e) {
      for (const p of pending) p.reject(e);
    }
  }

  private async imagesOf(db: Kysely<Tables>, ads: string[]): Promise<Map<string, string>> {
    const rows = await db
      .selectFrom('advertisements as a')
      .innerJoin('packages as p', 'p.id', 'a.package_id')
      .innerJoin('images as i', 'i.id', 'p.image_id')
      .select(['a.id', 'i.name'])
      .where('a.id', 'in', ads)
      .execute();
    return new Map(rows.map((r) => [r.id, r.name]));
  }

  private prepare(sqlite: Database.Database) {
    const dsCols = DS_COLUMNS.join(', ');
    return {
      insertMessage: sqlite.prepare(
        `insert into status_messages (machine_id, seq, message_id, component, phase, severity,
          advertisement_id, time, received_at, properties) values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
          on conflict (machine_id, seq) do nothing`,
      ),
      states: sqlite.prepare(
        'select * from deployment_states where machine_id = ? and advertisement_id = ?',
      ),
      image: sqlite.prepare(
        `select i.name from advertisements a join packages p on p.id = a.package_id
          join images i on i.id = p.image_id where a.id = ?`,
      ),
      upsertState: sqlite.prepare(
        `insert into deployment_states (${dsCols}) values (${DS_COLUMNS.map(() => '?').join(', ')})
          on conflict (advertisement_id, machine_id) do update set ${DS_COLUMNS.slice(2, 14)
            .map((c) => `${c} = excluded.${c}`)
            .join(', ')}`,
      ),
      bucket: sqlite.prepare(
        `insert into status_buckets (advertisement_id, bucket, state, entered, exited)
          values (?, ?, ?, ?, ?) on conflict (advertisement_id, bucket, state) do update set
          entered = entered + excluded.entered, exited = exited + excluded.exited`,
      ),
      machineStatus: sqlite.prepare(
        `insert into machine_status (machine_id, last_seq, last_message_id, last_time,
          last_severity, advertisement_id, messages, updated_at) values (?, ?, ?, ?, ?, ?, ?, ?)
          on conflict (machine_id) do update set
          messages = messages + excluded.messages, updated_at = excluded.updated_at,
          last_message_id = iif(excluded.last_seq > last_seq, excluded.last_message_id, last_message_id),
          last_time = iif(excluded.last_seq > last_seq, excluded.last_time, last_time),
          last_severity = iif(excluded.last_seq > last_seq, excluded.last_severity, last_severity),
          advertisement_id = iif(excluded.last_seq > last_seq, excluded.advertisement_id, advertisement_id),
          last_seq = max(excluded.last_seq, last_seq)`,
      ),
      touch: sqlite.prepare('update machines set last_contact_at = ? where id = ?'),
    };
  }

  private ingestSqlite(
    machineId: string,
    messages: IngestMessage[],
    attributes: MachineAttributes,
    receivedAt: string,
  ): IngestResult {
    const p = (this.prepared ??= this.prepare(this.sqlite!));
    const stored: IngestMessage[] = [];
    for (const m of messages) {
      const r = p.insertMessage.run(
        machineId,
        m.seq,
        m.messageId,
        m.component,
        m.phase,
        m.severity,
        m.advertisementId,
        m.time,
        receivedAt,
        m.propertiesJson ?? toJson(m.properties),
      );
      if (r.changes > 0) stored.push(m);
    }
    const ads = [...new Set(stored.flatMap((m) => (m.advertisementId ? [m.advertisementId] : [])))];
    const existing: DeploymentStateRow[] = [];
    const images = new Map<string, string>();
    for (const a of ads) {
      const row = p.states.get(machineId, a) as DeploymentStateRow | undefined;
      if (row) existing.push(row);
      else {
        const img = p.image.get(a) as { name: string } | undefined;
        if (img) images.set(a, img.name);
      }
    }
    const plan = derive(machineId, stored, existing, attributes, images);
    for (const r of plan.rows) p.upsertState.run(...DS_COLUMNS.map((c) => r[c]));
    for (const b of plan.buckets)
      p.bucket.run(b.advertisementId, b.bucket, b.state, b.entered, b.exited);
    if (stored.length > 0) {
      const last = stored.reduce((a, m) => (m.seq > a.seq ? m : a));
      p.machineStatus.run(
        machineId,
        last.seq,
        last.messageId,
        last.time,
        last.severity,
        last.advertisementId,
        stored.length,
        receivedAt,
      );
    }
    p.touch.run(receivedAt, machineId);
    return result(messages.length, stored, plan.changes);
  }

  // ---- reads for the summaries ----

  /** Deployments of an advertisement by state (only those some message set). */
  async stateCounts(advertisementId?: string): Promise<Record<string, number>> {
    let q = this.db
      .selectFrom('deployment_states')
      .select(['state', (e) => e.fn.countAll().as('n')])
      .groupBy('state');
    if (advertisementId) q = q.where('advertisement_id', '=', advertisementId);
    const rows = await q.execute();
    return Object.fromEntries(rows.map((r) => [r.state, num(r.n as number | string)]));
  }

  /** Every machine's last contact (machine id → ISO time or null). */
  async lastContacts(): Promise<Map<string, string | null>> {
    const rows = await this.db.selectFrom('machines').select(['id', 'last_contact_at']).execute();
    return new Map(rows.map((r) => [r.id, r.last_contact_at]));
  }

  /** Each machine's state in an advertisement (machine id → state). */
  async statesOf(advertisementId: string): Promise<Map<string, string>> {
    const rows = await this.db
      .selectFrom('deployment_states')
      .select(['machine_id', 'state'])
      .where('advertisement_id', '=', advertisementId)
      .execute();
    return new Map(rows.map((r) => [r.machine_id, r.state]));
  }

  async postponed(
    advertisementId: string,
    limit = 50,
  ): Promise<{ machine: string; machineId: string; until: string | null }[]> {
    const rows = await this.db
      .selectFrom('deployment_states as d')
      .innerJoin('machines as m', 'm.id', 'd.machine_id')
      .select(['m.name', 'm.id', 'd.postponed_until'])
      .where('d.advertisement_id', '=', advertisementId)
      .where('d.state', '=', 'postponed')
      .orderBy('d.postponed_until')
      .orderBy('m.name')
      .limit(limit)
      .execute();
    return rows.map((r) => ({ machine: r.name, machineId: r.id, until: r.postponed_until }));
  }

  /**
   * Deployments in each state at the end of each bucket of `bucketMs` (a multiple of 5 min),
   * over the last `maxBuckets` buckets that saw a change; one advertisement or all.
   */
  async overTime(
    advertisementId: string | undefined,
    bucketMs: number,
    maxBuckets = 500,
  ): Promise<{ time: string; counts: Record<string, number> }[]> {
    let q = this.db
      .selectFrom('status_buckets')
      .select([
        'bucket',
        'state',
        (e) => e.fn.sum<number | string>('entered').as('entered'),
        (e) => e.fn.sum<number | string>('exited').as('exited'),
      ])
      .groupBy(['bucket', 'state'])
      .orderBy('bucket');
    if (advertisementId) q = q.where('advertisement_id', '=', advertisementId);
    const rows = await q.execute();
    const running: Record<string, number> = {};
    const out: { time: string; counts: Record<string, number> }[] = [];
    for (const r of rows) {
      const t = new Date(Math.floor(Date.parse(r.bucket) / bucketMs) * bucketMs).toISOString();
      running[r.state] = (running[r.state] ?? 0) + num(r.entered) - num(r.exited);
      const lastOut = out[out.length - 1];
      if (lastOut && lastOut.time === t) lastOut.counts = { ...running };
      else out.push({ time: t, counts: { ...running } });
    }
    return out.slice(-maxBuckets);
  }

  /**
   * What the trends rank: for one attribute, attempted deployments per value (the
   * population) and failures per (message, code, value). One advertisement or all; since a
   * time (first message of the deployment).
   */
  async trendCounts(
    attribute: TrendAttribute,
    filter: { advertisementId?: string; since?: string },
  ): Promise<{
    population: { value: string; n: number }[];
    failures: {
      messageId: number;
      code: string | null;
      value: string;
      k: number;
      machines: number;
    }[];
  }> {
    const col = TREND_ATTRIBUTES[attribute];
    let pop = this.db
      .selectFrom('deployment_states')
      .select([sql<string>`${sql.ref(col)}`.as('value'), (e) => e.fn.countAll().as('n')])
      .where('state', 'in', ATTEMPTED)
      .where(sql.ref(col), 'is not', null)
      .groupBy(sql.ref(col));
    let fail = this.db
      .selectFrom('deployment_states')
      .select([
        'failure_message_id',
        'failure_code',
        sql<string>`${sql.ref(col)}`.as('value'),
        (e) => e.fn.countAll().as('k'),
        sql<number | string>`count(distinct machine_id)`.as('machines'),
      ])
      .where('state', 'in', FAILED)
      .where('failure_message_id', 'is not', null)
      .where(sql.ref(col), 'is not', null)
      .groupBy(['failure_message_id', 'failure_code', sql.ref(col)]);
    if (filter.advertisementId) {
      pop = pop.where('advertisement_id', '=', filter.advertisementId);
      fail = fail.where('advertisement_id', '=', filter.advertisementId);
    }
    if (filter.since) {
      pop = pop.where('first_time', '>=', filter.since);
      fail = fail.where('first_time', '>=', filter.since);
    }
    const [p, f] = await Promise.all([pop.execute(), fail.execute()]);
    return {
      population: p.map((r) => ({ value: r.value, n: num(r.n as number | string) })),
      failures: f.map((r) => ({
        messageId: r.failure_message_id!,
        code: r.failure_code,
        value: r.value,
        k: num(r.k as number | string),
        machines: num(r.machines),
      })),
    };
  }

  /** Attempted deployments and failures per (message, code), for the trends' baselines. */
  async trendTotals(filter: { advertisementId?: string; since?: string }): Promise<{
    attempted: number;
    failed: number;
    causes: { messageId: number; code: string | null; k: number }[];
  }> {
    let pop = this.db
      .selectFrom('deployment_states')
      .select([
        (e) => e.fn.countAll().as('n'),
        sql<
          number | string
        >`sum(case when state in ('failed', 'rolledBack') and failure_message_id is not null then 1 else 0 end)`.as(
          'f',
        ),
      ])
      .where('state', 'in', ATTEMPTED);
    let causes = this.db
      .selectFrom('deployment_states')
      .select(['failure_message_id', 'failure_code', (e) => e.fn.countAll().as('k')])
      .where('state', 'in', FAILED)
      .where('failure_message_id', 'is not', null)
      .groupBy(['failure_message_id', 'failure_code']);
    if (filter.advertisementId) {
      pop = pop.where('advertisement_id', '=', filter.advertisementId);
      causes = causes.where('advertisement_id', '=', filter.advertisementId);
    }
    if (filter.since) {
      pop = pop.where('first_time', '>=', filter.since);
      causes = causes.where('first_time', '>=', filter.since);
    }
    const [p, c] = await Promise.all([pop.executeTakeFirstOrThrow(), causes.execute()]);
    return {
      attempted: num(p.n as number | string),
      failed: num(p.f),
      causes: c.map((r) => ({
        messageId: r.failure_message_id!,
        code: r.failure_code,
        k: num(r.k as number | string),
      })),
    };
  }

  /** One failing deployment of a group, to show as an example. */
  async trendExample(
    attribute: TrendAttribute,
    g: { messageId: number; code: string | null; value: string },
    filter: { advertisementId?: string; since?: string },
  ): Promise<{ machine: string; machineId: string; seq: number } | undefined> {
    let q = this.db
      .selectFrom('deployment_states as d')
      .innerJoin('machines as m', 'm.id', 'd.machine_id')
      .select(['m.name', 'm.id', 'd.failure_seq'])
      .where('d.state', 'in', FAILED)
      .where('d.failure_message_id', '=', g.messageId)
      .where(sql.ref(`d.${TREND_ATTRIBUTES[attribute]}`), '=', g.value)
      .orderBy('d.state_time', 'desc')
      .limit(1);
    q =
      g.code === null
        ? q.where('d.failure_code', 'is', null)
        : q.where('d.failure_code', '=', g.code);
    if (filter.advertisementId) q = q.where('d.advertisement_id', '=', filter.advertisementId);
    if (filter.since) q = q.where('d.first_time', '>=', filter.since);
    const r = await q.executeTakeFirst();
    return r && { machine: r.name, machineId: r.id, seq: num(r.failure_seq) };
  }

  /** Counts of deployments per wave for the rollout checks: machine id → state. */
  async machineStatus(machineId: string) {
    const r = await this.db
      .selectFrom('machine_status')
      .selectAll()
      .where('machine_id', '=', machineId)
      .executeTakeFirst();
    const states = await this.db
      .selectFrom('deployment_states')
      .selectAll()
      .where('machine_id', '=', machineId)
      .orderBy('state_time', 'desc')
      .execute();
    return { latest: r, deployments: states };
  }

  /** The failure causes of one advertisement's failed deployments, most frequent first. */
  async failureCauses(
    advertisementId: string,
    machineIds?: string[],
  ): Promise<{ messageId: number; code: string | null; k: number }[]> {
    let q = this.db
      .selectFrom('deployment_states')
      .select(['failure_message_id', 'failure_code', (e) => e.fn.countAll().as('k')])
      .where('advertisement_id', '=', advertisementId)
      .where('state', 'in', FAILED)
      .groupBy(['failure_message_id', 'failure_code'])
      .orderBy('k', 'desc');
    if (machineIds) {
      if (machineIds.length === 0) return [];
      q = q.where('machine_id', 'in', machineIds);
    }
    const rows = await q.execute();
    return rows.map((r) => ({
      messageId: r.failure_message_id ?? 0,
      code: r.failure_code,
      k: num(r.k as number | string),
    }));
  }

  // ---- rollouts ----

  async rollout(advertisementId: string): Promise<
    | {
        halted: boolean;
        haltedWave: number | null;
        reason: string | null;
        haltedAt: string | null;
        acknowledged: Record<string, number>;
      }
    | undefined
  > {
    const r = await this.db
      .selectFrom('rollouts')
      .selectAll()
      .where('advertisement_id', '=', advertisementId)
      .executeTakeFirst();
    return (
      r && {
        halted: r.halted === 1,
        haltedWave: r.halted_wave,
        reason: r.reason,
        haltedAt: r.halted_at,
        acknowledged: fromJson(r.acknowledged),
      }
    );
  }

  async setRollout(
    advertisementId: string,
    r: {
      halted: boolean;
      haltedWave: number | null;
      reason: string | null;
      acknowledged: Record<string, number>;
    },
  ): Promise<void> {
    const at = isoNow(this.clock);
    const row = {
      advertisement_id: advertisementId,
      halted: r.halted ? 1 : 0,
      halted_wave: r.haltedWave,
      reason: r.reason,
      halted_at: r.halted ? at : null,
      acknowledged: toJson(r.acknowledged),
      updated_at: at,
    };
    await this.db
      .insertInto('rollouts')
      .values(row)
      .onConflict((oc) =>
        oc.column('advertisement_id').doUpdateSet({
          halted: row.halted,
          halted_wave: row.halted_wave,
          reason: row.reason,
          halted_at: row.halted_at,
          acknowledged: row.acknowledged,
          updated_at: row.updated_at,
        }),
      )
      .execute();
  }
}

function result(total: number, stored: IngestMessage[], changes: StateChange[]): IngestResult {
  return {
    accepted: stored.length,
    duplicates: total - stored.length,
    stored: stored.map((m) => ({
      seq: m.seq,
      messageId: m.messageId,
      advertisementId: m.advertisementId,
    })),
    changes,
  };
}

/**
 * The derived rows a batch's new messages make: per advertisement, the state of the newest
 * state-moving message when it is newer than the stored one (late, older messages are kept
 * but move nothing), the newest failure, DP and postponement; bucket counts for each change.
 */
function derive(
  machineId: string,
  stored: IngestMessage[],
  existing: DeploymentStateRow[],
  attributes: MachineAttributes,
  images: Map<string, string>,
): { rows: DeploymentStateRow[]; buckets: Bucket[]; changes: StateChange[] } {
  const byAd = new Map<string, IngestMessage[]>();
  for (const m of stored)
    if (m.advertisementId) {
      const list = byAd.get(m.advertisementId);
      if (list) list.push(m);
      else byAd.set(m.advertisementId, [m]);
    }
  const rows: DeploymentStateRow[] = [];
  const buckets = new Map<string, Bucket>();
  const changes: StateChange[] = [];
  const bump = (ad: string, time: string, state: string, field: 'entered' | 'exited') => {
    const bucket = bucketOf(time);
    const key = `${ad}\u0000${bucket}\u0000${state}`;
    const b = buckets.get(key) ?? { advertisementId: ad, bucket, state, entered: 0, exited: 0 };
    b[field]++;
    buckets.set(key, b);
  };
  for (const [ad, list] of byAd) {
    const old = existing.find((e) => e.advertisement_id === ad);
    const row: DeploymentStateRow = old
      ? { ...old, state_seq: num(old.state_seq), last_seq: num(old.last_seq) }
      : {
          advertisement_id: ad,
          machine_id: machineId,
          state: '',
          state_seq: 0,
          state_time: list[0]!.time,
          first_time: list[0]!.time,
          last_seq: 0,
          postponed_until: null,
          failure_message_id: null,
          failure_code: null,
          failure_step: null,
          failure_seq: null,
          dp: null,
          dp_seq: null,
          site: attributes.site,
          model: attributes.model,
          client_version: attributes.clientVersion,
          disk_band: attributes.diskBand,
          image: images.get(ad) ?? null,
        };
    const before = old ? old.state : null;
    for (const m of list) {
      if (m.time < row.first_time) row.first_time = m.time;
      if (m.seq > row.last_seq) row.last_seq = m.seq;
      if (m.state && m.seq > row.state_seq) {
        row.state = m.state;
        row.state_seq = m.seq;
        row.state_time = m.time;
        if (m.state === 'postponed') row.postponed_until = str(m.properties.until);
        if (m.state === 'failed' && m.seq > num(row.failure_seq)) {
          row.failure_message_id = m.messageId;
          row.failure_code = str(m.properties.code);
          row.failure_step = str(m.properties.step);
          row.failure_seq = m.seq;
        }
      }
      if (typeof m.properties.dp === 'string' && m.seq > num(row.dp_seq)) {
        row.dp = m.properties.dp.slice(0, 200);
        row.dp_seq = m.seq;
      }
    }
    if (row.state === '') continue; // only messages that move no state (yet)
    rows.push(row);
    if (row.state !== before) {
      const at = row.state_time;
      bump(ad, at, row.state, 'entered');
      if (before) bump(ad, at, before, 'exited');
      changes.push({
        advertisementId: ad,
        machineId,
        from: before,
        to: row.state,
        seq: row.state_seq,
      });
    }
  }
  return { rows, buckets: [...buckets.values()], changes };
}
