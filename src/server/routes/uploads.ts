import { Transform } from 'node:stream';
import { Type } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import { ReimageError } from '../../errors.js';
import type { App } from '../app.js';
import { userOf } from '../auth.js';
import { UploadRegistry, type UploadRequest } from '../uploads.js';
import { audit, listOf, Name, responses } from './common.js';
import { Image } from './images.js';

/** Largest frames body: a batch of frames (the client sends ~1 MiB; one frame is at most ~2.3 MiB). */
export const FRAMES_BODY_LIMIT = 8 * 1024 * 1024;
/** Largest compressed manifest a commit carries. */
export const MANIFEST_BODY_LIMIT = 64 * 1024 * 1024;
/** Chunk hashes per `missing` question. */
export const MISSING_BATCH = 4096;
const INVENTORY_MAX_BYTES = 16 * 1024;
const INVENTORY_MAX_DEPTH = 4;

const Hash = Type.String({
  pattern: '^[0-9a-f]{64}$',
  title: 'SHA-256 of 64 lowercase hex digits',
});
const Str = (max: number) => Type.String({ minLength: 1, maxLength: max });

const Properties = Type.Object(
  {
    description: Type.Optional(Str(2000)),
    osFamily: Type.Optional(Str(64)),
    osVersion: Type.Optional(Str(64)),
    architecture: Type.Optional(Str(64)),
    created: Type.String({ format: 'date-time' }),
    sourceMachine: Type.Optional(Str(255)),
    custom: Type.Record(
      Type.String({ minLength: 1, maxLength: 128 }),
      Type.String({ maxLength: 1024 }),
      { maxProperties: 64 },
    ),
  },
  { additionalProperties: false },
);

const StartBody = Type.Object(
  {
    imageId: Hash,
    name: Name,
    properties: Properties,
    imageFormat: Type.Optional(
      Type.Union([Type.Literal('native-v1'), Type.Literal('opaque')], {
        description: 'native-v1 (default) or opaque (a third-party image file stored as is)',
      }),
    ),
    opaqueFormat: Type.Optional(Str(64)),
    parent: Type.Optional(Hash),
    signature: Type.Optional(
      Type.Object(
        {
          algorithm: Type.Literal('ed25519'),
          keyId: Str(128),
          value: Str(200),
        },
        { additionalProperties: false },
      ),
    ),
    inventory: Type.Optional(
      Type.Record(Type.String({ minLength: 1, maxLength: 64 }), Type.Unknown(), {
        maxProperties: 64,
        description: `the source machine's inventory (hostname, os, arch, disks…): any JSON object of at most ${INVENTORY_MAX_BYTES} bytes and ${INVENTORY_MAX_DEPTH} levels`,
      }),
    ),
  },
  { additionalProperties: false },
);

const UploadStatus = Type.Object({
  id: Type.String(),
  imageId: Type.String(),
  name: Type.String(),
  user: Type.String(),
  state: Type.Union([Type.Literal('open'), Type.Literal('committed'), Type.Literal('expired')]),
  bytesReceived: Type.Number({
    description: 'request body bytes the server received for this upload, cut requests included',
  }),
  requests: Type.Integer(),
  framesReceived: Type.Integer(),
  chunksStored: Type.Integer({ description: 'chunks this upload added to the library' }),
  bytesStored: Type.Number({ description: 'compressed bytes this upload added to the library' }),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) });

