import { randomBytes, timingSafeEqual } from 'node:crypto';
import { rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { ReimageError, isReimageError, type ErrorCode } from '../errors.js';
import { readJsonFile, writeFileAtomic } from './files.js';
import { renderNotificationPage } from './notify-page.js';
import {
  answerText,
  checkAnswer,
  checkRequest,
  laterLimit,
  notificationText,
  type AnswerChoice,
  type NotificationText,
} from './notify-text.js';

export {
  answerText,
  checkAnswer,
  checkRequest,
  CHOICE_LABELS,
  formatRemaining,
  formatWhen,
  LATER_DELAYS,
  laterLimit,
  notificationText,
  type AnswerChoice,
  type NotificationText,
} from './notify-text.js';

/**
 * Asking the user (docs/notification.md): the agent serves the pending notification as a web
 * page on loopback and answers the terminal prompt (`reimage agent prompt`) through the same
 * small JSON API; the first valid answer wins, and no answer before the countdown ends is
 * `{choice: 'none'}`. The daemon decides which buttons, the latest "later" and what no answer
 * means; this module shows them and refuses anything else.
 */

// The interface the daemon calls is defined with the daemon (src/agent/ask.ts).
import type { AskUser, NotificationAnswer, NotificationRequest } from './ask.js';
export type { AskUser, NotificationAnswer, NotificationRequest } from './ask.js';

/** What `<root>/.reimage/notify/current.json` holds while a notification waits for its answer. */
export interface PendingNotificationFile {
  url: string;
  token: string;
  advertisementId: string;
  countdownEndsAt: string;
}

/** What `GET /api/notification` returns: the request, the texts shown, and the server's clock. */
export interface NotificationView {
  notification: NotificationRequest;
  /** The latest "later" allowed: the earlier of laterUntilMax and the deadline (none: no limit). */
  laterLimit?: string;
  /** The agent's clock when it answered, so that a front-end counts down on the agent's time. */
  serverNow: string;
  text: NotificationText;
}

/** Where the pending notification is announced, under the machine's root. */
export function currentNotificationPath(root: string): string {
  return join(root, '.reimage', 'notify', 'current.json');
}

function sameToken(a: unknown, token: string): boolean {
  if (typeof a !== 'string') return false;
  const x = Buffer.from(a);
  const y = Buffer.from(token);
  return x.length === y.length && timingSafeEqual(x, y);
}

const MAX_BODY = 4096;
/** setTimeout's longest delay; longer countdowns re-arm. */
const MAX_TIMER = 2 ** 31 - 1;

const SECURITY_HEADERS = {
  'cache-control': 'no-store',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  'cross-origin-resource-policy': 'same-origin',
};

function sendJson(res: ServerResponse, status: number, doc: unknown, then?: () => void): void {
  const body = JSON.stringify(doc);
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body, then);
}

function sendError(res: ServerResponse, e: unknown): void {
  if (isReimageError(e)) {
    sendJson(res, e.httpStatus, {
      error: { code: e.code, message: e.message, details: e.details },
    });
    return;
  }
  sendJson(res, 500, { error: { code: 'INTERNAL', message: 'internal error' } });
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    let size = 0;
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => {
      size += d.length;
      if (size > MAX_BODY) {
        reject(
          new ReimageError(
            'NOTIFICATION_ANSWER_INVALID',
            `The answer is larger than ${MAX_BODY} bytes.`,
          ),
        );
        req.destroy();
        return;
      }
      parts.push(d);
    });
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}

/**
 * Shows a notification and waits for its answer: serves it on 127.0.0.1 (a free port) with a
 * random token, announces it in `<root>/.reimage/notify/current.json` (0600), and resolves with
 * the first valid answer (web page or terminal) or `{choice: 'none'}` when the countdown ends.
 * `signal` aborting rejects with its reason. Either way current.json is removed and the server
 * closed before the promise settles.
 */
