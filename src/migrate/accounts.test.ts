import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { isReimageError } from '../errors.js';
import {
  findAccountConflicts,
  mergeAccounts,
  parseAccounts,
  readAccounts,
  selectUsers,
  type AccountFiles,
} from './accounts.js';
import type { UserAccount } from './model.js';

const temps: string[] = [];
after(() => {
  for (const t of temps) rmSync(t, { recursive: true, force: true });
});

const OLD: AccountFiles = {
  passwd: [
    'root:x:0:0:root:/root:/bin/bash',
    '# a comment',
    'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
    'alice:x:1000:1000:Alice Martin,,,:/home/alice:/bin/bash',
    'bob:x:1001:1001:Bob:/home/bob:/usr/bin/zsh',
    'broken:x:notanumber:1:x:/:/bin/sh',
    'guest1:x:1500:1500::/home/guest1:/bin/bash',
    'svc:x:60001:60001::/var/lib/svc:/usr/sbin/nologin',
    'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin',
    '+::::::',
    'alice:x:2000:2000:duplicate:/tmp:/bin/sh',
    '',
  ].join('\n'),
  shadow: [
    'root:$y$root-hash:19000:0:99999:7:::',
    'alice:$y$alice-hash:19500:0:99999:7:::',
    'bob:!:19500:0:99999:7:::',
    '',
  ].join('\n'),
  group: [
    'root:x:0:',
    'sudo:x:27:alice',
    'audio:x:29:alice,bob',
    'docker:x:998:bob',
    'alice:x:1000:',
    'bob:x:1001:',
    'project:x:1200:alice,bob,carol',
    'guest1:x:1500:',
    '',
  ].join('\n'),
};

const NEW: AccountFiles = {
  passwd: [
    'root:x:0:0:root:/root:/bin/bash',
    'daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin',
    '_apt:x:42:65534::/nonexistent:/usr/sbin/nologin',
    'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin',
    '',
  ].join('\n'),
  shadow: ['root:*:20000:0:99999:7:::', '_apt:*:20000:0:99999:7:::', ''].join('\n'),
  group: ['root:x:0:', 'sudo:x:27:', 'audio:x:29:pulse', 'nogroup:x:65534:', ''].join('\n'),
  gshadow: ['root:*::', 'sudo:*::', 'audio:*::pulse', 'nogroup:*::', ''].join('\n'),
};

describe('parseAccounts', () => {
  it('reads users with their shadow fields and supplementary groups, skipping junk', () => {
    const { users, groups } = parseAccounts(OLD);
    assert.deepEqual(
      users.map((u) => u.name),
      ['root', 'daemon', 'alice', 'bob', 'guest1', 'svc', 'nobody'],
    );
    const alice = users.find((u) => u.name === 'alice')!;
    assert.deepEqual(alice, {
      name: 'alice',
      uid: 1000,
      gid: 1000,
      gecos: 'Alice Martin,,,',
      home: '/home/alice',
      shell: '/bin/bash',
      shadow: '$y$alice-hash:19500:0:99999:7:::',
      groups: ['sudo', 'audio', 'project'],
    });
    assert.equal(users.find((u) => u.name === 'guest1')!.shadow, undefined);
    assert.deepEqual(
      groups.find((g) => g.name === 'project'),
      {
        name: 'project',
        gid: 1200,
        members: ['alice', 'bob', 'carol'],
      },
    );
  });

  it('reads a tree, where missing files read as empty', async () => {
    const root = mkdtempSync(join(tmpdir(), 'reimage-accounts-'));
    temps.push(root);
    assert.deepEqual((await readAccounts(root)).users, []);
    mkdirSync(join(root, 'etc'));
    writeFileSync(join(root, 'etc/passwd'), OLD.passwd);
    writeFileSync(join(root, 'etc/group'), OLD.group);
    const r = await readAccounts(root);
    assert.equal(r.users.length, 7);
    assert.equal(r.files.shadow, undefined);
  });
});

