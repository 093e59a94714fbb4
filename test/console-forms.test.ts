/**
 * The console's create/edit forms in a real browser (Debian chromium through playwright-core)
 * against a real server: a distribution point (write-only credentials, replication limits,
 * delete with confirmation), a collection whose rule the server checks as you type (a bad rule,
 * then a good one with its members previewed), an enrollment token and an API token (each
 * shown once, and each then used), a user, and what a read-only user does not see. Every change
 * is checked through the API afterwards; no console errors on the way.
 *
 * Needs dist/console (npm run build runs build:console).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { Page } from 'playwright-core';
import { enrollMachine } from './support/fixtures.js';
import {
  chromiumSkip,
  listen,
  logIn,
  openConsoleBrowser,
  seedConsoleSample,
  type ConsoleBrowser,
  type ConsoleSample,
} from './support/console-sample.js';
import { makeTestServer, type TestServer } from './support/server.js';

/** True when `locator`'s element has the keyboard focus. */
const focused = (page: Page, label: string) =>
  page.getByLabel(label, { exact: true }).evaluate((el) => el === el.ownerDocument.activeElement);

describe('web console forms in a browser', { skip: chromiumSkip }, () => {
  let server: TestServer;
  let b: ConsoleBrowser;
  let page: Page;
  let base: string;
  let sample: ConsoleSample;
  const nav = (name: string) =>
    page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name, exact: true });

  before(async () => {
    server = await makeTestServer('sqlite');
    sample = await seedConsoleSample(server);
    base = await listen(server);
    b = await openConsoleBrowser();
    page = b.page;
    await logIn(page, base, 'admin', 'admin-password-long');
  });

  after(async () => {
    await b?.close();
    await server?.close();
  });

  test('a distribution point: created, edited with its credentials kept, deleted', async () => {
    await nav('Distribution points').click();
    await page.getByRole('link', { name: 'New distribution point' }).click();
    await page.getByRole('heading', { level: 1, name: 'New distribution point' }).waitFor();
    await page.getByLabel('Name', { exact: true }).fill('lyon-1');
    await page.getByLabel('Site', { exact: true }).fill('lyon');
    await page.getByLabel('Address', { exact: true }).fill('ftp://dp.lyon.example/reimage');
    await page.getByText('must be a folder (/path or file://…)').waitFor();
    const address = join(server.dir, 'dp-lyon-1');
    await page.getByLabel('Address', { exact: true }).fill(address);
    await page.getByLabel('Boundaries (CIDR, one a line)').fill('10.2.0.0/16\n10.3.0.0/99');
    await page.getByText("'10.3.0.0/99': an IPv4 prefix is at most 32").waitFor();
    // The problem is tied to its input, and a refused submit puts the focus on it.
    const boundaries = page.getByLabel('Boundaries (CIDR, one a line)');
    const describedBy = (await boundaries.getAttribute('aria-describedby')) ?? '';
    assert.match(
      await page.locator(`[id="${describedBy.split(' ').pop()}"]`).innerText(),
      /IPv4 prefix is at most 32/,
    );
    await page.getByRole('button', { name: 'Create distribution point' }).click();
    assert.equal(await focused(page, 'Boundaries (CIDR, one a line)'), true);
    await boundaries.fill('10.2.0.0/16\nfd00:2::/64');
    await page.getByLabel('Rate limit (kbit/s)').fill('5000');
    await page.getByRole('button', { name: 'Add a window' }).click();
    await page
      .getByRole('group', { name: /Days of window 1/ })
      .getByLabel('sat')
      .check();
    await page
      .getByRole('group', { name: /Days of window 1/ })
      .getByLabel('sun')
      .check();
    await page.getByLabel('Window 1 from').fill('7:00');
    await page.getByText('must be a time of day as HH:MM').waitFor();
    await page.getByLabel('Window 1 from').fill('07:00');
    await page.getByLabel('Window 1 to').fill('19:30');
    await page.getByLabel('Password (not set)').fill('dp-secret-password');
    await page.getByText('is required with a password or a domain').waitFor();
    await page.getByLabel('User name', { exact: true }).fill('replicator');
    await page.getByRole('button', { name: 'Create distribution point' }).click();
    await page.getByRole('heading', { level: 1, name: 'Distribution point lyon-1' }).waitFor();
    await page.getByText('Saved lyon-1.').waitFor();

    type Dp = {
      id: string;
      site: string;
      address: string;
      boundaries: string[];
      bandwidth: unknown;
      hasCredentials: boolean;
    };
    let dp = await server.call<Dp>('GET', '/api/v1/distribution-points/lyon-1');
    assert.equal(dp.status, 200, dp.raw);
    assert.equal(dp.body.site, 'lyon');
    assert.equal(dp.body.address, address);
    assert.deepEqual(dp.body.boundaries, ['10.2.0.0/16', 'fd00:2::/64']);
    assert.deepEqual(dp.body.bandwidth, {
      rateLimitKbps: 5000,
      windows: [{ days: ['sat', 'sun'], from: '07:00', to: '19:30' }],
    });
    assert.equal(dp.body.hasCredentials, true);

    // Edit: the stored credentials are "set", never shown, and kept when left empty.
    await page.getByLabel('Password (set)').waitFor();
    assert.equal(await page.getByLabel('Password (set)').inputValue(), '');
    assert.equal(await page.getByLabel('User name (set)').inputValue(), '');
    assert.doesNotMatch(await page.content(), /dp-secret-password|replicator/);
    await page.getByLabel('Rate limit (kbit/s)').fill('6000');
    await page.getByRole('button', { name: 'Remove window 1' }).click();
    await page.getByRole('button', { name: 'Save distribution point' }).click();
    await page.getByText('Saved lyon-1.').waitFor();
    dp = await server.call<Dp>('GET', '/api/v1/distribution-points/lyon-1');
    assert.deepEqual(dp.body.bandwidth, { rateLimitKbps: 6000 });
    assert.equal(dp.body.hasCredentials, true);

    // The list shows it, with its replication state (none yet).
    await nav('Distribution points').click();
    await page.getByRole('heading', { level: 2, name: 'lyon-1 (lyon)' }).waitFor();
    await page.getByText('No package distributed here yet.').waitFor();

    // Delete asks first; Cancel changes nothing.
    await page.getByRole('link', { name: 'Edit lyon-1' }).click();
    await page.getByRole('button', { name: 'Delete lyon-1' }).click();
    await page.getByRole('button', { name: 'Cancel' }).click();
    assert.equal((await server.call('GET', '/api/v1/distribution-points/lyon-1')).status, 200);
    await page.getByRole('button', { name: 'Delete lyon-1' }).click();
    await page.getByRole('button', { name: 'Yes, delete lyon-1' }).click();
    await page.getByRole('heading', { level: 1, name: 'Distribution points' }).waitFor();
    assert.equal((await server.call('GET', '/api/v1/distribution-points/lyon-1')).status, 404);
  });

  test('a collection: the server’s error for a bad rule as you type, then members previewed', async () => {
    b.expect(400, /\/api\/v1\/collections\/preview$/);
    await nav('Collections').click();
    await page.getByRole('link', { name: 'New collection' }).click();
    await page.getByRole('heading', { level: 1, name: 'New collection' }).waitFor();
    await page.getByLabel('Name', { exact: true }).fill('lab-big-disks');
    const rule = page.getByLabel('Rule', { exact: true });
    await rule.fill('nmae ~ "lab-*"');
    const ruleField = page.locator('.field', { has: rule });
    await ruleField.getByText("unknown field 'nmae' at column 1; did you mean 'name'?").waitFor();
    assert.equal(await rule.getAttribute('aria-invalid'), 'true');
    // Submitting a bad rule is refused in place, with the focus on it.
    await page.getByRole('button', { name: 'Create collection' }).click();
    assert.equal(await focused(page, 'Rule'), true);
    await rule.fill('name ~ "lab-*" and disk_free_gb >=');
    await ruleField.getByText(/the rule ends too early at column \d+; expected a number/).waitFor();
    // lab-01..03 have 41, 42 and 43 GB free.
    await rule.fill('name ~ "lab-*" and disk_free_gb >= 42');
    const preview = page.getByRole('region', { name: 'Machines the rule matches now' });
    await preview.getByText('2 machines match the rule').waitFor();
    await preview.getByRole('link', { name: 'lab-02' }).waitFor();
    await preview.getByRole('link', { name: 'lab-03' }).waitFor();
    assert.equal(await rule.getAttribute('aria-invalid'), 'false');
    await page.getByLabel('Include (machine names, one a line)').fill('lab-01');
    await page.getByLabel('Exclude (machine names, one a line)').fill('lab-03\nlab-99');
    await page.getByText('no machine named lab-99').waitFor();
    await page.getByLabel('Exclude (machine names, one a line)').fill('lab-03');
    await page.getByLabel('Description', { exact: true }).fill('Lab machines with room');
    await page.getByRole('button', { name: 'Create collection' }).click();
    await page.getByRole('heading', { level: 1, name: 'Collection lab-big-disks' }).waitFor();

    const [m1, m2, m3] = sample.machines;
    const c = await server.call<{
      rule: string;
      include: string[];
      exclude: string[];
      description: string;
    }>('GET', '/api/v1/collections/lab-big-disks');
    assert.equal(c.status, 200, c.raw);
    assert.equal(c.body.rule, 'name ~ "lab-*" and disk_free_gb >= 42');
    assert.deepEqual(c.body.include, [m1!.id]);
    assert.deepEqual(c.body.exclude, [m3!.id]);
    assert.equal(c.body.description, 'Lab machines with room');
    const members = await server.call<{ items: { name: string }[] }>(
      'GET',
      '/api/v1/collections/lab-big-disks/members',
    );
    assert.deepEqual(members.body.items.map((m) => m.name).sort(), ['lab-01', 'lab-02']);
    // The saved collection's members, on its page.
    const shown = page.getByRole('region', { name: 'Members of lab-big-disks' });
    await shown.getByRole('link', { name: 'lab-01' }).waitFor();
    await shown.getByRole('link', { name: 'lab-02' }).waitFor();
    assert.equal(await shown.getByRole('link', { name: 'lab-03' }).count(), 0);
    assert.equal(m2!.machine.name, 'lab-02');

    // Edit: names stand for the stored GUIDs; clearing the rule makes it static.
    assert.equal(
      await page.getByLabel('Include (machine names, one a line)').inputValue(),
      'lab-01',
    );
    await rule.fill('');
    await page.getByText('No rule: only the included machines.').waitFor();
    await page.getByRole('button', { name: 'Save collection' }).click();
    await page.getByText('Saved lab-big-disks.').waitFor();
    const edited = await server.call<{ rule: string | null }>(
      'GET',
      '/api/v1/collections/lab-big-disks',
    );
    assert.equal(edited.body.rule, null);
  });

  test('an enrollment token is shown once and enrolls a machine', async () => {
    await nav('Access').click();
    await page.getByRole('heading', { level: 1, name: 'Access' }).waitFor();
    const form = page.getByRole('form', { name: 'New enrollment token' });
    await form.getByLabel('Site of the machines').fill('lyon');
    await form.getByLabel('Uses', { exact: true }).fill('0');
    await form.getByText('must be ≥ 1').waitFor();
    await form.getByLabel('Uses', { exact: true }).fill('2');
    await form.getByRole('button', { name: 'Create enrollment token' }).click();
    const once = page.getByRole('region', { name: 'New enrollment token: shown once' });
    const token = await once.getByLabel('The new enrollment token').innerText();
    assert.match(token, /^rie_/);
    const enrolled = await enrollMachine(server, { name: 'lyon-07', token });
    assert.equal(enrolled.machine.site, 'lyon');
    const list = await server.call<{ items: { site: string | null; usesLeft: number | null }[] }>(
      'GET',
      '/api/v1/enrollment-tokens',
    );
    assert.ok(
      list.body.items.some((t) => t.site === 'lyon' && t.usesLeft === 1),
      list.raw,
    );
    await once.getByRole('button', { name: 'I have stored it' }).click();
    assert.equal(await page.getByText(token).count(), 0, 'the secret is gone from the page');
    await page
      .getByRole('table', { name: 'Enrollment tokens' })
      .getByRole('cell', { name: 'lyon', exact: true })
      .waitFor();
  });

  let apiToken = '';
  test('an API token is shown once and works; a new user gets a role', async () => {
    const form = page.getByRole('form', { name: 'New API token' });
    await form.getByLabel('Token name').fill('nightly-report');
    await form.getByLabel('Expires in days').fill('30');
    await form.getByRole('button', { name: 'Create API token' }).click();
    const once = page.getByRole('region', { name: 'New API token nightly-report: shown once' });
    const token = await once.getByLabel('The new API token nightly-report').innerText();
    apiToken = token;
    const who = await server.call<{ username: string }>('GET', '/api/v1/whoami', { token });
    assert.equal(who.status, 200, who.raw);
    assert.equal(who.body.username, 'admin');
    await page
      .getByRole('table', { name: 'API tokens' })
      .getByRole('rowheader', { name: 'nightly-report' })
      .waitFor();

    const users = page.getByRole('form', { name: 'New user' });
    await users.getByLabel('User name').fill('Viewer');
    await users.getByLabel('Initial password').fill('short');
    await users.getByRole('button', { name: 'Create user' }).click();
    assert.equal(await focused(page, 'User name'), true);
    await users.getByText('must have at least 12 characters').waitFor();
    await users.getByLabel('User name').fill('viewer');
    await users.getByLabel('Initial password').fill('viewer-password-long');
    await users.getByLabel('Role').selectOption('read-only');
    await users.getByRole('button', { name: 'Create user' }).click();
    await page.getByText('Created viewer (read-only).').waitFor();
    const list = await server.call<{ items: { username: string; role: string }[] }>(
      'GET',
      '/api/v1/users',
    );
    assert.equal(list.body.items.find((u) => u.username === 'viewer')?.role, 'read-only');
    assert.doesNotMatch(await page.content(), /viewer-password-long/);
  });

  test('a read-only user sees no create buttons and no operator forms', async () => {
    const viewer = await b.newPage();
    await logIn(viewer, base, 'viewer', 'viewer-password-long');
    const nav2 = viewer.getByRole('navigation', { name: 'Main' });
    for (const [link, create] of [
      ['Packages', 'New package'],
      ['Distribution points', 'New distribution point'],
      ['Collections', 'New collection'],
      ['Advertisements', 'New advertisement'],
    ] as const) {
      await nav2.getByRole('link', { name: link, exact: true }).click();
      await viewer.getByRole('heading', { level: 1, name: link }).waitFor();
      assert.equal(await viewer.getByRole('link', { name: create }).count(), 0, create);
    }
    await nav2.getByRole('link', { name: 'Access' }).click();
    await viewer.getByRole('form', { name: 'New API token' }).waitFor();
    assert.equal(await viewer.getByRole('form', { name: 'New enrollment token' }).count(), 0);
    assert.equal(await viewer.getByRole('form', { name: 'New user' }).count(), 0);
    await viewer.goto(`${base}/distribution-points/new`);
    await viewer.getByRole('heading', { level: 1, name: 'Not allowed' }).waitFor();
    assert.equal(
      await viewer.getByRole('button', { name: 'Create distribution point' }).count(),
      0,
    );
    // The server refuses anyway.
    const res = await server.call('POST', '/api/v1/collections', {
      role: 'read-only',
      body: { name: 'nope', rule: 'os = "debian"' },
    });
    assert.equal(res.status, 403);
    await viewer.context().close();
  });

  test('an admin changes a user’s role and revokes a token, each through the page', async () => {
    await nav('Access').click();
    await page.getByLabel('Role of viewer', { exact: true }).selectOption('operator');
    await page.getByRole('button', { name: 'Change the role of viewer' }).click();
    await page.getByText('viewer is now operator.').waitFor();
    const list = await server.call<{ items: { username: string; role: string }[] }>(
      'GET',
      '/api/v1/users',
    );
    assert.equal(list.body.items.find((u) => u.username === 'viewer')?.role, 'operator');

    assert.equal((await server.call('GET', '/api/v1/whoami', { token: apiToken })).status, 200);
    await page.getByRole('button', { name: 'Revoke nightly-report of admin' }).click();
    await page.getByRole('button', { name: 'Yes, revoke nightly-report' }).click();
    await page
      .getByRole('table', { name: 'API tokens' })
      .getByRole('rowheader', { name: 'nightly-report' })
      .waitFor({ state: 'detached' });
    assert.equal((await server.call('GET', '/api/v1/whoami', { token: apiToken })).status, 401);
  });

  test('no console errors', () => {
    assert.deepEqual(b.errors, []);
  });
});
