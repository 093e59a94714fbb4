import type { KeyObject } from 'node:crypto';
import { hashKey, sha256Hex } from '../content/digest.js';
import type { ChunkIndex, WriteSession } from '../content/store.js';
import { encodeManifest, decodeManifest } from './formats/native/v1/manifest-codec.js';
import type { Entry } from './manifest.js';
import {
  signRecord,
  type ImageLibrary,
  type ImageProperties,
  type ImageRecord,
  type ImageStats,
} from './library.js';

/**
 * The last step of every way into the library (capture, import): encode the manifest, commit
 * the session's packs, and write the manifest and the image record. The name is set by the
 * caller, after this returns, so that a name never points at an image that is not whole.
 */
export async function recordImage(opts: {
  lib: ImageLibrary;
  session: WriteSession;
  known: ChunkIndex;
  entries: Entry[];
  properties: () => ImageProperties;
  parent?: string | undefined;
  signKey?: KeyObject | undefined;
  imageFormat?: ImageRecord['imageFormat'];
  opaqueFormat?: string;
  /** Delta packs written for this image (docs/content-store.md, "Delta packs"). */
  deltas?: string[] | undefined;
}): Promise<{ record: ImageRecord; created: boolean }> {
  const { lib, session, known, entries } = opts;
  const canonical = encodeManifest({ entries });
  // The reader's checks, always: an image that could not be applied is never recorded.
  decodeManifest(canonical);
  const id = sha256Hex(canonical);
  const existing = lib.getRecord(id);
  const committed = await session.commit();
  const packOf = (key: string): string | undefined => {
    const loc = known.getByKey(key);
    return loc ? known.packs[loc.pack] : committed.packOf(key);
  };
  const packs = new Set<string>();
  const uniq = new Set<string>();
  let uniqueBytes = 0;
  let chunks = 0;
  for (const e of entries) {
    if (!e.chunks || !e.lengths) continue;
    for (let c = 0; c < e.lengths.length; c++) {
      chunks++;
      const k = hashKey(e.chunks, c * 32);
      if (uniq.has(k)) continue;
      uniq.add(k);
      uniqueBytes += e.lengths[c]!;
      const pack = packOf(k);
      if (!pack)
        throw new Error(`bug: chunk ${Buffer.from(k, 'latin1').toString('hex')} was not stored`);
      packs.add(pack);
    }
  }
  const manifestBytes = lib.putManifest(id, canonical);
  session.close();
  // An image is immutable: an identical tree again only gets another name (its properties
  // and signature stay; `image update` changes properties).
  if (existing) {
    return {
      record: { ...existing, stats: { ...existing.stats, storedBytes: session.bytesWritten } },
      created: false,
    };
  }
  const record: ImageRecord = {
    format: 'reimage-image',
    version: 1,
    id,
    imageFormat: opts.imageFormat ?? 'native-v1',
    properties: opts.properties(),
    stats: countStats(entries, {
      chunks,
      uniqueChunks: uniq.size,
      uniqueBytes,
      storedBytes: session.bytesWritten,
      manifestBytes,
    }),
    packs: [...packs].sort(),
  };
  if (opts.opaqueFormat) record.opaqueFormat = opts.opaqueFormat;
  if (opts.parent) record.parent = opts.parent;
  if (opts.deltas?.length) record.deltas = opts.deltas;
  if (opts.signKey) record.signature = signRecord(record, opts.signKey);
  lib.putRecord(record);
  return { record, created: true };
}

/** Counts entries by type and bytes of a manifest's entries; `extra` gives the chunk and store figures. */
export function countStats(
  entries: Entry[],
  extra: Pick<
    ImageStats,
    'chunks' | 'uniqueChunks' | 'uniqueBytes' | 'storedBytes' | 'manifestBytes'
  >,
): ImageStats {
  const s: ImageStats = {
    entries: entries.length,
    files: 0,
    dirs: 0,
    symlinks: 0,
    hardlinks: 0,
    devices: 0,
    fifos: 0,
    bytes: 0,
    dataBytes: 0,
    ...extra,
  };
  for (const e of entries) {
    switch (e.type) {
      case 'file':
        s.files++;
        s.bytes += e.size;
        s.dataBytes += (e.lengths ?? []).reduce((a, b) => a + b, 0);
        break;
      case 'dir':
        s.dirs++;
        break;
      case 'symlink':
        s.symlinks++;
        break;
      case 'hardlink':
        s.hardlinks++;
        break;
      case 'fifo':
        s.fifos++;
        break;
      default:
        s.devices++;
    }
  }
  return s;
}
