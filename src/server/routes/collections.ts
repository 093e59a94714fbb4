import { Type } from '@sinclair/typebox';
import type { Catalog } from '../../catalog/catalog.js';
import { parseRule } from '../../catalog/collection-rule.js';
import { isReimageError, ReimageError } from '../../errors.js';
import type { App } from '../app.js';
import { Membership } from '../membership.js';
import { audit, listOf, Name, RefParams, responses } from './common.js';
import { MachineSchema } from './machines.js';

const Rule = Type.String({
  minLength: 1,
  maxLength: 4096,
  description: 'docs/collections.md, e.g. os = "debian" and disk_free_gb >= 20',
});
const MachineRefs = Type.Array(Type.String({ minLength: 1, maxLength: 255 }), {
  maxItems: 100000,
  description: 'machine GUIDs or names',
});
const CollectionOut = Type.Object({
  id: Type.String(),
  name: Type.String(),
  description: Type.String(),
  rule: Type.Union([Type.String(), Type.Null()]),
  include: Type.Array(Type.String()),
  exclude: Type.Array(Type.String()),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});

/** Machine names or GUIDs → GUIDs; an unknown one is a REFERENCE_UNKNOWN. */
async function resolveMachines(
  tx: Catalog,
  refs: string[] | undefined,
  field: string,
): Promise<string[] | undefined> {
  if (!refs) return undefined;
  const ids: string[] = [];
  for (const ref of refs) {
    try {
      ids.push((await tx.getMachine(ref)).id);
    } catch (e) {
      if (isReimageError(e, 'NOT_FOUND'))
        throw new ReimageError('REFERENCE_UNKNOWN', `${field}: no machine '${ref}'.`, {
          details: { kind: 'machine', ref, path: `body/${field}` },
        });
      throw e;
    }
  }
  return [...new Set(ids)];
}

export function collectionRoutes(app: App): void {
  const now = () => (app.deps.clock ?? Date.now)();
  app.get(
    '/api/v1/collections',
    {
      config: { access: 'read-only' },
      schema: { tags: ['collections'], response: responses(listOf(CollectionOut)) },
    },
    async () => ({
      items: await app.deps.catalog.listCollections(),
    }),
  );
  app.get(
    '/api/v1/collections/:ref',
    {
      config: { access: 'read-only' },
      schema: { tags: ['collections'], params: RefParams, response: responses(CollectionOut) },
    },
    async (req) => app.deps.catalog.getCollection(req.params.ref),
  );
  app.get(
    '/api/v1/collections/:ref/members',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['collections'],
        params: RefParams,
        response: responses(listOf(MachineSchema)),
      },
    },
    async (req) => {
      const c = await app.deps.catalog.getCollection(req.params.ref);
      return { items: (await Membership.load(app.deps.catalog, now())).members(c) };
    },
  );
  app.post(
    '/api/v1/collections/preview',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['collections'],
        summary: 'The machines a rule would match now',
        body: Type.Object({ rule: Rule }, { additionalProperties: false }),
        response: responses(listOf(MachineSchema)),
      },
    },
    async (req) => {
      parseRule(req.body.rule);
      return {
        items: (await Membership.load(app.deps.catalog, now())).members({
          rule: req.body.rule,
          include: [],
          exclude: [],
        }),
      };
    },
  );
  app.post(
    '/api/v1/collections',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['collections'],
        body: Type.Object(
          {
            name: Name,
            description: Type.Optional(Type.String({ maxLength: 2000 })),
            rule: Type.Optional(Rule),
            include: Type.Optional(MachineRefs),
            exclude: Type.Optional(MachineRefs),
          },
          { additionalProperties: false },
        ),
        response: responses(CollectionOut, 201),
      },
    },
    async (req, reply) => {
      if (req.body.rule) parseRule(req.body.rule);
      const c = await app.deps.catalog.transaction(async (tx) => {
        const created = await tx.createCollection({
          name: req.body.name,
          description: req.body.description ?? '',
          rule: req.body.rule ?? null,
          include: (await resolveMachines(tx, req.body.include, 'include')) ?? [],
          exclude: (await resolveMachines(tx, req.body.exclude, 'exclude')) ?? [],
        });
        await audit(tx, req, 'create', 'collection', created.name, created.rule ?? 'static');
        return created;
      });
      return reply.status(201).send(c);
    },
  );
  app.patch(
    '/api/v1/collections/:ref',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['collections'],
        params: RefParams,
        body: Type.Object(
          {
            description: Type.Optional(Type.String({ maxLength: 2000 })),
            rule: Type.Optional(Type.Union([Rule, Type.Null()])),
            include: Type.Optional(MachineRefs),
            exclude: Type.Optional(MachineRefs),
          },
          { additionalProperties: false, minProperties: 1 },
        ),
        response: responses(CollectionOut),
      },
    },
    async (req) => {
      if (req.body.rule) parseRule(req.body.rule);
      return app.deps.catalog.transaction(async (tx) => {
        const c = await tx.getCollection(req.params.ref);
        const updated = await tx.updateCollection(c.id, {
          description: req.body.description,
          rule: req.body.rule,
          include: await resolveMachines(tx, req.body.include, 'include'),
          exclude: await resolveMachines(tx, req.body.exclude, 'exclude'),
        });
        await audit(tx, req, 'update', 'collection', c.name, Object.keys(req.body).join(', '));
        return updated;
      });
    },
  );
  app.delete(
    '/api/v1/collections/:ref',
    {
      config: { access: 'operator' },
      schema: { tags: ['collections'], params: RefParams, response: responses(Type.Null(), 204) },
    },
    async (req, reply) => {
      await app.deps.catalog.transaction(async (tx) => {
        const c = await tx.getCollection(req.params.ref);
        await tx.deleteCollection(c.id);
        await audit(tx, req, 'delete', 'collection', c.name);
      });
      return reply.status(204).send();
    },
  );
}
