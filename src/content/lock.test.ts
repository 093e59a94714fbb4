import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { isReimageError, type ReimageError } from '../errors.js';
import { acquireLock, lockHolders, type LockHolder, type LockKind } from './lock.js';

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-lock-test-'));
});
after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

let seq = 0;
function lockDir(): string {
  return path.join(dir, `locks-${seq++}`);
}

function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', '']);
  assert.ok(r.pid && r.pid > 0);
  return r.pid;
}

async function busy(p: Promise<unknown>): Promise<ReimageError> {
  try {
    await p;
  } catch (e) {
    assert.ok(isReimageError(e, 'STORE_BUSY'), `expected STORE_BUSY, got ${String(e)}`);
    return e;
  }
  assert.fail('the lock was granted');
}

function jsonFiles(d: string): string[] {
  return fs.readdirSync(d).filter((n) => n.endsWith('.json'));
}

function writeForeignLock(
  d: string,
  name: string,
  over: { kind?: LockKind; pid?: number; host?: string; refreshed?: string },
): string {
  fs.mkdirSync(d, { recursive: true });
  const now = new Date().toISOString();
  const body = {
    kind: over.kind ?? 'exclusive',
    pid: over.pid ?? process.pid,
    host: over.host ?? os.hostname(),
    purpose: 'left behind',
    created: now,
    refreshed: over.refreshed ?? now,
  };
  const file = path.join(d, name);
  fs.writeFileSync(file, JSON.stringify(body));
  return file;
}