export const askUser: AskUser = async (req, o) => {
  checkRequest(req);
  o.signal?.throwIfAborted();
  const now = o.now ?? (() => new Date());
  const endsAt = Date.parse(req.countdownEndsAt);
  if (endsAt <= now().getTime()) return { choice: 'none', at: now().toISOString() };

  const token = randomBytes(32).toString('base64url');
  const file = currentNotificationPath(o.root);
  let settled = false;
  let answered: NotificationAnswer | undefined;
  let settle!: (r: { answer: NotificationAnswer } | { error: unknown }) => void;
  const outcome = new Promise<{ answer: NotificationAnswer } | { error: unknown }>(
    (r) => (settle = r),
  );
  const finish = (r: { answer: NotificationAnswer } | { error: unknown }) => {
    if (settled) return;
    settled = true;
    settle(r);
  };
  let origins: string[] = [];
  let hosts: string[] = [];

  const handle = async (hreq: IncomingMessage, res: ServerResponse) => {
    // Only addressed as the loopback address (no DNS rebinding), only from this page's origin.
    if (!hosts.includes(hreq.headers.host ?? ''))
      return sendJson(res, 421, {
        error: {
          code: 'NOTIFICATION_TOKEN_INVALID',
          message: `address the notification as ${hosts[0]}`,
        },
      });
    const origin = hreq.headers.origin;
    if (origin !== undefined && !origins.includes(origin))
      return sendError(
        res,
        new ReimageError('NOTIFICATION_TOKEN_INVALID', `requests from ${origin} are not accepted`),
      );
    const url = new URL(hreq.url ?? '/', origins[0]);
    if (hreq.method === 'GET' && (url.pathname === '/' || url.pathname === '/api/notification')) {
      if (!sameToken(url.searchParams.get('token'), token))
        return sendError(
          res,
          new ReimageError('NOTIFICATION_TOKEN_INVALID', 'wrong or missing token'),
        );
      const serverNow = now().toISOString();
      if (url.pathname === '/api/notification') {
        const view: NotificationView = {
          notification: req,
          laterLimit: laterLimit(req),
          serverNow,
          text: notificationText(req),
        };
        return sendJson(res, 200, view);
      }
      const nonce = randomBytes(18).toString('base64');
      const html = renderNotificationPage({
        req,
        token,
        nonce,
        serverNow,
        laterLimit: laterLimit(req),
        text: notificationText(req),
      });
      res.writeHead(200, {
        ...SECURITY_HEADERS,
        'content-type': 'text/html; charset=utf-8',
        'content-length': Buffer.byteLength(html),
        'content-security-policy': `default-src 'none'; script-src 'nonce-${nonce}'; style-src 'nonce-${nonce}'; connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
      });
      res.end(html);
      return;
    }
    if (hreq.method === 'POST' && url.pathname === '/api/answer') {
      let body: unknown;
      const text = await readBody(hreq);
      if (!/^application\/json\b/i.test(hreq.headers['content-type'] ?? ''))
        throw new ReimageError(
          'NOTIFICATION_ANSWER_INVALID',
          'send the answer as JSON (Content-Type: application/json).',
        );
      try {
        body = JSON.parse(text);
      } catch {
        throw new ReimageError('NOTIFICATION_ANSWER_INVALID', 'The answer is not valid JSON.');
      }
      if (!sameToken((body as { token?: unknown } | null)?.token, token))
        throw new ReimageError('NOTIFICATION_TOKEN_INVALID', 'wrong or missing token');
      if (answered || settled)
        throw new ReimageError(
          'NOTIFICATION_ALREADY_ANSWERED',
          'This notification was already answered; only the first answer counts.',
          { details: { answer: answered } },
        );
      const answer = checkAnswer(req, body, now());
      // Counted from here: a second answer arriving while this response is written is refused.
      answered = answer;
      // Settles once the response is out, or when its connection closes first (a page closed
      // mid-answer): the answer counts either way.
      res.once('close', () => finish({ answer }));
      sendJson(res, 200, { answer, text: answerText(answer) }, () => finish({ answer }));
      return;
    }
    sendJson(res, hreq.method === 'GET' || hreq.method === 'POST' ? 404 : 405, {
      error: { code: 'NOT_FOUND', message: `${hreq.method} ${url.pathname}: no such endpoint` },
    });
  };

  const server: Server = createServer((hreq, res) => {
    handle(hreq, res).catch((e: unknown) => {
      if (!res.headersSent) sendError(res, e);
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 2000;
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (e) => finish({ error: e }));
  const { port } = server.address() as AddressInfo;
  hosts = [`127.0.0.1:${port}`, `localhost:${port}`];
  origins = hosts.map((h) => `http://${h}`);

  let timer: NodeJS.Timeout | undefined;
  const arm = () => {
    const left = endsAt - now().getTime();
    if (left <= 0) return finish({ answer: { choice: 'none', at: now().toISOString() } });
    timer = setTimeout(arm, Math.min(left, MAX_TIMER));
  };
  const onAbort = () => finish({ error: o.signal?.reason });
  o.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    const pending: PendingNotificationFile = {
      url: `${origins[0]}/?token=${token}`,
      token,
      advertisementId: req.advertisementId,
      countdownEndsAt: req.countdownEndsAt,
    };
    writeFileAtomic(file, JSON.stringify(pending, null, 2) + '\n', 0o600);
    if (o.signal?.aborted) onAbort();
    arm();
    const r = await outcome;
    if ('error' in r) throw r.error;
    return r.answer;
  } finally {
    clearTimeout(timer);
    o.signal?.removeEventListener('abort', onAbort);
    settled = true;
    removeIfOurs(file, token);
    await closeServer(server);
  }
};

/** Removes current.json unless another notification has replaced it since. */
function removeIfOurs(file: string, token: string): void {
  try {
    const cur = readJsonFile<PendingNotificationFile>(file);
    if (cur?.token === token) rmSync(file, { force: true });
  } catch {
    // An unreadable file is not ours to judge; the next notification replaces it.
  }
}

/** Closes the server: idle connections now, busy ones (a response still being sent) soon after. */
function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
    setTimeout(() => server.closeAllConnections(), 500).unref();
  });
}

