import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { ContentStore } from '../content/store.js';
import type { LockHolder } from '../content/lock.js';
import { ImageLibrary } from './library.js';
import { deltaIndexRel, deltaPackRel, listDeltaPacks, strayDeltaFiles } from '../content/delta.js';

export interface GcResult {
  packsDeleted: number;
  bytesFreed: number;
  objectsDeleted: number;
  tmpRemoved: number;
  packsKept: number;
}

/**
 * Deletes what no image needs: packs no image record lists, manifests and stat caches of
 * deleted images, names that point nowhere, and leftovers of killed captures. It holds the
 * exclusive lock, so it waits for running captures and applies (which hold shared locks) and
 * none can start while it runs: it never deletes a chunk that a capture is about to use.
 */
export async function collectGarbage(
  store: ContentStore,
  opts: { waitMs?: number; dryRun?: boolean; onWait?: (holders: LockHolder[]) => void } = {},
): Promise<GcResult> {
  const lockOpts: { waitMs?: number; onWait?: (holders: LockHolder[]) => void } = {};
  if (opts.waitMs !== undefined) lockOpts.waitMs = opts.waitMs;
  if (opts.onWait) lockOpts.onWait = opts.onWait;
  const lock = await store.lock('exclusive', 'store gc', lockOpts);
  try {
    const lib = new ImageLibrary(store);
    const res: GcResult = {
      packsDeleted: 0,
      bytesFreed: 0,
      objectsDeleted: 0,
      tmpRemoved: 0,
      packsKept: 0,
    };
    for (const dir of store.staleSessions()) {
      if (!opts.dryRun) rmSync(dir, { recursive: true, force: true });
      res.tmpRemoved++;
    }
    const records = lib.listRecords();
    const ids = new Set(records.map((r) => r.id));
    const live = new Set(records.flatMap((r) => r.packs));
    for (const n of lib.listNames()) {
      if (!ids.has(n.id)) {
        if (!opts.dryRun) lib.deleteName(n.name);
        res.objectsDeleted++;
      }
    }
    for (const [kind, suffix] of [
      ['manifests', '.zst'],
      ['statcache', ''],
    ] as const) {
      for (const name of store.listObjects(kind)) {
        const id = suffix ? name.slice(0, -suffix.length) : name;
        if (!ids.has(id)) {
          if (!opts.dryRun) store.deleteObject(kind, name);
          res.objectsDeleted++;
        }
      }
    }
    for (const f of [...store.strayPackFiles(), ...strayDeltaFiles(store)]) {
      let size = 0;
      try {
        size = statSync(f).size;
      } catch {
        /* gone */
      }
      if (!opts.dryRun) rmSync(f, { force: true });
      res.bytesFreed += size;
      res.tmpRemoved++;
    }
    // Delta packs no record lists (docs/content-store.md, "Delta packs").
    const liveDeltas = new Set(records.flatMap((r) => r.deltas ?? []));
    for (const id of listDeltaPacks(store)) {
      if (liveDeltas.has(id)) continue;
      let size = 0;
      for (const rel of [deltaIndexRel(id), deltaPackRel(id)]) {
        try {
          size += statSync(join(store.root, rel)).size;
        } catch {
          /* half-deleted */
        }
        if (!opts.dryRun) rmSync(join(store.root, rel), { force: true });
      }
      res.packsDeleted++;
      res.bytesFreed += size;
    }
    for (const id of store.listPacks()) {
      if (live.has(id)) {
        res.packsKept++;
        continue;
      }
      let size = 0;
      try {
        size = statSync(store.packPath(id)).size + statSync(store.indexPath(id)).size;
      } catch {
        /* half-deleted by an earlier gc */
      }
      if (!opts.dryRun) store.deletePack(id);
      res.packsDeleted++;
      res.bytesFreed += size;
    }
    return res;
  } finally {
    lock.release();
  }
}
