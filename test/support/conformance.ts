/**
 * The one conformance suite every image format runs (built-in or plugin):
 *
 *   formatConformance(tarFormat);
 *   formatConformance(async () => (await loadFormats(['my-plugin.mjs'])).get('mine')!, {
 *     label: 'mine',
 *   });
 *
 * It registers a node:test `describe` that checks, against the format's own claims:
 *  (a) round trip: a tree with every entry type (makeTestTree) is captured natively, exported
 *      to the format, imported back and applied; the independent listings (standard tools, no
 *      project code) of source and result must be equal once what the format says it does not
 *      keep is taken out of both (`comparableListing`, one documented rule per capability).
 *      The same file imported opaquely and applied by the format must give the same tree.
 *  (b) every capability it claims is really kept, one test per claim, on specific entries
 *      (a binary user.* xattr value, a 1-ns mtime, a hard-link group of three, ...).
 *  (c) what it cannot keep is left out or refused with a ReimageError, never turned into
 *      something else; and hostile entries written into its files with its own writer (`..`,
 *      absolute paths, writes through symlinks, hard links out of the tree) are refused by
 *      import and by apply when read back, with nothing written outside the target. The
 *      format-independent refusals (hostile TreeEntry streams, real hostile tar archives) are
 *      in test/hostile-archives.test.ts.
 *  (d) probe() recognizes what the format wrote and what its reference tool wrote, and
 *      rejects files of other formats (made with the standard tools); reading a file that is
 *      not in the format fails with a ReimageError.
 *
 * When `unavailable()` gives a reason, the suite is skipped with it, except where the tools
 * are meant to be installed: with $CI set (or `requireAvailable`), unavailability fails.
 */
