import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import Fastify from 'fastify';
import type {
  FastifyBaseLogger,
  FastifyError,
  FastifyInstance,
  FastifyReply,
  FastifyRequest,
  FastifyServerOptions,
  RawReplyDefaultExpression,
  RawRequestDefaultExpression,
  RawServerDefault,
} from 'fastify';
import type { Catalog } from '../catalog/catalog.js';
import type { ContentStore } from '../content/store.js';
import { errorCodes, isReimageError, ReimageError } from '../errors.js';
import { authenticate, type Access } from './auth.js';
import { registerConsole } from './console.js';
import { ErrorBody } from './routes/common.js';
import { registerRoutes } from './routes/index.js';
import { LoginThrottle } from './login-throttle.js';
import type { SecretBox } from './secret-box.js';
import type { Clock } from '../content/window.js';

export const API_VERSION = '1';

/** Everything the server needs, wired by the entry point (no module-level state). */
export interface ServerDeps {
  catalog: Catalog;
  secrets: SecretBox;
  /** The image library's content store (images are registered from it); optional for tests of the catalog alone. */
  store?: ContentStore;
  /** The TLS certificate's fingerprint, told to clients that ask (`GET /api/v1/server`). */
  fingerprint?: string;
  logger?: FastifyServerOptions['logger'] | FastifyBaseLogger;
  https?: { cert: string; key: string };
  /** Largest request body accepted, in bytes (default 1 MiB; status batches and packages fit well inside). */
  bodyLimit?: number;
  clock?: () => number;
  /** Time as replication sees it for DP windows (tests move it on instead of waiting). */
  replicationClock?: Clock;
  /** The built web console to serve at `/` (default dist/console; `false`: none). */
  consoleDir?: string | false;
  /** Failed-login counting (made by createServer when not given). */
  loginThrottle?: LoginThrottle;
}

/** The server as route modules see it: fastify with TypeBox-typed schemas. */
export type App = FastifyInstance<
  RawServerDefault,
  RawRequestDefaultExpression,
  RawReplyDefaultExpression,
  FastifyBaseLogger,
  TypeBoxTypeProvider
>;

declare module 'fastify' {
  interface FastifyContextConfig {
    /** Who may call the route: nobody needs credentials (`public`), a machine, or an admin user of at least this role. */
    access?: Access;
  }
  interface FastifyInstance {
    deps: ServerDeps;
  }
}

/** Builds the management server (not yet listening): API, authentication, errors, OpenAPI. */
export async function createServer(deps: ServerDeps) {
  const loggerOption =
    deps.logger && typeof (deps.logger as FastifyBaseLogger).child === 'function'
      ? { loggerInstance: deps.logger as FastifyBaseLogger }
      : {
          logger: (deps.logger as FastifyServerOptions['logger']) ?? false,
        };
  const app = Fastify({
    ...loggerOption,
    ...(deps.https ? { https: { cert: deps.https.cert, key: deps.https.key } } : {}),
    bodyLimit: deps.bodyLimit ?? 1024 * 1024,
    // Unknown keys are refused, not silently dropped, so a typo never changes nothing quietly.
    // Errors fastify raises before routing (a malformed URL) get the same envelope as ours.
    frameworkErrors: (err, req, reply) => {
      void replyError(
        err.code === 'FST_ERR_BAD_URL'
          ? new ReimageError('VALIDATION_FAILED', 'The URL is not valid (bad percent-encoding).', {
              details: { problems: [{ path: 'url', message: 'bad percent-encoding' }] },
            })
          : err,
        req,
        reply,
      );
    },
    ajv: {
      customOptions: {
        removeAdditional: false,
        useDefaults: false,
        allErrors: true,
        coerceTypes: false,
        // Errors carry their schema, so a message can say "must be a duration such as …"
        // (the schema's title) instead of printing a regular expression.
        verbose: true,
      },
    },
  }).withTypeProvider<TypeBoxTypeProvider>() as unknown as App;
  deps.loginThrottle ??= new LoginThrottle(deps.clock ? { now: deps.clock } : {});
  app.decorate('deps', deps);

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'reimage management API',
        version: API_VERSION,
        description:
          'Admin endpoints take `Authorization: Bearer rit_…` (an API token, from `POST /api/v1/auth/login` or `POST /api/v1/tokens`); client endpoints take a machine credential `Bearer rim_…` from enrollment. Errors are `{ "error": { "code", "message", "details" } }` with the codes of docs/errors.md.',
      },
      components: {
        securitySchemes: {
          adminToken: { type: 'http', scheme: 'bearer' },
          machineCredential: { type: 'http', scheme: 'bearer' },
        },
      },
    },
  });

  app.addSchema({ $id: 'ErrorBody', ...ErrorBody });

  app.addHook('onRequest', async (req) => {
    await authenticate(req, deps);
  });
  // PostgreSQL text cannot hold NUL, SQLite can: refuse it everywhere, so both behave alike.
  app.addHook('preValidation', async (req) => {
    for (const [part, value] of [
      ['params', req.params],
      ['query', req.query],
      ['body', req.body],
    ] as const)
      if (hasNul(value))
        throw new ReimageError(
          'VALIDATION_FAILED',
          `The request ${part} contains a NUL character.`,
          {
            details: { problems: [{ path: part, message: 'contains a NUL (\\u0000) character' }] },
          },
        );
  });

  app.setErrorHandler((err: FastifyError | ReimageError, req, reply) =>
    replyError(err, req, reply),
  );
  app.setNotFoundHandler((req, reply) =>
    replyError(
      new ReimageError('NOT_FOUND', `No API endpoint ${req.method} ${req.url.split('?')[0]}.`, {
        details: { kind: 'endpoint' },
      }),
      req,
      reply,
    ),
  );

  await registerRoutes(app);
  await registerConsole(app, deps.consoleDir);
  return app;
}

