import { Type } from '@sinclair/typebox';
import { ReimageError } from '../../errors.js';
import { effectivePolicy } from '../../package/effective.js';
import type { AdvertisementPolicy, DeploymentSettings } from '../../package/schema.js';
import type { App } from '../app.js';
import { userOf } from '../auth.js';
import { Membership } from '../membership.js';
import { imageOf, Policy, resolvePe, waveOf } from '../policy.js';
import { importStatusDrop } from '../status-import.js';
import { statusService } from '../status-service.js';
import type { Schedule } from './advertisements.js';
import { RefParams, responses } from './common.js';
import { packageDocument, secretContext } from './packages.js';

const Publication = Type.Object({
  advertisement: Type.Object({
    id: Type.String(),
    name: Type.String(),
    availableFrom: Type.Union([Type.String(), Type.Null()]),
    deadline: Type.Union([Type.String(), Type.Null()]),
    schedule: Type.Unknown(),
  }),
  collection: Type.Object({ id: Type.String(), name: Type.String() }),
  package: Type.Object({
    id: Type.String(),
    name: Type.String(),
    version: Type.String(),
    revision: Type.Integer(),
    imageId: Type.String(),
    definition: Type.Unknown(),
  }),
  image: Policy.properties.advertisements.items.properties.image,
  pe: Policy.properties.advertisements.items.properties.pe,
  packageDocument: Type.Unknown({
    description: 'the package file as distribution points hold it (no secrets)',
  }),
  settings: Type.Unknown({ description: 'deployment settings; publishable only without secrets' }),
  effectivePolicy: Type.Unknown(),
  members: Type.Array(
    Type.Object({ id: Type.String(), name: Type.String(), wave: Type.Integer() }),
    { description: "the collection's members now, with each one's rollout wave" },
  ),
  sources: Type.Array(Type.Object({ distributionPoint: Type.String(), address: Type.String() }), {
    description: 'distribution points that hold the package (copy done): where to copy from',
  }),
});

/**
 * What `reimage advertisement publish` needs to publish an advertisement to a serverless
 * location (docs/serverless.md): the advertisement, its package, the effective policy, the
 * collection's members as of now, and where the image can be copied from. The publisher
 * signs and writes; the server never sees the signing key.
 */
export function publicationRoutes(app: App): void {
  app.get(
    '/api/v1/advertisements/:ref/publication',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['advertisements'],
        summary:
          'Everything needed to publish the advertisement to a share or web server, for machines that work without the server (refused when its package settings hold secrets)',
        params: RefParams,
        response: responses(Publication),
      },
    },
    async (req) => {
      const { catalog, secrets } = app.deps;
      const ad = await catalog.getAdvertisement(req.params.ref);
      if (!ad.enabled)
        throw new ReimageError(
          'PUBLICATION_REFUSED',
          `The advertisement ${ad.name} is disabled; enable it before publishing it.`,
          { details: { advertisement: ad.name, reason: 'disabled' } },
        );
      const pkg = await catalog.getPackage(ad.packageId);
      const sealed = await catalog.packageSecrets(pkg.id);
      const held = sealed ? Object.keys(secrets.open<object>(sealed, secretContext(pkg))) : [];
      if (held.length > 0)
        throw new ReimageError(
          'PUBLICATION_REFUSED',
          `The settings of package ${pkg.name}@${pkg.version} hold secrets (${held.join(', ')}); secrets never go to a share in clear text, so it cannot be published. Publish a package whose settings hold no secrets (docs/serverless.md).`,
          { details: { advertisement: ad.name, reason: 'secrets', secrets: held } },
        );
      const collection = await catalog.getCollection(ad.collectionId);
      const membership = await Membership.load(catalog, (app.deps.clock ?? Date.now)());
      const members = membership.members(collection);
      const ids = members.map((m) => m.id);
      const schedule = ad.schedule as Schedule;
      // The image record and the PE exactly as the machine's policy would send them.
      const images = await catalog.listImages();
      const dps = new Map((await catalog.listDps()).map((d) => [d.id, d]));
      const sources = (await catalog.listDistributions({ packageId: pkg.id, states: ['done'] }))
        .map((d) => dps.get(d.dpId))
        .filter((d) => d !== undefined)
        .map((d) => ({ distributionPoint: d.name, address: d.address }));
      return {
        advertisement: {
          id: ad.id,
          name: ad.name,
          availableFrom: ad.availableFrom,
          deadline: ad.deadline,
          schedule,
        },
        collection: { id: collection.id, name: collection.name },
        package: {
          id: pkg.id,
          name: pkg.name,
          version: pkg.version,
          revision: pkg.revision,
          imageId: pkg.imageId,
          definition: pkg.definition,
        },
        image: imageOf(images.find((i) => i.id === pkg.imageId)),
        pe: resolvePe(images, pkg.definition),
        packageDocument: packageDocument(pkg),
        settings: pkg.settings,
        effectivePolicy: effectivePolicy(
          pkg.settings as DeploymentSettings,
          ad.policy as AdvertisementPolicy,
        ),
        members: members.map((m) => ({
          id: m.id,
          name: m.name,
          wave: waveOf(ad, schedule, ids, m.id),
        })),
        sources,
      };
    },
  );

  app.post(
    '/api/v1/status/import',
    {
      config: { access: 'admin' },
      schema: {
        tags: ['status'],
        summary:
          'Import the status files serverless machines dropped in a folder the server can read; idempotent by (machine, seq)',
        body: Type.Object(
          {
            folder: Type.String({
              minLength: 1,
              maxLength: 4096,
              description: 'the drop folder, as a path on the server',
            }),
          },
          { additionalProperties: false },
        ),
        response: responses(
          Type.Object({
            files: Type.Integer(),
            accepted: Type.Integer(),
            duplicates: Type.Integer(),
            machinesCreated: Type.Array(Type.String()),
            rejected: Type.Array(
              Type.Object({ file: Type.String(), code: Type.String(), message: Type.String() }),
            ),
          }),
        ),
      },
    },
    async (req) => {
      const r = await importStatusDrop(
        app.deps.catalog,
        req.body.folder,
        (m, messages) => statusService(app.deps).ingest(m, messages),
        userOf(req).username,
      );
      for (const x of r.rejected)
        req.log.warn({ file: x.file, code: x.code }, `status drop file rejected: ${x.message}`);
      return r;
    },
  );
}
