import { Type } from '@sinclair/typebox';
import type { App } from '../app.js';
import { advertisementRoutes } from './advertisements.js';
import { clientRoutes } from './client.js';
import { collectionRoutes } from './collections.js';
import { responses } from './common.js';
import { dpRoutes } from './distribution-points.js';
import { distributionRoutes } from './distribution.js';
import { imageRoutes } from './images.js';
import { machineRoutes } from './machines.js';
import { packageRoutes } from './packages.js';
import { publicationRoutes } from './publication.js';
import { sessionRoutes } from './session.js';
import { statusRoutes } from './status.js';
import { uploadRoutes } from './uploads.js';

export async function registerRoutes(app: App): Promise<void> {
  app.get(
    '/api/v1/server',
    {
      config: { access: 'public' },
      schema: {
        tags: ['server'],
        summary: 'What this server is: version, database kind, TLS fingerprint to pin',
        response: responses(
          Type.Object({
            name: Type.Literal('reimage'),
            apiVersion: Type.String(),
            database: Type.String(),
            fingerprint: Type.Union([Type.String(), Type.Null()]),
          }),
        ),
      },
    },
    async () => ({
      name: 'reimage' as const,
      apiVersion: '1',
      database: app.deps.catalog.dialect,
      fingerprint: app.deps.fingerprint ?? null,
    }),
  );
  sessionRoutes(app);
  imageRoutes(app);
  packageRoutes(app);
  dpRoutes(app);
  distributionRoutes(app);
  machineRoutes(app);
  collectionRoutes(app);
  advertisementRoutes(app);
  clientRoutes(app);
  statusRoutes(app);
  publicationRoutes(app);
  // Its own context: the binary body parser applies to the upload endpoints only.
  await app.register(async (child) => uploadRoutes(child as unknown as App));
}
