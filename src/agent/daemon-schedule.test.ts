import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { PolicyAdvertisement } from '../client/agent-api.js';
import { adSchedule, notificationPolicy, planFor } from './daemon-policy.js';
import { applyAnswer, decide, MAX_RUNS, newAdRecord } from './daemon-schedule.js';
import type { AdRecord } from './daemon-schedule.js';

const T0 = Date.parse('2030-01-07T09:00:00Z');
const H = 3600_000;
const iso = (t: number) => new Date(t).toISOString();

function ad(o: Partial<PolicyAdvertisement> & { ep?: Record<string, unknown> } = {}) {
  const { ep, ...rest } = o;
  return {
    id: 'ad-1',
    name: 'desktop',
    state: 'active',
    wave: 1,
    availableFrom: null,
    deadline: null,
    package: {
      id: 'p',
      name: 'debian-13',
      version: '1',
      revision: 1,
      imageId: 'a'.repeat(64),
      definition: {},
    },
    image: null,
    pe: { imageId: 'b'.repeat(64), name: 'reimage-pe', program: '/agent.bundle' },
    settings: {},
    effectivePolicy: Object.fromEntries(
      Object.entries(ep ?? {}).map(([k, v]) => [k, { value: v, source: 'advertisement' }]),
    ),
    schedule: {},
    stateStoreKey: Buffer.alloc(32, 7).toString('base64'),
    content: [{ distributionPoint: 'dp', address: '/srv/dp', site: 'x', preference: 'site' }],
    ...rest,
  } satisfies PolicyAdvertisement;
}

const ctx = (a: PolicyAdvertisement, now = T0, appliedImageId?: string) => ({
  now,
  policy: notificationPolicy(a),
  schedule: adSchedule(a),
  ...(appliedImageId ? { appliedImageId } : {}),
});

const rec = (over: Partial<AdRecord> = {}): AdRecord => ({ ...newAdRecord('ad-1', T0), ...over });

/** A finished run of the record: started and ended at these times, with this outcome. */
const ran = (startedAt: number, endedAt: number, outcome: string, deployment = 'd') => ({
  deployment,
  startedAt: iso(startedAt),
  endedAt: iso(endedAt),
  why: 'x',
  outcome,
});

