import { createHash, randomBytes } from 'node:crypto';
import { lstat, mkdir, readFile, readdir, readlink } from 'node:fs/promises';
import { isIP } from 'node:net';
import { join, posix, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';

import { ReimageError } from '../errors.js';
import type { MachineState } from './model.js';

/**
 * Machine state of a Linux tree: read from the old OS (phase 1), then resolved against the
 * deployment settings into the state the new OS is given (answer-files.ts writes it).
 *
 * Nothing here logs: the administrator password hash and the product key are secrets, and
 * error messages name the property, never its value.
 */

/** What the agent knows about the machine itself, for `%SERIAL%` and `%MAC%` in a set name. */
export interface PlaceholderFacts {
  serial?: string;
  /** MAC addresses, the primary interface first. */
  macs?: string[];
}

/** One item of the deployment settings' `machineState` section (src/package/schema.ts). */
export type MachineStateChoice<T> = 'migrate' | { set: T };

/**
 * The deployment settings' `machineState` section, structurally (src/migrate may not import
 * src/package). Secrets arrive decrypted in the machine's policy; a `{secret: 'set'}` marker
 * here means they were not, and is refused.
 */
export interface MachineStateSettings {
  computerName?: MachineStateChoice<string>;
  userName?: MachineStateChoice<string>;
  organization?: MachineStateChoice<string>;
  productKey?: MachineStateChoice<string | { secret: 'set' }>;
  administratorPassword?: MachineStateChoice<string | { secret: 'set' }>;
  ipAddress?: MachineStateChoice<
    'dhcp' | { address: string; prefix: number; gateway: string; dns?: string[] }
  >;
}

export type NetworkState = NonNullable<MachineState['network']>;

// ------------------------------------------------------------------ paths inside a tree

const MAX_SYMLINK_HOPS = 40;

/**
 * Resolves a path of a tree (e.g. "/etc/hostname") to a host path inside `root`, following
 * symlinks as the tree's own OS would: an absolute target is taken inside the tree, a
 * relative one from the link's folder. A target that climbs above the tree's root, or a loop,
 * is refused (APPLY_FAILED, or SOURCE_UNREADABLE when `reading`): a write must never land
 * outside the tree, and a read never takes another tree's file for this one's.
 *
 * `followLast: false` leaves a symlink in the last place as it is (a write then replaces the
 * link, never what it points to). `createDirs` creates missing folders (mode 0755), the last
 * place included: pass a folder.
 */
export async function resolveInTree(
  root: string,
  treePath: string,
  o: { followLast?: boolean; createDirs?: boolean; reading?: boolean } = {},
): Promise<string> {
  const base = resolve(root);
  const queue = treePath.split('/').filter((c) => c !== '' && c !== '.');
  const cur: string[] = [];
  let hops = 0;
  const refuse = (why: string): never => {
    throw o.reading
      ? new ReimageError('SOURCE_UNREADABLE', `${treePath} in ${base}: ${why}; not read`, {
          details: { path: treePath },
        })
      : new ReimageError('APPLY_FAILED', `${treePath} in ${base}: ${why}; nothing was written`, {
          details: { path: treePath },
        });
  };
  while (queue.length > 0) {
    const c = queue.shift() as string;
    if (c === '..') {
      if (cur.length === 0) refuse('a symlink or ".." leads outside the tree');
      cur.pop();
      continue;
    }
    const last = queue.length === 0;
    const here = join(base, ...cur, c);
    let st;
    try {
      st = await lstat(here);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') throw e;
      if (last && !o.createDirs) {
        cur.push(c);
        continue;
      }
      if (!o.createDirs) {
        // Nothing below a missing folder exists: the caller sees ENOENT on its own access.
        cur.push(c, ...queue);
        break;
      }
      await mkdir(here, { mode: 0o755 });
      st = await lstat(here);
    }
    if (st.isSymbolicLink() && (!last || o.followLast)) {
      if (++hops > MAX_SYMLINK_HOPS) refuse('symlinks loop');
      const target = await readlink(here);
      if (target.startsWith('/')) cur.length = 0;
      queue.unshift(...target.split('/').filter((t) => t !== '' && t !== '.'));
      continue;
    }
    if (!last && !st.isDirectory()) refuse(`${join('/', ...cur, c)} is not a folder`);
    cur.push(c);
  }
  return join(base, ...cur);
}

/** The text of a tree's file, or undefined when it does not exist. */
export async function readTreeFile(root: string, treePath: string): Promise<string | undefined> {
  try {
    return await readFile(
      await resolveInTree(root, treePath, { followLast: true, reading: true }),
      'utf8',
    );
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'EISDIR') return undefined;
    if (e instanceof ReimageError) throw e;
    throw new ReimageError('SOURCE_UNREADABLE', `cannot read ${treePath} in ${root}`, {
      cause: e,
      details: { path: treePath },
    });
  }
}

