/**
 * The lab's machine trees: the disk of a realistic Debian machine (OS tree, users with lived-in
 * home folders, data outside /home, machine and client state, planted secrets), written under a
 * folder so that state-migration and agent tests have something real to capture, wipe and
 * restore. See docs/lab-trees.md.
 *
 * Everything is deterministic for a seed: names and decisions come from a small PRNG, bulk
 * bytes from AES-256-CTR keyed by the seed, mtimes are set explicitly at the end. Only node:fs
 * and node:crypto are used, so a tree of the default size takes a fraction of a second.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import type { GroupAccount, MachineState, UserAccount } from '../migrate/model.js';

export type MachineTreeScale = 'small' | 'default';

export interface MachineTreeOptions {
  /** Default 1. */
  seed?: number;
  /** Regular users (uid 1000 and up). Default 3. */
  users?: number;
  /** Debian's VERSION_ID. Default "12". */
  osVersion?: string;
  /** Default: a generated name such as "lt-eng-431". */
  hostname?: string;
  /** 'small' ≈ 400 files / 5 MB for unit tests; 'default' ≈ 2000 files / 45 MB (default). */
  scale?: MachineTreeScale;
}

/** What a file is, for tests that check a rule set's selection. Each file has at most one. */
export type MachineFileCategory =
  | 'documents'
  | 'pictures'
  | 'music'
  | 'videos'
  | 'downloads'
  | 'partial-downloads'
  | 'desktop-entries'
  | 'shell-settings'
  | 'desktop-settings'
  | 'firefox'
  | 'chromium'
  | 'ssh-keys'
  | 'gpg-keys'
  | 'share-settings'
  | 'keyrings'
  | 'cache'
  | 'trash'
  | 'machine-state'
  | 'client-state'
  | 'accounts'
  | 'logs'
  | 'web-site'
  | 'app-data'
  | 'database'
  | 'shared-projects';

/** The machine's network as its files configure it (the wired interface). */
export type MachineNetwork = NonNullable<MachineState['network']> & {
  /** Which files hold it. */
  source: 'networkmanager' | 'ifupdown' | 'netplan';
  /** The files that hold it, relative to root. */
  files: string[];
};

export interface MachineTreeFacts {
  root: string;
  seed: number;
  scale: MachineTreeScale;
  hostname: string;
  /** DNS domain; the Kerberos realm is its upper case. */
  domain: string;
  osVersion: string;
  /** Every account of /etc/passwd in file order (root, system users, regular users) with its shadow fields. */
  users: UserAccount[];
  /** Every group of /etc/group in file order; `members` are the supplementary members. */
  groups: GroupAccount[];
  /**
   * Regular users (uid ≥ 1000) → every regular file in their home folder, relative to root
   * ("home/alice/Documents/Budget 2023.odt"), sorted. Caches and partial downloads included.
   */
  userFiles: Record<string, string[]>;
  /** Regular files of the data outside /home (/srv, /opt/app/data, /var/lib/postgresql, /data), sorted. */
  outsideHome: string[];
  /** Regular files that are neither in a home folder under /home nor in `outsideHome` (/root counts as OS). */
  osFiles: number;
  /** Regular files in the whole tree, and their bytes. */
  totalFiles: number;
  totalBytes: number;
  /** The generator ran as root, so the entries carry their owners (else see `owners`). */
  asRoot: boolean;
  /** Intended owner [uid, gid] of every entry not owned by root:root, as root makes them (the tree itself when `asRoot`). */
  owners: Record<string, [number, number]>;
  /** Every symlink → its target, as written (absolute targets mean the machine's /, not the host's). */
  symlinks: Record<string, string>;
  /** Files by what they are (not every file has a category). */
  categories: Record<MachineFileCategory, string[]>;
  /**
   * Every secret value planted (Wi-Fi psk, sssd bind password, CIFS password, shadow hashes,
   * the client credential, a line of each private key) so that tests can scan logs for them.
   */
  secrets: string[];
  /** Machine state as the files say it (what answer files should carry). */
  machineState: MachineState & { computerName: string; domain: string; network: MachineNetwork };
  machineId: string;
  /** The Wi-Fi connection (NetworkManager, with a psk). */
  wifi: { ssid: string; psk: string; file: string };
  /** The CIFS share one user mounts through /etc/fstab with a credentials file in the home folder. */
  cifs: { user: string; share: string; mountPoint: string; credentialsFile: string };
  /** The reimage client's state in /etc/reimage. */
  client: {
    guid: string;
    server: string;
    fingerprint: string;
    site: string;
    distributionPoint: string;
    credential: string;
    files: string[];
  };
}

export interface NewOsTreeOptions {
  seed?: number;
  /** Debian's VERSION_ID of the new OS. Default "13". */
  osVersion?: string;
  /**
   * Homes the new image also ships files in (`~/.bashrc`, `~/.config/user-dirs.dirs`), as an
   * image made with those users would: conflicts for restore. This is the one way the new OS
   * touches /home; by default it does not.
   */
  homes?: Pick<UserAccount, 'name' | 'uid' | 'gid' | 'home'>[];
}

const KiB = 1024;
const MiB = 1024 * KiB;
const DAY = 86_400;
const DOMAIN = 'corp.example.com';
const REALM = DOMAIN.toUpperCase();
const FILESERVER = `files.${DOMAIN}`;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness

class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 0x9e3779b9;
  }
  /** mulberry32 */
  u32(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  /** 0 ≤ n < max */
  int(max: number): number {
    return Math.floor((this.u32() / 0x100000000) * max);
  }
  /** min ≤ n ≤ max */
  range(min: number, max: number): number {
    return min + this.int(max - min + 1);
  }
  chance(p: number): boolean {
    return this.u32() / 0x100000000 < p;
  }
  pick<T>(a: readonly T[]): T {
    const v = a[this.int(a.length)];
    if (v === undefined) throw new Error('pick from an empty list');
    return v;
  }
  shuffle<T>(a: readonly T[]): T[] {
    const out = [...a];
    for (let i = out.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const x = out[i] as T;
      out[i] = out[j] as T;
      out[j] = x;
    }
    return out;
  }
  /**
   * Log-uniform size: many small files, a few big ones, as on real disks. A `skew` above 1
   * makes big files rarer still (keeps the tree's size down without capping the range).
   */
  size(min: number, max: number, skew = 1): number {
    return Math.round(min * Math.pow(max / min, Math.pow(this.u32() / 0x100000000, skew)));
  }
  chars(n: number, alphabet: string): string {
    let s = '';
    for (let i = 0; i < n; i++) s += alphabet[this.int(alphabet.length)];
    return s;
  }
  hex(n: number): string {
    return this.chars(n, '0123456789abcdef');
  }
  uuid(): string {
    const h = this.hex(32);
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20)}`;
  }
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const CRYPT64 = './0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** Bulk pseudo-random bytes: AES-256-CTR over zeros, keyed by the seed (fast and reproducible). */
class Bytes {
  static readonly #zeros = Buffer.alloc(MiB);
  #cipher: crypto.Cipher;
  constructor(seed: number, label: string) {
    const key = crypto.createHash('sha256').update(`reimage-lab/${label}/${seed}`).digest();
    this.#cipher = crypto.createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  }
  take(n: number): Buffer {
    const parts: Buffer[] = [];
    for (let left = n; left > 0; left -= MiB) {
      parts.push(this.#cipher.update(Bytes.#zeros.subarray(0, Math.min(left, MiB))));
    }
    return Buffer.concat(parts, n);
  }
}

const WORDS = (
  'the of and to in is was for on with as by at from that this which project team budget ' +
  'meeting report quarter plan review customer contract invoice delivery schedule office ' +
  'network server backup policy update release version draft final notes summary action ' +
  'item owner deadline cost estimate revenue growth risk issue resolved pending approved ' +
  'analysis results data table figure section appendix reference travel expense inventory'
).split(' ');

/** ASCII prose of exactly `n` bytes. */
function prose(rng: Rng, n: number): Buffer {
  const parts: string[] = [];
  let len = 0;
  while (len < n) {
    const wc = 6 + rng.int(14);
    const words: string[] = [];
    for (let i = 0; i < wc; i++) words.push(rng.pick(WORDS));
    const first = words[0] ?? 'the';
    words[0] = first.charAt(0).toUpperCase() + first.slice(1);
    const s = words.join(' ') + (rng.chance(0.15) ? '.\n\n' : '. ');
    parts.push(s);
    len += s.length;
  }
  return Buffer.from(parts.join(''), 'latin1').subarray(0, n);
}

// ---------------------------------------------------------------------------------------------
// File formats: real magic bytes and headers around seeded random content

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(b: Buffer): number {
  let c = 0xffffffff;
  for (const x of b) c = (CRC_TABLE[(c ^ x) & 0xff] ?? 0) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

const cat = (...parts: (Buffer | string)[]): Buffer =>
  Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : p)));

/** Pads `head` + random + `tail` to exactly `size` bytes (at least head + tail). */
function framed(b: Bytes, size: number, head: Buffer | string, tail: Buffer | string = ''): Buffer {
  const h = typeof head === 'string' ? Buffer.from(head, 'latin1') : head;
  const t = typeof tail === 'string' ? Buffer.from(tail, 'latin1') : tail;
  return cat(h, b.take(Math.max(0, size - h.length - t.length)), t);
}

/** A ZIP (OpenDocument / Office Open XML) whose first entry is stored, the rest "deflated". */
function zipDoc(b: Bytes, size: number, first: string, firstData: string): Buffer {
  const name = Buffer.from(first, 'latin1');
  const data = Buffer.from(firstData, 'latin1');
  const h = Buffer.alloc(30);
  h.writeUInt32LE(0x04034b50, 0);
  h.writeUInt16LE(20, 4);
  h.writeUInt32LE(crc32(data), 14);
  h.writeUInt32LE(data.length, 18);
  h.writeUInt32LE(data.length, 22);
  h.writeUInt16LE(name.length, 26);
  const next = Buffer.alloc(30);
  next.writeUInt32LE(0x04034b50, 0);
  next.writeUInt16LE(20, 4);
  next.writeUInt16LE(8, 8); // deflate
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  return framed(b, size, cat(h, name, data, next), eocd);
}

const ODF_MIME: Record<string, string> = {
  odt: 'application/vnd.oasis.opendocument.text',
  ods: 'application/vnd.oasis.opendocument.spreadsheet',
  odp: 'application/vnd.oasis.opendocument.presentation',
};

function pngHeader(w: number, h: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 6, 0, 0, 0], 8);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(13);
  const type = Buffer.from('IHDR');
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(cat(type, ihdr)));
  return cat(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), len, type, ihdr, crc);
}

const PNG_IEND = Buffer.from([0, 0, 0, 0, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82]);
const JPEG_HEAD = Buffer.from([
  0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x48,
  0x00, 0x48, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00,
]);

/** Content of `size` bytes that looks like a file of type `ext` (by magic bytes and framing). */
function typedContent(rng: Rng, b: Bytes, ext: string, size: number): Buffer {
  switch (ext.toLowerCase()) {
    case 'odt':
    case 'ods':
    case 'odp':
      return zipDoc(b, size, 'mimetype', ODF_MIME[ext.toLowerCase()] ?? '');
    case 'docx':
    case 'xlsx':
    case 'pptx':
      return zipDoc(
        b,
        size,
        '[Content_Types].xml',
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>',
      );
    case 'pdf':
      return framed(
        b,
        size,
        '%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n' +
          '3 0 obj\n<< /Length 4 0 R /Filter /FlateDecode >>\nstream\n',
        '\nendstream\nendobj\nxref\n0 5\n0000000000 65535 f \ntrailer\n<< /Size 5 /Root 1 0 R >>\nstartxref\n116\n%%EOF\n',
      );
    case 'txt':
    case 'md':
      return prose(rng, size);
    case 'csv': {
      const rows = ['date,item,amount,owner'];
      let len = rows[0]?.length ?? 0;
      while (len < size) {
        const r = `2023-${String(rng.range(1, 12)).padStart(2, '0')}-${String(rng.range(1, 28)).padStart(2, '0')},${rng.pick(WORDS)},${rng.int(100000) / 100},${rng.pick(WORDS)}`;
        rows.push(r);
        len += r.length + 1;
      }
      return Buffer.from(rows.join('\n') + '\n').subarray(0, size);
    }
    case 'jpg':
    case 'jpeg':
      return framed(b, size, JPEG_HEAD, Buffer.from([0xff, 0xd9]));
    case 'png':
      return framed(
        b,
        size,
        cat(
          pngHeader(rng.range(64, 4000), rng.range(64, 3000)),
          Buffer.from([0, 0, 0x20, 0, 0x49, 0x44, 0x41, 0x54]),
        ),
        PNG_IEND,
      );
    case 'mp3':
      return framed(b, size, Buffer.from([0x49, 0x44, 0x33, 3, 0, 0, 0, 0, 0x10, 0, 0xff, 0xfb]));
    case 'ogg':
      return framed(b, size, 'OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00');
    case 'flac':
      return framed(b, size, 'fLaC\x00\x00\x00\x22');
    case 'mp4':
      return framed(b, size, '\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom');
    case 'webm':
      return framed(b, size, Buffer.from([0x1a, 0x45, 0xdf, 0xa3, 0x9f, 0x42, 0x86, 0x81, 0x01]));
    case 'iso':
      return cat(
        Buffer.alloc(0x8000),
        framed(b, Math.max(size - 0x8000, 2048), '\x01CD001\x01\x00LINUX'),
      );
    case 'deb':
      return framed(
        b,
        size,
        '!<arch>\ndebian-binary   1700000000  0     0     100644  4         `\n2.0\n' +
          'control.tar.xz  1700000000  0     0     100644  1200      `\n\xfd7zXZ\x00',
      );
    case 'sqlite':
    case 'db': {
      const h = Buffer.alloc(100);
      h.write('SQLite format 3\x00', 0, 'latin1');
      h.writeUInt16BE(4096, 16);
      h.set([1, 1, 0, 64, 32, 32], 18);
      h.writeUInt32BE(Math.max(1, Math.ceil(size / 4096)), 28);
      return framed(b, Math.max(4096, Math.ceil(size / 4096) * 4096), h);
    }
    case 'gz':
      return framed(b, size, Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3]));
    case 'elf':
      return framed(
        b,
        size,
        cat(
          Buffer.from([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0]),
          Buffer.alloc(8),
          Buffer.from([3, 0, 0x3e, 0, 1, 0, 0, 0]),
        ),
      );
    default:
      return b.take(size);
  }
}

