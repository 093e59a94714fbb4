import assert from 'node:assert/strict';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { moveNewOsIn, moveOsAside, undoSwap } from './swap.js';

const base = mkdtempSync(join(tmpdir(), 'reimage-swap-'));
after(() => rmSync(base, { recursive: true, force: true }));
let n = 0;

const policy = {
  osPaths: ['/etc', '/usr', '/var', '/bin'],
  keep: ['/var/lib/reimage'],
};

/** An old OS with data beside it, a new OS applied into `.reimage/new-os`. */
function machine() {
  const root = join(base, `m${++n}`);
  const files: Record<string, string> = {
    'etc/hostname': 'old-pc\n',
    'etc/os-release': 'VERSION_ID=1\n',
    'usr/bin/tool': 'old tool',
    'var/log/syslog': 'old log',
    'var/lib/reimage/state/blob': 'state',
    'var/lib/dpkg/status': 'old pkgs',
    'home/ann/cv.odt': 'cv',
    'srv/www/index.html': 'site',
    '.reimage/outbox/log.jsonl': '',
    '.reimage/new-os/etc/os-release': 'VERSION_ID=2\n',
    '.reimage/new-os/usr/bin/tool': 'new tool',
    '.reimage/new-os/var/lib/dpkg/status': 'new pkgs',
    '.reimage/new-os/var/log/.keep': '',
    '.reimage/new-os/home/.skel-note': 'from the image',
    '.reimage/new-os/srv/www/index.html': 'image default page',
    '.reimage/new-os/opt/app/run': 'new app',
  };
  for (const [p, c] of Object.entries(files)) {
    mkdirSync(join(root, p, '..'), { recursive: true });
    writeFileSync(join(root, p), c);
  }
  symlinkSync('/etc', join(root, 'bin')); // an OS path that is a symlink: moved as a link
  return root;
}

const ino = (p: string) => lstatSync(p).ino;

describe('OS swap (move aside, move in, undo)', () => {
  it('swaps with renames only: data and kept paths keep their inodes; conflicts leave data alone', () => {
    const root = machine();
    const before = {
      cv: ino(join(root, 'home/ann/cv.odt')),
      state: ino(join(root, 'var/lib/reimage/state/blob')),
      www: ino(join(root, 'srv/www/index.html')),
      oldTool: ino(join(root, 'usr/bin/tool')),
    };
    const aside = join(root, '.reimage/rollback');
    const log = join(root, '.reimage/placed.jsonl');
    moveOsAside(root, aside, policy);
    assert.equal(existsSync(join(root, 'etc')), false);
    assert.equal(readFileSync(join(root, 'var/lib/reimage/state/blob'), 'utf8'), 'state');
    assert.equal(existsSync(join(root, 'var/log')), false);
    assert.equal(ino(join(aside, 'usr/bin/tool')), before.oldTool);
    assert.equal(lstatSync(join(aside, 'bin')).isSymbolicLink(), true);

    const r = moveNewOsIn(join(root, '.reimage/new-os'), root, log);
    assert.equal(readFileSync(join(root, 'etc/os-release'), 'utf8'), 'VERSION_ID=2\n');
    assert.equal(readFileSync(join(root, 'usr/bin/tool'), 'utf8'), 'new tool');
    assert.equal(readFileSync(join(root, 'var/lib/dpkg/status'), 'utf8'), 'new pkgs');
    assert.equal(readFileSync(join(root, 'opt/app/run'), 'utf8'), 'new app');
    assert.equal(readFileSync(join(root, 'home/.skel-note'), 'utf8'), 'from the image');
    assert.deepEqual(r.conflicts, ['/srv/www/index.html']);
    assert.equal(readFileSync(join(root, 'srv/www/index.html'), 'utf8'), 'site');
    assert.equal(ino(join(root, 'home/ann/cv.odt')), before.cv);
    assert.equal(ino(join(root, 'var/lib/reimage/state/blob')), before.state);
    assert.equal(ino(join(root, 'srv/www/index.html')), before.www);
  });

  it('every step is idempotent: run twice, the result is the same', () => {
    const root = machine();
    const aside = join(root, '.reimage/rollback');
    const log = join(root, '.reimage/placed.jsonl');
    moveOsAside(root, aside, policy);
    assert.equal(moveOsAside(root, aside, policy).moved, 0);
    moveNewOsIn(join(root, '.reimage/new-os'), root, log);
    assert.equal(moveNewOsIn(join(root, '.reimage/new-os'), root, log).moved, 0);
    assert.equal(readFileSync(join(root, 'usr/bin/tool'), 'utf8'), 'new tool');
  });

  it('undo brings the old OS back exactly, data untouched, the new OS kept aside', () => {
    const root = machine();
    const oldTool = ino(join(root, 'usr/bin/tool'));
    const cv = ino(join(root, 'home/ann/cv.odt'));
    const aside = join(root, '.reimage/rollback');
    const log = join(root, '.reimage/placed.jsonl');
    const failed = join(root, '.reimage/failed-os');
    moveOsAside(root, aside, policy);
    moveNewOsIn(join(root, '.reimage/new-os'), root, log);
    undoSwap(root, aside, log, failed);
    assert.equal(readFileSync(join(root, 'etc/os-release'), 'utf8'), 'VERSION_ID=1\n');
    assert.equal(ino(join(root, 'usr/bin/tool')), oldTool);
    assert.equal(readFileSync(join(root, 'var/log/syslog'), 'utf8'), 'old log');
    assert.equal(readFileSync(join(root, 'var/lib/dpkg/status'), 'utf8'), 'old pkgs');
    assert.equal(existsSync(join(root, 'opt')), false);
    assert.equal(existsSync(join(root, 'home/.skel-note')), false);
    assert.equal(readFileSync(join(failed, 'opt/app/run'), 'utf8'), 'new app');
    assert.equal(ino(join(root, 'home/ann/cv.odt')), cv);
    assert.equal(lstatSync(join(root, 'bin')).isSymbolicLink(), true);
    assert.equal(undoSwap(root, aside, log, failed).moved, 0, 'undo is idempotent too');
  });

  it('undo of a swap that stopped half-way (only some paths moved aside) restores the OS', () => {
    const root = machine();
    const aside = join(root, '.reimage/rollback');
    moveOsAside(root, aside, { osPaths: ['/etc', '/usr'], keep: [] }); // then killed
    undoSwap(root, aside, join(root, '.reimage/placed.jsonl'), join(root, '.reimage/failed-os'));
    assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'old-pc\n');
    assert.equal(readFileSync(join(root, 'usr/bin/tool'), 'utf8'), 'old tool');
  });

  it('refuses / as an OS path and relative paths, changing nothing', () => {
    const root = machine();
    assert.throws(
      () => moveOsAside(root, join(root, '.reimage/rollback'), { osPaths: ['/'], keep: [] }),
      /may not name \//,
    );
    assert.throws(
      () => moveOsAside(root, join(root, '.reimage/rollback'), { osPaths: ['../x'], keep: [] }),
      /absolute path/,
    );
    assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'old-pc\n');
  });
});
