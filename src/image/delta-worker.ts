/** A delta worker: makes the delta chunks of files for a capture (src/image/delta-capture.ts). */
import { parentPort, workerData } from 'node:worker_threads';
import { DeltaMaker, type DeltaTask, type DeltaWorkerData } from './delta-capture.js';
import type { PoolReply, PoolRequest } from './pool.js';

const port = parentPort!;
const maker = new DeltaMaker(workerData as DeltaWorkerData);
port.on('message', (m: PoolRequest<DeltaTask>) => {
  if (m.type === 'finish') {
    maker.close();
    port.postMessage({ type: 'finished' } satisfies PoolReply);
    return;
  }
  for (const t of m.items) port.postMessage({ type: 'delta-file', result: maker.file(t) });
  port.postMessage({ type: 'batch-done' } satisfies PoolReply);
});
