import { lstatSync, readdirSync, rmSync } from 'node:fs';
import { join, posix } from 'node:path';
import { ReimageError } from '../errors.js';

export interface WipePolicy {
  /** Absolute paths (as the machine sees them) that are the OS: deleted. */
  osPaths: readonly string[];
  /** Absolute paths inside osPaths that survive (the agent's journal, a local state store). */
  keep: readonly string[];
}

export interface WipeReport {
  /** Entries removed, counted as top-level paths removed whole plus files removed around kept paths. */
  removed: number;
  kept: string[];
}

function normalize(p: string, what: string): string {
  const n = posix.normalize(p);
  if (!p.startsWith('/') || p.split('/').includes('..'))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${what} ${JSON.stringify(p)} must be an absolute path.`,
    );
  return n === '/' ? '/' : n.replace(/\/+$/, '');
}

const inside = (p: string, dir: string) => p === dir || p.startsWith(dir === '/' ? '/' : `${dir}/`);

/**
 * Deletes the old operating system from a machine's root folder while keeping its data:
 * everything under `osPaths` goes, except the `keep` paths (and the folders leading to them);
 * everything outside `osPaths` (/home, /srv, …) is not touched. Symlinks are removed as links,
 * never followed, so a link cannot make the wipe reach outside what the policy names.
 * Idempotent: a wipe interrupted and run again finishes the job.
 */
export function wipeOs(root: string, policy: WipePolicy): WipeReport {
  if (policy.osPaths.length === 0)
    throw new ReimageError('INVALID_ARGUMENT', 'The wipe policy names no OS paths.');
  const osPaths = policy.osPaths.map((p) => normalize(p, 'OS path'));
  if (osPaths.includes('/'))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      'The wipe policy may not name / as an OS path: data would go with it.',
    );
  const keep = policy.keep.map((p) => normalize(p, 'kept path'));
  let removed = 0;
  const remove = (abs: string) => {
    rmSync(abs, { recursive: true, force: true });
    removed++;
  };
  // Walks `rel` (inside an OS path): removes what holds no kept path, descends into what does.
  const clear = (rel: string) => {
    if (keep.some((k) => inside(rel, k))) return; // kept whole
    const abs = join(root, rel);
    let st;
    try {
      st = lstatSync(abs);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw e;
    }
    const holdsKept = st.isDirectory() && keep.some((k) => inside(k, rel));
    if (!holdsKept) return remove(abs);
    for (const name of readdirSync(abs)) clear(posix.join(rel, name));
  };
  for (const p of osPaths) clear(p);
  return { removed, kept: keep };
}
