import { createHash, type KeyObject } from 'node:crypto';
import { Decompressor } from 'zstd-napi';
import { PackReader, type ContentStore } from '../content/store.js';
import { hashKey, keyToHex } from '../content/digest.js';
import { decompressBounded, MAX_FRAME_RAW } from '../content/pack.js';
import { ImageLibrary, checkSignature, type ImageRecord } from './library.js';
import { showPath } from './manifest.js';
import { ProgressMeter, type Progress } from './progress.js';

export interface VerifyProblem {
  code: 'CHUNK_MISSING' | 'CHUNK_CORRUPT';
  chunk: string;
  /** the first file that uses the chunk */
  path: string;
  message: string;
}

export interface VerifyResult {
  record: ImageRecord;
  signature: 'valid' | 'not checked';
  chunks: number;
  bytes: number;
  problems: VerifyProblem[];
}

/**
 * Re-hashes every chunk of an image (and checks the manifest hash, and the signature when a
 * trusted key is given). Reports every bad chunk, not just the first.
 */
export async function verifyImage(opts: {
  store: ContentStore;
  image: string;
  trustedKey?: KeyObject;
  onProgress?: (p: Progress) => void;
}): Promise<VerifyResult> {
  const lib = new ImageLibrary(opts.store);
  const lock = await opts.store.lock('shared', `verify ${opts.image}`);
  try {
    const record = lib.resolve(opts.image);
    if (opts.trustedKey) checkSignature(record, opts.trustedKey);
    const { manifest } = lib.loadManifest(record.id);
    const index = opts.store.loadIndex(record.packs);
    const problems: VerifyProblem[] = [];
    // Unique chunks, with the first file that uses each.
    const users = new Map<string, { path: Buffer; length: number }>();
    for (const e of manifest.entries) {
      if (e.type !== 'file') continue;
      e.lengths!.forEach((length, c) => {
        const k = hashKey(e.chunks!, c * 32);
        if (!users.has(k)) users.set(k, { path: e.path, length });
      });
    }
    // Group by frame so that each frame is read and decompressed once, in file order.
    const frames = new Map<
      string,
      { pack: number; offset: number; length: number; chunks: string[] }
    >();
    const meter = new ProgressMeter('verify', opts.onProgress);
    for (const [k, u] of users) {
      const loc = index.getByKey(k);
      meter.bytesTotal += u.length;
      if (!loc) {
        problems.push({
          code: 'CHUNK_MISSING',
          chunk: keyToHex(k),
          path: showPath(u.path),
          message: `chunk ${keyToHex(k)} of ${showPath(u.path)} is not in the store`,
        });
        continue;
      }
      const fk = `${loc.pack}:${loc.frameOffset}`;
      let f = frames.get(fk);
      if (!f)
        frames.set(
          fk,
          (f = { pack: loc.pack, offset: loc.frameOffset, length: loc.frameLength, chunks: [] }),
        );
      f.chunks.push(k);
    }
    meter.filesTotal = users.size;
    meter.setPhase('data');
    const reader = new PackReader(index.packPaths);
    const dz = new Decompressor();
    const sorted = [...frames.values()].sort((a, b) => a.pack - b.pack || a.offset - b.offset);
    try {
      for (const f of sorted) {
        let raw: Buffer | undefined;
        let why = '';
        try {
          raw = decompressBounded(
            dz,
            reader.readFrame(f.pack, f.offset, f.length),
            MAX_FRAME_RAW,
            `frame at ${f.offset}`,
          );
        } catch (e) {
          why = (e as Error).message;
        }
        for (const k of f.chunks) {
          const loc = index.getByKey(k)!;
          const u = users.get(k)!;
          meter.bytesDone += u.length;
          meter.filesDone++;
          let ok = false;
          if (raw && loc.length === u.length && loc.offset + loc.length <= raw.length) {
            const h = createHash('sha256')
              .update(raw.subarray(loc.offset, loc.offset + loc.length))
              .digest();
            ok = h.toString('latin1') === k;
            if (!ok) why = `its bytes hash to ${h.toString('hex')}`;
          } else if (raw) {
            why = 'its length disagrees with the manifest or its frame';
          }
          if (!ok) {
            problems.push({
              code: 'CHUNK_CORRUPT',
              chunk: keyToHex(k),
              path: showPath(u.path),
              message: `chunk ${keyToHex(k)} of ${showPath(u.path)} is corrupt: ${why || 'its frame does not decompress'}`,
            });
          }
        }
        meter.tick();
      }
    } finally {
      reader.close();
    }
    meter.setPhase('done');
    return {
      record,
      signature: opts.trustedKey ? 'valid' : 'not checked',
      chunks: users.size,
      bytes: meter.bytesTotal,
      problems,
    };
  } finally {
    lock.release();
  }
}