describe('selectUsers', () => {
  const root = mkdtempSync(join(tmpdir(), 'reimage-users-'));
  temps.push(root);
  const { users } = parseAccounts(OLD);
  const now = Date.UTC(2025, 0, 31);
  const day = 86_400;
  // alice worked yesterday (deep in her home), bob last year, guest1 has no home folder.
  for (const path of ['home/alice/Documents/deep/report.odt', 'home/bob/notes.txt']) {
    mkdirSync(join(root, path, '..'), { recursive: true });
    writeFileSync(join(root, path), 'x');
  }
  const old = now / 1000 - 400 * day;
  for (const p of [
    'home/bob/notes.txt',
    'home/bob',
    'home/alice/Documents/deep',
    'home/alice/Documents',
    'home/alice',
    'home',
  ]) {
    utimesSync(join(root, p), old, old);
  }
  utimesSync(join(root, 'home/alice/Documents/deep/report.odt'), old, now / 1000 - day);

  const cases: { name: string; policy: Parameters<typeof selectUsers>[2]; want: string[] }[] = [
    { name: 'uid 1000-59999 by default', policy: {}, want: ['alice', 'bob', 'guest1'] },
    { name: 'a uid range', policy: { minUid: 1001, maxUid: 1500 }, want: ['bob', 'guest1'] },
    { name: 'name globs', policy: { include: ['*'], exclude: ['guest*'] }, want: ['alice', 'bob'] },
    { name: 'only some names', policy: { include: ['b*', 'alice'] }, want: ['alice', 'bob'] },
    { name: 'recently active', policy: { activeWithinDays: 30 }, want: ['alice'] },
    {
      name: 'active within a longer time',
      policy: { activeWithinDays: 500 },
      want: ['alice', 'bob'],
    },
    {
      name: 'system users when asked',
      policy: { minUid: 0, maxUid: 999 },
      want: ['root', 'daemon'],
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const got = await selectUsers(root, users, c.policy, now);
      assert.deepEqual(
        got.map((u) => u.name),
        c.want,
      );
    });
  }
});

