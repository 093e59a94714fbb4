import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { Advertisement, Machine } from '../catalog/catalog.js';
import type { IngestMessage, TrendAttribute } from '../catalog/status-store.js';
import { TREND_ATTRIBUTES } from '../catalog/status-store.js';
import {
  deploymentStates,
  renderStatusText,
  statusMessage,
  statusMessages,
} from '../status/messages.js';
import type { DeploymentState } from '../status/messages.js';
import type { ServerDeps } from './app.js';
import { Membership } from './membership.js';
import type { Schedule } from './routes/advertisements.js';

/** A member with no status for the advertisement and no contact for this long is "not reachable". */
export const NOT_REACHABLE_MS = 60 * 60 * 1000;
/** How long summaries reuse a membership evaluation (a new member shows up within this). */
export const MEMBERSHIP_TTL_MS = 5_000;
const DEFAULT_SUCCESS_THRESHOLD = 90;
const DEFAULT_FAILURE_THRESHOLD = 10;
/** Trends leave out groups with fewer failures than this (one or two failures prove nothing). */
export const MIN_FAILURES = 3;

export type Counts = Record<DeploymentState, number>;

/** What live listeners get (`GET /api/v1/status/events`). */
export type StatusEvent =
  | {
      type: 'status';
      machine: string;
      machineName: string;
      advertisement: string | null;
      id: number;
      seq: number;
    }
  | { type: 'summary'; advertisement: string }
  | {
      type: 'rollout';
      advertisement: string;
      action: 'released' | 'halted' | 'resumed';
      wave: number;
      reason: string;
    };

export interface WaveSummary {
  wave: number;
  state: 'released' | 'waiting' | 'halted';
  succeeded: number;
  failed: number;
  total: number;
  reason?: string;
}

export interface TrendGroup {
  messageId: number;
  code?: string;
  text: string;
  attribute: TrendAttribute;
  value: string;
  failures: number;
  machines: number;
  population: number;
  share: number;
  rate: number;
  baseline: number;
  lift: number;
  score: number;
  example?: { machine: string; machineId: string; seq: number };
}

const emptyCounts = (): Counts => Object.fromEntries(deploymentStates.map((s) => [s, 0])) as Counts;

const round = (x: number, digits = 4) => Math.round(x * 10 ** digits) / 10 ** digits;

/** Disk size bands for the trends (inventory `diskSizeGb`). */
export function diskBand(gb: unknown): string | null {
  if (typeof gb !== 'number' || !Number.isFinite(gb)) return null;
  if (gb < 128) return '<128 GB';
  if (gb < 256) return '128-255 GB';
  if (gb < 512) return '256-511 GB';
  if (gb < 1024) return '512-1023 GB';
  return '≥1 TB';
}

/**
 * Each member's 1-based wave, as `waveOf` in policy.ts places it (the same stable hash of
 * advertisement and machine), computed for all members at once: `waveOf` sorts the members
 * for every call, which is fine for one machine's policy and too slow for a summary.
 */
export function wavesOf(
  adId: string,
  schedule: Schedule,
  memberIds: string[],
): Map<string, number> {
  const waves = schedule.waves ?? [];
  const key = (id: string) => createHash('sha256').update(`${adId}/${id}`).digest('hex');
  const out = new Map<string, number>();
  if (waves.length === 0) {
    for (const id of memberIds) out.set(id, 1);
    return out;
  }
  if (waves.every((w) => 'percent' in w)) {
    for (const id of memberIds) {
      const position = (parseInt(key(id).slice(0, 12), 16) / 2 ** 48) * 100;
      let end = 0;
      let wave = waves.length;
      for (const [i, w] of waves.entries()) {
        end += 'percent' in w ? w.percent : 0;
        if (position < end) {
          wave = i + 1;
          break;
        }
      }
      out.set(id, wave);
    }
    return out;
  }
  const keyed = memberIds
    .map((id) => [key(id), id] as const)
    .sort((a, b) => (a[0] < b[0] ? -1 : 1));
  const ends: number[] = [];
  let end = 0;
  for (const w of waves) {
    end += 'machines' in w ? w.machines : Math.ceil((w.percent * keyed.length) / 100);
    ends.push(end);
  }
  keyed.forEach(([, id], rank) => {
    const i = ends.findIndex((e) => rank < e);
    out.set(id, i === -1 ? waves.length : i + 1);
  });
  return out;
}

/**
 * Log-likelihood ratio (G statistic, Dunning 1993) of the 2×2 table "in the group or not" ×
 * "failed with this cause or not": how surprising `k` failures among `n` deployments are when
 * the cause fails `K` of all `N`. Chi-square with one degree of freedom under independence.
 */