async function readTreeDir(root: string, treePath: string): Promise<string[]> {
  try {
    return (
      await readdir(await resolveInTree(root, treePath, { followLast: true, reading: true }))
    ).sort();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return [];
    if (e instanceof ReimageError) throw e;
    throw new ReimageError('SOURCE_UNREADABLE', `cannot list ${treePath} in ${root}`, {
      cause: e,
      details: { path: treePath },
    });
  }
}

// ------------------------------------------------------------------ validation

const LABEL = /^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$/;
const TIMEZONE = /^[A-Za-z0-9_+-]+(?:\/[A-Za-z0-9_+-]+){0,3}$/;
const LOCALE =
  /^(?:[A-Za-z]{2,3}(?:_[A-Za-z]{2})?|C|POSIX)(?:\.[A-Za-z0-9-]{1,32})?(?:@[A-Za-z0-9]{1,32})?$/;
const CRYPT_HASH = /^\$(?:1|2[abxy]|5|6|7|y|gy|sha1|md5)\$[./A-Za-z0-9$=,+]{1,500}$/;
const INTERFACE = /^[A-Za-z0-9_.-]{1,15}$/;
const PRODUCT_KEY = /^[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*$/;
const CONTROL = /[\u0000-\u001f\u007f]/;

/** A host name (one label): RFC 1123, 1-63 letters, digits and "-", not starting or ending with "-". */
export function isValidHostname(name: string): boolean {
  return LABEL.test(name);
}

/** A DNS domain: labels as above joined by ".", at most 253 characters. */
export function isValidDomain(name: string): boolean {
  return name.length <= 253 && name.split('.').every((l) => LABEL.test(l));
}

/** A crypt(3) hash ("$6$salt$..."), as /etc/shadow and cloud-init take it. */
export function isCryptHash(s: string): boolean {
  return CRYPT_HASH.test(s);
}

function invalid(property: string, why: string): never {
  throw new ReimageError('INVALID_ARGUMENT', `machineState.${property}: ${why}`, {
    details: { property: `machineState.${property}` },
  });
}

function checkText(property: string, v: string, max: number, secret = false): void {
  const shown = secret ? '' : ` (found ${JSON.stringify(v.slice(0, 80))})`;
  if (v.length === 0 || v.length > max) invalid(property, `must be 1-${max} characters${shown}`);
  if (CONTROL.test(v))
    invalid(property, `must not contain control characters or line breaks${shown}`);
}

function checkNetwork(n: NetworkState): void {
  if (n.mode === 'dhcp') return;
  const family = isIP(n.address);
  if (family === 0)
    invalid(
      'ipAddress',
      `address must be an IPv4 or IPv6 address (found ${JSON.stringify(n.address)})`,
    );
  if (!Number.isInteger(n.prefix) || n.prefix < 0 || n.prefix > (family === 4 ? 32 : 128))
    invalid('ipAddress', `prefix must be 0-${family === 4 ? 32 : 128} (found ${n.prefix})`);
  if (n.gateway !== undefined && isIP(n.gateway) !== family)
    invalid(
      'ipAddress',
      `gateway must be an IPv${family} address (found ${JSON.stringify(n.gateway)})`,
    );
  if ((n.dns?.length ?? 0) > 8) invalid('ipAddress', 'at most 8 DNS servers');
  for (const d of n.dns ?? [])
    if (isIP(d) === 0)
      invalid('ipAddress', `dns must be IP addresses (found ${JSON.stringify(d)})`);
  if (n.interface !== undefined && !INTERFACE.test(n.interface))
    invalid(
      'ipAddress',
      `interface must be 1-15 letters, digits, ".", "_" or "-" (found ${JSON.stringify(n.interface)})`,
    );
}

/**
 * Checks every property of a state before it is written anywhere: a bad value fails with
 * INVALID_ARGUMENT naming the property (never echoing a secret), so that no answer file, no
 * /etc line can be broken or injected by a value.
 */
export function validateMachineState(s: MachineState): void {
  if (s.computerName !== undefined && !isValidHostname(s.computerName))
    invalid(
      'computerName',
      `must be a host name of 1-63 letters, digits and "-", not starting or ending with "-" (RFC 1123) (found ${JSON.stringify(s.computerName.slice(0, 80))})`,
    );
  if (s.domain !== undefined && !isValidDomain(s.domain))
    invalid(
      'domain',
      `must be a DNS domain such as "example.com" (found ${JSON.stringify(s.domain.slice(0, 80))})`,
    );
  if (
    s.computerName !== undefined &&
    s.domain !== undefined &&
    s.computerName.length + 1 + s.domain.length > 253
  )
    invalid('domain', 'the full name (computer name and domain) must be at most 253 characters');
  if (s.userName !== undefined) checkText('userName', s.userName, 256);
  if (s.organization !== undefined) checkText('organization', s.organization, 256);
  if (s.productKey !== undefined) {
    checkText('productKey', s.productKey, 64, true);
    if (!PRODUCT_KEY.test(s.productKey))
      invalid(
        'productKey',
        'must be letters and digits in groups separated by "-" (XXXXX-XXXXX-XXXXX-XXXXX-XXXXX)',
      );
  }
  const pw = s.administratorPassword;
  if (pw !== undefined) {
    if (pw.hash === undefined && pw.clear === undefined)
      invalid('administratorPassword', 'needs a hash or a password');
    if (pw.hash !== undefined && !isCryptHash(pw.hash))
      invalid('administratorPassword', 'the hash must be in crypt(3) form such as "$6$salt$..."');
    if (pw.clear !== undefined) checkText('administratorPassword', pw.clear, 256, true);
  }
  if (s.timezone !== undefined && (!TIMEZONE.test(s.timezone) || s.timezone.length > 64))
    invalid(
      'timezone',
      `must be a time zone name such as "Europe/Paris" (found ${JSON.stringify(s.timezone.slice(0, 80))})`,
    );
  if (s.locale !== undefined && !LOCALE.test(s.locale))
    invalid(
      'locale',
      `must be a locale such as "en_US.UTF-8" (found ${JSON.stringify(s.locale.slice(0, 80))})`,
    );
  if (s.network !== undefined) checkNetwork(s.network);
}

// ------------------------------------------------------------------ password hashing

const ITOA64 = './0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

// The byte order of SHA-crypt's final encoding (Drepper, "Unix crypt using SHA-256 and SHA-512").
const SHA512_ORDER = [
  [0, 21, 42],
  [22, 43, 1],
  [44, 2, 23],
  [3, 24, 45],
  [25, 46, 4],
  [47, 5, 26],
  [6, 27, 48],
  [28, 49, 7],
  [50, 8, 29],
  [9, 30, 51],
  [31, 52, 10],
  [53, 11, 32],
  [12, 33, 54],
  [34, 55, 13],
  [56, 14, 35],
  [15, 36, 57],
  [37, 58, 16],
  [59, 17, 38],
  [18, 39, 60],
  [40, 61, 19],
  [62, 20, 41],
] as const;

function repeatTo(block: Buffer, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i += block.length)
    block.copy(out, i, 0, Math.min(block.length, length - i));
  return out;
}

