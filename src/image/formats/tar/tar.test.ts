import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import tarStream from 'tar-stream';

import type { Entry } from '../../manifest.js';
import type { ImageFormat, TreeEntry } from '../api.js';
import {
  encodePax,
  formatPaxTime,
  parsePax,
  parsePaxTime,
  tarFormat,
  tarGzFormat,
  tarZstFormat,
} from './index.js';

const isRoot = process.getuid?.() === 0;
const formats: Array<[ImageFormat, string]> = [
  [tarFormat, 'tar'],
  [tarGzFormat, 'tar.gz'],
  [tarZstFormat, 'tar.zst'],
];

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-tar-'));
});
after(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});

function run(cmd: string, args: string[], opts: { cwd?: string } = {}) {
  const r = spawnSync(cmd, args, { ...opts, encoding: 'buffer' });
  return {
    status: r.status,
    error: r.error,
    stdout: r.stdout ?? Buffer.alloc(0),
    stderr: r.stderr?.toString('utf8') ?? '',
  };
}

const have = (cmd: string) => run(cmd, ['--version']).status === 0;
const haveGnuTar = run('tar', ['--version']).stdout.toString().includes('GNU tar');
const haveGetfattr = have('getfattr') && have('setfattr');

/** Whether the test directory's filesystem takes user.* xattrs. */
function userXattrsWork(): boolean {
  if (!haveGetfattr) return false;
  const probe = path.join(dir, `xattr-probe-${process.pid}`);
  fs.writeFileSync(probe, '');
  const ok = run('setfattr', ['-n', 'user.probe', '-v', '1', probe]).status === 0;
  fs.rmSync(probe);
  return ok;
}

const B = (s: string) => Buffer.from(s, 'latin1');

function entry(p: string | Buffer, type: Entry['type'], more: Partial<Entry> = {}): Entry {
  return {
    path: typeof p === 'string' ? B(p) : p,
    type,
    mode: type === 'dir' ? 0o755 : 0o644,
    uid: 0,
    gid: 0,
    mtimeNs: 1_700_000_000_123_456_789n,
    size: 0,
    xattrs: [],
    ...more,
  };
}

function file(p: string | Buffer, data: Buffer, more: Partial<Entry> = {}): TreeEntry {
  return {
    entry: entry(p, 'file', { size: data.length, ...more }),
    data: async function* () {
      // in uneven pieces, to exercise re-chunking
      for (let off = 0; off < data.length; off += 7777) yield data.subarray(off, off + 7777);
    },
  };
}

const CAP = Buffer.from('0100000200200000000000000000000000000000', 'hex'); // cap_net_raw+ep
const BIN = Buffer.from([0x00, 0xff, 0x01, 0x80, 0x00, 0xfe]);
const LONG = 'dir/' + 'n'.repeat(196); // 200 bytes
const LONG_TARGET = 'dir/'.repeat(40) + 'target'; // 166 bytes
const RAW = Buffer.concat([B('dir/raw-'), Buffer.from([0xff, 0xfe, 0x80]), B('-name')]);
const BIG = randomBytes(300_000);

