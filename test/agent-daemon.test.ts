import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import { noUserInterface } from '../src/agent/ask.js';
import type { AskUser, NotificationAnswer, NotificationRequest } from '../src/agent/ask.js';
import { backoffDelay, pollDelay, runAgent } from '../src/agent/daemon.js';
import { AGENT_DEFAULTS, parseDuration } from '../src/agent/daemon-policy.js';
import type { AdRecord } from '../src/agent/daemon-schedule.js';
import { keptPaths } from '../src/agent/deploy.js';
import { Outbox } from '../src/agent/outbox.js';
import { BOOT_CONFIG, labPlatform } from '../src/agent/platform.js';
import type { Machine } from '../src/catalog/catalog.js';
import { defaults } from '../src/package/schema.js';
import type { MachineTreeFacts } from '../src/lab/machine-tree.js';
import { makeDeployFixture, makeLabMachine } from './support/deploy.js';
import type { DeployFixture } from './support/deploy.js';
import {
  createAdvertisement,
  createCollection,
  createDp,
  createEnrollmentToken,
  createPackage,
  enrollMachine,
  expectStatus,
  registerImage,
} from './support/fixtures.js';
import { makeTestServer } from './support/server.js';
import type { TestServer } from './support/server.js';
import { isProgressMessage } from '../src/status/messages.js';

/**
 * The client daemon against a real server (SQLite, HTTP on loopback) and lab machines: it
 * enrolls with a token, reports inventory, polls the policy and turns an advertisement into
 * a deployment as the notification policy says. The lab firmware's loop is done here (a
 * reboot is the platform's exit, turned into "boot again from the disk's boot configuration"),
 * so that the user's answers can be injected; the version each boot runs is read from the
 * program file the boot entry names on the disk, as the bundle's loader would set it.
 */

class Reboot extends Error {}

const base = mkdtempSync(join(tmpdir(), 'reimage-daemon-'));
let server: TestServer;
let url: string;
let f: DeployFixture;

before(async () => {
  server = await makeTestServer('sqlite');
  await server.app.listen({ host: '127.0.0.1', port: 0 });
  const a = server.app.server.address();
  assert.ok(a && typeof a === 'object');
  url = `http://127.0.0.1:${a.port}`;
  // The server's library is the distribution point (a folder DP).
  const library = join(server.dir, 'library');
  f = await makeDeployFixture(base, (where) => `// reimage agent 2.0.0 (${where})\n`, {
    dp: library,
  });
  await registerImage(server, 'debian-13');
  await registerImage(server, 'reimage-pe');
  await createDp(server, {
    name: 'dp-paris',
    address: library,
    site: 'paris',
    boundaries: ['10.1.0.0/16'],
  });
});

after(async () => {
  await server?.close();
  rmSync(base, { recursive: true, force: true });
});

const T0 = Date.parse('2030-01-07T09:00:00Z');
const at = (ms: number) => () => new Date(ms);
const HOUR = 3600_000;

let n = 0;
interface LabMachine {
  dir: string;
  root: string;
  facts: MachineTreeFacts;
  name: string;
}

/** A lab machine whose client is configured for the test server, with an enrollment token. */
async function labMachine(): Promise<LabMachine> {
  const dir = join(base, `m${++n}`);
  const facts = await makeLabMachine(dir, 100 + n, '// reimage agent 1.0.0\n');
  const root = join(dir, 'disk');
  writeFileSync(join(root, 'etc/reimage/client.json'), JSON.stringify({ server: url }));
  rmSync(join(root, 'etc/reimage/credential'));
  const { token } = await createEnrollmentToken(server, { uses: 1 });
  writeFileSync(join(root, 'etc/reimage/enrollment-token'), `${token}\n`, { mode: 0o600 });
  return { dir, root, facts, name: facts.hostname };
}

