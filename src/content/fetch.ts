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
  signal?: AbortSignal;
  onProgress?: (p: FetchProgress) => void;
  /** Compressed bytes asked for in one range read (default 8 MiB): bounds memory. */
  batchBytes?: number;
}

export interface FetchResult {
  imageId: string;
  /** Payload bytes received from the sources (records, manifest, indexes, frames). */
  bytesDownloaded: number;
  framesFetched: number;
  chunksFetched: number;
  /** Chunks the local store already had (local seeding and resume). */
  chunksFromLocal: number;
  /** Which source delivered each pack that frames were fetched from. */
  packSources: Record<string, string>;
  /** The source the image record and manifest came from. */
  recordSource: string;
  badSources: BadSource[];
  /** The local packs the image's record now lists. */
  packs: string[];
}

interface RemoteRecord {
  id: string;
  packs: string[];
  [key: string]: unknown;
}

interface FrameWant {
  offset: number;
  length: number;
  chunks: Array<{ hash: Buffer; offset: number; length: number }>;
}

/**
 * Fetches an image from distribution points into a local store: record and manifest from
 * the first source that has them (the manifest must hash to the id), then only the chunks
 * the local store lacks, frame by frame with coalesced range reads. Every chunk is hashed
 * before it is stored; a source that serves anything wrong for a pack is dropped for that
 * pack and the next one is asked. Verified data is committed as it comes, so running the
 * fetch again after a kill continues where it stopped. The record and manifest are written
 * last, so `apply` never sees an image whose chunks are not all there.
 */