/** The tree the round-trip tests write, and what each entry reads back as. */
function sampleTree(
  opts: { devices: boolean; bigDevices?: boolean } = { devices: true, bigDevices: true },
): TreeEntry[] {
  const tree: TreeEntry[] = [
    {
      entry: entry('', 'dir', { mode: 0o750, uid: 0, gid: 0, mtimeNs: 1_600_000_000_000_000_001n }),
    },
    {
      entry: entry('dir', 'dir', {
        mode: 0o1777,
        uid: 1234,
        gid: 4321,
        mtimeNs: 1_650_000_000_500_000_000n,
      }),
    },
    file('dir/file', Buffer.from('hello, tar\n'), {
      mode: 0o4755,
      uid: 1234,
      gid: 100,
      mtimeNs: 1_700_000_000_123_456_789n,
      xattrs: [
        [B('security.capability'), CAP],
        [B('user.a=b%c'), B('odd name')],
        [B('user.bin'), BIN],
        [B('user.empty'), Buffer.alloc(0)],
        [B('user.x'), B('hello')],
      ],
    }),
    {
      entry: entry('dir/hardlink', 'hardlink', {
        mode: 0,
        mtimeNs: 0n,
        target: B('dir/file'),
      }),
    },
    file(LONG, Buffer.from('long name\n'), { mtimeNs: 4_102_444_800_987_654_321n }),
    { entry: entry('dir/hardlink-long', 'hardlink', { mode: 0, mtimeNs: 0n, target: B(LONG) }) },
    file(RAW, Buffer.from('raw name\n'), { mtimeNs: -1_500_000_000n }),
    file('dir/zero-mode', Buffer.from('secret\n'), { mode: 0, uid: 3_000_000, gid: 2_999_999 }),
    file('dir/empty', Buffer.alloc(0), { mtimeNs: 0n }),
    file('dir/big', BIG, { mode: 0o600 }),
    { entry: entry('dir/symlink', 'symlink', { mode: 0o777, target: B('file') }) },
    { entry: entry('dir/longlink', 'symlink', { mode: 0o777, target: B(LONG_TARGET) }) },
    { entry: entry('dir/fifo', 'fifo', { mode: 0o600 }) },
  ];
  if (opts.devices) {
    tree.push(
      { entry: entry('dir/null', 'char', { mode: 0o666, major: 1, minor: 3 }) },
      { entry: entry('dir/sda', 'block', { mode: 0o660, gid: 6, major: 8, minor: 0 }) },
    );
  }
  // Beyond ustar's fields: SCHILY.devmajor/devminor, which GNU tar does not know.
  if (opts.bigDevices)
    tree.push({ entry: entry('dir/bigdev', 'char', { major: 511, minor: 1_048_575 }) });
  return tree;
}

async function* stream(tree: TreeEntry[]): AsyncGenerator<TreeEntry> {
  for (const te of tree) yield te;
}

/** What the core does to archive paths: drop "./" and trailing slashes. */
function norm(p: Buffer): string {
  let s = p.toString('latin1');
  while (s.startsWith('./')) s = s.slice(2);
  while (s.endsWith('/')) s = s.slice(0, -1);
  return s === '.' ? '' : s;
}

async function readAll(
  f: ImageFormat,
  file: string,
): Promise<Map<string, { e: Entry; data?: Buffer }>> {
  const out = new Map<string, { e: Entry; data?: Buffer }>();
  for await (const te of f.read(file)) {
    const key = norm(te.entry.path);
    assert.ok(!out.has(key), `duplicate ${key}`);
    let data: Buffer | undefined;
    if (te.data) {
      const parts: Buffer[] = [];
      for await (const c of te.data()) parts.push(Buffer.from(c));
      data = Buffer.concat(parts);
    }
    out.set(key, { e: te.entry, ...(data ? { data } : {}) });
  }
  return out;
}

