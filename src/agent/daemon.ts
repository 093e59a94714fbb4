import { createHash, randomUUID } from 'node:crypto';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type {
  EnrollRequest,
  EnrollResponse,
  InventoryReport,
  MachinePolicy,
  PolicyAdvertisement,
  StatusMessageIn,
} from '../client/agent-api.js';
import { AgentServerClient } from '../client/agent-client.js';
import { isReimageError, type ReimageError } from '../errors.js';
import { noUserInterface } from './ask.js';
import type { AskUser, NotificationAnswer } from './ask.js';
import {
  CLIENT_CONFIG,
  CLIENT_CREDENTIAL,
  CLIENT_DIR,
  CLIENT_ENROLLMENT_TOKEN,
  CLIENT_POLICY_CACHE,
} from './config.js';
import type { ClientConfig } from './config.js';
import { adSchedule, notificationPolicy, planFor } from './daemon-policy.js';
import { applyAnswer, decide, MAX_RUNS, newAdRecord } from './daemon-schedule.js';
import type { AdRecord } from './daemon-schedule.js';
import { keptPaths, runDeployment, startDeployment } from './deploy.js';
import type { DeploymentOutcome, DeploymentPlan } from './deploy.js';
import { failpoint } from './failpoints.js';
import { readJsonFile, removeStaleTemps, writeFileAtomic } from './files.js';
import { appliedImageId, collectInventory, writeAppliedImage } from './inventory.js';
import { agentVersion } from './main.js';
import { Outbox, PermanentRefusal } from './outbox.js';
import { ServerlessConnection } from './serverless-connection.js';
import { acceptedPublicationsFile } from './serverless.js';
import type { OutboxEntry, SendBatch, StatusMessage } from './outbox.js';
import type { Platform } from './platform.js';

/**
 * The client daemon (docs/agent.md): what `agent run` does on each boot of a machine.
 * First it goes on with a deployment in progress (the engine, src/agent/deploy.ts); then, as
 * the client role, it loops: send the status outbox, enroll if needed, report inventory, poll
 * the policy (jitter ±20 %, exponential backoff on failure), and for each advertisement
 * decide (src/agent/daemon-schedule.ts) — wait, ask the user, or start a deployment.
 */

/** What the daemon talks to: the management server, or a serverless location (src/agent/serverless-connection.ts). */
export interface AgentConnection {
  enroll(body: EnrollRequest, signal?: AbortSignal): Promise<EnrollResponse>;
  reportInventory(body: InventoryReport, signal?: AbortSignal): Promise<void>;
  policy(signal?: AbortSignal): Promise<MachinePolicy>;
  sendStatus(
    machineId: string,
    messages: StatusMessageIn[],
    signal?: AbortSignal,
  ): Promise<unknown>;
  close(): void;
}

export interface DaemonOptions {
  platform: Platform;
  role: 'client' | 'pe';
  /** One poll cycle, then return (tests; `agent run --once`). */
  once?: boolean;
  /** How the user is asked (default: no user interface — the countdown runs out). */
  ask?: AskUser;
  now?: () => Date;
  /** Waits between cycles (default: a timer); rejects when `signal` aborts. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** For the jitter (default Math.random). */
  random?: () => number;
  /** Stops the loop (SIGTERM). */
  signal?: AbortSignal;
  log?: (line: string) => void;
  /**
   * How to reach the server, given the client's configuration and credential (default: the
   * server's API, or a {@link ServerlessConnection} when client.json has `serverless` and no
   * `server`).
   */
  connect?: (config: ClientConfig, credential: string | undefined) => AgentConnection;
}

export type DaemonResult =
  /** The loop ended (once, or the signal). */
  | 'stopped'
  /** Not configured (no server) or not enrolled (no credential, no token). */
  | 'unconfigured';

/** Poll interval when neither the server nor the configuration says (seconds). */
export const DEFAULT_POLL_SECONDS = 900;
/** First retry after a failed poll, doubled at each failure up to the poll interval. */
export const FIRST_RETRY_MS = 30_000;

