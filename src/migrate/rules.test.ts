import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Value } from '@sinclair/typebox/value';
import { parse as parseYaml } from 'yaml';

import { isReimageError } from '../errors.js';
import type { UserAccount } from './model.js';
import {
  RuleComponent,
  builtinRuleSets,
  defaultRuleSets,
  globRegExp,
  patternProblem,
} from './rule-format.js';
import { componentsFor, selectItems, type StateComponent } from './rules.js';
import { builtinComponents, clientStateComponent, machineStateComponents } from './rulesets.js';

const temps: string[] = [];
after(() => {
  for (const t of temps) rmSync(t, { recursive: true, force: true });
});

type Node = string | { link: string } | { dir: true } | { fifo: true };

/** Writes a tree: "a/b.txt": "text", "a/l": {link: "target"}, "a/empty": {dir: true}. */
function tree(spec: Record<string, Node>): string {
  const root = mkdtempSync(join(tmpdir(), 'reimage-rules-'));
  temps.push(root);
  for (const [path, node] of Object.entries(spec)) {
    const full = join(root, path);
    mkdirSync(dirname(full), { recursive: true });
    if (typeof node === 'string') writeFileSync(full, node);
    else if ('link' in node) symlinkSync(node.link, full);
    else if ('dir' in node) mkdirSync(full, { recursive: true });
    else execFileSync('mkfifo', [full]);
  }
  return root;
}

function user(name: string, uid: number, home = `/home/${name}`): UserAccount {
  return { name, uid, gid: uid, gecos: '', home, shell: '/bin/bash', groups: [] };
}

const comp = (
  name: string,
  include: string[],
  more: Partial<Omit<StateComponent, 'name' | 'include'>> = {},
): StateComponent => ({ name, kind: 'user-files', include, ...more });

async function select(
  spec: Record<string, Node>,
  components: StateComponent[],
  users: UserAccount[] = [],
) {
  const root = tree(spec);
  return { root, ...(await selectItems({ root, components, users })) };
}

const files = (s: { items: { path: string; type: string }[] }) =>
  s.items.filter((i) => i.type !== 'dir').map((i) => i.path);
const dirs = (s: { items: { path: string; type: string }[] }) =>
  s.items.filter((i) => i.type === 'dir').map((i) => i.path);
const excludedBy = (s: { excluded: { path: string; reason: string; component: string }[] }) =>
  s.excluded.map((e) => `${e.path} ${e.reason} ${e.component}`);

describe('componentsFor', () => {
  it('applies the default rule sets when none are named, none for [], inline rules last', () => {
    const all = componentsFor({});
    assert.deepEqual(
      all.map((c) => c.name),
      defaultRuleSets.flatMap((n) => builtinComponents[n].map((c) => c.name)),
    );
    assert.ok(!all.some((c) => c.name === 'data-outside-home'));
    assert.deepEqual(componentsFor({ ruleSets: [] }), []);
    const inline = comp('app', ['/etc/app']) as RuleComponent;
    assert.deepEqual(
      componentsFor({ ruleSets: ['ssh-gpg-keys', 'data-outside-home'], rules: [inline] }).map(
        (c) => c.name,
      ),
      ['ssh-gpg-keys', 'data-outside-home', 'database-folders', 'app'],
    );
  });

  it('refuses a rule set it does not know rather than migrating less', () => {
    assert.throws(
      () => componentsFor({ ruleSets: ['user-documents', 'user-mail'] }),
      (e) => isReimageError(e, 'REFERENCE_UNKNOWN') && /user-mail/.test(e.message),
    );
  });

  it('every built-in set has valid components in the YAML rule format', () => {
    for (const { name } of builtinRuleSets) {
      const list = builtinComponents[name];
      assert.ok(list.length > 0, name);
      for (const c of list) assert.ok(Value.Check(RuleComponent, c), `${name}: ${c.name}`);
    }
    for (const c of [...Object.values(machineStateComponents), clientStateComponent]) {
      assert.ok(
        Value.Check(RuleComponent, { ...c, kind: 'os-settings' }),
        `${c.name} is valid apart from its kind`,
      );
    }
  });

  it('docs/migration-rules.md shows the built-in sets as they are', () => {
    const doc = readFileSync(new URL('../../../docs/migration-rules.md', import.meta.url), 'utf8');
    const block = /<!-- built-in rule sets[^>]*-->\s*```yaml\n([\s\S]*?)```/.exec(doc);
    assert.ok(block, 'the generated block is there');
    const shown = parseYaml(block[1]!) as Record<string, unknown>;
    assert.deepEqual(shown, {
      ...builtinComponents,
      'machine-state': Object.values(machineStateComponents),
      'client-state': [clientStateComponent],
    });
  });
});

