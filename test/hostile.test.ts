import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ContentStore } from '../src/content/store.js';
import { sha256Hex } from '../src/content/digest.js';
import { ImageLibrary, type ImageRecord } from '../src/image/library.js';
import { captureImage } from '../src/image/capture.js';
import { applyImage } from '../src/image/apply.js';
import { verifyImage } from '../src/image/verify.js';
import { encodeManifest, decodeManifest } from '../src/image/formats/native/v1/manifest-codec.js';
import type { Entry } from '../src/image/manifest.js';
import { isReimageError, type ErrorCode } from '../src/errors.js';

/**
 * Hostile manifests: each is written into a store as if a tampered or malicious store had
 * served it (its id is its real hash, so only validation can stop it), then applied. Every
 * one must be refused before anything is written, and nothing may appear outside the target.
 */
let work: string;
let store: ContentStore;
let lib: ImageLibrary;
let base: ImageRecord;
let fileEntry: Entry;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'reimage-hostile-'));
  const src = join(work, 'src');
  mkdirSync(src);
  writeFileSync(join(src, 'data'), 'x'.repeat(100_000));
  store = ContentStore.open(join(work, 'store'), { create: true });
  lib = new ImageLibrary(store);
  base = (await captureImage({ source: src, store, name: 'base' })).record;
  fileEntry = lib.loadManifest(base.id).manifest.entries.find((e) => e.type === 'file')!;
});

after(() => rmSync(work, { recursive: true, force: true }));

const root: Entry = {
  path: Buffer.alloc(0),
  type: 'dir',
  mode: 0o755,
  uid: 0,
  gid: 0,
  mtimeNs: 0n,
  size: 0,
  xattrs: [],
};
const dir = (p: string): Entry => ({ ...root, path: Buffer.from(p) });
const file = (p: string, over: Partial<Entry> = {}): Entry => ({
  ...fileEntry,
  path: Buffer.from(p),
  ...over,
});
const symlink = (p: string, target: string): Entry => ({
  ...root,
  type: 'symlink',
  path: Buffer.from(p),
  target: Buffer.from(target),
});
const hardlink = (p: string, target: string): Entry => ({
  ...root,
  type: 'hardlink',
  path: Buffer.from(p),
  target: Buffer.from(target),
});

/** Stores a manifest (valid or not) as image `name`, exactly as a hostile store would serve it. */
function plant(name: string, entries: Entry[]): string {
  const bytes = encodeManifest({ entries });
  const id = sha256Hex(bytes);
  lib.putManifest(id, bytes);
  lib.putRecord({ ...base, id, properties: { ...base.properties, name } });
  lib.setName(name, id);
  return id;
}

// Built lazily: they use the real file entry captured in before().
const cases: Array<[string, () => Entry[], ErrorCode, RegExp]> = [
  [
    'an absolute path',
    () => [root, dir('etc'), file('/etc/passwd')],
    'MANIFEST_INVALID',
    /absolute/,
  ],
  ['a .. component', () => [root, dir('a'), file('a/../../escape')], 'MANIFEST_INVALID', /'\.\.'/],
  ['a . component', () => [root, dir('a'), file('a/./b')], 'MANIFEST_INVALID', /'\.'/],
  [
    'an entry below a symlink of the same image',
    () => [root, symlink('lnk', '/tmp'), file('lnk/planted')],
    'MANIFEST_INVALID',
    /below a symlink/,
  ],
  [
    'an entry whose parent is missing',
    () => [root, file('nodir/x')],
    'MANIFEST_INVALID',
    /parent directory is not in the image/,
  ],
  [
    'a hard link to a path outside the image',
    () => [root, hardlink('h', '../outside')],
    'MANIFEST_INVALID',
    /'\.\.'/,
  ],
  [
    'a hard link to an absolute path',
    () => [root, hardlink('h', '/etc/shadow')],
    'MANIFEST_INVALID',
    /absolute/,
  ],
  [
    'a hard link to a later entry',
    () => [root, hardlink('a', 'b'), file('b')],
    'MANIFEST_INVALID',
    /not an earlier entry/,
  ],
  [
    'a hard link to a directory',
    () => [root, dir('d'), hardlink('h', 'd')],
    'MANIFEST_INVALID',
    /only regular files/,
  ],
  [
    'a size that disagrees with the chunk list',
    () => [root, file('f', { size: fileEntry.size + 1 })],
    'MANIFEST_INVALID',
    /chunks hold/,
  ],
  ['a duplicate path', () => [root, file('f'), file('f')], 'MANIFEST_INVALID', /duplicate/],
  ['entries out of order', () => [root, file('b'), file('a')], 'MANIFEST_INVALID', /out of order/],
  [
    'a root that is not a directory',
    () => [{ ...fileEntry, path: Buffer.alloc(0) }],
    'MANIFEST_INVALID',
    /root must be a directory/,
  ],
  ['a NUL byte in a path', () => [root, file('a\0b')], 'MANIFEST_INVALID', /NUL/],
  [
    'mode bits beyond 07777',
    () => [root, file('f', { mode: 0o170777 })],
    'MANIFEST_INVALID',
    /mode/,
  ],
  [
    'sparse regions that touch',
    () => {
      const n = fileEntry.size;
      const half = Math.floor(n / 2);
      return [
        root,
        file('f', {
          size: n + 10,
          segments: [
            [0, half],
            [half, n - half],
          ],
        }),
      ];
    },
    'MANIFEST_INVALID',
    /touch/,
  ],
  [
    'a chunk that crosses from one sparse region into the next',
    () => {
      const n = fileEntry.lengths![0]!;
      return [
        root,
        file('f', {
          chunks: fileEntry.chunks!.subarray(0, 32),
          lengths: [n],
          size: n + 100,
          segments: [
            [0, n - 10],
            [n + 50, 10],
          ],
        }),
      ];
    },
    'MANIFEST_INVALID',
    /crosses/,
  ],
  // The manifest is self-consistent, but the chunk it names has another length in the store.
  [
    'a chunk length that disagrees with the stored chunk',
    () => [
      root,
      file('f', {
        size: fileEntry.size - 1,
        lengths: [fileEntry.lengths![0]! - 1, ...fileEntry.lengths!.slice(1)],
      }),
    ],
    'CHUNK_CORRUPT',
    /corrupt/,
  ],
];

