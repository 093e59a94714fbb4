/**
 * Uploads into the server's image library (docs/upload.md): a client that holds an image in
 * a local content store asks which chunks the library lacks, sends only those (as pack frames,
 * each chunk hashed here before it is stored), then commits the manifest; the image is then
 * named in the library and registered in the catalog with the source machine's inventory.
 *
 * An upload lives in memory. Its verified frames go through a WriteSession that is committed
 * to the library as it grows, when the upload is idle, and when it ends, so what arrived stays
 * in the library across a link break, a killed uploader (the next one resumes the same
 * upload: same image, name and user) and, once committed, a server restart. While any upload
 * is open the registry holds a shared lock on the library, so `store gc` cannot delete chunks
 * that an upload has sent but not yet committed into an image.
 */
import { randomUUID } from 'node:crypto';
import type { FastifyBaseLogger } from 'fastify';
import { Decompressor } from 'zstd-napi';
import type { Catalog, ImageRecord as CatalogImage } from '../catalog/catalog.js';
import { hashKey, keyToHex, sha256Hex } from '../content/digest.js';
import { decodeFrameStream } from '../content/frame-stream.js';
import type { HeldLock } from '../content/lock.js';
import { decompressBounded } from '../content/pack.js';
import type { ChunkIndex, ContentStore, WriteSession } from '../content/store.js';
import { ReimageError } from '../errors.js';
import { decodeManifest } from '../image/formats/native/v1/manifest-codec.js';
import {
  IMAGE_RECORD_FORMAT,
  ImageLibrary,
  type ImageProperties,
  type ImageRecord,
  type ImageSignature,
} from '../image/library.js';
import type { Entry } from '../image/manifest.js';
import { countStats } from '../image/record.js';
import { catalogImage } from './routes/images.js';

/** A decompressed manifest larger than this is refused (about two million entries). */
export const MAX_UPLOAD_MANIFEST_RAW = 256 * 1024 * 1024;
/** Verified frames are committed to the library once this much is pending. */
const COMMIT_EVERY = 16 * 1024 * 1024;
/** ... and when an upload has been idle this long. */
const IDLE_COMMIT_MS = 5_000;
/** An open upload idle for this long is closed (what arrived stays in the library until gc). */
const EXPIRE_MS = 60 * 60 * 1000;
/** Finished uploads kept for `GET /api/v1/uploads/:id`. */
const KEEP_FINISHED = 100;

export interface UploadRequest {
  imageId: string;
  name: string;
  properties: Omit<ImageProperties, 'name'>;
  imageFormat?: ImageRecord['imageFormat'];
  opaqueFormat?: string;
  parent?: string;
  signature?: ImageSignature;
  inventory?: Record<string, unknown>;
}

export interface UploadStatus {
  id: string;
  imageId: string;
  name: string;
  user: string;
  state: 'open' | 'committed' | 'expired';
  /** Request body bytes received for this upload (all its requests, cut ones included). */
  bytesReceived: number;
  requests: number;
  framesReceived: number;
  /** Chunks this upload added to the library, and their compressed bytes. */
  chunksStored: number;
  bytesStored: number;
  createdAt: string;
  updatedAt: string;
}

interface Upload {
  status: UploadStatus;
  request: UploadRequest;
  session: WriteSession | undefined;
  /** One request at a time changes an upload. */
  tail: Promise<unknown>;
  idle: NodeJS.Timeout | undefined;
  lastUse: number;
}

