/**
 * An independent listing of a filesystem tree, made ONLY with standard tools (GNU find, stat,
 * sha256sum, getfattr) run through child_process — no project code — so round-trip tests can
 * compare an original tree with an applied one without trusting the project's own reader.
 *
 * One line per entry:
 *
 *   "rel/path" type=f mode=0644 owner=0:0 size=3072 sha256=<hex> mtime=1700000000.123456789
 *     nlink=1 xattr.user.a=0x00ff
 *
 * (on one line). Fields by type:
 *   all:        type (find %y: f d l p s c b), mode (4 octal digits incl. setuid/setgid/sticky),
 *               owner (numeric uid:gid), mtime (seconds.nanoseconds, symlinks included),
 *               xattr.NAME=0xHEX for every extended attribute in every namespace
 *               (security.selinux excepted), sorted by name
 *   non-dirs:   nlink, and hardlink="first path" (byte order) of its inode's names in the listing
 *               when nlink > 1, so hard-link GROUPS are compared, not just counts
 *   f:          size and sha256 of the content ("unreadable" when sha256sum cannot read it)
 *   l:          target="raw target"
 *   c, b:       rdev=major:minor (decimal)
 * Not listed: directory sizes and nlink (they differ between filesystems), atime, ctime, inode
 * numbers, allocated blocks / sparseness.
 *
 * Paths and symlink targets are quoted; bytes outside printable ASCII and the characters `"` and
 * `\` are escaped (`\n`, `\t`, `\\`, `\"`, `\xHH`), so names with newlines or bytes that are not
 * valid UTF-8 compare exactly. The root itself is listed as `"."`.
 *
 * Requires GNU findutils, GNU coreutils (stat %Hr/%Lr, sha256sum -z) and attr (getfattr).
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';

export interface ListingOptions {
  /**
   * Called with each entry's raw path relative to root (never for the root itself). An excluded
   * directory excludes everything below it as well.
   */
  exclude?: (relPath: Buffer) => boolean;
  /** Leave the mtime out of the root's line (default false). */
  ignoreRootMtime?: boolean;
  /** Leave the root's line out entirely: mode, owner, mtime and xattrs (default false). */
  ignoreRoot?: boolean;
  /** Leave Unix sockets out (default false); the engine skips sockets, so round trips want true. */
  ignoreSockets?: boolean;
}

const NUL = 0;
const FIND_FIELDS = ['%P', '%y', '%m', '%U', '%G', '%s', '%T@', '%l', '%n', '%D', '%i'];

