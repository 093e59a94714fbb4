import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ContentStore } from '../src/content/store.js';
import { ImageLibrary } from '../src/image/library.js';
import { applyTree, importTree } from '../src/image/tree.js';
import { applyOpaque, importFile } from '../src/image/convert.js';
import { loadFormats } from '../src/image/formats/registry.js';
import type { FormatRegistry, TreeEntry } from '../src/image/formats/api.js';
import type { Entry } from '../src/image/manifest.js';
import { isReimageError, type ErrorCode } from '../src/errors.js';
import { reimage } from './cli.js';

/**
 * Hostile archives: trees that try to write outside the directory they are laid out in (`..`,
 * absolute paths, writes through a symlink, hard links out of the tree or to what is not
 * there yet), devices where none are allowed, and sizes that lie. Two levels:
 *
 * 1. entry streams, as any format plugin yields them, given straight to `applyTree` (opaque
 *    apply, formats that stage through a directory) and `importTree` (every import);
 * 2. real tar archives made with Python's tarfile (which writes whatever names it is given),
 *    imported with `reimage image import`, and imported `--opaque` then applied.
 *
 * Every refusal must carry its error code, leave the image list empty, and write nothing
 * outside the target: each case has `<case>/parent/{target, sentinel/, outside}`, and after
 * the refusal `parent` holds only `sentinel` (empty) and `outside` (unchanged, one link).
 */

const isRoot = process.getuid?.() === 0;
let work: string;
let registry: FormatRegistry;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'reimage-hostile-archives-'));
  registry = await loadFormats();
});

after(() => rmSync(work, { recursive: true, force: true }));

interface Place {
  parent: string;
  target: string;
  sentinel: string;
  outside: string;
}

let places = 0;
function place(name: string): Place {
  const parent = join(work, `${String(++places).padStart(3, '0')}-${name}`, 'parent');
  const sentinel = join(parent, 'sentinel');
  mkdirSync(sentinel, { recursive: true });
  writeFileSync(join(parent, 'outside'), 'outside\n');
  return { parent, target: join(parent, 'target'), sentinel, outside: join(parent, 'outside') };
}

const passwdLinks = () => lstatSync('/etc/passwd').nlink;
const passwdBefore = passwdLinks();

/** Nothing outside the target: parent holds only the sentinel (empty) and outside (intact). */
function nothingOutside(p: Place, targetMayRemain = false): void {
  const names = readdirSync(p.parent).filter((n) => !(targetMayRemain && n === 'target'));
  assert.deepEqual(names.sort(), ['outside', 'sentinel'], 'nothing new beside the target');
  assert.deepEqual(readdirSync(p.sentinel), [], 'the sentinel directory stays empty');
  assert.equal(lstatSync(p.outside).nlink, 1, 'nothing was linked to the outside file');
  assert.equal(readFileSync(p.outside, 'utf8'), 'outside\n');
  assert.equal(passwdLinks(), passwdBefore, 'nothing was linked to /etc/passwd');
  assert.equal(existsSync('/tmp/reimage-hostile-escaped'), false);
}

function isCode(code: ErrorCode) {
  return (e: unknown) => {
    assert.ok(
      isReimageError(e),
      `expected ${code}, got a non-ReimageError: ${(e as Error)?.stack ?? String(e)}`,
    );
    assert.equal(e.code, code, e.message);
    return true;
  };
}

// ---------------------------------------------------------------------------------------------
// 1. Entry streams

const T0 = 1_600_000_000_000_000_000n;

function ent(path: string | Buffer, over: Partial<Entry> = {}): Entry {
  return {
    path: typeof path === 'string' ? Buffer.from(path) : Buffer.from(path),
    type: 'dir',
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtimeNs: T0,
    size: 0,
    xattrs: [],
    ...over,
  };
}

function file(path: string | Buffer, data = 'written by a hostile archive\n', size?: number) {
  const bytes = Buffer.from(data);
  return {
    entry: ent(path, { type: 'file', mode: 0o644, size: size ?? bytes.length }),
    data: async function* () {
      yield bytes;
    },
  } satisfies TreeEntry;
}

const root: TreeEntry = { entry: ent('') };
const symlink = (path: string, target: string): TreeEntry => ({
  entry: ent(path, { type: 'symlink', mode: 0o777, target: Buffer.from(target) }),
});
const hardlink = (path: string, target: string): TreeEntry => ({
  entry: ent(path, { type: 'hardlink', mode: 0, target: Buffer.from(target) }),
});

async function* stream(entries: TreeEntry[]): AsyncGenerator<TreeEntry> {
  yield* entries;
}

interface StreamCase {
  name: string;
  entries: (p: Place) => TreeEntry[];
  /** importTree takes it (a tree that is fine as an image; only laying it out is refused) */
  importable?: string;
}

