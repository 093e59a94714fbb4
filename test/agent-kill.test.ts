import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { keptPaths, startDeployment } from '../src/agent/deploy.js';
import { EXIT_REBOOT } from '../src/agent/main.js';
import { Outbox } from '../src/agent/outbox.js';
import { BOOT_CONFIG } from '../src/agent/platform.js';
import {
  dataSnapshot,
  installedTreeCheck,
  makeDeployFixture,
  makeLabMachine,
  makePlan,
} from './support/deploy.js';
import type { DeployFixture } from './support/deploy.js';
import { isProgressMessage } from '../src/status/messages.js';

/**
 * Kill test: the agent runs as a real process booted from the machine's disk; in one boot it
 * is killed with SIGKILL at a chosen point (a failpoint: after a step's `begin`, between two
 * renames of the swap, after some files of the apply or frames of the download). The machine
 * is booted again, as after a power cut, until the deployment ends. It must converge to the
 * same end as an uninterrupted run, lose no user data, and report every status exactly once.
 */

const mainJs = fileURLToPath(new URL('../src/agent/main.js', import.meta.url));
/** The "bundle" on the lab disks: a launcher of the compiled agent (the real bundle: test/lab-*). */
const launcher = `import(${JSON.stringify(mainJs)}).then((m) => m.agentMain(process.argv.slice(2))).then((c) => process.exit(c));\n`;

const base = mkdtempSync(join(tmpdir(), 'reimage-kill-'));
after(() => rmSync(base, { recursive: true, force: true }));
let f: DeployFixture;
before(async () => {
  f = await makeDeployFixture(base, () => launcher);
});

