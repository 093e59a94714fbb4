import { Type } from '@sinclair/typebox';
import type { Static } from '@sinclair/typebox';
import type { Machine } from '../../catalog/catalog.js';
import { ReimageError } from '../../errors.js';
import type { App } from '../app.js';
import { newSecret, secretHash } from '../credentials.js';
import { stateStoreKey } from '../state-key.js';
import { audit, listOf, RefParams, responses, Site } from './common.js';

const Str = (max = 200) => Type.String({ maxLength: max });
const Gb = Type.Number({ minimum: 0, maximum: 1e7 });

/** What a client reports about its machine. */
export const Inventory = Type.Object(
  {
    hostname: Type.Optional(Str(255)),
    os: Type.Optional(Str(64)),
    osVersion: Type.Optional(Str(64)),
    arch: Type.Optional(Str(32)),
    model: Type.Optional(Str()),
    manufacturer: Type.Optional(Str()),
    serial: Type.Optional(Str(128)),
    diskSizeGb: Type.Optional(Gb),
    diskFreeGb: Type.Optional(Gb),
    memoryGb: Type.Optional(Gb),
    cpuCount: Type.Optional(Type.Integer({ minimum: 0, maximum: 100000 })),
    macs: Type.Optional(
      Type.Array(
        Type.String({
          pattern: '^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$',
          title: 'MAC address like 52:54:00:12:34:56',
        }),
        {
          maxItems: 64,
        },
      ),
    ),
    ips: Type.Optional(Type.Array(Str(64), { maxItems: 64 })),
  },
  { additionalProperties: false },
);
export type Inventory = Static<typeof Inventory>;

const Tag = Type.String({
  pattern: '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$',
  title: 'tag of 1-64 letters, digits, ".", "_", ":" or "-"',
});

export const MachineSchema = Type.Object({
  id: Type.String({ description: 'the GUID' }),
  name: Type.String(),
  site: Type.Union([Type.String(), Type.Null()]),
  inventory: Inventory,
  tags: Type.Array(Type.String()),
  appliedImageId: Type.Union([Type.String(), Type.Null()]),
  clientVersion: Type.Union([Type.String(), Type.Null()]),
  enrolledAt: Type.String(),
  lastContactAt: Type.Union([Type.String(), Type.Null()]),
});

const EnrollmentToken = Type.Object({
  id: Type.String(),
  site: Type.Union([Type.String(), Type.Null()]),
  usesLeft: Type.Union([Type.Integer(), Type.Null()]),
  expiresAt: Type.String(),
  createdBy: Type.String(),
  createdAt: Type.String(),
  revoked: Type.Boolean(),
});

