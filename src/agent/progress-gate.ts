/**
 * When a long step reports its progress as a status message: at each tenth passed, at most one
 * per `everyMs` — a modest rate however fast or slow the step. Returns the tenth (1-9) to
 * report, or undefined. The first report comes at a tenth (0 % is the step's start message) and
 * 100 % is the step's done message, so neither is reported here.
 */
export function progressGate(
  everyMs: number,
  now: () => number = Date.now,
): (fraction: number) => number | undefined {
  let lastAt = -Infinity;
  let lastTenth = 0;
  return (fraction) => {
    const tenth = Math.min(9, Math.floor((Number.isFinite(fraction) ? fraction : 0) * 10));
    const t = now();
    if (tenth <= lastTenth || t - lastAt < everyMs) return undefined;
    lastTenth = tenth;
    lastAt = t;
    return tenth;
  };
}
