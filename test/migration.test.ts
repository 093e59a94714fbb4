import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  cpSync,
  lstatSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { wipeOs } from '../src/agent/wipe.js';
import { isReimageError } from '../src/errors.js';
import { makeMachineTree, makeNewOsTree } from '../src/lab/machine-tree.js';
import { listTree } from '../src/lab/os-tree.js';
import type { MachineTreeFacts } from '../src/lab/machine-tree.js';
import { captureState, restoreState } from '../src/migrate/migration.js';
import type { CaptureStateResult, RestoreReport } from '../src/migrate/migration.js';
import type { StateItem } from '../src/migrate/model.js';
import { localBackend, StateReader } from '../src/migrate/state-store.js';
import { defaults } from '../src/package/schema.js';
import { reimage } from './cli.js';

const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
const asRoot = process.getuid?.() === 0;

/**
 * The whole migration on a lab machine: capture (encrypted, into the folder the wipe keeps),
 * wipe the OS, lay down a different OS, restore — every selected item comes back byte for byte
 * with its mode and owner; nothing excluded was stored.
 */
describe('state migration: capture → wipe → new OS → restore', () => {
  const base = mkdtempSync(join(tmpdir(), 'reimage-migration-'));
  const root = join(base, 'disk');
  const storeDir = join(root, 'var/lib/reimage/state');
  const key = randomBytes(32);
  let facts: MachineTreeFacts;
  let captured: CaptureStateResult;
  let items: StateItem[];
  const before_ = new Map<string, { sha: string; mode: number; uid: number; gid: number }>();
  let report: RestoreReport;

  before(async () => {
    facts = await makeMachineTree(root, { scale: 'small', users: 3 });
    captured = await captureState({
      root,
      backend: localBackend(storeDir),
      machineId: facts.client.guid,
      key,
      migration: { ruleSets: [...defaults.ruleSets, 'data-outside-home'] },
    });
    items = (await StateReader.open(localBackend(storeDir), key)).items;
    for (const i of items.filter((x) => x.type === 'file')) {
      const st = lstatSync(join(root, i.path));
      before_.set(i.path, {
        sha: sha(join(root, i.path)),
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
      });
    }
    wipeOs(root, { osPaths: defaults.osPaths, keep: defaults.keep });
    await makeNewOsTree(root, { osVersion: '13' });
    report = await restoreState({
      root,
      backend: localBackend(storeDir),
      key,
      machineState: { computerName: 'migrate', ipAddress: 'migrate' },
    });
  });
  after(() => rmSync(base, { recursive: true, force: true }));

  it('captured every user, their documents, profiles and keys, and the data outside /home', () => {
    assert.deepEqual(captured.users.sort(), Object.keys(facts.userFiles).sort());
    const paths = new Set(items.map((i) => i.path));
    for (const cat of [
      'documents',
      'pictures',
      'firefox',
      'chromium',
      'ssh-keys',
      'gpg-keys',
      'database',
      'app-data',
      'web-site',
    ] as const)
      for (const f of facts.categories[cat]) assert.ok(paths.has(f), `${cat}: ${f} was captured`);
    for (const cat of ['cache', 'trash', 'partial-downloads'] as const)
      for (const f of facts.categories[cat]) assert.ok(!paths.has(f), `${cat}: ${f} was left out`);
  });

  it('restores every selected file byte for byte, with mode and owner', () => {
    const resolvedOtherwise = new Set(
      report.conflicts.filter((c) => c.resolution !== 'replaced').map((c) => c.path),
    );
    let checked = 0;
    for (const [path, was] of before_) {
      // Account files are merged into the new OS's (checked below), not copied over them.
      if (resolvedOtherwise.has(path) || /^etc\/(passwd|shadow|g?shadow|group)$/.test(path))
        continue;
      const abs = join(root, path);
      assert.equal(sha(abs), was.sha, `${path} content`);
      const st = lstatSync(abs);
      assert.equal(st.mode & 0o7777, was.mode, `${path} mode`);
      if (asRoot) assert.deepEqual([st.uid, st.gid], [was.uid, was.gid], `${path} owner`);
      checked++;
    }
    assert.ok(checked > 100, `checked ${checked} files`);
    assert.deepEqual(report.skipped, []);
  });

  it('puts the accounts back with their uids, beside the new OS’s own', () => {
    const passwd = readFileSync(join(root, 'etc/passwd'), 'utf8');
    for (const u of facts.users.filter((x) => x.uid >= 1000 && x.uid < 60000))
      assert.match(passwd, new RegExp(`^${u.name}:x:${u.uid}:${u.gid}:`, 'm'));
    assert.match(readFileSync(join(root, 'etc/os-release'), 'utf8'), /VERSION_ID="?13/);
  });

  it('writes the machine state for the new OS', () => {
    assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8').trim(), facts.hostname);
    assert.ok(report.machineState.written.length > 0);
  });

  it('reports without secrets (capture and restore reports, what the agent logs and sends as status)', () => {
    const reports = JSON.stringify(captured) + JSON.stringify(report);
    assert.ok(facts.secrets.length > 5);
    for (const secret of facts.secrets)
      assert.equal(reports.includes(secret), false, 'a planted secret is in a report');
  });

  it('keeps the store unreadable without the key', async () => {
    const files: string[] = [];
    const walk = (d: string) => {
      for (const n of readdirSync(d, { withFileTypes: true }))
        if (n.isDirectory()) walk(join(d, n.name));
        else files.push(join(d, n.name));
    };
    walk(storeDir);
    const someDoc = facts.categories.documents[0]!;
    const planted = [
      Buffer.from(someDoc.split('/').pop()!),
      readFileSync(join(root, someDoc)).subarray(0, 64),
    ];
    for (const f of files) {
      const bytes = readFileSync(f);
      for (const p of planted)
        assert.equal(bytes.includes(p), false, `${f} reveals ${p.toString('utf8', 0, 20)}`);
    }
    await assert.rejects(StateReader.open(localBackend(storeDir), randomBytes(32)), (e) =>
      isReimageError(e, 'STATE_STORE_KEY_INVALID'),
    );
  });

  it('lets an administrator inspect, verify and rescue the store with `reimage state`', () => {
    const env = { ...process.env, REIMAGE_STATE_KEY: key.toString('base64') };
    const show = reimage(['state', 'show', '--path', storeDir, '--json'], { env });
    assert.equal(show.status, 0, show.stderr);
    assert.equal(show.json.items, items.length);
    assert.ok(show.json.documents.includes('accounts'));
    const verify = reimage(['state', 'verify', '--path', storeDir, '--json'], { env });
    assert.equal(verify.status, 0, verify.stderr);
    assert.deepEqual(verify.json.bad, []);
    const dest = join(base, 'rescued');
    const ex = reimage(
      ['state', 'extract', dest, '--component', 'database-folders', '--path', storeDir],
      { env },
    );
    assert.equal(ex.status, 0, ex.stderr);
    for (const f of facts.categories.database)
      assert.equal(sha(join(dest, f)), before_.get(f)?.sha, f);
    const noKey = reimage(['state', 'show', '--path', storeDir, '--json'], {
      env: { ...process.env, REIMAGE_STATE_KEY: '' },
    });
    assert.equal(noKey.status, 1);
    assert.equal(noKey.json.error.code, 'STATE_STORE_KEY_INVALID');
  });

  it('configures the client fresh when the settings say so', async () => {
    const other = join(base, 'fresh-client');
    await makeNewOsTree(other, { osVersion: '13' });
    const r = await restoreState({
      root: other,
      backend: localBackend(storeDir),
      key,
      clientState: { guid: 'fresh' },
    });
    const dropped = r.skipped
      .filter((x) => x.reason === 'client state configured fresh')
      .map((x) => x.path);
    assert.ok(dropped.includes('etc/reimage/credential'), dropped.join(', '));
    assert.throws(() => lstatSync(join(other, 'etc/reimage/credential')));
    for (const f of facts.categories.documents.slice(0, 5))
      assert.equal(sha(join(other, f)), before_.get(f)?.sha, f);
  });

  it('lists every path it wrote; run again (as after a kill), it writes no second copy', async () => {
    const other = join(base, 'listed');
    await makeNewOsTree(other, { osVersion: '13' });
    const image = listTree(other, () => false);
    const run = () =>
      restoreState({
        root: other,
        backend: localBackend(storeDir),
        key,
        conflict: 'keep-both',
        machineState: { computerName: 'migrate', ipAddress: 'migrate' },
      });
    const r1 = await run();
    const after1 = listTree(other, () => false);
    assert.deepEqual(r1.written, [...new Set(r1.written)].sort());
    for (const [p, v] of after1) {
      if (image.get(p) === v) continue;
      const holder = v.startsWith('dir ') && r1.written.some((w) => w.startsWith(`${p}/`));
      assert.ok(r1.written.includes(p) || holder, `${p} changed but is not listed`);
    }
    for (const p of image.keys()) assert.ok(after1.has(p), `${p} of the new OS is gone`);
    for (const f of ['etc/passwd', 'etc/shadow', 'etc/group', 'etc/gshadow', 'etc/hostname'])
      assert.ok(r1.written.includes(f), f);
    const saved = r1.conflicts.flatMap((c) => (c.savedAs ? [c.savedAs] : []));
    assert.ok(saved.length > 0, 'an OS setting was saved beside the image’s');
    for (const f of saved) assert.ok(r1.written.includes(f), f);
    // Identical content already there is not written: a second run lists only what it rewrites.
    const r2 = await run();
    assert.deepEqual(
      listTree(other, () => false),
      after1,
      'the second run changed nothing',
    );
    assert.deepEqual(
      r2.conflicts.flatMap((c) => (c.savedAs ? [c.savedAs] : [])),
      saved,
      'the same .restored copies, no second one',
    );
    assert.ok(r2.written.length < r1.written.length);
    for (const f of r2.written) assert.ok(r1.written.includes(f), f);
  });

  it('detects a tampered store, naming the damaged item', async () => {
    const copy = join(base, 'tampered');
    cpSync(storeDir, copy, { recursive: true });
    const blobs: string[] = [];
    const walk = (d: string) => {
      for (const n of readdirSync(d, { withFileTypes: true }))
        if (n.isDirectory()) walk(join(d, n.name));
        else if (d.includes('blobs')) blobs.push(join(d, n.name));
    };
    walk(copy);
    const victim = blobs.sort()[0]!;
    const bytes = readFileSync(victim);
    bytes[bytes.length - 20]! ^= 0xff;
    writeFileSync(victim, bytes);
    const v = await (await StateReader.open(localBackend(copy), key)).verify();
    assert.ok(v.bad.length >= 1, 'the flipped byte is found');
    assert.ok(v.bad.every((b) => b.path.length > 0 && b.reason.length > 0));
  });
});