function tool(cmd: string, args: string[], cwd: string, okStatus: number[] = [0]): Buffer {
  const r = spawnSync(cmd, args, {
    cwd,
    env: { ...process.env, LC_ALL: 'C' },
    maxBuffer: 1 << 30,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (r.error) throw new Error(`${cmd}: ${r.error.message}`);
  if (r.status === null || !okStatus.includes(r.status)) {
    throw new Error(
      `${cmd} ${args.join(' ')} (in ${cwd}) exited ${r.status ?? r.signal}: ` +
        r.stderr.toString('latin1').trim(),
    );
  }
  return r.stdout;
}

function splitBytes(buf: Buffer, sep: number): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (;;) {
    const i = buf.indexOf(sep, start);
    if (i < 0) break;
    out.push(buf.subarray(start, i));
    start = i + 1;
  }
  if (start < buf.length) out.push(buf.subarray(start));
  return out;
}

/** Quotes raw bytes so that every byte string has exactly one printable representation. */
export function quoteBytes(b: Buffer): string {
  let s = '"';
  for (const c of b) {
    if (c === 0x22) s += '\\"';
    else if (c === 0x5c) s += '\\\\';
    else if (c === 0x0a) s += '\\n';
    else if (c === 0x09) s += '\\t';
    else if (c >= 0x20 && c < 0x7f) s += String.fromCharCode(c);
    else s += '\\x' + c.toString(16).padStart(2, '0');
  }
  return s + '"';
}

/** Strips the leading "./" that tools print for paths given as "." or "./x". */
function stripDot(p: Buffer): Buffer {
  if (p.length === 1 && p[0] === 0x2e) return Buffer.alloc(0);
  if (p.length >= 2 && p[0] === 0x2e && p[1] === 0x2f) return p.subarray(2);
  return p;
}

/** Undoes getfattr's file-name escaping (\ooo octal; backslash itself is \134). */
function unescapeOctal(b: Buffer): Buffer {
  const out: number[] = [];
  for (let i = 0; i < b.length; i++) {
    const c = b[i] as number;
    if (c === 0x5c && i + 3 < b.length && /^[0-7]{3}$/.test(b.toString('latin1', i + 1, i + 4))) {
      out.push(parseInt(b.toString('latin1', i + 1, i + 4), 8));
      i += 3;
    } else out.push(c);
  }
  return Buffer.from(out);
}

function normTime(t: string): string {
  const m = /^(-?\d+)(?:\.(\d*))?$/.exec(t);
  if (!m) return t;
  const frac = (m[2] ?? '').slice(0, 9).padEnd(9, '0');
  return `${m[1]}.${frac}`;
}

interface Entry {
  rel: Buffer;
  type: string;
  mode: string;
  uid: string;
  gid: string;
  size: string;
  mtime: string;
  target: Buffer;
  nlink: number;
  inodeKey: string;
}

/** Sorted listing lines for the tree at `root` (see the module comment for the format). */
export function independentListing(root: string, opts: ListingOptions = {}): string[] {
  const cwd = path.resolve(root);

  // 1. metadata of every entry: find -printf with NUL-separated fields
  const fmt = FIND_FIELDS.map((f) => f + '\\0').join('');
  const raw = tool('find', ['.', '-printf', fmt], cwd);
  const fields = splitBytes(raw, NUL);
  if (fields.length % FIND_FIELDS.length !== 0) {
    throw new Error(`find output has ${fields.length} fields, not a multiple of 11`);
  }
  const entries: Entry[] = [];
  for (let i = 0; i < fields.length; i += FIND_FIELDS.length) {
    const f = (k: number): Buffer => fields[i + k] as Buffer;
    const s = (k: number): string => f(k).toString('latin1');
    entries.push({
      rel: Buffer.from(f(0)),
      type: s(1),
      mode: s(2).padStart(4, '0'),
      uid: s(3),
      gid: s(4),
      size: s(5),
      mtime: normTime(s(6)),
      target: Buffer.from(f(7)),
      nlink: Number(s(8)),
      inodeKey: `${s(9)}:${s(10)}`,
    });
  }

  // 2. exclusions (an excluded directory excludes its subtree)
  const cache = new Map<string, boolean>();
  const excluded = (rel: Buffer): boolean => {
    if (rel.length === 0) return false;
    const key = rel.toString('hex');
    const hit = cache.get(key);
    if (hit !== undefined) return hit;
    const slash = rel.lastIndexOf(0x2f);
    const res =
      (slash > 0 && excluded(rel.subarray(0, slash))) ||
      (opts.exclude?.(Buffer.from(rel)) ?? false);
    cache.set(key, res);
    return res;
  };
  const kept = entries.filter((e) => {
    if (e.rel.length === 0) return !opts.ignoreRoot;
    if (opts.ignoreSockets && e.type === 's') return false;
    return !excluded(e.rel);
  });

  // 3. content hashes of regular files: sha256sum -z (NUL-terminated, no name escaping)
  const hashes = new Map<string, string>();
  if (kept.some((e) => e.type === 'f')) {
    // status 1: some file could not be read (e.g. mode 0000 when not root) — reported per file
    const out = tool(
      'find',
      ['.', '-type', 'f', '-exec', 'sha256sum', '-z', '--', '{}', '+'],
      cwd,
      [0, 1],
    );
    for (const rec of splitBytes(out, NUL)) {
      if (rec.length < 67 || rec[64] !== 0x20 || rec[65] !== 0x20) {
        throw new Error(`unexpected sha256sum output: ${quoteBytes(rec)}`);
      }
      hashes.set(stripDot(rec.subarray(66)).toString('hex'), rec.toString('latin1', 0, 64));
    }
  }

  // 4. device numbers: stat %Hr:%Lr (decimal major:minor)
  const rdevs = new Map<string, string>();
  if (kept.some((e) => e.type === 'c' || e.type === 'b')) {
    const out = tool(
      'find',
      [
        '.',
        '(',
        '-type',
        'c',
        '-o',
        '-type',
        'b',
        ')',
        '-exec',
        'stat',
        '--printf',
        '%n\\0%Hr:%Lr\\0',
        '--',
        '{}',
        '+',
      ],
      cwd,
    );
    const parts = splitBytes(out, NUL);
    for (let i = 0; i + 1 < parts.length; i += 2) {
      rdevs.set(stripDot(parts[i] as Buffer).toString('hex'), (parts[i + 1] as Buffer).toString());
    }
  }

  // 5. extended attributes, all namespaces: getfattr -h -d -m - -e hex
  const xattrs = new Map<string, string[]>();
  {
    const out = tool(
      'find',
      [
        '.',
        '-exec',
        'getfattr',
        '-h',
        '-d',
        '-m',
        '-',
        '-e',
        'hex',
        '--absolute-names',
        '--',
        '{}',
        '+',
      ],
      cwd,
    );
    let current: string | null = null;
    for (const line of splitBytes(out, 0x0a)) {
      if (line.length === 0) {
        current = null;
        continue;
      }
      const text = line.toString('latin1');
      if (text.startsWith('# file: ')) {
        current = stripDot(unescapeOctal(line.subarray(8))).toString('hex');
        continue;
      }
      if (current === null) throw new Error(`unexpected getfattr output: ${text}`);
      const eq = text.indexOf('=');
      const name = eq < 0 ? text : text.slice(0, eq);
      const value = eq < 0 ? '' : text.slice(eq + 1);
      if (name === 'security.selinux') continue;
      const list = xattrs.get(current) ?? [];
      list.push(`xattr.${name}=${value}`);
      xattrs.set(current, list);
    }
  }

  // 6. hard-link groups: the byte-order-first listed name of each multiply-linked inode
  const firstName = new Map<string, Buffer>();
  for (const e of kept) {
    if (e.type === 'd' || e.nlink <= 1) continue;
    const prev = firstName.get(e.inodeKey);
    if (!prev || Buffer.compare(e.rel, prev) < 0) firstName.set(e.inodeKey, e.rel);
  }

  // 7. lines
  const lines = kept.map((e) => {
    const key = e.rel.toString('hex');
    const isRoot = e.rel.length === 0;
    const parts = [
      isRoot ? '"."' : quoteBytes(e.rel),
      `type=${e.type}`,
      `mode=${e.mode}`,
      `owner=${e.uid}:${e.gid}`,
    ];
    if (e.type === 'f') parts.push(`size=${e.size}`, `sha256=${hashes.get(key) ?? 'unreadable'}`);
    if (!(isRoot && opts.ignoreRootMtime)) parts.push(`mtime=${e.mtime}`);
    if (e.type !== 'd') {
      parts.push(`nlink=${e.nlink}`);
      const first = firstName.get(e.inodeKey);
      if (e.nlink > 1 && first) parts.push(`hardlink=${quoteBytes(first)}`);
    }
    if (e.type === 'l') parts.push(`target=${quoteBytes(e.target)}`);
    if (e.type === 'c' || e.type === 'b') parts.push(`rdev=${rdevs.get(key) ?? '?'}`);
    parts.push(...(xattrs.get(key) ?? []).sort());
    return parts.join(' ');
  });
  return lines.sort();
}

/** Splits a listing line into the quoted path and its key=value fields (quotes respected). */
function tokenize(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let inQuote = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i] as string;
    if (inQuote && c === '\\') {
      cur += c + (line[i + 1] ?? '');
      i++;
    } else if (c === '"') {
      inQuote = !inQuote;
      cur += c;
    } else if (c === ' ' && !inQuote) {
      if (cur) out.push(cur);
      cur = '';
    } else cur += c;
  }
  if (cur) out.push(cur);
  return out;
}