// ---------------------------------------------------------------------------------------------
// The writer: creates entries and remembers owner, mode and mtime, applied at the end

interface Entry {
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  /** Bytes, for files. */
  size?: number;
  /** A folder that existed before (makeNewOsTree): its owner and mode are left alone. */
  existing?: boolean;
}

interface WriteOptions {
  mode?: number;
  owner?: readonly [number, number];
  mtime?: number;
  category?: MachineFileCategory;
}

class TreeWriter {
  readonly entries = new Map<string, Entry>();
  readonly categories = new Map<string, MachineFileCategory>();
  /** The current period of mtimes handed out: [from, to) in seconds. */
  #era: [number, number] = [0, 1];

  constructor(
    readonly root: string,
    readonly rng: Rng,
    readonly bytes: Bytes,
  ) {
    fs.mkdirSync(root, { recursive: true });
    this.entries.set('', { type: 'dir', mode: 0o755, uid: 0, gid: 0, mtime: 0 });
  }

  era(from: number, to: number): void {
    this.#era = [from, Math.max(from + 1, to)];
  }

  #time(t: number | undefined): number {
    return t ?? this.#era[0] + this.rng.int(this.#era[1] - this.#era[0]);
  }

  abs(rel: string): string {
    return rel === '' ? this.root : path.join(this.root, rel);
  }

  #parent(rel: string): Entry {
    const parent = path.posix.dirname(rel);
    return this.ensureDir(parent === '.' ? '' : parent);
  }

  /** The folder entry, created (owned like its parent, 0755) if missing. */
  ensureDir(rel: string): Entry {
    const known = this.entries.get(rel);
    if (known) return known;
    const parent = this.#parent(rel);
    let e: Entry;
    try {
      fs.mkdirSync(this.abs(rel));
      e = {
        type: 'dir',
        mode: 0o755,
        uid: parent.uid,
        gid: parent.gid,
        mtime: this.#time(undefined),
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const st = fs.lstatSync(this.abs(rel));
      if (!st.isDirectory()) throw new Error(`${rel} exists and is not a folder`, { cause: err });
      e = {
        type: 'dir',
        mode: st.mode & 0o7777,
        uid: st.uid,
        gid: st.gid,
        mtime: 0,
        existing: true,
      };
    }
    this.entries.set(rel, e);
    return e;
  }

  dir(rel: string, o: WriteOptions = {}): void {
    const e = this.ensureDir(rel);
    const parent = rel === '' ? e : this.#parent(rel);
    e.existing = false;
    e.mode = o.mode ?? 0o755;
    [e.uid, e.gid] = o.owner ?? [parent.uid, parent.gid];
    e.mtime = this.#time(o.mtime);
  }

  file(rel: string, data: Buffer | string, o: WriteOptions = {}): void {
    const parent = this.#parent(rel);
    fs.writeFileSync(this.abs(rel), data);
    const [uid, gid] = o.owner ?? [parent.uid, parent.gid];
    this.entries.set(rel, {
      type: 'file',
      mode: o.mode ?? 0o644,
      uid,
      gid,
      mtime: this.#time(o.mtime),
      size: typeof data === 'string' ? Buffer.byteLength(data) : data.length,
    });
    if (o.category) this.categories.set(rel, o.category);
  }

  symlink(rel: string, target: string, o: WriteOptions = {}): void {
    const parent = this.#parent(rel);
    fs.rmSync(this.abs(rel), { force: true });
    fs.symlinkSync(target, this.abs(rel));
    const [uid, gid] = o.owner ?? [parent.uid, parent.gid];
    this.entries.set(rel, { type: 'symlink', mode: 0o777, uid, gid, mtime: this.#time(o.mtime) });
  }

  /** A file of type `ext` (magic bytes) and `size` bytes. */
  typed(rel: string, size: number, o: WriteOptions = {}): void {
    const ext = path.posix.extname(rel).slice(1);
    this.file(rel, typedContent(this.rng, this.bytes, ext, size), o);
  }

  /** Applies owners (when root), modes and mtimes; a folder's mtime is its newest entry's. */
  finish(asRoot: boolean): void {
    const rels = [...this.entries.keys()].sort((a, b) => depth(b) - depth(a) || (a < b ? -1 : 1));
    for (const rel of rels) {
      const e = this.entries.get(rel);
      if (!e || rel === '') continue;
      const parent = this.entries.get(
        path.posix.dirname(rel) === '.' ? '' : path.posix.dirname(rel),
      );
      if (parent && parent.type === 'dir') parent.mtime = Math.max(parent.mtime, e.mtime);
    }
    for (const rel of rels) {
      const e = this.entries.get(rel);
      if (!e) continue;
      const abs = this.abs(rel);
      if (!e.existing) {
        if (asRoot) fs.lchownSync(abs, e.uid, e.gid);
        if (e.type !== 'symlink') fs.chmodSync(abs, e.mode);
      }
      fs.lutimesSync(abs, e.mtime, e.mtime);
    }
  }
}

const depth = (rel: string): number => (rel === '' ? 0 : rel.split('/').length);

// ---------------------------------------------------------------------------------------------
// Accounts

const FIRST_NAMES = [
  ['alice', 'Alice Martin'],
  ['bob', 'Bob Schneider'],
  ['carol', 'Carol Nguyen'],
  ['dave', 'Dave Kowalski'],
  ['erin', 'Erin O’Brien'],
  ['frank', 'Frank Moreau'],
  ['grace', 'Grace Okafor'],
  ['heidi', 'Heidi Müller'],
  ['ivan', 'Ivan Petrov'],
  ['judy', 'Judy García'],
  ['mallory', 'Mallory Chen'],
  ['oscar', 'Oscar Lindqvist'],
  ['peggy', 'Peggy Rossi'],
  ['trent', 'Trent Walker'],
  ['zoe', 'Zoë Dubois'],
] as const;

interface SystemAccount {
  name: string;
  uid: number;
  gid: number;
  gecos: string;
  home: string;
  shell: string;
}

const NOLOGIN = '/usr/sbin/nologin';
const SYSTEM_USERS: SystemAccount[] = [
  { name: 'daemon', uid: 1, gid: 1, gecos: 'daemon', home: '/usr/sbin', shell: NOLOGIN },
  { name: 'bin', uid: 2, gid: 2, gecos: 'bin', home: '/bin', shell: NOLOGIN },
  { name: 'sys', uid: 3, gid: 3, gecos: 'sys', home: '/dev', shell: NOLOGIN },
  { name: 'sync', uid: 4, gid: 65534, gecos: 'sync', home: '/bin', shell: '/bin/sync' },
  { name: 'man', uid: 6, gid: 12, gecos: 'man', home: '/var/cache/man', shell: NOLOGIN },
  { name: 'mail', uid: 8, gid: 8, gecos: 'mail', home: '/var/mail', shell: NOLOGIN },
  { name: 'www-data', uid: 33, gid: 33, gecos: 'www-data', home: '/var/www', shell: NOLOGIN },
  { name: 'backup', uid: 34, gid: 34, gecos: 'backup', home: '/var/backups', shell: NOLOGIN },
  { name: '_apt', uid: 42, gid: 65534, gecos: '', home: '/nonexistent', shell: NOLOGIN },
  { name: 'nobody', uid: 65534, gid: 65534, gecos: 'nobody', home: '/nonexistent', shell: NOLOGIN },
  { name: 'messagebus', uid: 100, gid: 107, gecos: '', home: '/nonexistent', shell: NOLOGIN },
  { name: 'sshd', uid: 101, gid: 65534, gecos: '', home: '/run/sshd', shell: NOLOGIN },
  {
    name: 'sssd',
    uid: 102,
    gid: 108,
    gecos: 'SSSD system user',
    home: '/var/lib/sss',
    shell: NOLOGIN,
  },
  {
    name: 'postgres',
    uid: 105,
    gid: 110,
    gecos: 'PostgreSQL administrator,,,',
    home: '/var/lib/postgresql',
    shell: '/bin/bash',
  },
  {
    name: 'app',
    uid: 998,
    gid: 998,
    gecos: 'Line-of-business app',
    home: '/opt/app',
    shell: NOLOGIN,
  },
];

const SYSTEM_GROUPS: [string, number][] = [
  ['root', 0],
  ['daemon', 1],
  ['bin', 2],
  ['sys', 3],
  ['adm', 4],
  ['tty', 5],
  ['disk', 6],
  ['lp', 7],
  ['mail', 8],
  ['man', 12],
  ['dialout', 20],
  ['cdrom', 24],
  ['sudo', 27],
  ['audio', 29],
  ['www-data', 33],
  ['backup', 34],
  ['shadow', 42],
  ['utmp', 43],
  ['video', 44],
  ['plugdev', 46],
  ['staff', 50],
  ['users', 100],
  ['systemd-journal', 101],
  ['netdev', 104],
  ['messagebus', 107],
  ['sssd', 108],
  ['ssl-cert', 109],
  ['postgres', 110],
  ['app', 998],
  ['nogroup', 65534],
];

const DEVELOPERS_GID = 2000;
const SHADOW_GID = 42;
const ADM_GID = 4;

function fakeHash(rng: Rng): string {
  return rng.chance(0.7)
    ? `$y$j9T$${rng.chars(22, CRYPT64)}$${rng.chars(43, CRYPT64)}`
    : `$6$${rng.chars(16, CRYPT64)}$${rng.chars(86, CRYPT64)}`;
}

interface Accounts {
  users: UserAccount[];
  groups: GroupAccount[];
  regular: UserAccount[];
  hashes: string[];
}

function makeAccounts(rng: Rng, count: number, installDay: number): Accounts {
  const hashes: string[] = [];
  const shadow = (locked: boolean): string => {
    if (locked) return `*:${installDay}:0:99999:7:::`;
    const h = fakeHash(rng);
    hashes.push(h);
    return `${h}:${installDay + rng.int(200)}:0:99999:7:::`;
  };
  const names = rng.shuffle(FIRST_NAMES);
  const regular: UserAccount[] = [];
  for (let i = 0; i < count; i++) {
    const [name, full] = names[i % names.length] ?? ['user', 'User'];
    const login = i < names.length ? name : `${name}${Math.floor(i / names.length) + 1}`;
    const groups = ['users'];
    if (i === 0) groups.unshift('cdrom', 'sudo', 'audio', 'video', 'plugdev', 'netdev');
    if (i === 1 || (count === 1 && i === 0)) groups.push('developers');
    if (i === 2) groups.unshift('audio', 'video');
    regular.push({
      name: login,
      uid: 1000 + i,
      gid: 1000 + i,
      gecos: `${full},,,`,
      home: `/home/${login}`,
      shell: i % 4 === 3 ? '/usr/bin/zsh' : '/bin/bash',
      shadow: shadow(false),
      groups,
    });
  }
  const users: UserAccount[] = [
    {
      name: 'root',
      uid: 0,
      gid: 0,
      gecos: 'root',
      home: '/root',
      shell: '/bin/bash',
      shadow: shadow(false),
      groups: [],
    },
    ...SYSTEM_USERS.map((s) => ({
      ...s,
      shadow: shadow(true),
      groups: s.name === 'postgres' ? ['ssl-cert'] : [],
    })),
    ...regular,
  ];
  const groups: GroupAccount[] = [
    ...SYSTEM_GROUPS.map(([name, gid]) => ({ name, gid, members: [] as string[] })),
    ...regular.map((u) => ({ name: u.name, gid: u.gid, members: [] as string[] })),
    { name: 'developers', gid: DEVELOPERS_GID, members: [] as string[] },
  ];
  for (const u of users) {
    for (const g of u.groups) groups.find((x) => x.name === g)?.members.push(u.name);
  }
  return { users, groups, regular, hashes };
}

function passwdText(users: UserAccount[]): string {
  return users
    .map((u) => `${u.name}:x:${u.uid}:${u.gid}:${u.gecos}:${u.home}:${u.shell}\n`)
    .join('');
}

function shadowText(users: UserAccount[]): string {
  return users.map((u) => `${u.name}:${u.shadow ?? '*::0:99999:7:::'}\n`).join('');
}

function groupText(groups: GroupAccount[]): string {
  return groups.map((g) => `${g.name}:x:${g.gid}:${g.members.join(',')}\n`).join('');
}

function gshadowText(groups: GroupAccount[]): string {
  return groups.map((g) => `${g.name}:*::${g.members.join(',')}\n`).join('');
}

// ---------------------------------------------------------------------------------------------
// Sizes per scale

interface Scale {
  binaries: number;
  libraries: number;
  docPackages: number;
  units: number;
  binMax: number;
  kernel: number;
  initrd: number;
  aptArchives: number;
  logMax: number;
  documents: number;
  docMax: number;
  pictures: number;
  picMax: number;
  songs: number;
  videos: number;
  mediaMax: number;
  iso: number;
  cacheEntries: number;
  browserDbMax: number;
  thumbnails: number;
  siteFiles: number;
  pgRelations: number;
  wal: number;
  projectFiles: number;
}

const SCALES: Record<MachineTreeScale, Scale> = {
  small: {
    binaries: 12,
    libraries: 6,
    docPackages: 6,
    units: 4,
    binMax: 40 * KiB,
    kernel: 96 * KiB,
    initrd: 160 * KiB,
    aptArchives: 2,
    logMax: 16 * KiB,
    documents: 6,
    docMax: 128 * KiB,
    pictures: 4,
    picMax: 96 * KiB,
    songs: 2,
    videos: 1,
    mediaMax: 96 * KiB,
    iso: 48 * KiB,
    cacheEntries: 3,
    browserDbMax: 64 * KiB,
    thumbnails: 2,
    siteFiles: 4,
    pgRelations: 5,
    wal: 64 * KiB,
    projectFiles: 3,
  },
  default: {
    binaries: 160,
    libraries: 100,
    docPackages: 170,
    units: 30,
    binMax: 64 * KiB,
    kernel: 384 * KiB,
    initrd: 768 * KiB,
    aptArchives: 12,
    logMax: 256 * KiB,
    documents: 26,
    docMax: 2 * MiB,
    pictures: 20,
    picMax: 512 * KiB,
    songs: 6,
    videos: 2,
    mediaMax: 768 * KiB,
    iso: 640 * KiB,
    cacheEntries: 80,
    browserDbMax: 512 * KiB,
    thumbnails: 50,
    siteFiles: 30,
    pgRelations: 40,
    wal: MiB,
    projectFiles: 10,
  },
};

// ---------------------------------------------------------------------------------------------
// Debian

const CODENAMES: Record<string, string> = {
  '10': 'buster',
  '11': 'bullseye',
  '12': 'bookworm',
  '13': 'trixie',
  '14': 'forky',
};
const KERNELS: Record<string, string> = {
  '10': '4.19.0-26',
  '11': '5.10.0-28',
  '12': '6.1.0-18',
  '13': '6.12.21',
  '14': '6.16.3',
};

const codename = (v: string): string => CODENAMES[v] ?? 'sid';
const kernelOf = (v: string): string => KERNELS[v] ?? '6.17.1';

const PACKAGES = (
  'base-files bash coreutils dpkg apt grep sed tar gzip findutils util-linux systemd udev ' +
  'libc6 libssl3 libglib2.0-0 libgtk-3-0 openssh-server openssh-client sudo network-manager ' +
  'sssd krb5-user cifs-utils firefox-esr chromium libreoffice-writer libreoffice-calc ' +
  'postgresql-15 nginx vim-tiny curl wget python3 perl-base gnome-shell nautilus gnupg ' +
  'dbus rsyslog cron locales tzdata ca-certificates zsh less man-db grub-efi-amd64 ' +
  'linux-image-amd64 initramfs-tools iproute2 netplan.io wpasupplicant pulseaudio'
).split(' ');

const SYLLABLES = 'ab cor dex fen gil hox jun kel mor nix pra qua rin sol tep vor wyn zed'.split(
  ' ',
);

function packageNames(rng: Rng, n: number): string[] {
  const out = [...PACKAGES];
  const seen = new Set(out);
  while (out.length < n) {
    const name = `lib${rng.pick(SYLLABLES)}${rng.pick(SYLLABLES)}${rng.range(0, 9)}`;
    if (!seen.has(name)) {
      seen.add(name);
      out.push(name);
    }
  }
  return out.slice(0, Math.max(n, 1));
}

function pkgVersion(rng: Rng, osVersion: string): string {
  return `${rng.range(0, 9)}.${rng.range(0, 40)}.${rng.range(0, 9)}-${rng.range(1, 5)}+deb${osVersion}u${rng.range(1, 3)}`;
}

function osReleaseText(v: string): string {
  const code = codename(v);
  return (
    `PRETTY_NAME="Debian GNU/Linux ${v} (${code})"\nNAME="Debian GNU/Linux"\nVERSION_ID="${v}"\n` +
    `VERSION="${v} (${code})"\nVERSION_CODENAME=${code}\nID=debian\n` +
    'HOME_URL="https://www.debian.org/"\nSUPPORT_URL="https://www.debian.org/support"\n' +
    'BUG_REPORT_URL="https://bugs.debian.org/"\n'
  );
}

function sshPrivateKey(b: Bytes, type: 'ed25519' | 'rsa' | 'ecdsa', comment: string): string {
  const pubLen = type === 'rsa' ? 279 : type === 'ecdsa' ? 104 : 51;
  const privLen = type === 'rsa' ? 1200 : type === 'ecdsa' ? 40 : 64;
  const body = cat(
    'openssh-key-v1\x00\x00\x00\x00\x04none\x00\x00\x00\x04none\x00\x00\x00\x00\x00\x00\x00\x01',
    b.take(pubLen),
    b.take(8),
    b.take(pubLen),
    b.take(privLen),
    comment,
    '\x01\x02\x03\x04\x05',
  ).toString('base64');
  const lines = body.match(/.{1,70}/g) ?? [];
  return `-----BEGIN OPENSSH PRIVATE KEY-----\n${lines.join('\n')}\n-----END OPENSSH PRIVATE KEY-----\n`;
}

/** A line of a private key's body that holds private bytes: what a leak would show. */
function keyLine(key: string): string {
  const lines = key.trim().split('\n');
  return lines[Math.min(4, lines.length - 2)] ?? '';
}

function sshPublicKey(b: Bytes, type: 'ed25519' | 'rsa' | 'ecdsa', comment: string): string {
  const alg = type === 'rsa' ? 'ssh-rsa' : type === 'ecdsa' ? 'ecdsa-sha2-nistp256' : 'ssh-ed25519';
  const blob = cat(
    '\x00\x00\x00',
    String.fromCharCode(alg.length),
    alg,
    b.take(type === 'rsa' ? 270 : type === 'ecdsa' ? 90 : 36),
  );
  return `${alg} ${blob.toString('base64')} ${comment}\n`;
}

// ---------------------------------------------------------------------------------------------
// makeMachineTree

interface Ctx {
  w: TreeWriter;
  rng: Rng;
  b: Bytes;
  s: Scale;
  osVersion: string;
  hostname: string;
  acc: Accounts;
  install: number;
  now: number;
  secrets: string[];
  packages: string[];
}

/**
 * Writes a realistic Debian machine's disk under `root` (created if missing; it should be
 * empty) and returns facts about it. Deterministic for the same options and the same user
 * (root or not): two trees list identically, contents, modes and mtimes included. Owners are
 * set only when running as root; otherwise `facts.owners` tells what they would be.
 */
export async function makeMachineTree(
  root: string,
  opts: MachineTreeOptions = {},
): Promise<MachineTreeFacts> {
  root = path.resolve(root);
  const seed = opts.seed ?? 1;
  const scaleName = opts.scale ?? 'default';
  const s = SCALES[scaleName];
  const osVersion = opts.osVersion ?? '12';
  const userCount = opts.users ?? 3;
  if (!Number.isInteger(userCount) || userCount < 0 || userCount > 500)
    throw new RangeError(`users must be a whole number from 0 to 500, not ${userCount}`);
  const asRoot = process.getuid?.() === 0;
  const rng = new Rng(seed);
  const b = new Bytes(seed, 'machine');
  const w = new TreeWriter(root, rng, b);

  const install = 1_680_000_000 + rng.int(20_000_000);
  const now = install + 200 * DAY + rng.int(150 * DAY);
  const hostname =
    opts.hostname ??
    `${rng.pick(['lt', 'ws', 'pc', 'nb'])}-${rng.pick(['eng', 'fin', 'hr', 'ops', 'lab', 'sales'])}-${rng.range(100, 999)}`;
  const acc = makeAccounts(rng, userCount, Math.floor(install / DAY));
  const c: Ctx = {
    w,
    rng,
    b,
    s,
    osVersion,
    hostname,
    acc,
    install,
    now,
    secrets: [...acc.hashes],
    packages: packageNames(rng, s.docPackages),
  };

  w.era(install - 300 * DAY, install - DAY);
  writeSkeleton(c);
  writeUsr(c);
  writeBoot(c);
  w.era(install, install + 2 * DAY);
  const machine = writeEtc(c);
  writeVar(c);
  writeRootHome(c);
  acc.regular.forEach((u, i) => writeHome(c, u, i, machine.cifsUser === u.name));
  writeOutside(c);
  w.finish(asRoot);

  // facts
  const userFiles: Record<string, string[]> = {};
  const outsideHome: string[] = [];
  const owners: Record<string, [number, number]> = {};
  const symlinks: Record<string, string> = {};
  let osFiles = 0;
  let totalFiles = 0;
  let totalBytes = 0;
  const dataRoots = ['srv/', 'opt/app/data/', 'var/lib/postgresql/', 'data/'];
  const homeOf = new Map(acc.regular.map((u) => [u.home.slice(1) + '/', u.name]));
  for (const [rel, e] of [...w.entries].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (e.uid !== 0 || e.gid !== 0) owners[rel] = [e.uid, e.gid];
    if (e.type === 'symlink') symlinks[rel] = fs.readlinkSync(w.abs(rel));
    if (e.type !== 'file') continue;
    totalFiles++;
    totalBytes += e.size ?? 0;
    const home = [...homeOf].find(([prefix]) => rel.startsWith(prefix));
    if (home) (userFiles[home[1]] ??= []).push(rel);
    else if (dataRoots.some((d) => rel.startsWith(d))) outsideHome.push(rel);
    else osFiles++;
  }
  for (const u of acc.regular) userFiles[u.name] ??= [];
  const categories = Object.fromEntries(
    CATEGORIES.map((k) => [k, [] as string[]]),
  ) as unknown as Record<MachineFileCategory, string[]>;
  for (const [rel, k] of [...w.categories].sort(([a], [b]) => (a < b ? -1 : 1)))
    categories[k].push(rel);

  return {
    root,
    seed,
    scale: scaleName,
    hostname,
    domain: DOMAIN,
    osVersion,
    users: acc.users,
    groups: acc.groups,
    userFiles,
    outsideHome,
    osFiles,
    totalFiles,
    totalBytes,
    asRoot,
    owners,
    symlinks,
    categories,
    secrets: [...new Set(c.secrets)].filter((x) => x.length >= 8),
    machineState: machine.state,
    machineId: machine.machineId,
    wifi: machine.wifi,
    cifs: machine.cifs,
    client: machine.client,
  };
}

const CATEGORIES: MachineFileCategory[] = [
  'documents',
  'pictures',
  'music',
  'videos',
  'downloads',
  'partial-downloads',
  'desktop-entries',
  'shell-settings',
  'desktop-settings',
  'firefox',
  'chromium',
  'ssh-keys',
  'gpg-keys',
  'share-settings',
  'keyrings',
  'cache',
  'trash',
  'machine-state',
  'client-state',
  'accounts',
  'logs',
  'web-site',
  'app-data',
  'database',
  'shared-projects',
];

/** Top-level folders and the usr-merge links. */
function writeSkeleton({ w }: Ctx): void {
  for (const d of ['dev', 'proc', 'sys', 'run', 'mnt', 'media', 'srv', 'opt', 'home', 'boot/efi'])
    w.dir(d);
  w.dir('root', { mode: 0o700 });
  w.dir('tmp', { mode: 0o1777 });
  w.dir('var/tmp', { mode: 0o1777 });
  w.symlink('bin', 'usr/bin');
  w.symlink('sbin', 'usr/sbin');
  w.symlink('lib', 'usr/lib');
  w.symlink('lib64', 'usr/lib64');
}

function writeUsr({ w, rng, s, osVersion, packages }: Ctx): void {
  const bins = [
    'bash',
    'ls',
    'cp',
    'mv',
    'cat',
    'grep',
    'sed',
    'tar',
    'gzip',
    'ssh',
    'sudo',
    'nmcli',
    'python3.11',
    'perl',
    'firefox-esr',
    'chromium',
    'vim.tiny',
    'curl',
    'dpkg',
    'apt',
    'systemctl',
    'psql',
    'zsh',
    'less',
  ];
  while (bins.length < s.binaries) {
    const n = `${rng.pick(SYLLABLES)}${rng.pick(SYLLABLES)}${bins.length % 10 === 0 ? '-helper' : ''}`;
    if (!bins.includes(n)) bins.push(n);
  }
  for (const n of bins.slice(0, s.binaries)) {
    w.file(`usr/bin/${n}`, typedContent(rng, w.bytes, 'elf', rng.size(8 * KiB, s.binMax)), {
      mode: n === 'sudo' ? 0o4755 : 0o755,
    });
  }
  w.symlink('usr/bin/python3', 'python3.11');
  w.symlink('usr/bin/vi', '/etc/alternatives/vi');
  w.symlink('usr/bin/sh', 'dash');
  w.file('usr/bin/dash', typedContent(rng, w.bytes, 'elf', Math.min(120 * KiB, s.binMax)), {
    mode: 0o755,
  });
  for (const n of [
    'sshd',
    'NetworkManager',
    'sssd',
    'nginx',
    'grub-install',
    'useradd',
    'chpasswd',
  ]) {
    w.file(`usr/sbin/${n}`, typedContent(rng, w.bytes, 'elf', rng.size(16 * KiB, s.binMax)), {
      mode: 0o755,
    });
  }
  const libdir = 'usr/lib/x86_64-linux-gnu';
  w.file(
    `${libdir}/ld-linux-x86-64.so.2`,
    typedContent(rng, w.bytes, 'elf', Math.min(200 * KiB, s.binMax)),
    {
      mode: 0o755,
    },
  );
  w.symlink('usr/lib64/ld-linux-x86-64.so.2', '../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2');
  for (let i = 0; i < s.libraries; i++) {
    const name = `lib${rng.pick(SYLLABLES)}${rng.pick(SYLLABLES)}${i}`;
    const major = rng.range(0, 6);
    const full = `${name}.so.${major}.${rng.range(0, 30)}.${rng.range(0, 9)}`;
    w.file(`${libdir}/${full}`, typedContent(rng, w.bytes, 'elf', rng.size(8 * KiB, s.binMax)));
    w.symlink(`${libdir}/${name}.so.${major}`, full);
  }
  w.file('usr/lib/os-release', osReleaseText(osVersion));
  for (const u of [
    'ssh',
    'NetworkManager',
    'sssd',
    'cron',
    'postgresql',
    'nginx',
    'dbus',
    'systemd-journald',
  ].concat(
    Array.from({ length: Math.max(0, s.units - 8) }, (_, i) => `${rng.pick(SYLLABLES)}-${i}`),
  )) {
    w.file(
      `usr/lib/systemd/system/${u}.service`,
      `[Unit]\nDescription=${u} service\nAfter=network.target\n\n[Service]\nExecStart=/usr/sbin/${u}\nRestart=on-failure\n\n[Install]\nWantedBy=multi-user.target\n`,
    );
  }
  for (const p of packages) {
    w.file(
      `usr/share/doc/${p}/copyright`,
      `Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: ${p}\n\nFiles: *\nCopyright: ${rng.range(1990, 2022)} The ${p} authors\nLicense: GPL-2+\n` +
        prose(rng, rng.range(200, 3000)).toString('latin1'),
    );
    w.file(
      `usr/share/doc/${p}/changelog.Debian.gz`,
      typedContent(rng, w.bytes, 'gz', rng.size(300, 40 * KiB)),
    );
  }
  for (const tz of [
    'Europe/Berlin',
    'Europe/Paris',
    'Europe/London',
    'America/New_York',
    'Asia/Tokyo',
    'Etc/UTC',
  ]) {
    w.file(
      `usr/share/zoneinfo/${tz}`,
      framed(
        w.bytes,
        rng.range(1000, 3000),
        'TZif2\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00',
      ),
    );
  }
  w.file('usr/share/backgrounds/debian/default.png', typedContent(rng, w.bytes, 'png', 64 * KiB));
  w.file(
    'usr/share/applications/firefox-esr.desktop',
    desktopEntry('Firefox ESR', 'firefox-esr %u', 'firefox-esr'),
  );
  w.file(
    'usr/share/applications/libreoffice-writer.desktop',
    desktopEntry('LibreOffice Writer', 'libreoffice --writer %U', 'libreoffice-writer'),
  );
}

function desktopEntry(name: string, exec: string, icon: string): string {
  return `[Desktop Entry]\nVersion=1.0\nType=Application\nName=${name}\nExec=${exec}\nIcon=${icon}\nTerminal=false\nCategories=Office;Network;\n`;
}

function writeBoot({ w, rng, s, osVersion }: Ctx): void {
  const k = `${kernelOf(osVersion)}-amd64`;
  const older = k.replace(
    /-(\d+)-amd64$/,
    (_, n: string) => `-${Math.max(1, Number(n) - 3)}-amd64`,
  );
  for (const v of older === k ? [k] : [older, k]) {
    w.file(`boot/vmlinuz-${v}`, framed(w.bytes, s.kernel, cat(Buffer.alloc(0x202), 'HdrS')), {
      mode: 0o644,
    });
    w.file(`boot/initrd.img-${v}`, typedContent(rng, w.bytes, 'gz', s.initrd));
    w.file(
      `boot/config-${v}`,
      `#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 ${v} Kernel Configuration\n#\nCONFIG_64BIT=y\nCONFIG_X86_64=y\nCONFIG_CIFS=m\n`,
    );
    w.file(`boot/System.map-${v}`, prose(rng, s.kernel / 8));
  }
  const rootUuid = rng.uuid();
  w.file(
    'boot/grub/grub.cfg',
    `#\n# DO NOT EDIT THIS FILE\n#\n# It is automatically generated by grub-mkconfig\n#\nset default="0"\nset timeout=5\n` +
      `menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class os {\n\tinsmod ext2\n\tsearch --no-floppy --fs-uuid --set=root ${rootUuid}\n` +
      `\tlinux\t/boot/vmlinuz-${k} root=UUID=${rootUuid} ro quiet\n\tinitrd\t/boot/initrd.img-${k}\n}\n`,
    { mode: 0o444 },
  );
  w.file('boot/grub/grubenv', '# GRUB Environment Block\n'.padEnd(1024, '#'));
  for (const m of ['ext2', 'part_gpt', 'normal', 'linux', 'gzio']) {
    w.file(
      `boot/grub/x86_64-efi/${m}.mod`,
      typedContent(rng, w.bytes, 'elf', rng.range(2 * KiB, 30 * KiB)),
    );
  }
}

interface EtcFacts {
  state: MachineTreeFacts['machineState'];
  machineId: string;
  wifi: MachineTreeFacts['wifi'];
  cifs: MachineTreeFacts['cifs'];
  cifsUser: string | undefined;
  client: MachineTreeFacts['client'];
}

function writeEtc(c: Ctx): EtcFacts {
  const { w, rng, acc, hostname, osVersion, secrets } = c;
  const ms = (rel: string, data: string | Buffer, o: WriteOptions = {}): void =>
    w.file(rel, data, { category: 'machine-state', ...o });

  // identity, locale, time
  const [locale, timezone] = rng.pick([
    ['en_US.UTF-8', 'America/New_York'],
    ['de_DE.UTF-8', 'Europe/Berlin'],
    ['fr_FR.UTF-8', 'Europe/Paris'],
    ['en_GB.UTF-8', 'Europe/London'],
    ['ja_JP.UTF-8', 'Asia/Tokyo'],
  ] as const);
  const machineId = rng.hex(32);
  ms('etc/hostname', `${hostname}\n`);
  ms(
    'etc/hosts',
    `127.0.0.1\tlocalhost\n127.0.1.1\t${hostname}.${DOMAIN}\t${hostname}\n\n::1     localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n`,
  );
  ms('etc/machine-id', `${machineId}\n`, { mode: 0o444 });
  w.symlink('var/lib/dbus/machine-id', '/etc/machine-id');
  ms('etc/timezone', `${timezone}\n`);
  w.symlink('etc/localtime', `/usr/share/zoneinfo/${timezone}`);
  ms('etc/default/locale', `#  File generated by update-locale\nLANG=${locale}\n`);
  ms(
    'etc/locale.gen',
    ['en_US.UTF-8', 'de_DE.UTF-8', 'fr_FR.UTF-8', 'en_GB.UTF-8', 'ja_JP.UTF-8']
      .map((l) => `${l === locale ? '' : '# '}${l} UTF-8\n`)
      .join(''),
  );
  w.symlink('etc/os-release', '../usr/lib/os-release');
  w.file('etc/debian_version', `${osVersion}.${rng.range(1, 9)}\n`);
  w.file('etc/issue', `Debian GNU/Linux ${osVersion} \\n \\l\n\n`);

  // accounts
  const users = acc.users;
  w.file('etc/passwd', passwdText(users), { category: 'accounts' });
  w.file('etc/shadow', shadowText(users), {
    mode: 0o640,
    owner: [0, SHADOW_GID],
    category: 'accounts',
  });
  w.file('etc/group', groupText(acc.groups), { category: 'accounts' });
  w.file('etc/gshadow', gshadowText(acc.groups), {
    mode: 0o640,
    owner: [0, SHADOW_GID],
    category: 'accounts',
  });
  w.file('etc/passwd-', passwdText(users.slice(0, -1)));
  w.file(
    'etc/shells',
    '# /etc/shells: valid login shells\n/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n/usr/bin/zsh\n',
  );
  w.file(
    'etc/login.defs',
    'MAIL_DIR\t/var/mail\nUID_MIN\t\t\t 1000\nUID_MAX\t\t\t60000\nSYS_UID_MAX\t\t  999\nENCRYPT_METHOD YESCRYPT\n',
  );
  w.file(
    'etc/adduser.conf',
    'DSHELL=/bin/bash\nDHOME=/home\nUSERGROUPS=yes\nFIRST_UID=1000\nLAST_UID=59999\nDIR_MODE=0700\n',
  );
  w.file(
    'etc/sudoers',
    'Defaults\tenv_reset\nDefaults\tsecure_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"\nroot\tALL=(ALL:ALL) ALL\n%sudo\tALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n',
    { mode: 0o440 },
  );
  w.file('etc/sudoers.d/README', '# Files in this directory are read by sudo.\n', { mode: 0o440 });
  w.file(
    'etc/sudoers.d/90-developers',
    `%developers ALL=(postgres) NOPASSWD: /usr/bin/psql\n%developers ALL=(root) /usr/bin/systemctl restart nginx\n`,
    { mode: 0o440 },
  );
  for (const f of ['.bashrc', '.profile', '.bash_logout'])
    w.file(`etc/skel/${f}`, skelFile(f, osVersion));

  // realm membership
  const sssdPassword = rng.chars(24, ALNUM + '!#%+-=');
  secrets.push(sssdPassword);
  ms(
    'etc/krb5.conf',
    `[libdefaults]\n\tdefault_realm = ${REALM}\n\tdns_lookup_realm = false\n\tdns_lookup_kdc = true\n\trdns = false\n\n[realms]\n\t${REALM} = {\n\t\tkdc = dc1.${DOMAIN}\n\t\tadmin_server = dc1.${DOMAIN}\n\t}\n\n[domain_realm]\n\t.${DOMAIN} = ${REALM}\n\t${DOMAIN} = ${REALM}\n`,
  );
  ms('etc/krb5.keytab', cat(Buffer.from([5, 2]), w.bytes.take(rng.range(300, 700))), {
    mode: 0o600,
  });
  w.dir('etc/sssd', { mode: 0o711 });
  ms(
    'etc/sssd/sssd.conf',
    `[sssd]\nservices = nss, pam\ndomains = ${DOMAIN}\n\n[domain/${DOMAIN}]\nid_provider = ldap\nauth_provider = krb5\n` +
      `ldap_uri = ldaps://dc1.${DOMAIN}\nldap_search_base = dc=corp,dc=example,dc=com\n` +
      `ldap_default_bind_dn = cn=svc-${hostname},ou=Computers,dc=corp,dc=example,dc=com\n` +
      `ldap_default_authtok_type = password\nldap_default_authtok = ${sssdPassword}\n` +
      `krb5_realm = ${REALM}\nkrb5_server = dc1.${DOMAIN}\ncache_credentials = True\nfallback_homedir = /home/%u\n`,
    { mode: 0o600 },
  );
  w.file(
    'etc/nsswitch.conf',
    'passwd:         files sss\ngroup:          files sss\nshadow:         files sss\nhosts:          files dns\nnetgroup:       nis sss\nsudoers:        files sss\n',
  );
  w.file(
    'etc/pam.d/common-auth',
    'auth\t[success=2 default=ignore]\tpam_unix.so nullok\nauth\t[success=1 default=ignore]\tpam_sss.so use_first_pass\nauth\trequisite\t\t\tpam_deny.so\nauth\trequired\t\t\tpam_permit.so\n',
  );
  w.file(
    'etc/pam.d/sshd',
    '@include common-auth\naccount    required     pam_nologin.so\n@include common-account\n@include common-session\n',
  );

  // network
  const iface = rng.pick(['enp0s31f6', 'eno1', 'ens18', 'enp3s0']);
  const net = `10.${rng.range(1, 250)}.${rng.range(0, 250)}`;
  const source = rng.pick(['networkmanager', 'ifupdown', 'netplan'] as const);
  const isStatic = rng.chance(0.7);
  const address = `${net}.${rng.range(20, 240)}`;
  const gateway = `${net}.1`;
  const dns = [`${net}.2`, `${net}.3`];
  const netFiles: string[] = [];
  const interfacesStatic =
    source === 'ifupdown'
      ? isStatic
        ? `auto ${iface}\niface ${iface} inet static\n\taddress ${address}/24\n\tgateway ${gateway}\n\tdns-nameservers ${dns.join(' ')}\n\tdns-search ${DOMAIN}\n`
        : `allow-hotplug ${iface}\niface ${iface} inet dhcp\n`
      : '';
  ms(
    'etc/network/interfaces',
    `# This file describes the network interfaces available on your system\n# and how to activate them. For more information, see interfaces(5).\n\nsource /etc/network/interfaces.d/*\n\n# The loopback network interface\nauto lo\niface lo inet loopback\n\n${interfacesStatic}`,
  );
  if (source === 'ifupdown') netFiles.push('etc/network/interfaces');
  w.dir('etc/network/interfaces.d');
  w.file(
    'etc/NetworkManager/NetworkManager.conf',
    `[main]\nplugins=ifupdown,keyfile\n\n[ifupdown]\nmanaged=false\n`,
  );
  w.dir('etc/NetworkManager/system-connections', { mode: 0o700 });
  const nm = 'etc/NetworkManager/system-connections';
  if (source === 'networkmanager') {
    const f = `${nm}/Wired connection 1.nmconnection`;
    ms(
      f,
      `[connection]\nid=Wired connection 1\nuuid=${rng.uuid()}\ntype=ethernet\nautoconnect-priority=-999\ninterface-name=${iface}\n\n[ethernet]\n\n` +
        (isStatic
          ? `[ipv4]\naddress1=${address}/24,${gateway}\ndns=${dns.join(';')};\ndns-search=${DOMAIN};\nmethod=manual\n\n`
          : '[ipv4]\nmethod=auto\n\n') +
        '[ipv6]\naddr-gen-mode=stable-privacy\nmethod=auto\n\n[proxy]\n',
      { mode: 0o600 },
    );
    netFiles.push(f);
  }
  const ssid = rng.pick(['CorpWiFi', 'HQ-Staff', 'Office 5G', 'Lab-Net']);
  const psk = rng.chars(20, ALNUM + '!$%&*+-');
  secrets.push(psk);
  const wifiFile = `${nm}/${ssid}.nmconnection`;
  ms(
    wifiFile,
    `[connection]\nid=${ssid}\nuuid=${rng.uuid()}\ntype=wifi\ninterface-name=wlp2s0\n\n[wifi]\nmode=infrastructure\nssid=${ssid}\n\n` +
      `[wifi-security]\nauth-alg=open\nkey-mgmt=wpa-psk\npsk=${psk}\n\n[ipv4]\nmethod=auto\n\n[ipv6]\naddr-gen-mode=stable-privacy\nmethod=auto\n\n[proxy]\n`,
    { mode: 0o600 },
  );
  ms(
    'etc/netplan/01-network-manager-all.yaml',
    '# Let NetworkManager manage all devices on this system\nnetwork:\n  version: 2\n  renderer: NetworkManager\n',
    { mode: 0o600 },
  );
  if (source === 'netplan') {
    const f = 'etc/netplan/50-wired.yaml';
    ms(
      f,
      `network:\n  version: 2\n  ethernets:\n    ${iface}:\n` +
        (isStatic
          ? `      addresses:\n        - ${address}/24\n      routes:\n        - to: default\n          via: ${gateway}\n      nameservers:\n        search: [${DOMAIN}]\n        addresses: [${dns.join(', ')}]\n`
          : '      dhcp4: true\n'),
      { mode: 0o600 },
    );
    netFiles.push(f);
  }
  w.file(
    'etc/resolv.conf',
    `# Generated by NetworkManager\nsearch ${DOMAIN}\nnameserver ${dns[0]}\nnameserver ${dns[1]}\n`,
  );
  const network: MachineNetwork = isStatic
    ? {
        mode: 'static',
        interface: iface,
        address,
        prefix: 24,
        gateway,
        dns,
        source,
        files: netFiles,
      }
    : { mode: 'dhcp', source, files: netFiles };

  // ssh
  w.file(
    'etc/ssh/sshd_config',
    `Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding yes\nPrintMotd no\nAcceptEnv LANG LC_*\nSubsystem\tsftp\t/usr/lib/openssh/sftp-server\nPermitRootLogin prohibit-password\n`,
  );
  w.file(
    'etc/ssh/ssh_config',
    'Host *\n    SendEnv LANG LC_*\n    HashKnownHosts yes\n    GSSAPIAuthentication yes\n',
  );
  w.dir('etc/ssh/sshd_config.d');
  for (const t of ['ed25519', 'ecdsa', 'rsa'] as const) {
    const key = sshPrivateKey(w.bytes, t, `root@${hostname}`);
    secrets.push(keyLine(key));
    ms(`etc/ssh/ssh_host_${t}_key`, key, { mode: 0o600 });
    ms(`etc/ssh/ssh_host_${t}_key.pub`, sshPublicKey(w.bytes, t, `root@${hostname}`));
  }

  // storage, with one user's CIFS share
  const cifsUser = acc.regular[0];
  const cifs = cifsUser
    ? {
        user: cifsUser.name,
        share: `//${FILESERVER}/users/${cifsUser.name}`,
        mountPoint: `${cifsUser.home}/Share`,
        credentialsFile: `${cifsUser.home.slice(1)}/.smbcredentials`,
      }
    : { user: '', share: '', mountPoint: '', credentialsFile: '' };
  w.file(
    'etc/fstab',
    `# /etc/fstab: static file system information.\n#\n# <file system> <mount point>   <type>  <options>       <dump>  <pass>\n` +
      `UUID=${rng.uuid()} /               ext4    errors=remount-ro 0       1\n` +
      `UUID=${rng.hex(4).toUpperCase()}-${rng.hex(4).toUpperCase()}  /boot/efi       vfat    umask=0077      0       1\n` +
      `UUID=${rng.uuid()} none            swap    sw              0       0\n` +
      (cifsUser
        ? `${cifs.share} ${cifs.mountPoint} cifs credentials=/${cifs.credentialsFile},uid=${cifsUser.uid},gid=${cifsUser.gid},iocharset=utf8,_netdev,nofail,x-systemd.automount 0 0\n`
        : ''),
    { category: 'share-settings' },
  );

  // software
  const code = codename(osVersion);
  w.file(
    'etc/apt/sources.list',
    `deb http://deb.debian.org/debian ${code} main contrib non-free-firmware\ndeb-src http://deb.debian.org/debian ${code} main\n\ndeb http://security.debian.org/debian-security ${code}-security main\ndeb http://deb.debian.org/debian ${code}-updates main\n`,
  );
  w.file(
    'etc/apt/apt.conf.d/50unattended-upgrades',
    'Unattended-Upgrade::Origins-Pattern {\n        "origin=Debian,codename=${distro_codename},label=Debian-Security";\n};\n',
  );
  w.symlink('etc/alternatives/vi', '/usr/bin/vim.tiny');
  w.symlink('etc/alternatives/editor', '/usr/bin/vim.tiny');
  for (const u of ['ssh', 'NetworkManager', 'sssd', 'cron', 'nginx', 'postgresql']) {
    w.symlink(
      `etc/systemd/system/multi-user.target.wants/${u}.service`,
      `/lib/systemd/system/${u}.service`,
    );
  }
  w.file(
    'etc/default/grub',
    'GRUB_DEFAULT=0\nGRUB_TIMEOUT=5\nGRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n',
  );
  w.file(
    'etc/nginx/sites-available/site',
    `server {\n\tlisten 80;\n\troot /srv/www/site;\n\tserver_name ${hostname}.${DOMAIN};\n}\n`,
  );
  w.symlink('etc/nginx/sites-enabled/site', '../sites-available/site');
  w.file(
    'etc/postgresql/15/main/postgresql.conf',
    `data_directory = '/var/lib/postgresql/15/main'\nlisten_addresses = 'localhost'\nport = 5432\nmax_connections = 100\n`,
    { owner: [105, 110] },
  );
  w.file(
    'etc/postgresql/15/main/pg_hba.conf',
    'local   all             postgres                                peer\nhost    all             all             127.0.0.1/32            scram-sha-256\n',
    { mode: 0o640, owner: [105, 110] },
  );
  w.file(
    'etc/crontab',
    'SHELL=/bin/sh\n17 *\t* * *\troot    cd / && run-parts --report /etc/cron.hourly\n',
  );

  // the reimage client's state
  const guid = rng.uuid();
  const server = `https://reimage.${DOMAIN}:8443`;
  const fingerprint = `sha256:${Array.from({ length: 32 }, () => rng.hex(2).toUpperCase()).join(':')}`;
  const site = rng.pick(['HQ', 'BRANCH-EAST', 'LAB']);
  const distributionPoint = `https://dp1.${DOMAIN}:8444`;
  const credential = rng.chars(43, ALNUM + '-_');
  secrets.push(credential);
  w.dir('etc/reimage', { mode: 0o750 });
  const clientFiles = [
    'etc/reimage/client.json',
    'etc/reimage/credential',
    'etc/reimage/policy-cache.json',
  ];
  w.file(
    'etc/reimage/client.json',
    JSON.stringify(
      {
        guid,
        server,
        fingerprint,
        site,
        distributionPoint,
        enrolledAt: new Date(c.install * 1000 + 3 * 3600_000).toISOString(),
      },
      null,
      2,
    ) + '\n',
    { category: 'client-state' },
  );
  w.file('etc/reimage/credential', `${credential}\n`, { mode: 0o600, category: 'client-state' });
  w.file(
    'etc/reimage/policy-cache.json',
    JSON.stringify(
      {
        fetchedAt: new Date(c.now * 1000).toISOString(),
        policyVersion: rng.range(1, 400),
        advertisements: [
          {
            id: rng.uuid(),
            package: 'debian-13-desktop',
            deadline: new Date((c.now + 7 * DAY) * 1000).toISOString(),
          },
        ],
        settings: { statusIntervalSeconds: 900, maintenanceWindow: 'Sat 22:00-06:00' },
      },
      null,
      2,
    ) + '\n',
    { category: 'client-state' },
  );

  return {
    state: {
      computerName: hostname,
      domain: DOMAIN,
      timezone,
      locale,
      network,
      sshHostKeys: true,
      administratorPassword: { hash: users[0]?.shadow?.split(':')[0] ?? '' },
    },
    machineId,
    wifi: { ssid, psk, file: wifiFile },
    cifs,
    cifsUser: cifsUser?.name,
    client: { guid, server, fingerprint, site, distributionPoint, credential, files: clientFiles },
  };
}

function skelFile(name: string, osVersion: string): string {
  switch (name) {
    case '.bashrc':
      return `# ~/.bashrc: executed by bash(1) for non-login shells (Debian ${osVersion}).\n\ncase $- in\n    *i*) ;;\n      *) return;;\nesac\n\nHISTCONTROL=ignoreboth\nshopt -s histappend\nHISTSIZE=1000\nHISTFILESIZE=2000\nshopt -s checkwinsize\n\nif [ -x /usr/bin/dircolors ]; then\n    eval "$(dircolors -b)"\n    alias ls='ls --color=auto'\nfi\n`;
    case '.profile':
      return '# ~/.profile: executed by the command interpreter for login shells.\n\nif [ -n "$BASH_VERSION" ]; then\n    if [ -f "$HOME/.bashrc" ]; then\n\t. "$HOME/.bashrc"\n    fi\nfi\n\nif [ -d "$HOME/bin" ] ; then\n    PATH="$HOME/bin:$PATH"\nfi\n';
    case '.bash_logout':
      return '# ~/.bash_logout: executed by bash(1) when login shell exits.\n\nif [ "$SHLVL" = 1 ]; then\n    [ -x /usr/bin/clear_console ] && /usr/bin/clear_console -q\nfi\n';
    default:
      return 'XDG_DESKTOP_DIR="$HOME/Desktop"\nXDG_DOWNLOAD_DIR="$HOME/Downloads"\nXDG_DOCUMENTS_DIR="$HOME/Documents"\nXDG_MUSIC_DIR="$HOME/Music"\nXDG_PICTURES_DIR="$HOME/Pictures"\nXDG_VIDEOS_DIR="$HOME/Videos"\n';
  }
}

function writeVar(c: Ctx): void {
  const { w, rng, s, hostname, osVersion } = c;
  const pkgs = c.packages;
  w.era(c.install - 200 * DAY, c.install);
  w.file(
    'var/lib/dpkg/status',
    pkgs
      .map(
        (p) =>
          `Package: ${p}\nStatus: install ok installed\nPriority: optional\nSection: ${rng.pick(['libs', 'utils', 'net', 'admin', 'web', 'database'])}\n` +
          `Installed-Size: ${rng.range(20, 90000)}\nMaintainer: Debian ${p} maintainers <${p}@packages.debian.org>\nArchitecture: amd64\n` +
          `Version: ${pkgVersion(rng, osVersion)}\nDepends: libc6 (>= 2.36)\nDescription: ${p} - ${rng.pick(WORDS)} ${rng.pick(WORDS)}\n`,
      )
      .join('\n'),
  );
  for (const p of pkgs) {
    w.file(
      `var/lib/dpkg/info/${p}.list`,
      `/.\n/usr\n/usr/share\n/usr/share/doc\n/usr/share/doc/${p}\n/usr/share/doc/${p}/copyright\n`,
    );
    w.file(
      `var/lib/dpkg/info/${p}.md5sums`,
      `${rng.hex(32)}  usr/share/doc/${p}/copyright\n${rng.hex(32)}  usr/share/doc/${p}/changelog.Debian.gz\n`,
    );
  }
  w.file(
    'var/lib/apt/extended_states',
    pkgs
      .slice(0, 10)
      .map((p) => `Package: ${p}\nArchitecture: amd64\nAuto-Installed: 1\n`)
      .join('\n'),
  );
  w.dir('var/www', { owner: [33, 33] });
  w.dir('var/mail', { mode: 0o2775, owner: [0, 8] });
  w.dir('var/lib/sss', { mode: 0o700, owner: [102, 108] });

  // caches: regenerable, excluded by migrations
  w.era(c.now - 30 * DAY, c.now);
  w.file(
    'var/cache/apt/pkgcache.bin',
    framed(w.bytes, rng.size(64 * KiB, s.binMax * 4), '\x1a\x52\x98\x12'),
    { category: 'cache' },
  );
  w.file(
    'var/cache/apt/srcpkgcache.bin',
    framed(w.bytes, rng.size(64 * KiB, s.binMax * 4), '\x1a\x52\x98\x12'),
    { category: 'cache' },
  );
  w.dir('var/cache/apt/archives/partial', { mode: 0o700, owner: [42, 65534] });
  w.file('var/cache/apt/archives/lock', '', { mode: 0o640 });
  for (let i = 0; i < s.aptArchives; i++) {
    const p = rng.pick(pkgs);
    w.file(
      `var/cache/apt/archives/${p}_${pkgVersion(rng, osVersion).replace(/:/g, '%3a')}_amd64.deb`,
      typedContent(rng, w.bytes, 'deb', rng.size(4 * KiB, s.binMax * 2)),
      { category: 'cache' },
    );
  }
  w.dir('var/cache/man', { owner: [6, 12] });
  w.file('var/cache/man/index.db', typedContent(rng, w.bytes, 'gz', rng.size(4 * KiB, 64 * KiB)), {
    category: 'cache',
  });

  // logs: never hold a planted secret
  const log = (rel: string, n: number, o: WriteOptions = {}): void =>
    w.file(rel, logText(rng, hostname, c.now - 7 * DAY, n), {
      category: 'logs',
      mode: 0o640,
      owner: [0, ADM_GID],
      ...o,
    });
  log('var/log/syslog', rng.size(4 * KiB, s.logMax));
  log('var/log/syslog.1', rng.size(4 * KiB, s.logMax));
  w.file('var/log/syslog.2.gz', typedContent(rng, w.bytes, 'gz', rng.size(2 * KiB, s.logMax / 2)), {
    category: 'logs',
    mode: 0o640,
    owner: [0, ADM_GID],
  });
  log('var/log/auth.log', rng.size(2 * KiB, s.logMax / 2));
  log('var/log/kern.log', rng.size(2 * KiB, s.logMax / 2));
  log('var/log/dpkg.log', rng.size(2 * KiB, s.logMax / 2), { mode: 0o644, owner: [0, 0] });
  log('var/log/apt/history.log', rng.size(1 * KiB, s.logMax / 4), { mode: 0o644, owner: [0, 0] });
  log('var/log/apt/term.log', rng.size(1 * KiB, s.logMax / 4));
  log('var/log/nginx/access.log', rng.size(1 * KiB, s.logMax / 2), { owner: [33, ADM_GID] });
  log('var/log/nginx/error.log', rng.size(200, 4 * KiB), { owner: [33, ADM_GID] });
  log('var/log/postgresql/postgresql-15-main.log', rng.size(1 * KiB, s.logMax / 4), {
    owner: [105, ADM_GID],
  });
  log('var/log/Xorg.0.log', rng.size(2 * KiB, 32 * KiB), { mode: 0o644, owner: [0, 0] });
  w.file('var/log/wtmp', w.bytes.take(384 * rng.range(5, 40)), {
    mode: 0o664,
    owner: [0, 43],
    category: 'logs',
  });
  w.file('var/log/btmp', w.bytes.take(384 * rng.range(0, 5)), {
    mode: 0o660,
    owner: [0, 43],
    category: 'logs',
  });
  w.file('var/log/lastlog', w.bytes.take(292 * 4), {
    mode: 0o664,
    owner: [0, 43],
    category: 'logs',
  });
  w.dir('var/log/journal', { mode: 0o2755, owner: [0, 101] });
  w.file(
    `var/log/journal/${rng.hex(32)}/system.journal`,
    framed(w.bytes, rng.size(64 * KiB, s.logMax * 2), 'LPKSHHRH'),
    { mode: 0o640, owner: [0, 101], category: 'logs' },
  );
  w.file('tmp/.X0-lock', '       975\n', { mode: 0o444 });
  w.dir(`tmp/systemd-private-${rng.hex(32)}-chrony.service-${rng.chars(6, ALNUM)}`, {
    mode: 0o700,
  });
  w.file(
    `tmp/tmp${rng.chars(8, 'abcdefghijklmnopqrstuvwxyz0123456789')}`,
    w.bytes.take(rng.range(100, 4000)),
    { mode: 0o600, category: 'cache' },
  );
  w.file('var/tmp/cloud-init-stale.txt', prose(rng, 500), { category: 'cache' });
}

function logText(rng: Rng, host: string, from: number, n: number): Buffer {
  const lines: string[] = [];
  let len = 0;
  let t = from;
  while (len < n) {
    t += rng.int(120);
    const d = new Date(t * 1000);
    const stamp = d.toISOString().replace('Z', '+00:00');
    const words = Array.from({ length: 4 + rng.int(10) }, () => rng.pick(WORDS)).join(' ');
    const l = `${stamp} ${host} ${rng.pick(['systemd', 'kernel', 'sshd', 'NetworkManager', 'sssd', 'CRON', 'nginx'])}[${rng.range(1, 32000)}]: ${words}\n`;
    lines.push(l);
    len += l.length;
  }
  return Buffer.from(lines.join(''), 'latin1').subarray(0, n);
}

function writeRootHome({ w, osVersion, acc, b }: Ctx): void {
  w.file('root/.bashrc', skelFile('.bashrc', osVersion));
  w.file('root/.profile', skelFile('.profile', osVersion));
  w.file(
    'root/.bash_history',
    'apt update\napt full-upgrade\nsystemctl restart sssd\nrealm list\n',
    { mode: 0o600 },
  );
  w.dir('root/.ssh', { mode: 0o700 });
  const admin = acc.regular[0]?.name ?? 'admin';
  w.file('root/.ssh/authorized_keys', sshPublicKey(b, 'ed25519', `${admin}@admin-ws`), {
    mode: 0o600,
  });
}

const DOC_TOPICS = [
  'Budget',
  'Meeting notes',
  'Project plan',
  'Invoice',
  'Report',
  'Minutes',
  'Quarterly review',
  'Contract draft',
  'Travel expenses',
  'Inventory',
  'Roadmap',
  'Proposal',
  'Checklist',
  'Timesheet',
  'Letter',
];
const DOC_TYPES = ['odt', 'odt', 'docx', 'pdf', 'pdf', 'txt', 'xlsx', 'ods', 'md', 'csv', 'pptx'];
const ARTISTS = [
  ['Nina Vale', 'Blue Hours'],
  ['The Lanterns', 'Northbound'],
  ['Kasimir Ost', 'Etudes'],
  ['Léa Fontaine', 'Été'],
];

function writeHome(c: Ctx, u: UserAccount, index: number, cifsUser: boolean): void {
  const { w, rng, s, secrets, hostname } = c;
  const h = u.home.slice(1);
  const own: [number, number] = [u.uid, u.gid];
  const day = (): number => c.install + DAY + rng.int(c.now - c.install - DAY);
  w.era(c.install + DAY, c.now);
  w.dir(h, { mode: index === 1 ? 0o750 : 0o700, owner: own, mtime: c.install + DAY });
  const vary = (n: number): number => Math.max(1, Math.round(n * (0.7 + rng.int(61) / 100)));

  // shell
  w.file(
    `${h}/.bashrc`,
    skelFile('.bashrc', c.osVersion) + `\nalias ll='ls -alF'\nexport EDITOR=vim\n`,
    { category: 'shell-settings' },
  );
  w.file(`${h}/.profile`, skelFile('.profile', c.osVersion), { category: 'shell-settings' });
  w.file(`${h}/.bash_logout`, skelFile('.bash_logout', c.osVersion), {
    category: 'shell-settings',
  });
  w.file(
    `${h}/.bash_history`,
    Array.from({ length: 40 }, () =>
      rng.pick([
        'ls -la',
        'cd Documents',
        'git status',
        'ssh fileserver',
        'sudo apt update',
        'htop',
        'psql -U postgres',
        'vim notes.txt',
        'make',
        'exit',
      ]),
    ).join('\n') + '\n',
    { mode: 0o600, category: 'shell-settings' },
  );
  if (u.shell.endsWith('zsh'))
    w.file(
      `${h}/.zshrc`,
      'autoload -Uz compinit && compinit\nsetopt histignorealldups sharehistory\n',
      { category: 'shell-settings' },
    );

  // desktop settings
  w.file(`${h}/.config/user-dirs.dirs`, skelFile('user-dirs', c.osVersion), {
    category: 'desktop-settings',
  });
  w.file(`${h}/.config/user-dirs.locale`, 'en_US\n', { category: 'desktop-settings' });
  const wallpaperUri = `file://${u.home}/.local/share/backgrounds/wallpaper.jpg`;
  w.file(
    `${h}/.config/dconf/user`,
    framed(
      w.bytes,
      rng.range(3 * KiB, 12 * KiB),
      cat(
        'GVariant\x00\x00\x00\x00',
        w.bytes.take(64),
        `/org/gnome/desktop/background/picture-uri\x00'${wallpaperUri}'\x00/org/gnome/desktop/screensaver/lock-delay\x00uint32 300\x00/org/gnome/desktop/interface/gtk-theme\x00'Adwaita-dark'\x00`,
      ),
    ),
    { category: 'desktop-settings' },
  );
  w.file(
    `${h}/.config/gtk-3.0/settings.ini`,
    '[Settings]\ngtk-application-prefer-dark-theme=1\ngtk-font-name=Cantarell 11\n',
    { category: 'desktop-settings' },
  );
  w.file(
    `${h}/.config/monitors.xml`,
    '<monitors version="2">\n  <configuration>\n    <logicalmonitor><x>0</x><y>0</y><scale>1</scale><primary>yes</primary></logicalmonitor>\n  </configuration>\n</monitors>\n',
    { category: 'desktop-settings' },
  );
  w.file(
    `${h}/.local/share/backgrounds/wallpaper.jpg`,
    typedContent(rng, w.bytes, 'jpg', rng.size(60 * KiB, Math.max(80 * KiB, s.picMax))),
    { category: 'desktop-settings' },
  );
  w.symlink(`${h}/.local/share/backgrounds/current`, 'wallpaper.jpg');
  w.file(
    `${h}/.local/share/recently-used.xbel`,
    `<?xml version="1.0" encoding="UTF-8"?>\n<xbel version="1.0">\n  <bookmark href="file://${u.home}/Documents/R%C3%A9sum%C3%A9.odt" added="2024-01-05T10:00:00Z"/>\n</xbel>\n`,
    { category: 'desktop-settings' },
  );
  w.file(
    `${h}/.local/share/keyrings/login.keyring`,
    framed(w.bytes, rng.range(1 * KiB, 4 * KiB), 'GnomeKeyring\n\r\x00\n\x00\x00'),
    { mode: 0o600, category: 'keyrings' },
  );

  // network shares: desktop bookmark for everyone, the fstab share and its credentials for one
  w.file(
    `${h}/.config/gtk-3.0/bookmarks`,
    `file://${u.home}/Documents Documents\nsmb://${FILESERVER}/projects Projects\nsmb://${FILESERVER}/users/${u.name} My share\n`,
    { category: 'share-settings' },
  );
  if (cifsUser) {
    const pw = rng.chars(18, ALNUM + '#$%');
    secrets.push(pw);
    w.file(
      `${h}/.smbcredentials`,
      `username=${u.name}\npassword=${pw}\ndomain=${REALM.split('.')[0]}\n`,
      { mode: 0o600, category: 'share-settings' },
    );
    w.dir(`${h}/Share`, { mode: 0o755 });
  }

  // Firefox
  const ff = `${rng.chars(8, 'abcdefghijklmnopqrstuvwxyz0123456789')}.default-release`;
  const fdir = `${h}/.mozilla/firefox`;
  w.dir(`${h}/.mozilla`, { mode: 0o700 });
  w.file(
    `${fdir}/profiles.ini`,
    `[Profile0]\nName=default-release\nIsRelative=1\nPath=${ff}\nDefault=1\n\n[General]\nStartWithLastProfile=1\nVersion=2\n\n[Install3B6073811A6ABF12]\nDefault=${ff}\nLocked=1\n`,
    { category: 'firefox' },
  );
  w.file(`${fdir}/installs.ini`, `[3B6073811A6ABF12]\nDefault=${ff}\nLocked=1\n`, {
    category: 'firefox',
  });
  w.dir(`${fdir}/${ff}`, { mode: 0o700 });
  w.file(
    `${fdir}/${ff}/places.sqlite`,
    typedContent(rng, w.bytes, 'sqlite', rng.size(32 * KiB, s.browserDbMax)),
    { category: 'firefox' },
  );
  w.file(
    `${fdir}/${ff}/key4.db`,
    typedContent(rng, w.bytes, 'sqlite', Math.min(288 * KiB, s.browserDbMax)),
    { mode: 0o600, category: 'firefox' },
  );
  w.file(
    `${fdir}/${ff}/cookies.sqlite`,
    typedContent(rng, w.bytes, 'sqlite', rng.size(16 * KiB, s.browserDbMax / 2)),
    { mode: 0o600, category: 'firefox' },
  );
  w.file(
    `${fdir}/${ff}/prefs.js`,
    `// Mozilla User Preferences\n\nuser_pref("browser.startup.homepage", "https://intranet.${DOMAIN}/");\nuser_pref("browser.download.dir", "${u.home}/Downloads");\nuser_pref("browser.startup.page", 3);\nuser_pref("network.negotiate-auth.trusted-uris", ".${DOMAIN}");\n`,
    { mode: 0o600, category: 'firefox' },
  );
  w.file(
    `${fdir}/${ff}/logins.json`,
    JSON.stringify({
      nextId: 3,
      logins: [1, 2].map((id) => ({
        id,
        hostname: `https://${rng.pick(['intranet', 'wiki', 'hr', 'git'])}.${DOMAIN}`,
        httpRealm: null,
        formSubmitURL: '',
        usernameField: 'username',
        passwordField: 'password',
        encryptedUsername: `MDoEEPgAAAAAAAAAAAAAAAAAAAEwFAYIKoZIhvcNAwcECL${w.bytes.take(18).toString('base64')}`,
        encryptedPassword: `MEIEEPgAAAAAAAAAAAAAAAAAAAEwFAYIKoZIhvcNAwcECP${w.bytes.take(30).toString('base64')}`,
        guid: `{${rng.uuid()}}`,
        encType: 1,
        timeCreated: c.install * 1000,
        timeLastUsed: c.now * 1000,
        timePasswordChanged: c.install * 1000,
        timesUsed: rng.range(1, 90),
      })),
      version: 3,
    }),
    { mode: 0o600, category: 'firefox' },
  );
  w.file(`${fdir}/${ff}/times.json`, `{"created":${c.install * 1000},"firstUse":null}`, {
    category: 'firefox',
  });
  w.file(
    `${fdir}/${ff}/extensions.json`,
    JSON.stringify({
      schemaVersion: 35,
      addons: [{ id: 'uBlock0@raymondhill.net', version: '1.56.0', active: true }],
    }),
    { category: 'firefox' },
  );

  // Chromium
  const cdir = `${h}/.config/chromium`;
  w.dir(cdir, { mode: 0o700 });
  const bookmarks = [
    { name: 'Intranet', url: `https://intranet.${DOMAIN}/` },
    { name: 'Wiki', url: `https://wiki.${DOMAIN}/` },
    { name: 'Debian', url: 'https://www.debian.org/' },
  ].map((x, i) => ({
    date_added: String(13_300_000_000_000_000 + i),
    guid: rng.uuid(),
    id: String(i + 5),
    name: x.name,
    type: 'url',
    url: x.url,
  }));
  w.file(
    `${cdir}/Local State`,
    JSON.stringify({
      browser: { enabled_labs_experiments: [] },
      profile: { info_cache: { Default: { name: u.gecos.split(',')[0] } } },
    }),
    { category: 'chromium' },
  );
  w.file(
    `${cdir}/Default/Bookmarks`,
    JSON.stringify(
      {
        checksum: rng.hex(32),
        roots: {
          bookmark_bar: { children: bookmarks, name: 'Bookmarks bar', type: 'folder' },
          other: { children: [], name: 'Other bookmarks', type: 'folder' },
          synced: { children: [], name: 'Mobile bookmarks', type: 'folder' },
        },
        version: 1,
      },
      null,
      3,
    ),
    { category: 'chromium' },
  );
  w.file(
    `${cdir}/Default/Preferences`,
    JSON.stringify({
      browser: { has_seen_welcome_page: true },
      download: { default_directory: `${u.home}/Downloads` },
      homepage: `https://intranet.${DOMAIN}/`,
    }),
    { mode: 0o600, category: 'chromium' },
  );
  w.file(
    `${cdir}/Default/Cookies`,
    typedContent(rng, w.bytes, 'sqlite', rng.size(16 * KiB, s.browserDbMax / 2)),
    { mode: 0o600, category: 'chromium' },
  );
  w.file(
    `${cdir}/Default/History`,
    typedContent(rng, w.bytes, 'sqlite', rng.size(32 * KiB, s.browserDbMax)),
    { mode: 0o600, category: 'chromium' },
  );

  // caches and junk: to be excluded
  w.dir(`${h}/.cache`, { mode: 0o700 });
  for (let i = 0; i < vary(s.thumbnails); i++) {
    w.file(
      `${h}/.cache/thumbnails/${i % 3 ? 'normal' : 'large'}/${rng.hex(32)}.png`,
      typedContent(rng, w.bytes, 'png', rng.size(2 * KiB, 32 * KiB, 2)),
      { mode: 0o600, category: 'cache' },
    );
  }
  for (let i = 0; i < vary(s.cacheEntries); i++) {
    w.file(
      `${h}/.cache/mozilla/firefox/${ff}/cache2/entries/${rng.hex(40).toUpperCase()}`,
      w.bytes.take(rng.size(500, 48 * KiB, 2.5)),
      { mode: 0o600, category: 'cache' },
    );
  }
  for (let i = 0; i < vary(Math.ceil(s.cacheEntries / 2)); i++) {
    w.file(
      `${h}/.cache/chromium/Default/Cache/Cache_Data/f_${i.toString(16).padStart(6, '0')}`,
      w.bytes.take(rng.size(1 * KiB, 64 * KiB, 2.5)),
      { mode: 0o600, category: 'cache' },
    );
  }
  w.file(`${h}/.cache/chromium/Default/Cache/Cache_Data/index`, w.bytes.take(24), {
    mode: 0o600,
    category: 'cache',
  });
  w.file(
    `${h}/.cache/fontconfig/${rng.hex(32)}-le64.cache-8`,
    w.bytes.take(rng.range(1 * KiB, 24 * KiB)),
    { category: 'cache' },
  );
  w.file(
    `${h}/.cache/event-sound-cache.tdb.${rng.hex(32)}.x86_64-pc-linux-gnu`,
    w.bytes.take(12 * KiB),
    { category: 'cache' },
  );

  // SSH and GnuPG
  w.dir(`${h}/.ssh`, { mode: 0o700 });
  const idKey = sshPrivateKey(w.bytes, 'ed25519', `${u.name}@${hostname}`);
  secrets.push(keyLine(idKey));
  w.file(`${h}/.ssh/id_ed25519`, idKey, { mode: 0o600, category: 'ssh-keys' });
  w.file(`${h}/.ssh/id_ed25519.pub`, sshPublicKey(w.bytes, 'ed25519', `${u.name}@${hostname}`), {
    category: 'ssh-keys',
  });
  w.file(
    `${h}/.ssh/known_hosts`,
    Array.from(
      { length: rng.range(2, 8) },
      () =>
        `|1|${w.bytes.take(20).toString('base64')}|${w.bytes.take(20).toString('base64')} ssh-ed25519 ${w.bytes.take(51).toString('base64')}`,
    ).join('\n') + '\n',
    { category: 'ssh-keys' },
  );
  w.file(
    `${h}/.ssh/config`,
    `Host fileserver\n    HostName ${FILESERVER}\n    User ${u.name}\n    IdentityFile ~/.ssh/id_ed25519\n\nHost git\n    HostName git.${DOMAIN}\n    Port 2222\n`,
    { mode: 0o600, category: 'ssh-keys' },
  );
  if (index === 0)
    w.file(`${h}/.ssh/authorized_keys`, sshPublicKey(w.bytes, 'ed25519', `${u.name}@laptop`), {
      mode: 0o600,
      category: 'ssh-keys',
    });
  w.dir(`${h}/.gnupg`, { mode: 0o700 });
  w.dir(`${h}/.gnupg/private-keys-v1.d`, { mode: 0o700 });
  w.file(
    `${h}/.gnupg/pubring.kbx`,
    framed(
      w.bytes,
      rng.range(1500, 9000),
      cat(Buffer.from([0, 0, 0, 32, 1, 1, 0, 2]), 'KBXf', Buffer.alloc(20)),
    ),
    { category: 'gpg-keys' },
  );
  w.file(
    `${h}/.gnupg/trustdb.gpg`,
    framed(w.bytes, 1200, cat(Buffer.from([1]), 'gpg', Buffer.from([3, 1, 1, 0]))),
    { mode: 0o600, category: 'gpg-keys' },
  );
  w.file(`${h}/.gnupg/gpg-agent.conf`, 'default-cache-ttl 600\nmax-cache-ttl 7200\n', {
    category: 'gpg-keys',
  });
  for (let i = 0; i < 2; i++) {
    const d = rng.hex(64).toUpperCase();
    secrets.push(d);
    w.file(
      `${h}/.gnupg/private-keys-v1.d/${rng.hex(40).toUpperCase()}.key`,
      `Created: 20230${rng.range(1, 9)}${String(rng.range(10, 28))}T101112\nKey: (private-key (ecc (curve Ed25519)(flags eddsa)(q #40${rng.hex(64).toUpperCase()}#)(d #${d}#)))\n`,
      { mode: 0o600, category: 'gpg-keys' },
    );
  }

  // Documents: many types, a non-ASCII name, an upper-case extension, nested folders
  const used = new Set<string>();
  const doc = (folder: string, ext: string, topic?: string): void => {
    let name = `${topic ?? rng.pick(DOC_TOPICS)} ${rng.range(2019, 2024)}`;
    while (used.has(`${folder}/${name}.${ext}`)) name += ` (${rng.range(1, 9)})`;
    used.add(`${folder}/${name}.${ext}`);
    w.typed(
      `${h}/${folder}/${name}.${ext}`,
      ext === 'txt' || ext === 'md' || ext === 'csv'
        ? rng.size(KiB, Math.min(s.docMax, 256 * KiB))
        : rng.size(KiB, s.docMax, 3),
      { category: 'documents', mtime: day() },
    );
  };
  for (let i = 0; i < vary(s.documents); i++) {
    doc(
      rng.pick([
        'Documents',
        'Documents',
        'Documents/Work',
        'Documents/Personal',
        'Documents/Work/Archive 2022',
      ]),
      rng.pick(DOC_TYPES),
    );
  }
  w.typed(`${h}/Documents/Résumé.odt`, rng.size(8 * KiB, Math.min(s.docMax, 200 * KiB)), {
    category: 'documents',
    mtime: day(),
  });
  w.file(
    `${h}/Documents/REPORT-FINAL.ODT`,
    typedContent(rng, w.bytes, 'odt', rng.size(4 * KiB, Math.min(s.docMax, 300 * KiB))),
    { category: 'documents', mtime: day() },
  );
  w.file(`${h}/Documents/Notes`, prose(rng, rng.range(300, 3000)), {
    category: 'documents',
    mtime: day(),
  });
  w.symlink(`${h}/Documents/latest-report.odt`, 'REPORT-FINAL.ODT');
  w.symlink(`${h}/docs`, 'Documents');
  if (u.groups.includes('developers')) w.symlink(`${h}/projects`, '/data/projects');
  for (const d of ['Templates', 'Public']) w.dir(`${h}/${d}`);
  w.file(
    `${h}/Templates/Letter.ott`,
    zipDoc(w.bytes, 9 * KiB, 'mimetype', 'application/vnd.oasis.opendocument.text-template'),
    { category: 'documents' },
  );

  // Pictures, music, videos
  for (let i = 0; i < vary(s.pictures); i++) {
    const taken = day();
    const t = new Date(taken * 1000).toISOString();
    const stamp = `${t.slice(0, 10).replace(/-/g, '')}_${t.slice(11, 19).replace(/:/g, '')}`;
    const r = rng.int(10);
    const rel =
      r < 5
        ? `Pictures/IMG_${stamp}_${i}.jpg`
        : r < 7
          ? `Pictures/Screenshot from ${t.slice(0, 10)} ${t.slice(11, 19).replace(/:/g, '-')}-${i}.png`
          : `Pictures/Holidays 2023/DSC${String(1000 + i).padStart(5, '0')}.JPG`;
    w.file(
      `${h}/${rel}`,
      typedContent(rng, w.bytes, path.extname(rel).slice(1), rng.size(16 * KiB, s.picMax, 2)),
      { category: 'pictures', mtime: taken },
    );
  }
  for (let i = 0; i < vary(s.songs); i++) {
    const [artist, album] = rng.pick(ARTISTS) as [string, string];
    const ext = rng.pick(['mp3', 'mp3', 'ogg', 'flac']);
    w.file(
      `${h}/Music/${artist}/${album}/${String(i + 1).padStart(2, '0')} - ${rng.pick(WORDS)} ${rng.pick(WORDS)}.${ext}`,
      typedContent(rng, w.bytes, ext, rng.size(48 * KiB, s.mediaMax, 1.5)),
      { category: 'music', mtime: day() },
    );
  }
  for (let i = 0; i < s.videos; i++) {
    const ext = i % 2 ? 'webm' : 'mp4';
    w.file(
      `${h}/Videos/${ext === 'webm' ? `Screencast ${i}` : `VID_2023080${i + 1}_1012${i}5`}.${ext}`,
      typedContent(rng, w.bytes, ext, rng.size(s.mediaMax / 4, s.mediaMax)),
      { category: 'videos', mtime: day() },
    );
  }

  // Downloads: complete ones and partials
  w.file(
    `${h}/Downloads/debian-${c.osVersion}.5.0-amd64-netinst.iso`,
    typedContent(rng, w.bytes, 'iso', s.iso),
    { category: 'downloads', mtime: day() },
  );
  w.file(
    `${h}/Downloads/zoom_amd64.deb`,
    typedContent(rng, w.bytes, 'deb', rng.size(32 * KiB, s.binMax * 2)),
    { category: 'downloads', mtime: day() },
  );
  w.typed(
    `${h}/Downloads/statement-${rng.range(1000, 9999)}.pdf`,
    rng.size(8 * KiB, s.docMax / 8),
    {
      category: 'downloads',
      mtime: day(),
    },
  );
  w.file(
    `${h}/Downloads/ubuntu-24.04-desktop-amd64.iso.part`,
    cat(Buffer.alloc(4096), w.bytes.take(rng.size(16 * KiB, s.iso / 2))),
    { category: 'partial-downloads', mtime: day() },
  );
  w.file(
    `${h}/Downloads/Unconfirmed ${rng.range(100000, 999999)}.crdownload`,
    w.bytes.take(rng.size(8 * KiB, s.iso / 4)),
    { category: 'partial-downloads', mtime: day() },
  );
  w.file(
    `${h}/Downloads/mozilla-temp-${rng.range(10000, 99999)}.tmp`,
    w.bytes.take(rng.size(1 * KiB, 32 * KiB)),
    { category: 'partial-downloads', mtime: day() },
  );

  // Desktop
  w.file(
    `${h}/Desktop/firefox-esr.desktop`,
    desktopEntry('Firefox ESR', 'firefox-esr %u', 'firefox-esr'),
    { mode: 0o755, category: 'desktop-entries' },
  );
  w.file(
    `${h}/Desktop/Intranet.desktop`,
    `[Desktop Entry]\nVersion=1.0\nType=Link\nName=Intranet\nURL=https://intranet.${DOMAIN}/\nIcon=text-html\n`,
    { category: 'desktop-entries' },
  );
  w.file(`${h}/Desktop/todo.txt`, prose(rng, rng.range(100, 1500)), {
    category: 'documents',
    mtime: day(),
  });

  // Trash
  w.file(
    `${h}/.local/share/Trash/files/old draft.odt`,
    typedContent(rng, w.bytes, 'odt', rng.size(2 * KiB, 40 * KiB)),
    { category: 'trash' },
  );
  w.file(
    `${h}/.local/share/Trash/info/old draft.odt.trashinfo`,
    `[Trash Info]\nPath=${u.home}/Documents/old%20draft.odt\nDeletionDate=2024-02-03T10:11:12\n`,
    { category: 'trash' },
  );
}

function writeOutside(c: Ctx): void {
  const { w, rng, s, acc } = c;
  w.era(c.install + 10 * DAY, c.now);
  // web site, owned by www-data
  w.dir('srv/www', { owner: [0, 0] });
  w.dir('srv/www/site', { owner: [33, 33], mode: 0o2775 });
  w.file(
    'srv/www/site/index.html',
    `<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>${c.hostname}</title><link rel="stylesheet" href="style.css"></head>\n<body><h1>Team site</h1><p>${prose(rng, 400).toString('latin1')}</p><script src="app.js"></script></body></html>\n`,
    { category: 'web-site' },
  );
  w.file(
    'srv/www/site/style.css',
    'body { font-family: sans-serif; margin: 2em; }\nh1 { color: #a80030; }\n',
    { category: 'web-site' },
  );
  w.file(
    'srv/www/site/app.js',
    `'use strict';\ndocument.addEventListener('DOMContentLoaded', () => console.log('ready'));\n`,
    { category: 'web-site' },
  );
  w.file('srv/www/site/robots.txt', 'User-agent: *\nDisallow: /private/\n', {
    category: 'web-site',
  });
  for (let i = 0; i < s.siteFiles; i++) {
    const ext = rng.pick(['png', 'jpg', 'html', 'pdf']);
    const dir = ext === 'html' ? 'pages' : ext === 'pdf' ? 'downloads' : 'images';
    w.typed(
      `srv/www/site/${dir}/${rng.pick(WORDS)}-${i}.${ext}`,
      ext === 'html' ? rng.range(500, 8000) : rng.size(4 * KiB, s.picMax / 2),
      { category: 'web-site' },
    );
  }

  // an application's databases
  w.file('opt/app/bin/app', typedContent(rng, w.bytes, 'elf', rng.size(32 * KiB, s.binMax)), {
    mode: 0o755,
  });
  w.file('opt/app/etc/app.conf', 'listen = 127.0.0.1:8080\ndata = /opt/app/data\n');
  w.dir('opt/app/data', { owner: [998, 998], mode: 0o750 });
  for (const name of ['app.db', 'sessions.db', 'audit.db']) {
    w.file(
      `opt/app/data/${name}`,
      typedContent(rng, w.bytes, 'sqlite', rng.size(16 * KiB, s.binMax * 2)),
      { mode: 0o640, category: 'app-data' },
    );
  }
  w.file('opt/app/data/app.db-wal', w.bytes.take(rng.range(4 * KiB, 64 * KiB)), {
    mode: 0o640,
    category: 'app-data',
  });
  w.dir('opt/app/data/uploads', { mode: 0o750 });
  w.typed(`opt/app/data/uploads/${rng.uuid()}.pdf`, rng.size(8 * KiB, 256 * KiB), {
    mode: 0o640,
    category: 'app-data',
  });

  // PostgreSQL's cluster, owned by postgres (105:110)
  const pg: [number, number] = [105, 110];
  w.dir('var/lib/postgresql', { owner: pg, mode: 0o755 });
  w.dir('var/lib/postgresql/15', { owner: pg, mode: 0o755 });
  w.dir('var/lib/postgresql/15/main', { owner: pg, mode: 0o700 });
  const main = 'var/lib/postgresql/15/main';
  const pgf = (rel: string, data: Buffer | string): void =>
    w.file(`${main}/${rel}`, data, { mode: 0o600, category: 'database' });
  pgf('PG_VERSION', '15\n');
  pgf(
    'postgresql.auto.conf',
    '# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n',
  );
  pgf(
    'postmaster.opts',
    '/usr/lib/postgresql/15/bin/postgres "-D" "/var/lib/postgresql/15/main" "-c" "config_file=/etc/postgresql/15/main/postgresql.conf"\n',
  );
  pgf('global/pg_control', w.bytes.take(8192));
  pgf('global/1260', w.bytes.take(8192));
  pgf('pg_xact/0000', w.bytes.take(8192));
  pgf('pg_wal/000000010000000000000001', w.bytes.take(s.wal));
  for (const d of [
    'pg_wal/archive_status',
    'pg_stat',
    'pg_stat_tmp',
    'pg_twophase',
    'pg_snapshots',
  ])
    w.dir(`${main}/${d}`, { mode: 0o700 });
  for (let i = 0; i < s.pgRelations; i++) {
    const db = rng.pick(['1', '4', '5', '16384']);
    pgf(
      `base/${db}/${rng.range(1200, 30000)}${i % 7 === 0 ? '_fsm' : ''}`,
      w.bytes.take(8192 * rng.range(1, i % 5 === 0 ? 32 : 4)),
    );
  }
  for (const dir of [...w.entries.keys()].filter(
    (k) => k.startsWith(`${main}/`) && w.entries.get(k)?.type === 'dir',
  )) {
    w.dir(dir, { owner: pg, mode: 0o700 });
  }

  // a shared folder: setgid, group developers, files from several users
  const devs = acc.regular.filter((u) => u.groups.includes('developers'));
  const writers = devs.length ? devs : acc.regular.slice(0, 1);
  w.dir('data', { mode: 0o755 });
  w.dir('data/projects', { mode: 0o2775, owner: [0, DEVELOPERS_GID] });
  for (const p of ['apollo', 'hermes']) {
    w.dir(`data/projects/${p}`, { mode: 0o2775, owner: [writers[0]?.uid ?? 0, DEVELOPERS_GID] });
    for (let i = 0; i < s.projectFiles; i++) {
      const ext = rng.pick(['md', 'csv', 'odt', 'pdf', 'png', 'xlsx']);
      const pool = [...writers, ...acc.regular];
      const by = pool.length ? rng.pick(pool) : undefined;
      w.typed(
        `data/projects/${p}/${rng.pick(DOC_TOPICS).toLowerCase().replace(/ /g, '-')}-${i}.${ext}`,
        rng.size(KiB, s.docMax / 2, 2.5),
        { mode: 0o664, owner: [by?.uid ?? 0, DEVELOPERS_GID], category: 'shared-projects' },
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------
// makeNewOsTree

/** Folders a new OS image brings whole (replacing what is there); all else is left alone. */
const NEW_OS_REPLACES = [
  'etc',
  'usr',
  'boot',
  'var/lib/dpkg',
  'var/lib/apt',
  'var/cache/apt',
  'var/log',
  'bin',
  'sbin',
  'lib',
  'lib64',
];

/**
 * Mutates a machine tree (or an empty or wiped one) into "a different OS": another Debian
 * release, as applying its image would. /etc, /usr, /boot, dpkg/apt state and logs are
 * replaced; /home, /root, /srv, /opt, /data and /var/lib/postgresql are not touched (except
 * `opts.homes`). The new /etc has its own hostname ("debian"), empty machine-id, fresh SSH host
 * keys, only system accounts, /etc/skel — many of which collide with what a restore writes.
 * Returns the regular files and symlinks of the new OS, relative to root, sorted.
 */
export async function makeNewOsTree(
  root: string,
  opts: NewOsTreeOptions = {},
): Promise<{ files: string[] }> {
  root = path.resolve(root);
  const seed = opts.seed ?? 2;
  const osVersion = opts.osVersion ?? '13';
  const rng = new Rng(seed ^ 0x0e0e0e0e);
  const b = new Bytes(seed, 'new-os');
  for (const d of NEW_OS_REPLACES) fs.rmSync(path.join(root, d), { recursive: true, force: true });
  const w = new TreeWriter(root, rng, b);
  const built = 1_740_000_000 + rng.int(10_000_000);
  const s = SCALES.small;
  const acc: Accounts = {
    users: [
      {
        name: 'root',
        uid: 0,
        gid: 0,
        gecos: 'root',
        home: '/root',
        shell: '/bin/bash',
        shadow: `*:${Math.floor(built / DAY)}:0:99999:7:::`,
        groups: [],
      },
      ...SYSTEM_USERS.filter((u) => u.uid < 100 || u.uid === 65534).map((u) => ({
        ...u,
        shadow: `*:${Math.floor(built / DAY)}:0:99999:7:::`,
        groups: [],
      })),
    ],
    groups: SYSTEM_GROUPS.filter(([, gid]) => gid < 100 || gid === 65534).map(([name, gid]) => ({
      name,
      gid,
      members: [],
    })),
    regular: [],
    hashes: [],
  };
  const c: Ctx = {
    w,
    rng,
    b,
    s,
    osVersion,
    hostname: 'debian',
    acc,
    install: built,
    now: built,
    secrets: [],
    packages: packageNames(rng, s.docPackages),
  };
  w.era(built - 200 * DAY, built);
  for (const [l, t] of [
    ['bin', 'usr/bin'],
    ['sbin', 'usr/sbin'],
    ['lib', 'usr/lib'],
    ['lib64', 'usr/lib64'],
  ] as const)
    w.symlink(l, t);
  writeUsr(c);
  writeBoot(c);
  w.era(built, built + DAY);

  const f = (rel: string, data: string | Buffer, o: WriteOptions = {}): void =>
    w.file(rel, data, o);
  f('etc/hostname', 'debian\n');
  f(
    'etc/hosts',
    '127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n\n::1     localhost ip6-localhost ip6-loopback\n',
  );
  f('etc/machine-id', '', { mode: 0o444 });
  f('etc/timezone', 'Etc/UTC\n');
  w.symlink('etc/localtime', '/usr/share/zoneinfo/Etc/UTC');
  f('etc/default/locale', 'LANG=C.UTF-8\n');
  f('etc/locale.gen', '# en_US.UTF-8 UTF-8\n');
  w.symlink('etc/os-release', '../usr/lib/os-release');
  f('etc/debian_version', `${osVersion}.0\n`);
  f('etc/passwd', passwdText(acc.users));
  f('etc/shadow', shadowText(acc.users), { mode: 0o640, owner: [0, SHADOW_GID] });
  f('etc/group', groupText(acc.groups));
  f('etc/gshadow', gshadowText(acc.groups), { mode: 0o640, owner: [0, SHADOW_GID] });
  f('etc/shells', '/bin/sh\n/usr/bin/sh\n/bin/bash\n/usr/bin/bash\n');
  f(
    'etc/sudoers',
    'Defaults\tenv_reset\nroot\tALL=(ALL:ALL) ALL\n%sudo\tALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n',
    { mode: 0o440 },
  );
  f('etc/sudoers.d/README', '# Files in this directory are read by sudo.\n', { mode: 0o440 });
  for (const n of ['.bashrc', '.profile', '.bash_logout'])
    f(`etc/skel/${n}`, skelFile(n, osVersion));
  f('etc/skel/.config/user-dirs.dirs', skelFile('user-dirs', osVersion));
  f(
    'etc/fstab',
    `# /etc/fstab: static file system information.\nUUID=${rng.uuid()} / ext4 errors=remount-ro 0 1\n`,
  );
  f(
    'etc/network/interfaces',
    'source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n',
  );
  w.dir('etc/network/interfaces.d');
  f('etc/NetworkManager/NetworkManager.conf', '[main]\nplugins=ifupdown,keyfile\n');
  w.dir('etc/NetworkManager/system-connections', { mode: 0o700 });
  f(
    'etc/ssh/sshd_config',
    'Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\nSubsystem\tsftp\t/usr/lib/openssh/sftp-server\n',
  );
  for (const t of ['ed25519', 'ecdsa', 'rsa'] as const) {
    f(`etc/ssh/ssh_host_${t}_key`, sshPrivateKey(b, t, 'root@debian'), { mode: 0o600 });
    f(`etc/ssh/ssh_host_${t}_key.pub`, sshPublicKey(b, t, 'root@debian'));
  }
  f('etc/krb5.conf', '[libdefaults]\n\tdefault_realm = ATHENA.MIT.EDU\n');
  const code = codename(osVersion);
  f(
    'etc/apt/sources.list',
    `deb http://deb.debian.org/debian ${code} main\ndeb http://security.debian.org/debian-security ${code}-security main\n`,
  );
  f(
    'var/lib/dpkg/status',
    c.packages
      .map(
        (p) =>
          `Package: ${p}\nStatus: install ok installed\nArchitecture: amd64\nVersion: ${pkgVersion(rng, osVersion)}\n`,
      )
      .join('\n'),
  );
  w.dir('var/log/apt');
  f('var/log/installer/syslog', logText(rng, 'debian', built - DAY, 4 * KiB), {
    mode: 0o640,
    owner: [0, ADM_GID],
  });
  w.dir('var/cache/apt/archives/partial', { mode: 0o700 });

  for (const u of opts.homes ?? []) {
    const h = u.home.replace(/^\/+/, '');
    const own: [number, number] = [u.uid, u.gid];
    // a home folder the image creates (the old one was wiped) belongs to the user
    const home = w.ensureDir(h);
    if (!home.existing) {
      [home.uid, home.gid] = own;
      home.mode = 0o700;
    }
    f(`${h}/.bashrc`, skelFile('.bashrc', osVersion), { owner: own });
    f(`${h}/.config/user-dirs.dirs`, skelFile('user-dirs', osVersion), { owner: own });
    // the folders the image creates for the user belong to the user
    for (const d of [`${h}/.config`]) {
      const e = w.entries.get(d);
      if (e && !e.existing) [e.uid, e.gid] = own;
    }
  }
  w.finish(process.getuid?.() === 0);
  const files = [...w.entries]
    .filter(([, e]) => e.type !== 'dir')
    .map(([rel]) => rel)
    .sort();
  return { files };
}
