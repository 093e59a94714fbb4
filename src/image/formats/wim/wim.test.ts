import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { isReimageError } from '../../../errors.js';
import type { TreeEntry } from '../api.js';
import { wimFormat } from './index.js';
import { treeFromExtracted } from './external-tool.js';
import {
  RAW_NAME,
  asRoot,
  assertSameTree,
  collect,
  filterTree,
  leftovers,
  makeSourceTree,
  type Shown,
} from './roundtrip-fixtures.js';

const missing = await wimFormat.unavailable();
const skip = missing ? `wimlib-imagex is not installed (${missing})` : false;

/** WIM keeps mtimes to 100 ns (Windows FILETIME). */
const WIM_TICK = 100n;

function wimlib(...args: string[]): string {
  return execFileSync('wimlib-imagex', args, {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/**
 * wimlib's own detailed listing of an image, reduced to what describes the tree (not where
 * data sits in the file, link group numbers, or creation/access times).
 */
function wimListing(file: string, index = 1): string[] {
  const keep =
    /^(Full Path|Attributes|Last Write Time|Link Count|UNIX Data|Hash|Uncompressed size|Reparse Tag)\s*=/;
  return wimlib('dir', file, String(index), '--detailed')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => keep.test(l));
}

function isReimage(code: string) {
  return (e: unknown) => {
    assert.ok(isReimageError(e), `not a ReimageError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  };
}

describe('wim format', { skip }, () => {
  let tmp: string;
  let src: string;
  let oldTmpdir: string | undefined;
  let expected: Map<string, Shown>;
  let tmpRoot: string;

  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-wimtest-'));
    // Our temporaries go here, so that leftovers can be counted exactly.
    tmpRoot = path.join(tmp, 'tmp');
    fs.mkdirSync(tmpRoot);
    oldTmpdir = process.env['TMPDIR'];
    process.env['TMPDIR'] = tmpRoot;
    src = path.join(tmp, 'src');
    makeSourceTree(src, { rawName: false });
  });

  after(() => {
    if (oldTmpdir === undefined) delete process.env['TMPDIR'];
    else process.env['TMPDIR'] = oldTmpdir;
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('writes a tree and reads it back as far as its capabilities say', async () => {
    expected = await collect(treeFromExtracted(src));
    const file = path.join(tmp, 'round.wim');
    const t0 = Date.now();
    await wimFormat.write(treeFromExtracted(src), file);
    const written = Date.now() - t0;
    assert.ok(await wimFormat.probe(file));
    const back = await collect(wimFormat.read(file));
    assertSameTree(expected, back, { caps: wimFormat.capabilities, mtimeUnitNs: WIM_TICK });
    // What the flags claim, seen in the data:
    assert.ok(back.get('disk.img')?.segments, 'sparse file came back sparse');
    assert.equal(back.get('usr/bin/python3')?.target, 'etc/python-link');
    assert.equal(back.get('usr/bin/python3.11')?.type, 'hardlink');
    assert.match(back.get('usr/bin/ping')!.xattrs, /user\.comment=0001ff user\.empty=/);
    if (asRoot) {
      assert.match(back.get('usr/bin/ping')!.xattrs, /security\.capability=0100000200200000/);
      assert.equal(back.get('dev/loop200')?.rdev, '7:200');
      assert.equal(back.get('home/user/link')?.owner, '1234:5678');
    }
    assert.deepEqual(leftovers(tmpRoot, 'reimage-'), []);
    assert.deepEqual(leftovers(tmp, '.round.wim'), []);
    assert.ok(written < 60_000, `write took ${written} ms`);
  });

  it('reads a WIM made by wimlib-imagex capture --unix-data', async () => {
    const file = path.join(tmp, 'tool.wim');
    wimlib('capture', src, file, 'made by wimlib', '--unix-data');
    assert.ok(await wimFormat.probe(file));
    const back = await collect(wimFormat.read(file));
    assertSameTree(expected, back, { caps: wimFormat.capabilities, mtimeUnitNs: WIM_TICK });
  });

  it('WIM → reader → WIM: wimlib lists the same tree', async () => {
    const first = path.join(tmp, 'first.wim');
    const second = path.join(tmp, 'second.wim');
    wimlib('capture', src, first, 'first', '--unix-data', '--norpfix');
    await wimFormat.write(wimFormat.read(first), second);
    const a = wimListing(first);
    const b = wimListing(second);
    assert.ok(a.length > 50, `listing has ${a.length} lines`);
    assert.deepEqual(b, a);
    assert.match(wimlib('info', second), /Image Count:\s+1/);
  });

  it('reads absolute symlinks as stored, even in a WIM captured with reparse-point fixups', async () => {
    const dir = path.join(tmp, 'rpfix');
    fs.mkdirSync(path.join(dir, 'etc'), { recursive: true });
    fs.writeFileSync(path.join(dir, 'etc/target'), 'x');
    fs.symlinkSync(path.join(dir, 'etc/target'), path.join(dir, 'inside')); // fixed up
    fs.symlinkSync('/usr/share/outside', path.join(dir, 'outside')); // kept
    const file = path.join(tmp, 'rpfix.wim');
    wimlib('capture', dir, file, '--unix-data'); // --rpfix is the default
    const back = await collect(wimFormat.read(file));
    assert.equal(back.get('inside')?.target, '/etc/target');
    assert.equal(back.get('outside')?.target, '/usr/share/outside');
  });

  it('reads the image the index names; a wrong index is INVALID_ARGUMENT', async () => {
    const file = path.join(tmp, 'multi.wim');
    const second = path.join(tmp, 'second-image');
    fs.mkdirSync(second);
    fs.writeFileSync(path.join(second, 'only-in-two'), 'two');
    wimlib('capture', src, file, 'one', '--unix-data');
    wimlib('append', second, file, 'two', '--unix-data');
    assert.match(wimlib('info', file), /Image Count:\s+2/);
    const one = await collect(wimFormat.read(file, { index: 1 }));
    const two = await collect(wimFormat.read(file, { index: 2 }));
    assert.ok(one.has('etc/hostname') && !one.has('only-in-two'));
    assert.deepEqual([...two.keys()].sort(), ['/', 'only-in-two']);
    await assert.rejects(collect(wimFormat.read(file, { index: 3 })), (e: unknown) => {
      isReimage('INVALID_ARGUMENT')(e);
      assert.match(
        (e as Error).message,
        /multi\.wim.*image 3.*wimlib-imagex exited with status \d+: .+/,
      );
      return true;
    });
    await assert.rejects(
      collect(wimFormat.read(file, { index: 0 })),
      isReimage('INVALID_ARGUMENT'),
    );
    await assert.rejects(
      collect(wimFormat.read(file, { index: 1.5 })),
      isReimage('INVALID_ARGUMENT'),
    );
    assert.deepEqual(leftovers(tmpRoot, 'reimage-'), []);
  });

  it('a file wimlib cannot read is INVALID_ARGUMENT with its message', async () => {
    const garbage = path.join(tmp, 'garbage.wim');
    fs.writeFileSync(garbage, Buffer.alloc(4096, 0x41));
    assert.equal(await wimFormat.probe(garbage), false);
    await assert.rejects(collect(wimFormat.read(garbage)), (e: unknown) => {
      isReimage('INVALID_ARGUMENT')(e);
      assert.match(
        (e as Error).message,
        /garbage\.wim.*wimlib-imagex exited with status \d+: .*magic characters/i,
      );
      return true;
    });
    await assert.rejects(
      collect(wimFormat.read(path.join(tmp, 'does-not-exist.wim'))),
      isReimage('INVALID_ARGUMENT'),
    );
    assert.equal(await wimFormat.probe(path.join(tmp, 'does-not-exist.wim')), false);
    assert.deepEqual(leftovers(tmpRoot, 'reimage-'), []);
  });

  it('abandoning the stream removes the temporary directory', async () => {
    const file = path.join(tmp, 'round.wim');
    for await (const te of wimFormat.read(file)) {
      assert.equal(te.entry.path.length, 0);
      assert.equal(leftovers(tmpRoot, 'reimage-wim-').length, 1);
      break;
    }
    assert.deepEqual(leftovers(tmpRoot, 'reimage-'), []);
  });

  it('refuses names that are not valid UTF-8, naming them, and writes nothing', async () => {
    const raw = path.join(tmp, 'raw');
    fs.mkdirSync(raw);
    fs.writeFileSync(Buffer.concat([Buffer.from(raw + '/'), RAW_NAME]), 'x');
    const file = path.join(tmp, 'raw.wim');
    await assert.rejects(wimFormat.write(treeFromExtracted(raw), file), (e: unknown) => {
      isReimage('INVALID_ARGUMENT')(e);
      assert.match((e as Error).message, /bad-\\xff\\xfe\.bin.*not valid UTF-8/);
      return true;
    });
    assert.equal(fs.existsSync(file), false);
    // Everything else of such a tree can be written once the name is left out.
    await wimFormat.write(
      filterTree(treeFromExtracted(src), (e) => !e.path.equals(RAW_NAME)),
      file,
    );
    assert.ok(await wimFormat.probe(file));
    assert.deepEqual(leftovers(tmpRoot, 'reimage-'), []);
  });

  it('a hostile stream fails and leaves neither file nor staging behind', async () => {
    async function* hostile(): AsyncGenerator<TreeEntry> {
      const base = { mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n, size: 0, xattrs: [] };
      yield { entry: { ...base, path: Buffer.alloc(0), type: 'dir', mode: 0o755 } };
      yield { entry: { ...base, path: Buffer.from('../escape'), type: 'file' } };
    }
    const file = path.join(tmp, 'hostile.wim');
    await assert.rejects(wimFormat.write(hostile(), file), isReimage('MANIFEST_INVALID'));
    assert.equal(fs.existsSync(file), false);
    assert.deepEqual(leftovers(tmp, '.hostile.wim'), []);
    assert.deepEqual(leftovers(tmpRoot, 'reimage-'), []);
    assert.equal(fs.existsSync(path.join(path.dirname(tmp), 'escape')), false);
  });

  it('probes by content', async () => {
    assert.ok(await wimFormat.probe(path.join(tmp, 'round.wim')));
    const sq = path.join(tmp, 'not-a-wim');
    fs.writeFileSync(sq, 'hsqs and more');
    assert.equal(await wimFormat.probe(sq), false);
    fs.writeFileSync(sq, 'MSWIM');
    assert.equal(await wimFormat.probe(sq), false);
  });
});

describe('wim format without wimlib-imagex', () => {
  it('says which package to install, and read/write fail with FORMAT_UNAVAILABLE', async () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-nopath-'));
    const oldPath = process.env['PATH'];
    process.env['PATH'] = empty;
    try {
      const why = await wimFormat.unavailable();
      assert.equal(why, 'wimlib-imagex not found: install Debian package wimtools');
      await assert.rejects(collect(wimFormat.read('/nonexistent.wim')), (e: unknown) => {
        isReimage('FORMAT_UNAVAILABLE')(e);
        assert.match((e as Error).message, /wimtools/);
        return true;
      });
      async function* none(): AsyncGenerator<TreeEntry> {}
      await assert.rejects(
        wimFormat.write(none(), path.join(empty, 'x.wim')),
        isReimage('FORMAT_UNAVAILABLE'),
      );
      assert.deepEqual(fs.readdirSync(empty), []);
    } finally {
      process.env['PATH'] = oldPath;
      fs.rmSync(empty, { recursive: true, force: true });
    }
  });
});