describe('globs', () => {
  it('match one segment: * ? [class] [!class] and escapes, dot names included', () => {
    const cases: [string, string, boolean][] = [
      ['*', '.bashrc', true],
      ['*.txt', 'a.txt', true],
      ['*.txt', 'a.TXT', false],
      ['?.md', 'ü.md', true],
      ['?.md', 'ab.md', false],
      ['[!.]*', '.hidden', false],
      ['[!.]*', 'Documents', true],
      ['[^.]*', 'Documents', true],
      ['[a-c]x', 'bx', true],
      ['[a-c]x', 'dx', false],
      ['[]]', ']', true],
      ['Profile *', 'Profile 1', true],
      ['.~lock.*#', '.~lock.report.odt#', true],
      ['a\\*', 'a*', true],
      ['a\\*', 'ab', false],
      ['[ab', '[ab', true],
      ['(x)+{1}|$^', '(x)+{1}|$^', true],
      ['a.b', 'axb', false],
    ];
    for (const [glob, name, want] of cases) {
      assert.equal(globRegExp(glob)!.test(name), want, `${glob} ${name}`);
    }
    assert.ok(globRegExp('*.PDF', { nocase: true })!.test('scan.pdf'));
  });

  it('a class that is not valid is a pattern problem', () => {
    assert.equal(globRegExp('[z-a]'), undefined);
    assert.match(patternProblem('/data/[z-a]*') ?? '', /character class/);
    assert.match(patternProblem('/data/** [[z-a].txt]') ?? 'x', /./);
    assert.equal(patternProblem('/data/[a-z]* [*.txt]'), undefined);
  });
});

