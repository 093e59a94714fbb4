import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { generalizeCaptureOptions, listGeneralization } from './generalize.js';

const work = mkdtempSync(join(tmpdir(), 'reimage-generalize-'));
after(() => rmSync(work, { recursive: true, force: true }));

function put(root: string, rel: string, text = 'x\n'): void {
  mkdirSync(join(root, rel, '..'), { recursive: true });
  writeFileSync(join(root, rel), text);
}

test('lists what generalization leaves out or empties, and only under the root', () => {
  const root = join(work, 'root');
  const outside = join(work, 'outside');
  put(root, 'etc/machine-id', '0123456789abcdef0123456789abcdef\n');
  put(root, 'etc/ssh/ssh_host_ed25519_key');
  put(root, 'etc/ssh/sshd_config');
  put(root, 'var/log/syslog');
  put(root, 'var/log/syslog.1');
  put(root, 'var/log/empty.log', '');
  put(root, 'home/ann/.bash_history');
  put(root, 'home/ann/notes.txt');
  // A symlinked folder that points out of the tree is not entered.
  put(outside, 'ssh_host_rsa_key');
  put(outside, 'a/.bash_history');
  symlinkSync(outside, join(root, 'home/evil'));
  mkdirSync(join(root, 'var/lib'), { recursive: true });
  symlinkSync(outside, join(root, 'var/lib/dhcp'));
  const items = listGeneralization(root).map((i) => `${i.action} ${i.path}`);
  assert.deepEqual(items, [
    'empty /etc/machine-id',
    'remove /etc/ssh/ssh_host_ed25519_key',
    'remove /home/ann/.bash_history',
    'empty /var/log/syslog',
    'remove /var/log/syslog.1',
  ]);
  // A root whose /etc is a symlink out of the tree lists nothing from there.
  const root2 = join(work, 'root2');
  mkdirSync(root2);
  symlinkSync(join(root, 'etc'), join(root2, 'etc'));
  assert.deepEqual(listGeneralization(root2), []);
});

test('the capture options remove what is listed as removed and empty the rest', () => {
  const o = generalizeCaptureOptions();
  assert.ok(o.emptyFiles.includes('/etc/machine-id'));
  assert.ok(o.excludes.includes('/etc/ssh/ssh_host_*'));
  assert.ok(!o.excludes.includes('/etc/machine-id'));
});
