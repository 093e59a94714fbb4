import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { diffListings, independentListing, quoteBytes } from './listing.js';
import { makeTestTree, mutateTree, type TreeFacts } from './tree.js';

const asRoot = process.getuid?.() === 0;

function cpA(src: string, dst: string): void {
  execFileSync('cp', ['-a', '--', src, dst]);
}

function line(listing: string[], rel: string | Buffer): string {
  const q = quoteBytes(typeof rel === 'string' ? Buffer.from(rel) : rel);
  const found = listing.find((l) => l.startsWith(q + ' '));
  assert.ok(found, `no listing line for ${q}`);
  return found;
}

describe('test support: makeTestTree + independentListing', () => {
  let tmp: string;
  let src: string;
  let facts: TreeFacts;
  let listing: string[];

  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-support-'));
    src = path.join(tmp, 'src');
    facts = await makeTestTree(src, { seed: 42, scale: 'small' });
    listing = independentListing(src);
  });

  after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('creates a small tree with every entry type', () => {
    assert.equal(facts.root, src);
    assert.ok(facts.entries > 100 && facts.entries <= 250, `entries ${facts.entries}`);
    assert.ok(facts.totalBytes > 4 * 1024 * 1024, `totalBytes ${facts.totalBytes}`);
    assert.ok(facts.totalBytes < 10 * 1024 * 1024, `totalBytes ${facts.totalBytes}`);
    assert.equal(listing.length, facts.entries + 1); // + the root
    const types = new Set(listing.map((l) => /type=(\w)/.exec(l)?.[1]));
    for (const t of ['f', 'd', 'l', 'p', 's']) assert.ok(types.has(t), `type ${t} missing`);
    assert.equal(facts.hasDevices, asRoot);
    if (asRoot) {
      assert.match(line(listing, 'dev/null'), /type=c .* rdev=1:3/);
      assert.match(line(listing, 'dev/loop200'), /type=b .* rdev=7:200/);
      assert.match(line(listing, 'srv/foreign-link'), /type=l mode=0777 owner=1234:5678 /);
      assert.match(line(listing, 'home/user'), /owner=1000:1000/);
      assert.equal(facts.capabilityPath, 'usr/bin/ping');
      assert.match(line(listing, 'usr/bin/ping'), /xattr\.security\.capability=0x01000002/);
    } else {
      assert.ok(facts.skipped.some((s) => s.includes('devices')));
    }
    assert.deepEqual(facts.socketPaths, ['run/control.sock']);
    assert.match(line(listing, 'run/control.sock'), /type=s /);
  });

  it('lists modes, times, links, xattrs and awkward names exactly', () => {
    assert.match(line(listing, 'usr/bin/su'), /mode=4755 .* nlink=2 hardlink="usr\/bin\/su"/);
    assert.match(line(listing, 'usr/sbin/su-hardlink'), /nlink=2 hardlink="usr\/bin\/su"/);
    assert.match(line(listing, 'usr/bin/wall'), /mode=2755/);
    assert.match(line(listing, 'tmp'), /type=d mode=1777/);
    if (asRoot) assert.match(line(listing, 'modes/m0000'), /mode=0000 owner=1234:5678 /);
    assert.match(line(listing, 'root'), /mode=0700/);
    assert.match(line(listing, 'sizes/empty'), /size=0 sha256=e3b0c442/);
    assert.match(line(listing, 'sizes/one'), /size=1 .*mtime=\d+\.000000000 /);
    assert.match(line(listing, 'sizes/4095'), /mtime=\d+\.000000001 /);
    assert.match(line(listing, 'sizes/4097'), /mtime=4102444800\.500000000 /);
    for (const l of listing) assert.match(l, /mtime=\d+\.\d{9}( |$)/);
    assert.match(
      line(listing, 'links/absolute'),
      /type=l .*mtime=\d+\.\d{9} .*target="\/etc\/hostname"/,
    );
    assert.match(line(listing, 'links/non-utf8-target'), /target="caf\\xff\\xfe\/\\x80"/);
    assert.match(line(listing, 'links/spaces'), /target="a target with spaces\\nand newline"/);
    for (const group of facts.hardlinkGroups) {
      const first = [...group].sort()[0] as string;
      for (const name of group) {
        assert.match(line(listing, name), new RegExp(`nlink=${group.length} hardlink="${first}"`));
      }
    }
    assert.match(
      line(listing, 'sizes/3k'),
      / xattr\.user\.binary=0x00ff100a0080 xattr\.user\.empty=0x /,
    );
    assert.match(
      line(listing, 'usr/share/doc/demo'),
      /type=d .*xattr\.user\.dir-attr=0x01020300ff/,
    );
    assert.match(
      line(listing, 'names/new\nline'),
      /^"names\/new\\nline" .*xattr\.user\.newline-name=0x6e/,
    );
    line(listing, 'names/back\\slash');
    line(listing, 'names/with space');
    assert.ok(facts.nonUtf8.length >= 5);
    for (const rel of facts.nonUtf8) line(listing, rel);
    const bad = Buffer.from('names/bad-\xff\xfe', 'latin1');
    assert.match(line(listing, bad), /^"names\/bad-\\xff\\xfe" .*xattr\.user\.non-utf8-path=0xff/);
    assert.match(line(listing, facts.sparsePath), /size=67108864 /);
  });

  it('lists the same tree identically twice, and a same-seed tree identically', async () => {
    assert.equal(diffListings(listing, independentListing(src)), '');
    const again = await makeTestTree(path.join(tmp, 'again'), { seed: 42 });
    assert.equal(diffListings(listing, independentListing(again.root), ['seed 42', 'again']), '');
    const other = await makeTestTree(path.join(tmp, 'other'), { seed: 43 });
    assert.notEqual(diffListings(listing, independentListing(other.root)), '');
  });

  it('gives a cp -a copy the same listing, and names every changed attribute', () => {
    const copy = path.join(tmp, 'copy');
    cpA(src, copy);
    const copied = independentListing(copy);
    assert.equal(diffListings(listing, copied, ['src', 'cp -a']), '');

    // chmod
    fs.chmodSync(path.join(copy, 'sizes/4096'), 0o640);
    let d = diffListings(listing, independentListing(copy));
    assert.match(d, /"sizes\/4096" \(changed\)/);
    assert.match(d, /mode: 0644 -> 0640/);
    fs.chmodSync(path.join(copy, 'sizes/4096'), 0o644);
    assert.equal(diffListings(listing, independentListing(copy)), '');

    // xattr value
    execFileSync('setfattr', [
      '-n',
      'user.binary',
      '-v',
      '0x00ff100a0081',
      path.join(copy, 'sizes/3k'),
    ]);
    d = diffListings(listing, independentListing(copy));
    assert.match(d, /"sizes\/3k" \(changed\)/);
    assert.match(d, /xattr\.user\.binary: 0x00ff100a0080 -> 0x00ff100a0081/);

    // one nanosecond of a symlink's mtime
    const lnk = path.join(copy, 'links/relative');
    const mt = /mtime=(\d+)\.(\d{9})/.exec(line(listing, 'links/relative'));
    assert.ok(mt);
    const ns = String(Number(mt[2]) + 1).padStart(9, '0');
    execFileSync('touch', ['-h', '-d', `@${mt[1]}.${ns}`, lnk]);
    d = diffListings(listing, independentListing(copy));
    assert.match(d, /"links\/relative" \(changed\)/);
    assert.match(d, new RegExp(`mtime: ${mt[1]}\\.${mt[2]} -> ${mt[1]}\\.${ns}`));
    assert.doesNotMatch(d, /"sizes\/4096"/);

    // content with the same size and mtime
    const f = path.join(copy, 'sizes/one');
    const st = fs.statSync(f, { bigint: true });
    fs.writeFileSync(f, 'y');
    execFileSync('touch', ['-d', `@${st.mtimeNs / 1_000_000_000n}.000000000`, f]);
    d = diffListings(listing, independentListing(copy));
    assert.match(d, /"sizes\/one" \(changed\)\n.*\n.*\n {4}sha256: /);

    // a non-UTF-8 name removed
    fs.rmSync(Buffer.concat([Buffer.from(copy + '/names/latin1-caf'), Buffer.from([0xe9])]));
    d = diffListings(listing, independentListing(copy), ['src', 'copy']);
    assert.match(d, /"names\/latin1-caf\\xe9" \(only in src\)/);
  });

  it('honours exclude, ignoreSockets, ignoreRoot and ignoreRootMtime', () => {
    const noSock = independentListing(src, { ignoreSockets: true });
    assert.equal(noSock.length, listing.length - facts.socketPaths.length);
    assert.ok(!noSock.some((l) => l.includes('type=s ')));
    const noNames = independentListing(src, {
      exclude: (rel) => rel.toString('latin1') === 'names',
    });
    assert.ok(!noNames.some((l) => l.startsWith('"names')));
    assert.ok(noNames.some((l) => l.startsWith('"sizes/')));
    const noRoot = independentListing(src, { ignoreRoot: true });
    assert.ok(!noRoot.some((l) => l.startsWith('"." ')));
    const rootNoMtime = line(independentListing(src, { ignoreRootMtime: true }), Buffer.from('.'));
    assert.doesNotMatch(rootNoMtime, /mtime=/);
    assert.match(line(listing, Buffer.from('.')), /^"\." type=d .*mtime=/);
  });
});

