import assert from 'node:assert/strict';
import {
  cpSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { keptPaths, startDeployment } from '../src/agent/deploy.js';
import type { DeploymentPlan } from '../src/agent/deploy.js';
import { Outbox } from '../src/agent/outbox.js';
import { ContentStore } from '../src/content/store.js';
import { exportImage, importFile } from '../src/image/convert.js';
import { loadFormats } from '../src/image/formats/registry.js';
import { BOOT_CONFIG } from '../src/agent/platform.js';
import type { MachineTreeFacts } from '../src/lab/machine-tree.js';
import {
  bootUntilDone,
  dataSnapshot,
  installedTreeCheck,
  makeDeployFixture,
  makeLabMachine,
  makePlan,
} from './support/deploy.js';
import type { DeployFixture } from './support/deploy.js';
import { isProgressMessage } from '../src/status/messages.js';

/**
 * The deployment engine on a lab machine, phase by phase, with the firmware's loop done here:
 * a reboot is the platform's exit, which this test turns into "boot again from the disk's
 * boot configuration". (The firmware process and the bundle are tested in test/lab-*.)
 */

const base = mkdtempSync(join(tmpdir(), 'reimage-deploy-'));
after(() => rmSync(base, { recursive: true, force: true }));

let f: DeployFixture;
before(async () => {
  f = await makeDeployFixture(base, (where) => `// ${where} 2.0.0\n`);
});

let n = 0;
async function labMachine(): Promise<{ dir: string; facts: MachineTreeFacts }> {
  const dir = join(base, `m${++n}`);
  return { dir, facts: await makeLabMachine(dir, n) };
}

const plan = (over: Partial<DeploymentPlan> = {}) => makePlan(f, `d${n}`, over);

describe('in-place deployment on a lab machine (engine)', () => {
  it('three phases: new OS in place, user data byte-identical with the same inodes, same GUID, one timeline', async () => {
    const { dir, facts } = await labMachine();
    const root = join(dir, 'disk');
    const data = dataSnapshot(root, facts);
    const guid = (
      JSON.parse(readFileSync(join(root, 'etc/reimage/client.json'), 'utf8')) as { guid: string }
    ).guid;
    const p = plan();
    startDeployment(root, p);
    const { outcome, roles, log } = await bootUntilDone(dir);
    assert.equal(outcome, 'succeeded', log.join('\n'));
    assert.deepEqual(roles, ['client', 'pe', 'client']);
    // The whole tree is the image's but for the restore report's paths (and the data kept).
    const { report, diff } = installedTreeCheck(root, f, p);
    assert.deepEqual(
      { missing: diff.missing, added: diff.added, changed: diff.changed },
      { missing: [], added: [], changed: [] },
    );
    assert.ok(diff.compared > 100, `${diff.compared} paths compared`);
    assert.ok(report.written.includes('etc/passwd') && report.written.includes('etc/hostname'));
    assert.ok(report.written.length >= report.restored, JSON.stringify(report.written.length));
    assert.match(readFileSync(join(root, 'etc/os-release'), 'utf8'), /VERSION_ID="?13/);
    assert.equal(readFileSync(join(root, 'usr/lib/reimage/agent.bundle'), 'utf8'), '// os 2.0.0\n');
    assert.deepEqual(dataSnapshot(root, facts), data);
    const after = JSON.parse(readFileSync(join(root, 'etc/reimage/client.json'), 'utf8')) as {
      guid: string;
    };
    assert.equal(after.guid, guid, 'the machine keeps its GUID');
    for (const k of ['rollback', 'new-os', 'staging', 'pe', 'deployment'])
      assert.equal(existsSync(join(root, '.reimage', k)), false, `.reimage/${k} is cleaned up`);
    const outbox = new Outbox(keptPaths(root).outbox);
    const all = outbox.all();
    const ids = all.map((e) => e.id).filter((id) => !isProgressMessage(id));
    const seqs = all.map((e) => e.seq);
    outbox.close();
    // Progress of pre-staging and apply: inside its step, bytes done ≤ total, a tenth each.
    const progress = all.filter((e) => isProgressMessage(e.id));
    assert.ok(
      progress.some((e) => e.id === 3010),
      'pre-staging reported its progress',
    );
    assert.ok(
      progress.some((e) => e.id === 4011),
      'the apply reported its progress',
    );
    const at = (id: number) => all.findIndex((e) => e.id === id);
    for (const e of progress) {
      const i = all.indexOf(e);
      const steps: Record<number, [number, number]> = {
        3010: [3002, 3003],
        4010: [4000, 4001],
        4011: [4001, 4002], // the apply runs beside the old OS, before the swap
      };
      const [from, to] = steps[e.id]!;
      assert.ok(at(from) < i && i < at(to), `${e.id} inside its step`);
      const p = e.properties as { done: number; total: number; rate: number; percent: number };
      assert.ok(p.done > 0 && p.done <= p.total && p.rate >= 0, JSON.stringify(p));
      assert.ok(p.percent >= 10 && p.percent <= 90 && p.percent % 10 === 0, JSON.stringify(p));
    }
    assert.deepEqual(
      seqs,
      seqs.map((_, i) => i + 1),
    );
    assert.deepEqual(
      ids,
      [3000, 3001, 3002, 3003, 4000, 4001, 4002, 4003, 4004, 5000, 5001, 5002, 5003],
    );
    const boot = JSON.parse(readFileSync(join(dir, BOOT_CONFIG), 'utf8')) as { default: string };
    assert.equal(boot.default, 'os');
  });

  it('an image for another architecture is refused by the checks; nothing changes', async () => {
    const { dir, facts } = await labMachine();
    const root = join(dir, 'disk');
    const data = dataSnapshot(root, facts);
    const osRelease = readFileSync(join(root, 'etc/os-release'), 'utf8');
    startDeployment(root, plan({ image: { id: f.imageId, arch: 'aarch64', bytes: 1 } }));
    const { outcome, roles } = await bootUntilDone(dir);
    assert.equal(outcome, 'failed');
    assert.deepEqual(roles, ['client']);
    assert.equal(readFileSync(join(root, 'etc/os-release'), 'utf8'), osRelease);
    assert.deepEqual(dataSnapshot(root, facts), data);
    const outbox = new Outbox(keptPaths(root).outbox);
    const last = outbox.all().at(-1)!;
    outbox.close();
    assert.equal(last.id, 9000);
    assert.equal(last.properties?.['code'], 'DEPLOYMENT_CHECK_FAILED');
  });

  it('an opaque tar.zst image (a third-party file stored as is) deploys in place too', async () => {
    // The same new OS, exported as tar.zst and stored opaquely in the DP: its format applies it.
    const store = ContentStore.open(f.dp);
    const registry = await loadFormats();
    const file = join(base, 'new-os.tar.zst');
    await exportImage({ store, registry, image: f.imageId, format: 'tar.zst', out: file });
    const { record } = await importFile({
      store,
      registry,
      file,
      name: 'debian-13-tarzst',
      format: 'tar.zst',
      opaque: true,
    });
    assert.equal(record.imageFormat, 'opaque');
    const { dir, facts } = await labMachine();
    const root = join(dir, 'disk');
    const data = dataSnapshot(root, facts);
    startDeployment(
      root,
      plan({ image: { id: record.id, os: 'debian', arch: 'x86_64', bytes: 64 * 1024 * 1024 } }),
    );
    const { outcome, log } = await bootUntilDone(dir);
    assert.equal(outcome, 'succeeded', log.join('\n'));
    assert.match(readFileSync(join(root, 'etc/os-release'), 'utf8'), /VERSION_ID="?13/);
    assert.equal(readFileSync(join(root, 'usr/lib/reimage/agent.bundle'), 'utf8'), '// os 2.0.0\n');
    assert.deepEqual(dataSnapshot(root, facts), data);
    const outbox = new Outbox(keptPaths(root).outbox);
    const applied = outbox.all().find((e) => e.id === 4003)!;
    outbox.close();
    assert.equal(applied.properties?.['reusedFiles'], 0);
  });

  it('a new OS without a client (a failure after the swap) rolls back to the old OS, data intact', async () => {
    const { dir, facts } = await labMachine();
    const root = join(dir, 'disk');
    const data = dataSnapshot(root, facts);
    const osRelease = readFileSync(join(root, 'etc/os-release'), 'utf8');
    startDeployment(
      root,
      plan({ newClient: { program: '/usr/lib/reimage/missing.bundle', args: [] } }),
    );
    const { outcome, roles } = await bootUntilDone(dir);
    assert.equal(outcome, 'rolled-back');
    assert.deepEqual(roles, ['client', 'pe', 'client']);
    assert.equal(readFileSync(join(root, 'etc/os-release'), 'utf8'), osRelease);
    assert.deepEqual(dataSnapshot(root, facts), data);
    const outbox = new Outbox(keptPaths(root).outbox);
    const ids = outbox.all().map((e) => e.id);
    const rb = outbox.all().find((e) => e.id === 6000)!;
    outbox.close();
    assert.deepEqual(ids.slice(-2), [6000, 6001]);
    assert.equal(rb.properties?.['step'], 'boot-os');
    assert.equal(rb.properties?.['code'], 'APPLY_FAILED');
  });

  it('pre-staged: phase 2 needs no network (the DP is gone after phase 1) and still completes', async () => {
    const dpCopy = join(base, `dp-gone-${n + 1}`);
    cpSync(f.dp, dpCopy, { recursive: true });
    const { dir, facts } = await labMachine();
    const root = join(dir, 'disk');
    const data = dataSnapshot(root, facts);
    startDeployment(root, plan({ prestage: true, sources: [dpCopy] }));
    const { outcome, log } = await bootUntilDone(dir, {
      beforeBoot: (i) => {
        if (i === 1) rmSync(dpCopy, { recursive: true }); // the link is down from here on
      },
    });
    assert.equal(outcome, 'succeeded', log.join('\n'));
    assert.match(readFileSync(join(root, 'etc/os-release'), 'utf8'), /VERSION_ID="?13/);
    assert.deepEqual(dataSnapshot(root, facts), data);
  });

  it('corrupt content at the only DP (not pre-staged): phase 2 fails before the swap, old OS back', async () => {
    const dpCopy = join(base, `dp-corrupt-${n + 1}`);
    cpSync(f.dp, dpCopy, { recursive: true });
    const { dir, facts } = await labMachine();
    const root = join(dir, 'disk');
    const data = dataSnapshot(root, facts);
    const osRelease = readFileSync(join(root, 'etc/os-release'), 'utf8');
    startDeployment(root, plan({ prestage: false, sources: [dpCopy] }));
    const { outcome, roles, log } = await bootUntilDone(dir, {
      beforeBoot: (i) => {
        if (i !== 1) return;
        // The PE is installed; now the DP goes bad: bytes flipped all through every pack.
        for (const pack of listFiles(join(dpCopy, 'packs')).filter((p) => p.endsWith('.pack'))) {
          const buf = readFileSync(pack);
          for (let k = 64; k < buf.length; k += 4096) buf[k]! ^= 0xff;
          writeFileSync(pack, buf);
        }
      },
    });
    assert.equal(outcome, 'rolled-back', log.join('\n'));
    assert.deepEqual(roles, ['client', 'pe', 'client']);
    assert.equal(readFileSync(join(root, 'etc/os-release'), 'utf8'), osRelease);
    assert.deepEqual(dataSnapshot(root, facts), data);
    const outbox = new Outbox(keptPaths(root).outbox);
    const rb = outbox.all().find((e) => e.id === 6000)!;
    outbox.close();
    assert.equal(rb.properties?.['step'], 'content');
  });

  it('a restore that fails in phase 3 rolls the machine back to the old OS, data intact', async () => {
    const { dir, facts } = await labMachine();
    const root = join(dir, 'disk');
    const data = dataSnapshot(root, facts);
    const osRelease = readFileSync(join(root, 'etc/os-release'), 'utf8');
    startDeployment(root, plan());
    const { outcome, roles } = await bootUntilDone(dir, {
      beforeBoot: (i) => {
        // Before the new client's first boot, the state store loses its manifest.
        if (i === 2)
          for (const m of listFiles(join(root, 'var/lib/reimage/state')).filter((p) =>
            /manifest\.(enc|json)$/.test(p),
          ))
            rmSync(m);
      },
    });
    assert.equal(outcome, 'rolled-back');
    assert.deepEqual(roles, ['client', 'pe', 'client', 'client']);
    assert.equal(readFileSync(join(root, 'etc/os-release'), 'utf8'), osRelease);
    assert.deepEqual(dataSnapshot(root, facts), data);
    const outbox = new Outbox(keptPaths(root).outbox);
    const rb = outbox.all().find((e) => e.id === 6000)!;
    outbox.close();
    assert.equal(rb.properties?.['step'], 'restore-state');
  });
});

function listFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((d) => d.isFile())
    .map((d) => join(d.parentPath, d.name));
}