export function logLikelihoodRatio(k: number, n: number, K: number, N: number): number {
  const cells = [
    [k, n - k],
    [K - k, N - n - (K - k)],
  ];
  const rows = [n, N - n];
  const cols = [K, N - K];
  let g = 0;
  for (let i = 0; i < 2; i++)
    for (let j = 0; j < 2; j++) {
      const o = cells[i]![j]!;
      const e = (rows[i]! * cols[j]!) / N;
      if (o > 0 && e > 0) g += o * Math.log(o / e);
    }
  return 2 * g;
}

const services = new WeakMap<ServerDeps, StatusService>();

/** The status service of a server (one per ServerDeps, made on first use). */
export function statusService(deps: ServerDeps): StatusService {
  let s = services.get(deps);
  if (!s) {
    s = new StatusService(deps);
    services.set(deps, s);
  }
  return s;
}

/**
 * Status beyond storage: ingest with live events and rollout checks, and the summaries
 * (per advertisement, per machine, trends, fleet) read from the tables ingest derives.
 */
export class StatusService {
  /** Live events; listeners are the SSE streams. */
  readonly events = new EventEmitter();
  private evaluating = Promise.resolve();
  private membershipCache?: { at: number; value: Promise<Membership> };

  constructor(private readonly deps: ServerDeps) {
    this.events.setMaxListeners(0);
  }

  /**
   * Collection membership for the summaries, reused for MEMBERSHIP_TTL_MS: evaluating every
   * rule over every machine is most of a summary's cost with thousands of machines, and a
   * console polls. Rollout checks and resume always evaluate it afresh.
   */
  private membership(): Promise<Membership> {
    const now = this.now();
    if (!this.membershipCache || now - this.membershipCache.at > MEMBERSHIP_TTL_MS) {
      const value = Membership.load(this.catalog, now);
      this.membershipCache = { at: now, value };
      value.catch(() => (this.membershipCache = undefined));
    }
    return this.membershipCache.value;
  }

  private get catalog() {
    return this.deps.catalog;
  }

  private now(): number {
    return (this.deps.clock ?? Date.now)();
  }

  /** Stores a machine's batch; emits live events; checks the rollouts whose counts changed. */
  async ingest(machine: Machine, messages: IngestMessage[]) {
    const inv = machine.inventory as { model?: unknown; diskSizeGb?: unknown };
    const r = await this.catalog.status.ingest(machine.id, messages, {
      site: machine.site,
      model: typeof inv.model === 'string' ? inv.model : null,
      clientVersion: machine.clientVersion,
      diskBand: diskBand(inv.diskSizeGb),
    });
    if (this.events.listenerCount('event') > 0) {
      for (const m of r.stored)
        this.emit({
          type: 'status',
          machine: machine.id,
          machineName: machine.name,
          advertisement: m.advertisementId,
          id: m.messageId,
          seq: m.seq,
        });
      for (const ad of new Set(r.changes.map((c) => c.advertisementId)))
        this.emit({ type: 'summary', advertisement: ad });
    }
    const changed = [...new Set(r.changes.map((c) => c.advertisementId))];
    if (changed.length > 0) await this.checkRollouts(changed);
    return r;
  }

  private emit(e: StatusEvent): void {
    this.events.emit('event', e);
  }

  /** Checks rollouts one evaluation at a time (a release or a halt is read, then written). */
  checkRollouts(adIds: string[]): Promise<void> {
    const run = this.evaluating.then(async () => {
      const ads = await this.catalog.listAdvertisements();
      let membership: Membership | undefined;
      for (const ad of ads.filter((a) => adIds.includes(a.id))) {
        if (((ad.schedule as Schedule).waves ?? []).length === 0) continue;
        membership ??= await Membership.load(this.catalog, this.now());
        await this.evaluateRollout(ad, membership);
      }
    });
    this.evaluating = run.catch(() => {});
    return run;
  }

  private async waveCounts(ad: Advertisement, membership: Membership) {
    const schedule = ad.schedule as Schedule;
    const collection = await this.catalog.getCollection(ad.collectionId);
    const members = membership.members(collection);
    const waveOfMember = wavesOf(
      ad.id,
      schedule,
      members.map((m) => m.id),
    );
    const states = await this.catalog.status.statesOf(ad.id);
    const count = Math.max(1, schedule.waves?.length ?? 0);
    const per = Array.from({ length: count }, (_, i) => ({
      wave: i + 1,
      succeeded: 0,
      failed: 0,
      total: 0,
      failedIds: [] as string[],
    }));
    for (const m of members) {
      const w = per[(waveOfMember.get(m.id) ?? 1) - 1]!;
      w.total++;
      const s = states.get(m.id);
      if (s === 'succeeded' || s === 'skippedSameImage') w.succeeded++;
      if (s === 'failed' || s === 'rolledBack') {
        w.failed++;
        w.failedIds.push(m.id);
      }
    }
    return { schedule, members, states, per };
  }

