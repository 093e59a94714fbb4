import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { keptPaths, runDeployment } from '../../src/agent/deploy.js';
import type { DeploymentOutcome, DeploymentPlan } from '../../src/agent/deploy.js';
import { Outbox } from '../../src/agent/outbox.js';
import { BOOT_CONFIG, labPlatform } from '../../src/agent/platform.js';
import { readRestoreReport } from '../../src/agent/restore-report.js';
import type { SavedRestoreReport } from '../../src/agent/restore-report.js';
import { ContentStore } from '../../src/content/store.js';
import { captureImage } from '../../src/image/capture.js';
import { makeMachineTree, makeNewOsTree } from '../../src/lab/machine-tree.js';
import type { MachineTreeFacts } from '../../src/lab/machine-tree.js';
import { compareOsTree, osTreeExceptions } from '../../src/lab/os-tree.js';
import type { OsTreeDifference } from '../../src/lab/os-tree.js';
import { defaults } from '../../src/package/schema.js';

/**
 * What deployment tests share: a DP holding a new OS image (Debian 13 from the lab generator)
 * and a PE image, lab machines (a generated Debian 12 disk, an EFI partition with the boot
 * configuration, an identity), a plan, and a snapshot of the data that must not change.
 */

export interface DeployFixture {
  dp: string;
  imageId: string;
  peId: string;
  /** The new OS's tree the image was captured from (what an installed disk is compared with). */
  newOs: string;
}

/**
 * Captures the new OS and the PE into a DP folder. `bundle(role)` is the content of the agent
 * program each carries (`/usr/lib/reimage/agent.bundle` in the OS, `/agent.bundle` in the PE).
 */
export async function makeDeployFixture(
  base: string,
  bundle: (where: 'os' | 'pe') => string,
  opts: {
    /** The content store to capture into (default `BASE/dp`), e.g. a server's library. */ dp?: string;
  } = {},
): Promise<DeployFixture> {
  const dp = opts.dp ?? join(base, 'dp');
  const store = ContentStore.open(dp, { create: true });
  const newOs = join(base, 'new-os');
  await makeNewOsTree(newOs, { osVersion: '13' });
  mkdirSync(join(newOs, 'usr/lib/reimage'), { recursive: true });
  writeFileSync(join(newOs, 'usr/lib/reimage/agent.bundle'), bundle('os'));
  const img = await captureImage({
    source: newOs,
    store,
    name: 'debian-13',
    properties: { os: 'debian', version: '13', arch: 'x86_64' },
  });
  const pe = join(base, 'pe-tree');
  mkdirSync(pe);
  writeFileSync(join(pe, 'agent.bundle'), bundle('pe'));
  const peImg = await captureImage({ source: pe, store, name: 'reimage-pe' });
  return { dp, imageId: img.record.id, peId: peImg.record.id, newOs };
}

/** A lab machine folder: `disk/` (Debian 12 with users and data), `esp/`, `machine.json`. */
export async function makeLabMachine(
  dir: string,
  seed: number,
  oldBundle?: string,
): Promise<MachineTreeFacts> {
  const facts = await makeMachineTree(join(dir, 'disk'), { scale: 'small', seed });
  writeFileSync(
    join(dir, 'machine.json'),
    JSON.stringify({
      name: facts.hostname,
      mac: '52:54:00:12:34:56',
      ip: '10.1.0.20',
      site: 'paris',
      model: 'lab-1',
      diskBytes: 64 * 1024 ** 3,
      arch: 'x86_64',
    }),
  );
  if (oldBundle !== undefined) {
    mkdirSync(join(dir, 'disk/usr/lib/reimage'), { recursive: true });
    writeFileSync(join(dir, 'disk/usr/lib/reimage/agent.bundle'), oldBundle);
  }
  mkdirSync(join(dir, 'esp/reimage'), { recursive: true });
  writeFileSync(
    join(dir, BOOT_CONFIG),
    JSON.stringify({
      default: 'os',
      entries: {
        os: { program: '/usr/lib/reimage/agent.bundle', args: ['run', '--role', 'client'] },
      },
    }),
  );
  return facts;
}

