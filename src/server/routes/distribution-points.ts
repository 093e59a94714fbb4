import { Type } from '@sinclair/typebox';
import { ReimageError } from '../../errors.js';
import type { App } from '../app.js';
import { parseCidr } from '../site.js';
import { audit, ClockTime, listOf, Name, RefParams, responses, Site } from './common.js';

const Bandwidth = Type.Object(
  {
    rateLimitKbps: Type.Optional(
      Type.Integer({
        minimum: 8,
        maximum: 100_000_000,
        description: 'replication rate limit in kbit/s',
      }),
    ),
    windows: Type.Optional(
      Type.Array(
        Type.Object(
          {
            days: Type.Optional(
              Type.Array(
                Type.Union(
                  ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'].map((d) => Type.Literal(d)),
                ),
                { uniqueItems: true },
              ),
            ),
            from: ClockTime,
            to: ClockTime,
          },
          { additionalProperties: false },
        ),
        {
          maxItems: 50,
          description: 'replication is allowed only inside these windows (none = always)',
        },
      ),
    ),
  },
  { additionalProperties: false },
);
const Address = Type.String({
  minLength: 1,
  maxLength: 2000,
  pattern: '^(/|file://|https?://|smb://)',
  title: 'folder (/path or file://…), share (smb://…) or http(s):// URL',
  description:
    'a folder (/path or file://), a share (smb://host/share/path), or an http(s) URL of a static server',
});
const Boundaries = Type.Array(Type.String({ maxLength: 64 }), {
  maxItems: 1000,
  description: 'subnets the DP serves (CIDR)',
});

const Dp = Type.Object({
  id: Type.String(),
  name: Type.String(),
  address: Type.String(),
  site: Type.String(),
  boundaries: Type.Array(Type.String()),
  bandwidth: Bandwidth,
  hasCredentials: Type.Boolean({
    description: 'credentials for writing to the DP are stored (they are never returned)',
  }),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});

const Credentials = Type.Object(
  {
    username: Type.String({ minLength: 1, maxLength: 256 }),
    password: Type.String({ maxLength: 1024 }),
    domain: Type.Optional(Type.String({ maxLength: 256, description: 'SMB workgroup or domain' })),
  },
  {
    additionalProperties: false,
    description:
      'how the server writes to the DP when it replicates (WebDAV basic auth, SMB user); sealed at rest, never returned',
  },
);

/** Credentials the server uses to write to a DP (WebDAV, SMB). */
export interface DpCredentials {
  username: string;
  password: string;
  domain?: string;
}

/** The sealing context of a DP's credentials: they open only for the DP of that name. */
export const dpCredentialsContext = (dpName: string) => `dp-credentials:${dpName}`;

function checkBoundaries(b: string[] | undefined): void {
  const bad = (b ?? []).filter((c) => parseCidr(c) === undefined);
  if (bad.length > 0)
    throw new ReimageError(
      'VALIDATION_FAILED',
      `Not a subnet in CIDR form: ${bad.join(', ')} (e.g. 10.1.0.0/16 or fd00::/64).`,
      {
        details: {
          problems: bad.map((c) => ({ path: 'body/boundaries', message: `'${c}' is not CIDR` })),
        },
      },
    );
}

function checkAddress(a: string | undefined): void {
  if (a === undefined || a.startsWith('/')) return;
  try {
    const u = new URL(a);
    if (u.password)
      throw new ReimageError(
        'VALIDATION_FAILED',
        'A DP address must not carry a password; give share credentials in the DP’s access settings.',
        { details: { problems: [{ path: 'body/address', message: 'contains a password' }] } },
      );
  } catch (e) {
    if (e instanceof ReimageError) throw e;
    throw new ReimageError('VALIDATION_FAILED', `The address '${a}' is not a valid URL.`, {
      details: { problems: [{ path: 'body/address', message: 'not a URL' }] },
    });
  }
}

export function dpRoutes(app: App): void {
  app.get(
    '/api/v1/distribution-points',
    {
      config: { access: 'read-only' },
      schema: { tags: ['distribution points'], response: responses(listOf(Dp)) },
    },
    async () => ({
      items: await app.deps.catalog.listDps(),
    }),
  );
  app.get(
    '/api/v1/distribution-points/:ref',
    {
      config: { access: 'read-only' },
      schema: { tags: ['distribution points'], params: RefParams, response: responses(Dp) },
    },
    async (req) => app.deps.catalog.getDp(req.params.ref),
  );
  app.post(
    '/api/v1/distribution-points',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['distribution points'],
        body: Type.Object(
          {
            name: Name,
            address: Address,
            site: Site,
            boundaries: Type.Optional(Boundaries),
            bandwidth: Type.Optional(Bandwidth),
            credentials: Type.Optional(Credentials),
          },
          { additionalProperties: false },
        ),
        response: responses(Dp, 201),
      },
    },
    async (req, reply) => {
      checkBoundaries(req.body.boundaries);
      checkAddress(req.body.address);
      const dp = await app.deps.catalog.transaction(async (tx) => {
        const { credentials, ...rest } = req.body;
        const d = await tx.createDp({
          ...rest,
          boundaries: req.body.boundaries ?? [],
          bandwidth: req.body.bandwidth ?? {},
          credentials: credentials
            ? app.deps.secrets.seal(credentials, dpCredentialsContext(req.body.name))
            : null,
        });
        await audit(tx, req, 'create', 'distribution point', d.name, `${d.address} site ${d.site}`);
        return d;
      });
      return reply.status(201).send(dp);
    },
  );
  app.patch(
    '/api/v1/distribution-points/:ref',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['distribution points'],
        params: RefParams,
        body: Type.Object(
          {
            address: Type.Optional(Address),
            site: Type.Optional(Site),
            boundaries: Type.Optional(Boundaries),
            bandwidth: Type.Optional(Bandwidth),
            credentials: Type.Optional(Type.Union([Credentials, Type.Null()])),
          },
          { additionalProperties: false, minProperties: 1 },
        ),
        response: responses(Dp),
      },
    },
    async (req) => {
      checkBoundaries(req.body.boundaries);
      checkAddress(req.body.address);
      return app.deps.catalog.transaction(async (tx) => {
        const d = await tx.getDp(req.params.ref);
        const { credentials, ...rest } = req.body;
        const updated = await tx.updateDp(d.id, {
          ...rest,
          ...(credentials !== undefined
            ? {
                credentials: credentials
                  ? app.deps.secrets.seal(credentials, dpCredentialsContext(d.name))
                  : null,
              }
            : {}),
        });
        await audit(
          tx,
          req,
          'update',
          'distribution point',
          d.name,
          Object.keys(req.body).join(', '),
        );
        return updated;
      });
    },
  );
  app.delete(
    '/api/v1/distribution-points/:ref',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['distribution points'],
        params: RefParams,
        response: responses(Type.Null(), 204),
      },
    },
    async (req, reply) => {
      await app.deps.catalog.transaction(async (tx) => {
        const d = await tx.getDp(req.params.ref);
        await tx.deleteDp(d.id);
        await audit(tx, req, 'delete', 'distribution point', d.name);
      });
      return reply.status(204).send();
    },
  );
}
