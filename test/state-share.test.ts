import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { isReimageError, type ErrorCode } from '../src/errors.js';
import { shareBackend, type ShareOptions } from '../src/migrate/share.js';
import { listStores, StateReader, StateWriter } from '../src/migrate/state-store.js';
import { randomData } from './support/random.js';
import { sambaSkip, startSamba, type Samba } from './support/samba.js';
import { scanItems } from './support/state-items.js';

const skip = sambaSkip();
const scratch = mkdtempSync(join(tmpdir(), 'reimage-share-test-'));
let n = 0;
const fresh = (name: string) => {
  const d = join(scratch, `${name}-${n++}`);
  mkdirSync(d, { recursive: true, mode: 0o700 });
  return d;
};
const KEY = randomBytes(32);
after(() => rmSync(scratch, { recursive: true, force: true }));

const isCode = (code: ErrorCode, text?: RegExp) => (e: unknown) => {
  assert.ok(isReimageError(e, code), `expected ${code}, got ${String(e)}`);
  if (text) assert.match((e as Error).message, text);
  return true;
};

function makeTree(bigBytes: number): string {
  const root = fresh('tree');
  mkdirSync(join(root, 'home/bob/Documents'), { recursive: true });
  writeFileSync(join(root, 'home/bob/Documents/letter.txt'), 'Dear share,\n');
  writeFileSync(join(root, 'home/bob/Documents/empty'), '');
  writeFileSync(join(root, 'home/bob/Documents/copy.txt'), 'Dear share,\n');
  writeFileSync(join(root, 'home/bob/big.bin'), randomData('share big', bigBytes));
  writeFileSync(join(root, 'home/bob/.profile'), 'export X=1\n');
  chmodSync(join(root, 'home/bob/.profile'), 0o600);
  symlinkSync('Documents/letter.txt', join(root, 'home/bob/latest'));
  return root;
}

const scan = (root: string) => scanItems(root, { user: 'bob' });

async function captureTo(o: ShareOptions, root: string, key?: Buffer) {
  const backend = shareBackend(o);
  const w = await StateWriter.create(backend, { machineId: 'pc-42', key });
  for (const item of scan(root)) {
    if (item.type === 'file') await w.addFile(item, join(root, item.path));
    else w.addEntry(item);
  }
  w.addDocument('accounts', { users: ['bob'] });
  const result = await w.commit();
  await backend.close();
  return result;
}

function sameFiles(a: string, b: string): void {
  const left = scan(a);
  assert.deepEqual(
    scan(b).map((i) => [i.path, i.type, i.mode]),
    left.map((i) => [i.path, i.type, i.mode]),
  );
  for (const i of left) {
    if (i.type === 'file')
      assert.ok(readFileSync(join(b, i.path)).equals(readFileSync(join(a, i.path))), i.path);
  }
}

/** Every secret-bearing place of every process: command lines and environments. */
function scanProcesses(needle: Buffer, seen: { smbclient: number; authFiles: string[] }): string[] {
  const hits: string[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    for (const what of ['cmdline', 'environ']) {
      let data: Buffer;
      try {
        data = readFileSync(`/proc/${pid}/${what}`);
      } catch {
        continue; // gone meanwhile
      }
      if (data.indexOf(needle) !== -1) hits.push(`/proc/${pid}/${what}`);
      if (what === 'cmdline') {
        const args = data.toString('utf8').split('\0');
        if (args[0]?.endsWith('smbclient')) {
          seen.smbclient++;
          const i = args.indexOf('-A');
          if (i !== -1 && args[i + 1]) seen.authFiles.push(args[i + 1]!);
        }
      }
    }
  }
  return hits;
}

