import { createHash, type Hash } from 'node:crypto';
import { Decompressor } from 'zstd-napi';
import { isReimageError, ReimageError } from '../errors.js';
import { isHexId, sha256Hex } from './digest.js';
import { folderWriter, type DpWriter } from './dp-writer.js';
import { decodeIndex, decompressBounded } from './pack.js';
import { decodeDeltaIndex, deltaIndexRel, deltaPackRel } from './delta.js';
import { deltaPacksOf } from './delta-fetch.js';
import { dirRemote, TokenBucket, type RemoteStore } from './remote.js';
import { ContentStore } from './store.js';
import { clockTime, nextOpening, systemClock, type Clock, type TransferWindow } from './window.js';

/** Bytes read and written at a time: also how much an interrupted copy may have in flight. */
const COPY_CHUNK = 1024 * 1024;
const MAX_MANIFEST_BYTES = 1024 * 1024 * 1024;
/** Where partial copies live on the DP, under deterministic names so a re-run resumes them. */
const TMP_DIR = 'tmp/replicate';
/** A long wait for a window is slept in steps, so a changed clock is noticed. */
const MAX_SLEEP_MS = 60_000;

export interface ReplicateProgress {
  /** Bytes of the files being copied that are on the DP now (a resumed partial file counts). */
  bytesDone: number;
  bytesTotal: number;
  /** Store-relative path of the file being copied. */
  file: string;
}

export interface ReplicateOptions {
  /**
   * Where the image comes from: the library's content store folder (locked against gc while
   * we read), or another distribution point read as a RemoteStore (hub and spoke).
   */
  from: string | RemoteStore;
  /** The distribution point: a folder (path or `file://` URL) or a DpWriter (WebDAV, SMB). */
  to: string | DpWriter;
  imageId: string;
  /** Small files to put on the DP after the image (e.g. the package document), store-relative. */
  extraObjects?: Array<{ path: string; data: Buffer }>;
  rateLimitBytesPerSec?: number;
  /** Copy only inside these windows (local time); outside them the copy waits. */
  windows?: TransferWindow[];
  clock?: Clock;
  /** Called when the copy starts waiting for a window, with when it opens (ms) and as HH:MM. */
  onWait?: (until: number, hhmm: string) => void;
  signal?: AbortSignal;
  onProgress?: (p: ReplicateProgress) => void;
}

export interface ReplicateResult {
  /** Bytes written to the DP by this run (a resumed partial file counts only what was added). */
  bytesCopied: number;
  filesCopied: number;
  /** Files the DP already had with the right size (or, for small files, the same content). */
  filesSkipped: number;
}

/** A file to copy: a pack streamed from the source, or a small file already read and verified. */
type Planned =
  | { kind: 'pack'; rel: string; size: number; id: string }
  | { kind: 'small'; rel: string; size: number; data: Buffer; compare: boolean };

/**
 * Copies an image into a distribution point: only what the DP lacks (a file of the same size
 * is taken as present; packs are named by their hash and never change). Packs come first,
 * then their indexes (an index appearing is what makes a pack part of the store), then the
 * manifest, the image record and the extra objects. Names are left alone: a DP is read by
 * image id.
 *
 * The source is not trusted (it may be another DP): the record, indexes (checksum) and
 * manifest (hash = image id) are read and verified before anything is written, and a pack is
 * hashed as it streams. Every file is written under `tmp/replicate/` on the DP and renamed
 * into place once verified. An interrupted run leaves its partial file there; the next run
 * continues it from its length where the writer can append (folders, SMB), and a partial
 * file that turns out wrong is copied again.
 */
