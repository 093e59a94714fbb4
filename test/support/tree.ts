/**
 * Test-tree generator for round-trip tests.
 *
 * `makeTestTree` builds a deterministic (per seed) directory tree that holds every kind of entry
 * an operating-system tree has: nested and empty directories, special permission bits, regular
 * files of many sizes (text-like and random), a sparse file, symlinks of every flavour, hard-link
 * groups, a FIFO, devices and foreign owners (root only), names that are not valid UTF-8, xattrs
 * (incl. `security.capability` when root), a Unix socket and mtimes with nanoseconds.
 *
 * `mutateTree` turns such a tree into a "similar second version".
 *
 * Everything is done with Node's fs (which accepts Buffer paths) plus standard tools
 * (`touch`, `setfattr`, `setcap`, `mknod`, `mkfifo`, `xargs`) for what Node cannot do exactly.
 * Paths that may not be valid UTF-8 are handed to those tools NUL-separated on stdin through
 * `xargs -0`, so no path ever has to pass through a JS string.
 *
 * Required tools: coreutils, findutils (xargs), attr (setfattr); libcap2-bin (setcap) is optional
 * (setfattr with the raw capability value is used without it).
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

export type TreeScale = 'small' | 'medium';

export interface TreeOptions {
  seed?: number;
  scale?: TreeScale;
}

/** What `makeTestTree` created. All paths are relative to `root` ('/'-separated). */
export interface TreeFacts {
  root: string;
  seed: number;
  scale: TreeScale;
  /** Created as root (devices, foreign owners and capabilities are only made then). */
  asRoot: boolean;
  /** Number of entries below root (root itself not counted), sockets included. */
  entries: number;
  /** Number of regular-file names (hard links counted once per name). */
  regularFiles: number;
  /**
   * Sum of the sizes of distinct regular files (hard links counted once), the sparse file
   * excepted (its apparent size is `sparseApparentSize`, of which only the chunks hold data).
   */
  totalBytes: number;
  hasDevices: boolean;
  /** Char and block devices: `{ path, type: 'c' | 'b', major, minor }`. */
  devices: { path: string; type: 'c' | 'b'; major: number; minor: number }[];
  fifoPaths: string[];
  /** Unix sockets left in the tree (the engine must skip them with a warning). */
  socketPaths: string[];
  /** Raw relative paths whose bytes are not valid UTF-8. */
  nonUtf8: Buffer[];
  /** Other awkward (but valid UTF-8) names: newline, space, backslash, quote, leading dash, ... */
  oddNames: string[];
  sparsePath: string;
  sparseApparentSize: number;
  /** Offsets of the data regions written into the sparse file, each `sparseChunk` bytes long. */
  sparseDataOffsets: number[];
  sparseChunk: number;
  /** Each group lists all names of one inode. */
  hardlinkGroups: string[][];
  /** Symlinks with their raw targets. */
  symlinks: { path: string; target: Buffer; kind: string }[];
  /** Entries with setuid/setgid/sticky or unusual permission bits: path → mode (octal number). */
  specialModes: Record<string, number>;
  emptyDirs: string[];
  /** Paths carrying user.* xattrs (values are binary). */
  xattrPaths: string[];
  /** Path of the file that carries `security.capability`, or null when not created. */
  capabilityPath: string | null;
  /** Entries chowned away from the creating user (root only): path → [uid, gid]. */
  chowned: Record<string, [number, number]>;
  /** Things that could not be created here, with the reason. */
  skipped: string[];
}

