import type { DeltaResult } from '../image/delta-capture.js';
import {
  closeSync,
  createReadStream,
  existsSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { KeyObject } from 'node:crypto';
import { ReimageError, isReimageError } from '../errors.js';
import { ContentStore } from '../content/store.js';
import { decodeIndex } from '../content/pack.js';
import { captureImage } from '../image/capture.js';
import { generalizeCaptureOptions } from '../image/generalize.js';
import type { ImageRecord } from '../image/library.js';
import type { Progress, Warning } from '../image/progress.js';
import { shareBackend, type ShareBackend } from '../migrate/share.js';
import { ImageLibrary } from '../image/library.js';
import { uploadImage } from '../image/upload.js';
import { UploadClient } from '../client/uploads.js';
import type { ApiClient } from '../client/http.js';
import { collectInventory } from './upload-command.js';
import { describeDestination, type CapturePlan } from './capture-plan.js';

/** What the wizard's progress page (or the plain progress view) is told. */
export interface CaptureHooks {
  signal: AbortSignal;
  onProgress: (p: Progress) => void;
  onWarning: (w: Warning) => void;
  /** Stages around the capture itself: checking the destination, copying to a share. */
  onStage?: (s: StageProgress) => void;
  /** Awaited before the image is committed (a "cancel?" question holds the commit). */
  beforeCommit?: () => Promise<void>;
}

export interface StageProgress {
  stage: 'checking' | 'capturing' | 'copying' | 'uploading' | 'cleaning';
  filesDone?: number;
  filesTotal?: number;
  bytesDone?: number;
  bytesTotal?: number;
}

export interface CaptureExtras {
  readRate?: number;
  workers?: number;
  signKey?: KeyObject;
  sourceMachine?: string;
  parent?: string;
  /** With `parent`: store delta chunks against it (default true). */
  deltas?: boolean;
  skipUnreadable?: boolean;
  oneFileSystem?: boolean;
  /** Where temporary stores go (default: the OS's temporary folder). */
  tmpDir?: string;
  /** The server destination: a client of the server (the token checked), and the local cache store. */
  connectServer?: (url: string, token: string | undefined) => Promise<ApiClient>;
  cacheStore?: string;
}

export interface CaptureOutcome {
  record: ImageRecord;
  created: boolean;
  /** files taken from the parent image without reading them */
  reused: number;
  warnings: Warning[];
  /** Where the image is now, for the completion page. */
  where: string;
  /** Bytes the capture wrote to its store (new chunks). */
  storedBytes: number;
  /** Delta chunks stored against the parent (folder destinations with a parent). */
  deltas?: DeltaResult;
  /** Files and bytes copied to the share (only what it lacked). */
  copied?: { files: number; bytes: number };
  /** Chunks and bytes sent to the server (only what its library lacked). */
  uploaded?: { chunks: number; bytes: number; resumed: boolean; retries: number };
}

/**
 * Runs a capture plan to its destination. Cancelled or failed, it leaves nothing behind: no
 * image in the destination, no temporary store, and a folder store it created is removed again.
 */
export async function runCapture(
  plan: CapturePlan,
  secret: string | undefined,
  hooks: CaptureHooks,
  extras: CaptureExtras = {},
): Promise<CaptureOutcome> {
  const d = plan.destination;
  if (d.kind === 'folder') return captureToFolder(plan, d.path, hooks, extras);
  if (d.kind === 'share') {
    if (!secret)
      throw new ReimageError(
        'USAGE',
        'the share password comes from the wizard, --password-file FILE or REIMAGE_SHARE_PASSWORD',
      );
    return captureToShare(plan, d, secret, hooks, extras);
  }
  return captureToServer(plan, d, secret, hooks, extras);
}

function captureOptions(
  plan: CapturePlan,
  store: ContentStore,
  hooks: CaptureHooks,
  extras: CaptureExtras,
  /** Delta packs are copied only from a folder destination (a share or server gets none yet). */
  folder = false,
) {
  const gen = plan.generalize ? generalizeCaptureOptions() : { excludes: [], emptyFiles: [] };
  return {
    source: plan.source,
    store,
    name: plan.name,
    description: plan.description,
    properties: plan.properties,
    excludes: [...gen.excludes, ...plan.excludes],
    emptyFiles: gen.emptyFiles,
    system: plan.system,
    oneFileSystem: extras.oneFileSystem,
    skipUnreadable: extras.skipUnreadable,
    parent: extras.parent,
    ...(extras.deltas === false || !folder ? { deltas: false } : {}),
    signKey: extras.signKey,
    sourceMachine: extras.sourceMachine,
    workers: extras.workers,
    readRate: extras.readRate,
    signal: hooks.signal,
    beforeCommit: hooks.beforeCommit,
    onProgress: hooks.onProgress,
    onWarning: hooks.onWarning,
  };
}

async function captureToFolder(
  plan: CapturePlan,
  path: string,
  hooks: CaptureHooks,
  extras: CaptureExtras,
): Promise<CaptureOutcome> {
  const dirExisted = existsSync(path);
  const storeExisted = existsSync(join(path, 'reimage-store.json'));
  const store = ContentStore.open(path, { create: true });
  try {
    hooks.onStage?.({ stage: 'capturing' });
    const res = await captureImage(captureOptions(plan, store, hooks, extras, true));
    return {
      record: res.record,
      created: res.created,
      reused: res.reused,
      warnings: res.warnings,
      where: `folder ${store.root}`,
      storedBytes: res.record.stats.storedBytes,
      ...(res.deltas ? { deltas: res.deltas } : {}),
    };
  } catch (e) {
    // The capture removed its temporary packs; a store made for it goes too.
    if (!storeExisted) {
      if (!dirExisted) rmSync(path, { recursive: true, force: true });
      else
        for (const f of ['packs', 'objects', 'locks', 'tmp', 'reimage-store.json'])
          rmSync(join(path, f), { recursive: true, force: true });
    }
    throw e;
  }
}

/** Files of a local store to copy, in the order that keeps the share's store valid at every step. */
function storeFiles(root: string): { packs: string[]; indexes: string[]; objects: string[] } {
  const list = (dir: string) => {
    try {
      return readdirSync(join(root, dir)).sort();
    } catch {
      return [];
    }
  };
  const packs: string[] = [];
  const indexes: string[] = [];
  for (const d of list('packs'))
    for (const f of list(`packs/${d}`)) {
      if (f.includes('.tmp-')) continue;
      if (f.endsWith('.pack')) packs.push(`packs/${d}/${f}`);
      else if (f.endsWith('.idx')) indexes.push(`packs/${d}/${f}`);
    }
  const objects: string[] = [];
  for (const kind of ['manifests', 'images'])
    for (const f of list(`objects/${kind}`))
      if (!f.includes('.tmp-')) objects.push(`objects/${kind}/${f}`);
  return { packs, indexes, objects };
}

function shareError(e: unknown): unknown {
  if (isReimageError(e, 'STATE_STORE_IO_FAILED'))
    return new ReimageError('SHARE_IO_FAILED', e.message.replace(/state store/g, 'share'), {
      cause: e,
      details: e.details,
    });
  return e;
}

async function captureToShare(
  plan: CapturePlan,
  d: Extract<CapturePlan['destination'], { kind: 'share' }>,
  password: string,
  hooks: CaptureHooks,
  extras: CaptureExtras,
): Promise<CaptureOutcome> {
  const backend: ShareBackend = shareBackend({
    url: d.url,
    username: d.user,
    password,
    ...(d.domain ? { domain: d.domain } : {}),
    ...(extras.tmpDir ? { tmpDir: extras.tmpDir } : {}),
  });
  const tmp = mkdtempSync(join(extras.tmpDir ?? tmpdir(), 'reimage-capture-'));
  const uploaded: string[] = [];
  try {
    // The account is checked before the (long) capture: a wrong password fails at once.
    hooks.onStage?.({ stage: 'checking' });
    const remote = new Set(await backend.list(''));
    if (remote.size > 0 && !remote.has('reimage-store.json')) {
      throw new ReimageError(
        'STORE_INVALID',
        `${backend.description} holds files but no content store; refusing to write an image store into it (use an empty folder or a store)`,
      );
    }
    const store = ContentStore.open(join(tmp, 'store'), { create: true });
    // The name's earlier versions stay listed: start from the share's name record.
    const nameFile = `objects/names/${plan.name}.json`;
    if (remote.has(nameFile))
      store.writeObject('names', `${plan.name}.json`, await readAll(backend, nameFile));
    await seedIndexes(backend, remote, store);
    hooks.onStage?.({ stage: 'capturing' });
    const res = await captureImage(captureOptions(plan, store, hooks, extras));

    // Copy what the share lacks: packs, then their indexes (an index makes a pack part of the
    // store), manifests and records; the name last, so it never points at a partial image.
    const files = storeFiles(store.root);
    const todo = [
      ...(remote.has('reimage-store.json') ? [] : ['reimage-store.json']),
      ...files.packs,
      ...files.indexes,
      ...files.objects,
    ].filter((f) => !remote.has(f));
    const sizes = todo.map((f) => statSync(join(store.root, f)).size);
    const bytesTotal = sizes.reduce((a, b) => a + b, 0);
    let bytesDone = 0;
    const progress = (i: number) =>
      hooks.onStage?.({
        stage: 'copying',
        filesDone: i,
        filesTotal: todo.length + 1,
        bytesDone,
        bytesTotal,
      });
    progress(0);
    for (const [i, f] of todo.entries()) {
      if (hooks.signal.aborted)
        throw new ReimageError('CANCELLED', 'capture cancelled; nothing was kept');
      await backend.put(f, createReadStream(join(store.root, f)));
      uploaded.push(f);
      bytesDone += sizes[i]!;
      if (f.endsWith('.pack') && files.packs[files.packs.length - 1] === f) await backend.flush();
      progress(i + 1);
    }
    await backend.flush();
    if (hooks.signal.aborted)
      throw new ReimageError('CANCELLED', 'capture cancelled; nothing was kept');
    const name = store.readObject('names', `${plan.name}.json`)!;
    await backend.put(nameFile, name);
    await backend.flush();
    uploaded.length = 0; // committed: the image is on the share
    progress(todo.length + 1);
    return {
      record: res.record,
      created: res.created,
      reused: res.reused,
      warnings: res.warnings,
      where: describeDestination(d),
      storedBytes: res.record.stats.storedBytes,
      copied: { files: todo.length + 1, bytes: bytesDone + name.length },
    };
  } catch (e) {
    if (uploaded.length) {
      hooks.onStage?.({ stage: 'cleaning' });
      // Remove what this capture put on the share (nothing refers to it yet).
      for (const f of uploaded.reverse()) await backend.remove(f).catch(() => {});
    }
    throw shareError(e);
  } finally {
    await backend.close();
    rmSync(tmp, { recursive: true, force: true });
  }
}

async function readAll(backend: ShareBackend, name: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of await backend.get(name)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/**
 * Gives the temporary store the share's pack indexes, each with a sparse stand-in for its pack
 * (as long as the index says the pack is), so the capture writes only chunks the share lacks
 * and the record names the share's packs for the rest. The stand-ins are never read (a capture
 * reads no known chunk) and never copied (the share has those packs).
 */
async function seedIndexes(backend: ShareBackend, remote: Set<string>, store: ContentStore) {
  const indexes = [...remote].filter(
    (f) =>
      /^packs\/[0-9a-f]{2}\/[0-9a-f]{64}\.idx$/.test(f) && remote.has(f.replace(/\.idx$/, '.pack')),
  );
  if (indexes.length === 0) return;
  await backend.prefetch?.(indexes);
  for (const f of indexes) {
    const id = f.slice(9, 73);
    const buf = await readAll(backend, f);
    let end = 0;
    decodeIndex(buf, Number.MAX_SAFE_INTEGER, id, (_h, frameOffset, frameLength) => {
      end = Math.max(end, frameOffset + frameLength);
    });
    mkdirSync(dirname(store.packPath(id)), { recursive: true });
    const fd = openSync(store.packPath(id), 'wx');
    try {
      ftruncateSync(fd, end);
    } finally {
      closeSync(fd);
    }
    writeFileSync(store.indexPath(id), buf);
  }
  await backend.dropPrefetched?.();
}

/** The local store a server capture goes through; kept, so the next capture reads only what changed. */
export function captureCacheStore(env: Record<string, string | undefined>): string {
  const base = env.XDG_CACHE_HOME || join(env.HOME || homedir(), '.cache');
  return join(base, 'reimage', 'capture-store');
}

async function captureToServer(
  plan: CapturePlan,
  d: Extract<CapturePlan['destination'], { kind: 'server' }>,
  token: string | undefined,
  hooks: CaptureHooks,
  extras: CaptureExtras,
): Promise<CaptureOutcome> {
  if (!extras.connectServer || !extras.cacheStore)
    throw new ReimageError(
      'DESTINATION_UNAVAILABLE',
      `capturing into a server library (${d.url}) needs a server connection here`,
    );
  // Connected (and the token and certificate checked) before the capture, not after.
  hooks.onStage?.({ stage: 'checking' });
  const api = await extras.connectServer(d.url, token);
  try {
    await api.request('GET', '/api/v1/whoami', hooks.signal ? { signal: hooks.signal } : {});
    // The cache store is kept: the next capture reads and sends only what changed.
    mkdirSync(dirname(extras.cacheStore), { recursive: true, mode: 0o700 });
    const store = ContentStore.open(extras.cacheStore, { create: true });
    const lib = new ImageLibrary(store);
    const before = lib.getName(plan.name);
    hooks.onStage?.({ stage: 'capturing' });
    const res = await captureImage(captureOptions(plan, store, hooks, extras));
    try {
      const up = await uploadImage({
        store,
        imageId: res.record.id,
        name: plan.name,
        server: new UploadClient(api),
        inventory: collectInventory(),
        signal: hooks.signal,
        onProgress: (p) =>
          hooks.onStage?.({
            stage: 'uploading',
            filesDone: p.chunksSent,
            filesTotal: p.chunksMissing,
            bytesDone: p.bytesSent,
            bytesTotal: p.bytesToSend,
          }),
      });
      return {
        record: res.record,
        created: res.created,
        reused: res.reused,
        warnings: res.warnings,
        where: `server library ${d.url} (registered in the catalog)`,
        storedBytes: res.record.stats.storedBytes,
        uploaded: {
          chunks: up.chunksSent,
          bytes: up.bytesSent,
          resumed: up.resumed,
          retries: up.retries,
        },
      };
    } catch (e) {
      // Not uploaded: the cache's name goes back to what it was (its chunks stay as cache).
      if (before) lib.setName(plan.name, before.id);
      else lib.deleteName(plan.name);
      if (res.created && lib.namesOf(res.record.id).length === 0) lib.deleteImage(res.record.id);
      throw e;
    }
  } finally {
    api.close();
  }
}
