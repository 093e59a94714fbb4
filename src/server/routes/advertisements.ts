import { Type } from '@sinclair/typebox';
import type { Static } from '@sinclair/typebox';
import type { Catalog } from '../../catalog/catalog.js';
import { isReimageError, ReimageError } from '../../errors.js';
import { checkTightenOnly, effectivePolicy } from '../../package/effective.js';
import { AdvertisementPolicy, duration } from '../../package/schema.js';
import type { DeploymentSettings } from '../../package/schema.js';
import type { App } from '../app.js';
import { audit, ClockTime, listOf, Name, RefParams, responses } from './common.js';

const Day = Type.Union(
  ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'].map((d) => Type.Literal(d)),
);
const Percent = Type.Integer({ minimum: 1, maximum: 100 });

export const Schedule = Type.Object(
  {
    maintenanceWindows: Type.Optional(
      Type.Array(
        Type.Object(
          {
            days: Type.Optional(Type.Array(Day, { uniqueItems: true })),
            from: ClockTime,
            to: ClockTime,
          },
          { additionalProperties: false },
        ),
        {
          maxItems: 50,
          description:
            'the deployment starts only inside these windows (machine local time); none = any time',
        },
      ),
    ),
    rerun: Type.Optional(
      Type.Union([Type.Literal('never'), Type.Literal('if-failed'), Type.Literal('always')], {
        description: 'run again on a machine where it already ran (default if-failed)',
      }),
    ),
    retryAfter: Type.Optional(
      duration({
        description:
          'the wait before a failed deployment runs again on a machine, doubled for each failure before it (default 15m; at most 3 runs in all)',
      }),
    ),
    waves: Type.Optional(
      Type.Array(
        Type.Union([
          Type.Object(
            { machines: Type.Integer({ minimum: 1, maximum: 1_000_000 }) },
            { additionalProperties: false },
          ),
          Type.Object({ percent: Percent }, { additionalProperties: false }),
        ]),
        {
          maxItems: 20,
          description: 'rollout waves in order; the last wave also takes every remaining machine',
        },
      ),
    ),
    successThreshold: Type.Optional(
      Type.Integer({
        minimum: 0,
        maximum: 100,
        description: '% of a wave that must succeed before the next starts (default 90)',
      }),
    ),
    failureThreshold: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 100,
        description: '% of failures in a wave that halts the rollout (default 10)',
      }),
    ),
    activeWave: Type.Optional(
      Type.Integer({
        minimum: 1,
        maximum: 20,
        description: 'waves up to this one are released (default 1)',
      }),
    ),
  },
  { additionalProperties: false },
);
export type Schedule = Static<typeof Schedule>;

const AdOut = Type.Object({
  id: Type.String(),
  name: Type.String(),
  packageId: Type.String(),
  collectionId: Type.String(),
  availableFrom: Type.Union([Type.String(), Type.Null()]),
  deadline: Type.Union([Type.String(), Type.Null()]),
  policy: AdvertisementPolicy,
  schedule: Schedule,
  enabled: Type.Boolean(),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});

const DateTime = Type.String({ format: 'date-time' });

async function refs(tx: Catalog, pkg: string | undefined, col: string | undefined) {
  const find = async <T>(kind: string, ref: string | undefined, get: (r: string) => Promise<T>) => {
    if (ref === undefined) return undefined;
    try {
      return await get(ref);
    } catch (e) {
      if (isReimageError(e, 'NOT_FOUND'))
        throw new ReimageError('REFERENCE_UNKNOWN', `No ${kind} '${ref}' in the catalog.`, {
          details: { kind, ref },
        });
      throw e;
    }
  };
  return {
    pkg: await find('package', pkg, (r) => tx.getPackage(r)),
    col: await find('collection', col, (r) => tx.getCollection(r)),
  };
}

function checkSchedule(
  s: Schedule | undefined,
  availableFrom: string | null | undefined,
  policy: AdvertisementPolicy,
): void {
  const problems: { path: string; message: string }[] = [];
  const pct = (s?.waves ?? []).reduce((n, w) => n + ('percent' in w ? w.percent : 0), 0);
  if (pct > 100)
    problems.push({
      path: 'body/schedule/waves',
      message: `wave percentages add up to ${pct}%, more than 100%`,
    });
  if (s?.activeWave !== undefined && s.activeWave > Math.max(1, s.waves?.length ?? 0))
    problems.push({
      path: 'body/schedule/activeWave',
      message: `there are only ${s.waves?.length ?? 0} waves`,
    });
  for (const [i, w] of (s?.maintenanceWindows ?? []).entries())
    if (w.from === w.to)
      problems.push({
        path: `body/schedule/maintenanceWindows/${i}`,
        message: 'the window is empty (from = to)',
      });
  if (availableFrom && policy.deadline && Date.parse(policy.deadline) <= Date.parse(availableFrom))
    problems.push({
      path: 'body/policy/deadline',
      message: 'the deadline must come after availableFrom',
    });
  if (problems.length > 0)
    throw new ReimageError(
      'VALIDATION_FAILED',
      `The advertisement is not valid: ${problems.map((p) => `${p.path}: ${p.message}`).join('; ')}`,
      { details: { problems } },
    );
}

