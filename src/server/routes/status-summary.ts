import { Type } from '@sinclair/typebox';
import type { TSchema } from '@sinclair/typebox';
import { ReimageError } from '../../errors.js';
import { BUCKET_MS } from '../../catalog/status-store.js';
import { deploymentStates } from '../../status/messages.js';
import type { App } from '../app.js';
import { userOf } from '../auth.js';
import { statusService, type StatusEvent } from '../status-service.js';
import { QueryInt, RefParams, responses } from './common.js';

const Counts = Type.Object(
  Object.fromEntries(deploymentStates.map((s) => [s, Type.Integer()])) as Record<string, TSchema>,
);
const OverTime = Type.Array(
  Type.Object({
    time: Type.String({ description: 'start of the bucket' }),
    ...(Object.fromEntries(deploymentStates.map((s) => [s, Type.Integer()])) as Record<
      string,
      TSchema
    >),
  }),
  { description: 'deployments in each state at the end of each bucket that saw a change' },
);
const Nullable = (t: TSchema) => Type.Union([t, Type.Null()]);

const Wave = Type.Object({
  wave: Type.Integer(),
  state: Type.Union([Type.Literal('released'), Type.Literal('waiting'), Type.Literal('halted')]),
  succeeded: Type.Integer(),
  failed: Type.Integer(),
  total: Type.Integer(),
  reason: Type.Optional(Type.String()),
});

const AdSummary = Type.Object({
  advertisement: Type.Object({ id: Type.String(), name: Type.String() }),
  counts: Counts,
  postponedUntil: Type.Array(
    Type.Object({
      machine: Type.String(),
      machineId: Type.String(),
      until: Nullable(Type.String()),
    }),
  ),
  overTime: OverTime,
  waves: Type.Array(Wave),
  halted: Type.Boolean(),
  haltReason: Type.Optional(Type.String()),
});

const Message = Type.Object({
  seq: Type.Integer(),
  id: Type.Integer(),
  time: Type.String(),
  component: Type.String(),
  phase: Type.String(),
  severity: Type.String(),
  advertisementId: Nullable(Type.String()),
  text: Type.String(),
  properties: Type.Record(Type.String(), Type.Unknown()),
});

const Timeline = Type.Object({
  machine: Type.Object({
    id: Type.String(),
    name: Type.String(),
    site: Nullable(Type.String()),
    model: Nullable(Type.String()),
    clientVersion: Type.Optional(Type.String()),
  }),
  messages: Type.Array(Message),
  steps: Type.Array(
    Type.Object({
      component: Type.String(),
      phase: Type.String(),
      advertisementId: Nullable(Type.String()),
      firstSeq: Type.Integer(),
      lastSeq: Type.Integer(),
      start: Type.String(),
      end: Type.String({ description: 'when the next step started (or the last message)' }),
      durationMs: Type.Integer(),
      messages: Type.Integer(),
    }),
  ),
  state: Type.Object({
    lastSeq: Nullable(Type.Integer()),
    lastMessageId: Nullable(Type.Integer()),
    lastTime: Nullable(Type.String()),
    lastSeverity: Nullable(Type.String()),
    messages: Type.Integer(),
    deployments: Type.Array(
      Type.Object({
        advertisement: Type.Object({ id: Type.String(), name: Nullable(Type.String()) }),
        state: Type.String(),
        since: Type.String(),
        dp: Nullable(Type.String()),
        postponedUntil: Nullable(Type.String()),
        failure: Nullable(
          Type.Object({
            messageId: Type.Integer(),
            code: Nullable(Type.String()),
            step: Nullable(Type.String()),
            seq: Type.Integer(),
          }),
        ),
      }),
    ),
  }),
});

const TrendGroup = Type.Object({
  messageId: Type.Integer(),
  code: Type.Optional(Type.String()),
  text: Type.String({ description: 'the message’s text template' }),
  attribute: Type.String({
    description: 'site, dp, model, image, clientVersion or diskBand',
  }),
  value: Type.String(),
  failures: Type.Integer({ description: 'failed deployments of this cause with this value' }),
  machines: Type.Integer({ description: 'distinct machines among them' }),
  population: Type.Integer({ description: 'attempted deployments with this value' }),
  share: Type.Number({ description: 'failures / all failures' }),
  rate: Type.Number({ description: 'failures / population' }),
  baseline: Type.Number({
    description: 'this cause’s failure rate over all attempted deployments',
  }),
  lift: Type.Number({ description: 'rate / baseline' }),
  score: Type.Number({ description: 'log-likelihood ratio (G) of the group; docs/status.md' }),
  example: Type.Optional(
    Type.Object({ machine: Type.String(), machineId: Type.String(), seq: Type.Integer() }),
  ),
});

const Trends = Type.Object({
  attempted: Type.Integer(),
  failed: Type.Integer(),
  groups: Type.Array(TrendGroup),
});

const Bucket = Type.String({
  pattern: '^[0-9]{1,4}[mhd]$',
  title: 'bucket width such as 5m, 15m, 1h, 6h or 1d (a multiple of 5 minutes)',
});

function bucketMs(text: string | undefined): number {
  if (!text) return 60 * 60 * 1000;
  const n = Number(text.slice(0, -1));
  const ms = n * { m: 60_000, h: 3_600_000, d: 86_400_000 }[text.slice(-1) as 'm' | 'h' | 'd'];
  if (ms < BUCKET_MS || ms % BUCKET_MS !== 0 || ms > 31 * 86_400_000)
    throw new ReimageError(
      'VALIDATION_FAILED',
      `The bucket ${text} is not a multiple of 5 minutes between 5m and 31d.`,
      { details: { problems: [{ path: 'querystring/bucket', message: 'not a multiple of 5m' }] } },
    );
  return ms;
}