/** The pending notification's announcement, or NOTIFICATION_NOT_PENDING. */
export function readPendingNotification(root: string): PendingNotificationFile {
  const file = currentNotificationPath(root);
  const cur = readJsonFile<PendingNotificationFile>(file);
  if (!cur || typeof cur.url !== 'string' || typeof cur.token !== 'string')
    throw new ReimageError(
      'NOTIFICATION_NOT_PENDING',
      `No notification is pending on this machine (${file} does not exist).`,
    );
  return cur;
}

/** Waits until a notification is pending (polling current.json), e.g. for a simulated user. */
export async function waitForNotification(
  root: string,
  o: { signal?: AbortSignal; advertisementId?: string; intervalMs?: number } = {},
): Promise<PendingNotificationFile> {
  for (;;) {
    o.signal?.throwIfAborted();
    try {
      const cur = readPendingNotification(root);
      if (o.advertisementId === undefined || cur.advertisementId === o.advertisementId) return cur;
    } catch (e) {
      if (
        !isReimageError(e, 'NOTIFICATION_NOT_PENDING') &&
        !isReimageError(e, 'AGENT_STATE_INVALID')
      )
        throw e;
    }
    await new Promise((r) => setTimeout(r, o.intervalMs ?? 100));
  }
}

async function call<T>(
  pending: PendingNotificationFile,
  path: string,
  init?: RequestInit,
): Promise<T> {
  const base = new URL(pending.url);
  let res: Response;
  try {
    res = await fetch(new URL(path, base.origin), { ...init, redirect: 'error' });
  } catch (e) {
    // The server is gone: it closed after an answer or at the end of the countdown.
    throw new ReimageError(
      'NOTIFICATION_NOT_PENDING',
      'The notification is no longer pending (it was answered or its countdown ended).',
      { cause: e },
    );
  }
  const doc = (await res.json().catch(() => undefined)) as
    | (T & { error?: { code?: string; message?: string; details?: Record<string, unknown> } })
    | undefined;
  if (!res.ok) {
    const code = doc?.error?.code;
    const known: ErrorCode[] = [
      'NOTIFICATION_TOKEN_INVALID',
      'NOTIFICATION_ANSWER_INVALID',
      'NOTIFICATION_ALREADY_ANSWERED',
      'NOTIFICATION_NOT_PENDING',
    ];
    throw new ReimageError(
      known.includes(code as ErrorCode) ? (code as ErrorCode) : 'NOTIFICATION_NOT_PENDING',
      doc?.error?.message ?? `the notification answered HTTP ${res.status}`,
      { details: doc?.error?.details },
    );
  }
  if (doc === undefined)
    throw new ReimageError('NOTIFICATION_NOT_PENDING', 'The notification answered without JSON.');
  return doc;
}

/** What the pending notification shows (GET /api/notification). */
export function fetchNotification(pending: PendingNotificationFile): Promise<NotificationView> {
  return call(pending, `/api/notification?token=${encodeURIComponent(pending.token)}`);
}

/** Posts an answer to this pending notification; resolves with the answer that was recorded. */
export async function postAnswer(
  pending: PendingNotificationFile,
  a: { choice: AnswerChoice; until?: string },
  by: 'web' | 'terminal',
): Promise<{ answer: NotificationAnswer; text: string }> {
  return call(pending, '/api/answer', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ token: pending.token, choice: a.choice, until: a.until, by }),
  });
}

/**
 * Answers the notification pending on the machine at `root`: the small client of the terminal
 * prompt and of the lab's simulated users. Throws NOTIFICATION_NOT_PENDING when there is none,
 * NOTIFICATION_ANSWER_INVALID when the answer is not allowed (the question stays open), and
 * NOTIFICATION_ALREADY_ANSWERED when another answer came first.
 */
export async function answerNotification(
  root: string,
  a: { choice: AnswerChoice; until?: string },
  by: 'web' | 'terminal',
): Promise<NotificationAnswer> {
  return (await postAnswer(readPendingNotification(root), a, by)).answer;
}