interface Boot {
  role: string;
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** The firmware's loop, in short: boot the entry the EFI partition names, again and again. */
async function boot(
  dir: string,
  kill: { role: string; failpoints: string; nth?: number },
): Promise<Boot[]> {
  const boots: Boot[] = [];
  let seen = 0;
  for (let i = 0; i < 12; i++) {
    const cfgPath = join(dir, BOOT_CONFIG);
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as {
      default: string;
      next?: string;
      entries: Record<string, { program: string; args: string[] }>;
    };
    const name = cfg.next ?? cfg.default;
    if (cfg.next) writeFileSync(cfgPath, JSON.stringify({ ...cfg, next: undefined }));
    const entry = cfg.entries[name]!;
    const role = name === 'pe' ? 'pe' : 'client';
    const env = { ...process.env };
    delete env['REIMAGE_FAILPOINTS'];
    // Armed in the nth boot of that role only (the old client is the 1st client boot, the
    // new client the 2nd): the boots after the kill run clean, as after a power cut.
    if (role === kill.role && ++seen === (kill.nth ?? 1))
      env['REIMAGE_FAILPOINTS'] = kill.failpoints;
    // `--once`: the client goes on with the deployment, then makes one poll cycle and exits
    // (without it, the client is a daemon that polls until it is stopped).
    const once = role === 'client' ? ['--once'] : [];
    const child = spawn(
      process.execPath,
      [join(dir, 'disk', entry.program), ...entry.args, '--machine', dir, ...once],
      { env, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const [code, signal] = (await new Promise((r) => child.once('exit', (c, s) => r([c, s])))) as [
      number | null,
      NodeJS.Signals | null,
    ];
    boots.push({ role, code, signal });
    if (code === 0) return boots;
    if (code !== EXIT_REBOOT && signal !== 'SIGKILL')
      throw new Error(`the agent failed (${code ?? signal}):\n${err}`);
  }
  throw new Error(`no end after 12 boots: ${JSON.stringify(boots)}`);
}

const cases: Array<{
  role: string;
  failpoints: string;
  what: string;
  nth?: number;
  /** A deployment that fails after the swap, so the kill lands in its rollback. */
  rollback?: boolean;
}> = [
  { role: 'client', failpoints: 'step.check=1', what: 'phase 1, as the checks begin' },
  { role: 'client', failpoints: 'step.capture-state=1', what: 'phase 1, as state capture begins' },
  {
    role: 'client',
    failpoints: 'capture.progress=3',
    what: 'phase 1, half-way through state capture',
  },
  {
    role: 'client',
    failpoints: 'fetch.progress=2',
    what: 'phase 1, during the pre-staging download',
  },
  { role: 'client', failpoints: 'step.install-pe=1', what: 'phase 1, as the PE is installed' },
  { role: 'client', failpoints: 'step.boot-pe=1', what: 'phase 1, setting the boot entry' },
  { role: 'pe', failpoints: 'step.content=1', what: 'phase 2, verifying content' },
  { role: 'pe', failpoints: 'apply.progress=3', what: 'phase 2, after some files applied' },
  {
    role: 'pe',
    failpoints: 'swap.aside=4',
    what: 'phase 2, between renames moving the old OS aside',
  },
  { role: 'pe', failpoints: 'swap.in=3', what: 'phase 2, between renames moving the new OS in' },
  { role: 'pe', failpoints: 'step.boot-os=1', what: 'phase 2, setting the new boot entry' },
  {
    role: 'client',
    nth: 2,
    failpoints: 'step.restore-state=1',
    what: 'phase 3, as the restore begins',
  },
  {
    role: 'client',
    nth: 2,
    failpoints: 'restore.progress=2',
    what: 'phase 3, half-way through restoring state',
  },
  {
    role: 'client',
    nth: 2,
    failpoints: 'restore.report=1',
    what: 'phase 3, the restore report written, the step not yet done',
  },
  { role: 'client', nth: 2, failpoints: 'step.cleanup=1', what: 'phase 3, cleaning up' },
  {
    role: 'pe',
    failpoints: 'undo.out=2',
    rollback: true,
    what: 'a rollback, between renames moving the failed OS out',
  },
];

describe('killed at every step: the deployment converges, data intact, no duplicate status', () => {
  let n = 0;
  for (const c of cases) {
    it(`killed in ${c.what} (${c.failpoints})`, async () => {
      const dir = join(base, `m${++n}`);
      const facts = await makeLabMachine(dir, n, launcher);
      const root = join(dir, 'disk');
      // No server: the deployment's plan is written by the test, and the client's poll cycle
      // after it has nobody to call (the generated client.json names an unreachable one).
      const clientJson = join(root, 'etc/reimage/client.json');
      const { server: _server, ...client } = JSON.parse(readFileSync(clientJson, 'utf8')) as {
        server?: string;
      };
      writeFileSync(clientJson, JSON.stringify(client));
      const data = dataSnapshot(root, facts);
      const osRelease = readFileSync(join(root, 'etc/os-release'), 'utf8');
      const plan = makePlan(
        f,
        `kill-${n}`,
        c.rollback ? { newClient: { program: '/usr/lib/reimage/missing.bundle', args: [] } } : {},
      );
      startDeployment(root, plan);
      const boots = await boot(dir, c);
      assert.ok(
        boots.some((b) => b.signal === 'SIGKILL'),
        `the failpoint fired: ${JSON.stringify(boots)}`,
      );
      if (c.rollback) assert.equal(readFileSync(join(root, 'etc/os-release'), 'utf8'), osRelease);
      else assert.match(readFileSync(join(root, 'etc/os-release'), 'utf8'), /VERSION_ID="?13/);
      assert.deepEqual(dataSnapshot(root, facts), data);
      const outbox = new Outbox(keptPaths(root).outbox);
      const all = outbox.all();
      outbox.close();
      assert.deepEqual(
        all.map((e) => e.seq),
        all.map((_, i) => i + 1),
      );
      assert.deepEqual(
        all.map((e) => e.id).filter((id) => !isProgressMessage(id)),
        c.rollback
          ? [3000, 3001, 3002, 3003, 4000, 4001, 4002, 4003, 6000, 6001]
          : [3000, 3001, 3002, 3003, 4000, 4001, 4002, 4003, 4004, 5000, 5001, 5002, 5003],
      );
      const history = readdirSync(keptPaths(root).history);
      assert.equal(history.length, 1);
      if (!c.rollback) {
        // The restore report names every path of the OS that is not the image's, killed or not.
        const { diff } = installedTreeCheck(root, f, plan);
        assert.deepEqual(
          { missing: diff.missing, added: diff.added, changed: diff.changed },
          { missing: [], added: [], changed: [] },
        );
      }
    });
  }
});
