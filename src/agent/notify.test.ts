import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { isReimageError } from '../errors.js';
import {
  answerNotification,
  askUser,
  checkAnswer,
  checkRequest,
  currentNotificationPath,
  formatRemaining,
  laterLimit,
  notificationText,
  readPendingNotification,
  waitForNotification,
  type NotificationRequest,
} from './notify.js';
import { escapeHtml, renderNotificationPage } from './notify-page.js';
import { terminalSafe } from './notify-prompt.js';

const NOW = new Date('2026-11-26T10:00:00Z');
const at = (h: number) => new Date(NOW.getTime() + h * 3_600_000).toISOString();

function request_(over: Partial<NotificationRequest> = {}): NotificationRequest {
  return {
    advertisementId: 'adv-1',
    advertisementName: 'Desktop refresh',
    packageName: 'Debian desktop',
    packageVersion: '2.0',
    kind: 'start',
    message: 'Please save your work.',
    countdownEndsAt: at(1),
    buttons: { now: true, later: true, decline: false },
    laterUntilMax: at(8),
    whenNoAnswer: 'install',
    requireUserPermission: false,
    ...over,
  };
}

function invalid(f: () => unknown, pattern: RegExp) {
  assert.throws(f, (e: unknown) => {
    assert.ok(isReimageError(e, 'NOTIFICATION_ANSWER_INVALID'), String(e));
    assert.match((e as Error).message, pattern);
    return true;
  });
}

describe('checkAnswer', () => {
  const req = request_();

  it('accepts an allowed button and records when and where', () => {
    assert.deepEqual(checkAnswer(req, { choice: 'now' }, NOW), {
      choice: 'now',
      at: NOW.toISOString(),
      by: 'web',
    });
    assert.deepEqual(checkAnswer(req, { choice: 'now', by: 'terminal' }, NOW), {
      choice: 'now',
      at: NOW.toISOString(),
      by: 'terminal',
    });
  });

  it('refuses a button the policy does not allow, naming the allowed ones', () => {
    invalid(
      () => checkAnswer(req, { choice: 'decline' }, NOW),
      /"Decline" is not allowed.*"Install now", "Install later"/,
    );
    invalid(
      () =>
        checkAnswer(
          request_({ buttons: { now: false, later: false, decline: true } }),
          { choice: 'now' },
          NOW,
        ),
      /allowed: "Decline"/,
    );
  });

  it('refuses unknown choices, "none" from a user, and non-objects', () => {
    invalid(() => checkAnswer(req, { choice: 'none' }, NOW), /choice must be/);
    invalid(() => checkAnswer(req, { choice: 'NOW' }, NOW), /choice must be/);
    invalid(() => checkAnswer(req, [], NOW), /JSON object/);
    invalid(() => checkAnswer(req, null, NOW), /JSON object/);
    invalid(() => checkAnswer(req, 'now', NOW), /JSON object/);
    invalid(() => checkAnswer(req, { choice: 'now', by: 'email' }, NOW), /by must be/);
    invalid(
      () => checkAnswer(req, { choice: 'now', until: at(2) }, NOW),
      /until goes with "later"/,
    );
  });

  it('accepts "later" up to the limit, inclusive, and normalizes the time', () => {
    assert.deepEqual(checkAnswer(req, { choice: 'later', until: at(4) }, NOW), {
      choice: 'later',
      until: at(4),
      at: NOW.toISOString(),
      by: 'web',
    });
    const a = checkAnswer(req, { choice: 'later', until: '2026-11-26T18:00:00+00:00' }, NOW);
    assert.equal(a.choice === 'later' && a.until, '2026-11-26T18:00:00.000Z');
  });

  it('"later" without a time means the latest allowed', () => {
    const a = checkAnswer(req, { choice: 'later' }, NOW);
    assert.equal(a.choice === 'later' && a.until, at(8));
    invalid(
      () => checkAnswer(request_({ laterUntilMax: undefined }), { choice: 'later' }, NOW),
      /needs until/,
    );
  });

  it('refuses "later" beyond laterUntilMax, in the past, or not a time', () => {
    invalid(
      () => checkAnswer(req, { choice: 'later', until: at(9) }, NOW),
      /allowed until 2026-11-26T18:00:00.000Z at the latest; 2026-11-26T19:00:00.000Z is later/,
    );
    invalid(() => checkAnswer(req, { choice: 'later', until: at(-1) }, NOW), /in the future/);
    invalid(
      () => checkAnswer(req, { choice: 'later', until: NOW.toISOString() }, NOW),
      /in the future/,
    );
    invalid(() => checkAnswer(req, { choice: 'later', until: 'tomorrow' }, NOW), /ISO 8601/);
    invalid(() => checkAnswer(req, { choice: 'later', until: 12 }, NOW), /ISO 8601/);
  });

  it('the deadline caps "later" when it comes before laterUntilMax', () => {
    const r = request_({ deadline: at(3) });
    assert.equal(laterLimit(r), at(3));
    invalid(
      () => checkAnswer(r, { choice: 'later', until: at(4) }, NOW),
      /until .*T13:00:00.000Z at the latest/,
    );
    assert.equal(laterLimit(request_({ laterUntilMax: undefined })), undefined);
    const free = checkAnswer(
      request_({ laterUntilMax: undefined }),
      { choice: 'later', until: at(100) },
      NOW,
    );
    assert.equal(free.choice, 'later');
  });
});

