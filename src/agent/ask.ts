/**
 * Asking the machine's user about a deployment: the interface between the client daemon
 * (src/agent/daemon.ts), which owns the policy — which buttons, how long, what no answer
 * means — and a user interface (the loopback web page and the terminal prompt of
 * src/agent/notify.ts), which only shows the request and brings back the choice.
 */

/** What the user is shown. */
export interface NotificationRequest {
  advertisementId: string;
  advertisementName: string;
  packageName: string;
  packageVersion: string;
  /** `pre`: advance notice of a start at `startsAt`; `start`: the deployment is about to start. */
  kind: 'pre' | 'start';
  /** The administrator's custom message (the standard text when absent). */
  message?: string;
  /** ISO time when the countdown ends and `whenNoAnswer` applies. */
  countdownEndsAt: string;
  /** `pre`: when the deployment is scheduled to start. */
  startsAt?: string;
  /** The buttons the policy allows. */
  buttons: { now: boolean; later: boolean; decline: boolean };
  /** The latest time "Install later" may choose (postponement budget and deadline). */
  laterUntilMax?: string;
  whenNoAnswer: 'install' | 'postpone' | 'decline';
  requireUserPermission: boolean;
  /** ISO time of the mandatory deadline, if any. */
  deadline?: string;
}

export type NotificationAnswer =
  | { choice: 'now'; at: string; by: 'web' | 'terminal' }
  | { choice: 'later'; until: string; at: string; by: 'web' | 'terminal' }
  | { choice: 'decline'; at: string; by: 'web' | 'terminal' }
  | { choice: 'none'; at: string };

/**
 * Shows a request and resolves with the user's answer, or `none` when the countdown ends
 * first. `root` is the machine's disk root; `signal` aborts the question (the agent stops);
 * `now` is the agent's clock.
 */
export type AskUser = (
  req: NotificationRequest,
  o: { root: string; signal?: AbortSignal; now?: () => Date },
) => Promise<NotificationAnswer>;

/** No user interface: waits for the countdown's end and answers 'none'. */
export const noUserInterface: AskUser = async (req, o) => {
  const now = o.now ?? (() => new Date());
  // Measured once on the agent's clock, waited in real time, in steps (a timer holds at
  // most about 24 days).
  for (let ms = Date.parse(req.countdownEndsAt) - now().getTime(); ms > 0; ms -= 86_400_000)
    await sleep(Math.min(ms, 86_400_000), o.signal);
  return { choice: 'none', at: now().toISOString() };
};

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
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
  });
}