/** A package of the test image and an advertisement of it to a collection holding `m` only. */
async function advertise(
  m: LabMachine,
  o: {
    options?: Record<string, unknown>;
    policy?: Record<string, unknown>;
    schedule?: Record<string, unknown>;
    pe?: Record<string, unknown>;
  } = {},
): Promise<{ adId: string }> {
  const name = `pkg-${n}`;
  await createPackage(server, {
    definition: stringify({
      apiVersion: 'reimage/v1',
      kind: 'PackageDefinition',
      name,
      version: '1',
      image: { name: 'debian-13' },
      ...(o.pe ? { pe: o.pe } : {}),
    }),
    settings: stringify({
      apiVersion: 'reimage/v1',
      kind: 'DeploymentSettings',
      options: o.options ?? {},
      stateStore: { type: 'local', path: '/var/lib/reimage/state', encrypt: true },
    }),
    definitionFile: `${name}.package.yaml`,
    settingsFile: `${name}.deploy.yaml`,
  });
  await createCollection(server, { name: `only-${n}`, rule: `name = "${m.name}"` });
  const ad = await createAdvertisement(server, {
    name: `ad-${n}`,
    package: `${name}@1`,
    collection: `only-${n}`,
    ...(o.policy ? { policy: o.policy } : {}),
    ...(o.schedule ? { schedule: o.schedule } : {}),
  });
  return { adId: ad.id };
}

/** An AskUser that records the requests and answers from a list (then 'none'). */
function scriptedUser(...answers: ((req: NotificationRequest) => NotificationAnswer)[]) {
  const asked: NotificationRequest[] = [];
  const ask: AskUser = async (req) => {
    asked.push(req);
    const a = answers[asked.length - 1];
    return a ? a(req) : { choice: 'none', at: req.countdownEndsAt };
  };
  return { ask, asked };
}

const now = (req: NotificationRequest): NotificationAnswer => ({
  choice: 'now',
  at: new Date(Date.parse(req.countdownEndsAt) - 60_000).toISOString(),
  by: 'web',
});
const decline = (req: NotificationRequest): NotificationAnswer => ({
  choice: 'decline',
  at: new Date(Date.parse(req.countdownEndsAt) - 60_000).toISOString(),
  by: 'terminal',
});

/**
 * Boots the machine as the firmware would, `agent run --once` each time, until a boot ends
 * without a reboot. Returns the roles booted and the agent's log.
 */
async function boot(
  m: LabMachine,
  o: { ask?: AskUser; now?: () => Date; maxBoots?: number } = {},
): Promise<{ roles: string[]; versions: string[]; log: string[] }> {
  const roles: string[] = [];
  const versions: string[] = [];
  const log: string[] = [];
  const g = globalThis as { __REIMAGE_AGENT_VERSION__?: string };
  try {
    for (let i = 0; i < (o.maxBoots ?? 8); i++) {
      const platform = labPlatform(m.dir, {
        exit: () => {
          throw new Reboot();
        },
      });
      const cfg = platform.bootConfig();
      const name = cfg.next ?? cfg.default;
      if (cfg.next)
        writeFileSync(join(m.dir, BOOT_CONFIG), JSON.stringify({ ...cfg, next: undefined }));
      const entry = cfg.entries[name]!;
      const program = readFileSync(join(m.root, entry.program), 'utf8');
      g.__REIMAGE_AGENT_VERSION__ = /(\d+\.\d+\.\d+)/.exec(program)![1]!;
      versions.push(g.__REIMAGE_AGENT_VERSION__);
      const role = entry.args.includes('pe') ? 'pe' : 'client';
      roles.push(role);
      try {
        await runAgent({
          platform,
          role,
          once: true,
          ...(o.ask ? { ask: o.ask } : {}),
          now: o.now ?? at(T0),
          random: () => 0.5,
          log: (l) => log.push(`${role}: ${l}`),
        });
        return { roles, versions, log };
      } catch (e) {
        if (!(e instanceof Reboot)) throw e;
      }
    }
    return { roles, versions, log };
  } finally {
    delete g.__REIMAGE_AGENT_VERSION__;
  }
}

async function serverMachine(m: LabMachine): Promise<Machine> {
  const res = await server.call<Machine>('GET', `/api/v1/machines/${encodeURIComponent(m.name)}`);
  expectStatus(res, 200, `machine ${m.name}`);
  return res.body;
}

interface TimelineItem {
  seq: number;
  messageId: number;
  advertisementId: string | null;
  properties: Record<string, unknown>;
  text: string;
}

