import { Type } from '@sinclair/typebox';
import type { Catalog, ImageRecord, PackageRecord } from '../../catalog/catalog.js';
import { isReimageError, ReimageError } from '../../errors.js';
import { parsePackageFile } from '../../package/document.js';
import { checkTightenOnly } from '../../package/effective.js';
import type {
  AdvertisementPolicy,
  DeploymentSettings,
  PackageDefinition,
} from '../../package/schema.js';
import { joinSecrets, splitSecrets } from '../../package/secrets.js';
import type { App } from '../app.js';
import type { SecretBox } from '../secret-box.js';
import { audit, listOf, RefParams, responses } from './common.js';

const MAX_DOCUMENT = 512 * 1024;

const PackageOut = Type.Object({
  id: Type.String(),
  name: Type.String(),
  version: Type.String(),
  description: Type.String(),
  imageId: Type.String(),
  definition: Type.Unknown({
    description: 'the package definition (docs/schemas/package-definition.schema.json)',
  }),
  settings: Type.Unknown({
    description: 'the deployment settings with every secret replaced by {"secret": "set"}',
  }),
  revision: Type.Integer(),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});

const PackageIn = Type.Object(
  {
    definition: Type.String({
      maxLength: MAX_DOCUMENT,
      description: 'the package definition file (YAML or JSON text)',
    }),
    settings: Type.String({
      maxLength: MAX_DOCUMENT,
      description: 'the deployment settings file (YAML or JSON text)',
    }),
    definitionFile: Type.Optional(
      Type.String({ maxLength: 300, description: 'file name, for messages' }),
    ),
    settingsFile: Type.Optional(Type.String({ maxLength: 300 })),
  },
  { additionalProperties: false },
);

/** What a secret-bearing settings document's ciphertext is bound to. */
export const secretContext = (p: { name: string; version: string }) =>
  `package:${p.name}@${p.version}`;

/** The package's settings with its secrets, for a machine's own policy only. */
export async function packageSettingsWithSecrets(
  catalog: Catalog,
  box: SecretBox,
  p: PackageRecord,
): Promise<DeploymentSettings> {
  const sealed = await catalog.packageSecrets(p.id);
  const secrets = sealed ? box.open<Record<string, string>>(sealed, secretContext(p)) : {};
  return joinSecrets(p.settings as DeploymentSettings, secrets);
}

async function resolveImage(
  tx: Catalog,
  def: PackageDefinition,
  file: string,
): Promise<ImageRecord> {
  const ref = def.image.id ?? def.image.name ?? '';
  let image: ImageRecord;
  try {
    image = await tx.getImage(ref);
  } catch (e) {
    if (isReimageError(e, 'NOT_FOUND'))
      throw new ReimageError(
        'REFERENCE_UNKNOWN',
        `${file} /image: no image '${ref}' in the catalog (register it first: reimage image register).`,
        {
          details: { kind: 'image', ref, file, path: '/image' },
        },
      );
    throw e;
  }
  const wantOpaque = (def.format ?? 'native') === 'opaque';
  if (wantOpaque !== image.format.startsWith('opaque:'))
    throw new ReimageError(
      'VALIDATION_FAILED',
      `${file} /format: the image ${image.name} is ${image.format}, not ${def.format ?? 'native'}.`,
      {
        details: {
          problems: [
            {
              file,
              path: '/format',
              found: def.format ?? 'native',
              expected: image.format.startsWith('opaque:') ? 'opaque' : 'native',
            },
          ],
        },
      },
    );
  return image;
}

/**
 * Validates both documents and seals the secrets. A secret left as the marker `{secret: set}`
 * keeps the value stored before (so a package read back, edited and sent again keeps its
 * secrets without anyone re-typing them).
 */
async function prepare(
  app: App,
  tx: Catalog,
  body: { definition: string; settings: string; definitionFile?: string; settingsFile?: string },
  previous?: PackageRecord,
) {
  const defFile = body.definitionFile ?? 'definition';
  const setFile = body.settingsFile ?? 'settings';
  const definition = parsePackageFile('PackageDefinition', body.definition, defFile);
  const settings = parsePackageFile('DeploymentSettings', body.settings, setFile);
  if (previous && (definition.name !== previous.name || definition.version !== previous.version))
    throw new ReimageError(
      'VALIDATION_FAILED',
      `${defFile}: name and version identify the package and cannot change (${previous.name}@${previous.version}); create a new version instead.`,
      {
        details: {
          problems: [
            {
              file: defFile,
              path: '/version',
              found: `${definition.name}@${definition.version}`,
              expected: `${previous.name}@${previous.version}`,
            },
          ],
        },
      },
    );
  const image = await resolveImage(tx, definition, defFile);
  // A marker means "keep the stored value": put stored values back, then take them all out again.
  const old = previous ? await packageSecretsOf(app, tx, previous) : {};
  const split = splitSecrets(joinSecrets(settings, old, setFile));
  const secrets = split.secrets;
  const sealed =
    Object.keys(secrets).length > 0
      ? app.deps.secrets.seal(secrets, secretContext(definition))
      : null;
  return { definition, settings: split.public, image, sealed, secretPaths: Object.keys(secrets) };
}

