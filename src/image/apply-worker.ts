/**
 * An apply worker: writes regular files. Each chunk is cut out of its decompressed frame and
 * checked against its hash before a single byte of it reaches the file.
 */
import { parentPort, workerData } from 'node:worker_threads';
import {
  closeSync,
  constants,
  fchmodSync,
  fchownSync,
  ftruncateSync,
  linkSync,
  lstatSync,
  openSync,
  unlinkSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { Decompressor } from 'zstd-napi';
import { PackReader, writeAll } from '../content/store.js';
import { decompressBounded, MAX_FRAME_RAW } from '../content/pack.js';
import { futimensNs, setXattr } from './posix.js';
import { matchesEntry } from './reuse-check.js';
import type { PoolReply, PoolRequest } from './pool.js';

export interface FileJob {
  i: number;
  path: Uint8Array;
  /** printable path for messages */
  show: string;
  size: number;
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: bigint;
  xattrs: Array<[Uint8Array, Uint8Array]>;
  segments: Array<[number, number]> | undefined;
  chunks: Uint8Array;
  lengths: number[];
  /** per chunk: pack number, frame offset, frame length, offset in frame */
  locs: Float64Array;
  /**
   * A file of another tree on the same filesystem (the old OS) that may hold exactly this
   * file: hard-linked instead of written when its content hashes to `chunks` and its
   * metadata equals the entry's (see `reuseFile`).
   */
  reuse?: Uint8Array;
}

export type FromApplyWorker =
  | { type: 'files-done'; files: number[]; bytes: number; reused: number[]; reusedBytes: number }
  | { type: 'file-failed'; i: number; code: string; message: string; chunk?: string }
  | { type: 'warning'; i: number; code: string; message: string };

export interface ApplyWorkerData {
  packPaths: string[];
  owners: boolean;
}

const FRAME_CACHE = 8;

class Failure extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly chunk?: string,
  ) {
    super(message);
  }
}