import { describe, test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { isUtf8 } from 'node:buffer';
import {
  closeSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ContentStore } from '../../src/content/store.js';
import { captureImage } from '../../src/image/capture.js';
import { applyImage } from '../../src/image/apply.js';
import { applyOpaque, exportImage, importFile } from '../../src/image/convert.js';
import { applyTree, normalizeArchivePath } from '../../src/image/tree.js';
import { ImageLibrary } from '../../src/image/library.js';
import {
  FormatRegistry,
  type FormatCapabilities,
  type ImageFormat,
  type TreeEntry,
} from '../../src/image/formats/api.js';
import type { Entry } from '../../src/image/manifest.js';
import { isReimageError, type ErrorCode } from '../../src/errors.js';
import { makeTestTree, type TreeFacts } from './tree.js';
import { diffListings, independentListing, quoteBytes } from './listing.js';

export interface ConformanceOptions {
  /** Name of the suite; needed when the format is loaded lazily (default: its name). */
  label?: string;
  /** Fail instead of skipping when the format is unavailable (default: when $CI is set). */
  requireAvailable?: boolean;
  /** Seed of the test tree (default 11). */
  seed?: number;
  /**
   * Kinds of sample files (see `SAMPLE_KINDS`) other than its own name that the format's
   * probe may accept, e.g. a reader that also takes compressed variants.
   */
  probeAlsoAccepts?: readonly string[];
}

export const CAPABILITY_KEYS = [
  'owners',
  'xattrs',
  'hardlinks',
  'devices',
  'fifos',
  'sparse',
  'mtimeNs',
  'rawNames',
] as const satisfies ReadonlyArray<keyof FormatCapabilities>;

/** Sample files made with standard tools for probe() checks: kind → how it is made. */
export const SAMPLE_KINDS = [
  'tar',
  'tar.gz',
  'tar.zst',
  'cpio',
  'squashfs',
  'wim',
  'random',
  'empty',
  'text',
] as const;

export function formatConformance(
  format: ImageFormat | (() => Promise<ImageFormat>),
  opts: ConformanceOptions = {},
): void {
  const label =
    opts.label ?? (typeof format === 'function' ? 'a lazily loaded format' : format.name);
  describe(`format conformance: ${label}`, async () => {
    const f = typeof format === 'function' ? await format() : format;

    test('declares a well-formed ImageFormat', () => checkShape(f));

    const why = await f.unavailable();
    const required = opts.requireAvailable ?? !!process.env.CI;
    if (why && required) {
      test('is usable here (the tools are meant to be installed)', () => {
        assert.fail(`format ${f.name} is unavailable: ${why}`);
      });
      return;
    }
    describe(
      `${f.name}: round trip, claims, refusals, probe`,
      { skip: why ? `format ${f.name} is unavailable here: ${why}` : false },
      () => conformanceSuite(f, opts),
    );
  });
}

function checkShape(f: ImageFormat): void {
  assert.equal(typeof f.name, 'string');
  assert.match(f.name, /^[a-z0-9][a-z0-9.+_-]*$/, 'a short lower-case name for --format');
  assert.ok(Array.isArray(f.extensions), 'extensions is a list');
  for (const ext of f.extensions) assert.match(ext, /^\.[^/]+$/, `extension ${ext} starts with .`);
  for (let i = 1; i < f.extensions.length; i++) {
    assert.ok(
      f.extensions[i - 1]!.length >= f.extensions[i]!.length,
      'extensions are listed longest first',
    );
  }
  assert.equal(typeof f.description, 'string');
  for (const k of CAPABILITY_KEYS) {
    assert.equal(typeof f.capabilities[k], 'boolean', `capabilities.${k} is a boolean`);
  }
  for (const m of ['unavailable', 'probe', 'read', 'write'] as const) {
    assert.equal(typeof f[m], 'function', `${m}() is a function`);
  }
}

// ---------------------------------------------------------------------------------------------
// Listings: what a format can be held to

/**
 * What of an independent listing a format can be held to: the lines with what the format
 * says it does not keep taken out, in the same way on both sides. One rule per capability:
 *
 * - owners false: the `owner=` field is dropped (the applier's owner comes back instead);
 * - xattrs false: every `xattr.*` field is dropped;
 * - mtimeNs false: `mtime=` is cut to whole seconds (truncated, not rounded: tar, cpio and
 *   squashfs store the seconds of st_mtime), so 12.999999999 and 12.000000000 compare equal,
 *   12.x and 13.x do not;
 * - hardlinks false: `nlink=` and `hardlink=` are dropped (each name comes back as a file of
 *   its own, with the same content, which is still compared);
 * - devices false: the lines of character and block devices (type=c, type=b) are dropped;
 * - fifos false: the lines of FIFOs (type=p) are dropped;
 * - rawNames false: the lines whose path or symlink target is not valid UTF-8 are dropped (a
 *   directory's subtree goes with it: its children's paths are not valid UTF-8 either);
 * - sparse: nothing. The listing compares size and content, not allocation, so a format that
 *   writes holes out as zeros compares equal; the claim is checked on the manifest instead.
 *
 * Everything else (type, mode with setuid/setgid/sticky, size, sha256, symlink target, rdev)
 * is always compared. Sockets are never part of an image (capture skips them).
 */
export function comparableListing(lines: readonly string[], caps: FormatCapabilities): string[] {
  const out: string[] = [];
  for (const line of lines) {
    const [path, ...fields] = tokenize(line);
    if (path === undefined) continue;
    const value = (k: string) => fields.find((x) => x.startsWith(`${k}=`))?.slice(k.length + 1);
    const type = value('type');
    if (!caps.devices && (type === 'c' || type === 'b')) continue;
    if (!caps.fifos && type === 'p') continue;
    if (!caps.rawNames) {
      if (!isUtf8(unquote(path))) continue;
      const target = value('target');
      if (target !== undefined && !isUtf8(unquote(target))) continue;
    }
    const kept = fields
      .filter((x) => !(!caps.owners && x.startsWith('owner=')))
      .filter((x) => !(!caps.xattrs && x.startsWith('xattr.')))
      .filter((x) => !(!caps.hardlinks && (x.startsWith('nlink=') || x.startsWith('hardlink='))))
      .map((x) => (!caps.mtimeNs && x.startsWith('mtime=') ? x.replace(/\.\d+$/, '') : x));
    out.push([path, ...kept].join(' '));
  }
  return out.sort();
}

/** Splits a listing line into the quoted path and its fields (quoted values kept whole). */
export function tokenize(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let quoted = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (quoted && c === '\\') {
      cur += c + (line[i + 1] ?? '');
      i++;
    } else if (c === '"') {
      quoted = !quoted;
      cur += c;
    } else if (c === ' ' && !quoted) {
      if (cur) out.push(cur);
      cur = '';
    } else cur += c;
  }
  if (cur) out.push(cur);
  return out;
}