describe('selectItems: locations', () => {
  it('* is one segment, ** any depth, and a matched folder brings everything below it', async () => {
    const s = await select(
      {
        'opt/app/data/a': 'a',
        'opt/app/data/sub/b': 'b',
        'opt/app/lib/data/c': 'c',
        'opt/x/y/data/d': 'd',
        'srv/www/index.html': 'e',
        'srv/other': 'f',
        'etc/passwd': 'p',
      },
      [comp('one', ['/opt/*/data', '/srv/www/*.html'])],
    );
    assert.deepEqual(files(s), ['opt/app/data/a', 'opt/app/data/sub/b', 'srv/www/index.html']);

    const deep = await select({ 'opt/app/data/a': 'a', 'opt/x/y/data/d': 'd', 'opt/x/y/z': 'z' }, [
      comp('deep', ['/opt/**/data']),
    ]);
    assert.deepEqual(files(deep), ['opt/app/data/a', 'opt/x/y/data/d']);
  });

  it('~/ is each selected user home; a component may narrow the users', async () => {
    const spec = {
      'home/alice/notes.txt': 'a',
      'home/bob/notes.txt': 'b',
      'home/carol/notes.txt': 'c',
    };
    const users = [user('alice', 1000), user('bob', 1001)];
    const s = await select(spec, [comp('n', ['~/notes.txt'])], users);
    assert.deepEqual(files(s), ['home/alice/notes.txt', 'home/bob/notes.txt']);
    assert.deepEqual(
      s.items.filter((i) => i.type === 'file').map((i) => i.user),
      ['alice', 'bob'],
    );
    const only = await select(
      spec,
      [comp('n', ['~/notes.txt'], { users: { exclude: ['b*'] } })],
      users,
    );
    assert.deepEqual(files(only), ['home/alice/notes.txt']);
  });

  it('type filters match the file name case-insensitively', async () => {
    const s = await select(
      {
        'home/alice/A.PDF': 'x',
        'home/alice/work/b.Pdf': 'x',
        'home/alice/work/c.pdfx': 'x',
        'home/alice/work/d.pdf.bak': 'x',
        'home/alice/.hidden/e.pdf': 'x',
      },
      [comp('docs', ['~/[!.]* [*.pdf]'])],
      [user('alice', 1000)],
    );
    assert.deepEqual(files(s), ['home/alice/A.PDF', 'home/alice/work/b.Pdf']);
  });

  it('records the folders on the way with their modes, and empty folders an untyped include names', async () => {
    const root = tree({
      'home/alice/Documents/a.txt': 'hello',
      'home/alice/Documents/empty': { dir: true },
      'home/alice/Music/empty': { dir: true },
    });
    chmodSync(join(root, 'home/alice/Documents'), 0o750);
    const again = await selectItems({
      root,
      components: [comp('docs', ['~/Documents', '~/** [*.txt]'])],
      users: [user('alice', 1000)],
    });
    assert.deepEqual(dirs(again), [
      'home',
      'home/alice',
      'home/alice/Documents',
      'home/alice/Documents/empty',
    ]);
    const docs = again.items.find((i) => i.path === 'home/alice/Documents')!;
    assert.equal(docs.mode, 0o750);
    assert.equal(docs.user, 'alice');
    assert.equal(again.items.find((i) => i.path === 'home')!.user, undefined);
    const file = again.items.find((i) => i.path === 'home/alice/Documents/a.txt')!;
    assert.equal(file.size, 5);
    assert.equal(file.uid, process.getuid!());
    assert.equal(again.bytes, 5);
  });

  it('is deterministic: sorted by path', async () => {
    const spec: Record<string, Node> = {};
    for (const n of ['b', 'a', 'a-c', 'a/b', 'Z', 'é', 'a b']) spec[`d/${n}/f`] = n;
    const root = tree(spec);
    const o = { root, components: [comp('all', ['/d'])], users: [] };
    const one = await selectItems(o);
    const two = await selectItems(o);
    assert.deepEqual(one, two);
    const paths = one.items.map((i) => i.path);
    assert.deepEqual(paths, [...paths].sort());
  });
});

