import assert from 'node:assert/strict';
import {
  existsSync,
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
import { isReimageError } from '../errors.js';
import { wipeOs } from './wipe.js';

describe('wipeOs', () => {
  const base = mkdtempSync(join(tmpdir(), 'reimage-wipe-'));
  after(() => rmSync(base, { recursive: true, force: true }));

  const tree = (name: string) => {
    const root = join(base, name);
    for (const d of [
      'etc/ssh',
      'usr/bin',
      'var/lib/reimage/state',
      'var/lib/dpkg',
      'var/log',
      'home/ann/Documents',
      'srv/www',
      'outside',
    ])
      mkdirSync(join(root, d), { recursive: true });
    writeFileSync(join(root, 'etc/hostname'), 'pc\n');
    writeFileSync(join(root, 'usr/bin/tool'), 'x');
    writeFileSync(join(root, 'var/lib/reimage/state/blob'), 'state');
    writeFileSync(join(root, 'var/lib/dpkg/status'), 'pkgs');
    writeFileSync(join(root, 'home/ann/Documents/cv.odt'), 'cv');
    writeFileSync(join(root, 'srv/www/index.html'), 'site');
    writeFileSync(join(root, 'outside/precious'), 'must stay');
    // A link in the OS that points at data: removing the OS must not follow it.
    symlinkSync('../outside', join(root, 'etc/link-to-data'));
    symlinkSync('/home', join(root, 'var/home-link'));
    return root;
  };

  it('removes the OS paths, keeps the kept paths and everything else', () => {
    const root = tree('a');
    const r = wipeOs(root, { osPaths: ['/etc', '/usr', '/var'], keep: ['/var/lib/reimage'] });
    assert.ok(r.removed > 0);
    for (const gone of ['etc', 'usr', 'var/lib/dpkg', 'var/log', 'var/home-link'])
      assert.equal(existsSync(join(root, gone)), false, gone);
    assert.equal(readFileSync(join(root, 'var/lib/reimage/state/blob'), 'utf8'), 'state');
    assert.equal(readFileSync(join(root, 'home/ann/Documents/cv.odt'), 'utf8'), 'cv');
    assert.equal(readFileSync(join(root, 'srv/www/index.html'), 'utf8'), 'site');
    assert.equal(readFileSync(join(root, 'outside/precious'), 'utf8'), 'must stay');
    // Run again (an interrupted wipe resumed): nothing more to do, nothing breaks.
    wipeOs(root, { osPaths: ['/etc', '/usr', '/var'], keep: ['/var/lib/reimage'] });
    assert.equal(readFileSync(join(root, 'var/lib/reimage/state/blob'), 'utf8'), 'state');
  });

  it('refuses a policy that would take the data with it', () => {
    const root = tree('b');
    for (const osPaths of [['/'], [], ['etc'], ['/etc/../home']])
      assert.throws(
        () => wipeOs(root, { osPaths, keep: [] }),
        (e) => isReimageError(e, 'INVALID_ARGUMENT'),
        JSON.stringify(osPaths),
      );
    assert.equal(readFileSync(join(root, 'etc/hostname'), 'utf8'), 'pc\n', 'nothing was removed');
  });
});
