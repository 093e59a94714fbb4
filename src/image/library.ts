import {
  createPrivateKey,
  createPublicKey,
  sign,
  verify,
  type KeyObject,
  createHash,
} from 'node:crypto';
import { Compressor, Decompressor } from 'zstd-napi';
import { ReimageError } from '../errors.js';
import { isHexId, sha256Hex } from '../content/digest.js';
import { decompressBounded } from '../content/pack.js';

/** A manifest larger than this is refused (about ten million entries). */
const MAX_MANIFEST_BYTES = 1024 * 1024 * 1024;
import type { ContentStore } from '../content/store.js';
import { decodeManifest } from './formats/native/v1/manifest-codec.js';
import type { Manifest } from './manifest.js';

/**
 * The image library on top of a content store: image records (properties, statistics, the
 * packs an image needs, its signature), the manifests they point at, and names. Records are
 * small JSON objects; manifests are zstd-compressed canonical bytes named by image id.
 *
 *   objects/images/<id>.json       image record
 *   objects/manifests/<id>.zst     canonical manifest (its SHA-256 is the id)
 *   objects/names/<name>.json      { name, id, previous: [older ids, newest first] }
 *   objects/statcache/<id>         capture-side stat cache for `--parent` (local only)
 */
export const IMAGE_RECORD_FORMAT = 'reimage-image';

export interface ImageProperties {
  name: string;
  description?: string;
  osFamily?: string;
  osVersion?: string;
  architecture?: string;
  created: string;
  sourceMachine?: string;
  /** Free-form key/values. */
  custom: Record<string, string>;
}

export interface ImageStats {
  entries: number;
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  devices: number;
  fifos: number;
  /** Logical bytes of regular files (sparse holes included). */
  bytes: number;
  /** Bytes of file data (holes excluded). */
  dataBytes: number;
  chunks: number;
  uniqueChunks: number;
  uniqueBytes: number;
  /** Compressed bytes this capture added to the store. */
  storedBytes: number;
  manifestBytes: number;
}

export interface ImageSignature {
  algorithm: 'ed25519';
  keyId: string;
  value: string;
}

export interface ImageRecord {
  format: typeof IMAGE_RECORD_FORMAT;
  version: 1;
  id: string;
  /** native-v1: the tree itself; opaque: a third-party image file stored as one file, applied by its format */
  imageFormat: 'native-v1' | 'opaque';
  /** for opaque images: the format plugin that applies the file */
  opaqueFormat?: string;
  properties: ImageProperties;
  stats: ImageStats;
  parent?: string;
  packs: string[];
  /**
   * Delta packs (`deltas/<ab>/<id>.dpack` and `.didx`): chunks of this image as deltas against
   * chunks of its parent. Optional: a reader without them fetches the chunks' frames.
   */
  deltas?: string[];
  signature?: ImageSignature;
  /**
   * The source machine's inventory (hostname, OS, disks…) as the capturing client reported it
   * when the image was uploaded to a server's library. Not covered by the signature.
   */
  inventory?: Record<string, unknown>;
}

export interface NameRecord {
  name: string;
  id: string;
  previous: string[];
  updated: string;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

export function checkImageName(name: string): void {
  if (!NAME_RE.test(name) || isHexId(name)) {
    throw new ReimageError(
      'IMAGE_NAME_INVALID',
      `${JSON.stringify(name)} is not a valid image name`,
    );
  }
}

export class ImageLibrary {
  constructor(readonly store: ContentStore) {}

  getRecord(id: string): ImageRecord | undefined {
    const buf = this.store.readObject('images', `${id}.json`);
    return buf ? (JSON.parse(buf.toString('utf8')) as ImageRecord) : undefined;
  }

  putRecord(rec: ImageRecord): void {
    this.store.writeObject('images', `${rec.id}.json`, JSON.stringify(rec, null, 2) + '\n');
  }

  getName(name: string): NameRecord | undefined {
    if (!NAME_RE.test(name)) return undefined;
    const buf = this.store.readObject('names', `${name}.json`);
    return buf ? (JSON.parse(buf.toString('utf8')) as NameRecord) : undefined;
  }

  listNames(): NameRecord[] {
    return this.store
      .listObjects('names')
      .filter((n) => n.endsWith('.json'))
      .map((n) => this.getName(n.slice(0, -5)))
      .filter((r): r is NameRecord => r !== undefined);
  }

  listRecords(): ImageRecord[] {
    return this.store
      .listObjects('images')
      .filter((n) => n.endsWith('.json'))
      .map((n) => this.getRecord(n.slice(0, -5)))
      .filter((r): r is ImageRecord => r !== undefined);
  }

  /** Points `name` at `id`, keeping what it pointed at before as its previous version. */
  setName(name: string, id: string): NameRecord {
    checkImageName(name);
    const old = this.getName(name);
    const previous =
      old && old.id !== id
        ? [old.id, ...old.previous.filter((p) => p !== id)]
        : (old?.previous ?? []);
    const rec: NameRecord = { name, id, previous, updated: new Date().toISOString() };
    this.store.writeObject('names', `${name}.json`, JSON.stringify(rec, null, 2) + '\n');
    return rec;
  }

  deleteName(name: string): void {
    this.store.deleteObject('names', `${name}.json`);
  }

