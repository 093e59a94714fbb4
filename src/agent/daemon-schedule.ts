import type { PolicyAdvertisement } from '../client/agent-api.js';
import { nextOpening } from '../content/window.js';
import type { NotificationAnswer, NotificationRequest } from './ask.js';
import type { AdSchedule, NotificationPolicy } from './daemon-policy.js';

/**
 * What the client does about one advertisement at a given time: a pure function of the
 * advertisement, the policy, the machine's record of it (`/.reimage/ads/<id>.json`) and the
 * clock, so that every path is testable without waiting (docs/agent.md, "Decisions").
 */

/** The machine's memory of one advertisement, in the kept area (survives the wipe). */
export interface AdRecord {
  id: string;
  firstSeenAt: string;
  /** The advance notice given, and the start it announced. */
  preNotified?: { at: string; startsAt: string };
  /** "Install now" on an advance notice: start without asking again. */
  consentedAt?: string;
  /** Notifications shown (advance and at start). */
  notifications: number;
  /**
   * The question on screen, saved before it is shown and removed with its answer: after a
   * kill or a power cut, the next boot shows the same question (same number, same countdown)
   * while its countdown runs, so that the user is not given a new countdown and the server no
   * second notification.
   */
  asking?: { n: number; request: NotificationRequest };
  /** Milliseconds postponed in all (by the user or, without an answer, by policy). */
  postponedMs: number;
  postponedUntil?: string;
  declined?: { at: string; by: 'web' | 'terminal' | 'policy' };
  /** Deployments started for this advertisement, oldest first. */
  runs: {
    deployment: string;
    startedAt: string;
    why: string;
    /** succeeded | failed | rolled-back | vanished; absent while it runs. */
    outcome?: string;
    endedAt?: string;
  }[];
}

/** A failed advertisement is tried again (schedule.rerun "if-failed") at most this many times in all. */
export const MAX_RUNS = 3;

/**
 * When a failed advertisement may run again: `retryAfterMs` after the last run ended, doubled
 * for each failed run before it (15 min, then 30 min by default), so that a machine whose
 * deployment fails does not go back into phase 1 at its very next poll — the administrator has
 * time to see the failure (and halt a wave) before the same cause strikes again.
 */
export function retryAt(rec: AdRecord, retryAfterMs: number): number | undefined {
  const last = rec.runs[rec.runs.length - 1];
  if (!last || last.outcome === undefined || last.outcome === 'succeeded') return undefined;
  const failed = rec.runs.filter((r) => r.outcome !== undefined && r.outcome !== 'succeeded');
  const ended = Date.parse(last.endedAt ?? last.startedAt);
  if (Number.isNaN(ended)) return undefined;
  return ended + retryAfterMs * 2 ** Math.max(0, failed.length - 1);
}

export type Decision =
  | { do: 'nothing'; why: 'declined' | 'deployed' | 'failed-too-often' | 'in-progress' }
  | { do: 'skip-same-image' }
  | {
      do: 'wait';
      why:
        | 'not-yet-available'
        | 'waiting-for-wave'
        | 'postponed'
        | 'maintenance-window'
        | 'retry-later';
      /** Epoch ms when to look again (none: at the next poll). */
      until?: number;
    }
  | { do: 'ask'; request: NotificationRequest }
  | { do: 'start'; why: 'deadline' | 'consented' };

export interface DecideContext {
  now: number;
  /** The image the machine runs (the client's own knowledge). */
  appliedImageId?: string;
  policy: NotificationPolicy;
  schedule: AdSchedule;
}

export function newAdRecord(id: string, now: number): AdRecord {
  return {
    id,
    firstSeenAt: new Date(now).toISOString(),
    notifications: 0,
    postponedMs: 0,
    runs: [],
  };
}

const iso = (t: number) => new Date(t).toISOString();

/** The next time ≥ t inside a maintenance window (t itself when there are none). */
function windowed(s: AdSchedule, t: number): number {
  return nextOpening(s.windows, t) ?? t;
}