export async function replicateImage(opts: ReplicateOptions): Promise<ReplicateResult> {
  if (!isHexId(opts.imageId)) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${JSON.stringify(opts.imageId)} is not an image id`,
    );
  }
  // Bad windows fail before anything is read or written.
  nextOpening(opts.windows, (opts.clock ?? systemClock).now());
  let source: RemoteStore;
  let releaseSource = () => {};
  if (typeof opts.from === 'string') {
    const lib = ContentStore.open(opts.from);
    // gc of the library waits while we copy.
    const lock = await lib.lock('shared', `replicate ${opts.imageId} from here`);
    releaseSource = () => lock.release();
    source = dirRemote(lib.root);
  } else source = opts.from;
  try {
    const writer = typeof opts.to === 'string' ? folderWriter(opts.to) : opts.to;
    const release = await writer.open();
    try {
      return await new Replication(opts, source, writer).run();
    } finally {
      await release();
    }
  } finally {
    releaseSource();
  }
}

class Replication {
  private readonly bucket: TokenBucket | undefined;
  private readonly clock: Clock;
  private bytesCopied = 0;
  private bytesDone = 0;
  private bytesTotal = 0;
  private filesCopied = 0;
  private filesSkipped = 0;

  constructor(
    private readonly opts: ReplicateOptions,
    private readonly src: RemoteStore,
    private readonly dp: DpWriter,
  ) {
    const rate = opts.rateLimitBytesPerSec;
    this.bucket = rate && rate > 0 ? new TokenBucket(rate) : undefined;
    this.clock = opts.clock ?? systemClock;
  }

  async run(): Promise<ReplicateResult> {
    const id = this.opts.imageId;
    const recordRel = `objects/images/${id}.json`;
    const manifestRel = `objects/manifests/${id}.zst`;
    const record = await this.readSource(
      recordRel,
      () =>
        new ReimageError('IMAGE_NOT_FOUND', `${this.src.name} has no image ${id}`, {
          details: { image: id, store: this.src.name },
        }),
    );
    const packs = parsePacks(record, id);

    const plan: Planned[] = [];
    const indexes: Planned[] = [];
    for (const p of packs) {
      const idxRel = `packs/${p.slice(0, 2)}/${p}.idx`;
      const idx = await this.readSource(idxRel);
      let size = 0;
      try {
        // The pack is its magic and the frames the index lists, back to back: its size is
        // where the last frame ends. The index's own checksum is verified here.
        decodeIndex(idx, Number.MAX_SAFE_INTEGER, p, (_h, off, len) => {
          size = Math.max(size, off + len);
        });
      } catch (e) {
        throw sourceBad(this.src.name, `the index of pack ${p}`, e);
      }
      plan.push({ kind: 'pack', rel: `packs/${p.slice(0, 2)}/${p}.pack`, size, id: p });
      indexes.push({ kind: 'small', rel: idxRel, size: idx.length, data: idx, compare: false });
    }
    // Delta packs (optional, docs/content-store.md): copied like packs when the source has
    // them; a source without one is not an error (a reader then fetches those chunks whole).
    for (const d of deltaPacksOf(parseJson(record))) {
      const idxRel = deltaIndexRel(d);
      let idx: Buffer;
      try {
        idx = await this.src.readFile(idxRel, { signal: this.opts.signal });
      } catch (e) {
        if (isReimageError(e, 'DP_FILE_MISSING')) continue;
        this.rethrow(e);
      }
      let size: number;
      try {
        size = decodeDeltaIndex(idx, d).packSize;
      } catch (e) {
        throw sourceBad(this.src.name, `the delta index ${d}`, e);
      }
      plan.push({ kind: 'pack', rel: deltaPackRel(d), size, id: d });
      indexes.push({ kind: 'small', rel: idxRel, size: idx.length, data: idx, compare: false });
    }
    // Indexes after every pack: an index makes its pack visible.
    plan.push(...indexes);
    const manifest = await this.readSource(manifestRel);
    let manifestOk = false;
    try {
      const m = decompressBounded(new Decompressor(), manifest, MAX_MANIFEST_BYTES, 'manifest');
      manifestOk = sha256Hex(m) === id;
    } catch {
      manifestOk = false;
    }
    if (!manifestOk) {
      throw sourceBad(this.src.name, `the manifest of ${id}`, 'it does not hash to the image id');
    }
    plan.push({
      kind: 'small',
      rel: manifestRel,
      size: manifest.length,
      data: manifest,
      compare: false,
    });
    // The record is small and may be rewritten in the library: compare its content.
    plan.push({ kind: 'small', rel: recordRel, size: record.length, data: record, compare: true });
    for (const x of this.opts.extraObjects ?? []) {
      checkRel(x.path);
      plan.push({ kind: 'small', rel: x.path, size: x.data.length, data: x.data, compare: true });
    }

    const todo: Planned[] = [];
    for (const f of plan) {
      const have = await this.dp.stat(f.rel);
      const same =
        have === f.size &&
        (f.kind === 'pack' || !f.compare || (await this.dp.read(f.rel)).equals(f.data));
      if (same) this.filesSkipped++;
      else todo.push(f);
    }
    this.bytesTotal = todo.reduce((n, f) => n + f.size, 0);
    for (const f of todo) {
      if (f.kind === 'pack' && this.dp.appends)
        this.bytesDone += Math.max(0, Math.min(await this.dp.stat(this.tmpPath(f.rel)), f.size));
    }

    for (const f of todo) {
      if (f.kind === 'pack') await this.copyPack(f);
      else await this.putSmall(f);
      this.filesCopied++;
    }
    return {
      bytesCopied: this.bytesCopied,
      filesCopied: this.filesCopied,
      filesSkipped: this.filesSkipped,
    };
  }

  private async readSource(rel: string, ifMissing?: () => ReimageError): Promise<Buffer> {
    try {
      return await this.src.readFile(rel, { signal: this.opts.signal });
    } catch (e) {
      if (isReimageError(e, 'DP_FILE_MISSING')) {
        throw (
          ifMissing?.() ??
          new ReimageError(
            'PACK_CORRUPT',
            `${this.src.name} lacks ${rel}, which image ${this.opts.imageId} needs`,
            {
              cause: e,
              details: { image: this.opts.imageId, path: rel, store: this.src.name },
            },
          )
        );
      }
      this.rethrow(e);
    }
  }

  private tmpPath(relPath: string): string {
    return `${TMP_DIR}/${relPath.replaceAll('/', '_')}`;
  }

  /** Streams one pack, resuming a partial temp file; verifies its hash, recopying once if wrong. */
  private async copyPack(f: Extract<Planned, { kind: 'pack' }>): Promise<void> {
    const tmp = this.tmpPath(f.rel);
    for (let attempt = 0; ; attempt++) {
      let have = await this.dp.stat(tmp);
      if (have > f.size || (have > 0 && !this.dp.appends)) {
        await this.dp.remove(tmp);
        if (this.dp.appends) this.bytesDone -= Math.min(have, f.size);
        have = -1;
      }
      const start = Math.max(have, 0);
      const hash = createHash('sha256');
      if (start > 0) hash.update((await this.dp.read(tmp)).subarray(0, start));
      await this.dp.put(tmp, start, f.size - start, this.chunks(f, start, hash));
      if (hash.digest('hex') === f.id) break;
      await this.dp.remove(tmp);
      this.bytesDone -= f.size;
      // The source's own copy is bad, or the DP corrupts writes.
      if (attempt > 0) throw corrupt(`pack ${f.id}`, 'its SHA-256 is not its name');
    }
    await this.dp.rename(tmp, f.rel);
  }

  /** The pack's bytes from `start`, a chunk at a time, inside the windows and the rate limit. */
  private async *chunks(
    f: Extract<Planned, { kind: 'pack' }>,
    start: number,
    hash: Hash,
  ): AsyncGenerator<Buffer> {
    for (let pos = start; pos < f.size;) {
      const n = Math.min(COPY_CHUNK, f.size - pos);
      await this.gate(n);
      let buf: Buffer;
      try {
        [buf] = (await this.src.readRanges(f.rel, [{ offset: pos, length: n }], {
          signal: this.opts.signal,
        })) as [Buffer];
      } catch (e) {
        this.rethrow(e);
      }
      hash.update(buf);
      yield buf;
      pos += n;
      this.bytesCopied += n;
      this.bytesDone += n;
      this.progress(f.rel);
    }
  }

  private async putSmall(f: Extract<Planned, { kind: 'small' }>): Promise<void> {
    const tmp = this.tmpPath(f.rel);
    await this.gate(f.data.length);
    await this.dp.put(
      tmp,
      0,
      f.data.length,
      (async function* () {
        yield f.data;
      })(),
    );
    await this.dp.rename(tmp, f.rel);
    this.bytesCopied += f.data.length;
    this.bytesDone += f.data.length;
    this.progress(f.rel);
  }

  /** Waits for a window to be open and for the rate limit to let `n` bytes pass. */
  private async gate(n: number): Promise<void> {
    this.cancelled();
    for (;;) {
      const now = this.clock.now();
      const until = nextOpening(this.opts.windows, now);
      if (until === undefined) break;
      this.opts.onWait?.(until, clockTime(until));
      await this.clock
        .sleep(Math.min(until - now, MAX_SLEEP_MS), this.opts.signal)
        .catch((e) => this.rethrow(e));
    }
    await this.bucket?.take(n, this.opts.signal).catch((e) => this.rethrow(e));
  }

  private progress(file: string): void {
    this.opts.onProgress?.({ bytesDone: this.bytesDone, bytesTotal: this.bytesTotal, file });
  }

  private cancelled(): void {
    if (this.opts.signal?.aborted) {
      throw new ReimageError('CANCELLED', 'the replication was cancelled', {
        cause: this.opts.signal.reason,
      });
    }
  }

  private rethrow(e: unknown): never {
    if (isReimageError(e)) throw e;
    this.cancelled();
    throw e;
  }
}

function parseJson(buf: Buffer): Record<string, unknown> {
  try {
    const r = JSON.parse(buf.toString('utf8')) as unknown;
    return r && typeof r === 'object' ? (r as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

function parsePacks(buf: Buffer, id: string): string[] {
  let rec: unknown;
  try {
    rec = JSON.parse(buf.toString('utf8'));
  } catch (e) {
    throw new ReimageError('STORE_INVALID', `the image record of ${id} is not JSON`, { cause: e });
  }
  const packs = (rec as { packs?: unknown } | null)?.packs;
  if (!Array.isArray(packs) || !packs.every((p) => typeof p === 'string' && isHexId(p))) {
    throw new ReimageError('STORE_INVALID', `the image record of ${id} has no valid pack list`);
  }
  return packs as string[];
}

function checkRel(p: string): void {
  const parts = p.split('/');
  if (p.startsWith('/') || parts.some((x) => x === '' || x === '.' || x === '..')) {
    throw new ReimageError('INVALID_ARGUMENT', `${JSON.stringify(p)} is not a store-relative path`);
  }
}

function sourceBad(source: string, what: string, why: unknown): ReimageError {
  const reason = why instanceof Error ? why.message : String(why);
  return new ReimageError('PACK_CORRUPT', `${what} at ${source} is wrong: ${reason}`, {
    cause: why instanceof Error ? why : undefined,
    details: { what, store: source },
  });
}

function corrupt(what: string, why: string): ReimageError {
  return new ReimageError(
    'PACK_CORRUPT',
    `the copy of ${what} on the distribution point is wrong: ${why}`,
    {
      details: { what },
    },
  );
}
