import { randomUUID } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import { ReimageError } from '../../errors.js';
import type { App } from '../app.js';
import { machineOf } from '../auth.js';
import { newSecret, secretHash } from '../credentials.js';
import { siteByBoundary } from '../site.js';
import { checkStatusBatch } from '../status-ingest.js';
import { responses } from './common.js';
import { Inventory, MachineSchema } from './machines.js';
import { machinePolicy, Policy } from '../policy.js';
import { statusService } from '../status-service.js';

const ImageId = Type.String({
  pattern: '^[0-9a-f]{64}$',
  title: 'image id of 64 lowercase hex digits',
});
const ClientVersion = Type.String({ maxLength: 64 });
const MAX_BATCH = 1000;

const StatusIn = Type.Object(
  {
    seq: Type.Integer({
      minimum: 1,
      maximum: 2_000_000_000,
      description: 'per-machine sequence number, continuous across old client, PE and new client',
    }),
    id: Type.Integer({
      minimum: 1,
      maximum: 99999,
      description: 'status message id (docs/status-messages.md)',
    }),
    time: Type.String({ format: 'date-time' }),
    advertisementId: Type.Optional(Type.String({ maxLength: 64 })),
    properties: Type.Optional(Type.Record(Type.String({ maxLength: 64 }), Type.Unknown())),
  },
  { additionalProperties: false },
);

/** The endpoints machines call: enroll, report inventory, read their policy, post status. */
export function clientRoutes(app: App): void {
  app.post(
    '/api/v1/client/enroll',
    {
      config: { access: 'public' },
      schema: {
        tags: ['client'],
        summary:
          'Exchange an enrollment token for this machine’s own GUID and credential (shown once)',
        body: Type.Object(
          {
            token: Type.String({ maxLength: 200 }),
            name: Type.String({ minLength: 1, maxLength: 255 }),
            inventory: Inventory,
            clientVersion: Type.Optional(ClientVersion),
            appliedImageId: Type.Optional(ImageId),
          },
          { additionalProperties: false },
        ),
        response: responses(
          Type.Object({ machine: MachineSchema, credential: Type.String() }),
          201,
        ),
      },
    },
    async (req, reply) => {
      const { catalog } = app.deps;
      const credential = newSecret('rim');
      const machine = await catalog.transaction(async (tx) => {
        const token = await tx.consumeEnrollmentToken(secretHash(req.body.token));
        if (!token)
          throw new ReimageError(
            'ENROLLMENT_REFUSED',
            'The enrollment token is unknown, expired, revoked or used up.',
          );
        const site = token.site ?? siteByBoundary(await tx.listDps(), req.body.inventory.ips ?? []);
        const m = await tx.createMachine({
          id: randomUUID(),
          name: req.body.name,
          site,
          credentialHash: secretHash(credential),
          inventory: req.body.inventory,
          clientVersion: req.body.clientVersion ?? null,
          appliedImageId: req.body.appliedImageId ?? null,
        });
        await tx.audit({
          actor: `machine:${m.id}`,
          action: 'create',
          kind: 'machine',
          target: `${m.name} ${m.id}`,
          summary: `enrolled with token ${token.id}, site ${site ?? 'none'}`,
        });
        return m;
      });
      return reply.status(201).send({ machine, credential });
    },
  );

  app.put(
    '/api/v1/client/inventory',
    {
      config: { access: 'machine' },
      schema: {
        tags: ['client'],
        body: Type.Object(
          {
            inventory: Inventory,
            clientVersion: Type.Optional(ClientVersion),
            appliedImageId: Type.Optional(Type.Union([ImageId, Type.Null()])),
          },
          { additionalProperties: false },
        ),
        response: responses(MachineSchema),
      },
    },
    async (req) => {
      const m = machineOf(req);
      return app.deps.catalog.updateMachine(m.id, {
        inventory: req.body.inventory,
        clientVersion: req.body.clientVersion,
        appliedImageId: req.body.appliedImageId,
        contact: true,
      });
    },
  );

  app.get(
    '/api/v1/client/policy',
    {
      config: { access: 'machine' },
      schema: {
        tags: ['client'],
        summary:
          'This machine’s policy: the advertisements for it, with their settings (secrets included, for this machine only)',
        response: responses(Policy),
      },
    },
    async (req) => {
      const m = machineOf(req);
      await app.deps.catalog.touchMachine(m.id);
      return machinePolicy(app.deps, m);
    },
  );

  app.post(
    '/api/v1/client/status',
    {
      config: { access: 'machine' },
      schema: {
        tags: ['client'],
        summary: 'Post a batch of status messages; idempotent by (machine, seq), any order',
        body: Type.Object(
          {
            machineId: Type.String({ maxLength: 64 }),
            messages: Type.Array(StatusIn, { minItems: 1, maxItems: MAX_BATCH }),
          },
          { additionalProperties: false },
        ),
        response: responses(Type.Object({ accepted: Type.Integer(), duplicates: Type.Integer() })),
      },
    },
    async (req) => {
      const m = machineOf(req);
      if (req.body.machineId.toLowerCase() !== m.id)
        throw new ReimageError(
          'MACHINE_MISMATCH',
          'This batch is for another machine; a machine posts only its own status.',
          { details: { machineId: req.body.machineId } },
        );
      const messages = checkStatusBatch(req.body.messages);
      // One transaction stores the batch and updates the summaries' tables (docs/status.md).
      const r = await statusService(app.deps).ingest(m, messages);
      return { accepted: r.accepted, duplicates: r.duplicates };
    },
  );
}
