import { Type } from '@sinclair/typebox';
import type { Catalog, ImageRecord } from '../../catalog/catalog.js';
import type { ContentStore } from '../../content/store.js';
import { isReimageError, ReimageError } from '../../errors.js';
import { ImageLibrary } from '../../image/library.js';
import type { ImageRecord as StoredImage } from '../../image/library.js';
import type { App } from '../app.js';
import { audit, listOf, RefParams, responses } from './common.js';

export const Image = Type.Object({
  id: Type.String(),
  name: Type.String(),
  format: Type.String({
    description: '`native`, or `opaque:<format>` for an image file stored as is',
  }),
  properties: Type.Record(Type.String(), Type.String()),
  size: Type.Number(),
  storedSize: Type.Number(),
  fileCount: Type.Number(),
  sourceMachine: Type.Union([Type.String(), Type.Null()]),
  inventory: Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()], {
    description: "the source machine's inventory, as the uploading client reported it",
  }),
  registeredAt: Type.String(),
  registeredBy: Type.String(),
});

/** The catalog's view of an image record from the library. */
export function catalogImage(
  rec: StoredImage,
  name: string,
  registeredBy: string,
): Omit<ImageRecord, 'registeredAt'> {
  const p = rec.properties;
  const properties: Record<string, string> = { created: p.created };
  for (const k of ['description', 'osFamily', 'osVersion', 'architecture'] as const)
    if (p[k]) properties[k] = p[k];
  for (const [k, v] of Object.entries(p.custom ?? {})) properties[`custom.${k}`] = v;
  return {
    id: rec.id,
    name,
    format: rec.imageFormat === 'opaque' ? `opaque:${rec.opaqueFormat ?? 'unknown'}` : 'native',
    properties,
    size: rec.stats.bytes,
    storedSize: rec.stats.storedBytes,
    fileCount: rec.stats.files,
    sourceMachine: p.sourceMachine ?? null,
    inventory: rec.inventory ?? null,
    registeredBy,
  };
}

/** Registers every named image of the library (current and previous versions) in the catalog. */
export async function registerLibrary(
  catalog: Catalog,
  store: ContentStore,
  actor: string,
): Promise<number> {
  const lib = new ImageLibrary(store);
  let n = 0;
  for (const name of lib.listNames()) {
    for (const id of [...name.previous, name.id]) {
      const rec = lib.getRecord(id);
      if (rec && (await catalog.registerImage(catalogImage(rec, name.name, actor))).created) n++;
    }
  }
  return n;
}

export function imageRoutes(app: App): void {
  app.get(
    '/api/v1/images',
    {
      config: { access: 'read-only' },
      schema: { tags: ['images'], response: responses(listOf(Image)) },
    },
    async () => ({
      items: await app.deps.catalog.listImages(),
    }),
  );

  app.get(
    '/api/v1/images/:ref',
    {
      config: { access: 'read-only' },
      schema: { tags: ['images'], params: RefParams, response: responses(Image) },
    },
    async (req) => app.deps.catalog.getImage(req.params.ref),
  );

  app.post(
    '/api/v1/images/register',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['images'],
        summary:
          "Record an image of the server's library in the catalog (by name, id or id prefix)",
        body: Type.Object(
          { ref: Type.String({ minLength: 1, maxLength: 200 }) },
          { additionalProperties: false },
        ),
        response: responses(Image, 201),
      },
    },
    async (req, reply) => {
      const store = app.deps.store;
      if (!store) throw new ReimageError('IMAGE_NOT_FOUND', 'This server has no image library.');
      const lib = new ImageLibrary(store);
      let rec: StoredImage;
      try {
        rec = lib.resolve(req.body.ref);
      } catch (e) {
        // The library's own message names its folder on the server: not the client's business.
        if (isReimageError(e, 'IMAGE_NOT_FOUND'))
          throw new ReimageError(
            'IMAGE_NOT_FOUND',
            `No image '${req.body.ref}' in the server's library.`,
            {
              details: { image: req.body.ref },
            },
          );
        throw e;
      }
      const name = lib.namesOf(rec.id)[0] ?? rec.properties.name;
      const image = await app.deps.catalog.transaction(async (tx) => {
        const r = await tx.registerImage(
          catalogImage(
            rec,
            name,
            req.principal?.kind === 'user' ? req.principal.user.username : 'server',
          ),
        );
        await audit(tx, req, 'register', 'image', `${name} ${rec.id.slice(0, 12)}`);
        return r.image;
      });
      return reply.status(201).send(image);
    },
  );

  app.post(
    '/api/v1/images/rescan',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['images'],
        summary: "Register every named image of the server's library",
        response: responses(Type.Object({ registered: Type.Integer() })),
      },
    },
    async (req) => {
      const store = app.deps.store;
      if (!store) return { registered: 0 };
      const registered = await registerLibrary(
        app.deps.catalog,
        store,
        req.principal?.kind === 'user' ? req.principal.user.username : 'server',
      );
      await audit(app.deps.catalog, req, 'register', 'image', 'library', `${registered} new`);
      return { registered };
    },
  );

  app.delete(
    '/api/v1/images/:ref',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['images'],
        summary:
          'Remove an image from the catalog (the library keeps its content until `store gc`)',
        params: RefParams,
        response: responses(Type.Null(), 204),
      },
    },
    async (req, reply) => {
      await app.deps.catalog.transaction(async (tx) => {
        const img = await tx.getImage(req.params.ref);
        const users = (await tx.listPackages()).filter((p) => p.imageId === img.id);
        if (users.length > 0)
          throw new ReimageError(
            'IN_USE',
            `The image is used by package(s) ${users.map((p) => `${p.name}@${p.version}`).join(', ')}.`,
            {
              details: {
                kind: 'image',
                referrers: users.map((p) => ({ kind: 'package', name: `${p.name}@${p.version}` })),
              },
            },
          );
        await tx.deleteImage(img.id);
        await audit(tx, req, 'delete', 'image', `${img.name} ${img.id.slice(0, 12)}`);
      });
      return reply.status(204).send();
    },
  );
}