/**
 * A readable diff of two listings: for each path, its lines only in `a` ("-") and only in `b`
 * ("+"), and the fields that changed when a path has one line on each side. Empty string when the
 * listings are equal (as multisets of lines).
 */
export function diffListings(
  a: string[],
  b: string[],
  labels: [string, string] = ['a', 'b'],
): string {
  const count = new Map<string, number>();
  for (const l of a) count.set(l, (count.get(l) ?? 0) + 1);
  const onlyB: string[] = [];
  for (const l of b) {
    const n = count.get(l) ?? 0;
    if (n > 0) count.set(l, n - 1);
    else onlyB.push(l);
  }
  const onlyA: string[] = [];
  for (const [l, n] of count) for (let i = 0; i < n; i++) onlyA.push(l);
  if (onlyA.length === 0 && onlyB.length === 0) return '';

  const byPath = new Map<string, { a: string[][]; b: string[][] }>();
  const add = (l: string, side: 'a' | 'b'): void => {
    const toks = tokenize(l);
    const p = toks[0] ?? '';
    const slot = byPath.get(p) ?? { a: [], b: [] };
    slot[side].push(toks.slice(1));
    byPath.set(p, slot);
  };
  for (const l of onlyA) add(l, 'a');
  for (const l of onlyB) add(l, 'b');

  const out = [
    `listings differ: ${onlyA.length} line(s) only in ${labels[0]}, ` +
      `${onlyB.length} only in ${labels[1]}, ${byPath.size} path(s)`,
  ];
  for (const p of [...byPath.keys()].sort()) {
    const slot = byPath.get(p) as { a: string[][]; b: string[][] };
    const what =
      slot.a.length && slot.b.length
        ? 'changed'
        : slot.a.length
          ? `only in ${labels[0]}`
          : `only in ${labels[1]}`;
    out.push(`${p} (${what})`);
    for (const t of slot.a) out.push(`  - ${t.join(' ')}`);
    for (const t of slot.b) out.push(`  + ${t.join(' ')}`);
    const [ta] = slot.a;
    const [tb] = slot.b;
    if (slot.a.length === 1 && slot.b.length === 1 && ta && tb) {
      const fa = fieldMap(ta);
      const fb = fieldMap(tb);
      for (const k of [...new Set([...fa.keys(), ...fb.keys()])].sort()) {
        const va = fa.get(k);
        const vb = fb.get(k);
        if (va !== vb) out.push(`    ${k}: ${va ?? '(absent)'} -> ${vb ?? '(absent)'}`);
      }
    }
  }
  return out.join('\n');
}

function fieldMap(tokens: string[]): Map<string, string> {
  const m = new Map<string, string>();
  for (const t of tokens) {
    const eq = t.indexOf('=');
    if (eq < 0) m.set(t, '');
    else m.set(t.slice(0, eq), t.slice(eq + 1));
  }
  return m;
}
