import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  hkdfSync,
  randomBytes,
  randomUUID,
} from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { constants } from 'node:fs';
import {
  chmod,
  chown,
  lchown,
  link,
  lstat,
  lutimes,
  mkdir,
  open,
  readdir,
  rename,
  rm,
  symlink,
  utimes,
  type FileHandle,
} from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { PassThrough, pipeline, Transform, type Readable } from 'node:stream';

import { isReimageError, ReimageError } from '../errors.js';
import type { ItemKind, StateItem } from './model.js';

/**
 * The state store: where captured machine, client and user state and user data wait while the
 * machine is wiped (phase 1 writes it, phase 3 reads it). The format is described in
 * docs/state-store.md. A store is one folder `state-<machine id>-<timestamp>/` in a backend
 * (a local folder or a network share) holding `blobs/<ab>/<name>` and, written last,
 * `manifest.enc` (encrypted) or `manifest.json`: a store without its manifest is incomplete.
 */

/** Where state stores live: a local folder or a network share. Names are '/'-separated. */
export interface StateBackend {
  /** For messages: the folder or smb:// address (never a secret). */
  readonly description: string;
  /** Writes a whole file; readers never see part of one. Replaces an existing file. */
  put(name: string, data: Buffer | NodeJS.ReadableStream): Promise<void>;
  /** Reads a file; rejects with an error whose `code` is 'ENOENT' when there is none. */
  get(name: string): Promise<NodeJS.ReadableStream>;
  /**
   * The files below the folder `prefix` ('' or ending in '/'), as full names. Not recursive:
   * the files and folders directly in it, folders with a trailing '/'. None when it is missing.
   */
  list(prefix: string, recursive?: boolean): Promise<string[]>;
  /** Removes a file, or a folder ('' or ending in '/') with everything in it. */
  remove(prefix: string): Promise<void>;
  /** Renames a file, replacing `to`. */
  rename(from: string, to: string): Promise<void>;
  /** Hard-links a local file as `name`: false when it cannot (another filesystem). */
  link?(name: string, fromPath: string): Promise<boolean>;
  /** Makes everything put so far durable (a share uploads its queued files). */
  flush?(): Promise<void>;
  /** A hint that these files are about to be read, in this order (a share fetches them in one go). */
  prefetch?(names: string[]): Promise<void>;
  /** Forgets prefetched files that were not read. */
  dropPrefetched?(): Promise<void>;
}

export const STATE_FORMAT = 'reimage-state';
export const STATE_VERSION = 1;
/** Plaintext bytes per encrypted record of a blob. */
export const RECORD_SIZE = 1024 * 1024;
const TAG = 16;
const BLOB_MAGIC = Buffer.from('RSB1');
const BLOB_HEADER = 40; // magic 4, version 1, record size shift 1, reserved 2, salt 32
const MANIFEST_MAGIC = Buffer.from('RSM1');
const MANIFEST_HEADER = 4 + 4 + 8 + 32 + 12; // magic, version + reserved, key id, salt, nonce
const MANIFEST_LIMIT = 1024 * 1024 * 1024;
const PART = '.reimage-part-';
const STORE_NAME = /^state-([A-Za-z0-9][A-Za-z0-9._-]{0,127})-(\d{8}T\d{9}Z)$/;
const MACHINE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const DOCUMENT_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const ITEM_KINDS: readonly ItemKind[] = [
  'os-settings',
  'app-settings',
  'user-files',
  'machine-state',
  'client-state',
];

// ---------------------------------------------------------------------------------------------
// Keys

/** Reads a state store key: 32 bytes in base64 (as the machine's policy carries it). */
export function keyFromBase64(text: string): Buffer {
  const t = text.trim();
  if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(t)) {
    throw new ReimageError(
      'STATE_STORE_KEY_INVALID',
      'the state store key is not base64 (it must be 32 bytes, 44 characters of base64)',
    );
  }
  const key = Buffer.from(t.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  if (key.length !== 32) {
    throw new ReimageError(
      'STATE_STORE_KEY_INVALID',
      `the state store key must be 32 bytes in base64; this one has ${key.length} bytes`,
    );
  }
  return key;
}

/** The public name of a key: the first 16 hex digits of its SHA-256. */
export function keyId(key: Buffer): string {
  return createHash('sha256').update(key).digest('hex').slice(0, 16);
}

interface Keys {
  id: string;
  blob: Buffer;
  name: Buffer;
  manifest: Buffer;
}

function deriveKeys(key: Buffer): Keys {
  if (!Buffer.isBuffer(key) || key.length !== 32) {
    throw new ReimageError(
      'STATE_STORE_KEY_INVALID',
      `the state store key must be 32 bytes; this one has ${Buffer.isBuffer(key) ? key.length : 0}`,
    );
  }
  const sub = (purpose: string) =>
    Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), `reimage-state v1 ${purpose}`, 32));
  return { id: keyId(key), blob: sub('blob'), name: sub('name'), manifest: sub('manifest') };
}

function subKey(key: Buffer, salt: Buffer, purpose: string): Buffer {
  return Buffer.from(hkdfSync('sha256', key, salt, purpose, 32));
}

/** Record nonce: sequence number (8 bytes), 3 zero bytes, final flag. */
function recordNonce(seq: bigint, final: boolean): Buffer {
  const n = Buffer.alloc(12);
  n.writeBigUInt64BE(seq, 0);
  n[11] = final ? 1 : 0;
  return n;
}

function recordAad(header: Buffer, seq: bigint, final: boolean): Buffer {
  const a = Buffer.alloc(header.length + 9);
  header.copy(a, 0);
  a.writeBigUInt64BE(seq, header.length);
  a[header.length + 8] = final ? 1 : 0;
  return a;
}

/**
 * Encrypts a blob as a stream: a 40-byte header with a random salt (the blob's own key is
 * derived from it), then records of RECORD_SIZE plaintext bytes, each sealed with AES-256-GCM;
 * the sequence number and a final-record flag are in each nonce and AAD, so that reordered,
 * dropped or truncated records fail. Memory use is about two records.
 */