/** The next poll: the interval ±20 %. */
export function pollDelay(pollSeconds: number, random: () => number = Math.random): number {
  return Math.round(pollSeconds * 1000 * (0.8 + 0.4 * random()));
}

/** After `failures` failed polls in a row: 30 s, 60 s, 120 s… up to the poll interval, ±20 %. */
export function backoffDelay(
  failures: number,
  pollSeconds: number,
  random: () => number = Math.random,
): number {
  const base = Math.min(pollSeconds * 1000, FIRST_RETRY_MS * 2 ** Math.max(0, failures - 1));
  return Math.round(base * (0.8 + 0.4 * random()));
}

/** The daemon's own small state, in the kept area. */
interface DaemonState {
  failures: number;
  offlineSince?: string;
  inventory?: { hash: string; at: string };
  policyHash?: string;
}

const FINAL: readonly DeploymentOutcome[] = ['succeeded', 'failed', 'rolled-back'];
const INVENTORY_EVERY_MS = 24 * 3600_000;

/** Runs the agent's role on this boot; see {@link DaemonOptions}. */
export async function runAgent(o: DaemonOptions): Promise<DaemonResult> {
  const d = new Daemon(o);
  try {
    return await d.run();
  } finally {
    d.close();
  }
}

class Daemon {
  private readonly root: string;
  private readonly k: ReturnType<typeof keptPaths>;
  private readonly outbox: Outbox;
  private readonly now: () => Date;
  private readonly random: () => number;
  private readonly ask: AskUser;
  private conn: AgentConnection | undefined;
  private guid: string | undefined;
  private inventorySent = false;
  /** Published files the serverless location's last read left out (reported as 9002). */
  private rejected: ReimageError[] = [];

  constructor(private readonly o: DaemonOptions) {
    this.root = o.platform.root;
    this.k = keptPaths(this.root);
    this.outbox = new Outbox(this.k.outbox);
    this.now = o.now ?? (() => new Date());
    this.random = o.random ?? Math.random;
    this.ask = o.ask ?? noUserInterface;
  }

  close(): void {
    this.outbox.close();
    this.conn?.close();
  }

  private log(line: string): void {
    this.o.log?.(line);
  }

  private t(): number {
    return this.now().getTime();
  }

  // ---------------------------------------------------------------- files

  private config(): ClientConfig | undefined {
    return (
      readJsonFile<ClientConfig>(join(this.root, CLIENT_CONFIG)) ??
      // In the PE and early in phase 3 /etc is not the old OS's: the deployment's copy.
      readJsonFile<ClientConfig>(join(this.k.deployment, 'client.json'))
    );
  }

  private credential(): string | undefined {
    return (
      readSecret(join(this.root, CLIENT_CREDENTIAL)) ??
      readSecret(join(this.k.deployment, 'credential'))
    );
  }

  private state(): DaemonState {
    return readJsonFile<DaemonState>(join(this.k.kept, 'daemon.json')) ?? { failures: 0 };
  }

  private saveState(s: DaemonState): void {
    writeFileAtomic(join(this.k.kept, 'daemon.json'), `${JSON.stringify(s, null, 2)}\n`);
  }

  private adPath(id: string): string {
    return join(this.k.kept, 'ads', `${id.replace(/[^A-Za-z0-9._-]/g, '_')}.json`);
  }

  private record(id: string): AdRecord {
    return readJsonFile<AdRecord>(this.adPath(id)) ?? newAdRecord(id, this.t());
  }

  private saveRecord(r: AdRecord): void {
    writeFileAtomic(this.adPath(r.id), `${JSON.stringify(r, null, 2)}\n`);
  }

  // ---------------------------------------------------------------- server

