/**
 * Sample data for the web console's browser test and screenshots: an image captured into the
 * server's library, a package, a distribution point, a collection, enrolled machines, and the
 * status messages a deployment really sends (ids 3000…5003 of src/status/messages.ts), posted
 * through POST /api/v1/client/status with each machine's own credential.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type ConsoleMessage, type Page } from 'playwright-core';
import { defaultConsoleDir } from '../../src/server/console.js';
import type { Collection, PackageRecord } from '../../src/catalog/catalog.js';
import {
  addImage,
  createCollection,
  createDp,
  createPackage,
  enrollMachine,
  exampleSettings,
  expectStatus,
  packageFiles,
  type EnrolledMachine,
} from './fixtures.js';
import type { TestServer } from './server.js';

export interface ConsoleSample {
  imageId: string;
  pkg: PackageRecord;
  collection: Collection;
  machines: EnrolledMachine[];
}

export async function seedConsoleSample(
  server: TestServer,
  o: { machines?: number; dp?: boolean } = {},
): Promise<ConsoleSample> {
  const image = await addImage(server, 'debian-12-desktop');
  const pkg = await createPackage(
    server,
    packageFiles({
      name: 'debian-12',
      version: '12.7-1',
      image: image.id,
      description: 'Debian 12 desktop for the lab',
      settings: {
        ...exampleSettings(),
        machineState: {
          computerName: 'migrate',
          organization: { set: 'Example Corp' },
          productKey: 'migrate',
          administratorPassword: { set: 'sample-root-password' },
        },
      },
    }),
  );
  const machines: EnrolledMachine[] = [];
  const models = ['ThinkPad T14', 'OptiPlex 7090', 'EliteBook 840'];
  for (let i = 1; i <= (o.machines ?? 3); i++)
    machines.push(
      await enrollMachine(server, {
        name: `lab-${String(i).padStart(2, '0')}`,
        inventory: {
          hostname: `lab-${i}`,
          os: 'debian',
          osVersion: '11',
          arch: 'x86_64',
          model: models[i % models.length],
          diskFreeGb: 40 + i,
          memoryGb: 16,
          ips: [`10.1.2.${10 + i}`],
        },
      }),
    );
  const collection = await createCollection(server, {
    name: 'lab-machines',
    rule: 'name ~ "lab-*"',
  });
  if (o.dp) {
    await createDp(server, { name: 'paris-1', address: join(server.dir, 'dp-paris-1') });
    const res = await server.call('POST', `/api/v1/packages/${pkg.id}/distribute`, {
      role: 'operator',
      body: { distributionPoints: ['paris-1'] },
    });
    expectStatus(res, 202, 'distribute');
  }
  return { imageId: image.id, pkg, collection, machines };
}

export interface Message {
  seq: number;
  id: number;
  time: string;
  advertisementId?: string;
  properties: Record<string, unknown>;
}

/** The messages of a deployment that succeeds, in order (notification, phases 1-3). */
export function deploymentMessages(o: {
  advertisement: { id: string; name: string };
  imageId: string;
  startSeq?: number;
  start?: Date;
  /** Fail at this step of phase 1 or 2 instead of finishing (message 9000). */
  fail?: { afterId: number; step: string; code: string; message: string };
}): Message[] {
  const seq0 = o.startSeq ?? 10;
  const t0 = (o.start ?? new Date()).getTime();
  const plan: [number, Record<string, unknown>, number][] = [
    [2000, { advertisement: o.advertisement.name, package: 'debian-12@12.7-1' }, 0],
    [2001, { countdown: '15m' }, 2],
    [2002, {}, 40],
    [3000, {}, 45],
    [3001, {}, 50],
    [3002, { items: 214, bytes: 73_400_320 }, 110],
    [3003, {}, 130],
    [4000, {}, 170],
    [4001, { dp: 'paris-1' }, 175],
    [4002, { paths: 18_233 }, 240],
    [4003, { image: o.imageId.slice(0, 12), bytes: 2_147_483_648 }, 520],
    [4004, {}, 540],
    [5000, { clientVersion: '0.1.0' }, 600],
    [5001, {}, 610],
    [5002, { items: 214 }, 680],
    [5003, { image: o.imageId.slice(0, 12) }, 700],
  ];
  const out: Message[] = [];
  for (const [i, [id, properties, at]] of plan.entries()) {
    out.push({
      seq: seq0 + i,
      id,
      time: new Date(t0 + at * 1000).toISOString(),
      advertisementId: o.advertisement.id,
      properties,
    });
    if (o.fail && id === o.fail.afterId) {
      out.push({
        seq: seq0 + i + 1,
        id: 9000,
        time: new Date(t0 + (at + 5) * 1000).toISOString(),
        advertisementId: o.advertisement.id,
        properties: { step: o.fail.step, code: o.fail.code, message: o.fail.message },
      });
      break;
    }
  }
  return out;
}