function encryptStream(keys: Keys): Transform {
  const salt = randomBytes(32);
  const header = Buffer.alloc(BLOB_HEADER);
  BLOB_MAGIC.copy(header, 0);
  header[4] = 1;
  header[5] = Math.log2(RECORD_SIZE);
  salt.copy(header, 8);
  const key = subKey(keys.blob, salt, 'reimage-state v1 blob');
  let seq = 0n;
  let pending: Buffer[] = [];
  let pendingLength = 0;
  let started = false;
  const seal = (plain: Buffer, final: boolean): Buffer => {
    const c = createCipheriv('aes-256-gcm', key, recordNonce(seq, final), { authTagLength: TAG });
    c.setAAD(recordAad(header, seq, final));
    seq++;
    return Buffer.concat([c.update(plain), c.final(), c.getAuthTag()]);
  };
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      if (!started) {
        this.push(header);
        started = true;
      }
      pending.push(chunk);
      pendingLength += chunk.length;
      // A record is sealed as not-final only once a byte after it is known to exist.
      if (pendingLength > RECORD_SIZE) {
        let buf = Buffer.concat(pending);
        while (buf.length > RECORD_SIZE) {
          this.push(seal(buf.subarray(0, RECORD_SIZE), false));
          buf = buf.subarray(RECORD_SIZE);
        }
        pending = [buf];
        pendingLength = buf.length;
      }
      done();
    },
    flush(done) {
      if (!started) this.push(header);
      this.push(seal(Buffer.concat(pending), true));
      done();
    },
  });
}

class TamperError extends Error {}

/** The inverse of encryptStream; releases a record's plaintext only after its tag verified. */
function decryptStream(keys: Keys): Transform {
  let header: Buffer | undefined;
  let key: Buffer | undefined;
  let recordSize = RECORD_SIZE;
  let seq = 0n;
  let pending: Buffer[] = [];
  let pendingLength = 0;
  const open = (sealed: Buffer, final: boolean): Buffer => {
    if (sealed.length < TAG) throw new TamperError('the blob is truncated');
    const d = createDecipheriv('aes-256-gcm', key!, recordNonce(seq, final), {
      authTagLength: TAG,
    });
    d.setAAD(recordAad(header!, seq, final));
    d.setAuthTag(sealed.subarray(sealed.length - TAG));
    try {
      const out = Buffer.concat([d.update(sealed.subarray(0, sealed.length - TAG)), d.final()]);
      seq++;
      return out;
    } catch {
      throw new TamperError(
        final
          ? `record ${seq} of the blob does not authenticate (altered, or the blob was truncated)`
          : `record ${seq} of the blob does not authenticate (altered or reordered)`,
      );
    }
  };
  const take = (): Buffer => {
    const buf = Buffer.concat(pending);
    pending = [];
    pendingLength = 0;
    return buf;
  };
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      try {
        pending.push(chunk);
        pendingLength += chunk.length;
        if (!header) {
          if (pendingLength < BLOB_HEADER) return done();
          const buf = take();
          const h = buf.subarray(0, BLOB_HEADER);
          if (!h.subarray(0, 4).equals(BLOB_MAGIC) || h[4] !== 1) {
            throw new TamperError('the blob has no valid header');
          }
          const shift = h[5]!;
          if (shift < 12 || shift > 26) throw new TamperError('the blob has no valid header');
          recordSize = 2 ** shift;
          header = Buffer.from(h);
          key = subKey(keys.blob, h.subarray(8, 40), 'reimage-state v1 blob');
          pending = [buf.subarray(BLOB_HEADER)];
          pendingLength = buf.length - BLOB_HEADER;
        }
        const sealedSize = recordSize + TAG;
        if (pendingLength > sealedSize) {
          let buf = take();
          while (buf.length > sealedSize) {
            this.push(open(buf.subarray(0, sealedSize), false));
            buf = buf.subarray(sealedSize);
          }
          pending = [buf];
          pendingLength = buf.length;
        }
        done();
      } catch (e) {
        done(e as Error);
      }
    },
    flush(done) {
      try {
        if (!header) throw new TamperError('the blob is truncated (no header)');
        this.push(open(take(), true));
        done();
      } catch (e) {
        done(e as Error);
      }
    },
  });
}

function sealManifest(keys: Keys, plain: Buffer): Buffer {
  const salt = randomBytes(32);
  const nonce = randomBytes(12);
  const header = Buffer.alloc(MANIFEST_HEADER);
  MANIFEST_MAGIC.copy(header, 0);
  header[4] = 1;
  Buffer.from(keys.id, 'hex').copy(header, 8);
  salt.copy(header, 16);
  nonce.copy(header, 48);
  const c = createCipheriv(
    'aes-256-gcm',
    subKey(keys.manifest, salt, 'reimage-state v1 manifest'),
    nonce,
    {
      authTagLength: TAG,
    },
  );
  c.setAAD(header);
  return Buffer.concat([header, c.update(plain), c.final(), c.getAuthTag()]);
}

