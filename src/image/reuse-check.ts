/**
 * Is a file on the disk exactly an image's file entry? Used by the apply workers before they
 * hard-link an old OS file into the new tree, and by a rollback to verify those files again.
 * Content is proven by hashing it against the entry's chunk list (nothing is trusted from
 * names, sizes or times alone); metadata must be equal too, because a hard link shares it.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { readXattrs } from './posix.js';

export interface FileIdentity {
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  xattrs: ReadonlyArray<readonly [Uint8Array, Uint8Array]>;
  chunks: Uint8Array;
  lengths: readonly number[];
}

let buf = Buffer.alloc(1 << 20);

/**
 * The file's inode (dev, ino) when `path` (not followed if a symlink) is a regular file with
 * the entry's size, mode, owner (`owner`), mtime, xattrs and content; undefined otherwise.
 * `singleLink`: also require that the file has no other name. Throws only on I/O errors
 * after the file was opened.
 */
export function matchesEntry(
  path: Buffer,
  want: FileIdentity,
  owner: readonly [uid: number, gid: number],
  singleLink: boolean,
): { dev: bigint; ino: bigint } | undefined {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
  try {
    const st = fstatSync(fd, { bigint: true });
    if (!st.isFile() || st.size !== BigInt(want.size)) return undefined;
    if (singleLink && st.nlink !== 1n) return undefined;
    if (Number(st.mode & 0o7777n) !== want.mode || st.mtimeNs !== want.mtimeNs) return undefined;
    if (st.uid !== BigInt(owner[0]) || st.gid !== BigInt(owner[1])) return undefined;
    const xa = readXattrs(path);
    if (xa.length !== want.xattrs.length) return undefined;
    for (let k = 0; k < xa.length; k++) {
      const [n, v] = want.xattrs[k]!;
      if (!xa[k]![0].equals(n) || !xa[k]![1].equals(v)) return undefined;
    }
    let pos = 0;
    for (let c = 0; c < want.lengths.length; c++) {
      const len = want.lengths[c]!;
      if (buf.length < len) buf = Buffer.alloc(len);
      let got = 0;
      while (got < len) {
        const n = readSync(fd, buf, got, len - got, pos + got);
        if (n === 0) return undefined;
        got += n;
      }
      const h = createHash('sha256').update(buf.subarray(0, len)).digest();
      if (!h.equals(want.chunks.subarray(c * 32, c * 32 + 32))) return undefined;
      pos += len;
    }
    if (pos !== want.size) return undefined;
    return { dev: st.dev, ino: st.ino };
  } finally {
    closeSync(fd);
  }
}