const streamCases: StreamCase[] = [
  { name: '../ path', entries: () => [root, file('../escaped')] },
  { name: 'a/../../ path', entries: () => [root, file('a/../../escaped')] },
  { name: './../ path', entries: () => [root, file('./../escaped')] },
  {
    name: 'absolute path into the sentinel',
    entries: (p) => [root, file(join(p.sentinel, 'abs'))],
  },
  { name: 'absolute path /tmp/…', entries: () => [root, file('/tmp/reimage-hostile-escaped')] },
  { name: 'NUL inside a path', entries: () => [root, file(Buffer.from('a\0b'))] },
  {
    name: 'symlink to the sentinel, then a file through it',
    entries: (p) => [root, symlink('lnk', p.sentinel), file('lnk/through')],
  },
  {
    name: 'symlink to .., then a file through it',
    entries: () => [root, symlink('up', '..'), file('up/escaped')],
  },
  {
    name: 'directory, then a symlink of the same name, then a file through it',
    entries: (p) => [root, { entry: ent('d') }, symlink('d', p.sentinel), file('d/through')],
  },
  {
    name: 'file, then a file below it',
    entries: () => [root, file('f'), file('f/below')],
  },
  { name: 'hard link to ../outside', entries: () => [root, hardlink('hl', '../outside')] },
  { name: 'hard link to /etc/passwd', entries: () => [root, hardlink('hl', '/etc/passwd')] },
  {
    name: 'hard link to a symlink that points outside',
    entries: (p) => [root, symlink('s', p.outside), hardlink('hl', 's')],
  },
  {
    name: 'hard link to a directory',
    entries: () => [root, { entry: ent('d') }, hardlink('hl', 'd')],
  },
  { name: 'hard link to nothing', entries: () => [root, hardlink('hl', 'missing')] },
  {
    name: 'hard link to a later entry',
    entries: () => [root, hardlink('hl', 'later'), file('later')],
  },
  {
    name: 'character device (devices not allowed)',
    entries: () => [
      root,
      { entry: ent('null', { type: 'char', mode: 0o666, major: 1, minor: 3 }) },
    ],
    importable:
      'an image may hold devices; only laying them out without --allow-devices is refused',
  },
  { name: 'data shorter than the size', entries: () => [root, file('short', 'x'.repeat(10), 100)] },
  { name: 'data longer than the size', entries: () => [root, file('long', 'x'.repeat(100), 10)] },
  { name: 'the same path twice', entries: () => [root, file('twice'), file('twice')] },
  { name: 'a root that is not a directory', entries: () => [file('')] },
];

describe('hostile entry streams: applyTree and importTree refuse them', () => {
  let store: ContentStore;
  before(() => {
    store = ContentStore.open(join(work, 'stream-store'), { create: true });
  });
  const props = (name: string) => () => ({ name, created: new Date().toISOString(), custom: {} });

  test('control: importTree takes a well-formed stream', async () => {
    const entries = [
      root,
      { entry: ent('d') },
      file('d/f', 'content\n'),
      symlink('d/s', 'f'),
      hardlink('d/h', 'd/f'),
    ];
    const { record } = await importTree({
      store,
      name: 'control',
      entries: stream(entries),
      properties: props('control'),
    });
    assert.equal(record.stats.entries, 5);
    assert.equal(record.stats.hardlinks, 1);
    new ImageLibrary(store).deleteName('control');
  });

  test('control: applyTree lays out a well-formed stream', {}, async () => {
    const p = place('control');
    const entries = [
      root,
      { entry: ent('d') },
      file('d/f', 'content\n'),
      symlink('d/s', 'f'),
      hardlink('d/h', 'd/f'),
    ];
    await applyTree(stream(entries), p.target);
    assert.equal(readFileSync(join(p.target, 'd/f'), 'utf8'), 'content\n');
    assert.equal(statSync(join(p.target, 'd/h')).nlink, 2);
    nothingOutside(p, true);
  });

  for (const c of streamCases) {
    test(`${c.name}: applyTree refuses it (MANIFEST_INVALID), nothing written outside`, async () => {
      const p = place(c.name.replace(/\W+/g, '-'));
      await assert.rejects(applyTree(stream(c.entries(p)), p.target), isCode('MANIFEST_INVALID'));
      assert.equal(existsSync(p.target), false, 'the target it made is removed again');
      nothingOutside(p);
    });

    test(`${c.name}: importTree ${c.importable ? 'takes it' : 'refuses it (MANIFEST_INVALID), nothing recorded'}`, async () => {
      const p = place(`import-${c.name.replace(/\W+/g, '-')}`);
      const name = `s${places}`;
      const run = importTree({
        store,
        name,
        entries: stream(c.entries(p)),
        properties: props(name),
      });
      if (c.importable) {
        await run;
        new ImageLibrary(store).deleteName(name);
      } else {
        await assert.rejects(run, isCode('MANIFEST_INVALID'));
        assert.equal(new ImageLibrary(store).getName(name), undefined);
      }
      nothingOutside(p);
    });
  }

  test(
    'a device is laid out when devices are allowed',
    { skip: isRoot ? false : 'mknod of a device needs root' },
    async () => {
      const p = place('device-allowed');
      const c = streamCases.find((x) => x.name.startsWith('character device'))!;
      await applyTree(stream(c.entries(p)), p.target, { devices: true });
      assert.ok(lstatSync(join(p.target, 'null')).isCharacterDevice());
    },
  );
});