function hasNul(v: unknown, depth = 0): boolean {
  if (typeof v === 'string') return v.includes('\u0000');
  // Binary bodies (upload frames, manifests) are bytes, not text.
  if (ArrayBuffer.isView(v)) return false;
  if (v === null || typeof v !== 'object' || depth > 64) return false;
  return Object.entries(v).some(([k, x]) => k.includes('\u0000') || hasNul(x, depth + 1));
}

/** The one place an error becomes a response: `{ error: { code, message, details } }`. */
function replyError(err: unknown, req: FastifyRequest, reply: FastifyReply) {
  const e = toReimageError(err);
  if (e.httpStatus >= 500) req.log.error({ err }, 'request failed');
  else req.log.info({ code: e.code }, e.message);
  const retry = (e.details as { retryAfterSeconds?: unknown } | undefined)?.retryAfterSeconds;
  if (typeof retry === 'number') void reply.header('retry-after', String(retry));
  return reply
    .status(e.httpStatus)
    .send({ error: { code: e.code, message: e.message, details: e.details, requestId: req.id } });
}

function toReimageError(err: unknown): ReimageError {
  if (isReimageError(err)) return err;
  const f = err as FastifyError & { validation?: AjvError[]; validationContext?: string };
  if (f.validation) {
    const problems = withoutUnionNoise(f.validation).map((v) => ({
      path: `${f.validationContext ?? 'body'}${v.instancePath}`,
      message: describeAjv(v),
    }));
    return new ReimageError(
      'VALIDATION_FAILED',
      `The request ${f.validationContext ?? 'body'} is not valid: ${problems.map((p) => `${p.path}: ${p.message}`).join('; ')}`,
      { details: { problems } },
    );
  }
  switch (f.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ReimageError('PAYLOAD_TOO_LARGE', 'The request body is too large.');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ReimageError(
        'VALIDATION_FAILED',
        'The request body must be JSON (Content-Type: application/json).',
        { details: { problems: [] } },
      );
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new ReimageError('VALIDATION_FAILED', 'The request body is empty.', {
        details: { problems: [] },
      });
  }
  if (f.statusCode === 400 && (err instanceof SyntaxError || /JSON/.test(f.message)))
    return new ReimageError('YAML_INVALID', `The request body is not valid JSON: ${f.message}`);
  if (f.statusCode === 413)
    return new ReimageError('PAYLOAD_TOO_LARGE', 'The request body is too large.');
  return new ReimageError('INTERNAL', 'Internal error.', { cause: err });
}

interface AjvError {
  instancePath: string;
  schemaPath?: string;
  keyword: string;
  message?: string;
  params?: Record<string, unknown>;
  /** With `verbose`: the keyword's value (for anyOf, its branches) and the schema holding it. */
  schema?: unknown;
  parentSchema?: { title?: unknown };
}

const isConstUnion = (e: AjvError): e is AjvError & { schema: { const: unknown }[] } =>
  e.keyword === 'anyOf' &&
  Array.isArray(e.schema) &&
  e.schema.every((b) => typeof b === 'object' && b !== null && 'const' in b);

/** A union of constants fails once per constant; its one "must be one of" says it better. */
function withoutUnionNoise(errors: AjvError[]): AjvError[] {
  const unions = errors.filter(isConstUnion);
  return errors.filter(
    (e) =>
      e.keyword === 'anyOf' ||
      !unions.some(
        (u) => u.instancePath === e.instancePath && e.schemaPath?.startsWith(`${u.schemaPath}/`),
      ),
  );
}

function describeAjv(v: AjvError): string {
  const p = v.params ?? {};
  if (isConstUnion(v))
    return `must be one of ${v.schema.map((b) => JSON.stringify(b.const)).join(', ')}`;
  const title = v.parentSchema?.title;
  if ((v.keyword === 'pattern' || v.keyword === 'format') && typeof title === 'string')
    return `must be ${/^[aeiou]/i.test(title) ? 'an' : 'a'} ${title}`;
  if (v.keyword === 'format' && p.format === 'date-time')
    return 'must be an ISO 8601 date-time with offset, such as "2025-03-01T18:00:00Z"';
  if (v.keyword === 'additionalProperties')
    return `unknown property '${String(p.additionalProperty)}'`;
  if (v.keyword === 'required') return `missing required property '${String(p.missingProperty)}'`;
  if (v.keyword === 'enum')
    return `must be one of ${(p.allowedValues as unknown[]).map((x) => JSON.stringify(x)).join(', ')}`;
  return v.message ?? v.keyword;
}

/** Error codes an API client may see, for the OpenAPI document. */
export const apiErrorCodes = Object.keys(errorCodes).filter(
  (c) => 'http' in errorCodes[c as keyof typeof errorCodes],
);
