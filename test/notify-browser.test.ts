/**
 * The notification page in a real browser (Debian chromium through playwright-core), served by
 * askUser on loopback: the texts (the administrator's message escaped), a running countdown,
 * only the allowed buttons (found by their accessible role and name), and each answer — now,
 * later with a chosen delay, decline, nobody — resolving askUser. Skipped only when
 * /usr/bin/chromium is missing and CI is unset.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS } from './support/console-sample.js';
import {
  askUser,
  currentNotificationPath,
  waitForNotification,
  type NotificationAnswer,
  type NotificationRequest,
} from '../src/agent/notify.js';

const skip = !existsSync(CHROMIUM) && !process.env.CI ? `no ${CHROMIUM}` : false;

const HOSTILE =
  'Hello <b>team</b>\n<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">';

function notification(over: Partial<NotificationRequest> = {}): NotificationRequest {
  return {
    advertisementId: 'adv-browser',
    advertisementName: 'Desktop refresh',
    packageName: 'Debian desktop',
    packageVersion: '2.0',
    kind: 'start',
    message: HOSTILE,
    countdownEndsAt: new Date(Date.now() + 3_600_000).toISOString(),
    buttons: { now: true, later: true, decline: true },
    laterUntilMax: new Date(Date.now() + 8 * 3_600_000).toISOString(),
    whenNoAnswer: 'install',
    requireUserPermission: false,
    ...over,
  };
}

/** "1 h 02 min 03 s" → 3723. */
function seconds(text: string): number {
  const m = /^(?:(\d+) h )?(?:(\d+) min )?(\d+) s$/.exec(text.trim());
  assert.ok(m, `not a countdown: ${JSON.stringify(text)}`);
  return Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + Number(m[3]);
}

