import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parse as parseYaml } from 'yaml';

import { isReimageError } from '../errors.js';
import {
  applyMachineStateDirect,
  cloudInitNoCloud,
  describeMachineState,
  encodeAdministratorPassword,
  sysprepInf,
  sysprepTimeZoneIndex,
  unattendXml,
  windowsTimeZone,
  writeNoCloudSeed,
  xmlEscape,
} from './answer-files.js';
import {
  readMachineState,
  resolveInTree,
  resolveMachineState,
  sha512Crypt,
  validateMachineState,
} from './machine-state.js';
import type { MachineState } from './model.js';

const CI = !!process.env.CI;
const temps: string[] = [];
after(() => {
  for (const t of temps) rmSync(t, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'reimage-answer-'));
  temps.push(d);
  return d;
}

/** A tree from a map of path → content; a `{ link }` value makes a symlink. */
function tree(
  files: Record<string, string | { link: string }>,
  mode: Record<string, number> = {},
): string {
  const root = tempDir();
  for (const [path, v] of Object.entries(files)) {
    const p = join(root, path);
    mkdirSync(dirname(p), { recursive: true });
    if (typeof v === 'string') writeFileSync(p, v, { mode: mode[path] ?? 0o644 });
    else symlinkSync(v.link, p);
  }
  return root;
}

const read = (root: string, path: string) => readFileSync(join(root, path), 'utf8');

const HASH = sha512Crypt('old-root-password', 'abcdefgh');

