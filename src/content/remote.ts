import { open, readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ReimageError } from '../errors.js';

/**
 * A content store read from somewhere else: a distribution point (DP). A DP is passive — a
 * folder, a mounted share, or any static HTTP server that answers byte ranges — and is not
 * trusted: callers verify everything they read by hash (see fetch.ts).
 *
 * Paths are store-relative with `/` separators, e.g. `packs/ab/<id>.idx`.
 */
export interface RemoteStore {
  readonly name: string;
  /** A whole (small) file: image record, manifest, pack index. */
  readFile(path: string, opts?: ReadOptions): Promise<Buffer>;
  /** Byte ranges of one file, returned in the order asked. */
  readRanges(path: string, ranges: ByteRange[], opts?: ReadOptions): Promise<Buffer[]>;
}

export interface ByteRange {
  offset: number;
  length: number;
}

export interface ReadOptions {
  signal?: AbortSignal;
}

/** Largest whole file `readFile` accepts from a DP (a hostile one must not exhaust memory). */
export const MAX_REMOTE_FILE = 1024 * 1024 * 1024;

function checkRelPath(dp: string, path: string): void {
  const parts = path.split('/');
  if (isAbsolute(path) || parts.some((p) => p === '' || p === '.' || p === '..')) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${JSON.stringify(path)} is not a store-relative path (distribution point ${dp})`,
    );
  }
}

function missing(dp: string, path: string, cause?: unknown): ReimageError {
  return new ReimageError('DP_FILE_MISSING', `distribution point ${dp} has no ${path}`, {
    cause,
    details: { dp, path },
  });
}

function cancelled(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    throw new ReimageError('CANCELLED', 'the transfer was cancelled', { cause: signal.reason });
  }
}

/**
 * A DP from its location as an administrator writes it: `http(s)://…` (a static web server),
 * `file://…` or a plain path (a local or mounted folder). Other schemes are refused.
 */
export function openRemote(location: string, opts: HttpRemoteOptions = {}): RemoteStore {
  if (/^https?:\/\//i.test(location)) return httpRemote(location, opts);
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(location) && !location.startsWith('file://'))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${location}: only folders, file:// and http(s):// distribution points can be read`,
    );
  return dirRemote(location);
}

/** A DP that is a local or mounted folder, given as a path or a `file://` URL. */
export function dirRemote(dir: string): RemoteStore {
  const root = resolve(dir.startsWith('file:') ? fileURLToPath(dir) : dir);
  const name = `file://${root}`;
  return {
    name,
    async readFile(path, opts = {}) {
      checkRelPath(name, path);
      cancelled(opts.signal);
      try {
        return await readFile(join(root, path), { signal: opts.signal });
      } catch (e) {
        cancelled(opts.signal);
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw missing(name, path, e);
        throw e;
      }
    },
    async readRanges(path, ranges, opts = {}) {
      checkRelPath(name, path);
      cancelled(opts.signal);
      let fh;
      try {
        fh = await open(join(root, path), 'r');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw missing(name, path, e);
        throw e;
      }
      try {
        const out: Buffer[] = [];
        for (const r of ranges) {
          cancelled(opts.signal);
          const buf = Buffer.allocUnsafe(r.length);
          let got = 0;
          while (got < r.length) {
            const { bytesRead } = await fh.read(buf, got, r.length - got, r.offset + got);
            if (bytesRead === 0) break;
            got += bytesRead;
          }
          if (got !== r.length) {
            throw new ReimageError(
              'PACK_CORRUPT',
              `${path} on distribution point ${name} ends at ${r.offset + got}, before ${r.offset + r.length}`,
              { details: { dp: name, path } },
            );
          }
          out.push(buf);
        }
        return out;
      } finally {
        await fh.close();
      }
    },
  };
}

export interface HttpRemoteOptions {
  /** Bandwidth cap for this DP (all requests together); none by default. */
  rateLimitBytesPerSec?: number;
  /** A bucket shared with other DPs: one bandwidth cap for all of them (overrides the rate). */
  bucket?: TokenBucket;
  /** A request that receives nothing for this long is dropped and retried (default 30 s). */
  timeoutMs?: number;
  /** Attempts per range after the first failure; unlimited by default (bounded by `retryForMs`). */
  retries?: number;
  /** Keep retrying a range for this long without progress (default 10 min). */
  retryForMs?: number;
  /** Ranges closer than this are fetched in one request (default 64 KiB). */
  coalesceGap?: number;
  /** Largest single request when coalescing (default 16 MiB). */
  maxRequestBytes?: number;
  /** Backoff base and cap (default 250 ms and 30 s). */
  backoffBaseMs?: number;
  backoffCapMs?: number;
}

/** A static HTTP server (nginx, any CDN) with byte ranges. */
export function httpRemote(baseUrl: string, opts: HttpRemoteOptions = {}): RemoteStore {
  return new HttpRemote(baseUrl, opts);
}