export async function fetchImage(opts: FetchOptions): Promise<FetchResult> {
  if (!isHexId(opts.imageId)) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${JSON.stringify(opts.imageId)} is not an image id`,
    );
  }
  if (opts.sources.length === 0) {
    throw new ReimageError('INVALID_ARGUMENT', 'no distribution point to fetch from');
  }
  const lock = await opts.into.lock('shared', `fetch ${opts.imageId}`);
  try {
    return await new Fetch(opts).run();
  } finally {
    lock.release();
  }
}

class Fetch {
  private readonly id: string;
  private readonly into: ContentStore;
  private readonly signal: AbortSignal | undefined;
  private readonly dz = new Decompressor();
  private readonly bad: BadSource[] = [];
  private readonly badFor = new Set<string>();
  private readonly packSources: Record<string, string> = {};
  private known!: ChunkIndex;
  private session!: WriteSession;
  private needed: Set<string> | undefined;
  /** Without `chunksOf`: every chunk named by the indexes of the image's packs. */
  private readonly indexed = new Set<string>();
  private readonly unreadablePacks: string[] = [];
  private bytesDownloaded = 0;
  private framesFetched = 0;
  private chunksFetched = 0;
  private chunksFromLocal = 0;

  private readonly batchBytes: number;

  constructor(private readonly opts: FetchOptions) {
    this.id = opts.imageId;
    this.batchBytes = opts.batchBytes ?? BATCH_BYTES;
    this.into = opts.into;
    this.signal = opts.signal;
  }

  async run(): Promise<FetchResult> {
    const { source, record, z, manifest } = await this.readImage();
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
      for (const pack of record.packs) {
        if (this.needed && this.remaining() === 0) break;
        await this.fetchPack(pack);
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
    const localRecord = { ...record, packs: [...packs].sort() };
    // Manifest before record, as a capture writes them: a record always has its manifest.
    this.into.writeObject('manifests', `${this.id}.zst`, z);
    this.into.writeObject('images', `${this.id}.json`, JSON.stringify(localRecord, null, 2) + '\n');
    this.progress();
    return {
      imageId: this.id,
      bytesDownloaded: this.bytesDownloaded,
      framesFetched: this.framesFetched,
      chunksFetched: this.chunksFetched,
      chunksFromLocal: this.chunksFromLocal,
      packSources: this.packSources,
      recordSource: source.name,
      badSources: this.bad,
      packs: localRecord.packs,
    };
  }

  private remaining(): number {
    if (!this.needed) return Infinity;
    let n = 0;
    for (const k of this.needed) if (!this.has(k)) n++;
    return n;
  }

  private has(key: string): boolean {
    return this.known.getByKey(key) !== undefined || this.session.added.has(key);
  }

  private wanted(key: string): boolean {
    return !this.has(key) && (this.needed === undefined || this.needed.has(key));
  }

  private noteBad(source: RemoteStore, pack: string | undefined, e: unknown): void {
    if (isReimageError(e, 'CANCELLED')) throw e;
    if (this.signal?.aborted) {
      throw new ReimageError('CANCELLED', 'the fetch was cancelled', { cause: this.signal.reason });
    }
    this.bad.push({
      source: source.name,
      ...(pack ? { pack } : {}),
      ...(isReimageError(e) ? { code: e.code } : {}),
      reason: (e as Error).message,
    });
    if (pack) this.badFor.add(`${source.name}\0${pack}`);
  }

  private async readImage(): Promise<{
    source: { name: string };
    record: RemoteRecord;
    z: Buffer;
    manifest: Buffer;
  }> {
    // A record in the local store is written only once all its chunks are there: then the
    // fetch has nothing to download (a re-run after success, or an image already staged).
    const localRec = this.into.readObject('images', `${this.id}.json`);
    const localZ = this.into.readObject('manifests', `${this.id}.zst`);
    if (localRec && localZ) {
      try {
        const manifest = decompressBounded(this.dz, localZ, MAX_MANIFEST_BYTES, 'manifest');
        if (sha256Hex(manifest) === this.id) {
          const record = parseRecord(localRec, this.id, this.into.root);
          return { source: { name: this.into.root }, record, z: localZ, manifest };
        }
      } catch {
        // A damaged local copy: fetch it again.
      }
    }
    for (const source of this.opts.sources) {
      try {
        const recBuf = await source.readFile(`objects/images/${this.id}.json`, {
          signal: this.signal,
        });
        const z = await source.readFile(`objects/manifests/${this.id}.zst`, {
          signal: this.signal,
        });
        this.bytesDownloaded += recBuf.length + z.length;
        const record = parseRecord(recBuf, this.id, source.name);
        let manifest: Buffer;
        try {
          manifest = decompressBounded(this.dz, z, MAX_MANIFEST_BYTES, `manifest ${this.id}`);
        } catch (e) {
          throw new ReimageError(
            'MANIFEST_HASH_MISMATCH',
            `the manifest of image ${this.id} on ${source.name} cannot be decompressed`,
            { cause: e },
          );
        }
        if (sha256Hex(manifest) !== this.id) {
          throw new ReimageError(
            'MANIFEST_HASH_MISMATCH',
            `the manifest of image ${this.id} on ${source.name} does not hash to its id`,
            { details: { image: this.id, dp: source.name } },
          );
        }
        return { source, record, z, manifest };
      } catch (e) {
        this.noteBad(source, undefined, e);
      }
    }
    throw new ReimageError(
      'IMAGE_NOT_FOUND',
      `no distribution point has a valid image ${this.id}: ${this.bad.map((b) => `${b.source}: ${b.reason}`).join('; ')}`,
      { details: { image: this.id, badSources: this.bad } },
    );
  }

  /** Gets the wanted chunks of one pack, from the first source that serves it correctly. */
  private async fetchPack(pack: string): Promise<void> {
    const dir = `packs/${pack.slice(0, 2)}`;
    let anyIndex = false;
    for (const source of this.opts.sources) {
      if (this.badFor.has(`${source.name}\0${pack}`)) continue;
      try {
        const idx = await source.readFile(`${dir}/${pack}.idx`, { signal: this.signal });
        this.bytesDownloaded += idx.length;
        const frames = new Map<number, FrameWant>();
        // The remote pack's size is not known without another round trip; a frame beyond
        // its end fails the range read instead.
        decodeIndex(idx, Number.MAX_SAFE_INTEGER, pack, (hash, fo, fl, offset, length) => {
          let f = frames.get(fo);
          if (!f) frames.set(fo, (f = { offset: fo, length: fl, chunks: [] }));
          if (f.length !== fl) {
            throw new ReimageError(
              'PACK_CORRUPT',
              `pack index ${pack} disagrees on a frame length`,
            );
          }
          f.chunks.push({ hash, offset, length });
          if (!this.needed) {
            const k = hashKey(hash);
            if (!this.indexed.has(k) && this.known.getByKey(k)) this.chunksFromLocal++;
            this.indexed.add(k);
          }
        });
        anyIndex = true;
        const want = [...frames.values()]
          .filter((f) => f.chunks.some((c) => this.wanted(hashKey(c.hash))))
          .sort((a, b) => a.offset - b.offset);
        for (let i = 0; i < want.length;) {
          const batch: FrameWant[] = [];
          let bytes = 0;
          while (
            i < want.length &&
            (batch.length === 0 || bytes + want[i]!.length <= this.batchBytes)
          ) {
            // Another frame of this batch may have brought its chunks already.
            if (want[i]!.chunks.some((c) => this.wanted(hashKey(c.hash)))) {
              batch.push(want[i]!);
              bytes += want[i]!.length;
            }
            i++;
          }
          if (batch.length === 0) continue;
          const data = await source.readRanges(
            `${dir}/${pack}.pack`,
            batch.map((f) => ({ offset: f.offset, length: f.length })),
            { signal: this.signal },
          );
          for (let j = 0; j < batch.length; j++) {
            this.bytesDownloaded += data[j]!.length;
            this.addFrame(batch[j]!, data[j]!, pack, source);
          }
          this.progress();
          await this.commit(true);
        }
        if (want.length > 0) this.packSources[pack] = source.name;
        return;
      } catch (e) {
        this.noteBad(source, pack, e);
      }
    }
    if (!anyIndex) this.unreadablePacks.push(pack);
  }

  /** Checks every chunk of a fetched frame against its hash, then stores the frame as is. */
  private addFrame(f: FrameWant, data: Buffer, pack: string, source: RemoteStore): void {
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
    // The compressed frame goes into the local store unchanged: no recompression.
    this.session.addFrame({ data, chunks: records });
    this.framesFetched++;
    this.chunksFetched += fresh;
  }

  /** Moves the session's packs into the store (when `ifLarge`: only once enough is written). */
  private async commit(ifLarge: boolean): Promise<void> {
    const s = this.session;
    if (ifLarge && s.bytesWritten < COMMIT_EVERY) return;
    const { packOf } = await s.commit();
    const packNo = new Map<string, number>();
    for (const [key, loc] of s.added) {
      const id = packOf(key)!;
      let no = packNo.get(id);
      if (no === undefined) packNo.set(id, (no = this.known.addPack(id, this.into.packPath(id))));
      this.known.set(Buffer.from(key, 'latin1'), {
        pack: no,
        frameOffset: loc.frameOffset,
        frameLength: loc.frameLength,
        offset: loc.offset,
        length: loc.length,
      });
    }
    s.close();
    this.session = this.into.beginSession(this.known);
  }

  private progress(): void {
    if (!this.opts.onProgress) return;
    const needed = this.needed ?? this.indexed;
    let done = 0;
    for (const k of needed) if (this.has(k)) done++;
    this.opts.onProgress({
      bytesDownloaded: this.bytesDownloaded,
      framesFetched: this.framesFetched,
      chunksDone: done,
      chunksNeeded: needed.size,
    });
  }
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
