import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { makeMachineTree, makeNewOsTree } from '../src/lab/machine-tree.js';
import {
  applyMachineStateDirect,
  cloudInitNoCloud,
  describeMachineState,
  writeNoCloudSeed,
} from '../src/migrate/answer-files.js';
import { readMachineState, resolveMachineState } from '../src/migrate/machine-state.js';
import type { MachineState } from '../src/migrate/model.js';

/**
 * The generated NoCloud files, checked by cloud-init itself (Debian's `cloud-init`, installed
 * by .ci/run): user-data by `cloud-init schema`, network-config by its schema where this
 * cloud-init has one (`--schema-type network-config`, 23.x and later) and always by rendering
 * it with cloud-init's own converters; the seed folder read the way the NoCloud datasource
 * reads it, with cloud-init's YAML 1.1 parser. Skipped where cloud-init is not installed,
 * except in CI. Lab machines (src/lab) close the loop: the state read from an old machine's
 * tree is what its files say, and the same state read back from the new OS after direct writes.
 */

function run(cmd: string, args: string[]) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}`, error: r.error };
}

const probe = run('cloud-init', ['--version']);
const missing = probe.error
  ? 'cloud-init is not installed (apt-get install cloud-init)'
  : undefined;
if (missing && process.env.CI) throw new Error(`cloud-init tests must run in CI: ${missing}`);

const schemaHelp = missing ? '' : run('cloud-init', ['schema', '--help']).out;
const networkSchema = schemaHelp.includes('--schema-type');

/** cloud-init's own Python (the shebang of its script), which has the cloudinit package. */
function cloudInitPython(): string {
  const path = run('sh', ['-c', 'command -v cloud-init']).out.trim();
  const shebang = readFileSync(path, 'utf8').split('\n')[0] ?? '';
  const m = /^#!\s*(\S+)(?:\s+(\S+))?/.exec(shebang);
  assert.ok(m, `cannot find the interpreter of ${path}`);
  return m[1] === '/usr/bin/env' && m[2] ? m[2] : (m[1] as string);
}

const temps: string[] = [];
after(() => {
  for (const t of temps) rmSync(t, { recursive: true, force: true });
});

const HASH = '$6$abcdefgh$' + 'x'.repeat(86);
const MAC = '52:54:00:12:34:56';

const cases: { name: string; state: MachineState; mac?: string; expectAddress?: string }[] = [
  {
    name: 'static IPv4 matched by MAC, with everything',
    state: {
      computerName: 'pc-0042',
      domain: 'corp.example.com',
      administratorPassword: { hash: HASH },
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
    },
    mac: MAC,
    expectAddress: '192.0.2.10',
  },
  {
    name: 'static IPv4 by interface name, no gateway, no DNS',
    state: {
      computerName: 'files01',
      network: { mode: 'static', interface: 'ens3', address: '198.51.100.7', prefix: 23 },
    },
    expectAddress: '198.51.100.7',
  },
  {
    name: 'static IPv6',
    state: {
      computerName: 'v6host',
      domain: 'example.net',
      network: {
        mode: 'static',
        interface: 'eth1',
        address: '2001:db8::5',
        prefix: 64,
        gateway: '2001:db8::1',
        dns: ['2001:db8::53'],
      },
    },
    expectAddress: '2001:db8::5',
  },
  {
    name: 'DHCP on a known NIC, YAML 1.1 look-alike values',
    // "no" is a valid host name and a YAML 1.1 boolean: it must reach cloud-init as a string.
    state: { computerName: 'no', timezone: 'Etc/UTC', network: { mode: 'dhcp' } },
    mac: MAC,
  },
  {
    name: 'nothing but an instance id',
    state: {},
  },
];

describe('cloud-init NoCloud files pass cloud-init', { skip: missing }, () => {
  for (const c of cases) {
    it(c.name, async () => {
      const root = mkdtempSync(join(tmpdir(), 'reimage-nocloud-'));
      temps.push(root);
      const files = cloudInitNoCloud(c.state, {
        instanceId: 'reimage-test-1',
        ...(c.mac ? { macAddress: c.mac } : {}),
        users: [
          {
            name: 'alice',
            uid: 1000,
            gid: 1000,
            gecos: 'Alice',
            home: '/home/alice',
            shell: '/bin/bash',
            groups: [],
          },
        ],
      });
      await writeNoCloudSeed(root, files);
      const seed = join(root, 'var/lib/cloud/seed/nocloud');

      const schema = run('cloud-init', ['schema', '--config-file', join(seed, 'user-data')]);
      assert.equal(schema.status, 0, schema.out);
      assert.match(schema.out, /Valid cloud-config/);
      assert.doesNotMatch(schema.out, /DEPRECATED|deprecations:[ \t]*\S/, 'no deprecated keys');

      // The seed as the NoCloud datasource reads it, parsed by cloud-init's own YAML loader.
      const py = run(cloudInitPython(), [
        '-c',
        [
          'import json, sys',
          'from cloudinit import util',
          "d = util.pathprefix2dict(sys.argv[1], required=['user-data', 'meta-data'], optional=['vendor-data', 'network-config'])",
          'print(json.dumps({k: util.load_yaml(v) for k, v in d.items()}, default=str))',
        ].join('\n'),
        `${seed}/`,
      ]);
      assert.equal(py.status, 0, py.out);
      const seen = JSON.parse(py.out) as Record<string, Record<string, unknown> | null>;
      assert.deepEqual(seen['meta-data'], {
        'instance-id': 'reimage-test-1',
        ...(c.state.computerName ? { 'local-hostname': c.state.computerName } : {}),
      });
      if (c.state.computerName) assert.equal(seen['user-data']?.hostname, c.state.computerName);
      if (c.state.administratorPassword)
        assert.deepEqual(seen['user-data']?.chpasswd, {
          expire: false,
          users: [{ name: 'root', password: HASH, type: 'hash' }],
        });

      const net = files['network-config'];
      if (net === undefined) {
        assert.equal(seen['network-config'], undefined);
        return;
      }
      const netFile = join(seed, 'network-config');
      if (networkSchema) {
        const r = run('cloud-init', [
          'schema',
          '--schema-type',
          'network-config',
          '--config-file',
          netFile,
        ]);
        assert.equal(r.status, 0, r.out);
      }
      if (c.mac)
        assert.deepEqual(
          (
            Object.values((seen['network-config'] as { ethernets: object }).ethernets)[0] as {
              match: unknown;
            }
          ).match,
          { macaddress: c.mac },
          'the MAC stays a string under YAML 1.1',
        );
      for (const kind of ['eni', 'netplan', 'network-manager']) {
        const out = join(root, 'rendered', kind);
        const r = run('cloud-init', [
          'devel',
          'net-convert',
          '--network-data',
          netFile,
          '--kind',
          'yaml',
          '--directory',
          out,
          '--distro',
          'debian',
          '--output-kind',
          kind,
        ]);
        assert.equal(r.status, 0, `${kind}: ${r.out}`);
        const rendered = readdirSync(out, { recursive: true, encoding: 'utf8' })
          .map((f) => join(out, f))
          .filter((f) => statSync(f).isFile())
          .map((f) => readFileSync(f, 'utf8'))
          .join('\n');
        if (c.expectAddress)
          assert.ok(
            rendered.includes(c.expectAddress),
            `${kind} renders the address:\n${rendered}`,
          );
        const gw = c.state.network?.mode === 'static' ? c.state.network.gateway : undefined;
        if (gw) assert.ok(rendered.includes(gw), `${kind} renders the gateway:\n${rendered}`);
      }
    });
  }
});

describe('lab machines: read the old tree, write the new one, read it back', () => {
  // Seeds chosen to cover NetworkManager, ifupdown and netplan, static and DHCP.
  for (const seed of [1, 2, 3, 6, 8]) {
    it(`seed ${seed}`, async () => {
      const root = mkdtempSync(join(tmpdir(), 'reimage-lab-answer-'));
      temps.push(root);
      const facts = await makeMachineTree(root, { seed, scale: 'small', users: 1 });
      const { source, files: _files, ...network } = facts.machineState.network;
      const expected = { ...facts.machineState, network };

      const old = await readMachineState(root);
      assert.deepEqual(old, expected, `what the ${source} files say`);
      const shown = JSON.stringify(describeMachineState(old));
      for (const secret of facts.secrets)
        assert.ok(!shown.includes(secret), 'a secret in the description');

      const state = resolveMachineState(old, { organization: { set: 'Example Corp' } });
      if (!missing) {
        const seedRoot = mkdtempSync(join(tmpdir(), 'reimage-lab-seed-'));
        temps.push(seedRoot);
        await writeNoCloudSeed(
          seedRoot,
          cloudInitNoCloud(state, {
            instanceId: `lab-${seed}`,
            users: facts.users,
            macAddress: MAC,
          }),
        );
        const r = run('cloud-init', [
          'schema',
          '--config-file',
          join(seedRoot, 'var/lib/cloud/seed/nocloud/user-data'),
        ]);
        assert.equal(r.status, 0, r.out);
      }

      await makeNewOsTree(root, { seed });
      const report = await applyMachineStateDirect(root, state);
      assert.deepEqual(report.skipped, []);
      // Host keys are restored from the state store, not by the answer files: the new OS has its own.
      assert.deepEqual({ ...(await readMachineState(root)), sshHostKeys: true }, expected);
    });
  }
});
