import {
  appendFileSync,
  closeSync,
  existsSync,
  fstatSync,
  mkdirSync,
  openSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { isReimageError, ReimageError } from '../errors.js';
import { openRemote } from '../content/remote.js';
import type { RemoteStore } from '../content/remote.js';
import { ContentStore } from '../content/store.js';
import { applyOpaque } from '../image/convert.js';
import { loadFormats } from '../image/formats/registry.js';
import { ImageLibrary } from '../image/library.js';
import { applyImage, estimateApply, restoreReused, unshareReused } from '../image/apply.js';
import type { ReuseOptions } from '../image/apply.js';
import { fetchImageSeeded } from '../image/fetch.js';
import type { UserPolicy } from '../migrate/accounts.js';
import type { MachineStateSettings } from '../migrate/machine-state.js';
import { captureState, restoreState } from '../migrate/migration.js';
import type { RuleComponent } from '../migrate/rule-format.js';
import { keyFromBase64, localBackend } from '../migrate/state-store.js';
import { redactText } from '../status/redact.js';
import { failpoint } from './failpoints.js';
import { progressGate } from './progress-gate.js';
import { openWrittenLog, writeRestoreReport } from './restore-report.js';
import { readJsonFile, writeFileAtomic } from './files.js';
import { Journal } from './journal.js';
import { agentVersion } from './main.js';
import type { Outbox, SendBatch } from './outbox.js';
import type { BootEntry, Platform } from './platform.js';
import { moveNewOsIn, moveOsAside, undoSwap } from './swap.js';

/**
 * The in-place deployment engine (docs/adr/0003-agent-and-lab.md): three phases of journaled,
 * idempotent steps. Phase 1 runs in the old OS (the old client), phase 2 in the PE, phase 3 in
 * the new OS (the new client); a reboot between them is a real restart, and a kill anywhere is
 * a restart too: the journal says where to go on.
 *
 * Phase 2 applies the new OS into a folder on the same disk **before** it touches the old one,
 * so a failed download or apply leaves the old OS as it was; the swap that follows is renames
 * only (the old OS into the rollback area, the new one into place), and data outside the OS
 * paths never moves. A failure after the swap undoes it.
 */

/** Everything a deployment needs, fixed when it starts (written to the kept area). */
export interface DeploymentPlan {
  /** Unique per run of an advertisement on this machine. */
  id: string;
  advertisementId?: string;
  package: { name: string; version: string };
  image: { id: string; os?: string; arch?: string; bytes: number };
  /** The PE: an image whose tree holds the agent bundle at `program`. */
  pe: { imageId: string; program: string };
  /** Content locations in preference order: folders, file:// or http(s):// DPs. */
  sources: string[];
  /** The distribution points' names, by position in `sources` (status messages name them). */
  sourceNames?: string[];
  wipe: { osPaths: string[]; keep: string[] };
  /** Days the old OS is kept after a success (0: deleted at once). */
  rollbackRetainDays: number;
  /** Download everything in phase 1, so phase 2 needs no network. */
  prestage: boolean;
  /**
   * Phase 2 hard-links the old OS's files that are identical to the image's instead of
   * writing them (default true; docs/deploy-performance.md).
   */
  reuseOldFiles?: boolean;
  /** The local state store (an absolute path on the machine, kept by the wipe). */
  stateStore: { path: string };
  migration?: { ruleSets?: string[]; rules?: RuleComponent[] };
  users?: UserPolicy;
  machineState?: MachineStateSettings;
  clientState?: {
    guid?: 'migrate' | 'fresh' | object;
    policy?: 'migrate' | 'fresh' | object;
  };
  /** The new OS's boot entry: its client, installed by the image. */
  newClient: BootEntry;
}

export type DeploymentOutcome =
  | 'idle'
  | 'succeeded'
  | 'failed'
  | 'rolled-back'
  /** `reboot()` of a test platform returned instead of ending the process. */
  | 'rebooting';

export interface EngineOptions {
  platform: Platform;
  outbox: Outbox;
  /** How the agent reaches the server, when it can (status batches). */
  send?: SendBatch;
  /** Which program this is: 'client' (old or new OS) or 'pe'. */
  role: 'client' | 'pe';
  log?: (line: string) => void;
  now?: () => Date;
  signal?: AbortSignal;
}

/** The least time between two progress messages of one step. */
const PROGRESS_EVERY_MS = 3000;

/** The deployment's log in its kept folder, and how much of its end goes with an error. */
const ENGINE_LOG = 'engine.log';
const LOG_TAIL_BYTES = 4096;

/** Free space kept beyond the apply's estimate (journals, the status outbox, logs). */
const SPACE_MARGIN = 16 * 1024 * 1024;

/** The kept area of the machine's disk (never an OS path). */
export const KEPT = '.reimage';

export function keptPaths(root: string) {
  const k = join(root, KEPT);
  return {
    kept: k,
    deployment: join(k, 'deployment'),
    plan: join(k, 'deployment', 'plan.json'),
    placed: join(k, 'deployment', 'placed.jsonl'),
    outbox: join(k, 'outbox'),
    staging: join(k, 'staging'),
    newOs: join(k, 'new-os'),
    rollback: join(k, 'rollback'),
    failedOs: join(k, 'failed-os'),
    pe: join(k, 'pe'),
    history: join(k, 'history'),
  };
}

/** Starts a deployment on this machine: writes its plan. Refused while another one runs. */
export function startDeployment(root: string, plan: DeploymentPlan, stateKey?: Buffer): void {
  const p = keptPaths(root);
  const current = readJsonFile<DeploymentPlan>(p.plan);
  if (current && current.id !== plan.id)
    throw new ReimageError(
      'AGENT_STATE_INVALID',
      `Deployment ${current.id} is still in progress on this machine.`,
    );
  if (current) return;
  // The key first: a plan on the disk means everything to run it is there.
  if (stateKey) writeFileAtomic(join(p.deployment, 'state-key'), stateKey.toString('base64'));
  writeFileAtomic(p.plan, `${JSON.stringify(plan, null, 2)}\n`);
}

/**
 * Runs what this boot of the machine has to do for the current deployment and returns how
 * it ended; a reboot does not return on a real platform.
 */
export async function runDeployment(o: EngineOptions): Promise<DeploymentOutcome> {
  const root = o.platform.root;
  const p = keptPaths(root);
  const plan = readJsonFile<DeploymentPlan>(p.plan);
  if (!plan) return 'idle';
  const e = new Engine(o, plan, new Journal(p.deployment, o.now));
  try {
    return await e.run();
  } finally {
    e.close();
  }
}

class Engine {
  private readonly p: ReturnType<typeof keptPaths>;
  private readonly root: string;
  private readonly now: () => Date;

  /** The state store's key (from the server's policy, kept with the plan); undefined: plain. */
  private readonly stateKey: Buffer | undefined;

  constructor(
    private readonly o: EngineOptions,
    private readonly plan: DeploymentPlan,
    private readonly j: Journal,
  ) {
    this.root = o.platform.root;
    this.p = keptPaths(this.root);
    const key = readTextFile(join(this.p.deployment, 'state-key'));
    this.stateKey = key === undefined ? undefined : keyFromBase64(key.trim());
    this.now = o.now ?? (() => new Date());
  }

  close(): void {
    this.j.close();
  }

  /**
   * Logs a line to the caller and to the deployment's own log in the kept area (`engine.log`,
   * which survives the reboots and goes to the history with the deployment): its tail goes
   * with every error report, so the administrator sees what the old client, the PE or the new
   * client did last. Secrets found in a line (docs/status.md, "Secrets") never reach the log.
   */
  private log(raw: string): void {
    const line = redactText(raw, this.stateKey ? [this.stateKey.toString('base64')] : []);
    this.o.log?.(line);
    const file = join(this.p.deployment, ENGINE_LOG);
    try {
      appendFileSync(file, `${this.now().toISOString()} ${line.replace(/\n/g, ' ')}\n`);
      if (statSync(file).size > 1024 * 1024) {
        const text = readFileSync(file);
        writeFileSync(file, text.subarray(text.length - 64 * 1024));
      }
    } catch {
      // no deployment folder (yet or any more): the caller's log has the line
    }
  }

  /** The last lines of the deployment's log (at most LOG_TAIL_BYTES, whole lines). */
  private logTail(): string {
    let fd: number;
    try {
      fd = openSync(join(this.p.deployment, ENGINE_LOG), 'r');
    } catch {
      return '';
    }
    try {
      const size = fstatSync(fd).size;
      const n = Math.min(size, LOG_TAIL_BYTES);
      const b = Buffer.alloc(n);
      readSync(fd, b, 0, n, size - n);
      const text = b.toString('utf8');
      return n < size ? text.slice(text.indexOf('\n') + 1) : text;
    } finally {
      closeSync(fd);
    }
  }

  /** Adds a status message once per deployment step and event, and tries to send. */
  private async status(
    id: number,
    key: string,
    properties: Record<string, unknown> = {},
  ): Promise<void> {
    this.o.outbox.add(
      {
        id,
        time: this.now().toISOString(),
        ...(this.plan.advertisementId ? { advertisementId: this.plan.advertisementId } : {}),
        properties: { deployment: this.plan.id, ...properties },
      },
      `${this.plan.id}/${key}`,
    );
    await this.flush();
  }

  /**
   * A reporter of a long step's bytes (done, total, fraction done) as status message `id`, at
   * the rate {@link progressGate} allows. Keyed by the tenth, so a step resumed after a kill
   * does not report a tenth twice.
   */
  private progressReporter(id: number, key: string) {
    const started = Date.now();
    const gate = progressGate(PROGRESS_EVERY_MS);
    return (done: number, total: number, fraction: number) => {
      if (total <= 0) return; // nothing to move (e.g. every chunk was on the disk already)
      const tenth = gate(fraction);
      if (tenth === undefined) return;
      const rate = Math.round((done * 1000) / Math.max(1, Date.now() - started));
      void this.status(id, `${key}/${tenth}`, { done, total, rate, percent: tenth * 10 });
    };
  }

  /** Sends what the outbox holds; one send at a time (progress reports do not wait). */
  private flush(): Promise<void> {
    this.flushing = this.flushing.then(() => this.flushNow());
    return this.flushing;
  }
  private flushing: Promise<void> = Promise.resolve();

  private async flushNow(): Promise<void> {
    if (!this.o.send) return;
    try {
      await this.o.outbox.flush(this.o.send);
    } catch (e) {
      this.log(`status not sent yet (${e instanceof Error ? e.message : String(e)})`);
    }
  }

  private step<T>(name: string, fn: (attempt: number) => Promise<T> | T): Promise<T> {
    this.log(`step ${name}${this.j.isDone(name) ? ' (done before)' : ''}`);
    return this.j.run(name, (attempt) => {
      failpoint(`step.${name}`); // after `begin` is on the disk, before the step acts
      return fn(attempt);
    });
  }

  async run(): Promise<DeploymentOutcome> {
    const j = this.j;
    if (j.isDone('finished')) return j.result<DeploymentOutcome>('finished') ?? 'idle';
    if (this.o.role === 'pe') return this.phase2();
    if (j.isDone('rolled-back')) return this.finish('rolled-back');
    if (j.isDone('boot-os')) return this.phase3();
    if (j.isDone('boot-pe') && !j.isDone('pe-start')) {
      // The old OS booted again after phase 1: the PE did not come up. Try again a few times.
      const tries = j.attempts('boot-pe');
      if (tries >= 3)
        return this.failBeforeChanges(
          'boot-pe',
          'PE_BOOT_FAILED',
          'The PE did not start after 3 attempts.',
        );
      j.begin('boot-pe');
      return this.bootPe();
    }
    return this.phase1();
  }

  // ---------------------------------------------------------------- phase 1: prepare

  private async phase1(): Promise<DeploymentOutcome> {
    const plan = this.plan;
    await this.status(3000, 'phase1/begin', {
      package: `${plan.package.name}@${plan.package.version}`,
    });
    try {
      await this.step('check', () => this.check());
      await this.status(3001, 'check/done');
      const captured = await this.step('capture-state', async () => {
        const r = await captureState({
          root: this.root,
          backend: localBackend(join(this.root, plan.stateStore.path)),
          machineId: this.machineGuid(),
          key: this.stateKey,
          hardLinks: true,
          migration: plan.migration,
          users: plan.users,
          onFile: () => failpoint('capture.progress'),
        });
        return { items: r.items, bytes: r.bytes, store: r.store };
      });
      await this.status(3002, 'capture-state/done', {
        items: captured.items,
        bytes: captured.bytes,
      });
      if (plan.prestage)
        await this.step('prestage', async () => {
          const r = await this.fetch(plan.image.id, { id: 3010, key: 'prestage/progress' });
          this.checkApplySpace('DEPLOYMENT_CHECK_FAILED'); // now with the image's manifest
          return r;
        });
      await this.step('install-pe', () => this.installPe());
    } catch (e) {
      return this.failBeforeChanges(
        this.j.last()?.step ?? 'phase1',
        errorCode(e),
        errorMessage(e),
        this.blamedDp(e),
      );
    }
    return this.bootPe();
  }

  private async bootPe(): Promise<DeploymentOutcome> {
    await this.step('boot-pe', () => {
      const platform = this.o.platform;
      const old = platform.bootConfig().entries['os'];
      if (old) writeFileAtomic(join(this.p.deployment, 'old-os-boot.json'), JSON.stringify(old));
      platform.setBootEntry('pe', {
        program: `/${KEPT}/pe${this.plan.pe.program}`,
        args: ['run', '--role', 'pe'],
      });
      platform.bootNext('pe');
    });
    await this.status(3003, 'boot-pe/done');
    return this.reboot();
  }

  private check(): { freeBytes: number } {
    const plan = this.plan;
    const id = this.o.platform.identity();
    if (plan.image.arch && id.arch && archName(plan.image.arch) !== archName(id.arch))
      throw new ReimageError(
        'DEPLOYMENT_CHECK_FAILED',
        `The image is for ${plan.image.arch}; this machine is ${id.arch}.`,
      );
    const osId = osReleaseId(this.root);
    if (plan.image.os && osId && !sameOsFamily(plan.image.os, osId))
      throw new ReimageError(
        'DEPLOYMENT_CHECK_FAILED',
        `The image is ${plan.image.os}; this machine runs ${osId}.`,
      );
    this.machineGuid(); // throws when the client has no identity
    const free = this.o.platform.freeBytes();
    // The new OS is applied beside the old one and the content is staged; the state store
    // holds hard links. Before the image's manifest is here, the image's size twice bounds it
    // (staged content ≤ the image, the apply ≤ the image); the exact figure, with the old
    // files the apply will reuse, is checked again once the content is staged (prestage) and
    // before the apply in phase 2.
    const need = plan.image.bytes * 2;
    if (free < need)
      throw new ReimageError(
        'DEPLOYMENT_CHECK_FAILED',
        `Not enough free disk space: ${free} bytes free, ${need} needed (the image and its staged content).`,
      );
    return { freeBytes: free };
  }

  /** Which of the image's paths the apply may take from the old OS: the wipe's OS paths. */
  private reuse(): ReuseOptions | undefined {
    const plan = this.plan;
    if (plan.reuseOldFiles === false) return undefined;
    const under = (rel: string, p: string) => rel === p || rel.startsWith(`${p}/`);
    const os = plan.wipe.osPaths.map((p) => p.replace(/^\/+|\/+$/g, ''));
    const keep = plan.wipe.keep.map((p) => p.replace(/^\/+|\/+$/g, ''));
    return {
      root: this.root,
      include: (rel) =>
        os.some((p) => p !== '' && under(rel, p)) && !keep.some((k) => under(rel, k)),
    };
  }

  /**
   * Refuses (before anything is written) when the disk cannot hold the new OS beside the old
   * one: the apply's blocks and inodes, less the old files it will reuse, plus a margin.
   */
  private checkApplySpace(code: 'DEPLOYMENT_CHECK_FAILED' | 'DISK_FULL') {
    const est = estimateApply({
      store: this.staging(),
      image: this.plan.image.id,
      reuse: this.reuse(),
    });
    const need = est.bytes + SPACE_MARGIN;
    const free = this.o.platform.freeBytes();
    if (free < need)
      throw new ReimageError(
        code,
        `Not enough free disk space to apply the image: ${free} bytes free, ${need} needed ` +
          `(${est.imageBytes} bytes of files, of which ${est.reusableBytes} reused from the old OS).`,
        { details: { freeBytes: free, neededBytes: need, reusableBytes: est.reusableBytes } },
      );
    return est;
  }

  private machineGuid(): string {
    const c = readJsonFile<{ guid?: string }>(join(this.root, 'etc/reimage/client.json'));
    const saved = readJsonFile<{ guid?: string }>(join(this.p.deployment, 'client.json'));
    const guid = c?.guid ?? saved?.guid;
    if (typeof guid !== 'string' || guid === '')
      throw new ReimageError(
        'DEPLOYMENT_CHECK_FAILED',
        'The client has no machine GUID (etc/reimage/client.json): enroll it first.',
      );
    if (c) writeFileAtomic(join(this.p.deployment, 'client.json'), JSON.stringify(c));
    return guid;
  }

  private sources(): RemoteStore[] {
    return this.plan.sources.map((s) => openRemote(s));
  }

  /** The DP name of a content source as the fetch names it (its URL), else that name. */
  private dpName(source: string): string {
    const i = this.sources().findIndex((r) => r.name === source);
    return (i >= 0 ? this.plan.sourceNames?.[i] : undefined) ?? source;
  }

  /** For an error of the content's fetch: the DP it blames first, by name. */
  private blamedDp(e: unknown): { dp?: string } {
    const bad = (e as { details?: { badSources?: Array<{ source?: unknown }> } } | null)?.details
      ?.badSources;
    const first = Array.isArray(bad) ? bad.find((b) => typeof b.source === 'string') : undefined;
    return first ? { dp: this.dpName(first.source as string) } : {};
  }

  private staging(): ContentStore {
    return ContentStore.open(this.p.staging, { create: true });
  }

  /**
   * Fetches an image into the staging store, seeded from the files on the disk now; with
   * `progress`, reports its bytes as that status message (see {@link progressReporter}).
   */
  private async fetch(imageId: string, progress?: { id: number; key: string }) {
    const report = progress ? this.progressReporter(progress.id, progress.key) : undefined;
    const r = await fetchImageSeeded({
      sources: this.sources(),
      imageId,
      into: this.staging(),
      seedRoot: this.root,
      signal: this.o.signal,
      onProgress: (p) => {
        failpoint('fetch.progress');
        report?.(
          p.bytesDownloaded,
          Math.max(p.bytesPlanned, p.bytesDownloaded),
          p.chunksNeeded > 0 ? p.chunksDone / p.chunksNeeded : 0,
        );
      },
    });
    return {
      bytesDownloaded: r.bytesDownloaded,
      chunksSeeded: r.seed?.chunksSeeded ?? 0,
      source: r.recordSource,
    };
  }

  private async installPe(): Promise<{ imageId: string }> {
    const pe = this.plan.pe;
    const marker = join(this.p.pe, '.reimage-pe.json');
    if (readJsonFile<{ imageId: string }>(marker)?.imageId === pe.imageId)
      return { imageId: pe.imageId };
    await this.fetch(pe.imageId);
    const tmp = `${this.p.pe}.new`;
    rmSync(tmp, { recursive: true, force: true });
    await applyImage({ store: this.staging(), image: pe.imageId, target: tmp, owners: false });
    if (!existsSync(join(tmp, pe.program)))
      throw new ReimageError('PE_INVALID', `The PE image has no ${pe.program}.`);
    writeFileAtomic(join(tmp, '.reimage-pe.json'), JSON.stringify({ imageId: pe.imageId }));
    rmSync(this.p.pe, { recursive: true, force: true });
    renameDir(tmp, this.p.pe);
    return { imageId: pe.imageId };
  }

  // ---------------------------------------------------------------- phase 2: wipe and load

  private async phase2(): Promise<DeploymentOutcome> {
    const plan = this.plan;
    const j = this.j;
    if (j.isDone('boot-os')) {
      // Phase 2 is over; the PE was booted again by mistake: go to the new OS.
      this.o.platform.setDefaultBoot('os');
      return this.reboot();
    }
    if (!j.isDone('reboot-pe')) j.done('reboot-pe');
    await this.step('pe-start', () => {
      // The PE booted: keep booting it until phase 2 is over, so a power loss comes back here.
      this.o.platform.setDefaultBoot('pe');
    });
    await this.status(4000, 'phase2/begin', { clientVersion: agentVersion() });
    try {
      const got = await this.step('content', async () =>
        this.fetch(plan.image.id, { id: 4010, key: 'content/progress' }),
      );
      await this.status(4001, 'content/done', {
        dp: this.dpName(got.source),
        bytesDownloaded: got.bytesDownloaded,
      });
      const applied = await this.step('apply', async (attempt) => {
        if (attempt > 1) rmSync(this.p.newOs, { recursive: true, force: true });
        this.checkApplySpace('DISK_FULL');
        const record = new ImageLibrary(this.staging()).resolve(plan.image.id);
        if (record.imageFormat === 'opaque') {
          // A third-party file (tar.zst, WIM, squashfs) stored as is: its format applies it,
          // file by file, into the same folder; nothing is reused from the old OS.
          const r = await applyOpaque({
            store: this.staging(),
            registry: await loadFormats(),
            record,
            target: this.p.newOs,
          });
          writeFileAtomic(
            join(this.p.deployment, 'reused.json'),
            JSON.stringify({ image: plan.image.id, entries: [] }),
          );
          return { entries: r.entries, bytes: r.bytes, reusedFiles: 0, reusedBytes: 0 };
        }
        // The old OS is still in place: its identical files are hard-linked, not written.
        const report = this.progressReporter(4011, 'apply/progress');
        const r = await applyImage({
          store: this.staging(),
          image: plan.image.id,
          target: this.p.newOs,
          signal: this.o.signal,
          onProgress: (p) => {
            failpoint('apply.progress');
            report(p.bytesDone, p.bytesTotal, p.bytesTotal > 0 ? p.bytesDone / p.bytesTotal : 0);
          },
          reuse: this.reuse(),
        });
        // Before the new OS can run: a rollback checks these again (restoreReused).
        writeFileAtomic(
          join(this.p.deployment, 'reused.json'),
          JSON.stringify({ image: plan.image.id, entries: r.reusedEntries }),
        );
        return {
          entries: r.entries,
          bytes: r.bytes,
          reusedFiles: r.reused.files,
          reusedBytes: r.reused.bytes,
        };
      });
      // Two steps, so that a re-run after a kill knows which way the paths were going.
      const aside = await this.step('swap-aside', () =>
        moveOsAside(this.root, this.p.rollback, plan.wipe),
      );
      const placed = await this.step('swap-in', () =>
        moveNewOsIn(this.p.newOs, this.root, this.p.placed),
      );
      const swapped = { movedAside: aside.moved, conflicts: placed.conflicts };
      await this.status(4002, 'swap/done', {
        paths: swapped.movedAside,
        conflicts: swapped.conflicts.length,
      });
      await this.status(4003, 'apply/done', {
        image: plan.image.id,
        bytes: applied.bytes,
        reusedFiles: applied.reusedFiles ?? 0,
        reusedBytes: applied.reusedBytes ?? 0,
      });
      await this.step('boot-os', () => {
        const program = join(this.root, plan.newClient.program);
        if (!existsSync(program))
          throw new ReimageError(
            'APPLY_FAILED',
            `The new OS has no client at ${plan.newClient.program}: it could not report back.`,
          );
        this.o.platform.setBootEntry('os', plan.newClient);
        this.o.platform.setDefaultBoot('os');
      });
      await this.status(4004, 'boot-os/done');
    } catch (e) {
      return this.rollback(e);
    }
    return this.reboot();
  }

  // ---------------------------------------------------------------- phase 3: restore

  private async phase3(): Promise<DeploymentOutcome> {
    const plan = this.plan;
    await this.status(5000, 'phase3/begin', { clientVersion: agentVersion() });
    try {
      const restored = await this.step('restore-state', async () => {
        // Each path restore writes is logged first: the report of a re-run names them too.
        const log = openWrittenLog(this.p.deployment);
        let r;
        try {
          r = await restoreState({
            root: this.root,
            backend: localBackend(join(this.root, plan.stateStore.path)),
            key: this.stateKey,
            machineId: this.machineGuid(),
            machineState: plan.machineState,
            clientState: plan.clientState,
            facts: { macs: [this.o.platform.identity().mac] },
            onFile: () => failpoint('restore.progress'),
            onWrite: log.add,
          });
        } finally {
          log.close();
        }
        // The whole report, kept with the deployment (it goes to the history): what of the
        // new OS is not the image's as it is. The journal keeps only counts.
        const placed = this.j.result<{ conflicts?: string[] }>('swap-in');
        writeRestoreReport(this.p.deployment, r, {
          deployment: plan.id,
          image: plan.image.id,
          notPlaced: placed?.conflicts ?? [],
        });
        failpoint('restore.report');
        return {
          restored: r.restored,
          bytes: r.bytes,
          conflicts: r.conflicts.map((c) => c.path),
          skipped: r.skipped.length,
        };
      });
      await this.status(5001, 'restore-client/done');
      await this.status(5002, 'restore-state/done', { items: restored.restored });
    } catch (e) {
      return this.rollback(e);
    }
    await this.status(5003, 'succeeded', { image: plan.image.id, clientVersion: agentVersion() });
    await this.step('cleanup', async () => {
      // A kept old OS must not share inodes with the running one: give it its own copies.
      if (plan.rollbackRetainDays > 0) await this.unshareReused();
      for (const d of [this.p.newOs, this.p.failedOs, this.p.pe, this.p.staging])
        rmSync(d, { recursive: true, force: true });
      if (plan.rollbackRetainDays <= 0) rmSync(this.p.rollback, { recursive: true, force: true });
      this.o.platform.setBootEntry('os', plan.newClient);
    });
    return this.finish('succeeded');
  }

  // ---------------------------------------------------------------- failure and rollback

  /** A failure before anything of the old OS changed: report, clean up, stay on the old OS. */
  private async failBeforeChanges(
    step: string,
    code: string,
    message: string,
    more: { dp?: string } = {},
  ): Promise<DeploymentOutcome> {
    this.log(`step ${step} failed (${code}): ${message}`);
    await this.status(9000, `failed/${step}`, {
      step,
      code,
      message: message.slice(0, 2000),
      ...more,
      logTail: this.logTail(),
    });
    rmSync(this.p.pe, { recursive: true, force: true });
    return this.finish('failed');
  }

  private async rollback(e: unknown): Promise<DeploymentOutcome> {
    const failedStep = this.j.last()?.step ?? 'unknown';
    const code = errorCode(e);
    this.log(`step ${failedStep} failed (${code}): ${errorMessage(e)}; rolling back`);
    await this.status(6000, 'rollback/begin', {
      step: failedStep,
      code,
      message: errorMessage(e).slice(0, 2000),
      ...this.blamedDp(e),
      logTail: this.logTail(),
    });
    await this.j.run('rollback', async () => {
      undoSwap(this.root, this.p.rollback, this.p.placed, this.p.failedOs);
      await this.restoreReused();
      const old = readJsonFile<BootEntry>(join(this.p.deployment, 'old-os-boot.json'));
      if (old) this.o.platform.setBootEntry('os', old);
      this.o.platform.setDefaultBoot('os');
      rmSync(this.p.newOs, { recursive: true, force: true });
      return { step: failedStep, code };
    });
    this.j.done('rolled-back', { step: failedStep, code });
    return this.reboot();
  }

  private reusedFiles(): { image: string; entries: number[] } | undefined {
    const r = readJsonFile<{ image: string; entries: number[] }>(
      join(this.p.deployment, 'reused.json'),
    );
    return r && Array.isArray(r.entries) && r.entries.length > 0 ? r : undefined;
  }

  /** The old OS's files the apply hard-linked: changed in place since? Written again. */
  private async restoreReused(): Promise<void> {
    const r = this.reusedFiles();
    if (!r) return;
    try {
      const got = await restoreReused({
        store: this.staging(),
        image: r.image,
        root: this.root,
        entries: r.entries,
      });
      this.log(`rollback: ${got.checked} reused files checked, ${got.restored} written again`);
    } catch (e) {
      // The old OS is back; a file the new OS changed could not be written again.
      this.log(`rollback: reused files not all restored: ${errorMessage(e)}`);
    }
  }

  private async unshareReused(): Promise<void> {
    const r = this.reusedFiles();
    // No staged content: a cleanup re-run after a kill, which unshared before it deleted it.
    if (!r || !existsSync(this.p.staging)) return;
    try {
      const got = await unshareReused({
        store: this.staging(),
        image: r.image,
        root: this.root,
        aside: this.p.rollback,
        entries: r.entries,
      });
      this.log(`cleanup: ${got.unshared} reused files copied in the kept old OS`);
    } catch (e) {
      this.log(`cleanup: the kept old OS still shares reused files: ${errorMessage(e)}`);
    }
  }

  private async finish(outcome: DeploymentOutcome): Promise<DeploymentOutcome> {
    if (outcome === 'rolled-back') {
      const why = this.j.result<{ step: string; code: string }>('rolled-back');
      await this.status(6001, 'rolled-back', { step: why?.step, code: why?.code });
    }
    this.j.done('finished', outcome);
    // The deployment's folder goes to the history; the next deployment starts clean.
    mkdirSync(this.p.history, { recursive: true, mode: 0o700 });
    const dest = join(this.p.history, `${this.plan.id}-${Date.now()}`);
    this.j.close();
    renameDir(this.p.deployment, dest);
    return outcome;
  }

  private reboot(): DeploymentOutcome {
    this.o.platform.reboot();
    return 'rebooting';
  }
}

function readTextFile(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
}

function renameDir(from: string, to: string): void {
  mkdirSync(dirname(to), { recursive: true, mode: 0o700 });
  renameSync(from, to);
}

/** Debian's and the kernel's names for the same architectures. */
function archName(arch: string): string {
  const a = arch.toLowerCase();
  return ({ amd64: 'x86_64', arm64: 'aarch64', i686: 'i386' } as Record<string, string>)[a] ?? a;
}

function osReleaseId(root: string): string | undefined {
  for (const f of ['etc/os-release', 'usr/lib/os-release']) {
    try {
      const m = /^ID=("?)([^"\n]*)\1$/m.exec(readFileSync(join(root, f), 'utf8'));
      if (m) return m[2];
    } catch {
      // not there: try the next
    }
  }
  return undefined;
}

/** `debian` matches `debian-12` and `Debian`: the image property names the family first. */
function sameOsFamily(imageOs: string, osId: string): boolean {
  const a = imageOs.toLowerCase();
  const b = osId.toLowerCase();
  return a === b || a.startsWith(`${b}-`) || a.startsWith(`${b} `);
}

function errorCode(e: unknown): string {
  if (isReimageError(e)) return e.code;
  const code = (e as { code?: unknown }).code;
  return typeof code === 'string' ? code : 'INTERNAL';
}

function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
