import { Decompressor } from 'zstd-napi';
import { isReimageError, ReimageError } from '../errors.js';
import { hashKey, isHexId, keyToHex, sha256, sha256Hex } from './digest.js';
import { decodeIndex, decompressBounded, FRAME_CHUNK_RECORD, MAX_FRAME_RAW } from './pack.js';
import type { RemoteStore } from './remote.js';
import type { ChunkIndex, ContentStore, WriteSession } from './store.js';

/** A manifest larger than this is refused (the image library uses the same bound). */
const MAX_MANIFEST_BYTES = 1024 * 1024 * 1024;
/** Frames asked for in one `readRanges` call by default: what a fetch holds in memory at once. */
const BATCH_BYTES = 8 * 1024 * 1024;
/** Verified data is committed to the local store this often, so a killed fetch keeps it. */
const COMMIT_EVERY = 64 * 1024 * 1024;

export interface FetchProgress {
  bytesDownloaded: number;
  /**
   * Bytes of frames planned so far (packs are planned one after the other, so this grows;
   * it is the whole download once the last pack is planned). Indexes and records not counted.
   */
  bytesPlanned: number;
  framesFetched: number;
  /** Chunks of the image that are local now (seeded or fetched), of `chunksNeeded`. */
  chunksDone: number;
  chunksNeeded: number;
}

/** A source that failed for a pack (or for the image record), and why. */
export interface BadSource {
  source: string;
  pack?: string;
  code?: string;
  reason: string;
}

export interface FetchOptions {
  /** Distribution points, in preference order. */
  sources: RemoteStore[];
  imageId: string;
  /** The local store (a staging store or the machine's cache) that receives the image. */
  into: ContentStore;
  /**
   * The chunk hashes the image's manifest names. The manifest codec lives above
   * src/content, so the caller supplies it; without it, every chunk of the packs the image
   * record lists is fetched (a superset when packs are shared with other images).
   */
  chunksOf?: (manifest: Buffer) => Iterable<Uint8Array>;
  /**
   * The record and manifest, already fetched and verified by `fetchImageHead` (e.g. to seed
   * the local store from them first): they are not downloaded again.
   */
  head?: ImageHead;
  signal?: AbortSignal;
  onProgress?: (p: FetchProgress) => void;
  /**
   * Pack indexes already read (by `${source name}\0${pack}`, e.g. by `planDeltas`): used
   * instead of reading them again; checked the same way.
   */
  indexCache?: Map<string, Buffer>;
  /** Compressed bytes asked for in one range read (default 8 MiB): bounds memory. */
  batchBytes?: number;
  /** Sources that work on one pack at the same time (default 3). */
  maxSources?: number;
  /** Range reads in flight per source (default 2). */
  perSource?: number;
}

export interface FetchResult {
  imageId: string;
  /** Payload bytes received from the sources (records, manifest, indexes, frames). */
  bytesDownloaded: number;
  framesFetched: number;
  chunksFetched: number;
  /** Chunks the local store already had (local seeding and resume). */
  chunksFromLocal: number;
  /** The sources that delivered frames of each pack, in preference order. */
  packSources: Record<string, string[]>;
  /** The source the image record and manifest came from. */
  recordSource: string;
  badSources: BadSource[];
  /** The local packs the image's record now lists. */
  packs: string[];
}

/** An image record as a DP serves it: only what a fetch needs is checked. */
export interface RemoteRecord {
  id: string;
  packs: string[];
  [key: string]: unknown;
}

/** An image's record and manifest, verified (the manifest hashes to the id). */
export interface ImageHead {
  imageId: string;
  record: RemoteRecord;
  /** The compressed manifest, as stored. */
  z: Buffer;
  /** The manifest, decompressed. */
  manifest: Buffer;
  /** Where they came from: a DP's name, or the local store's root. */
  source: string;
  /** True when the local store already had the complete image (nothing to fetch). */
  complete: boolean;
  bytesDownloaded: number;
  badSources: BadSource[];
}

export interface HeadOptions {
  sources: RemoteStore[];
  imageId: string;
  /** A local store checked first: an image it holds completely needs no download. */
  into?: ContentStore;
  signal?: AbortSignal;
}

function checkArgs(imageId: string, sources: RemoteStore[]): void {
  if (!isHexId(imageId)) {
    throw new ReimageError('INVALID_ARGUMENT', `${JSON.stringify(imageId)} is not an image id`);
  }
  if (sources.length === 0) {
    throw new ReimageError('INVALID_ARGUMENT', 'no distribution point to fetch from');
  }
}

