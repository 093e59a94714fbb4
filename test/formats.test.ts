import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  closeSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadFormats } from '../src/image/formats/registry.js';
import { ContentStore } from '../src/content/store.js';
import { ImageLibrary } from '../src/image/library.js';
import { applyImage } from '../src/image/apply.js';
import { importTree } from '../src/image/tree.js';
import type { ImageFormat } from '../src/image/formats/api.js';
import { makeTestTree, type TreeFacts } from './support/tree.js';
import { diffListings } from './support/listing.js';
import {
  comparableListing,
  formatConformance,
  listing,
  reduceTreeTo,
  removeUnkept,
} from './support/conformance.js';
import { reimage } from './cli.js';

/** The example plugin, loaded from its file the way a third party's plugin is. */
const CPIO_PLUGIN = fileURLToPath(new URL('../../examples/cpio-format/index.mjs', import.meta.url));

function builtin(name: string): () => Promise<ImageFormat> {
  return async () => {
    const f = (await loadFormats()).get(name);
    assert.ok(f, `loadFormats() has a built-in ${name} format`);
    return f;
  };
}

// The one shared suite, for every built-in format and for the example plugin.
for (const name of ['tar', 'tar.gz', 'tar.zst', 'wim', 'squashfs']) {
  formatConformance(builtin(name), { label: name });
}
formatConformance(
  async () => {
    const f = (await loadFormats([CPIO_PLUGIN])).get('cpio');
    assert.ok(f, 'the example plugin registers a cpio format');
    return f;
  },
  { label: 'cpio (examples/cpio-format, loaded as a plugin)' },
);

// ---------------------------------------------------------------------------------------------
// The formats through the command line

let work: string;
let base: string;
let facts: TreeFacts;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'reimage-formats-'));
  base = join(work, 'base');
  facts = await makeTestTree(base, { seed: 5, scale: 'small' });
});

after(() => rmSync(work, { recursive: true, force: true }));