function expectCode(code: string, pattern?: RegExp) {
  return (e: unknown) => {
    assert.ok(isReimageError(e), `expected a ReimageError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (pattern) assert.match(e.message, pattern);
    return true;
  };
}

// ---------------------------------------------------------------- a minimal XML checker

/**
 * Checks that a document is well-formed XML 1.0 (one root, nesting, attribute syntax and
 * uniqueness, references, namespace prefixes declared) and returns the element names in
 * document order, or throws saying where it is not.
 */
function checkXml(xml: string): string[] {
  const names: string[] = [];
  const stack: { name: string; prefixes: Set<string> }[] = [];
  let i = 0;
  let rootSeen = false;
  const fail = (why: string): never => {
    throw new Error(`not well-formed at ${i}: ${why}: ${JSON.stringify(xml.slice(i, i + 40))}`);
  };
  const NAME = /[A-Za-z_][A-Za-z0-9._:-]*/y;
  const name = (): string => {
    NAME.lastIndex = i;
    const m = NAME.exec(xml);
    if (!m) fail('expected a name');
    i += (m as RegExpExecArray)[0].length;
    return (m as RegExpExecArray)[0];
  };
  const checkText = (t: string) => {
    if (t.includes('<')) fail('"<" in text');
    for (const m of t.matchAll(/&([^;]*);?/g))
      if (!/^&(?:amp|lt|gt|quot|apos|#\d+|#x[0-9A-Fa-f]+);$/.test(m[0]))
        fail(`bad reference ${m[0]}`);
  };
  const declared = (prefix: string) =>
    prefix === 'xml' || prefix === 'xmlns' || stack.some((s) => s.prefixes.has(prefix));
  if (xml.startsWith('<?xml')) {
    const end = xml.indexOf('?>');
    if (end < 0) fail('unterminated XML declaration');
    i = end + 2;
  }
  while (i < xml.length) {
    const lt = xml.indexOf('<', i);
    const text = xml.slice(i, lt < 0 ? xml.length : lt);
    if (stack.length === 0 && text.trim() !== '') fail('text outside the root element');
    checkText(text);
    if (lt < 0) break;
    i = lt;
    if (xml.startsWith('<!--', i)) {
      const end = xml.indexOf('-->', i);
      if (end < 0) fail('unterminated comment');
      i = end + 3;
    } else if (xml.startsWith('</', i)) {
      i += 2;
      const n = name();
      if (stack.pop()?.name !== n) fail(`end tag ${n} does not match`);
      while (/\s/.test(xml[i] ?? '')) i++;
      if (xml[i] !== '>') fail('expected ">"');
      i++;
    } else {
      i++;
      if (stack.length === 0 && rootSeen) fail('a second root element');
      rootSeen = true;
      const n = name();
      names.push(n);
      const attrs = new Set<string>();
      const prefixes = new Set<string>();
      const used: string[] = [n];
      for (;;) {
        const ws = i;
        while (/\s/.test(xml[i] ?? '')) i++;
        if (xml.startsWith('/>', i) || xml[i] === '>') break;
        if (i === ws) fail('expected white space before an attribute');
        const a = name();
        if (attrs.has(a)) fail(`duplicate attribute ${a}`);
        attrs.add(a);
        if (a.startsWith('xmlns:')) prefixes.add(a.slice(6));
        else used.push(a);
        if (xml[i] !== '=') fail('expected "="');
        i++;
        const q = xml[i];
        if (q !== '"' && q !== "'") fail('expected a quote');
        const end = xml.indexOf(q as string, i + 1);
        if (end < 0) fail('unterminated attribute value');
        checkText(xml.slice(i + 1, end));
        i = end + 1;
      }
      stack.push({ name: n, prefixes });
      for (const u of used) {
        const colon = u.indexOf(':');
        if (colon > 0 && !declared(u.slice(0, colon))) fail(`undeclared namespace prefix in ${u}`);
      }
      if (xml.startsWith('/>', i)) {
        stack.pop();
        i += 2;
      } else i++;
    }
  }
  if (stack.length > 0) fail(`unclosed ${stack.at(-1)?.name}`);
  if (!rootSeen) fail('no root element');
  return names;
}

/** xmllint, when installed; CI installs libxml2-utils and must not skip. */
function xmllint(xml: string): 'skipped' | 'ok' {
  const probe = spawnSync('xmllint', ['--version'], { encoding: 'utf8' });
  if (probe.error) {
    if (CI) throw new Error('xmllint must run in CI: install libxml2-utils');
    return 'skipped';
  }
  const r = spawnSync('xmllint', ['--noout', '-'], { input: xml, encoding: 'utf8' });
  assert.equal(r.status, 0, `xmllint: ${r.stderr}`);
  return 'ok';
}

// ---------------------------------------------------------------- reading

describe('readMachineState', () => {
  it('reads a NetworkManager machine: name, realm, zone from the localtime link, locale, keys, hash', async () => {
    const root = tree(
      {
        'etc/hostname': 'pc-0042\n',
        'etc/hosts': '127.0.0.1 localhost\n127.0.1.1 pc-0042.corp.example.com pc-0042\n',
        'etc/sssd/sssd.conf': '[sssd]\nservices = nss, pam\ndomains = AD.Example.com, other\n',
        'etc/localtime': { link: '/usr/share/zoneinfo/Europe/Paris' },
        'etc/default/locale': 'LANG="fr_FR.UTF-8"\nLANGUAGE=fr\n',
        'etc/NetworkManager/system-connections/Wifi.nmconnection':
          '[connection]\nid=Wifi\ntype=wifi\n\n[ipv4]\nmethod=manual\naddress1=10.9.9.9/8\n',
        'etc/NetworkManager/system-connections/Wired.nmconnection':
          '[connection]\nid=Wired\ntype=ethernet\ninterface-name=enp1s0\n\n[ipv4]\nmethod=manual\naddress1=192.0.2.10/24,192.0.2.1\ndns=192.0.2.53;192.0.2.54;\n\n[ipv6]\nmethod=auto\n',
        'etc/ssh/ssh_host_ed25519_key': 'key',
        'etc/ssh/ssh_host_ed25519_key.pub': 'pub',
        'etc/shadow': `root:${HASH}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n`,
      },
      { 'etc/shadow': 0o640, 'etc/ssh/ssh_host_ed25519_key': 0o600 },
    );
    assert.deepEqual(await readMachineState(root), {
      computerName: 'pc-0042',
      domain: 'ad.example.com',
      timezone: 'Europe/Paris',
      locale: 'fr_FR.UTF-8',
      network: {
        mode: 'static',
        interface: 'enp1s0',
        address: '192.0.2.10',
        prefix: 24,
        gateway: '192.0.2.1',
        dns: ['192.0.2.53', '192.0.2.54'],
      },
      sshHostKeys: true,
      administratorPassword: { hash: HASH },
    });
  });

  it('reads /etc/network/interfaces with sourced files, netmask, krb5 realm, locked root', async () => {
    const root = tree({
      'etc/hostname': 'files01\n',
      'etc/krb5.conf': '[libdefaults]\n    default_realm = CORP.EXAMPLE.ORG\n\n[realms]\n',
      'etc/timezone': 'America/New_York\n',
      'etc/network/interfaces':
        '# managed\nsource /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n',
      'etc/network/interfaces.d/eth0':
        'auto eth0\niface eth0 inet static\n    address 198.51.100.7\n    netmask 255.255.254.0\n    gateway 198.51.100.1\n    dns-nameservers 198.51.100.2 198.51.100.3\n',
      'etc/shadow': 'root:*:19000:0:99999:7:::\n',
    });
    assert.deepEqual(await readMachineState(root), {
      computerName: 'files01',
      domain: 'corp.example.org',
      timezone: 'America/New_York',
      network: {
        mode: 'static',
        interface: 'eth0',
        address: '198.51.100.7',
        prefix: 23,
        gateway: '198.51.100.1',
        dns: ['198.51.100.2', '198.51.100.3'],
      },
      sshHostKeys: false,
    });
  });

  it('reads netplan (default route, later files override) and a domain from an FQDN hostname', async () => {
    const root = tree({
      'etc/hostname': 'web3.lab.example.net\n',
      'etc/locale.conf': 'LANG=en_GB.UTF-8\n',
      'etc/netplan/01-netcfg.yaml':
        'network:\n  version: 2\n  ethernets:\n    ens3:\n      dhcp4: true\n',
      'etc/netplan/50-static.yaml':
        'network:\n  version: 2\n  ethernets:\n    ens3:\n      dhcp4: false\n      addresses: [203.0.113.5/26]\n      routes:\n        - to: default\n          via: 203.0.113.1\n      nameservers:\n        addresses: [203.0.113.2]\n',
      'etc/netplan/99-broken.yaml': 'network: [unclosed\n',
      // NetworkManager keyfiles are not read when netplan configures the network.
      'etc/NetworkManager/system-connections/x.nmconnection':
        '[connection]\ntype=ethernet\n[ipv4]\nmethod=auto\n',
    });
    assert.deepEqual(await readMachineState(root), {
      computerName: 'web3',
      domain: 'lab.example.net',
      locale: 'en_GB.UTF-8',
      network: {
        mode: 'static',
        interface: 'ens3',
        address: '203.0.113.5',
        prefix: 26,
        gateway: '203.0.113.1',
        dns: ['203.0.113.2'],
      },
      sshHostKeys: false,
    });
  });

  it('reads DHCP, and an empty tree as nothing', async () => {
    const dhcp = tree({
      'etc/network/interfaces':
        'auto lo\niface lo inet loopback\nallow-hotplug eth0\niface eth0 inet dhcp\n',
    });
    assert.deepEqual(await readMachineState(dhcp), {
      network: { mode: 'dhcp' },
      sshHostKeys: false,
    });
    assert.deepEqual(await readMachineState(tempDir()), { sshHostKeys: false });
  });

  it('follows symlinks inside the tree, and refuses one that climbs out of it', async () => {
    const inside = tree({
      'etc/hostname': { link: '/srv/conf/hostname' },
      'srv/conf/hostname': 'linked\n',
    });
    assert.equal((await readMachineState(inside)).computerName, 'linked');

    const outside = tempDir();
    writeFileSync(join(outside, 'hostname'), 'host-of-another-tree\n');
    const escaping = tree({ 'etc/hostname': { link: `../../../../../../..${outside}/hostname` } });
    await assert.rejects(
      readMachineState(escaping),
      expectCode('SOURCE_UNREADABLE', /outside the tree/),
    );
  });
});

// ---------------------------------------------------------------- resolving

describe('resolveMachineState', () => {
  const old: MachineState = {
    computerName: 'old-pc',
    domain: 'example.com',
    timezone: 'Europe/Berlin',
    network: {
      mode: 'static',
      interface: 'eth0',
      address: '192.0.2.10',
      prefix: 24,
      gateway: '192.0.2.1',
    },
    sshHostKeys: true,
    administratorPassword: { hash: HASH },
  };

  it('migrates everything by default, with defaults for what the old OS lacks', () => {
    assert.deepEqual(
      resolveMachineState(old, {}, { defaults: { locale: 'C.UTF-8', timezone: 'Etc/UTC' } }),
      {
        ...old,
        locale: 'C.UTF-8',
      },
    );
    assert.deepEqual(
      resolveMachineState(old, {
        computerName: 'migrate',
        administratorPassword: 'migrate',
        ipAddress: 'migrate',
      }),
      old,
    );
  });

  it('sets values: a clear password is hashed and kept, a crypt form is a hash', () => {
    const s = resolveMachineState(old, {
      userName: { set: 'Ada Lovelace' },
      organization: { set: 'Example Corp' },
      productKey: { set: 'abcde-12345-fghij-67890-klmno' },
      administratorPassword: { set: 'n3w pässword' },
      ipAddress: {
        set: {
          address: '198.51.100.9',
          prefix: 25,
          gateway: '198.51.100.1',
          dns: ['198.51.100.2'],
        },
      },
    });
    assert.equal(s.userName, 'Ada Lovelace');
    assert.equal(s.organization, 'Example Corp');
    assert.equal(s.productKey, 'ABCDE-12345-FGHIJ-67890-KLMNO');
    assert.equal(s.administratorPassword?.clear, 'n3w pässword');
    const hash = s.administratorPassword?.hash ?? '';
    const salt = hash.split('$')[2] ?? '';
    assert.equal(hash, sha512Crypt('n3w pässword', salt), 'a SHA-512 crypt hash of the password');
    assert.deepEqual(s.network, {
      mode: 'static',
      interface: 'eth0', // the migrated interface keeps the new address
      address: '198.51.100.9',
      prefix: 25,
      gateway: '198.51.100.1',
      dns: ['198.51.100.2'],
    });
    const other = sha512Crypt('x', 'saltsalt');
    assert.deepEqual(
      resolveMachineState(old, { administratorPassword: { set: other } }).administratorPassword,
      {
        hash: other,
      },
    );
    assert.deepEqual(resolveMachineState(old, { ipAddress: { set: 'dhcp' } }).network, {
      mode: 'dhcp',
    });
  });

  it('expands %SERIAL% and %MAC% in a set computer name', () => {
    const facts = { serial: 'CZC 1234-X/9', macs: ['52:54:00:AB:cd:01', '52:54:00:00:00:02'] };
    assert.equal(
      resolveMachineState(old, { computerName: { set: 'PC-%SERIAL%' } }, { facts }).computerName,
      'PC-CZC1234-X9',
    );
    assert.equal(
      resolveMachineState(old, { computerName: { set: 'm%MAC%' } }, { facts }).computerName,
      'm525400abcd01',
    );
    assert.throws(
      () => resolveMachineState(old, { computerName: { set: 'PC-%SERIAL%' } }, { facts: {} }),
      expectCode('INVALID_ARGUMENT', /machineState\.computerName.*serial/),
    );
    assert.throws(
      () => resolveMachineState(old, { computerName: { set: '%MAC%' } }),
      expectCode('INVALID_ARGUMENT', /machineState\.computerName.*MAC/),
    );
    // 60 characters + 12 from the MAC: too long once expanded.
    assert.throws(
      () =>
        resolveMachineState(old, { computerName: { set: `${'a'.repeat(60)}%MAC%` } }, { facts }),
      expectCode('INVALID_ARGUMENT', /machineState\.computerName.*1-63/),
    );
  });

  it('refuses invalid values, naming the property and never the secret', () => {
    for (const name of ['-lead', 'trail-', 'under_score', 'dot.ted', 'a'.repeat(64), '']) {
      assert.throws(
        () => resolveMachineState(old, { computerName: { set: name } }),
        expectCode('INVALID_ARGUMENT', /^machineState\.computerName: .*RFC 1123/),
        name,
      );
    }
    // A migrated name is validated too: a clear error rather than a broken first boot.
    assert.throws(
      () => resolveMachineState({ computerName: 'my_host' }, {}),
      expectCode('INVALID_ARGUMENT', /machineState\.computerName/),
    );
    assert.throws(
      () =>
        resolveMachineState(old, {
          ipAddress: { set: { address: '300.1.1.1', prefix: 24, gateway: '192.0.2.1' } },
        }),
      expectCode('INVALID_ARGUMENT', /machineState\.ipAddress/),
    );
    assert.throws(
      () =>
        resolveMachineState(old, {
          ipAddress: { set: { address: '192.0.2.5', prefix: 33, gateway: '192.0.2.1' } },
        }),
      expectCode('INVALID_ARGUMENT', /prefix/),
    );
    assert.throws(
      () => resolveMachineState(old, { productKey: { secret: 'set' } as never }),
      expectCode('INVALID_ARGUMENT', /must be "migrate"/),
    );
    assert.throws(
      () => resolveMachineState(old, { productKey: { set: { secret: 'set' } } }),
      expectCode('INVALID_ARGUMENT', /machineState\.productKey: the secret was not delivered/),
    );
    const secret = 'TOPSECRET\nINJECTED';
    for (const settings of [
      { administratorPassword: { set: secret } },
      { productKey: { set: secret } },
    ]) {
      assert.throws(
        () => resolveMachineState(old, settings),
        (e: unknown) => {
          assert.ok(isReimageError(e, 'INVALID_ARGUMENT'));
          assert.doesNotMatch(`${e.message} ${JSON.stringify(e.details)}`, /TOPSECRET/);
          return true;
        },
      );
    }
  });

  it('validates states built elsewhere too', () => {
    assert.throws(
      () => validateMachineState({ timezone: '../../etc/passwd' }),
      expectCode('INVALID_ARGUMENT', /timezone/),
    );
    assert.throws(
      () => validateMachineState({ locale: 'en_US.UTF-8\nevil=1' }),
      expectCode('INVALID_ARGUMENT', /locale/),
    );
    assert.throws(
      () => validateMachineState({ administratorPassword: { hash: 'x:y' } }),
      expectCode('INVALID_ARGUMENT', /administratorPassword/),
    );
    assert.throws(
      () => validateMachineState({ domain: 'bad..example' }),
      expectCode('INVALID_ARGUMENT', /domain/),
    );
  });
});

describe('sha512Crypt', () => {
  it('matches the reference vectors', () => {
    assert.equal(
      sha512Crypt('Hello world!', 'saltstring'),
      '$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1',
    );
    assert.equal(
      sha512Crypt('Hello world!', 'saltstringsaltstring', 10000),
      '$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v.',
    );
    // openssl passwd -6 -salt 'abc/DEF.123' 'pä$$ wörd'
    assert.equal(
      sha512Crypt('pä$$ wörd', 'abc/DEF.123'),
      '$6$abc/DEF.123$0fI7tCOstJObzC6Ixifq2e7CeZcnvSOvpVzirTHIq2V16HCAVZSuOr5q3AVmi/hOHZIV/94SfWjj3f3DlOIrf/',
    );
    const a = sha512Crypt('same');
    assert.notEqual(a, sha512Crypt('same'), 'a random salt each time');
    assert.match(a, /^\$6\$[./A-Za-z0-9]{16}\$[./A-Za-z0-9]{86}$/);
  });
});

// ---------------------------------------------------------------- cloud-init (shape; schema in test/)

const full: MachineState = {
  computerName: 'pc-0042',
  domain: 'corp.example.com',
  userName: 'Ada & "Co"',
  organization: 'Example <Corp>',
  productKey: 'ABCDE-12345-FGHIJ-67890-KLMNO',
  administratorPassword: { hash: HASH, clear: 'Pa$$w0rd <&>' },
  timezone: 'Europe/Paris',
  locale: 'fr_FR.UTF-8',
  network: {
    mode: 'static',
    interface: 'eth0',
    address: '192.0.2.10',
    prefix: 24,
    gateway: '192.0.2.1',
    dns: ['192.0.2.53', '192.0.2.54'],
  },
  sshHostKeys: true,
};

describe('cloudInitNoCloud', () => {
  it('writes host name, zone, locale, root hash, kept host keys and network v2', () => {
    const f = cloudInitNoCloud(full, {
      instanceId: 'reimage-abc',
      macAddress: '52-54-00-12-34-56',
    });
    assert.ok(f['user-data'].startsWith('#cloud-config\n'));
    assert.deepEqual(parseYaml(f['meta-data']), {
      'instance-id': 'reimage-abc',
      'local-hostname': 'pc-0042',
    });
    const cfg = parseYaml(f['user-data']);
    assert.equal(cfg.hostname, 'pc-0042');
    assert.equal(cfg.fqdn, 'pc-0042.corp.example.com');
    assert.equal(cfg.timezone, 'Europe/Paris');
    assert.equal(cfg.locale, 'fr_FR.UTF-8');
    assert.equal(cfg.ssh_deletekeys, false);
    assert.deepEqual(cfg.chpasswd, {
      expire: false,
      users: [{ name: 'root', password: HASH, type: 'hash' }],
    });
    assert.doesNotMatch(f['user-data'], /Pa\$\$w0rd/, 'never the clear password');
    const net = parseYaml(f['network-config'] ?? '', { version: '1.1' });
    assert.deepEqual(net, {
      version: 2,
      ethernets: {
        eth0: {
          match: { macaddress: '52:54:00:12:34:56' },
          dhcp4: false,
          addresses: ['192.0.2.10/24'],
          routes: [{ to: '0.0.0.0/0', via: '192.0.2.1' }],
          nameservers: { addresses: ['192.0.2.53', '192.0.2.54'], search: ['corp.example.com'] },
        },
      },
    });
  });

  it('hashes a clear-only password, notes restored accounts, leaves DHCP to cloud-init', () => {
    const f = cloudInitNoCloud(
      { administratorPassword: { clear: 'only clear' }, network: { mode: 'dhcp' } },
      {
        instanceId: 'i-1',
        users: [
          {
            name: 'alice',
            uid: 1000,
            gid: 1000,
            gecos: '',
            home: '/home/alice',
            shell: '/bin/sh',
            groups: [],
          },
        ],
      },
    );
    const pw = parseYaml(f['user-data']).chpasswd.users[0].password as string;
    assert.equal(pw, sha512Crypt('only clear', pw.split('$')[2]));
    assert.match(f['user-data'], /^# .*alice \(1000\)/m);
    assert.equal(f['network-config'], undefined, "no MAC, DHCP: cloud-init's fallback does it");
    assert.equal(
      parseYaml(f['user-data']).ssh_deletekeys,
      undefined,
      'keys not migrated: regenerated',
    );
  });

  it('needs an interface or a MAC for a static address, and a sane instance id', () => {
    assert.throws(
      () =>
        cloudInitNoCloud(
          { network: { mode: 'static', address: '192.0.2.1', prefix: 24 } },
          { instanceId: 'x' },
        ),
      expectCode('INVALID_ARGUMENT', /machineState\.ipAddress/),
    );
    assert.throws(
      () => cloudInitNoCloud({}, { instanceId: 'a\nb' }),
      expectCode('INVALID_ARGUMENT', /instanceId/),
    );
  });

  it('writes the seed with user-data mode 0600', async () => {
    const root = tempDir();
    const written = await writeNoCloudSeed(root, cloudInitNoCloud(full, { instanceId: 'i-2' }));
    assert.deepEqual(written, [
      '/var/lib/cloud/seed/nocloud/meta-data',
      '/var/lib/cloud/seed/nocloud/user-data',
      '/var/lib/cloud/seed/nocloud/network-config',
    ]);
    const dir = join(root, 'var/lib/cloud/seed/nocloud');
    assert.equal(lstatSync(join(dir, 'user-data')).mode & 0o777, 0o600);
    assert.equal(lstatSync(join(dir, 'network-config')).mode & 0o777, 0o600);
    assert.equal(lstatSync(join(dir, 'meta-data')).mode & 0o777, 0o644);
  });
});

// ---------------------------------------------------------------- unattend.xml

describe('unattendXml', () => {
  it('is well-formed and has every component, text escaped', () => {
    const xml = unattendXml(full, { architecture: 'arm64', macAddress: '52:54:00:12:34:56' });
    const names = checkXml(xml);
    xmllint(xml);
    assert.equal(names[0], 'unattend');
    assert.match(
      xml,
      /^<\?xml version="1\.0" encoding="utf-8"\?>\n<unattend xmlns="urn:schemas-microsoft-com:unattend">/,
    );
    for (const c of [
      'Microsoft-Windows-Shell-Setup',
      'Microsoft-Windows-TCPIP',
      'Microsoft-Windows-DNS-Client',
      'Microsoft-Windows-International-Core',
    ])
      assert.match(xml, new RegExp(`<component name="${c}" processorArchitecture="arm64"`));
    const specialize = xml.slice(
      xml.indexOf('pass="specialize"'),
      xml.indexOf('pass="oobeSystem"'),
    );
    assert.match(specialize, /<ComputerName>pc-0042<\/ComputerName>/);
    assert.match(
      specialize,
      /<RegisteredOrganization>Example &lt;Corp&gt;<\/RegisteredOrganization>/,
    );
    assert.match(specialize, /<RegisteredOwner>Ada &amp; &quot;Co&quot;<\/RegisteredOwner>/);
    assert.match(specialize, /<ProductKey>ABCDE-12345-FGHIJ-67890-KLMNO<\/ProductKey>/);
    assert.match(specialize, /<TimeZone>Romance Standard Time<\/TimeZone>/);
    assert.match(specialize, /<Identifier>52-54-00-12-34-56<\/Identifier>/);
    assert.match(
      specialize,
      /<IpAddress wcm:action="add" wcm:keyValue="1">192\.0\.2\.10\/24<\/IpAddress>/,
    );
    assert.match(
      specialize,
      /<NextHopAddress>192\.0\.2\.1<\/NextHopAddress>\s*<Prefix>0\.0\.0\.0\/0<\/Prefix>/,
    );
    assert.match(specialize, /<DNSDomain>corp\.example\.com<\/DNSDomain>/);
    assert.match(
      specialize,
      /<IpAddress wcm:action="add" wcm:keyValue="2">192\.0\.2\.54<\/IpAddress>/,
    );
    const oobe = xml.slice(xml.indexOf('pass="oobeSystem"'));
    assert.match(oobe, /<UserLocale>fr-FR<\/UserLocale>/);
    const value =
      /<AdministratorPassword>\s*<Value>([^<]+)<\/Value>\s*<PlainText>false<\/PlainText>/.exec(
        oobe,
      )?.[1];
    assert.equal(value, encodeAdministratorPassword('Pa$$w0rd <&>'));
    assert.equal(
      Buffer.from(value ?? '', 'base64').toString('utf16le'),
      'Pa$$w0rd <&>AdministratorPassword',
    );
    assert.doesNotMatch(xml, /Pa\$\$w0rd/, 'the password is only in its encoded form');
    assert.doesNotMatch(xml, /\$6\$/, 'no Linux hash in a Windows file');
  });

  it('leaves out what the state does not have; a hash alone sets no password', () => {
    const xml = unattendXml({ administratorPassword: { hash: HASH }, network: { mode: 'dhcp' } });
    checkXml(xml);
    xmllint(xml);
    assert.doesNotMatch(xml, /AdministratorPassword|TCPIP|DNS-Client|<settings/);
    const minimal = unattendXml({ computerName: 'ws1', timezone: 'Asia/Kolkata' });
    checkXml(minimal);
    assert.match(minimal, /processorArchitecture="amd64"/);
    assert.match(minimal, /<TimeZone>India Standard Time<\/TimeZone>/);
    assert.doesNotMatch(minimal, /oobeSystem/);
  });

  it('writes IPv6 statics and refuses Windows-invalid names', () => {
    const xml = unattendXml({
      network: { mode: 'static', address: '2001:db8::5', prefix: 64, gateway: '2001:db8::1' },
    });
    checkXml(xml);
    assert.match(xml, /<Ipv6Settings>\s*<DhcpEnabled>false<\/DhcpEnabled>/);
    assert.match(xml, /<Prefix>::\/0<\/Prefix>/);
    assert.match(xml, /<Identifier>Ethernet<\/Identifier>/);
    assert.throws(
      () => unattendXml({ computerName: 'a-very-long-name-16' }),
      expectCode('INVALID_ARGUMENT', /15 characters/),
    );
    assert.throws(
      () => unattendXml({ computerName: '12345' }),
      expectCode('INVALID_ARGUMENT', /digits/),
    );
    assert.throws(
      () => unattendXml({ organization: 'bad\u0001org' }),
      expectCode('INVALID_ARGUMENT', /organization/),
    );
  });

  it('escapes every XML special character, and the checker catches broken documents', () => {
    assert.equal(
      xmlEscape(`<a href="x">'&'</a>`),
      '&lt;a href=&quot;x&quot;&gt;&apos;&amp;&apos;&lt;/a&gt;',
    );
    assert.throws(() => xmlEscape('\u0000'), expectCode('INVALID_ARGUMENT'));
    for (const bad of [
      '<a><b></a></b>',
      '<a x="1" x="2"/>',
      '<a>&nope;</a>',
      '<a/><b/>',
      '<a><w:b/></a>',
      '<a>x < y</a>',
    ])
      assert.throws(() => checkXml(bad), /not well-formed/, bad);
  });
});

// ---------------------------------------------------------------- sysprep.inf

function ini(text: string): Map<string, Map<string, string>> {
  const out = new Map<string, Map<string, string>>();
  let cur: Map<string, string> | undefined;
  for (const raw of text.split('\r\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith(';')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) out.set(s[1] as string, (cur = new Map()));
    else {
      assert.ok(cur, `a value outside a section: ${line}`);
      const eq = line.indexOf('=');
      cur.set(line.slice(0, eq), line.slice(eq + 1));
    }
  }
  return out;
}

describe('sysprepInf', () => {
  it('has the sections of mini-setup, the time zone index and quoted values', () => {
    const text = sysprepInf(full, { macAddress: '52:54:00:12:34:56' });
    assert.ok(text.endsWith('\r\n'));
    assert.doesNotMatch(text.replace(/\r\n/g, ''), /\n/, 'CRLF line ends only');
    const s = ini(text);
    for (const section of [
      'Unattended',
      'GuiUnattended',
      'UserData',
      'Identification',
      'Networking',
    ])
      assert.ok(s.has(section), section);
    assert.equal(s.get('GuiUnattended')?.get('TimeZone'), '105'); // Romance: Paris
    assert.equal(s.get('GuiUnattended')?.get('AdminPassword'), '"Pa$$w0rd <&>"');
    assert.equal(s.get('GuiUnattended')?.get('EncryptedAdminPassword'), 'No');
    assert.equal(s.get('UserData')?.get('ComputerName'), 'pc-0042');
    assert.equal(s.get('UserData')?.get('FullName'), '"Ada & ""Co"""');
    assert.equal(s.get('UserData')?.get('OrgName'), '"Example <Corp>"');
    assert.equal(s.get('UserData')?.get('ProductKey'), 'ABCDE-12345-FGHIJ-67890-KLMNO');
    assert.equal(s.get('Identification')?.get('JoinWorkgroup'), 'WORKGROUP');
    assert.equal(s.get('Networking')?.get('InstallDefaultComponents'), 'No');
    assert.equal(s.get('params.Adapter1')?.get('NetCardAddress'), '0x525400123456');
    const tcp = s.get('params.MS_TCPIP.Adapter1');
    assert.equal(tcp?.get('IPAddress'), '192.0.2.10');
    assert.equal(tcp?.get('SubnetMask'), '255.255.255.0');
    assert.equal(tcp?.get('DefaultGateway'), '192.0.2.1');
    assert.equal(tcp?.get('DNSServerSearchOrder'), '192.0.2.53,192.0.2.54');
    assert.equal(tcp?.get('DNSDomain'), 'corp.example.com');
  });

  it('uses DHCP by default, ProductID for Windows 2000, and refuses what it cannot say', () => {
    const s = ini(
      sysprepInf(
        { productKey: 'AAAAA-BBBBB', organization: '100%' },
        { productKeyName: 'ProductID' },
      ),
    );
    assert.equal(s.get('Networking')?.get('InstallDefaultComponents'), 'Yes');
    assert.equal(s.get('UserData')?.get('ProductID'), 'AAAAA-BBBBB');
    assert.equal(s.get('UserData')?.get('OrgName'), '"100%%"');
    assert.equal(s.get('GuiUnattended')?.has('AdminPassword'), false);
    assert.throws(
      () => sysprepInf({ network: { mode: 'static', address: '2001:db8::5', prefix: 64 } }),
      expectCode('INVALID_ARGUMENT', /IPv4/),
    );
  });

  it('maps time zones to Windows ids and sysprep indexes, by offset when unmapped', () => {
    assert.equal(windowsTimeZone('Europe/Berlin'), 'W. Europe Standard Time');
    assert.equal(windowsTimeZone('Europe/Kyiv'), 'FLE Standard Time'); // CLDR spells it Kiev
    assert.equal(windowsTimeZone('Asia/Kolkata'), 'India Standard Time');
    assert.equal(windowsTimeZone('Etc/UTC'), 'UTC');
    assert.equal(windowsTimeZone('Tokyo Standard Time'), 'Tokyo Standard Time');
    assert.equal(windowsTimeZone('Not/AZone'), undefined);
    assert.equal(sysprepTimeZoneIndex('America/Los_Angeles'), 4);
    assert.equal(sysprepTimeZoneIndex('Australia/Sydney'), 255);
    assert.equal(sysprepTimeZoneIndex('Etc/UTC'), 90);
    // Turkey Standard Time came after XP: UTC+3 all year, like Arab Standard Time (Riyadh).
    assert.equal(sysprepTimeZoneIndex('Europe/Istanbul'), 145);
  });
});

describe('describeMachineState', () => {
  it('hides the product key and the password, keeps the rest', () => {
    const d = describeMachineState(full);
    assert.equal(d.productKey, '(set)');
    assert.equal(d.administratorPassword, '(set)');
    assert.equal(d.computerName, 'pc-0042');
    assert.deepEqual(d.network, full.network);
    const shown = JSON.stringify(d);
    for (const secret of [HASH, 'Pa$$w0rd', 'ABCDE-12345'])
      assert.ok(!shown.includes(secret), secret);
    assert.deepEqual(describeMachineState({ computerName: 'x' }), { computerName: 'x' });
  });
});

// ---------------------------------------------------------------- direct writes

function newImage(extra: Record<string, string | { link: string }> = {}): string {
  return tree(
    {
      'etc/hosts': '127.0.0.1\tlocalhost\n127.0.1.1\tdebian\n::1\tlocalhost ip6-localhost\n',
      'etc/hostname': 'debian\n',
      'etc/shadow': 'root:!:19500:0:99999:7:::\nbin:*:19500:0:99999:7:::\n',
      'etc/default/locale': '# keep me\nLANG=C.UTF-8\nLC_TIME=en_GB.UTF-8\n',
      ...extra,
    },
    { 'etc/shadow': 0o640 },
  );
}

describe('applyMachineStateDirect', () => {
  it('writes hostname, hosts, zone, locale, a NetworkManager keyfile and root hash; twice gives the same', async () => {
    const root = newImage({ 'etc/NetworkManager/NetworkManager.conf': '[main]\n' });
    const report = await applyMachineStateDirect(root, full, { macAddress: '52:54:00:12:34:56' });
    assert.deepEqual(report.skipped, []);
    assert.deepEqual(report.written.sort(), [
      '/etc/NetworkManager/system-connections/reimage.nmconnection',
      '/etc/default/locale',
      '/etc/hostname',
      '/etc/hosts',
      '/etc/localtime',
      '/etc/shadow',
      '/etc/timezone',
    ]);
    assert.equal(read(root, 'etc/hostname'), 'pc-0042\n');
    assert.equal(
      read(root, 'etc/hosts'),
      '127.0.0.1\tlocalhost\n127.0.1.1\tpc-0042.corp.example.com\tpc-0042\n::1\tlocalhost ip6-localhost\n',
    );
    assert.equal(read(root, 'etc/timezone'), 'Europe/Paris\n');
    assert.equal(readlinkSync(join(root, 'etc/localtime')), '/usr/share/zoneinfo/Europe/Paris');
    assert.equal(
      read(root, 'etc/default/locale'),
      '# keep me\nLC_TIME=en_GB.UTF-8\nLANG=fr_FR.UTF-8\n',
    );
    assert.equal(
      read(root, 'etc/shadow'),
      `root:${HASH}:19500:0:99999:7:::\nbin:*:19500:0:99999:7:::\n`,
    );
    assert.equal(lstatSync(join(root, 'etc/shadow')).mode & 0o777, 0o640, 'mode kept');
    const nm = join(root, 'etc/NetworkManager/system-connections/reimage.nmconnection');
    assert.equal(
      lstatSync(nm).mode & 0o777,
      0o600,
      'NetworkManager ignores keyfiles others can read',
    );
    const keyfile = readFileSync(nm, 'utf8');
    assert.match(keyfile, /^type=ethernet$/m);
    assert.match(keyfile, /^mac-address=52:54:00:12:34:56$/im);
    assert.match(
      keyfile,
      /^\[ipv4\]\nmethod=manual\naddress1=192\.0\.2\.10\/24,192\.0\.2\.1\ndns=192\.0\.2\.53;192\.0\.2\.54;\ndns-search=corp\.example\.com;$/m,
    );

    const before = [
      'etc/hosts',
      'etc/default/locale',
      'etc/shadow',
      'etc/NetworkManager/system-connections/reimage.nmconnection',
    ].map((p) => read(root, p));
    await applyMachineStateDirect(root, full, { macAddress: '52:54:00:12:34:56' });
    const again = [
      'etc/hosts',
      'etc/default/locale',
      'etc/shadow',
      'etc/NetworkManager/system-connections/reimage.nmconnection',
    ].map((p) => read(root, p));
    assert.deepEqual(again, before, 'idempotent');
  });

  it('replaces the stanza of /etc/network/interfaces and writes resolv.conf', async () => {
    const root = newImage({
      'etc/network/interfaces':
        'source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n    hostname old\n',
    });
    // No migrated interface name: the image's own first interface is configured.
    const state: MachineState = {
      ...full,
      network: {
        mode: 'static',
        address: '192.0.2.10',
        prefix: 24,
        gateway: '192.0.2.1',
        dns: ['192.0.2.53', '192.0.2.54'],
      },
    };
    const report = await applyMachineStateDirect(root, state);
    assert.ok(report.written.includes('/etc/network/interfaces'));
    assert.equal(
      read(root, 'etc/network/interfaces'),
      'source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\n# Written by reimage (machine state).\nauto eth0\niface eth0 inet static\n    address 192.0.2.10/24\n    gateway 192.0.2.1\n    dns-nameservers 192.0.2.53 192.0.2.54\n    dns-search corp.example.com\n',
    );
    assert.equal(
      read(root, 'etc/resolv.conf'),
      '# Written by reimage (machine state).\nsearch corp.example.com\nnameserver 192.0.2.53\nnameserver 192.0.2.54\n',
    );
    await applyMachineStateDirect(root, state);
    assert.equal(
      (read(root, 'etc/network/interfaces').match(/iface eth0/g) ?? []).length,
      1,
      'idempotent',
    );
  });

  it('writes netplan when that is what the image uses, and reports when there is nothing', async () => {
    const root = newImage({ 'etc/netplan/50-cloud-init.yaml': 'network: {version: 2}\n' });
    await applyMachineStateDirect(
      root,
      { network: { mode: 'dhcp' } },
      { macAddress: '52:54:00:12:34:56' },
    );
    const plan = parseYaml(read(root, 'etc/netplan/90-reimage.yaml'), { version: '1.1' });
    assert.deepEqual(plan, {
      network: {
        version: 2,
        ethernets: { reimage0: { match: { macaddress: '52:54:00:12:34:56' }, dhcp4: true } },
      },
    });
    assert.equal(lstatSync(join(root, 'etc/netplan/90-reimage.yaml')).mode & 0o777, 0o600);
    const bare = newImage();
    const r = await applyMachineStateDirect(bare, { network: { mode: 'dhcp' } });
    assert.deepEqual(r, {
      written: [],
      skipped: [
        {
          property: 'network',
          reason: 'the image has neither NetworkManager, netplan nor /etc/network',
        },
      ],
    });
  });

  it('refuses a symlinked /etc that escapes the root, and writes nothing outside it', async () => {
    const outside = tempDir();
    mkdirSync(join(outside, 'etc'));
    writeFileSync(join(outside, 'etc/hostname'), 'outside\n');
    for (const link of [`../../../../../../../..${outside}/etc`, '/etc']) {
      const root = tempDir();
      symlinkSync(link, join(root, 'etc'));
      await assert.rejects(
        applyMachineStateDirect(root, { computerName: 'evil' }),
        expectCode('APPLY_FAILED', /outside the tree|loop/),
        link,
      );
      await assert.rejects(
        writeNoCloudSeed(root, { 'meta-data': 'x', 'user-data': '#cloud-config\n' }).then(() =>
          resolveInTree(root, '/etc/NetworkManager/x', { createDirs: true }),
        ),
        expectCode('APPLY_FAILED'),
      );
    }
    assert.equal(read(outside, 'etc/hostname'), 'outside\n');
    assert.deepEqual(
      readdirSync(outside, { recursive: true }).sort(),
      ['etc', 'etc/hostname'],
      'nothing created outside the tree',
    );
  });

  it('follows an absolute link inside the tree, and replaces a last-place link rather than its target', async () => {
    const outside = tempDir();
    writeFileSync(join(outside, 'target'), 'untouched\n');
    const root = newImage({ 'etc/timezone': { link: join(outside, 'target') } });
    await applyMachineStateDirect(root, { timezone: 'Etc/UTC' });
    assert.equal(read(outside, 'target'), 'untouched\n');
    assert.ok(lstatSync(join(root, 'etc/timezone')).isFile());
    assert.equal(read(root, 'etc/timezone'), 'Etc/UTC\n');

    // /var → /usr/var (absolute): the seed lands in the tree's /usr/var, as the new OS sees it.
    const moved = tree({ 'usr/var/.keep': '', var: { link: '/usr/var' } });
    await writeNoCloudSeed(moved, {
      'meta-data': 'instance-id: x\n',
      'user-data': '#cloud-config\n',
    });
    assert.equal(read(moved, 'usr/var/lib/cloud/seed/nocloud/meta-data'), 'instance-id: x\n');
  });

  it('refuses to edit /etc/shadow through a symlink, and needs a root line', async () => {
    const outside = tempDir();
    writeFileSync(join(outside, 'shadow'), 'root:x:1::::::\n');
    const linked = newImage({ 'etc/shadow': { link: join(outside, 'shadow') } });
    await assert.rejects(
      applyMachineStateDirect(linked, { administratorPassword: { hash: HASH } }),
      expectCode('APPLY_FAILED', /symlink/),
    );
    assert.equal(read(outside, 'shadow'), 'root:x:1::::::\n');
    const noRoot = newImage({ 'etc/shadow': 'bin:*:1::::::\n' });
    await assert.rejects(
      applyMachineStateDirect(noRoot, { administratorPassword: { clear: 'pw' } }),
      expectCode('APPLY_FAILED', /no root line/),
    );
  });
});