async function collect(te: TreeEntry): Promise<Buffer> {
  const parts: Buffer[] = [];
  if (te.data) for await (const c of te.data()) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

function assertSameEntry(got: Entry, want: Entry, data: Buffer | undefined, wantData: Buffer) {
  const name = norm(want.path);
  assert.equal(got.type, want.type, `${name}: type`);
  if (want.type === 'hardlink') {
    assert.equal(norm(got.target!), norm(want.target!), `${name}: target`);
    assert.equal(got.mode, 0);
    assert.deepEqual(got.xattrs, []);
    return;
  }
  assert.equal(got.mode, want.mode, `${name}: mode ${got.mode.toString(8)}`);
  assert.equal(got.uid, want.uid, `${name}: uid`);
  assert.equal(got.gid, want.gid, `${name}: gid`);
  assert.equal(got.mtimeNs, want.mtimeNs, `${name}: mtime`);
  assert.equal(got.size, want.size, `${name}: size`);
  assert.equal(got.segments, undefined, `${name}: segments`);
  if (want.target) assert.ok(got.target?.equals(want.target), `${name}: target ${got.target}`);
  if (want.type === 'char' || want.type === 'block') {
    assert.equal(got.major, want.major, `${name}: major`);
    assert.equal(got.minor, want.minor, `${name}: minor`);
  }
  assert.deepEqual(
    got.xattrs.map(([k, v]) => [k.toString('latin1'), v.toString('hex')]),
    want.xattrs.map(([k, v]) => [k.toString('latin1'), v.toString('hex')]),
    `${name}: xattrs`,
  );
  if (want.type === 'file') assert.ok(data?.equals(wantData), `${name}: data`);
}

describe('tar formats: round trip', () => {
  for (const [f, ext] of formats) {
    it(`${f.name} writes and reads back every attribute`, async () => {
      const tree = sampleTree();
      const wantData = new Map<string, Buffer>();
      for (const te of tree) wantData.set(norm(te.entry.path), await collect(te));
      const file = path.join(dir, `round.${ext}`);
      await f.write(stream(sampleTree()), file);
      assert.equal(await f.probe(file), true);
      for (const [other] of formats) if (other !== f) assert.equal(await other.probe(file), false);
      const got = await readAll(f, file);
      assert.deepEqual([...got.keys()].sort(), tree.map((te) => norm(te.entry.path)).sort());
      for (const te of tree) {
        const key = norm(te.entry.path);
        const g = got.get(key)!;
        assertSameEntry(g.e, te.entry, g.data, wantData.get(key)!);
      }
      // raw bytes survive in names
      assert.ok([...got.values()].some((g) => g.e.path.equals(RAW)));
    });
  }

  it('writes sparse files dense', async () => {
    const data = Buffer.from('0123456789');
    const te: TreeEntry = {
      entry: entry('sparse', 'file', { size: 10_000, segments: [[4096, 10]] }),
      data: async function* () {
        yield data;
      },
    };
    const file = path.join(dir, 'sparse.tar');
    await tarFormat.write(stream([te]), file);
    const got = (await readAll(tarFormat, file)).get('sparse')!;
    assert.equal(got.e.size, 10_000);
    assert.equal(got.e.segments, undefined);
    const want = Buffer.alloc(10_000);
    data.copy(want, 4096);
    assert.ok(got.data!.equals(want));
  });

  it('refuses data that disagrees with the size, and leaves no file', async () => {
    const file = path.join(dir, 'bad.tar');
    const short: TreeEntry = {
      entry: entry('f', 'file', { size: 10 }),
      data: async function* () {
        yield Buffer.from('abc');
      },
    };
    await assert.rejects(tarFormat.write(stream([short]), file), /less data/);
    assert.equal(fs.existsSync(file), false);
    const long: TreeEntry = { ...short, entry: entry('f', 'file', { size: 2 }) };
    await assert.rejects(tarFormat.write(stream([long]), file), /more data/);
    const dangling: TreeEntry = { entry: entry('h', 'hardlink', { target: B('nowhere') }) };
    await assert.rejects(tarFormat.write(stream([dangling]), file), /not a file written before/);
  });

  it('skips data the consumer does not read, and refuses it afterwards', async () => {
    const file = path.join(dir, 'skip.tar.zst');
    await tarZstFormat.write(stream(sampleTree()), file);
    const names: string[] = [];
    let stale: TreeEntry | undefined;
    for await (const te of tarZstFormat.read(file)) {
      names.push(norm(te.entry.path));
      if (norm(te.entry.path) === 'dir/big') stale = te;
    }
    assert.equal(names.length, sampleTree().length);
    assert.throws(() => stale!.data!(), /after the next entry/);
  });

  it('stops cleanly when the consumer stops early', async () => {
    const file = path.join(dir, 'early.tar.gz');
    await tarGzFormat.write(stream(sampleTree()), file);
    for await (const te of tarGzFormat.read(file)) {
      if (te.data) {
        for await (const _c of te.data()) break;
        break;
      }
    }
  });

  it('reports a truncated archive', async () => {
    const file = path.join(dir, 'trunc.tar');
    await tarFormat.write(stream(sampleTree()), file);
    const cut = path.join(dir, 'cut.tar');
    fs.writeFileSync(cut, fs.readFileSync(file).subarray(0, 150_000));
    await assert.rejects(readAll(tarFormat, cut), /cannot read .* as a tar archive/);
  });
});

describe('tar formats: PAX helpers and probing', () => {
  it('keeps PAX values as raw bytes', () => {
    const recs: Array<[Buffer, Buffer]> = [
      [B('path'), Buffer.from([0x61, 0xff, 0x0a, 0x62])],
      [B('SCHILY.xattr.user.bin'), BIN],
      [B('k'), B('x'.repeat(94))], // 98 bytes + 2 digits = 100, which needs 3 digits
    ];
    const enc = encodePax(recs);
    assert.ok(enc.toString('latin1').includes('101 k='));
    const back = parsePax(enc);
    assert.deepEqual(back, recs);
    assert.throws(() => parsePax(B('5 a=b\n')), /malformed/);
  });

  it('converts PAX times exactly', () => {
    assert.equal(parsePaxTime('1700000000.123456789'), 1_700_000_000_123_456_789n);
    assert.equal(parsePaxTime('1700000000.1234567899'), 1_700_000_000_123_456_789n);
    assert.equal(parsePaxTime('1700000000.5'), 1_700_000_000_500_000_000n);
    assert.equal(parsePaxTime('12'), 12_000_000_000n);
    assert.equal(parsePaxTime('-1.5'), -1_500_000_000n);
    assert.equal(parsePaxTime('1e9'), undefined);
    assert.equal(formatPaxTime(1_700_000_000_120_000_000n), '1700000000.12');
    assert.equal(formatPaxTime(-1_500_000_000n), '-1.5');
    assert.equal(formatPaxTime(5_000_000_000n), '5');
  });

  it("reads libarchive's base64 LIBARCHIVE.xattr records", async () => {
    // tar-stream's own PAX support (strings) is enough to make such an archive.
    const pack = tarStream.pack();
    pack.entry(
      {
        name: 'f',
        size: 0,
        pax: {
          'LIBARCHIVE.xattr.user.b%3Dx': BIN.toString('base64'),
          'SCHILY.xattr.user.b%3Dx': 'mangled',
          'SCHILY.xattr.user.plain': 'plain',
        },
      },
      Buffer.alloc(0),
    );
    pack.finalize();
    const parts: Buffer[] = [];
    for await (const c of pack) parts.push(c as Buffer);
    const file = path.join(dir, 'libarchive.tar');
    fs.writeFileSync(file, Buffer.concat(parts));
    const got = (await readAll(tarFormat, file)).get('f')!;
    assert.deepEqual(
      got.e.xattrs.map(([k, v]) => [k.toString('latin1'), v.toString('hex')]),
      [
        ['user.b=x', BIN.toString('hex')],
        ['user.plain', B('plain').toString('hex')],
      ],
    );
  });

  it('probes by content', async () => {
    const junk = path.join(dir, 'junk.tar');
    fs.writeFileSync(junk, randomBytes(4096));
    for (const [f] of formats) assert.equal(await f.probe(junk), false);
    assert.equal(await tarFormat.probe(path.join(dir, 'does-not-exist')), false);
    for (const [f] of formats) assert.equal(await f.unavailable(), undefined);
  });
});

describe(
  'tar formats: GNU tar interoperability',
  { skip: !haveGnuTar && 'GNU tar missing' },
  () => {
    it('reads what GNU tar --xattrs --format=pax writes', async (t) => {
      if (!userXattrsWork()) return t.skip('no user xattrs here');
      const src = path.join(dir, 'gnu-src');
      fs.mkdirSync(path.join(src, 'sub'), { recursive: true });
      fs.writeFileSync(path.join(src, 'sub', 'a'), 'alpha\n');
      fs.chmodSync(path.join(src, 'sub', 'a'), 0o640);
      assert.equal(
        run('setfattr', ['-n', 'user.x', '-v', 'hello', path.join(src, 'sub', 'a')]).status,
        0,
      );
      fs.linkSync(path.join(src, 'sub', 'a'), path.join(src, 'hl'));
      fs.symlinkSync('sub/a', path.join(src, 'sl'));
      fs.writeFileSync(path.join(src, 'n'.repeat(150)), '');
      run('mkfifo', [path.join(src, 'fifo')]);
      const variants: Array<[ImageFormat, string[], string]> = [
        [tarFormat, [], 'gnu.tar'],
        [tarGzFormat, ['-z'], 'gnu.tar.gz'],
      ];
      if (have('zstd')) variants.push([tarZstFormat, ['--zstd'], 'gnu.tar.zst']);
      for (const [f, flags, name] of variants) {
        const archive = path.join(dir, name);
        const r = run('tar', [
          ...flags,
          '--xattrs',
          '--format=pax',
          '-cf',
          archive,
          '-C',
          src,
          '.',
        ]);
        assert.equal(r.status, 0, r.stderr);
        assert.equal(await f.probe(archive), true, `${name} probes`);
        const got = await readAll(f, archive);
        const a = got.get('sub/a')!;
        const hl = got.get('hl')!;
        // GNU tar stores the data under the first name it meets; the other is a link to it.
        const [content, link] = a.e.type === 'file' ? [a, hl] : [hl, a];
        assert.equal(content.e.type, 'file');
        assert.equal(link.e.type, 'hardlink');
        assert.equal(norm(link.e.target!), norm(content.e.path));
        const st = fs.lstatSync(path.join(src, 'sub', 'a'), { bigint: true });
        assert.equal(content.e.mode, 0o640);
        assert.equal(content.e.mtimeNs, st.mtimeNs);
        assert.equal(content.e.uid, Number(st.uid));
        assert.equal(content.data!.toString(), 'alpha\n');
        assert.deepEqual(
          content.e.xattrs.map(([k, v]) => [k.toString(), v.toString()]),
          [['user.x', 'hello']],
        );
        assert.equal(got.get('sl')!.e.type, 'symlink');
        assert.equal(got.get('sl')!.e.target!.toString(), 'sub/a');
        assert.equal(got.get('sub')!.e.type, 'dir');
        assert.equal(got.get('')!.e.type, 'dir');
        assert.equal(got.get('fifo')!.e.type, 'fifo');
        assert.equal(got.get('n'.repeat(150))!.e.type, 'file');
      }
    });

    it('reads GNU tar PAX sparse files (1.0, 0.1, 0.0) and refuses the old GNU sparse type', async () => {
      const src = path.join(dir, 'sparse-src');
      fs.mkdirSync(src);
      const sp = path.join(src, 'sp');
      const size = 2 * 1024 * 1024;
      fs.writeFileSync(sp, '');
      fs.truncateSync(sp, size);
      const fd = fs.openSync(sp, 'r+');
      fs.writeSync(fd, Buffer.from('xyz'), 0, 3, 300_000);
      fs.writeSync(fd, Buffer.from('end'), 0, 3, size - 3);
      fs.closeSync(fd);
      const want = fs.readFileSync(sp);
      const holes = fs.statSync(sp).blocks * 512 < size;
      for (const version of ['1.0', '0.1', '0.0']) {
        const archive = path.join(dir, `sparse-${version}.tar`);
        const r = run('tar', [
          '--format=pax',
          '-S',
          `--sparse-version=${version}`,
          '-cf',
          archive,
          '-C',
          src,
          'sp',
        ]);
        assert.equal(r.status, 0, r.stderr);
        const got = (await readAll(tarFormat, archive)).get('sp');
        assert.ok(got, `sparse ${version}: the real name`);
        assert.equal(got.e.size, size);
        const dense = Buffer.alloc(size);
        let off = 0;
        for (const [start, len] of got.e.segments ?? [[0, size]]) {
          got.data!.copy(dense, start, off, off + len);
          off += len;
        }
        assert.equal(off, got.data!.length, `sparse ${version}: data matches the regions`);
        assert.ok(dense.equals(want), `sparse ${version}: content`);
        if (holes)
          assert.ok(got.e.segments && got.e.segments.length >= 2, `sparse ${version}: holes kept`);
      }
      const old = path.join(dir, 'sparse-gnu.tar');
      assert.equal(run('tar', ['--format=gnu', '-S', '-cf', old, '-C', src, 'sp']).status, 0);
      if (holes) await assert.rejects(readAll(tarFormat, old), /type this reader does not know/);
    });

    for (const [f, ext] of formats) {
      it(`GNU tar lists and extracts what ${f.name} writes`, async (t) => {
        const zflag = ext === 'tar.gz' ? ['-z'] : ext === 'tar.zst' ? ['--zstd'] : [];
        if (ext === 'tar.zst' && !have('zstd')) return t.skip('zstd missing');
        const archive = path.join(dir, `for-gnu.${ext}`);
        await f.write(stream(sampleTree({ devices: isRoot })), archive);

        const list = run('tar', [...zflag, '-tvf', archive]);
        assert.equal(list.status, 0, list.stderr);
        assert.equal(list.stderr, '');
        const listing = list.stdout.toString('latin1');
        assert.match(listing, /^-rwsr-xr-x 1234\/100 +11 2023-11-1\d \d\d:\d\d dir\/file$/m);
        assert.match(listing, /^drwxrwxrwt 1234\/4321 .* dir\/$/m);
        assert.match(listing, new RegExp(`^-rw-r--r-- 0/0 +10 2100-01-01 .* ${LONG}$`, 'm'));
        assert.match(listing, /^-{10} 3000000\/2999999 .* dir\/zero-mode$/m);
        assert.match(listing, /^drwxr-x--- 0\/0 .* \.\/$/m);
        assert.match(listing, /^h.* dir\/hardlink link to dir\/file$/m);
        assert.match(listing, new RegExp(`^l.* dir/longlink -> ${LONG_TARGET}$`, 'm'));
        assert.match(listing, /^p.* dir\/fifo$/m);
        assert.ok(listing.includes('dir/raw-\\377\\376\\200-name\n'), 'raw name, GNU-quoted');

        if (!userXattrsWork()) return t.skip('no user xattrs here');
        const out = path.join(dir, `gnu-out-${ext}`);
        fs.mkdirSync(out);
        const x = run('tar', [
          ...zflag,
          '--xattrs',
          isRoot ? '--xattrs-include=*' : '--xattrs-include=user.*',
          '--warning=no-timestamp', // the 2100 and 1969 mtimes are on purpose
          '-p',
          '--numeric-owner',
          '-xf',
          archive,
          '-C',
          out,
        ]);
        assert.equal(x.status, 0, x.stderr);
        assert.equal(x.stderr, '');
        const p = (rel: string | Buffer) =>
          typeof rel === 'string' ? path.join(out, rel) : Buffer.concat([B(out + '/'), rel]);
        assert.equal(fs.readFileSync(p('dir/file'), 'utf8'), 'hello, tar\n');
        const st = fs.lstatSync(p('dir/file'), { bigint: true });
        assert.equal(st.mtimeNs, 1_700_000_000_123_456_789n);
        assert.equal(fs.lstatSync(p('dir/hardlink')).ino, fs.lstatSync(p('dir/file')).ino);
        assert.equal(fs.lstatSync(p('dir/hardlink-long')).ino, fs.lstatSync(p(LONG)).ino);
        assert.equal(fs.readlinkSync(p('dir/longlink')), LONG_TARGET);
        assert.equal(fs.readFileSync(p(LONG), 'utf8'), 'long name\n');
        assert.equal(fs.readFileSync(p(RAW) as unknown as string, 'utf8'), 'raw name\n');
        assert.ok(fs.readFileSync(p('dir/big')).equals(BIG));
        assert.equal(fs.lstatSync(p('dir/fifo')).isFIFO(), true);
        assert.equal(
          fs.lstatSync(p(RAW) as unknown as string, { bigint: true }).mtimeNs,
          -1_500_000_000n,
        );
        assert.equal(fs.lstatSync(p(LONG), { bigint: true }).mtimeNs, 4_102_444_800_987_654_321n);
        if (isRoot) {
          assert.equal(st.mode & 0o7777n, 0o4755n);
          assert.equal(st.uid, 1234n);
          assert.equal(fs.lstatSync(p('dir/zero-mode')).mode & 0o7777, 0);
          assert.equal(fs.lstatSync(p('dir/zero-mode')).uid, 3_000_000);
          assert.equal(fs.lstatSync(p('dir')).mode & 0o7777, 0o1777);
          assert.equal(
            fs.lstatSync(out).mode & 0o7777,
            0o750,
            'the root "./" entry sets the top mode',
          );
          assert.equal(fs.lstatSync(p('dir/null')).isCharacterDevice(), true);
        }
        const attrs = run('getfattr', [
          '-d',
          '-e',
          'hex',
          '-m',
          '^user\\.',
          p('dir/file') as string,
        ]);
        assert.equal(attrs.status, 0, attrs.stderr);
        const text = attrs.stdout.toString();
        assert.match(text, /^user\.x=0x68656c6c6f$/m);
        assert.match(text, new RegExp(`^user\\.bin=0x${BIN.toString('hex')}$`, 'm'));
        assert.match(text, /^user\.a\\075b%c=0x6f6464206e616d65$/m); // getfattr writes '=' as \075
        if (isRoot) {
          const cap = run('getfattr', [
            '-n',
            'security.capability',
            '-e',
            'hex',
            p('dir/file') as string,
          ]);
          assert.match(
            cap.stdout.toString(),
            new RegExp(`security\\.capability=0x${CAP.toString('hex')}`),
          );
        }
      });
    }
  },
);