  private async evaluateRollout(ad: Advertisement, membership: Membership): Promise<void> {
    const { schedule, per } = await this.waveCounts(ad, membership);
    const rollout = await this.catalog.status.rollout(ad.id);
    if (rollout?.halted) return;
    const failureThreshold = schedule.failureThreshold ?? DEFAULT_FAILURE_THRESHOLD;
    const successThreshold = schedule.successThreshold ?? DEFAULT_SUCCESS_THRESHOLD;
    let active = schedule.activeWave ?? 1;
    const acknowledged = rollout?.acknowledged ?? {};
    for (const w of per.slice(0, active)) {
      if (w.total === 0 || w.failed <= (acknowledged[w.wave] ?? 0)) continue;
      if (w.failed * 100 < failureThreshold * w.total) continue;
      const causes = await this.catalog.status.failureCauses(ad.id, w.failedIds);
      const top = causes[0];
      const reason =
        `${w.failed} of ${w.total} machines in wave ${w.wave} failed ` +
        `(${Math.round((w.failed * 100) / w.total)}% ≥ failure threshold ${failureThreshold}%)` +
        (top
          ? `; most often message ${top.messageId}${top.code ? ` ${top.code}` : ''} (${top.k})`
          : '');
      await this.catalog.transaction(async (tx) => {
        await tx.audit({
          actor: 'server',
          action: 'update',
          kind: 'advertisement',
          target: ad.name,
          summary: renderStatusText(statusMessages[7001]!, { wave: w.wave, reason }),
        });
      });
      await this.catalog.status.setRollout(ad.id, {
        halted: true,
        haltedWave: w.wave,
        reason,
        acknowledged,
      });
      this.emit({ type: 'rollout', advertisement: ad.id, action: 'halted', wave: w.wave, reason });
      this.emit({ type: 'summary', advertisement: ad.id });
      return;
    }
    const waves = schedule.waves ?? [];
    let next = schedule;
    while (active < waves.length) {
      const w = per[active - 1]!;
      if (w.succeeded * 100 < successThreshold * w.total) break;
      const reason = `${w.succeeded} of ${w.total} machines in wave ${w.wave} succeeded (≥ success threshold ${successThreshold}%)`;
      active++;
      next = { ...next, activeWave: active };
      await this.catalog.transaction(async (tx) => {
        await tx.updateAdvertisement(ad.id, { schedule: next });
        await tx.audit({
          actor: 'server',
          action: 'update',
          kind: 'advertisement',
          target: ad.name,
          summary: renderStatusText(statusMessages[7000]!, { wave: active, reason }),
        });
      });
      this.emit({
        type: 'rollout',
        advertisement: ad.id,
        action: 'released',
        wave: active,
        reason,
      });
      this.emit({ type: 'summary', advertisement: ad.id });
    }
  }

  /** Lifts a halt: the failures seen so far are accepted; optionally releases the next wave. */
  async resume(
    ad: Advertisement,
    user: string,
    releaseNextWave: boolean,
  ): Promise<{ activeWave: number; wasHalted: boolean }> {
    const membership = await Membership.load(this.catalog, this.now());
    const { per, schedule } = await this.waveCounts(ad, membership);
    const rollout = await this.catalog.status.rollout(ad.id);
    const acknowledged = Object.fromEntries(per.map((w) => [String(w.wave), w.failed]));
    const waves = schedule.waves ?? [];
    let active = schedule.activeWave ?? 1;
    if (releaseNextWave && active < waves.length) active++;
    await this.catalog.transaction(async (tx) => {
      if (active !== (schedule.activeWave ?? 1))
        await tx.updateAdvertisement(ad.id, { schedule: { ...schedule, activeWave: active } });
      await tx.audit({
        actor: user,
        action: 'update',
        kind: 'advertisement',
        target: ad.name,
        summary: renderStatusText(statusMessages[7002]!, { user, wave: active }),
      });
    });
    await this.catalog.status.setRollout(ad.id, {
      halted: false,
      haltedWave: null,
      reason: null,
      acknowledged,
    });
    this.emit({
      type: 'rollout',
      advertisement: ad.id,
      action: 'resumed',
      wave: active,
      reason: `resumed by ${user}`,
    });
    this.emit({ type: 'summary', advertisement: ad.id });
    await this.checkRollouts([ad.id]);
    return { activeWave: active, wasHalted: rollout?.halted ?? false };
  }

