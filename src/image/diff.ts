import { hashKey } from '../content/digest.js';
import type { ContentStore } from '../content/store.js';
import { ImageLibrary } from './library.js';
import { comparePaths, showPath, type Entry } from './manifest.js';

export interface DiffChange {
  path: string;
  change: 'added' | 'removed' | 'modified';
  /** what differs, for modified entries: type, content, mode, owner, mtime, xattrs, target, device */
  fields?: string[];
}

export interface DiffResult {
  from: string;
  to: string;
  added: number;
  removed: number;
  modified: number;
  unchanged: number;
  /** bytes of file data in `to` held by chunks that `from` does not have */
  newDataBytes: number;
  changes: DiffChange[];
}

function same(a: Buffer | undefined, b: Buffer | undefined): boolean {
  return (
    (a === undefined && b === undefined) || (a !== undefined && b !== undefined && a.equals(b))
  );
}

function fieldsChanged(a: Entry, b: Entry): string[] {
  const f: string[] = [];
  if (a.type !== b.type) return ['type'];
  if (
    a.type === 'file' &&
    (a.size !== b.size ||
      !same(a.chunks, b.chunks) ||
      JSON.stringify(a.segments) !== JSON.stringify(b.segments))
  )
    f.push('content');
  if (a.mode !== b.mode) f.push('mode');
  if (a.uid !== b.uid || a.gid !== b.gid) f.push('owner');
  if (a.mtimeNs !== b.mtimeNs) f.push('mtime');
  if (
    a.xattrs.length !== b.xattrs.length ||
    a.xattrs.some(([n, v], i) => !n.equals(b.xattrs[i]![0]) || !v.equals(b.xattrs[i]![1]))
  )
    f.push('xattrs');
  if (!same(a.target, b.target)) f.push('target');
  if (a.major !== b.major || a.minor !== b.minor) f.push('device');
  return f;
}

/** What changed from one image to another, entry by entry. */
export function diffImages(store: ContentStore, fromRef: string, toRef: string): DiffResult {
  const lib = new ImageLibrary(store);
  const fromRec = lib.resolve(fromRef);
  const toRec = lib.resolve(toRef);
  const a = lib.loadManifest(fromRec.id).manifest.entries;
  const b = lib.loadManifest(toRec.id).manifest.entries;
  const res: DiffResult = {
    from: fromRec.id,
    to: toRec.id,
    added: 0,
    removed: 0,
    modified: 0,
    unchanged: 0,
    newDataBytes: 0,
    changes: [],
  };
  const had = new Set<string>();
  for (const e of a)
    if (e.chunks) for (let c = 0; c < e.lengths!.length; c++) had.add(hashKey(e.chunks, c * 32));
  const counted = new Set<string>();
  for (const e of b) {
    if (!e.chunks) continue;
    e.lengths!.forEach((len, c) => {
      const k = hashKey(e.chunks!, c * 32);
      if (!had.has(k) && !counted.has(k)) {
        counted.add(k);
        res.newDataBytes += len;
      }
    });
  }
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    const c = i >= a.length ? 1 : j >= b.length ? -1 : comparePaths(a[i]!.path, b[j]!.path);
    if (c < 0) {
      res.removed++;
      res.changes.push({ path: showPath(a[i++]!.path), change: 'removed' });
    } else if (c > 0) {
      res.added++;
      res.changes.push({ path: showPath(b[j++]!.path), change: 'added' });
    } else {
      const fields = fieldsChanged(a[i]!, b[j]!);
      if (fields.length) {
        res.modified++;
        res.changes.push({ path: showPath(b[j]!.path), change: 'modified', fields });
      } else res.unchanged++;
      i++;
      j++;
    }
  }
  return res;
}