/** The upload endpoints (docs/upload.md); registered in their own context for the binary bodies. */
export async function uploadRoutes(app: App): Promise<void> {
  const store = app.deps.store;
  const registry = store ? new UploadRegistry(store, app.deps.catalog, app.log) : undefined;
  app.addHook('onClose', async () => registry?.close());
  const uploads = (): UploadRegistry => {
    if (!registry) throw new ReimageError('NOT_FOUND', 'This server has no image library.');
    return registry;
  };

  // Frames and manifests arrive as bytes; fastify holds the body (bounded) until it is whole.
  app.addContentTypeParser(
    'application/octet-stream',
    { parseAs: 'buffer', bodyLimit: MANIFEST_BODY_LIMIT },
    (_req, body, done) => done(null, body),
  );

  // The server's own count of what it received, as it arrives (a body cut off midway counts).
  const counted = new WeakMap<FastifyRequest, number>();
  const countBody = async (
    req: FastifyRequest,
    _reply: unknown,
    payload: NodeJS.ReadableStream,
  ) => {
    const id = (req.params as { id?: string }).id;
    if (id !== undefined) registry?.countRequest(id);
    let n = 0;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        n += chunk.length;
        counted.set(req, n);
        if (id !== undefined) registry?.countBytes(id, chunk.length);
        (counter as unknown as { receivedEncodedLength: number }).receivedEncodedLength = n;
        cb(null, chunk);
      },
    });
    (counter as unknown as { receivedEncodedLength: number }).receivedEncodedLength = 0;
    payload.on('error', (e: Error) => counter.destroy(e));
    payload.on('close', () => {
      if (!counter.writableEnded) counter.destroy(new Error('the request body was cut off'));
    });
    payload.pipe(counter);
    return counter;
  };

  const binary = (req: FastifyRequest, what: string): Buffer => {
    if (!Buffer.isBuffer(req.body))
      throw new ReimageError(
        'VALIDATION_FAILED',
        `The request body must be ${what} (Content-Type: application/octet-stream).`,
        { details: { problems: [{ path: 'body', message: `must be ${what}` }] } },
      );
    return req.body;
  };

  app.post(
    '/api/v1/uploads',
    {
      config: { access: 'operator' },
      preParsing: countBody,
      schema: {
        tags: ['uploads'],
        summary:
          "Start (or resume) uploading an image into the server's library: the same user, image and name resume the open upload",
        body: StartBody,
        response: responses(Type.Object({ upload: UploadStatus, resumed: Type.Boolean() }), 201),
      },
    },
    async (req, reply) => {
      const b = req.body;
      if (b.inventory) checkInventory(b.inventory);
      const { properties, ...rest } = b;
      const request: UploadRequest = {
        ...rest,
        properties: { ...properties, custom: properties.custom },
      };
      const r = await uploads().start(request, userOf(req).username);
      registry?.countBytes(r.upload.id, counted.get(req) ?? 0);
      registry?.countRequest(r.upload.id);
      return reply.status(201).send(r);
    },
  );

  app.get(
    '/api/v1/uploads',
    {
      config: { access: 'operator' },
      schema: {
        tags: ['uploads'],
        summary: 'Open uploads and the last finished ones, with the bytes the server received',
        response: responses(listOf(UploadStatus)),
      },
    },
    async () => ({ items: registry?.list() ?? [] }),
  );

  app.get(
    '/api/v1/uploads/:id',
    {
      config: { access: 'operator' },
      schema: { tags: ['uploads'], params: IdParams, response: responses(UploadStatus) },
    },
    async (req) => uploads().status(req.params.id),
  );

  app.post(
    '/api/v1/uploads/:id/missing',
    {
      config: { access: 'operator' },
      preParsing: countBody,
      schema: {
        tags: ['uploads'],
        summary: `Which of these chunks (at most ${MISSING_BATCH}) neither the library nor the upload has`,
        params: IdParams,
        body: Type.Object(
          { hashes: Type.Array(Hash, { maxItems: MISSING_BATCH }) },
          { additionalProperties: false },
        ),
        response: responses(Type.Object({ missing: Type.Array(Type.String()) })),
      },
    },
    async (req) => ({ missing: await uploads().missing(req.params.id, req.body.hashes) }),
  );

  app.put(
    '/api/v1/uploads/:id/frames',
    {
      config: { access: 'operator' },
      bodyLimit: FRAMES_BODY_LIMIT,
      preParsing: countBody,
      schema: {
        tags: ['uploads'],
        summary:
          'Send pack frames (Content-Type: application/octet-stream, a frame stream of docs/upload.md); every chunk is hashed before any of the body is stored',
        params: IdParams,
        response: responses(
          Type.Object({
            frames: Type.Integer(),
            chunksStored: Type.Integer(),
            bytesStored: Type.Number(),
            upload: UploadStatus,
          }),
        ),
      },
    },
    async (req) => {
      const body = binary(req, 'a frame stream');
      const r = await uploads().putFrames(req.params.id, body);
      const upload = uploads().status(req.params.id);
      req.log.debug(
        { upload: upload.id, ...r, bytesReceived: upload.bytesReceived },
        'frames stored',
      );
      return { ...r, upload };
    },
  );

  app.post(
    '/api/v1/uploads/:id/commit',
    {
      config: { access: 'operator' },
      bodyLimit: MANIFEST_BODY_LIMIT,
      preParsing: countBody,
      schema: {
        tags: ['uploads'],
        summary:
          'Commit the upload with its manifest (Content-Type: application/octet-stream, zstd): it must hash to the image id and the library must have every chunk it names; the image is then named and registered in the catalog',
        params: IdParams,
        response: responses(Type.Object({ image: Image, upload: UploadStatus })),
      },
    },
    async (req) => {
      const z = binary(req, 'the zstd-compressed manifest');
      return uploads().commit(req.params.id, z, (tx, target) =>
        audit(tx, req, 'register', 'image', target, 'uploaded'),
      );
    },
  );
}

/** An inventory is any JSON object, within a depth and a size. */
function checkInventory(inv: Record<string, unknown>): void {
  const refuse = (message: string) =>
    new ReimageError(
      'VALIDATION_FAILED',
      `The request body is not valid: body/inventory: ${message}`,
      {
        details: { problems: [{ path: 'body/inventory', message }] },
      },
    );
  // Depth first, without recursing past the limit: a hostile body may nest very deep.
  const tooDeep = (v: unknown, level: number): boolean =>
    v !== null &&
    typeof v === 'object' &&
    (level >= INVENTORY_MAX_DEPTH ||
      Object.values(v as Record<string, unknown>).some((x) => tooDeep(x, level + 1)));
  if (tooDeep(inv, 0)) throw refuse(`nests more than ${INVENTORY_MAX_DEPTH} levels deep`);
  const size = Buffer.byteLength(JSON.stringify(inv));
  if (size > INVENTORY_MAX_BYTES)
    throw refuse(`is ${size} bytes of JSON; at most ${INVENTORY_MAX_BYTES} allowed`);
}