describe('hostile manifests are refused and nothing is written', () => {
  for (const [what, entries, code, message] of cases) {
    test(what, async () => {
      const name = `h-${what.replace(/[^a-z0-9]+/gi, '-')}`.slice(0, 100);
      plant(name, entries());
      const target = join(work, `t-${name}`);
      await assert.rejects(applyImage({ store, image: name, target }), (e) => {
        assert.ok(isReimageError(e), String(e));
        assert.equal(e.code, code);
        assert.match(e.message, message);
        return true;
      });
      assert.equal(existsSync(target), false, 'the target was not created (or was removed again)');
      assert.deepEqual(
        readdirSync(work).filter((n) => !n.startsWith('t-') && !['src', 'store'].includes(n)),
        [],
        'nothing outside the target',
      );
      if (code === 'MANIFEST_INVALID') {
        await assert.rejects(verifyImage({ store, image: name }), (e) =>
          isReimageError(e, 'MANIFEST_INVALID'),
        );
      }
    });
  }

  test('a chunk the store does not have is named, with its file, before anything is written', async () => {
    const unknown = Buffer.alloc(32, 0xab);
    const lengths = fileEntry.lengths!;
    const chunks = Buffer.concat([unknown, fileEntry.chunks!.subarray(32)]);
    plant('h-missing-chunk', [root, dir('d'), file('d/f', { chunks, lengths })]);
    const target = join(work, 't-missing-chunk');
    await assert.rejects(applyImage({ store, image: 'h-missing-chunk', target }), (e) => {
      assert.ok(isReimageError(e, 'CHUNK_MISSING'), String(e));
      assert.match(e.message, new RegExp(`chunk ${unknown.toString('hex')} of d/f`));
      return true;
    });
    assert.equal(existsSync(target), false);
    const v = await verifyImage({ store, image: 'h-missing-chunk' });
    assert.equal(v.problems[0]?.code, 'CHUNK_MISSING');
  });

  test('a manifest that does not hash to its id is refused', async () => {
    const good = encodeManifest({ entries: [root, file('f')] });
    const id = sha256Hex(good);
    const evil = encodeManifest({ entries: [root, file('g')] });
    lib.putManifest(id, evil);
    lib.putRecord({ ...base, id });
    await assert.rejects(applyImage({ store, image: id, target: join(work, 't-hash') }), (e) =>
      isReimageError(e, 'MANIFEST_HASH_MISMATCH'),
    );
    assert.equal(existsSync(join(work, 't-hash')), false);
  });

  test('non-canonical encodings are refused (one tree, one id)', () => {
    const bytes = encodeManifest({ entries: [root, file('f')] });
    assert.equal(decodeManifest(bytes).entries.length, 2);
    // Pad the entry count with a non-minimal varint: same tree, other bytes.
    const padded = Buffer.concat([
      bytes.subarray(0, 8),
      Buffer.from([0x82, 0x00]),
      bytes.subarray(9),
    ]);
    assert.throws(
      () => decodeManifest(padded),
      (e) => isReimageError(e, 'MANIFEST_INVALID') && /non-minimal/.test(e.message),
    );
    assert.throws(() => decodeManifest(Buffer.concat([bytes, Buffer.from([0])])), /trailing bytes/);
  });
});