function openManifest(keys: Keys | undefined, sealed: Buffer, where: string): Buffer {
  if (sealed.length < MANIFEST_HEADER + TAG || !sealed.subarray(0, 4).equals(MANIFEST_MAGIC)) {
    throw new ReimageError(
      'STATE_STORE_TAMPERED',
      `the manifest of ${where} is damaged (no valid header)`,
      {
        details: { store: where },
      },
    );
  }
  if (sealed[4] !== 1) {
    throw new ReimageError(
      'STATE_STORE_INVALID',
      `the manifest of ${where} has version ${sealed[4]}; this reimage reads version 1`,
      { details: { store: where } },
    );
  }
  const header = sealed.subarray(0, MANIFEST_HEADER);
  const storeKeyId = header.subarray(8, 16).toString('hex');
  if (!keys) {
    throw new ReimageError(
      'STATE_STORE_KEY_INVALID',
      `${where} is encrypted (key ${storeKeyId}); give its key to read it`,
      { details: { store: where, storeKeyId } },
    );
  }
  if (storeKeyId !== keys.id) {
    throw new ReimageError(
      'STATE_STORE_KEY_INVALID',
      `${where} was encrypted with key ${storeKeyId}, not with the given key ${keys.id}`,
      { details: { store: where, storeKeyId, keyId: keys.id } },
    );
  }
  const d = createDecipheriv(
    'aes-256-gcm',
    subKey(keys.manifest, header.subarray(16, 48), 'reimage-state v1 manifest'),
    header.subarray(48, 60),
    { authTagLength: TAG },
  );
  d.setAAD(header);
  d.setAuthTag(sealed.subarray(sealed.length - TAG));
  try {
    return Buffer.concat([
      d.update(sealed.subarray(MANIFEST_HEADER, sealed.length - TAG)),
      d.final(),
    ]);
  } catch (e) {
    throw new ReimageError(
      'STATE_STORE_TAMPERED',
      `the manifest of ${where} does not authenticate: it was altered or truncated`,
      { cause: e, details: { store: where } },
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Items

/** What is wrong with an item path, or undefined (see StateItem.path). */
function pathProblem(path: unknown): string | undefined {
  if (typeof path !== 'string' || path.length === 0) return 'the path is empty';
  if (path.length > 4096) return 'the path is longer than 4096 characters';
  if (path.includes('\0')) return 'the path contains a NUL character';
  if (path.startsWith('/')) return 'the path is absolute';
  for (const s of path.split('/')) {
    if (s === '' || s === '.' || s === '..') return 'the path has an empty, "." or ".." segment';
  }
  return undefined;
}

const isUint = (v: unknown, max: number) =>
  typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= max;

/** What is wrong with an item's fields, or undefined. */
function itemProblem(
  i: Partial<StateItem> & Record<string, unknown>,
  stored: boolean,
): string | undefined {
  if (typeof i !== 'object' || i === null) return 'it is not an object';
  const p = pathProblem(i.path);
  if (p) return p;
  if (i.type !== 'file' && i.type !== 'dir' && i.type !== 'symlink')
    return 'type is not file, dir or symlink';
  if (!isUint(i.mode, 0o7777)) return 'mode is not a number from 0 to 0o7777';
  if (!isUint(i.uid, 0xffffffff) || !isUint(i.gid, 0xffffffff))
    return 'uid or gid is not a valid id';
  if (typeof i.mtimeMs !== 'number' || !Number.isFinite(i.mtimeMs))
    return 'mtimeMs is not a number';
  if (!isUint(i.size, Number.MAX_SAFE_INTEGER)) return 'size is not a byte count';
  if (!ITEM_KINDS.includes(i.kind as ItemKind)) return 'kind is not a known item kind';
  if (typeof i.component !== 'string' || i.component.length > 256)
    return 'component is not a string';
  if (i.user !== undefined && (typeof i.user !== 'string' || i.user.length > 256))
    return 'user is not a string';
  if (i.type === 'symlink') {
    if (
      typeof i.target !== 'string' ||
      i.target === '' ||
      i.target.includes('\0') ||
      i.target.length > 4095
    )
      return 'a symlink needs a target of 1-4095 characters without NUL';
  } else if (i.target !== undefined) return 'only symlinks have a target';
  if (stored && i.type === 'file') {
    if (typeof i.sha256 !== 'string' || !HEX64.test(i.sha256)) return 'sha256 is not 64 hex digits';
    if (typeof i.blob !== 'string' || !HEX64.test(i.blob)) return 'blob is not 64 hex digits';
  }
  return undefined;
}

/**
 * Tracks paths so that nothing is stored below a file or a symlink (a restore would write
 * through the symlink); order of adding does not matter.
 */
class PathSet {
  private readonly types = new Map<string, StateItem['type']>();
  private readonly ancestors = new Set<string>();

  problem(path: string, type: StateItem['type']): string | undefined {
    if (this.types.has(path)) return 'it is already in the store';
    if (type !== 'dir' && this.ancestors.has(path)) return `it is a ${type} with items below it`;
    for (let i = path.indexOf('/'); i !== -1; i = path.indexOf('/', i + 1)) {
      const t = this.types.get(path.slice(0, i));
      if (t !== undefined && t !== 'dir') return `it is below the ${t} ${path.slice(0, i)}`;
    }
    return undefined;
  }

  add(path: string, type: StateItem['type']): void {
    this.types.set(path, type);
    for (let i = path.indexOf('/'); i !== -1; i = path.indexOf('/', i + 1))
      this.ancestors.add(path.slice(0, i));
  }
}

/** The stored item: a StateItem, plus where a file's bytes are. */
type StoredItem = StateItem & { blob?: string };

interface Manifest {
  format: typeof STATE_FORMAT;
  version: number;
  store: string;
  machineId: string;
  created: string;
  encryption: { alg: 'aes-256-gcm'; keyId: string; recordSize: number } | null;
  items: StoredItem[];
  documents: Record<string, unknown>;
}

function cleanItem(item: StateItem): StateItem {
  const out: StateItem = {
    path: item.path,
    type: item.type,
    mode: item.mode,
    uid: item.uid,
    gid: item.gid,
    mtimeMs: item.mtimeMs,
    size: item.size,
    kind: item.kind,
    component: item.component,
  };
  if (item.target !== undefined) out.target = item.target;
  if (item.sha256 !== undefined) out.sha256 = item.sha256;
  if (item.user !== undefined) out.user = item.user;
  return out;
}

function blobPath(store: string, blob: string): string {
  return `${store === '' ? '' : `${store}/`}blobs/${blob.slice(0, 2)}/${blob}`;
}

function timestamp(d: Date): string {
  return d.toISOString().replace(/[-:.]/g, '');
}

// ---------------------------------------------------------------------------------------------
// Local backend

function checkName(name: string, folder: boolean): void {
  const ok =
    (folder && name === '') ||
    (!name.startsWith('/') &&
      !name.includes('\0') &&
      (folder && name.endsWith('/') ? name.slice(0, -1) : name)
        .split('/')
        .every((s) => s !== '' && s !== '.' && s !== '..'));
  if (!ok) throw new Error(`bug: ${JSON.stringify(name)} is not a state store name`);
}

function ioError(what: string, e: unknown): ReimageError {
  if (isReimageError(e)) return e;
  return new ReimageError('STATE_STORE_IO_FAILED', `${what}: ${(e as Error).message}`, {
    cause: e,
  });
}

const errno = (e: unknown) => (e as NodeJS.ErrnoException | undefined)?.code;

/**
 * A state store backend in a local folder (on the partition the wipe keeps). Files are written
 * under a temporary name, fsynced and renamed; folders are made 0700 and fsynced on flush().
 * Supports hard links (USMT's hard-link store).
 */
export function localBackend(dir: string): StateBackend {
  const root = resolve(dir);
  // Written since the last flush(): folders whose entries changed, files not yet fsynced.
  const dirty = new Set<string>();
  const unsynced = new Set<string>();
  const made = new Set<string>();
  const abs = (name: string, folder = false) => {
    checkName(name, folder);
    return join(root, name);
  };
  const parent = async (path: string) => {
    const d = dirname(path);
    if (!made.has(d)) {
      await mkdir(d, { recursive: true, mode: 0o700 });
      made.add(d);
    }
    dirty.add(d);
  };
  const walk = async (folder: string, rel: string, recursive: boolean, out: string[]) => {
    let entries;
    try {
      entries = await readdir(folder, { withFileTypes: true });
    } catch (e) {
      if (errno(e) === 'ENOENT' || errno(e) === 'ENOTDIR') return;
      throw ioError(`cannot list ${folder}`, e);
    }
    for (const d of entries) {
      if (d.name.includes(PART)) continue;
      if (d.isDirectory()) {
        if (recursive) await walk(join(folder, d.name), `${rel}${d.name}/`, true, out);
        else out.push(`${rel}${d.name}/`);
      } else out.push(`${rel}${d.name}`);
    }
  };
  return {
    description: root,
    async put(name, data) {
      const path = abs(name);
      const tmp = `${path}${PART}${randomUUID().slice(0, 8)}`;
      let fh: FileHandle | undefined;
      try {
        await parent(path);
        fh = await open(tmp, 'wx', 0o600);
        if (Buffer.isBuffer(data)) await fh.writeFile(data);
        else for await (const chunk of data) await writeAll(fh, chunk as Buffer);
        await fh.close();
        fh = undefined;
        await rename(tmp, path);
        unsynced.add(path);
      } catch (e) {
        await fh?.close().catch(() => {});
        await rm(tmp, { force: true });
        throw ioError(`cannot write ${path}`, e);
      }
    },
    async get(name) {
      const path = abs(name);
      let fh: FileHandle;
      try {
        fh = await open(path, constants.O_RDONLY | constants.O_NOFOLLOW);
      } catch (e) {
        if (errno(e) === 'ENOENT') throw e;
        throw ioError(`cannot read ${path}`, e);
      }
      return fh.createReadStream();
    },
    async list(prefix, recursive = true) {
      const out: string[] = [];
      await walk(abs(prefix, true), prefix, recursive, out);
      return out.sort();
    },
    async remove(prefix) {
      const path = abs(prefix, true);
      made.clear();
      try {
        if (prefix === '') {
          for (const n of await readdir(path))
            await rm(join(path, n), { recursive: true, force: true });
        } else await rm(path, { recursive: true, force: true });
      } catch (e) {
        if (errno(e) !== 'ENOENT') throw ioError(`cannot remove ${path}`, e);
      }
    },
    async rename(from, to) {
      const target = abs(to);
      try {
        await parent(target);
        await rename(abs(from), target);
        if (unsynced.delete(abs(from))) unsynced.add(target);
      } catch (e) {
        throw ioError(`cannot rename ${abs(from)} to ${target}`, e);
      }
    },
    async link(name, fromPath) {
      const path = abs(name);
      try {
        await parent(path);
        await link(fromPath, path);
        unsynced.add(path); // the original's data may not be on disk yet either
        return true;
      } catch (e) {
        // Another filesystem, a filesystem without links, protected_hardlinks, too many links.
        if (['EXDEV', 'EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EMLINK'].includes(errno(e) ?? ''))
          return false;
        throw ioError(`cannot hard-link ${fromPath} as ${path}`, e);
      }
    },
    async flush() {
      if (unsynced.size === 0 && dirty.size === 0) return;
      // One syncfs(2) (`sync -f`) makes everything durable at once, much faster than an
      // fsync per file when there are many small ones; without it, fsync each.
      const all = spawnSync('sync', ['-f', root], { stdio: 'ignore' }).status === 0;
      const paths = all ? [] : [...unsynced, ...dirty];
      unsynced.clear();
      dirty.clear();
      for (const p of paths) {
        let fh: FileHandle | undefined;
        try {
          fh = await open(p, 'r');
          await fh.sync();
        } catch (e) {
          if (errno(e) !== 'ENOENT') throw ioError(`cannot flush ${p}`, e);
        } finally {
          await fh?.close();
        }
      }
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Streams

/** FileHandle.write may write less than asked for; this does not. */
async function writeAll(fh: FileHandle, data: Buffer): Promise<void> {
  for (let at = 0; at < data.length;)
    at += (await fh.write(data, at, data.length - at)).bytesWritten;
}

/** Counts and hashes what passes through. */
class Meter extends Transform {
  readonly hash = createHash('sha256');
  bytes = 0;
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    this.push(chunk);
    done();
  }
}

/** Chains streams; `onError` gets the first error of any of them. */
function chain(
  streams: NodeJS.ReadWriteStream[] | Readable[],
  onError: (e: Error) => void,
): Readable {
  return (pipeline as unknown as (...a: unknown[]) => Readable)(...streams, (e: Error | null) => {
    if (e) onError(e);
  });
}

// ---------------------------------------------------------------------------------------------
// Writer

export interface StateWriterOptions {
  /** The machine's GUID: names the store folder. */
  machineId: string;
  /** 32 bytes; undefined means no encryption. */
  key?: Buffer;
  /**
   * Unencrypted stores only: hard-link captured files into the store instead of copying
   * them, where the backend can (a local folder on the same filesystem). Default true.
   */
  hardLinks?: boolean;
}

export interface CommitResult {
  /** The store folder's name in the backend. */
  store: string;
  items: number;
  /** Bytes of file content in the store's items (duplicates counted each time). */
  bytes: number;
  /** Bytes written to the backend: each distinct content once, encrypted; hard links count 0. */
  storedBytes: number;
  /** Files stored as hard links. */
  linked: number;
}

/**
 * Writes one state store. Files are streamed (bounded memory) into blobs named by their
 * content, so identical content is stored once; the manifest is written last by commit(), and
 * a store without one is incomplete and ignored by readers.
 */
export class StateWriter {
  private readonly items = new Map<string, StoredItem>();
  private readonly paths = new PathSet();
  private readonly documents = new Map<string, unknown>();
  private readonly blobs = new Set<string>();
  private queue: Promise<unknown> = Promise.resolve();
  private state: 'open' | 'committing' | 'committed' | 'aborted' = 'open';
  private bytes = 0;
  private storedBytes = 0;
  private linked = 0;

  private constructor(
    private readonly backend: StateBackend,
    /** The store folder's name in the backend: `state-<machine id>-<timestamp>`. */
    readonly store: string,
    private readonly machineId: string,
    private readonly created: Date,
    private readonly keys: Keys | undefined,
    private readonly hardLinks: boolean,
  ) {}

  static async create(backend: StateBackend, o: StateWriterOptions): Promise<StateWriter> {
    if (typeof o.machineId !== 'string' || !MACHINE_ID.test(o.machineId)) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        'the machine id must be 1-128 letters, digits, ".", "_" or "-", starting with a letter or digit',
      );
    }
    const keys = o.key === undefined ? undefined : deriveKeys(o.key);
    const taken = new Set(await backend.list('', false));
    let created = new Date();
    while (taken.has(`state-${o.machineId}-${timestamp(created)}/`)) {
      await new Promise((r) => setTimeout(r, 2));
      created = new Date();
    }
    const store = `state-${o.machineId}-${timestamp(created)}`;
    return new StateWriter(
      backend,
      store,
      o.machineId,
      created,
      keys,
      !keys && o.hardLinks !== false,
    );
  }

  /** Whether the store is encrypted. */
  get encrypted(): boolean {
    return this.keys !== undefined;
  }

  /**
   * Stores a file's content and its item. `item.size` and `item.sha256` are set from the bytes
   * actually stored (the file may have changed since it was listed).
   */
  async addFile(item: StateItem, sourcePath: string): Promise<void> {
    // Up to the first await this runs at call time: concurrent calls are queued in order.
    this.checkOpen();
    this.checkItem(item, 'file');
    this.paths.add(item.path, 'file');
    const run = this.queue.then(() => this.storeFile(item, sourcePath));
    this.queue = run.catch(() => {});
    try {
      await run;
    } catch (e) {
      // The path stays taken in `paths`: harmless, the caller knows it failed.
      this.items.delete(item.path);
      throw e;
    }
  }

  /** Records a folder or a symlink (no content). */
  addEntry(item: StateItem): void {
    this.checkOpen();
    if (item.type === 'file') {
      throw new ReimageError('INVALID_ARGUMENT', `${item.path} is a file: store it with addFile`);
    }
    this.checkItem(item, item.type);
    this.paths.add(item.path, item.type);
    const clean = cleanItem(item);
    delete clean.sha256;
    clean.size = 0;
    this.items.set(item.path, clean);
  }

  /** Stores a named JSON document (machine state, accounts, ...) inside the manifest. */
  addDocument(name: string, value: unknown): void {
    this.checkOpen();
    if (!DOCUMENT_NAME.test(name)) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `document name ${JSON.stringify(name)} must be 1-64 lower-case letters, digits, ".", "_" or "-"`,
      );
    }
    const text = JSON.stringify(value);
    if (text === undefined) {
      throw new ReimageError('INVALID_ARGUMENT', `document ${name} has no JSON value`);
    }
    this.documents.set(name, JSON.parse(text));
  }

  /** Writes the manifest, which makes the store complete. */
  async commit(): Promise<CommitResult> {
    this.checkOpen();
    this.state = 'committing';
    try {
      await this.queue;
      await this.backend.flush?.();
      await this.backend.remove(`${this.store}/tmp/`);
      const manifest: Manifest = {
        format: STATE_FORMAT,
        version: STATE_VERSION,
        store: this.store,
        machineId: this.machineId,
        created: this.created.toISOString(),
        encryption: this.keys
          ? { alg: 'aes-256-gcm', keyId: this.keys.id, recordSize: RECORD_SIZE }
          : null,
        items: [...this.items.values()].sort((a, b) =>
          a.path < b.path ? -1 : a.path > b.path ? 1 : 0,
        ),
        documents: Object.fromEntries(this.documents),
      };
      const plain = Buffer.from(JSON.stringify(manifest));
      if (this.keys)
        await this.backend.put(`${this.store}/manifest.enc`, sealManifest(this.keys, plain));
      else await this.backend.put(`${this.store}/manifest.json`, plain);
      await this.backend.flush?.();
    } catch (e) {
      this.state = 'open';
      throw e;
    }
    this.state = 'committed';
    return {
      store: this.store,
      items: this.items.size,
      bytes: this.bytes,
      storedBytes: this.storedBytes,
      linked: this.linked,
    };
  }

  /** Removes everything written so far. */
  async abort(): Promise<void> {
    if (this.state === 'committed') {
      throw new ReimageError('INVALID_ARGUMENT', `state store ${this.store} is already committed`);
    }
    this.state = 'aborted';
    await this.queue;
    await this.backend.remove(`${this.store}/`);
    await this.backend.flush?.();
  }

  private checkOpen(): void {
    if (this.state !== 'open') {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `state store ${this.store} is ${this.state}; nothing more can be added`,
      );
    }
  }

  private checkItem(item: StateItem, type: StateItem['type']): void {
    const why =
      itemProblem(item as StateItem & Record<string, unknown>, false) ??
      (item.type === type ? undefined : `type is ${item.type}`) ??
      this.paths.problem(item.path, item.type);
    if (why) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `cannot store ${JSON.stringify(item.path)}: ${why}`,
        {
          details: { path: item.path },
        },
      );
    }
  }

  private async storeFile(item: StateItem, sourcePath: string): Promise<void> {
    const tmp = `${this.store}/tmp/${randomUUID()}`;
    let fh: FileHandle;
    try {
      // O_NONBLOCK: opening a FIFO planted where a file was listed must not hang.
      fh = await open(sourcePath, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch (e) {
      throw new ReimageError(
        'SOURCE_UNREADABLE',
        `cannot read ${sourcePath}: ${(e as Error).message}`,
        {
          cause: e,
          details: { path: item.path },
        },
      );
    }
    let sha256: string;
    let size: number;
    let stored = 0;
    let linked = false;
    try {
      const st = await fh.stat();
      if (!st.isFile()) {
        throw new ReimageError('SOURCE_UNREADABLE', `${sourcePath} is not a regular file`, {
          details: { path: item.path },
        });
      }
      if (this.hardLinks && this.backend.link) linked = await this.backend.link(tmp, sourcePath);
      let sourceError: Error | undefined;
      const meter = new Meter();
      if (linked) {
        // Hash what is in the store (the linked inode), so that name and content agree.
        const body = chain(
          [(await this.backend.get(tmp)) as Readable, meter],
          (e) => (sourceError = e),
        );
        for await (const _ of body);
      } else {
        const src = fh.createReadStream({ autoClose: false, start: 0 });
        src.on('error', (e) => (sourceError ??= e));
        const counter = new Meter();
        const body = chain(
          this.keys ? [src, meter, encryptStream(this.keys), counter] : [src, meter, counter],
          () => {},
        );
        try {
          await this.backend.put(tmp, body);
        } catch (e) {
          if (sourceError) throw sourceError;
          throw e;
        }
        stored = counter.bytes;
      }
      if (sourceError) throw sourceError;
      sha256 = meter.hash.digest('hex');
      size = meter.bytes;
    } catch (e) {
      await this.backend.remove(tmp).catch(() => {});
      if (isReimageError(e)) throw e;
      throw new ReimageError(
        'SOURCE_UNREADABLE',
        `cannot read ${sourcePath}: ${(e as Error).message}`,
        {
          cause: e,
          details: { path: item.path },
        },
      );
    } finally {
      await fh.close();
    }
    const blob = this.keys
      ? createHmac('sha256', this.keys.name).update(sha256).digest('hex')
      : sha256;
    if (this.blobs.has(blob)) {
      await this.backend.remove(tmp);
    } else {
      await this.backend.rename(tmp, blobPath(this.store, blob));
      this.blobs.add(blob);
      this.storedBytes += stored;
      if (linked) this.linked++;
    }
    this.bytes += size;
    this.items.set(item.path, { ...cleanItem(item), size, sha256, blob });
  }
}

// ---------------------------------------------------------------------------------------------
// Reader

/** A state store in a backend, as listStores() finds it. */
export interface StoreListing {
  store: string;
  machineId: string;
  /** From the folder name (ISO 8601). */
  created: string;
  /** Has its manifest: the capture finished. */
  complete: boolean;
  encrypted: boolean;
}

/**
 * The state stores in a backend (of one machine), oldest first; `newestCompleteOnly` stops
 * looking at the newest complete one (older stores are then left out).
 */
export async function listStores(
  backend: StateBackend,
  o: { machineId?: string; newestCompleteOnly?: boolean } = {},
): Promise<StoreListing[]> {
  const named: { store: string; machineId: string; time: string }[] = [];
  for (const entry of await backend.list('', false)) {
    const m = STORE_NAME.exec(entry.slice(0, -1));
    if (!entry.endsWith('/') || !m) continue;
    if (o.machineId !== undefined && m[1] !== o.machineId) continue;
    named.push({ store: entry.slice(0, -1), machineId: m[1]!, time: m[2]! });
  }
  named.sort((a, b) => (a.time < b.time ? 1 : a.time > b.time ? -1 : 0));
  const out: StoreListing[] = [];
  // Newest first, so that finding the newest complete store looks into few folders.
  for (const { store, machineId, time: t } of named) {
    const files = new Set(await backend.list(`${store}/`, false));
    const complete = files.has(`${store}/manifest.enc`) || files.has(`${store}/manifest.json`);
    out.push({
      store,
      machineId,
      created: `${t.slice(0, 4)}-${t.slice(4, 6)}-${t.slice(6, 8)}T${t.slice(9, 11)}:${t.slice(11, 13)}:${t.slice(13, 15)}.${t.slice(15, 18)}Z`,
      complete,
      encrypted: files.has(`${store}/manifest.enc`),
    });
    if (complete && o.newestCompleteOnly) break;
  }
  return out.reverse();
}

export interface OpenOptions {
  /** The store folder's name; by default the newest complete store (of `machineId`, if given). */
  store?: string;
  machineId?: string;
}

async function readAll(
  stream: NodeJS.ReadableStream,
  limit: number,
  what: string,
): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of stream) {
    n += c.length;
    if (n > limit)
      throw new ReimageError('STATE_STORE_INVALID', `${what} is larger than ${limit} bytes`);
    parts.push(c as Buffer);
  }
  return Buffer.concat(parts);
}