  /**
   * The connection, once the client has a server, a GUID and a credential — or, serverless,
   * a location and a GUID.
   */
  private connection(): { conn: AgentConnection; guid: string } | undefined {
    if (this.conn && this.guid) return { conn: this.conn, guid: this.guid };
    const cfg = this.config();
    const credential = this.credential();
    if (!cfg?.guid || !(isServerless(cfg) || (cfg.server && credential))) return undefined;
    this.conn?.close();
    this.conn = this.connect(cfg, credential);
    this.guid = cfg.guid;
    return { conn: this.conn, guid: this.guid };
  }

  private connect(cfg: ClientConfig, credential: string | undefined): AgentConnection {
    if (this.o.connect) return this.o.connect(cfg, credential);
    if (isServerless(cfg)) {
      const guid = cfg.guid!;
      return new ServerlessConnection(
        cfg.serverless,
        () => {
          const applied = appliedImageId(this.root);
          return {
            guid,
            name: this.machineName(),
            ...(cfg.site ? { site: cfg.site } : {}),
            ...(applied ? { appliedImageId: applied } : {}),
          };
        },
        {
          onRejected: (e) => this.rejected.push(e),
          now: this.now,
          accepted: acceptedPublicationsFile(join(this.k.kept, 'serverless-accepted.json')),
        },
      );
    }
    return new AgentServerClient({
      server: cfg.server!,
      ...(cfg.fingerprint ? { fingerprint: cfg.fingerprint } : {}),
      ...(credential ? { credential } : {}),
      userAgent: `reimage-agent/${agentVersion()}`,
    });
  }

  /** The outbox's way out: the machine's status route; a refused batch is refused for good. */
  private readonly send: SendBatch = async (batch: OutboxEntry[]) => {
    const c = this.connection();
    if (!c) throw new Error('the client is not enrolled yet');
    try {
      await c.conn.sendStatus(
        c.guid,
        batch.map((e) => ({
          seq: e.seq,
          id: e.id,
          time: e.time,
          ...(e.advertisementId !== undefined ? { advertisementId: e.advertisementId } : {}),
          ...(e.properties !== undefined ? { properties: e.properties } : {}),
        })),
        this.o.signal,
      );
    } catch (e) {
      if (
        isReimageError(e) &&
        ['VALIDATION_FAILED', 'STATUS_MESSAGE_UNKNOWN', 'MACHINE_MISMATCH'].includes(e.code)
      )
        throw new PermanentRefusal(e.message);
      throw e;
    }
  };

  private async flush(): Promise<void> {
    if (this.outbox.pending().length === 0) return;
    try {
      await this.outbox.flush(this.send);
    } catch (e) {
      this.log(`status not sent yet (${errorText(e)})`);
    }
  }

  /** Adds a status message once (by key) and tries to send it. */
  private async status(
    id: number,
    key: string,
    properties: Record<string, unknown> = {},
    advertisementId?: string,
  ): Promise<void> {
    const msg: StatusMessage = {
      id,
      time: this.now().toISOString(),
      ...(advertisementId !== undefined ? { advertisementId } : {}),
      properties,
    };
    this.outbox.add(msg, key);
    await this.flush();
  }

  // ---------------------------------------------------------------- the boot

  async run(): Promise<DaemonResult> {
    // A power cut during an atomic write leaves its temporary file: gone at the next boot.
    for (const dir of [join(this.root, CLIENT_DIR), this.k.kept]) {
      const removed = removeStaleTemps(dir);
      if (removed.length > 0) this.log(`removed ${removed.join(', ')} (cut writes) in ${dir}`);
    }
    await this.continueDeployment();
    if (this.o.role === 'pe') return 'stopped';
    for (;;) {
      const wait = await this.cycle();
      if (this.o.once || this.o.signal?.aborted)
        return wait === undefined ? 'unconfigured' : 'stopped';
      const ms = wait ?? pollDelay(DEFAULT_POLL_SECONDS, this.random);
      this.log(`next cycle in ${Math.round(ms / 1000)} s`);
      try {
        await (this.o.sleep ?? sleep)(ms, this.o.signal);
      } catch {
        return 'stopped'; // aborted
      }
    }
  }