function cancelledError(signal: AbortSignal | undefined): ReimageError {
  return new ReimageError('CANCELLED', 'the fetch was cancelled', { cause: signal?.reason });
}

/**
 * Gets an image's record and manifest: from `into` when it holds the complete image (its
 * record is written last), else from the first source that serves a record and a manifest
 * that hashes to the id. A source that serves anything wrong is reported in `badSources`.
 */
export async function fetchImageHead(opts: HeadOptions): Promise<ImageHead> {
  checkArgs(opts.imageId, opts.sources);
  const id = opts.imageId;
  const dz = new Decompressor();
  const bad: BadSource[] = [];
  if (opts.into) {
    const localRec = opts.into.readObject('images', `${id}.json`);
    const localZ = opts.into.readObject('manifests', `${id}.zst`);
    if (localRec && localZ) {
      try {
        const manifest = decompressBounded(dz, localZ, MAX_MANIFEST_BYTES, 'manifest');
        if (sha256Hex(manifest) === id) {
          const record = parseRecord(localRec, id, opts.into.root);
          return {
            imageId: id,
            record,
            z: localZ,
            manifest,
            source: opts.into.root,
            complete: true,
            bytesDownloaded: 0,
            badSources: [],
          };
        }
      } catch {
        // A damaged local copy: fetch it again.
      }
    }
  }
  let bytesDownloaded = 0;
  for (const source of opts.sources) {
    try {
      const recBuf = await source.readFile(`objects/images/${id}.json`, { signal: opts.signal });
      bytesDownloaded += recBuf.length;
      const z = await source.readFile(`objects/manifests/${id}.zst`, { signal: opts.signal });
      bytesDownloaded += z.length;
      const record = parseRecord(recBuf, id, source.name);
      let manifest: Buffer;
      try {
        manifest = decompressBounded(dz, z, MAX_MANIFEST_BYTES, `manifest ${id}`);
      } catch (e) {
        throw new ReimageError(
          'MANIFEST_HASH_MISMATCH',
          `the manifest of image ${id} on ${source.name} cannot be decompressed`,
          { cause: e },
        );
      }
      if (sha256Hex(manifest) !== id) {
        throw new ReimageError(
          'MANIFEST_HASH_MISMATCH',
          `the manifest of image ${id} on ${source.name} does not hash to its id`,
          { details: { image: id, dp: source.name } },
        );
      }
      return {
        imageId: id,
        record,
        z,
        manifest,
        source: source.name,
        complete: false,
        bytesDownloaded,
        badSources: bad,
      };
    } catch (e) {
      if (isReimageError(e, 'CANCELLED') || opts.signal?.aborted) throw cancelledError(opts.signal);
      bad.push({
        source: source.name,
        ...(isReimageError(e) ? { code: e.code } : {}),
        reason: (e as Error).message,
      });
    }
  }
  throw new ReimageError(
    'IMAGE_NOT_FOUND',
    `no distribution point has a valid image ${id}: ${bad.map((b) => `${b.source}: ${b.reason}`).join('; ')}`,
    { details: { image: id, badSources: bad } },
  );
}

/**
 * Fetches an image from distribution points into a local store: record and manifest first
 * (`fetchImageHead`, or `opts.head`), then only the chunks the local store lacks, frame by
 * frame with coalesced range reads. Several sources work at once (up to `maxSources` per
 * pack, `perSource` reads each), the first sources first: a fallback only gets work when
 * there is more than one batch. Every chunk is hashed before it is stored; a source that
 * serves anything wrong for a pack is dropped for that pack and its work goes to another.
 * Verified data is committed as it comes, so running the fetch again after a kill
 * continues where it stopped. The record and manifest are written last, so `apply` never
 * sees an image whose chunks are not all there.
 */
export async function fetchImage(opts: FetchOptions): Promise<FetchResult> {
  checkArgs(opts.imageId, opts.sources);
  if (opts.head) {
    const h = opts.head;
    if (h.imageId !== opts.imageId || sha256Hex(h.manifest) !== opts.imageId) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `the record and manifest given are not those of image ${opts.imageId}`,
      );
    }
  }
  const lock = await opts.into.lock('shared', `fetch ${opts.imageId}`);
  try {
    return await new Fetch(opts).run();
  } finally {
    lock.release();
  }
}

interface FrameWant {
  offset: number;
  length: number;
  chunks: Array<{ hash: Buffer; offset: number; length: number }>;
}

