import assert from 'node:assert/strict';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { answerNotification } from '../src/agent/notify.js';
import { expectedEnd, prepareDemo, runDemo } from '../src/lab/demo.js';
import type { DemoLab, UserPlan } from '../src/lab/demo.js';
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
 * ordered. One machine is deployed from an opaque package (v2 exported as tar.zst, stored as
 * is) and one serverless (its advertisement published to a signed folder, its status imported
 * from the drop folder): both checked like the rest, and for how they got there.
 */

const work = fs.mkdtempSync(path.join(tmpdir(), 'reimage-lab-fleet-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

const PLANS: UserPlan[] = ['now', 'later', 'decline', 'none', 'consent-none', 'consent-now'];
/** Machine 6 ('now') deploys the opaque package; machine 13 ('later', then now) is serverless. */
const OPAQUE = 6;
const SERVERLESS = 13;

interface Item {
  seq: number;
  messageId: number;
  advertisementId?: string | null;
  properties: Record<string, unknown>;
}
/** What the server shows of the opaque and the serverless machine, read before it stops. */
interface Seen {
  opaqueTimeline: Item[];
  serverlessMachine: { id: string; name: string; site: string | null; tags: string[] };
  serverlessTimeline: Item[];
  mainMembers: string[];
  opaqueMembers: string[];
  advertisements: Record<string, string>;
}

/** Whether `ids` holds `want` in this order (other messages may come between). */
function inOrder(ids: number[], want: number[]): boolean {
  let i = 0;
  for (const id of ids) if (id === want[i]) i++;
  return i === want.length;
}

describe('lab fleet', () => {
  it('opaque and serverless indexes out of range, in both, or with a consent plan: refused, nothing made', async () => {
    const dir = path.join(work, 'refused');
    for (const [o, re] of [
      [{ opaque: [3] }, /opaque machine 3 is not one of 0-2/],
      [{ serverless: [-1] }, /serverless machine -1 is not one of 0-2/],
      [{ opaque: [1], serverless: [1] }, /machine 1 cannot be opaque and serverless/],
      [{ serverless: [2], plan: () => 'consent-now' as const }, /plan consent-now/],
    ] as const) {
      await assert.rejects(
        prepareDemo({ dir, machines: 3, ...o }),
        (e: Error & { code?: string }) => e.code === 'INVALID_ARGUMENT' && re.test(e.message),
      );
      assert.equal(fs.existsSync(dir), false, 'nothing made');
    }
  });

  it('20 machines, every notification path, to their end states; the lab checks trees, data, GUIDs and timelines', async () => {
    const dir = path.join(work, 'fleet');
    let seen: Seen | undefined;
    const r = await runDemo({
      dir,
      machines: 20,
      plan: (i) => PLANS[i % PLANS.length]!,
      opaque: [OPAQUE],
      serverless: [SERVERLESS],
      countdownSeconds: 8,
      laterSeconds: 4,
      answer: answerNotification,
      timeoutMs: 25 * 60_000,
      afterRun: async (lab: DemoLab, res) => {
        const get = <T>(p: string) => lab.api.request<T>('GET', p);
        const id = (i: number) => res.machines[i]!.guid!;
        const timeline = async (i: number) =>
          (await get<{ items: Item[] }>(`/api/v1/machines/${id(i)}/timeline`)).items;
        const members = async (c: string) =>
          (await get<{ items: { name: string }[] }>(`/api/v1/collections/${c}/members`)).items.map(
            (m) => m.name,
          );
        const ads = await get<{ items: { id: string; name: string }[] }>('/api/v1/advertisements');
        seen = {
          opaqueTimeline: await timeline(OPAQUE),
          serverlessMachine: await get(`/api/v1/machines/${id(SERVERLESS)}`),
          serverlessTimeline: await timeline(SERVERLESS),
          mainMembers: await members('lab-machines'),
          opaqueMembers: await members('lab-opaque'),
          advertisements: Object.fromEntries(ads.items.map((a) => [a.id, a.name])),
        };
      },
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
      // A serverless machine never enrolls: its first message is its inventory summary.
      if (m.via === 'serverless') assert.ok(!ids.includes(1000) && ids[0] === 1001, report(m));
      else assert.ok(ids.includes(1000), `${m.name}: enrolled`);
      assert.ok(!ids.includes(9000) && !ids.includes(6000), report(m));
      if (m.endState === 'installed') {
        assert.equal(
          m.expectedImageId,
          m.via === 'opaque' ? r.images.opaque : r.images.v2,
          report(m),
        );
        assert.equal(m.imageId, m.expectedImageId, report(m));
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
        const found = findRestoreReport(disk, m.expectedImageId);
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

    // The opaque machine: its own package of the opaque copy of v2, the same tree on disk.
    const opaque = r.machines[OPAQUE]!;
    const serverless = r.machines[SERVERLESS]!;
    assert.deepEqual(
      r.machines.filter((m) => m.via !== 'server').map((m) => [m.name, m.via]),
      [
        [opaque.name, 'opaque'],
        [serverless.name, 'serverless'],
      ],
    );
    assert.ok(seen, 'the server was read before it stopped');
    assert.ok(r.images.opaque && r.images.opaque !== r.images.v2, JSON.stringify(r.images));
    assert.equal(opaque.endState, 'installed', report(opaque));
    const received = seen.opaqueTimeline.find((i) => i.messageId === 2000);
    assert.equal(received?.properties['package'], 'lab-desktop-opaque@2.0');
    assert.equal(seen.advertisements[received.advertisementId!], 'lab-desktop-opaque-rollout');
    const applied = seen.opaqueTimeline.find((i) => i.messageId === 4003);
    assert.equal(applied?.properties['image'], r.images.opaque, 'applied from the opaque image');
    assert.equal(applied.properties['reusedFiles'], 0, 'an opaque image reuses nothing');
    assert.deepEqual(seen.opaqueMembers, [opaque.name]);
    assert.ok(!seen.mainMembers.includes(opaque.name), 'not in the main collection');
    assert.equal(seen.mainMembers.length, 20 - 2 - 2 * 3, seen.mainMembers.join(' '));

    // The serverless machine: recorded by the import (no site, tag serverless), its timeline the
    // drop files', message for message, from the published advertisement.
    assert.equal(serverless.endState, 'installed', report(serverless));
    assert.equal(seen.serverlessMachine.name, serverless.name);
    assert.equal(seen.serverlessMachine.site, null);
    assert.deepEqual(seen.serverlessMachine.tags, ['serverless']);
    assert.ok(!seen.mainMembers.includes(serverless.name), 'not in the main collection');
    const sl = seen.serverlessTimeline;
    assert.equal(
      seen.advertisements[sl.find((i) => i.messageId === 2000)!.advertisementId!],
      'lab-desktop-serverless',
    );
    assert.ok(sl.filter((i) => i.messageId === 2003).length >= 1, 'the user postponed once');
    const drop = path.join(dir, 'share/status');
    const imported = path.join(drop, '.imported', serverless.guid!);
    const files = fs.readdirSync(imported);
    assert.ok(files.length > 3, files.join(' '));
    assert.deepEqual(
      fs.readdirSync(path.join(drop, serverless.guid!)),
      [],
      'every drop file imported',
    );
    assert.ok(!fs.existsSync(path.join(drop, '.rejected')), 'no drop file rejected');
    const dropped = files
      .flatMap(
        (f) =>
          (
            JSON.parse(fs.readFileSync(path.join(imported, f), 'utf8')) as {
              messages: { seq: number; id: number }[];
            }
          ).messages,
      )
      .sort((a, b) => a.seq - b.seq);
    assert.deepEqual(
      [...new Map(dropped.map((x) => [x.seq, x.id])).entries()],
      sl.map((i) => [i.seq, i.messageId]),
      'the timeline is the drop files, message for message',
    );
  });
});
