import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { answerNotification } from '../src/agent/notify.js';
import { davWriter } from '../src/content/dav-writer.js';
import { httpRemote } from '../src/content/remote.js';
import { defaults } from '../src/package/schema.js';
import { expectedEnd, machineProblems, prepareDemo, runDemo, USER_PLANS } from '../src/lab/demo.js';
import { startLabDp } from '../src/lab/demo-dp.js';
import { startLink } from '../src/lab/link.js';
import { compareUserData, hashUserData } from '../src/lab/users-hash.js';

/**
 * `reimage lab demo` and its pieces: the lab DP (a folder over HTTP with ranges and the WebDAV
 * writes of replication), the lab's user-data hashes, the prepared lab (server, sites behind
 * links, images, packages replicated through the links, machines), and the whole demo with
 * four machines — one per user answer — to the end.
 */

const work = fs.mkdtempSync(path.join(tmpdir(), 'reimage-lab-demo-'));
after(() => fs.rmSync(work, { recursive: true, force: true }));

function rawStatus(port: number, rawPath: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: rawPath }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
  });
}

async function* one(b: Buffer): AsyncGenerator<Buffer> {
  yield b;
}

describe('lab DP (folder over HTTP)', () => {
  it('answers byte ranges through a link, takes WebDAV writes only with its credentials, stays in its folder', async () => {
    const root = path.join(work, 'dp');
    const writer = { username: 'replicator', password: 'a-long-lab-password' };
    const dp = await startLabDp({ root, writer });
    const link = await startLink({ target: { host: '127.0.0.1', port: dp.port }, latencyMs: 5 });
    try {
      const data = Buffer.from(Array.from({ length: 100_000 }, (_, i) => i % 251));
      // Without credentials: refused, nothing written.
      await assert.rejects(
        davWriter(link.url).put('tmp/a.bin', 0, data.length, one(data)),
        /HTTP 401/,
      );
      assert.deepEqual(fs.readdirSync(root), []);
      // With them: PUT under tmp/, MOVE into place (as replication does).
      const w = davWriter(link.url, writer);
      await w.put('tmp/a.bin', 0, data.length, one(data));
      await w.rename('tmp/a.bin', 'packs/ab/a.bin');
      assert.equal(await w.stat('packs/ab/a.bin'), data.length);
      assert.equal(await w.stat('packs/ab/none.bin'), -1);
      assert.deepEqual(fs.readFileSync(path.join(root, 'packs/ab/a.bin')), data);
      // Reads: ranges, as a machine's fetch asks them.
      const r = httpRemote(link.url);
      const [x, y] = await r.readRanges('packs/ab/a.bin', [
        { offset: 10, length: 1000 },
        { offset: 99_000, length: 1000 },
      ]);
      assert.deepEqual(x, data.subarray(10, 1010));
      assert.deepEqual(y, data.subarray(99_000));
      assert.deepEqual(await r.readFile('packs/ab/a.bin'), data);
      await assert.rejects(r.readFile('packs/ab/none.bin'), { code: 'DP_FILE_MISSING' });
      // A path that leaves the folder is refused (sent raw: fetch would normalize it).
      for (const p of ['/packs/..%2f..%2f..%2fetc/passwd', '/../../etc/passwd'])
        assert.equal(await rawStatus(dp.port, p), 400, p);
      assert.ok(link.bytesDown() > data.length, 'the reads went through the link');
    } finally {
      await link.close();
      await dp.close();
    }
  });
});

describe('lab user-data hashes', () => {
  it('covers every non-OS path but the kept area, and tells missing, changed, moved and added', () => {
    const disk = path.join(work, 'hash-disk');
    const put = (rel: string, text: string) => {
      fs.mkdirSync(path.dirname(path.join(disk, rel)), { recursive: true });
      fs.writeFileSync(path.join(disk, rel), text);
    };
    put('home/alice/a.txt', 'a');
    put('home/alice/b.txt', 'b');
    put('home/bob/c.txt', 'c');
    put('srv/www/index.html', '<p>');
    put('data/d.bin', 'd');
    put('usr/bin/ls', 'elf');
    put('etc/hostname', 'pc');
    put('.reimage/outbox/log.jsonl', '{}');
    fs.symlinkSync('a.txt', path.join(disk, 'home/alice/link'));
    const before = hashUserData(disk, defaults.osPaths);
    assert.deepEqual(Object.keys(before), [
      'data/d.bin',
      'home/alice/a.txt',
      'home/alice/b.txt',
      'home/alice/link',
      'home/bob/c.txt',
      'srv/www/index.html',
    ]);
    // The OS changes: still intact.
    put('usr/bin/ls', 'new elf');
    put('.reimage/outbox/log.jsonl', '{"seq":1}');
    assert.equal(compareUserData(before, hashUserData(disk, defaults.osPaths)).intact, true);
    // User data changes: every kind is told.
    put('home/alice/a.txt', 'A');
    fs.rmSync(path.join(disk, 'home/bob/c.txt'));
    fs.copyFileSync(path.join(disk, 'data/d.bin'), path.join(disk, 'data/d.tmp'));
    fs.renameSync(path.join(disk, 'data/d.tmp'), path.join(disk, 'data/d.bin'));
    put('home/bob/new.txt', 'n');
    const cmp = compareUserData(before, hashUserData(disk, defaults.osPaths));
    assert.equal(cmp.intact, false);
    assert.deepEqual(cmp.changed, ['home/alice/a.txt']);
    assert.deepEqual(cmp.missing, ['home/bob/c.txt']);
    assert.deepEqual(cmp.moved, ['data/d.bin']);
    assert.deepEqual(cmp.added, ['home/bob/new.txt']);
  });
});