/**
 * Reads a state store. Nothing in it is trusted: the manifest is authenticated (encrypted
 * stores) and validated, every blob is authenticated record by record and its SHA-256 checked.
 */
export class StateReader {
  /** Every item, sorted by path. */
  readonly items: StateItem[];
  readonly store: string;
  readonly machineId: string;
  readonly created: string;
  readonly encrypted: boolean;
  private readonly byPath = new Map<string, StoredItem>();
  private readonly documents: Record<string, unknown>;

  private constructor(
    private readonly backend: StateBackend,
    private readonly prefix: string,
    private readonly keys: Keys | undefined,
    manifest: Manifest,
  ) {
    this.store = manifest.store;
    this.machineId = manifest.machineId;
    this.created = manifest.created;
    this.encrypted = manifest.encryption !== null;
    this.documents = manifest.documents;
    for (const i of manifest.items) this.byPath.set(i.path, i);
    this.items = manifest.items.map((i) => {
      const out = { ...i };
      delete out.blob;
      return out;
    });
  }

  /**
   * Opens a store: `o.store` names its folder; without it, the backend's root itself when it
   * is a store folder, else the newest complete store (of `o.machineId`).
   */
  static async open(
    backend: StateBackend,
    key?: Buffer,
    o: OpenOptions = {},
  ): Promise<StateReader> {
    const keys = key === undefined ? undefined : deriveKeys(key);
    let folder: string;
    if (o.store !== undefined) {
      if (!STORE_NAME.test(o.store)) {
        throw new ReimageError(
          'INVALID_ARGUMENT',
          `${JSON.stringify(o.store)} is not a state store name (state-<machine>-<time>)`,
        );
      }
      folder = o.store;
    } else {
      const top = await backend.list('', false);
      if (top.some((n) => n === 'manifest.enc' || n === 'manifest.json' || n === 'blobs/'))
        folder = '';
      else {
        const all = await listStores(backend, {
          machineId: o.machineId,
          newestCompleteOnly: true,
        });
        const complete = all.filter((s) => s.complete);
        if (complete.length === 0) {
          const whose = o.machineId === undefined ? '' : ` of machine ${o.machineId}`;
          throw new ReimageError(
            'STATE_STORE_INVALID',
            all.length > 0
              ? `${backend.description} holds only incomplete state stores${whose} (${all.map((s) => s.store).join(', ')}): their capture did not finish`
              : `${backend.description} holds no state store${whose}`,
            { details: { location: backend.description } },
          );
        }
        folder = complete.at(-1)!.store;
      }
    }
    const where = folder === '' ? backend.description : `${backend.description}/${folder}`;
    const prefix = folder === '' ? '' : `${folder}/`;
    const files = new Set(await backend.list(prefix, false));
    const hasEnc = files.has(`${prefix}manifest.enc`);
    const hasJson = files.has(`${prefix}manifest.json`);
    if (!hasEnc && !hasJson) {
      throw new ReimageError(
        'STATE_STORE_INVALID',
        files.size > 0
          ? `${where} is an incomplete state store (no manifest): its capture did not finish`
          : `${where} is not a state store`,
        { details: { store: where } },
      );
    }
    if (hasEnc && hasJson) {
      throw new ReimageError(
        'STATE_STORE_TAMPERED',
        `${where} has both an encrypted and a plain manifest`,
        {
          details: { store: where },
        },
      );
    }
    if (hasJson && keys) {
      // A key means the store must be encrypted: a plain store here could be a forgery.
      throw new ReimageError(
        'STATE_STORE_TAMPERED',
        `${where} is not encrypted, but a key was given: refusing a store that anyone could have written`,
        { details: { store: where } },
      );
    }
    const name = `${prefix}${hasEnc ? 'manifest.enc' : 'manifest.json'}`;
    let raw: Buffer;
    try {
      raw = await readAll(await backend.get(name), MANIFEST_LIMIT, `the manifest of ${where}`);
    } catch (e) {
      if (errno(e) === 'ENOENT') {
        throw new ReimageError('STATE_STORE_INVALID', `${where} has no manifest`, { cause: e });
      }
      throw ioError(`cannot read the manifest of ${where}`, e);
    }
    const plain = hasEnc ? openManifest(keys, raw, where) : raw;
    // Problems in an authenticated manifest are ours or a key holder's, not a passer-by's.
    const bad = (why: string, e?: unknown) =>
      new ReimageError(
        hasEnc ? 'STATE_STORE_INVALID' : 'STATE_STORE_TAMPERED',
        `the manifest of ${where} is not valid: ${why}`,
        { cause: e, details: { store: where } },
      );
    let m: Manifest;
    try {
      m = JSON.parse(plain.toString('utf8')) as Manifest;
    } catch (e) {
      throw bad('it is not JSON', e);
    }
    if (typeof m !== 'object' || m === null || m.format !== STATE_FORMAT)
      throw bad('it is not a state store manifest');
    if (m.version !== STATE_VERSION) {
      throw new ReimageError(
        'STATE_STORE_INVALID',
        `${where} has format version ${String(m.version)}; this reimage reads version ${STATE_VERSION}`,
        { details: { store: where } },
      );
    }
    if (typeof m.store !== 'string' || !STORE_NAME.test(m.store))
      throw bad('it has no valid store name');
    if (folder !== '' && m.store !== folder) {
      throw new ReimageError(
        'STATE_STORE_TAMPERED',
        `the manifest in ${where} belongs to the store ${m.store}: the folder was renamed or replaced`,
        { details: { store: where } },
      );
    }
    if (typeof m.machineId !== 'string' || typeof m.created !== 'string')
      throw bad('machine id or time missing');
    if (o.machineId !== undefined && m.machineId !== o.machineId) {
      throw new ReimageError(
        'STATE_STORE_TAMPERED',
        `${where} holds the state of machine ${m.machineId}, not of ${o.machineId}`,
        { details: { store: where } },
      );
    }
    if ((m.encryption === null) !== !hasEnc)
      throw bad('its encryption field disagrees with the file');
    if (!Array.isArray(m.items)) throw bad('it has no item list');
    if (typeof m.documents !== 'object' || m.documents === null || Array.isArray(m.documents))
      throw bad('it has no documents object');
    const paths = new PathSet();
    for (const i of m.items) {
      const why =
        itemProblem(i as StoredItem & Record<string, unknown>, true) ??
        paths.problem(i.path, i.type) ??
        (hasEnc || i.type !== 'file' || i.blob === i.sha256
          ? undefined
          : 'blob is not named by its SHA-256');
      if (why) {
        const path = typeof i?.path === 'string' ? JSON.stringify(i.path) : 'an item';
        throw bad(`${path}: ${why}`);
      }
      paths.add(i.path, i.type);
    }
    m.items.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    return new StateReader(backend, prefix, keys, m);
  }

