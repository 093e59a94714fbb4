import { pathToFileURL } from 'node:url';
import { resolve } from 'node:path';
import { ReimageError } from '../../errors.js';
import { FormatRegistry, type ImageFormat } from './api.js';

/**
 * The formats a command can use: the built-in ones and plugins loaded from files (a module
 * whose default export, or `format`/`formats` export, is an ImageFormat or a list of them).
 * Built-ins are loaded lazily so that a broken or missing optional part never stops the rest.
 */
export async function loadFormats(pluginPaths: readonly string[] = []): Promise<FormatRegistry> {
  const registry = new FormatRegistry();
  const builtins: Array<() => Promise<ImageFormat[]>> = [
    async () => {
      const m = await import('./tar/index.js');
      return [m.tarFormat, m.tarGzFormat, m.tarZstFormat];
    },
    async () => [(await import('./wim/index.js')).wimFormat],
    async () => [(await import('./squashfs/index.js')).squashfsFormat],
  ];
  for (const [i, load] of builtins.entries()) {
    try {
      for (const f of await load()) registry.register(f);
    } catch (e) {
      // A broken built-in is reported by `reimage formats`; the others keep working.
      registry.register(brokenFormat(`builtin-${i}`, (e as Error).message));
    }
  }
  for (const p of pluginPaths) {
    let mod: Record<string, unknown>;
    try {
      mod = (await import(pathToFileURL(resolve(p)).href)) as Record<string, unknown>;
    } catch (e) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `cannot load format plugin ${p}: ${(e as Error).message}`,
        { cause: e },
      );
    }
    const found = [mod.default, mod.format, mod.formats].flat().filter((x) => x !== undefined);
    if (found.length === 0) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `format plugin ${p} exports no ImageFormat (default, format or formats)`,
      );
    }
    try {
      for (const f of found) registry.register(f as ImageFormat);
    } catch (e) {
      throw new ReimageError('INVALID_ARGUMENT', `format plugin ${p}: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }
  return registry;
}

function brokenFormat(name: string, why: string): ImageFormat {
  const fail = (): never => {
    throw new ReimageError('FORMAT_UNAVAILABLE', `format ${name} failed to load: ${why}`);
  };
  return {
    name,
    extensions: [],
    description: 'a built-in format that failed to load',
    capabilities: {
      owners: false,
      xattrs: false,
      hardlinks: false,
      devices: false,
      fifos: false,
      sparse: false,
      mtimeNs: false,
      rawNames: false,
    },
    unavailable: () => Promise.resolve(`failed to load: ${why}`),
    probe: () => Promise.resolve(false),
    read: () => fail(),
    write: () => Promise.resolve(fail()),
  };
}
