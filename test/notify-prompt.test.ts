/**
 * `reimage agent prompt` on a pseudo-terminal, against a notification that askUser serves in
 * this process: the texts, a live countdown, only the allowed choices; "Install later" with a
 * chosen delay resolves askUser with by: 'terminal'.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import {
  askUser,
  currentNotificationPath,
  waitForNotification,
  type NotificationAnswer,
  type NotificationRequest,
} from '../src/agent/notify.js';
import { reimage } from './cli.js';
import { KEY, startTerminal } from './support/pty.js';

const work = mkdtempSync(join(tmpdir(), 'reimage-notify-prompt-'));
after(() => rmSync(work, { recursive: true, force: true }));

function notification(over: Partial<NotificationRequest> = {}): NotificationRequest {
  return {
    advertisementId: 'adv-terminal',
    advertisementName: 'Desktop refresh',
    packageName: 'Debian desktop',
    packageVersion: '2.0',
    kind: 'start',
    message: 'Lab 3 is re-imaged tonight.\nCall the help desk on 1234 with questions.',
    countdownEndsAt: new Date(Date.now() + 3_600_000).toISOString(),
    buttons: { now: true, later: true, decline: false },
    laterUntilMax: new Date(Date.now() + 8 * 3_600_000).toISOString(),
    whenNoAnswer: 'install',
    requireUserPermission: false,
    deadline: new Date(Date.now() + 48 * 3_600_000).toISOString(),
    ...over,
  };
}

/** "1 h 02 min 03 s" → 3723. */
function seconds(text: string): number {
  const m = /(?:(\d+) h )?(?:(\d+) min )?(\d+) s/.exec(text);
  assert.ok(m, `not a countdown: ${JSON.stringify(text)}`);
  return Number(m[1] ?? 0) * 3600 + Number(m[2] ?? 0) * 60 + Number(m[3]);
}

describe('reimage agent prompt', () => {
  test('shows the message, a live countdown and the allowed choices; Install later with a delay answers askUser', async () => {
    const root = join(work, 'm1');
    const asked = askUser(notification(), { root });
    await waitForNotification(root);
    const t = startTerminal(['agent', 'prompt', '--machine', root]);
    const head = await t.waitFor('What do you want to do?');
    assert.match(head, /── Installing now: Desktop refresh ──/);
    assert.match(head, /re-imaged with Debian desktop 2\.0/);
    assert.match(head, /│ Lab 3 is re-imaged tonight\.\n {2}│ Call the help desk on 1234/);
    assert.match(head, /The installation is mandatory: it happens by .+ at the latest\./);
    assert.match(head, /If you do not answer before the countdown ends, the installation starts/);
    const first = seconds(await t.waitFor(/Time left to answer: [^\n]+/));
    const menu = await t.waitFor(/Install later/);
    assert.match(menu, /❯ Install now/);
    // The countdown re-renders while the question waits.
    for (;;) {
      const next = seconds(await t.waitFor(/Time left to answer: [^\n]+/));
      if (next < first) break;
    }
    assert.doesNotMatch(t.screen(), /Decline/, 'Decline is not allowed');

    await new Promise((r) => setImmediate(r));
    t.type(KEY.down + KEY.enter);
    await t.waitFor('Postpone until');
    const delays = await t.waitFor(/As late as allowed \([^)]+\)/);
    assert.match(delays, /In 1 hour\n\s+In 4 hours/);
    assert.doesNotMatch(delays, /Tomorrow/, 'tomorrow is after laterUntilMax');
    const before = Date.now();
    t.type(KEY.down + KEY.enter);
    const answer = await asked;
    const afterAnswer = Date.now();
    assert.equal(answer.choice, 'later');
    const a = answer as Extract<NotificationAnswer, { choice: 'later' }>;
    assert.equal(a.by, 'terminal');
    const until = Date.parse(a.until);
    assert.ok(
      until >= before + 4 * 3_600_000 - 2000 && until <= afterAnswer + 4 * 3_600_000 + 2000,
      a.until,
    );
    await t.waitFor('You chose Install later: the installation waits until');
    assert.equal(await t.exited, 0, t.screen());
    assert.equal(existsSync(currentNotificationPath(root)), false);
  });

  test('exits 1 when no notification is pending, 2 on a bad flag', () => {
    const none = reimage(['agent', 'prompt', '--machine', join(work, 'nothing')]);
    assert.equal(none.status, 1, none.stderr);
    assert.match(none.stderr, /NOTIFICATION_NOT_PENDING: No notification is pending/);
    const bad = reimage(['agent', 'prompt', '--machine']);
    assert.equal(bad.status, 2, bad.stderr);
  });

  test('when the web page answers first, the prompt says so and exits 1', async () => {
    const root = join(work, 'm2');
    const asked = askUser(notification(), { root });
    const pending = await waitForNotification(root);
    const t = startTerminal(['agent', 'prompt', '--machine', root]);
    await t.waitFor('What do you want to do?');
    const r = await fetch(new URL('/api/answer', pending.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token: pending.token, choice: 'now' }),
    });
    assert.equal(r.status, 200);
    assert.equal((await asked).choice, 'now');
    await t.waitFor('The notification was answered elsewhere, or has ended.');
    assert.equal(await t.exited, 1);
  });
});