/** The bytes of a string quoted by `quoteBytes` (the root's "." included). */
export function unquote(quoted: string): Buffer {
  const s = quoted.slice(1, -1);
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c !== '\\') {
      out.push(c.charCodeAt(0));
      continue;
    }
    const n = s[++i] ?? '';
    if (n === 'n') out.push(0x0a);
    else if (n === 't') out.push(0x09);
    else if (n === 'x') {
      out.push(parseInt(s.slice(i + 1, i + 3), 16));
      i += 2;
    } else out.push(n.charCodeAt(0));
  }
  return Buffer.from(out);
}

/** The listing line of one path (relative, raw), or undefined. */
export function lineOf(lines: readonly string[], rel: string | Buffer): string | undefined {
  const prefix = `${quoteBytes(Buffer.from(rel))} `;
  return lines.find((l) => l.startsWith(prefix));
}

/** The value of one field of a listing line. */
export function fieldOf(line: string | undefined, key: string): string | undefined {
  if (line === undefined) return undefined;
  return tokenize(line)
    .slice(1)
    .find((x) => x.startsWith(`${key}=`))
    ?.slice(key.length + 1);
}

export const listing = (root: string) => independentListing(root, { ignoreSockets: true });

// ---------------------------------------------------------------------------------------------
// Trees reduced to what a format keeps

const lstatBig = (p: Buffer) => lstatSync(p, { bigint: true });

function absPath(root: string, rel: Buffer | string): Buffer {
  return Buffer.concat([Buffer.from(`${root}/`), Buffer.from(rel)]);
}

/**
 * Removes from a test tree the entries a format cannot hold at all (devices, FIFOs, names and
 * symlink targets that are not valid UTF-8), as its capabilities say. Returns the removed
 * paths (raw, relative); a removed directory takes its subtree with it.
 */
export function removeUnkept(root: string, facts: TreeFacts, caps: FormatCapabilities): Buffer[] {
  const gone: Buffer[] = [];
  if (!caps.devices) gone.push(...facts.devices.map((d) => Buffer.from(d.path)));
  if (!caps.fifos) gone.push(...facts.fifoPaths.map((p) => Buffer.from(p)));
  if (!caps.rawNames) {
    gone.push(...facts.nonUtf8);
    for (const s of facts.symlinks) if (!isUtf8(s.target)) gone.push(Buffer.from(s.path));
  }
  for (const rel of gone) rmSync(absPath(root, rel), { recursive: true, force: true });
  return gone;
}

/**
 * Reduces a test tree to exactly what a format keeps, so that native → format → native can
 * give the same image id: `removeUnkept`, then the sparse file (no sparse: it would come
 * back dense, with other chunks and no segments), all names but one of each hard-link group
 * (no hardlinks), and mtimes cut to whole seconds (no mtimeNs; done last, as removals change
 * the parents' times). Formats that keep no owners or no xattrs are not handled (an Error
 * says so). Returns what was done, one line each.
 */
export function reduceTreeTo(root: string, facts: TreeFacts, caps: FormatCapabilities): string[] {
  if (!caps.owners || !caps.xattrs) {
    throw new Error('reduceTreeTo: dropping owners or xattrs from a tree is not implemented');
  }
  const did = removeUnkept(root, facts, caps).map((p) => `removed ${quoteBytes(p)}`);
  if (!caps.sparse) {
    rmSync(join(root, facts.sparsePath));
    did.push(`removed the sparse file ${facts.sparsePath}`);
  }
  const walk = (abs: Buffer, visit: (abs: Buffer, st: ReturnType<typeof lstatBig>) => void) => {
    const st = lstatBig(abs);
    if (st.isDirectory()) {
      const names = readdirSync(abs, { encoding: 'buffer' }).sort(Buffer.compare);
      for (const n of names) walk(Buffer.concat([abs, Buffer.from('/'), n]), visit);
    }
    visit(abs, st);
  };
  if (!caps.hardlinks) {
    // every name of a hard-link group but one (the groups with non-UTF-8 names included)
    const seen = new Set<bigint>();
    walk(Buffer.from(root), (abs, st) => {
      if (!st.isFile() || st.nlink < 2n) return;
      if (seen.has(st.ino)) rmSync(abs);
      seen.add(st.ino);
    });
    did.push('kept one name of each hard-link group');
  }
  if (!caps.mtimeNs) {
    walk(Buffer.from(root), (abs, st) => {
      const sec = Number(st.mtimeNs / 1_000_000_000n);
      lutimesSync(abs, sec, sec);
    });
    did.push('cut every mtime to whole seconds');
  }
  return did;
}

