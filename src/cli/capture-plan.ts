import { readFileSync } from 'node:fs';
import { LineCounter, parseDocument, isMap, isScalar, type Document } from 'yaml';
import { ReimageError } from '../errors.js';
import { checkImageName } from '../image/library.js';

/**
 * A capture as the wizard's pages and the answer file describe it: what to capture, the image's
 * name and properties, where it goes and whether to generalize. Secrets are not part of it: the
 * share password (or the server's token) comes from the wizard's masked prompt, a file, or the
 * environment, and is kept apart so it can never be printed with the plan.
 */
export interface CapturePlan {
  /** Root of the tree: `/` for the live system, or any folder (a mounted drive). */
  source: string;
  /** Leave out pseudo filesystems, caches and the client's state (see SYSTEM_EXCLUDES). */
  system: boolean;
  name: string;
  destination: Destination;
  description?: string;
  /** os, version, arch and free-form properties (KEY=VALUE). */
  properties: Record<string, string>;
  generalize: boolean;
  excludes: string[];
}

export type Destination =
  | { kind: 'folder'; path: string }
  | { kind: 'share'; url: string; user: string; domain?: string }
  | { kind: 'server'; url: string };

/** The destination as typed: a folder, `//host[:port]/share/path` or `smb://…`, or `https://…`. */
export function parseDestination(
  text: string,
  account: { user?: string; domain?: string },
): Destination {
  const t = text.trim();
  if (t === '') throw new ReimageError('INVALID_ARGUMENT', 'no destination given');
  if (t.startsWith('//') || t.startsWith('smb://')) {
    const url = t.startsWith('//') ? `smb:${t}` : t;
    if (!account.user)
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `the share ${url} needs an account: give --user (and the password in --password-file or REIMAGE_SHARE_PASSWORD)`,
      );
    return {
      kind: 'share',
      url,
      user: account.user,
      ...(account.domain ? { domain: account.domain } : {}),
    };
  }
  if (/^https?:\/\//.test(t)) return { kind: 'server', url: t };
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(t))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `the destination ${t} is not a folder, an SMB share (//host/share/path) or a server (https://…)`,
    );
  return { kind: 'folder', path: t };
}

export function describeDestination(d: Destination): string {
  if (d.kind === 'folder') return `folder ${d.path}`;
  if (d.kind === 'share') return `share ${d.url} as ${d.domain ? `${d.domain}\\` : ''}${d.user}`;
  return `server library ${d.url}`;
}

/** Fields of the answer file, as the wizard's pages have them. */
const FIELDS = {
  source: 'string',
  system: 'boolean',
  name: 'string',
  destination: 'string',
  user: 'string',
  domain: 'string',
  description: 'string',
  os: 'string',
  version: 'string',
  arch: 'string',
  properties: 'map',
  generalize: 'boolean',
  exclude: 'list',
} as const;

/**
 * Reads an answer file (YAML): the wizard's fields, e.g.
 * `source: /`, `system: true`, `name: …`, `destination: //host/share/path`, `user: …`,
 * `os: debian`, `properties: {team: eng}`, `generalize: true`. A password in it is refused.
 * Throws YAML_INVALID or VALIDATION_FAILED naming the line.
 */