/** The uploads of one server. */
export class UploadRegistry {
  private readonly open = new Map<string, Upload>();
  private readonly finished = new Map<string, UploadStatus>();
  private readonly lib: ImageLibrary;
  private readonly dz = new Decompressor();
  private known: ChunkIndex | undefined;
  private lock: HeldLock | undefined;
  private locking: Promise<void> | undefined;
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly store: ContentStore,
    private readonly catalog: Catalog,
    private readonly log: FastifyBaseLogger,
    private readonly clock: () => number = Date.now,
  ) {
    this.lib = new ImageLibrary(store);
    this.sweeper = setInterval(() => void this.expireIdle(), 60_000);
    this.sweeper.unref();
  }

  /** Opens an upload, or returns the open one of the same user for the same image and name. */
  async start(
    req: UploadRequest,
    user: string,
  ): Promise<{ upload: UploadStatus; resumed: boolean }> {
    for (const u of this.open.values()) {
      const s = u.status;
      if (s.imageId === req.imageId && s.name === req.name && s.user === user) {
        u.request = req; // the newest properties and inventory win
        this.touch(u);
        return { upload: s, resumed: true };
      }
    }
    await this.holdLibrary();
    const now = new Date(this.clock()).toISOString();
    const u: Upload = {
      status: {
        id: randomUUID(),
        imageId: req.imageId,
        name: req.name,
        user,
        state: 'open',
        bytesReceived: 0,
        requests: 0,
        framesReceived: 0,
        chunksStored: 0,
        bytesStored: 0,
        createdAt: now,
        updatedAt: now,
      },
      request: req,
      session: undefined,
      tail: Promise.resolve(),
      idle: undefined,
      lastUse: this.clock(),
    };
    this.open.set(u.status.id, u);
    this.touch(u);
    this.log.info(
      { upload: u.status.id, image: req.imageId, name: req.name, user },
      'upload opened',
    );
    return { upload: u.status, resumed: false };
  }

  status(id: string): UploadStatus {
    const s = this.open.get(id)?.status ?? this.finished.get(id);
    if (!s) throw notFound(id);
    return s;
  }

  list(): UploadStatus[] {
    return [...[...this.open.values()].map((u) => u.status), ...this.finished.values()];
  }

  /** Counts request body bytes as they arrive (cut requests included): the server's own figure. */
  countBytes(id: string, n: number): void {
    const u = this.open.get(id);
    if (u) u.status.bytesReceived += n;
  }

  countRequest(id: string): void {
    const u = this.open.get(id);
    if (u) u.status.requests++;
  }

  /** Which of `hashes` (hex) neither the library nor this upload has. */
  async missing(id: string, hashes: string[]): Promise<string[]> {
    const u = this.get(id);
    return this.serial(u, async () => {
      this.touch(u);
      const known = this.known!;
      return hashes.filter((h) => {
        const b = Buffer.from(h, 'hex');
        return !known.has(b) && !u.session?.added.has(hashKey(b));
      });
    });
  }

  /** Verifies a frame stream whole, then appends its frames to the upload's session. */
  async putFrames(
    id: string,
    body: Buffer,
  ): Promise<{ frames: number; chunksStored: number; bytesStored: number }> {
    const u = this.get(id);
    return this.serial(u, async () => {
      this.touch(u);
      const frames = decodeFrameStream(body, this.dz); // all or nothing
      const s = (u.session ??= this.store.beginSession(this.known!));
      const chunksBefore = s.added.size;
      const bytesBefore = s.bytesWritten;
      for (const f of frames) s.addFrame(f);
      const chunksStored = s.added.size - chunksBefore;
      const bytesStored = s.bytesWritten - bytesBefore;
      u.status.framesReceived += frames.length;
      u.status.chunksStored += chunksStored;
      u.status.bytesStored += bytesStored;
      if (s.bytesWritten >= COMMIT_EVERY) await this.flush(u);
      return { frames: frames.length, chunksStored, bytesStored };
    });
  }

  /**
   * Checks the manifest (it must hash to the image id and decode) and that the library has
   * every chunk it names, then writes manifest, record and name and registers the image in
   * the catalog. Nothing is recorded when any check fails.
   */
  async commit(id: string, z: Buffer, audit: (tx: Catalog, what: string) => Promise<void>) {
    const u = this.get(id);
    return this.serial(u, async () => {
      this.touch(u);
      await this.flush(u);
      const { request: r, status } = u;
      let canonical: Buffer;
      try {
        canonical = decompressBounded(this.dz, z, MAX_UPLOAD_MANIFEST_RAW, 'the manifest');
      } catch (e) {
        throw new ReimageError(
          'UPLOAD_MANIFEST_INVALID',
          `The manifest sent cannot be decompressed: ${(e as Error).message}.`,
          { cause: e },
        );
      }
      const got = sha256Hex(canonical);
      if (got !== r.imageId)
        throw new ReimageError(
          'UPLOAD_MANIFEST_INVALID',
          `The manifest sent hashes to ${got}, not to the image id ${r.imageId}.`,
          { details: { image: r.imageId, manifestHash: got } },
        );
      let entries: Entry[];
      try {
        entries = decodeManifest(canonical).entries;
      } catch (e) {
        throw new ReimageError(
          'UPLOAD_MANIFEST_INVALID',
          `The manifest sent is malformed: ${(e as Error).message}`,
          { cause: e },
        );
      }
      const known = this.known!;
      const packs = new Set<string>();
      const uniq = new Set<string>();
      const missing: string[] = [];
      let chunks = 0;
      let uniqueBytes = 0;
      for (const e of entries) {
        if (!e.chunks || !e.lengths) continue;
        for (let c = 0; c < e.lengths.length; c++) {
          chunks++;
          const k = hashKey(e.chunks, c * 32);
          if (uniq.has(k)) continue;
          uniq.add(k);
          uniqueBytes += e.lengths[c]!;
          const loc = known.getByKey(k);
          if (loc) packs.add(known.packs[loc.pack]!);
          else missing.push(k);
        }
      }
      if (missing.length > 0)
        throw new ReimageError(
          'UPLOAD_INCOMPLETE',
          `The library lacks ${missing.length} of the ${uniq.size} chunks the manifest names; send them, then commit again.`,
          {
            details: {
              image: r.imageId,
              missing: missing.length,
              firstMissing: missing.slice(0, 5).map(keyToHex),
            },
          },
        );
      const existing = this.lib.getRecord(r.imageId);
      // An image is immutable: an identical tree uploaded again only gets another name.
      const record: ImageRecord = existing ?? {
        format: IMAGE_RECORD_FORMAT,
        version: 1,
        id: r.imageId,
        imageFormat: r.imageFormat ?? 'native-v1',
        ...(r.opaqueFormat ? { opaqueFormat: r.opaqueFormat } : {}),
        properties: { ...r.properties, name: r.name },
        stats: countStats(entries, {
          chunks,
          uniqueChunks: uniq.size,
          uniqueBytes,
          storedBytes: status.bytesStored,
          manifestBytes: z.length,
        }),
        packs: [...packs].sort(),
        ...(r.parent ? { parent: r.parent } : {}),
        ...(r.signature ? { signature: r.signature } : {}),
        ...(r.inventory ? { inventory: r.inventory } : {}),
      };
      const image: CatalogImage = await this.catalog.transaction(async (tx) => {
        // Manifest, record, then name, as a capture writes them: a name always finds a whole image.
        if (!existing) {
          this.store.writeObject('manifests', `${r.imageId}.zst`, z);
          this.lib.putRecord(record);
        }
        this.lib.setName(r.name, r.imageId);
        const reg = await tx.registerImage(catalogImage(record, r.name, status.user));
        await audit(tx, `${r.name} ${r.imageId.slice(0, 12)}`);
        return reg.image;
      });
      this.finish(u, 'committed');
      this.log.info(
        {
          upload: status.id,
          image: r.imageId,
          name: r.name,
          bytesReceived: status.bytesReceived,
          requests: status.requests,
          chunksStored: status.chunksStored,
          bytesStored: status.bytesStored,
        },
        'upload committed',
      );
      return { image, upload: status };
    });
  }

  /** Commits pending frames of every upload and lets go of the library (server shutdown). */
  async close(): Promise<void> {
    clearInterval(this.sweeper);
    for (const u of [...this.open.values()]) {
      await this.serial(u, () => this.flush(u)).catch((e: unknown) =>
        this.log.error({ err: e, upload: u.status.id }, 'committing an upload failed'),
      );
      this.finish(u, 'expired');
    }
  }

  private get(id: string): Upload {
    const u = this.open.get(id);
    if (!u) throw notFound(id);
    return u;
  }

  private serial<T>(u: Upload, fn: () => Promise<T>): Promise<T> {
    // The upload may have been committed or expired while this request waited its turn.
    const guarded = () =>
      this.open.get(u.status.id) === u ? fn() : Promise.reject(notFound(u.status.id));
    const run = u.tail.then(guarded, guarded);
    u.tail = run.catch(() => {});
    return run;
  }

  private touch(u: Upload): void {
    u.lastUse = this.clock();
    u.status.updatedAt = new Date(u.lastUse).toISOString();
    if (u.idle) clearTimeout(u.idle);
    u.idle = setTimeout(() => {
      u.idle = undefined;
      if (this.open.get(u.status.id) === u)
        void this.serial(u, () => this.flush(u)).catch((e: unknown) =>
          this.log.error({ err: e, upload: u.status.id }, 'committing an idle upload failed'),
        );
    }, IDLE_COMMIT_MS);
    u.idle.unref();
  }

  /** Moves the session's packs into the library and records their chunks as known. */
  private async flush(u: Upload): Promise<void> {
    const s = u.session;
    if (!s) return;
    u.session = undefined;
    if (s.added.size === 0) {
      await s.abort();
      return;
    }
    const { packOf } = await s.commit();
    const known = this.known!;
    const packNo = new Map<string, number>();
    for (const [key, loc] of s.added) {
      const id = packOf(key)!;
      let no = packNo.get(id);
      if (no === undefined) packNo.set(id, (no = known.addPack(id, this.store.packPath(id))));
      known.set(Buffer.from(key, 'latin1'), {
        pack: no,
        frameOffset: loc.frameOffset,
        frameLength: loc.frameLength,
        offset: loc.offset,
        length: loc.length,
      });
    }
    s.close();
  }

  private finish(u: Upload, state: 'committed' | 'expired'): void {
    if (u.idle) clearTimeout(u.idle);
    u.status.state = state;
    this.open.delete(u.status.id);
    this.finished.set(u.status.id, u.status);
    while (this.finished.size > KEEP_FINISHED)
      this.finished.delete(this.finished.keys().next().value!);
    if (this.open.size === 0) this.releaseLibrary();
  }

  private async expireIdle(): Promise<void> {
    const now = this.clock();
    for (const u of [...this.open.values()]) {
      if (now - u.lastUse < EXPIRE_MS) continue;
      await this.serial(u, () => this.flush(u)).catch((e: unknown) =>
        this.log.error({ err: e, upload: u.status.id }, 'committing an expired upload failed'),
      );
      if (now - u.lastUse >= EXPIRE_MS && this.open.get(u.status.id) === u) {
        this.log.info({ upload: u.status.id }, 'upload expired after being idle');
        this.finish(u, 'expired');
      }
    }
  }

  /**
   * Takes the library's shared lock and loads its chunk index when the first upload opens.
   * Under the lock gc cannot run, so the index stays true (it only grows) until the last
   * upload ends.
   */
  private async holdLibrary(): Promise<void> {
    while (this.locking) await this.locking;
    if (this.lock) return;
    this.locking = (async () => {
      try {
        const lock = await this.store.lock('shared', 'uploads into the library', {
          waitMs: 30_000,
        });
        try {
          this.known = this.store.loadIndex();
        } catch (e) {
          lock.release();
          throw e;
        }
        this.lock = lock;
      } finally {
        this.locking = undefined;
      }
    })();
    await this.locking;
  }

  private releaseLibrary(): void {
    this.lock?.release();
    this.lock = undefined;
    this.known = undefined;
  }
}

function notFound(id: string): ReimageError {
  return new ReimageError(
    'UPLOAD_NOT_FOUND',
    `No open upload ${id}: it was committed, expired, or the server restarted. Start it again; what reached the library is not sent again.`,
    { details: { upload: id } },
  );
}
