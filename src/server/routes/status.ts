import { Type } from '@sinclair/typebox';
import {
  documentedProperties,
  groupOf,
  renderStatusText,
  stateOf,
  statusMessage,
  statusMessages,
} from '../../status/messages.js';
import type { App } from '../app.js';
import { listOf, QueryInt, RefParams, responses } from './common.js';
import { statusSummaryRoutes } from './status-summary.js';

const StatusOut = Type.Object({
  machineId: Type.String(),
  seq: Type.Integer(),
  messageId: Type.Integer(),
  component: Type.String(),
  phase: Type.String(),
  severity: Type.String(),
  advertisementId: Type.Union([Type.String(), Type.Null()]),
  time: Type.String(),
  receivedAt: Type.String(),
  text: Type.String(),
  properties: Type.Record(Type.String(), Type.Unknown()),
});

const Audit = Type.Object({
  id: Type.String(),
  at: Type.String(),
  actor: Type.String(),
  action: Type.String(),
  kind: Type.String(),
  target: Type.String(),
  summary: Type.String(),
});

export function statusRoutes(app: App): void {
  app.get(
    '/api/v1/status',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['status'],
        summary:
          'Status messages, by machine (its timeline, in sequence order) or by advertisement (as received)',
        querystring: Type.Object(
          {
            machine: Type.Optional(Type.String({ maxLength: 300 })),
            advertisement: Type.Optional(Type.String({ maxLength: 300 })),
            afterSeq: Type.Optional(QueryInt(9)),
            limit: Type.Optional(QueryInt(5)),
          },
          { additionalProperties: false },
        ),
        response: responses(listOf(StatusOut)),
      },
    },
    async (req) => {
      const { catalog } = app.deps;
      const q = req.query;
      const machineId = q.machine ? (await catalog.getMachine(q.machine)).id : undefined;
      const advertisementId = q.advertisement
        ? (await catalog.getAdvertisement(q.advertisement)).id
        : undefined;
      const rows = await catalog.listStatus({
        machineId,
        advertisementId,
        afterSeq: q.afterSeq ? Number(q.afterSeq) : undefined,
        limit: q.limit ? Number(q.limit) : undefined,
      });
      return {
        items: rows.map((r) => ({
          ...r,
          text: renderStatusText(
            statusMessage(r.messageId) ?? {
              component: 'client',
              phase: 'none',
              severity: 'info',
              text: `message ${r.messageId}`,
            },
            r.properties,
          ),
        })),
      };
    },
  );

  app.get(
    '/api/v1/machines/:ref/timeline',
    {
      config: { access: 'read-only' },
      schema: { tags: ['status'], params: RefParams, response: responses(listOf(StatusOut)) },
    },
    async (req) => {
      const m = await app.deps.catalog.getMachine(req.params.ref);
      const rows = await app.deps.catalog.listStatus({ machineId: m.id, limit: 10000 });
      return {
        items: rows.map((r) => ({
          ...r,
          text: renderStatusText(statusMessage(r.messageId)!, r.properties),
        })),
      };
    },
  );

  app.get(
    '/api/v1/status-messages',
    {
      config: { access: 'public' },
      schema: {
        tags: ['status'],
        summary: 'The status message catalog',
        response: responses(
          listOf(
            Type.Object({
              id: Type.Integer(),
              component: Type.String(),
              phase: Type.String(),
              severity: Type.String(),
              text: Type.String(),
              group: Type.String(),
              state: Type.Union([Type.String(), Type.Null()]),
              properties: Type.Record(Type.String(), Type.String()),
            }),
          ),
        ),
      },
    },
    async () => ({
      items: Object.entries(statusMessages).map(([id, d]) => ({
        id: Number(id),
        component: d.component,
        phase: d.phase,
        severity: d.severity,
        text: d.text,
        group: groupOf(Number(id)),
        state: stateOf(d) ?? null,
        properties: documentedProperties(Number(id)),
      })),
    }),
  );

  statusSummaryRoutes(app);

  app.get(
    '/api/v1/audit',
    {
      config: { access: 'admin' },
      schema: {
        tags: ['audit'],
        querystring: Type.Object(
          { limit: Type.Optional(QueryInt(4)) },
          { additionalProperties: false },
        ),
        response: responses(listOf(Audit)),
      },
    },
    async (req) => ({
      items: await app.deps.catalog.listAudit(
        req.query.limit ? Number(req.query.limit) : undefined,
      ),
    }),
  );
}
