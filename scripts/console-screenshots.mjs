#!/usr/bin/env node
// Screenshots of the web console's main pages (docs/console/*.png), against a real server with
// sample data (test/support/console-sample.ts): an image, a package distributed to a
// distribution point, a collection, eight machines and the status a deployment sends.
// Run after `npm run build`: node scripts/console-screenshots.mjs [outDir] [--all]
// (without --all it leaves the pages the lab test shoots from a real deployment).
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';
import { makeTestServer } from '../dist/test/support/server.js';
import {
  CHROMIUM,
  CHROMIUM_ARGS,
  deploymentMessages,
  postStatus,
  seedConsoleSample,
} from '../dist/test/support/console-sample.js';

const args = process.argv.slice(2);
const all = args.includes('--all');
const out = resolve(args.find((a) => !a.startsWith('--')) ?? 'docs/console');
// These come from a real lab deployment (CONSOLE_SCREENSHOTS=docs/console node --test
// dist/test/console-lab.test.js); --all takes them here too, from the sample data.
const fromLab = new Set(['dashboard', 'advertisement', 'machine-timeline', 'machines']);
mkdirSync(out, { recursive: true });

const server = await makeTestServer('sqlite');
const profile = mkdtempSync(join(tmpdir(), 'reimage-shots-'));
let browser;
try {
  const sample = await seedConsoleSample(server, { machines: 8, dp: true });
  const ad = await server.call('POST', '/api/v1/advertisements', {
    body: {
      name: 'debian-12-lab',
      package: sample.pkg.id,
      collection: sample.collection.id,
      policy: { postponementMaximum: '1d' },
      schedule: { waves: [{ percent: 25 }, { percent: 75 }], activeWave: 2 },
    },
  });
  if (ad.status !== 201) throw new Error(`advertisement: ${ad.raw}`);
  const advertisement = { id: ad.body.id, name: ad.body.name };
  const now = Date.now();
  const at = (minAgo) => new Date(now - minAgo * 60_000);
  const [m1, m2, m3, m4, m5, m6, m7] = sample.machines;
  const full = (start) => deploymentMessages({ advertisement, imageId: sample.imageId, start });
  await postStatus(server, m1, full(at(55)));
  await postStatus(server, m2, full(at(48)));
  await postStatus(server, m3, full(at(40)));
  await postStatus(
    server,
    m4,
    full(at(20)).filter((m) => m.id <= 4003),
  );
  await postStatus(
    server,
    m5,
    full(at(8)).filter((m) => m.id <= 3002),
  );
  await postStatus(
    server,
    m6,
    deploymentMessages({
      advertisement,
      imageId: sample.imageId,
      start: at(30),
      fail: {
        afterId: 3001,
        step: 'capture-state',
        code: 'STATE_CAPTURE_FAILED',
        message:
          'tar: /home/ana/.cache/huge.bin: file changed as we read it\nrsync error: some files could not be transferred (code 23)',
      },
    }),
  );
  await postStatus(server, m7, [
    {
      seq: 10,
      id: 2000,
      time: at(12).toISOString(),
      advertisementId: advertisement.id,
      properties: { advertisement: advertisement.name, package: 'debian-12@12.7-1' },
    },
    {
      seq: 11,
      id: 2003,
      time: at(11).toISOString(),
      advertisementId: advertisement.id,
      properties: { until: new Date(now + 20 * 3600_000).toISOString() },
    },
  ]);

  await server.app.listen({ port: 0, host: '127.0.0.1' });
  const base = `http://127.0.0.1:${server.app.server.address().port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [...CHROMIUM_ARGS],
  });
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  const errors = [];
  page.on('console', (m) => m.type() === 'error' && errors.push(`${m.text()} ${m.location().url}`));
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(base);
  await page.screenshot({ path: join(out, 'login.png') });
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill('admin-password-long');
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { level: 1, name: 'Dashboard' }).waitFor();

  const shots = [
    ['dashboard', '/', 'Deployments now'],
    ['images', '/images', 'debian-12-desktop'],
    ['packages', '/packages', 'debian-12'],
    ['package-edit', `/packages/${sample.pkg.id}`, 'Secrets (write-only)'],
    ['distribution-points', '/distribution-points', 'paris-1 (PARIS)'],
    ['collections', '/collections', 'lab-machines'],
    ['collection-edit', '/collections/lab-machines/edit', 'machines match the rule'],
    ['distribution-point-edit', '/distribution-points/paris-1/edit', 'Write credentials'],
    ['advertisement-new', '/advertisements/new', 'Add a wave'],
    ['advertisement', `/advertisements/${advertisement.id}`, 'lab-06'],
    ['machines', '/machines', 'lab-08'],
    ['machine-timeline', `/machines/${m6.id}`, 'Log tail'],
    ['trends', '/trends', 'Failure groups'],
    ['access', '/access', 'New enrollment token'],
  ];
  for (const [name, path, text] of shots) {
    if (fromLab.has(name) && !all) continue;
    // Client-side navigation, as a user clicking: the session stays in this tab.
    await page.evaluate((p) => {
      history.pushState(null, '', p);
      dispatchEvent(new PopStateEvent('popstate'));
    }, path);
    await page.getByText(text, { exact: false }).first().waitFor();
    await page.waitForTimeout(400); // let the charts lay out
    await page.screenshot({ path: join(out, `${name}.png`), fullPage: true });
    console.log(`${name}.png`);
  }
  const own = errors.filter((e) => !/status of 404/.test(e) || !/\/api\/v1\/status\//.test(e));
  if (own.length) {
    console.error('console errors:\n' + own.join('\n'));
    process.exitCode = 1;
  }
} finally {
  await browser?.close();
  await server.close();
  rmSync(profile, { recursive: true, force: true });
}
