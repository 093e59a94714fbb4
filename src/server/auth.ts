import type { FastifyRequest } from 'fastify';
import type { Machine, Role, User } from '../catalog/catalog.js';
import { ReimageError } from '../errors.js';
import type { ServerDeps } from './app.js';
import { secretHash } from './credentials.js';

/** Who may call a route. Admin roles are ordered: read-only < operator < admin. */
export type Access = 'public' | 'machine' | Role;

export type Principal =
  { kind: 'user'; user: User; tokenId: string } | { kind: 'machine'; machine: Machine };

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal;
  }
}

const rank: Record<Role, number> = { 'read-only': 0, operator: 1, admin: 2 };

/**
 * Checks the bearer credential against what the route asks for (its `config.access`;
 * routes without one are admin-only, so forgetting it fails closed).
 */
export async function authenticate(req: FastifyRequest, deps: ServerDeps): Promise<void> {
  const access = req.routeOptions.config?.access ?? (req.routeOptions.url ? 'admin' : 'public');
  if (access === 'public') return;
  const header = req.headers.authorization;
  const secret = header?.startsWith('Bearer ') ? header.slice(7).trim() : undefined;
  if (!secret)
    throw new ReimageError(
      'UNAUTHENTICATED',
      'This endpoint needs credentials: Authorization: Bearer <token>.',
    );
  if (access === 'machine') {
    const machine = secret.startsWith('rim_')
      ? await deps.catalog.machineByCredentialHash(secretHash(secret))
      : undefined;
    if (!machine) throw new ReimageError('UNAUTHENTICATED', 'The machine credential is not valid.');
    req.principal = { kind: 'machine', machine };
    return;
  }
  const found = secret.startsWith('rit_')
    ? await deps.catalog.userByTokenHash(secretHash(secret))
    : undefined;
  if (!found)
    throw new ReimageError(
      'UNAUTHENTICATED',
      'The API token is not valid, has expired, or its user is disabled.',
    );
  if (rank[found.user.role] < rank[access])
    throw new ReimageError(
      'FORBIDDEN',
      `This needs the ${access} role; ${found.user.username} is ${found.user.role}.`,
      {
        details: { needed: access, role: found.user.role },
      },
    );
  req.principal = { kind: 'user', user: found.user, tokenId: found.tokenId };
  // "Last used" is kept to the minute: one write per token per minute, not one per request.
  const now = (deps.clock ?? Date.now)();
  if (found.lastUsedAt === null || Date.parse(found.lastUsedAt) < now - 60_000)
    void deps.catalog.touchToken(found.tokenId).catch(() => {});
}

/** The signed-in admin user of a request whose route needs one. */
export function userOf(req: FastifyRequest): User {
  if (req.principal?.kind !== 'user')
    throw new ReimageError('UNAUTHENTICATED', 'An admin user is required.');
  return req.principal.user;
}

/** The authenticated machine of a client request. */
export function machineOf(req: FastifyRequest): Machine {
  if (req.principal?.kind !== 'machine')
    throw new ReimageError('UNAUTHENTICATED', 'A machine credential is required.');
  return req.principal.machine;
}
