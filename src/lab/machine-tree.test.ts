import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { makeMachineTree, makeNewOsTree, type MachineTreeFacts } from './machine-tree.js';

const asRoot = process.getuid?.() === 0;
/** uid 1000 and up, nobody (65534) excepted. */
const isRegular = (u: { uid: number }): boolean => u.uid >= 1000 && u.uid < 65534;
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'machine-tree-'));
after(() => fs.rmSync(tmpRoot, { recursive: true, force: true }));

let n = 0;
const freshDir = (): string => path.join(tmpRoot, `t${n++}`);

interface Listed {
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeMs: number;
  sha256?: string;
  target?: string;
}

/** Every entry below root (root itself as ''), with content hashes. */
function listTree(root: string): Map<string, Listed> {
  const out = new Map<string, Listed>();
  const visit = (rel: string): void => {
    const abs = rel ? path.join(root, rel) : root;
    const st = fs.lstatSync(abs);
    const e: Listed = {
      type: st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'file',
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      size: st.isFile() ? st.size : 0,
      mtimeMs: st.mtimeMs,
    };
    if (st.isFile())
      e.sha256 = crypto.createHash('sha256').update(fs.readFileSync(abs)).digest('hex');
    if (st.isSymbolicLink()) e.target = fs.readlinkSync(abs);
    out.set(rel, e);
    if (st.isDirectory()) {
      for (const name of fs.readdirSync(abs).sort()) visit(rel ? `${rel}/${name}` : name);
    }
  };
  visit('');
  return out;
}

const filesOf = (l: Map<string, Listed>): string[] =>
  [...l].filter(([, e]) => e.type === 'file').map(([rel]) => rel);

const parseLines = (text: string): string[][] =>
  text
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => l.split(':'));

