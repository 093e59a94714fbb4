import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { isReimageError } from '../../../errors.js';
import type { TreeEntry } from '../api.js';
import { squashfsFormat } from './index.js';
import { treeFromExtracted } from '../wim/external-tool.js';
import {
  RAW_NAME,
  asRoot,
  assertSameTree,
  collect,
  leftovers,
  makeSourceTree,
  type Shown,
} from '../wim/roundtrip-fixtures.js';
import { showPath } from '../../manifest.js';

const missing = await squashfsFormat.unavailable();
const skip = missing ? `squashfs-tools is not installed (${missing})` : false;

/** SquashFS keeps mtimes in whole seconds. */
const SECOND = 1_000_000_000n;
/** unsquashfs run by a user other than root drops setuid and setgid bits. */
const MODES = asRoot ? 0o7777 : 0o1777;

function tool(cmd: string, ...args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'latin1', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** unsquashfs's own long listing (numeric owners, UTC), as lines. */
function sqfsListing(file: string): string[] {
  return tool('unsquashfs', '-lln', '-UTC', file)
    .split('\n')
    .filter((l) => /^[-dlpcbs][-rwxsStT]{9} /.test(l));
}

function isReimage(code: string) {
  return (e: unknown) => {
    assert.ok(isReimageError(e), `not a ReimageError: ${String(e)}`);
    assert.equal(e.code, code, e.message);
    return true;
  };
}

describe('squashfs format', { skip }, () => {
  let tmp: string;
  let tmpRoot: string;
  let src: string;
  let oldTmpdir: string | undefined;
  let expected: Map<string, Shown>;
  const raw = showPath(RAW_NAME);

  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-sqfstest-'));
    tmpRoot = path.join(tmp, 'tmp');
    fs.mkdirSync(tmpRoot);
    oldTmpdir = process.env['TMPDIR'];
    process.env['TMPDIR'] = tmpRoot;
    src = path.join(tmp, 'src');
    makeSourceTree(src);
  });

  after(() => {
    if (oldTmpdir === undefined) delete process.env['TMPDIR'];
    else process.env['TMPDIR'] = oldTmpdir;
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('writes a tree and reads it back as far as its capabilities say', async () => {
    expected = await collect(treeFromExtracted(src));
    assert.ok(expected.has(raw));
    const file = path.join(tmp, 'round.sqfs');
    // mksquashfs would clamp every mtime to SOURCE_DATE_EPOCH; the format must not let it.
    process.env['SOURCE_DATE_EPOCH'] = '1000';
    try {
      await squashfsFormat.write(treeFromExtracted(src), file);
    } finally {
      delete process.env['SOURCE_DATE_EPOCH'];
    }
    assert.ok(await squashfsFormat.probe(file));
    assert.match(tool('unsquashfs', '-s', file), /Compression zstd/);
    const back = await collect(squashfsFormat.read(file));
    assertSameTree(expected, back, {
      caps: squashfsFormat.capabilities,
      mtimeUnitNs: SECOND,
      modeMask: MODES,
    });
    assert.deepEqual(
      back.get('disk.img')?.segments,
      JSON.stringify([
        [0, 4096],
        [10 << 20, 4096],
        [(24 << 20) - 4096, 4096],
      ]),
    );
    assert.equal(back.get('usr/bin/python3')?.target, 'etc/python-link');
    assert.equal(back.get('usr/bin/python3.11')?.type, 'hardlink');
    assert.equal(back.get(raw)?.data?.split(':')[0], '8');
    assert.match(back.get('usr/bin/ping')!.xattrs, /user\.comment=0001ff user\.empty=/);
    if (asRoot) {
      assert.match(back.get('usr/bin/ping')!.xattrs, /security\.capability=0100000200200000/);
      assert.equal(back.get('dev/null')?.rdev, '1:3');
      assert.equal(back.get('home/user/link')?.owner, '1234:5678');
    }
    assert.deepEqual(leftovers(tmpRoot, 'reimage-'), []);
    assert.deepEqual(leftovers(tmp, '.round.sqfs'), []);
  });

  it('reads an image made by mksquashfs with its defaults', async () => {
    const file = path.join(tmp, 'tool.squashfs');
    tool('mksquashfs', src, file, '-no-progress', '-quiet');
    assert.ok(await squashfsFormat.probe(file));
    assert.match(tool('unsquashfs', '-s', file), /Compression gzip/);
    const back = await collect(squashfsFormat.read(file));
    assertSameTree(expected, back, {
      caps: squashfsFormat.capabilities,
      mtimeUnitNs: SECOND,
      modeMask: MODES,
    });
  });

  const dropsBits = asRoot ? false : 'unsquashfs drops setuid/setgid bits when not run as root';
  it(
    'squashfs → reader → squashfs: unsquashfs lists the same tree',
    { skip: dropsBits },
    async () => {
      const first = path.join(tmp, 'tool.squashfs');
      const second = path.join(tmp, 'second.sfs');
      await squashfsFormat.write(squashfsFormat.read(first), second);
      const a = sqfsListing(first);
      assert.ok(a.length > 20, `listing has ${a.length} lines`);
      assert.deepEqual(sqfsListing(second), a);
    },
  );

  it('there is one image: index 1 or none, anything else is INVALID_ARGUMENT', async () => {
    const file = path.join(tmp, 'round.sqfs');
    assert.ok((await collect(squashfsFormat.read(file, { index: 1 }))).has('etc/hostname'));
    await assert.rejects(
      collect(squashfsFormat.read(file, { index: 2 })),
      isReimage('INVALID_ARGUMENT'),
    );
  });

  it('a file unsquashfs cannot read is INVALID_ARGUMENT with its message', async () => {
    const garbage = path.join(tmp, 'garbage.sqfs');
    fs.writeFileSync(garbage, Buffer.alloc(8192, 0x41));
    assert.equal(await squashfsFormat.probe(garbage), false);
    await assert.rejects(collect(squashfsFormat.read(garbage)), (e: unknown) => {
      isReimage('INVALID_ARGUMENT')(e);
      assert.match((e as Error).message, /garbage\.sqfs.*unsquashfs exited with status \d+: .+/);
      return true;
    });
    // A truncated image: the superblock is fine, the tables are not.
    const truncated = path.join(tmp, 'truncated.sqfs');
    fs.writeFileSync(truncated, fs.readFileSync(path.join(tmp, 'round.sqfs')).subarray(0, 200));
    assert.ok(await squashfsFormat.probe(truncated));
    await assert.rejects(collect(squashfsFormat.read(truncated)), isReimage('INVALID_ARGUMENT'));
    assert.deepEqual(leftovers(tmpRoot, 'reimage-'), []);
  });

  it('abandoning the stream removes the temporary directory', async () => {
    let n = 0;
    for await (const te of squashfsFormat.read(path.join(tmp, 'round.sqfs'))) {
      if (++n === 3) {
        assert.ok(te.entry.path.length > 0);
        assert.equal(leftovers(tmpRoot, 'reimage-squashfs-').length, 1);
        break;
      }
    }
    assert.deepEqual(leftovers(tmpRoot, 'reimage-'), []);
  });

  it('a hostile stream fails and leaves neither file nor staging behind', async () => {
    async function* hostile(): AsyncGenerator<TreeEntry> {
      const base = { mode: 0o644, uid: 0, gid: 0, mtimeNs: 0n, size: 0, xattrs: [] };
      yield { entry: { ...base, path: Buffer.alloc(0), type: 'dir', mode: 0o755 } };
      yield {
        entry: { ...base, path: Buffer.from('link'), type: 'symlink', target: Buffer.from('/') },
      };
      yield { entry: { ...base, path: Buffer.from('link/etc/passwd'), type: 'file' } };
    }
    const file = path.join(tmp, 'hostile.sqfs');
    await assert.rejects(squashfsFormat.write(hostile(), file), isReimage('MANIFEST_INVALID'));
    assert.equal(fs.existsSync(file), false);
    assert.deepEqual(leftovers(tmp, '.hostile.sqfs'), []);
    assert.deepEqual(leftovers(tmpRoot, 'reimage-'), []);
  });

  it('probes by content', async () => {
    const other = path.join(tmp, 'not-squashfs');
    fs.writeFileSync(other, 'MSWIM\0\0\0');
    assert.equal(await squashfsFormat.probe(other), false);
    fs.writeFileSync(other, 'sqsh'); // big-endian magic: not written by Linux tools
    assert.equal(await squashfsFormat.probe(other), false);
  });
});

describe('squashfs format without squashfs-tools', () => {
  it('says which package to install, and read/write fail with FORMAT_UNAVAILABLE', async () => {
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-nopath-'));
    const oldPath = process.env['PATH'];
    process.env['PATH'] = empty;
    try {
      assert.equal(
        await squashfsFormat.unavailable(),
        'mksquashfs not found: install Debian package squashfs-tools',
      );
      await assert.rejects(collect(squashfsFormat.read('/nonexistent.sqfs')), (e: unknown) => {
        isReimage('FORMAT_UNAVAILABLE')(e);
        assert.match((e as Error).message, /squashfs-tools/);
        return true;
      });
      async function* none(): AsyncGenerator<TreeEntry> {}
      await assert.rejects(
        squashfsFormat.write(none(), path.join(empty, 'x.sqfs')),
        isReimage('FORMAT_UNAVAILABLE'),
      );
      // Only one of the two tools missing is still unavailable.
      fs.symlinkSync('/bin/true', path.join(empty, 'mksquashfs'));
      assert.equal(
        await squashfsFormat.unavailable(),
        'unsquashfs not found: install Debian package squashfs-tools',
      );
    } finally {
      process.env['PATH'] = oldPath;
      fs.rmSync(empty, { recursive: true, force: true });
    }
  });
});
