import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Machine, PackageRecord } from '../src/catalog/catalog.js';
import { ApiClient } from '../src/client/http.js';
import { isReimageError } from '../src/errors.js';
import type { Policy } from '../src/server/policy.js';
import { startServer } from '../src/server/start.js';
import type { RunningServer } from '../src/server/start.js';
import {
  addImage,
  createAdvertisement,
  createCollection,
  createDp,
  createEnrollmentToken,
  createPackage,
  enrollMachine,
  exampleSettings,
  expectStatus,
  packageFiles,
} from './support/fixtures.js';
import { postgresSkip, startPostgres } from './support/postgres.js';
import type { Postgres } from './support/postgres.js';
import { forEachDatabase } from './support/server.js';

const names = (r: { body: { items: { name: string }[] } }) =>
  r.body.items.map((m) => m.name).sort();

forEachDatabase('management API', (get) => {
  const credentials = new Map<string, string>();
  it('logs in with a password and refuses a wrong one', async () => {
    const s = get();
    const ok = await s.call<{ token: string; user: { role: string } }>(
      'POST',
      '/api/v1/auth/login',
      {
        token: null,
        body: { username: 'operator', password: 'operator-password-long' },
      },
    );
    expectStatus(ok, 200, 'login');
    assert.match(ok.body.token, /^rit_/);
    const me = await s.call<{ username: string }>('GET', '/api/v1/whoami', {
      token: ok.body.token,
    });
    assert.equal(me.body.username, 'operator');
    for (const body of [
      { username: 'operator', password: 'wrong-password-xx' },
      { username: 'nobody', password: 'operator-password-long' },
    ]) {
      const bad = await s.call<{ error: { code: string } }>('POST', '/api/v1/auth/login', {
        token: null,
        body,
      });
      assert.equal(bad.status, 401);
      assert.equal(bad.body.error.code, 'UNAUTHENTICATED');
    }
  });

  it('throttles password guessing: after 10 failures the right password is refused with 429 and Retry-After', async () => {
    const s = get();
    const login = (password: string) =>
      s.app.inject({
        method: 'POST',
        url: '/api/v1/auth/login',
        payload: { username: 'readonly', password },
      });
    for (let i = 0; i < 10; i++) assert.equal((await login(`guess-${i}-xxxxxxxx`)).statusCode, 401);
    const refused = await login('read-only-password-long');
    assert.equal(refused.statusCode, 429);
    assert.equal(refused.json<{ error: { code: string } }>().error.code, 'LOGIN_THROTTLED');
    assert.ok(Number(refused.headers['retry-after']) > 0);
    // Another user from the same address still logs in (10 failures < the address limit of 30).
    const other = await s.call('POST', '/api/v1/auth/login', {
      token: null,
      body: { username: 'operator', password: 'operator-password-long' },
    });
    expectStatus(other, 200, 'another user');
  });

  it('registers images from the library with their properties', async () => {
    const s = get();
    const img = await addImage(s, 'debian-12-base');
    assert.equal(img.format, 'native');
    assert.ok(img.fileCount >= 3 && img.size > 20_000);
    const byPrefix = await s.call<{ id: string }>('GET', `/api/v1/images/${img.id.slice(0, 12)}`);
    assert.equal(byPrefix.body.id, img.id);
    const rescan = await s.call<{ registered: number }>('POST', '/api/v1/images/rescan', {
      role: 'operator',
    });
    assert.equal(rescan.body.registered, 0, 'already registered');
    assert.deepEqual(names(await s.call('GET', '/api/v1/images', { role: 'read-only' })), [
      'debian-12-base',
    ]);
  });

  it('stores a package from YAML, shows it without secrets, and keeps secrets across an update', async () => {
    const s = get();
    const settings = exampleSettings();
    settings.stateStore = {
      type: 'share',
      url: 'smb://files.example.com/state',
      username: 'svc-reimage',
      password: 'Share-Pass-1',
    };
    (settings.machineState as Record<string, unknown>).productKey = { set: 'AAAAA-BBBBB-CCCCC' };
    const created = await createPackage(
      s,
      packageFiles({ name: 'desktop', version: '1.0', image: 'debian-12-base', settings }),
    );
    assert.equal(created.revision, 1);
    const shown = await s.call<PackageRecord>('GET', '/api/v1/packages/desktop@1.0', {
      role: 'read-only',
    });
    const text = JSON.stringify(shown.body);
    assert.ok(
      !text.includes('Share-Pass-1') && !text.includes('AAAAA-BBBBB'),
      'no secret in the answer',
    );
    assert.deepEqual(
      (shown.body.settings as { stateStore: { password: unknown } }).stateStore.password,
      { secret: 'set' },
    );
    const doc = await s.call('GET', '/api/v1/packages/desktop/document', { role: 'read-only' });
    assert.ok(!doc.raw.includes('Share-Pass-1'));
    // Send the settings back as read (markers in place), with one change: the secrets stay.
    const again = structuredClone(shown.body.settings) as Record<string, Record<string, unknown>>;
    again.options!.allowDecline = true;
    const files = packageFiles({
      name: 'desktop',
      version: '1.0',
      image: 'debian-12-base',
      settings: again,
    });
    const updated = await s.call<PackageRecord>('PUT', '/api/v1/packages/desktop@1.0', {
      role: 'operator',
      body: files,
    });
    expectStatus(updated, 200, 'update package');
    assert.equal(updated.body.revision, 2);
    const sealed = await s.catalog.packageSecrets(created.id);
    assert.ok(sealed && sealed.startsWith('v1:'), 'secrets are stored sealed');
  });

  it('evaluates collection rules against a table of machines', async () => {
    const s = get();
    const fleet: [string, Record<string, unknown>][] = [
      [
        'pc-paris-1',
        { os: 'debian', osVersion: '12', diskFreeGb: 40, memoryGb: 8, ips: ['10.1.0.11'] },
      ],
      [
        'pc-paris-2',
        { os: 'debian', osVersion: '11', diskFreeGb: 12, memoryGb: 4, ips: ['10.1.0.12'] },
      ],
      [
        'pc-lyon-1',
        { os: 'debian', osVersion: '12', diskFreeGb: 80, memoryGb: 16, ips: ['10.2.0.21'] },
      ],
      [
        'pc-lyon-2',
        { os: 'ubuntu', osVersion: '22.04', diskFreeGb: 60, memoryGb: 8, ips: ['10.2.0.22'] },
      ],
      ['kiosk-1', { os: 'debian', osVersion: '12', diskFreeGb: 25, ips: ['10.3.0.5'] }],
      ['blank', {}],
    ];
    await createDp(s, { name: 'dp-paris', site: 'paris', boundaries: ['10.1.0.0/16'] });
    await createDp(s, {
      name: 'dp-lyon',
      site: 'lyon',
      boundaries: ['10.2.0.0/16'],
      address: '/srv/dp-lyon',
    });
    for (const [name, inventory] of fleet)
      credentials.set(name, (await enrollMachine(s, { name, inventory })).credential);
    const table: [string, string[]][] = [
      ['os = "debian" and disk_free_gb >= 20', ['kiosk-1', 'pc-lyon-1', 'pc-paris-1']],
      ['site in ["paris", "lyon"]', ['pc-lyon-1', 'pc-lyon-2', 'pc-paris-1', 'pc-paris-2']],
      ['os_version < "12"', ['pc-paris-2']],
      ['ip in subnet "10.2.0.0/16" or name ~ "kiosk-*"', ['kiosk-1', 'pc-lyon-1', 'pc-lyon-2']],
      ['not exists os', ['blank']],
      ['memory_gb >= 8 and not (site = "lyon")', ['pc-paris-1']],
    ];
    for (const [rule, expected] of table) {
      const r = await s.call<{ items: Machine[] }>('POST', '/api/v1/collections/preview', {
        role: 'read-only',
        body: { rule },
      });
      expectStatus(r, 200, rule);
      assert.deepEqual(names(r), expected, rule);
    }
    // Static members join the rule's matches; exclusions win over both.
    await createCollection(s, {
      name: 'debian-big',
      rule: 'os = "debian" and disk_free_gb >= 20',
      include: ['blank'],
      exclude: ['kiosk-1'],
    });
    const members = await s.call<{ items: Machine[] }>(
      'GET',
      '/api/v1/collections/debian-big/members',
      { role: 'read-only' },
    );
    assert.deepEqual(names(members), ['blank', 'pc-lyon-1', 'pc-paris-1']);
    // Sites come from the DP boundaries the machine's addresses fall in.
    const lyon = await s.call<Machine>('GET', '/api/v1/machines/pc-lyon-2', { role: 'read-only' });
    assert.equal(lyon.body.site, 'lyon');
  });

  it('gives each machine its own policy: content for its site first, effective policy with sources, waves', async () => {
    const s = get();
    await createAdvertisement(s, {
      name: 'desktop-rollout',
      package: 'desktop@1.0',
      collection: 'debian-big',
      policy: { postponementMaximum: '1d', message: 'Your PC gets Debian 12 tonight.' },
      schedule: { waves: [{ machines: 2 }, { percent: 100 }], activeWave: 1 },
    });
    const eff = await s.call<Record<string, { value: unknown; source: string }>>(
      'GET',
      '/api/v1/advertisements/desktop-rollout/effective-policy',
      { role: 'read-only' },
    );
    expectStatus(eff, 200, 'effective policy');
    const found = JSON.stringify(eff.body);
    assert.match(found, /"postponementMaximum":\{"value":"1d","source":"advertisement"\}/);
    assert.match(found, /"requireUserPermission":\{"value":true,"source":"package"\}/);

    const lyonMachine = await enrollMachine(s, {
      name: 'pc-lyon-3',
      inventory: { os: 'debian', diskFreeGb: 90, ips: ['10.2.0.30'] },
    });
    const r = await s.call<Policy>('GET', '/api/v1/client/policy', {
      token: lyonMachine.credential,
    });
    expectStatus(r, 200, 'policy');
    const [ad] = r.body.advertisements;
    assert.ok(ad, 'the advertisement applies to the machine');
    assert.deepEqual(
      ad.content.map((c) => [c.distributionPoint, c.preference]),
      [
        ['dp-lyon', 'site'],
        ['dp-paris', 'fallback'],
      ],
    );
    const settings = ad.settings as { stateStore: { password: string } };
    assert.equal(
      settings.stateStore.password,
      'Share-Pass-1',
      "the machine's own policy carries the secret",
    );
    // The state store key: 32 bytes for this machine and advertisement, readable back by an admin only.
    assert.equal(Buffer.from(ad.stateStoreKey, 'base64').length, 32);
    const url = `/api/v1/machines/${lyonMachine.id}/state-store-key?advertisement=desktop-rollout`;
    const rescue = await s.call<{ key: string }>('GET', url);
    assert.equal(rescue.body.key, ad.stateStoreKey);
    assert.equal((await s.call('GET', url, { role: 'operator' })).status, 403);
    const other = await s.call<Policy>('GET', '/api/v1/client/policy', {
      token: credentials.get('pc-paris-1')!,
    });
    assert.notEqual(
      other.body.advertisements[0]?.stateStoreKey,
      ad.stateStoreKey,
      'one key per machine',
    );
    credentials.set('pc-lyon-3', lyonMachine.credential);
    // Waves: the first wave holds two of the four members (in a stable order); the others wait.
    const members = await s.call<{ items: Machine[] }>(
      'GET',
      '/api/v1/collections/debian-big/members',
      { role: 'read-only' },
    );
    const states = await Promise.all(
      members.body.items.map(
        async (m) =>
          (
            await s.call<Policy>('GET', '/api/v1/client/policy', {
              token: credentials.get(m.name)!,
            })
          ).body.advertisements[0]!.state,
      ),
    );
    assert.deepEqual(states.sort(), ['active', 'active', 'waiting-for-wave', 'waiting-for-wave']);
    // A machine outside the collection gets no advertisement.
    const outsider = await enrollMachine(s, {
      name: 'ubuntu-x',
      inventory: { os: 'ubuntu', ips: ['10.9.9.9'] },
    });
    const none = await s.call<Policy>('GET', '/api/v1/client/policy', {
      token: outsider.credential,
    });
    assert.deepEqual(none.body.advertisements, []);
  });

  it('refuses an advertisement that loosens its package and says which setting', async () => {
    const s = get();
    const r = await s.call<{ error: { code: string; message: string } }>(
      'POST',
      '/api/v1/advertisements',
      {
        role: 'operator',
        body: {
          name: 'too-loose',
          package: 'desktop@1.0',
          collection: 'debian-big',
          policy: { postponementMaximum: '30d', requireUserPermission: false },
        },
      },
    );
    assert.equal(r.status, 400);
    assert.equal(r.body.error.code, 'POLICY_LOOSENED');
    assert.match(r.body.error.message, /postpone/i);
  });

  it('lets concurrent enrollments each take one use of a token, and no more', async () => {
    const s = get();
    const { token } = await createEnrollmentToken(s, { uses: 8 });
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        s.call('POST', '/api/v1/client/enroll', {
          token: null,
          body: { token, name: `rush-${i}`, inventory: {} },
        }),
      ),
    );
    assert.deepEqual(results.map((r) => r.status).sort(), [...Array(8).fill(201), 401, 401]);
  });

  it('keeps package revisions counting when updates race', async () => {
    const s = get();
    const shown = await s.call<PackageRecord>('GET', '/api/v1/packages/desktop@1.0', {
      role: 'read-only',
    });
    const before = shown.body.revision;
    const updates = await Promise.all(
      Array.from({ length: 4 }, () =>
        s.call('PUT', '/api/v1/packages/desktop@1.0', {
          role: 'operator',
          body: packageFiles({
            name: 'desktop',
            version: '1.0',
            image: 'debian-12-base',
            settings: shown.body.settings as Record<string, unknown>,
          }),
        }),
      ),
    );
    assert.ok(
      updates.every((u) => u.status === 200),
      updates.map((u) => u.raw).join('\n'),
    );
    const after = await s.call<PackageRecord>('GET', '/api/v1/packages/desktop@1.0', {
      role: 'read-only',
    });
    assert.equal(after.body.revision, before + 4);
  });

  it('keeps an audit log of admin changes', async () => {
    const s = get();
    const r = await s.call<{
      items: { actor: string; action: string; kind: string; target: string }[];
    }>('GET', '/api/v1/audit');
    const kinds = new Set(r.body.items.map((e) => `${e.action} ${e.kind}`));
    for (const k of [
      'create package',
      'update package',
      'create distribution point',
      'create collection',
      'create advertisement',
      'register image',
    ])
      assert.ok(kinds.has(k), `audit has ${k}`);
    const denied = await s.call('GET', '/api/v1/audit', { role: 'operator' });
    assert.equal(denied.status, 403);
  });
});