async function packageSecretsOf(
  app: App,
  tx: Catalog,
  p: PackageRecord,
): Promise<Record<string, string>> {
  const sealed = await tx.packageSecrets(p.id);
  return sealed ? app.deps.secrets.open<Record<string, string>>(sealed, secretContext(p)) : {};
}

export function packageRoutes(app: App): void {
  app.get(
    '/api/v1/packages',
    {
      config: { access: 'read-only' },
      schema: { tags: ['packages'], response: responses(listOf(PackageOut)) },
    },
    async () => ({
      items: await app.deps.catalog.listPackages(),
    }),
  );
  app.get(
    '/api/v1/packages/:ref',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['packages'],
        summary: 'By id, name@version, or name (newest version)',
        params: RefParams,
        response: responses(PackageOut),
      },
    },
    async (req) => app.deps.catalog.getPackage(req.params.ref),
  );
  app.get(
    '/api/v1/packages/:ref/document',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['packages'],
        summary: 'The package file that goes to distribution points (no secrets)',
        params: RefParams,
        response: responses(Type.Record(Type.String(), Type.Unknown())),
      },
    },
    async (req) => packageDocument(await app.deps.catalog.getPackage(req.params.ref)),
  );

  app.post(
    '/api/v1/packages',
    {
      config: { access: 'operator' },
      schema: { tags: ['packages'], body: PackageIn, response: responses(PackageOut, 201) },
    },
    async (req, reply) => {
      const created = await app.deps.catalog.transaction(async (tx) => {
        const p = await prepare(app, tx, req.body);
        const rec = await tx.createPackage({
          name: p.definition.name,
          version: p.definition.version,
          description: p.definition.description ?? '',
          imageId: p.image.id,
          definition: p.definition,
          settings: p.settings,
          secrets: p.sealed,
        });
        await audit(
          tx,
          req,
          'create',
          'package',
          `${rec.name}@${rec.version}`,
          `image ${p.image.name} ${p.image.id.slice(0, 12)}; secrets: ${p.secretPaths.join(', ') || 'none'}`,
        );
        return rec;
      });
      return reply.status(201).send(created);
    },
  );

  app.put(
    '/api/v1/packages/:ref',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['packages'],
        params: RefParams,
        body: PackageIn,
        response: responses(PackageOut),
      },
    },
    async (req) =>
      app.deps.catalog.transaction(async (tx) => {
        await tx.lockPackage((await tx.getPackage(req.params.ref)).id);
        const current = await tx.getPackage(req.params.ref);
        const p = await prepare(app, tx, req.body, current);
        for (const ad of (await tx.listAdvertisements()).filter(
          (a) => a.packageId === current.id,
        )) {
          try {
            checkTightenOnly(p.settings as DeploymentSettings, ad.policy as AdvertisementPolicy);
          } catch (e) {
            if (isReimageError(e, 'POLICY_LOOSENED'))
              throw new ReimageError(
                'POLICY_LOOSENED',
                `With these settings, advertisement ${ad.name} would loosen the package: ${e.message}`,
                { details: { ...e.details, advertisement: ad.name } },
              );
            throw e;
          }
        }
        const rec = await tx.updatePackage(current.id, {
          description: p.definition.description ?? '',
          imageId: p.image.id,
          definition: p.definition,
          settings: p.settings,
          secrets: p.sealed,
        });
        await audit(
          tx,
          req,
          'update',
          'package',
          `${rec.name}@${rec.version}`,
          `revision ${rec.revision}; secrets: ${p.secretPaths.join(', ') || 'none'}`,
        );
        return rec;
      }),
  );

  app.delete(
    '/api/v1/packages/:ref',
    {
      config: { access: 'operator' },
      schema: { tags: ['packages'], params: RefParams, response: responses(Type.Null(), 204) },
    },
    async (req, reply) => {
      await app.deps.catalog.transaction(async (tx) => {
        const p = await tx.getPackage(req.params.ref);
        await tx.deletePackage(p.id);
        await audit(tx, req, 'delete', 'package', `${p.name}@${p.version}`);
      });
      return reply.status(204).send();
    },
  );
}

/** The package file for distribution points: definition and settings, never a secret. */
export function packageDocument(p: PackageRecord): Record<string, unknown> {
  return {
    apiVersion: 'reimage/v1',
    kind: 'Package',
    id: p.id,
    name: p.name,
    version: p.version,
    revision: p.revision,
    image: p.imageId,
    definition: p.definition,
    settings: p.settings,
  };
}