/** Frames of one pack as one source's index describes them. */
interface PackIndex {
  frames: Map<number, FrameWant>;
  frameOf: Map<string, FrameWant>;
}

/** A unit of work: read a pack's index (and plan its batches), or fetch chunks of a pack. */
type Work = { kind: 'index'; pack: string } | { kind: 'frames'; pack: string; keys: string[] };

class Fetch {
  private readonly id: string;
  private readonly into: ContentStore;
  private readonly signal: AbortSignal | undefined;
  private readonly dz = new Decompressor();
  private readonly bad: BadSource[] = [];
  private readonly badFor = new Set<string>();
  private readonly packSources: Record<string, string[]> = {};
  private known!: ChunkIndex;
  private session!: WriteSession;
  /** Sessions being committed: their chunks count as present. */
  private readonly committing: WriteSession[] = [];
  private commitChain: Promise<void> = Promise.resolve();
  private needed: Set<string> | undefined;
  /** Without `chunksOf`: every chunk named by the indexes of the image's packs. */
  private readonly indexed = new Set<string>();
  private readonly indexedPacks = new Set<string>();
  private readonly unreadablePacks: string[] = [];
  private readonly indexes = new Map<string, PackIndex>();
  private readonly queue: Work[] = [];
  private inFlight = 0;
  private wake: () => void = () => {};
  private changed: Promise<void> = Promise.resolve();
  private fatal: { error: unknown } | undefined;
  private bytesDownloaded = 0;
  private bytesPlanned = 0;
  private framesFetched = 0;
  private chunksFetched = 0;
  private chunksFromLocal = 0;

  private readonly batchBytes: number;
  private readonly maxSources: number;
  private readonly perSource: number;

  constructor(private readonly opts: FetchOptions) {
    this.id = opts.imageId;
    this.batchBytes = opts.batchBytes ?? BATCH_BYTES;
    this.maxSources = Math.max(1, opts.maxSources ?? 3);
    this.perSource = Math.max(1, opts.perSource ?? 2);
    this.into = opts.into;
    this.signal = opts.signal;
  }

  async run(): Promise<FetchResult> {
    const head =
      this.opts.head ??
      (await fetchImageHead({
        sources: this.opts.sources,
        imageId: this.id,
        into: this.into,
        signal: this.signal,
      }));
    // A head fetched by the caller (to seed from it) counts as part of this fetch.
    this.bytesDownloaded += head.bytesDownloaded;
    this.bad.push(...head.badSources);
    const { record, z, manifest } = head;
    if (this.opts.chunksOf) {
      this.needed = new Set();
      for (const h of this.opts.chunksOf(manifest)) this.needed.add(hashKey(h));
    }
    this.known = this.into.loadIndex();
    if (this.needed) {
      for (const k of this.needed) if (this.known.getByKey(k)) this.chunksFromLocal++;
    }
    this.session = this.into.beginSession(this.known);
    try {
      if (!this.needed || this.remaining() > 0) {
        for (const pack of record.packs) this.queue.push({ kind: 'index', pack });
        this.changed = new Promise((r) => (this.wake = r));
        const workers: Array<Promise<void>> = [];
        this.opts.sources.forEach((_, si) => {
          for (let n = 0; n < this.perSource; n++) workers.push(this.worker(si));
        });
        await Promise.all(workers);
        if (this.fatal) throw this.fatal.error;
      }
      await this.commit(false);
    } catch (e) {
      // Keep what was verified so far: a retry then continues from there.
      await this.commit(false).catch(() => this.session.abort());
      throw e;
    }

    const required = this.needed ?? this.indexed;
    const missing = [...required].filter((k) => !this.known.getByKey(k));
    if (missing.length > 0 || (!this.needed && this.unreadablePacks.length > 0)) {
      const why = this.bad.map(
        (b) => `${b.source}${b.pack ? ` (pack ${b.pack})` : ''}: ${b.reason}`,
      );
      throw new ReimageError(
        'CHUNK_MISSING',
        `${missing.length > 0 ? `${missing.length} chunks` : `packs ${this.unreadablePacks.join(', ')}`} of image ${this.id} could not be fetched from any distribution point${why.length ? `; ${why.join('; ')}` : ''}`,
        {
          details: {
            image: this.id,
            missing: missing.length,
            firstMissing: missing[0] === undefined ? undefined : keyToHex(missing[0]),
            badSources: this.bad,
          },
        },
      );
    }
    const packs = new Set<string>();
    for (const k of required) {
      const loc = this.known.getByKey(k);
      if (loc) packs.add(this.known.packs[loc.pack]!);
    }
    // Delta packs stay on the DPs: the local record lists only what the local store holds.
    const { deltas: _deltas, ...rest } = record;
    const localRecord = { ...rest, packs: [...packs].sort() };
    // Manifest before record, as a capture writes them: a record always has its manifest.
    this.into.writeObject('manifests', `${this.id}.zst`, z);
    this.into.writeObject('images', `${this.id}.json`, JSON.stringify(localRecord, null, 2) + '\n');
    this.progress();
    const order = new Map(this.opts.sources.map((s, i) => [s.name, i]));
    for (const list of Object.values(this.packSources)) {
      list.sort((a, b) => (order.get(a) ?? 0) - (order.get(b) ?? 0));
    }
    return {
      imageId: this.id,
      bytesDownloaded: this.bytesDownloaded,
      framesFetched: this.framesFetched,
      chunksFetched: this.chunksFetched,
      chunksFromLocal: this.chunksFromLocal,
      packSources: this.packSources,
      recordSource: head.source,
      badSources: this.bad,
      packs: localRecord.packs,
    };
  }

