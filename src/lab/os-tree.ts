/**
 * The lab's own check that a machine runs the image it installed: the machine's whole disk
 * tree against the image's tree (the model the image was captured from), both ways — paths of
 * the image missing on the disk, paths on the disk the image does not have, content that
 * differs — computed from the two trees, never taken from the agent's word. Only the paths
 * the deployment's restore report names (what phases 2 and 3 did not take from the image as
 * it is) come from the agent; every other exception is named in {@link osTreeExceptions}.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { KEPT } from '../agent/deploy.js';
import { readRestoreReport, RESTORE_REPORT } from '../agent/restore-report.js';
import type { SavedRestoreReport } from '../agent/restore-report.js';

/**
 * Tree-relative path → `dir MODE UID:GID`, `file MODE UID:GID <sha256>` or `link <target>`
 * (other types: their kind). MODE is the permission bits in octal; times are not compared.
 */
export type TreeListing = Map<string, string>;

/** Lists a tree without following links; `skip(rel)` leaves a path (and what is below) out. */
export function listTree(root: string, skip: (rel: string) => boolean): TreeListing {
  const out: TreeListing = new Map();
  const walk = (rel: string) => {
    for (const d of fs.readdirSync(path.join(root, rel), { withFileTypes: true })) {
      const r = rel === '' ? d.name : `${rel}/${d.name}`;
      if (skip(r)) continue;
      const abs = path.join(root, r);
      if (d.isSymbolicLink()) {
        out.set(r, `link ${fs.readlinkSync(abs)}`);
        continue;
      }
      const st = fs.lstatSync(abs);
      const meta = `${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`;
      if (d.isDirectory()) {
        out.set(r, `dir ${meta}`);
        walk(r);
      } else if (d.isFile())
        out.set(
          r,
          `file ${meta} ${createHash('sha256').update(fs.readFileSync(abs)).digest('hex')}`,
        );
      else out.set(r, 'special');
    }
  };
  walk('');
  return out;
}

export interface OsTreeExceptions {
  /** Paths left out on both sides (and everything below them). */
  skip: (rel: string) => boolean;
  /** Paths the restore report names: they may differ, be missing or be added. */
  listed: ReadonlySet<string>;
}

/**
 * What may differ between an installed machine's disk and its image, each for a reason:
 *
 * - **Data the wipe keeps** — everything outside the package's `wipe.osPaths` (/home, /srv,
 *   the lab's data folders) and the `wipe.keep` paths inside them (/var/lib/reimage: the
 *   agent's local state store). Not the OS: left in place by design; the lab checks it
 *   separately (users-hash.ts: byte-identical, same inodes).
 * - **The kept area `/.reimage`** — the agent's journal, outbox, history (the restore report
 *   itself) and `applied.json`: outside the OS paths too, named for clarity.
 * - **`usr/lib/reimage/run`** — the client bundle extracts itself there when it starts.
 * - **`etc/reimage/NAME.tmp-PID`** — the running client rewrites its files there atomically
 *   (the policy cache at each poll); the lab powers a machine off at any moment, which can cut
 *   such a write and leave its temporary file. The client removes it at its next boot
 *   (removeStaleTemps, src/agent/files.ts), but the lab compares before any next boot.
 * - **The paths the restore report lists** (`written`: phase 3's writes; `notPlaced`: image
 *   paths phase 2 left out because kept data is there), and on the disk only, the folders
 *   leading to a listed path (made to hold it).
 *
 * Besides its cut writes, what the running new client writes after its first boot needs no
 * exception of its own: its daemon state, outbox and `applied.json` are in /.reimage; in the
 * OS it writes only etc/reimage/{client.json,credential,policy-cache.json}, the client state
 * phase 3 restores (so the report lists them). With `clientState: fresh` it would enroll anew and those files
 * would show as added: no lab run uses that.
 */
export function osTreeExceptions(
  wipe: { osPaths: readonly string[]; keep: readonly string[] },
  report: Pick<SavedRestoreReport, 'written' | 'notPlaced'>,
): OsTreeExceptions {
  const rel = (p: string) => p.replace(/^\/+/, '').replace(/\/+$/, '');
  const osPaths = wipe.osPaths.map(rel);
  const keep = [...wipe.keep.map(rel), '.reimage', 'usr/lib/reimage/run'];
  const under = (p: string, dir: string) => p === dir || p.startsWith(`${dir}/`);
  const cutWrite = /^etc\/reimage\/[^/]+\.tmp-\d+$/;
  return {
    skip: (p) =>
      !osPaths.some((o) => under(p, o) || under(o, p)) ||
      keep.some((k) => under(p, k)) ||
      cutWrite.test(p),
    listed: new Set([...report.written, ...report.notPlaced]),
  };
}

export interface OsTreeDifference {
  /** In the image, not on the disk. */
  missing: string[];
  /** On the disk, not in the image. */
  added: string[];
  /** On both, with another type or content. */
  changed: string[];
  /** Paths compared (image side). */
  compared: number;
}

/** Compares a disk with its image's tree, except what `x` says may differ. */
export function compareOsTree(disk: string, image: string, x: OsTreeExceptions): OsTreeDifference {
  const want = listTree(image, x.skip);
  const have = listTree(disk, x.skip);
  // Folders made to hold a listed path (on the disk only).
  const holders = new Set<string>();
  for (const p of x.listed)
    for (let d = path.posix.dirname(p); d !== '.'; d = path.posix.dirname(d)) holders.add(d);
  const diff: OsTreeDifference = { missing: [], added: [], changed: [], compared: want.size };
  for (const [p, v] of want) {
    if (x.listed.has(p)) continue;
    const got = have.get(p);
    if (got === undefined) diff.missing.push(p);
    else if (got !== v) diff.changed.push(p);
  }
  for (const [p, v] of have)
    if (!want.has(p) && !x.listed.has(p) && !(v.startsWith('dir ') && holders.has(p)))
      diff.added.push(p);
  return diff;
}

/**
 * The restore report the newest deployment of `image` left in the disk's history
 * (`/.reimage/history/<deployment>-<time>/restore-report.json`), with its host path.
 */
export function findRestoreReport(
  disk: string,
  image: string,
): { path: string; report: SavedRestoreReport } | undefined {
  const history = path.join(disk, KEPT, 'history');
  let found: { path: string; report: SavedRestoreReport; at: number } | undefined;
  let names: string[];
  try {
    names = fs.readdirSync(history);
  } catch {
    return undefined;
  }
  for (const name of names) {
    const report = readRestoreReport(path.join(history, name));
    const at = Number(/-(\d+)$/.exec(name)?.[1] ?? 0);
    if (report?.image === image && (!found || at > found.at))
      found = { path: path.join(history, name, RESTORE_REPORT), report, at };
  }
  return found && { path: found.path, report: found.report };
}
