import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ReimageError } from '../errors.js';

/**
 * Store locks are files in `locks/`, so that they work on any shared folder (no flock over
 * SMB or HTTP). Captures, applies and deletes take a shared lock; garbage collection takes an
 * exclusive one. Taking a lock writes our file first and then looks at the others, so two
 * racing takers both see each other and back off (then retry), never both proceed.
 */
export type LockKind = 'shared' | 'exclusive';

interface LockFile {
  kind: LockKind;
  pid: number;
  host: string;
  purpose: string;
  created: string;
  refreshed: string;
}

/** A lock older than this without a refresh is considered abandoned (holders refresh every minute). */
const STALE_MS = 10 * 60 * 1000;
const REFRESH_MS = 60 * 1000;

export interface HeldLock {
  release(): void;
  /** Throws STORE_BUSY if the lock file was removed (declared abandoned) since it was taken. */
  check(): void;
}

export interface LockHolder {
  file: string;
  kind: LockKind;
  pid: number;
  host: string;
  purpose: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Other lock holders, with abandoned locks of this host's dead processes removed. */
export function lockHolders(dir: string, except?: string): LockHolder[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return [];
  }
  const out: LockHolder[] = [];
  for (const name of names) {
    if (!name.endsWith('.json') || name.startsWith('.') || name === except) continue;
    const file = join(dir, name);
    let lf: LockFile;
    try {
      lf = JSON.parse(readFileSync(file, 'utf8')) as LockFile;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // just released
      // Being written right now, or left half-written by a crash: a holder we cannot name
      // conflicts with everyone until it is old enough to be abandoned.
      let age = 0;
      try {
        age = Date.now() - statSync(file).mtimeMs;
      } catch {
        continue;
      }
      if (age > STALE_MS) {
        rmSync(file, { force: true });
        continue;
      }
      out.push({
        file: name,
        kind: 'exclusive',
        pid: 0,
        host: 'unknown',
        purpose: 'a lock being written',
      });
      continue;
    }
    // On this host, only a dead process abandons a lock (a stopped or suspended one still
    // holds it); another host's lock is abandoned when it has not been refreshed for a while.
    const stale =
      lf.host === hostname() ? !alive(lf.pid) : Date.now() - Date.parse(lf.refreshed) > STALE_MS;
    if (stale) {
      rmSync(file, { force: true });
      continue;
    }
    out.push({ file: name, kind: lf.kind, pid: lf.pid, host: lf.host, purpose: lf.purpose });
  }
  return out;
}

export async function acquireLock(
  dir: string,
  kind: LockKind,
  purpose: string,
  opts: { waitMs?: number; onWait?: (holders: LockHolder[]) => void } = {},
): Promise<HeldLock> {
  mkdirSync(dir, { recursive: true });
  const name = `${randomUUID()}.json`;
  const file = join(dir, name);
  const deadline = Date.now() + (opts.waitMs ?? 0);
  let told = false;
  for (let attempt = 0; ; attempt++) {
    const now = new Date().toISOString();
    const body: LockFile = {
      kind,
      pid: process.pid,
      host: hostname(),
      purpose,
      created: now,
      refreshed: now,
    };
    writeFileSync(file, JSON.stringify(body), { flag: 'wx' });
    const conflicts = lockHolders(dir, name).filter(
      (h) => kind === 'exclusive' || h.kind === 'exclusive',
    );
    if (conflicts.length === 0) {
      const timer = setInterval(() => {
        body.refreshed = new Date().toISOString();
        // Never bring back a lock that someone declared abandoned: check() reports it.
        if (!existsSync(file)) return;
        try {
          // Rename over the lock, never rewrite it in place: a reader must never see it empty.
          const tmp = join(dir, `.${name}.refresh`);
          writeFileSync(tmp, JSON.stringify(body));
          renameSync(tmp, file);
        } catch {
          /* store gone: nothing left to protect */
        }
      }, REFRESH_MS);
      timer.unref();
      return {
        release() {
          clearInterval(timer);
          rmSync(file, { force: true });
        },
        check() {
          if (!existsSync(file)) {
            throw new ReimageError(
              'STORE_BUSY',
              `our ${kind} lock on the store (${purpose}) was removed as abandoned; nothing was recorded`,
            );
          }
        },
      };
    }
    rmSync(file, { force: true });
    if (Date.now() >= deadline) {
      const who = conflicts.map((c) => `${c.purpose} (pid ${c.pid} on ${c.host})`).join(', ');
      throw new ReimageError('STORE_BUSY', `the store is in use by ${who}`, {
        details: { holders: conflicts },
      });
    }
    if (!told) {
      opts.onWait?.(conflicts);
      told = true;
    }
    // Back off with jitter so that two racing takers do not collide forever.
    await sleep(Math.min(1000, 50 * 2 ** Math.min(attempt, 5)) * (0.5 + Math.random()));
  }
}
