/**
 * Secrets in deployment settings (a share password, a product key, the administrator
 * password) are write-only: planted with unique markers, they must be found nowhere but in
 * the policy of a machine that deploys the package: not in the database files, not in any
 * admin API response (reads, writes, errors), not in status messages, not in the server log.
 * Runs against SQLite and PostgreSQL.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { before, test } from 'node:test';
import { stringify } from 'yaml';
import type { PackageRecord } from '../src/catalog/catalog.js';
import { createServer } from '../src/server/app.js';
import type { Policy } from '../src/server/policy.js';
import { SecretBox } from '../src/server/secret-box.js';
import {
  addImage,
  createAdvertisement,
  createCollection,
  createDp,
  enrollMachine,
  exampleSettings,
  expectStatus,
  packageFiles,
  statusMessages,
  type EnrolledMachine,
  type PackageFiles,
} from './support/fixtures.js';
import { pgDump } from './support/postgres.js';
import { forEachDatabase, type TestServer } from './support/server.js';

interface Planted {
  share: string;
  key: string;
  admin: string;
  /** The product key that replaces `key` on the second update. */
  newKey: string;
  /** A password a machine put in status message properties. */
  statusPassword: string;
  /** Not a secret: a value in the package description, to show that the searches can see. */
  control: string;
}

function plant(): Planted {
  const hex = () => randomBytes(12).toString('hex');
  return {
    share: `PLANTED-share-${hex()}`,
    key: `PLANTED-key-${hex()}`,
    admin: `PLANTED-admin-${hex()}`,
    newKey: `PLANTED-newkey-${hex()}`,
    statusPassword: `PLANTED-status-${hex()}`,
    control: `CONTROL-${hex()}`,
  };
}

const secretsOf = (p: Planted) => ({
  share: p.share,
  key: p.key,
  admin: p.admin,
  newKey: p.newKey,
  statusPassword: p.statusPassword,
});

/** Fails naming each planted secret that `text` holds. */
function assertNoSecret(p: Planted, text: string, where: string): void {
  const found = Object.entries(secretsOf(p)).filter(([, v]) => text.includes(v));
  assert.deepEqual(
    found.map(([k]) => k),
    [],
    `${where} holds planted secret(s) ${found.map(([k]) => k).join(', ')}`,
  );
}

function settingsWithSecrets(p: Planted): Record<string, unknown> {
  const s = exampleSettings();
  s.machineState = {
    ...(s.machineState as object),
    productKey: { set: p.key },
    administratorPassword: { set: p.admin },
  };
  s.stateStore = {
    type: 'share',
    url: 'smb://files.example.com/reimage-state/paris',
    username: 'svc-reimage',
    domain: 'EXAMPLE',
    password: p.share,
  };
  return s;
}

interface World {
  planted: Planted;
  files: PackageFiles;
  pkg: PackageRecord;
  a: EnrolledMachine;
  b: EnrolledMachine;
  /** The raw text of every API response the setup received. */
  responses: { what: string; status: number; raw: string }[];
}

async function makeWorld(server: TestServer): Promise<World> {
  const planted = plant();
  const responses: World['responses'] = [];
  const call = async <T>(
    what: string,
    method: string,
    url: string,
    opts: Parameters<TestServer['call']>[2] = {},
  ) => {
    const res = await server.call<T>(method, url, opts);
    responses.push({ what, status: res.status, raw: res.raw });
    return res;
  };

  const image = await addImage(server, 'secrets-image');
  await createDp(server, { name: 'dp-paris' });
  const files = packageFiles({
    name: 'secret-pkg',
    version: '1.0',
    image: image.name,
    description: `with a control value ${planted.control}`,
    settings: settingsWithSecrets(planted),
  });
  const created = await call<PackageRecord>('create', 'POST', '/api/v1/packages', {
    role: 'operator',
    body: files,
  });
  expectStatus(created, 201, 'create the package');
  const pkg = created.body;

  // Read back and sent again as it is: the markers keep the stored secrets.
  const read = await call<PackageRecord>('show', 'GET', `/api/v1/packages/${pkg.id}`);
  const roundTrip = await call<PackageRecord>('update', 'PUT', `/api/v1/packages/${pkg.id}`, {
    role: 'operator',
    body: { ...files, settings: stringify(read.body.settings) },
  });
  expectStatus(roundTrip, 200, 'send the package back with its markers');

  const a = await enrollMachine(server, { name: 'machine-a' });
  const b = await enrollMachine(server, { name: 'machine-b' });
  const collection = await createCollection(server, { name: 'only-a', include: [a.id] });
  const ad = await createAdvertisement(server, {
    name: 'secret-ad',
    package: pkg.id,
    collection: collection.id,
    policy: { countdown: '10m' },
  });
  const effective = await call(
    'effective',
    'GET',
    `/api/v1/advertisements/${ad.id}/effective-policy`,
  );
  expectStatus(effective, 200, 'effective policy');

  // The machine reports, with secrets in its properties: top level, nested and in lists.
  const posted = await call('status', 'POST', '/api/v1/client/status', {
    token: a.credential,
    body: {
      machineId: a.id,
      messages: statusMessages([1, 2, 3], (seq) => ({
        step: `mount-${seq}`,
        code: 'E_MOUNT',
        message: 'mount failed',
        sharePassword: planted.statusPassword,
        mount: { user: 'svc', password: planted.statusPassword },
        attempts: [{ productKey: planted.statusPassword }, { secret: planted.statusPassword }],
        // secrets inside text, where no property name gives them away
        logTail:
          `mount -t cifs -o password=${planted.statusPassword} //nas/state\n` +
          `GET https://svc:${planted.statusPassword}@dp/packs/ab: 404\n`,
        detail: `{"user":"svc","password":"${planted.statusPassword}"}`,
      })).map((m) => ({ ...m, id: 9000, advertisementId: ad.id })),
    },
  });
  expectStatus(posted, 200, 'post status');
  return { planted, files, pkg, a, b, responses };
}