describe('selectItems: the more specific rule wins', () => {
  const spec = {
    'd/keep.txt': 'k',
    'd/x/f.txt': 'f',
    'd/x/g.log': 'g',
    'd/x/keep/h.txt': 'h',
    'e/f.txt': 'e',
  };
  const cases: {
    name: string;
    components: StateComponent[];
    selected: string[];
    excluded: string[];
  }[] = [
    {
      name: 'a more specific exclude wins',
      components: [comp('a', ['/d/**'], { exclude: ['/d/x/**'] })],
      selected: ['d/keep.txt'],
      excluded: ['d/x more-specific-exclude a'],
    },
    {
      name: 'an exclude as specific as the include wins',
      components: [comp('a', ['/d/x'], { exclude: ['/d/x'] })],
      selected: [],
      excluded: ['d/x exclude a'],
    },
    {
      name: 'a more specific include wins back',
      components: [comp('a', ['/d', '/d/x/keep'], { exclude: ['/d/x'] })],
      selected: ['d/keep.txt', 'd/x/keep/h.txt'],
      excluded: ['d/x/f.txt more-specific-exclude a', 'd/x/g.log more-specific-exclude a'],
    },
    {
      name: 'at the same depth a type filter is more specific (include)',
      components: [comp('a', ['/d/** [*.txt]'], { exclude: ['/d/**'] })],
      selected: ['d/keep.txt', 'd/x/f.txt', 'd/x/keep/h.txt'],
      excluded: [],
    },
    {
      name: 'at the same depth a type filter is more specific (exclude)',
      components: [comp('a', ['/d/**'], { exclude: ['/d/** [*.log]'] })],
      selected: ['d/keep.txt', 'd/x/f.txt', 'd/x/keep/h.txt'],
      excluded: ['d/x/g.log more-specific-exclude a'],
    },
    {
      name: 'typed include and typed exclude at the same depth: exclude',
      components: [comp('a', ['/d/** [*.txt, *.log]'], { exclude: ['/d/** [*.LOG]'] })],
      selected: ['d/keep.txt', 'd/x/f.txt', 'd/x/keep/h.txt'],
      excluded: ['d/x/g.log exclude a'],
    },
    {
      name: "an exclude leaves another component's include alone",
      components: [comp('a', ['/d'], { exclude: ['/d/x'] }), comp('b', ['/d/x/** [*.log]'])],
      selected: ['d/keep.txt', 'd/x/g.log'],
      excluded: ['d/x/f.txt more-specific-exclude a', 'd/x/keep/h.txt more-specific-exclude a'],
    },
    {
      name: 'an unconditional exclude of any component wins over every include',
      components: [
        comp('a', ['/d/x/keep/h.txt', '/d/keep.txt']),
        comp('b', ['/e'], { unconditionalExclude: ['/d/x'] }),
      ],
      selected: ['d/keep.txt', 'e/f.txt'],
      excluded: ['d/x unconditional-exclude b'],
    },
    {
      name: 'a typed unconditional exclude takes only those files',
      components: [comp('a', ['/d', '/e'], { unconditionalExclude: ['/** [*.log]'] })],
      selected: ['d/keep.txt', 'd/x/f.txt', 'd/x/keep/h.txt', 'e/f.txt'],
      excluded: ['d/x/g.log unconditional-exclude a'],
    },
    {
      name: 'the more specific of two components names the item',
      components: [comp('broad', ['/d']), comp('narrow', ['/d/x/keep'])],
      selected: ['d/keep.txt', 'd/x/f.txt', 'd/x/g.log', 'd/x/keep/h.txt'],
      excluded: [],
    },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const s = await select(spec, c.components);
      assert.deepEqual(files(s), c.selected);
      assert.deepEqual(excludedBy(s), c.excluded);
      if (c.name.startsWith('the more specific of two')) {
        const by = Object.fromEntries(s.items.map((i) => [i.path, i.component]));
        assert.equal(by['d/x/keep/h.txt'], 'narrow');
        assert.equal(by['d/x/f.txt'], 'broad');
      }
    });
  }

  it('reports an excluded folder once, without walking it', async () => {
    const spec: Record<string, Node> = { 'home/alice/.config/app.conf': 'x' };
    for (let i = 0; i < 50; i++) spec[`home/alice/.cache/thumbs/${i}.png`] = 'x';
    const s = await select(
      spec,
      [comp('home', ['~/'], { unconditionalExclude: ['~/.cache'] })],
      [user('alice', 1000)],
    );
    assert.deepEqual(files(s), ['home/alice/.config/app.conf']);
    assert.deepEqual(s.excluded, [
      {
        path: 'home/alice/.cache',
        type: 'dir',
        component: 'home',
        reason: 'unconditional-exclude',
        pattern: '~/.cache',
      },
    ]);
  });

  it('refuses a malformed pattern', async () => {
    await assert.rejects(select({ a: 'a' }, [comp('bad', ['relative/path'])]), (e) =>
      isReimageError(e, 'INVALID_ARGUMENT'),
    );
  });
});

