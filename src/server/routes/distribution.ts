import { Type } from '@sinclair/typebox';
import { fileURLToPath } from 'node:url';
import type { Distribution, DistributionPoint, PackageRecord } from '../../catalog/catalog.js';
import { davWriter } from '../../content/dav-writer.js';
import type { DpWriter } from '../../content/dp-writer.js';
import { dirRemote, httpRemote, type RemoteStore } from '../../content/remote.js';
import { replicateImage } from '../../content/replicate.js';
import { ReimageError } from '../../errors.js';
import type { App } from '../app.js';
import { resolvePe } from '../policy.js';
import { dpCredentialsContext, type DpCredentials } from './distribution-points.js';
import { audit, listOf, RefParams, responses } from './common.js';
import { packageDocument } from './packages.js';

/** How often a running copy writes its progress to the catalog, at most. */
const PROGRESS_EVERY_MS = 250;

const DistributionOut = Type.Object({
  packageId: Type.String(),
  dpId: Type.String(),
  dpName: Type.String(),
  state: Type.Union([
    Type.Literal('pending'),
    Type.Literal('copying'),
    Type.Literal('waiting'),
    Type.Literal('done'),
    Type.Literal('failed'),
  ]),
  sourceDpId: Type.Union([Type.String(), Type.Null()], {
    description: 'the DP the copy reads from (hub and spoke); null for the server library',
  }),
  sourceDpName: Type.Union([Type.String(), Type.Null()]),
  note: Type.Union([Type.String(), Type.Null()], {
    description: 'what a waiting copy waits for, e.g. "waiting for window until 22:00"',
  }),
  bytesDone: Type.Integer({
    description: 'bytes copied by the last run (what the DP lacked, copied so far)',
  }),
  bytesTotal: Type.Integer({
    description: 'bytes the last run had to copy; 0 when done means the DP already had everything',
  }),
  error: Type.Union([Type.String(), Type.Null()]),
  updatedAt: Type.String(),
});

/** Where the package document goes on a DP (store-relative). */
export const packageDocumentPath = (p: PackageRecord) => `objects/packages/${p.id}.json`;

/** A DP address that is a folder this server can write: its path; otherwise undefined. */
function localFolder(address: string): string | undefined {
  if (address.startsWith('/')) return address;
  if (address.startsWith('file://')) return fileURLToPath(address);
  return undefined;
}

function schemeOf(address: string): string {
  try {
    return new URL(address).protocol.replace(/:$/, '');
  } catch {
    return address.split(':')[0] ?? address;
  }
}

/** Why the server cannot write to this DP, or undefined when it can. */
function cannotWrite(dp: DistributionPoint): string | undefined {
  const scheme = schemeOf(dp.address);
  if (localFolder(dp.address) !== undefined || scheme === 'http' || scheme === 'https')
    return undefined;
  return `replication to ${scheme} addresses is not supported yet: copy with rsync and it will be verified on the machines`;
}

/** Why the server cannot read this DP as a source (hub), or undefined when it can. */
function cannotRead(dp: DistributionPoint): string | undefined {
  const scheme = schemeOf(dp.address);
  if (localFolder(dp.address) !== undefined || scheme === 'http' || scheme === 'https')
    return undefined;
  return `distribution point ${dp.name} (${scheme}) cannot be read as a source yet: use a folder or http(s) hub`;
}