  // ---- summaries ----

  async advertisementSummary(ad: Advertisement, bucketMs: number) {
    const membership = await this.membership();
    const { per, members, states } = await this.waveCounts(ad, membership);
    const counts = emptyCounts();
    for (const [, s] of states) if (s in counts) counts[s as DeploymentState]++;
    const cutoff = this.now() - NOT_REACHABLE_MS;
    const contacts = await this.catalog.status.lastContacts();
    for (const m of members)
      if (!states.has(m.id)) {
        const last = contacts.get(m.id);
        if (!last || Date.parse(last) < cutoff) counts.notReachable++;
        else counts.waiting++;
      }
    const rollout = await this.catalog.status.rollout(ad.id);
    const schedule = ad.schedule as Schedule;
    const active = schedule.activeWave ?? 1;
    const waves: WaveSummary[] = per.map((w) => ({
      wave: w.wave,
      state:
        rollout?.halted && rollout.haltedWave === w.wave
          ? 'halted'
          : w.wave <= active || (schedule.waves ?? []).length === 0
            ? 'released'
            : 'waiting',
      succeeded: w.succeeded,
      failed: w.failed,
      total: w.total,
      ...(rollout?.halted && rollout.haltedWave === w.wave && rollout.reason
        ? { reason: rollout.reason }
        : {}),
    }));
    return {
      advertisement: { id: ad.id, name: ad.name },
      counts,
      postponedUntil: (await this.catalog.status.postponed(ad.id, 50)).map((p) => ({
        machine: p.machine,
        machineId: p.machineId,
        until: p.until,
      })),
      overTime: await this.overTime(ad.id, bucketMs),
      waves,
      halted: rollout?.halted ?? false,
      ...(rollout?.halted && rollout.reason ? { haltReason: rollout.reason } : {}),
    };
  }

  async overTime(adId: string | undefined, bucketMs: number) {
    const rows = await this.catalog.status.overTime(adId, bucketMs);
    return rows.map((r) => {
      const counts = emptyCounts();
      for (const [k, v] of Object.entries(r.counts))
        if (k in counts) counts[k as DeploymentState] = v;
      return { time: r.time, ...counts };
    });
  }

  async timeline(machine: Machine) {
    const rows = await this.catalog.listStatus({ machineId: machine.id, limit: 10000 });
    const messages = rows.map((r) => {
      const def = statusMessage(r.messageId);
      return {
        seq: r.seq,
        id: r.messageId,
        time: r.time,
        component: r.component,
        phase: r.phase,
        severity: r.severity,
        advertisementId: r.advertisementId,
        text: def ? renderStatusText(def, r.properties) : `message ${r.messageId}`,
        properties: r.properties,
      };
    });
    const steps: {
      component: string;
      phase: string;
      advertisementId: string | null;
      firstSeq: number;
      lastSeq: number;
      start: string;
      end: string;
      durationMs: number;
      messages: number;
    }[] = [];
    for (const m of messages) {
      const last = steps[steps.length - 1];
      if (
        last &&
        last.component === m.component &&
        last.phase === m.phase &&
        last.advertisementId === m.advertisementId
      ) {
        last.lastSeq = m.seq;
        last.end = m.time;
        last.messages++;
      } else {
        // Within one deployment a step lasts until the next begins (its last message is not
        // its end); a deployment's last step ends with its last message.
        if (last && last.advertisementId === m.advertisementId) last.end = m.time;
        steps.push({
          component: m.component,
          phase: m.phase,
          advertisementId: m.advertisementId,
          firstSeq: m.seq,
          lastSeq: m.seq,
          start: m.time,
          end: m.time,
          durationMs: 0,
          messages: 1,
        });
      }
    }
    for (const s of steps) s.durationMs = Math.max(0, Date.parse(s.end) - Date.parse(s.start));
    const { latest, deployments } = await this.catalog.status.machineStatus(machine.id);
    const ads = new Map((await this.catalog.listAdvertisements()).map((a) => [a.id, a.name]));
    const inv = machine.inventory as { model?: unknown };
    return {
      machine: {
        id: machine.id,
        name: machine.name,
        site: machine.site,
        model: typeof inv.model === 'string' ? inv.model : null,
        ...(machine.clientVersion ? { clientVersion: machine.clientVersion } : {}),
      },
      messages,
      steps,
      state: {
        lastSeq: latest ? Number(latest.last_seq) : null,
        lastMessageId: latest ? latest.last_message_id : null,
        lastTime: latest ? latest.last_time : null,
        lastSeverity: latest ? latest.last_severity : null,
        messages: latest ? Number(latest.messages) : 0,
        deployments: deployments.map((d) => ({
          advertisement: { id: d.advertisement_id, name: ads.get(d.advertisement_id) ?? null },
          state: d.state,
          since: d.state_time,
          dp: d.dp,
          postponedUntil: d.postponed_until,
          failure:
            d.failure_message_id === null
              ? null
              : {
                  messageId: d.failure_message_id,
                  code: d.failure_code,
                  step: d.failure_step,
                  seq: Number(d.failure_seq),
                },
        })),
      },
    };
  }