export function advertisementRoutes(app: App): void {
  app.get(
    '/api/v1/advertisements',
    {
      config: { access: 'read-only' },
      schema: { tags: ['advertisements'], response: responses(listOf(AdOut)) },
    },
    async () => ({
      items: await app.deps.catalog.listAdvertisements(),
    }),
  );
  app.get(
    '/api/v1/advertisements/:ref',
    {
      config: { access: 'read-only' },
      schema: { tags: ['advertisements'], params: RefParams, response: responses(AdOut) },
    },
    async (req) => app.deps.catalog.getAdvertisement(req.params.ref),
  );
  app.get(
    '/api/v1/advertisements/:ref/effective-policy',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['advertisements'],
        summary: 'Each policy value with where it came from (package, advertisement or default)',
        params: RefParams,
        response: responses(Type.Record(Type.String(), Type.Unknown())),
      },
    },
    async (req) => {
      const ad = await app.deps.catalog.getAdvertisement(req.params.ref);
      const pkg = await app.deps.catalog.getPackage(ad.packageId);
      return effectivePolicy(
        pkg.settings as DeploymentSettings,
        ad.policy as AdvertisementPolicy,
      ) as unknown as Record<string, unknown>;
    },
  );
  app.post(
    '/api/v1/advertisements',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['advertisements'],
        body: Type.Object(
          {
            name: Name,
            package: Type.String({
              minLength: 1,
              maxLength: 300,
              description: 'id, name@version or name',
            }),
            collection: Type.String({ minLength: 1, maxLength: 300 }),
            availableFrom: Type.Optional(DateTime),
            policy: Type.Optional(AdvertisementPolicy),
            schedule: Type.Optional(Schedule),
            enabled: Type.Optional(Type.Boolean({ default: true })),
          },
          { additionalProperties: false },
        ),
        response: responses(AdOut, 201),
      },
    },
    async (req, reply) => {
      const b = req.body;
      const policy = b.policy ?? {};
      checkSchedule(b.schedule, b.availableFrom, policy);
      const ad = await app.deps.catalog.transaction(async (tx) => {
        const { pkg, col } = await refs(tx, b.package, b.collection);
        await tx.lockPackage(pkg!.id);
        checkTightenOnly((await tx.getPackage(pkg!.id)).settings as DeploymentSettings, policy);
        const created = await tx.createAdvertisement({
          name: b.name,
          packageId: pkg!.id,
          collectionId: col!.id,
          availableFrom: b.availableFrom ?? null,
          deadline: policy.deadline ?? null,
          policy,
          schedule: b.schedule ?? {},
          enabled: b.enabled ?? true,
        });
        await audit(
          tx,
          req,
          'create',
          'advertisement',
          created.name,
          `${pkg!.name}@${pkg!.version} → ${col!.name}`,
        );
        return created;
      });
      return reply.status(201).send(ad);
    },
  );
  app.patch(
    '/api/v1/advertisements/:ref',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['advertisements'],
        params: RefParams,
        body: Type.Object(
          {
            package: Type.Optional(Type.String({ minLength: 1, maxLength: 300 })),
            collection: Type.Optional(Type.String({ minLength: 1, maxLength: 300 })),
            availableFrom: Type.Optional(Type.Union([DateTime, Type.Null()])),
            policy: Type.Optional(AdvertisementPolicy),
            schedule: Type.Optional(Schedule),
            enabled: Type.Optional(Type.Boolean()),
          },
          { additionalProperties: false, minProperties: 1 },
        ),
        response: responses(AdOut),
      },
    },
    async (req) =>
      app.deps.catalog.transaction(async (tx) => {
        const b = req.body;
        const ad = await tx.getAdvertisement(req.params.ref);
        const { pkg, col } = await refs(tx, b.package, b.collection);
        const policy = (b.policy ?? ad.policy) as AdvertisementPolicy;
        const schedule = (b.schedule ?? ad.schedule) as Schedule;
        checkSchedule(
          schedule,
          b.availableFrom === undefined ? ad.availableFrom : b.availableFrom,
          policy,
        );
        // Locked, then read: a concurrent package update cannot slip in between check and write.
        const packageId = pkg?.id ?? ad.packageId;
        await tx.lockPackage(packageId);
        checkTightenOnly((await tx.getPackage(packageId)).settings as DeploymentSettings, policy);
        const updated = await tx.updateAdvertisement(ad.id, {
          packageId: pkg?.id,
          collectionId: col?.id,
          availableFrom: b.availableFrom,
          deadline: b.policy ? (policy.deadline ?? null) : undefined,
          policy: b.policy,
          schedule: b.schedule,
          enabled: b.enabled,
        });
        await audit(tx, req, 'update', 'advertisement', ad.name, Object.keys(b).join(', '));
        return updated;
      }),
  );
  app.delete(
    '/api/v1/advertisements/:ref',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['advertisements'],
        params: RefParams,
        response: responses(Type.Null(), 204),
      },
    },
    async (req, reply) => {
      await app.deps.catalog.transaction(async (tx) => {
        const ad = await tx.getAdvertisement(req.params.ref);
        await tx.deleteAdvertisement(ad.id);
        await audit(tx, req, 'delete', 'advertisement', ad.name);
      });
      return reply.status(204).send();
    },
  );
}