function copyOfBase(name: string): string {
  const dir = join(work, name);
  const r = spawnSync('cp', ['-a', base, dir], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return dir;
}

function ok(r: ReturnType<typeof reimage>, what: string): void {
  assert.equal(r.status, 0, `${what}: ${r.stderr}${r.stdout.slice(0, 2000)}`);
}

function run(cmd: string, args: string[], cwd?: string): string {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', maxBuffer: 1 << 28 });
  assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.error?.message ?? r.stderr}`);
  return r.stdout;
}

/** A tiny tree as a GNU tar file, for "other formats keep working". */
function smallTar(name: string): string {
  const dir = join(work, `${name}-src`);
  mkdirSync(join(dir, 'etc'), { recursive: true });
  writeFileSync(join(dir, 'etc/hostname'), 'small\n');
  const file = join(work, `${name}.tar`);
  run('tar', ['-cf', file, '-C', dir, '.']);
  return file;
}

/** A plugin file as a third party would write it, whose tool is "not installed". */
function missingToolPlugin(): string {
  const file = join(work, 'needs-tool.mjs');
  writeFileSync(
    file,
    `import { openSync, readSync, closeSync } from 'node:fs';
export default {
  name: 'needs-tool',
  extensions: ['.ntool'],
  description: 'a format whose tool is not installed here',
  capabilities: { owners: false, xattrs: false, hardlinks: false, devices: false, fifos: false, sparse: false, mtimeNs: false, rawNames: false },
  async unavailable() { return 'the ntool program is missing (apt-get install ntool-utils)'; },
  async probe(file) {
    const fd = openSync(file, 'r');
    try { const b = Buffer.alloc(6); readSync(fd, b, 0, 6, 0); return b.toString() === 'NTOOL1'; } finally { closeSync(fd); }
  },
  async *read() { throw new Error('read() must not be called when the format is unavailable'); },
  async write() { throw new Error('write() must not be called when the format is unavailable'); },
};
`,
  );
  return file;
}

describe('reimage formats', () => {
  test('--json lists the built-in formats and a plugin, usable here, with their capabilities', () => {
    const r = reimage(['formats', '--json', '--format-plugin', CPIO_PLUGIN]);
    ok(r, 'formats');
    const byName = new Map<string, { unavailable: string | null; capabilities: unknown }>(
      r.json.formats.map((f: { name: string }) => [f.name, f]),
    );
    for (const name of ['native-v1', 'tar', 'tar.gz', 'tar.zst', 'wim', 'squashfs', 'cpio']) {
      assert.ok(byName.has(name), `${name} is listed`);
      assert.equal(byName.get(name)!.unavailable, null, `${name} is usable here`);
    }
    assert.equal(
      (byName.get('cpio')!.capabilities as Record<string, boolean>).hardlinks,
      true,
      "the plugin's capabilities are shown",
    );
  });

  test('REIMAGE_FORMAT_PLUGINS loads plugins like --format-plugin', () => {
    const r = reimage(['formats', '--json'], {
      env: { ...process.env, REIMAGE_FORMAT_PLUGINS: CPIO_PLUGIN },
    });
    ok(r, 'formats');
    assert.ok(r.json.formats.some((f: { name: string }) => f.name === 'cpio'));
  });

  test('a plugin file that is not there is an INVALID_ARGUMENT naming it', () => {
    const r = reimage(['formats', '--json', '--format-plugin', join(work, 'no-such-plugin.mjs')]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.json.error.code, 'INVALID_ARGUMENT');
    assert.match(r.json.error.message, /no-such-plugin\.mjs/);
  });

  test('a format whose tool is missing says which package; import with it fails, others work', () => {
    const plugin = missingToolPlugin();
    const store = join(work, 'missing-tool-store');
    const listed = reimage(['formats', '--json', '--format-plugin', plugin]);
    ok(listed, 'formats');
    const f = listed.json.formats.find((x: { name: string }) => x.name === 'needs-tool');
    assert.ok(f, 'the plugin is listed');
    assert.match(f.unavailable, /ntool-utils/, 'the reason names the package');
    const text = reimage(['formats', '--format-plugin', plugin]);
    ok(text, 'formats (text)');
    assert.match(text.stdout, /needs-tool\s+unavailable/);
    assert.match(text.stdout, /apt-get install ntool-utils/);

    const file = join(work, 'image.ntool');
    writeFileSync(file, 'NTOOL1 and then some data');
    for (const byName of [true, false]) {
      const args = ['image', 'import', file, '--name', 'nt', '--store', store, '--json'];
      const r = reimage([
        ...args,
        ...(byName ? ['--format', 'needs-tool'] : []),
        '--format-plugin',
        plugin,
      ]);
      assert.equal(r.status, 1, r.stderr);
      assert.equal(r.json.error.code, 'FORMAT_UNAVAILABLE', byName ? '--format' : 'detected');
      assert.match(r.json.error.message, /ntool-utils/);
    }

    const tar = smallTar('still-works');
    const r = reimage([
      'image',
      'import',
      tar,
      '--name',
      'still-works',
      '--store',
      store,
      '--format-plugin',
      plugin,
      '--json',
    ]);
    ok(r, 'import of a tar with the unavailable plugin loaded');
    assert.equal(r.json.format, 'tar');
    const list = reimage(['image', 'list', '--store', store, '--json']);
    assert.deepEqual(
      list.json.images.map((i: { names: string[] }) => i.names),
      [['still-works']],
    );
  });
});

// ---------------------------------------------------------------------------------------------

describe('importTree with a sparse file (what wim and squashfs read)', () => {
  test('chunks each data region on its own, and the applied file has its data where it was', async () => {
    const dir = join(work, 'sparse-import');
    const store = ContentStore.open(join(dir, 'store'), { create: true });
    const regions: Array<[number, number]> = [
      [0, 4096],
      [1 << 20, 4096],
      [(2 << 20) - 4096, 4096],
    ];
    const parts = regions.map(([, len], i) => Buffer.alloc(len, i + 1));
    const { record } = await importTree({
      store,
      name: 'sparse',
      properties: () => ({ name: 'sparse', created: new Date(0).toISOString(), custom: {} }),
      entries: (async function* () {
        yield { entry: { ...dirEntry, path: Buffer.alloc(0) } };
        yield {
          entry: {
            ...dirEntry,
            path: Buffer.from('disk.img'),
            type: 'file' as const,
            mode: 0o644,
            size: 2 << 20,
            segments: regions,
          },
          data: async function* () {
            yield* parts;
          },
        };
      })(),
    });
    const e = new ImageLibrary(store)
      .loadManifest(record.id)
      .manifest.entries.find((x) => x.type === 'file')!;
    assert.deepEqual(e.segments, regions);
    assert.deepEqual(e.lengths, [4096, 4096, 4096], 'one chunk per region (each under 4 KiB)');
    const target = join(dir, 'applied');
    await applyImage({ store, image: 'sparse', target });
    const fd = openSync(join(target, 'disk.img'), 'r');
    try {
      for (const [i, [off, len]] of regions.entries()) {
        const b = Buffer.alloc(len);
        readSync(fd, b, 0, len, off);
        assert.ok(b.equals(parts[i]!), `region ${i} at ${off} holds its data`);
      }
    } finally {
      closeSync(fd);
    }
  });
});

const dirEntry = {
  type: 'dir' as const,
  mode: 0o755,
  uid: 0,
  gid: 0,
  mtimeNs: 0n,
  size: 0,
  xattrs: [],
};

// ---------------------------------------------------------------------------------------------

describe('native → tar.zst → native', () => {
  test('gives the same image id', async (t) => {
    const tzst = (await loadFormats()).get('tar.zst');
    assert.ok(tzst);
    const why = await tzst.unavailable();
    if (why) return t.skip(why);
    // The id hashes the whole tree, so the tree may hold only what tar.zst keeps: as its
    // capabilities stand, everything but sparse files (a sparse file comes back dense: no
    // segments and other chunks, so another id). reduceTreeTo removes exactly what the
    // capabilities say is not kept (today: only var/lib/demo/disk.img), and would also cut
    // mtimes to seconds or remove devices and non-UTF-8 names if tar.zst stopped keeping them.
    const tree = copyOfBase('tzst-tree');
    for (const d of reduceTreeTo(tree, facts, tzst.capabilities)) t.diagnostic(d);
    const store = join(work, 'tzst-store');
    const out = join(work, 'round.tar.zst');
    const cap = reimage(['image', 'capture', tree, '--name', 'orig', '--store', store, '--json']);
    ok(cap, 'capture');
    ok(
      reimage(['image', 'export', 'orig', '--format', 'tar.zst', '-o', out, '--store', store]),
      'export',
    );
    const back = reimage(['image', 'import', out, '--name', 'back', '--store', store, '--json']);
    ok(back, 'import');
    assert.equal(back.json.format, 'tar.zst', 'detected from the name and content');
    assert.equal(back.json.image.id, cap.json.image.id, 'the same tree, the same id');
    assert.equal(back.json.created, false);
    assert.equal(back.json.image.stats.storedBytes, 0, 'nothing new stored');
  });
});

// ---------------------------------------------------------------------------------------------

/**
 * `wimlib-imagex dir X.wim 1 --detailed`, reduced to what describes the tree: per path the
 * attributes, last write time (seconds), reparse tag, link count, UNIX data (uid, gid, mode,
 * rdev), and per stream its kind, SHA-1 and size; hard-link groups as the first path of the
 * group (the group ids themselves are arbitrary). Left out: creation and access times (reimage
 * keeps neither), short names, and where and how blobs are stored (offsets, compressed sizes,
 * reference counts, flags).
 */
function wimListing(file: string): string[] {
  const text = run('wimlib-imagex', ['dir', file, '1', '--detailed']);
  const blocks = text.split(/^-{20,}$/m).filter((b) => b.includes('Full Path'));
  const groups = new Map<string, string>();
  const rows = blocks.map((b) => {
    const path = /^Full Path\s+= "([\s\S]*?)"\nShort Name/m.exec(b)?.[1] ?? '?';
    const field = (k: string) => new RegExp(`^${k}\\s+= (.*)$`, 'm').exec(b)?.[1] ?? '';
    const group = field('Link Group ID');
    if (!/^0x0+$/.test(group) && !groups.has(group)) groups.set(group, path);
    const streams = [...b.matchAll(/^\t(.*stream):\n([\s\S]*?)(?=^\t|$(?![\s\S]))/gm)].map(
      ([, kind, body]) =>
        `${kind} hash=${/^Hash\s+= (.*)$/m.exec(body!)?.[1]} size=${/^Uncompressed size\s+= (.*)$/m.exec(body!)?.[1]}`,
    );
    return {
      path,
      group,
      text: [
        `attributes=${field('Attributes')}`,
        `mtime=${field('Last Write Time')}`,
        `reparse=${field('Reparse Tag')}`,
        `links=${field('Link Count')}`,
        `unix=${field('UNIX Data')}`,
        ...streams,
      ].join(' '),
    };
  });
  return rows
    .map(
      (r) =>
        `${JSON.stringify(r.path)} ${r.text}${groups.has(r.group) ? ` group=${JSON.stringify(groups.get(r.group))}` : ''}`,
    )
    .sort();
}

describe('WIM → native → WIM', () => {
  test('wimlib lists the re-exported WIM like the original', async (t) => {
    const wim = (await loadFormats()).get('wim');
    assert.ok(wim);
    const why = await wim.unavailable();
    if (why) return t.skip(why);
    // The source holds what WIM keeps (no non-UTF-8 names: WIM names are UTF-16) and no
    // sockets (reimage leaves them out of every image).
    const src = copyOfBase('wim-src');
    removeUnkept(src, facts, wim.capabilities);
    for (const s of facts.socketPaths) rmSync(join(src, s));
    const orig = join(work, 'orig.wim');
    const again = join(work, 'again.wim');
    const store = join(work, 'wim-store');
    run('wimlib-imagex', ['capture', src, orig, '--unix-data']);
    ok(reimage(['image', 'import', orig, '--name', 'w', '--store', store, '--json']), 'import');
    ok(
      reimage(['image', 'export', 'w', '--format', 'wim', '-o', again, '--store', store]),
      'export',
    );
    const a = wimListing(orig);
    const b = wimListing(again);
    assert.ok(a.length > 50, `the original WIM lists the tree (${a.length} entries)`);
    assert.equal(diffListings(a, b, ['original WIM', 're-exported WIM']), '');
  });
});

// ---------------------------------------------------------------------------------------------

describe('opaque import', () => {
  let store: string;
  let file: string;
  let first: ReturnType<typeof reimage>;

  before(() => {
    store = join(work, 'opaque-store');
    const tree = copyOfBase('opaque-tree');
    // any format will do; tar keeps every entry type but sparseness
    ok(reimage(['image', 'capture', tree, '--name', 'src', '--store', store]), 'capture');
    file = join(work, 'opaque-source.tar');
    ok(
      reimage(['image', 'export', 'src', '--format', 'tar', '-o', file, '--store', store]),
      'export',
    );
    rmSync(store, { recursive: true });
    first = reimage([
      'image',
      'import',
      file,
      '--opaque',
      '--name',
      'opq',
      '--store',
      store,
      '--json',
    ]);
  });

  test('stores the file itself: an opaque image record of its format', () => {
    ok(first, 'import --opaque');
    assert.equal(first.json.image.imageFormat, 'opaque');
    assert.equal(first.json.image.opaqueFormat, 'tar');
    assert.equal(first.json.image.stats.files, 1, 'one file: the payload');
    assert.equal(first.json.image.stats.bytes, statSync(file).size);
  });

  test('importing the same file again stores nothing new: the same image, under a second name', () => {
    const packs = () => reimage(['store', 'show', '--store', store, '--json']).json;
    const before = packs();
    const again = reimage([
      'image',
      'import',
      file,
      '--opaque',
      '--name',
      'opq2',
      '--store',
      store,
      '--json',
    ]);
    ok(again, 'second import');
    assert.equal(again.json.image.id, first.json.image.id, 'the same file, the same id');
    assert.equal(again.json.created, false);
    assert.equal(again.json.image.stats.storedBytes, 0, 'no new chunk data');
    assert.equal(again.json.image.imageFormat, 'opaque');
    const after = packs();
    assert.equal(after.packs, before.packs, 'no new pack');
    assert.equal(after.images, before.images, 'no new image record');
  });

  test('`image apply` lays the tree out (devices only with --allow-devices)', () => {
    const caps = { ...allCaps, sparse: false };
    if (facts.hasDevices) {
      const refused = join(work, 'opaque-refused');
      const r = reimage(['image', 'apply', 'opq', refused, '--store', store, '--json']);
      assert.equal(r.status, 1, r.stderr);
      assert.equal(r.json.error.code, 'MANIFEST_INVALID', 'the tree holds devices');
      assert.match(r.json.error.message, /allow-devices/);
    }
    const target = join(work, 'opaque-applied');
    const r = reimage([
      'image',
      'apply',
      'opq',
      target,
      '--allow-devices',
      '--store',
      store,
      '--json',
    ]);
    ok(r, 'apply');
    assert.equal(
      diffListings(
        comparableListing(listing(join(work, 'opaque-tree')), caps),
        comparableListing(listing(target), caps),
        ['source', 'applied opaque'],
      ),
      '',
    );
  });

  test('a native capture that looks like an opaque image keeps its own kind', () => {
    // a directory exactly like the opaque image's tree: root 0755 0:0 mtime 0, payload.tar
    // 0644 0:0 mtime 0
    const dir = join(work, 'looks-opaque');
    mkdirSync(dir, { mode: 0o755 });
    run('cp', [file, join(dir, 'payload.tar')]);
    run('chmod', ['0644', join(dir, 'payload.tar')]);
    run('chmod', ['0755', dir]);
    run('touch', ['-h', '-d', '@0', join(dir, 'payload.tar'), dir]);
    const cap = reimage(['image', 'capture', dir, '--name', 'native', '--store', store, '--json']);
    ok(cap, 'capture');
    assert.equal(cap.json.image.imageFormat, 'native-v1', 'a capture is a native image');
    const target = join(work, 'looks-opaque-applied');
    ok(reimage(['image', 'apply', 'native', target, '--store', store]), 'apply');
    assert.deepEqual(readdirSync(target), ['payload.tar'], 'the directory is laid out');
  });
});

const allCaps = {
  owners: true,
  xattrs: true,
  hardlinks: true,
  devices: true,
  fifos: true,
  sparse: true,
  mtimeNs: true,
  rawNames: true,
};

// ---------------------------------------------------------------------------------------------

describe('the cpio example against GNU cpio', () => {
  const cpioCaps = async () => (await loadFormats([CPIO_PLUGIN])).get('cpio')!.capabilities;
  /** The base tree, captured and exported with the plugin through the command line. */
  let exported: string | undefined;
  const pluginCpio = (): string => {
    if (exported) return exported;
    const store = join(work, 'plugin-cpio-store');
    const file = join(work, 'plugin.cpio');
    ok(reimage(['image', 'capture', base, '--name', 'src', '--store', store]), 'capture');
    ok(
      reimage([
        'image',
        'export',
        'src',
        '--format',
        'cpio',
        '-o',
        file,
        '--store',
        store,
        '--format-plugin',
        CPIO_PLUGIN,
      ]),
      'export',
    );
    return (exported = file);
  };
  const hasCpio = spawnSync('cpio', ['--version'], { stdio: 'ignore' }).status === 0;
  const skip = hasCpio ? false : 'GNU cpio is not installed (apt-get install cpio)';

  test('reads what `find . | cpio -o -H newc` wrote', { skip }, async () => {
    const store = join(work, 'gnu-cpio-store');
    const file = join(work, 'gnu.cpio');
    const fd = openSync(file, 'w');
    try {
      // NUL-separated names: the tree has names with newlines
      const r = spawnSync('sh', ['-c', 'find . -print0 | cpio -o -0 -H newc --quiet'], {
        cwd: base,
        stdio: ['ignore', fd, 'pipe'],
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stderr);
    } finally {
      closeSync(fd);
    }
    ok(
      reimage([
        'image',
        'import',
        file,
        '--name',
        'gnu',
        '--store',
        store,
        '--format-plugin',
        CPIO_PLUGIN,
        '--json',
      ]),
      'import',
    );
    const target = join(work, 'gnu-cpio-applied');
    ok(reimage(['image', 'apply', 'gnu', target, '--store', store]), 'apply');
    const caps = await cpioCaps();
    assert.equal(
      diffListings(
        comparableListing(listing(base), caps),
        comparableListing(listing(target), caps),
        ['source', 'GNU cpio → plugin'],
      ),
      '',
    );
  });

  test('`cpio -idm` extracts what it wrote', { skip }, async () => {
    const file = pluginCpio();
    const target = join(work, 'gnu-extracted');
    mkdirSync(target);
    const r = spawnSync(
      'sh',
      ['-c', 'cpio -idm --no-absolute-filenames --quiet < "$1"', 'sh', file],
      { cwd: target, encoding: 'utf8' },
    );
    assert.equal(r.status, 0, r.stderr);
    const caps = await cpioCaps();
    // GNU cpio 2.13 -m sets a directory's mtime when it creates it (the entries created in it
    // afterwards change it again) and never sets a symlink's: those mtimes are not compared.
    const gnu = (lines: string[]) =>
      comparableListing(lines, caps).map((l) =>
        / type=[dl] /.test(l) ? l.replace(/ mtime=\S+/, '') : l,
      );
    assert.equal(
      diffListings(gnu(listing(base)), gnu(listing(target)), ['source', 'plugin → GNU cpio']),
      '',
    );
  });

  test('a truncated archive is refused (INVALID_ARGUMENT), nothing recorded', async () => {
    const store = join(work, 'truncated-cpio-store');
    const src = pluginCpio();
    const file = join(work, 'truncated.cpio');
    run('cp', [src, file]);
    truncateSync(file, Math.floor(statSync(src).size / 2));
    const r = reimage([
      'image',
      'import',
      file,
      '--name',
      'cut',
      '--store',
      store,
      '--format-plugin',
      CPIO_PLUGIN,
      '--json',
    ]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.json.error.code, 'INVALID_ARGUMENT');
    assert.match(r.json.error.message, /truncated|ends/);
    const list = reimage(['image', 'list', '--store', store, '--json']);
    assert.deepEqual(list.json.images, []);
  });
});