describe('notification page in a browser', { skip, timeout: 180_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), 'reimage-notify-browser-'));
  let context: BrowserContext;
  let page: Page;
  let n = 0;
  const pageErrors: string[] = [];

  before(async () => {
    context = await chromium.launchPersistentContext(join(work, 'profile'), {
      executablePath: CHROMIUM,
      headless: true,
      args: [...CHROMIUM_ARGS],
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(30_000);
    // A CSP violation or a script error shows up here; none is expected.
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(m.text());
    });
    page.on('pageerror', (e) => pageErrors.push(e.message));
  });
  after(async () => {
    await context?.close();
    rmSync(work, { recursive: true, force: true });
  });

  /** Starts askUser on a fresh machine root and opens its page. */
  async function show(req: NotificationRequest) {
    const root = join(work, `machine-${++n}`);
    let settled = false;
    const asked = askUser(req, { root }).finally(() => (settled = true));
    const pending = await waitForNotification(root);
    const res = await page.goto(pending.url);
    assert.equal(res?.status(), 200);
    return { root, asked, pending, settled: () => settled };
  }

  test('shows the texts with the message escaped, a running countdown, only the allowed buttons; Install now answers', async () => {
    pageErrors.length = 0;
    const s = await show(
      notification({
        buttons: { now: true, later: true, decline: false },
        deadline: new Date(Date.now() + 48 * 3_600_000).toISOString(),
      }),
    );
    await page.getByRole('heading', { name: 'Installing now: Desktop refresh' }).waitFor();
    assert.match(
      await page.locator('main').innerText(),
      /The installation is mandatory: it happens by .+ at the latest\./,
    );
    assert.match(await page.locator('#intro').innerText(), /re-imaged with Debian desktop 2\.0/);
    // The message is shown as text, exactly as given: its markup is not markup.
    assert.equal(await page.locator('#message').textContent(), HOSTILE);
    assert.equal(await page.locator('#message script, #message img, #message b').count(), 0);
    assert.equal(
      await page.evaluate(() => (globalThis as { __pwned?: number }).__pwned),
      undefined,
    );

    const timer = page.getByRole('timer');
    const first = seconds(await timer.innerText());
    assert.ok(first > 3500 && first <= 3600, `countdown starts near an hour: ${first}`);
    // Waits (no clock of its own) until the page shows less time left than at first.
    // Waits (no clock of its own) until the page shows less time left than at first. A function,
    // not a string: the page's CSP forbids eval.
    await page.waitForFunction(
      (f) => {
        const doc = (
          globalThis as unknown as {
            document: { getElementById(id: string): { textContent: string } };
          }
        ).document;
        const t = doc.getElementById('countdown').textContent.trim();
        const m = /^(?:(\d+) h )?(?:(\d+) min )?(\d+) s$/.exec(t);
        return m !== null && Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + Number(m[3]) < f;
      },
      first,
      { polling: 100 },
    );
    assert.ok(seconds(await timer.innerText()) < first, 'the countdown decreased');

    assert.equal(await page.getByRole('button', { name: 'Install now' }).count(), 1);
    assert.equal(await page.getByRole('button', { name: 'Install later' }).count(), 1);
    assert.equal(await page.getByRole('button', { name: 'Decline' }).count(), 0);
    assert.equal(await page.getByRole('button').count(), 2, 'no other button');

    await page.getByRole('button', { name: 'Install now' }).click();
    const answer = await s.asked;
    assert.equal(answer.choice, 'now');
    assert.equal((answer as Extract<NotificationAnswer, { choice: 'now' }>).by, 'web');
    await page.getByRole('status').filter({ hasText: 'You chose Install now' }).waitFor();
    assert.ok(await page.getByRole('button', { name: 'Install now' }).isDisabled());
    assert.equal(existsSync(currentNotificationPath(s.root)), false);
    assert.deepEqual(pageErrors, [], 'no CSP violation or script error');
  });

  test('pre-notification: Install later with a chosen delay', async () => {
    const startsAt = new Date(Date.now() + 2 * 3_600_000).toISOString();
    const s = await show(notification({ kind: 'pre', startsAt, message: undefined }));
    await page.getByRole('heading', { name: 'Coming up: Desktop refresh' }).waitFor();
    assert.match(await page.locator('main').innerText(), /The installation starts at/);
    assert.equal(await page.locator('#message').count(), 0, 'no message section without a message');
    const delay = page.getByLabel('Postpone until');
    const options = await delay.locator('option').allInnerTexts();
    // Tomorrow is past laterUntilMax (8 h), so it is not offered.
    assert.deepEqual(options.slice(0, 2), ['In 1 hour', 'In 4 hours']);
    assert.equal(options.length, 3);
    assert.match(options[2]!, /^As late as allowed \(/);
    const before = Date.now();
    await delay.selectOption({ label: 'In 4 hours' });
    await page.getByRole('button', { name: 'Install later' }).click();
    const answer = await s.asked;
    const after = Date.now();
    assert.equal(answer.choice, 'later');
    const a = answer as Extract<NotificationAnswer, { choice: 'later' }>;
    assert.equal(a.by, 'web');
    const until = Date.parse(a.until);
    assert.ok(
      until >= before + 4 * 3_600_000 - 1000 && until <= after + 4 * 3_600_000 + 1000,
      `until is four hours from the click: ${a.until}`,
    );
    await page.getByRole('status').filter({ hasText: 'You chose Install later' }).waitFor();
  });

  test('Decline answers decline', async () => {
    const s = await show(notification({ buttons: { now: false, later: false, decline: true } }));
    assert.equal(await page.getByRole('button').count(), 1);
    assert.equal(await page.getByLabel('Postpone until').count(), 0);
    await page.getByRole('button', { name: 'Decline' }).click();
    const answer = await s.asked;
    assert.deepEqual({ ...answer, at: undefined }, { choice: 'decline', by: 'web', at: undefined });
    await page.getByRole('status').filter({ hasText: 'You chose Decline' }).waitFor();
  });

  test('nobody answering resolves "none" when the countdown ends, and the page says so', async () => {
    const s = await show(
      notification({
        countdownEndsAt: new Date(Date.now() + 2000).toISOString(),
        whenNoAnswer: 'postpone',
      }),
    );
    const answer = await s.asked;
    assert.equal(answer.choice, 'none');
    await page.getByRole('status').filter({ hasText: 'Time is up.' }).waitFor();
    assert.match(await page.getByRole('status').innerText(), /postponed/);
    assert.ok(await page.getByRole('button', { name: 'Install now' }).isDisabled());
  });

  test('a wrong token is 403; a button the policy does not allow is 400 and the question stays open', async () => {
    const s = await show(notification({ buttons: { now: true, later: false, decline: false } }));
    const wrong = await page.request.get(s.pending.url.replace(/token=[^&]+/, 'token=wrong'));
    assert.equal(wrong.status(), 403);
    const noToken = await page.request.get(new URL('/api/notification', s.pending.url).href);
    assert.equal(noToken.status(), 403);
    // From the page itself, as a tampered page would.
    const refused = await page.evaluate(async (token) => {
      const r = await fetch('/api/answer', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ token, choice: 'decline' }),
      });
      return { status: r.status, body: (await r.json()) as { error: { message: string } } };
    }, s.pending.token);
    assert.equal(refused.status, 400);
    assert.match(refused.body.error.message, /"Decline" is not allowed/);
    const wrongToken = await page.evaluate(async () => {
      const r = await fetch('/api/answer', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ token: 'x', choice: 'now' }),
      });
      return r.status;
    });
    assert.equal(wrongToken, 403);
    assert.equal(s.settled(), false, 'askUser is still waiting');
    assert.ok(existsSync(currentNotificationPath(s.root)));
    await page.getByRole('button', { name: 'Install now' }).click();
    assert.equal((await s.asked).choice, 'now');
  });
});