describe('makeMachineTree', () => {
  let root: string;
  let facts: MachineTreeFacts;
  let listing: Map<string, Listed>;

  before(async () => {
    root = freshDir();
    facts = await makeMachineTree(root, { seed: 7, scale: 'small' });
    listing = listTree(root);
  });

  it('is deterministic for a seed and differs for another seed', async () => {
    const again = freshDir();
    const facts2 = await makeMachineTree(again, { seed: 7, scale: 'small' });
    assert.deepEqual(listTree(again), listing);
    assert.deepEqual({ ...facts2, root: '' }, { ...facts, root: '' });

    const other = freshDir();
    await makeMachineTree(other, { seed: 8, scale: 'small' });
    const otherListing = listTree(other);
    assert.notDeepEqual([...otherListing.keys()], [...listing.keys()]);
    const hashes = (l: Map<string, Listed>) => new Set([...l.values()].map((e) => e.sha256));
    const shared = [...hashes(otherListing)].filter((h) => h && hashes(listing).has(h));
    // only fixed texts (skeleton files, README, ...) may be the same
    assert.ok(shared.length < filesOf(listing).length / 4, `${shared.length} identical files`);
  });

  it('writes consistent passwd, shadow, group and gshadow', () => {
    const read = (rel: string) => parseLines(fs.readFileSync(path.join(root, rel), 'utf8'));
    const passwd = read('etc/passwd');
    const shadow = read('etc/shadow');
    const group = read('etc/group');
    const gshadow = read('etc/gshadow');
    const gids = new Set(group.map((g) => Number(g[2])));
    const groupNames = new Set(group.map((g) => g[0]));
    const userNames = new Set(passwd.map((p) => p[0]));

    assert.equal(new Set(passwd.map((p) => p[2])).size, passwd.length, 'uids are unique');
    assert.equal(userNames.size, passwd.length, 'user names are unique');
    assert.equal(gids.size, group.length, 'gids are unique');
    assert.deepEqual(
      shadow.map((s) => s[0]),
      passwd.map((p) => p[0]),
    );
    assert.deepEqual(
      gshadow.map((s) => s[0]),
      group.map((g) => g[0]),
    );
    for (const [name, , uid, gid, , home] of passwd) {
      assert.ok(gids.has(Number(gid)), `${name}'s gid ${gid} exists`);
      if (isRegular({ uid: Number(uid) }) || Number(uid) === 0) {
        const st = fs.lstatSync(path.join(root, home ?? ''));
        assert.ok(st.isDirectory(), `${name}'s home ${home} exists`);
      }
    }
    for (const g of group) {
      for (const m of (g[3] ?? '').split(',').filter(Boolean)) assert.ok(userNames.has(m), m);
    }
    // the facts say the same as the files
    assert.deepEqual(
      facts.users.map((u) => [u.name, 'x', String(u.uid), String(u.gid), u.gecos, u.home, u.shell]),
      passwd,
    );
    assert.deepEqual(
      facts.users.map((u) => `${u.name}:${u.shadow}`),
      shadow.map((s) => s.join(':')),
    );
    for (const u of facts.users) {
      for (const g of u.groups) {
        assert.ok(groupNames.has(g));
        assert.ok(facts.groups.find((x) => x.name === g)?.members.includes(u.name));
      }
    }
    const regular = facts.users.filter(isRegular);
    assert.equal(regular.length, 3);
    assert.ok(facts.users.some((u) => u.uid > 0 && u.uid < 1000));
    assert.ok(regular.some((u) => u.groups.includes('developers')));
    for (const u of regular) {
      assert.ok(
        facts.groups.some((g) => g.gid === u.gid && g.name === u.name),
        'own group',
      );
      assert.match(u.shadow ?? '', /^\$(y\$j9T|6)\$[./0-9A-Za-z]+\$[./0-9A-Za-z]{43,86}:\d+:/);
    }
    assert.equal(listing.get('etc/shadow')?.mode, 0o640);
    assert.equal(listing.get('etc/gshadow')?.mode, 0o640);
  });

  it('keeps secrets in files only their owner can read', () => {
    const secretFiles = [...listing.keys()].filter(
      (rel) =>
        /^etc\/NetworkManager\/system-connections\/.+\.nmconnection$/.test(rel) ||
        /^etc\/ssh\/ssh_host_\w+_key$/.test(rel) ||
        /^home\/[^/]+\/\.ssh\/id_ed25519$/.test(rel) ||
        /^home\/[^/]+\/\.gnupg\/private-keys-v1\.d\/.+\.key$/.test(rel) ||
        /^home\/[^/]+\/\.smbcredentials$/.test(rel) ||
        [
          'etc/sssd/sssd.conf',
          'etc/reimage/credential',
          'etc/krb5.keytab',
          'etc/netplan/01-network-manager-all.yaml',
        ].includes(rel),
    );
    // Wi-Fi, 3 host keys, per user an SSH key and 2 GnuPG keys, the CIFS credentials, 4 more
    assert.ok(secretFiles.length >= 1 + 3 + 3 * 3 + 1 + 4, secretFiles.join('\n'));
    for (const rel of secretFiles) assert.equal(listing.get(rel)?.mode, 0o600, rel);
    for (const u of Object.keys(facts.userFiles)) {
      assert.equal(listing.get(`home/${u}/.gnupg`)?.mode, 0o700);
      assert.equal(listing.get(`home/${u}/.gnupg/private-keys-v1.d`)?.mode, 0o700);
      assert.equal(listing.get(`home/${u}/.ssh`)?.mode, 0o700);
      assert.equal(listing.get(`home/${u}/.ssh/id_ed25519.pub`)?.mode, 0o644);
    }
  });

  it('plants every secret it reports, and none of them in the logs', () => {
    assert.ok(facts.secrets.length >= 10);
    assert.ok(facts.secrets.includes(facts.wifi.psk));
    assert.ok(facts.secrets.includes(facts.client.credential));
    for (const u of facts.users.filter((x) => x.shadow?.startsWith('$'))) {
      assert.ok(facts.secrets.includes(u.shadow?.split(':')[0] ?? ''), u.name);
    }
    const contents = filesOf(listing).map((rel) => ({
      rel,
      text: fs.readFileSync(path.join(root, rel)).toString('latin1'),
    }));
    for (const secret of facts.secrets) {
      const where = contents.filter((c) => c.text.includes(secret)).map((c) => c.rel);
      assert.ok(where.length > 0, `secret ${secret.slice(0, 6)}… is planted`);
      assert.ok(!where.some((rel) => rel.startsWith('var/log/')), `${where.join(', ')}`);
    }
  });

  it('returns facts that match the tree', () => {
    const files = filesOf(listing);
    assert.equal(facts.totalFiles, files.length);
    assert.equal(
      facts.totalBytes,
      [...listing.values()].reduce((sum, e) => sum + e.size, 0),
    );
    const inHomes = Object.values(facts.userFiles).flat();
    for (const [user, list] of Object.entries(facts.userFiles)) {
      assert.deepEqual(
        list,
        files.filter((f) => f.startsWith(`home/${user}/`)),
      );
      assert.ok(list.length > 40, `${user} has a lived-in home`);
      for (const want of [
        'Documents/Résumé.odt',
        'Documents/REPORT-FINAL.ODT',
        '.config/dconf/user',
        '.config/gtk-3.0/bookmarks',
        '.local/share/backgrounds/wallpaper.jpg',
        '.config/chromium/Default/Bookmarks',
        '.ssh/id_ed25519',
        '.gnupg/pubring.kbx',
        '.bashrc',
      ]) {
        assert.ok(list.includes(`home/${user}/${want}`), `${user}: ${want}`);
      }
      assert.ok(
        list.some((f) => /\/\.mozilla\/firefox\/[^/]+\.default-release\/places\.sqlite$/.test(f)),
      );
      assert.ok(list.some((f) => f.includes('/.cache/')));
      assert.ok(list.some((f) => f.endsWith('.part') || f.endsWith('.crdownload')));
      assert.equal(listing.get(`home/${user}/docs`)?.type, 'symlink');
    }
    assert.deepEqual(
      facts.outsideHome,
      files.filter((f) => /^(srv|opt\/app\/data|var\/lib\/postgresql|data)\//.test(f)),
    );
    for (const prefix of [
      'srv/www/site/',
      'opt/app/data/',
      'var/lib/postgresql/15/main/',
      'data/projects/',
    ])
      assert.ok(
        facts.outsideHome.some((f) => f.startsWith(prefix)),
        prefix,
      );
    assert.equal(facts.osFiles, files.length - inHomes.length - facts.outsideHome.length);
    assert.deepEqual(
      facts.symlinks,
      Object.fromEntries(
        [...listing].filter(([, e]) => e.type === 'symlink').map(([rel, e]) => [rel, e.target]),
      ),
    );
    for (const [cat, list] of Object.entries(facts.categories)) {
      assert.ok(list.length > 0, `category ${cat} is not empty`);
      for (const rel of list) assert.equal(listing.get(rel)?.type, 'file', `${cat}: ${rel}`);
    }
    // machine and client state as the files say
    const read = (rel: string) => fs.readFileSync(path.join(root, rel), 'utf8');
    assert.equal(read('etc/hostname'), `${facts.hostname}\n`);
    assert.equal(read('etc/machine-id'), `${facts.machineId}\n`);
    assert.equal(read('etc/timezone'), `${facts.machineState.timezone}\n`);
    assert.match(read('etc/default/locale'), new RegExp(`LANG=${facts.machineState.locale}`));
    assert.match(read('etc/os-release'), /^ID=debian$/m);
    assert.match(read('etc/os-release'), /^VERSION_ID="12"$/m);
    assert.match(read(facts.wifi.file), new RegExp(`^psk=${escape(facts.wifi.psk)}$`, 'm'));
    assert.match(
      read('etc/fstab'),
      new RegExp(`^${escape(facts.cifs.share)} ${facts.cifs.mountPoint} cifs `, 'm'),
    );
    const client = JSON.parse(read('etc/reimage/client.json')) as Record<string, unknown>;
    assert.equal(client.guid, facts.client.guid);
    assert.equal(client.fingerprint, facts.client.fingerprint);
    assert.equal(read('etc/reimage/credential').trim(), facts.client.credential);
    const net = facts.machineState.network;
    assert.ok(net.files.length > 0 || net.mode === 'dhcp');
    for (const f of net.files) {
      assert.ok(listing.has(f), f);
      if (net.mode === 'static') assert.ok(read(f).includes(net.address), f);
    }
  });

  it('records the intended owners, and sets them when run as root', (t) => {
    for (const u of facts.users.filter(isRegular)) {
      const home = u.home.slice(1);
      assert.deepEqual(facts.owners[home], [u.uid, u.gid]);
      for (const f of facts.userFiles[u.name] ?? [])
        assert.deepEqual(facts.owners[f], [u.uid, u.gid], f);
    }
    assert.deepEqual(facts.owners['etc/shadow'], [0, 42]);
    assert.deepEqual(facts.owners['var/lib/postgresql/15/main/PG_VERSION'], [105, 110]);
    assert.ok(
      facts.outsideHome
        .filter((f) => f.startsWith('data/projects/'))
        .every((f) => facts.owners[f]?.[1] === 2000),
    );
    assert.equal(facts.asRoot, asRoot);
    if (!asRoot) return t.skip('not running as root: owners are not set');
    for (const [rel, e] of listing) {
      const want = facts.owners[rel] ?? [0, 0];
      assert.deepEqual([e.uid, e.gid], want, rel);
    }
  });

  it('writes files whose content matches their type', () => {
    const user = Object.keys(facts.userFiles)[0] ?? '';
    const head = (rel: string, n = 16) => fs.readFileSync(path.join(root, rel)).subarray(0, n);
    const odt = fs.readFileSync(path.join(root, `home/${user}/Documents/Résumé.odt`));
    assert.equal(odt.subarray(0, 4).toString('latin1'), 'PK\x03\x04');
    assert.ok(odt.includes('mimetypeapplication/vnd.oasis.opendocument.text'));
    assert.equal(
      head(`home/${user}/Documents/REPORT-FINAL.ODT`, 4).toString('latin1'),
      'PK\x03\x04',
    );
    const byExt = (ext: string) =>
      (facts.userFiles[user] ?? []).filter((f) => f.toLowerCase().endsWith(ext));
    for (const f of byExt('.pdf')) assert.equal(head(f, 5).toString(), '%PDF-');
    for (const f of byExt('.jpg')) assert.deepEqual([...head(f, 3)], [0xff, 0xd8, 0xff]);
    for (const f of byExt('.png')) assert.deepEqual([...head(f, 4)], [0x89, 0x50, 0x4e, 0x47]);
    for (const f of byExt('.sqlite'))
      assert.equal(head(f).toString('latin1'), 'SQLite format 3\x00');
    assert.equal(head(`home/${user}/.config/dconf/user`, 8).toString(), 'GVariant');
    assert.ok(
      fs
        .readFileSync(path.join(root, `home/${user}/.config/gtk-3.0/bookmarks`), 'utf8')
        .includes('smb://'),
    );
    assert.equal(head('usr/bin/bash', 4).toString('latin1'), '\x7fELF');
    const sizes = (facts.categories.documents ?? []).map((f) => listing.get(f)?.size ?? 0);
    assert.ok(Math.min(...sizes) >= 100 && Math.max(...sizes) <= 2 * 1024 * 1024);
  });

  it('makes the default scale, other user counts and another release', async () => {
    const big = await makeMachineTree(freshDir(), { seed: 3 });
    assert.ok(big.totalFiles > 1500 && big.totalFiles < 2600, `${big.totalFiles} files`);
    assert.ok(big.totalBytes > 25e6 && big.totalBytes < 70e6, `${big.totalBytes} bytes`);

    const one = await makeMachineTree(freshDir(), {
      seed: 4,
      scale: 'small',
      users: 1,
      osVersion: '11',
      hostname: 'pc-1',
    });
    assert.equal(Object.keys(one.userFiles).length, 1);
    assert.equal(one.hostname, 'pc-1');
    assert.ok(one.users.find((u) => u.uid === 1000)?.groups.includes('developers'));
    assert.match(fs.readFileSync(path.join(one.root, 'etc/os-release'), 'utf8'), /VERSION_ID="11"/);
    assert.match(fs.readFileSync(path.join(one.root, 'etc/apt/sources.list'), 'utf8'), /bullseye/);

    const none = await makeMachineTree(freshDir(), { seed: 5, scale: 'small', users: 0 });
    assert.deepEqual(none.userFiles, {});
    assert.ok(none.outsideHome.length > 0);
  });
});

describe('makeNewOsTree', () => {
  it('replaces the OS and keeps homes and data byte for byte', async () => {
    const root = freshDir();
    const facts = await makeMachineTree(root, { seed: 11, scale: 'small' });
    const before = listTree(root);
    const keep = (l: Map<string, Listed>) =>
      new Map(
        [...l].filter(([rel]) => /^(home|srv|opt|data|var\/lib\/postgresql)(\/|$)/.test(rel)),
      );

    const { files } = await makeNewOsTree(root, { seed: 12, osVersion: '13' });
    const after = listTree(root);
    assert.deepEqual(keep(after), keep(before));
    assert.match(fs.readFileSync(path.join(root, 'etc/os-release'), 'utf8'), /VERSION_ID="13"/);
    assert.match(fs.readFileSync(path.join(root, 'etc/os-release'), 'utf8'), /trixie/);
    for (const f of files) assert.ok(after.has(f), f);
    for (const want of [
      'etc/skel/.bashrc',
      'etc/skel/.profile',
      'etc/hostname',
      'etc/passwd',
      'etc/ssh/ssh_host_ed25519_key',
    ])
      assert.ok(files.includes(want), want);
    // the old OS is gone: its client state, network connections, old kernel
    assert.ok(!after.has('etc/reimage/client.json'));
    assert.ok(!after.has(facts.wifi.file));
    assert.ok(![...after.keys()].some((rel) => rel.startsWith('boot/vmlinuz-6.1.')));
    assert.notEqual(
      after.get('etc/ssh/ssh_host_ed25519_key')?.sha256,
      before.get('etc/ssh/ssh_host_ed25519_key')?.sha256,
    );
    assert.ok(!fs.readFileSync(path.join(root, 'etc/passwd'), 'utf8').includes(':1000:'));
  });

  it('works on a wiped tree and ships home files for the users it is told', async () => {
    const root = freshDir();
    const facts = await makeMachineTree(root, { seed: 13, scale: 'small' });
    for (const d of ['etc', 'usr', 'boot', 'var', 'home', 'bin', 'lib', 'sbin', 'lib64'])
      fs.rmSync(path.join(root, d), { recursive: true, force: true });
    const homes = facts.users.filter(isRegular);
    const { files } = await makeNewOsTree(root, { homes });
    const again = freshDir();
    await makeMachineTree(again, { seed: 13, scale: 'small' });
    for (const d of ['etc', 'usr', 'boot', 'var', 'home', 'bin', 'lib', 'sbin', 'lib64'])
      fs.rmSync(path.join(again, d), { recursive: true, force: true });
    await makeNewOsTree(again, { homes });
    assert.deepEqual(listTree(again), listTree(root), 'deterministic');
    for (const u of homes) {
      const rel = `${u.home.slice(1)}/.bashrc`;
      assert.ok(files.includes(rel), rel);
      assert.ok(facts.userFiles[u.name]?.includes(rel), 'the same path as a user file: a conflict');
      if (asRoot) {
        const st = fs.lstatSync(path.join(root, u.home));
        assert.deepEqual([st.uid, st.gid, st.mode & 0o7777], [u.uid, u.gid, 0o700]);
      }
    }
  });
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
