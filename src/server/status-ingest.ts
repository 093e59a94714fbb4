import type { IngestMessage } from '../catalog/status-store.js';
import { ReimageError } from '../errors.js';
import { stateOf, statusMessage } from '../status/messages.js';
import { isSecretName, REDACTED, redactText } from '../status/redact.js';

/** A status message as a machine sends it (POST /api/v1/client/status, or a drop file). */
export interface IncomingStatus {
  seq: number;
  id: number;
  time: string;
  advertisementId?: string;
  properties?: Record<string, unknown>;
}

const MAX_PROPERTIES_BYTES = 8192;

/** Properties nest at most this deep (status properties are small records, not documents). */
const MAX_PROPERTY_DEPTH = 8;

/** Values of secret-looking property names (`isSecretName`) are never stored, whatever a client sends. */
function redactProperties(props: Record<string, unknown>, depth = 0): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(props))
    out[k] = isSecretName(k) ? REDACTED : redactValue(v, depth + 1);
  return out;
}

/**
 * Lists too: `[{ password: … }]` hides a secret as well as `{ password: … }` does; and secrets
 * inside text (a log tail, an error message) whatever the agent did about them.
 */
function redactValue(v: unknown, depth: number): unknown {
  if (typeof v === 'string') return redactText(v);
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

/**
 * A batch as the catalog stores it: every id must be in the message catalog, no seq twice,
 * secret-looking properties redacted, properties small. The one check for both ways status
 * arrives (the client API and imported drop files), so both land in the same timelines.
 * The shape itself (types, ranges) is checked before: by the route's schema, or by
 * status-import.ts for drop files.
 */
export function checkStatusBatch(batch: IncomingStatus[]): IngestMessage[] {
  const seen = new Set<number>();
  const problems: { path: string; message: string }[] = [];
  const messages = batch.map((s, i) => {
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
  return messages;
}
