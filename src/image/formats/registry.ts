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
  for (const load of builtins) {
    for (const f of await load()) registry.register(f);
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
