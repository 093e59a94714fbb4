/**
 * Status summaries over a synthetic fleet, fed through the ingest API as machines post their
 * status: counts by state (late and repeated batches included), a machine's timeline with
 * step durations, the trends (a planted systemic failure outranks a larger site's scattered
 * failures, which raw counts rank first), rollout waves that advance at the success threshold
 * and halt at the failure threshold, live events, and the CLI. SQLite and PostgreSQL.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { before, test } from 'node:test';
import type { Advertisement } from '../src/catalog/catalog.js';
import type { Schedule } from '../src/server/routes/advertisements.js';
import { waveOf } from '../src/server/policy.js';
import { wavesOf } from '../src/server/status-service.js';
import { reimageAsync } from './cli.js';
import {
  addImage,
  createAdvertisement,
  createCollection,
  createDp,
  createEnrollmentToken,
  createPackage,
  expectStatus,
  packageFiles,
  type EnrolledMachine,
} from './support/fixtures.js';
import { forEachDatabase, type TestServer } from './support/server.js';

interface Fleet {
  [name: string]: EnrolledMachine & { site: string };
}

const T0 = Date.parse('2026-11-20T08:00:00Z');
const at = (seconds: number) => new Date(T0 + seconds * 1000).toISOString();

interface Msg {
  seq: number;
  id: number;
  time: string;
  advertisementId?: string;
  properties?: Record<string, unknown>;
}

async function post(server: TestServer, m: EnrolledMachine, messages: Msg[]) {
  const res = await server.call<{ accepted: number; duplicates: number }>(
    'POST',
    '/api/v1/client/status',
    { token: m.credential, body: { machineId: m.id, messages } },
  );
  expectStatus(res, 200, `status of ${m.machine.name}`);
  return res.body;
}

async function get<T>(server: TestServer, url: string): Promise<T> {
  const res = await server.call<T>('GET', url, { role: 'read-only' });
  expectStatus(res, 200, url);
  return res.body;
}

/** A whole successful deployment, or one that fails at `fail` with `code` (from DP `dp`). */
function run(
  ad: string,
  o: { dp: string; fail?: { code: string; step: string }; seq0?: number; t0?: number },
): Msg[] {
  const s = o.seq0 ?? 0;
  const t = o.t0 ?? 0;
  const m = (seq: number, id: number, dt: number, properties: Record<string, unknown> = {}) => ({
    seq: s + seq,
    id,
    time: at(t + dt),
    advertisementId: ad,
    properties,
  });
  const msgs = [
    m(1, 2001, 0, { countdown: '5 min' }),
    m(2, 3000, 300),
    m(3, 3002, 360, { items: 12, bytes: 4096 }),
    m(4, 4000, 420),
    m(5, 4001, 430, { dp: o.dp }),
  ];
  if (o.fail)
    return [
      ...msgs,
      m(6, 9000, 500, {
        step: o.fail.step,
        code: o.fail.code,
        message: 'failed',
        logTail: 'last lines',
      }),
    ];
  return [...msgs, m(6, 4003, 700, { image: 'x', bytes: 1 }), m(7, 5000, 800), m(8, 5003, 860)];
}