// ---------------------------------------------------------------------------------------------
// The suite

function once<T>(fn: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | undefined;
  return () => (p ??= fn());
}

function isCode(code: ErrorCode | ErrorCode[]) {
  const codes = Array.isArray(code) ? code : [code];
  return (e: unknown) => {
    assert.ok(
      isReimageError(e) && codes.includes(e.code),
      `expected ${codes.join(' or ')}, got ${isReimageError(e) ? e.code : 'a non-ReimageError'}: ${(e as Error)?.message}`,
    );
    return true;
  };
}

/** Entry type of each path of an image, by latin1 key ('hardlink' counted as 'file'). */
function manifestTypes(store: ContentStore, ref: string): Map<string, Entry['type']> {
  const lib = new ImageLibrary(store);
  const { manifest } = lib.loadManifest(lib.resolve(ref).id);
  return new Map(
    manifest.entries.map((e) => [
      e.path.toString('latin1'),
      e.type === 'hardlink' ? 'file' : e.type,
    ]),
  );
}

function manifestEntry(store: ContentStore, ref: string, rel: string): Entry | undefined {
  const lib = new ImageLibrary(store);
  const { manifest } = lib.loadManifest(lib.resolve(ref).id);
  return manifest.entries.find((e) => e.path.equals(Buffer.from(rel)));
}

