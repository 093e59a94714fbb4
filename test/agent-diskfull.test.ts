import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  rmSync,
  statfsSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { keptPaths, startDeployment } from '../src/agent/deploy.js';
import { ContentStore } from '../src/content/store.js';
import { estimateApply } from '../src/image/apply.js';
import { utimensNs } from '../src/image/posix.js';
import { dataSnapshot, makeLabMachine, makePlan } from './support/deploy.js';
import type { DeployFixture } from './support/deploy.js';
import { diffListings } from './support/listing.js';
import {
  bootUntilDone,
  captureUpgrade,
  copyOs,
  osListing,
  outboxMessages,
  upgradeOs,
} from './support/reuse.js';

/**
 * A full disk in phase 2: the machine's disk is a small ext4 of its own (a loop device, so
 * root is needed; skipped without root unless in CI, where it must run). The apply runs out
 * of space → DISK_FULL, rollback to the old OS, user data byte for byte; and phase 1 refuses
 * a disk that cannot hold the staged content and the new OS, before anything changes.
 */

const isRoot = process.getuid?.() === 0;
const skip = !isRoot && !process.env['CI'] ? 'needs root (a loop-mounted ext4)' : false;

const base = mkdtempSync(join(tmpdir(), 'reimage-diskfull-'));
const mnt = join(base, 'mnt');
let mounted = false;
after(() => {
  if (mounted) spawnSync('umount', [mnt]);
  rmSync(base, { recursive: true, force: true });
});

const SEED = 43;
const BIG = 'opt/vendor/libbig.so.1';
const BIG_MTIME = 1_690_000_000_123_456_789n;
/** Free space the engine keeps beyond its estimate (deploy.ts SPACE_MARGIN). */
const MARGIN = 16 * 1024 * 1024;
let big: Buffer;
let f: DeployFixture;
let imageBytes = 0;

function sh(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
}

/** A lab machine of seed SEED with a 24 MiB library the new OS has too (same bytes and time). */
async function machine(dir: string) {
  const facts = await makeLabMachine(dir, SEED);
  const root = join(dir, 'disk');
  mkdirSync(join(root, 'opt/vendor'), { recursive: true });
  writeFileSync(join(root, BIG), big);
  utimensNs(join(root, BIG), BIG_MTIME, BIG_MTIME);
  return { root, facts };
}

/** Leaves `free` bytes free on the mount (a filler file takes the rest). */
function leaveFree(name: string, free: number): void {
  const st = statfsSync(mnt);
  const fill = st.bavail * st.bsize - free;
  assert.ok(fill > 0, `the disk has less than ${free} bytes free`);
  const fd = openSync(join(mnt, name), 'w');
  const block = Buffer.alloc(1 << 20, 0x5a);
  for (let left = fill; left > 0; left -= block.length)
    writeSync(fd, block, 0, Math.min(block.length, left));
  closeSync(fd);
}

before(async () => {
  if (skip) return;
  big = randomBytes(24 * 1024 * 1024);
  const model = join(base, 'model');
  const { root } = await machine(model);
  const v2 = join(base, 'v2');
  copyOs(root, v2);
  upgradeOs(v2, '// os 2.0.0\n');
  f = await captureUpgrade(base, v2, '// pe 2.0.0\n');
  const est = estimateApply({ store: ContentStore.open(f.dp), image: f.imageId });
  imageBytes = est.imageBytes;
  const img = join(base, 'disk.img');
  sh('truncate', ['-s', '256M', img]);
  sh('mkfs.ext4', ['-q', '-F', '-m', '0', img]); // no blocks reserved for root: root is who writes
  mkdirSync(mnt);
  sh('mount', ['-o', 'loop', img, mnt]);
  mounted = true;
});

describe('a full disk', { skip }, () => {
  it('phase 2 runs out of space while applying: DISK_FULL, rollback, old OS and data intact', async () => {
    const dir = join(mnt, 'm1');
    const { root, facts } = await machine(dir);
    const data = dataSnapshot(root, facts);
    startDeployment(
      root,
      makePlan(f, 'full-1', {
        image: { id: f.imageId, os: 'debian', arch: 'x86_64', bytes: imageBytes },
      }),
    );
    let oldOs: string[] = [];
    const { outcome, roles, log } = await bootUntilDone(dir, {
      beforeBoot: (i) => {
        if (i !== 1) return;
        // Phase 1 is done (content staged, its space check passed, counting the 24 MiB
        // library as reused). Now that library changes without a trace in its size or time,
        // so the apply must write it, and the disk keeps only what the estimate asked for.
        const fd = openSync(join(root, BIG), 'r+');
        writeSync(fd, Buffer.from('not the same library any more'), 0, 29, 4096);
        closeSync(fd);
        utimensNs(join(root, BIG), BIG_MTIME, BIG_MTIME);
        const est = estimateApply({
          store: ContentStore.open(keptPaths(root).staging),
          image: f.imageId,
          reuse: { root },
        });
        assert.ok(est.reusableBytes >= big.length, 'the estimate still counts it as reused');
        leaveFree('m1.filler', est.bytes + MARGIN + 4 * 1024 * 1024);
        oldOs = osListing(root);
      },
    });
    assert.equal(outcome, 'rolled-back', log.join('\n'));
    assert.deepEqual(roles, ['client', 'pe', 'client']);
    const msgs = outboxMessages(root);
    const rb = msgs.find((m) => m.id === 6000)!;
    assert.equal(rb.properties?.['step'], 'apply');
    assert.equal(rb.properties?.['code'], 'DISK_FULL');
    assert.equal(msgs.at(-1)!.id, 6001);
    assert.deepEqual(dataSnapshot(root, facts), data);
    const d = diffListings(oldOs, osListing(root), ['before phase 2', 'after rollback']);
    assert.equal(d, '', d);
    rmSync(join(mnt, 'm1.filler'));
    rmSync(dir, { recursive: true });
  });

  it('phase 1 refuses a disk too small for the staged content and the new OS: nothing changes', async () => {
    const dir = join(mnt, 'm2');
    const { root, facts } = await machine(dir);
    const data = dataSnapshot(root, facts);
    const oldOs = osListing(root);
    // Room for the check's bound (the image twice) and for the staged content, not for the
    // new OS beside the old one when nothing is reused.
    leaveFree('m2.filler', imageBytes * 2 + 4 * 1024 * 1024);
    startDeployment(
      root,
      makePlan(f, 'full-2', {
        image: { id: f.imageId, os: 'debian', arch: 'x86_64', bytes: imageBytes },
        reuseOldFiles: false,
      }),
    );
    const { outcome, roles, log } = await bootUntilDone(dir);
    assert.equal(outcome, 'failed', log.join('\n'));
    assert.deepEqual(roles, ['client']);
    const last = outboxMessages(root).at(-1)!;
    assert.equal(last.id, 9000);
    assert.equal(last.properties?.['code'], 'DEPLOYMENT_CHECK_FAILED');
    assert.match(String(last.properties?.['message']), /Not enough free disk space/);
    assert.deepEqual(dataSnapshot(root, facts), data);
    rmSync(join(root, 'var/lib/reimage/state'), { recursive: true, force: true });
    const d = diffListings(oldOs, osListing(root), ['before', 'after']);
    assert.equal(d, '', d);
  });
});
