import { randomUUID } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import { ReimageError } from '../../errors.js';
import { stateOf, statusMessage } from '../../status/messages.js';
import type { App } from '../app.js';
import { machineOf } from '../auth.js';
import { newSecret, secretHash } from '../credentials.js';
import { siteByBoundary } from '../site.js';
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
const MAX_PROPERTIES_BYTES = 8192;

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

/** Property names whose values are never stored, whatever a client sends. */
const SECRET_KEY = /pass(word)?|secret|token|credential|product.?key|private.?key/i;

/** Properties nest at most this deep (status properties are small records, not documents). */
const MAX_PROPERTY_DEPTH = 8;

function redactProperties(props: Record<string, unknown>, depth = 0): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(props))
    out[k] = SECRET_KEY.test(k) ? '[redacted]' : redactValue(v, depth + 1);
  return out;
}

/** Lists too: `[{ password: … }]` hides a secret as well as `{ password: … }` does. */
function redactValue(v: unknown, depth: number): unknown {
  if (v === null || typeof v !== 'object') return v;
  if (depth > MAX_PROPERTY_DEPTH)
    throw new ReimageError(
      'VALIDATION_FAILED',
      `Status properties nest deeper than ${MAX_PROPERTY_DEPTH} levels.`,
      {
        details: {
          problems: [
            {
              path: 'body/messages/properties',
              message: `nested deeper than ${MAX_PROPERTY_DEPTH} levels`,
            },
          ],
        },
      },
    );
  if (Array.isArray(v)) return v.map((x) => redactValue(x, depth + 1));
  return redactProperties(v as Record<string, unknown>, depth);
}

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
      const seen = new Set<number>();
      const problems: { path: string; message: string }[] = [];
      const messages = req.body.messages.map((s, i) => {
        const def = statusMessage(s.id);
        if (!def)
          throw new ReimageError(
            'STATUS_MESSAGE_UNKNOWN',
            `Status message id ${s.id} (messages/${i}) is not in the catalog.`,
            { details: { id: s.id, index: i } },
          );
        if (def.component === 'server')
          problems.push({
            path: `body/messages/${i}/id`,
            message: `message ${s.id} is the server's own; a machine cannot post it`,
          });
        if (seen.has(s.seq))
          problems.push({
            path: `body/messages/${i}/seq`,
            message: `sequence number ${s.seq} appears twice in the batch`,
          });
        seen.add(s.seq);
        const properties = redactProperties(s.properties ?? {});
        const propertiesJson = JSON.stringify(properties);
        if (propertiesJson.length > MAX_PROPERTIES_BYTES)
          problems.push({
            path: `body/messages/${i}/properties`,
            message: `larger than ${MAX_PROPERTIES_BYTES} bytes`,
          });
        return {
          seq: s.seq,
          messageId: s.id,
          component: def.component,
          phase: def.phase,
          severity: def.severity,
          advertisementId: s.advertisementId ?? null,
          // One form (UTC) so that timelines sort as text in both databases.
          time: new Date(s.time).toISOString(),
          properties,
          propertiesJson,
          state: stateOf(def),
        };
      });
      if (problems.length > 0)
        throw new ReimageError(
          'VALIDATION_FAILED',
          `The status batch is not valid: ${problems.map((p) => `${p.path}: ${p.message}`).join('; ')}`,
          { details: { problems } },
        );
      // One transaction stores the batch and updates the summaries' tables (docs/status.md).
      const r = await statusService(app.deps).ingest(m, messages);
      return { accepted: r.accepted, duplicates: r.duplicates };
    },
  );
}