function main(): void {
  const port = parentPort!;
  const data = workerData as ApplyWorkerData;
  const packs = new PackReader(data.packPaths);
  const dz = new Decompressor();
  const cache = new Map<string, Buffer>();
  const post = (m: FromApplyWorker | PoolReply) => port.postMessage(m);

  const frame = (pack: number, off: number, len: number): Buffer => {
    const key = `${pack}:${off}`;
    let raw = cache.get(key);
    if (raw) {
      cache.delete(key);
      cache.set(key, raw);
      return raw;
    }
    const z = packs.readFrame(pack, off, len);
    try {
      raw = decompressBounded(dz, z, MAX_FRAME_RAW, `frame at ${off}`);
    } catch (e) {
      throw new Failure(
        'CHUNK_CORRUPT',
        `frame at ${off} of pack ${data.packPaths[pack]} does not decompress: ${(e as Error).message}`,
      );
    }
    cache.set(key, raw);
    if (cache.size > FRAME_CACHE) cache.delete(cache.keys().next().value!);
    return raw;
  };

  const uid = process.getuid?.() ?? -1;
  const gid = process.getgid?.() ?? -1;

  /**
   * Hard-links `j.reuse` to the file's place when it is exactly the file to write: a regular
   * file with no other name (so nothing outside the OS shares its inode), the entry's size,
   * mode, owner, mtime and xattrs, and bytes whose chunks hash to the entry's chunk list.
   * Any doubt: false, and the file is written as usual.
   */
  const reuseFile = (j: FileJob): boolean => {
    if (!j.reuse) return false;
    const from = Buffer.from(j.reuse);
    const owner: [number, number] = data.owners ? [j.uid, j.gid] : [uid, gid];
    const found = matchesEntry(from, j, owner, true);
    if (!found) return false;
    const to = Buffer.from(j.path);
    try {
      linkSync(from, to);
    } catch {
      return false; // another filesystem (EXDEV), too many links, ...: written instead
    }
    // The name now in the target must be the inode that was checked.
    const placed = lstatSync(to, { bigint: true });
    if (placed.ino !== found.ino || placed.dev !== found.dev) {
      unlinkSync(to);
      return false;
    }
    return true;
  };

  const writeFile = (j: FileJob) => {
    const path = Buffer.from(j.path);
    // O_EXCL + O_NOFOLLOW: never write through anything that was already there.
    const fd = openSync(
      path,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    );
    try {
      const regions = j.segments ?? [[0, j.size]];
      let r = 0;
      let pos = regions[0]?.[0] ?? 0;
      let regionEnd = pos + (regions[0]?.[1] ?? 0);
      for (let c = 0; c < j.lengths.length; c++) {
        const len = j.lengths[c]!;
        const pack = j.locs[c * 4]!;
        const raw = frame(pack, j.locs[c * 4 + 1]!, j.locs[c * 4 + 2]!);
        const off = j.locs[c * 4 + 3]!;
        const want = j.chunks.subarray(c * 32, c * 32 + 32);
        const hex = Buffer.from(want).toString('hex');
        if (off + len > raw.length) {
          throw new Failure(
            'CHUNK_CORRUPT',
            `chunk ${hex} of ${j.show} lies beyond its frame`,
            hex,
          );
        }
        const bytes = raw.subarray(off, off + len);
        const got = createHash('sha256').update(bytes).digest();
        if (!got.equals(want)) {
          throw new Failure(
            'CHUNK_CORRUPT',
            `chunk ${hex} of ${j.show} is corrupt: its bytes hash to ${got.toString('hex')}`,
            hex,
          );
        }
        // Chunks never cross a data region: capture cuts each region on its own.
        while (pos >= regionEnd && r + 1 < regions.length) {
          r++;
          pos = regions[r]![0];
          regionEnd = pos + regions[r]![1];
        }
        writeAll(fd, bytes, pos);
        pos += len;
      }
      if (j.segments) ftruncateSync(fd, j.size);
      if (data.owners) fchownSync(fd, j.uid, j.gid);
      for (const [name, value] of j.xattrs) {
        try {
          setXattr(path, Buffer.from(name), value);
        } catch (e) {
          const err = e as NodeJS.ErrnoException;
          if (data.owners) throw e;
          post({
            type: 'warning',
            i: j.i,
            code: 'XATTR_SKIPPED',
            message: `${j.show}: xattr ${Buffer.from(name).toString()} not set: ${err.message}`,
          });
        }
      }
      // After chown (which clears setuid/setgid bits) and after the xattrs (a read-only mode
      // would stop them when not root).
      fchmodSync(fd, j.mode);
      futimensNs(fd, j.mtimeNs, j.mtimeNs);
    } finally {
      closeSync(fd);
    }
  };

  port.on('message', (m: PoolRequest<FileJob>) => {
    if (m.type === 'finish') {
      packs.close();
      post({ type: 'finished' });
      return;
    }
    // One message per batch: a message per file costs more than writing a small file.
    const done: number[] = [];
    const reused: number[] = [];
    let bytes = 0;
    let reusedBytes = 0;
    for (const j of m.items) {
      try {
        let linked = false;
        try {
          linked = reuseFile(j);
        } catch {
          linked = false; // unreadable old file: written as usual
        }
        if (linked) {
          reused.push(j.i);
          reusedBytes += j.size;
        } else writeFile(j);
        done.push(j.i);
        bytes += j.size;
      } catch (e) {
        if (e instanceof Failure) {
          const msg: FromApplyWorker = {
            type: 'file-failed',
            i: j.i,
            code: e.code,
            message: e.message,
          };
          if (e.chunk) msg.chunk = e.chunk;
          post(msg);
        } else {
          const err = e as NodeJS.ErrnoException;
          post({
            type: 'file-failed',
            i: j.i,
            code:
              err.code === 'PACK_CORRUPT'
                ? 'PACK_CORRUPT'
                : err.code === 'ENOSPC' || err.code === 'EDQUOT'
                  ? 'DISK_FULL'
                  : 'APPLY_FAILED',
            message: `${j.show}: ${err.message}`,
          });
        }
        break; // the pool stops at the first failure
      }
    }
    post({ type: 'files-done', files: done, bytes, reused, reusedBytes });
    post({ type: 'batch-done' });
  });
}

main();
