/**
 * A capture worker: reads files, cuts them into chunks, hashes them, and compresses the
 * chunks the store lacks into frames. One per core; the main thread walks the tree and
 * writes the frames into packs.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { closeSync, constants, openSync, readSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { FrameBuilder, type Frame } from '../content/pack.js';
import { sortedHashesHas } from '../content/store.js';
import { hashKey } from '../content/digest.js';
import { cdcChunks, dataSegments } from './posix.js';
import type { PoolReply, PoolRequest } from './pool.js';

export interface FileTask {
  i: number;
  path: Uint8Array;
  size: number;
  /** st_blocks * 512 < size: worth asking for the data regions */
  maybeSparse: boolean;
}

export type FromWorker =
  | { type: 'frame'; frame: Frame }
  | { type: 'files'; results: FileResult[] }
  | { type: 'file-error'; i: number; code: string; message: string }
  | { type: 'progress'; bytes: number };

export interface FileResult {
  i: number;
  chunks: Uint8Array;
  lengths: number[];
  segments: Array<[number, number]> | undefined;
  changed: boolean;
}

export interface CaptureWorkerData {
  known: SharedArrayBuffer;
  level: number;
}

const READ_BUF = 8 * 1024 * 1024;
const PROGRESS_EVERY = 16 * 1024 * 1024;

function main(): void {
  const port = parentPort!;
  const data = workerData as CaptureWorkerData;
  const known = new Uint8Array(data.known);
  const seen = new Set<string>();
  const post = (m: FromWorker | PoolReply, transfer?: ArrayBuffer[]) =>
    port.postMessage(m, transfer ?? []);
  const frames = new FrameBuilder((frame) => post({ type: 'frame', frame }), data.level);
  const buf = Buffer.allocUnsafe(READ_BUF);
  const cuts = new Uint32Array(1024);
  let unreported = 0;
  let noatime = true;
  const probe = Buffer.alloc(1);
  let results: FileResult[] = [];
  let transfer: ArrayBuffer[] = [];

  const onChunk = (chunk: Buffer, hashes: Buffer[], lengths: number[]) => {
    const hash = createHash('sha256').update(chunk).digest();
    hashes.push(hash);
    lengths.push(chunk.length);
    const k = hashKey(hash);
    if (seen.has(k) || sortedHashesHas(known, hash)) return;
    seen.add(k);
    frames.add(hash, chunk);
  };

  const readRegion = (
    fd: number,
    start: number,
    length: number,
    hashes: Buffer[],
    lengths: number[],
  ): number => {
    let filled = 0;
    let pos = 0;
    let off = start;
    let remaining = length;
    for (;;) {
      while (filled < buf.length && remaining > 0) {
        const n = readSync(fd, buf, filled, Math.min(buf.length - filled, remaining), off);
        if (n === 0) {
          // Shrank under us: what was read is chunked as the end of the region.
          remaining = 0;
          break;
        }
        filled += n;
        off += n;
        remaining -= n;
        unreported += n;
      }
      const eof = remaining === 0;
      // Cut points come from the C version of the chunker (same boundaries as cutPoint).
      for (;;) {
        const n = cdcChunks(buf, pos, filled, eof, cuts);
        for (let k = 0; k < n; k++) {
          const len = cuts[k]!;
          onChunk(buf.subarray(pos, pos + len), hashes, lengths);
          pos += len;
        }
        if (n < cuts.length) break;
      }
      if (unreported >= PROGRESS_EVERY) {
        post({ type: 'progress', bytes: unreported });
        unreported = 0;
      }
      if (eof && pos === filled) return off - start;
      buf.copy(buf, 0, pos, filled);
      filled -= pos;
      pos = 0;
    }
  };

  const captureFile = (t: FileTask) => {
    const path = Buffer.from(t.path);
    let fd: number;
    try {
      try {
        fd = openSync(
          path,
          constants.O_RDONLY | constants.O_NOFOLLOW | (noatime ? constants.O_NOATIME : 0),
        );
      } catch (e) {
        if (!noatime || (e as NodeJS.ErrnoException).code !== 'EPERM') throw e;
        noatime = false; // O_NOATIME needs ownership or CAP_FOWNER
        fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
      }
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      post({ type: 'file-error', i: t.i, code: err.code ?? 'EIO', message: err.message });
      return;
    }
    try {
      const segments = t.maybeSparse ? dataSegments(fd, t.size) : undefined;
      const sparse =
        segments && !(segments.length === 1 && segments[0]![0] === 0 && segments[0]![1] === t.size);
      const regions: Array<[number, number]> = sparse ? segments : [[0, t.size]];
      const hashes: Buffer[] = [];
      const lengths: number[] = [];
      let whole = true;
      // The regions as read: a file that shrank keeps only what was there (and a consistent
      // manifest: chunk lengths always add up to the regions).
      const read: Array<[number, number]> = [];
      for (const [start, len] of regions) {
        if (len === 0) continue;
        const got = readRegion(fd, start, len, hashes, lengths);
        if (got > 0) read.push([start, got]);
        if (got < len) {
          whole = false;
          break;
        }
      }
      // Grown since the walk? One byte past the end tells, cheaper than another fstat.
      const grown = readSync(fd, probe, 0, 1, t.size) > 0;
      // A fresh ArrayBuffer (not Node's shared pool) so that it can be transferred.
      const chunks = new Uint8Array(hashes.length * 32);
      hashes.forEach((h, n) => chunks.set(h, n * 32));
      results.push({
        i: t.i,
        chunks,
        lengths,
        segments: sparse ? read : undefined,
        changed: !whole || grown,
      });
      transfer.push(chunks.buffer);
    } catch (e) {
      const err = e as NodeJS.ErrnoException;
      post({ type: 'file-error', i: t.i, code: err.code ?? 'EIO', message: err.message });
    } finally {
      closeSync(fd);
    }
  };

  port.on('message', (m: PoolRequest<FileTask>) => {
    if (m.type === 'batch') {
      for (const t of m.items) captureFile(t);
      // One message per batch: a message per file costs more than hashing a small file.
      post({ type: 'files', results }, transfer);
      results = [];
      transfer = [];
      if (unreported > 0) {
        post({ type: 'progress', bytes: unreported });
        unreported = 0;
      }
      post({ type: 'batch-done' });
    } else {
      frames.flush();
      post({ type: 'finished' });
    }
  });
}

main();