/** A token bucket: `take(n)` waits until n bytes may pass at `rate` bytes per second. */
export class TokenBucket {
  private tokens: number;
  private last = Date.now();

  constructor(
    private readonly rate: number,
    private readonly burst = Math.max(16 * 1024, rate / 10),
  ) {
    this.tokens = burst;
  }

  async take(n: number, signal?: AbortSignal): Promise<void> {
    this.refill();
    this.tokens -= n; // may go negative: the debt is paid by waiting
    if (this.tokens < 0) await sleep((-this.tokens / this.rate) * 1000, signal);
  }

  private refill(): void {
    const now = Date.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
  }
}

/** Full-jitter exponential backoff: a random wait in [d/2, d], d = min(cap, base·2^attempt). */
export function backoffDelay(attempt: number, baseMs = 250, capMs = 30_000): number {
  const d = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 30));
  return d / 2 + Math.random() * (d / 2);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((res, rej) => {
    if (signal?.aborted) return rej(signal.reason as Error);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      res();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      rej(signal?.reason as Error);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** A failure that will not get better by retrying (404, 416, a server ignoring ranges). */
class Permanent extends Error {
  constructor(readonly error: ReimageError) {
    super(error.message);
  }
}

interface Span {
  start: number;
  end: number; // exclusive
  members: number[];
}

class HttpRemote implements RemoteStore {
  readonly name: string;
  private readonly base: URL;
  private readonly agent: http.Agent;
  private readonly bucket: TokenBucket | undefined;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly retryForMs: number;
  private readonly gap: number;
  private readonly maxRequest: number;
  private readonly backoffBase: number;
  private readonly backoffCap: number;

  constructor(baseUrl: string, opts: HttpRemoteOptions) {
    this.base = new URL(baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`);
    if (this.base.protocol !== 'http:' && this.base.protocol !== 'https:') {
      throw new ReimageError('INVALID_ARGUMENT', `${baseUrl} is not an http(s) URL`);
    }
    this.name = this.base.href;
    this.agent =
      this.base.protocol === 'https:'
        ? new https.Agent({ keepAlive: true, maxSockets: 4 })
        : new http.Agent({ keepAlive: true, maxSockets: 4 });
    const rate = opts.rateLimitBytesPerSec;
    this.bucket = opts.bucket ?? (rate && rate > 0 ? new TokenBucket(rate) : undefined);
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.retries = opts.retries ?? Infinity;
    this.retryForMs = opts.retryForMs ?? 10 * 60_000;
    this.gap = opts.coalesceGap ?? 64 * 1024;
    this.maxRequest = opts.maxRequestBytes ?? 16 * 1024 * 1024;
    this.backoffBase = opts.backoffBaseMs ?? 250;
    this.backoffCap = opts.backoffCapMs ?? 30_000;
  }

  async readFile(path: string, opts: ReadOptions = {}): Promise<Buffer> {
    checkRelPath(this.name, path);
    const parts: Buffer[] = [];
    let got = 0;
    await this.withRetry(
      path,
      opts.signal,
      () => got,
      async () => {
        await this.request(path, got, undefined, opts.signal, (chunk) => {
          got += chunk.length;
          if (got > MAX_REMOTE_FILE) {
            throw new Permanent(
              new ReimageError(
                'PACK_CORRUPT',
                `${path} on distribution point ${this.name} is larger than ${MAX_REMOTE_FILE} bytes`,
              ),
            );
          }
          parts.push(chunk);
        });
      },
    );
    return Buffer.concat(parts, got);
  }

  async readRanges(path: string, ranges: ByteRange[], opts: ReadOptions = {}): Promise<Buffer[]> {
    checkRelPath(this.name, path);
    const out: Buffer[] = ranges.map(() => Buffer.alloc(0));
    for (const span of this.coalesce(ranges)) {
      const buf = Buffer.allocUnsafe(span.end - span.start);
      let got = 0;
      await this.withRetry(
        path,
        opts.signal,
        () => got,
        async () => {
          await this.request(path, span.start + got, span.end, opts.signal, (chunk) => {
            if (got + chunk.length > buf.length) {
              throw new Permanent(
                new ReimageError(
                  'PACK_CORRUPT',
                  `distribution point ${this.name} sent more than the range asked of ${path}`,
                ),
              );
            }
            chunk.copy(buf, got);
            got += chunk.length;
          });
          if (got < buf.length)
            throw new Error(`response ended after ${got} of ${buf.length} bytes`);
        },
      );
      for (const i of span.members) {
        const r = ranges[i]!;
        out[i] = buf.subarray(r.offset - span.start, r.offset - span.start + r.length);
      }
    }
    return out;
  }

  /** Sorted spans covering the ranges, merging neighbours closer than the gap. */
  private coalesce(ranges: ByteRange[]): Span[] {
    const order = ranges
      .map((r, i) => ({ r, i }))
      .filter(({ r }) => {
        if (!Number.isSafeInteger(r.offset) || !Number.isSafeInteger(r.length) || r.offset < 0)
          throw new RangeError(`bad range ${r.offset}+${r.length}`);
        return r.length > 0; // an empty range needs no request
      })
      .sort((a, b) => a.r.offset - b.r.offset);
    const spans: Span[] = [];
    let cur: Span | undefined;
    for (const { r, i } of order) {
      const end = r.offset + r.length;
      if (
        cur &&
        r.offset - cur.end < this.gap &&
        Math.max(cur.end, end) - cur.start <= this.maxRequest
      ) {
        cur.end = Math.max(cur.end, end);
        cur.members.push(i);
      } else {
        cur = { start: r.offset, end, members: [i] };
        spans.push(cur);
      }
    }
    return spans;
  }

  /**
   * Runs `attempt` until it succeeds; transient failures are retried with backoff. An attempt
   * that made progress resets the clock: a link that drops every few minutes still gets there.
   */
  private async withRetry(
    path: string,
    signal: AbortSignal | undefined,
    progress: () => number,
    attempt: () => Promise<void>,
  ): Promise<void> {
    let failures = 0;
    let since = Date.now();
    for (;;) {
      cancelled(signal);
      const before = progress();
      try {
        await attempt();
        return;
      } catch (e) {
        cancelled(signal);
        if (e instanceof Permanent) throw e.error;
        if (e instanceof ReimageError) throw e;
        if (progress() > before) {
          failures = 0;
          since = Date.now();
        }
        failures++;
        if (failures > this.retries || Date.now() - since > this.retryForMs) {
          throw new ReimageError(
            'DP_UNREACHABLE',
            `distribution point ${this.name} did not deliver ${path} after ${failures} attempts: ${(e as Error).message}`,
            { cause: e, details: { dp: this.name, path } },
          );
        }
        await sleep(backoffDelay(failures - 1, this.backoffBase, this.backoffCap), signal).catch(
          () => cancelled(signal),
        );
      }
    }
  }

  /** One GET of [from, to) (to undefined: to the end); streams the body to `onData`. */
  private request(
    path: string,
    from: number,
    to: number | undefined,
    signal: AbortSignal | undefined,
    onData: (chunk: Buffer) => void,
  ): Promise<void> {
    const url = new URL(path, this.base);
    const headers: Record<string, string> = {};
    const ranged = from > 0 || to !== undefined;
    if (ranged) headers.range = `bytes=${from}-${to === undefined ? '' : to - 1}`;
    const mod = url.protocol === 'https:' ? https : http;
    return new Promise<void>((resolveReq, rejectReq) => {
      const req = mod.get(url, { agent: this.agent, headers, signal }, (res) => {
        const status = res.statusCode ?? 0;
        const fail = (e: Error) => {
          res.destroy();
          rejectReq(e);
        };
        if (status === 404 || status === 410) return fail(new Permanent(missing(this.name, path)));
        if (status >= 500 || status === 408 || status === 429) {
          return fail(new Error(`HTTP ${status} from ${url.href}`));
        }
        if (ranged ? status !== 206 : status !== 200) {
          return fail(
            new Permanent(
              new ReimageError(
                'PACK_CORRUPT',
                `distribution point ${this.name} answered HTTP ${status} to ${ranged ? `range ${headers.range} of ` : ''}${path}${status === 200 ? ' (it must support byte ranges)' : ''}`,
                { details: { dp: this.name, path, status } },
              ),
            ),
          );
        }
        if (ranged) {
          const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(res.headers['content-range'] ?? '');
          const end = to === undefined ? undefined : to - 1;
          if (!m || Number(m[1]) !== from || (end !== undefined && Number(m[2]) !== end)) {
            return fail(
              new Permanent(
                new ReimageError(
                  'PACK_CORRUPT',
                  `distribution point ${this.name} sent Content-Range ${JSON.stringify(res.headers['content-range'] ?? null)} for ${headers.range} of ${path}`,
                  { details: { dp: this.name, path } },
                ),
              ),
            );
          }
        }
        void (async () => {
          try {
            for await (const chunk of res as AsyncIterable<Buffer>) {
              onData(chunk);
              if (this.bucket) await this.bucket.take(chunk.length, signal);
            }
            if (!res.complete) throw new Error(`connection closed in the middle of ${path}`);
            resolveReq();
          } catch (e) {
            res.destroy();
            rejectReq(e);
          }
        })();
      });
      req.setTimeout(this.timeoutMs, () => {
        req.destroy(new Error(`no data from ${url.href} for ${this.timeoutMs} ms`));
      });
      req.on('error', rejectReq);
    });
  }
}