async function timeline(m: LabMachine): Promise<TimelineItem[]> {
  const machine = await serverMachine(m);
  const res = await server.call<{ items: TimelineItem[] }>(
    'GET',
    `/api/v1/machines/${machine.id}/timeline`,
  );
  expectStatus(res, 200, 'timeline');
  return res.body.items;
}

/** The message ids of a timeline, progress reports left out (a step may send none). */
const ids = (t: TimelineItem[]) => t.map((x) => x.messageId).filter((id) => !isProgressMessage(id));
const osRelease = (m: LabMachine) => readFileSync(join(m.root, 'usr/lib/os-release'), 'utf8');

function pendingInOutbox(m: LabMachine): number {
  const o = new Outbox(keptPaths(m.root).outbox);
  try {
    return o.pending().length;
  } finally {
    o.close();
  }
}

describe('client daemon: enrollment and inventory', () => {
  it('enrolls with the token: GUID in client.json, credential 0600, token gone, inventory at the server', async () => {
    const m = await labMachine();
    // A write of the policy cache cut by a power cut, by a process that is gone.
    const gone = spawnSync(process.execPath, ['-e', '']).pid;
    const cut = join(m.root, `etc/reimage/policy-cache.json.tmp-${gone}`);
    writeFileSync(cut, '{"policy":', { mode: 0o600 });
    const { log } = await boot(m);
    assert.equal(existsSync(cut), false, 'the cut write’s temporary file is removed at boot');
    const cfg = JSON.parse(readFileSync(join(m.root, 'etc/reimage/client.json'), 'utf8')) as {
      guid?: string;
      server: string;
    };
    assert.ok(cfg.guid, log.join('\n'));
    assert.equal(cfg.server, url);
    assert.equal(existsSync(join(m.root, 'etc/reimage/enrollment-token')), false);
    assert.equal(statSync(join(m.root, 'etc/reimage/credential')).mode & 0o777, 0o600);
    const machine = await serverMachine(m);
    assert.equal(machine.id, cfg.guid);
    assert.equal(machine.clientVersion, '1.0.0');
    assert.equal(machine.appliedImageId, null);
    const inv = machine.inventory as Record<string, unknown>;
    assert.equal(inv['os'], 'debian');
    assert.equal(inv['osVersion'], '12');
    assert.equal(inv['arch'], 'x86_64');
    assert.equal(inv['model'], 'lab-1');
    assert.deepEqual(inv['macs'], ['52:54:00:12:34:56']);
    assert.deepEqual(inv['ips'], ['10.1.0.20']);
    assert.equal(inv['diskSizeGb'], 64);
    assert.deepEqual(ids(await timeline(m)), [1000, 1002]);
    assert.equal(pendingInOutbox(m), 0, 'everything was sent');
    // The policy is cached for the next boot.
    const cache = JSON.parse(
      readFileSync(join(m.root, 'etc/reimage/policy-cache.json'), 'utf8'),
    ) as { policy: { machineId: string } };
    assert.equal(cache.policy.machineId, cfg.guid);
    assert.equal(statSync(join(m.root, 'etc/reimage/policy-cache.json')).mode & 0o777, 0o600);
  });

  it('killed between storing the credential and the GUID: the GUID comes back from the policy', async () => {
    const m = await labMachine();
    rmSync(join(m.root, 'etc/reimage/enrollment-token'));
    const enrolled = await enrollMachine(server, { name: m.name });
    writeFileSync(join(m.root, 'etc/reimage/credential'), `${enrolled.credential}\n`, {
      mode: 0o600,
    });
    await boot(m);
    const cfg = JSON.parse(readFileSync(join(m.root, 'etc/reimage/client.json'), 'utf8')) as {
      guid?: string;
    };
    assert.equal(cfg.guid, enrolled.id);
    assert.deepEqual(ids(await timeline(m)), [1001, 1002]);
  });

  it('a server that does not answer: status 1003 waits in the outbox with the retry time, and is sent once the server is back', async () => {
    const m = await labMachine();
    await boot(m);
    const cfgPath = join(m.root, 'etc/reimage/client.json');
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
    // A loopback port nobody listens on.
    writeFileSync(cfgPath, JSON.stringify({ ...cfg, server: 'http://127.0.0.1:9' }));
    await boot(m);
    await boot(m, { now: at(T0 + 60_000) });
    const state = JSON.parse(readFileSync(join(keptPaths(m.root).kept, 'daemon.json'), 'utf8')) as {
      failures: number;
    };
    assert.equal(state.failures, 2);
    assert.equal(pendingInOutbox(m), 1, 'one 1003 per outage, not one per failure');
    writeFileSync(cfgPath, JSON.stringify(cfg));
    await boot(m, { now: at(T0 + 120_000) });
    const t = await timeline(m);
    assert.deepEqual(ids(t), [1000, 1002, 1003]);
    assert.equal(t[2]!.properties['retrySeconds'], 30);
    assert.equal(t[2]!.properties['code'], 'SERVER_UNREACHABLE');
    const after = JSON.parse(readFileSync(join(keptPaths(m.root).kept, 'daemon.json'), 'utf8')) as {
      failures: number;
    };
    assert.equal(after.failures, 0);
  });
});

