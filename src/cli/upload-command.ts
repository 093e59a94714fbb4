/**
 * `reimage image upload IMAGE --store DIR --server URL`: sends an image from a local content
 * store into the management server's library (only the chunks it lacks; resumable), with the
 * source machine's inventory. The token comes from --token, REIMAGE_TOKEN or `reimage login`
 * and is never printed.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { readFileSync, statfsSync } from 'node:fs';
import os from 'node:os';
import { UploadClient } from '../client/uploads.js';
import { ContentStore } from '../content/store.js';
import { ReimageError } from '../errors.js';
import { uploadImage, type UploadProgress, type UploadResult } from '../image/upload.js';
import { connect, withConnection, type AdminContext, type ConnectionOptions } from './admin.js';
import { formatBytes, formatDuration } from './output.js';

interface UploadOptions extends ConnectionOptions {
  store?: string;
  name?: string;
  inventory?: string | false;
  progress?: 'auto' | 'plain' | 'json' | 'none';
  requestTimeout?: number;
}

/**
 * This machine's inventory, as an upload records it with the image: hostname, OS, kernel,
 * architecture, CPUs, memory and the root filesystem's size. Best effort: what cannot be read
 * is left out.
 */
export function collectInventory(): Record<string, unknown> {
  const inv: Record<string, unknown> = {
    hostname: os.hostname(),
    arch: os.machine(),
    kernel: os.release(),
    platform: os.platform(),
    cpuCount: os.cpus().length,
    memoryGb: round(os.totalmem() / 1e9),
  };
  try {
    const rel = readFileSync('/etc/os-release', 'utf8');
    const field = (k: string) => new RegExp(`^${k}="?([^"\\n]*)"?$`, 'm').exec(rel)?.[1];
    if (field('ID')) inv.os = field('ID');
    if (field('VERSION_ID')) inv.osVersion = field('VERSION_ID');
    if (field('PRETTY_NAME')) inv.osName = field('PRETTY_NAME');
  } catch {
    // not Linux, or no os-release
  }
  try {
    const fs = statfsSync('/');
    inv.diskSizeGb = round((fs.blocks * fs.bsize) / 1e9);
    inv.diskFreeGb = round((fs.bavail * fs.bsize) / 1e9);
  } catch {
    // no statfs here
  }
  inv.collectedAt = new Date().toISOString();
  return inv;
}

const round = (n: number) => Math.round(n * 10) / 10;

function readInventory(file: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `--inventory ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      { cause: e, details: { file } },
    );
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v))
    throw new ReimageError('INVALID_ARGUMENT', `--inventory ${file}: must hold a JSON object`, {
      details: { file },
    });
  return v as Record<string, unknown>;
}

function progressLine(mode: 'plain' | 'json' | 'none'): (p: UploadProgress) => void {
  if (mode === 'none') return () => {};
  if (mode === 'json')
    return (p) =>
      process.stderr.write(JSON.stringify({ event: 'progress', operation: 'upload', ...p }) + '\n');
  let last = 0;
  return (p) => {
    const now = Date.now();
    if (p.phase === 'sending' && now - last < 2000) return;
    last = now;
    process.stderr.write(
      `upload ${p.phase}: ${p.chunksMissing}/${p.chunksTotal} chunks missing on the server, ${formatBytes(p.bytesSent)} sent of ~${formatBytes(p.bytesToSend)}${p.retries ? `, ${p.retries} retries` : ''}, elapsed ${formatDuration(p.elapsedMs)}\n`,
    );
  };
}

function describe(r: UploadResult): string[] {
  return [
    `uploaded ${r.name} (${r.imageId})`,
    `chunks:   ${r.chunksMissing} of ${r.chunksTotal} were missing on the server; ${r.chunksSent} sent in ${r.framesSent} frames`,
    `sent:     ${formatBytes(r.bytesSent)}${r.retries ? ` (${r.retries} retries)` : ''}${r.resumed ? ', resumed an open upload' : ''}`,
  ];
}

/** Adds `upload` to the `image` command. */
export function registerUploadCommand(image: Command, ctx: AdminContext): void {
  withConnection(
    image
      .command('upload <image>')
      .description(
        "upload an image (name, id or id prefix) from a local store into the server's library: only the chunks it lacks, resumable",
      )
      .option('--store <path>', 'local content store (default: $REIMAGE_STORE)')
      .option('--name <name>', "name in the server's library (default: the local name)")
      .option(
        '--inventory <file>',
        "JSON file with the source machine's inventory (default: this machine's)",
      )
      .option('--no-inventory', 'record no inventory')
      .option(
        '--request-timeout <seconds>',
        'give up on one request after this long, then retry (default 30)',
        (v: string) => {
          const n = Number(v);
          if (!Number.isFinite(n) || n <= 0)
            throw new InvalidArgumentError('expected seconds > 0.');
          return n;
        },
      )
      .option('--json', 'print one JSON document at the end')
      .addOption(
        new Option('--progress <mode>', 'progress on stderr')
          .choices(['auto', 'plain', 'json', 'none'])
          .default('auto'),
      ),
  ).action(async (ref: string, o: UploadOptions) => {
    const path = o.store ?? ctx.env.REIMAGE_STORE;
    if (!path)
      throw new ReimageError(
        'USAGE',
        'no content store given: pass --store PATH or set REIMAGE_STORE',
      );
    const store = ContentStore.open(path);
    const inventory =
      o.inventory === false
        ? undefined
        : o.inventory
          ? readInventory(o.inventory)
          : collectInventory();
    const api = await connect(
      o,
      ctx,
      o.requestTimeout ? { timeoutMs: o.requestTimeout * 1000 } : {},
    );
    const ac = new AbortController();
    const onSignal = () => ac.abort();
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    try {
      const mode =
        o.progress === 'auto' || o.progress === undefined
          ? o.json
            ? 'none'
            : 'plain'
          : o.progress;
      const r = await uploadImage({
        store,
        imageId: ref,
        ...(o.name ? { name: o.name } : {}),
        server: new UploadClient(api),
        ...(inventory ? { inventory } : {}),
        signal: ac.signal,
        onProgress: progressLine(mode),
      });
      if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else process.stdout.write(describe(r).join('\n') + '\n');
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      api.close();
    }
  });
}
