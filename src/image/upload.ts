/**
 * Uploading an image from a local content store into a management server's library
 * (docs/upload.md). The server is reached through `UploadServer` — in practice
 * `new UploadClient(apiClient)` of src/client/uploads.ts, the pinned HTTPS client — so this
 * module needs no HTTP of its own and a test can hand it any implementation.
 */
import { Decompressor } from 'zstd-napi';
import { hashKey, keyToHex, sha256 } from '../content/digest.js';
import { encodeFrameStream } from '../content/frame-stream.js';
import {
  decompressBounded,
  FRAME_CHUNK_RECORD,
  FrameBuilder,
  MAX_FRAME_RAW,
  type Frame,
} from '../content/pack.js';
import { backoffDelay } from '../content/remote.js';
import { PackReader, type ContentStore } from '../content/store.js';
import { isReimageError, ReimageError } from '../errors.js';
import { ImageLibrary } from './library.js';

/** What the upload needs of the server (implemented by src/client/uploads.ts `UploadClient`). */
export interface UploadServer {
  /** The server's address, for messages. */
  readonly server?: string;
  start(
    body: UploadStartBody,
    signal?: AbortSignal,
  ): Promise<{ upload: { id: string; bytesReceived: number }; resumed: boolean }>;
  missing(id: string, hashes: string[], signal?: AbortSignal): Promise<string[]>;
  putFrames(id: string, body: Uint8Array, signal?: AbortSignal): Promise<unknown>;
  commit(
    id: string,
    manifest: Uint8Array,
    signal?: AbortSignal,
  ): Promise<{ image: Record<string, unknown>; upload: { id: string; bytesReceived: number } }>;
}

/** The body of `POST /api/v1/uploads`. */
export interface UploadStartBody {
  imageId: string;
  name: string;
  properties: {
    description?: string;
    osFamily?: string;
    osVersion?: string;
    architecture?: string;
    created: string;
    sourceMachine?: string;
    custom: Record<string, string>;
  };
  imageFormat?: 'native-v1' | 'opaque';
  opaqueFormat?: string;
  parent?: string;
  signature?: { algorithm: 'ed25519'; keyId: string; value: string };
  inventory?: Record<string, unknown>;
}

export interface UploadProgress {
  phase: 'checking' | 'sending' | 'committing' | 'done';
  /** Distinct chunks of the image, and how many the server lacked when asked. */
  chunksTotal: number;
  chunksMissing: number;
  chunksSent: number;
  /** Compressed bytes of the frames to send (an estimate until they are built) and sent so far. */
  bytesToSend: number;
  bytesSent: number;
  /** Requests that failed and were retried. */
  retries: number;
  elapsedMs: number;
}

export interface UploadOptions {
  /** The local content store that holds the image. */
  store: ContentStore;
  /** The image: an id, a name, or an unambiguous id prefix. */
  imageId: string;
  /** The name in the server's library (default: the image's name in the local store). */
  name?: string;
  server: UploadServer;
  /** The source machine's inventory (hostname, os, arch, disks…), recorded with the image. */
  inventory?: Record<string, unknown>;
  signal?: AbortSignal;
  onProgress?: (p: UploadProgress) => void;
  /** Compressed bytes of frames per request (default 1 MiB): what a cut request costs again. */
  batchBytes?: number;
  /** Give up after this long without a successful request (default 10 minutes). */
  retryForMs?: number;
  /** Backoff between retries: exponential with full jitter, from base to cap (250 ms, 30 s). */
  backoffBaseMs?: number;
  backoffCapMs?: number;
}

export interface UploadResult {
  imageId: string;
  name: string;
  uploadId: string;
  /** Whether the server continued an upload left open (a killed or cut-off earlier run). */
  resumed: boolean;
  chunksTotal: number;
  chunksMissing: number;
  chunksSent: number;
  framesSent: number;
  /** Request body bytes this run sent (frames, hashes asked about, manifest), retries included. */
  bytesSent: number;
  retries: number;
  /** The image as the server's catalog registered it. */
  image: Record<string, unknown>;
}

const MISSING_BATCH = 4096;
const DEFAULT_BATCH = 1024 * 1024;

/** A frame of the local store that holds chunks the server lacks. */
interface FramePlan {
  pack: number;
  offset: number;
  length: number;
  /** The chunks of this frame the server lacks (keys), and all chunks the frame holds. */
  wanted: { key: string; offset: number; length: number }[];
  total: number;
}