describe('selectItems: the tree stays the tree', () => {
  it('records symlinks without following them, inside or out of the tree', async () => {
    const outside = tree({ 'secret.txt': 'outside' });
    const s = await select(
      {
        'home/alice/Documents/a.txt': 'a',
        'home/alice/Documents/to-etc': { link: '/etc' },
        'home/alice/Documents/up': { link: '../../../..' },
        'home/alice/Documents/out': { link: outside },
        'home/alice/Documents/dangling': { link: 'nowhere' },
        'etc/shadow': 'root:x:',
      },
      [comp('docs', ['~/Documents'])],
      [user('alice', 1000)],
    );
    assert.deepEqual(
      s.items.filter((i) => i.type === 'symlink').map((i) => [i.path, i.target]),
      [
        ['home/alice/Documents/dangling', 'nowhere'],
        ['home/alice/Documents/out', outside],
        ['home/alice/Documents/to-etc', '/etc'],
        ['home/alice/Documents/up', '../../../..'],
      ],
    );
    assert.deepEqual(
      files(s).filter((p) => !p.startsWith('home/alice/Documents/')),
      [],
    );
    assert.ok(s.items.every((i) => !i.path.startsWith('/') && !i.path.split('/').includes('..')));
  });

  it('resolves a home through symlinks as if root were /, never leaving root', async () => {
    const outside = tree({ 'bob/notes.txt': 'outside' });
    const s = await select(
      {
        'var/home/alice/notes.txt': 'a',
        home: { link: '/var/home' },
        'var/home/bob': { link: `${outside}/bob` },
      },
      [comp('n', ['~/notes.txt'])],
      [user('alice', 1000), user('bob', 1001)],
    );
    assert.deepEqual(files(s), ['var/home/alice/notes.txt']);
  });

  it('ignores a user whose home is the root', async () => {
    const s = await select({ 'etc/passwd': 'x' }, [comp('n', ['~/'])], [user('daemon', 1000, '/')]);
    assert.deepEqual(s.items, []);
  });

  it('skips fifos (and other special files) with a note', async () => {
    const s = await select({ 'srv/pipe': { fifo: true }, 'srv/a': 'a' }, [comp('srv', ['/srv'])]);
    assert.deepEqual(files(s), ['srv/a']);
    assert.deepEqual(s.skipped, [{ path: 'srv/pipe', reason: 'special-file' }]);
  });

  it('leaves out names that are not UTF-8, with a note', async () => {
    const root = tree({ 'srv/a': 'a' });
    writeFileSync(Buffer.concat([Buffer.from(`${root}/srv/caf`), Buffer.from([0xe9])]), 'latin-1');
    const s = await selectItems({ root, components: [comp('srv', ['/srv'])], users: [] });
    assert.deepEqual(files(s), ['srv/a']);
    assert.deepEqual(s.skipped, [{ path: 'srv/caf\uFFFD', reason: 'non-utf8-name' }]);
  });

  it('refuses a root that is not a folder', async () => {
    const root = tree({ f: 'x' });
    await assert.rejects(selectItems({ root: join(root, 'f'), components: [], users: [] }), (e) =>
      isReimageError(e, 'SOURCE_NOT_DIRECTORY'),
    );
  });
});

