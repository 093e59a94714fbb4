import { ReimageError } from '../errors.js';

/** A daily time window, in the server's local time; `from` > `to` runs past midnight. */
export interface TransferWindow {
  /** Days the window opens on (mon…sun); all days when absent. */
  days?: string[];
  /** HH:MM */
  from: string;
  /** HH:MM; equal to `from` means the whole day. */
  to: string;
}

/** Time as the replication sees it: injectable so tests do not wait for real windows. */
export interface Clock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const t = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      const onAbort = () => {
        clearTimeout(t);
        reject(signal?.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
    }),
};

const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];

function minutes(hhmm: string): number {
  const m = /^([01]\d|2[0-3]):([0-5]\d)$/.exec(hhmm);
  if (!m)
    throw new ReimageError('INVALID_ARGUMENT', `${JSON.stringify(hhmm)} is not a time (HH:MM)`);
  return Number(m[1]) * 60 + Number(m[2]);
}

/**
 * When the next window opens, or undefined when `now` is inside one (or there are no
 * windows: always open). Local time, day by day, so daylight-saving days come out right.
 */
export function nextOpening(
  windows: TransferWindow[] | undefined,
  now: number,
): number | undefined {
  if (!windows || windows.length === 0) return undefined;
  let best = Infinity;
  const today = new Date(now);
  today.setHours(0, 0, 0, 0);
  for (let k = -1; k <= 8; k++) {
    const day = new Date(today);
    day.setDate(today.getDate() + k);
    for (const w of windows) {
      if (w.days && w.days.length > 0 && !w.days.includes(DAYS[day.getDay()]!)) continue;
      const from = minutes(w.from);
      const to = minutes(w.to);
      const start = new Date(day);
      start.setHours(Math.floor(from / 60), from % 60, 0, 0);
      const end = new Date(day);
      if (to <= from) end.setDate(end.getDate() + 1);
      end.setHours(Math.floor(to / 60), to % 60, 0, 0);
      if (start.getTime() <= now && now < end.getTime()) return undefined;
      if (start.getTime() > now) best = Math.min(best, start.getTime());
    }
  }
  if (best === Infinity) {
    throw new ReimageError('INVALID_ARGUMENT', 'the transfer windows never open (no day matches)');
  }
  return best;
}

/** HH:MM of a time, local. */
export function clockTime(t: number): string {
  const d = new Date(t);
  return `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
}
