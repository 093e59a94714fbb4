/**
 * Failpoints for the kill tests: `REIMAGE_FAILPOINTS="swap.rename=3,apply.progress=5"` makes
 * the agent kill itself with SIGKILL (a real kill: no cleanup, no flush) the 3rd time it reaches
 * `swap.rename`, and so on. Without the variable a failpoint is one map lookup. The points sit
 * inside steps' effects — between two renames of the swap, after some files of an apply — where
 * a timer could not aim.
 */
const armed = parse(process.env['REIMAGE_FAILPOINTS']);
const hits = new Map<string, number>();

function parse(spec: string | undefined): Map<string, number> {
  const m = new Map<string, number>();
  for (const part of (spec ?? '').split(',')) {
    const [name, n] = part.split('=');
    if (name && n && Number.isSafeInteger(Number(n))) m.set(name.trim(), Number(n));
  }
  return m;
}

export function failpoint(name: string): void {
  const at = armed.get(name);
  if (at === undefined) return;
  const n = (hits.get(name) ?? 0) + 1;
  hits.set(name, n);
  if (n === at) process.kill(process.pid, 'SIGKILL');
}
