/**
 * The tree model every image format speaks: one entry per path, with every attribute an
 * operating-system tree needs laid out exactly. Paths are raw bytes (real trees have
 * non-UTF-8 names), relative to the image root, components separated by '/'; the root
 * itself is the entry with the empty path.
 */
export type EntryType = 'dir' | 'file' | 'symlink' | 'hardlink' | 'fifo' | 'char' | 'block';

export interface Entry {
  path: Buffer;
  type: EntryType;
  /** Permission bits including setuid, setgid and sticky (07777). Unused for hard links. */
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  /** Logical size of a regular file; 0 otherwise. */
  size: number;
  /** Symlink target, or for a hard link the path of the file entry it shares. */
  target?: Buffer;
  major?: number;
  minor?: number;
  /** Sorted by name; values are raw bytes. */
  xattrs: Array<[Buffer, Buffer]>;
  /** Data regions of a sparse file (offset, length); absent means the whole file is data. */
  segments?: Array<[number, number]>;
  /** Chunk hashes, 32 bytes each, covering the data regions in order. */
  chunks?: Buffer;
  /** Length of each chunk. */
  lengths?: number[];
}

export interface Manifest {
  entries: Entry[];
}

const SLASH = 0x2f;

/**
 * Component order: compares path by path component, so a directory's whole subtree comes
 * right after it and before its next sibling (equivalently: bytewise with '/' lowest).
 */
export function comparePaths(a: Uint8Array, b: Uint8Array): number {
  const n = a.length < b.length ? a.length : b.length;
  for (let i = 0; i < n; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (x !== y) {
      if (x === SLASH) return -1;
      if (y === SLASH) return 1;
      return x - y;
    }
  }
  return a.length - b.length;
}

export function parentOf(path: Buffer): Buffer {
  const i = path.lastIndexOf(SLASH);
  return i < 0 ? Buffer.alloc(0) : path.subarray(0, i);
}

export function joinPath(parent: Buffer, name: Buffer): Buffer {
  if (parent.length === 0) return Buffer.from(name);
  const out = Buffer.allocUnsafe(parent.length + 1 + name.length);
  parent.copy(out, 0);
  out[parent.length] = SLASH;
  name.copy(out, parent.length + 1);
  return out;
}

/** A printable form of a raw path: UTF-8 where valid, with invalid bytes as \xNN. */
export function showPath(path: Uint8Array): string {
  const b = Buffer.from(path.buffer, path.byteOffset, path.length);
  const s = b.toString('utf8');
  if (!s.includes('\ufffd') && Buffer.byteLength(s) === b.length) return s.length ? s : '/';
  let out = '';
  for (const byte of b) {
    out +=
      byte >= 0x20 && byte < 0x7f && byte !== 0x5c
        ? String.fromCharCode(byte)
        : `\\x${byte.toString(16).padStart(2, '0')}`;
  }
  return out;
}

/** Bytes of file data an entry holds (the sum of its data regions). */
export function dataLength(e: Entry): number {
  if (e.type !== 'file') return 0;
  if (!e.segments) return e.size;
  let n = 0;
  for (const [, len] of e.segments) n += len;
  return n;
}

export function chunkCount(e: Entry): number {
  return e.chunks ? e.chunks.length / 32 : 0;
}

/** A hard-link entry: another name for `target`, an earlier file entry; it has no attributes of its own. */
export function hardlinkEntry(path: Buffer, target: Buffer): Entry {
  return {
    path,
    type: 'hardlink',
    mode: 0,
    uid: 0,
    gid: 0,
    mtimeNs: 0n,
    size: 0,
    xattrs: [],
    target,
  };
}