  /**
   * Failures grouped by cause (message id and error code) × attribute value, ranked by how
   * surprising the group's failures are against the fleet (docs/status.md: the log-likelihood
   * ratio of the 2×2 table), over-represented groups with at least MIN_FAILURES failures only.
   */
  async trends(
    filter: { advertisementId?: string; since?: string },
    limit = 20,
  ): Promise<{ attempted: number; failed: number; groups: TrendGroup[] }> {
    const store = this.catalog.status;
    const totals = await store.trendTotals(filter);
    const N = totals.attempted;
    const causeK = new Map(totals.causes.map((c) => [`${c.messageId}\u0000${c.code}`, c.k]));
    const groups: TrendGroup[] = [];
    for (const attribute of Object.keys(TREND_ATTRIBUTES) as TrendAttribute[]) {
      const { population, failures } = await store.trendCounts(attribute, filter);
      const pop = new Map(population.map((p) => [p.value, p.n]));
      for (const f of failures) {
        if (f.k < MIN_FAILURES) continue;
        const n = Math.max(pop.get(f.value) ?? f.k, f.k);
        const K = causeK.get(`${f.messageId}\u0000${f.code}`) ?? f.k;
        const rate = f.k / n;
        const outside = N - n > 0 ? (K - f.k) / (N - n) : 0;
        if (rate <= outside) continue;
        const baseline = N > 0 ? K / N : 0;
        const def = statusMessage(f.messageId);
        groups.push({
          messageId: f.messageId,
          ...(f.code !== null ? { code: f.code } : {}),
          text: def?.text ?? `message ${f.messageId}`,
          attribute,
          value: f.value,
          failures: f.k,
          machines: f.machines,
          population: n,
          share: round(totals.failed > 0 ? f.k / totals.failed : 0),
          rate: round(rate),
          baseline: round(baseline),
          lift: round(baseline > 0 ? rate / baseline : 0, 2),
          score: round(logLikelihoodRatio(f.k, n, K, N), 2),
        });
      }
    }
    groups.sort(
      (a, b) => b.score - a.score || b.failures - a.failures || a.value.localeCompare(b.value),
    );
    const top = groups.slice(0, limit);
    for (const g of top) {
      const ex = await store.trendExample(
        g.attribute,
        { messageId: g.messageId, code: g.code ?? null, value: g.value },
        filter,
      );
      if (ex) g.example = ex;
    }
    return { attempted: N, failed: totals.failed, groups: top };
  }

  /** The dashboard: deployments now by state, over time (all advertisements), top trends. */
  async fleet(bucketMs: number) {
    const now = emptyCounts();
    for (const [k, v] of Object.entries(await this.catalog.status.stateCounts()))
      if (k in now) now[k as DeploymentState] = v;
    const ads = (await this.catalog.listAdvertisements()).filter((a) => a.enabled);
    if (ads.length > 0) {
      const membership = await this.membership();
      const cutoff = this.now() - NOT_REACHABLE_MS;
      const contacts = await this.catalog.status.lastContacts();
      for (const ad of ads) {
        const members = membership.members(await this.catalog.getCollection(ad.collectionId));
        const states = await this.catalog.status.statesOf(ad.id);
        for (const m of members)
          if (!states.has(m.id)) {
            const last = contacts.get(m.id);
            if (!last || Date.parse(last) < cutoff) now.notReachable++;
            else now.waiting++;
          }
      }
    }
    const trends = await this.trends({}, 5);
    return {
      now,
      overTime: await this.overTime(undefined, bucketMs),
      topTrends: trends.groups,
      advertisements: ads.length,
    };
  }
}
