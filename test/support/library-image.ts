import fs from 'node:fs';
import path from 'node:path';
import { Compressor } from 'zstd-napi';
import { sha256, sha256Hex } from '../../src/content/digest.js';
import { FrameBuilder, type Frame } from '../../src/content/pack.js';
import { ContentStore } from '../../src/content/store.js';
import { randomData } from './random.js';

export interface LibraryImage {
  lib: ContentStore;
  imageId: string;
  packs: string[];
  /** Bytes of every file a replication copies: packs, indexes, manifest, record. */
  totalBytes: number;
}

/**
 * An image in a fresh library store at `dir`: `chunks` incompressible 64 KiB chunks (48 make
 * ~3 MiB, one pack), a manifest and an image record, as replication and fetch read them.
 */
export async function libraryImage(dir: string, chunks = 48): Promise<LibraryImage> {
  const lib = ContentStore.open(dir, { create: true });
  const frames: Frame[] = [];
  const fb = new FrameBuilder((f) => frames.push(f));
  for (let i = 0; i < chunks; i++) {
    const data = randomData(`chunk-${i}`, 64 * 1024);
    fb.add(sha256(data), data);
  }
  fb.flush();
  const session = lib.beginSession(lib.loadIndex());
  for (const f of frames) session.addFrame(f);
  const packs = (await session.commit()).packs;
  session.close();
  const manifest = Buffer.from(`a manifest naming ${chunks} chunks ${'x'.repeat(1000)}`);
  const imageId = sha256Hex(manifest);
  lib.writeObject('manifests', `${imageId}.zst`, new Compressor().compress(manifest));
  lib.writeObject(
    'images',
    `${imageId}.json`,
    JSON.stringify({ id: imageId, name: 'test', packs }, null, 2) + '\n',
  );
  let totalBytes = 0;
  for (const p of packs) {
    totalBytes += fs.statSync(lib.packPath(p)).size + fs.statSync(lib.indexPath(p)).size;
  }
  totalBytes += fs.statSync(lib.objectPath('manifests', `${imageId}.zst`)).size;
  totalBytes += fs.statSync(lib.objectPath('images', `${imageId}.json`)).size;
  return { lib, imageId, packs, totalBytes };
}

/** Every file under `dir`, relative, with its size (what arrived at a DP). */
export function filesUnder(dir: string): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.set(path.relative(dir, p), fs.statSync(p).size);
    }
  };
  walk(dir);
  return out;
}
