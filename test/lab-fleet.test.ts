import assert from 'node:assert/strict';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { answerNotification } from '../src/agent/notify.js';
import { expectedEnd, runDemo } from '../src/lab/demo.js';
import type { UserPlan } from '../src/lab/demo.js';
import { compareOsTree, findRestoreReport, osTreeExceptions } from '../src/lab/os-tree.js';
import { defaults } from '../src/package/schema.js';
import { isProgressMessage } from '../src/status/messages.js';

/**
 * The fleet: 20 lab machines through the whole demo, every notification path — install now,
 * later then now, decline, no answer (the policy installs), and a package that requires
 * consent with nobody answering (nothing installs) or a user who says now. Checked by the
 * lab, not by the agents' reports: end states, the applied OS tree equals the image's (the
 * whole disk, both ways, but for the paths the restore report names and the exceptions of
 * osTreeExceptions in src/lab/os-tree.ts), user data byte-identical with the same inode
 * numbers, GUIDs unchanged, new client version in the inventory, status timelines complete and
 * ordered.
 */

const work = fs.mkdtempSync(path.join(tmpdir(), 'reimage-lab-fleet-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

const PLANS: UserPlan[] = ['now', 'later', 'decline', 'none', 'consent-none', 'consent-now'];

/** Whether `ids` holds `want` in this order (other messages may come between). */
function inOrder(ids: number[], want: number[]): boolean {
  let i = 0;
  for (const id of ids) if (id === want[i]) i++;
  return i === want.length;
}

describe('lab fleet', () => {
  it('20 machines, every notification path, to their end states; the lab checks trees, data, GUIDs and timelines', async () => {
    const dir = path.join(work, 'fleet');
    const r = await runDemo({
      dir,
      machines: 20,
      plan: (i) => PLANS[i % PLANS.length]!,
      countdownSeconds: 8,
      laterSeconds: 4,
      answer: answerNotification,
      timeoutMs: 25 * 60_000,
    });
    const report = (m: unknown) => JSON.stringify(m, null, 2);
    assert.equal(r.machines.length, 20);
    assert.deepEqual(
      new Set(r.machines.map((m) => m.plan)),
      new Set(PLANS),
      'every notification path is taken',
    );
    // One machine per name at the server, each with the GUID its disk holds: none enrolled twice.
    const guids = r.machines.map((m) => m.guid);
    assert.equal(new Set(guids).size, 20);

    const v2Tree = path.join(dir, 'trees/model-v2');
    // The demo's packages use the default wipe policy (what is OS, what stays).
    const wipe = { osPaths: defaults.osPaths, keep: defaults.keep };
    for (const m of r.machines) {
      assert.equal(m.endState, expectedEnd(m.plan), report(m));
      assert.equal(m.userDataIntact, true, report(m));
      assert.equal(m.userData.moved, 0, `${m.name}: user data stayed in place (same inodes)`);
      assert.ok(m.userData.files > 100, report(m));
      assert.ok(m.guid !== null && m.diskGuid === m.guid, `${m.name}: GUID unchanged`);
      const seqs = m.timeline.map((e) => e.seq);
      assert.deepEqual(
        seqs,
        seqs.map((_, i) => i + 1),
        `${m.name}: one timeline, continuous`,
      );
      const ids = m.timeline.map((e) => e.id).filter((id) => !isProgressMessage(id));
      assert.ok(ids.includes(1000), `${m.name}: enrolled`);
      assert.ok(!ids.includes(9000) && !ids.includes(6000), report(m));
      if (m.endState === 'installed') {
        assert.equal(m.imageId, r.images.v2, report(m));
        assert.equal(m.clientVersion, r.versions.new, report(m));
        assert.ok(
          inOrder(
            ids,
            [3000, 3001, 3002, 3003, 4000, 4001, 4002, 4003, 4004, 5000, 5001, 5002, 5003],
          ),
          `${m.name}: every step reported, in order: ${ids.join(' ')}`,
        );
        // The applied tree equals the image except the paths listed in the restore report the
        // deployment left in the disk's history: the lab compares the two trees itself, the
        // agent's word is only the list of paths it wrote.
        const disk = path.join(dir, 'machines', m.name, 'disk');
        const found = findRestoreReport(disk, r.images.v2);
        assert.ok(found, `${m.name}: a restore report in /.reimage/history`);
        assert.equal(found.path, m.restoreReport, report(m));
        assert.ok(found.report.written.includes('etc/passwd'), `${m.name}: accounts merged`);
        assert.ok(
          !found.report.written.some((p) => p.startsWith('usr/') || p.startsWith('boot/')),
          `${m.name}: the restore writes nothing in /usr or /boot`,
        );
        const d = compareOsTree(disk, v2Tree, osTreeExceptions(wipe, found.report));
        assert.deepEqual(
          { missing: d.missing, added: d.added, changed: d.changed },
          { missing: [], added: [], changed: [] },
          `${m.name}: the whole OS tree equals the image but for the report's paths`,
        );
        assert.ok(d.compared > 300, `${m.name}: ${d.compared} paths of the image compared`);
        assert.deepEqual(m.osTree, d, `${m.name}: the demo agrees`);
      } else {
        assert.equal(m.imageId, r.images.v1, report(m));
        assert.equal(m.clientVersion, r.versions.old, report(m));
        assert.ok(!ids.includes(3000), `${m.name}: nothing installed`);
        if (m.plan === 'decline') assert.ok(ids.includes(2004), report(m));
        else assert.ok(ids.filter((id) => id === 2005).length >= 2, report(m));
      }
    }
    assert.equal(r.ok, true);
  });
});