export function decide(ad: PolicyAdvertisement, rec: AdRecord, c: DecideContext): Decision {
  const { now, policy: p, schedule: s } = c;
  const last = rec.runs[rec.runs.length - 1];
  if (last && last.outcome === undefined) return { do: 'nothing', why: 'in-progress' };
  if (last) {
    if (s.rerun === 'never') return { do: 'nothing', why: 'deployed' };
    if (s.rerun === 'if-failed' && last.outcome === 'succeeded')
      return { do: 'nothing', why: 'deployed' };
    if (rec.runs.length >= MAX_RUNS && last.outcome !== 'succeeded')
      return { do: 'nothing', why: 'failed-too-often' };
    // rerun "always": on (the same-image rule below ends it).
  }
  if (rec.declined) return { do: 'nothing', why: 'declined' };
  const retry = retryAt(rec, s.retryAfterMs);
  if (retry !== undefined && retry > now) return { do: 'wait', why: 'retry-later', until: retry };
  if (
    ad.state === 'skip-same-image' ||
    (!s.redeploySameImage && c.appliedImageId === ad.package.imageId)
  )
    return { do: 'skip-same-image' };
  if (ad.state === 'waiting-for-wave') return { do: 'wait', why: 'waiting-for-wave' };
  const availableFrom = ad.availableFrom ? Date.parse(ad.availableFrom) : undefined;
  if (ad.state === 'not-yet-available' || (availableFrom !== undefined && availableFrom > now)) {
    // Advance notice may come before the advertisement is available.
    if (
      p.preNotificationMs &&
      !rec.preNotified &&
      availableFrom !== undefined &&
      availableFrom - p.preNotificationMs <= now
    )
      return { do: 'ask', request: request(ad, rec, p, now, windowed(s, availableFrom)) };
    return {
      do: 'wait',
      why: 'not-yet-available',
      ...(availableFrom !== undefined && availableFrom > now ? { until: availableFrom } : {}),
    };
  }
  const opensAt = nextOpening(s.windows, now);
  // The deadline ends asking — but never overrides "permission required" (nothing installs
  // without a yes) nor the maintenance windows.
  if (p.deadline !== undefined && p.deadline <= now && !p.requireUserPermission) {
    if (opensAt !== undefined) return { do: 'wait', why: 'maintenance-window', until: opensAt };
    return { do: 'start', why: 'deadline' };
  }
  if (p.preNotificationMs && !rec.preNotified) {
    const at = Math.min(now + p.preNotificationMs, p.deadline ?? Infinity);
    return { do: 'ask', request: request(ad, rec, p, now, windowed(s, Math.max(at, now))) };
  }
  let startAt = Math.max(
    rec.postponedUntil ? Date.parse(rec.postponedUntil) : -Infinity,
    rec.preNotified && !rec.consentedAt ? Date.parse(rec.preNotified.startsAt) : -Infinity,
  );
  // The deadline ends a postponement — except with permission required, where it changes nothing.
  if (p.deadline !== undefined && !p.requireUserPermission) startAt = Math.min(startAt, p.deadline);
  if (startAt > now) return { do: 'wait', why: 'postponed', until: startAt };
  if (opensAt !== undefined) return { do: 'wait', why: 'maintenance-window', until: opensAt };
  if (rec.consentedAt) return { do: 'start', why: 'consented' };
  return { do: 'ask', request: request(ad, rec, p, now) };
}

/** Postponement still allowed, in ms (0: none left). */
function postponementLeft(p: NotificationPolicy, rec: AdRecord): number {
  return Math.max(0, p.postponementMaximumMs - rec.postponedMs);
}

/** The latest "later" the user may choose now: the budget left, and never past the deadline. */
function laterUntilMax(p: NotificationPolicy, rec: AdRecord, now: number): number {
  return Math.min(now + postponementLeft(p, rec), p.deadline ?? Infinity);
}