describe('mergeAccounts', () => {
  const { users, groups } = parseAccounts(OLD);
  const pick = (...names: string[]) => users.filter((u) => names.includes(u.name));

  it('adds users and their groups with the same ids, keeping the new OS entries as they are', () => {
    const m = mergeAccounts(NEW, pick('alice', 'bob'), groups, {
      shells: '/bin/sh\n/bin/bash\n',
    });
    assert.equal(
      m.files.passwd,
      NEW.passwd +
        'alice:x:1000:1000:Alice Martin,,,:/home/alice:/bin/bash\n' +
        'bob:x:1001:1001:Bob:/home/bob:/usr/bin/zsh\n',
    );
    assert.equal(
      m.files.shadow,
      NEW.shadow + 'alice:$y$alice-hash:19500:0:99999:7:::\nbob:!:19500:0:99999:7:::\n',
    );
    assert.equal(
      m.files.group,
      [
        'root:x:0:',
        'sudo:x:27:alice',
        'audio:x:29:pulse,alice,bob',
        'nogroup:x:65534:',
        'alice:x:1000:',
        'bob:x:1001:',
        'project:x:1200:alice,bob',
        '',
      ].join('\n'),
    );
    assert.equal(
      m.files.gshadow,
      [
        'root:*::',
        'sudo:*::alice',
        'audio:*::pulse,alice,bob',
        'nogroup:*::',
        'alice:!::',
        'bob:!::',
        'project:!::alice,bob',
        '',
      ].join('\n'),
    );
    assert.deepEqual(m.users, ['alice', 'bob']);
    assert.deepEqual(m.groups, ['alice', 'bob', 'project']);
    assert.deepEqual(m.notes, [
      "user bob: shell /usr/bin/zsh is not in the new OS's /etc/shells",
      'group project: member carol is not a user on the new OS; left out',
      'user bob: group docker does not exist on the new OS; membership left out',
    ]);
  });

  it("replaces an account the new OS has with the same name and id (the user's password wins)", () => {
    const target: AccountFiles = {
      ...NEW,
      passwd: NEW.passwd + 'alice:x:1000:1000:Image user:/home/alice:/bin/sh\n',
      shadow: NEW.shadow + 'alice:$y$image-default:20000:0:99999:7:::\n',
      group: NEW.group + 'alice:x:1000:\n',
    };
    const m = mergeAccounts(target, pick('alice'), groups);
    assert.match(m.files.passwd, /^alice:x:1000:1000:Alice Martin,,,:\/home\/alice:\/bin\/bash$/m);
    assert.doesNotMatch(m.files.passwd, /Image user/);
    assert.match(m.files.shadow, /^alice:\$y\$alice-hash:/m);
    assert.doesNotMatch(m.files.shadow, /image-default/);
    assert.equal(m.files.group.match(/^alice:/gm)!.length, 1);
  });

  it('gives a user without a shadow entry a locked password', () => {
    const m = mergeAccounts(NEW, pick('guest1'), groups);
    assert.match(m.files.shadow, /^guest1:!:::::::$/m);
  });

  it('refuses, listing every conflict, when a name or an id is taken', () => {
    const target: AccountFiles = {
      ...NEW,
      passwd:
        NEW.passwd +
        'demo:x:1000:1000::/home/demo:/bin/bash\nbob:x:1005:1005::/home/bob:/bin/bash\n',
      group: NEW.group + 'demo:x:1000:\nproject:x:1300:\n',
    };
    const expected = [
      {
        kind: 'user',
        name: 'alice',
        id: 1000,
        problem: 'id-taken',
        existing: { name: 'demo', id: 1000 },
      },
      {
        kind: 'user',
        name: 'bob',
        id: 1001,
        problem: 'name-has-other-id',
        existing: { name: 'bob', id: 1005 },
      },
      {
        kind: 'group',
        name: 'alice',
        id: 1000,
        problem: 'id-taken',
        existing: { name: 'demo', id: 1000 },
      },
      {
        kind: 'group',
        name: 'project',
        id: 1200,
        problem: 'name-has-other-id',
        existing: { name: 'project', id: 1300 },
      },
    ];
    assert.deepEqual(findAccountConflicts(target, pick('alice', 'bob'), groups), expected);
    assert.throws(
      () => mergeAccounts(target, pick('alice', 'bob'), groups),
      (e) =>
        isReimageError(e, 'ALREADY_EXISTS') &&
        /user alice \(uid 1000\): the new OS has uid 1000 as "demo"/.test(e.message) &&
        /group project \(gid 1200\): the new OS has "project" as gid 1300/.test(e.message) &&
        JSON.stringify(e.details.conflicts) === JSON.stringify(expected),
    );
    assert.deepEqual(findAccountConflicts(NEW, pick('alice', 'bob'), groups), []);
  });

  it('refuses root and fields that would break the files', () => {
    assert.throws(
      () => mergeAccounts(NEW, pick('root'), groups),
      (e) => isReimageError(e, 'INVALID_ARGUMENT') && /uid 0/.test(e.message),
    );
    const evil: UserAccount = { ...pick('alice')[0]!, gecos: 'x:0:0:root' };
    assert.throws(
      () => mergeAccounts(NEW, [evil], groups),
      (e) => isReimageError(e, 'INVALID_ARGUMENT'),
    );
    const newline: UserAccount = { ...pick('alice')[0]!, shadow: 'hash\nroot::0:0:::::' };
    assert.throws(
      () => mergeAccounts(NEW, [newline], groups),
      (e) => isReimageError(e, 'INVALID_ARGUMENT'),
    );
  });

  it('merging nothing changes nothing', () => {
    const m = mergeAccounts(NEW, [], groups);
    assert.deepEqual(m.files, { ...NEW, gshadow: NEW.gshadow });
  });
});
