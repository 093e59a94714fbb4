import { closeSync, fdatasyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { RestoreReport } from '../migrate/migration.js';
import { readJsonFile, writeFileAtomic } from './files.js';

/**
 * The restore report a deployment leaves on the machine (docs/agent.md, "Phase 3"): every
 * path of the new OS that phases 2 and 3 did not take from the image as it is. Written by
 * phase 3 into the deployment's folder of the kept area, which goes to
 * `/.reimage/history/<deployment>-<time>/` when the deployment ends: the lab (and an
 * administrator) reads it there. Paths only, never any content.
 */

/** The report's file name in the deployment's folder. */
export const RESTORE_REPORT = 'restore-report.json';

/**
 * The intent log of phase 3: each path is appended (and synced) before restore writes it, so
 * that the report of a run killed midway and run again still names what the first run wrote.
 */
const WRITTEN_LOG = 'restore-written.jsonl';

export interface SavedRestoreReport {
  deployment: string;
  image: string;
  /** The state store restored (its folder name). */
  store: string;
  restored: number;
  bytes: number;
  /**
   * Paths (relative to the disk's root, sorted, unique) phase 3 created or changed in the new
   * OS: accounts, restored items, `.restored` copies, machine state and cloud-init seed.
   * Folders made to hold one of them are not listed.
   */
  written: string[];
  /**
   * Phase 2: paths of the image not placed because the old disk has something there the wipe
   * keeps (a kept path such as /var/lib/reimage, or data): the disk has the kept entry.
   */
  notPlaced: string[];
  conflicts: RestoreReport['conflicts'];
  skipped: RestoreReport['skipped'];
  accounts: RestoreReport['accounts'];
  machineState: RestoreReport['machineState'];
}

/** Appends paths to the deployment's intent log, each synced before the write it announces. */
export function openWrittenLog(deploymentDir: string): {
  add: (path: string) => void;
  close: () => void;
} {
  const fd = openSync(join(deploymentDir, WRITTEN_LOG), 'a', 0o600);
  return {
    add(path) {
      writeSync(fd, `${JSON.stringify(path)}\n`);
      fdatasyncSync(fd);
    },
    close: () => closeSync(fd),
  };
}

/** The paths of the intent log (a line torn by a kill is left out: its write had not begun). */
export function readWrittenLog(deploymentDir: string): string[] {
  let text: string;
  try {
    text = readFileSync(join(deploymentDir, WRITTEN_LOG), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    try {
      const p: unknown = JSON.parse(line);
      if (typeof p === 'string') out.push(p);
    } catch {
      // torn by a kill
    }
  }
  return out;
}

/**
 * Writes the report atomically into the deployment's folder: `r.written` joined with the
 * intent log of earlier runs, the phase 2 `notPlaced` paths made relative. Run again, it
 * writes the same report.
 */
export function writeRestoreReport(
  deploymentDir: string,
  r: RestoreReport,
  o: { deployment: string; image: string; notPlaced: readonly string[] },
): SavedRestoreReport {
  const written = [...new Set([...readWrittenLog(deploymentDir), ...r.written])].sort();
  const report: SavedRestoreReport = {
    deployment: o.deployment,
    image: o.image,
    store: r.store,
    restored: r.restored,
    bytes: r.bytes,
    written,
    notPlaced: o.notPlaced.map((p) => p.replace(/^\/+/, '')).sort(),
    conflicts: r.conflicts,
    skipped: r.skipped,
    accounts: r.accounts,
    machineState: r.machineState,
  };
  writeFileAtomic(join(deploymentDir, RESTORE_REPORT), `${JSON.stringify(report, null, 2)}\n`);
  return report;
}

/** The report of a deployment of the history (`dir`: its folder), if it has one. */
export function readRestoreReport(dir: string): SavedRestoreReport | undefined {
  return readJsonFile<SavedRestoreReport>(join(dir, RESTORE_REPORT));
}
