import { ReimageError, type ErrorCode } from '../errors.js';
import type { NotificationAnswer, NotificationRequest } from './notify.js';

/** The words of a notification, the same on the web page and the terminal, and its checks. */

export interface NotificationText {
  title: string;
  /** The default text ("Your computer will be re-imaged with …"). */
  intro: string;
  /** The administrator's custom message, as given (escape it for the medium). */
  message?: string;
  /** Further facts: the deadline, whether permission is required. */
  facts: string[];
  /** What happens when nobody answers before the countdown ends. */
  noAnswer: string;
}

function fail(code: ErrorCode, message: string, details?: Record<string, unknown>): never {
  throw new ReimageError(code, message, { details });
}

function parseTime(v: unknown, what: string, code: ErrorCode): number {
  const t = typeof v === 'string' ? Date.parse(v) : NaN;
  if (!Number.isFinite(t))
    fail(
      code,
      `${what} must be a date and time (ISO 8601, e.g. 2026-11-26T14:00:00Z); got ${JSON.stringify(v)}.`,
    );
  return t;
}

export type AnswerChoice = 'now' | 'later' | 'decline';

/** The button names, the same on the page and the terminal. */
export const CHOICE_LABELS: Record<AnswerChoice, string> = {
  now: 'Install now',
  later: 'Install later',
  decline: 'Decline',
};

/** The delays offered for "Install later" (the page and the terminal), each capped by the limit. */
export const LATER_DELAYS: { label: string; ms: number }[] = [
  { label: 'In 1 hour', ms: 3_600_000 },
  { label: 'In 4 hours', ms: 4 * 3_600_000 },
  { label: 'Tomorrow at this time', ms: 24 * 3_600_000 },
];

/** Checks what the daemon asks for (a bug there is still refused with a clear message). */
export function checkRequest(req: NotificationRequest): void {
  const bad = (m: string) => fail('INVALID_ARGUMENT', `notification request: ${m}`);
  if (typeof req !== 'object' || req === null) bad('not an object');
  for (const k of [
    'advertisementId',
    'advertisementName',
    'packageName',
    'packageVersion',
  ] as const)
    if (typeof req[k] !== 'string' || req[k] === '') bad(`${k} must be a non-empty string`);
  if (req.kind !== 'pre' && req.kind !== 'start') bad(`kind must be "pre" or "start"`);
  if (req.message !== undefined && typeof req.message !== 'string') bad('message must be text');
  parseTime(req.countdownEndsAt, 'countdownEndsAt', 'INVALID_ARGUMENT');
  for (const k of ['startsAt', 'laterUntilMax', 'deadline'] as const)
    if (req[k] !== undefined) parseTime(req[k], k, 'INVALID_ARGUMENT');
  if (typeof req.buttons !== 'object' || req.buttons === null) bad('buttons must be an object');
  for (const k of ['now', 'later', 'decline'] as const)
    if (typeof req.buttons[k] !== 'boolean') bad(`buttons.${k} must be true or false`);
  if (!['install', 'postpone', 'decline'].includes(req.whenNoAnswer))
    bad('whenNoAnswer must be "install", "postpone" or "decline"');
  if (typeof req.requireUserPermission !== 'boolean')
    bad('requireUserPermission must be true or false');
}

/** The latest time "Install later" may choose: the earlier of laterUntilMax and the deadline. */
export function laterLimit(req: NotificationRequest): string | undefined {
  const ts = [req.laterUntilMax, req.deadline].filter((x): x is string => x !== undefined);
  if (ts.length === 0) return undefined;
  return new Date(Math.min(...ts.map((t) => Date.parse(t)))).toISOString();
}

/** A local date and time, as the user reads it. */
export function formatWhen(iso: string): string {
  return new Date(iso).toLocaleString('en-GB', {
    weekday: 'short',
    day: 'numeric',
    month: 'short',
    year: 'numeric',
    hour: '2-digit',
    minute: '2-digit',
  });
}

/** Time left as hours, minutes and seconds: "1 h 02 min 03 s", "4 min 05 s", "7 s". */
export function formatRemaining(ms: number): string {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = s % 60;
  const two = (n: number) => String(n).padStart(2, '0');
  if (h > 0) return `${h} h ${two(m)} min ${two(sec)} s`;
  if (m > 0) return `${m} min ${two(sec)} s`;
  return `${sec} s`;
}

