import { Type } from '@sinclair/typebox';
import { roles } from '../../catalog/catalog.js';
import type { Catalog, Role } from '../../catalog/catalog.js';
import { ReimageError } from '../../errors.js';
import type { App } from '../app.js';
import { userOf } from '../auth.js';
import { hashPassword, newSecret, secretHash, verifyPassword } from '../credentials.js';
import { audit, listOf, RefParams, responses } from './common.js';

const RoleSchema = Type.Union(roles.map((r) => Type.Literal(r)));
const User = Type.Object({
  id: Type.String(),
  username: Type.String(),
  role: RoleSchema,
  disabled: Type.Boolean(),
  createdAt: Type.String(),
});
const Token = Type.Object({
  id: Type.String(),
  userId: Type.String(),
  name: Type.String(),
  createdAt: Type.String(),
  expiresAt: Type.Union([Type.String(), Type.Null()]),
  lastUsedAt: Type.Union([Type.String(), Type.Null()]),
});
const NewToken = Type.Object({
  token: Type.String({ description: 'shown once; store it now' }),
  tokenInfo: Token,
});
const Password = Type.String({
  minLength: 12,
  maxLength: 1024,
  description: 'at least 12 characters',
});
const Username = Type.String({
  pattern: '^[a-z_][a-z0-9_.-]{0,63}$',
  title: 'user name of 1-64 lowercase letters, digits, "_", "." or "-"',
});

const LOGIN_TOKEN_HOURS = 12;