export function readAnswerFile(file: string): Partial<CapturePlan> & {
  destinationText?: string;
  user?: string;
  domain?: string;
} {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `cannot read the answer file ${file}: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
  const lc = new LineCounter();
  const doc: Document = parseDocument(text, {
    lineCounter: lc,
    uniqueKeys: true,
    prettyErrors: true,
  });
  const err = doc.errors[0];
  if (err) {
    throw new ReimageError(
      'YAML_INVALID',
      `${file}:${err.linePos?.[0]?.line ?? '?'}: ${err.message}`,
      {
        details: { file, line: err.linePos?.[0]?.line },
      },
    );
  }
  const problems: Array<{
    file: string;
    path: string;
    line?: number;
    expected: string;
    found?: string;
  }> = [];
  const contents = doc.contents;
  if (!isMap(contents)) {
    throw new ReimageError(
      'VALIDATION_FAILED',
      `${file}: must be a map of the wizard's fields (source, name, destination, …)`,
      {
        details: { problems: [{ file, path: '', expected: 'must be a map' }] },
      },
    );
  }
  const out: Record<string, unknown> = {};
  for (const pair of contents.items) {
    const key = isScalar(pair.key) ? String(pair.key.value) : String(pair.key);
    const range = isScalar(pair.key) ? pair.key.range : undefined;
    const line = range ? lc.linePos(range[0]).line : undefined;
    const value: unknown =
      pair.value && typeof pair.value === 'object' && 'toJSON' in pair.value
        ? (pair.value as { toJSON(): unknown }).toJSON()
        : pair.value;
    if (/pass|secret|token/i.test(key)) {
      // Not echoed: it is a secret.
      problems.push({
        file,
        path: `/${key}`,
        line,
        expected:
          'secrets are not taken from answer files: use --password-file FILE (mode 0600) or REIMAGE_SHARE_PASSWORD',
      });
      continue;
    }
    const kind = (FIELDS as Record<string, string>)[key];
    if (!kind) {
      problems.push({
        file,
        path: `/${key}`,
        line,
        expected: `is not a field; the fields are ${Object.keys(FIELDS).join(', ')}`,
      });
      continue;
    }
    const ok =
      kind === 'string'
        ? typeof value === 'string' || typeof value === 'number'
        : kind === 'boolean'
          ? typeof value === 'boolean'
          : kind === 'list'
            ? Array.isArray(value) && value.every((v) => typeof v === 'string')
            : value !== null &&
              typeof value === 'object' &&
              !Array.isArray(value) &&
              Object.values(value).every((v) => ['string', 'number', 'boolean'].includes(typeof v));
    if (!ok) {
      problems.push({
        file,
        path: `/${key}`,
        line,
        found: JSON.stringify(value),
        expected:
          kind === 'map'
            ? 'must be a map of KEY: value'
            : kind === 'list'
              ? 'must be a list of globs'
              : `must be a ${kind}`,
      });
      continue;
    }
    out[key] = kind === 'string' ? String(value) : value;
  }
  if (problems.length) {
    throw new ReimageError(
      'VALIDATION_FAILED',
      problems
        .map(
          (p) =>
            `${p.file}${p.line ? `:${p.line}` : ''} ${p.path}: ${p.expected}${p.found ? ` (found ${p.found})` : ''}`,
        )
        .join('\n'),
      { details: { problems } },
    );
  }
  const props: Record<string, string> = {};
  for (const k of ['os', 'version', 'arch'] as const)
    if (out[k] !== undefined) props[k] = out[k] as string;
  for (const [k, v] of Object.entries((out.properties as Record<string, unknown>) ?? {}))
    props[k] = String(v);
  const plan: Partial<CapturePlan> & { destinationText?: string; user?: string; domain?: string } =
    {};
  if (out.source !== undefined) plan.source = out.source as string;
  if (out.system !== undefined) plan.system = out.system as boolean;
  if (out.name !== undefined) plan.name = out.name as string;
  if (out.description !== undefined) plan.description = out.description as string;
  if (out.generalize !== undefined) plan.generalize = out.generalize as boolean;
  if (out.exclude !== undefined) plan.excludes = out.exclude as string[];
  if (Object.keys(props).length) plan.properties = props;
  if (out.destination !== undefined) plan.destinationText = out.destination as string;
  if (out.user !== undefined) plan.user = out.user as string;
  if (out.domain !== undefined) plan.domain = out.domain as string;
  return plan;
}

/** Checks a complete plan; throws INVALID_ARGUMENT / IMAGE_NAME_INVALID naming what is wrong. */
export function checkPlan(p: CapturePlan): void {
  if (!p.source) throw new ReimageError('USAGE', 'no source given: the root to capture (e.g. /)');
  checkImageName(p.name);
}

/** The share password (or server token): a file (first line), else REIMAGE_SHARE_PASSWORD. */
export function readSecret(
  passwordFile: string | undefined,
  env: Record<string, string | undefined>,
): string | undefined {
  if (passwordFile) {
    try {
      return readFileSync(passwordFile, 'utf8').split(/\r?\n/)[0];
    } catch (e) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `cannot read the password file ${passwordFile}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
        {
          cause: e,
        },
      );
    }
  }
  return env.REIMAGE_SHARE_PASSWORD || undefined;
}
