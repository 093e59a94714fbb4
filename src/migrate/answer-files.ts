import { createHash, randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, open, rename, rm, symlink } from 'node:fs/promises';
import { isIP } from 'node:net';
import { basename, join, posix } from 'node:path';
import { stringify } from 'yaml';

import { ReimageError } from '../errors.js';
import {
  isCryptHash,
  resolveInTree,
  sha512Crypt,
  validateMachineState,
  type NetworkState,
} from './machine-state.js';
import type { MachineState, UserAccount } from './model.js';

/**
 * Answer files: machine state written for the new OS's first-boot setup.
 *
 * - Linux images with cloud-init: a NoCloud seed (meta-data, user-data, network-config).
 * - Linux images without it: direct writes into the applied tree (/etc/hostname, ...).
 * - Windows images: unattend.xml; old Windows (the seed's mini-setup): sysprep.inf.
 *
 * Every function validates the state first (validateMachineState) and returns strings or
 * writes files; none logs. Secrets (the root hash, the product key, the administrator
 * password) are in what they return: callers write them to files only (mode 0600 where a
 * secret is), and use describeMachineState for anything shown.
 */

// ------------------------------------------------------------------ shared

function invalid(property: string, why: string): never {
  throw new ReimageError('INVALID_ARGUMENT', `${property}: ${why}`, { details: { property } });
}

/** The hash /etc/shadow and cloud-init take: the migrated one, or the set password hashed. */
function linuxHash(s: MachineState): string | undefined {
  const pw = s.administratorPassword;
  if (pw?.hash !== undefined && isCryptHash(pw.hash)) return pw.hash;
  return pw?.clear === undefined ? undefined : sha512Crypt(pw.clear);
}

function fqdn(s: MachineState): string | undefined {
  return s.computerName !== undefined && s.domain !== undefined
    ? `${s.computerName}.${s.domain}`
    : undefined;
}

function normalizeMac(mac: string | undefined): string | undefined {
  if (mac === undefined) return undefined;
  const m = mac.trim().toLowerCase().replace(/-/g, ':');
  if (!/^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$/.test(m))
    invalid(
      'macAddress',
      `must be a MAC address such as 52:54:00:12:34:56 (found "${mac.slice(0, 40)}")`,
    );
  return m;
}

function defaultRoute(n: Extract<NetworkState, { mode: 'static' }>): string {
  return isIP(n.address) === 6 ? '::/0' : '0.0.0.0/0';
}

// ------------------------------------------------------------------ cloud-init NoCloud

/** The files of a NoCloud seed; network-config is absent when the state has no network. */
export interface NoCloudFiles {
  'meta-data': string;
  /** Starts with "#cloud-config"; holds the root password hash when there is one (a secret). */
  'user-data': string;
  /** Network config version 2. */
  'network-config'?: string;
}

// YAML 1.1 rules, as cloud-init (PyYAML) reads them: a MAC address or "no" is quoted, not a number or a boolean.
const YAML_OPTIONS = { version: '1.1', aliasDuplicateObjects: false, lineWidth: 0 } as const;

function networkConfigV2(
  n: NetworkState,
  domain: string | undefined,
  mac: string | undefined,
): Record<string, unknown> | undefined {
  const iface = n.mode === 'static' ? n.interface : undefined;
  if (n.mode === 'dhcp' && mac === undefined) return undefined; // cloud-init's fallback is DHCP on the first NIC
  if (n.mode === 'static' && iface === undefined && mac === undefined)
    invalid(
      'machineState.ipAddress',
      'a static address needs the interface name (migrated) or the MAC address of the machine',
    );
  // Matched by MAC when known: interface names change between OS versions (eth0 → ens3).
  const eth: Record<string, unknown> = mac === undefined ? {} : { match: { macaddress: mac } };
  if (n.mode === 'dhcp') eth.dhcp4 = true;
  else {
    const v6 = isIP(n.address) === 6;
    eth[v6 ? 'dhcp6' : 'dhcp4'] = false;
    eth.addresses = [`${n.address}/${n.prefix}`];
    // routes rather than the deprecated gateway4/gateway6; "0.0.0.0/0" rather than "default",
    // which cloud-init's own renderers (ENI on Debian) understand too.
    if (n.gateway !== undefined) eth.routes = [{ to: defaultRoute(n), via: n.gateway }];
    if ((n.dns?.length ?? 0) > 0 || domain !== undefined)
      eth.nameservers = {
        ...(n.dns?.length ? { addresses: [...n.dns] } : {}),
        ...(domain !== undefined ? { search: [domain] } : {}),
      };
  }
  return { version: 2, ethernets: { [iface ?? 'primary']: eth } };
}

/**
 * The NoCloud seed for an image with cloud-init: host name and FQDN, time zone, locale, root's
 * password hash (chpasswd users, not expired), SSH host keys kept (`ssh_deletekeys: false`)
 * when migrated ones are restored, and the network. `users` are only noted in a comment: the
 * accounts themselves are restored from the state store. `macAddress` (the machine's primary
 * MAC) makes the network config match the NIC by address rather than by name.
 */
export function cloudInitNoCloud(
  state: MachineState,
  o: { instanceId: string; users?: UserAccount[]; macAddress?: string },
): NoCloudFiles {
  validateMachineState(state);
  if (!/^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/.test(o.instanceId))
    invalid('instanceId', 'must be 1-128 letters, digits, ".", "_", ":" or "-"');
  const mac = normalizeMac(o.macAddress);

  const meta: Record<string, unknown> = { 'instance-id': o.instanceId };
  if (state.computerName !== undefined) meta['local-hostname'] = state.computerName;

  const cfg: Record<string, unknown> = {};
  if (state.computerName !== undefined) {
    cfg.preserve_hostname = false;
    cfg.hostname = state.computerName;
    const full = fqdn(state);
    if (full !== undefined) cfg.fqdn = full;
    cfg.prefer_fqdn_over_hostname = false;
    // "localhost" adds the 127.0.1.1 line and leaves the rest of /etc/hosts alone.
    cfg.manage_etc_hosts = 'localhost';
  }
  if (state.timezone !== undefined) cfg.timezone = state.timezone;
  if (state.locale !== undefined) cfg.locale = state.locale;
  const hash = linuxHash(state);
  if (hash !== undefined)
    cfg.chpasswd = { expire: false, users: [{ name: 'root', password: hash, type: 'hash' }] };
  // The restored keys must survive first boot: cloud-init deletes host keys by default.
  if (state.sshHostKeys === true) cfg.ssh_deletekeys = false;

  const notes = ['#cloud-config', '# Machine state written by reimage.'];
  const names = (o.users ?? [])
    .filter((u) => /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?$/.test(u.name))
    .map((u) => `${u.name} (${u.uid})`);
  if (names.length > 0)
    notes.push(
      `# Local accounts restored from the state store, not created here: ${names.join(', ')}.`,
    );
  const userData =
    Object.keys(cfg).length === 0
      ? `${notes.join('\n')}\n{}\n`
      : `${notes.join('\n')}\n${stringify(cfg, YAML_OPTIONS)}`;

  const files: NoCloudFiles = {
    'meta-data': stringify(meta, YAML_OPTIONS),
    'user-data': userData,
  };
  const net = state.network && networkConfigV2(state.network, state.domain, mac);
  if (net !== undefined) files['network-config'] = stringify(net, YAML_OPTIONS);
  return files;
}

// ------------------------------------------------------------------ safe writes into a tree

/**
 * Writes a file of a tree atomically (temporary name, fsync, rename): the OS sees the old
 * file or the new one, never half of one. Folders are resolved inside the tree
 * (resolveInTree: no symlink leads out of it); a symlink in the last place is replaced, not
 * followed. An existing file keeps its owner and mode unless `forceMode`; a new one gets `mode`.
 */