// ---------------------------------------------------------------------------------------------
// 2. Real tar archives

interface Member {
  name: string;
  type: 'file' | 'dir' | 'symlink' | 'hardlink' | 'char';
  data?: string;
  target?: string;
  major?: number;
  minor?: number;
}

/** Writes a tar archive with Python's tarfile, names and link targets exactly as given. */
function pythonTar(out: string, members: Member[], truncateTo?: number): void {
  const script = `
import io, json, os, sys, tarfile
spec = json.load(sys.stdin)
with tarfile.open(spec['out'], 'w', format=tarfile.PAX_FORMAT) as tf:
    for m in spec['members']:
        ti = tarfile.TarInfo(m['name'])
        ti.mtime = 1600000000
        ti.mode = 0o644
        t = m['type']
        if t == 'file':
            data = m.get('data', 'x').encode()
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
            continue
        if t == 'dir':
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        elif t == 'symlink':
            ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, m['target'], 0o777
        elif t == 'hardlink':
            ti.type, ti.linkname = tarfile.LNKTYPE, m['target']
        elif t == 'char':
            ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, m['major'], m['minor']
        tf.addfile(ti)
if spec.get('truncate') is not None:
    os.truncate(spec['out'], spec['truncate'])
`;
  const r = spawnSync('python3', ['-c', script], {
    input: JSON.stringify({ out, members, truncate: truncateTo }),
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, `python3 tarfile: ${r.error?.message ?? r.stderr}`);
}

interface ArchiveCase {
  name: string;
  members: (p: Place) => Member[];
  truncateTo?: number;
  /** code of `image import` (undefined: the import is taken) */
  importCode?: ErrorCode;
  /** code of applying it opaquely without devices allowed */
  applyCode: ErrorCode;
}

const BIG = 'y'.repeat(10_000);

const archiveCases: ArchiveCase[] = [
  {
    name: 'dotdot',
    members: () => [
      { name: 'ok', type: 'file' },
      { name: '../escaped', type: 'file' },
    ],
    importCode: 'MANIFEST_INVALID',
    applyCode: 'MANIFEST_INVALID',
  },
  {
    name: 'absolute',
    members: (p) => [{ name: join(p.sentinel, 'absolute'), type: 'file' }],
    importCode: 'MANIFEST_INVALID',
    applyCode: 'MANIFEST_INVALID',
  },
  {
    name: 'symlink-out-then-file',
    members: (p) => [
      { name: 'lnk', type: 'symlink', target: p.sentinel },
      { name: 'lnk/through', type: 'file' },
    ],
    importCode: 'MANIFEST_INVALID',
    applyCode: 'MANIFEST_INVALID',
  },
  {
    name: 'symlink-up-then-file',
    members: () => [
      { name: 'up', type: 'symlink', target: '..' },
      { name: 'up/escaped', type: 'file' },
    ],
    importCode: 'MANIFEST_INVALID',
    applyCode: 'MANIFEST_INVALID',
  },
  {
    name: 'hardlink-dotdot',
    members: () => [{ name: 'hl', type: 'hardlink', target: '../outside' }],
    importCode: 'MANIFEST_INVALID',
    applyCode: 'MANIFEST_INVALID',
  },
  {
    name: 'hardlink-etc-passwd',
    members: () => [{ name: 'hl', type: 'hardlink', target: '/etc/passwd' }],
    importCode: 'MANIFEST_INVALID',
    applyCode: 'MANIFEST_INVALID',
  },
  {
    name: 'hardlink-to-later-entry',
    members: () => [
      { name: 'hl', type: 'hardlink', target: 'later' },
      { name: 'later', type: 'file', data: 'later\n' },
    ],
    importCode: 'MANIFEST_INVALID',
    applyCode: 'MANIFEST_INVALID',
  },
  {
    name: 'device',
    members: () => [
      { name: 'file', type: 'file' },
      { name: 'null', type: 'char', major: 1, minor: 3 },
    ],
    applyCode: 'MANIFEST_INVALID',
  },
  {
    // a header says 10000 bytes; the archive ends 100 bytes into them
    name: 'truncated',
    members: () => [{ name: 'big', type: 'file', data: BIG }],
    truncateTo: 512 + 100,
    importCode: 'INVALID_ARGUMENT',
    applyCode: 'INVALID_ARGUMENT',
  },
];

describe('hostile tar archives (Python tarfile)', () => {
  before(() => {
    const r = spawnSync('python3', ['-c', 'import tarfile'], { encoding: 'utf8' });
    assert.equal(r.status, 0, `python3 with tarfile is needed: ${r.error?.message ?? r.stderr}`);
  });

  const make = (c: ArchiveCase, p: Place): string => {
    const file = join(p.parent, '..', `${c.name}.tar`);
    pythonTar(file, c.members(p), c.truncateTo);
    return file;
  };
  const images = (store: string): unknown[] => {
    const r = reimage(['image', 'list', '--store', store, '--json']);
    return r.status === 0 ? r.json.images : [];
  };

  for (const c of archiveCases) {
    describe(c.name, () => {
      test(`image import: ${c.importCode ? `refused (${c.importCode}), the image list stays empty` : 'taken'}`, () => {
        const p = place(`cli-import-${c.name}`);
        const file = make(c, p);
        const store = join(p.parent, '..', 'store');
        const r = reimage(['image', 'import', file, '--name', 'h', '--store', store, '--json']);
        if (c.importCode) {
          assert.notEqual(r.status, 0, 'the import is refused');
          assert.equal(r.json?.error?.code, c.importCode, r.stderr);
          assert.deepEqual(images(store), [], 'no image is recorded');
        } else {
          assert.equal(r.status, 0, r.stderr);
          assert.equal(images(store).length, 1);
        }
        nothingOutside(p);
      });

      test(`opaque import, then applyOpaque without devices: refused (${c.applyCode})`, async () => {
        const p = place(`api-opaque-${c.name}`);
        const file = make(c, p);
        const store = ContentStore.open(join(p.parent, '..', 'store'), { create: true });
        const { record } = await importFile({ store, registry, file, name: 'o', opaque: true });
        assert.equal(record.imageFormat, 'opaque');
        assert.equal(record.opaqueFormat, 'tar', 'detected as tar');
        await assert.rejects(
          applyOpaque({ store, registry, record, target: p.target }),
          isCode(c.applyCode),
        );
        assert.equal(existsSync(p.target), false, 'the target it made is removed again');
        nothingOutside(p);
      });

      test(`image import --opaque, then image apply: refused (${c.applyCode})`, () => {
        const p = place(`cli-opaque-${c.name}`);
        const file = make(c, p);
        const store = join(p.parent, '..', 'store');
        const imp = reimage([
          'image',
          'import',
          file,
          '--opaque',
          '--name',
          'o',
          '--store',
          store,
          '--json',
        ]);
        assert.equal(imp.status, 0, imp.stderr);
        const r = reimage(['image', 'apply', 'o', p.target, '--store', store, '--json']);
        nothingOutside(p);
        assert.notEqual(r.status, 0);
        assert.equal(r.json?.error?.code, c.applyCode, r.stderr);
      });
    });
  }

  test(
    'image apply --allow-devices lays out the device',
    { skip: isRoot ? false : 'mknod of a device needs root' },
    () => {
      const c = archiveCases.find((x) => x.name === 'device')!;
      const p = place('cli-device-allowed');
      const file = make(c, p);
      const store = join(p.parent, '..', 'store');
      assert.equal(
        reimage(['image', 'import', file, '--opaque', '--name', 'o', '--store', store]).status,
        0,
      );
      const r = reimage(['image', 'apply', 'o', p.target, '--allow-devices', '--store', store]);
      assert.equal(r.status, 0, r.stderr);
      assert.ok(lstatSync(join(p.target, 'null')).isCharacterDevice());
    },
  );

  test(
    'applyOpaque with devices allowed lays out the device',
    { skip: isRoot ? false : 'mknod of a device needs root' },
    async () => {
      const c = archiveCases.find((x) => x.name === 'device')!;
      const p = place('api-device-allowed');
      const file = make(c, p);
      const store = ContentStore.open(join(p.parent, '..', 'store'), { create: true });
      const { record } = await importFile({ store, registry, file, name: 'o', opaque: true });
      await applyOpaque({ store, registry, record, target: p.target, devices: true });
      assert.ok(lstatSync(join(p.target, 'null')).isCharacterDevice());
      nothingOutside(p, true);
    },
  );
});