function conformanceSuite(f: ImageFormat, opts: ConformanceOptions): void {
  const caps = f.capabilities;
  const seed = opts.seed ?? 11;
  const ext = f.extensions[0] ?? '.img';
  let work = '';
  after(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /** The test tree (every entry type) and a copy reduced to the entry types the format holds. */
  const setup = once(async () => {
    work = mkdtempSync(join(tmpdir(), `reimage-conformance-${f.name.replace(/\W/g, '_')}-`));
    const full = join(work, 'full');
    const facts = await makeTestTree(full, { seed, scale: 'small' });
    const tree = join(work, 'tree');
    const cp = spawnSync('cp', ['-a', full, tree], { encoding: 'utf8' });
    assert.equal(cp.status, 0, `cp -a: ${cp.stderr}`);
    const removed = removeUnkept(tree, facts, caps);
    const store = ContentStore.open(join(work, 'store'), { create: true });
    const registry = new FormatRegistry();
    registry.register(f);
    const source = (await captureImage({ source: tree, store, name: 'source' })).record;
    return { facts, full, tree, removed, store, registry, source };
  });

  const exported = once(async () => {
    const s = await setup();
    const file = join(work, `image${ext}`);
    await exportImage({
      store: s.store,
      registry: s.registry,
      image: 'source',
      format: f.name,
      out: file,
    });
    return file;
  });

  const imported = once(async () => {
    const s = await setup();
    const file = await exported();
    return (
      await importFile({
        store: s.store,
        registry: s.registry,
        file,
        name: 'imported',
        format: f.name,
      })
    ).record;
  });

  const applied = once(async () => {
    const s = await setup();
    await imported();
    const target = join(work, 'applied');
    await applyImage({ store: s.store, image: 'imported', target });
    return { source: listing(s.tree), result: listing(target) };
  });

  describe('(a) round trip', () => {
    test('write: exports a native image as a file its probe() recognizes', async () => {
      const file = await exported();
      assert.ok(lstatSync(file).size > 0, 'the file is not empty');
      assert.equal(await f.probe(file), true, `probe() does not recognize ${file}`);
    });

    test('read: imports the file as a native image with as many entries', async () => {
      const s = await setup();
      const rec = await imported();
      assert.equal(rec.imageFormat, 'native-v1');
      assert.equal(rec.stats.entries, s.source.stats.entries, 'entries (root included)');
      assert.equal(rec.stats.dirs, s.source.stats.dirs, 'directories');
      assert.equal(rec.stats.symlinks, s.source.stats.symlinks, 'symlinks');
    });

    test('native → format → native, applied: equals the source, minus what it does not keep', async () => {
      const { source, result } = await applied();
      assert.equal(
        diffListings(comparableListing(source, caps), comparableListing(result, caps), [
          'source',
          `via ${f.name}`,
        ]),
        '',
      );
    });

    test('opaque: the file stored as is, applied by the format, gives the same tree', async () => {
      const s = await setup();
      const file = await exported();
      const { record } = await importFile({
        store: s.store,
        registry: s.registry,
        file,
        name: 'opaque',
        format: f.name,
        opaque: true,
      });
      assert.equal(record.imageFormat, 'opaque');
      assert.equal(record.opaqueFormat, f.name);
      const target = join(work, 'opaque-applied');
      await applyOpaque({ store: s.store, registry: s.registry, record, target, devices: true });
      assert.equal(
        diffListings(
          comparableListing(listing(s.tree), caps),
          comparableListing(listing(target), caps),
          ['source', `opaque ${f.name}`],
        ),
        '',
      );
    });
  });

  describe('(b) every capability it claims is really kept', () => {
    const claim = (
      key: keyof FormatCapabilities,
      what: string,
      check: () => Promise<string | void>,
    ) =>
      test(`${key}: ${what}`, async (t) => {
        if (!caps[key]) return t.skip(`${f.name} does not claim ${key}`);
        const skip = await check();
        if (skip) t.skip(skip);
      });
    const same = async (rel: string | Buffer, keys: string[]) => {
      const { source, result } = await applied();
      const a = lineOf(source, rel);
      const b = lineOf(result, rel);
      assert.ok(a, `${quoteBytes(Buffer.from(rel))} is in the source`);
      assert.ok(b, `${quoteBytes(Buffer.from(rel))} came back`);
      for (const k of keys) {
        assert.equal(fieldOf(b, k), fieldOf(a, k), `${k} of ${quoteBytes(Buffer.from(rel))}`);
      }
    };

    claim('owners', 'foreign uid:gid come back (files, directories, symlinks)', async () => {
      const { facts } = await setup();
      const chowned = Object.keys(facts.chowned);
      if (chowned.length === 0) return 'the test tree has foreign owners only when made as root';
      for (const rel of chowned) await same(rel, ['owner', 'mode']);
      const { result } = await applied();
      assert.equal(fieldOf(lineOf(result, 'srv/foreign'), 'owner'), '1234:5678');
    });

    claim('xattrs', 'binary, empty and 1500-byte user.* values come back exactly', async () => {
      const { facts } = await setup();
      const { source, result } = await applied();
      assert.equal(
        fieldOf(lineOf(result, 'sizes/3k'), 'xattr.user.binary'),
        '0x00ff100a0080',
        'user.binary of sizes/3k',
      );
      for (const rel of facts.xattrPaths) {
        const xa = (l: string | undefined) =>
          tokenize(l ?? '').filter((x) => x.startsWith('xattr.'));
        assert.deepEqual(xa(lineOf(result, rel)), xa(lineOf(source, rel)), `xattrs of ${rel}`);
      }
      if (facts.capabilityPath) await same(facts.capabilityPath, ['xattr.security.capability']);
    });

    claim(
      'hardlinks',
      'every hard-link group comes back as one inode with all its names',
      async () => {
        const { facts } = await setup();
        const { result } = await applied();
        for (const group of facts.hardlinkGroups) {
          for (const rel of group) await same(rel, ['nlink', 'hardlink', 'sha256']);
          const ids = group.map((rel) => fieldOf(lineOf(result, rel), 'hardlink'));
          assert.equal(new Set(ids).size, 1, `${group.join(', ')} are one inode`);
          assert.equal(fieldOf(lineOf(result, group[0]!), 'nlink'), String(group.length));
        }
      },
    );

    claim('devices', 'character and block devices come back with their numbers', async () => {
      const { facts } = await setup();
      if (!facts.hasDevices) return 'the test tree has devices only when made as root';
      for (const d of facts.devices) {
        await same(d.path, ['type', 'rdev', 'mode']);
        const { result } = await applied();
        assert.equal(fieldOf(lineOf(result, d.path), 'rdev'), `${d.major}:${d.minor}`);
      }
    });

    claim('fifos', 'a FIFO comes back with its mode', async () => {
      const { facts } = await setup();
      for (const p of facts.fifoPaths) await same(p, ['type', 'mode']);
    });

    claim(
      'sparse',
      'the sparse file comes back with its holes (in the imported manifest)',
      async () => {
        const { facts, store } = await setup();
        await imported();
        const e = manifestEntry(store, 'imported', facts.sparsePath);
        assert.ok(e?.segments, `${facts.sparsePath} has data regions (segments)`);
        const data = e.segments.reduce((n, [, len]) => n + len, 0);
        assert.equal(e.size, facts.sparseApparentSize);
        assert.ok(
          data <= facts.sparseDataOffsets.length * facts.sparseChunk * 2,
          `only the data regions are stored (${data} of ${e.size} bytes)`,
        );
        await same(facts.sparsePath, ['size', 'sha256']);
      },
    );

    claim(
      'mtimeNs',
      'mtimes come back to the nanosecond (1 ns, 999999999 ns, 1970, 2100)',
      async () => {
        for (const rel of ['sizes/4095', 'sizes/4096', 'sizes/empty', 'sizes/4097', 'sizes/one']) {
          await same(rel, ['mtime']);
        }
      },
    );

    claim('rawNames', 'names and symlink targets that are not valid UTF-8 come back', async () => {
      const { facts } = await setup();
      const { source, result } = await applied();
      const src = comparableListing(source, caps);
      const res = comparableListing(result, caps);
      for (const rel of facts.nonUtf8) {
        assert.equal(lineOf(res, rel), lineOf(src, rel), `${quoteBytes(rel)}`);
      }
      await same('links/non-utf8-target', ['target']);
    });
  });

  describe('(c) what it cannot keep, and hostile files', () => {
    test('entries it cannot hold are left out or refused, never turned into something else', async (t) => {
      const s = await setup();
      if (s.removed.length === 0)
        return t.skip(`${f.name} holds every entry type of the test tree`);
      await captureImage({ source: s.full, store: s.store, name: 'full' });
      const file = join(work, `full${ext}`);
      try {
        await exportImage({
          store: s.store,
          registry: s.registry,
          image: 'full',
          format: f.name,
          out: file,
        });
      } catch (e) {
        assert.ok(isReimageError(e), `a refusal is a ReimageError, not: ${(e as Error)?.stack}`);
        t.diagnostic(`export refused: ${e.code}: ${e.message}`);
        return;
      }
      await importFile({
        store: s.store,
        registry: s.registry,
        file,
        name: 'full-back',
        format: f.name,
      });
      const src = manifestTypes(s.store, 'full');
      const back = manifestTypes(s.store, 'full-back');
      const removed = s.removed.map((p) => p.toString('latin1'));
      const wasRemoved = (k: string) => removed.some((r) => k === r || k.startsWith(`${r}/`));
      for (const [k, type] of back) {
        const show = quoteBytes(Buffer.from(k, 'latin1'));
        assert.ok(src.has(k), `${show} came back but was not in the source (a changed name?)`);
        assert.equal(type, src.get(k), `${show} came back as another type`);
      }
      for (const k of src.keys()) {
        if (!wasRemoved(k))
          assert.ok(back.has(k), `${quoteBytes(Buffer.from(k, 'latin1'))} is kept`);
      }
    });

    test('hostile entries written with its own writer are refused when read back', async (t) => {
      await setup();
      for (const h of hostileStreams()) {
        const dir = join(work, `hostile-${h.name}`);
        const parent = join(dir, 'parent');
        const sentinel = join(parent, 'sentinel');
        mkdirSync(sentinel, { recursive: true });
        writeFileSync(join(parent, 'outside'), 'outside\n');
        const file = join(dir, `hostile${ext}`);
        const check = () => {
          assert.deepEqual(
            readdirSync(parent).sort(),
            ['outside', 'sentinel'],
            `${h.name}: parent`,
          );
          assert.deepEqual(readdirSync(sentinel), [], `${h.name}: sentinel stays empty`);
          assert.equal(
            lstatSync(join(parent, 'outside')).nlink,
            1,
            `${h.name}: no link to outside`,
          );
          assert.equal(readFileSync(join(parent, 'outside'), 'utf8'), 'outside\n');
        };
        try {
          await f.write(streamOf(h.entries(sentinel)), file);
        } catch (e) {
          t.diagnostic(`${h.name}: the writer refused: ${(e as Error).message}`);
          rmSync(file, { force: true });
          check();
          continue;
        }
        check();
        // A writer may also rewrite what it is given; then the file is not hostile any more,
        // and only "nothing outside" can be asked of it.
        const back = new Set(
          (await readAll(f, file)).map((e) => normalizeArchivePath(e.path).toString('latin1')),
        );
        const kept = h
          .entries(sentinel)
          .every((te) => back.has(normalizeArchivePath(te.entry.path).toString('latin1')));
        const s = await setup();
        if (!kept) {
          t.diagnostic(
            `${h.name}: the writer rewrote the paths; read back: ${[...back].join(', ')}`,
          );
          await applyTree(f.read(file), join(parent, 'target')).catch(isCode('MANIFEST_INVALID'));
          rmSync(join(parent, 'target'), { recursive: true, force: true });
          check();
          continue;
        }
        await assert.rejects(
          importFile({
            store: s.store,
            registry: s.registry,
            file,
            name: `hostile-${h.name}`,
            format: f.name,
          }),
          isCode('MANIFEST_INVALID'),
          `${h.name}: import`,
        );
        assert.equal(new ImageLibrary(s.store).getName(`hostile-${h.name}`), undefined);
        await assert.rejects(
          applyTree(f.read(file), join(parent, 'target')),
          isCode('MANIFEST_INVALID'),
          `${h.name}: apply`,
        );
        check();
      }
    });
  });

  describe('(d) probe() and foreign files', () => {
    const samples = once(() => makeSamples(join(work, 'samples')));

    test('rejects files of other formats (made with the standard tools)', async (t) => {
      await setup();
      const accepts = new Set([f.name, ...(opts.probeAlsoAccepts ?? [])]);
      for (const s of await samples()) {
        if (s.skipped) {
          t.diagnostic(`no ${s.kind} sample: ${s.skipped}`);
          continue;
        }
        if (accepts.has(s.kind)) continue;
        assert.equal(await f.probe(s.file), false, `probe() accepts a ${s.kind} file`);
      }
    });

    test('recognizes and reads a file made by the reference tool', async (t) => {
      const s = await setup();
      const own = (await samples()).find((x) => x.kind === f.name);
      if (!own) return t.skip(`no reference tool for ${f.name} among the samples`);
      if (own.skipped) return t.skip(`no ${f.name} sample: ${own.skipped}`);
      assert.equal(await f.probe(own.file), true);
      await importFile({
        store: s.store,
        registry: s.registry,
        file: own.file,
        name: 'reference',
        format: f.name,
      });
      const hello = manifestEntry(s.store, 'reference', 'hello');
      assert.equal(hello?.type, 'file');
      assert.equal(hello?.size, 6);
      const link = manifestEntry(s.store, 'reference', 'sub/link');
      assert.equal(link?.type, 'symlink');
      assert.equal(link?.target?.toString(), '../hello');
    });

    test('reading a file that is not in the format fails with a ReimageError', async () => {
      const s = await setup();
      // random bytes and text must be refused; an empty file may also read as an empty tree
      // (GNU tar takes an empty file for an empty archive)
      for (const kind of ['random', 'text', 'empty']) {
        const sample = (await samples()).find((x) => x.kind === kind)!;
        const name = `not-${kind}`;
        try {
          const { record } = await importFile({
            store: s.store,
            registry: s.registry,
            file: sample.file,
            name,
            format: f.name,
          });
          assert.ok(
            kind === 'empty' && record.stats.entries === 1,
            `${kind}: read as a tree of ${record.stats.entries} entries instead of refused`,
          );
        } catch (e) {
          assert.ok(isReimageError(e), `${kind}: a ReimageError, not: ${(e as Error)?.stack}`);
          assert.equal(new ImageLibrary(s.store).getName(name), undefined, `${kind}: no image`);
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Hostile entry streams and sample files

async function* streamOf(entries: TreeEntry[]): AsyncGenerator<TreeEntry> {
  yield* entries;
}

/** Every entry a format reads from a file (data consumed, as the contract asks). */
async function readAll(f: ImageFormat, file: string): Promise<Entry[]> {
  const out: Entry[] = [];
  for await (const te of f.read(file)) {
    if (te.data) for await (const _ of te.data());
    out.push(te.entry);
  }
  return out;
}

const T0 = 1_600_000_000_000_000_000n;

function hostileEntry(path: string, over: Partial<Entry> = {}): Entry {
  return {
    path: Buffer.from(path),
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

function hostileFile(path: string, text = 'written by a hostile archive\n'): TreeEntry {
  const data = Buffer.from(text);
  return {
    entry: hostileEntry(path, { type: 'file', mode: 0o644, size: data.length }),
    data: async function* () {
      yield data;
    },
  };
}

/**
 * Hostile trees as entry streams: the target is `<parent>/target`, beside `<parent>/sentinel`
 * (an empty directory) and `<parent>/outside` (a file); applying must touch none of them.
 */
export function hostileStreams(): Array<{
  name: string;
  entries: (sentinel: string) => TreeEntry[];
}> {
  const root = { entry: hostileEntry('') };
  return [
    { name: 'dotdot', entries: () => [root, hostileFile('../escaped')] },
    { name: 'absolute', entries: (s) => [root, hostileFile(join(s, 'absolute'))] },
    {
      name: 'symlink-out',
      entries: (s) => [
        root,
        { entry: hostileEntry('lnk', { type: 'symlink', mode: 0o777, target: Buffer.from(s) }) },
        hostileFile('lnk/through'),
      ],
    },
    {
      name: 'symlink-up',
      entries: () => [
        root,
        { entry: hostileEntry('up', { type: 'symlink', mode: 0o777, target: Buffer.from('..') }) },
        hostileFile('up/escaped'),
      ],
    },
    {
      name: 'hardlink-out',
      entries: () => [
        root,
        {
          entry: hostileEntry('hl', {
            type: 'hardlink',
            mode: 0,
            target: Buffer.from('../outside'),
          }),
        },
      ],
    },
  ];
}

export interface Sample {
  kind: (typeof SAMPLE_KINDS)[number];
  file: string;
  /** why it could not be made (a tool is missing) */
  skipped?: string;
}

/**
 * One small file of each kind, made with the standard tools from the same little tree
 * (`hello` = "hello\n", `sub/x`, `sub/link` -> ../hello). Kinds whose tool is missing are
 * returned with `skipped`.
 */
export async function makeSamples(dir: string): Promise<Sample[]> {
  const src = join(dir, 'src');
  mkdirSync(join(src, 'sub'), { recursive: true });
  writeFileSync(join(src, 'hello'), 'hello\n');
  writeFileSync(join(src, 'sub/x'), 'x'.repeat(1000));
  symlinkSync('../hello', join(src, 'sub/link'));
  const out: Sample[] = [];
  const made = (
    kind: Sample['kind'],
    name: string,
    cmd: string,
    args: string[],
    stdout = false,
  ) => {
    const file = join(dir, name);
    const fd = stdout ? openSync(file, 'w') : undefined;
    try {
      const r = spawnSync(cmd, args, {
        cwd: src,
        stdio: ['ignore', fd ?? 'ignore', 'pipe'],
        encoding: 'utf8',
      });
      if (r.error || r.status !== 0) {
        out.push({ kind, file, skipped: `${cmd}: ${r.error?.message ?? r.stderr.trim()}` });
      } else out.push({ kind, file });
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  };
  made('tar', 'sample-tar.bin', 'tar', ['-cf', join(dir, 'sample-tar.bin'), '.']);
  made('tar.gz', 'sample-tgz.bin', 'tar', ['-czf', join(dir, 'sample-tgz.bin'), '.']);
  made('tar.zst', 'sample-tzst.bin', 'tar', ['--zstd', '-cf', join(dir, 'sample-tzst.bin'), '.']);
  made('cpio', 'sample-cpio.bin', 'sh', ['-c', 'find . | cpio -o -H newc --quiet'], true);
  made('squashfs', 'sample-sqfs.bin', 'mksquashfs', [
    '.',
    join(dir, 'sample-sqfs.bin'),
    '-quiet',
    '-no-progress',
    '-noappend',
  ]);
  made('wim', 'sample-wim.bin', 'wimlib-imagex', [
    'capture',
    '.',
    join(dir, 'sample-wim.bin'),
    '--unix-data',
  ]);
  const random = Buffer.concat(
    Array.from({ length: 2048 }, (_, i) => createHash('sha256').update(`sample ${i}`).digest()),
  );
  writeFileSync(join(dir, 'sample-random.bin'), random);
  out.push({ kind: 'random', file: join(dir, 'sample-random.bin') });
  writeFileSync(join(dir, 'sample-empty.bin'), '');
  out.push({ kind: 'empty', file: join(dir, 'sample-empty.bin') });
  writeFileSync(join(dir, 'sample-text.bin'), 'just some text, in no image format\n'.repeat(40));
  out.push({ kind: 'text', file: join(dir, 'sample-text.bin') });
  return out;
}
