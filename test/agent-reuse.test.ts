import assert from 'node:assert/strict';
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  rmSync,
  writeSync,
  closeSync,
  chmodSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { keptPaths, startDeployment } from '../src/agent/deploy.js';
import { ContentStore } from '../src/content/store.js';
import { applyImage, estimateApply } from '../src/image/apply.js';
import { dataSnapshot, makeLabMachine, makePlan } from './support/deploy.js';
import type { DeployFixture } from './support/deploy.js';
import { diffListings, independentListing } from './support/listing.js';
import {
  bootUntilDone,
  captureUpgrade,
  copyOs,
  osListing,
  outboxMessages,
  reusableFiles,
  upgradeOs,
} from './support/reuse.js';
import type { Upgrade } from './support/reuse.js';

/**
 * Phase 2 reuses the old OS's identical files by hard link (docs/deploy-performance.md): the
 * applied tree must still equal the image, the count must be right, and a rollback must give
 * the old OS back byte for byte even when the new OS changed a shared file in place.
 */

const base = mkdtempSync(join(tmpdir(), 'reimage-reuse-'));
after(() => rmSync(base, { recursive: true, force: true }));

let f: DeployFixture;
let v2: string;
let up: Upgrade;
const SEED = 41;

before(async () => {
  // The new OS is the next version of the very OS the lab machines of seed SEED carry.
  const model = join(base, 'model');
  await makeLabMachine(model, SEED);
  v2 = join(base, 'v2');
  copyOs(join(model, 'disk'), v2);
  up = upgradeOs(v2, '// os 2.0.0\n');
  f = await captureUpgrade(base, v2, '// pe 2.0.0\n');
});

let n = 0;
async function labMachine() {
  const dir = join(base, `m${++n}`);
  const facts = await makeLabMachine(dir, SEED);
  return { dir, root: join(dir, 'disk'), facts };
}

const reusedInOs = (root: string) =>
  reusableFiles(v2, root).filter(
    (r) => r !== 'var/lib/reimage' && !r.startsWith('var/lib/reimage/'),
  );

describe('apply reusing the old OS files', () => {
  it('hard-links exactly the identical files; the applied tree equals the image once the old OS is gone', async () => {
    const { root } = await labMachine();
    const expected = reusedInOs(root);
    assert.ok(expected.length > 100, `the upgrade keeps most files (${expected.length})`);
    const store = ContentStore.open(f.dp);
    const est = estimateApply({ store, image: f.imageId, reuse: { root } });
    const target = join(root, '.reimage/new-os');
    mkdirSync(join(root, '.reimage'));
    const r = await applyImage({ store, image: f.imageId, target, reuse: { root } });
    assert.equal(r.reused.files, expected.length);
    assert.equal(est.reusableFiles, expected.length, 'the estimate foresees the same files');
    const sizes = expected.reduce((a, p) => a + lstatSync(join(root, p)).size, 0);
    assert.equal(r.reused.bytes, sizes);
    for (const p of expected.slice(0, 50))
      assert.equal(lstatSync(join(target, p)).ino, lstatSync(join(root, p)).ino, p);
    for (const p of up.changed.slice(0, 20))
      assert.notEqual(lstatSync(join(target, p)).ino, lstatSync(join(root, p)).ino, p);
    // The old OS goes away after a success: what remains is exactly the image's tree.
    for (const top of readdirSync(root))
      if (top !== '.reimage') rmSync(join(root, top), { recursive: true });
    const d = diffListings(
      independentListing(v2, { ignoreRoot: true }),
      independentListing(target, { ignoreRoot: true }),
      ['image', 'applied'],
    );
    assert.equal(d, '', d);
  });

  it('without reuse nothing is linked, and files the filter leaves out are written', async () => {
    const { root } = await labMachine();
    const store = ContentStore.open(f.dp);
    const target = join(root, '.reimage/new-os');
    mkdirSync(join(root, '.reimage'));
    const expected = reusedInOs(root).filter((p) => !p.startsWith('usr/'));
    assert.ok(expected.length > 10);
    const r = await applyImage({
      store,
      image: f.imageId,
      target,
      reuse: { root, include: (rel) => !rel.startsWith('usr/') },
    });
    assert.equal(r.reused.files, expected.length);
    rmSync(target, { recursive: true });
    const plain = await applyImage({ store, image: f.imageId, target });
    assert.deepEqual(plain.reused, { files: 0, bytes: 0 });
  });
});