/** Login, users (admin only) and API tokens. */
export function sessionRoutes(app: App): void {
  app.post(
    '/api/v1/auth/login',
    {
      config: { access: 'public' },
      schema: {
        tags: ['session'],
        summary: `Exchange a username and password for an API token valid ${LOGIN_TOKEN_HOURS} hours`,
        body: Type.Object(
          { username: Type.String({ maxLength: 64 }), password: Type.String({ maxLength: 1024 }) },
          { additionalProperties: false },
        ),
        response: responses(
          Type.Object({ token: Type.String(), expiresAt: Type.String(), user: User }),
          200,
          [429],
        ),
      },
    },
    async (req) => {
      const { catalog } = app.deps;
      const throttle = app.deps.loginThrottle!;
      const { username } = req.body;
      const wait = throttle.retryAfter(username, req.ip);
      if (wait > 0)
        throw new ReimageError(
          'LOGIN_THROTTLED',
          `Too many failed logins for this user or from this address; try again in ${wait} s.`,
          { details: { retryAfterSeconds: wait } },
        );
      const found = await catalog.findUserForLogin(username);
      // Check a password even for an unknown user, so timing does not tell which usernames exist.
      const ok = await verifyPassword(req.body.password, found?.passwordHash ?? DUMMY_HASH);
      if (!found || !ok || found.disabled) {
        throttle.failed(username, req.ip);
        throw new ReimageError(
          'UNAUTHENTICATED',
          'Wrong username or password, or the user is disabled.',
        );
      }
      throttle.succeeded(username, req.ip);
      const token = newSecret('rit');
      const expiresAt = new Date(
        (app.deps.clock ?? Date.now)() + LOGIN_TOKEN_HOURS * 3600_000,
      ).toISOString();
      await catalog.transaction(async (tx) => {
        await tx.deleteExpiredTokens();
        await tx.createToken({
          userId: found.id,
          name: 'login',
          tokenHash: secretHash(token),
          expiresAt,
        });
        await tx.audit({
          actor: found.username,
          action: 'login',
          kind: 'user',
          target: found.username,
          summary: '',
        });
      });
      const { passwordHash: _p, ...user } = found;
      return { token, expiresAt, user };
    },
  );

  app.post(
    '/api/v1/auth/logout',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['session'],
        summary: 'Revoke the token this request carries',
        response: responses(Type.Null(), 204),
      },
    },
    async (req, reply) => {
      const user = userOf(req);
      await app.deps.catalog.transaction(async (tx) => {
        if (req.principal?.kind === 'user') await tx.deleteToken(req.principal.tokenId);
        await tx.audit({
          actor: user.username,
          action: 'revoke',
          kind: 'token',
          target: 'own token',
          summary: 'logout',
        });
      });
      return reply.status(204).send();
    },
  );

  app.get(
    '/api/v1/whoami',
    { config: { access: 'read-only' }, schema: { tags: ['session'], response: responses(User) } },
    async (req) => userOf(req),
  );

  app.get(
    '/api/v1/users',
    { config: { access: 'admin' }, schema: { tags: ['users'], response: responses(listOf(User)) } },
    async () => ({
      items: await app.deps.catalog.listUsers(),
    }),
  );

  app.post(
    '/api/v1/users',
    {
      config: { access: 'admin' },
      schema: {
        tags: ['users'],
        body: Type.Object(
          { username: Username, password: Password, role: RoleSchema },
          { additionalProperties: false },
        ),
        response: responses(User, 201),
      },
    },
    async (req, reply) => {
      const passwordHash = await hashPassword(req.body.password);
      const user = await app.deps.catalog.transaction(async (tx) => {
        const u = await tx.createUser({
          username: req.body.username,
          passwordHash,
          role: req.body.role,
        });
        await audit(tx, req, 'create', 'user', u.username, `role ${u.role}`);
        return u;
      });
      return reply.status(201).send(user);
    },
  );

  app.patch(
    '/api/v1/users/:ref',
    {
      config: { access: 'admin' },
      schema: {
        tags: ['users'],
        params: RefParams,
        body: Type.Object(
          {
            role: Type.Optional(RoleSchema),
            disabled: Type.Optional(Type.Boolean()),
            password: Type.Optional(Password),
          },
          { additionalProperties: false, minProperties: 1 },
        ),
        response: responses(User),
      },
    },
    async (req) => {
      const passwordHash = req.body.password ? await hashPassword(req.body.password) : undefined;
      return app.deps.catalog.transaction(async (tx) => {
        const u = await tx.getUser(req.params.ref);
        await refuseLastAdmin(tx, u, req.body.role, req.body.disabled);
        await tx.updateUser(u.id, {
          role: req.body.role as Role | undefined,
          disabled: req.body.disabled,
          passwordHash,
        });
        // A new password or a disabled account ends the user's sessions and tokens.
        if (passwordHash || req.body.disabled) await tx.deleteUserTokens(u.id);
        const what = [
          req.body.role && `role ${req.body.role}`,
          req.body.disabled !== undefined && (req.body.disabled ? 'disabled' : 'enabled'),
          passwordHash && 'password changed',
        ];
        await audit(tx, req, 'update', 'user', u.username, what.filter(Boolean).join(', '));
        return tx.getUser(u.id);
      });
    },
  );

  app.delete(
    '/api/v1/users/:ref',
    {
      config: { access: 'admin' },
      schema: { tags: ['users'], params: RefParams, response: responses(Type.Null(), 204) },
    },
    async (req, reply) => {
      await app.deps.catalog.transaction(async (tx) => {
        const u = await tx.getUser(req.params.ref);
        await refuseLastAdmin(tx, u, 'read-only', true);
        await tx.deleteUser(u.id);
        await audit(tx, req, 'delete', 'user', u.username);
      });
      return reply.status(204).send();
    },
  );

  app.get(
    '/api/v1/tokens',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['tokens'],
        summary: 'Your API tokens (an admin sees everyone’s)',
        response: responses(listOf(Token)),
      },
    },
    async (req) => {
      const u = userOf(req);
      return { items: await app.deps.catalog.listTokens(u.role === 'admin' ? undefined : u.id) };
    },
  );

  app.post(
    '/api/v1/tokens',
    {
      config: { access: 'read-only' },
      schema: {
        tags: ['tokens'],
        summary: 'Create an API token for yourself (for scripts); the token is shown once',
        body: Type.Object(
          {
            name: Type.String({ minLength: 1, maxLength: 100 }),
            expiresInDays: Type.Optional(Type.Integer({ minimum: 1, maximum: 3650 })),
          },
          { additionalProperties: false },
        ),
        response: responses(NewToken, 201),
      },
    },
    async (req, reply) => {
      const u = userOf(req);
      const token = newSecret('rit');
      const days = req.body.expiresInDays;
      const expiresAt = days
        ? new Date((app.deps.clock ?? Date.now)() + days * 86400_000).toISOString()
        : null;
      const tokenInfo = await app.deps.catalog.transaction(async (tx) => {
        const t = await tx.createToken({
          userId: u.id,
          name: req.body.name,
          tokenHash: secretHash(token),
          expiresAt,
        });
        await audit(
          tx,
          req,
          'create',
          'token',
          req.body.name,
          expiresAt ? `expires ${expiresAt}` : 'no expiry',
        );
        return t;
      });
      return reply.status(201).send({ token, tokenInfo });
    },
  );

  app.delete(
    '/api/v1/tokens/:ref',
    {
      config: { access: 'read-only' },
      schema: { tags: ['tokens'], params: RefParams, response: responses(Type.Null(), 204) },
    },
    async (req, reply) => {
      const u = userOf(req);
      await app.deps.catalog.transaction(async (tx) => {
        const mine = (await tx.listTokens(u.role === 'admin' ? undefined : u.id)).find(
          (t) => t.id === req.params.ref,
        );
        if (!mine)
          throw new ReimageError('NOT_FOUND', `No token ${req.params.ref} of yours.`, {
            details: { kind: 'token', ref: req.params.ref },
          });
        await tx.deleteToken(mine.id);
        await audit(tx, req, 'revoke', 'token', mine.name);
      });
      return reply.status(204).send();
    },
  );
}

// A valid hash of a random password, so unknown usernames cost the same as wrong passwords.
const DUMMY_HASH =
  'scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=';

async function refuseLastAdmin(
  tx: Catalog,
  u: { id: string; role: Role },
  role: string | undefined,
  disabled: boolean | undefined,
) {
  const staysAdmin = (role ?? u.role) === 'admin' && !disabled;
  if (u.role !== 'admin' || staysAdmin) return;
  await tx.lockAdmins();
  const admins = (await tx.listUsers()).filter(
    (x) => x.role === 'admin' && !x.disabled && x.id !== u.id,
  );
  if (admins.length === 0)
    throw new ReimageError('IN_USE', 'This is the last enabled admin; make another admin first.', {
      details: { kind: 'user', referrers: [] },
    });
}
