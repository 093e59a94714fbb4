/**
 * The admin CLI end to end: a real `reimage server` over HTTPS with its self-signed
 * certificate, and the real `reimage` binary logging in and driving every noun, as an
 * administrator would.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ApiClient } from '../src/client/http.js';
import { BIN, reimage, type CliResult } from './cli.js';

const EXAMPLES = new URL('../../examples/packages/', import.meta.url);

interface Server {
  child: ChildProcess;
  url: string;
  fingerprint: string;
  passwordFile: string;
  stderr: () => string;
  log: () => string;
}

/** Starts `reimage server` on a free loopback port; resolves once it prints its address. */
async function startServer(dataDir: string, logFile: string): Promise<Server> {
  // The request log goes to a file, so a busy log can never fill a pipe while a test waits.
  const logFd = openSync(logFile, 'w');
  const child = spawn(
    process.execPath,
    [BIN, 'server', '--data', dataDir, '--listen', '127.0.0.1:0'],
    { stdio: ['ignore', logFd, 'pipe'], env: cleanEnv() },
  );
  closeSync(logFd);
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`the server did not start within 60 s:\n${stderr}`)),
      60_000,
    );
    const check = () => {
      if (/initial|first start/.test(stderr) && /listening on/.test(stderr)) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stderr!.on('data', check);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited (${code}) before it listened:\n${stderr}`));
    });
  });
  const url = /listening on (https:\/\/\S+)/.exec(stderr)?.[1];
  const fingerprint = /fingerprint: (sha256:\S+)/.exec(stderr)?.[1];
  const passwordFile = /written to (.+)$/m.exec(stderr)?.[1];
  assert.ok(url && fingerprint && passwordFile, stderr);
  return {
    child,
    url,
    fingerprint,
    passwordFile,
    stderr: () => stderr,
    log: () => readFileSync(logFile, 'utf8'),
  };
}

async function stopServer(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null) return child.exitCode;
  const exited = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  const code = await exited;
  clearTimeout(timer);
  return code;
}

/** The environment without any reimage setting of the person running the tests. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('REIMAGE_')) env[k] = v;
  return { ...env, ...extra };
}

describe('admin CLI against a real server', { timeout: 240_000 }, () => {
  let dir: string;
  let data: string;
  let cfg: string;
  let server: Server;
  let adminPassword: string;
  /** Every output of every command that must never show a credential. */
  let seen = '';

  const cli = (
    args: string[],
    o: { input?: string; env?: Record<string, string>; config?: string } = {},
  ): CliResult => {
    const r = reimage(args, {
      input: o.input ?? '',
      env: cleanEnv({ XDG_CONFIG_HOME: o.config ?? cfg, HOME: dir, ...o.env }),
      timeout: 60_000,
    });
    return r;
  };
  /** A command that must succeed; its output is kept for the credential check. */
  const ok = (args: string[], o: Parameters<typeof cli>[1] = {}): CliResult => {
    const r = cli(args, o);
    seen += r.stdout + r.stderr;
    assert.equal(r.status, 0, `reimage ${args.join(' ')}\n${r.stdout}\n${r.stderr}`);
    return r;
  };
  const fails = (args: string[], code: string, exit: number, o: Parameters<typeof cli>[1] = {}) => {
    const r = cli(args, o);
    seen += r.stdout + r.stderr;
    assert.equal(r.status, exit, `reimage ${args.join(' ')}\n${r.stdout}\n${r.stderr}`);
    assert.match(r.stderr, new RegExp(`reimage: ${code}: `));
    if (args.includes('--json')) assert.equal(r.json?.error?.code, code, r.stdout);
    return r;
  };
  const savedToken = (): string | undefined =>
    (
      JSON.parse(readFileSync(join(cfg, 'reimage', 'config.json'), 'utf8')) as {
        token?: string;
      }
    ).token;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'reimage-cli-admin-'));
    data = join(dir, 'data');
    cfg = join(dir, 'config');
    server = await startServer(data, join(dir, 'server.log'));
    adminPassword = readFileSync(server.passwordFile, 'utf8').trim();
    assert.ok(adminPassword.length >= 12);
    assert.equal(statSync(server.passwordFile).mode & 0o077, 0, 'the password file is private');
    assert.ok(!server.stderr().includes(adminPassword), 'the password is never printed');
  });

  after(async () => {
    if (server) {
      const code = await stopServer(server.child);
      assert.equal(code, 0, `the server stops cleanly on SIGTERM:\n${server.stderr()}`);
      assert.match(server.stderr(), /stopped/);
    }
    rmSync(dir, { recursive: true, force: true });
  });

  test('login without a pin and without a terminal refuses, and shows the fingerprint', () => {
    const r = fails(
      ['login', '--server', server.url, '--password-stdin'],
      'SERVER_CERT_MISMATCH',
      1,
      { input: adminPassword },
    );
    assert.ok(r.stderr.includes(server.fingerprint), r.stderr);
    assert.ok(!existsSync(join(cfg, 'reimage', 'config.json')), 'nothing was saved');
  });

  test('login with the pinned fingerprint saves server, token and pin', () => {
    fails(
      [
        'login',
        '--server',
        server.url,
        '--server-fingerprint',
        server.fingerprint,
        '--password-stdin',
        '--json',
      ],
      'UNAUTHENTICATED',
      1,
      { input: 'not-the-password' },
    );
    const r = ok(
      [
        'login',
        '--server',
        server.url,
        '--server-fingerprint',
        server.fingerprint,
        '--password-stdin',
        '--json',
      ],
      { input: adminPassword + '\n' },
    );
    assert.equal(r.json.user.username, 'admin');
    assert.equal(r.json.user.role, 'admin');
    assert.equal(r.json.fingerprint, server.fingerprint);
    const file = join(cfg, 'reimage', 'config.json');
    assert.equal(statSync(file).mode & 0o077, 0, 'the config file is private');
    const saved = JSON.parse(readFileSync(file, 'utf8'));
    assert.equal(saved.server, server.url);
    assert.equal(saved.fingerprint, server.fingerprint);
    assert.match(saved.token, /^rit_/);
  });

  test('image list on the server starts empty', () => {
    const r = ok(['image', 'list', '--json']);
    assert.deepEqual(r.json, { images: [] });
    assert.match(ok(['image', 'list']).stdout, /no images/);
  });

  test("a captured image appears after a rescan of the server's library", () => {
    const src = join(dir, 'src');
    mkdirSync(join(src, 'etc'), { recursive: true });
    writeFileSync(join(src, 'etc', 'hostname'), 'model\n');
    writeFileSync(join(src, 'README'), 'a tiny tree\n'.repeat(100));
    const library = join(data, 'library');
    ok(['image', 'capture', src, '--store', library, '--name', 'tiny-image', '--json']);

    assert.equal(ok(['image', 'rescan', '--json']).json.registered, 1);
    const list = ok(['image', 'list', '--json']).json.images;
    assert.equal(list.length, 1);
    assert.equal(list[0].name, 'tiny-image');
    assert.match(ok(['image', 'list']).stdout, /tiny-image/);
    const shown = ok(['image', 'show', 'tiny-image', '--json']).json.image;
    assert.equal(shown.id, list[0].id);
    assert.equal(ok(['image', 'register', 'tiny-image', '--json']).json.image.id, list[0].id);

    // --store, or REIMAGE_STORE, still means the local store.
    const local = ok(['image', 'list', '--json', '--store', library]).json.images;
    assert.deepEqual(local[0].names, ['tiny-image']);
    const fromEnv = ok(['image', 'list', '--json'], { env: { REIMAGE_STORE: library } });
    assert.deepEqual(fromEnv.json.images[0].names, ['tiny-image']);
    fails(['image', 'list', '--store', library, '--server', server.url], 'USAGE', 2);
  });

  test('distribution points', () => {
    const r = ok([
      'dp',
      'create',
      'paris-dp',
      '--address',
      '/srv/reimage/paris',
      '--site',
      'paris',
      '--boundary',
      '10.1.0.0/16',
      '--rate-limit',
      '20000',
      '--window',
      'mon-fri 20:00-06:00',
      '--json',
    ]);
    assert.deepEqual(r.json.distributionPoint.bandwidth, {
      rateLimitKbps: 20000,
      windows: [{ days: ['mon', 'tue', 'wed', 'thu', 'fri'], from: '20:00', to: '06:00' }],
    });
    fails(['dp', 'create', 'paris-dp', '--address', '/x', '--site', 'paris'], 'ALREADY_EXISTS', 1);
    fails(
      ['dp', 'create', 'bad', '--address', '/x', '--site', 's', '--window', 'someday 1-2'],
      'INVALID_ARGUMENT',
      2,
    );
    const u = ok(['dp', 'update', 'paris-dp', '--any-time', '--rate-limit', 'none', '--json']);
    assert.deepEqual(u.json.distributionPoint.bandwidth, {});
    assert.match(ok(['dp', 'list']).stdout, /paris-dp\s+paris\s+\/srv\/reimage\/paris/);
    assert.equal(ok(['dp', 'show', 'paris-dp', '--json']).json.distributionPoint.site, 'paris');
    const c = ok(
      ['dp', 'update', 'paris-dp', '--username', 'writer', '--password-stdin', '--json'],
      { input: 'dp-write-secret' },
    );
    assert.equal(c.json.distributionPoint.hasCredentials, true);
    assert.ok(!c.stdout.includes('dp-write-secret'));
    assert.match(ok(['dp', 'show', 'paris-dp']).stdout, /credentials:\s+stored \(sealed\)/);
    const f = ok(['dp', 'update', 'paris-dp', '--forget-credentials', '--json']);
    assert.equal(f.json.distributionPoint.hasCredentials, false);
    fails(['dp', 'update', 'paris-dp', '--domain', 'W'], 'USAGE', 2);
  });

  let machineId: string;
  let packageRef: string;
  let machineCredential: string;

  test('collections, enrollment tokens and an enrolled machine', async () => {
    ok(['collection', 'create', 'debian', '--rule', 'os = "debian"', '--description', 'Debian']);
    fails(['collection', 'create', 'broken', '--rule', 'os = = 1', '--json'], 'RULE_INVALID', 2);
    const et = ok([
      'machine',
      'enroll-token',
      'create',
      '--site',
      'paris',
      '--uses',
      '5',
      '--expires-in',
      '2',
      '--json',
    ]).json;
    assert.match(et.token, /^rie_/);
    assert.equal(et.tokenInfo.usesLeft, 5);
    const listed = ok(['machine', 'enroll-token', 'list', '--json']).json.enrollmentTokens;
    assert.equal(listed.length, 1);
    assert.ok(!JSON.stringify(listed).includes(et.token), 'a listed token never shows its secret');

    const client = new ApiClient({ server: server.url, fingerprint: server.fingerprint });
    try {
      const res = await client.request<{ machine: { id: string }; credential: string }>(
        'POST',
        '/api/v1/client/enroll',
        {
          body: {
            token: et.token,
            name: 'pc-01',
            inventory: { hostname: 'pc-01', os: 'debian', osVersion: '12', ips: ['10.1.2.3'] },
            clientVersion: '0.1.0',
          },
        },
      );
      machineId = res.machine.id;
      machineCredential = res.credential;
    } finally {
      client.close();
    }

    const machines = ok(['machine', 'list', '--json']).json.machines;
    assert.deepEqual(
      machines.map((m: { name: string; site: string }) => [m.name, m.site]),
      [['pc-01', 'paris']],
    );
    assert.match(ok(['machine', 'list']).stdout, /pc-01\s+\S+\s+paris\s+debian 12\s+10\.1\.2\.3/);
    const members = ok(['collection', 'members', 'debian', '--json']).json.machines;
    assert.deepEqual(
      members.map((m: { id: string }) => m.id),
      [machineId],
    );
    const preview = ok(['collection', 'preview', '--rule', 'os = "windows"', '--json']);
    assert.deepEqual(preview.json.machines, []);
    const updated = ok([
      'machine',
      'update',
      'pc-01',
      '--tag',
      'lab',
      '--tag',
      'floor-2',
      '--json',
    ]);
    assert.deepEqual(updated.json.machine.tags, ['lab', 'floor-2']);
    assert.match(ok(['machine', 'show', 'pc-01']).stdout, /tags:\s+lab, floor-2/);
  });

  test('packages from the example files, and an advertisement that tightens them', async () => {
    const definition = join(dir, 'debian.package.yaml');
    const settings = join(dir, 'debian.deploy.yaml');
    if (existsSync(new URL('debian-12.package.yaml', EXAMPLES))) {
      const text = readFileSync(new URL('debian-12.package.yaml', EXAMPLES), 'utf8');
      const withImage = text.replace(/^(image:\s*\n\s+name:\s*)\S+/m, '$1tiny-image');
      assert.notEqual(withImage, text, 'the example names its image under image.name');
      writeFileSync(definition, withImage);
      writeFileSync(settings, readFileSync(new URL('debian-12.deploy.yaml', EXAMPLES)));
    } else {
      writeFileSync(
        definition,
        "apiVersion: reimage/v1\nkind: PackageDefinition\nname: debian-12-desktop\nversion: '12.5-1'\nimage:\n  name: tiny-image\n",
      );
      writeFileSync(
        settings,
        'apiVersion: reimage/v1\nkind: DeploymentSettings\noptions:\n  requireUserPermission: true\n  postponement:\n    maximum: 2d12h\n',
      );
    }
    const p = ok([
      'package',
      'create',
      '--definition',
      definition,
      '--settings',
      settings,
      '--json',
    ]);
    const pkg = p.json.package;
    assert.equal(pkg.imageId, ok(['image', 'show', 'tiny-image', '--json']).json.image.id);
    const ref = `${pkg.name}@${pkg.version}`;
    packageRef = ref;
    assert.match(ok(['package', 'list']).stdout, new RegExp(pkg.name));
    assert.equal(ok(['package', 'show', ref, '--json']).json.package.id, pkg.id);
    assert.equal(ok(['package', 'document', ref, '--json']).json.kind, 'Package');
    assert.equal(
      ok(['package', 'update', ref, '--definition', definition, '--settings', settings, '--json'])
        .json.package.revision,
      pkg.revision + 1,
    );

    // A document that does not validate: the code, the file name, and exit 2.
    const bad = join(dir, 'bad.package.yaml');
    writeFileSync(bad, 'apiVersion: reimage/v1\nkind: PackageDefinition\nname: x\n');
    const v = fails(
      ['package', 'create', '--definition', bad, '--settings', settings, '--json'],
      'VALIDATION_FAILED',
      2,
    );
    assert.match(v.stdout, /bad\.package\.yaml/);

    const deadline = new Date(Date.now() + 14 * 86400_000).toISOString();
    const ad = ok([
      'advertisement',
      'create',
      'debian-rollout',
      '--package',
      ref,
      '--collection',
      'debian',
      '--postpone-max',
      '1d',
      '--deadline',
      deadline,
      '--no-decline',
      '--message',
      'Your computer gets Debian 12 tonight.',
      '--wave',
      '10%',
      '--wave',
      '90%',
      '--maintenance-window',
      'mon-fri 22:00-05:00',
      '--rerun',
      'if-failed',
      '--retry-after',
      '1h',
      '--json',
    ]).json.advertisement;
    assert.deepEqual(ad.schedule.waves, [{ percent: 10 }, { percent: 90 }]);
    assert.equal(ad.schedule.retryAfter, '1h');
    assert.equal(ad.policy.postponementMaximum, '1d');
    assert.equal(ad.policy.allowDecline, false);
    const eff = ok(['advertisement', 'effective-policy', 'debian-rollout', '--json']).json;
    assert.deepEqual(eff.effectivePolicy.postponementMaximum, {
      value: '1d',
      source: 'advertisement',
    });
    assert.match(
      ok(['advertisement', 'effective-policy', 'debian-rollout']).stdout,
      /postponementMaximum\s+1d\s+advertisement/,
    );
    const list = ok(['advertisement', 'list']).stdout;
    assert.match(list, new RegExp(`debian-rollout\\s+${ref.replace(/[.+]/g, '\\$&')}\\s+debian`));
    const released = ok([
      'advertisement',
      'update',
      'debian-rollout',
      '--active-wave',
      '2',
      '--json',
    ]);
    assert.equal(released.json.advertisement.schedule.activeWave, 2);
    assert.deepEqual(released.json.advertisement.schedule.waves, ad.schedule.waves);
    assert.equal(released.json.advertisement.policy.postponementMaximum, '1d');

    // An advertisement may not loosen its package.
    fails(
      ['advertisement', 'update', 'debian-rollout', '--postpone-max', '30d', '--json'],
      'POLICY_LOOSENED',
      1,
    );
    // A package in use by an advertisement cannot go.
    fails(['package', 'delete', ref], 'IN_USE', 1);

    // A status message from the machine shows in `status list` and its timeline.
    const client = new ApiClient({
      server: server.url,
      fingerprint: server.fingerprint,
      token: machineCredential,
    });
    try {
      await client.request('POST', '/api/v1/client/status', {
        body: {
          machineId,
          messages: [
            {
              seq: 1,
              id: 1000,
              time: new Date().toISOString(),
              properties: { name: 'pc-01', clientVersion: '0.1.0' },
            },
          ],
        },
      });
    } finally {
      client.close();
    }
    const status = ok(['status', 'list', '--machine', 'pc-01', '--json']).json.status;
    assert.equal(status.length, 1);
    assert.equal(status[0].text, 'Machine pc-01 enrolled (client 0.1.0).');
    assert.match(ok(['status', 'list']).stdout, /pc-01\s+1\s+1000\s+info/);
    assert.equal(ok(['machine', 'timeline', 'pc-01', '--json']).json.status.length, 1);
    assert.deepEqual(
      ok(['status', 'list', '--limit', '5', '--advertisement', 'debian-rollout', '--json']).json
        .status,
      [],
    );
  });

  test('users, API tokens and the audit log', () => {
    const pw = 'a-long-operator-password';
    const u = ok(['user', 'create', 'olivia', '--role', 'operator', '--password-stdin', '--json'], {
      input: pw,
    });
    assert.equal(u.json.user.role, 'operator');
    assert.match(ok(['user', 'list']).stdout, /olivia\s+operator\s+enabled/);
    const t = ok(['token', 'create', 'ci', '--expires-in-days', '30', '--json']).json;
    assert.match(t.token, /^rit_/);
    const tokens = ok(['token', 'list', '--json']).json.tokens;
    assert.ok(tokens.some((x: { name: string }) => x.name === 'ci'));
    assert.ok(!JSON.stringify(tokens).includes(t.token));
    // The new token works as REIMAGE_TOKEN, and beats the saved one.
    const whoFromEnv = ok(['image', 'list', '--json'], { env: { REIMAGE_TOKEN: t.token } });
    assert.equal(whoFromEnv.json.images.length, 1);
    ok(['token', 'revoke', t.tokenInfo.id]);
    fails(['image', 'list', '--json'], 'UNAUTHENTICATED', 1, { env: { REIMAGE_TOKEN: t.token } });
    ok(['user', 'update', 'olivia', '--disable']);
    const audit = ok(['audit', 'list', '--limit', '100', '--json']).json.audit;
    const actions = audit.map((e: { action: string; kind: string }) => `${e.action} ${e.kind}`);
    for (const a of ['login user', 'create package', 'create advertisement', 'revoke token'])
      assert.ok(actions.includes(a), `${a} in ${actions.join(', ')}`);
    assert.ok(!JSON.stringify(audit).includes(pw));
    ok(['user', 'delete', 'olivia']);
  });

  test('errors carry the server’s code and exit status', () => {
    fails(['package', 'show', 'no-such-package', '--json'], 'NOT_FOUND', 1);
    // No token: the server refuses.
    const anonymous = join(dir, 'config-anonymous');
    fails(
      [
        'machine',
        'list',
        '--server',
        server.url,
        '--server-fingerprint',
        server.fingerprint,
        '--json',
      ],
      'UNAUTHENTICATED',
      1,
      { config: anonymous },
    );
    // A wrong pin: nothing is sent.
    const wrong = `sha256:${'AB:'.repeat(31)}AB`;
    const r = fails(
      ['machine', 'list', '--server', server.url, '--server-fingerprint', wrong, '--json'],
      'SERVER_CERT_MISMATCH',
      1,
    );
    assert.ok(r.json.error.details.presented === server.fingerprint, r.stdout);
    fails(['machine', 'list'], 'USAGE', 2, { config: anonymous });
    fails(['dp', 'update', 'paris-dp'], 'USAGE', 2);
  });

  test('deletes go referrers first; image delete talks to the server', () => {
    fails(['image', 'delete', 'tiny-image', '--json'], 'IN_USE', 1);
    fails(['image', 'show', 'tiny-image', '--files'], 'USAGE', 2);
    ok(['advertisement', 'delete', 'debian-rollout']);
    ok(['package', 'delete', packageRef]);
    fails(['image', 'delete', 'tiny-image', 'no-such-image'], 'NOT_FOUND', 1);
    assert.equal(
      ok(['image', 'list', '--json']).json.images.length,
      1,
      'a bad name changes nothing',
    );
    assert.equal(ok(['image', 'delete', 'tiny-image', '--json']).json.deleted.length, 1);
    assert.deepEqual(ok(['image', 'list', '--json']).json.images, []);
    ok(['machine', 'delete', 'pc-01']);
    ok(['collection', 'delete', 'debian']);
    ok(['dp', 'delete', 'paris-dp']);
    assert.deepEqual(ok(['machine', 'list', '--json']).json.machines, []);
  });

  test('logout forgets the token; no credential was ever printed or logged', () => {
    const token = savedToken();
    assert.ok(token);
    for (const secret of [token, adminPassword]) {
      assert.ok(!seen.includes(secret), 'no command printed a credential');
      assert.ok(!server.log().includes(secret), 'the server log holds no credential');
    }
    ok(['logout']);
    assert.equal(savedToken(), undefined);
    fails(['machine', 'list', '--json'], 'UNAUTHENTICATED', 1);
    assert.match(ok(['logout']).stdout, /not logged in/);
  });
});
