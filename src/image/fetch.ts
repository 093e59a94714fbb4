/**
 * The machine-side download of an image: record and manifest first, then local seeding
 * (old files, other stores), then only the remaining chunks from distribution points.
 * The transfer itself is `src/content/fetch.ts`; this room adds what needs the manifest
 * codec.
 */
import { isReimageError, ReimageError } from '../errors.js';
import { isHexId } from '../content/digest.js';
import {
  fetchImage,
  fetchImageHead,
  type FetchOptions,
  type FetchResult,
} from '../content/fetch.js';
import type { RemoteStore } from '../content/remote.js';
import { hashKey } from '../content/digest.js';
import {
  deltaPacksOf,
  fetchDeltas,
  planDeltas,
  readDeltaIndexes,
  referencedChunks,
  type DeltaFetchResult,
} from '../content/delta-fetch.js';
import type { ContentStore } from '../content/store.js';
import { decodeManifest } from './formats/native/v1/manifest-codec.js';
import { checkImageName } from './library.js';
import { seedStore, type SeedProgress, type SeedResult } from './seed.js';

/** The chunk hashes a (native v1) manifest names, for `fetchImage`'s `chunksOf`. */
export function* chunksOfManifest(manifest: Buffer): Iterable<Uint8Array> {
  for (const e of decodeManifest(manifest).entries) {
    if (!e.chunks) continue;
    for (let i = 0; i < e.chunks.length; i += 32) yield e.chunks.subarray(i, i + 32);
  }
}

export interface SeededFetchOptions extends Omit<FetchOptions, 'chunksOf' | 'head'> {
  /** Root of the old tree whose files are seeded from (e.g. `/`). */
  seedRoot?: string;
  /** Other content stores to seed from. */
  seedStores?: ContentStore[];
  onSeedProgress?: (p: SeedProgress) => void;
  /** Use the image's delta chunks when the local store can (default true). */
  deltas?: boolean;
}

export interface SeededFetchResult extends FetchResult {
  /** What seeding put into the store (undefined: not run, the image was there already). */
  seed: SeedResult | undefined;
  /**
   * Chunks rebuilt from delta chunks (undefined: the image has none, or nothing local to
   * rebuild from). Their bytes, and the delta indexes', are in `bytesDownloaded`.
   */
  deltas:
    | (DeltaFetchResult & {
        indexBytes: number;
        /** Frames of the packs not fetched because deltas replaced them, and their bytes. */
        framesReplaced: number;
        frameBytesReplaced: number;
      })
    | undefined;
}

/**
 * Fetches an image into `into`: record and manifest from the DPs (verified), then seeding
 * from the old files and stores given, then the remaining chunks from the DPs. Nothing is
 * downloaded twice; a re-run after a kill continues.
 */
export async function fetchImageSeeded(opts: SeededFetchOptions): Promise<SeededFetchResult> {
  const head = await fetchImageHead({
    sources: opts.sources,
    imageId: opts.imageId,
    into: opts.into,
    signal: opts.signal,
  });
  let seed: SeedResult | undefined;
  const seeding = opts.seedRoot !== undefined || (opts.seedStores?.length ?? 0) > 0;
  // Deltas need old chunks: from seeding, or already in the local store (an older image).
  const deltaSet =
    !head.complete &&
    opts.deltas !== false &&
    deltaPacksOf(head.record).length > 0 &&
    (seeding || opts.into.listPacks().length > 0)
      ? await readDeltaIndexes(opts.sources, head.record, opts.signal)
      : undefined;
  let needed: Set<string> | undefined;
  if (deltaSet) {
    needed = new Set();
    for (const h of chunksOfManifest(head.manifest)) needed.add(hashKey(h));
  }
  if (!head.complete && seeding) {
    seed = await seedStore({
      into: opts.into,
      manifest: decodeManifest(head.manifest),
      root: opts.seedRoot,
      stores: opts.seedStores,
      ...(deltaSet ? { keep: referencedChunks(deltaSet, (k) => needed!.has(k)) } : {}),
      signal: opts.signal,
      onProgress: opts.onSeedProgress,
    });
  }
  let deltas: SeededFetchResult['deltas'];
  let indexCache: Map<string, Buffer> | undefined;
  let planBytes = 0;
  if (deltaSet) {
    const plan = await planDeltas({
      sources: opts.sources,
      packs: head.record.packs,
      set: deltaSet,
      into: opts.into,
      needed: needed!,
      signal: opts.signal,
    });
    indexCache = plan.indexCache;
    planBytes = plan.bytesDownloaded;
    const d = await fetchDeltas({
      into: opts.into,
      set: deltaSet,
      needed: plan.chosen,
      signal: opts.signal,
    });
    deltas = {
      ...d,
      indexBytes: deltaSet.bytesDownloaded,
      framesReplaced: plan.framesReplaced,
      frameBytesReplaced: plan.frameBytesReplaced,
    };
  }
  const r = await fetchImage({
    ...opts,
    head,
    chunksOf: chunksOfManifest,
    ...(indexCache ? { indexCache } : {}),
  });
  // Pack indexes read to plan count once (fetchImage reused them).
  const extra = deltas ? deltas.indexBytes + deltas.bytesDownloaded + planBytes : 0;
  return { ...r, bytesDownloaded: r.bytesDownloaded + extra, seed, deltas };
}

/**
 * The image id for IMAGE given as an id or a name: a name is looked up in the sources'
 * `objects/names/NAME.json` (the library's layout), first source that has it. A name is
 * only a pointer: what is fetched is still verified against the id.
 */
export async function resolveImageRef(
  sources: RemoteStore[],
  ref: string,
  signal?: AbortSignal,
): Promise<string> {
  if (isHexId(ref)) return ref;
  checkImageName(ref);
  const tried: string[] = [];
  for (const s of sources) {
    try {
      const doc = JSON.parse(
        (await s.readFile(`objects/names/${ref}.json`, { signal })).toString('utf8'),
      ) as { id?: unknown };
      if (typeof doc.id === 'string' && isHexId(doc.id)) return doc.id;
      tried.push(`${s.name}: not a name record`);
    } catch (e) {
      if (isReimageError(e, 'CANCELLED')) throw e;
      tried.push(`${s.name}: ${(e as Error).message}`);
    }
  }
  throw new ReimageError(
    'IMAGE_NOT_FOUND',
    `no distribution point has an image named ${JSON.stringify(ref)} (${tried.join('; ')}); give the image id`,
    { details: { name: ref } },
  );
}