/**
 * SHA-512 crypt ("$6$"), the hash /etc/shadow holds on Debian: so that a clear password set
 * in the deployment settings never has to be written as clear text on Linux. `salt` (at most
 * 16 characters of [./A-Za-z0-9]) is random when not given.
 */
export function sha512Crypt(password: string, salt?: string, rounds?: number): string {
  const s = Buffer.from(salt ?? saltChars(16), 'utf8').subarray(0, 16);
  const p = Buffer.from(password, 'utf8');
  const r = rounds === undefined ? 5000 : Math.min(999_999_999, Math.max(1000, Math.floor(rounds)));
  const sha = () => createHash('sha512');
  const b = sha().update(p).update(s).update(p).digest();
  const a = sha().update(p).update(s);
  let n = p.length;
  for (; n > 64; n -= 64) a.update(b);
  a.update(b.subarray(0, n));
  for (n = p.length; n > 0; n >>= 1) a.update(n & 1 ? b : p);
  let c = a.digest();
  const dp = sha();
  for (let i = 0; i < p.length; i++) dp.update(p);
  const pp = repeatTo(dp.digest(), p.length);
  const ds = sha();
  for (let i = 0; i < 16 + (c[0] as number); i++) ds.update(s);
  const sp = repeatTo(ds.digest(), s.length);
  for (let i = 0; i < r; i++) {
    const h = sha();
    h.update(i & 1 ? pp : c);
    if (i % 3) h.update(sp);
    if (i % 7) h.update(pp);
    h.update(i & 1 ? c : pp);
    c = h.digest();
  }
  let out = '';
  const emit = (w: number, chars: number) => {
    for (let i = 0; i < chars; i++, w >>= 6) out += ITOA64[w & 0x3f];
  };
  for (const [x, y, z] of SHA512_ORDER)
    emit(((c[x] as number) << 16) | ((c[y] as number) << 8) | (c[z] as number), 4);
  emit(c[63] as number, 2);
  return `$6$${rounds === undefined ? '' : `rounds=${r}$`}${s.toString('utf8')}$${out}`;
}