async function writeTreeFile(
  root: string,
  treePath: string,
  data: string,
  o: { mode: number; forceMode?: boolean },
): Promise<void> {
  const dir = await resolveInTree(root, posix.dirname(treePath), {
    followLast: true,
    createDirs: true,
  });
  const target = join(dir, basename(treePath));
  let mode = o.mode;
  let owner: { uid: number; gid: number } | undefined;
  try {
    const st = await lstat(target);
    if (st.isDirectory())
      throw new ReimageError(
        'APPLY_FAILED',
        `${treePath} in ${root} is a folder; nothing was written`,
        {
          details: { path: treePath },
        },
      );
    if (st.isFile()) {
      if (!o.forceMode) mode = st.mode & 0o7777;
      owner = { uid: st.uid, gid: st.gid };
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const tmp = join(dir, `.${basename(treePath)}.reimage-${randomUUID().slice(0, 8)}`);
  let fh;
  try {
    fh = await open(
      tmp,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    );
  } catch (e) {
    throw wrapWrite(e, root, treePath);
  }
  try {
    try {
      await fh.writeFile(data);
      if (owner) {
        try {
          await fh.chown(owner.uid, owner.gid);
        } catch (e) {
          // Only root may give a file away; a non-root writer (tests) keeps its own.
          if ((e as NodeJS.ErrnoException).code !== 'EPERM') throw e;
        }
      }
      await fh.chmod(mode); // after chown, which clears setuid bits
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, target);
  } catch (e) {
    await rm(tmp, { force: true });
    throw wrapWrite(e, root, treePath);
  }
  await syncDir(dir);
}

async function writeTreeSymlink(root: string, treePath: string, target: string): Promise<void> {
  const dir = await resolveInTree(root, posix.dirname(treePath), {
    followLast: true,
    createDirs: true,
  });
  const tmp = join(dir, `.${basename(treePath)}.reimage-${randomUUID().slice(0, 8)}`);
  try {
    await symlink(target, tmp);
    await rename(tmp, join(dir, basename(treePath)));
  } catch (e) {
    await rm(tmp, { force: true });
    throw wrapWrite(e, root, treePath);
  }
  await syncDir(dir);
}

async function syncDir(dir: string): Promise<void> {
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

function wrapWrite(e: unknown, root: string, treePath: string): unknown {
  if (e instanceof ReimageError) return e;
  const code = (e as NodeJS.ErrnoException).code ?? 'error';
  return new ReimageError('APPLY_FAILED', `cannot write ${treePath} in ${root}: ${code}`, {
    cause: e,
    details: { path: treePath },
  });
}

/** A tree's regular file, undefined when missing; a symlink or folder there is refused. */
async function readTreeRegular(root: string, treePath: string): Promise<string | undefined> {
  const dir = await resolveInTree(root, posix.dirname(treePath), { followLast: true });
  const path = join(dir, basename(treePath));
  let fh;
  try {
    fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    if (code === 'ELOOP')
      throw new ReimageError(
        'APPLY_FAILED',
        `${treePath} in ${root} is a symlink; refusing to edit through it`,
        { details: { path: treePath } },
      );
    throw wrapWrite(e, root, treePath);
  }
  try {
    if (!(await fh.stat()).isFile())
      throw new ReimageError('APPLY_FAILED', `${treePath} in ${root} is not a regular file`, {
        details: { path: treePath },
      });
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}

async function isTreeDir(root: string, treePath: string): Promise<boolean> {
  try {
    return (await lstat(await resolveInTree(root, treePath, { followLast: true }))).isDirectory();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}

/**
 * Writes a NoCloud seed into an applied tree: `<root>/var/lib/cloud/seed/nocloud/`. user-data
 * (it can hold a hash) and network-config are mode 0600, meta-data 0644. Returns the tree
 * paths written.
 */
export async function writeNoCloudSeed(root: string, files: NoCloudFiles): Promise<string[]> {
  const dir = '/var/lib/cloud/seed/nocloud';
  const written: string[] = [];
  const put = async (name: keyof NoCloudFiles, mode: number) => {
    const data = files[name];
    if (data === undefined) return;
    await writeTreeFile(root, `${dir}/${name}`, data, { mode, forceMode: true });
    written.push(`${dir}/${name}`);
  };
  await put('meta-data', 0o644);
  await put('user-data', 0o600);
  await put('network-config', 0o600);
  return written;
}

// ------------------------------------------------------------------ direct writes

function withLine(text: string, keep: (line: string) => boolean, add: string[]): string {
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  return [...lines.filter(keep), ...add].join('\n') + '\n';
}

/** A UUID from a name, so that writing the same connection twice gives the same file. */
function nameUuid(name: string): string {
  const h = createHash('sha256').update(name).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-${((parseInt(h.slice(16, 17), 16) & 3) | 8).toString(16)}${h.slice(17, 20)}-${h.slice(20, 32)}`;
}

function nmKeyfile(n: NetworkState, domain: string | undefined, mac: string | undefined): string {
  const iface = n.mode === 'static' ? n.interface : undefined;
  const out = [
    '# Written by reimage (machine state).',
    '[connection]',
    'id=reimage',
    `uuid=${nameUuid(`reimage-connection:${mac ?? iface ?? 'any'}`)}`,
    'type=ethernet',
    'autoconnect-priority=100',
  ];
  if (iface !== undefined && mac === undefined) out.push(`interface-name=${iface}`);
  out.push('', '[ethernet]');
  if (mac !== undefined) out.push(`mac-address=${mac.toUpperCase()}`);
  const family = n.mode === 'static' && isIP(n.address) === 6 ? 6 : 4;
  for (const f of [4, 6] as const) {
    out.push('', `[ipv${f}]`);
    if (n.mode === 'dhcp' || f !== family) {
      out.push('method=auto');
      continue;
    }
    out.push('method=manual');
    out.push(`address1=${n.address}/${n.prefix}${n.gateway !== undefined ? `,${n.gateway}` : ''}`);
    if (n.dns?.length) out.push(`dns=${n.dns.join(';')};`);
    if (domain !== undefined) out.push(`dns-search=${domain};`);
  }
  return out.join('\n') + '\n';
}

function netplanFile(n: NetworkState, domain: string | undefined, mac: string | undefined): string {
  const iface = n.mode === 'static' ? n.interface : undefined;
  const eth: Record<string, unknown> = {};
  if (mac !== undefined) eth.match = { macaddress: mac };
  else if (iface === undefined) eth.match = { name: 'e*' };
  if (n.mode === 'dhcp') eth.dhcp4 = true;
  else {
    eth[isIP(n.address) === 6 ? 'dhcp6' : 'dhcp4'] = false;
    eth.addresses = [`${n.address}/${n.prefix}`];
    if (n.gateway !== undefined) eth.routes = [{ to: 'default', via: n.gateway }];
    if (n.dns?.length || domain !== undefined)
      eth.nameservers = {
        ...(n.dns?.length ? { addresses: [...n.dns] } : {}),
        ...(domain !== undefined ? { search: [domain] } : {}),
      };
  }
  const key = mac !== undefined || iface === undefined ? (iface ?? 'reimage0') : iface;
  return (
    '# Written by reimage (machine state).\n' +
    stringify({ network: { version: 2, ethernets: { [key]: eth } } }, YAML_OPTIONS)
  );
}

const STANZA_START = /^(?:iface|auto|allow-[\w-]+|mapping|source|source-directory|rename)\b/;

/** /etc/network/interfaces without any stanza of `iface`, and `iface` dropped from auto lines. */
function interfacesWithout(text: string, iface: string): string[] {
  const out: string[] = [];
  let dropping = false;
  for (const line of text.split('\n')) {
    const t = line.trim();
    const words = t.split(/\s+/);
    if (STANZA_START.test(t)) {
      dropping = false;
      if (words[0] === 'iface' && words[1] === iface) {
        dropping = true;
        continue;
      }
      if (words[0] === 'auto' || words[0]?.startsWith('allow-')) {
        const rest = words.slice(1).filter((w) => w !== iface);
        if (rest.length === 0) continue;
        out.push(`${words[0]} ${rest.join(' ')}`);
        continue;
      }
    } else if (dropping && t !== '' && !t.startsWith('#')) continue;
    else if (dropping && t === '') dropping = false;
    out.push(line);
  }
  while (out.length > 0 && out.at(-1)?.trim() === '') out.pop();
  return out;
}

function firstInterface(text: string): string | undefined {
  for (const line of text.split('\n')) {
    const [w, name] = line.trim().split(/\s+/);
    if (w === 'iface' && name !== undefined && name !== 'lo') return name;
  }
  return undefined;
}

function interfacesStanza(n: NetworkState, iface: string, domain: string | undefined): string[] {
  if (n.mode === 'dhcp') return [`allow-hotplug ${iface}`, `iface ${iface} inet dhcp`];
  const family = isIP(n.address) === 6 ? 'inet6' : 'inet';
  const out = [
    `auto ${iface}`,
    `iface ${iface} ${family} static`,
    `    address ${n.address}/${n.prefix}`,
  ];
  if (n.gateway !== undefined) out.push(`    gateway ${n.gateway}`);
  if (n.dns?.length) out.push(`    dns-nameservers ${n.dns.join(' ')}`);
  if (domain !== undefined) out.push(`    dns-search ${domain}`);
  return out;
}

/** What applyMachineStateDirect wrote (tree paths) and what it could not, with why. */
export interface DirectWriteReport {
  written: string[];
  skipped: { property: string; reason: string }[];
}

/**
 * Writes machine state straight into an applied Linux tree, for images without cloud-init:
 * /etc/hostname, the 127.0.1.1 line of /etc/hosts, /etc/timezone and the /etc/localtime
 * symlink, LANG in /etc/default/locale, the network (a NetworkManager keyfile, else a netplan
 * file, else an /etc/network/interfaces stanza), and root's hash in /etc/shadow (only that
 * field of that line changes). Every write is atomic and stays inside `root`; running it twice
 * gives the same tree. SSH host keys and accounts are restored from the state store, not here.
 */
export async function applyMachineStateDirect(
  root: string,
  state: MachineState,
  o: { macAddress?: string } = {},
): Promise<DirectWriteReport> {
  validateMachineState(state);
  const mac = normalizeMac(o.macAddress);
  const report: DirectWriteReport = { written: [], skipped: [] };
  const write = async (path: string, data: string, mode = 0o644) => {
    await writeTreeFile(root, path, data, { mode });
    report.written.push(path);
  };

  if (state.computerName !== undefined) {
    const name = state.computerName;
    await write('/etc/hostname', `${name}\n`);
    const full = fqdn(state);
    const hosts = (await readTreeRegular(root, '/etc/hosts')) ?? '127.0.0.1\tlocalhost\n';
    const line = full === undefined ? `127.0.1.1\t${name}` : `127.0.1.1\t${full}\t${name}`;
    const kept = withLine(hosts, (l) => l.trim().split(/\s+/)[0] !== '127.0.1.1', []).split('\n');
    kept.pop();
    // Debian's installer puts the line right after localhost's.
    const at = kept.findIndex((l) => l.trim().split(/\s+/)[0] === '127.0.0.1');
    kept.splice(at < 0 ? kept.length : at + 1, 0, line);
    await write('/etc/hosts', kept.join('\n') + '\n');
  }

  if (state.timezone !== undefined) {
    await write('/etc/timezone', `${state.timezone}\n`);
    await writeTreeSymlink(root, '/etc/localtime', `/usr/share/zoneinfo/${state.timezone}`);
    report.written.push('/etc/localtime');
  }

  if (state.locale !== undefined) {
    const assign = `LANG=${state.locale}`;
    const isLang = (l: string) => !/^\s*(?:export\s+)?LANG\s*=/.test(l);
    const cur = await readTreeRegular(root, '/etc/default/locale');
    await write(
      '/etc/default/locale',
      withLine(cur ?? '', (l) => isLang(l) && l !== '', [assign]),
    );
    const conf = await readTreeRegular(root, '/etc/locale.conf');
    if (conf !== undefined) await write('/etc/locale.conf', withLine(conf, isLang, [assign]));
  }

  if (state.network !== undefined) await writeNetwork(root, state, mac, write, report);

  const hash = linuxHash(state);
  if (hash !== undefined) {
    const shadow = await readTreeRegular(root, '/etc/shadow');
    if (shadow === undefined)
      throw new ReimageError(
        'APPLY_FAILED',
        `the image in ${root} has no /etc/shadow; nothing was written for root's password`,
        {
          details: { path: '/etc/shadow' },
        },
      );
    let found = false;
    const lines = shadow.split('\n').map((l) => {
      const f = l.split(':');
      if (f[0] !== 'root' || f.length < 2) return l;
      found = true;
      f[1] = hash;
      return f.join(':');
    });
    if (!found)
      throw new ReimageError(
        'APPLY_FAILED',
        `/etc/shadow in ${root} has no root line; root's password was not set`,
        {
          details: { path: '/etc/shadow' },
        },
      );
    await write('/etc/shadow', lines.join('\n'), 0o640);
  }
  return report;
}

async function writeNetwork(
  root: string,
  state: MachineState,
  mac: string | undefined,
  write: (path: string, data: string, mode?: number) => Promise<void>,
  report: DirectWriteReport,
): Promise<void> {
  const n = state.network as NetworkState;
  if (await isTreeDir(root, '/etc/NetworkManager')) {
    await write(
      '/etc/NetworkManager/system-connections/reimage.nmconnection',
      nmKeyfile(n, state.domain, mac),
      0o600,
    );
    return;
  }
  if (await isTreeDir(root, '/etc/netplan')) {
    await write('/etc/netplan/90-reimage.yaml', netplanFile(n, state.domain, mac), 0o600);
    return;
  }
  if (await isTreeDir(root, '/etc/network')) {
    const cur =
      (await readTreeRegular(root, '/etc/network/interfaces')) ??
      'auto lo\niface lo inet loopback\n';
    const iface = (n.mode === 'static' ? n.interface : undefined) ?? firstInterface(cur);
    if (iface === undefined)
      invalid(
        'machineState.ipAddress',
        'the image configures its network in /etc/network/interfaces, which needs an interface name: none was migrated and the image names none',
      );
    const lines = [
      ...interfacesWithout(cur, iface),
      '',
      '# Written by reimage (machine state).',
      ...interfacesStanza(n, iface, state.domain),
    ];
    await write('/etc/network/interfaces', lines.join('\n') + '\n');
    // Without resolvconf, dns-nameservers does nothing: a plain resolv.conf carries them.
    if (n.mode === 'static' && n.dns?.length) {
      const dir = await resolveInTree(root, '/etc', { followLast: true });
      let plain = true;
      try {
        plain = !(await lstat(join(dir, 'resolv.conf'))).isSymbolicLink();
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      if (plain) {
        const text = [
          '# Written by reimage (machine state).',
          ...(state.domain !== undefined ? [`search ${state.domain}`] : []),
          ...n.dns.map((d) => `nameserver ${d}`),
        ];
        await write('/etc/resolv.conf', text.join('\n') + '\n');
      }
    }
    return;
  }
  report.skipped.push({
    property: 'network',
    reason: 'the image has neither NetworkManager, netplan nor /etc/network',
  });
}

// ------------------------------------------------------------------ XML

/** An element of the XML writer: name, attributes (in order) and children (text is escaped). */
export interface XmlElement {
  name: string;
  attrs?: [string, string][];
  children?: (XmlElement | string)[];
}

// XML 1.0 forbids most control characters even as references: refuse them, never drop them.
const XML_FORBIDDEN =
  /[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Escapes text for XML content and attribute values (both quote kinds). */
export function xmlEscape(text: string): string {
  if (XML_FORBIDDEN.test(text))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      'a value contains characters XML cannot carry (control characters)',
    );
  return text
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&apos;')
    .replace(/\r/g, '&#13;');
}

const XML_NAME = /^[A-Za-z_][A-Za-z0-9._:-]*$/;

function renderElement(e: XmlElement, depth: number, out: string[]): void {
  if (!XML_NAME.test(e.name)) throw new Error(`bug: bad XML element name ${e.name}`);
  const pad = '  '.repeat(depth);
  const attrs = (e.attrs ?? [])
    .map(([k, v]) => {
      if (!XML_NAME.test(k)) throw new Error(`bug: bad XML attribute name ${k}`);
      return ` ${k}="${xmlEscape(v)}"`;
    })
    .join('');
  const kids = e.children ?? [];
  if (kids.length === 0) out.push(`${pad}<${e.name}${attrs} />`);
  else if (kids.every((k) => typeof k === 'string'))
    out.push(
      `${pad}<${e.name}${attrs}>${kids.map((k) => xmlEscape(k as string)).join('')}</${e.name}>`,
    );
  else {
    out.push(`${pad}<${e.name}${attrs}>`);
    for (const k of kids)
      if (typeof k === 'string') out.push(`${pad}  ${xmlEscape(k)}`);
      else renderElement(k, depth + 1, out);
    out.push(`${pad}</${e.name}>`);
  }
}

/** A UTF-8 XML document with an XML declaration. */
export function renderXml(root: XmlElement): string {
  const out = ['<?xml version="1.0" encoding="utf-8"?>'];
  renderElement(root, 0, out);
  return out.join('\n') + '\n';
}

const el = (
  name: string,
  children: (XmlElement | string | undefined)[] = [],
  attrs: [string, string][] = [],
): XmlElement => ({
  name,
  attrs,
  children: children.filter((c): c is XmlElement | string => c !== undefined),
});

// ------------------------------------------------------------------ time zones

/**
 * Windows time zone ids and the IANA zones they stand for (CLDR windowsZones.xml; the first
 * zone is CLDR's "001" representative). IANA names are looked up in ICU's canonical form too
 * (Intl: Asia/Kolkata → Asia/Calcutta), which is the form CLDR uses.
 */
const WINDOWS_ZONES: readonly [string, string][] = [
  ['Dateline Standard Time', 'Etc/GMT+12'],
  ['UTC-11', 'Etc/GMT+11 Pacific/Pago_Pago Pacific/Niue Pacific/Midway'],
  ['Aleutian Standard Time', 'America/Adak'],
  ['Hawaiian Standard Time', 'Pacific/Honolulu Pacific/Rarotonga Pacific/Tahiti Etc/GMT+10'],
  ['Marquesas Standard Time', 'Pacific/Marquesas'],
  [
    'Alaskan Standard Time',
    'America/Anchorage America/Juneau America/Metlakatla America/Nome America/Sitka America/Yakutat',
  ],
  ['UTC-09', 'Etc/GMT+9 Pacific/Gambier'],
  ['Pacific Standard Time (Mexico)', 'America/Tijuana'],
  ['UTC-08', 'Etc/GMT+8 Pacific/Pitcairn'],
  ['Pacific Standard Time', 'America/Los_Angeles America/Vancouver'],
  [
    'US Mountain Standard Time',
    'America/Phoenix America/Creston America/Dawson_Creek America/Fort_Nelson America/Hermosillo Etc/GMT+7',
  ],
  ['Mountain Standard Time (Mexico)', 'America/Mazatlan'],
  [
    'Mountain Standard Time',
    'America/Denver America/Edmonton America/Cambridge_Bay America/Inuvik America/Ciudad_Juarez America/Boise',
  ],
  ['Yukon Standard Time', 'America/Whitehorse America/Dawson'],
  [
    'Central America Standard Time',
    'America/Guatemala America/Belize America/Costa_Rica Pacific/Galapagos America/Tegucigalpa America/Managua America/El_Salvador Etc/GMT+6',
  ],
  [
    'Central Standard Time',
    'America/Chicago America/Winnipeg America/Rankin_Inlet America/Resolute America/Matamoros America/Ojinaga America/Indiana/Knox America/Indiana/Tell_City America/Menominee America/North_Dakota/Beulah America/North_Dakota/Center America/North_Dakota/New_Salem',
  ],
  ['Easter Island Standard Time', 'Pacific/Easter'],
  [
    'Central Standard Time (Mexico)',
    'America/Mexico_City America/Bahia_Banderas America/Merida America/Monterrey America/Chihuahua',
  ],
  ['Canada Central Standard Time', 'America/Regina America/Swift_Current'],
  [
    'SA Pacific Standard Time',
    'America/Bogota America/Rio_Branco America/Eirunepe America/Coral_Harbour America/Guayaquil America/Jamaica America/Cayman America/Panama America/Lima Etc/GMT+5',
  ],
  ['Eastern Standard Time (Mexico)', 'America/Cancun'],
  [
    'Eastern Standard Time',
    'America/New_York America/Nassau America/Toronto America/Iqaluit America/Detroit America/Indiana/Petersburg America/Indiana/Vincennes America/Indiana/Winamac America/Kentucky/Monticello America/Louisville',
  ],
  ['Haiti Standard Time', 'America/Port-au-Prince'],
  ['Cuba Standard Time', 'America/Havana'],
  [
    'US Eastern Standard Time',
    'America/Indianapolis America/Indiana/Marengo America/Indiana/Vevay',
  ],
  ['Turks And Caicos Standard Time', 'America/Grand_Turk'],
  ['Paraguay Standard Time', 'America/Asuncion'],
  [
    'Atlantic Standard Time',
    'America/Halifax Atlantic/Bermuda America/Glace_Bay America/Goose_Bay America/Moncton America/Thule',
  ],
  ['Venezuela Standard Time', 'America/Caracas'],
  ['Central Brazilian Standard Time', 'America/Cuiaba America/Campo_Grande'],
  [
    'SA Western Standard Time',
    'America/La_Paz America/Antigua America/Anguilla America/Aruba America/Barbados America/St_Barthelemy America/Kralendijk America/Manaus America/Boa_Vista America/Porto_Velho America/Blanc-Sablon America/Curacao America/Dominica America/Santo_Domingo America/Grenada America/Guadeloupe America/Guyana America/St_Kitts America/St_Lucia America/Marigot America/Martinique America/Montserrat America/Puerto_Rico America/Lower_Princes America/Port_of_Spain America/St_Vincent America/Tortola America/St_Thomas Etc/GMT+4',
  ],
  ['Pacific SA Standard Time', 'America/Santiago'],
  ['Newfoundland Standard Time', 'America/St_Johns'],
  ['Tocantins Standard Time', 'America/Araguaina'],
  ['E. South America Standard Time', 'America/Sao_Paulo'],
  [
    'SA Eastern Standard Time',
    'America/Cayenne Antarctica/Rothera Antarctica/Palmer America/Fortaleza America/Belem America/Maceio America/Recife America/Santarem Atlantic/Stanley America/Paramaribo Etc/GMT+3',
  ],
  [
    'Argentina Standard Time',
    'America/Buenos_Aires America/Argentina/La_Rioja America/Argentina/Rio_Gallegos America/Argentina/Salta America/Argentina/San_Juan America/Argentina/San_Luis America/Argentina/Tucuman America/Argentina/Ushuaia America/Catamarca America/Cordoba America/Jujuy America/Mendoza',
  ],
  ['Greenland Standard Time', 'America/Godthab'],
  ['Montevideo Standard Time', 'America/Montevideo'],
  ['Magallanes Standard Time', 'America/Punta_Arenas'],
  ['Saint Pierre Standard Time', 'America/Miquelon'],
  ['Bahia Standard Time', 'America/Bahia'],
  ['UTC-02', 'Etc/GMT+2 America/Noronha Atlantic/South_Georgia'],
  ['Azores Standard Time', 'Atlantic/Azores America/Scoresbysund'],
  ['Cape Verde Standard Time', 'Atlantic/Cape_Verde Etc/GMT+1'],
  ['UTC', 'Etc/UTC Etc/GMT UTC'],
  [
    'GMT Standard Time',
    'Europe/London Atlantic/Canary Atlantic/Faeroe Europe/Guernsey Europe/Dublin Europe/Isle_of_Man Europe/Jersey Europe/Lisbon Atlantic/Madeira',
  ],
  [
    'Greenwich Standard Time',
    'Atlantic/Reykjavik Africa/Ouagadougou Africa/Abidjan Africa/Accra America/Danmarkshavn Africa/Banjul Africa/Conakry Africa/Bissau Africa/Monrovia Africa/Bamako Africa/Nouakchott Atlantic/St_Helena Africa/Freetown Africa/Dakar Africa/Lome',
  ],
  ['Sao Tome Standard Time', 'Africa/Sao_Tome'],
  ['Morocco Standard Time', 'Africa/Casablanca Africa/El_Aaiun'],
  [
    'W. Europe Standard Time',
    'Europe/Berlin Europe/Andorra Europe/Vienna Europe/Zurich Europe/Busingen Europe/Gibraltar Europe/Rome Europe/Vaduz Europe/Luxembourg Europe/Monaco Europe/Malta Europe/Amsterdam Europe/Oslo Europe/Stockholm Arctic/Longyearbyen Europe/San_Marino Europe/Vatican',
  ],
  [
    'Central Europe Standard Time',
    'Europe/Budapest Europe/Tirane Europe/Prague Europe/Podgorica Europe/Belgrade Europe/Ljubljana Europe/Bratislava',
  ],
  [
    'Romance Standard Time',
    'Europe/Paris Europe/Brussels Europe/Copenhagen Europe/Madrid Africa/Ceuta',
  ],
  ['Central European Standard Time', 'Europe/Warsaw Europe/Sarajevo Europe/Zagreb Europe/Skopje'],
  [
    'W. Central Africa Standard Time',
    'Africa/Lagos Africa/Luanda Africa/Porto-Novo Africa/Kinshasa Africa/Bangui Africa/Brazzaville Africa/Douala Africa/Algiers Africa/Libreville Africa/Malabo Africa/Niamey Africa/Ndjamena Africa/Tunis Etc/GMT-1',
  ],
  ['Jordan Standard Time', 'Asia/Amman'],
  ['GTB Standard Time', 'Europe/Bucharest Asia/Nicosia Asia/Famagusta Europe/Athens'],
  ['Middle East Standard Time', 'Asia/Beirut'],
  ['Egypt Standard Time', 'Africa/Cairo'],
  ['E. Europe Standard Time', 'Europe/Chisinau'],
  ['Syria Standard Time', 'Asia/Damascus'],
  ['West Bank Standard Time', 'Asia/Hebron Asia/Gaza'],
  [
    'South Africa Standard Time',
    'Africa/Johannesburg Africa/Bujumbura Africa/Gaborone Africa/Lubumbashi Africa/Maseru Africa/Blantyre Africa/Maputo Africa/Kigali Africa/Mbabane Africa/Lusaka Africa/Harare Etc/GMT-2',
  ],
  [
    'FLE Standard Time',
    'Europe/Kiev Europe/Mariehamn Europe/Sofia Europe/Tallinn Europe/Helsinki Europe/Vilnius Europe/Riga',
  ],
  ['Israel Standard Time', 'Asia/Jerusalem'],
  ['South Sudan Standard Time', 'Africa/Juba'],
  ['Kaliningrad Standard Time', 'Europe/Kaliningrad'],
  ['Sudan Standard Time', 'Africa/Khartoum'],
  ['Libya Standard Time', 'Africa/Tripoli'],
  ['Namibia Standard Time', 'Africa/Windhoek'],
  ['Arabic Standard Time', 'Asia/Baghdad'],
  ['Turkey Standard Time', 'Europe/Istanbul'],
  ['Arab Standard Time', 'Asia/Riyadh Asia/Bahrain Asia/Kuwait Asia/Qatar Asia/Aden'],
  ['Belarus Standard Time', 'Europe/Minsk'],
  ['Russian Standard Time', 'Europe/Moscow Europe/Kirov Europe/Simferopol'],
  [
    'E. Africa Standard Time',
    'Africa/Nairobi Antarctica/Syowa Africa/Djibouti Africa/Asmera Africa/Addis_Ababa Indian/Comoro Indian/Antananarivo Africa/Mogadishu Africa/Dar_es_Salaam Africa/Kampala Indian/Mayotte Etc/GMT-3',
  ],
  ['Iran Standard Time', 'Asia/Tehran'],
  ['Arabian Standard Time', 'Asia/Dubai Asia/Muscat Etc/GMT-4'],
  ['Astrakhan Standard Time', 'Europe/Astrakhan Europe/Ulyanovsk'],
  ['Azerbaijan Standard Time', 'Asia/Baku'],
  ['Russia Time Zone 3', 'Europe/Samara'],
  ['Mauritius Standard Time', 'Indian/Mauritius Indian/Reunion Indian/Mahe'],
  ['Saratov Standard Time', 'Europe/Saratov'],
  ['Georgian Standard Time', 'Asia/Tbilisi'],
  ['Volgograd Standard Time', 'Europe/Volgograd'],
  ['Caucasus Standard Time', 'Asia/Yerevan'],
  ['Afghanistan Standard Time', 'Asia/Kabul'],
  [
    'West Asia Standard Time',
    'Asia/Tashkent Antarctica/Mawson Asia/Oral Asia/Almaty Asia/Aqtau Asia/Aqtobe Asia/Atyrau Asia/Qostanay Indian/Maldives Indian/Kerguelen Asia/Dushanbe Asia/Ashgabat Asia/Samarkand Etc/GMT-5',
  ],
  ['Ekaterinburg Standard Time', 'Asia/Yekaterinburg'],
  ['Pakistan Standard Time', 'Asia/Karachi'],
  ['Qyzylorda Standard Time', 'Asia/Qyzylorda'],
  ['India Standard Time', 'Asia/Calcutta'],
  ['Sri Lanka Standard Time', 'Asia/Colombo'],
  ['Nepal Standard Time', 'Asia/Katmandu'],
  [
    'Central Asia Standard Time',
    'Asia/Bishkek Antarctica/Vostok Asia/Urumqi Indian/Chagos Etc/GMT-6',
  ],
  ['Bangladesh Standard Time', 'Asia/Dhaka Asia/Thimphu'],
  ['Omsk Standard Time', 'Asia/Omsk'],
  ['Myanmar Standard Time', 'Asia/Rangoon Indian/Cocos'],
  [
    'SE Asia Standard Time',
    'Asia/Bangkok Antarctica/Davis Indian/Christmas Asia/Jakarta Asia/Pontianak Asia/Phnom_Penh Asia/Vientiane Asia/Saigon Etc/GMT-7',
  ],
  ['Altai Standard Time', 'Asia/Barnaul'],
  ['W. Mongolia Standard Time', 'Asia/Hovd'],
  ['North Asia Standard Time', 'Asia/Krasnoyarsk Asia/Novokuznetsk'],
  ['N. Central Asia Standard Time', 'Asia/Novosibirsk'],
  ['Tomsk Standard Time', 'Asia/Tomsk'],
  ['China Standard Time', 'Asia/Shanghai Asia/Hong_Kong Asia/Macau'],
  ['North Asia East Standard Time', 'Asia/Irkutsk'],
  [
    'Singapore Standard Time',
    'Asia/Singapore Asia/Brunei Asia/Makassar Asia/Kuala_Lumpur Asia/Kuching Asia/Manila Etc/GMT-8',
  ],
  ['W. Australia Standard Time', 'Australia/Perth'],
  ['Taipei Standard Time', 'Asia/Taipei'],
  ['Ulaanbaatar Standard Time', 'Asia/Ulaanbaatar Asia/Choibalsan'],
  ['Aus Central W. Standard Time', 'Australia/Eucla'],
  ['Transbaikal Standard Time', 'Asia/Chita'],
  ['Tokyo Standard Time', 'Asia/Tokyo Asia/Jayapura Pacific/Palau Asia/Dili Etc/GMT-9'],
  ['North Korea Standard Time', 'Asia/Pyongyang'],
  ['Korea Standard Time', 'Asia/Seoul'],
  ['Yakutsk Standard Time', 'Asia/Yakutsk Asia/Khandyga'],
  ['Cen. Australia Standard Time', 'Australia/Adelaide Australia/Broken_Hill'],
  ['AUS Central Standard Time', 'Australia/Darwin'],
  ['E. Australia Standard Time', 'Australia/Brisbane Australia/Lindeman'],
  ['AUS Eastern Standard Time', 'Australia/Sydney Australia/Melbourne'],
  [
    'West Pacific Standard Time',
    'Pacific/Port_Moresby Antarctica/DumontDUrville Pacific/Truk Pacific/Guam Pacific/Saipan Etc/GMT-10',
  ],
  ['Tasmania Standard Time', 'Australia/Hobart Antarctica/Macquarie'],
  ['Vladivostok Standard Time', 'Asia/Vladivostok Asia/Ust-Nera'],
  ['Lord Howe Standard Time', 'Australia/Lord_Howe'],
  ['Bougainville Standard Time', 'Pacific/Bougainville'],
  ['Russia Time Zone 10', 'Asia/Srednekolymsk'],
  ['Magadan Standard Time', 'Asia/Magadan'],
  ['Norfolk Standard Time', 'Pacific/Norfolk'],
  ['Sakhalin Standard Time', 'Asia/Sakhalin'],
  [
    'Central Pacific Standard Time',
    'Pacific/Guadalcanal Antarctica/Casey Pacific/Ponape Pacific/Kosrae Pacific/Noumea Pacific/Efate Etc/GMT-11',
  ],
  ['Russia Time Zone 11', 'Asia/Kamchatka Asia/Anadyr'],
  ['New Zealand Standard Time', 'Pacific/Auckland Antarctica/McMurdo'],
  [
    'UTC+12',
    'Etc/GMT-12 Pacific/Tarawa Pacific/Majuro Pacific/Kwajalein Pacific/Nauru Pacific/Funafuti Pacific/Wake Pacific/Wallis',
  ],
  ['Fiji Standard Time', 'Pacific/Fiji'],
  ['Chatham Islands Standard Time', 'Pacific/Chatham'],
  ['UTC+13', 'Etc/GMT-13 Pacific/Enderbury Pacific/Fakaofo'],
  ['Tonga Standard Time', 'Pacific/Tongatapu'],
  ['Samoa Standard Time', 'Pacific/Apia'],
  ['Line Islands Standard Time', 'Pacific/Kiritimati Etc/GMT-14'],
];

/**
 * The numeric TimeZone of sysprep.inf / unattend.txt (Windows 2000, XP, 2003), by today's
 * Windows id. Zones Windows added later have no index; they fall back by UTC offset.
 */
const SYSPREP_INDEX: readonly [number, string][] = [
  [0, 'Dateline Standard Time'],
  [1, 'UTC-11'],
  [2, 'Hawaiian Standard Time'],
  [3, 'Alaskan Standard Time'],
  [4, 'Pacific Standard Time'],
  [10, 'Mountain Standard Time'],
  [13, 'Mountain Standard Time (Mexico)'],
  [15, 'US Mountain Standard Time'],
  [20, 'Central Standard Time'],
  [25, 'Canada Central Standard Time'],
  [30, 'Central Standard Time (Mexico)'],
  [33, 'Central America Standard Time'],
  [35, 'Eastern Standard Time'],
  [40, 'US Eastern Standard Time'],
  [45, 'SA Pacific Standard Time'],
  [50, 'Atlantic Standard Time'],
  [55, 'SA Western Standard Time'],
  [56, 'Pacific SA Standard Time'],
  [60, 'Newfoundland Standard Time'],
  [65, 'E. South America Standard Time'],
  [70, 'SA Eastern Standard Time'],
  [70, 'Argentina Standard Time'],
  [73, 'Greenland Standard Time'],
  [75, 'UTC-02'],
  [80, 'Azores Standard Time'],
  [83, 'Cape Verde Standard Time'],
  [85, 'GMT Standard Time'],
  [90, 'UTC'],
  [90, 'Greenwich Standard Time'],
  [95, 'Central Europe Standard Time'],
  [100, 'Central European Standard Time'],
  [105, 'Romance Standard Time'],
  [110, 'W. Europe Standard Time'],
  [113, 'W. Central Africa Standard Time'],
  [115, 'E. Europe Standard Time'],
  [120, 'Egypt Standard Time'],
  [125, 'FLE Standard Time'],
  [130, 'GTB Standard Time'],
  [135, 'Israel Standard Time'],
  [140, 'South Africa Standard Time'],
  [145, 'Russian Standard Time'],
  [150, 'Arab Standard Time'],
  [155, 'E. Africa Standard Time'],
  [158, 'Arabic Standard Time'],
  [160, 'Iran Standard Time'],
  [165, 'Arabian Standard Time'],
  [170, 'Caucasus Standard Time'],
  [175, 'Afghanistan Standard Time'],
  [180, 'Ekaterinburg Standard Time'],
  [185, 'West Asia Standard Time'],
  [185, 'Pakistan Standard Time'],
  [190, 'India Standard Time'],
  [193, 'Nepal Standard Time'],
  [195, 'Central Asia Standard Time'],
  [195, 'Bangladesh Standard Time'],
  [200, 'Sri Lanka Standard Time'],
  [201, 'N. Central Asia Standard Time'],
  [203, 'Myanmar Standard Time'],
  [205, 'SE Asia Standard Time'],
  [207, 'North Asia Standard Time'],
  [210, 'China Standard Time'],
  [215, 'Singapore Standard Time'],
  [220, 'Taipei Standard Time'],
  [225, 'W. Australia Standard Time'],
  [227, 'North Asia East Standard Time'],
  [230, 'Korea Standard Time'],
  [235, 'Tokyo Standard Time'],
  [240, 'Yakutsk Standard Time'],
  [245, 'AUS Central Standard Time'],
  [250, 'Cen. Australia Standard Time'],
  [255, 'AUS Eastern Standard Time'],
  [260, 'E. Australia Standard Time'],
  [265, 'Tasmania Standard Time'],
  [270, 'Vladivostok Standard Time'],
  [275, 'West Pacific Standard Time'],
  [280, 'Central Pacific Standard Time'],
  [285, 'Fiji Standard Time'],
  [290, 'New Zealand Standard Time'],
  [300, 'Tonga Standard Time'],
];

let ianaToWindows: Map<string, string> | undefined;

function canonicalZone(tz: string): string | undefined {
  try {
    return new Intl.DateTimeFormat('en-US', { timeZone: tz }).resolvedOptions().timeZone;
  } catch {
    return undefined; // not a zone ICU knows
  }
}

/** Minutes east of UTC in January and July 2024 (fixed, so that output does not drift). */
function offsets(tz: string): [number, number] | undefined {
  try {
    const f = new Intl.DateTimeFormat('en-US', { timeZone: tz, timeZoneName: 'longOffset' });
    const at = (ms: number) => {
      const name = f.formatToParts(ms).find((p) => p.type === 'timeZoneName')?.value ?? '';
      const m = /GMT(?:([+-])(\d{2}):(\d{2}))?/.exec(name);
      if (!m) return 0;
      return m[1] === undefined ? 0 : (m[1] === '-' ? -1 : 1) * (Number(m[2]) * 60 + Number(m[3]));
    };
    return [at(Date.UTC(2024, 0, 15)), at(Date.UTC(2024, 6, 15))];
  } catch {
    return undefined;
  }
}

/** The zone of `candidates` (first zones of the table) with the same offsets, else the same standard offset. */
function closestByOffset<T>(tz: string, candidates: [T, string][]): T | undefined {
  const want = offsets(tz);
  if (!want) return undefined;
  const std = Math.min(...want);
  let sameStd: T | undefined;
  for (const [value, zone] of candidates) {
    const got = offsets(zone);
    if (!got) continue;
    if (got[0] === want[0] && got[1] === want[1]) return value;
    if (sameStd === undefined && Math.min(...got) === std) sameStd = value;
  }
  return sameStd;
}

/**
 * The Windows time zone id for an IANA name ("Europe/Paris" → "Romance Standard Time"); a
 * Windows id is returned as is; a zone CLDR does not map falls back to one with the same UTC
 * offsets. Undefined when the name is no time zone at all.
 */
export function windowsTimeZone(tz: string): string | undefined {
  if (!ianaToWindows) {
    ianaToWindows = new Map();
    for (const [win, zones] of WINDOWS_ZONES)
      for (const z of zones.split(' ')) ianaToWindows.set(z, win);
  }
  if (WINDOWS_ZONES.some(([win]) => win === tz)) return tz;
  const direct = ianaToWindows.get(tz) ?? ianaToWindows.get(canonicalZone(tz) ?? '');
  if (direct) return direct;
  return closestByOffset(
    tz,
    WINDOWS_ZONES.map(([win, zones]) => [win, zones.split(' ')[0] as string]),
  );
}

/** The sysprep.inf TimeZone index (e.g. 110 for "W. Europe Standard Time"), or undefined. */
export function sysprepTimeZoneIndex(tz: string): number | undefined {
  const win = windowsTimeZone(tz);
  if (win === undefined) return undefined;
  const exact = SYSPREP_INDEX.find(([, w]) => w === win);
  if (exact) return exact[0];
  const rep = WINDOWS_ZONES.find(([w]) => w === win)?.[1].split(' ')[0] ?? tz;
  return closestByOffset(
    rep,
    SYSPREP_INDEX.map(([i, w]) => [
      i,
      WINDOWS_ZONES.find(([x]) => x === w)?.[1].split(' ')[0] ?? 'UTC',
    ]),
  );
}

// ------------------------------------------------------------------ Windows unattend.xml

const COMPONENT_ATTRS = (name: string, arch: string): [string, string][] => [
  ['name', name],
  ['processorArchitecture', arch],
  ['publicKeyToken', '31bf3856ad364e35'],
  ['language', 'neutral'],
  ['versionScope', 'nonSxS'],
  ['xmlns:wcm', 'http://schemas.microsoft.com/WMIConfig/2002/State'],
  ['xmlns:xsi', 'http://www.w3.org/2001/XMLSchema-instance'],
];

function windowsComputerName(s: MachineState): string | undefined {
  const name = s.computerName;
  if (name === undefined) return undefined;
  // NetBIOS names are at most 15 characters; Windows setup fails on longer ones.
  if (name.length > 15)
    invalid(
      'machineState.computerName',
      `a Windows computer name is at most 15 characters (found "${name}")`,
    );
  if (/^\d+$/.test(name))
    invalid(
      'machineState.computerName',
      `a Windows computer name cannot be only digits (found "${name}")`,
    );
  return name;
}

/** Windows identifies an interface by its alias or by its MAC address, "00-11-22-33-44-55". */
function windowsInterfaceId(mac: string | undefined): string {
  return mac === undefined ? 'Ethernet' : mac.toUpperCase().replace(/:/g, '-');
}

/** The value Windows expects for a hidden AdministratorPassword: base64 of UTF-16LE(password + "AdministratorPassword"). */
export function encodeAdministratorPassword(password: string): string {
  return Buffer.from(`${password}AdministratorPassword`, 'utf16le').toString('base64');
}

/** xx_YY.UTF-8 → xx-YY (Windows locale names). */
function windowsLocale(locale: string | undefined): string | undefined {
  const m = /^([A-Za-z]{2,3})_([A-Za-z]{2})/.exec(locale ?? '');
  return m ? `${(m[1] as string).toLowerCase()}-${(m[2] as string).toUpperCase()}` : undefined;
}

/**
 * unattend.xml for Windows Vista and later: `specialize` sets the computer name, registered
 * owner and organization, product key and time zone (Microsoft-Windows-Shell-Setup), a static
 * address (Microsoft-Windows-TCPIP) and DNS (Microsoft-Windows-DNS-Client); `oobeSystem` sets
 * the locale (Microsoft-Windows-International-Core) and the administrator password, encoded as
 * Windows does (`PlainText` false). A Linux hash cannot become a Windows password: without a
 * clear password none is set. `macAddress` names the NIC to configure (default "Ethernet").
 */
export function unattendXml(
  state: MachineState,
  o: { architecture?: 'amd64' | 'x86' | 'arm64'; macAddress?: string } = {},
): string {
  validateMachineState(state);
  const arch = o.architecture ?? 'amd64';
  if (!['amd64', 'x86', 'arm64'].includes(arch))
    invalid('architecture', 'must be amd64, x86 or arm64');
  const mac = normalizeMac(o.macAddress);
  const text = (name: string, v: string | undefined) =>
    v === undefined ? undefined : el(name, [v]);
  const add: [string, string] = ['wcm:action', 'add'];
  const tz = state.timezone === undefined ? undefined : windowsTimeZone(state.timezone);

  const specialize: XmlElement[] = [];
  const shell = [
    text('ComputerName', windowsComputerName(state)),
    text('ProductKey', state.productKey),
    text('RegisteredOrganization', state.organization),
    text('RegisteredOwner', state.userName),
    text('TimeZone', tz),
  ].filter((x) => x !== undefined);
  if (shell.length > 0)
    specialize.push(el('component', shell, COMPONENT_ATTRS('Microsoft-Windows-Shell-Setup', arch)));

  const n = state.network;
  const iface = windowsInterfaceId(mac);
  if (n?.mode === 'static') {
    const v6 = isIP(n.address) === 6;
    specialize.push(
      el(
        'component',
        [
          el('Interfaces', [
            el(
              'Interface',
              [
                el(v6 ? 'Ipv6Settings' : 'Ipv4Settings', [el('DhcpEnabled', ['false'])]),
                el('Identifier', [iface]),
                el('UnicastIpAddresses', [
                  el('IpAddress', [`${n.address}/${n.prefix}`], [add, ['wcm:keyValue', '1']]),
                ]),
                n.gateway === undefined
                  ? undefined
                  : el('Routes', [
                      el(
                        'Route',
                        [
                          el('Identifier', ['1']),
                          el('NextHopAddress', [n.gateway]),
                          el('Prefix', [defaultRoute(n)]),
                        ],
                        [add],
                      ),
                    ]),
              ],
              [add],
            ),
          ]),
        ],
        COMPONENT_ATTRS('Microsoft-Windows-TCPIP', arch),
      ),
    );
  }
  const dns = n?.mode === 'static' ? (n.dns ?? []) : [];
  if (dns.length > 0 || state.domain !== undefined) {
    specialize.push(
      el(
        'component',
        [
          text('DNSDomain', state.domain),
          dns.length === 0
            ? undefined
            : el('Interfaces', [
                el(
                  'Interface',
                  [
                    el('Identifier', [iface]),
                    el(
                      'DNSServerSearchOrder',
                      dns.map((d, i) =>
                        el('IpAddress', [d], [add, ['wcm:keyValue', String(i + 1)]]),
                      ),
                    ),
                  ],
                  [add],
                ),
              ]),
        ],
        COMPONENT_ATTRS('Microsoft-Windows-DNS-Client', arch),
      ),
    );
  }

  const oobe: XmlElement[] = [];
  const locale = windowsLocale(state.locale);
  if (locale !== undefined)
    oobe.push(
      el(
        'component',
        [el('InputLocale', [locale]), el('SystemLocale', [locale]), el('UserLocale', [locale])],
        COMPONENT_ATTRS('Microsoft-Windows-International-Core', arch),
      ),
    );
  const clear = state.administratorPassword?.clear;
  if (clear !== undefined)
    oobe.push(
      el(
        'component',
        [
          el('UserAccounts', [
            el('AdministratorPassword', [
              el('Value', [encodeAdministratorPassword(clear)]),
              el('PlainText', ['false']),
            ]),
          ]),
        ],
        COMPONENT_ATTRS('Microsoft-Windows-Shell-Setup', arch),
      ),
    );

  const passes: XmlElement[] = [];
  if (specialize.length > 0) passes.push(el('settings', specialize, [['pass', 'specialize']]));
  if (oobe.length > 0) passes.push(el('settings', oobe, [['pass', 'oobeSystem']]));
  return renderXml(el('unattend', passes, [['xmlns', 'urn:schemas-microsoft-com:unattend']]));
}

// ------------------------------------------------------------------ sysprep.inf

/** A quoted INF string: `"` doubled, `%` doubled (INF string substitution). */
function infQuote(v: string): string {
  if (/[\u0000-\u001f\u007f]/.test(v))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      'a sysprep.inf value contains control characters or line breaks',
    );
  return `"${v.replace(/"/g, '""').replace(/%/g, '%%')}"`;
}

function dottedMask(prefix: number): string {
  const bits = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return [24, 16, 8, 0].map((s) => (bits >>> s) & 0xff).join('.');
}

/**
 * sysprep.inf for Windows 2000/XP/2003 mini-setup, the seed's format: [Unattended],
 * [GuiUnattended] (AdminPassword, TimeZone index), [UserData] (ComputerName, FullName,
 * OrgName, ProductKey — `productKeyName: 'ProductID'` for Windows 2000), [Identification]
 * (a workgroup: joining a domain needs an account this state does not carry) and
 * [Networking] (with TCP/IP sections for a static IPv4 address).
 */
export function sysprepInf(
  state: MachineState,
  o: { productKeyName?: 'ProductKey' | 'ProductID'; macAddress?: string; workgroup?: string } = {},
): string {
  validateMachineState(state);
  const mac = normalizeMac(o.macAddress);
  const workgroup = o.workgroup ?? 'WORKGROUP';
  if (!/^[A-Za-z0-9-]{1,15}$/.test(workgroup))
    invalid('workgroup', 'must be 1-15 letters, digits or "-"');
  const n = state.network;
  if (n?.mode === 'static' && isIP(n.address) !== 4)
    invalid('machineState.ipAddress', 'sysprep.inf sets IPv4 addresses only');
  const sections: [string, [string, string][]][] = [];

  sections.push([
    'Unattended',
    [
      ['OemSkipEula', 'Yes'],
      ['UnattendMode', 'FullUnattended'],
    ],
  ]);

  const gui: [string, string][] = [];
  const clear = state.administratorPassword?.clear;
  if (clear !== undefined)
    gui.push(['AdminPassword', infQuote(clear)], ['EncryptedAdminPassword', 'No']);
  gui.push(['OemSkipRegional', '1'], ['OemSkipWelcome', '1']);
  const index = state.timezone === undefined ? undefined : sysprepTimeZoneIndex(state.timezone);
  if (index !== undefined) gui.push(['TimeZone', String(index).padStart(3, '0')]);
  sections.push(['GuiUnattended', gui]);

  const user: [string, string][] = [];
  const name = windowsComputerName(state);
  if (name !== undefined) user.push(['ComputerName', name]);
  user.push(['FullName', infQuote(state.userName ?? 'User')]);
  user.push(['OrgName', infQuote(state.organization ?? '')]);
  if (state.productKey !== undefined)
    user.push([o.productKeyName ?? 'ProductKey', state.productKey]);
  sections.push(['UserData', user]);

  sections.push(['Identification', [['JoinWorkgroup', workgroup]]]);

  if (n?.mode !== 'static') {
    sections.push(['Networking', [['InstallDefaultComponents', 'Yes']]]);
  } else {
    sections.push(['Networking', [['InstallDefaultComponents', 'No']]]);
    sections.push(['NetAdapters', [['Adapter1', 'params.Adapter1']]]);
    sections.push([
      'params.Adapter1',
      mac === undefined
        ? [['INFID', '*']]
        : [['NetCardAddress', `0x${mac.replace(/:/g, '').toUpperCase()}`]],
    ]);
    sections.push(['NetClients', [['MS_MSClient', 'params.MS_MSClient']]]);
    sections.push(['NetServices', [['MS_SERVER', 'params.MS_SERVER']]]);
    sections.push(['NetProtocols', [['MS_TCPIP', 'params.MS_TCPIP']]]);
    sections.push(['params.MS_TCPIP', [['AdapterSections', 'params.MS_TCPIP.Adapter1']]]);
    const tcp: [string, string][] = [
      ['SpecificTo', 'Adapter1'],
      ['DHCP', 'No'],
      ['IPAddress', n.address],
      ['SubnetMask', dottedMask(n.prefix)],
    ];
    if (n.gateway !== undefined) tcp.push(['DefaultGateway', n.gateway]);
    if (n.dns?.length) tcp.push(['DNSServerSearchOrder', n.dns.join(',')]);
    if (state.domain !== undefined) tcp.push(['DNSDomain', state.domain]);
    sections.push(['params.MS_TCPIP.Adapter1', tcp]);
  }

  const out = [';SetupMgrTag', '; Machine state written by reimage.'];
  for (const [section, entries] of sections) {
    out.push('', `[${section}]`);
    for (const [k, v] of entries) out.push(`    ${k}=${v}`);
  }
  // INF files are read as ANSI or UTF-16; CRLF line ends as Windows tools write them.
  return out.join('\r\n') + '\r\n';
}

// ------------------------------------------------------------------ logs and status

/** A machine state as logs and status messages may show it: secrets are "(set)". */
export type DescribedMachineState = Omit<MachineState, 'productKey' | 'administratorPassword'> & {
  productKey?: '(set)';
  administratorPassword?: '(set)';
};

/** The state for logs and status: the product key and the password (hash or clear) replaced by "(set)". */
export function describeMachineState(state: MachineState): DescribedMachineState {
  const { productKey, administratorPassword, network, ...rest } = state;
  const out: DescribedMachineState = { ...rest };
  if (network !== undefined)
    out.network =
      network.mode === 'static'
        ? { ...network, ...(network.dns ? { dns: [...network.dns] } : {}) }
        : { mode: 'dhcp' };
  if (productKey !== undefined) out.productKey = '(set)';
  if (administratorPassword !== undefined) out.administratorPassword = '(set)';
  return out;
}