describe('state store on a real SMB share (Samba)', { skip }, () => {
  let samba: Samba;
  let opts: ShareOptions;
  before(async () => {
    samba = await startSamba();
    opts = {
      url: `${samba.url}/reimage/My%20Stores`, // a blank tests smbclient's quoting
      username: samba.username,
      password: samba.password,
      tmpDir: fresh('smbtmp'),
    };
  });
  after(async () => {
    await samba?.stop();
  });

  it('writes, reads, verifies and extracts an encrypted store', async () => {
    const root = makeTree(5 * 1024 * 1024 + 3);
    const result = await captureTo({ ...opts, batchFiles: 3 }, root, KEY);
    assert.equal(result.items, scan(root).length);
    // It is really on the share, in its folder, with the manifest last.
    const onDisk = join(samba.shareDir, 'reimage/My Stores', result.store);
    assert.ok(existsSync(join(onDisk, 'manifest.enc')));
    assert.ok(!readdirSync(onDisk, { recursive: true }).some((f) => String(f).includes('letter')));

    const backend = shareBackend(opts);
    assert.deepEqual(
      (await listStores(backend)).map((s) => [s.store, s.complete, s.encrypted]),
      [[result.store, true, true]],
    );
    // Four distinct contents (two files are equal), listed through smbclient.
    assert.equal((await backend.list(`${result.store}/blobs/`)).length, 4);
    const reader = await StateReader.open(backend, KEY);
    assert.equal(reader.store, result.store);
    assert.deepEqual(reader.document('accounts'), { users: ['bob'] });
    assert.deepEqual(await reader.verify(), { ok: 5, bad: [] });
    const dest = join(fresh('dest'), 'out');
    await reader.extract(dest);
    sameFiles(root, dest);
    await assert.rejects(
      StateReader.open(backend, randomBytes(32)),
      isCode('STATE_STORE_KEY_INVALID'),
    );
    await backend.close();
    assert.deepEqual(readdirSync(opts.tmpDir!), [], 'no temporary files left');
  });

  it('writes and reads a plain store (copies: a share cannot hard-link), and detects a changed blob', async () => {
    const root = makeTree(100_000);
    const result = await captureTo(opts, root);
    assert.equal(result.linked, 0);
    // Read back over an SMB3-encrypted connection.
    const backend = shareBackend({ ...opts, protection: 'encrypt' });
    const reader = await StateReader.open(backend, undefined, { store: result.store });
    assert.deepEqual((await reader.verify()).bad, []);
    const blobs = join(samba.shareDir, 'reimage/My Stores', result.store, 'blobs');
    const big = readdirSync(blobs, { recursive: true })
      .map((f) => join(blobs, String(f)))
      .find((f) => statSync(f).size === 100_000)!;
    const data = readFileSync(big);
    data[50_000]! ^= 1;
    writeFileSync(big, data);
    assert.deepEqual(
      (await reader.verify()).bad.map((b) => b.path),
      ['home/bob/big.bin'],
    );
  });

  it('an unfinished store on the share is incomplete; abort removes it', async () => {
    const backend = shareBackend(opts);
    const w = await StateWriter.create(backend, { machineId: 'pc-unfinished', key: KEY });
    const root = makeTree(10);
    await w.addFile(
      scan(root).find((i) => i.path === 'home/bob/.profile')!,
      join(root, 'home/bob/.profile'),
    );
    await backend.flush();
    await assert.rejects(
      StateReader.open(backend, KEY, { machineId: 'pc-unfinished' }),
      isCode('STATE_STORE_INVALID', /incomplete/),
    );
    await w.abort();
    assert.ok(!(await listStores(backend)).some((s) => s.machineId === 'pc-unfinished'));
    assert.ok(!existsSync(join(samba.shareDir, 'reimage/My Stores', w.store)));
  });

  it('a wrong password fails with SHARE_AUTH_FAILED and never shows the password', async () => {
    const wrong = `${samba.password}-but-wrong`;
    const backend = shareBackend({ ...opts, password: wrong });
    let error: unknown;
    try {
      await StateWriter.create(backend, { machineId: 'pc-42', key: KEY });
    } catch (e) {
      error = e;
    }
    isCode(
      'SHARE_AUTH_FAILED',
      /wrong user name or password for smb:\/\/127\.0\.0\.1:\d+\/state/,
    )(error);
    const shown = JSON.stringify({
      message: (error as Error).message,
      stack: (error as Error).stack,
      details: (error as { details: unknown }).details,
      cause: String((error as Error).cause),
    });
    assert.ok(!shown.includes(wrong) && !shown.includes(samba.password), shown);
    assert.ok(!samba.logs().includes(samba.password), 'smbd logs do not hold the password');
    assert.deepEqual(readdirSync(opts.tmpDir!), [], 'the authentication file is gone');
  });

  it('the password is never on a command line or in an environment while smbclient runs', async () => {
    const root = makeTree(24 * 1024 * 1024);
    const needle = Buffer.from(samba.password);
    const seen = { smbclient: 0, authFiles: [] as string[] };
    const hits: string[] = [];
    const authModes: string[] = [];
    const timer = setInterval(() => {
      hits.push(...scanProcesses(needle, seen));
      for (const f of seen.authFiles.splice(0)) {
        try {
          authModes.push(
            `${(statSync(f).mode & 0o777).toString(8)} in ${(statSync(join(f, '..')).mode & 0o777).toString(8)}`,
          );
        } catch {
          /* already removed: fine */
        }
      }
    }, 5);
    try {
      const result = await captureTo(opts, root, KEY);
      const reader = await StateReader.open(shareBackend(opts), KEY, { store: result.store });
      assert.deepEqual((await reader.verify()).bad, []);
    } finally {
      clearInterval(timer);
    }
    assert.ok(seen.smbclient > 0, 'smbclient was seen running');
    assert.deepEqual(hits, []);
    for (const m of authModes) assert.equal(m, '600 in 700');
    assert.deepEqual(readdirSync(opts.tmpDir!), []);
  });

  it('says clearly when the share cannot be reached', async () => {
    await assert.rejects(
      shareBackend({ ...opts, url: samba.url.replace(/\/state$/, '/nosuchshare') }).list(''),
      isCode('SHARE_UNREACHABLE', /no share named nosuchshare/),
    );
    const closed = await new Promise<number>((resolve) => {
      // A port nobody listens on: bind, note it, close.
      import('node:net').then(({ createServer }) => {
        const s = createServer().listen(0, '127.0.0.1', () => {
          const p = (s.address() as { port: number }).port;
          s.close(() => resolve(p));
        });
      });
    });
    await assert.rejects(
      shareBackend({ ...opts, url: `smb://127.0.0.1:${closed}/state` }).list(''),
      isCode('SHARE_UNREACHABLE', /cannot reach/),
    );
    await assert.rejects(
      shareBackend({ ...opts, smbclient: '/nonexistent/smbclient' }).list(''),
      isCode('SHARE_CLIENT_UNAVAILABLE', /apt-get install smbclient/),
    );
  });
});