  /**
   * Whether source `si` may work on `pack`: it is not bad for it, and fewer than
   * `maxSources` sources before it are still good for it (the first good ones work).
   */
  private eligible(si: number, pack: string): boolean {
    const sources = this.opts.sources;
    if (this.badFor.has(`${sources[si]!.name}\0${pack}`)) return false;
    let before = 0;
    for (let j = 0; j < si; j++) if (!this.badFor.has(`${sources[j]!.name}\0${pack}`)) before++;
    return before < this.maxSources;
  }

  private anyGoodFor(pack: string): boolean {
    return this.opts.sources.some((s) => !this.badFor.has(`${s.name}\0${pack}`));
  }

  private notify(): void {
    const wake = this.wake;
    this.changed = new Promise((r) => (this.wake = r));
    wake();
  }

  /** One read slot of source `si`: takes the first work it may do until none is left. */
  private async worker(si: number): Promise<void> {
    const source = this.opts.sources[si]!;
    for (;;) {
      if (this.fatal) return;
      const at = this.queue.findIndex((w) => this.eligible(si, w.pack));
      if (at < 0) {
        if (this.queue.length === 0 && this.inFlight === 0) return;
        await this.changed;
        continue;
      }
      const w = this.queue.splice(at, 1)[0]!;
      this.inFlight++;
      try {
        if (w.kind === 'index') {
          // Nothing left to fetch (seeded, or other packs had it): skip the index.
          if (!this.needed || this.remaining() > 0) await this.planPack(source, w.pack);
        } else await this.fetchFrames(source, w.pack, w.keys);
        this.progress();
        await this.commit(true);
      } catch (e) {
        if (!(e instanceof SourceFault)) {
          this.fatal ??= { error: e };
        } else {
          try {
            this.noteBad(source, w.pack, e.error);
            if (this.anyGoodFor(w.pack)) this.queue.unshift(w);
            else if (w.kind === 'index' && !this.indexedPacks.has(w.pack)) {
              this.unreadablePacks.push(w.pack);
            }
          } catch (fatal) {
            this.fatal ??= { error: fatal };
          }
        }
      } finally {
        this.inFlight--;
        this.notify();
      }
    }
  }

  private remaining(): number {
    if (!this.needed) return Infinity;
    let n = 0;
    for (const k of this.needed) if (!this.has(k)) n++;
    return n;
  }

  private has(key: string): boolean {
    return (
      this.known.getByKey(key) !== undefined ||
      this.session.added.has(key) ||
      this.committing.some((s) => s.added.has(key))
    );
  }

  private wanted(key: string): boolean {
    return !this.has(key) && (this.needed === undefined || this.needed.has(key));
  }

  private noteBad(source: RemoteStore, pack: string | undefined, e: unknown): void {
    if (isReimageError(e, 'CANCELLED')) throw e;
    if (this.signal?.aborted) throw cancelledError(this.signal);
    this.bad.push({
      source: source.name,
      ...(pack ? { pack } : {}),
      ...(isReimageError(e) ? { code: e.code } : {}),
      reason: (e as Error).message,
    });
    if (pack) this.badFor.add(`${source.name}\0${pack}`);
  }