/** Copies packages to DPs in the background, and resumes unfinished copies at start. */
export function distributionRoutes(app: App): void {
  const clock = app.deps.replicationClock;
  // Copies under way, by "package dp": one at a time per pair; and one copy at a time per DP,
  // so that two packages sharing packs never write the same temporary file at once.
  const running = new Map<string, Promise<void>>();
  const perDp = new Map<string, Promise<void>>();
  const stop = new AbortController();
  app.addHook('onClose', async () => {
    stop.abort();
    await Promise.allSettled([...running.values()]);
  });
  // A copy that was under way when the server stopped continues where it stopped: its row
  // still says pending, copying or waiting, and its partial file is on the DP.
  app.addHook('onReady', async () => {
    if (!app.deps.store) return;
    const catalog = app.deps.catalog;
    const unfinished = await catalog.listDistributions({
      states: ['pending', 'copying', 'waiting'],
    });
    for (const d of unfinished) {
      try {
        const p = await catalog.getPackage(d.packageId);
        const dp = await catalog.getDp(d.dpId);
        const source = d.sourceDpId ? await catalog.getDp(d.sourceDpId) : null;
        app.log.info(
          { package: `${p.name}@${p.version}`, dp: dp.name },
          'resuming a replication the server was running when it stopped',
        );
        start(p, dp, source);
      } catch (e) {
        await catalog.setDistribution({
          ...d,
          state: 'failed',
          error: `could not resume after a restart: ${(e as Error).message}`,
        });
      }
    }
  });

  const withNames = async (rows: Distribution[]) => {
    const names = new Map((await app.deps.catalog.listDps()).map((d) => [d.id, d.name]));
    return rows.map((r) => ({
      ...r,
      dpName: names.get(r.dpId) ?? r.dpId,
      sourceDpName: r.sourceDpId ? (names.get(r.sourceDpId) ?? r.sourceDpId) : null,
    }));
  };

  async function credentialsOf(dp: DistributionPoint): Promise<DpCredentials | undefined> {
    const sealed = await app.deps.catalog.dpCredentials(dp.id);
    return sealed
      ? app.deps.secrets.open<DpCredentials>(sealed, dpCredentialsContext(dp.name))
      : undefined;
  }

  async function writerFor(dp: DistributionPoint): Promise<string | DpWriter> {
    const folder = localFolder(dp.address);
    if (folder !== undefined) return folder;
    const creds = await credentialsOf(dp);
    return davWriter(dp.address, creds && { username: creds.username, password: creds.password });
  }

  async function sourceFor(
    p: PackageRecord,
    source: DistributionPoint | null,
  ): Promise<string | RemoteStore> {
    if (!source) return app.deps.store!.root;
    const state = (
      await app.deps.catalog.listDistributions({ packageId: p.id, dpId: source.id })
    )[0]?.state;
    if (state !== 'done') {
      throw new ReimageError(
        'DISTRIBUTION_SOURCE_NOT_READY',
        `the package is ${state ?? 'not distributed'} on the source ${source.name}, not done`,
      );
    }
    const why = cannotRead(source);
    if (why) throw new ReimageError('DISTRIBUTION_SOURCE_NOT_READY', why);
    const folder = localFolder(source.address);
    const kbps = source.bandwidth.rateLimitKbps;
    return folder !== undefined
      ? dirRemote(folder)
      : httpRemote(source.address, {
          ...(kbps ? { rateLimitBytesPerSec: (kbps * 1000) / 8 } : {}),
          retryForMs: 60_000,
        });
  }

  function start(p: PackageRecord, dp: DistributionPoint, source: DistributionPoint | null): void {
    const key = `${p.id} ${dp.id}`;
    if (running.has(key)) return;
    const catalog = app.deps.catalog;
    const doc = Buffer.from(JSON.stringify(packageDocument(p), null, 2) + '\n');
    const kbps = dp.bandwidth.rateLimitKbps;
    const base = { packageId: p.id, dpId: dp.id, sourceDpId: source?.id ?? null };
    // Progress writes go one after another, so an older one never lands after a newer one.
    let writes = Promise.resolve();
    const save = (d: Omit<Parameters<typeof catalog.setDistribution>[0], keyof typeof base>) => {
      writes = writes
        .then(() => catalog.setDistribution({ ...base, ...d }))
        .then(
          () => undefined,
          (e: unknown) => app.log.warn({ err: e }, 'recording the replication state failed'),
        );
      return writes;
    };
    const job = async () => {
      let last = 0;
      let waitingUntil = '';
      let progress = { bytesDone: 0, bytesTotal: 0 };
      try {
        const from = await sourceFor(p, source);
        const to = await writerFor(dp);
        const common = {
          from,
          to,
          ...(kbps ? { rateLimitBytesPerSec: (kbps * 1000) / 8 } : {}),
          ...(dp.bandwidth.windows ? { windows: dp.bandwidth.windows } : {}),
          ...(clock ? { clock } : {}),
          signal: stop.signal,
        };
        // The package carries its PE: the machines install it from the same DP in phase 1.
        // It goes first, so that a package marked done on a DP has everything a machine needs.
        const pe = resolvePe(await catalog.listImages(), p.definition);
        let peCopied = 0;
        if (pe && pe.imageId !== p.imageId)
          peCopied = (await replicateImage({ ...common, imageId: pe.imageId })).bytesCopied;
        const r = await replicateImage({
          ...common,
          imageId: p.imageId,
          extraObjects: [{ path: packageDocumentPath(p), data: doc }],
          onWait: (_until, hhmm) => {
            if (hhmm === waitingUntil) return;
            waitingUntil = hhmm;
            void save({ state: 'waiting', ...progress, note: `waiting for window until ${hhmm}` });
          },
          onProgress: (pr) => {
            progress = { bytesDone: pr.bytesDone, bytesTotal: pr.bytesTotal };
            const now = Date.now();
            if (now - last < PROGRESS_EVERY_MS && !waitingUntil) return;
            last = now;
            waitingUntil = '';
            void save({ state: 'copying', ...progress });
          },
        });
        const copied = r.bytesCopied + peCopied;
        await save({ state: 'done', bytesDone: copied, bytesTotal: copied });
        app.log.info(
          {
            package: `${p.name}@${p.version}`,
            dp: dp.name,
            from: source?.name ?? 'library',
            pe: pe?.name ?? null,
            ...r,
          },
          'package replicated to distribution point',
        );
      } catch (e) {
        if (stop.signal.aborted) {
          // The server is stopping: the row keeps its state, and the copy resumes at start.
          app.log.info(
            { package: `${p.name}@${p.version}`, dp: dp.name },
            'replication paused by the server stopping; it resumes when the server starts',
          );
          return;
        }
        app.log.warn(
          { package: `${p.name}@${p.version}`, dp: dp.name, err: e },
          'replication failed',
        );
        await save({ state: 'failed', ...progress, error: (e as Error).message });
      }
    };
    const before = perDp.get(dp.id) ?? Promise.resolve();
    const run = before.then(job, job).finally(() => {
      running.delete(key);
      if (perDp.get(dp.id) === run) perDp.delete(dp.id);
    });
    perDp.set(dp.id, run);
    running.set(key, run);
  }

  app.post(
    '/api/v1/packages/:ref/distribute',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['packages'],
        summary:
          "Copies the package's image and document to distribution points (in the background)",
        params: RefParams,
        body: Type.Object(
          {
            distributionPoints: Type.Array(Type.String({ minLength: 1, maxLength: 300 }), {
              minItems: 1,
              maxItems: 1000,
              uniqueItems: true,
              description: 'DP names or ids',
            }),
            fromDistributionPoint: Type.Optional(
              Type.String({
                minLength: 1,
                maxLength: 300,
                description:
                  'fill the DPs from this DP (name or id) instead of the library: hub and spoke, so a site link carries each byte once. The package must be done there.',
              }),
            ),
          },
          { additionalProperties: false },
        ),
        response: responses(listOf(DistributionOut), 202),
      },
    },
    async (req, reply) => {
      const catalog = app.deps.catalog;
      const { p, source, targets, rows } = await catalog.transaction(async (tx) => {
        const p = await tx.getPackage(req.params.ref);
        const dps: DistributionPoint[] = [];
        for (const ref of req.body.distributionPoints) dps.push(await tx.getDp(ref));
        let source: DistributionPoint | null = null;
        if (req.body.fromDistributionPoint !== undefined) {
          source = await tx.getDp(req.body.fromDistributionPoint);
          const state = (await tx.listDistributions({ packageId: p.id, dpId: source.id }))[0]
            ?.state;
          const why = dps.some((d) => d.id === source!.id)
            ? `${source.name} cannot be filled from itself`
            : state !== 'done'
              ? `the package is ${state ?? 'not distributed'} on ${source.name}: it must be done there first`
              : cannotRead(source);
          if (why)
            throw new ReimageError('DISTRIBUTION_SOURCE_NOT_READY', why, {
              details: { source: source.name, state: state ?? null },
            });
        }
        const targets: DistributionPoint[] = [];
        const rows: Distribution[] = [];
        for (const dp of dps) {
          let error = cannotWrite(dp) ?? null;
          if (error === null && !app.deps.store)
            error = 'this server has no image library to copy from';
          if (error === null) targets.push(dp);
          rows.push(
            await tx.setDistribution({
              packageId: p.id,
              dpId: dp.id,
              state: error === null ? 'pending' : 'failed',
              error,
              sourceDpId: source?.id ?? null,
            }),
          );
        }
        await audit(
          tx,
          req,
          'create',
          'distribution',
          `${p.name}@${p.version}`,
          `to ${dps.map((d) => d.name).join(', ')}${source ? ` from ${source.name}` : ''}`,
        );
        return { p, source, targets, rows };
      });
      for (const dp of targets) start(p, dp, source);
      return reply.status(202).send({ items: await withNames(rows) });
    },
  );

  app.get(
    '/api/v1/packages/:ref/distribution',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['packages'],
        summary: "The package's replication state on each distribution point",
        params: RefParams,
        response: responses(listOf(DistributionOut)),
      },
    },
    async (req) => {
      const p = await app.deps.catalog.getPackage(req.params.ref);
      return {
        items: await withNames(await app.deps.catalog.listDistributions({ packageId: p.id })),
      };
    },
  );

  app.get(
    '/api/v1/distribution-points/:ref/distribution',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['distribution points'],
        summary: 'The replication state of each package on this distribution point',
        params: RefParams,
        response: responses(listOf(DistributionOut)),
      },
    },
    async (req) => {
      const dp = await app.deps.catalog.getDp(req.params.ref);
      return {
        items: await withNames(await app.deps.catalog.listDistributions({ dpId: dp.id })),
      };
    },
  );
}
