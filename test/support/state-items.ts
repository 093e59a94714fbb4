import { lstatSync, readdirSync, readlinkSync } from 'node:fs';
import { join, relative } from 'node:path';
import type { StateItem } from '../../src/migrate/model.js';

/** State items for everything below `root`, as the rule engine would make them (kind user-files). */
export function scanItems(root: string, extra: Partial<StateItem> = {}): StateItem[] {
  const out: StateItem[] = [];
  const walk = (dir: string) => {
    for (const name of readdirSync(dir).sort()) {
      const full = join(dir, name);
      const st = lstatSync(full);
      const type = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'file';
      const item: StateItem = {
        path: relative(root, full),
        type,
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtimeMs: st.mtimeMs,
        size: type === 'file' ? st.size : 0,
        kind: 'user-files',
        component: 'test',
        ...extra,
      };
      if (type === 'symlink') item.target = readlinkSync(full);
      out.push(item);
      if (type === 'dir') walk(full);
    }
  };
  walk(root);
  return out;
}