forEachDatabase('status summaries', (getServer) => {
  const fleet: Fleet = {};
  let trendsAd: Advertisement;

  before(async () => {
    const server = getServer();
    await createDp(server, { name: 'dp-lyon', site: 'lyon', boundaries: ['10.2.0.0/16'] });
    await createDp(server, { name: 'dp-paris', site: 'paris', boundaries: ['10.1.0.0/16'] });
    await createDp(server, { name: 'dp-nice', site: 'nice', boundaries: ['10.3.0.0/16'] });
    await addImage(server, 'summary-image');
    await createPackage(
      server,
      packageFiles({ name: 'summary', version: '1', image: 'summary-image' }),
    );
    const sites = { paris: 30, lyon: 10, nice: 10 };
    for (const [site, n] of Object.entries(sites)) {
      const { token } = await createEnrollmentToken(server, { uses: n, site });
      for (let i = 0; i < n; i++) {
        const name = `${site}-${String(i).padStart(2, '0')}`;
        const res = await server.call<{
          machine: EnrolledMachine['machine'];
          credential: string;
        }>('POST', '/api/v1/client/enroll', {
          token: null,
          body: {
            token,
            name,
            inventory: {
              os: 'debian',
              model: i % 2 ? 'ThinkPad T14' : 'EliteBook 840',
              diskSizeGb: i % 3 ? 256 : 512,
              ips: ['10.9.0.1'],
            },
            clientVersion: '0.1.0',
          },
        });
        expectStatus(res, 201, `enroll ${name}`);
        fleet[name] = {
          id: res.body.machine.id,
          credential: res.body.credential,
          machine: res.body.machine,
          site,
        };
      }
    }
    await createCollection(server, { name: 'everyone', rule: 'os = "debian"' });
    trendsAd = await createAdvertisement(server, {
      name: 'fleet-upgrade',
      package: 'summary@1',
      collection: 'everyone',
    });
    // lyon: its only DP serves corrupt content, 9 of 10 fail the same way.
    for (let i = 0; i < 10; i++)
      await post(
        server,
        fleet[`lyon-0${i}`]!,
        run(trendsAd.id, {
          dp: 'dp-lyon',
          ...(i < 9 ? { fail: { code: 'CONTENT_CORRUPT', step: 'apply' } } : {}),
        }),
      );
    // paris: more failures (15 of 30), from five scattered causes.
    const scattered = ['DISK_FULL', 'TIMEOUT', 'PERMISSION', 'BOOT_ENTRY', 'STATE_CAPTURE'];
    for (let i = 0; i < 30; i++)
      await post(
        server,
        fleet[`paris-${String(i).padStart(2, '0')}`]!,
        run(trendsAd.id, {
          dp: 'dp-paris',
          ...(i < 15 ? { fail: { code: scattered[i % 5]!, step: `step-${i % 5}` } } : {}),
        }),
      );
    // nice: every deployment succeeds.
    for (let i = 0; i < 10; i++)
      await post(server, fleet[`nice-0${i}`]!, run(trendsAd.id, { dp: 'dp-nice' }));
  });

  test('trends rank the planted systemic failure first; raw counts would not', async () => {
    const server = getServer();
    const t = await get<{
      attempted: number;
      failed: number;
      groups: {
        messageId: number;
        code?: string;
        attribute: string;
        value: string;
        failures: number;
        population: number;
        rate: number;
        baseline: number;
        lift: number;
        score: number;
        share: number;
        example?: { machine: string; seq: number };
      }[];
    }>(server, `/api/v1/status/trends?advertisement=${trendsAd.name}&limit=50`);
    assert.equal(t.attempted, 50);
    assert.equal(t.failed, 24);
    const top = t.groups[0]!;
    assert.equal(top.messageId, 9000);
    assert.equal(top.code, 'CONTENT_CORRUPT');
    assert.deepEqual(
      t.groups
        .slice(0, 2)
        .map((g) => `${g.attribute}=${g.value}`)
        .sort(),
      ['dp=dp-lyon', 'site=lyon'],
    );
    const lyon = t.groups.find((g) => g.attribute === 'site' && g.value === 'lyon')!;
    assert.equal(lyon.failures, 9);
    assert.equal(lyon.population, 10);
    assert.equal(lyon.rate, 0.9);
    assert.equal(lyon.baseline, 0.18);
    assert.equal(lyon.lift, 5);
    assert.equal(lyon.share, 0.375);
    assert.match(lyon.example!.machine, /^lyon-0[0-8]$/);
    assert.equal(lyon.example!.seq, 6);
    // Raw counts of failures per site put paris (15) before lyon (9).
    const perSite = new Map<string, number>();
    for (const g of t.groups.filter((x) => x.attribute === 'site'))
      perSite.set(g.value, (perSite.get(g.value) ?? 0) + g.failures);
    const byCount = [...perSite].sort((a, b) => b[1] - a[1]);
    assert.deepEqual(byCount[0], ['paris', 15]);
    assert.ok(
      lyon.score > Math.max(...t.groups.filter((g) => g.value === 'paris').map((g) => g.score)),
    );
    // The fleet view shows the same top trend.
    const fleetView = await get<{
      now: Record<string, number>;
      topTrends: { value: string; code?: string }[];
      overTime: Record<string, number | string>[];
    }>(server, '/api/v1/status/fleet');
    assert.equal(fleetView.topTrends[0]!.code, 'CONTENT_CORRUPT');
    assert.ok(fleetView.topTrends.length <= 5);
    assert.ok(fleetView.now.failed! >= 24 && fleetView.now.succeeded! >= 26);
  });

  test('an advertisement counts each state, ignores repeats and keeps late messages from moving it back', async () => {
    const server = getServer();
    const names = Object.keys(fleet).filter((n) => n.startsWith('nice-'));
    const col = await createCollection(server, {
      name: 'nice-pcs',
      include: names.map((n) => fleet[n]!.id),
    });
    const ad = await createAdvertisement(server, {
      name: 'nice-states',
      package: 'summary@1',
      collection: col.name,
    });
    const m = (i: number) => fleet[names[i]!]!;
    const A = ad.id;
    const seq0 = 100;
    const msg = (
      seq: number,
      id: number,
      dt: number,
      properties: Record<string, unknown> = {},
    ) => ({
      seq: seq0 + seq,
      id,
      time: at(3600 + dt),
      advertisementId: A,
      properties,
    });
    await post(server, m(0), [msg(1, 2001, 0, { countdown: '1 h' })]);
    await post(server, m(1), [
      msg(1, 2001, 0),
      msg(2, 2003, 10, { until: '2026-11-21T08:00:00.000Z' }),
    ]);
    await post(server, m(2), [msg(1, 2004, 20)]);
    await post(server, m(3), [msg(1, 3000, 30)]);
    await post(server, m(4), [msg(1, 3000, 30), msg(2, 4000, 40)]);
    await post(server, m(5), [msg(5, 5000, 50)]);
    // m(6): success arrives before the older messages.
    await post(server, m(6), [msg(8, 5003, 900)]);
    await post(server, m(6), [msg(1, 3000, 30), msg(2, 4000, 40)]);
    const failing = [msg(1, 3000, 30), msg(2, 9000, 60, { code: 'X', step: 'wipe', logTail: '' })];
    await post(server, m(7), failing);
    assert.deepEqual(await post(server, m(7), failing), { accepted: 0, duplicates: 2 });
    await post(server, m(8), [
      msg(1, 4000, 30),
      msg(2, 9000, 60, { code: 'Y', step: 'apply', logTail: '' }),
      msg(3, 6000, 70),
      msg(4, 6001, 80),
    ]);
    // m(9) sends nothing: waiting (it was in contact recently).
    const s = await get<{
      counts: Record<string, number>;
      postponedUntil: { machine: string; until: string }[];
      overTime: Record<string, number | string>[];
      waves: { wave: number; state: string; total: number }[];
    }>(server, `/api/v1/status/advertisements/${ad.name}/summary?bucket=5m`);
    assert.deepEqual(s.counts, {
      waiting: 1,
      notified: 1,
      postponed: 1,
      declined: 1,
      phase1: 1,
      phase2: 1,
      phase3: 1,
      succeeded: 1,
      failed: 1,
      rolledBack: 1,
      skippedSameImage: 0,
      notReachable: 0,
    });
    assert.deepEqual(s.postponedUntil, [
      { machine: names[1], machineId: m(1).id, until: '2026-11-21T08:00:00.000Z' },
    ]);
    const last = s.overTime[s.overTime.length - 1]!;
    for (const k of [
      'notified',
      'postponed',
      'phase1',
      'phase2',
      'succeeded',
      'failed',
      'rolledBack',
    ])
      assert.equal(last[k], (s.counts as Record<string, number>)[k], k);
    assert.ok(s.overTime.length >= 2, 'several 5-minute buckets');
    assert.deepEqual(s.waves, [{ wave: 1, state: 'released', succeeded: 1, failed: 2, total: 10 }]);
    // A machine out of contact for long, with nothing to say, is "not reachable".
    await server.catalogDb.db
      .updateTable('machines')
      .set({ last_contact_at: '2020-01-01T00:00:00.000Z' })
      .where('id', '=', m(9).id)
      .execute();
    const s2 = await get<{ counts: Record<string, number> }>(
      server,
      `/api/v1/status/advertisements/${ad.id}/summary`,
    );
    assert.equal(s2.counts.notReachable, 1);
    assert.equal(s2.counts.waiting, 0);
  });

  test('a machine timeline has its steps with their durations', async () => {
    const server = getServer();
    const m = fleet['nice-05']!;
    const t = await get<{
      machine: { id: string; name: string; site: string; model: string; clientVersion?: string };
      messages: { seq: number; id: number; text: string; properties: Record<string, unknown> }[];
      steps: {
        component: string;
        phase: string;
        firstSeq: number;
        lastSeq: number;
        durationMs: number;
      }[];
      state: { deployments: { advertisement: { name: string }; state: string }[]; lastSeq: number };
    }>(server, `/api/v1/status/machines/${m.machine.name}/timeline`);
    assert.deepEqual(t.machine, {
      id: m.id,
      name: 'nice-05',
      site: 'nice',
      model: 'ThinkPad T14',
      clientVersion: '0.1.0',
    });
    assert.deepEqual(
      t.steps.slice(0, 4).map((s) => [s.component, s.phase, s.firstSeq, s.lastSeq, s.durationMs]),
      [
        ['client', 'notification', 1, 1, 300_000],
        ['old-client', 'prepare', 2, 3, 120_000],
        ['pe', 'wipe-and-load', 4, 6, 380_000],
        ['new-client', 'restore', 7, 8, 60_000],
      ],
    );
    assert.equal(t.messages[4]!.text, 'Connected to distribution point dp-nice.');
    assert.deepEqual(t.state.deployments.map((d) => [d.advertisement.name, d.state]).sort(), [
      ['fleet-upgrade', 'succeeded'],
      ['nice-states', 'phase3'],
    ]);
    assert.equal(t.state.lastSeq, 105);
  });

  test('rollout waves advance at the success threshold and halt at the failure threshold', async () => {
    const server = getServer();
    const names = Object.keys(fleet)
      .filter((n) => n.startsWith('paris-'))
      .slice(0, 18);
    const col = await createCollection(server, {
      name: 'paris-wave',
      include: names.map((n) => fleet[n]!.id),
    });
    const schedule: Schedule = {
      waves: [{ machines: 6 }, { machines: 6 }, { machines: 6 }],
      successThreshold: 80,
      failureThreshold: 30,
    };
    const ad = await createAdvertisement(server, {
      name: 'paris-rollout',
      package: 'summary@1',
      collection: col.name,
      schedule,
    });
    const ids = names.map((n) => fleet[n]!.id);
    const waves = wavesOf(ad.id, schedule, ids);
    for (const id of ids) assert.equal(waves.get(id), waveOf(ad, schedule, ids, id));
    const inWave = (w: number) =>
      names.filter((n) => waves.get(fleet[n]!.id) === w).map((n) => fleet[n]!);
    const summary = () =>
      get<{
        waves: {
          wave: number;
          state: string;
          succeeded: number;
          failed: number;
          total: number;
          reason?: string;
        }[];
        halted: boolean;
      }>(server, `/api/v1/status/advertisements/${ad.name}/summary`);
    const activeWave = async () =>
      ((await get<Advertisement>(server, `/api/v1/advertisements/${ad.id}`)).schedule as Schedule)
        .activeWave ?? 1;
    const seq0 = 1000;
    // Wave 1: one failure (17% < 30%), then successes: 4 of 6 is below 80%, 5 of 6 is not.
    const w1 = inWave(1);
    assert.equal(w1.length, 6);
    await post(
      server,
      w1[0]!,
      run(ad.id, { dp: 'dp-paris', seq0, fail: { code: 'X', step: 's' } }),
    );
    for (const m of w1.slice(1, 5)) await post(server, m, run(ad.id, { dp: 'dp-paris', seq0 }));
    assert.equal(await activeWave(), 1);
    assert.equal((await summary()).waves[1]!.state, 'waiting');
    await post(server, w1[5]!, run(ad.id, { dp: 'dp-paris', seq0 }));
    assert.equal(await activeWave(), 2);
    let s = await summary();
    assert.deepEqual(
      s.waves.map((w) => [w.wave, w.state, w.succeeded, w.failed, w.total]),
      [
        [1, 'released', 5, 1, 6],
        [2, 'released', 0, 0, 6],
        [3, 'waiting', 0, 0, 6],
      ],
    );
    const policyOf = async (m: EnrolledMachine) => {
      const res = await server.call<{ advertisements: { name: string; state: string }[] }>(
        'GET',
        '/api/v1/client/policy',
        { token: m.credential },
      );
      return res.body.advertisements.find((a) => a.name === ad.name)!.state;
    };
    assert.equal(await policyOf(inWave(2)[0]!), 'active');
    // Wave 2: 2 of 6 fail (33% ≥ 30%): halted, wave 3 stays waiting.
    const w2 = inWave(2);
    await post(
      server,
      w2[0]!,
      run(ad.id, { dp: 'dp-paris', seq0, fail: { code: 'BOOT_ENTRY', step: 'boot' } }),
    );
    assert.equal((await summary()).halted, false);
    await post(
      server,
      w2[1]!,
      run(ad.id, { dp: 'dp-paris', seq0, fail: { code: 'BOOT_ENTRY', step: 'boot' } }),
    );
    s = await summary();
    assert.equal(s.halted, true);
    assert.equal(s.waves[1]!.state, 'halted');
    assert.match(
      s.waves[1]!.reason!,
      /2 of 6 machines in wave 2 failed \(33% ≥ failure threshold 30%\); most often message 9000 BOOT_ENTRY \(2\)/,
    );
    assert.equal(s.waves[2]!.state, 'waiting');
    // Successes after the halt release nothing.
    for (const m of w2.slice(2)) await post(server, m, run(ad.id, { dp: 'dp-paris', seq0 }));
    assert.equal(await activeWave(), 2);
    assert.equal(await policyOf(inWave(3)[0]!), 'waiting-for-wave');
    const audit = await server.call<{ items: { actor: string; summary: string }[] }>(
      'GET',
      '/api/v1/audit',
    );
    assert.ok(
      audit.body.items.some(
        (e) => e.actor === 'server' && /Rollout halted at wave 2/.test(e.summary),
      ),
      JSON.stringify(audit.body.items.slice(0, 5)),
    );
    // A read-only user may not resume; an operator may.
    const refused = await server.call('POST', `/api/v1/advertisements/${ad.name}/resume`, {
      role: 'read-only',
      body: {},
    });
    assert.equal(refused.status, 403);
    const resumed = await server.call<{ activeWave: number; wasHalted: boolean }>(
      'POST',
      `/api/v1/advertisements/${ad.name}/resume`,
      { role: 'operator', body: { releaseNextWave: true } },
    );
    expectStatus(resumed, 200, 'resume');
    assert.deepEqual(resumed.body, {
      advertisement: { id: ad.id, name: ad.name },
      activeWave: 3,
      wasHalted: true,
    });
    s = await summary();
    assert.equal(s.halted, false);
    assert.deepEqual(
      s.waves.map((w) => w.state),
      ['released', 'released', 'released'],
    );
    assert.equal(await policyOf(inWave(3)[0]!), 'active');
  });

  test('live events stream over SSE with the Authorization header', async () => {
    const server = getServer();
    await server.app.listen({ host: '127.0.0.1', port: 0 });
    const port = (server.app.server.address() as AddressInfo).port;
    const url = `http://127.0.0.1:${port}/api/v1/status/events?advertisement=${trendsAd.name}`;
    const unauthenticated = await fetch(url);
    assert.equal(unauthenticated.status, 401);
    await unauthenticated.body?.cancel();
    const abort = new AbortController();
    const res = await fetch(url, {
      headers: { authorization: `Bearer ${server.tokens['read-only']}` },
      signal: abort.signal,
    });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
    const reader = res.body!.getReader();
    const m = fleet['nice-09']!;
    await post(server, m, [
      { seq: 500, id: 3000, time: at(7200), advertisementId: trendsAd.id },
      { seq: 501, id: 1002, time: at(7201), properties: { advertisements: 1 } },
    ]);
    let text = '';
    while (!text.includes('"type":"summary"')) {
      const { value, done } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString();
    }
    abort.abort();
    const events = text
      .split('\n')
      .filter((l) => l.startsWith('data: '))
      .map((l) => JSON.parse(l.slice(6)) as Record<string, unknown>);
    assert.deepEqual(events, [
      {
        type: 'status',
        machine: m.id,
        machineName: 'nice-09',
        advertisement: trendsAd.id,
        id: 3000,
        seq: 500,
      },
      { type: 'summary', advertisement: trendsAd.id },
    ]);
  });

  test('the CLI prints the summaries, as text and as JSON', async () => {
    const server = getServer();
    if (!server.app.server.listening) await server.app.listen({ host: '127.0.0.1', port: 0 });
    const port = (server.app.server.address() as AddressInfo).port;
    const conn = ['--server', `http://127.0.0.1:${port}`, '--token', server.tokens['read-only']];
    const env = {
      ...process.env,
      XDG_CONFIG_HOME: server.dir,
      REIMAGE_SERVER: '',
      REIMAGE_TOKEN: '',
    };
    const ad = await runCli(['status', 'advertisement', 'nice-states', ...conn, '--json'], env);
    assert.equal(ad.status, 0, ad.stderr);
    assert.equal(ad.json.counts.rolledBack, 1);
    const adText = await runCli(['status', 'advertisement', 'paris-rollout', ...conn], env);
    assert.equal(adText.status, 0, adText.stderr);
    assert.match(adText.stdout, /^WAVE +STATE +SUCCEEDED +FAILED +TOTAL +REASON$/m);
    assert.match(adText.stdout, /^succeeded +\d+$/m);
    const machine = await runCli(['status', 'machine', 'lyon-00', ...conn], env);
    assert.equal(machine.status, 0, machine.stderr);
    assert.match(machine.stdout, /^wipe-and-load +pe +2026-11-20 08:07:00Z +80\.0 s +4-5$/m);
    assert.match(machine.stdout, /Step apply failed: CONTENT_CORRUPT: failed/);
    const trends = await runCli(
      ['status', 'trends', '--advertisement', 'fleet-upgrade', ...conn],
      env,
    );
    assert.equal(trends.status, 0, trends.stderr);
    const firstRow = trends.stdout.split('\n')[3]!;
    assert.match(
      firstRow,
      /^\d+\.\d +9000 +CONTENT_CORRUPT +(dp +dp-lyon|site +lyon) +9\/10 +90\.0% +18\.0% +5\.0x +37\.5% +lyon-0\d#6$/,
    );
    const trendsJson = await runCli(['status', 'trends', ...conn, '--json'], env);
    assert.equal(trendsJson.json.groups[0].code, 'CONTENT_CORRUPT');
    const missing = await runCli(['status', 'machine', 'no-such-pc', ...conn], env);
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /NOT_FOUND|No machine/);
  });
});

/** The CLI in a child process, without blocking the event loop the in-process server runs on. */
async function runCli(args: string[], env: NodeJS.ProcessEnv) {
  const child = reimageAsync(args, { env });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const status = await new Promise<number | null>((resolve) => child.on('close', resolve));
  let json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  if (args.includes('--json')) json = JSON.parse(stdout);
  return { status, stdout, stderr, json };
}