describe('the built-in rule sets', () => {
  const home = (p: string) => `home/alice/${p}`;
  const spec: Record<string, Node> = {
    [home('Documents/Report.ODT')]: 'r',
    [home('Documents/project/node_modules/x/README.md')]: 'm',
    [home('Desktop/todo.txt')]: 't',
    [home('Downloads/Invoice.PDF')]: 'i',
    [home('Downloads/debian.iso')]: 'iso',
    [home('Documents/big.zip.part')]: 'p',
    [home('Pictures/cat.jpg')]: 'c',
    [home('Music/song.flac')]: 's',
    [home('src/app/notes.md')]: 'n',
    [home('snap/thing/doc.pdf')]: 'snap',
    [home('.cache/thumbnails/x.png')]: 'c',
    [home('.local/share/Trash/files/old.odt')]: 'o',
    [home('.local/share/app/readme.txt')]: 'r',
    [home('.config/dconf/user')]: 'd',
    [home('.config/gtk-3.0/bookmarks')]: 'smb://files/share',
    [home('.config/chromium/Default/Bookmarks')]: 'b',
    [home('.config/chromium/Default/GPUCache/data_0')]: 'g',
    [home('.config/chromium/Local State')]: 'l',
    [home('.config/chromium/ShaderCache/x')]: 'x',
    [home('.config/chromium/SingletonLock')]: { link: 'oldhost-1234' },
    [home('.mozilla/firefox/profiles.ini')]: 'p',
    [home('.mozilla/firefox/abc.default-release/places.sqlite')]: 'p',
    [home('.mozilla/firefox/abc.default-release/cache2/entries/1')]: 'c',
    [home('.mozilla/firefox/abc.default-release/lock')]: { link: '127.0.0.1:+1' },
    [home('.ssh/id_ed25519')]: 'key',
    [home('.gnupg/pubring.kbx')]: 'k',
    [home('.bashrc')]: 'b',
    [home('.smbcredentials')]: 'c',
    'etc/fstab': '//files/share /mnt/share cifs credentials=/home/alice/.smbcredentials 0 0\n',
    'etc/hostname': 'lt-1\n',
    'etc/ssh/ssh_host_ed25519_key': 'k',
    'etc/ssh/sshd_config': 'x',
    'etc/netplan/01-net.yaml': 'n',
    'etc/netplan/README': 'r',
    'etc/reimage/client.json': '{}',
    'srv/www/index.html': 'w',
    'opt/app/data/db': 'd',
    'opt/app/bin/app': 'a',
    'usr/share/doc/x/README.txt': 'u',
  };

  it('take documents, pictures, settings, profiles and keys, and no caches', async () => {
    const root = tree(spec);
    const s = await selectItems({
      root,
      components: componentsFor({}),
      users: [user('alice', 1000)],
    });
    const by = Object.fromEntries(s.items.map((i) => [i.path, i.component]));
    const expect: Record<string, string> = {
      [home('Documents/Report.ODT')]: 'user-documents',
      [home('Desktop/todo.txt')]: 'user-documents',
      [home('Downloads/Invoice.PDF')]: 'user-documents',
      [home('src/app/notes.md')]: 'user-documents',
      [home('Pictures/cat.jpg')]: 'user-pictures-media',
      [home('Music/song.flac')]: 'user-pictures-media',
      [home('.config/dconf/user')]: 'user-desktop-settings',
      [home('.config/gtk-3.0/bookmarks')]: 'network-shares',
      [home('.config/chromium/Default/Bookmarks')]: 'browser-profiles',
      [home('.config/chromium/Local State')]: 'browser-profiles',
      [home('.mozilla/firefox/profiles.ini')]: 'browser-profiles',
      [home('.mozilla/firefox/abc.default-release/places.sqlite')]: 'browser-profiles',
      [home('.ssh/id_ed25519')]: 'ssh-gpg-keys',
      [home('.gnupg/pubring.kbx')]: 'ssh-gpg-keys',
      [home('.bashrc')]: 'user-desktop-settings',
      [home('.smbcredentials')]: 'network-shares',
      'etc/fstab': 'network-shares',
    };
    assert.deepEqual(
      Object.fromEntries(Object.entries(by).filter(([p]) => !dirs(s).includes(p))),
      expect,
    );
    // Nothing includes ~/.cache or the trash, so they are not even walked.
    assert.ok(!s.items.some((i) => /\/(\.cache|\.local\/share)(\/|$)/.test(i.path)));
    const excluded = s.excluded.map((e) => e.path);
    for (const p of [
      home('Documents/big.zip.part'),
      home('Documents/project/node_modules'),
      home('.config/chromium/Default/GPUCache'),
      home('.mozilla/firefox/abc.default-release/cache2'),
      home('.mozilla/firefox/abc.default-release/lock'),
      home('.config/chromium/SingletonLock'),
      home('snap/thing'),
    ]) {
      assert.ok(excluded.includes(p), `${p} excluded: ${excluded.join(', ')}`);
    }
  });

  it('machine state, client state and data outside home are there for the asking', async () => {
    const root = tree(spec);
    const s = await selectItems({
      root,
      components: [
        ...Object.values(machineStateComponents),
        clientStateComponent,
        ...componentsFor({ ruleSets: ['data-outside-home'] }),
      ],
      users: [user('alice', 1000)],
    });
    assert.deepEqual(
      s.items.filter((i) => i.type !== 'dir').map((i) => [i.path, i.kind, i.component]),
      [
        ['etc/hostname', 'machine-state', 'machine-hostname'],
        ['etc/netplan/01-net.yaml', 'machine-state', 'machine-network'],
        ['etc/reimage/client.json', 'client-state', 'reimage-client'],
        ['etc/ssh/ssh_host_ed25519_key', 'machine-state', 'machine-ssh-host-keys'],
        ['opt/app/data/db', 'user-files', 'data-outside-home'],
        ['srv/www/index.html', 'user-files', 'data-outside-home'],
      ],
    );
  });

  it('an old mtime does not matter and a newer one is kept exactly', async () => {
    const root = tree({ 'srv/a': 'a' });
    utimesSync(join(root, 'srv/a'), 1_000_000, 1_000_000.5);
    const s = await selectItems({
      root,
      components: componentsFor({ ruleSets: ['data-outside-home'] }),
      users: [],
    });
    assert.equal(s.items.find((i) => i.path === 'srv/a')!.mtimeMs, 1_000_000_500);
  });
});
