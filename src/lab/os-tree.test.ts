import assert from 'node:assert/strict';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { compareOsTree, osTreeExceptions } from './os-tree.js';

const base = fs.mkdtempSync(path.join(tmpdir(), 'reimage-os-tree-'));
after(() => fs.rmSync(base, { recursive: true, force: true }));

function tree(root: string, files: Record<string, string>, links: Record<string, string> = {}) {
  for (const [p, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(root, p)), { recursive: true });
    fs.writeFileSync(path.join(root, p), text);
  }
  for (const [p, target] of Object.entries(links)) {
    fs.mkdirSync(path.dirname(path.join(root, p)), { recursive: true });
    fs.symlinkSync(target, path.join(root, p));
  }
}

const wipe = { osPaths: ['/etc', '/usr', '/var'], keep: ['/var/lib/reimage'] };

describe('the lab’s comparison of an installed disk with its image', () => {
  const image = path.join(base, 'image');
  tree(
    image,
    {
      'etc/os-release': 'ID=debian\n',
      'etc/fstab': 'image\n',
      'usr/bin/ls': 'ls v2\n',
      'usr/lib/reimage/agent.bundle': 'client 2\n',
      'var/lib/dpkg/status': 'Package: ls\n',
    },
    { 'etc/localtime': '/usr/share/zoneinfo/UTC' },
  );

  fs.mkdirSync(path.join(image, 'etc/reimage')); // the client's folder, without its files

  it('finds a file of the old OS left behind, an image file missing, other content and another link', () => {
    const disk = path.join(base, 'bad');
    tree(
      disk,
      {
        'etc/os-release': 'ID=debian\n',
        'etc/fstab': 'old\n',
        'usr/bin/old-tool': 'v1\n',
        'usr/lib/reimage/agent.bundle': 'client 2\n',
        'var/lib/dpkg/status': 'Package: ls\n',
      },
      { 'etc/localtime': '/usr/share/zoneinfo/Europe/Paris' },
    );
    fs.mkdirSync(path.join(disk, 'etc/reimage'));
    fs.chmodSync(path.join(disk, 'var/lib/dpkg/status'), 0o600); // same bytes, another mode
    const d = compareOsTree(disk, image, osTreeExceptions(wipe, { written: [], notPlaced: [] }));
    assert.deepEqual(d.missing, ['usr/bin/ls']);
    assert.deepEqual(d.added, ['usr/bin/old-tool']);
    assert.deepEqual(d.changed.sort(), ['etc/fstab', 'etc/localtime', 'var/lib/dpkg/status']);
  });

  it('excepts the report’s paths (and folders made for them), kept data and the agent’s areas — nothing else', () => {
    const disk = path.join(base, 'good');
    tree(
      disk,
      {
        'etc/os-release': 'ID=debian\n',
        'etc/fstab': 'image\n',
        'etc/fstab.restored': 'old\n',
        'usr/bin/ls': 'ls v2\n',
        'usr/lib/reimage/agent.bundle': 'client 2\n',
        'var/lib/dpkg/status': 'Package: ls\n',
        'var/lib/cloud/seed/nocloud/meta-data': 'instance-id: x\n',
        'var/lib/reimage/state/manifest': 'store\n',
        'usr/lib/reimage/run/agent.js': '// extracted\n',
        'etc/reimage/policy-cache.json.tmp-4242': '{"poli',
        'home/alice/a.txt': 'data\n',
        '.reimage/applied.json': '{}\n',
      },
      { 'etc/localtime': '/usr/share/zoneinfo/Europe/Paris' },
    );
    const report = {
      written: ['etc/fstab.restored', 'etc/localtime', 'var/lib/cloud/seed/nocloud/meta-data'],
      notPlaced: [],
    };
    const d = compareOsTree(disk, image, osTreeExceptions(wipe, report));
    assert.deepEqual(
      { missing: d.missing, added: d.added, changed: d.changed },
      {
        missing: [],
        added: [],
        changed: [],
      },
    );
    // Without the report, its paths and the folders made for them are found.
    assert.deepEqual(
      compareOsTree(disk, image, osTreeExceptions(wipe, { written: [], notPlaced: [] })).added,
      [
        'etc/fstab.restored',
        'var/lib/cloud',
        'var/lib/cloud/seed',
        'var/lib/cloud/seed/nocloud',
        'var/lib/cloud/seed/nocloud/meta-data',
      ],
    );
  });
});