/** A notification: `startsAt` given makes it the advance notice (kind `pre`). */
export function request(
  ad: PolicyAdvertisement,
  rec: AdRecord,
  p: NotificationPolicy,
  now: number,
  startsAt?: number,
): NotificationRequest {
  const laterMax = laterUntilMax(p, rec, now);
  const later = laterMax > now;
  const deadline = p.deadline !== undefined && p.deadline > now ? p.deadline : Infinity;
  const countdownEndsAt =
    startsAt !== undefined ? Math.max(startsAt, now) : Math.min(now + p.countdownMs, deadline);
  return {
    advertisementId: ad.id,
    advertisementName: ad.name,
    packageName: ad.package.name,
    packageVersion: ad.package.version,
    kind: startsAt !== undefined ? 'pre' : 'start',
    ...(p.message ? { message: p.message } : {}),
    countdownEndsAt: iso(countdownEndsAt),
    ...(startsAt !== undefined ? { startsAt: iso(Math.max(startsAt, now)) } : {}),
    buttons: { now: true, later, decline: p.allowDecline },
    ...(later ? { laterUntilMax: iso(laterMax) } : {}),
    whenNoAnswer: p.whenNoAnswer,
    requireUserPermission: p.requireUserPermission,
    ...(p.deadline !== undefined ? { deadline: iso(p.deadline) } : {}),
  };
}

/** What an answer does: the record's new state, the status message that reports it, start or not. */
export interface AnswerOutcome {
  record: AdRecord;
  status: { id: number; properties: Record<string, unknown> };
  start: boolean;
}

/**
 * Applies the user's answer (or its absence) to the record. An answer with a button the
 * request did not offer, or a "later" that is not in the future, counts as no answer.
 * No answer: `pre` keeps the schedule; `start` follows `whenNoAnswer` — `postpone` waits
 * another countdown (at least `pollMs`) within the postponement budget; with the budget spent
 * it installs, unless permission is required (then it asks again at the next poll, forever:
 * nothing installs without a yes).
 */
export function applyAnswer(
  req: NotificationRequest,
  answer: NotificationAnswer,
  rec0: AdRecord,
  p: NotificationPolicy,
  now: number,
  pollMs: number,
): AnswerOutcome {
  const rec: AdRecord = structuredClone(rec0);
  const kind = req.kind;
  if (kind === 'pre') rec.preNotified = { at: iso(now), startsAt: req.startsAt ?? iso(now) };
  const base = { kind, at: answer.at };
  if (answer.choice === 'now' && req.buttons.now) {
    if (kind === 'pre') rec.consentedAt = answer.at;
    return {
      record: rec,
      status: { id: 2002, properties: { ...base, choice: 'now', by: answer.by } },
      start: kind === 'start',
    };
  }
  if (answer.choice === 'later' && req.buttons.later) {
    const wanted = Date.parse(answer.until);
    if (Number.isFinite(wanted) && wanted > now) {
      const until = Math.min(wanted, laterUntilMax(p, rec, now));
      rec.postponedMs += until - now;
      rec.postponedUntil = iso(until);
      delete rec.consentedAt;
      return {
        record: rec,
        status: {
          id: 2003,
          properties: {
            ...base,
            choice: 'later',
            by: answer.by,
            until: iso(until),
            ...(until < wanted ? { asked: answer.until } : {}),
          },
        },
        start: false,
      };
    }
  }
  if (answer.choice === 'decline' && req.buttons.decline) {
    rec.declined = { at: answer.at, by: answer.by };
    return {
      record: rec,
      status: { id: 2004, properties: { ...base, choice: 'decline', by: answer.by } },
      start: false,
    };
  }
  // No (usable) answer.
  const none = (outcome: string, extra: Record<string, unknown> = {}) => ({
    id: 2005,
    properties: {
      ...base,
      choice: 'none',
      outcome,
      ...(answer.choice !== 'none' ? { ignored: answer.choice } : {}),
      ...extra,
    },
  });
  if (kind === 'pre') return { record: rec, status: none('kept as scheduled'), start: false };
  switch (p.whenNoAnswer) {
    case 'install':
      return { record: rec, status: none('started'), start: true };
    case 'decline':
      rec.declined = { at: answer.at, by: 'policy' };
      return { record: rec, status: none('declined'), start: false };
    case 'postpone': {
      const room = laterUntilMax(p, rec, now) - now;
      if (room <= 0 && !p.requireUserPermission)
        return {
          record: rec,
          status: none('started', { reason: 'postponement maximum reached' }),
          start: true,
        };
      let until: number;
      if (room > 0) {
        until = now + Math.min(Math.max(p.countdownMs, pollMs), room);
        rec.postponedMs += until - now;
      } else {
        until = now + pollMs; // permission required: ask again, forever
      }
      rec.postponedUntil = iso(until);
      return { record: rec, status: none('postponed', { until: iso(until) }), start: false };
    }
  }
}