describe('lab demo', () => {
  it('refuses a work folder that holds anything but an earlier demo, and changes nothing', async () => {
    const dir = path.join(work, 'not-a-demo');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'precious.txt'), 'keep me');
    await assert.rejects(prepareDemo({ dir, machines: 1 }), { code: 'INVALID_ARGUMENT' });
    assert.deepEqual(fs.readdirSync(dir), ['precious.txt']);
    assert.equal(fs.readFileSync(path.join(dir, 'precious.txt'), 'utf8'), 'keep me');
  });

  it('prepares the lab: packages replicated through the links, machines configured and hashed', async () => {
    // Below a package.json that says "type": "module", as ./lab-data/demo of a checkout is.
    fs.mkdirSync(path.join(work, 'esm'));
    fs.writeFileSync(path.join(work, 'esm/package.json'), '{"type": "module"}\n');
    const lab = await prepareDemo({ dir: path.join(work, 'esm/prepare'), machines: 2 });
    try {
      assert.equal(lab.sites.length, 2);
      for (const s of lab.sites) {
        // The server wrote the DP through the site's link, and a machine reads it the same way.
        assert.ok(s.link.bytesUp() > 100_000, `replication to ${s.name} went through its link`);
        const r = httpRemote(s.link.url);
        for (const id of [lab.images.v2, lab.images.pe]) {
          const files = fs.readdirSync(s.dp.root, { recursive: true }).map(String);
          assert.ok(
            files.some((f) => f.includes(id)),
            `${s.name} holds image ${id.slice(0, 12)}`,
          );
        }
        await r.readFile('reimage-store.json');
      }
      for (const m of lab.machines) {
        const etc = path.join(m.disk, 'etc/reimage');
        const client = JSON.parse(fs.readFileSync(path.join(etc, 'client.json'), 'utf8')) as {
          server: string;
          guid?: string;
        };
        assert.equal(client.server, lab.server.url);
        assert.equal(client.guid, undefined, 'the machine enrolls afresh');
        assert.match(fs.readFileSync(path.join(etc, 'enrollment-token'), 'utf8'), /^rie_/);
        assert.equal(fs.existsSync(path.join(etc, 'credential')), false);
        assert.equal(
          (fs.statSync(path.join(etc, 'enrollment-token')).mode & 0o777).toString(8),
          '600',
        );
        // The client on the disk runs there (the work folder is its own package scope).
        const version = execFileSync(
          process.execPath,
          [path.join(m.disk, 'usr/lib/reimage/agent.bundle'), '--version'],
          {
            encoding: 'utf8',
            env: { ...process.env, REIMAGE_AGENT_RUN_DIR: path.join(work, 'run') },
          },
        );
        assert.equal(version.trim(), lab.versions.old);
        const files = Object.keys(m.before);
        assert.ok(files.some((f) => f.startsWith('home/')));
        assert.ok(
          files.some((f) => !f.startsWith('home/')),
          'data outside /home is hashed too',
        );
        assert.ok(!files.some((f) => f.startsWith('usr/') || f.startsWith('.reimage/')));
      }
      assert.deepEqual(
        lab.machines.map((m) => [m.name, m.site, m.plan]),
        [
          ['pc-paris-01', 'paris', 'now'],
          ['pc-lyon-01', 'lyon', 'later'],
        ],
      );
    } finally {
      await lab.close();
    }
  });

  it('four machines, one per user answer, to their end states; user data intact by the lab’s own hashes', async () => {
    const r = await runDemo({
      dir: path.join(work, 'demo'),
      machines: 4,
      countdownSeconds: 8,
      laterSeconds: 4,
      answer: answerNotification,
      timeoutMs: 12 * 60_000,
    });
    const report = JSON.stringify(r.machines, null, 2);
    assert.deepEqual(
      r.machines.map((m) => m.plan),
      [...USER_PLANS],
    );
    for (const m of r.machines) {
      assert.equal(m.endState, expectedEnd(m.plan), report);
      assert.equal(m.userDataIntact, true, report);
      assert.ok(m.statusMessages > 0, report);
      if (m.endState === 'installed') {
        assert.equal(m.imageId, r.images.v2, report);
        assert.equal(m.clientVersion, r.versions.new, report);
      } else {
        assert.equal(m.imageId, r.images.v1, report);
        assert.equal(m.clientVersion, r.versions.old, report);
      }
    }
    assert.deepEqual(
      r.machines
        .filter((m) => machineProblems(m).length > 0)
        .map((m) => [m.name, machineProblems(m)]),
      [],
      'installed machines run the image as captured, but for their restore reports',
    );
    assert.equal(r.ok, true);
  });
});
