import { lstatSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Minimatch } from 'minimatch';

/**
 * Generalization: what makes a captured tree one machine rather than a model for many (its
 * machine id, SSH host keys, the reimage client's identity, logs, shell histories, DHCP leases,
 * persistent network names). It is applied at capture time, as exclusions and files captured
 * empty, so the model computer itself is never changed: the image is generalized, the machine
 * keeps working as before. docs/capture.md lists the rules.
 */
export interface GeneralizeRule {
  /** Glob anchored at the root of the tree (as capture excludes are). */
  pattern: string;
  /** `empty`: kept as an empty file (owner and mode kept); `remove`: left out of the image. */
  action: 'empty' | 'remove';
  /** What it is, for the list shown before capture. */
  what: string;
}

export const GENERALIZE_RULES: readonly GeneralizeRule[] = [
  // systemd expects the file to exist and be empty: it writes a new id at first boot.
  { pattern: '/etc/machine-id', action: 'empty', what: 'machine id (new one at first boot)' },
  { pattern: '/var/lib/dbus/machine-id', action: 'remove', what: 'D-Bus machine id' },
  { pattern: '/etc/ssh/ssh_host_*', action: 'remove', what: 'SSH host key' },
  { pattern: '/etc/reimage/client.json', action: 'remove', what: 'reimage client identity' },
  { pattern: '/etc/reimage/credential', action: 'remove', what: 'reimage client credential' },
  {
    pattern: '/etc/reimage/policy-cache.json',
    action: 'remove',
    what: 'reimage client policy cache',
  },
  { pattern: '/var/lib/reimage/**', action: 'remove', what: 'reimage client state' },
  { pattern: '/var/log/journal/*/*', action: 'remove', what: 'systemd journal' },
  { pattern: '/var/log/**/*.[0-9]', action: 'remove', what: 'rotated log' },
  { pattern: '/var/log/**/*.[0-9].gz', action: 'remove', what: 'rotated log' },
  { pattern: '/var/log/**/*.gz', action: 'remove', what: 'rotated log' },
  { pattern: '/var/log/**/*.old', action: 'remove', what: 'rotated log' },
  { pattern: '/var/log/**', action: 'empty', what: 'log (kept empty)' },
  { pattern: '/root/.*_history', action: 'remove', what: 'shell history' },
  { pattern: '/home/*/.*_history', action: 'remove', what: 'shell history' },
  { pattern: '/var/lib/dhcp/*.leases', action: 'remove', what: 'DHCP lease' },
  { pattern: '/var/lib/dhclient/*', action: 'remove', what: 'DHCP lease' },
  { pattern: '/var/lib/NetworkManager/*.lease', action: 'remove', what: 'DHCP lease' },
  { pattern: '/var/lib/systemd/network/*', action: 'remove', what: 'DHCP lease' },
  {
    pattern: '/etc/udev/rules.d/70-persistent-net.rules',
    action: 'remove',
    what: 'persistent network names (udev)',
  },
];

/** The capture options that apply generalization: what to leave out, what to capture empty. */
export function generalizeCaptureOptions(): { excludes: string[]; emptyFiles: string[] } {
  return {
    excludes: GENERALIZE_RULES.filter((r) => r.action === 'remove').map((r) => r.pattern),
    emptyFiles: GENERALIZE_RULES.filter((r) => r.action === 'empty').map((r) => r.pattern),
  };
}

export interface GeneralizeItem {
  /** '/'-anchored path inside the tree. */
  path: string;
  action: 'empty' | 'remove';
  what: string;
  bytes: number;
}

const glob = (p: string) => new Minimatch(p, { dot: true, nocomment: true, nonegate: true });

/**
 * What generalization will leave out of (or empty in) an image of the tree at `root`, for the
 * list shown and confirmed before capture. Only reads: the walk lists real directories under
 * the root and never follows a symlink (a symlinked /var/log is not entered), so it cannot
 * reach outside the tree. The first rule matching an entry decides, as capture does: a
 * removed path wins over an emptied one.
 */
export function listGeneralization(root: string): GeneralizeItem[] {
  const removes = GENERALIZE_RULES.filter((r) => r.action === 'remove').map((r) => ({
    r,
    m: glob(r.pattern),
  }));
  const empties = GENERALIZE_RULES.filter((r) => r.action === 'empty').map((r) => ({
    r,
    m: glob(r.pattern),
  }));
  const all = [...removes, ...empties];
  const items: GeneralizeItem[] = [];
  // Only the folders a rule can match below: the rules' literal leading segments.
  const starts = new Set<string>();
  for (const r of GENERALIZE_RULES) {
    const seg = r.pattern.split('/').slice(1);
    const lit: string[] = [];
    for (const s of seg.slice(0, -1)) {
      if (/[*?[\]{}]/.test(s)) break;
      lit.push(s);
    }
    starts.add('/' + lit.join('/'));
  }
  const seen = new Set<string>();
  const visit = (rel: string) => {
    if (seen.has(rel)) return;
    seen.add(rel);
    let names: string[];
    try {
      names = readdirSync(join(root, rel)).sort();
    } catch {
      return;
    }
    for (const name of names) {
      const p = rel === '/' ? `/${name}` : `${rel}/${name}`;
      let st;
      try {
        st = lstatSync(join(root, p));
      } catch {
        continue;
      }
      if (st.isDirectory()) {
        // Descend only where some rule may match below (a prefix of a pattern can match).
        if (all.some(({ m }) => m.match(p, true))) visit(p);
        continue;
      }
      const rm = removes.find(({ m }) => m.match(p));
      if (rm) {
        items.push({ path: p, action: 'remove', what: rm.r.what, bytes: st.size });
        continue;
      }
      const em = st.isFile() && st.size > 0 ? empties.find(({ m }) => m.match(p)) : undefined;
      if (em) items.push({ path: p, action: 'empty', what: em.r.what, bytes: st.size });
    }
  };
  for (const s of [...starts].sort()) {
    // Each literal start must itself be a real directory, reached without symlinks.
    let ok = true;
    let at = '';
    for (const seg of s.split('/').slice(1).filter(Boolean)) {
      at += `/${seg}`;
      try {
        if (!lstatSync(join(root, at)).isDirectory()) ok = false;
      } catch {
        ok = false;
      }
      if (!ok) break;
    }
    if (ok) visit(s === '' ? '/' : s);
  }
  return items.sort((a, b) => a.path.localeCompare(b.path));
}