describe('checkRequest', () => {
  it('accepts a well-formed request and names what is wrong in a bad one', () => {
    checkRequest(request_());
    const bad = (over: object, pattern: RegExp) =>
      assert.throws(
        () => checkRequest({ ...request_(), ...over } as NotificationRequest),
        (e: unknown) => isReimageError(e, 'INVALID_ARGUMENT') && pattern.test((e as Error).message),
      );
    bad({ countdownEndsAt: 'soon' }, /countdownEndsAt must be a date/);
    bad({ kind: 'later' }, /kind must be/);
    bad({ buttons: { now: true } }, /buttons.later/);
    bad({ whenNoAnswer: 'maybe' }, /whenNoAnswer/);
    bad({ packageName: '' }, /packageName/);
    bad({ laterUntilMax: 'x' }, /laterUntilMax/);
  });
});

describe('texts', () => {
  it('counts down in hours, minutes and seconds', () => {
    assert.equal(formatRemaining(3_723_000), '1 h 02 min 03 s');
    assert.equal(formatRemaining(245_000), '4 min 05 s');
    assert.equal(formatRemaining(6_200), '7 s');
    assert.equal(formatRemaining(-5), '0 s');
  });

  it('says what happens, for each kind and default', () => {
    const t = notificationText(
      request_({ kind: 'pre', startsAt: at(2), deadline: at(24) }),
      (iso) => iso,
    );
    assert.match(
      t.intro,
      /re-imaged with Debian desktop 2.0, starting at 2026-11-26T12:00:00.000Z/,
    );
    assert.match(t.facts.join(' '), /mandatory.*2026-11-27T10:00:00.000Z/);
    assert.match(t.noAnswer, /starts as scheduled/);
    const d = notificationText(request_({ whenNoAnswer: 'decline', requireUserPermission: true }));
    assert.match(d.noAnswer, /nothing is installed/);
    assert.match(d.facts.join(' '), /without your permission/);
    assert.equal(notificationText(request_({ message: '  ' })).message, undefined);
  });

  it('escapes the administrator message on the page and strips control codes for the terminal', () => {
    assert.equal(
      escapeHtml(`<a href="x" onclick='y'>&</a>`),
      '&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;',
    );
    const req = request_({ message: '<script>alert(1)</script><img src=x onerror=alert(2)>' });
    const html = renderNotificationPage({
      req,
      token: 't',
      nonce: 'n0nce',
      serverNow: NOW.toISOString(),
      laterLimit: laterLimit(req),
      text: notificationText(req),
    });
    assert.ok(
      html.includes('&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;'),
    );
    assert.equal(html.match(/<script/g)?.length, 1, 'only the page script');
    assert.match(html, /<script nonce="n0nce">/);
    assert.doesNotMatch(html, /data-choice="decline"/, 'no Decline button when not allowed');
    assert.equal(terminalSafe('ok\x1b[2J\x07 \u202eevil\nnext'), 'ok[2J evil\nnext');
  });
});

