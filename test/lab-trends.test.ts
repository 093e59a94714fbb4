import assert from 'node:assert/strict';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { answerNotification } from '../src/agent/notify.js';
import { runDemo, type DemoResult, type MachineFault } from '../src/lab/demo.js';

/**
 * A planted systemic failure in the lab, found by the trends view (issue 8): site lyon's only
 * DP serves corrupt content, so its 4 machines really fail to fetch; the larger site paris has
 * more failures in absolute numbers (6 of 13) from scattered causes — a small disk, machines of
 * another architecture, machines running another OS. Ranking by raw counts puts paris first;
 * the trends view must put lyon (or its DP) first. The advertisement's first wave holds all
 * machines but one; the failure threshold (25 %) halts the rollout, and the last machine is
 * held: it never starts. Every machine keeps its user data, by the lab's own hashes.
 */

const work = fs.mkdtempSync(path.join(tmpdir(), 'reimage-lab-trends-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

/*
 * Which machine the halted wave holds is the rollout's order (a hash of advertisement and
 * machine ids): any of them. So lyon has 4 machines (at least 3 failures, a trends group,
 * even when one is held) and paris 6 faulty ones (at least 5 failures, more than lyon's 4).
 */
const LYON = 4;
const MACHINES = 17;
/** Faults of the paris machines, by machine index (0-3 are lyon's). */
const FAULTS: Record<number, MachineFault> = {
  5: 'small-disk',
  7: 'wrong-arch',
  9: 'wrong-os',
  11: 'wrong-arch',
  13: 'wrong-os',
  15: 'small-disk',
};

interface TrendGroup {
  messageId: number;
  code?: string;
  attribute: string;
  value: string;
  failures: number;
  population: number;
  score: number;
}
interface Summary {
  halted: boolean;
  haltReason?: string;
  waves: Array<{ wave: number; state: string; failed: number; total: number }>;
}

describe('a planted systemic failure in the lab', () => {
  it('ranks the site whose DP serves corrupt content first, though another site fails more often; the wave halts', async () => {
    let trends: { attempted: number; failed: number; groups: TrendGroup[] } | undefined;
    let summary: Summary | undefined;
    const timelines = new Map<
      string,
      Array<{ messageId: number; properties: Record<string, unknown> }>
    >();
    const r: DemoResult = await runDemo({
      dir: path.join(work, 'demo'),
      machines: MACHINES,
      users: 1,
      siteOf: (i) => (i < LYON ? 'lyon' : 'paris'),
      siteFaults: { lyon: 'corrupt-dp' },
      machineFaults: (i) => FAULTS[i],
      plan: () => 'now',
      // One run per machine: the raw counts and trends are of first runs (a failed machine
      // would run again after schedule.retryAfter, 15 min by default, long after the test).
      rollout: {
        waves: [{ machines: MACHINES - 1 }, { percent: 100 }],
        failureThreshold: 25,
        rerun: 'never',
      },
      countdownSeconds: 8,
      answer: answerNotification,
      timeoutMs: 12 * 60_000,
      afterRun: async (lab) => {
        trends = await lab.api.request(
          'GET',
          '/api/v1/status/trends?advertisement=lab-desktop-rollout&limit=50',
        );
        summary = await lab.api.request(
          'GET',
          '/api/v1/status/advertisements/lab-desktop-rollout/summary',
        );
        for (const m of lab.machines.map((x) => x.name)) {
          const { items } = await lab.api.request<{
            items: Array<{ messageId: number; properties: Record<string, unknown> }>;
          }>('GET', `/api/v1/machines/${encodeURIComponent(m)}/timeline`);
          timelines.set(m, items);
        }
      },
    });
    const report = JSON.stringify(
      r.machines.map((m) => [m.name, m.fault ?? '-', m.endState, m.statusMessages]),
    );
    assert.ok(trends && summary, 'afterRun ran');

    // Exactly one machine is held by the halted wave; every other ends by its fault.
    const held = r.machines.filter((m) => m.endState === 'held');
    assert.equal(held.length, 1, report);
    for (const m of r.machines) {
      assert.equal(m.userDataIntact, true, `${m.name}: user data intact (${report})`);
      if (m.endState === 'held') {
        assert.equal(m.imageId, r.images.v1, `${m.name} was not touched`);
        continue;
      }
      assert.equal(m.endState, m.fault ? 'failed' : 'installed', `${m.name}: ${report}`);
      if (m.endState === 'installed') assert.equal(m.imageId, r.images.v2, report);
      else assert.equal(m.imageId, r.images.v1, `${m.name} still runs v1`);
    }

    // The halt: wave 1 crossed the failure threshold, wave 2 never released, with the reason.
    assert.equal(summary.halted, true, JSON.stringify(summary));
    assert.match(summary.haltReason ?? '', /failure threshold 25%/);
    assert.equal(summary.waves[1]?.state, 'waiting', JSON.stringify(summary.waves));

    // Raw counts get it wrong: paris has more failures than lyon.
    const failedAt = (site: string) =>
      r.machines.filter((m) => m.site === site && m.endState === 'failed').length;
    assert.ok(
      failedAt('paris') > failedAt('lyon'),
      `paris ${failedAt('paris')}, lyon ${failedAt('lyon')}`,
    );
    // The same raw count from the server's timelines: machines with an error, by site.
    const byRawCount: Record<string, number> = {};
    const codes: Record<string, string[]> = {};
    for (const m of r.machines) {
      const errors = (timelines.get(m.name) ?? []).filter((i) => i.messageId === 9000);
      if (errors.length === 0) continue;
      byRawCount[m.site] = (byRawCount[m.site] ?? 0) + 1;
      codes[m.name] = errors.map((e) => String(e.properties['code']));
    }
    assert.ok(
      (byRawCount['paris'] ?? 0) > (byRawCount['lyon'] ?? 0),
      `${JSON.stringify(byRawCount)} ${JSON.stringify(codes)}`,
    );
    console.log(
      `trends (first 4 of ${trends.groups.length}): ` +
        trends.groups
          .slice(0, 4)
          .map(
            (g) =>
              `${g.attribute}=${g.value} ${g.code ?? g.messageId} ${g.failures}/${g.population} G=${g.score.toFixed(1)}`,
          )
          .join('; ') +
        `; failures by site: ${JSON.stringify(byRawCount)}; codes ${JSON.stringify(codes)}; halt: ${summary.haltReason}; ${r.seconds.toFixed(0)} s`,
    );
    // The trends view does not: its first group is lyon or lyon's DP, for the fetch failure.
    const top = trends.groups[0]!;
    const text = JSON.stringify(trends.groups.slice(0, 5), null, 1);
    assert.ok(
      (top.attribute === 'site' && top.value === 'lyon') ||
        (top.attribute === 'dp' && top.value === 'dp-lyon'),
      `top trend: ${text}`,
    );
    assert.equal(top.failures, failedAt('lyon'), text);
    assert.equal(top.population, top.failures, `every attempted deployment there failed: ${text}`);
    const second = trends.groups[1]!;
    assert.ok(
      [top, second].some((g) => g.attribute === 'dp' && g.value === 'dp-lyon'),
      `the DP is named among the first two: ${text}`,
    );

    // The lyon machines really failed to fetch: their error names the corrupt DP.
    for (const m of r.machines.filter((x) => x.site === 'lyon' && x.endState === 'failed')) {
      const items = timelines.get(m.name) ?? [];
      const error = items.find((i) => i.messageId === 9000);
      assert.ok(error, `${m.name} reported an error`);
      const p = error.properties;
      assert.equal(p['dp'], 'dp-lyon', `${m.name}: ${JSON.stringify(p)}`);
      assert.equal(p['code'], top.code, JSON.stringify(p));
      assert.equal(p['step'], 'prestage', JSON.stringify(p));
      // The log tail: what the old client did last, up to the failure.
      assert.match(String(p['logTail']), /step prestage[\s\S]*failed/, JSON.stringify(p));
    }
    // Every error of the fleet carries its code, step and log tail.
    for (const [name, items] of timelines)
      for (const e of items.filter((i) => i.messageId === 9000))
        for (const k of ['code', 'step', 'logTail'])
          assert.ok(
            e.properties[k],
            `${name}: error without ${k}: ${JSON.stringify(e.properties)}`,
          );
  });
});
