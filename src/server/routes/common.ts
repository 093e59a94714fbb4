import { Type } from '@sinclair/typebox';
import type { Static, TSchema } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import type { Catalog } from '../../catalog/catalog.js';
import { userOf } from '../auth.js';

/** `:ref` in a URL: an id or a name. */
export const RefParams = Type.Object({ ref: Type.String({ minLength: 1, maxLength: 300 }) });

export const ErrorBody = Type.Object({
  error: Type.Object({
    code: Type.String(),
    message: Type.String(),
    details: Type.Optional(Type.Record(Type.String(), Type.Unknown())),
    requestId: Type.Optional(Type.String()),
  }),
});

/** Standard responses: the success schema plus the error body for every failure status. */
export function responses(
  ok: TSchema,
  status = 200,
  extra: number[] = [],
): Record<number, TSchema> {
  // One shared schema (registered in app.ts), so the OpenAPI document lists it once.
  const error = Type.Unsafe<Static<typeof ErrorBody>>(Type.Ref('ErrorBody'));
  const r: Record<number, TSchema> = { [status]: ok };
  for (const s of [400, 401, 403, 404, 409, ...extra]) r[s] = error;
  return r;
}

// Patterns carry a title: a refused value is told "must be a <title>", not a regular expression.
export const Name = Type.String({
  pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$',
  title: 'name of 1-128 letters, digits, ".", "_" or "-", starting with a letter or digit',
});

export const Site = Type.String({
  pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$',
  title: 'site code of 1-64 letters, digits, ".", "_" or "-"',
});

export const ClockTime = Type.String({
  pattern: '^([01][0-9]|2[0-3]):[0-5][0-9]$',
  title: 'time of day as HH:MM (00:00-23:59)',
});

/** A non-negative integer in a query string (query values arrive as text). */
export const QueryInt = (digits: number) =>
  Type.String({
    pattern: `^[0-9]{1,${digits}}$`,
    title: `whole number of at most ${digits} digits`,
  });

export const listOf = (item: TSchema) => Type.Object({ items: Type.Array(item) });

/** Records an admin change in the audit log, in the same transaction as the change. Never pass secret values in `summary`. */
export function audit(
  tx: Catalog,
  req: FastifyRequest,
  action: 'create' | 'update' | 'delete' | 'register' | 'login' | 'revoke' | 'read-secret',
  kind: string,
  target: string,
  summary = '',
): Promise<void> {
  return tx.audit({ actor: userOf(req).username, action, kind, target, summary });
}