/**
 * Uploads an image from a local store into the server's library: asks which chunks the
 * library lacks and sends only those, as frames of about `batchBytes` per request (a frame
 * whose chunks are all missing goes as stored; others are rebuilt from the missing chunks
 * alone). Every chunk is hashed before it is sent (and again by the server). A failed request
 * is retried with backoff after asking again what is still missing, so a link break costs at
 * most the request in flight; an upload the server no longer has is started again (the
 * library keeps what arrived). Last, the manifest is committed and the image is named and
 * registered with `inventory`.
 */
export async function uploadImage(opts: UploadOptions): Promise<UploadResult> {
  const lib = new ImageLibrary(opts.store);
  const lock = await opts.store.lock('shared', `upload ${opts.imageId}`);
  try {
    return await new Upload(opts, lib).run();
  } finally {
    lock.release();
  }
}

class Upload {
  private readonly started = Date.now();
  private readonly signal: AbortSignal | undefined;
  private readonly server: UploadServer;
  private readonly dz = new Decompressor();
  private uploadId = '';
  private resumed = false;
  private lastSuccess = Date.now();
  private progressAt = 0;
  private readonly p: UploadProgress = {
    phase: 'checking',
    chunksTotal: 0,
    chunksMissing: 0,
    chunksSent: 0,
    bytesToSend: 0,
    bytesSent: 0,
    retries: 0,
    elapsedMs: 0,
  };
  private framesSent = 0;
  private startBody!: UploadStartBody;

  constructor(
    private readonly opts: UploadOptions,
    private readonly lib: ImageLibrary,
  ) {
    this.signal = opts.signal;
    this.server = opts.server;
  }

  async run(): Promise<UploadResult> {
    const rec = this.lib.resolve(this.opts.imageId);
    const id = rec.id;
    // Checked locally first: never send a manifest that does not hash to its id.
    const { manifest } = this.lib.loadManifest(id);
    const z = this.opts.store.readObject('manifests', `${id}.zst`)!;
    const name = this.opts.name ?? this.lib.namesOf(id)[0] ?? rec.properties.name;
    const { name: _n, custom, ...props } = rec.properties;
    this.startBody = {
      imageId: id,
      name,
      properties: { ...props, custom: custom ?? {} },
      ...(rec.imageFormat ? { imageFormat: rec.imageFormat } : {}),
      ...(rec.opaqueFormat ? { opaqueFormat: rec.opaqueFormat } : {}),
      ...(rec.parent ? { parent: rec.parent } : {}),
      ...(rec.signature ? { signature: rec.signature } : {}),
      ...(this.opts.inventory ? { inventory: this.opts.inventory } : {}),
    };

    const keys = new Set<string>();
    for (const e of manifest.entries) {
      if (!e.chunks || !e.lengths) continue;
      for (let c = 0; c < e.lengths.length; c++) keys.add(hashKey(e.chunks, c * 32));
    }
    this.p.chunksTotal = keys.size;
    const index = this.opts.store.loadIndex(rec.packs);
    for (const k of keys) {
      if (!index.getByKey(k))
        throw new ReimageError(
          'CHUNK_MISSING',
          `chunk ${keyToHex(k)} of image ${id} is not in the local store ${this.opts.store.root}`,
          { details: { image: id, chunk: keyToHex(k) } },
        );
    }
    // How many chunks each frame holds: a frame whose chunks are all wanted is sent as stored.
    const perFrame = new Map<string, number>();
    for (const [, loc] of index.entries()) {
      const fk = `${loc.pack}:${loc.frameOffset}`;
      perFrame.set(fk, (perFrame.get(fk) ?? 0) + 1);
    }

    this.emit(true);
    await this.begin();
    let image: Record<string, unknown> | undefined;
    for (let round = 0; image === undefined; round++) {
      const missing = await this.askMissing([...keys]);
      if (round === 0) this.p.chunksMissing = missing.size;
      const plans = this.plan(missing, index, perFrame);
      this.p.bytesToSend = this.p.bytesSent + plans.reduce((a, f) => a + f.length, 0);
      this.p.phase = 'sending';
      this.emit(true);
      const reader = new PackReader(index.packPaths);
      try {
        await this.sendAll(plans, reader);
      } finally {
        reader.close();
      }
      this.p.phase = 'committing';
      this.emit(true);
      try {
        const r = await this.call(() => this.server.commit(this.uploadId, z, this.signal));
        this.p.bytesSent += z.length;
        image = r.image;
      } catch (e) {
        // The library lost something meanwhile (it should not): ask again, once.
        if (!isReimageError(e, 'UPLOAD_INCOMPLETE') || round > 0) throw e;
      }
    }
    this.p.phase = 'done';
    this.emit(true);
    return {
      imageId: id,
      name,
      uploadId: this.uploadId,
      resumed: this.resumed,
      chunksTotal: this.p.chunksTotal,
      chunksMissing: this.p.chunksMissing,
      chunksSent: this.p.chunksSent,
      framesSent: this.framesSent,
      bytesSent: this.p.bytesSent,
      retries: this.p.retries,
      image,
    };
  }

