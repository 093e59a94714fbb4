import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { answerNotification } from '../src/agent/notify.js';
import { expectedEnd, runDemo } from '../src/lab/demo.js';
import type { UserPlan } from '../src/lab/demo.js';
import { isProgressMessage } from '../src/status/messages.js';

/**
 * The fleet: 20 lab machines through the whole demo, every notification path — install now,
 * later then now, decline, no answer (the policy installs), and a package that requires
 * consent with nobody answering (nothing installs) or a user who says now. Checked by the
 * lab, not by the agents' reports: end states, the applied OS tree equals the image's, user
 * data byte-identical with the same inode numbers, GUIDs unchanged, new client version in the
 * inventory, status timelines complete and ordered.
 */

const work = fs.mkdtempSync(path.join(tmpdir(), 'reimage-lab-fleet-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

const PLANS: UserPlan[] = ['now', 'later', 'decline', 'none', 'consent-none', 'consent-now'];

/** The regular files and links below `dirs` of a tree: path → content hash (link: target). */
function listing(root: string, dirs: string[], skip: (rel: string) => boolean) {
  const out = new Map<string, string>();
  for (const d of dirs) {
    for (const e of fs.readdirSync(path.join(root, d), { recursive: true, withFileTypes: true })) {
      const abs = path.join(e.parentPath, e.name);
      const rel = path.relative(root, abs);
      if (skip(rel)) continue;
      if (e.isSymbolicLink()) out.set(rel, `-> ${fs.readlinkSync(abs)}`);
      else if (e.isFile())
        out.set(rel, createHash('sha256').update(fs.readFileSync(abs)).digest('hex'));
    }
  }
  return out;
}

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
    const agentRun = (rel: string) => rel.startsWith('usr/lib/reimage/run');
    const v2 = listing(v2Tree, ['usr', 'boot'], agentRun);
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
        // The OS the image carries is on the disk as captured (the restore writes /etc, /var
        // and /root, never /usr or /boot; the client extracts itself under usr/lib/reimage/run).
        const disk = listing(path.join(dir, 'machines', m.name, 'disk'), ['usr', 'boot'], agentRun);
        assert.deepEqual(disk, v2, `${m.name}: /usr and /boot equal the image`);
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
