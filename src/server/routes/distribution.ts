import { Type } from '@sinclair/typebox';
import { fileURLToPath } from 'node:url';
import type { Distribution, DistributionPoint, PackageRecord } from '../../catalog/catalog.js';
import { replicateImage } from '../../content/replicate.js';
import type { App } from '../app.js';
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
    Type.Literal('done'),
    Type.Literal('failed'),
  ]),
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

export function distributionRoutes(app: App): void {
  // Copies under way, by "package dp": one at a time per pair; and one copy at a time per DP,
  // so that two packages sharing packs never write the same temporary file at once.
  const running = new Map<string, Promise<void>>();
  const perDp = new Map<string, Promise<void>>();
  const stop = new AbortController();
  app.addHook('onClose', async () => {
    stop.abort();
    await Promise.allSettled([...running.values()]);
  });

  const withNames = async (rows: Distribution[]) => {
    const names = new Map((await app.deps.catalog.listDps()).map((d) => [d.id, d.name]));
    return rows.map((r) => ({ ...r, dpName: names.get(r.dpId) ?? r.dpId }));
  };

  function start(p: PackageRecord, dp: DistributionPoint, folder: string): void {
    const key = `${p.id} ${dp.id}`;
    if (running.has(key)) return;
    const catalog = app.deps.catalog;
    const store = app.deps.store!;
    const doc = Buffer.from(JSON.stringify(packageDocument(p), null, 2) + '\n');
    const kbps = dp.bandwidth.rateLimitKbps;
    // Progress writes go one after another, so an older one never lands after a newer one.
    let writes = Promise.resolve();
    const save = (d: Parameters<typeof catalog.setDistribution>[0]) => {
      writes = writes
        .then(() => catalog.setDistribution(d))
        .then(
          () => undefined,
          (e: unknown) => app.log.warn({ err: e }, 'recording the replication state failed'),
        );
      return writes;
    };
    const job = async () => {
      let last = 0;
      try {
        const r = await replicateImage({
          from: store.root,
          to: folder,
          imageId: p.imageId,
          extraObjects: [{ path: packageDocumentPath(p), data: doc }],
          ...(kbps ? { rateLimitBytesPerSec: (kbps * 1000) / 8 } : {}),
          signal: stop.signal,
          onProgress: (pr) => {
            const now = Date.now();
            if (now - last < PROGRESS_EVERY_MS) return;
            last = now;
            void save({
              packageId: p.id,
              dpId: dp.id,
              state: 'copying',
              bytesDone: pr.bytesDone,
              bytesTotal: pr.bytesTotal,
            });
          },
        });
        await save({
          packageId: p.id,
          dpId: dp.id,
          state: 'done',
          bytesDone: r.bytesCopied,
          bytesTotal: r.bytesCopied,
        });
        app.log.info(
          { package: `${p.name}@${p.version}`, dp: dp.name, ...r },
          'package replicated to distribution point',
        );
      } catch (e) {
        app.log.warn(
          { package: `${p.name}@${p.version}`, dp: dp.name, err: e },
          'replication failed',
        );
        if (!stop.signal.aborted)
          await save({
            packageId: p.id,
            dpId: dp.id,
            state: 'failed',
            error: (e as Error).message,
          });
        else
          await save({
            packageId: p.id,
            dpId: dp.id,
            state: 'failed',
            error: 'the server stopped during the copy; distribute again to resume',
          });
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
          },
          { additionalProperties: false },
        ),
        response: responses(listOf(DistributionOut), 202),
      },
    },
    async (req, reply) => {
      const catalog = app.deps.catalog;
      const { p, targets, rows } = await catalog.transaction(async (tx) => {
        const p = await tx.getPackage(req.params.ref);
        const dps: DistributionPoint[] = [];
        for (const ref of req.body.distributionPoints) dps.push(await tx.getDp(ref));
        const targets: Array<{ dp: DistributionPoint; folder: string }> = [];
        const rows: Distribution[] = [];
        for (const dp of dps) {
          const folder = localFolder(dp.address);
          let error: string | null = null;
          if (folder === undefined)
            error = `replication to ${schemeOf(dp.address)} addresses is not supported yet: copy with rsync and it will be verified on the machines`;
          else if (!app.deps.store) error = 'this server has no image library to copy from';
          if (error === null) targets.push({ dp, folder: folder! });
          rows.push(
            await tx.setDistribution({
              packageId: p.id,
              dpId: dp.id,
              state: error === null ? 'pending' : 'failed',
              error,
            }),
          );
        }
        await audit(
          tx,
          req,
          'create',
          'distribution',
          `${p.name}@${p.version}`,
          `to ${dps.map((d) => d.name).join(', ')}`,
        );
        return { p, targets, rows };
      });
      for (const t of targets) start(p, t.dp, t.folder);
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