  /** A document stored with addDocument(). */
  document<T>(name: string): T | undefined {
    return Object.hasOwn(this.documents, name) ? (this.documents[name] as T) : undefined;
  }

  /** Names of the stored documents. */
  documentNames(): string[] {
    return Object.keys(this.documents).sort();
  }

  /**
   * A file's content. The stream fails with STATE_STORE_TAMPERED (naming the item) when a
   * record does not authenticate, and at the end when size or SHA-256 differ: a consumer
   * must treat what it read as bad until the stream has ended without an error.
   */
  async openFile(path: string): Promise<NodeJS.ReadableStream> {
    const item = this.byPath.get(path);
    if (!item || item.type !== 'file') {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `the state store has no file ${JSON.stringify(path)}`,
        {
          details: { path },
        },
      );
    }
    const tampered = (why: string, cause?: unknown) =>
      new ReimageError('STATE_STORE_TAMPERED', `${path}: ${why}`, { cause, details: { path } });
    let src: NodeJS.ReadableStream;
    try {
      src = await this.backend.get(blobPath(this.prefix.slice(0, -1), item.blob!));
    } catch (e) {
      if (errno(e) === 'ENOENT') throw tampered('its stored content is missing', e);
      throw ioError(`cannot read the stored content of ${path}`, e);
    }
    const expected = { size: item.size, sha256: item.sha256! };
    let seen = 0;
    const hash = createHash('sha256');
    const check = new Transform({
      transform(chunk: Buffer, _enc, done) {
        seen += chunk.length;
        if (seen > expected.size)
          return done(tampered(`its stored content is longer than ${expected.size} bytes`));
        hash.update(chunk);
        done(null, chunk);
      },
      flush(done) {
        if (seen !== expected.size)
          return done(tampered(`its stored content has ${seen} bytes, not ${expected.size}`));
        if (hash.digest('hex') !== expected.sha256)
          return done(tampered('its stored content does not match its SHA-256'));
        done();
      },
    });
    const out = new PassThrough();
    const last = chain(
      this.keys ? [src as Readable, decryptStream(this.keys), check] : [src as Readable, check],
      (e) => {
        out.destroy(
          e instanceof TamperError
            ? tampered(e.message, e)
            : isReimageError(e)
              ? e
              : ioError(`cannot read the stored content of ${path}`, e),
        );
      },
    );
    last.pipe(out);
    out.on('close', () => {
      if (!last.readableEnded) last.destroy();
    });
    return out;
  }

  /** Reads every file back and checks it; never throws for a bad item, lists it. */
  async verify(): Promise<{ ok: number; bad: { path: string; reason: string }[] }> {
    const files = this.items.filter((i) => i.type === 'file');
    const bad: { path: string; reason: string }[] = [];
    let ok = 0;
    const results = new Map<string, string | null>();
    await this.eachFile(files, async (item) => {
      const key = `${this.byPath.get(item.path)!.blob}:${item.sha256}:${item.size}`;
      let reason = results.get(key);
      if (reason === undefined) {
        try {
          for await (const _ of await this.openFile(item.path));
          reason = null;
        } catch (e) {
          if (
            !isReimageError(e) ||
            (e.code !== 'STATE_STORE_TAMPERED' && e.code !== 'STATE_STORE_IO_FAILED')
          )
            throw e;
          reason = e.message.startsWith(`${item.path}: `)
            ? e.message.slice(item.path.length + 2)
            : e.message;
        }
        results.set(key, reason);
      }
      if (reason === null) ok++;
      else bad.push({ path: item.path, reason });
    });
    return { ok, bad };
  }

  /**
   * Writes the items (those `filter` selects) below `dest`, a new or empty folder, with modes,
   * times and (as root) owners. It never writes outside `dest`: paths were validated, nothing
   * lies below a symlink, files are created with O_EXCL|O_NOFOLLOW in folders this extract made,
   * and symlinks are made last. On failure what was written is removed again.
   */
  async extract(dest: string, filter?: (i: StateItem) => boolean): Promise<void> {
    const target = resolve(dest);
    const created = await prepareTarget(target);
    const owners = process.getuid?.() === 0;
    const chosen = this.items.filter((i) => !filter || filter(i));
    const made = new Set<string>(['']);
    const implicit: string[] = [];
    const abs = (p: string) => join(target, ...p.split('/'));
    const fail = (p: string, e: unknown) =>
      isReimageError(e)
        ? e
        : new ReimageError('APPLY_FAILED', `cannot create ${p}: ${(e as Error).message}`, {
            cause: e,
            details: { path: p },
          });
    const ensureDir = async (p: string, explicit: boolean) => {
      if (made.has(p)) return;
      const slash = p.lastIndexOf('/');
      await ensureDir(slash === -1 ? '' : p.slice(0, slash), false);
      try {
        await mkdir(abs(p), { mode: 0o700 });
      } catch (e) {
        if (errno(e) !== 'EEXIST') throw fail(p, e);
        const st = await lstat(abs(p));
        if (!st.isDirectory()) {
          throw new ReimageError(
            'TARGET_UNSAFE',
            `${abs(p)} appeared during the extract and is not a folder`,
            {
              details: { path: p },
            },
          );
        }
      }
      made.add(p);
      if (!explicit) implicit.push(p);
    };
    const parentOf = (p: string) => (p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '');
    try {
      const dirs = chosen.filter((i) => i.type === 'dir');
      for (const d of dirs) await ensureDir(d.path, true);
      await this.eachFile(
        chosen.filter((i) => i.type === 'file'),
        async (f) => {
          await ensureDir(parentOf(f.path), false);
          const path = abs(f.path);
          let fh: FileHandle;
          try {
            fh = await open(
              path,
              constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
              0o600,
            );
          } catch (e) {
            throw fail(f.path, e);
          }
          try {
            for await (const chunk of await this.openFile(f.path))
              await writeAll(fh, chunk as Buffer);
            if (owners) await fh.chown(f.uid, f.gid);
            await fh.chmod(f.mode);
            await fh.utimes(f.mtimeMs / 1000, f.mtimeMs / 1000);
          } catch (e) {
            await fh.close().catch(() => {});
            await rm(path, { force: true });
            throw fail(f.path, e);
          }
          await fh.close();
        },
      );
      for (const s of chosen.filter((i) => i.type === 'symlink')) {
        await ensureDir(parentOf(s.path), false);
        try {
          await symlink(s.target!, abs(s.path));
          if (owners) await lchown(abs(s.path), s.uid, s.gid);
          await lutimes(abs(s.path), s.mtimeMs / 1000, s.mtimeMs / 1000);
        } catch (e) {
          throw fail(s.path, e);
        }
      }
      // Folders last, deepest first: their times would change as entries are made in them.
      for (const p of implicit.filter((x) => x !== '')) await chmod(abs(p), 0o755);
      for (const d of [...dirs].reverse()) {
        try {
          if (owners) await chown(abs(d.path), d.uid, d.gid);
          await chmod(abs(d.path), d.mode);
          await utimes(abs(d.path), d.mtimeMs / 1000, d.mtimeMs / 1000);
        } catch (e) {
          throw fail(d.path, e);
        }
      }
    } catch (e) {
      await undoTarget(target, created);
      throw e;
    }
  }

  /** Runs `fn` on each file, letting the backend fetch ahead in batches. */
  private async eachFile(files: StateItem[], fn: (f: StateItem) => Promise<void>): Promise<void> {
    const prefetch = this.backend.prefetch?.bind(this.backend);
    const WINDOW_FILES = 256;
    const WINDOW_BYTES = 64 * 1024 * 1024;
    try {
      for (let i = 0; i < files.length;) {
        let j = i;
        let bytes = 0;
        while (
          j < files.length &&
          j - i < WINDOW_FILES &&
          (j === i || bytes + files[j]!.size <= WINDOW_BYTES)
        ) {
          bytes += files[j]!.size;
          j++;
        }
        const batch = files.slice(i, j);
        if (prefetch) {
          const names = [
            ...new Set(
              batch.map((f) => blobPath(this.prefix.slice(0, -1), this.byPath.get(f.path)!.blob!)),
            ),
          ];
          await prefetch(names);
        }
        for (const f of batch) await fn(f);
        await this.backend.dropPrefetched?.();
        i = j;
      }
    } finally {
      await this.backend.dropPrefetched?.();
    }
  }
}