  /** A source's index of a pack (read once per source and pack, checked like a local one). */
  private async indexOf(source: RemoteStore, pack: string): Promise<PackIndex> {
    const key = `${source.name}\0${pack}`;
    const cached = this.indexes.get(key);
    if (cached) return cached;
    let idx = this.opts.indexCache?.get(key);
    if (!idx) {
      idx = await source.readFile(`packs/${pack.slice(0, 2)}/${pack}.idx`, {
        signal: this.signal,
      });
      this.bytesDownloaded += idx.length;
    }
    const frames = new Map<number, FrameWant>();
    const frameOf = new Map<string, FrameWant>();
    // The remote pack's size is not known without another round trip; a frame beyond
    // its end fails the range read instead.
    decodeIndex(idx, Number.MAX_SAFE_INTEGER, pack, (hash, fo, fl, offset, length) => {
      let f = frames.get(fo);
      if (!f) frames.set(fo, (f = { offset: fo, length: fl, chunks: [] }));
      if (f.length !== fl) {
        throw new ReimageError('PACK_CORRUPT', `pack index ${pack} disagrees on a frame length`);
      }
      f.chunks.push({ hash, offset, length });
      frameOf.set(hashKey(hash), f);
    });
    const pi = { frames, frameOf };
    this.indexes.set(key, pi);
    return pi;
  }

  /** Reads a pack's index and queues its wanted chunks in batches of about `batchBytes`. */
  private async planPack(source: RemoteStore, pack: string): Promise<void> {
    let pi: PackIndex;
    try {
      pi = await this.indexOf(source, pack);
    } catch (e) {
      throw new SourceFault(e);
    }
    if (this.indexedPacks.has(pack)) return;
    this.indexedPacks.add(pack);
    if (!this.needed) {
      for (const k of pi.frameOf.keys()) {
        if (!this.indexed.has(k) && this.known.getByKey(k)) this.chunksFromLocal++;
        this.indexed.add(k);
      }
    }
    const want = [...pi.frames.values()]
      .filter((f) => f.chunks.some((c) => this.wanted(hashKey(c.hash))))
      .sort((a, b) => a.offset - b.offset);
    const batches: Work[] = [];
    let keys: string[] = [];
    let bytes = 0;
    for (const f of want) {
      if (keys.length > 0 && bytes + f.length > this.batchBytes) {
        batches.push({ kind: 'frames', pack, keys });
        keys = [];
        bytes = 0;
      }
      for (const c of f.chunks) {
        const k = hashKey(c.hash);
        if (this.wanted(k)) keys.push(k);
      }
      bytes += f.length;
      this.bytesPlanned += f.length;
    }
    if (keys.length > 0) batches.push({ kind: 'frames', pack, keys });
    // Ahead of other packs' indexes: a pack is finished before the next one is started.
    this.queue.unshift(...batches);
  }

  /** Fetches the frames that hold `keys` (those still wanted) from one source. */
  private async fetchFrames(source: RemoteStore, pack: string, keys: string[]): Promise<void> {
    const todo = keys.filter((k) => this.wanted(k));
    if (todo.length === 0) return;
    const verified: Array<{ f: FrameWant; data: Buffer; records: Buffer; fresh: number }> = [];
    try {
      const pi = await this.indexOf(source, pack);
      const batch = new Set<FrameWant>();
      for (const k of todo) {
        const f = pi.frameOf.get(k);
        if (!f) {
          throw new ReimageError(
            'PACK_CORRUPT',
            `the index of pack ${pack} on ${source.name} lacks chunk ${keyToHex(k)}`,
            { details: { dp: source.name, pack } },
          );
        }
        batch.add(f);
      }
      const frames = [...batch].sort((a, b) => a.offset - b.offset);
      const data = await source.readRanges(
        `packs/${pack.slice(0, 2)}/${pack}.pack`,
        frames.map((f) => ({ offset: f.offset, length: f.length })),
        { signal: this.signal },
      );
      for (let j = 0; j < frames.length; j++) this.bytesDownloaded += data[j]!.length;
      for (let j = 0; j < frames.length; j++) {
        const f = frames[j]!;
        // Frames checked before a bad one are kept: only the rest goes to another source.
        const { records, fresh } = this.verifyFrame(f, data[j]!, pack, source);
        verified.push({ f, data: data[j]!, records, fresh });
      }
    } catch (e) {
      this.storeFrames(verified);
      throw new SourceFault(e);
    }
    this.storeFrames(verified);
    const list = (this.packSources[pack] ??= []);
    if (!list.includes(source.name)) list.push(source.name);
  }

