/**
 * The lab's own record of a machine's user data: every regular file and symbolic link of the
 * disk outside the OS paths (/home and everything else that is not the OS: /srv, /data, /mnt,
 * ...), minus the agent's kept area (/.reimage). Taken before a deployment and again after it,
 * the comparison says whether the user data came through — computed by the lab, never taken
 * from the agent's report.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

/** One entry: content hash (a link: hash of its target), size, inode number. */
export interface UserDataEntry {
  type: 'file' | 'symlink';
  sha256: string;
  size: number;
  ino: number;
}

/** Disk-relative path ("home/alice/Documents/a.odt") → entry, sorted by path. */
export type UserDataSnapshot = Record<string, UserDataEntry>;

export interface UserDataComparison {
  /** Every entry of `before` is there with the same type and bytes. */
  intact: boolean;
  files: number;
  bytes: number;
  missing: string[];
  changed: string[];
  /** Same bytes, but not the same inode: copied out and back rather than left in place. */
  moved: string[];
  /** New entries (not a loss; reported). */
  added: string[];
}

/** The paths never counted as user data, besides the OS paths. */
export const LAB_EXCLUDED = ['/.reimage'];

/**
 * Hashes the user data of a disk. `osPaths` are absolute paths of the machine ("/usr", "/etc",
 * possibly deeper ones such as "/opt/vendor"): they and everything below are skipped.
 */
export function hashUserData(disk: string, osPaths: readonly string[]): UserDataSnapshot {
  const skip = new Set([...osPaths, ...LAB_EXCLUDED].map((p) => p.replace(/\/+$/, '')));
  const out: UserDataSnapshot = {};
  const walk = (rel: string) => {
    const abs = path.join(disk, rel);
    for (const d of fs.readdirSync(abs, { withFileTypes: true })) {
      const r = rel === '' ? d.name : `${rel}/${d.name}`;
      if (skip.has(`/${r}`)) continue;
      const full = path.join(abs, d.name);
      if (d.isDirectory()) walk(r);
      else if (d.isSymbolicLink()) {
        const target = fs.readlinkSync(full);
        out[r] = {
          type: 'symlink',
          sha256: createHash('sha256').update(target).digest('hex'),
          size: Buffer.byteLength(target),
          ino: fs.lstatSync(full).ino,
        };
      } else if (d.isFile()) {
        const st = fs.statSync(full);
        out[r] = { type: 'file', sha256: hashFile(full), size: st.size, ino: st.ino };
      }
    }
  };
  walk('');
  return Object.fromEntries(Object.entries(out).sort(([a], [b]) => (a < b ? -1 : 1)));
}

function hashFile(file: string): string {
  const h = createHash('sha256');
  const fd = fs.openSync(file, 'r');
  try {
    const buf = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      h.update(buf.subarray(0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** Compares a snapshot taken after with the one taken before. */
export function compareUserData(
  before: UserDataSnapshot,
  after: UserDataSnapshot,
): UserDataComparison {
  const missing: string[] = [];
  const changed: string[] = [];
  const moved: string[] = [];
  let bytes = 0;
  for (const [p, b] of Object.entries(before)) {
    bytes += b.size;
    const a = after[p];
    if (!a) missing.push(p);
    else if (a.type !== b.type || a.sha256 !== b.sha256) changed.push(p);
    else if (a.ino !== b.ino) moved.push(p);
  }
  const added = Object.keys(after).filter((p) => !(p in before));
  return {
    intact: missing.length === 0 && changed.length === 0,
    files: Object.keys(before).length,
    bytes,
    missing,
    changed,
    moved,
    added,
  };
}