const StatusEventSchema = Type.Object({
  type: Type.String({ description: 'status, summary or rollout' }),
});

/** Summaries, trends, live events and rollout control (docs/status.md). */
export function statusSummaryRoutes(app: App): void {
  const service = () => statusService(app.deps);

  app.get(
    '/api/v1/status/advertisements/:ref/summary',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['status'],
        summary: 'An advertisement’s deployments by state, over time, postponements and waves',
        params: RefParams,
        querystring: Type.Object(
          { bucket: Type.Optional(Bucket) },
          { additionalProperties: false },
        ),
        response: responses(AdSummary),
      },
    },
    async (req) => {
      const ms = bucketMs(req.query.bucket);
      const ad = await app.deps.catalog.getAdvertisement(req.params.ref);
      return service().advertisementSummary(ad, ms);
    },
  );

  app.get(
    '/api/v1/status/machines/:ref/timeline',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['status'],
        summary:
          'A machine’s whole timeline (old client → PE → new client) with steps and their durations',
        params: RefParams,
        response: responses(Timeline),
      },
    },
    async (req) => service().timeline(await app.deps.catalog.getMachine(req.params.ref)),
  );

  app.get(
    '/api/v1/status/trends',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['status'],
        summary:
          'Failures grouped by message × attribute, ranked by how strongly each group stands out',
        querystring: Type.Object(
          {
            advertisement: Type.Optional(Type.String({ minLength: 1, maxLength: 300 })),
            since: Type.Optional(Type.String({ format: 'date-time' })),
            limit: Type.Optional(QueryInt(3)),
          },
          { additionalProperties: false },
        ),
        response: responses(Trends),
      },
    },
    async (req) => {
      const q = req.query;
      const advertisementId = q.advertisement
        ? (await app.deps.catalog.getAdvertisement(q.advertisement)).id
        : undefined;
      return service().trends(
        {
          advertisementId,
          since: q.since ? new Date(q.since).toISOString() : undefined,
        },
        Math.max(1, Math.min(Number(q.limit ?? 20), 200)),
      );
    },
  );

  app.get(
    '/api/v1/status/fleet',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['status'],
        summary: 'The dashboard: deployments now, over time, and the top trends',
        querystring: Type.Object(
          { bucket: Type.Optional(Bucket) },
          { additionalProperties: false },
        ),
        response: responses(
          Type.Object({
            now: Counts,
            overTime: OverTime,
            topTrends: Type.Array(TrendGroup),
            advertisements: Type.Integer({ description: 'enabled advertisements' }),
          }),
        ),
      },
    },
    async (req) => service().fleet(bucketMs(req.query.bucket)),
  );

  // Open event streams end before the server closes: `close()` waits for in-flight requests,
  // and a stream (an open console tab) would otherwise hold it until Node's request timeout.
  const streams = new Set<(closing?: boolean) => void>();
  app.addHook('preClose', async () => {
    for (const end of [...streams]) end(true);
  });

  app.get(
    '/api/v1/status/events',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['status'],
        summary:
          'Live updates as Server-Sent Events (text/event-stream): `status` for each new message, `summary` when an advertisement’s counts change, `rollout` when a wave is released or halted. Authenticate with the Authorization header (read the stream with fetch).',
        querystring: Type.Object(
          { advertisement: Type.Optional(Type.String({ minLength: 1, maxLength: 300 })) },
          { additionalProperties: false },
        ),
        response: { 200: StatusEventSchema },
      },
    },
    async (req, reply) => {
      const only = req.query.advertisement
        ? (await app.deps.catalog.getAdvertisement(req.query.advertisement)).id
        : undefined;
      const s = service();
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        connection: 'keep-alive',
        'x-accel-buffering': 'no',
      });
      res.write(': reimage status events\n\n');
      const listener = (e: StatusEvent) => {
        if (only && e.advertisement !== only) return;
        res.write(`event: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`);
      };
      // A comment now and then keeps proxies from closing an idle stream.
      const keepAlive = setInterval(() => res.write(': keep-alive\n\n'), 15_000);
      keepAlive.unref();
      const end = (closing = false) => {
        clearInterval(keepAlive);
        s.events.off('event', listener);
        streams.delete(end);
        if (res.writableEnded) return;
        // Closing: the stream ends, then its connection too (it would stay open, idle, for the
        // keep-alive timeout).
        if (closing) res.end(() => res.socket?.end());
        else res.end();
      };
      streams.add(end);
      s.events.on('event', listener);
      req.raw.on('close', () => end());
      res.on('close', () => end());
    },
  );

  app.post(
    '/api/v1/advertisements/:ref/resume',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['advertisements'],
        summary:
          'Resume a rollout its failure threshold halted: the failures so far are accepted; optionally release the next wave now',
        params: RefParams,
        body: Type.Optional(
          Type.Object(
            { releaseNextWave: Type.Optional(Type.Boolean()) },
            { additionalProperties: false },
          ),
        ),
        response: responses(
          Type.Object({
            advertisement: Type.Object({ id: Type.String(), name: Type.String() }),
            activeWave: Type.Integer(),
            wasHalted: Type.Boolean(),
          }),
        ),
      },
    },
    async (req) => {
      const ad = await app.deps.catalog.getAdvertisement(req.params.ref);
      const r = await service().resume(
        ad,
        userOf(req).username,
        req.body?.releaseNextWave ?? false,
      );
      return { advertisement: { id: ad.id, name: ad.name }, ...r };
    },
  );
}
