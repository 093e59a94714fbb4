import {
  closeSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ContentStore } from './store.js';

/**
 * Where a replication writes: a distribution point seen as a handful of file operations on
 * store-relative paths (`/` separators). Implementations: a folder (here), WebDAV
 * (dav-writer.ts) and SMB through smbclient (smb-writer.ts). The replication only ever
 * writes under `tmp/` and then renames into place, so a reader never sees half a file.
 */
export interface DpWriter {
  readonly name: string;
  /**
   * Whether `put` can continue a partial file from its length. When it cannot (WebDAV), an
   * interrupted file is sent again whole.
   */
  readonly appends: boolean;
  /** Makes the DP a content store if it is not one yet; returns how to let go of it. */
  open(): Promise<() => Promise<void>>;
  /** Size of a file, or -1 when it does not exist. */
  stat(path: string): Promise<number>;
  /** A whole (small) file. */
  read(path: string): Promise<Buffer>;
  /** Writes `length` bytes from `chunks` at offset `at` (0 unless `appends`), creating folders. */
  put(path: string, at: number, length: number, chunks: AsyncIterable<Buffer>): Promise<void>;
  /** Moves a file, replacing the target, creating its folder. */
  rename(from: string, to: string): Promise<void>;
  /** Removes a file; no error when it is missing. */
  remove(path: string): Promise<void>;
}

/** A DP that is a local or mounted folder, given as a path or a `file://` URL. */
export function folderWriter(dir: string): DpWriter {
  const root = resolve(dir.startsWith('file:') ? fileURLToPath(dir) : dir);
  const abs = (p: string) => join(root, p);
  return {
    name: `file://${root}`,
    appends: true,
    async open() {
      const store = ContentStore.open(root, { create: true });
      // gc of the DP waits while we copy.
      const lock = await store.lock('shared', 'replicate to here');
      return async () => lock.release();
    },
    async stat(p) {
      try {
        return statSync(abs(p)).size;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return -1;
        throw e;
      }
    },
    async read(p) {
      return readFileSync(abs(p));
    },
    async put(p, at, length, chunks) {
      mkdirSync(dirname(abs(p)), { recursive: true });
      const fd = openSync(abs(p), at > 0 ? 'r+' : 'w');
      try {
        let pos = at;
        for await (const c of chunks) {
          let off = 0;
          while (off < c.length) off += writeSync(fd, c, off, c.length - off, pos + off);
          pos += c.length;
        }
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    },
    async rename(from, to) {
      mkdirSync(dirname(abs(to)), { recursive: true });
      renameSync(abs(from), abs(to));
      const dfd = openSync(dirname(abs(to)), 'r');
      try {
        fsyncSync(dfd);
      } finally {
        closeSync(dfd);
      }
    },
    async remove(p) {
      rmSync(abs(p), { force: true });
    },
  };
}
