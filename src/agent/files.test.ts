import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { removeStaleTemps } from './files.js';

const base = mkdtempSync(join(tmpdir(), 'reimage-files-'));
after(() => rmSync(base, { recursive: true, force: true }));

/** The pid of a process that ran and is gone. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', '']);
  assert.ok(r.pid && r.status === 0);
  return r.pid;
}

describe('temporary files of atomic writes cut by a kill', () => {
  it('removes those of a process that is gone; keeps a live writer’s and everything else', () => {
    const dir = join(base, 'etc-reimage');
    mkdirSync(join(dir, 'sub'), { recursive: true });
    const dead = deadPid();
    const files = [
      `policy-cache.json.tmp-${dead}`,
      `client.json.tmp-${process.pid}`,
      'policy-cache.json',
      'notes.tmp-x',
      `sub/daemon.json.tmp-${dead}`,
    ];
    for (const f of files) writeFileSync(join(dir, f), '{}');
    assert.deepEqual(removeStaleTemps(dir), [`policy-cache.json.tmp-${dead}`]);
    assert.deepEqual(readdirSync(dir).sort(), [
      `client.json.tmp-${process.pid}`,
      'notes.tmp-x',
      'policy-cache.json',
      'sub',
    ]);
    assert.deepEqual(removeStaleTemps(join(base, 'missing')), []);
  });
});
