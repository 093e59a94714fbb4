import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  appendFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { keptPaths } from '../../src/agent/deploy.js';
import { Outbox } from '../../src/agent/outbox.js';
import { ContentStore } from '../../src/content/store.js';
import { captureImage } from '../../src/image/capture.js';
import { defaults } from '../../src/package/schema.js';
import type { DeployFixture } from './deploy.js';
export { bootUntilDone } from './deploy.js';
import { independentListing } from './listing.js';

/**
 * A new OS made from a lab machine's own OS (what an upgrade looks like: most files the same,
 * with the same metadata, some changed, some new, some gone), captured into a DP with a PE.
 * For the tests and the benchmark of file reuse in phase 2.
 */

const osTop = defaults.osPaths.map((p) => p.slice(1));

/** Copies the OS paths of `disk` to `to` (cp -a: contents, modes, owners, times, xattrs). */
export function copyOs(disk: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const top of osTop) {
    if (!existsSync(join(disk, top))) continue;
    const r = spawnSync('cp', ['-a', join(disk, top), join(to, top)]);
    if (r.status !== 0) throw new Error(`cp -a ${top}: ${r.stderr.toString()}`);
  }
  rmSync(join(to, 'var/lib/reimage'), { recursive: true, force: true });
}

export interface Upgrade {
  /** Regular files (relative paths) whose content changed. */
  changed: string[];
  /** Regular files added. */
  added: string[];
  /** Regular files removed. */
  removed: string[];
}

/**
 * Turns a copy of an OS into its "next version": os-release says 13, the agent bundle is
 * new, every 7th regular file of /usr changes content, every 11th is removed, and a few
 * files are added. Deterministic.
 */
export function upgradeOs(tree: string, bundle: string): Upgrade {
  const u: Upgrade = { changed: [], added: [], removed: [] };
  const files = (readdirSync(join(tree, 'usr'), { recursive: true, withFileTypes: true }) ?? [])
    .filter((d) => d.isFile())
    .map((d) => join(d.parentPath, d.name).slice(tree.length + 1))
    .sort();
  files.forEach((f, k) => {
    const p = join(tree, f);
    if (k % 11 === 3) {
      rmSync(p);
      u.removed.push(f);
    } else if (k % 7 === 2) {
      appendFileSync(p, `\n# changed in version 13 (${k})\n`);
      u.changed.push(f);
    }
  });
  const osr = join(tree, 'etc/os-release');
  writeFileSync(
    osr,
    readFileSync(osr, 'utf8').replace(/VERSION_ID="?\d+"?/, 'VERSION_ID="13"') ||
      'ID=debian\nVERSION_ID="13"\n',
  );
  u.changed.push('etc/os-release');
  mkdirSync(join(tree, 'usr/lib/reimage'), { recursive: true });
  writeFileSync(join(tree, 'usr/lib/reimage/agent.bundle'), bundle);
  u.added.push('usr/lib/reimage/agent.bundle');
  for (let k = 0; k < 5; k++) {
    mkdirSync(join(tree, 'usr/share/new13'), { recursive: true });
    writeFileSync(join(tree, `usr/share/new13/file${k}`), `new in 13: ${k}\n`.repeat(100 * k + 1));
    u.added.push(`usr/share/new13/file${k}`);
  }
  return u;
}

/** Captures `tree` as the new OS and a one-file PE into a DP folder. */
export async function captureUpgrade(
  base: string,
  tree: string,
  peBundle: string,
): Promise<DeployFixture> {
  const dp = join(base, 'dp');
  const store = ContentStore.open(dp, { create: true });
  const img = await captureImage({
    source: tree,
    store,
    name: 'debian-13',
    properties: { os: 'debian', version: '13', arch: 'x86_64' },
  });
  const pe = join(base, 'pe-tree');
  mkdirSync(pe, { recursive: true });
  writeFileSync(join(pe, 'agent.bundle'), peBundle);
  const peImg = await captureImage({ source: pe, store, name: 'reimage-pe' });
  return { dp, imageId: img.record.id, peId: peImg.record.id, newOs: tree };
}

/**
 * Regular files of `tree` (non-empty) that an apply may reuse from `old`: the same path, a
 * single name there, the same bytes, mode, owner and mtime. Computed here with lstat and
 * sha256 of both, independently of the code under test.
 */
export function reusableFiles(tree: string, old: string): string[] {
  const out: string[] = [];
  const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');
  for (const d of readdirSync(tree, { recursive: true, withFileTypes: true })) {
    if (!d.isFile()) continue;
    const rel = join(d.parentPath, d.name).slice(tree.length + 1);
    const a = lstatSync(join(tree, rel), { bigint: true });
    if (a.size === 0n || a.nlink !== 1n) continue;
    let b;
    try {
      b = lstatSync(join(old, rel), { bigint: true });
    } catch {
      continue;
    }
    if (!b.isFile() || b.nlink !== 1n || b.size !== a.size || b.mtimeNs !== a.mtimeNs) continue;
    if (b.mode !== a.mode || b.uid !== a.uid || b.gid !== a.gid) continue;
    if (sha(join(tree, rel)) !== sha(join(old, rel))) continue;
    out.push(rel);
  }
  return out.sort();
}

/**
 * The independent listing of a machine's OS paths (the kept state store left out, and the
 * times of /var and /var/lib: phase 1 creates the state store in /var/lib, and the swap enters
 * the folders that hold a kept path — their times are not the old OS's content).
 */
export function osListing(root: string): string[] {
  return independentListing(root, {
    ignoreRoot: true,
    ignoreSockets: true,
    exclude: (rel) => {
      const r = rel.toString();
      const top = r.split('/')[0]!;
      return !osTop.includes(top) || r === 'var/lib/reimage' || r.startsWith('var/lib/reimage/');
    },
  }).map((l) => (/^"var(\/lib)?" type=d /.test(l) ? l.replace(/ mtime=\S+/, '') : l));
}

/** The status messages in a machine's outbox. */
export function outboxMessages(root: string) {
  const outbox = new Outbox(keptPaths(root).outbox);
  try {
    return outbox.all();
  } finally {
    outbox.close();
  }
}