describe('deployment with reuse', () => {
  it('phase 2 reports the reused files (4003); the deployment succeeds, data intact', async () => {
    const { dir, root, facts } = await labMachine();
    const data = dataSnapshot(root, facts);
    startDeployment(root, makePlan(f, `r${n}`));
    let expected = -1;
    const { outcome, log } = await bootUntilDone(dir, {
      // As the PE starts: the files phase 1 captured by hard link into the state store have
      // two names now, and are not reused.
      beforeBoot: (i) => {
        if (i === 1) expected = reusedInOs(root).length;
      },
    });
    assert.ok(expected > 100);
    assert.equal(outcome, 'succeeded', log.join('\n'));
    const applied = outboxMessages(root).find((m) => m.id === 4003)!;
    assert.equal(applied.properties?.['reusedFiles'], expected);
    assert.ok((applied.properties?.['reusedBytes'] as number) > 0);
    assert.deepEqual(dataSnapshot(root, facts), data);
  });

  it('a rollback after reuse gives the old OS back byte for byte, even after the new OS changed shared files in place', async () => {
    const { dir, root, facts } = await labMachine();
    const before = osListing(root);
    const data = dataSnapshot(root, facts);
    const shared = reusedInOs(root).filter((p) => p.startsWith('usr/'));
    const [edited, chmodded] = [shared[0]!, shared[1]!];
    startDeployment(root, makePlan(f, `r${n}`));
    const { outcome, roles, log } = await bootUntilDone(dir, {
      beforeBoot: (i) => {
        if (i !== 2) return;
        // The new OS runs: it writes into one reused file through its own name and changes
        // another's mode — the same inodes as the old OS's files in the rollback area.
        assert.equal(lstatSync(join(root, edited)).nlink, 2, 'shared with the rollback copy');
        const fd = openSync(join(root, edited), 'r+');
        writeSync(fd, Buffer.from('CHANGED IN PLACE'), 0, 16, 0);
        closeSync(fd);
        chmodSync(join(root, chmodded), 0o600);
        // ...and the restore fails: the state store lost its manifest.
        for (const e of readdirSync(join(root, 'var/lib/reimage/state'), {
          recursive: true,
          withFileTypes: true,
        }))
          if (e.isFile() && /manifest\.(enc|json)$/.test(e.name))
            rmSync(join(e.parentPath, e.name));
      },
    });
    assert.equal(outcome, 'rolled-back', log.join('\n'));
    assert.deepEqual(roles, ['client', 'pe', 'client', 'client']);
    assert.ok(
      log.some((l) => /reused files checked, 2 written again/.test(l)),
      log.join('\n'),
    );
    assert.deepEqual(dataSnapshot(root, facts), data);
    // The failed new OS (kept for troubleshooting) still shares the untouched files, and the
    // state store holds hard links of captured ones: without them, link counts are the old.
    rmSync(keptPaths(root).failedOs, { recursive: true, force: true });
    rmSync(join(root, 'var/lib/reimage/state'), { recursive: true, force: true });
    const d = diffListings(before, osListing(root), ['before', 'after rollback']);
    assert.equal(d, '', d);
  });

  it('kept old OS (retention > 0): its files no longer share inodes with the new OS', async () => {
    const { dir, root } = await labMachine();
    let reused: string[] = [];
    startDeployment(root, makePlan(f, `r${n}`, { rollbackRetainDays: 3 }));
    const { outcome, log } = await bootUntilDone(dir, {
      beforeBoot: (i) => {
        if (i === 1) reused = reusedInOs(root);
      },
    });
    assert.equal(outcome, 'succeeded', log.join('\n'));
    const rb = keptPaths(root).rollback;
    assert.ok(reused.length > 100, `${reused.length} files reused`);
    assert.ok(
      log.some((l) => /cleanup: \d+ reused files copied/.test(l)),
      log.join('\n'),
    );
    for (const p of reused) {
      const [kept, live] = [lstatSync(join(rb, p)), lstatSync(join(root, p))];
      assert.equal(kept.nlink, 1, p);
      assert.notEqual(kept.ino, live.ino, p);
    }
    // The kept copies are still the old OS's files (= the image's), byte for byte.
    const same = new Set(reusableFiles(v2, rb));
    assert.deepEqual(
      reused.filter((p) => !same.has(p)),
      [],
    );
  });
});