  /** Goes on with the deployment in progress, if any; records how it ended. */
  private async continueDeployment(): Promise<void> {
    const plan = readJsonFile<DeploymentPlan>(this.k.plan);
    if (!plan) {
      if (this.o.role === 'pe') {
        // The PE booted with nothing to do: back to the OS.
        this.log('PE booted without a deployment; booting the OS');
        const platform = this.o.platform;
        if (platform.bootConfig().entries['os']) {
          platform.setDefaultBoot('os');
          platform.reboot();
        }
      }
      return;
    }
    await this.deploy(plan);
  }

  private async deploy(plan: DeploymentPlan): Promise<DeploymentOutcome> {
    const outcome = await runDeployment({
      platform: this.o.platform,
      outbox: this.outbox,
      send: this.send,
      role: this.o.role,
      log: (l) => this.log(l),
      now: this.now,
      ...(this.o.signal ? { signal: this.o.signal } : {}),
    });
    this.log(`deployment ${plan.id}: ${outcome}`);
    if (FINAL.includes(outcome)) this.finished(plan, outcome);
    await this.flush();
    return outcome;
  }

  /** After a deployment ended: its record, the applied image, no credential left in the history. */
  private finished(plan: DeploymentPlan, outcome: string): void {
    if (outcome === 'succeeded')
      writeAppliedImage(this.root, {
        imageId: plan.image.id,
        package: `${plan.package.name}@${plan.package.version}`,
        deployment: plan.id,
        at: this.now().toISOString(),
      });
    if (plan.advertisementId) {
      const rec = this.record(plan.advertisementId);
      const run = rec.runs.find((r) => r.deployment === plan.id);
      if (run && run.outcome === undefined) {
        run.outcome = outcome;
        run.endedAt = this.now().toISOString();
        this.saveRecord(rec);
      }
    }
    removeHistoryCredentials(this.k.history);
  }

  // ---------------------------------------------------------------- one cycle

  /** One poll cycle; resolves to the time until the next one (undefined: not configured). */
  private async cycle(): Promise<number | undefined> {
    await this.flush();
    let cfg = this.config();
    if (!cfg?.server && !cfg?.serverless) {
      this.log(`no server (nor serverless location) in ${CLIENT_CONFIG}: nothing to do`);
      return undefined;
    }
    if (isServerless(cfg) && !cfg.guid) cfg = this.makeGuid(cfg);
    const st = this.state();
    const pollSeconds = cfg.pollSeconds ?? this.cachedPoll() ?? DEFAULT_POLL_SECONDS;
    let policy: MachinePolicy;
    try {
      if (!isServerless(cfg) && !this.credential()) {
        const token = readSecret(join(this.root, CLIENT_ENROLLMENT_TOKEN));
        if (!token) {
          this.log('not enrolled, and no enrollment token: nothing to do');
          return undefined;
        }
        await this.enroll(cfg, token);
        Object.assign(st, this.state()); // enrollment reported the inventory
      }
      const credential = this.credential();
      const current = this.config();
      if (credential && current && !current.guid) await this.recoverGuid(current, credential);
      const c = this.connection();
      if (!c) return undefined;
      await this.reportInventory(st);
      this.rejected = [];
      policy = await c.conn.policy(this.o.signal);
    } catch (e) {
      if (this.o.signal?.aborted) throw e;
      st.failures += 1;
      const ms = backoffDelay(st.failures, pollSeconds, this.random);
      if (!st.offlineSince) st.offlineSince = this.now().toISOString();
      this.saveState(st);
      this.log(`server: ${errorText(e)}; retrying in ${Math.round(ms / 1000)} s`);
      await this.status(1003, `server/offline/${st.offlineSince}`, {
        retrySeconds: Math.round(ms / 1000),
        code: isReimageError(e) ? e.code : 'INTERNAL',
      });
      return ms;
    }
    for (const e of this.rejected) await this.refused(e);
    if (policy.machineId && this.guid && policy.machineId !== this.guid)
      this.log(`the server calls this machine ${policy.machineId}, the client ${this.guid}`);
    writeFileAtomic(
      join(this.root, CLIENT_POLICY_CACHE),
      `${JSON.stringify({ fetchedAt: this.now().toISOString(), policy }, null, 2)}\n`,
    );
    const hash = policyHash(policy);
    if (st.policyHash !== hash)
      await this.status(1002, `policy/${hash}`, { advertisements: policy.advertisements.length });
    this.saveState({ ...st, failures: 0, offlineSince: undefined, policyHash: hash });
    const pollMs = (cfg.pollSeconds ?? policy.pollSeconds ?? DEFAULT_POLL_SECONDS) * 1000;
    let next = pollDelay(pollMs / 1000, this.random);
    for (const ad of policy.advertisements) {
      const until = await this.advertisement(ad, pollMs);
      if (until !== undefined) next = Math.min(next, Math.max(1000, until - this.t()));
    }
    await this.flush();
    return next;
  }