describe('decide: one advertisement at one time', () => {
  it('table of cases', () => {
    const cases: [string, PolicyAdvertisement, AdRecord, number, string][] = [
      ['fresh, no options: ask', ad(), rec(), T0, 'ask start'],
      [
        'declined: nothing',
        ad(),
        rec({ declined: { at: iso(T0), by: 'web' } }),
        T0,
        'nothing declined',
      ],
      [
        'succeeded once (rerun if-failed): nothing',
        ad(),
        rec({ runs: [{ deployment: 'd', startedAt: iso(T0), why: 'x', outcome: 'succeeded' }] }),
        T0,
        'nothing deployed',
      ],
      [
        'failed once, 15 min ago: again',
        ad(),
        rec({
          runs: [ran(T0 - H, T0 - H / 4, 'failed')],
        }),
        T0,
        'ask start',
      ],
      [
        'failed once, just now: wait (retryAfter, 15 min by default)',
        ad(),
        rec({
          runs: [ran(T0 - H, T0, 'failed')],
        }),
        T0 + H / 4 - 1,
        'wait retry-later',
      ],
      [
        'failed twice, the last 20 min ago: the wait doubled to 30 min',
        ad(),
        rec({
          runs: [
            ran(T0 - 3 * H, T0 - 2 * H, 'failed'),
            ran(T0 - H, T0 - H / 3, 'rolled-back', 'e'),
          ],
        }),
        T0,
        'wait retry-later',
      ],
      [
        'retryAfter 0s: again at once',
        ad({ schedule: { retryAfter: '0s' } }),
        rec({
          runs: [ran(T0 - H, T0, 'failed')],
        }),
        T0,
        'ask start',
      ],
      [
        `failed ${MAX_RUNS} times: nothing`,
        ad(),
        rec({
          runs: Array.from({ length: MAX_RUNS }, () => ({
            deployment: 'd',
            startedAt: iso(T0),
            why: 'x',
            outcome: 'rolled-back',
          })),
        }),
        T0,
        'nothing failed-too-often',
      ],
      [
        'rerun never after a failure: nothing',
        ad({ schedule: { rerun: 'never' } }),
        rec({ runs: [{ deployment: 'd', startedAt: iso(T0), why: 'x', outcome: 'failed' }] }),
        T0,
        'nothing deployed',
      ],
      [
        'waiting for its wave',
        ad({ state: 'waiting-for-wave' }),
        rec(),
        T0,
        'wait waiting-for-wave',
      ],
      ['available later', ad({ availableFrom: iso(T0 + H) }), rec(), T0, 'wait not-yet-available'],
      [
        'deadline passed: start',
        ad({ deadline: iso(T0 - H) }),
        rec({ postponedUntil: iso(T0 + H) }),
        T0,
        'start deadline',
      ],
      [
        'deadline passed but permission required: still ask',
        ad({ deadline: iso(T0 - H), ep: { requireUserPermission: true } }),
        rec(),
        T0,
        'ask start',
      ],
      [
        'deadline passed outside the windows: wait for the window',
        ad({
          deadline: iso(T0 - H),
          schedule: { maintenanceWindows: [{ from: '00:00', to: '00:01' }] },
        }),
        rec(),
        T0,
        'wait maintenance-window',
      ],
      ['postponed: wait', ad(), rec({ postponedUntil: iso(T0 + H) }), T0, 'wait postponed'],
      [
        'postponed past the deadline: the deadline wins',
        ad({ deadline: iso(T0 + H) }),
        rec({ postponedUntil: iso(T0 + 5 * H) }),
        T0 + 2 * H,
        'start deadline',
      ],
      [
        '"install now" on the advance notice: start now, without asking again',
        ad({ ep: { preNotification: '1h' } }),
        rec({
          preNotified: { at: iso(T0), startsAt: iso(T0 + H) },
          consentedAt: iso(T0),
        }),
        T0 + 1000,
        'start consented',
      ],
    ];
    for (const [name, a, r, now, want] of cases) {
      const d = decide(a, r, ctx(a, now));
      const got = `${d.do} ${'why' in d ? d.why : d.do === 'ask' ? d.request.kind : ''}`.trim();
      assert.equal(got, want, name);
    }
  });

  it('the same image: skipped, unless redeploySameImage', () => {
    const a = ad();
    assert.equal(decide(a, rec(), ctx(a, T0, a.package.imageId)).do, 'skip-same-image');
    const again = ad({ settings: { options: { redeploySameImage: true } } });
    assert.equal(decide(again, rec(), ctx(again, T0, a.package.imageId)).do, 'ask');
  });

  it('buttons and the latest "later" follow the budget and the deadline', () => {
    const a = ad({
      deadline: iso(T0 + 10 * H),
      ep: { allowDecline: true, postponementMaximum: '1d' },
    });
    const d = decide(a, rec({ postponedMs: 20 * H }), ctx(a));
    assert.ok(d.do === 'ask');
    assert.deepEqual(d.request.buttons, { now: true, later: true, decline: true });
    assert.equal(d.request.laterUntilMax, iso(T0 + 4 * H), 'budget left: 4 h');
    assert.equal(d.request.countdownEndsAt, iso(T0 + 15 * 60_000));
    const e = decide(a, rec(), ctx(a));
    assert.ok(e.do === 'ask');
    assert.equal(e.request.laterUntilMax, iso(T0 + 10 * H), 'not past the deadline');
    const spent = decide(a, rec({ postponedMs: 24 * H }), ctx(a));
    assert.ok(spent.do === 'ask');
    assert.equal(spent.request.buttons.later, false);
  });

  it('a failed run waits retryAfter, doubled per failure, from the time it ended', () => {
    const failed = (n: number, endedAt: number) =>
      rec({
        runs: Array.from({ length: n }, (_, i) => ({
          deployment: `d${i}`,
          startedAt: iso(endedAt - (n - i) * H),
          endedAt: iso(i === n - 1 ? endedAt : endedAt - (n - i) * H + 1),
          why: 'x',
          outcome: 'failed',
        })),
      });
    const a = ad({ schedule: { retryAfter: '1h' } });
    assert.deepEqual(decide(a, failed(1, T0), ctx(a, T0)), {
      do: 'wait',
      why: 'retry-later',
      until: T0 + H,
    });
    assert.equal(decide(a, failed(1, T0), ctx(a, T0 + H)).do, 'ask');
    assert.deepEqual(decide(a, failed(2, T0), ctx(a, T0 + H)), {
      do: 'wait',
      why: 'retry-later',
      until: T0 + 2 * H,
    });
    // a success in between is not a failure: "always" runs again at once after it
    const always = ad({ schedule: { rerun: 'always' } });
    const ok = rec({
      runs: [
        { deployment: 'd', startedAt: iso(T0), endedAt: iso(T0), why: 'x', outcome: 'succeeded' },
      ],
    });
    assert.equal(decide(always, ok, ctx(always, T0)).do, 'ask');
    assert.throws(
      () => adSchedule(ad({ schedule: { retryAfter: 'soon' } })),
      /schedule.retryAfter "soon" is not a duration/,
    );
  });

  it('no answer: install, decline, postpone within the budget, and never install with permission required', () => {
    const poll = 15 * 60_000;
    const answer = { choice: 'none' as const, at: iso(T0) };
    const run = (ep: Record<string, unknown>, r = rec()) => {
      const a = ad({ ep });
      const d = decide(a, r, ctx(a));
      assert.ok(d.do === 'ask');
      return applyAnswer(d.request, answer, r, notificationPolicy(a), T0, poll);
    };
    assert.equal(run({ whenNoAnswer: 'install' }).start, true);
    const declined = run({ whenNoAnswer: 'decline' });
    assert.equal(declined.start, false);
    assert.equal(declined.record.declined?.by, 'policy');
    const postponed = run({ whenNoAnswer: 'postpone', countdown: '1h' });
    assert.equal(postponed.record.postponedUntil, iso(T0 + H));
    assert.equal(postponed.record.postponedMs, H);
    const spent = run(
      { whenNoAnswer: 'postpone', postponementMaximum: '1h' },
      rec({ postponedMs: H }),
    );
    assert.equal(spent.start, true, 'budget spent, no permission needed: install');
    const permission = run(
      { whenNoAnswer: 'install', requireUserPermission: true, postponementMaximum: '1h' },
      rec({ postponedMs: H }),
    );
    assert.equal(permission.start, false, 'permission required: never without a yes');
    assert.equal(permission.record.postponedUntil, iso(T0 + poll));
  });
});