export function makePlan(
  f: DeployFixture,
  id: string,
  over: Partial<DeploymentPlan> = {},
): DeploymentPlan {
  return {
    id,
    advertisementId: 'ad-1',
    package: { name: 'debian-13-desktop', version: '1' },
    image: { id: f.imageId, os: 'debian', arch: 'x86_64', bytes: 64 * 1024 * 1024 },
    pe: { imageId: f.peId, program: '/agent.bundle' },
    sources: [f.dp],
    wipe: { osPaths: [...defaults.osPaths], keep: [...defaults.keep] },
    rollbackRetainDays: 0,
    prestage: true,
    stateStore: { path: '/var/lib/reimage/state' },
    newClient: { program: '/usr/lib/reimage/agent.bundle', args: ['run', '--role', 'client'] },
    ...over,
  };
}

/**
 * SHA-256 and inode number of every regular file of the users' homes and of the data outside
 * them that is not in an OS path: what a deployment must leave byte-identical, in place.
 */
export function dataSnapshot(root: string, facts: MachineTreeFacts): Map<string, string> {
  const files = [...Object.values(facts.userFiles).flat(), ...facts.outsideHome].filter(
    (f) => !defaults.osPaths.some((p) => `/${f}`.startsWith(`${p}/`)),
  );
  const m = new Map<string, string>();
  for (const f of files) {
    const abs = join(root, f);
    const h = createHash('sha256').update(readFileSync(abs)).digest('hex');
    m.set(f, `${h} ${lstatSync(abs).ino}`);
  }
  return m;
}

class Reboot extends Error {}

/**
 * Boots a lab machine until its deployment ends, as the firmware would (in this process: a
 * reboot is the platform's exit, turned into "boot again from the disk's boot configuration").
 */
export async function bootUntilDone(
  dir: string,
  opts: { maxBoots?: number; beforeBoot?: (boot: number, role: string) => void } = {},
): Promise<{ outcome: DeploymentOutcome; roles: string[]; log: string[] }> {
  const roles: string[] = [];
  const log: string[] = [];
  for (let boot = 0; boot < (opts.maxBoots ?? 12); boot++) {
    const platform = labPlatform(dir, {
      exit: () => {
        throw new Reboot();
      },
    });
    const cfg = platform.bootConfig();
    const entry = cfg.next ?? cfg.default;
    if (cfg.next)
      writeFileSync(join(dir, BOOT_CONFIG), JSON.stringify({ ...cfg, next: undefined }));
    const role = entry === 'pe' ? 'pe' : 'client';
    roles.push(role);
    opts.beforeBoot?.(boot, role);
    const outbox = new Outbox(keptPaths(platform.root).outbox);
    try {
      const outcome = await runDeployment({ platform, outbox, role, log: (l) => log.push(l) });
      return { outcome, roles, log };
    } catch (e) {
      if (!(e instanceof Reboot)) throw e;
    } finally {
      outbox.close();
    }
  }
  throw new Error('the machine did not settle');
}

/**
 * The lab's check of an installed machine: its whole disk tree equals the new OS's tree but
 * for the exceptions of osTreeExceptions (src/lab/os-tree.ts) and the paths of the restore
 * report the deployment left in the history. Returns the report and the differences.
 */
export function installedTreeCheck(
  root: string,
  f: DeployFixture,
  plan: DeploymentPlan,
): { report: SavedRestoreReport; diff: OsTreeDifference } {
  const history = keptPaths(root).history;
  const done = readdirSync(history).filter((d) => d.startsWith(`${plan.id}-`));
  if (done.length !== 1) throw new Error(`${plan.id}: ${done.length} history folders`);
  const report = readRestoreReport(join(history, done[0]!));
  if (!report) throw new Error(`${plan.id}: no restore report in the history`);
  const diff = compareOsTree(root, f.newOs, osTreeExceptions(plan.wipe, report));
  return { report, diff };
}
