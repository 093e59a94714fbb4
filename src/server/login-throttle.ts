/**
 * Slows password guessing at `POST /api/v1/auth/login`: failed logins are counted per client
 * address and per username over a sliding window; past a limit, further attempts for that
 * address or username are refused (429 LOGIN_THROTTLED, with Retry-After) **without checking
 * the password**, until the oldest counted failure leaves the window. A success clears that
 * username's and address's counts.
 *
 * The username limit is a throttle, not a lockout: an attacker can keep the real admin out for
 * at most one window at a time, and only by spending `perUser` guesses each time. The counts
 * live in the process (several servers behind a balancer each count on their own, so the
 * effective limit is multiplied by their number; documented in docs/server.md).
 */
export interface LoginThrottleOptions {
  /** Failures per username in the window (default 10). */
  perUser?: number;
  /** Failures per client address in the window (default 30). */
  perAddress?: number;
  /** The window, in ms (default 15 min). */
  windowMs?: number;
  now?: () => number;
}

/** Keys tracked at most; the oldest are dropped past it, so a flood cannot exhaust memory. */
const MAX_KEYS = 50_000;

export class LoginThrottle {
  private readonly failures = new Map<string, number[]>();
  private readonly perUser: number;
  private readonly perAddress: number;
  private readonly windowMs: number;
  private readonly now: () => number;

  constructor(o: LoginThrottleOptions = {}) {
    this.perUser = o.perUser ?? 10;
    this.perAddress = o.perAddress ?? 30;
    this.windowMs = o.windowMs ?? 15 * 60_000;
    this.now = o.now ?? Date.now;
  }

  /** Seconds to wait before trying again, or 0 when an attempt may go ahead. */
  retryAfter(username: string, address: string): number {
    const t = this.now();
    const wait = (key: string, limit: number) => {
      const list = this.recent(key, t);
      return list.length < limit ? 0 : Math.ceil((list[0]! + this.windowMs - t) / 1000);
    };
    return Math.max(
      wait(userKey(username), this.perUser),
      wait(addressKey(address), this.perAddress),
      0,
    );
  }

  failed(username: string, address: string): void {
    const t = this.now();
    for (const key of [userKey(username), addressKey(address)]) {
      const list = this.recent(key, t);
      list.push(t);
      // Re-insert so that the Map's order is least recently failed first.
      this.failures.delete(key);
      this.failures.set(key, list);
    }
    while (this.failures.size > MAX_KEYS)
      this.failures.delete(this.failures.keys().next().value as string);
  }

  succeeded(username: string, address: string): void {
    this.failures.delete(userKey(username));
    this.failures.delete(addressKey(address));
  }

  private recent(key: string, t: number): number[] {
    const list = (this.failures.get(key) ?? []).filter((x) => x > t - this.windowMs);
    if (list.length === 0) this.failures.delete(key);
    else this.failures.set(key, list);
    return list;
  }
}

const userKey = (u: string) => `u:${u}`;
const addressKey = (a: string) => `a:${a}`;