describe('test support: mutateTree', () => {
  let tmp: string;
  before(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-mutate-'));
  });
  after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('makes a different, deterministic second version', async () => {
    const v1 = path.join(tmp, 'v1');
    await makeTestTree(v1, { seed: 7 });
    const before1 = independentListing(v1);
    const a = path.join(tmp, 'a');
    const b = path.join(tmp, 'b');
    cpA(v1, a);
    cpA(v1, b);
    const report = await mutateTree(a, 99);
    const reportB = await mutateTree(b, 99);
    assert.deepEqual(report, reportB);
    const la = independentListing(a);
    assert.equal(diffListings(la, independentListing(b)), '');

    const d = diffListings(before1, la, ['v1', 'v2']);
    assert.notEqual(d, '');
    assert.ok(report.modified.length >= 3 && report.added.length >= 3);
    assert.ok(report.deleted.length >= 2 && report.renamed.length === 1);
    for (const rel of [...report.modified, ...report.metadataChanged]) {
      assert.ok(d.includes(`${quoteBytes(Buffer.from(rel))} (changed)`), rel);
    }
    for (const rel of report.added) assert.ok(d.includes(`"${rel}" (only in v2)`), rel);
    for (const rel of report.deleted) assert.ok(d.includes(`"${rel}" (only in v1)`), rel);
    const [ren] = report.renamed;
    assert.ok(ren);
    assert.ok(d.includes(`"${ren.from}" (only in v1)`) && d.includes(`"${ren.to}" (only in v2)`));
    assert.match(report.summary, /renamed /);
  });
});

describe('test support: medium scale', () => {
  let tmp: string;
  after(() => {
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  it('creates ~2000 more files and ~40 MiB, all listed', async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-medium-'));
    const facts = await makeTestTree(path.join(tmp, 't'), { seed: 5, scale: 'medium' });
    assert.ok(facts.entries > 2000, `entries ${facts.entries}`);
    assert.ok(facts.totalBytes > 30 * 1024 * 1024, `totalBytes ${facts.totalBytes}`);
    assert.ok(facts.totalBytes < 50 * 1024 * 1024, `totalBytes ${facts.totalBytes}`);
    const l = independentListing(facts.root, { ignoreSockets: true });
    assert.equal(l.length, facts.entries + 1 - facts.socketPaths.length);
  });
});