/** Every GET endpoint of the API, with `:ref` filled in, from the OpenAPI document. */
/** An open upload of the world's image, so that its status is among the reads. */
async function openUpload(server: TestServer): Promise<string> {
  const image = await server.call<{ id: string }>('GET', '/api/v1/images/secrets-image');
  const res = await server.call<{ upload: { id: string } }>('POST', '/api/v1/uploads', {
    body: {
      imageId: image.body.id,
      name: 'secrets-upload',
      properties: { created: new Date().toISOString(), custom: {} },
    },
  });
  expectStatus(res, 201, 'open an upload');
  return res.body.upload.id;
}

function getEndpoints(server: TestServer, w: World, refs: Record<string, string>): string[] {
  const doc = server.app.swagger() as { paths: Record<string, Record<string, unknown>> };
  const urls: string[] = [];
  for (const [path, methods] of Object.entries(doc.paths)) {
    // Client endpoints answer machines only; the policy test reads them.
    if (!('get' in methods) || path.startsWith('/api/v1/client/')) continue;
    // The live event stream never ends; its events carry ids and sequence numbers only.
    if (path === '/api/v1/status/events') continue;
    let url = path;
    const param = /\{(ref|id)\}/.exec(path)?.[0];
    if (param) {
      // /api/v1/status/<collection>/{ref}/… (the summaries) name their collection second.
      const collection = /^\/api\/v1\/(?:status\/)?([a-z-]+)\//.exec(path)?.[1] ?? '';
      const ref = refs[collection];
      assert.ok(ref, `the secrets test knows no ${collection} to read at ${path}: add one`);
      url = path.replace(param, encodeURIComponent(ref));
    }
    // The one admin read that takes a required query: a machine's state-store key (a secret
    // by design, derived, not a planted one).
    if (path.endsWith('/state-store-key')) url += '?advertisement=secret-ad';
    assert.ok(!/\{/.test(url), `unfilled parameter in ${path}`);
    urls.push(url);
  }
  urls.push(
    `/api/v1/status?machine=${w.a.id}`,
    `/api/v1/status?advertisement=secret-ad`,
    '/api/v1/audit?limit=5000',
  );
  return urls;
}

forEachDatabase('secrets are write-only', (get) => {
  let w: World;
  before(async () => {
    w = await makeWorld(get());
  });

  test("the machine's own policy has the secrets", async () => {
    const server = get();
    const res = await server.call<Policy>('GET', '/api/v1/client/policy', {
      token: w.a.credential,
    });
    expectStatus(res, 200, 'policy');
    const [ad] = res.body.advertisements;
    assert.ok(ad, 'one advertisement');
    const settings = ad.settings as {
      machineState: Record<string, { set: unknown }>;
      stateStore: { password: unknown };
    };
    assert.equal(settings.machineState.productKey!.set, w.planted.key);
    assert.equal(settings.machineState.administratorPassword!.set, w.planted.admin);
    assert.equal(settings.stateStore.password, w.planted.share);
  });

  test('changing one secret replaces it and keeps the others', async () => {
    const server = get();
    const read = await server.call<PackageRecord>('GET', `/api/v1/packages/${w.pkg.id}`);
    const settings = structuredClone(read.body.settings) as {
      machineState: Record<string, unknown>;
    };
    settings.machineState.productKey = { set: w.planted.newKey };
    const res = await server.call<PackageRecord>('PUT', `/api/v1/packages/${w.pkg.id}`, {
      role: 'operator',
      body: { ...w.files, settings: stringify(settings) },
    });
    expectStatus(res, 200, 'update one secret');
    assertNoSecret(w.planted, res.raw, 'the update response');
    const policy = await server.call<Policy>('GET', '/api/v1/client/policy', {
      token: w.a.credential,
    });
    const s = policy.body.advertisements[0]!.settings as {
      machineState: Record<string, { set: unknown }>;
      stateStore: { password: unknown };
    };
    assert.equal(s.machineState.productKey!.set, w.planted.newKey);
    assert.equal(s.machineState.administratorPassword!.set, w.planted.admin);
    assert.equal(s.stateStore.password, w.planted.share);
    assert.ok(!policy.raw.includes(w.planted.key), 'the old product key is gone');
  });

  test("another machine's policy has none", async () => {
    const server = get();
    const res = await server.call<Policy>('GET', '/api/v1/client/policy', {
      token: w.b.credential,
    });
    expectStatus(res, 200, 'policy of machine B');
    assert.deepEqual(res.body.advertisements, []);
    assertNoSecret(w.planted, res.raw, "machine B's policy");
  });

  test('responses to writes hold none', () => {
    assert.ok(w.responses.length >= 5);
    for (const r of w.responses) assertNoSecret(w.planted, r.raw, `the ${r.what} response`);
    const created = JSON.parse(w.responses[0]!.raw) as PackageRecord;
    const ms = (created.settings as { machineState: Record<string, unknown> }).machineState;
    assert.deepEqual(ms.productKey, { set: { secret: 'set' } });
    assert.deepEqual(ms.administratorPassword, { set: { secret: 'set' } });
    assert.deepEqual(
      (created.settings as { stateStore: { password: unknown } }).stateStore.password,
      {
        secret: 'set',
      },
    );
  });

  test('no admin read holds a secret', async () => {
    const server = get();
    const refs: Record<string, string> = {
      packages: w.pkg.id,
      advertisements: 'secret-ad',
      collections: 'only-a',
      machines: w.a.id,
      'distribution-points': 'dp-paris',
      images: 'secrets-image',
      users: 'admin',
      uploads: await openUpload(server),
    };
    const urls = getEndpoints(server, w, refs);
    assert.ok(urls.length >= 20, `${urls.length} GET endpoints`);
    let sawControl = false;
    for (const url of urls) {
      const res = await server.call('GET', url);
      // A package with secrets is not publishable serverless: refused, and the refusal names
      // the secrets' paths only (checked below like every answer).
      const refusedPublication = url.endsWith('/publication') && res.status === 409;
      assert.ok(res.status < 400 || refusedPublication, `GET ${url}: ${res.status} ${res.raw}`);
      assertNoSecret(w.planted, res.raw, `GET ${url}`);
      sawControl ||= res.raw.includes(w.planted.control);
    }
    assert.ok(sawControl, 'the package (with its control value) was among the reads');
  });

  test('status properties that carried a password are redacted', async () => {
    const server = get();
    const res = await server.call<{
      items: { properties: Record<string, unknown>; text: string }[];
    }>('GET', `/api/v1/machines/${w.a.id}/timeline`);
    expectStatus(res, 200, 'timeline');
    assert.equal(res.body.items.length, 3);
    assertNoSecret(w.planted, res.raw, 'the timeline');
    const p = res.body.items[0]!.properties;
    assert.equal(p.sharePassword, '[redacted]');
    assert.deepEqual(p.mount, { user: 'svc', password: '[redacted]' });
    assert.deepEqual(p.attempts, [{ productKey: '[redacted]' }, { secret: '[redacted]' }]);
    assert.equal(
      p.logTail,
      'mount -t cifs -o password=[redacted] //nas/state\n' +
        'GET https://svc:[redacted]@dp/packs/ab: 404\n',
    );
    assert.equal(p.detail, '{"user":"svc","password":"[redacted]"}');
    assert.equal(p.step, 'mount-1', 'the rest is kept');
  });

  test('errors do not echo a secret', async () => {
    const server = get();
    const p = w.planted;
    // Each settings document is wrong at (or around) a secret; the value must not come back.
    const wrong: Record<string, unknown>[] = [
      { productKey: p.key },
      { productKey: { set: [p.key] } },
      { administratorPassword: { set: { value: p.admin } } },
      { administratorPassword: { set: p.admin, note: 'x' } },
      { productKey: { set: `${p.key}${'x'.repeat(5000)}` } },
    ].map((ms) => ({ ...exampleSettings(), machineState: ms }));
    wrong.push(
      {
        ...exampleSettings(),
        stateStore: { type: 'share', url: 'smb://h/s', username: 'u', password: [p.share] },
      },
      {
        ...exampleSettings(),
        stateStore: { type: 'nfs', url: 'smb://h/s', username: 'u', password: p.share },
      },
      { ...exampleSettings(), stateStore: p.share },
    );
    for (const [i, settings] of wrong.entries()) {
      const files = packageFiles({
        name: `bad-secret-${i}`,
        version: '1',
        image: 'secrets-image',
        settings,
      });
      const res = await server.call<{ error: { code: string; message: string } }>(
        'POST',
        '/api/v1/packages',
        { role: 'operator', body: files },
      );
      assert.equal(res.status, 400, `case ${i}: ${res.raw}`);
      assert.equal(res.body.error.code, 'VALIDATION_FAILED', `case ${i}: ${res.raw}`);
      assert.match(res.body.error.message, /bad-secret-\d+\.deploy\.yaml:\d+ \//, `case ${i}`);
      assertNoSecret(p, res.raw, `the error for case ${i}`);
      // The same mistake on an update of the real package.
      const upd = await server.call('PUT', `/api/v1/packages/${w.pkg.id}`, {
        role: 'operator',
        body: { ...w.files, settings: stringify(settings) },
      });
      assert.equal(upd.status, 400, `update case ${i}: ${upd.raw}`);
      assertNoSecret(p, upd.raw, `the update error for case ${i}`);
    }
  });

  test('the database holds no secret', async () => {
    const server = get();
    let text: string;
    if (server.kind === 'sqlite') {
      const files = ['', '-wal', '-shm'].map((s) => `${server.dbUrl}${s}`).filter(existsSync);
      assert.ok(files.length >= 1);
      text = files.map((f) => readFileSync(f).toString('latin1')).join('\n');
    } else {
      text = pgDump(server.dbUrl);
    }
    assert.ok(text.includes(w.planted.control), 'the search sees what the catalog stores');
    assertNoSecret(w.planted, text, `the ${server.kind} database`);
  });

  test('the server log holds no secret', () => {
    const log = get().log();
    assert.ok(log.length > 1000, 'the server logged');
    assertNoSecret(w.planted, log, 'the server log');
  });

  test('the secret key file is private (0600)', () => {
    const file = join(get().dir, 'secret.key');
    assert.equal(statSync(file).mode & 0o777, 0o600);
  });

  test('a server with another secret key cannot read the secrets, and keeps serving', async () => {
    const server = get();
    const other = await createServer({
      catalog: server.catalog,
      secrets: SecretBox.fromKey(randomBytes(32)),
      store: server.store,
      logger: false,
    });
    try {
      const call = async (method: string, url: string, token: string, body?: unknown) => {
        const res = await other.inject({
          method: method as 'GET',
          url,
          headers: { authorization: `Bearer ${token}` },
          ...(body === undefined ? {} : { payload: body as object }),
        });
        return { status: res.statusCode, raw: res.body, body: JSON.parse(res.body) as never };
      };
      const policy = await call('GET', '/api/v1/client/policy', w.a.credential);
      assert.equal(
        (policy.body as { error: { code: string } }).error.code,
        'SECRET_KEY_INVALID',
        policy.raw,
      );
      assert.ok(policy.status >= 400, `HTTP ${policy.status}`);
      assertNoSecret(w.planted, policy.raw, 'the error');
      // Keeping the stored secrets needs them decrypted: refused, not replaced with nothing.
      const before = await server.catalog.getPackage(w.pkg.id);
      const keep = await call('PUT', `/api/v1/packages/${w.pkg.id}`, server.tokens.operator, {
        ...w.files,
        settings: stringify(before.settings),
      });
      assert.equal((keep.body as { error: { code: string } }).error.code, 'SECRET_KEY_INVALID');
      assert.equal((await server.catalog.getPackage(w.pkg.id)).revision, before.revision);
      // Everything that needs no secret still works.
      assert.equal((await call('GET', '/api/v1/client/policy', w.b.credential)).status, 200);
      assert.equal(
        (await call('GET', `/api/v1/packages/${w.pkg.id}`, server.tokens.admin)).status,
        200,
      );
      // And the right key still reads them.
      const again = await server.call('GET', '/api/v1/client/policy', { token: w.a.credential });
      assert.ok(again.raw.includes(w.planted.admin));
    } finally {
      await other.close();
    }
  });
});