async function prepareTarget(target: string): Promise<'dir' | 'contents'> {
  let st;
  try {
    st = await lstat(target);
  } catch (e) {
    if (errno(e) !== 'ENOENT') throw e;
    try {
      await mkdir(target, { mode: 0o700 });
    } catch (err) {
      throw new ReimageError('APPLY_FAILED', `cannot create ${target}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    return 'dir';
  }
  if (st.isDirectory() && (await readdir(target)).length === 0) {
    const me = process.getuid?.();
    if (me !== undefined && st.uid !== me) {
      throw new ReimageError(
        'TARGET_UNSAFE',
        `${target} belongs to uid ${st.uid}, not to us (uid ${me})`,
        {
          details: { target },
        },
      );
    }
    await chmod(target, 0o700);
    return 'contents';
  }
  throw new ReimageError(
    'TARGET_NOT_EMPTY',
    `${target} is ${st.isDirectory() ? 'not empty' : 'not a directory'}`,
    {
      details: { target },
    },
  );
}

async function undoTarget(target: string, created: 'dir' | 'contents'): Promise<void> {
  try {
    if (created === 'dir') await rm(target, { recursive: true, force: true });
    else
      for (const n of await readdir(target))
        await rm(join(target, n), { recursive: true, force: true });
  } catch {
    /* best effort: the error that made us undo matters more */
  }
}
