import {
  closeSync,
  constants,
  ftruncateSync,
  linkSync,
  lstatSync,
  mkdirSync,
  openSync,
  readSync,
  symlinkSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { Decompressor } from 'zstd-napi';
import { ReimageError } from '../errors.js';
import { hashKey } from '../content/digest.js';
import { StreamChunker } from '../content/chunker.js';
import { FrameBuilder, decompressBounded, MAX_FRAME_RAW } from '../content/pack.js';
import { PackReader, writeAll, type ContentStore } from '../content/store.js';
import { checkPath } from './formats/native/v1/manifest-codec.js';
import {
  comparePaths,
  dataLength,
  hardlinkEntry,
  joinPath,
  parentOf,
  showPath,
  type Entry,
} from './manifest.js';
import { ImageLibrary, checkImageName, type ImageProperties, type ImageRecord } from './library.js';
import { recordImage } from './record.js';
import { abs, prepareTarget, setMeta, undoTarget } from './apply.js';
import { majorMinor, mknod, readXattrs, scanDir, ST, STAT_FIELDS } from './posix.js';
import type { Warning } from './progress.js';
import type { TreeEntry } from './formats/api.js';

/**
 * Bridges between tree-entry streams (what format plugins speak) and the library: import a
 * stream as a native image, read a native image as a stream, and lay a stream out safely in a
 * directory.
 */

const DOT_SLASH = Buffer.from('./');

/** Archive paths often start with "./" or end with "/"; the image path does neither. */
export function normalizeArchivePath(p: Buffer): Buffer {
  let s = p;
  while (s.length >= 2 && s.subarray(0, 2).equals(DOT_SLASH)) s = s.subarray(2);
  while (s.length > 0 && s[s.length - 1] === 0x2f) s = s.subarray(0, s.length - 1);
  if (s.length === 1 && s[0] === 0x2e) s = s.subarray(0, 0);
  return s;
}

function refuse(path: Buffer, why: string): never {
  throw new ReimageError(
    'MANIFEST_INVALID',
    `entry ${JSON.stringify(showPath(path))} is refused: ${why}`,
    {
      details: { path: showPath(path) },
    },
  );
}

async function consume(
  e: Entry,
  data: TreeEntry['data'],
  onBytes: (b: Uint8Array) => void,
): Promise<void> {
  const want = dataLength(e);
  let got = 0;
  if (data) {
    for await (const piece of data()) {
      got += piece.length;
      if (got > want) refuse(e.path, `it holds more data than its size (${want} bytes) says`);
      onBytes(piece);
    }
  }
  if (got !== want) refuse(e.path, `it holds ${got} bytes of data but its size says ${want}`);
}

export interface ImportOptions {
  store: ContentStore;
  name: string;
  entries: AsyncIterable<TreeEntry>;
  properties: () => ImageProperties;
  imageFormat?: ImageRecord['imageFormat'];
  opaqueFormat?: string;
  signal?: AbortSignal;
  onWarning?: (w: Warning) => void;
}

/**
 * Turns a stream of entries (any order) into a native image: chunks, deduplication and
 * validation as for a capture. Missing parent directories are added (archives often omit
 * them); a hostile stream (absolute or `..` paths, entries below a symlink, hard links out of
 * the tree, sizes that lie, duplicates) is refused and nothing is recorded.
 */
export async function importTree(
  opts: ImportOptions,
): Promise<{ record: ImageRecord; created: boolean }> {
  checkImageName(opts.name);
  const { store } = opts;
  const lib = new ImageLibrary(store);
  const lock = await store.lock('shared', `import ${opts.name}`);
  let session: ReturnType<ContentStore['beginSession']> | undefined;
  try {
    const known = store.loadIndex();
    session = store.beginSession(known);
    const s = session;
    const pending = new Set<string>();
    const frames = new FrameBuilder((f) => {
      s.addFrame(f);
      pending.clear();
    });
    const byPath = new Map<string, Entry>();
    for await (const te of opts.entries) {
      if (opts.signal?.aborted)
        throw new ReimageError('CANCELLED', 'import cancelled; nothing was recorded');
      const e: Entry = {
        ...te.entry,
        path: normalizeArchivePath(te.entry.path),
        xattrs: [...te.entry.xattrs],
      };
      e.xattrs.sort((a, b) => Buffer.compare(a[0], b[0]));
      if (e.target && e.type === 'hardlink') e.target = normalizeArchivePath(e.target);
      const problem = checkPath(e.path, e.path.length === 0, 'its path');
      if (problem) refuse(te.entry.path, problem);
      const key = e.path.toString('latin1');
      if (byPath.has(key)) refuse(e.path, 'the archive holds this path twice');
      if (e.type === 'hardlink') {
        // As in tar: a hard link names a file that came before it in the archive.
        const t = byPath.get(e.target!.toString('latin1'));
        if (!t || (t.type !== 'file' && t.type !== 'hardlink')) {
          refuse(e.path, 'hard link to a path that is not a regular file earlier in the archive');
        }
      }
      if (e.type === 'file') {
        const hashes: Buffer[] = [];
        const lengths: number[] = [];
        const chunker = new StreamChunker((chunk) => {
          const h = createHash('sha256').update(chunk).digest();
          hashes.push(h);
          lengths.push(chunk.length);
          const k = hashKey(h);
          if (s.has(h) || pending.has(k)) return;
          pending.add(k);
          frames.add(h, chunk);
        });
        // Each data region is chunked on its own, so that no chunk crosses a hole.
        const regions = e.segments ? e.segments.map(([, len]) => len) : [dataLength(e)];
        let r = 0;
        let left = regions[0] ?? 0;
        await consume(e, te.data, (b) => {
          let off = 0;
          while (off < b.length) {
            while (left === 0 && r + 1 < regions.length) {
              chunker.end();
              left = regions[++r]!;
            }
            const n = Math.min(b.length - off, left);
            chunker.push(b.subarray(off, off + n));
            off += n;
            left -= n;
          }
        });
        chunker.end();
        e.chunks = Buffer.concat(hashes);
        e.lengths = lengths;
      }
      byPath.set(key, e);
    }
    frames.flush();
    const entries = completeTree(byPath);
    lock.check();
    const { record, created } = await recordImage({
      lib,
      session: s,
      known,
      entries,
      properties: opts.properties,
      imageFormat: opts.imageFormat,
      ...(opts.opaqueFormat ? { opaqueFormat: opts.opaqueFormat } : {}),
    });
    lib.setName(opts.name, record.id);
    return { record, created };
  } catch (e) {
    await session?.abort();
    throw e;
  } finally {
    lock.release();
  }
}

/**
 * Adds missing parents (and the root), sorts into manifest order, and makes the first path
 * of each hard-link group (in manifest order) the one that holds the content.
 */
function completeTree(byPath: Map<string, Entry>): Entry[] {
  const dir = (path: Buffer): Entry => ({
    path,
    type: 'dir',
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtimeNs: 0n,
    size: 0,
    xattrs: [],
  });
  for (const e of [...byPath.values()]) {
    let p = e.path;
    while (p.length > 0) {
      p = parentOf(p);
      const k = p.toString('latin1');
      if (byPath.has(k)) break;
      byPath.set(k, dir(p));
    }
  }
  if (!byPath.has('')) byPath.set('', dir(Buffer.alloc(0)));
  const entries = [...byPath.values()].sort((a, b) => comparePaths(a.path, b.path));
  // Hard links: archives point later names at an earlier one in *archive* order.
  const groups = new Map<string, Entry[]>();
  for (const e of entries) {
    if (e.type !== 'hardlink') continue;
    let t = byPath.get(e.target!.toString('latin1'));
    for (let hops = 0; t?.type === 'hardlink' && hops < 64; hops++)
      t = byPath.get(t.target!.toString('latin1'));
    if (!t || t.type !== 'file')
      refuse(e.path, 'hard link to a path that is not a regular file of the archive');
    const k = t.path.toString('latin1');
    if (!groups.has(k)) groups.set(k, [t]);
    groups.get(k)!.push(e);
  }
  for (const members of groups.values()) {
    const content = members.find((m) => m.type === 'file')!;
    const first = members.reduce((a, b) => (comparePaths(a.path, b.path) <= 0 ? a : b));
    if (first === content) {
      for (const m of members) if (m !== content) m.target = content.path;
      continue;
    }
    // The earliest name takes the content and attributes; the others link to it.
    const { path } = first;
    Object.assign(first, { ...content, path });
    delete first.target;
    Object.assign(content, hardlinkEntry(content.path, path));
    delete content.chunks;
    delete content.lengths;
    delete content.segments;
    for (const m of members) if (m !== first) m.target = path;
  }
  return entries;
}

/** Reads a native image as a stream of entries (manifest order), every chunk verified. */
export async function* treeFromImage(store: ContentStore, ref: string): AsyncGenerator<TreeEntry> {
  const lib = new ImageLibrary(store);
  const rec = lib.resolve(ref);
  const { manifest } = lib.loadManifest(rec.id);
  const index = store.loadIndex(rec.packs);
  const reader = new PackReader(index.packPaths);
  const dz = new Decompressor();
  let cached: { key: string; raw: Buffer } | undefined;
  try {
    for (const e of manifest.entries) {
      if (e.type !== 'file') {
        yield { entry: e };
        continue;
      }
      const data = async function* (): AsyncGenerator<Uint8Array> {
        for (let c = 0; c < e.lengths!.length; c++) {
          const hash = e.chunks!.subarray(c * 32, c * 32 + 32);
          const loc = index.get(hash);
          if (!loc) {
            throw new ReimageError(
              'CHUNK_MISSING',
              `chunk ${hash.toString('hex')} of ${showPath(e.path)} is not in the store`,
            );
          }
          const key = `${loc.pack}:${loc.frameOffset}`;
          if (cached?.key !== key)
            cached = {
              key,
              raw: decompressBounded(
                dz,
                reader.readFrame(loc.pack, loc.frameOffset, loc.frameLength),
                MAX_FRAME_RAW,
                `frame at ${loc.frameOffset}`,
              ),
            };
          const bytes = cached.raw.subarray(loc.offset, loc.offset + e.lengths![c]!);
          if (!createHash('sha256').update(bytes).digest().equals(hash)) {
            throw new ReimageError(
              'CHUNK_CORRUPT',
              `chunk ${hash.toString('hex')} of ${showPath(e.path)} is corrupt`,
            );
          }
          yield bytes;
        }
      };
      yield { entry: e, data };
    }
  } finally {
    reader.close();
  }
}

export interface ApplyTreeOptions {
  /** set owners (default: when root) */
  owners?: boolean;
  /** create device nodes (default: no; archives from elsewhere should not make devices) */
  devices?: boolean;
  onWarning?: (w: Warning) => void;
}

/**
 * Lays a stream of entries (any order, as in an archive) out in a new or empty directory,
 * never writing outside it: paths are checked one by one, parents are created by us or must
 * be directories we created, nothing is written below a symlink, files are created with
 * O_EXCL|O_NOFOLLOW, hard links may only point at files written before, devices only when
 * allowed, and every file's data must match its size. On any failure, what was written is
 * removed.
 */
export async function applyTree(
  entries: AsyncIterable<TreeEntry>,
  target: string,
  opts: ApplyTreeOptions = {},
): Promise<{ entries: number; bytes: number }> {
  const owners = opts.owners ?? process.getuid?.() === 0;
  const warn = opts.onWarning ?? (() => {});
  const root = resolve(target);
  const created = prepareTarget(root);
  const kinds = new Map<string, Entry['type']>([['', 'dir']]);
  const dirs = new Map<string, Entry>();
  let count = 0;
  let bytes = 0;
  const ensureParents = (path: Buffer) => {
    const chain: Buffer[] = [];
    for (let p = parentOf(path); ; p = parentOf(p)) {
      const k = kinds.get(p.toString('latin1'));
      if (k === 'dir') break;
      if (k !== undefined) refuse(path, `it lies below a ${k}, not a directory`);
      chain.push(p);
      if (p.length === 0) break;
    }
    for (const p of chain.reverse()) {
      mkdirSync(abs(root, p), { mode: 0o700 });
      kinds.set(p.toString('latin1'), 'dir');
    }
  };
  try {
    for await (const te of entries) {
      const e: Entry = { ...te.entry, path: normalizeArchivePath(te.entry.path) };
      const problem = checkPath(e.path, e.path.length === 0, 'its path');
      if (problem) refuse(te.entry.path, problem);
      const key = e.path.toString('latin1');
      count++;
      if (e.path.length === 0) {
        if (e.type !== 'dir') refuse(e.path, 'the root must be a directory');
        dirs.set(key, e);
        continue;
      }
      ensureParents(e.path);
      const existing = kinds.get(key);
      if (existing !== undefined && !(existing === 'dir' && e.type === 'dir' && !dirs.has(key))) {
        refuse(e.path, 'the archive holds this path twice');
      }
      const path = abs(root, e.path);
      switch (e.type) {
        case 'dir':
          if (existing === undefined) mkdirSync(path, { mode: 0o700 });
          kinds.set(key, 'dir');
          dirs.set(key, e);
          break;
        case 'file': {
          const fd = openSync(
            path,
            constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
            0o600,
          );
          kinds.set(key, 'file');
          try {
            const regions = e.segments ?? [[0, e.size]];
            let r = 0;
            let pos = regions[0]?.[0] ?? 0;
            let end = pos + (regions[0]?.[1] ?? 0);
            await consume(e, te.data, (piece) => {
              let off = 0;
              while (off < piece.length) {
                while (pos >= end && r + 1 < regions.length) {
                  r++;
                  pos = regions[r]![0];
                  end = pos + regions[r]![1];
                }
                const n = Math.min(piece.length - off, end - pos);
                writeAll(fd, piece.subarray(off, off + n), pos);
                pos += n;
                off += n;
              }
            });
            if (e.segments) ftruncateSync(fd, e.size);
          } finally {
            closeSync(fd);
          }
          bytes += e.size;
          setMeta(path, e, owners, warn, true);
          break;
        }
        case 'hardlink': {
          const t = normalizeArchivePath(e.target!);
          if (checkPath(t, false, 'x') || kinds.get(t.toString('latin1')) !== 'file') {
            refuse(e.path, 'hard link to a path that is not a regular file written before it');
          }
          linkSync(abs(root, t), path);
          kinds.set(key, 'hardlink');
          break;
        }
        case 'symlink':
          symlinkSync(e.target!, path);
          kinds.set(key, 'symlink');
          setMeta(path, e, owners, warn, false);
          break;
        case 'fifo':
          mknod(path, 'fifo', e.mode & 0o777);
          kinds.set(key, 'fifo');
          setMeta(path, e, owners, warn, true);
          break;
        case 'char':
        case 'block':
          if (!opts.devices)
            refuse(
              e.path,
              'device nodes are not allowed here (pass --allow-devices to create them)',
            );
          mknod(path, e.type, e.mode & 0o777, e.major, e.minor);
          kinds.set(key, e.type);
          setMeta(path, e, owners, warn, true);
          break;
      }
    }
    // Directories last, deepest first (their times change as entries are added).
    const ordered = [...dirs.values()].sort((a, b) => comparePaths(b.path, a.path));
    for (const d of ordered) setMeta(abs(root, d.path), d, owners, warn, true);
    return { entries: count, bytes };
  } catch (err) {
    undoTarget(root, created);
    throw err;
  }
}

/** Reads a directory (as written by an external tool) as a stream of entries, in manifest order. */
export async function* treeFromDirectory(dir: string): AsyncGenerator<TreeEntry> {
  const rootPath = Buffer.from(resolve(dir));
  const rootSt = lstatSync(rootPath, { bigint: true });
  yield {
    entry: {
      path: Buffer.alloc(0),
      type: 'dir',
      mode: Number(rootSt.mode & 0o7777n),
      uid: Number(rootSt.uid),
      gid: Number(rootSt.gid),
      mtimeNs: rootSt.mtimeNs,
      size: 0,
      xattrs: readXattrs(rootPath),
    },
  };
  const links = new Map<string, Buffer>();
  const stack: Array<{
    rel: Buffer;
    names: Buffer[];
    scan: ReturnType<typeof scanDir>;
    next: number;
  }> = [];
  const push = (rel: Buffer) => {
    const scan = scanDir(rel.length ? Buffer.concat([rootPath, Buffer.from('/'), rel]) : rootPath);
    stack.push({ rel, names: scan.names, scan, next: 0 });
  };
  push(Buffer.alloc(0));
  while (stack.length) {
    const top = stack[stack.length - 1]!;
    if (top.next >= top.names.length) {
      stack.pop();
      continue;
    }
    const i = top.next++;
    const rel = joinPath(top.rel, top.names[i]!);
    const b = i * STAT_FIELDS;
    const st = top.scan.stats;
    const mode = st[b + ST.mode]!;
    const fmt = mode & 0o170000n;
    const e: Entry = {
      path: rel,
      type: 'file',
      mode: Number(mode & 0o7777n),
      uid: Number(st[b + ST.uid]!),
      gid: Number(st[b + ST.gid]!),
      mtimeNs: st[b + ST.mtimeNs]!,
      size: 0,
      xattrs: top.scan.xattrs[i] ?? [],
    };
    const full = Buffer.concat([rootPath, Buffer.from('/'), rel]);
    if (fmt === 0o100000n) {
      if (st[b + ST.nlink]! > 1n) {
        const k = `${st[b + ST.dev]}:${st[b + ST.ino]}`;
        const first = links.get(k);
        if (first) {
          yield { entry: hardlinkEntry(rel, first) };
          continue;
        }
        links.set(k, rel);
      }
      e.size = Number(st[b + ST.size]!);
      const size = e.size;
      yield {
        entry: e,
        data: async function* () {
          const fd = openSync(full, constants.O_RDONLY | constants.O_NOFOLLOW);
          try {
            const buf = Buffer.allocUnsafe(1 << 20);
            let off = 0;
            while (off < size) {
              const n = readSync(fd, buf, 0, Math.min(buf.length, size - off), off);
              if (n === 0) break;
              off += n;
              yield Buffer.from(buf.subarray(0, n));
            }
          } finally {
            closeSync(fd);
          }
        },
      };
      continue;
    }
    if (fmt === 0o040000n) {
      e.type = 'dir';
      yield { entry: e };
      push(rel);
      continue;
    }
    if (fmt === 0o120000n) {
      e.type = 'symlink';
      e.target = top.scan.targets[i]!;
    } else if (fmt === 0o010000n) e.type = 'fifo';
    else if (fmt === 0o020000n || fmt === 0o060000n) {
      e.type = fmt === 0o020000n ? 'char' : 'block';
      [e.major, e.minor] = majorMinor(st[b + ST.rdev]!);
    } else continue; // sockets
    yield { entry: e };
  }
}