describe('planFor', () => {
  it('keeps a state store that an OS path holds, and refuses a share or a missing PE', () => {
    const a = ad({ settings: { stateStore: { type: 'local', path: '/var/cache/state' } } });
    const { plan, stateKey } = planFor(a, 'ad-1-1');
    assert.ok(plan.wipe.keep.includes('/var/cache/state'));
    assert.equal(stateKey?.length, 32);
    assert.equal(plan.newClient.program, '/usr/lib/reimage/agent.bundle');
    assert.throws(
      () => planFor(ad({ settings: { stateStore: { type: 'share' } } }), 'x'),
      /type local/,
    );
    assert.throws(() => planFor(ad({ pe: null }), 'x'), /no PE image/);
    const plain = planFor(ad({ settings: { stateStore: { type: 'local', encrypt: false } } }), 'x');
    assert.equal(plain.stateKey, undefined);
  });

  it('a bad field of the policy is refused with AGENT_POLICY_UNUSABLE', () => {
    assert.throws(
      () => notificationPolicy(ad({ ep: { countdown: 'soon' } })),
      (e: unknown) => (e as { code?: string }).code === 'AGENT_POLICY_UNUSABLE',
    );
    assert.throws(
      () => adSchedule(ad({ schedule: { maintenanceWindows: [{ from: '25:00', to: '01:00' }] } })),
      (e: unknown) => (e as { code?: string }).code === 'AGENT_POLICY_UNUSABLE',
    );
  });
});