describe('share addresses and credentials', () => {
  it('are checked without echoing a password', () => {
    const base = { username: 'u', password: 'Secret-123' };
    assert.throws(
      () => shareBackend({ ...base, url: 'smb://u:Secret-123@host/share' }),
      (e) =>
        isCode('INVALID_ARGUMENT', /must not carry/)(e) &&
        !(e as Error).message.includes('Secret-123'),
    );
    assert.throws(
      () => shareBackend({ ...base, url: 'http://host/share' }),
      isCode('INVALID_ARGUMENT', /smb:\/\//),
    );
    assert.throws(
      () => shareBackend({ ...base, url: 'smb://host/' }),
      isCode('INVALID_ARGUMENT', /names no share/),
    );
    assert.throws(
      () => shareBackend({ ...base, url: 'smb://host/share/a;b' }),
      isCode('INVALID_ARGUMENT'),
    );
    assert.throws(
      () => shareBackend({ ...base, url: 'smb://host/share', password: 'two\nlines' }),
      (e) => isCode('INVALID_ARGUMENT', /line break/)(e) && !(e as Error).message.includes('two'),
    );
    assert.equal(
      shareBackend({ ...base, url: 'smb://host:4445/share/My%20Stores' }).description,
      'smb://host:4445/share/My Stores',
    );
  });
});