  /** The machine's name as it enrolls (and as serverless targets name it). */
  private machineName(): string {
    try {
      return collectInventory(this.o.platform).hostname ?? this.o.platform.identity().name;
    } catch {
      return this.o.platform.identity().name; // e.g. in the PE, with the old OS wiped
    }
  }

  /**
   * Serverless: the machine's GUID, made here on the first run and saved in client.json
   * before anything (a status message, a drop file) uses it.
   */
  private makeGuid(cfg: ClientConfig): ClientConfig {
    const withGuid: ClientConfig = { ...cfg, guid: randomUUID() };
    writeFileAtomic(
      join(this.root, CLIENT_CONFIG),
      `${JSON.stringify(withGuid, null, 2)}\n`,
      0o644,
    );
    this.log(`serverless: machine GUID ${withGuid.guid} made`);
    return withGuid;
  }

  /** A published advertisement left out (bad signature, malformed): reported once, never deployed. */
  private async refused(e: ReimageError): Promise<void> {
    const file = e.details['file'];
    const name =
      typeof file === 'string' ? file.replace(/^.*\//, '').replace(/\.json$/, '') : 'unknown';
    this.log(`serverless: ${e.code}: ${e.message}`);
    await this.status(9002, `serverless/refused/${String(file)}/${e.code}/${e.message}`, {
      name,
      code: e.code,
      message: e.message.slice(0, 2000),
    });
  }

  private cachedPoll(): number | undefined {
    const c = readJsonFile<{ policy?: { pollSeconds?: unknown } }>(
      join(this.root, CLIENT_POLICY_CACHE),
    );
    const s = c?.policy?.pollSeconds;
    return typeof s === 'number' && s > 0 ? s : undefined;
  }

  /** A credential without a GUID (killed mid-enrollment): the policy says who we are. */
  private async recoverGuid(cfg: ClientConfig, credential: string): Promise<void> {
    const conn = this.connect(cfg, credential);
    try {
      const p = await conn.policy(this.o.signal);
      writeFileAtomic(
        join(this.root, CLIENT_CONFIG),
        `${JSON.stringify({ ...cfg, guid: p.machineId }, null, 2)}\n`,
        0o644,
      );
      this.log(`machine GUID ${p.machineId} recovered from the policy`);
    } finally {
      conn.close();
    }
  }

  private inventoryReport(): InventoryReport {
    const applied = appliedImageId(this.root);
    return {
      inventory: collectInventory(this.o.platform),
      clientVersion: agentVersion(),
      ...(applied ? { appliedImageId: applied } : {}),
    };
  }

  /** Enrolls with the token: GUID into client.json, the credential (0600), the token deleted. */
  private async enroll(cfg: ClientConfig, token: string): Promise<void> {
    const report = this.inventoryReport();
    const conn = this.connect(cfg, undefined);
    let r: EnrollResponse;
    try {
      r = await conn.enroll(
        { token, name: report.inventory.hostname ?? this.o.platform.identity().name, ...report },
        this.o.signal,
      );
    } finally {
      conn.close();
    }
    // The credential first: with it (and no GUID yet) a restart recovers the GUID from the
    // policy; without it the token — already used — would be all that is left.
    writeFileAtomic(join(this.root, CLIENT_CREDENTIAL), `${r.credential}\n`, 0o600);
    const enrolled: ClientConfig = {
      ...cfg,
      guid: r.machine.id,
      ...(r.machine.site ? { site: r.machine.site } : {}),
      enrolledAt: this.now().toISOString(),
    };
    writeFileAtomic(
      join(this.root, CLIENT_CONFIG),
      `${JSON.stringify(enrolled, null, 2)}\n`,
      0o644,
    );
    rmSync(join(this.root, CLIENT_ENROLLMENT_TOKEN), { force: true });
    this.log(`enrolled as ${r.machine.id}`);
    const st = this.state();
    this.saveState({
      ...st,
      inventory: { hash: inventoryHash(report), at: this.now().toISOString() },
    });
    this.inventorySent = true;
    await this.status(1000, `enroll/${r.machine.id}`, {
      name: r.machine.name,
      clientVersion: agentVersion(),
    });
  }

  /** Reports the inventory at the first cycle of a boot, when it changed, and once a day. */
  private async reportInventory(st: DaemonState): Promise<void> {
    const c = this.connection();
    if (!c) return;
    const report = this.inventoryReport();
    const hash = inventoryHash(report);
    const changed = st.inventory?.hash !== hash;
    const old = !st.inventory || this.t() - Date.parse(st.inventory.at) > INVENTORY_EVERY_MS;
    if (!changed && !old && this.inventorySent) return;
    await c.conn.reportInventory(report, this.o.signal);
    this.inventorySent = true;
    st.inventory = { hash, at: this.now().toISOString() };
    this.saveState(st);
    if (changed)
      await this.status(1001, `inventory/${hash}`, {
        os: report.inventory.os,
        osVersion: report.inventory.osVersion,
        diskFreeGb: report.inventory.diskFreeGb,
        clientVersion: report.clientVersion,
        ...(report.appliedImageId ? { image: report.appliedImageId } : {}),
      });
  }

  // ---------------------------------------------------------------- one advertisement

  /** Handles one advertisement; resolves to when to look at it again (epoch ms), if sooner than the next poll. */
  private async advertisement(
    ad: PolicyAdvertisement,
    pollMs: number,
  ): Promise<number | undefined> {
    let rec = this.record(ad.id);
    const adStatus = (id: number, key: string, props: Record<string, unknown> = {}) =>
      this.status(id, `ad/${ad.id}/${key}`, props, ad.id);
    this.reconcileRuns(rec);
    await adStatus(2000, 'received', {
      advertisement: ad.name,
      package: `${ad.package.name}@${ad.package.version}`,
    });
    let policy, schedule;
    try {
      policy = notificationPolicy(ad);
      schedule = adSchedule(ad);
    } catch (e) {
      await this.unusable(ad, e);
      return undefined;
    }
    // An answer changes the record: decide again (at most a few times per cycle).
    const askedKinds = new Set<string>();
    for (let round = 0; round < 4; round++) {
      const now = this.t();
      const applied = appliedImageId(this.root);
      const d = decide(ad, rec, {
        now,
        policy,
        schedule,
        ...(applied ? { appliedImageId: applied } : {}),
      });
      switch (d.do) {
        case 'nothing':
          this.log(`advertisement ${ad.name}: nothing to do (${d.why})`);
          return undefined;
        case 'skip-same-image':
          await adStatus(2006, `same-image/${ad.package.imageId}`, { image: ad.package.imageId });
          return undefined;
        case 'wait': {
          const until = d.until !== undefined ? new Date(d.until).toISOString() : undefined;
          this.log(`advertisement ${ad.name}: waiting (${d.why}${until ? ` until ${until}` : ''})`);
          if (d.why === 'maintenance-window')
            await adStatus(2008, `window/${until}`, { opensAt: until });
          else if (d.why === 'not-yet-available' || d.why === 'waiting-for-wave')
            await adStatus(2010, `wait/${d.why}/${ad.availableFrom ?? ''}/${ad.wave}`, {
              state: d.why,
              wave: ad.wave,
              ...(ad.availableFrom ? { availableFrom: ad.availableFrom } : {}),
            });
          else if (d.why === 'retry-later')
            await adStatus(2011, `retry/${rec.runs.length + 1}`, {
              run: rec.runs.length + 1,
              maxRuns: MAX_RUNS,
              retryAt: until,
            });
          return d.until;
        }
        case 'start':
          if (d.why === 'deadline')
            await adStatus(2009, `deadline/${rec.runs.length + 1}`, {
              deadline:
                policy.deadline !== undefined ? new Date(policy.deadline).toISOString() : null,
            });
          await this.start(ad, rec, d.why);
          return undefined;
        case 'ask': {
          let req = d.request;
          // One question of each kind per cycle at most: the next comes with the next poll.
          if (askedKinds.has(req.kind)) return undefined;
          askedKinds.add(req.kind);
          let n: number;
          const open = rec.asking;
          if (
            open &&
            open.request.kind === req.kind &&
            Date.parse(open.request.countdownEndsAt) > now
          ) {
            // Killed while asking: the same question again, its countdown running on.
            ({ n, request: req } = open);
            this.log(`advertisement ${ad.name}: notification ${n} is still open: shown again`);
          } else {
            rec.notifications += 1;
            n = rec.notifications;
            rec.asking = { n, request: req };
            this.saveRecord(rec);
          }
          if (req.kind === 'pre')
            await adStatus(2007, `notify/${n}`, {
              kind: 'pre',
              startsAt: req.startsAt,
              buttons: req.buttons,
            });
          else
            await adStatus(2001, `notify/${n}`, {
              kind: 'start',
              countdown: formatDuration(Date.parse(req.countdownEndsAt) - now),
              countdownEndsAt: req.countdownEndsAt,
              buttons: req.buttons,
              ...(req.laterUntilMax ? { laterUntilMax: req.laterUntilMax } : {}),
            });
          failpoint('daemon.ask'); // the question saved and reported, not yet answered
          let answer: NotificationAnswer;
          try {
            answer = await this.ask(req, {
              root: this.root,
              now: this.now,
              ...(this.o.signal ? { signal: this.o.signal } : {}),
            });
          } catch (e) {
            if (this.o.signal?.aborted) throw e;
            // A user interface that failed is nobody answering.
            this.log(`asking the user failed (${errorText(e)}): no answer`);
            answer = { choice: 'none', at: this.now().toISOString() };
          }
          const r = applyAnswer(req, answer, rec, policy, this.t(), pollMs);
          rec = r.record;
          delete rec.asking;
          this.saveRecord(rec);
          await adStatus(r.status.id, `answer/${n}`, r.status.properties);
          if (r.start) {
            await this.start(ad, rec, `answer ${answer.choice}`);
            return undefined;
          }
          break;
        }
      }
    }
    return undefined;
  }

  /** A run recorded as started whose deployment is neither on the disk nor in the history. */
  private reconcileRuns(rec: AdRecord): void {
    const last = rec.runs[rec.runs.length - 1];
    if (!last || last.outcome !== undefined) return;
    const current = readJsonFile<DeploymentPlan>(this.k.plan);
    if (current?.id === last.deployment) return;
    last.outcome = historyOutcome(this.k.history, last.deployment) ?? 'vanished';
    last.endedAt = this.now().toISOString();
    this.saveRecord(rec);
  }

  private async unusable(ad: PolicyAdvertisement, e: unknown): Promise<void> {
    const code = isReimageError(e) ? e.code : 'INTERNAL';
    this.log(`advertisement ${ad.name}: ${errorText(e)}`);
    await this.status(
      9000,
      `ad/${ad.id}/unusable/${ad.package.id}/${ad.package.revision}/${code}`,
      { step: 'plan', code, message: errorText(e).slice(0, 2000) },
      ad.id,
    );
  }

  /** Writes the plan and runs phase 1 (which reboots into the PE). */
  private async start(ad: PolicyAdvertisement, rec: AdRecord, why: string): Promise<void> {
    const deploymentId = `${ad.id}-${rec.runs.length + 1}`;
    let made;
    try {
      made = planFor(ad, deploymentId);
    } catch (e) {
      await this.unusable(ad, e);
      return;
    }
    const credential = this.credential();
    // The PE and the new client (before its state is restored) report with this copy.
    if (credential)
      writeFileAtomic(join(this.k.deployment, 'credential'), `${credential}\n`, 0o600);
    rec.runs.push({ deployment: deploymentId, startedAt: this.now().toISOString(), why });
    this.saveRecord(rec);
    startDeployment(this.root, made.plan, made.stateKey);
    this.log(`advertisement ${ad.name}: deployment ${deploymentId} started (${why})`);
    await this.deploy(made.plan);
  }
}

/** Serverless mode: a published location and no server (docs/serverless.md). */
function isServerless(
  cfg: ClientConfig,
): cfg is ClientConfig & { serverless: NonNullable<ClientConfig['serverless']> } {
  return !cfg.server && cfg.serverless !== undefined;
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function readSecret(path: string): string | undefined {
  try {
    const s = readFileSync(path, 'utf8').trim();
    return s === '' ? undefined : s;
  } catch {
    return undefined;
  }
}

function errorText(e: unknown): string {
  return isReimageError(e) ? `${e.code}: ${e.message}` : e instanceof Error ? e.message : String(e);
}

/** What the policy says that matters to the timeline: its advertisements and their states. */
function policyHash(p: MachinePolicy): string {
  const shape = p.advertisements.map((a) => [a.id, a.package.id, a.package.revision, a.state]);
  return createHash('sha256').update(JSON.stringify(shape)).digest('hex').slice(0, 16);
}

/** Free space moves all the time: a change of it alone is not a new inventory. */
function inventoryHash(r: InventoryReport): string {
  const { diskFreeGb: _free, ...rest } = r.inventory;
  return createHash('sha256')
    .update(JSON.stringify([rest, r.clientVersion, r.appliedImageId ?? null]))
    .digest('hex')
    .slice(0, 16);
}

function formatDuration(ms: number): string {
  const m = Math.max(0, Math.round(ms / 60_000));
  return m >= 60 ? `${Math.floor(m / 60)} h ${m % 60} min` : `${m} min`;
}

/** The outcome of a finished deployment, from its folder in the history. */
function historyOutcome(history: string, deployment: string): string | undefined {
  let dirs: string[];
  try {
    dirs = readdirSync(history).filter((d) => d.startsWith(`${deployment}-`));
  } catch {
    return undefined;
  }
  for (const d of dirs) {
    let text = '';
    try {
      text = readFileSync(join(history, d, 'journal.jsonl'), 'utf8');
    } catch {
      continue;
    }
    for (const line of text.split('\n')) {
      try {
        const r = JSON.parse(line) as { step?: string; event?: string; data?: unknown };
        if (r.step === 'finished' && r.event === 'done' && typeof r.data === 'string')
          return r.data;
      } catch {
        // a torn line
      }
    }
  }
  return undefined;
}

/** The credential copy goes with the deployment folder to the history: remove it there. */
function removeHistoryCredentials(history: string): void {
  let dirs: string[];
  try {
    dirs = readdirSync(history);
  } catch {
    return;
  }
  for (const d of dirs) rmSync(join(history, d, 'credential'), { force: true });
}