/** `agent run ARGS` as its own process (the agent's entry point, from dist/). */
function agentProcess(args: string[], env: Record<string, string> = {}) {
  const main = fileURLToPath(new URL('../src/agent/main.js', import.meta.url));
  const child = spawn(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      `import { agentMain } from ${JSON.stringify(main)}; process.exitCode = await agentMain(process.argv.slice(1));`,
      ...args,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } },
  );
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  child.stdout.resume();
  const exit = new Promise<number | null>((resolve) =>
    child.once('close', (code) => resolve(code)),
  );
  return { child, exit, stderr: () => stderr };
}

describe('agent run (the process)', () => {
  it('--once: enrolls, reports, polls, exits 0', async () => {
    const m = await labMachine();
    const p = agentProcess(['run', '--role', 'client', '--machine', m.dir, '--once']);
    assert.equal(await p.exit, 0, p.stderr());
    const machine = await serverMachine(m);
    assert.equal(machine.clientVersion, 'dev');
    assert.deepEqual(ids(await timeline(m)), [1000, 1002]);
  });

  it('without --once it polls until SIGTERM, then exits 0', async () => {
    const m = await labMachine();
    const p = agentProcess(['run', '--role', 'client', '--machine', m.dir]);
    // Wait for the first cycle's last message (the policy) to reach the server.
    for (;;) {
      const res = await server.call<{ items: Machine[] }>('GET', '/api/v1/machines');
      const mine = res.body.items.find((x) => x.name === m.name);
      if (mine && (await timeline(m)).some((x) => x.messageId === 1002)) break;
      assert.equal(p.child.exitCode, null, `the agent ended early: ${p.stderr()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    p.child.kill('SIGTERM');
    assert.equal(await p.exit, 0, p.stderr());
    assert.match(p.stderr(), /SIGTERM: stopping/);
  });

  /** Killed by SIGKILL while the user is asked (the 2001 sent, no answer yet); the question saved. */
  async function killedWhileAsking(m: LabMachine): Promise<AdRecord> {
    const p = agentProcess(['run', '--role', 'client', '--machine', m.dir, '--once'], {
      REIMAGE_FAILPOINTS: 'daemon.ask=1',
    });
    await p.exit;
    assert.equal(p.child.signalCode, 'SIGKILL', p.stderr());
    const dir = join(keptPaths(m.root).kept, 'ads');
    const rec = JSON.parse(readFileSync(join(dir, readdirSync(dir)[0]!), 'utf8')) as AdRecord;
    assert.equal(rec.asking?.n, 1);
    assert.equal(rec.asking.request.kind, 'start');
    return rec;
  }
  const adIds = async (m: LabMachine) =>
    ids(await timeline(m)).filter((id) => id >= 2000 && id < 3000);

  it('killed while the user is asked: the next boot shows the same question and countdown, one 2001 in all', async () => {
    const m = await labMachine();
    await advertise(m, { options: { allowDecline: true } });
    const killed = await killedWhileAsking(m);
    assert.deepEqual(await adIds(m), [2000, 2001]);
    const user = scriptedUser(decline);
    const ends = Date.parse(killed.asking!.request.countdownEndsAt);
    await boot(m, { ask: user.ask, now: at(ends - 5 * 60_000) });
    assert.equal(user.asked.length, 1);
    assert.deepEqual(
      user.asked[0],
      killed.asking!.request,
      'the same question, countdown running on',
    );
    assert.deepEqual(await adIds(m), [2000, 2001, 2004]);
    const rec = JSON.parse(
      readFileSync(join(keptPaths(m.root).kept, 'ads', `${killed.id}.json`), 'utf8'),
    ) as AdRecord;
    assert.equal(rec.asking, undefined);
    assert.equal(rec.notifications, 1);
    assert.ok(rec.declined);
  });

  it('killed while the user is asked, back after the countdown: a new question (a second 2001)', async () => {
    const m = await labMachine();
    await advertise(m, { options: { allowDecline: true } });
    const killed = await killedWhileAsking(m);
    const user = scriptedUser(decline);
    const ends = Date.parse(killed.asking!.request.countdownEndsAt);
    await boot(m, { ask: user.ask, now: at(ends + 60_000) });
    assert.equal(user.asked.length, 1);
    assert.equal(user.asked[0]!.countdownEndsAt, new Date(ends + 16 * 60_000).toISOString());
    assert.deepEqual(await adIds(m), [2000, 2001, 2001, 2004]);
  });

  it('bad arguments: usage, exit 2', async () => {
    const p = agentProcess(['run', '--role', 'server', '--machine', base]);
    assert.equal(await p.exit, 2);
    assert.match(p.stderr(), /usage: agent run --role client\|pe/);
  });
});

describe('client daemon: from an advertisement to a deployment', () => {
  it("'now': deploys through the three phases; one ordered timeline at the server, the new inventory", async () => {
    const m = await labMachine();
    const { adId } = await advertise(m, { options: { allowDecline: true } });
    const user = scriptedUser(now);
    const { roles, versions, log } = await boot(m, { ask: user.ask });
    assert.deepEqual(roles, ['client', 'pe', 'client'], log.join('\n'));
    assert.deepEqual(versions, ['1.0.0', '2.0.0', '2.0.0']);
    assert.match(osRelease(m), /VERSION_ID="?13/);
    assert.equal(user.asked.length, 1);
    const req = user.asked[0]!;
    assert.equal(req.kind, 'start');
    assert.equal(req.advertisementId, adId);
    assert.deepEqual(req.buttons, { now: true, later: true, decline: true });
    assert.equal(req.countdownEndsAt, new Date(T0 + 15 * 60_000).toISOString());
    assert.equal(req.laterUntilMax, new Date(T0 + 3 * 24 * HOUR).toISOString());
    assert.equal(req.whenNoAnswer, 'install');
    const t = await timeline(m);
    assert.deepEqual(
      ids(t),
      [
        1000, 1002, 2000, 2001, 2002, 3000, 3001, 3002, 3003, 4000, 4001, 4002, 4003, 4004, 5000,
        5001, 5002, 5003, 1001, 1002,
      ],
      log.join('\n'),
    );
    assert.deepEqual(
      t.map((x) => x.seq),
      t.map((_, i) => i + 1),
      'continuous sequence numbers across old client, PE and new client',
    );
    const choice = t.find((x) => x.messageId === 2002)!;
    assert.equal(choice.advertisementId, adId);
    assert.equal(choice.properties['by'], 'web');
    assert.equal(choice.properties['at'], new Date(T0 + 14 * 60_000).toISOString());
    assert.equal(t.find((x) => x.messageId === 5000)!.properties['clientVersion'], '2.0.0');
    const machine = await serverMachine(m);
    assert.equal(machine.clientVersion, '2.0.0');
    assert.equal(machine.appliedImageId, f.imageId);
    assert.equal((machine.inventory as { osVersion: string }).osVersion, '13');
    // No credential copy is left in the kept area's history.
    const history = keptPaths(m.root).history;
    for (const d of readdirSync(history))
      assert.equal(existsSync(join(history, d, 'credential')), false);
    // The next boots do nothing more: the advertisement is done here.
    await boot(m, { ask: user.ask, now: at(T0 + 2 * HOUR) });
    assert.equal(user.asked.length, 1);
    assert.equal((await timeline(m)).length, t.length);
  });

  it("'decline' (allowed): nothing installs, 2004 with the choice and its time, never asked again", async () => {
    const m = await labMachine();
    await advertise(m, { options: { allowDecline: true } });
    const before = osRelease(m);
    const user = scriptedUser(decline);
    await boot(m, { ask: user.ask });
    assert.equal(osRelease(m), before);
    assert.equal(existsSync(keptPaths(m.root).plan), false);
    const t = await timeline(m);
    assert.deepEqual(ids(t), [1000, 1002, 2000, 2001, 2004]);
    assert.equal(t[4]!.properties['by'], 'terminal');
    assert.equal(t[4]!.properties['at'], new Date(T0 + 14 * 60_000).toISOString());
    await boot(m, { ask: user.ask, now: at(T0 + 24 * HOUR) });
    assert.equal(user.asked.length, 1);
  });

  it('decline when the policy does not allow it: no decline button, and the answer counts as none', async () => {
    const m = await labMachine();
    await advertise(m, { options: { requireUserPermission: true } });
    const user = scriptedUser(decline);
    await boot(m, { ask: user.ask });
    assert.equal(user.asked[0]!.buttons.decline, false);
    const t = await timeline(m);
    assert.deepEqual(ids(t), [1000, 1002, 2000, 2001, 2005]);
    assert.equal(t[4]!.properties['ignored'], 'decline');
    assert.equal(t[4]!.properties['outcome'], 'postponed');
  });

  it('permission required and nobody answers: nothing installs, again and again', async () => {
    const m = await labMachine();
    await advertise(m, { options: { requireUserPermission: true } });
    const before = osRelease(m);
    const user = scriptedUser();
    await boot(m, { ask: user.ask });
    // Long after the postponement maximum (3 days): still only asked, never installed.
    await boot(m, { ask: user.ask, now: at(T0 + 4 * 24 * HOUR) });
    await boot(m, { ask: user.ask, now: at(T0 + 5 * 24 * HOUR) });
    assert.equal(user.asked.length, 3);
    assert.ok(user.asked.every((r) => r.requireUserPermission && r.whenNoAnswer === 'postpone'));
    assert.equal(osRelease(m), before);
    assert.equal(existsSync(keptPaths(m.root).plan), false);
    const t = await timeline(m);
    assert.deepEqual(ids(t), [1000, 1002, 2000, 2001, 2005, 2001, 2005, 2001, 2005]);
    assert.ok(
      t.filter((x) => x.messageId === 2005).every((x) => x.properties['outcome'] === 'postponed'),
    );
  });

  it("'later': the postponement is honoured and capped by the maximum; then no more 'later'", async () => {
    const m = await labMachine();
    await advertise(m, {
      options: { allowDecline: true, postponement: { allowed: true, maximum: '1d' } },
    });
    const user = scriptedUser(
      () => ({
        choice: 'later',
        until: new Date(T0 + 10 * 24 * HOUR).toISOString(),
        at: new Date(T0 + 60_000).toISOString(),
        by: 'web',
      }),
      decline,
    );
    await boot(m, { ask: user.ask });
    assert.equal(user.asked[0]!.laterUntilMax, new Date(T0 + 24 * HOUR).toISOString());
    const rec = JSON.parse(
      readFileSync(
        join(keptPaths(m.root).kept, 'ads', `${user.asked[0]!.advertisementId}.json`),
        'utf8',
      ),
    ) as { postponedUntil: string };
    assert.equal(rec.postponedUntil, new Date(T0 + 24 * HOUR).toISOString());
    // Before the postponement ends nobody is asked.
    await boot(m, { ask: user.ask, now: at(T0 + 12 * HOUR) });
    assert.equal(user.asked.length, 1);
    // After it: asked again, with no postponement left.
    await boot(m, { ask: user.ask, now: at(T0 + 24 * HOUR + 60_000) });
    assert.equal(user.asked.length, 2);
    assert.equal(user.asked[1]!.buttons.later, false);
    assert.equal(user.asked[1]!.laterUntilMax, undefined);
    const t = await timeline(m);
    assert.deepEqual(ids(t), [1000, 1002, 2000, 2001, 2003, 2001, 2004]);
    assert.equal(t[4]!.properties['until'], new Date(T0 + 24 * HOUR).toISOString());
    assert.equal(t[4]!.properties['asked'], new Date(T0 + 10 * 24 * HOUR).toISOString());
  });

  it('pre-notification: told in advance (2007), no answer keeps the schedule, asked at the start', async () => {
    const m = await labMachine();
    await advertise(m, { options: { allowDecline: true }, policy: { preNotification: '1h' } });
    const user = scriptedUser(
      () => ({ choice: 'none', at: new Date(T0 + HOUR).toISOString() }),
      decline,
    );
    await boot(m, { ask: user.ask });
    assert.equal(user.asked[0]!.kind, 'pre');
    assert.equal(user.asked[0]!.startsAt, new Date(T0 + HOUR).toISOString());
    assert.equal(user.asked[0]!.countdownEndsAt, new Date(T0 + HOUR).toISOString());
    await boot(m, { ask: user.ask, now: at(T0 + 30 * 60_000) });
    assert.equal(user.asked.length, 1, 'not before the announced start');
    await boot(m, { ask: user.ask, now: at(T0 + HOUR + 60_000) });
    assert.equal(user.asked.length, 2);
    assert.equal(user.asked[1]!.kind, 'start');
    const t = await timeline(m);
    assert.deepEqual(ids(t), [1000, 1002, 2000, 2007, 2005, 2001, 2004]);
    assert.equal(t[4]!.properties['outcome'], 'kept as scheduled');
  });

  it('deadline passed: the deployment starts without asking (2009, then phase 1)', async () => {
    const m = await labMachine();
    const { adId } = await advertise(m, {
      policy: { deadline: new Date(T0).toISOString() },
    });
    const user = scriptedUser();
    // One boot: phase 1 runs and reboots into the PE.
    const { roles, log } = await boot(m, { ask: user.ask, now: at(T0 + HOUR), maxBoots: 1 });
    assert.deepEqual(roles, ['client']);
    assert.equal(user.asked.length, 0, 'nobody asked');
    const plan = JSON.parse(readFileSync(keptPaths(m.root).plan, 'utf8')) as {
      advertisementId: string;
      pe: { imageId: string };
      image: { id: string; os: string; arch: string };
      sources: string[];
    };
    assert.equal(plan.advertisementId, adId, log.join('\n'));
    assert.equal(plan.pe.imageId, f.peId, 'the server resolved the default PE (reimage-pe)');
    assert.deepEqual(plan.image.id, f.imageId);
    assert.equal(plan.image.arch, 'x86_64');
    assert.deepEqual(plan.sources, [join(server.dir, 'library')]);
    assert.deepEqual(ids(await timeline(m)), [1000, 1002, 2000, 2009, 3000, 3001, 3002, 3003]);
  });

  it('the same image already applied (machine side): 2006 once, nothing installs', async () => {
    const m = await labMachine();
    await advertise(m);
    mkdirSync(keptPaths(m.root).kept, { recursive: true });
    writeFileSync(
      join(keptPaths(m.root).kept, 'applied.json'),
      JSON.stringify({ imageId: f.imageId, at: new Date(T0).toISOString() }),
    );
    const user = scriptedUser(now);
    await boot(m, { ask: user.ask });
    await boot(m, { ask: user.ask, now: at(T0 + HOUR) });
    assert.equal(user.asked.length, 0);
    assert.equal(existsSync(keptPaths(m.root).plan), false);
    const t = await timeline(m);
    assert.deepEqual(ids(t), [1000, 1002, 2000, 2006]);
    assert.equal(t[3]!.properties['image'], f.imageId);
    // The client told the server, which now says so itself.
    assert.equal((await serverMachine(m)).appliedImageId, f.imageId);
  });

  it('the same image (server side, skip-same-image): 2006, nothing installs', async () => {
    const m = await labMachine();
    await boot(m);
    const machine = await serverMachine(m);
    await server.catalog.updateMachine(machine.id, { appliedImageId: f.imageId });
    await advertise(m);
    const user = scriptedUser(now);
    await boot(m, { ask: user.ask });
    assert.equal(user.asked.length, 0);
    assert.deepEqual(ids(await timeline(m)), [1000, 1002, 1002, 2000, 2006]);
  });

  it('outside the maintenance windows: waits (2008 with the opening) and asks only inside', async () => {
    const m = await labMachine();
    // Machine local time: a window from 22:00 to 23:00 every day.
    const morning = new Date(2030, 0, 7, 10, 0).getTime();
    const opens = new Date(2030, 0, 7, 22, 0).getTime();
    await advertise(m, {
      options: { allowDecline: true },
      schedule: { maintenanceWindows: [{ from: '22:00', to: '23:00' }] },
    });
    const user = scriptedUser(decline);
    await boot(m, { ask: user.ask, now: at(morning) });
    assert.equal(user.asked.length, 0);
    const t = await timeline(m);
    assert.deepEqual(ids(t), [1000, 1002, 2000, 2008]);
    assert.equal(t[3]!.properties['opensAt'], new Date(opens).toISOString());
    await boot(m, { ask: user.ask, now: at(opens + 30 * 60_000) });
    assert.equal(user.asked.length, 1);
  });

  it('no PE for the package: 9000 (step plan, AGENT_POLICY_UNUSABLE) once, nothing changes', async () => {
    const m = await labMachine();
    await advertise(m, { pe: { name: 'no-such-pe' } });
    const user = scriptedUser(now);
    await boot(m, { ask: user.ask });
    await boot(m, { ask: user.ask, now: at(T0 + HOUR) });
    assert.equal(existsSync(keptPaths(m.root).plan), false);
    const t = await timeline(m);
    const failures = t.filter((x) => x.messageId === 9000);
    assert.equal(failures.length, 1);
    assert.equal(failures[0]!.properties['step'], 'plan');
    assert.equal(failures[0]!.properties['code'], 'AGENT_POLICY_UNUSABLE');
  });
});

describe('client daemon: pieces', () => {
  it('poll jitter stays within ±20 %, backoff doubles from 30 s up to the poll interval', () => {
    assert.equal(
      pollDelay(900, () => 0),
      720_000,
    );
    assert.equal(
      pollDelay(900, () => 1),
      1_080_000,
    );
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6, 10].map((k) => backoffDelay(k, 900, () => 0.5)),
      [30_000, 60_000, 120_000, 240_000, 480_000, 900_000, 900_000],
    );
    assert.equal(
      backoffDelay(1, 900, () => 0),
      24_000,
    );
  });

  it("the agent's copy of the package defaults is the schema's", () => {
    assert.deepEqual(AGENT_DEFAULTS.osPaths, defaults.osPaths);
    assert.deepEqual(AGENT_DEFAULTS.keep, defaults.keep);
    assert.equal(AGENT_DEFAULTS.stateStorePath, defaults.stateStorePath);
    assert.deepEqual(AGENT_DEFAULTS.postponement, defaults.postponement);
    assert.deepEqual(AGENT_DEFAULTS.whenNoAnswer, defaults.whenNoAnswer);
    assert.equal(AGENT_DEFAULTS.countdown, defaults.countdown);
    assert.equal(AGENT_DEFAULTS.encrypt, defaults.encrypt);
    assert.equal(AGENT_DEFAULTS.retainDays, defaults.retainDays);
    assert.equal(AGENT_DEFAULTS.prestage, defaults.prestage);
    assert.equal(AGENT_DEFAULTS.requireUserPermission, defaults.requireUserPermission);
    assert.equal(AGENT_DEFAULTS.allowDecline, defaults.allowDecline);
    assert.equal(AGENT_DEFAULTS.redeploySameImage, defaults.redeploySameImage);
    assert.equal(parseDuration('2d6h'), 54 * HOUR);
    assert.equal(parseDuration('0s'), 0);
    assert.equal(parseDuration('soon'), undefined);
  });

  it('without a user interface the countdown runs out and the answer is none', async () => {
    const a = await noUserInterface(
      {
        advertisementId: 'a',
        advertisementName: 'a',
        packageName: 'p',
        packageVersion: '1',
        kind: 'start',
        countdownEndsAt: new Date(T0 + 20).toISOString(),
        buttons: { now: true, later: false, decline: false },
        whenNoAnswer: 'install',
        requireUserPermission: false,
      },
      { root: base, now: at(T0) },
    );
    assert.equal(a.choice, 'none');
  });
});