function saltChars(n: number): string {
  return [...randomBytes(n)].map((x) => ITOA64[x & 0x3f]).join('');
}

// ------------------------------------------------------------------ reading the old OS

function firstLine(text: string | undefined): string | undefined {
  const l = text
    ?.split('\n')
    .map((x) => x.trim())
    .find((x) => x !== '' && !x.startsWith('#'));
  return l === '' ? undefined : l;
}

/** `key = value` lines of one INI section (`[name]`), or of all sections when name is undefined. */
function iniSection(text: string, name: string): Map<string, string> {
  const out = new Map<string, string>();
  let inside = false;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const sec = /^\[\s*([^\]]*?)\s*\]$/.exec(line);
    if (sec) {
      inside = sec[1] === name;
      continue;
    }
    const eq = line.indexOf('=');
    if (inside && eq > 0) out.set(line.slice(0, eq).trim(), line.slice(eq + 1).trim());
  }
  return out;
}

function unquote(v: string): string {
  const m = /^(["'])(.*)\1$/.exec(v.trim());
  return m ? (m[2] as string) : v.trim();
}

function netmaskToPrefix(mask: string): number | undefined {
  if (isIP(mask) !== 4) return /^\d{1,3}$/.test(mask) ? Number(mask) : undefined;
  const bits = mask
    .split('.')
    .map((o) => Number(o).toString(2).padStart(8, '0'))
    .join('');
  return /^1*0*$/.test(bits) ? (bits.indexOf('0') === -1 ? 32 : bits.indexOf('0')) : undefined;
}

/** "192.0.2.10/24" → address and prefix (the prefix may come from elsewhere). */
function splitCidr(s: string): { address: string; prefix?: number } {
  const [address = '', prefix] = s.trim().split('/');
  return prefix === undefined ? { address } : { address, prefix: Number(prefix) };
}

type Candidate = NetworkState & { order: number };

function pick(candidates: Candidate[]): NetworkState | undefined {
  // One address is kept: the first static interface, else the first DHCP one.
  const best = candidates.find((c) => c.mode === 'static') ?? candidates[0];
  if (!best) return undefined;
  const { order: _order, ...n } = best;
  return n;
}

const ETHERNET_TYPES = new Set(['ethernet', '802-3-ethernet']);

async function readNetworkManager(root: string): Promise<NetworkState | undefined> {
  const dir = '/etc/NetworkManager/system-connections';
  const out: Candidate[] = [];
  for (const name of await readTreeDir(root, dir)) {
    const text = await readTreeFile(root, `${dir}/${name}`);
    if (text === undefined) continue;
    const conn = iniSection(text, 'connection');
    if (!ETHERNET_TYPES.has(conn.get('type') ?? '')) continue;
    const iface = conn.get('interface-name');
    for (const [family, section] of [
      [4, 'ipv4'],
      [6, 'ipv6'],
    ] as const) {
      const ip = iniSection(text, section);
      const method = ip.get('method');
      if (method === 'auto' && family === 4) {
        out.push({ mode: 'dhcp', order: out.length });
        break;
      }
      if (method !== 'manual') continue;
      const key = [...ip.keys()].find((k) => /^addresse?s?\d*$/.test(k));
      const first = key === undefined ? undefined : ip.get(key)?.split(';')[0];
      if (!first) continue;
      const [cidr = '', gw] = first.split(',');
      const { address, prefix } = splitCidr(cidr);
      const gateway = ip.get('gateway') ?? gw?.trim();
      const dns = (ip.get('dns') ?? '')
        .split(/[;,]/)
        .map((d) => d.trim())
        .filter((d) => d !== '');
      out.push({
        mode: 'static',
        ...(iface ? { interface: iface } : {}),
        address,
        prefix: prefix ?? (family === 4 ? 24 : 64),
        ...(gateway ? { gateway } : {}),
        ...(dns.length > 0 ? { dns } : {}),
        order: out.length,
      });
      break;
    }
  }
  return pick(out);
}

async function readInterfaces(root: string): Promise<NetworkState | undefined> {
  const files = ['/etc/network/interfaces'];
  const seen = new Set<string>();
  const lines: string[] = [];
  while (files.length > 0) {
    const f = files.shift() as string;
    if (seen.has(f) || seen.size > 64) continue;
    seen.add(f);
    const text = await readTreeFile(root, f);
    if (text === undefined) continue;
    for (const raw of text.split('\n')) {
      const line = raw.replace(/#.*/, '').trim();
      const src = /^source(-directory)?\s+(\S+)$/.exec(line);
      if (src) {
        const target = src[2] as string;
        const abs = target.startsWith('/') ? target : posix.join('/etc/network', target);
        if (src[1] || abs.endsWith('/*')) {
          const dir = abs.replace(/\/\*$/, '');
          for (const n of await readTreeDir(root, dir))
            if (/^[A-Za-z0-9_-]+$/.test(n)) files.push(`${dir}/${n}`);
        } else files.push(abs);
        continue;
      }
      if (line !== '') lines.push(line);
    }
  }
  const out: Candidate[] = [];
  interface Stanza {
    mode: 'static' | 'dhcp';
    family: 'inet' | 'inet6';
    interface: string;
    address?: string;
    netmask?: string;
    gateway?: string;
    dns?: string[];
  }
  let cur: Stanza | undefined;
  const flush = () => {
    if (!cur) return;
    if (cur.mode === 'dhcp' && cur.family === 'inet') out.push({ mode: 'dhcp', order: out.length });
    else if (cur.mode === 'static' && cur.address) {
      const { address, prefix } = splitCidr(cur.address);
      const p = prefix ?? (cur.netmask ? netmaskToPrefix(cur.netmask) : undefined);
      out.push({
        mode: 'static',
        ...(cur.interface ? { interface: cur.interface } : {}),
        address,
        prefix: p ?? (cur.family === 'inet' ? 24 : 64),
        ...(cur.gateway ? { gateway: cur.gateway } : {}),
        ...(cur.dns && cur.dns.length > 0 ? { dns: cur.dns } : {}),
        order: out.length,
      });
    }
    cur = undefined;
  };
  for (const line of lines) {
    const [word = '', ...rest] = line.split(/\s+/);
    if (word === 'iface') {
      flush();
      const [name = '', family = '', method = ''] = rest;
      if (name === 'lo' || (family !== 'inet' && family !== 'inet6')) continue;
      if (method === 'static' || method === 'dhcp') cur = { mode: method, family, interface: name };
      continue;
    }
    if (
      ['auto', 'allow-hotplug', 'mapping', 'source', 'source-directory'].includes(word) ||
      /^allow-/.test(word)
    ) {
      flush();
      continue;
    }
    if (!cur) continue;
    if (word === 'address') cur.address = rest[0];
    else if (word === 'netmask') cur.netmask = rest[0];
    else if (word === 'gateway') cur.gateway = rest[0];
    else if (word === 'dns-nameservers') cur.dns = [...(cur.dns ?? []), ...rest];
  }
  flush();
  return pick(out);
}

async function readNetplan(root: string): Promise<NetworkState | undefined> {
  const ethernets = new Map<string, Record<string, unknown>>();
  for (const name of await readTreeDir(root, '/etc/netplan')) {
    if (!name.endsWith('.yaml') && !name.endsWith('.yml')) continue;
    const text = await readTreeFile(root, `/etc/netplan/${name}`);
    let doc: unknown;
    try {
      doc = text === undefined ? undefined : parseYaml(text);
    } catch {
      continue; // netplan itself would refuse the file; it configures nothing
    }
    const eths = (doc as { network?: { ethernets?: unknown } } | undefined)?.network?.ethernets;
    if (eths === null || typeof eths !== 'object') continue;
    // Later files override earlier ones key by key, as netplan merges them.
    for (const [id, cfg] of Object.entries(eths as Record<string, unknown>))
      if (cfg !== null && typeof cfg === 'object')
        ethernets.set(id, { ...(ethernets.get(id) ?? {}), ...(cfg as Record<string, unknown>) });
  }
  const out: Candidate[] = [];
  for (const [id, cfg] of ethernets) {
    const match = cfg.match as { name?: unknown } | undefined;
    const setName = typeof cfg['set-name'] === 'string' ? cfg['set-name'] : undefined;
    const matchName =
      typeof match?.name === 'string' && !/[*?[]/.test(match.name) ? match.name : undefined;
    const iface = setName ?? matchName ?? (match === undefined ? id : undefined);
    const addresses = Array.isArray(cfg.addresses)
      ? cfg.addresses.filter((a): a is string => typeof a === 'string')
      : [];
    if (addresses.length > 0) {
      const { address, prefix } = splitCidr(addresses[0] as string);
      const v6 = isIP(address) === 6;
      const routes = Array.isArray(cfg.routes)
        ? (cfg.routes as Array<Record<string, unknown>>)
        : [];
      const def = routes.find((r) =>
        ['default', v6 ? '::/0' : '0.0.0.0/0'].includes(String(r?.to)),
      );
      const gw = typeof def?.via === 'string' ? def.via : cfg[v6 ? 'gateway6' : 'gateway4'];
      const ns = (cfg.nameservers as { addresses?: unknown } | undefined)?.addresses;
      const dns = Array.isArray(ns) ? ns.filter((d): d is string => typeof d === 'string') : [];
      out.push({
        mode: 'static',
        ...(iface ? { interface: iface } : {}),
        address,
        prefix: prefix ?? (v6 ? 64 : 24),
        ...(typeof gw === 'string' ? { gateway: gw } : {}),
        ...(dns.length > 0 ? { dns } : {}),
        order: out.length,
      });
    } else if (cfg.dhcp4 === true || cfg.dhcp4 === 'yes' || cfg.dhcp4 === 'true') {
      out.push({ mode: 'dhcp', order: out.length });
    }
  }
  return pick(out);
}

/**
 * The domain: the realm the machine is joined to (sssd), else the DNS domain of its FQDN
 * (/etc/hosts, /etc/hostname), else krb5's default realm, which Debian's krb5-config sets
 * (to ATHENA.MIT.EDU) on machines that joined nothing.
 */
async function readDomain(
  root: string,
  host: string | undefined,
  hostDomain: string | undefined,
): Promise<string | undefined> {
  const sssd = await readTreeFile(root, '/etc/sssd/sssd.conf');
  const domains = sssd === undefined ? undefined : iniSection(sssd, 'sssd').get('domains');
  const first = domains?.split(',')[0]?.trim();
  if (first) return first.toLowerCase();
  if (host !== undefined) {
    const hosts = (await readTreeFile(root, '/etc/hosts')) ?? '';
    for (const raw of hosts.split('\n')) {
      const names = raw.replace(/#.*/, '').trim().split(/\s+/).slice(1);
      const fqdn = names.find((n) => n.toLowerCase().startsWith(`${host.toLowerCase()}.`));
      if (fqdn) return fqdn.slice(host.length + 1).toLowerCase();
    }
  }
  if (hostDomain) return hostDomain.toLowerCase();
  const krb5 = await readTreeFile(root, '/etc/krb5.conf');
  const realm =
    krb5 === undefined ? undefined : iniSection(krb5, 'libdefaults').get('default_realm');
  return realm ? realm.toLowerCase() : undefined;
}

async function readTimezone(root: string): Promise<string | undefined> {
  const tz = firstLine(await readTreeFile(root, '/etc/timezone'));
  if (tz) return tz;
  try {
    const link = await resolveInTree(root, '/etc/localtime', { reading: true });
    const target = await readlink(link);
    const m = /(?:^|\/)zoneinfo\/(?:posix\/|right\/)?(.+)$/.exec(target);
    return m ? m[1] : undefined;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EINVAL' || code === 'ENOTDIR') return undefined;
    throw e;
  }
}

async function readLocale(root: string): Promise<string | undefined> {
  for (const f of ['/etc/default/locale', '/etc/locale.conf']) {
    const text = await readTreeFile(root, f);
    const line = text?.split('\n').find((l) => /^\s*(?:export\s+)?LANG\s*=/.test(l));
    if (line) return unquote(line.slice(line.indexOf('=') + 1));
  }
  return undefined;
}

async function readRootHash(root: string): Promise<string | undefined> {
  const shadow = await readTreeFile(root, '/etc/shadow');
  const line = shadow?.split('\n').find((l) => l.startsWith('root:'));
  const hash = line?.split(':')[1];
  // "!", "*", "" or "!$6$..." mean locked or no password: nothing to carry over.
  return hash !== undefined && isCryptHash(hash) ? hash : undefined;
}

async function hasSshHostKeys(root: string): Promise<boolean> {
  return (await readTreeDir(root, '/etc/ssh')).some((n) => /^ssh_host_[a-z0-9]+_key$/.test(n));
}

/**
 * Reads the machine state of an old Linux tree (its root folder). Values are taken as found;
 * `resolveMachineState` validates them. Network: netplan, then NetworkManager keyfiles, then
 * /etc/network/interfaces; the first static ethernet interface wins, else the first DHCP one.
 */
export async function readMachineState(root: string): Promise<MachineState> {
  const s: MachineState = {};
  const hostname = firstLine(await readTreeFile(root, '/etc/hostname'));
  let host: string | undefined;
  let hostDomain: string | undefined;
  if (hostname) {
    const dot = hostname.indexOf('.');
    host = dot < 0 ? hostname : hostname.slice(0, dot);
    hostDomain = dot < 0 ? undefined : hostname.slice(dot + 1);
    s.computerName = host;
  }
  const domain = await readDomain(root, host, hostDomain);
  if (domain) s.domain = domain;
  const timezone = await readTimezone(root);
  if (timezone) s.timezone = timezone;
  const locale = await readLocale(root);
  if (locale) s.locale = locale;
  const network =
    (await readNetplan(root)) ?? (await readNetworkManager(root)) ?? (await readInterfaces(root));
  if (network) s.network = network;
  s.sshHostKeys = await hasSshHostKeys(root);
  const hash = await readRootHash(root);
  if (hash) s.administratorPassword = { hash };
  return s;
}

// ------------------------------------------------------------------ resolving

function expandPlaceholders(name: string, facts: PlaceholderFacts): string {
  return name.replace(/%(SERIAL|MAC)%/g, (_m, which: string) => {
    if (which === 'SERIAL') {
      const serial = (facts.serial ?? '').replace(/[^A-Za-z0-9-]/g, '');
      if (serial === '')
        invalid(
          'computerName',
          'uses %SERIAL% but the machine reported no usable serial number; set a name without it',
        );
      return serial;
    }
    const mac = (facts.macs?.[0] ?? '').replace(/[^0-9A-Fa-f]/g, '').toLowerCase();
    if (mac.length !== 12)
      invalid(
        'computerName',
        'uses %MAC% but the machine reported no MAC address; set a name without it',
      );
    return mac;
  });
}

function secretValue(property: string, v: string | { secret: 'set' }): string {
  if (typeof v !== 'string')
    invalid(
      property,
      'the secret was not delivered (found the {secret: set} marker): the machine policy must carry its value',
    );
  return v;
}

/**
 * The state to write into the new OS: each property of the settings section either migrated
 * (from `old`, falling back to `defaults`) or set; properties the settings do not name
 * (domain, timezone, locale, SSH host keys) are migrated. A set computer name expands
 * `%SERIAL%` and `%MAC%` (the first MAC, 12 lowercase hex digits) from `facts`; a set
 * administrator password in crypt(3) form is taken as a hash, any other as the password,
 * hashed here (SHA-512 crypt) for Linux and kept for Windows answer files.
 * Throws INVALID_ARGUMENT naming the property when a value is not valid.
 */
export function resolveMachineState(
  old: MachineState,
  settings: MachineStateSettings = {},
  o: { defaults?: MachineState; facts?: PlaceholderFacts } = {},
): MachineState {
  const d = o.defaults ?? {};
  const migrated = <K extends keyof MachineState>(k: K): MachineState[K] => old[k] ?? d[k];
  const out: MachineState = {};
  const put = <K extends keyof MachineState>(k: K, v: MachineState[K]) => {
    if (v !== undefined) out[k] = v;
  };
  const choose = <T>(
    property: keyof MachineStateSettings,
    migrate: () => void,
    set: (v: T) => void,
  ) => {
    const c = settings[property] as MachineStateChoice<T> | undefined;
    if (c === undefined || c === 'migrate') migrate();
    else if (typeof c === 'object' && c !== null && 'set' in c) set(c.set);
    else invalid(property, 'must be "migrate" or {set: VALUE}');
  };

  choose<string>(
    'computerName',
    () => put('computerName', migrated('computerName')),
    (v) => put('computerName', expandPlaceholders(v, o.facts ?? {})),
  );
  put('domain', migrated('domain'));
  choose<string>(
    'userName',
    () => put('userName', migrated('userName')),
    (v) => put('userName', v),
  );
  choose<string>(
    'organization',
    () => put('organization', migrated('organization')),
    (v) => put('organization', v),
  );
  choose<string | { secret: 'set' }>(
    'productKey',
    () => put('productKey', migrated('productKey')),
    (v) => put('productKey', secretValue('productKey', v).toUpperCase()),
  );
  choose<string | { secret: 'set' }>(
    'administratorPassword',
    () => put('administratorPassword', migrated('administratorPassword')),
    (v) => {
      const pw = secretValue('administratorPassword', v);
      if (isCryptHash(pw)) put('administratorPassword', { hash: pw });
      else {
        checkText('administratorPassword', pw, 256, true);
        put('administratorPassword', { hash: sha512Crypt(pw), clear: pw });
      }
    },
  );
  put('timezone', migrated('timezone'));
  put('locale', migrated('locale'));
  choose<
    NonNullable<MachineStateSettings['ipAddress']> extends MachineStateChoice<infer T> ? T : never
  >(
    'ipAddress',
    () => put('network', migrated('network')),
    (v) => {
      if (v === 'dhcp') put('network', { mode: 'dhcp' });
      else {
        const was = migrated('network');
        put('network', {
          mode: 'static',
          ...(was?.mode === 'static' && was.interface ? { interface: was.interface } : {}),
          address: v.address,
          prefix: v.prefix,
          gateway: v.gateway,
          ...(v.dns ? { dns: [...v.dns] } : {}),
        });
      }
    },
  );
  put('sshHostKeys', migrated('sshHostKeys'));
  validateMachineState(out);
  return out;
}
