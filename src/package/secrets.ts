import { ReimageError } from '../errors.js';
import { formatProblem, type Problem } from './document.js';
import { secretPaths } from './schema.js';
import type { DeploymentSettings, SecretMarker } from './schema.js';

/**
 * Secrets in deployment settings are write-only. The server stores them encrypted apart from
 * the settings, answers every request with the marker `{"secret": "set"}` in their place, and
 * hands the values only to the machine that deploys (in its own policy). Package files copied
 * to distribution points carry the markers, never the values.
 *
 * A client that sends a marker back means "keep the stored value", so a document read from the
 * API can be edited and sent back as it is: `splitSecrets(joinSecrets(incoming, stored))`.
 */

export { secretPaths };
export type SecretPath = (typeof secretPaths)[number];

export const SECRET_SET: SecretMarker = Object.freeze({ secret: 'set' });

/** The settings with each secret replaced by the marker, and the secrets by JSON pointer. */
export function splitSecrets(settings: DeploymentSettings): {
  public: DeploymentSettings;
  secrets: Partial<Record<SecretPath, string>>;
} {
  const pub = structuredClone(settings);
  const secrets: Partial<Record<SecretPath, string>> = {};
  for (const path of secretPaths) {
    const at = locate(pub, path);
    if (at && typeof at.value === 'string') {
      secrets[path] = at.value;
      at.parent[at.key] = { ...SECRET_SET };
    }
  }
  return { public: pub, secrets };
}

/**
 * Puts stored secrets back where the settings hold markers. A marker with no stored secret is
 * VALIDATION_FAILED (nothing to keep: the value must be given); secrets whose place no longer
 * holds a marker (the setting changed) are left out. `file` names the settings file in problems.
 */
export function joinSecrets(
  pub: DeploymentSettings,
  secrets: Partial<Record<string, string>>,
  file = 'deployment settings',
): DeploymentSettings {
  const full = structuredClone(pub);
  const missing: string[] = [];
  for (const path of secretPaths) {
    const at = locate(full, path);
    if (!at || !isMarker(at.value)) continue;
    const value = secrets[path];
    if (value === undefined) missing.push(path);
    else at.parent[at.key] = value;
  }
  if (missing.length > 0) {
    const problems = missing.map((path): Problem => ({
      file,
      path,
      found: JSON.stringify(SECRET_SET),
      expected: 'must be given: no secret is stored to keep',
    }));
    throw new ReimageError('VALIDATION_FAILED', problems.map(formatProblem).join('\n'), {
      details: { problems },
    });
  }
  return full;
}

/** The settings as any response shows them: each secret replaced by the marker. */
export function redact(settings: DeploymentSettings): DeploymentSettings {
  return splitSecrets(settings).public;
}

function isMarker(v: unknown): boolean {
  return typeof v === 'object' && v !== null && (v as { secret?: unknown }).secret === 'set';
}

/** The object holding the value at `path` (secret paths have no escaped segments). */
function locate(
  doc: unknown,
  path: string,
): { parent: Record<string, unknown>; key: string; value: unknown } | undefined {
  const keys = path.split('/').slice(1);
  const last = keys.pop()!;
  let node = doc;
  for (const k of keys) {
    if (typeof node !== 'object' || node === null) return undefined;
    node = (node as Record<string, unknown>)[k];
  }
  if (typeof node !== 'object' || node === null || Array.isArray(node)) return undefined;
  const parent = node as Record<string, unknown>;
  return Object.hasOwn(parent, last) ? { parent, key: last, value: parent[last] } : undefined;
}
