/**
 * `reimage image fetch IMAGE --from SRC… --store DIR`: the machine-side download of an image
 * from distribution points into a local store, seeded first from the old OS's files and
 * other stores. `reimage image apply IMAGE TARGET --store DIR` then needs no network.
 */
import type { Command } from 'commander';
import { statSync } from 'node:fs';
import { setPriority } from 'node:os';
import { ReimageError } from '../errors.js';
import { openRemote, TokenBucket, type RemoteStore } from '../content/remote.js';
import { ContentStore } from '../content/store.js';
import { fetchImageSeeded, resolveImageRef } from '../image/fetch.js';
import { formatBytes } from './output.js';

interface FetchCommandOptions {
  from: string[];
  store: string;
  seedRoot?: string;
  seedStore?: string[];
  rate?: string;
  background?: boolean;
  json?: boolean;
}

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function requireDir(path: string, flag: string): void {
  let isDir = false;
  try {
    isDir = statSync(path).isDirectory();
  } catch {
    // reported below
  }
  if (!isDir) {
    throw new ReimageError('INVALID_ARGUMENT', `${flag} ${path}: not a directory`, {
      details: { [flag]: path },
    });
  }
}

/** A DP given on the command line: a folder, a file:// URL or an http(s):// URL. */
function sourceFor(src: string, bucket: TokenBucket | undefined): RemoteStore {
  const remote = openRemote(src, bucket ? { bucket } : {});
  if (remote.name.startsWith('file://')) requireDir(remote.name.slice('file://'.length), '--from');
  return remote;
}

export function registerFetchCommand(image: Command): void {
  image
    .command('fetch')
    .description(
      'download an image from distribution points into a local store, seeding it first from local files and stores',
    )
    .argument('<image>', 'image id (or a name, when the source keeps names: objects/names/)')
    .requiredOption(
      '--from <src>',
      'distribution point: folder, file:// or http(s):// URL; repeatable, in preference order',
      collect,
    )
    .requiredOption('--store <dir>', 'local content store to fetch into (created if missing)')
    .option('--seed-root <dir>', 'old tree to reuse chunks from (e.g. / or a machine disk folder)')
    .option('--seed-store <dir>', 'another content store to reuse chunks from; repeatable', collect)
    .option('--rate <kbps>', 'bandwidth cap for all http distribution points, in kilobits/s')
    .option('--background', 'run at low CPU priority (nice 19), for pre-staging')
    .option('--json', 'print one JSON document at the end')
    .action(async (ref: string, o: FetchCommandOptions) => {
      const started = Date.now();
      let bucket: TokenBucket | undefined;
      if (o.rate !== undefined) {
        const kbps = Number(o.rate);
        if (!Number.isFinite(kbps) || kbps <= 0) {
          throw new ReimageError('INVALID_ARGUMENT', `--rate ${o.rate}: not a positive number`);
        }
        bucket = new TokenBucket((kbps * 1000) / 8);
      }
      const sources = o.from.map((s) => sourceFor(s, bucket));
      if (o.seedRoot !== undefined) requireDir(o.seedRoot, '--seed-root');
      for (const s of o.seedStore ?? []) requireDir(s, '--seed-store');
      const seedStores = (o.seedStore ?? []).map((s) => ContentStore.open(s));
      if (o.background) setPriority(19);
      const ac = new AbortController();
      const onSignal = () => {
        process.stderr.write('\ncancelling…\n');
        ac.abort();
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      try {
        const imageId = await resolveImageRef(sources, ref, ac.signal);
        const into = ContentStore.open(o.store, { create: true });
        const r = await fetchImageSeeded({
          sources,
          imageId,
          into,
          signal: ac.signal,
          ...(o.seedRoot !== undefined ? { seedRoot: o.seedRoot } : {}),
          seedStores,
        });
        const elapsed = (Date.now() - started) / 1000;
        const doc = {
          imageId,
          bytesDownloaded: r.bytesDownloaded,
          chunksSeeded: r.seed?.chunksSeeded ?? 0,
          bytesSeeded: r.seed?.bytesSeeded ?? 0,
          chunksFetched: r.chunksFetched,
          chunksFromLocal: r.chunksFromLocal,
          framesFetched: r.framesFetched,
          packSources: r.packSources,
          badSources: r.badSources,
          seed: r.seed ?? null,
          deltas: r.deltas ?? null,
          elapsed,
        };
        if (o.json) {
          process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
        } else {
          const lines = [
            `image ${imageId} is in ${into.root}`,
            `downloaded: ${formatBytes(r.bytesDownloaded)} (${r.chunksFetched} chunks, ${r.framesFetched} frames)`,
            `seeded:     ${doc.chunksSeeded} chunks, ${formatBytes(doc.bytesSeeded)} (read ${formatBytes(r.seed?.bytesRead ?? 0)})`,
            `local:      ${r.chunksFromLocal} chunks were already there, seeded or rebuilt`,
            ...(r.deltas
              ? [
                  `deltas:     ${r.deltas.chunks} chunks rebuilt from ${formatBytes(r.deltas.bytesDownloaded + r.deltas.indexBytes)} of deltas${r.deltas.bad ? ` (${r.deltas.bad} bad deltas, fetched whole)` : ''}`,
                ]
              : []),
            `elapsed:    ${elapsed.toFixed(1)} s`,
          ];
          for (const b of r.badSources) {
            lines.push(`bad source: ${b.source}${b.pack ? ` (pack ${b.pack})` : ''}: ${b.reason}`);
          }
          process.stdout.write(lines.join('\n') + '\n');
        }
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });
}
