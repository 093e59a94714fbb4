import { closeSync, mkdtempSync, openSync, rmSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, join } from 'node:path';
import { ReimageError } from '../errors.js';
import { writeAll, type ContentStore } from '../content/store.js';
import type { Entry } from './manifest.js';
import { ImageLibrary, type ImageProperties, type ImageRecord } from './library.js';
import { importTree, treeFromImage, applyTree } from './tree.js';
import type { FormatRegistry, ImageFormat, TreeEntry } from './formats/api.js';
import type { Warning } from './progress.js';

/**
 * Third-party image files in and out of the library, through format plugins:
 * - import: the file's tree becomes a native image (chunks, dedup, verification apply);
 * - opaque import: the file itself is stored as chunked content, and applied on the machine
 *   by its format;
 * - export: a native (or opaque) image written as a file of any format.
 */

async function usable(f: ImageFormat): Promise<ImageFormat> {
  const why = await f.unavailable();
  if (why)
    throw new ReimageError('FORMAT_UNAVAILABLE', `format ${f.name} cannot be used here: ${why}`, {
      details: { format: f.name },
    });
  return f;
}

export async function pickFormat(
  registry: FormatRegistry,
  file: string,
  name?: string,
): Promise<ImageFormat> {
  if (name) {
    const f = registry.get(name);
    if (!f) {
      throw new ReimageError(
        'FORMAT_UNKNOWN',
        `no image format ${JSON.stringify(name)}; known: ${registry
          .list()
          .map((x) => x.name)
          .join(', ')}`,
      );
    }
    return usable(f);
  }
  const f = await registry.detect(file);
  if (!f)
    throw new ReimageError(
      'FORMAT_UNKNOWN',
      `${file} is in no known image format; name one with --format`,
    );
  return usable(f);
}

export interface ImportFileOptions {
  store: ContentStore;
  registry: FormatRegistry;
  file: string;
  name: string;
  format?: string;
  index?: number;
  opaque?: boolean;
  description?: string;
  properties?: (base: ImageProperties) => ImageProperties;
  onWarning?: (w: Warning) => void;
}

export async function importFile(
  opts: ImportFileOptions,
): Promise<{ record: ImageRecord; created: boolean; format: string }> {
  try {
    statSync(opts.file);
  } catch (e) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `cannot read ${opts.file}: ${(e as Error).message}`,
      { cause: e },
    );
  }
  const format = await pickFormat(opts.registry, opts.file, opts.format);
  const props = (): ImageProperties => {
    const base: ImageProperties = {
      name: opts.name,
      created: new Date().toISOString(),
      sourceMachine: hostname(),
      custom: { importedFrom: basename(opts.file), importedFormat: format.name },
    };
    if (opts.description) base.description = opts.description;
    return opts.properties ? opts.properties(base) : base;
  };
  if (opts.opaque) {
    const size = statSync(opts.file).size;
    // Fixed attributes: the same file gives the same image (id) whenever it is imported.
    const now = 0n;
    // The root carries an xattr no filesystem can hold (no namespace prefix), so an opaque
    // image never has the id of a captured tree that happens to contain the same file.
    const root: Entry = {
      path: Buffer.alloc(0),
      type: 'dir',
      mode: 0o755,
      uid: 0,
      gid: 0,
      mtimeNs: now,
      size: 0,
      xattrs: [[Buffer.from(OPAQUE_XATTR), Buffer.from(format.name)]],
    };
    const payload: Entry = {
      path: Buffer.from(opaquePayloadName(format)),
      type: 'file',
      mode: 0o644,
      uid: 0,
      gid: 0,
      mtimeNs: now,
      size,
      xattrs: [],
    };
    async function* entries(): AsyncGenerator<TreeEntry> {
      yield { entry: root };
      yield { entry: payload, data: () => readFileChunks(opts.file) };
    }
    const r = await importTree({
      store: opts.store,
      name: opts.name,
      entries: entries(),
      properties: props,
      imageFormat: 'opaque',
      opaqueFormat: format.name,
    });
    return { ...r, format: format.name };
  }
  const readOpts = opts.index !== undefined ? { index: opts.index } : {};
  const r = await importTree({
    store: opts.store,
    name: opts.name,
    entries: format.read(opts.file, readOpts),
    properties: props,
    ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
  });
  return { ...r, format: format.name };
}

/** Marks the root of an opaque image; not a valid Linux xattr name, so capture never sees it. */
export const OPAQUE_XATTR = 'reimage.opaque-format';

export function opaquePayloadName(format: ImageFormat): string {
  return `payload${format.extensions[0] ?? ''}`;
}

async function* readFileChunks(file: string): AsyncGenerator<Uint8Array> {
  const { createReadStream } = await import('node:fs');
  for await (const piece of createReadStream(file, { highWaterMark: 1 << 20 }))
    yield piece as Buffer;
}

/** Copies an opaque image's payload out of the store into a temporary file (hash-verified). */
async function withPayload<T>(
  store: ContentStore,
  rec: ImageRecord,
  fn: (file: string) => Promise<T>,
): Promise<T> {
  // In the store's tmp/ (named like a session, so gc removes it if we are killed): the
  // payload can be as big as an OS image, too big for a tmpfs /tmp.
  const dir = mkdtempSync(join(store.root, 'tmp', `${process.pid}-opaque-`));
  try {
    const file = join(dir, 'payload');
    for await (const te of treeFromImage(store, rec.id)) {
      if (te.entry.type !== 'file' || !te.data) continue;
      const fd = openSync(file, 'wx', 0o600);
      try {
        for await (const piece of te.data()) writeAll(fd, piece);
      } finally {
        closeSync(fd);
      }
    }
    return await fn(file);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function exportImage(opts: {
  store: ContentStore;
  registry: FormatRegistry;
  image: string;
  format: string;
  out: string;
}): Promise<{ record: ImageRecord; format: string }> {
  const lib = new ImageLibrary(opts.store);
  const rec = lib.resolve(opts.image);
  const format = await pickFormat(opts.registry, opts.out, opts.format);
  const lock = await opts.store.lock('shared', `export ${opts.image}`);
  try {
    if (rec.imageFormat === 'opaque') {
      const source = await pickFormat(opts.registry, '', rec.opaqueFormat);
      await withPayload(opts.store, rec, (file) => format.write(source.read(file), opts.out));
    } else {
      await format.write(treeFromImage(opts.store, rec.id), opts.out);
    }
  } catch (e) {
    rmSync(opts.out, { force: true });
    throw e;
  } finally {
    lock.release();
  }
  return { record: rec, format: format.name };
}

/** Applies an opaque image: its payload is read by its own format and laid out safely. */
export async function applyOpaque(opts: {
  store: ContentStore;
  registry: FormatRegistry;
  record: ImageRecord;
  target: string;
  devices?: boolean;
  /** set owners (default: when root) */
  owners?: boolean;
  onWarning?: (w: Warning) => void;
}): Promise<{ entries: number; bytes: number }> {
  const format = await pickFormat(opts.registry, '', opts.record.opaqueFormat);
  const lock = await opts.store.lock('shared', `apply ${opts.record.id}`);
  try {
    return await withPayload(opts.store, opts.record, (file) =>
      applyTree(format.read(file), opts.target, {
        devices: !!opts.devices,
        ...(opts.owners !== undefined ? { owners: opts.owners } : {}),
        ...(opts.onWarning ? { onWarning: opts.onWarning } : {}),
      }),
    );
  } finally {
    lock.release();
  }
}