  /** Opens the upload (or resumes the server's open one for the same image and name). */
  private async begin(): Promise<void> {
    const r = await this.retrying(() => this.server.start(this.startBody, this.signal));
    this.p.bytesSent += Buffer.byteLength(JSON.stringify(this.startBody));
    this.uploadId = r.upload.id;
    this.resumed ||= r.resumed;
  }

  private async askMissing(keys: string[]): Promise<Set<string>> {
    const out = new Set<string>();
    for (let i = 0; i < keys.length; i += MISSING_BATCH) {
      const hex = keys.slice(i, i + MISSING_BATCH).map(keyToHex);
      const got = await this.call(() => this.server.missing(this.uploadId, hex, this.signal));
      this.p.bytesSent += 12 + hex.length * 67;
      for (const h of got) out.add(Buffer.from(h, 'hex').toString('latin1'));
      this.emit(false);
    }
    return out;
  }

  private plan(
    missing: Set<string>,
    index: ReturnType<ContentStore['loadIndex']>,
    perFrame: Map<string, number>,
  ): FramePlan[] {
    const frames = new Map<string, FramePlan>();
    for (const k of missing) {
      const loc = index.getByKey(k)!;
      const fk = `${loc.pack}:${loc.frameOffset}`;
      let f = frames.get(fk);
      if (!f)
        frames.set(
          fk,
          (f = {
            pack: loc.pack,
            offset: loc.frameOffset,
            length: loc.frameLength,
            wanted: [],
            total: perFrame.get(fk) ?? 0,
          }),
        );
      f.wanted.push({ key: k, offset: loc.offset, length: loc.length });
    }
    return [...frames.values()].sort((a, b) => a.pack - b.pack || a.offset - b.offset);
  }

  private async sendAll(plans: FramePlan[], reader: PackReader): Promise<void> {
    const limit = this.opts.batchBytes ?? DEFAULT_BATCH;
    for (let i = 0; i < plans.length;) {
      const batch: FramePlan[] = [];
      let bytes = 0;
      while (i < plans.length && (batch.length === 0 || bytes + plans[i]!.length <= limit)) {
        batch.push(plans[i]!);
        bytes += plans[i]!.length;
        i++;
      }
      await this.sendBatch(batch, reader);
    }
  }

  /** Sends one batch; after a failure, asks what is still missing and sends only that. */
  private async sendBatch(batch: FramePlan[], reader: PackReader): Promise<void> {
    for (let failures = 0; ;) {
      const frames = this.build(batch, reader);
      const body = encodeFrameStream(frames);
      try {
        this.cancelled();
        await this.server.putFrames(this.uploadId, body, this.signal);
        this.lastSuccess = Date.now();
        this.p.bytesSent += body.length;
        this.p.chunksSent += batch.reduce((a, f) => a + f.wanted.length, 0);
        this.framesSent += frames.length;
        this.emit(false);
        return;
      } catch (e) {
        this.p.bytesSent += body.length; // sent, or partly: counted as sent
        await this.recover(e, failures++);
      }
      // What arrived before the break is in the library: ask, and send only the rest.
      const hex = batch.flatMap((f) => f.wanted.map((w) => keyToHex(w.key)));
      const still = new Set(
        await this.call(() => this.server.missing(this.uploadId, hex, this.signal)),
      );
      this.p.bytesSent += 12 + hex.length * 67;
      for (const f of batch) {
        const before = f.wanted.length;
        f.wanted = f.wanted.filter((w) => still.has(keyToHex(w.key)));
        this.p.chunksSent += before - f.wanted.length;
      }
      batch = batch.filter((f) => f.wanted.length > 0);
      if (batch.length === 0) return;
    }
  }

