import { Worker } from 'node:worker_threads';

/**
 * Hands batches of work to a few worker threads, two batches in flight per worker so that
 * none waits for the main thread. Workers answer each `batch` with `batch-done` and the
 * final `finish` with `finished`; every other message goes to `onMessage`, which may throw
 * to stop the whole pool.
 */
export type PoolRequest<T> = { type: 'batch'; items: T[] } | { type: 'finish' };
export type PoolReply = { type: 'batch-done' } | { type: 'finished' };

/** Batches for a pool, which may still be arriving while the pool runs. */
export class BatchQueue<T> {
  private readonly items: T[][] = [];
  private head = 0;
  closed = false;
  /** set by runPool: called when batches arrive or the queue closes */
  onChange: () => void = () => {};

  constructor(batches?: T[][]) {
    if (batches) {
      this.items.push(...batches);
      this.closed = true;
    }
  }

  push(b: T[]): void {
    this.items.push(b);
    this.onChange();
  }

  /** Hands this batch out next (long jobs first keeps workers busy until the end). */
  pushFront(b: T[]): void {
    if (this.head > 0) this.items[--this.head] = b;
    else this.items.unshift(b);
    this.onChange();
  }

  close(): void {
    this.closed = true;
    this.onChange();
  }

  take(): T[] | undefined {
    if (this.head >= this.items.length) return undefined;
    const b = this.items[this.head]!;
    this.items[this.head++] = [];
    return b;
  }

  get drained(): boolean {
    return this.closed && this.head >= this.items.length;
  }
}

export async function runPool<T, M extends { type: string }>(opts: {
  script: URL;
  workerData: unknown;
  workers: number;
  batches: T[][] | BatchQueue<T>;
  signal?: AbortSignal | undefined;
  cancelled: () => Error;
  onMessage: (m: M) => void;
}): Promise<void> {
  const queue = opts.batches instanceof BatchQueue ? opts.batches : new BatchQueue(opts.batches);
  const n = Math.max(
    1,
    opts.batches instanceof BatchQueue ? opts.workers : Math.min(opts.workers, opts.batches.length),
  );
  const workers: Worker[] = [];
  const feeders: Array<() => void> = [];
  queue.onChange = () => feeders.forEach((f) => f());
  try {
    await new Promise<void>((resolve, reject) => {
      let finished = 0;
      let failed = false;
      const fail = (e: unknown) => {
        if (failed) return;
        failed = true;
        opts.signal?.removeEventListener('abort', onAbort);
        reject(e);
      };
      const onAbort = () => fail(opts.cancelled());
      if (opts.signal?.aborted) return onAbort();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      for (let w = 0; w < n; w++) {
        const worker = new Worker(opts.script, { workerData: opts.workerData });
        workers.push(worker);
        let inFlight = 0;
        let finishing = false;
        const feed = () => {
          if (failed || finishing) return;
          while (inFlight < 2) {
            const b = queue.take();
            if (!b) break;
            inFlight++;
            worker.postMessage({ type: 'batch', items: b } satisfies PoolRequest<T>);
          }
          if (inFlight === 0 && queue.drained) {
            finishing = true;
            worker.postMessage({ type: 'finish' } satisfies PoolRequest<T>);
          }
        };
        feeders.push(feed);
        worker.on('message', (m: M | PoolReply) => {
          if (failed) return;
          try {
            if (m.type === 'batch-done') {
              inFlight--;
              feed();
            } else if (m.type === 'finished') {
              if (++finished === n) {
                opts.signal?.removeEventListener('abort', onAbort);
                resolve();
              }
            } else {
              opts.onMessage(m as M);
            }
          } catch (e) {
            fail(e);
          }
        });
        worker.on('error', fail);
        worker.on('exit', (code) => {
          if (code !== 0 && !failed && finished < n)
            fail(new Error(`worker exited with code ${code}`));
        });
        feed();
      }
    });
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

/** Cuts items into batches of at most `maxItems` items or about `maxWeight` weight. */
export function batch<T>(
  items: T[],
  weight: (t: T) => number,
  maxItems: number,
  maxWeight: number,
): T[][] {
  const out: T[][] = [];
  let cur: T[] = [];
  let w = 0;
  for (const t of items) {
    cur.push(t);
    w += weight(t);
    if (cur.length >= maxItems || w >= maxWeight) {
      out.push(cur);
      cur = [];
      w = 0;
    }
  }
  if (cur.length) out.push(cur);
  return out;
}