/** The same server over the network: HTTPS with a self-signed certificate, pinned by the client. */
for (const kind of ['sqlite', 'postgres'] as const) {
  describe(
    `management API over HTTPS [${kind}]`,
    { skip: kind === 'postgres' ? postgresSkip() : false },
    () => {
      let dir: string;
      let pg: Postgres | undefined;
      let server: RunningServer;
      before(async () => {
        dir = mkdtempSync(join(tmpdir(), 'reimage-https-'));
        if (kind === 'postgres') pg = await startPostgres();
        server = await startServer({
          dataDir: dir,
          database: pg ? await pg.createDatabase('https_test') : undefined,
          host: '127.0.0.1',
          port: 0,
        });
      });
      after(async () => {
        await server?.close();
        pg?.stop();
        rmSync(dir, { recursive: true, force: true });
      });

      it('serves the API to a client that pinned the fingerprint, and refuses another pin', async () => {
        assert.match(server.url, /^https:\/\/127\.0\.0\.1:\d+$/);
        assert.ok(server.fingerprint && server.initialAdminPasswordFile);
        const { readFileSync } = await import('node:fs');
        const password = readFileSync(server.initialAdminPasswordFile, 'utf8').trim();
        const anon = new ApiClient({ server: server.url, fingerprint: server.fingerprint });
        const login = await anon.request<{ token: string }>('POST', '/api/v1/auth/login', {
          body: { username: 'admin', password },
        });
        const admin = new ApiClient({
          server: server.url,
          fingerprint: server.fingerprint,
          token: login.token,
        });
        const info = await admin.request<{ database: string; fingerprint: string }>(
          'GET',
          '/api/v1/server',
        );
        assert.equal(info.database, kind);
        assert.equal(info.fingerprint, server.fingerprint);
        const { token } = await admin.request<{ token: string }>(
          'POST',
          '/api/v1/enrollment-tokens',
          { body: { uses: 1 } },
        );
        const enrolled = await anon.request<{ credential: string; machine: { id: string } }>(
          'POST',
          '/api/v1/client/enroll',
          {
            body: { token, name: 'net-1', inventory: { os: 'debian' } },
          },
        );
        const machine = new ApiClient({
          server: server.url,
          fingerprint: server.fingerprint,
          token: enrolled.credential,
        });
        const policy = await machine.request<{ machineId: string }>('GET', '/api/v1/client/policy');
        assert.equal(policy.machineId, enrolled.machine.id);
        await assert.rejects(admin.request('GET', '/api/v1/client/policy'), (e) =>
          isReimageError(e, 'UNAUTHENTICATED'),
        );
        const wrong = new ApiClient({
          server: server.url,
          fingerprint: `sha256:${'AB:'.repeat(31)}AB`,
          token: login.token,
        });
        await assert.rejects(wrong.request('GET', '/api/v1/whoami'), (e) =>
          isReimageError(e, 'SERVER_CERT_MISMATCH'),
        );
        for (const c of [anon, admin, machine, wrong]) c.close();
      });
    },
  );
}

describe('server start', () => {
  it('refuses plain HTTP except on loopback, before touching anything', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'reimage-start-'));
    try {
      await assert.rejects(
        startServer({ dataDir: join(dir, 'data'), host: '0.0.0.0', port: 0, insecureHttp: true }),
        (e) => isReimageError(e, 'SERVER_CONFIG_INVALID'),
      );
      const { existsSync } = await import('node:fs');
      assert.equal(existsSync(join(dir, 'data')), false);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