  /** Finds an image by name, by full id, or by an unambiguous id prefix of at least 8 digits. */
  resolve(ref: string): ImageRecord {
    const byName = this.getName(ref);
    if (byName) {
      const rec = this.getRecord(byName.id);
      if (rec) return rec;
    }
    if (/^[0-9a-f]{8,64}$/.test(ref)) {
      const ids = this.store
        .listObjects('images')
        .filter((n) => n.endsWith('.json') && n.startsWith(ref))
        .map((n) => n.slice(0, -5));
      if (ids.length === 1) {
        const rec = this.getRecord(ids[0]!);
        if (rec) return rec;
      }
      if (ids.length > 1) {
        throw new ReimageError(
          'INVALID_ARGUMENT',
          `id prefix ${ref} matches ${ids.length} images; give more digits`,
        );
      }
    }
    throw new ReimageError(
      'IMAGE_NOT_FOUND',
      `no image named or with id ${JSON.stringify(ref)} in ${this.store.root}`,
      {
        details: { image: ref },
      },
    );
  }

  namesOf(id: string): string[] {
    return this.listNames()
      .filter((n) => n.id === id)
      .map((n) => n.name);
  }

  putManifest(id: string, canonical: Buffer): number {
    const c = new Compressor();
    c.setParameters({ compressionLevel: 3 });
    const z = c.compress(canonical);
    this.store.writeObject('manifests', `${id}.zst`, z);
    return z.length;
  }

  hasManifest(id: string): boolean {
    return this.store.readObject('manifests', `${id}.zst`) !== undefined;
  }

  /** Reads a manifest and checks that it hashes to its id before decoding it. */
  loadManifest(id: string): { manifest: Manifest; bytes: Buffer } {
    const z = this.store.readObject('manifests', `${id}.zst`);
    if (!z) {
      throw new ReimageError(
        'IMAGE_NOT_FOUND',
        `the manifest of image ${id} is missing from ${this.store.root}`,
      );
    }
    let bytes: Buffer;
    try {
      bytes = decompressBounded(
        new Decompressor(),
        z,
        MAX_MANIFEST_BYTES,
        `the manifest of image ${id}`,
      );
    } catch (e) {
      throw new ReimageError(
        'MANIFEST_HASH_MISMATCH',
        `the manifest of image ${id} cannot be decompressed`,
        { cause: e },
      );
    }
    if (sha256Hex(bytes) !== id) {
      throw new ReimageError(
        'MANIFEST_HASH_MISMATCH',
        `the manifest stored for image ${id} does not hash to its id`,
        {
          details: { image: id },
        },
      );
    }
    return { manifest: decodeManifest(bytes), bytes };
  }

  deleteImage(id: string): void {
    this.store.deleteObject('images', `${id}.json`);
    this.store.deleteObject('manifests', `${id}.zst`);
    this.store.deleteObject('statcache', id);
  }
}

/** What a signature covers: the id (so the whole tree, through the manifest hash) and the properties. */
export function signedStatement(rec: Pick<ImageRecord, 'id' | 'properties'>): Buffer {
  return Buffer.from(
    JSON.stringify({
      format: 'reimage-signed-image-v1',
      id: rec.id,
      properties: canonicalJson(rec.properties),
    }),
  );
}

function canonicalJson(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(canonicalJson);
  if (v && typeof v === 'object') {
    return Object.fromEntries(
      Object.keys(v as object)
        .sort()
        .map((k) => [k, canonicalJson((v as Record<string, unknown>)[k])]),
    );
  }
  return v;
}

export function keyIdOf(pub: KeyObject): string {
  const raw = pub.export({ format: 'der', type: 'spki' });
  return createHash('sha256').update(raw).digest('hex').slice(0, 16);
}

export function loadPrivateKey(pem: string | Buffer, file: string): KeyObject {
  try {
    const k = createPrivateKey(pem);
    if (k.asymmetricKeyType !== 'ed25519') throw new Error(`a ${k.asymmetricKeyType} key`);
    return k;
  } catch (e) {
    throw new ReimageError('KEY_INVALID', `${file} is not an ed25519 private key in PEM form`, {
      cause: e,
    });
  }
}

export function loadPublicKey(pem: string | Buffer, file: string): KeyObject {
  try {
    const k = createPublicKey(pem);
    if (k.asymmetricKeyType !== 'ed25519') throw new Error(`a ${k.asymmetricKeyType} key`);
    return k;
  } catch (e) {
    throw new ReimageError('KEY_INVALID', `${file} is not an ed25519 public key in PEM form`, {
      cause: e,
    });
  }
}

export function signRecord(rec: ImageRecord, key: KeyObject): ImageSignature {
  return {
    algorithm: 'ed25519',
    keyId: keyIdOf(createPublicKey(key)),
    value: sign(null, signedStatement(rec), key).toString('base64'),
  };
}

/** Throws unless the record carries a valid signature by `trusted`. */
export function checkSignature(rec: ImageRecord, trusted: KeyObject): void {
  const sig = rec.signature;
  if (!sig) {
    throw new ReimageError(
      'SIGNATURE_MISSING',
      `image ${rec.id} (${rec.properties.name}) is not signed`,
    );
  }
  const want = keyIdOf(trusted);
  if (
    sig.algorithm !== 'ed25519' ||
    sig.keyId !== want ||
    !verify(null, signedStatement(rec), trusted, Buffer.from(sig.value, 'base64'))
  ) {
    throw new ReimageError(
      'SIGNATURE_INVALID',
      sig.keyId !== want
        ? `image ${rec.id} is signed by key ${sig.keyId}, not by the trusted key ${want}`
        : `the signature of image ${rec.id} does not verify: the image or its properties were altered`,
      { details: { image: rec.id, keyId: sig.keyId, trusted: want } },
    );
  }
}