describe('store locks', () => {
  it('lets two shared locks coexist', async () => {
    const d = lockDir();
    const a = await acquireLock(d, 'shared', 'capture a');
    const b = await acquireLock(d, 'shared', 'apply b');
    assert.equal(jsonFiles(d).length, 2);
    const holders = lockHolders(d);
    assert.deepEqual(holders.map((h) => h.purpose).sort(), ['apply b', 'capture a']);
    for (const h of holders) {
      assert.equal(h.kind, 'shared');
      assert.equal(h.pid, process.pid);
      assert.equal(h.host, os.hostname());
    }
    a.release();
    b.release();
    assert.deepEqual(jsonFiles(d), []);
  });

  it('refuses an exclusive lock while a shared one is held, naming the holder, then grants it', async () => {
    const d = lockDir();
    const shared = await acquireLock(d, 'shared', 'capture nightly');
    const e = await busy(acquireLock(d, 'exclusive', 'store gc', { waitMs: 0 }));
    assert.match(e.message, /capture nightly/);
    assert.match(e.message, new RegExp(`pid ${process.pid}`));
    const holders = e.details.holders as LockHolder[];
    assert.equal(holders.length, 1);
    assert.equal(holders[0]!.kind, 'shared');
    assert.equal(holders[0]!.purpose, 'capture nightly');
    assert.equal(holders[0]!.pid, process.pid);
    // The refused taker removed its own file.
    assert.equal(jsonFiles(d).length, 1);

    shared.release();
    const ex = await acquireLock(d, 'exclusive', 'store gc', { waitMs: 0 });
    assert.equal(jsonFiles(d).length, 1);
    ex.release();
    assert.deepEqual(jsonFiles(d), []);
  });

  it('refuses shared and exclusive locks while an exclusive one is held', async () => {
    const d = lockDir();
    const ex = await acquireLock(d, 'exclusive', 'store gc');
    const e1 = await busy(acquireLock(d, 'shared', 'capture'));
    assert.equal((e1.details.holders as LockHolder[])[0]!.purpose, 'store gc');
    await busy(acquireLock(d, 'exclusive', 'another gc'));
    assert.equal(jsonFiles(d).length, 1);
    ex.release();
    const s = await acquireLock(d, 'shared', 'capture');
    s.release();
  });

  it('release is idempotent and does not touch other locks', async () => {
    const d = lockDir();
    const a = await acquireLock(d, 'shared', 'a');
    const b = await acquireLock(d, 'shared', 'b');
    a.release();
    a.release();
    assert.deepEqual(
      lockHolders(d).map((h) => h.purpose),
      ['b'],
    );
    b.release();
  });

  it('treats a lock file left by a dead process on this host as stale and removes it', async () => {
    const d = lockDir();
    const file = writeForeignLock(d, 'dead.json', { kind: 'exclusive', pid: deadPid() });
    const s = await acquireLock(d, 'shared', 'capture', { waitMs: 0 });
    assert.equal(fs.existsSync(file), false, 'the stale lock file was not removed');
    s.release();

    const file2 = writeForeignLock(d, 'dead2.json', { kind: 'shared', pid: deadPid() });
    assert.deepEqual(lockHolders(d), []);
    assert.equal(fs.existsSync(file2), false);
    const ex = await acquireLock(d, 'exclusive', 'gc', { waitMs: 0 });
    ex.release();
  });

  it("keeps another host's fresh lock (its pid cannot be checked), drops one not refreshed for 10 minutes", async () => {
    const d = lockDir();
    const other = 'not-' + os.hostname();
    const fresh = writeForeignLock(d, 'fresh.json', { host: other, pid: deadPid() });
    const e = await busy(acquireLock(d, 'shared', 'capture'));
    assert.equal((e.details.holders as LockHolder[])[0]!.host, other);
    assert.ok(fs.existsSync(fresh));
    fs.rmSync(fresh);

    const old = new Date(Date.now() - 11 * 60 * 1000).toISOString();
    const abandoned = writeForeignLock(d, 'old.json', { host: other, refreshed: old });
    const s = await acquireLock(d, 'shared', 'capture');
    assert.equal(fs.existsSync(abandoned), false);
    s.release();
  });

  it('ignores files that are not lock files, and a missing lock folder', async () => {
    const d = lockDir();
    assert.deepEqual(lockHolders(d), []);
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, 'README'), 'not a lock');
    fs.writeFileSync(path.join(d, 'x.json.tmp'), '{}');
    const ex = await acquireLock(d, 'exclusive', 'gc');
    ex.release();
    assert.ok(fs.existsSync(path.join(d, 'README')));
  });

  it('waits for a holder that releases after 300 ms, calling onWait once', async () => {
    const d = lockDir();
    const holder = await acquireLock(d, 'shared', 'capture slow');
    const timer = setTimeout(() => holder.release(), 300);
    const seen: LockHolder[][] = [];
    const t0 = Date.now();
    try {
      const ex = await acquireLock(d, 'exclusive', 'store gc', {
        waitMs: 2000,
        onWait: (h) => seen.push(h),
      });
      const waited = Date.now() - t0;
      assert.ok(waited >= 250, `granted after ${waited} ms, before the holder released`);
      assert.ok(waited < 2000, `granted after ${waited} ms`);
      assert.equal(seen.length, 1);
      assert.equal(seen[0]![0]!.purpose, 'capture slow');
      assert.equal(jsonFiles(d).length, 1);
      ex.release();
    } finally {
      clearTimeout(timer);
      holder.release();
    }
  });

  it('gives up after waitMs when the holder stays, having called onWait once', async () => {
    const d = lockDir();
    const holder = await acquireLock(d, 'exclusive', 'gc');
    let calls = 0;
    const t0 = Date.now();
    try {
      await busy(acquireLock(d, 'shared', 'capture', { waitMs: 400, onWait: () => calls++ }));
      const waited = Date.now() - t0;
      assert.ok(waited >= 400, `gave up after ${waited} ms`);
      assert.ok(waited < 3000, `gave up after ${waited} ms`);
      assert.equal(calls, 1);
      assert.equal(jsonFiles(d).length, 1);
    } finally {
      holder.release();
    }
  });

  it('does not call onWait when the lock is free', async () => {
    const d = lockDir();
    let calls = 0;
    const l = await acquireLock(d, 'exclusive', 'gc', { waitMs: 1000, onWait: () => calls++ });
    l.release();
    assert.equal(calls, 0);
  });

  it('refuses an exclusive lock while a shared holder is rewriting its file (refresh)', async () => {
    const d = lockDir();
    const shared = await acquireLock(d, 'shared', 'capture');
    try {
      // The state a reader sees between the truncation and the write of a refresh.
      const [name] = jsonFiles(d);
      assert.ok(name);
      fs.truncateSync(path.join(d, name), 0);
      const e = await busy(acquireLock(d, 'exclusive', 'store gc', { waitMs: 0 }));
      assert.equal(e.code, 'STORE_BUSY');
    } finally {
      shared.release();
    }
  });
});