export function machineRoutes(app: App): void {
  app.get(
    '/api/v1/machines',
    {
      config: { access: 'read-only' },
      schema: { tags: ['machines'], response: responses(listOf(MachineSchema)) },
    },
    async () => ({
      items: await app.deps.catalog.listMachines(),
    }),
  );
  app.get(
    '/api/v1/machines/:ref',
    {
      config: { access: 'read-only' },
      schema: { tags: ['machines'], params: RefParams, response: responses(MachineSchema) },
    },
    async (req) => app.deps.catalog.getMachine(req.params.ref),
  );
  app.patch(
    '/api/v1/machines/:ref',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['machines'],
        params: RefParams,
        body: Type.Object(
          {
            name: Type.Optional(Type.String({ minLength: 1, maxLength: 255 })),
            site: Type.Optional(Type.Union([Site, Type.Null()])),
            tags: Type.Optional(Type.Array(Tag, { maxItems: 100, uniqueItems: true })),
          },
          { additionalProperties: false, minProperties: 1 },
        ),
        response: responses(MachineSchema),
      },
    },
    async (req) =>
      app.deps.catalog.transaction(async (tx) => {
        const m = await tx.getMachine(req.params.ref);
        const updated = await tx.updateMachine(m.id, req.body);
        await audit(
          tx,
          req,
          'update',
          'machine',
          `${m.name} ${m.id}`,
          Object.keys(req.body).join(', '),
        );
        return updated;
      }),
  );
  app.delete(
    '/api/v1/machines/:ref',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['machines'],
        summary: 'Forget a machine (its credential stops working; it must enroll again)',
        params: RefParams,
        response: responses(Type.Null(), 204),
      },
    },
    async (req, reply) => {
      await app.deps.catalog.transaction(async (tx) => {
        const m = await tx.getMachine(req.params.ref);
        await tx.deleteMachine(m.id);
        await audit(tx, req, 'delete', 'machine', `${m.name} ${m.id}`);
      });
      return reply.status(204).send();
    },
  );

  app.get(
    '/api/v1/machines/:ref/state-store-key',
    {
      config: { access: 'admin' },
      schema: {
        tags: ['machines'],
        summary:
          'The key of a machine’s state store for one advertisement, to rescue the store by hand (`reimage state extract`); audited',
        params: RefParams,
        querystring: Type.Object(
          { advertisement: Type.String({ minLength: 1, maxLength: 300 }) },
          { additionalProperties: false },
        ),
        response: responses(
          Type.Object({
            machineId: Type.String(),
            advertisementId: Type.String(),
            key: Type.String(),
          }),
        ),
      },
    },
    async (req) =>
      app.deps.catalog.transaction(async (tx) => {
        const m = await tx.getMachine(req.params.ref);
        const ad = await tx.getAdvertisement(req.query.advertisement);
        await audit(
          tx,
          req,
          'read-secret',
          'state store key',
          `${m.name} ${m.id}`,
          `advertisement ${ad.name}`,
        );
        return {
          machineId: m.id,
          advertisementId: ad.id,
          key: stateStoreKey(app.deps, m.id, ad.id),
        };
      }),
  );

  app.get(
    '/api/v1/enrollment-tokens',
    {
      config: { access: 'operator' },
      schema: { tags: ['machines'], response: responses(listOf(EnrollmentToken)) },
    },
    async () => ({
      items: await app.deps.catalog.listEnrollmentTokens(),
    }),
  );
  app.post(
    '/api/v1/enrollment-tokens',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['machines'],
        summary:
          'Make an enrollment token (shown once) that machines exchange for their own credentials',
        body: Type.Object(
          {
            site: Type.Optional(Site),
            uses: Type.Optional(
              Type.Integer({
                minimum: 1,
                maximum: 1_000_000,
                description:
                  'how many machines may enroll with it (default unlimited until expiry)',
              }),
            ),
            expiresInHours: Type.Optional(
              Type.Integer({ minimum: 1, maximum: 24 * 365, default: 168 }),
            ),
          },
          { additionalProperties: false },
        ),
        response: responses(Type.Object({ token: Type.String(), tokenInfo: EnrollmentToken }), 201),
      },
    },
    async (req, reply) => {
      const token = newSecret('rie');
      const hours = req.body.expiresInHours ?? 168;
      const expiresAt = new Date((app.deps.clock ?? Date.now)() + hours * 3600_000).toISOString();
      const tokenInfo = await app.deps.catalog.transaction(async (tx) => {
        const t = await tx.createEnrollmentToken({
          tokenHash: secretHash(token),
          site: req.body.site ?? null,
          usesLeft: req.body.uses ?? null,
          expiresAt,
          createdBy: req.principal?.kind === 'user' ? req.principal.user.username : '?',
        });
        await audit(
          tx,
          req,
          'create',
          'enrollment token',
          t.id,
          `site ${t.site ?? 'any'}, uses ${t.usesLeft ?? 'unlimited'}, expires ${expiresAt}`,
        );
        return t;
      });
      return reply.status(201).send({ token, tokenInfo });
    },
  );
  app.delete(
    '/api/v1/enrollment-tokens/:ref',
    {
      config: { access: 'operator' },
      schema: { tags: ['machines'], params: RefParams, response: responses(Type.Null(), 204) },
    },
    async (req, reply) => {
      await app.deps.catalog.transaction(async (tx) => {
        if (!(await tx.revokeEnrollmentToken(req.params.ref)))
          throw new ReimageError('NOT_FOUND', `No enrollment token ${req.params.ref}.`, {
            details: { kind: 'enrollment token', ref: req.params.ref },
          });
        await audit(tx, req, 'revoke', 'enrollment token', req.params.ref);
      });
      return reply.status(204).send();
    },
  );
}

/** A machine's inventory as the collection rule language sees it (docs/collections.md). */
export function machineFacts(
  m: Machine,
  imageNames: ReadonlyMap<string, string>,
  now: number,
): Record<string, unknown> {
  const inv = m.inventory as Inventory;
  return {
    name: m.name,
    guid: m.id,
    site: m.site,
    os: inv.os,
    os_version: inv.osVersion,
    arch: inv.arch,
    model: inv.model,
    manufacturer: inv.manufacturer,
    serial: inv.serial,
    disk_size_gb: inv.diskSizeGb,
    disk_free_gb: inv.diskFreeGb,
    memory_gb: inv.memoryGb,
    cpu_count: inv.cpuCount,
    mac: inv.macs ?? [],
    ip: inv.ips ?? [],
    client_version: m.clientVersion,
    image: m.appliedImageId,
    image_name: m.appliedImageId ? imageNames.get(m.appliedImageId) : undefined,
    last_contact_days: m.lastContactAt
      ? (now - Date.parse(m.lastContactAt)) / 86400_000
      : undefined,
    tags: m.tags,
  };
}
