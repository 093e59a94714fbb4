import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  existsSync,
  lchownSync,
  lutimesSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  truncateSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after, describe, it } from 'node:test';

import { scanItems } from '../../test/support/state-items.js';
import { randomData } from '../../test/support/random.js';
import { isReimageError, type ErrorCode } from '../errors.js';
import type { StateItem } from './model.js';
import {
  keyFromBase64,
  listStores,
  localBackend,
  StateReader,
  StateWriter,
  type StateBackend,
} from './state-store.js';

const isRoot = process.getuid?.() === 0;
const scratch = mkdtempSync(join(tmpdir(), 'reimage-state-test-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
let n = 0;
const fresh = (name: string) => {
  const d = join(scratch, `${name}-${n++}`);
  mkdirSync(d, { recursive: true });
  return d;
};

const isCode = (code: ErrorCode, text?: RegExp) => (e: unknown) => {
  assert.ok(isReimageError(e, code), `expected ${code}, got ${String(e)}`);
  if (text) assert.match((e as Error).message, text);
  return true;
};

/** A small machine tree: names and contents that a scan of the store must not find. */
function makeTree(): { root: string; secretNames: string[]; secretContents: Buffer[] } {
  const root = fresh('tree');
  const w = (p: string, data: string | Buffer, mode = 0o644) => {
    mkdirSync(join(root, p, '..'), { recursive: true });
    writeFileSync(join(root, p), data);
    chmodSync(join(root, p), mode);
  };
  mkdirSync(join(root, 'home/alice/Documents'), { recursive: true });
  w('home/alice/Documents/Quarterly-Report-Zebra.odt', 'ZEBRA-CONTENT-needle-1 '.repeat(100));
  w('home/alice/.ssh/id_ed25519', 'PRIVATE-KEY-needle-2', 0o600);
  w('home/alice/empty-file', '');
  w('home/alice/big.bin', randomData('state big', 3 * 1024 * 1024 + 17));
  w('home/alice/same-as-report.odt', 'ZEBRA-CONTENT-needle-1 '.repeat(100));
  w('opt/app/bin/tool-Aardvark', '#!/bin/sh\necho AARDVARK-needle-3\n', 0o755);
  w('srv/shared/setgid-Falcon', 'FALCON-needle-4', 0o2755);
  mkdirSync(join(root, 'srv/shared/dropbox'), { recursive: true });
  chmodSync(join(root, 'srv/shared'), 0o2775);
  chmodSync(join(root, 'srv/shared/dropbox'), 0o1777);
  symlinkSync('Documents/Quarterly-Report-Zebra.odt', join(root, 'home/alice/link-Kingfisher'));
  symlinkSync('/etc/hostname', join(root, 'home/alice/abs-link'));
  if (isRoot) {
    chownSync(join(root, 'home/alice'), 1001, 1001);
    chownSync(join(root, 'home/alice/Documents/Quarterly-Report-Zebra.odt'), 1001, 1002);
    chownSync(join(root, 'srv/shared/setgid-Falcon'), 0, 2000);
    chmodSync(join(root, 'srv/shared/setgid-Falcon'), 0o2755); // chown cleared setgid
    lchownSync(join(root, 'home/alice/link-Kingfisher'), 1001, 1001);
  }
  utimesSync(join(root, 'home/alice/Documents'), 1_600_000_000, 1_600_000_000.25);
  lutimesSync(join(root, 'home/alice/abs-link'), 1_500_000_000, 1_500_000_000);
  return {
    root,
    secretNames: [
      'Quarterly-Report-Zebra',
      'id_ed25519',
      'tool-Aardvark',
      'setgid-Falcon',
      'link-Kingfisher',
      'alice',
    ],
    secretContents: [
      Buffer.from('ZEBRA-CONTENT-needle-1'),
      Buffer.from('PRIVATE-KEY-needle-2'),
      Buffer.from('AARDVARK-needle-3'),
      Buffer.from('FALCON-needle-4'),
      randomData('state big', 3 * 1024 * 1024 + 17).subarray(1_000_000, 1_000_032),
    ],
  };
}

const scan = (root: string) => scanItems(root);

async function capture(
  backend: StateBackend,
  root: string,
  o: { key?: Buffer; hardLinks?: boolean; commit?: boolean } = {},
) {
  const w = await StateWriter.create(backend, {
    machineId: 'machine-1',
    key: o.key,
    hardLinks: o.hardLinks,
  });
  for (const item of scan(root)) {
    if (item.type === 'file') await w.addFile(item, join(root, item.path));
    else w.addEntry(item);
  }
  w.addDocument('accounts', { users: [{ name: 'alice', shadow: '$6$SHADOW-needle-5' }] });
  w.addDocument('machine-state', { computerName: 'PC-Gazelle' });
  const result = o.commit === false ? undefined : await w.commit();
  return { writer: w, result };
}

/** Every byte of every file below dir. */
function allFiles(dir: string): { path: string; data: Buffer }[] {
  const out: { path: string; data: Buffer }[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    const full = join(e.parentPath, e.name);
    if (e.isFile()) out.push({ path: full, data: readFileSync(full) });
  }
  return out;
}

function assertSameTree(a: string, b: string, withOwners: boolean): void {
  const left = scan(a);
  const right = scan(b);
  assert.deepEqual(
    right.map((i) => i.path),
    left.map((i) => i.path),
  );
  for (const [k, i] of left.entries()) {
    const j = right[k]!;
    assert.equal(j.type, i.type, i.path);
    assert.equal(j.mode.toString(8), i.mode.toString(8), `mode of ${i.path}`);
    if (i.type !== 'symlink')
      assert.equal(Math.floor(j.mtimeMs), Math.floor(i.mtimeMs), `mtime of ${i.path}`);
    if (withOwners) assert.deepEqual([j.uid, j.gid], [i.uid, i.gid], `owner of ${i.path}`);
    if (i.type === 'file')
      assert.ok(readFileSync(join(b, i.path)).equals(readFileSync(join(a, i.path))), i.path);
    if (i.type === 'symlink') assert.equal(j.target, i.target);
  }
}

const KEY = randomBytes(32);

describe('state store', () => {
  for (const mode of ['encrypted', 'plain copy', 'plain hard links'] as const) {
    it(`round trip: ${mode}`, async () => {
      const { root } = makeTree();
      const backend = localBackend(fresh('store'));
      const key = mode === 'encrypted' ? KEY : undefined;
      const { result } = await capture(backend, root, {
        key,
        hardLinks: mode === 'plain hard links',
      });
      assert.ok(result);
      assert.equal(result.items, scan(root).length);
      const sizes = scan(root)
        .filter((i) => i.type === 'file')
        .map((i) => i.size);
      assert.equal(
        result.bytes,
        sizes.reduce((a, b) => a + b, 0),
      );
      if (mode === 'plain hard links') {
        assert.equal(result.storedBytes, 0);
        assert.equal(result.linked, 6, 'one link per distinct content');
      }
      if (mode === 'encrypted')
        assert.ok(result.storedBytes > result.bytes - 2300, 'duplicates stored once');

      const reader = await StateReader.open(backend, key);
      assert.equal(reader.store, result.store);
      assert.equal(reader.encrypted, mode === 'encrypted');
      assert.deepEqual(reader.document('machine-state'), { computerName: 'PC-Gazelle' });
      assert.equal(reader.document('nothing'), undefined);
      const big = reader.items.find((i) => i.path === 'home/alice/big.bin')!;
      assert.equal(big.size, 3 * 1024 * 1024 + 17);
      assert.match(big.sha256!, /^[0-9a-f]{64}$/);
      assert.deepEqual(await reader.verify(), { ok: 7, bad: [] });

      const parts: Buffer[] = [];
      for await (const c of await reader.openFile('home/alice/big.bin')) parts.push(c as Buffer);
      assert.ok(Buffer.concat(parts).equals(readFileSync(join(root, 'home/alice/big.bin'))));

      const dest = join(fresh('dest'), 'out');
      await reader.extract(dest);
      assertSameTree(root, dest, isRoot);
    });
  }

  it('an encrypted store holds no plaintext name or content, and names blobs by keyed hash', async () => {
    const { root, secretNames, secretContents } = makeTree();
    const dir = fresh('store');
    await capture(localBackend(dir), root, { key: KEY });
    const files = allFiles(dir);
    const needles = [
      ...secretNames.map((s) => Buffer.from(s)),
      ...secretContents,
      Buffer.from('SHADOW-needle-5'),
      Buffer.from('Gazelle'),
    ];
    for (const f of files) {
      assert.doesNotMatch(relative(dir, f.path), /Zebra|Aardvark|alice|Falcon|Kingfisher|\.odt/);
      for (const needle of needles)
        assert.equal(f.data.indexOf(needle), -1, `${needle} in ${f.path}`);
    }
    // No blob is named by the plain SHA-256 of its content.
    const plainHashes = scan(root)
      .filter((i) => i.type === 'file')
      .map((i) => createSha(readFileSync(join(root, i.path))));
    for (const f of files) for (const h of plainHashes) assert.ok(!f.path.includes(h));
    assert.ok(files.some((f) => f.path.endsWith('manifest.enc')));
    assert.ok(!files.some((f) => f.path.endsWith('manifest.json')));
  });

  it('a wrong or missing key is STATE_STORE_KEY_INVALID; keys are read from base64', async () => {
    const { root } = makeTree();
    const backend = localBackend(fresh('store'));
    await capture(backend, root, { key: KEY });
    await assert.rejects(
      StateReader.open(backend, randomBytes(32)),
      isCode('STATE_STORE_KEY_INVALID', /not with the given key/),
    );
    await assert.rejects(
      StateReader.open(backend),
      isCode('STATE_STORE_KEY_INVALID', /is encrypted/),
    );
    assert.ok(keyFromBase64(KEY.toString('base64')).equals(KEY));
    assert.ok(keyFromBase64(` ${KEY.toString('base64url')}\n`).equals(KEY));
    assert.throws(
      () => keyFromBase64(randomBytes(16).toString('base64')),
      isCode('STATE_STORE_KEY_INVALID', /16 bytes/),
    );
    assert.throws(() => keyFromBase64('not base64 at all!'), isCode('STATE_STORE_KEY_INVALID'));
    await assert.rejects(
      StateWriter.create(backend, { machineId: 'm', key: randomBytes(31) }),
      isCode('STATE_STORE_KEY_INVALID'),
    );
  });

  describe('tampering is detected and names the item', () => {
    const setup = async () => {
      const { root } = makeTree();
      const dir = fresh('store');
      const backend = localBackend(dir);
      const { result } = await capture(backend, root, { key: KEY });
      const reader = await StateReader.open(backend, KEY);
      const blobFile = (path: string) => {
        const blobs = allFiles(join(dir, result!.store, 'blobs')).map((f) => f.path);
        return { blobs, size: reader.items.find((i) => i.path === path)!.size };
      };
      return { root, dir, backend, reader, store: join(dir, result!.store), blobFile };
    };
    const blobOfSize = (files: string[], plainSize: number) => {
      // 40-byte header, one 16-byte tag per 1 MiB record (at least one).
      const records = Math.max(1, Math.ceil(plainSize / (1024 * 1024)));
      const want = 40 + plainSize + 16 * records;
      const found = files.filter((f) => statSync(f).size === want);
      assert.equal(found.length, 1, `one blob of ${want} bytes`);
      return found[0]!;
    };

    it('a flipped byte in a blob', async () => {
      const { backend, reader, blobFile } = await setup();
      const { blobs, size } = blobFile('home/alice/big.bin');
      const f = blobOfSize(blobs, size);
      const data = readFileSync(f);
      data[2 * 1024 * 1024 + 100]! ^= 0x01;
      writeFileSync(f, data);
      const fresh = await StateReader.open(backend, KEY);
      const v = await fresh.verify();
      assert.equal(v.ok, 6);
      assert.deepEqual(
        v.bad.map((b) => b.path),
        ['home/alice/big.bin'],
      );
      assert.match(v.bad[0]!.reason, /record 2 .* does not authenticate/);
      await assert.rejects(
        async () => {
          for await (const _ of await reader.openFile('home/alice/big.bin'));
        },
        isCode('STATE_STORE_TAMPERED', /^home\/alice\/big\.bin: /),
      );
    });

    it('a truncated blob, at a record boundary or inside one', async () => {
      for (const cut of [40 + 1024 * 1024 + 16, 40 + 1024 * 1024 + 16 + 5, 30]) {
        const { reader, blobFile } = await setup();
        const { blobs, size } = blobFile('home/alice/big.bin');
        truncateSync(blobOfSize(blobs, size), cut);
        const v = await reader.verify();
        assert.deepEqual(
          v.bad.map((b) => b.path),
          ['home/alice/big.bin'],
          `cut at ${cut}`,
        );
      }
    });

    it('swapped blobs', async () => {
      const { reader, blobFile } = await setup();
      const ba = blobFile('opt/app/bin/tool-Aardvark');
      const bb = blobFile('home/alice/.ssh/id_ed25519');
      const a = blobOfSize(ba.blobs, ba.size);
      const b = blobOfSize(bb.blobs, bb.size);
      renameSync(a, `${a}.x`);
      renameSync(b, a);
      renameSync(`${a}.x`, b);
      const v = await reader.verify();
      assert.deepEqual(v.bad.map((x) => x.path).sort(), [
        'home/alice/.ssh/id_ed25519',
        'opt/app/bin/tool-Aardvark',
      ]);
      for (const x of v.bad) assert.match(x.reason, /SHA-256|bytes/);
    });

    it('a missing blob', async () => {
      const { reader, blobFile } = await setup();
      const bf = blobFile('srv/shared/setgid-Falcon');
      rmSync(blobOfSize(bf.blobs, bf.size));
      const v = await reader.verify();
      assert.deepEqual(v.bad, [
        { path: 'srv/shared/setgid-Falcon', reason: 'its stored content is missing' },
      ]);
      await assert.rejects(
        reader.extract(join(fresh('dest'), 'x')),
        isCode('STATE_STORE_TAMPERED', /setgid-Falcon/),
      );
    });

    it('an edited, truncated or replaced manifest', async () => {
      const { backend, store } = await setup();
      const m = join(store, 'manifest.enc');
      const good = readFileSync(m);
      const flipped = Buffer.from(good);
      flipped[flipped.length - 40]! ^= 0x80;
      writeFileSync(m, flipped);
      await assert.rejects(
        StateReader.open(backend, KEY),
        isCode('STATE_STORE_TAMPERED', /manifest/),
      );
      writeFileSync(m, good.subarray(0, good.length - 1));
      await assert.rejects(
        StateReader.open(backend, KEY),
        isCode('STATE_STORE_TAMPERED', /manifest/),
      );
      // A plain manifest in place of the encrypted one: refused when a key is given.
      rmSync(m);
      writeFileSync(join(store, 'manifest.json'), '{}');
      await assert.rejects(
        StateReader.open(backend, KEY),
        isCode('STATE_STORE_TAMPERED', /not encrypted/),
      );
    });

    it('a store folder renamed to pass for another one', async () => {
      const { dir, backend, store } = await setup();
      const later = join(dir, 'state-machine-1-29991231T235959999Z');
      renameSync(store, later);
      await assert.rejects(
        StateReader.open(backend, KEY),
        isCode('STATE_STORE_TAMPERED', /renamed/),
      );
    });
  });

  it('plain hard-link mode links (same inode); it copies across filesystems and when encrypted', async () => {
    const { root } = makeTree();
    const dir = fresh('store');
    await capture(localBackend(dir), root, { hardLinks: true });
    const src = statSync(join(root, 'home/alice/big.bin'));
    const linked = allFiles(dir).filter((f) => statSync(f.path).ino === src.ino);
    assert.equal(linked.length, 1, 'the blob is the original inode');
    assert.equal(src.nlink, 2);

    // A backend that cannot link (as across filesystems) gets copies.
    const local = localBackend(fresh('store'));
    const noLinks: StateBackend = { ...local, link: async () => false };
    const { result } = await capture(noLinks, root, { hardLinks: true });
    assert.equal(result!.linked, 0);
    assert.ok(result!.storedBytes > 3 * 1024 * 1024);
    assert.equal(statSync(join(root, 'home/alice/big.bin')).nlink, 2);

    // A real other filesystem, where there is one (/dev/shm is tmpfs here).
    if (existsSync('/dev/shm') && statSync('/dev/shm').dev !== statSync(scratch).dev) {
      const shm = mkdtempSync('/dev/shm/reimage-state-');
      try {
        const r = await capture(localBackend(shm), root, { hardLinks: true });
        assert.equal(r.result!.linked, 0);
        const reader = await StateReader.open(localBackend(shm));
        assert.deepEqual((await reader.verify()).bad, []);
      } finally {
        rmSync(shm, { recursive: true, force: true });
      }
    }

    const enc = await capture(localBackend(fresh('store')), root, { hardLinks: true, key: KEY });
    assert.equal(enc.result!.linked, 0);
  });

  it('a store whose commit never ran is incomplete: STATE_STORE_INVALID', async () => {
    const { root } = makeTree();
    const backend = localBackend(fresh('store'));
    const { writer } = await capture(backend, root, { key: KEY, commit: false });
    await assert.rejects(
      StateReader.open(backend, KEY),
      isCode('STATE_STORE_INVALID', /incomplete/),
    );
    await assert.rejects(
      StateReader.open(backend, KEY, { store: writer.store }),
      isCode('STATE_STORE_INVALID', /incomplete/),
    );
    assert.deepEqual(
      (await listStores(backend)).map((s) => [s.store, s.complete]),
      [[writer.store, false]],
    );
    await assert.rejects(
      StateReader.open(localBackend(fresh('empty'))),
      isCode('STATE_STORE_INVALID', /no state store/),
    );
    // An older complete store is still found; abort removes the incomplete one.
    await writer.abort();
    assert.deepEqual(await listStores(backend), []);
  });

  it('the newest complete store of a machine is opened by default', async () => {
    const { root } = makeTree();
    const backend = localBackend(fresh('store'));
    const first = await capture(backend, root, { key: KEY });
    const second = await capture(backend, root, { key: KEY });
    await capture(backend, root, { key: KEY, commit: false });
    const other = await StateWriter.create(backend, { machineId: 'machine-2', key: KEY });
    await other.commit();
    assert.equal(
      (await StateReader.open(backend, KEY, { machineId: 'machine-1' })).store,
      second.result!.store,
    );
    assert.equal((await StateReader.open(backend, KEY)).store, other.store);
    assert.equal(
      (await StateReader.open(backend, KEY, { store: first.result!.store })).store,
      first.result!.store,
    );
    // A store folder can be opened directly (an administrator's rescue).
    const direct = localBackend(join(backend.description, first.result!.store));
    assert.equal((await StateReader.open(direct, KEY)).items.length, scan(root).length);
  });

  it('refuses hostile paths planted in a forged plain manifest', async () => {
    const { root } = makeTree();
    const dir = fresh('store');
    const backend = localBackend(dir);
    const { result } = await capture(backend, root);
    const manifestPath = join(dir, result!.store, 'manifest.json');
    const good = readFileSync(manifestPath, 'utf8');
    const forge = (f: (m: { items: Record<string, unknown>[] }) => void) => {
      const m = JSON.parse(good) as { items: Record<string, unknown>[] };
      f(m);
      writeFileSync(manifestPath, JSON.stringify(m));
    };
    const file = (m: { items: Record<string, unknown>[] }) =>
      m.items.find((i) => i.type === 'file')!;
    const cases: [string, (m: { items: Record<string, unknown>[] }) => void][] = [
      ['../escape', (m) => (file(m).path = '../../etc/cron.d/evil')],
      ['absolute', (m) => (file(m).path = '/etc/passwd')],
      ['inner ..', (m) => (file(m).path = 'home/../../x')],
      ['below a symlink', (m) => m.items.push({ ...file(m), path: 'home/alice/abs-link/owned' })],
      ['duplicate', (m) => m.items.push({ ...file(m) })],
      ['NUL', (m) => (file(m).path = 'home/a\0b')],
      ['bad mode', (m) => (file(m).mode = 0o170000)],
      ['blob not hex', (m) => (file(m).blob = '../../../../etc/shadow')],
    ];
    for (const [what, f] of cases) {
      forge(f);
      await assert.rejects(
        StateReader.open(backend),
        isCode('STATE_STORE_TAMPERED', /not valid/),
        what,
      );
    }
    // Extract itself writes only into a new or empty folder, never through what is there.
    writeFileSync(manifestPath, good);
    const reader = await StateReader.open(backend);
    const busy = fresh('dest');
    writeFileSync(join(busy, 'x'), '');
    await assert.rejects(reader.extract(busy), isCode('TARGET_NOT_EMPTY'));
    const dest = join(fresh('dest'), 'out');
    await reader.extract(dest, (i) => i.path.startsWith('opt/'));
    assert.deepEqual(readdirSync(dest, { recursive: true }).sort(), [
      'opt',
      'opt/app',
      'opt/app/bin',
      'opt/app/bin/tool-Aardvark',
    ]);
  });

  it('the writer refuses bad items and says why', async () => {
    const { root } = makeTree();
    const w = await StateWriter.create(localBackend(fresh('store')), { machineId: 'm' });
    const base: StateItem = {
      path: 'a',
      type: 'symlink',
      target: 'x',
      mode: 0o777,
      uid: 0,
      gid: 0,
      mtimeMs: 0,
      size: 0,
      kind: 'os-settings',
      component: 't',
    };
    w.addEntry(base);
    assert.throws(
      () => w.addEntry({ ...base, path: 'a/b' }),
      isCode('INVALID_ARGUMENT', /below the symlink a/),
    );
    assert.throws(() => w.addEntry({ ...base, path: '../b' }), isCode('INVALID_ARGUMENT', /".."/));
    assert.throws(() => w.addEntry({ ...base }), isCode('INVALID_ARGUMENT', /already/));
    assert.throws(() => w.addDocument('Bad Name', {}), isCode('INVALID_ARGUMENT'));
    await assert.rejects(
      w.addFile(
        { ...base, path: 'f', type: 'file', target: undefined },
        join(root, 'home/alice/link-Kingfisher'),
      ),
      isCode('SOURCE_UNREADABLE'),
    );
    await assert.rejects(
      w.addFile({ ...base, path: 'g', type: 'file', target: undefined }, join(root, 'nope')),
      isCode('SOURCE_UNREADABLE', /nope/),
    );
    await assert.rejects(
      StateWriter.create(localBackend(fresh('s')), { machineId: '../x' }),
      isCode('INVALID_ARGUMENT'),
    );
    const r = await w.commit();
    assert.equal(r.items, 1);
    assert.throws(
      () => w.addEntry({ ...base, path: 'z' }),
      isCode('INVALID_ARGUMENT', /committed/),
    );
  });
});

function createSha(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}
