import {
  appendFileSync,
  closeSync,
  fsyncSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmdirSync,
  rmSync,
} from 'node:fs';
import { dirname, join, posix } from 'node:path';
import { ReimageError } from '../errors.js';
import { failpoint } from './failpoints.js';

/**
 * Phase 2's swap of operating systems, done with renames only (docs/adr/0003-agent-and-lab.md):
 * the old OS's paths are moved aside into a rollback area, then the new OS — applied
 * beforehand into a folder on the same disk — is moved into place. Data outside the OS paths
 * (and the kept paths inside them) never moves: same files, same inode numbers. Every
 * function here is idempotent — run again after a kill between two renames, it finishes the
 * job — and never follows a symlink.
 */

export interface SwapPolicy {
  /** Absolute paths that are the OS (the package's `wipe.osPaths`). */
  osPaths: readonly string[];
  /** Absolute paths inside them that stay in place (the package's `wipe.keep`). */
  keep: readonly string[];
}

export interface SwapReport {
  /** Paths renamed (aside, or into place). */
  moved: number;
  /** Paths of the new OS that were not placed because data is there (kept data wins). */
  conflicts: string[];
}

function rel(p: string, what: string): string {
  if (!p.startsWith('/') || p.split('/').includes('..'))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${what} ${JSON.stringify(p)} must be an absolute path.`,
    );
  const n = posix.normalize(p).replace(/^\/+/, '').replace(/\/+$/, '');
  return n;
}

const inside = (p: string, dir: string) => p === dir || p.startsWith(`${dir}/`);

function normalizePolicy(policy: SwapPolicy): { osPaths: string[]; keep: string[] } {
  const osPaths = policy.osPaths.map((p) => rel(p, 'OS path'));
  if (osPaths.length === 0)
    throw new ReimageError('INVALID_ARGUMENT', 'The wipe policy names no OS paths.');
  if (osPaths.includes(''))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      'The wipe policy may not name / as an OS path: data would go with it.',
    );
  return { osPaths, keep: policy.keep.map((p) => rel(p, 'kept path')) };
}

const lst = (p: string) => {
  try {
    return lstatSync(p);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
};

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Moves the old OS's paths from `root` into `aside` (same relative paths). A path that holds
 * a kept path is not moved whole: its other children are. Idempotent.
 */
export function moveOsAside(root: string, aside: string, policy: SwapPolicy): SwapReport {
  const { osPaths, keep } = normalizePolicy(policy);
  const report: SwapReport = { moved: 0, conflicts: [] };
  const visit = (r: string) => {
    if (keep.some((k) => inside(r, k))) return; // kept whole
    const src = join(root, r);
    const st = lst(src);
    if (!st) return; // not there, or moved by an earlier run
    const holdsKept = st.isDirectory() && keep.some((k) => inside(k, r));
    if (!holdsKept) {
      const dest = join(aside, r);
      if (lst(dest))
        throw new ReimageError(
          'AGENT_STATE_INVALID',
          `Both /${r} and its rollback copy exist: the rollback area is not from this deployment.`,
        );
      mkdirSync(dirname(dest), { recursive: true, mode: 0o700 });
      failpoint('swap.aside');
      renameSync(src, dest);
      report.moved++;
      return;
    }
    mkdirSync(join(aside, r), { recursive: true, mode: 0o700 });
    for (const name of readdirSync(src)) visit(posix.join(r, name));
  };
  for (const p of osPaths) visit(p);
  fsyncDir(root);
  return report;
}

/**
 * Moves everything of `incoming` (the new OS, applied on the same disk) into `root`: an entry
 * `root` lacks is renamed in whole; where both have a folder, the two are merged entry by
 * entry; where `root` has something else (user data, a kept path), the data stays and the
 * new OS's entry is left in `incoming` and reported. Each path is written to `log` before it
 * is renamed, so a rollback knows what to take out again. Idempotent.
 */
export function moveNewOsIn(incoming: string, root: string, log: string): SwapReport {
  const report: SwapReport = { moved: 0, conflicts: [] };
  const visit = (r: string) => {
    const src = join(incoming, r);
    const st = lst(src);
    if (!st) return;
    const dest = join(root, r);
    const there = lst(dest);
    if (!there) {
      // On the disk before the rename: a rollback after a power loss knows every placed path.
      const fd = openSync(log, 'a', 0o600);
      try {
        appendFileSync(fd, `${JSON.stringify(r)}\n`);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      failpoint('swap.in');
      renameSync(src, dest);
      report.moved++;
      return;
    }
    if (st.isDirectory() && there.isDirectory()) {
      for (const name of readdirSync(src)) visit(r === '' ? name : posix.join(r, name));
      if (r !== '' && readdirSync(src).length === 0) rmdirSync(src);
      return;
    }
    report.conflicts.push(`/${r}`);
  };
  visit('');
  fsyncDir(root);
  return report;
}

/**
 * Undoes a swap: the paths the new OS placed (`log`) are moved out of `root` into `failed`
 * (kept for troubleshooting until the next deployment), then the old OS comes back from
 * `aside`. Idempotent, and safe on a swap that stopped half-way.
 */
export function undoSwap(root: string, aside: string, log: string, failed: string): SwapReport {
  const report: SwapReport = { moved: 0, conflicts: [] };
  let placed: string[] = [];
  try {
    placed = readFileSync(log, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('"') && l.endsWith('"'))
      .map((l) => JSON.parse(l) as string);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  // Until the marker is written, nothing of the old OS is back, so whatever is at a placed
  // path is the new OS's. Deepest first, so a path placed inside a merged folder goes first.
  const outDone = `${log}.undone`;
  for (const r of lst(outDone) ? [] : [...new Set(placed)].sort((a, b) => b.length - a.length)) {
    const src = join(root, r);
    if (!lst(src)) continue;
    const dest = join(failed, r);
    if (lst(dest)) rmSync(dest, { recursive: true, force: true });
    mkdirSync(dirname(dest), { recursive: true, mode: 0o700 });
    failpoint('undo.out');
    renameSync(src, dest);
    report.moved++;
  }
  if (!lst(outDone)) closeSync(openSync(outDone, 'w', 0o600));
  const back = (r: string) => {
    const src = join(aside, r);
    const st = lst(src);
    if (!st) return;
    const dest = join(root, r);
    const there = lst(dest);
    if (!there) {
      mkdirSync(dirname(dest), { recursive: true });
      renameSync(src, dest);
      report.moved++;
      return;
    }
    if (st.isDirectory() && there.isDirectory()) {
      for (const name of readdirSync(src)) back(r === '' ? name : posix.join(r, name));
      return;
    }
    report.conflicts.push(`/${r}`);
  };
  back('');
  fsyncDir(root);
  return report;
}
