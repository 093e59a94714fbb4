import { Option, type Command } from 'commander';
import { readFileSync } from 'node:fs';
import { ReimageError } from '../errors.js';
import { ContentStore } from '../content/store.js';
import { loadPrivateKey, loadPublicKey, type ImageRecord } from '../image/library.js';
import { formatBytes, type ProgressMode } from './output.js';

/** What the image and store commands share: their common flags, output, store and key files. */
export interface Common {
  json?: boolean;
  progress?: ProgressMode;
  store?: string;
}

export function out(opts: Common, doc: unknown, text: () => string | string[]): void {
  if (opts.json) {
    process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
  } else {
    const t = text();
    process.stdout.write((Array.isArray(t) ? t.join('\n') : t) + '\n');
  }
}

export function openStore(opts: Common, create = false): ContentStore {
  const path = opts.store ?? process.env.REIMAGE_STORE;
  if (!path)
    throw new ReimageError(
      'USAGE',
      'no content store given: pass --store PATH or set REIMAGE_STORE',
    );
  return ContentStore.open(path, { create });
}

export function readKeyFile(file: string, kind: 'private' | 'public') {
  let pem: Buffer;
  try {
    pem = readFileSync(file);
  } catch (e) {
    throw new ReimageError('KEY_INVALID', `cannot read key file ${file}: ${(e as Error).message}`, {
      cause: e,
    });
  }
  return kind === 'private' ? loadPrivateKey(pem, file) : loadPublicKey(pem, file);
}

/** The option every command that reads or writes third-party formats takes. */
export const FORMAT_PLUGIN_OPTION = [
  '--format-plugin <path>',
  'load an image-format plugin (module path); repeatable',
  collect,
] as const;

/** --format-plugin flags, else REIMAGE_FORMAT_PLUGINS (colon-separated). */
export function pluginPaths(o: { formatPlugin?: string[] }): string[] {
  if (o.formatPlugin?.length) return o.formatPlugin;
  return (process.env.REIMAGE_FORMAT_PLUGINS ?? '').split(':').filter(Boolean);
}

export function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

export function parseProperties(list: string[] = []): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of list) {
    const i = kv.indexOf('=');
    if (i <= 0)
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `--property ${JSON.stringify(kv)} is not KEY=VALUE`,
      );
    out[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return out;
}

export function cancellable(): { signal: AbortSignal; done: () => void } {
  const ac = new AbortController();
  const onInt = () => {
    process.stderr.write('\ncancelling…\n');
    ac.abort();
  };
  process.on('SIGINT', onInt);
  process.on('SIGTERM', onInt);
  return {
    signal: ac.signal,
    done: () => {
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onInt);
    },
  };
}

export function withCommon(cmd: Command, store = true): Command {
  cmd.option('--json', 'print one JSON document at the end');
  cmd.addOption(
    new Option('--progress <mode>', 'progress display')
      .choices(['auto', 'bar', 'plain', 'json', 'none'])
      .default('auto'),
  );
  if (store) cmd.option('--store <path>', 'content store (default: $REIMAGE_STORE)');
  return cmd;
}

export function summary(rec: ImageRecord, names: string[]): string[] {
  const p = rec.properties;
  const s = rec.stats;
  const dedup = s.dataBytes > 0 ? (s.dataBytes / Math.max(1, s.uniqueBytes)).toFixed(2) : '1.00';
  const lines = [
    `id:           ${rec.id}`,
    `names:        ${names.join(', ') || '(none; reachable by id)'}`,
    `description:  ${p.description ?? ''}`,
    `os:           ${[p.osFamily, p.osVersion, p.architecture].filter(Boolean).join(' ')}`,
    `created:      ${p.created} on ${p.sourceMachine ?? '?'}`,
    `entries:      ${s.entries} (${s.files} files, ${s.dirs} dirs, ${s.symlinks} symlinks, ${s.hardlinks} hard links, ${s.devices} devices, ${s.fifos} fifos)`,
    `bytes:        ${formatBytes(s.bytes)} (${formatBytes(s.dataBytes)} of data)`,
    `chunks:       ${s.chunks} (${s.uniqueChunks} unique, ${formatBytes(s.uniqueBytes)}; dedup ${dedup}x)`,
    `packs:        ${rec.packs.length}`,
    `signed:       ${rec.signature ? `ed25519 key ${rec.signature.keyId}` : 'no'}`,
  ];
  if (rec.parent) lines.push(`parent:       ${rec.parent}`);
  for (const [k, v] of Object.entries(p.custom)) lines.push(`property:     ${k}=${v}`);
  return lines;
}