export interface MutationReport {
  modified: string[];
  added: string[];
  deleted: string[];
  renamed: { from: string; to: string }[];
  /** Entries whose metadata only (mode) changed. */
  metadataChanged: string[];
  /** Human-readable, one line per change. */
  summary: string;
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness

class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  /** mulberry32 */
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  int(n: number): number {
    return Math.floor((this.u32() / 0x100000000) * n);
  }
  pick<T>(a: readonly T[]): T {
    const v = a[this.int(a.length)];
    if (v === undefined) throw new Error('pick from empty array');
    return v;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE(this.u32(), i);
    for (; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

const WORDS = (
  'the system kernel module service daemon started stopped failed network interface address ' +
  'user session opened closed for by from with package install upgrade remove configure ' +
  'disk partition mount filesystem error warning info debug cpu memory swap process thread ' +
  'request response timeout retry connection established reset accepted rejected policy ' +
  'update image deploy target source block checksum verified apply capture snapshot volume'
).split(' ');
const HOSTS = ['alpha', 'bravo', 'charlie', 'delta', 'echo'];

/** Compressible, text-like data (log lines) of exactly `n` bytes. */
function textData(rng: Rng, n: number): Buffer {
  const parts: string[] = [];
  let len = 0;
  let t = 1_700_000_000 + rng.int(1_000_000);
  while (len < n) {
    t += rng.int(5);
    const words: string[] = [];
    const wc = 4 + rng.int(12);
    for (let i = 0; i < wc; i++) words.push(rng.pick(WORDS));
    const line =
      `${new Date(t * 1000).toISOString()} ${rng.pick(HOSTS)} ` +
      `${rng.pick(WORDS)}[${100 + rng.int(30000)}]: ${words.join(' ')}\n`;
    parts.push(line);
    len += line.length;
  }
  return Buffer.from(parts.join(''), 'latin1').subarray(0, n);
}

// ---------------------------------------------------------------------------------------------
// Helpers

type Rel = string | Buffer;

function relBuf(rel: Rel): Buffer {
  return typeof rel === 'string' ? Buffer.from(rel, 'utf8') : rel;
}

function absBuf(root: string, rel: Rel): Buffer {
  const r = relBuf(rel);
  if (r.length === 0) return Buffer.from(root, 'utf8');
  return Buffer.concat([Buffer.from(root + '/', 'utf8'), r]);
}

function isUtf8(b: Buffer): boolean {
  return Buffer.from(b.toString('utf8'), 'utf8').equals(b);
}

function run(cmd: string, args: string[], input?: Buffer): void {
  const r = spawnSync(cmd, args, { input, stdio: ['pipe', 'pipe', 'pipe'], env: cEnv() });
  if (r.error) throw r.error;
  if (r.status !== 0) {
    throw new Error(
      `${cmd} ${args.join(' ')} exited ${r.status ?? r.signal}: ${r.stderr.toString().trim()}`,
    );
  }
}

function cEnv(): NodeJS.ProcessEnv {
  return { ...process.env, LC_ALL: 'C' };
}

function hasTool(name: string): boolean {
  const r = spawnSync('sh', ['-c', 'command -v "$1"', 'sh', name], { stdio: 'ignore' });
  return r.status === 0;
}

/** Runs `cmd... PATHS` through `xargs -0` so raw (non-UTF-8) paths never become JS strings. */
function onPaths(cmd: string[], paths: Buffer[]): void {
  if (paths.length === 0) return;
  const input = Buffer.concat(paths.flatMap((p) => [p, Buffer.from([0])]));
  run('xargs', ['-0', '-r', ...cmd], input);
}

/** Sets atime and mtime (exact nanoseconds) without following symlinks, grouped per time. */
function setTimes(times: Map<string, Buffer[]>): void {
  for (const [t, paths] of times) onPaths(['touch', '-h', '-d', `@${t}`, '--'], paths);
}

function timeString(sec: number, nsec: number): string {
  return `${sec}.${String(nsec).padStart(9, '0')}`;
}

interface WalkEntry {
  rel: Buffer;
  st: fs.BigIntStats;
}

/** Depth-first walk in byte order (parents before children); root not included. */
function walk(root: string): WalkEntry[] {
  const out: WalkEntry[] = [];
  const visit = (rel: Buffer): void => {
    const names = fs.readdirSync(absBuf(root, rel), { encoding: 'buffer' });
    names.sort(Buffer.compare);
    for (const name of names) {
      const child = rel.length ? Buffer.concat([rel, Buffer.from('/'), name]) : name;
      const st = fs.lstatSync(absBuf(root, child), { bigint: true });
      out.push({ rel: child, st });
      if (st.isDirectory()) visit(child);
    }
  };
  visit(Buffer.alloc(0));
  return out;
}

async function makeSocket(root: string, rel: string): Promise<void> {
  // libuv unlinks a pipe server's path on close, so bind under a temporary name, rename the
  // socket inode to its final name and then close: the renamed socket file stays.
  const finalPath = path.join(root, rel);
  let bindPath = path.join(path.dirname(finalPath), '.sock-bind');
  if (Buffer.byteLength(bindPath) > 100) {
    bindPath = path.join(os.tmpdir(), `rs-${process.pid}-${Date.now() % 1e6}.sock`);
  }
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(bindPath, () => resolve());
  });
  try {
    fs.renameSync(bindPath, finalPath);
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    fs.rmSync(bindPath, { force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// makeTestTree

const KiB = 1024;
const MiB = 1024 * 1024;

/**
 * Creates the test tree in `root` (created if missing; it should be empty). Deterministic for a
 * given seed, scale and user (root or not): two trees made with the same options list
 * identically. 'small' (default): ~200 entries, ~7 MiB of data plus a 64 MiB sparse file;
 * 'medium': ~2000 more small files and ~40 MiB of data.
 */
export async function makeTestTree(root: string, opts: TreeOptions = {}): Promise<TreeFacts> {
  const seed = opts.seed ?? 1;
  const scale = opts.scale ?? 'small';
  const medium = scale === 'medium';
  const rng = new Rng(seed);
  const asRoot = process.getuid?.() === 0;
  root = path.resolve(root);
  fs.mkdirSync(root, { recursive: true });
  fs.chmodSync(root, 0o755);

  const facts: TreeFacts = {
    root,
    seed,
    scale,
    asRoot,
    entries: 0,
    regularFiles: 0,
    totalBytes: 0,
    hasDevices: false,
    devices: [],
    fifoPaths: [],
    socketPaths: [],
    nonUtf8: [],
    oddNames: [],
    sparsePath: '',
    sparseApparentSize: 0,
    sparseDataOffsets: [],
    sparseChunk: 0,
    hardlinkGroups: [],
    symlinks: [],
    specialModes: {},
    emptyDirs: [],
    xattrPaths: [],
    capabilityPath: null,
    chowned: {},
    skipped: [],
  };

  const A = (rel: Rel): Buffer => absBuf(root, rel);
  const dir = (rel: Rel, mode = 0o755): void => {
    fs.mkdirSync(A(rel), { recursive: true });
    modes.push([relBuf(rel), mode]);
  };
  const file = (rel: Rel, data: Buffer, mode = 0o644): void => {
    fs.writeFileSync(A(rel), data);
    modes.push([relBuf(rel), mode]);
  };
  const link = (rel: Rel, target: Rel, kind: string): void => {
    fs.symlinkSync(relBuf(target), A(rel));
    if (typeof rel === 'string') facts.symlinks.push({ path: rel, target: relBuf(target), kind });
  };
  // Modes are applied after ownership changes (chown clears setuid/setgid bits).
  const modes: [Buffer, number][] = [];
  const owners: [Buffer, number, number][] = [];
  const special = (rel: string, mode: number): void => {
    facts.specialModes[rel] = mode;
  };

  // --- directory skeleton (usr-merge style) ---
  for (const d of [
    'etc/ssl/certs',
    'usr/bin',
    'usr/sbin',
    'usr/lib/demo',
    'usr/share/doc/demo',
    'var/lib/demo',
    'var/log',
    'var/cache',
    'home/user/.config/app',
    'run',
    'srv',
  ]) {
    const parts = d.split('/');
    for (let i = 1; i <= parts.length; i++) dir(parts.slice(0, i).join('/'));
  }
  link('bin', 'usr/bin', 'relative-to-dir');
  link('sbin', 'usr/sbin', 'relative-to-dir');

  // Special directories.
  dir('tmp', 0o1777);
  special('tmp', 0o1777);
  dir('var/tmp', 0o1777);
  special('var/tmp', 0o1777);
  dir('root', 0o700);
  special('root', 0o700);
  dir('etc/ssl/private', 0o700);
  special('etc/ssl/private', 0o700);
  dir('srv/setgid-dir', 0o2775);
  special('srv/setgid-dir', 0o2775);
  dir('srv/all-bits', 0o7777);
  special('srv/all-bits', 0o7777);
  for (const [d, m] of [
    ['var/empty', 0o755],
    ['var/lib/private', 0o700],
    ['etc/empty.d', 0o755],
    ['usr/share/empty', 0o755],
    ['srv/a/b/c/d/e/deep-empty', 0o755],
  ] as const) {
    const parts = d.split('/');
    for (let i = 1; i < parts.length; i++) dir(parts.slice(0, i).join('/'));
    dir(d, m);
    facts.emptyDirs.push(d);
  }

  // --- regular files of many sizes ---
  dir('sizes');
  file('sizes/empty', Buffer.alloc(0));
  file('sizes/one', Buffer.from('x'));
  file('sizes/3k', textData(rng, 3 * KiB));
  file('sizes/4095', rng.bytes(4095));
  file('sizes/4096', rng.bytes(4096));
  file('sizes/4097', rng.bytes(4097));
  file('sizes/100k-random', rng.bytes(100 * KiB));
  file('sizes/100k-text', textData(rng, 100 * KiB + 17));
  file('sizes/zeros-1m', Buffer.alloc(MiB));
  file('usr/share/doc/demo/changelog', textData(rng, (medium ? 12 : 2) * MiB + 123));
  file('usr/share/doc/demo/README', textData(rng, 3 * KiB + 5));
  file('usr/lib/demo/blob.bin', rng.bytes((medium ? 12 : 2) * MiB + 321), 0o644);
  file('var/log/syslog', textData(rng, (medium ? 4 : 1) * MiB), 0o640);
  special('var/log/syslog', 0o640);
  file('etc/hostname', Buffer.from('reimage-test\n'));
  file('etc/os-release', Buffer.from('NAME="Demo"\nVERSION_ID="1"\n'));
  file('etc/passwd', textData(rng, 1500));
  file('etc/shadow', textData(rng, 900), 0o640);
  special('etc/shadow', 0o640);
  file('etc/ssl/private/key.pem', rng.bytes(1704), 0o600);
  special('etc/ssl/private/key.pem', 0o600);
  file('root/.bashrc', textData(rng, 3 * KiB), 0o600);
  special('root/.bashrc', 0o600);
  file('var/tmp/leftover', rng.bytes(10));

  // Executables with special bits.
  file('usr/bin/su', rng.bytes(40 * KiB), 0o4755);
  special('usr/bin/su', 0o4755);
  file('usr/bin/wall', rng.bytes(20 * KiB), 0o2755);
  special('usr/bin/wall', 0o2755);
  file('usr/bin/both', rng.bytes(5 * KiB), 0o6755);
  special('usr/bin/both', 0o6755);
  file('usr/bin/ping', rng.bytes(60 * KiB), 0o755);
  file('usr/bin/tool', rng.bytes(150 * KiB), 0o755);
  file('usr/sbin/daemon', rng.bytes(30 * KiB), 0o750);
  special('usr/sbin/daemon', 0o750);

  // Odd modes.
  dir('modes');
  // mode 0000 is unreadable for its (non-root) owner, so only root gets that file
  const oddModes = [0o600, 0o444, 0o640, 0o711, 0o1644, 0o4700, ...(asRoot ? [0o000] : [])];
  if (!asRoot) facts.skipped.push('modes/m0000 and modes/dir0311: unreadable when not root');
  for (const m of oddModes) {
    const rel = `modes/m${m.toString(8).padStart(4, '0')}`;
    file(rel, rng.bytes(64 + rng.int(512)), m);
    special(rel, m);
  }
  dir('modes/dir0555', 0o555);
  special('modes/dir0555', 0o555);
  if (asRoot) {
    // unreadable directory: a non-root user could not list (or delete) below it
    dir('modes/dir0311', 0o311);
    special('modes/dir0311', 0o311);
  }

  // --- libraries with symlink chains ---
  file('usr/lib/demo/libdemo.so.1.2.3', rng.bytes(100 * KiB + 7));
  link('usr/lib/demo/libdemo.so.1', 'libdemo.so.1.2.3', 'relative');
  link('usr/lib/demo/libdemo.so', 'libdemo.so.1', 'chain');

  // --- symlinks ---
  dir('links');
  link('links/relative', '../sizes/3k', 'relative');
  link('links/absolute', '/etc/hostname', 'absolute');
  link('links/abs-missing', '/nonexistent/really/not/here', 'absolute-dangling');
  link('links/dangling', '../no/such/file', 'dangling');
  link('links/to-dir', '../usr/share', 'to-directory');
  link('links/to-dir-slash', '../usr/share/', 'to-directory');
  link('links/self-loop', 'self-loop', 'loop');
  link('links/dot', '.', 'dot');
  link('links/long-target', 'x/'.repeat(200) + 'end', 'long');
  link('links/spaces', 'a target with spaces\nand newline', 'odd-target');
  const badTarget = Buffer.from([0x63, 0x61, 0x66, 0xff, 0xfe, 0x2f, 0x80]);
  link('links/non-utf8-target', badTarget, 'non-utf8-target');

  // --- hard links ---
  dir('hl/sub');
  file('hl/two-a', rng.bytes(2000));
  fs.linkSync(A('hl/two-a'), A('hl/sub/two-b'));
  facts.hardlinkGroups.push(['hl/two-a', 'hl/sub/two-b']);
  file('hl/three-1', textData(rng, 5000), 0o640);
  fs.linkSync(A('hl/three-1'), A('etc/three-2'));
  fs.linkSync(A('hl/three-1'), A('usr/share/doc/three-3'));
  facts.hardlinkGroups.push(['hl/three-1', 'etc/three-2', 'usr/share/doc/three-3']);
  special('hl/three-1', 0o640);
  file('hl/empty-a', Buffer.alloc(0));
  fs.linkSync(A('hl/empty-a'), A('hl/sub/empty-b'));
  facts.hardlinkGroups.push(['hl/empty-a', 'hl/sub/empty-b']);
  fs.linkSync(A('usr/bin/su'), A('usr/sbin/su-hardlink'));
  facts.hardlinkGroups.push(['usr/bin/su', 'usr/sbin/su-hardlink']);

  // --- awkward names ---
  dir('names');
  const odd = [
    'names/with space',
    'names/new\nline',
    'names/back\\slash',
    'names/quote"s\'',
    'names/-leading-dash',
    'names/tab\there',
    'names/café-ü-日本',
    'names/' + 'L'.repeat(255),
    'names/.hidden',
    'names/trailing space ',
    'names/star*?[x]',
  ];
  for (const n of odd) {
    file(n, Buffer.from(n + '\n'));
    facts.oddNames.push(n);
  }
  const nb = (s: string, bytes: number[], tail = ''): Buffer =>
    Buffer.concat([Buffer.from(s), Buffer.from(bytes), Buffer.from(tail)]);
  const badFile = nb('names/bad-', [0xff, 0xfe]);
  const badDir = nb('names/dir-', [0xfe, 0x80], '.d');
  const badInner = Buffer.concat([badDir, nb('/x', [0x80], 'y')]);
  const badInnerGood = Buffer.concat([badDir, Buffer.from('/inner')]);
  const badLink = nb('names/link-', [0xc3, 0x28]);
  const latin1 = nb('names/latin1-caf', [0xe9]);
  file(badFile, rng.bytes(333));
  dir(badDir);
  file(badInner, textData(rng, 1000));
  file(badInnerGood, Buffer.from('inside a non-UTF-8 directory\n'));
  fs.symlinkSync(badFile.subarray('names/'.length), A(badLink));
  file(latin1, Buffer.from('latin-1 name\n'));
  facts.nonUtf8.push(badFile, badDir, badInner, badInnerGood, badLink, latin1);
  // a hard link between two non-UTF-8 names (not listed in hardlinkGroups, which holds strings)
  fs.linkSync(A(badFile), A(nb('names/bad-link-', [0xff])));
  facts.nonUtf8.push(nb('names/bad-link-', [0xff]));

  // --- home directory with foreign owners ---
  file('home/user/.profile', textData(rng, 800));
  file('home/user/.config/app/settings.json', Buffer.from('{"a":1,"b":[true,null]}\n'), 0o600);
  dir('home/user/private', 0o700);
  file('home/user/private/notes', textData(rng, 2000), 0o600);
  file('srv/foreign', rng.bytes(123));
  link('srv/foreign-link', 'foreign', 'relative-foreign-owner');
  file('srv/setgid-dir/inherit', rng.bytes(50));

  // --- sparse file ---
  dir('var/lib/demo');
  const sparseRel = 'var/lib/demo/disk.img';
  const sparseSize = 64 * MiB;
  const chunk = 4 * KiB;
  const offsets = [0, 10 * MiB, sparseSize - chunk];
  {
    const fd = fs.openSync(A(sparseRel), 'w');
    try {
      fs.ftruncateSync(fd, sparseSize);
      for (const off of offsets) fs.writeSync(fd, rng.bytes(chunk), 0, chunk, off);
    } finally {
      fs.closeSync(fd);
    }
    modes.push([relBuf(sparseRel), 0o644]);
  }
  facts.sparsePath = sparseRel;
  facts.sparseApparentSize = sparseSize;
  facts.sparseDataOffsets = offsets;
  facts.sparseChunk = chunk;

  // --- bulk small files ---
  const bulkDirs = medium ? 40 : 4;
  const perDir = medium ? 50 : 15;
  for (let d = 0; d < bulkDirs; d++) {
    const bd = `usr/share/bulk/d${String(d).padStart(2, '0')}`;
    dir('usr/share/bulk');
    dir(bd);
    for (let f = 0; f < perDir; f++) {
      const size = rng.int(4) === 0 ? rng.int(64) : 200 + rng.int(4000);
      const data = rng.int(2) === 0 ? textData(rng, size) : rng.bytes(size);
      file(`${bd}/f${String(f).padStart(3, '0')}.dat`, data);
    }
  }
  if (medium) {
    // a few medium-size files in between
    for (let i = 0; i < 8; i++) {
      file(`usr/share/bulk/mid-${i}.bin`, rng.bytes(256 * KiB + rng.int(KiB)));
    }
  }

  // --- FIFO ---
  run('mkfifo', ['-m', '0620', '--', path.join(root, 'run/initctl')]);
  facts.fifoPaths.push('run/initctl');
  modes.push([relBuf('run/initctl'), 0o620]);

  // --- devices ---
  if (asRoot) {
    dir('dev');
    for (const d of [
      { path: 'dev/null', type: 'c' as const, major: 1, minor: 3, mode: 0o666 },
      { path: 'dev/loop200', type: 'b' as const, major: 7, minor: 200, mode: 0o660 },
    ]) {
      run('mknod', ['--', path.join(root, d.path), d.type, String(d.major), String(d.minor)]);
      modes.push([relBuf(d.path), d.mode]);
      facts.devices.push({ path: d.path, type: d.type, major: d.major, minor: d.minor });
    }
    facts.hasDevices = true;
  } else {
    facts.skipped.push('devices dev/null (c 1:3) and dev/loop200 (b 7:200): not running as root');
  }

  // --- Unix socket ---
  try {
    await makeSocket(root, 'run/control.sock');
    facts.socketPaths.push('run/control.sock');
  } catch (e) {
    facts.skipped.push(`socket run/control.sock: ${(e as Error).message}`);
  }

  // --- ownership (before modes: chown clears setuid/setgid) ---
  if (asRoot) {
    owners.push([relBuf('home/user'), 1000, 1000]);
    for (const e of walk(root)) {
      if (e.rel.toString('latin1').startsWith('home/user/')) owners.push([e.rel, 1000, 1000]);
    }
    owners.push(
      [relBuf('srv/foreign'), 1234, 5678],
      [relBuf('srv/foreign-link'), 1234, 5678],
      [relBuf('usr/bin/wall'), 0, 5],
      [relBuf('modes/m0000'), 1234, 5678], // mode 0000 and a foreign owner
      [relBuf('etc/shadow'), 0, 42],
      [relBuf('srv/setgid-dir'), 0, 5678],
      [badFile, 1000, 1000],
    );
    for (const [rel, uid, gid] of owners) {
      fs.lchownSync(A(rel), uid, gid);
      if (isUtf8(rel)) facts.chowned[rel.toString('utf8')] = [uid, gid];
    }
  } else {
    facts.skipped.push('foreign owners (lchown 1000:1000, 1234:5678): not running as root');
  }

  // --- modes (symlink modes are not settable on Linux) ---
  for (const [rel, mode] of modes) fs.chmodSync(A(rel), mode);

  // --- xattrs ---
  const xattr = (rel: Rel, name: string, value: Buffer): void => {
    onPaths(['setfattr', '-h', '-n', name, '-v', '0x' + value.toString('hex'), '--'], [A(rel)]);
  };
  const xattrFiles: [Rel, string, Buffer][] = [
    ['sizes/3k', 'user.binary', Buffer.from([0x00, 0xff, 0x10, 0x0a, 0x00, 0x80])],
    ['sizes/3k', 'user.empty', Buffer.alloc(0)],
    ['sizes/3k', 'user.text', Buffer.from('hello world')],
    ['sizes/empty', 'user.big', rng.bytes(1500)],
    ['usr/share/doc/demo', 'user.dir-attr', Buffer.from([1, 2, 3, 0, 255])],
    ['tmp', 'user.sticky-dir', Buffer.from('t')],
    ['hl/three-1', 'user.hardlinked', Buffer.from('shared by 3 names')],
    ['usr/bin/su', 'user.setuid', Buffer.from([0xde, 0xad, 0xbe, 0xef])],
    [badFile, 'user.non-utf8-path', Buffer.from([0xff])],
    [badDir, 'user.non-utf8-dir', Buffer.from('d')],
    ['names/new\nline', 'user.newline-name', Buffer.from('n')],
    ['var/empty', 'user.empty-dir', Buffer.from('e')],
  ];
  try {
    for (const [rel, name, value] of xattrFiles) {
      xattr(rel, name, value);
      if (typeof rel === 'string' && !facts.xattrPaths.includes(rel)) facts.xattrPaths.push(rel);
    }
  } catch (e) {
    facts.skipped.push(`user xattrs: ${(e as Error).message}`);
  }
  if (asRoot) {
    const capRel = 'usr/bin/ping';
    try {
      if (hasTool('setcap')) {
        run('setcap', ['cap_net_raw+ep', path.join(root, capRel)]);
      } else {
        // VFS_CAP_REVISION_2, effective, permitted = CAP_NET_RAW (bit 13)
        xattr(
          capRel,
          'security.capability',
          Buffer.from('0100000200200000' + '0'.repeat(24), 'hex'),
        );
      }
      facts.capabilityPath = capRel;
    } catch (e) {
      facts.skipped.push(`security.capability: ${(e as Error).message}`);
    }
  } else {
    facts.skipped.push('security.capability: not running as root');
  }

  // --- times: every entry (root included) gets an exact, deterministic ns mtime ---
  const all = walk(root);
  const times = new Map<string, Buffer[]>();
  const addTime = (t: string, rel: Buffer): void => {
    const list = times.get(t) ?? [];
    list.push(A(rel));
    times.set(t, list);
  };
  const base = 1_600_000_000 + rng.int(50_000_000);
  const bulkTime = new Map<string, string>();
  for (let i = 0; i < all.length; i++) {
    const e = all[i];
    if (!e) continue;
    const relStr = e.rel.toString('latin1');
    let t: string;
    if (relStr === 'sizes/one')
      t = timeString(base, 0); // whole second
    else if (relStr === 'sizes/4095')
      t = timeString(base + 1, 1); // 1 ns
    else if (relStr === 'sizes/4096') t = timeString(base + 2, 999_999_999);
    else if (relStr === 'sizes/4097')
      t = timeString(4_102_444_800, 500_000_000); // year 2100
    else if (relStr === 'sizes/empty')
      t = timeString(1, 123_456_789); // 1970
    else if (relStr.startsWith('usr/share/bulk/d') && relStr.split('/').length === 5) {
      // share times per bulk directory to keep the number of `touch` runs low
      const key = relStr.split('/').slice(0, 4).join('/');
      t = bulkTime.get(key) ?? timeString(base + 7 * i, 1 + rng.int(999_999_999));
      bulkTime.set(key, t);
    } else t = timeString(base + 3601 * i + rng.int(3600), 1 + rng.int(999_999_999));
    addTime(t, e.rel);
  }
  addTime(timeString(base - 86_400, 424_242_424), Buffer.alloc(0));
  setTimes(times);

  // --- facts ---
  const seenInodes = new Set<bigint>();
  for (const e of all) {
    if (e.st.isFile()) {
      facts.regularFiles++;
      if (!seenInodes.has(e.st.ino) && e.rel.toString('latin1') !== sparseRel) {
        seenInodes.add(e.st.ino);
        facts.totalBytes += Number(e.st.size);
      }
    }
  }
  facts.entries = all.length;
  return facts;
}

// ---------------------------------------------------------------------------------------------
// mutateTree

/**
 * Changes a tree made by `makeTestTree` into a "similar second version": a few files modified
 * (append, rewrite of a middle region, full rewrite), new files and a new directory added, some
 * files deleted (incl. one name of a hard-link group), one file renamed, one chmod. Changed
 * entries and their parent directories get new deterministic ns mtimes. Works on any tree (it
 * picks among what it finds), deterministic for a given tree and seed.
 */
export async function mutateTree(root: string, seed: number): Promise<MutationReport> {
  root = path.resolve(root);
  const rng = new Rng(seed ^ 0x5eed5eed);
  const A = (rel: Rel): Buffer => absBuf(root, rel);
  const report: MutationReport = {
    modified: [],
    added: [],
    deleted: [],
    renamed: [],
    metadataChanged: [],
    summary: '',
  };
  const lines: string[] = [];
  const touched = new Set<string>();
  const touch = (rel: string): void => {
    touched.add(rel);
    const parent = path.posix.dirname(rel);
    touched.add(parent === '.' ? '' : parent);
  };

  const entries = walk(root);
  const files = entries
    .filter((e) => e.st.isFile() && isUtf8(e.rel) && e.st.nlink === 1n && e.st.size > 0n)
    .filter((e) => (Number(e.st.mode) & 0o200) !== 0)
    .map((e) => ({ rel: e.rel.toString('utf8'), size: Number(e.st.size) }))
    .filter((f) => !f.rel.startsWith('var/lib/demo/disk.img'));
  if (files.length < 8) throw new Error(`mutateTree: too few regular files under ${root}`);
  const take = (pred: (f: { rel: string; size: number }) => boolean): string => {
    const cands = files.filter(pred);
    const chosen = rng.pick(cands.length ? cands : files);
    files.splice(files.indexOf(chosen), 1);
    return chosen.rel;
  };

  // 1. rewrite a middle region of the largest file (same size)
  {
    const largest = files.reduce((a, b) => (b.size > a.size ? b : a));
    files.splice(files.indexOf(largest), 1);
    const len = Math.min(64 * KiB, Math.max(1, Math.floor(largest.size / 4)));
    const off = Math.floor((largest.size - len) / 2);
    const fd = fs.openSync(A(largest.rel), 'r+');
    try {
      fs.writeSync(fd, rng.bytes(len), 0, len, off);
    } finally {
      fs.closeSync(fd);
    }
    report.modified.push(largest.rel);
    lines.push(`modified ${largest.rel}: rewrote ${len} bytes at offset ${off}`);
    touch(largest.rel);
  }
  // 2. append to a text-ish file
  {
    const rel = take((f) => f.size > 1000 && f.size < 4 * MiB);
    const add = textData(rng, 1000 + rng.int(5000));
    fs.appendFileSync(A(rel), add);
    report.modified.push(rel);
    lines.push(`modified ${rel}: appended ${add.length} bytes`);
    touch(rel);
  }
  // 3. rewrite a small file completely with a different size
  {
    const rel = take((f) => f.size < 8 * KiB);
    const data = rng.bytes(50 + rng.int(3000));
    fs.writeFileSync(A(rel), data);
    report.modified.push(rel);
    lines.push(`modified ${rel}: rewritten (${data.length} bytes)`);
    touch(rel);
  }
  // 4. sparse file: change one data region in place, if present
  if (fs.existsSync(A('var/lib/demo/disk.img'))) {
    const fd = fs.openSync(A('var/lib/demo/disk.img'), 'r+');
    try {
      fs.writeSync(fd, rng.bytes(4096), 0, 4096, 10 * MiB);
    } finally {
      fs.closeSync(fd);
    }
    report.modified.push('var/lib/demo/disk.img');
    lines.push('modified var/lib/demo/disk.img: rewrote 4096 bytes at 10 MiB');
    touch('var/lib/demo/disk.img');
  }
  // 5. delete two files
  for (let i = 0; i < 2; i++) {
    const rel = take(() => true);
    fs.rmSync(A(rel));
    report.deleted.push(rel);
    lines.push(`deleted ${rel}`);
    touch(rel);
  }
  // 6. delete one name of a 3-name hard-link group, if present
  if (fs.existsSync(A('etc/three-2'))) {
    fs.rmSync(A('etc/three-2'));
    report.deleted.push('etc/three-2');
    lines.push('deleted etc/three-2 (one name of a hard-link group)');
    touch('etc/three-2');
  }
  // 7. rename one file into another directory
  {
    const from = take(() => true);
    const to = `srv/renamed-${seed}-${path.posix.basename(from).slice(0, 100)}`;
    fs.mkdirSync(A('srv'), { recursive: true });
    fs.renameSync(A(from), A(to));
    report.renamed.push({ from, to });
    lines.push(`renamed ${from} -> ${to} (content and mtime kept)`);
    touch(from);
    touch(to);
    touched.delete(to); // a rename keeps the file's own mtime; only the parents change
  }
  // 8. chmod one file
  {
    const rel = take(() => true);
    const st = fs.lstatSync(A(rel));
    const mode = (st.mode & 0o7777) === 0o640 ? 0o600 : 0o640;
    fs.chmodSync(A(rel), mode);
    report.metadataChanged.push(rel);
    lines.push(`chmod ${rel} ${mode.toString(8)}`);
    touched.add(rel);
  }
  // 9. add files: some in existing directories, a new directory, a symlink
  {
    const dirs = entries
      .filter((e) => e.st.isDirectory() && isUtf8(e.rel))
      .filter((e) => (Number(e.st.mode) & 0o200) !== 0)
      .map((e) => e.rel.toString('utf8'));
    for (let i = 0; i < 3; i++) {
      const d = rng.pick(dirs);
      const rel = `${d}/added-${seed}-${i}.txt`;
      fs.writeFileSync(A(rel), textData(rng, 100 + rng.int(20 * KiB)));
      report.added.push(rel);
      lines.push(`added ${rel}`);
      touch(rel);
    }
    const nd = `srv/new-dir-${seed}`;
    fs.mkdirSync(A(nd), { recursive: true });
    report.added.push(nd);
    touch(nd);
    for (let i = 0; i < 2; i++) {
      const rel = `${nd}/new-${i}.bin`;
      fs.writeFileSync(A(rel), rng.bytes(10 + rng.int(200 * KiB)));
      report.added.push(rel);
      touch(rel);
    }
    fs.symlinkSync(`new-0.bin`, A(`${nd}/link-to-new`));
    report.added.push(`${nd}/link-to-new`);
    touch(`${nd}/link-to-new`);
    lines.push(`added directory ${nd} with 2 files and a symlink`);
  }

  // New deterministic ns times for everything touched that still exists.
  const times = new Map<string, Buffer[]>();
  const base = 1_750_000_000 + rng.int(1_000_000);
  for (const rel of [...touched].sort()) {
    if (!fs.existsSync(A(rel)) && !isSymlink(A(rel))) continue;
    const t = timeString(base + rng.int(100_000), 1 + rng.int(999_999_999));
    times.set(t, [...(times.get(t) ?? []), A(rel)]);
  }
  setTimes(times);

  report.summary = lines.join('\n');
  return report;
}

function isSymlink(p: Buffer): boolean {
  try {
    return fs.lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}