  private storeFrames(
    frames: Array<{ f: FrameWant; data: Buffer; records: Buffer; fresh: number }>,
  ): void {
    for (const { data, records, fresh } of frames) {
      // The compressed frame goes into the local store unchanged: no recompression.
      this.session.addFrame({ data, chunks: records });
      this.framesFetched++;
      this.chunksFetched += fresh;
    }
  }

  /** Checks every chunk of a fetched frame against its hash. */
  private verifyFrame(
    f: FrameWant,
    data: Buffer,
    pack: string,
    source: RemoteStore,
  ): { records: Buffer; fresh: number } {
    const where = `frame at ${f.offset} of pack ${pack} from ${source.name}`;
    let raw: Buffer;
    try {
      raw = decompressBounded(this.dz, data, MAX_FRAME_RAW, where);
    } catch (e) {
      throw new ReimageError('PACK_CORRUPT', `${where} cannot be decompressed`, {
        cause: e,
        details: { dp: source.name, pack },
      });
    }
    const records = Buffer.alloc(f.chunks.length * FRAME_CHUNK_RECORD);
    let fresh = 0;
    f.chunks.forEach((c, i) => {
      const end = c.offset + c.length;
      if (end > raw.length || !sha256(raw.subarray(c.offset, end)).equals(c.hash)) {
        throw new ReimageError(
          'CHUNK_CORRUPT',
          `chunk ${c.hash.toString('hex')} in ${where} does not hash to its name`,
          { details: { dp: source.name, pack, chunk: c.hash.toString('hex') } },
        );
      }
      const r = i * FRAME_CHUNK_RECORD;
      records.set(c.hash, r);
      records.writeUInt32LE(c.offset, r + 32);
      records.writeUInt32LE(c.length, r + 36);
      if (this.wanted(hashKey(c.hash))) fresh++;
    });
    return { records, fresh };
  }

  /**
   * Moves the session's packs into the store (when `ifLarge`: only once enough is written).
   * A new session takes further frames at once; commits run one after another.
   */
  private async commit(ifLarge: boolean): Promise<void> {
    const s = this.session;
    if (ifLarge && s.bytesWritten < COMMIT_EVERY) return;
    this.session = this.into.beginSession(this.known);
    this.committing.push(s);
    const done = this.commitChain.then(async () => {
      const { packOf } = await s.commit();
      const packNo = new Map<string, number>();
      for (const [key, loc] of s.added) {
        const id = packOf(key)!;
        let no = packNo.get(id);
        if (no === undefined) {
          packNo.set(id, (no = this.known.addPack(id, this.into.packPath(id))));
        }
        this.known.set(Buffer.from(key, 'latin1'), {
          pack: no,
          frameOffset: loc.frameOffset,
          frameLength: loc.frameLength,
          offset: loc.offset,
          length: loc.length,
        });
      }
      s.close();
      this.committing.splice(this.committing.indexOf(s), 1);
    });
    this.commitChain = done.catch(() => {});
    await done;
  }

  private progress(): void {
    if (!this.opts.onProgress) return;
    const needed = this.needed ?? this.indexed;
    let done = 0;
    for (const k of needed) if (this.has(k)) done++;
    this.opts.onProgress({
      bytesDownloaded: this.bytesDownloaded,
      bytesPlanned: this.bytesPlanned,
      framesFetched: this.framesFetched,
      chunksDone: done,
      chunksNeeded: needed.size,
    });
  }
}

/** A failure of one source for one piece of work (not of the local store). */
class SourceFault {
  constructor(readonly error: unknown) {}
}

function parseRecord(buf: Buffer, id: string, dp: string): RemoteRecord {
  let rec: unknown;
  try {
    rec = JSON.parse(buf.toString('utf8'));
  } catch (e) {
    throw new ReimageError('STORE_INVALID', `the record of image ${id} on ${dp} is not JSON`, {
      cause: e,
    });
  }
  const r = rec as Partial<RemoteRecord> | null;
  if (
    !r ||
    typeof r !== 'object' ||
    r.id !== id ||
    !Array.isArray(r.packs) ||
    !r.packs.every((p) => typeof p === 'string' && isHexId(p))
  ) {
    throw new ReimageError('STORE_INVALID', `the record of image ${id} on ${dp} is not valid`, {
      details: { image: id, dp },
    });
  }
  return r as RemoteRecord;
}