describe('askUser over loopback', () => {
  const base = mkdtempSync(join(tmpdir(), 'reimage-notify-'));
  after(() => rmSync(base, { recursive: true, force: true }));
  let n = 0;
  const root = () => join(base, `m${++n}`);
  const soon = (ms: number) => new Date(Date.now() + ms).toISOString();

  /** A raw request, to set headers fetch would not let us forge (Host). */
  function raw(
    url: string,
    o: { method?: string; headers?: Record<string, string>; body?: string },
  ) {
    return new Promise<{ status: number; body: string }>((resolve, reject) => {
      const r = request(url, { method: o.method ?? 'GET', headers: o.headers }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      });
      r.on('error', reject);
      r.end(o.body);
    });
  }

  it('announces itself in current.json (0600), refuses bad answers, counts the first good one, and cleans up', async () => {
    const r = root();
    const asked = askUser(
      request_({ countdownEndsAt: soon(3_600_000), laterUntilMax: soon(7_200_000) }),
      { root: r },
    );
    const pending = await waitForNotification(r);
    const file = currentNotificationPath(r);
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.match(pending.url, /^http:\/\/127\.0\.0\.1:\d+\/\?token=[\w-]{43}$/);
    const answerUrl = new URL('/api/answer', pending.url).href;
    const post = (body: object, headers: Record<string, string> = {}) =>
      raw(answerUrl, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify(body),
      });

    assert.equal((await post({ token: 'nope', choice: 'now' })).status, 403);
    assert.equal((await post({ choice: 'now' })).status, 403);
    assert.equal((await raw(pending.url.replace(/token=.*/, 'token=x'), {})).status, 403);
    const disallowed = await post({ token: pending.token, choice: 'decline' });
    assert.equal(disallowed.status, 400);
    assert.equal(JSON.parse(disallowed.body).error.code, 'NOTIFICATION_ANSWER_INVALID');
    const tooLate = await post({
      token: pending.token,
      choice: 'later',
      until: soon(3 * 3_600_000),
    });
    assert.equal(tooLate.status, 400);
    assert.match(JSON.parse(tooLate.body).error.message, /at the latest/);
    // Another web origin (a page elsewhere posting to loopback), or another host name (DNS rebinding).
    assert.equal(
      (await post({ token: pending.token, choice: 'now' }, { origin: 'http://evil.example' }))
        .status,
      403,
    );
    assert.equal(
      (await post({ token: pending.token, choice: 'now' }, { host: 'evil.example' })).status,
      421,
    );
    // A form post (no JSON content type) is refused.
    const form = await raw(answerUrl, {
      method: 'POST',
      headers: { 'content-type': 'text/plain' },
      body: JSON.stringify({ token: pending.token, choice: 'now' }),
    });
    assert.equal(form.status, 400);
    assert.ok(existsSync(file), 'still pending after refused answers');

    // Two answers at once: exactly one counts.
    const results = await Promise.allSettled([
      answerNotification(r, { choice: 'now' }, 'terminal'),
      answerNotification(r, { choice: 'later' }, 'web'),
    ]);
    const got = await asked;
    const ok = results.filter((x) => x.status === 'fulfilled');
    assert.equal(ok.length, 1, JSON.stringify(results));
    assert.deepEqual(got, (ok[0] as PromiseFulfilledResult<unknown>).value);
    const refused = results.find((x) => x.status === 'rejected') as PromiseRejectedResult;
    assert.ok(
      isReimageError(refused.reason, 'NOTIFICATION_ALREADY_ANSWERED') ||
        isReimageError(refused.reason, 'NOTIFICATION_NOT_PENDING'),
      String(refused.reason),
    );
    assert.equal(existsSync(file), false, 'current.json removed');
    await assert.rejects(answerNotification(r, { choice: 'now' }, 'terminal'), (e: unknown) =>
      isReimageError(e, 'NOTIFICATION_NOT_PENDING'),
    );
    await assert.rejects(fetch(pending.url), 'the server is closed');
  });

  it('resolves "none" when the countdown ends', async () => {
    const r = root();
    const got = await askUser(request_({ countdownEndsAt: soon(300) }), { root: r });
    assert.equal(got.choice, 'none');
    assert.throws(
      () => readPendingNotification(r),
      (e: unknown) => isReimageError(e, 'NOTIFICATION_NOT_PENDING'),
    );
  });

  it('a countdown already over is "none" at once', async () => {
    const got = await askUser(request_({ countdownEndsAt: at(1) }), {
      root: root(),
      now: () => new Date(at(2)),
    });
    assert.deepEqual(got, { choice: 'none', at: at(2) });
  });

  it('rejects with the abort reason and removes current.json', async () => {
    const r = root();
    const ac = new AbortController();
    const asked = askUser(request_({ countdownEndsAt: soon(3_600_000) }), {
      root: r,
      signal: ac.signal,
    });
    const pending = await waitForNotification(r);
    const reason = new Error('deployment cancelled');
    ac.abort(reason);
    await assert.rejects(asked, (e) => e === reason);
    assert.equal(existsSync(currentNotificationPath(r)), false);
    await assert.rejects(fetch(pending.url));
  });

  it('refuses a malformed request before serving anything', async () => {
    const r = root();
    await assert.rejects(
      askUser(request_({ countdownEndsAt: 'in an hour' }), { root: r }),
      (e: unknown) => isReimageError(e, 'INVALID_ARGUMENT'),
    );
    assert.equal(existsSync(currentNotificationPath(r)), false);
  });
});