  /** The frames of a batch, each chunk checked against its hash before it leaves. */
  private build(batch: FramePlan[], reader: PackReader): Frame[] {
    const out: Frame[] = [];
    const builder = new FrameBuilder((f) => out.push(f));
    for (const f of batch) {
      const data = reader.readFrame(f.pack, f.offset, f.length);
      const where = `the frame at ${f.offset} of local pack ${f.pack}`;
      const raw = decompressBounded(this.dz, data, MAX_FRAME_RAW, where);
      const whole = f.wanted.length === f.total;
      const records = whole ? Buffer.alloc(f.wanted.length * FRAME_CHUNK_RECORD) : undefined;
      f.wanted.forEach((w, i) => {
        const bytes = raw.subarray(w.offset, w.offset + w.length);
        const hash = Buffer.from(w.key, 'latin1');
        if (w.offset + w.length > raw.length || !sha256(bytes).equals(hash))
          throw new ReimageError(
            'CHUNK_CORRUPT',
            `chunk ${hash.toString('hex')} in ${where} of ${this.opts.store.root} does not hash to its name; nothing more was sent (\`reimage image verify\` checks the store)`,
            { details: { chunk: hash.toString('hex') } },
          );
        if (records) {
          records.set(hash, i * FRAME_CHUNK_RECORD);
          records.writeUInt32LE(w.offset, i * FRAME_CHUNK_RECORD + 32);
          records.writeUInt32LE(w.length, i * FRAME_CHUNK_RECORD + 36);
        } else builder.add(hash, bytes);
      });
      // A frame with only missing chunks goes as stored: no recompression.
      if (records) out.push({ data, chunks: records });
    }
    builder.flush();
    return out;
  }

  /** Runs one request, retrying transient failures; an upload the server lost is started again. */
  private async call<T>(fn: () => Promise<T>): Promise<T> {
    for (let failures = 0; ;) {
      try {
        this.cancelled();
        const r = await fn();
        this.lastSuccess = Date.now();
        return r;
      } catch (e) {
        await this.recover(e, failures++);
      }
    }
  }

  /** Like `call`, for `start` itself (no upload to restart). */
  private async retrying<T>(fn: () => Promise<T>): Promise<T> {
    for (let failures = 0; ;) {
      try {
        this.cancelled();
        const r = await fn();
        this.lastSuccess = Date.now();
        return r;
      } catch (e) {
        if (isReimageError(e, 'UPLOAD_NOT_FOUND')) throw e;
        await this.recover(e, failures++);
      }
    }
  }

  /** Decides about a failed request: rethrow, or wait (and reopen the upload when it is gone). */
  private async recover(e: unknown, failures: number): Promise<void> {
    if (this.signal?.aborted || isReimageError(e, 'CANCELLED'))
      throw new ReimageError('CANCELLED', 'the upload was cancelled', { cause: e });
    if (isReimageError(e, 'UPLOAD_NOT_FOUND')) {
      // Committed by a lost answer, expired, or the server restarted: open it again.
      await this.begin();
      return;
    }
    if (!transient(e)) throw e;
    if (Date.now() - this.lastSuccess > (this.opts.retryForMs ?? 10 * 60_000)) throw e;
    this.p.retries++;
    this.emit(true);
    await sleep(
      backoffDelay(failures, this.opts.backoffBaseMs ?? 250, this.opts.backoffCapMs ?? 30_000),
      this.signal,
    );
  }

  private cancelled(): void {
    if (this.signal?.aborted)
      throw new ReimageError('CANCELLED', 'the upload was cancelled', {
        cause: this.signal.reason,
      });
  }

  private emit(force: boolean): void {
    if (!this.opts.onProgress) return;
    const now = Date.now();
    if (!force && now - this.progressAt < 200) return;
    this.progressAt = now;
    this.p.elapsedMs = now - this.started;
    this.opts.onProgress({ ...this.p });
  }
}

/** Failures worth retrying: no answer, the link broke, or the server is briefly unable. */
function transient(e: unknown): boolean {
  if (!isReimageError(e)) return false;
  if (e.code === 'SERVER_UNREACHABLE' || e.code === 'DATABASE_ERROR' || e.code === 'STORE_BUSY')
    return true;
  const status = e.details.status;
  return e.code === 'INTERNAL' && typeof status === 'number' && (status >= 500 || status === 429);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted)
      return reject(
        new ReimageError('CANCELLED', 'the upload was cancelled', { cause: signal.reason }),
      );
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new ReimageError('CANCELLED', 'the upload was cancelled', { cause: signal?.reason }));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