/** Posts messages as the machine itself (its own credential), as the agent does. */
export async function postStatus(
  server: TestServer,
  m: EnrolledMachine,
  messages: Message[],
): Promise<void> {
  const res = await server.call('POST', '/api/v1/client/status', {
    token: m.credential,
    body: { machineId: m.id, messages },
  });
  expectStatus(res, 200, `status of ${m.machine.name}`);
}

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** Debian's chromium, headless, as root in a container, with nothing phoning home (ENVIRONMENT.md). */
export const CHROMIUM_ARGS: readonly string[] = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** The console tests run where Debian's chromium is installed, and always under CI. */
export const chromiumSkip =
  !existsSync(CHROMIUM) && !process.env.CI ? 'no /usr/bin/chromium' : false;

/** A headless chromium (the flags of ENVIRONMENT.md; playwright gives it a fresh profile) and its console errors. */
export interface ConsoleBrowser {
  browser: Browser;
  page: Page;
  /** Console errors and page errors, except the failed requests expected by `expect`. */
  errors: string[];
  /** Requests (by URL pattern and status) a test makes fail on purpose: the browser logs them. */
  expect(status: number, url: RegExp): void;
  /** Another logged-out page in its own context (another user), recorded the same way. */
  newPage(): Promise<Page>;
  close(): Promise<void>;
}

export async function openConsoleBrowser(): Promise<ConsoleBrowser> {
  assert.ok(
    existsSync(join(defaultConsoleDir(), 'index.html')),
    `the console is not built in ${defaultConsoleDir()} (npm run build:console)`,
  );
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS],
  });
  const errors: string[] = [];
  const expected: { status: number; url: RegExp }[] = [];
  const newPage = async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.setDefaultTimeout(Number(process.env.CONSOLE_TEST_TIMEOUT_MS ?? 30_000));
    page.on('console', (m: ConsoleMessage) => {
      if (m.type() !== 'error') return;
      const url = m.location().url;
      if (expected.some((e) => m.text().includes(`status of ${e.status}`) && e.url.test(url)))
        return;
      errors.push(`${m.text()} (${url})`);
    });
    page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
    return page;
  };
  return {
    browser,
    page: await newPage(),
    errors,
    expect: (status, url) => expected.push({ status, url }),
    newPage,
    async close() {
      await browser.close();
    },
  };
}

/** Logs in through the console's form and waits for the dashboard. */
export async function logIn(page: Page, base: string, username: string, password: string) {
  await page.goto(base);
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.getByRole('heading', { level: 1, name: 'Dashboard' }).waitFor();
}

/** Starts the server's HTTP listener on a loopback port; answers its base URL. */
export async function listen(server: TestServer): Promise<string> {
  await server.app.listen({ port: 0, host: '127.0.0.1' });
  const addr = server.app.server.address();
  assert.ok(addr && typeof addr === 'object');
  return `http://127.0.0.1:${addr.port}`;
}