/** The texts of a notification, shared by the page and the terminal. */
export function notificationText(
  req: NotificationRequest,
  fmt: (iso: string) => string = formatWhen,
): NotificationText {
  const what = `${req.packageName} ${req.packageVersion}`;
  const save =
    'Save your work and close your programs before it starts: the computer restarts during the installation. Your files and settings are kept.';
  const intro =
    req.kind === 'pre'
      ? `Your computer will be re-imaged with ${what}${req.startsAt ? `, starting at ${fmt(req.startsAt)}` : ' soon'}. ${save}`
      : `Your computer will be re-imaged with ${what}. ${save}`;
  const facts: string[] = [];
  if (req.deadline)
    facts.push(`The installation is mandatory: it happens by ${fmt(req.deadline)} at the latest.`);
  if (req.requireUserPermission) facts.push('Nothing is installed without your permission.');
  const noAnswer =
    req.whenNoAnswer === 'install'
      ? req.kind === 'pre'
        ? 'If you do not answer before the countdown ends, the installation starts as scheduled.'
        : 'If you do not answer before the countdown ends, the installation starts.'
      : req.whenNoAnswer === 'postpone'
        ? 'If you do not answer before the countdown ends, the installation is postponed and you will be asked again.'
        : 'If you do not answer before the countdown ends, nothing is installed.';
  return {
    title:
      req.kind === 'pre'
        ? `Coming up: ${req.advertisementName}`
        : `Installing now: ${req.advertisementName}`,
    intro,
    message: req.message?.trim() ? req.message : undefined,
    facts,
    noAnswer,
  };
}

/** What an answer means, in words (shown after answering, on the page and the terminal). */
export function answerText(
  a: NotificationAnswer,
  fmt: (iso: string) => string = formatWhen,
): string {
  switch (a.choice) {
    case 'now':
      return 'You chose Install now: the installation starts shortly.';
    case 'later':
      return `You chose Install later: the installation waits until ${fmt(a.until)}.`;
    case 'decline':
      return 'You chose Decline: nothing is installed.';
    case 'none':
      return 'No answer was given before the countdown ended.';
  }
}

/**
 * Validates an answer against the request: only an allowed button, "later" only up to the limit
 * (and in the future); `until` defaults to the limit. Throws NOTIFICATION_ANSWER_INVALID.
 */
export function checkAnswer(
  req: NotificationRequest,
  body: unknown,
  now: Date,
): NotificationAnswer {
  const bad = (m: string): never => fail('NOTIFICATION_ANSWER_INVALID', m);
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    bad('The answer must be a JSON object: {"token", "choice", "until"?}.');
  const b = body as Record<string, unknown>;
  const choice = b.choice;
  if (choice !== 'now' && choice !== 'later' && choice !== 'decline')
    bad(`choice must be "now", "later" or "decline"; got ${JSON.stringify(choice)}.`);
  const c = choice as AnswerChoice;
  if (!req.buttons[c]) {
    const allowed = (Object.keys(CHOICE_LABELS) as AnswerChoice[]).filter((k) => req.buttons[k]);
    bad(
      `"${CHOICE_LABELS[c]}" is not allowed for this notification; allowed: ${allowed.map((k) => `"${CHOICE_LABELS[k]}"`).join(', ') || 'none'}.`,
    );
  }
  const by = b.by ?? 'web';
  if (by !== 'web' && by !== 'terminal')
    bad(`by must be "web" or "terminal"; got ${JSON.stringify(by)}.`);
  const at = now.toISOString();
  if (c !== 'later') {
    if (b.until !== undefined) bad('until goes with "later" only.');
    return { choice: c, at, by: by as 'web' | 'terminal' };
  }
  const limit = laterLimit(req);
  if (b.until === undefined && limit === undefined)
    bad('"Install later" needs until: the date and time to wait until.');
  const until =
    b.until === undefined
      ? Date.parse(limit!)
      : parseTime(b.until, 'until', 'NOTIFICATION_ANSWER_INVALID');
  if (until <= now.getTime())
    bad(`until (${new Date(until).toISOString()}) must be in the future.`);
  if (limit !== undefined && until > Date.parse(limit))
    fail(
      'NOTIFICATION_ANSWER_INVALID',
      `"Install later" is allowed until ${limit} at the latest; ${new Date(until).toISOString()} is later. Choose an earlier time.`,
      { laterLimit: limit },
    );
  return {
    choice: 'later',
    until: new Date(until).toISOString(),
    at,
    by: by as 'web' | 'terminal',
  };
}
