import { isIP } from 'node:net';

import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import formats from 'ajv-formats';
import { isMap, isScalar, isSeq, LineCounter, parseAllDocuments, type Document } from 'yaml';

import { ReimageError } from '../errors.js';
import { builtinRuleSets, isBuiltinRuleSet, patternProblem } from '../migrate/rule-format.js';
import {
  DURATION_PATTERN,
  defaults,
  documentSchemas,
  secretPaths,
  type DocumentKind,
  type DocumentTypes,
} from './schema.js';

/**
 * Reads and validates the package documents. Every problem names the file, the JSON pointer
 * of the value in the document, its line when the document came from YAML, what was found and
 * what is expected, so that a user fixes a file without guessing.
 */

/** One thing wrong with a document; `expected` completes "path: ..." (e.g. "must be ..."). */
export interface Problem {
  file: string;
  /** JSON pointer into the document, e.g. /options/postponement/maximum ("" = the document). */
  path: string;
  line?: number;
  found?: string;
  expected: string;
}

/** Larger package documents are refused before they are parsed. */
export const MAX_DOCUMENT_BYTES = 1024 * 1024;

export type FileKind = 'PackageDefinition' | 'DeploymentSettings';

/**
 * Parses a package definition or deployment settings file (YAML or JSON). Throws YAML_INVALID
 * for malformed YAML (duplicate keys included) and VALIDATION_FAILED, with `details.problems`,
 * for anything else. The document is returned as written: absent values keep their defaults.
 */
export function parsePackageFile<K extends FileKind>(
  kind: K,
  text: string,
  fileName: string,
): DocumentTypes[K] {
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > MAX_DOCUMENT_BYTES) {
    fail([
      {
        file: fileName,
        path: '',
        found: `${bytes} bytes`,
        expected: `must be at most ${MAX_DOCUMENT_BYTES} bytes (1 MiB)`,
      },
    ]);
  }
  const lineCounter = new LineCounter();
  const parsed = parseAllDocuments(text, { lineCounter, prettyErrors: true, uniqueKeys: true });
  const docs = Array.isArray(parsed) ? parsed : [];
  for (const doc of docs) {
    const err = doc.errors[0];
    if (err) {
      // yaml says only "Map keys must be unique"; name the key, the user looks for it.
      const key =
        err.code === 'DUPLICATE_KEY'
          ? /^("[^"\n]*"|'[^'\n]*'|[^:#\n]+?)\s*:/.exec(text.slice(err.pos[0]))?.[1]
          : undefined;
      const message = key
        ? `Map keys must be unique: ${JSON.stringify(key.replace(/^(["'])(.*)\1$/, '$2'))} appears twice`
        : err.message;
      throw yamlInvalid(fileName, message, err.code, err.linePos?.[0]);
    }
  }
  if (docs.length > 1) {
    const second = docs[1]!.range[0];
    fail([
      {
        file: fileName,
        path: '',
        line: lineCounter.linePos(second).line,
        found: `${docs.length} documents`,
        expected: `must hold one ${kind} document (remove the "---" separators)`,
      },
    ]);
  }
  const doc = docs[0];
  if (doc === undefined || doc.contents === null) {
    fail([
      { file: fileName, path: '', expected: `must be a ${kind} document (the file is empty)` },
    ]);
  }
  let value: unknown;
  try {
    value = doc.toJS({ maxAliasCount: 100 });
  } catch (e) {
    // yaml throws when aliases expand too far (a "billion laughs" document).
    throw yamlInvalid(
      fileName,
      e instanceof Error ? e.message : String(e),
      'ALIAS_COUNT',
      undefined,
      e,
    );
  }
  return check(kind, value, fileName, (path) => lineOf(doc, lineCounter, path));
}

/**
 * Validates a document that arrived as JSON (an API request body): the same checks as
 * {@link parsePackageFile}, without line numbers.
 */
export function validateDocument<K extends DocumentKind>(
  kind: K,
  value: unknown,
  fileName = 'request body',
): DocumentTypes[K] {
  return check(kind, value, fileName, () => undefined);
}

/** "file:line /path: expected (found x)": one line per problem, as the messages show them. */
export function formatProblem(p: Problem): string {
  const where = p.line === undefined ? p.file : `${p.file}:${p.line}`;
  const found = p.found === undefined ? '' : ` (found ${p.found})`;
  return `${where} ${p.path || '/'}: ${p.expected}${found}`;
}

const DURATION_RE = new RegExp(DURATION_PATTERN);
const UNITS = [
  ['d', 86_400_000],
  ['h', 3_600_000],
  ['m', 60_000],
  ['s', 1000],
] as const;

/** "2d6h" → milliseconds; throws INVALID_ARGUMENT for anything but days, hours, minutes, seconds. */
export function parseDuration(text: string): number {
  const m = DURATION_RE.exec(text);
  if (!m) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${JSON.stringify(text)} is not a duration: write days, hours, minutes and seconds such as "3d", "12h", "2d6h" or "15m"`,
    );
  }
  return UNITS.reduce((ms, [, unit], i) => ms + Number(m[i + 1] ?? 0) * unit, 0);
}

/** Milliseconds → the shortest duration text ("2d6h"), rounded to whole seconds. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) throw new RangeError(`not a duration: ${ms} ms`);
  let rest = Math.round(ms / 1000) * 1000;
  let text = '';
  for (const [name, unit] of UNITS) {
    const n = Math.floor(rest / unit);
    if (n > 0) text += `${n}${name}`;
    rest -= n * unit;
  }
  return text || '0s';
}

// ---------------------------------------------------------------- validation

type LineOf = (path: string) => number | undefined;

function check<K extends DocumentKind>(
  kind: K,
  value: unknown,
  file: string,
  lineOf: LineOf,
): DocumentTypes[K] {
  // Another kind of document would fail on every key; saying which kind it is is enough.
  const actual = field(value, 'kind');
  if (kind !== 'AdvertisementPolicy' && typeof actual === 'string' && actual !== kind) {
    fail([
      {
        file,
        path: '/kind',
        line: lineOf('/kind'),
        found: JSON.stringify(actual),
        expected: `must be "${kind}": this file is read as a ${kind} file`,
      },
    ]);
  }
  const validate = validator(kind);
  const problems = validate(value) ? [] : schemaProblems(validate.errors ?? [], file);
  const reported = new Set(problems.map((p) => p.path));
  for (const p of semanticProblems(kind, value, file)) {
    if (!reported.has(p.path)) problems.push(p);
  }
  if (problems.length > 0) {
    for (const p of problems) {
      const line = lineOf(p.path);
      if (line !== undefined) p.line = line;
      // A value at, inside or around a secret may be the secret (`productKey: ABC-123` for
      // `productKey: {set: ABC-123}`): never echo it into a message, a response or a log.
      if (kind === 'DeploymentSettings' && nearSecret(p.path)) delete p.found;
    }
    fail(problems.sort((a, b) => (a.line ?? Infinity) - (b.line ?? Infinity)));
  }
  return value as DocumentTypes[K];
}

function fail(problems: Problem[]): never {
  const lines = problems.map(formatProblem);
  const message =
    lines.length === 1 ? lines[0]! : `${lines.length} problems:\n  ${lines.join('\n  ')}`;
  throw new ReimageError('VALIDATION_FAILED', message, { details: { problems } });
}

function yamlInvalid(
  file: string,
  message: string,
  code: string,
  pos: { line: number; col: number } | undefined,
  cause?: unknown,
): ReimageError {
  // prettyErrors appends " at line L, column C:" and a source excerpt; we give the position.
  const short = message.split(/ at line \d+, column \d+|\n/)[0]!;
  const where = pos ? `${file}:${pos.line}:${pos.col}` : file;
  return new ReimageError('YAML_INVALID', `${where}: ${short}`, {
    cause,
    details: { file, line: pos?.line, column: pos?.col, yamlCode: code },
  });
}

// Compiled once per schema: Ajv compilation is the slow part and the schemas never change.
let ajv: Ajv | undefined;
const validators = new Map<DocumentKind, ValidateFunction>();

function validator(kind: DocumentKind): ValidateFunction {
  let v = validators.get(kind);
  if (!v) {
    if (!ajv) {
      ajv = new Ajv({ allErrors: true, strict: false, verbose: true });
      formats.default(ajv, ['date-time']);
    }
    v = ajv.compile(documentSchemas[kind]);
    validators.set(kind, v);
  }
  return v;
}

// ---------------------------------------------------------------- Ajv errors → problems

interface SchemaNode {
  type?: string;
  const?: unknown;
  title?: string;
  pattern?: string;
  properties?: Record<string, SchemaNode>;
  patternProperties?: Record<string, SchemaNode>;
  anyOf?: SchemaNode[];
}

/**
 * An anyOf fails with the errors of every branch, most of them beside the point. The branch
 * the user meant is the one whose type fits the value, or whose discriminator (a property that
 * is a constant in each branch, like stateStore.type) matches; only its errors are kept.
 * When no branch can be told apart, one problem lists what the value may be.
 */
function schemaProblems(errors: ErrorObject[], file: string): Problem[] {
  const problems: Problem[] = [];
  const dropped: { instancePath: string; schemaPath: string }[] = [];
  const isDropped = (e: ErrorObject) =>
    dropped.some(
      (d) =>
        within(e.instancePath, d.instancePath) &&
        (e.schemaPath === d.schemaPath || e.schemaPath.startsWith(d.schemaPath + '/')),
    );
  // Outer anyOfs are reported after their branches; resolve from the outside in.
  const anyOfs = errors
    .filter((e) => e.keyword === 'anyOf')
    .sort((a, b) => a.schemaPath.length - b.schemaPath.length);
  for (const e of anyOfs) {
    if (isDropped(e)) continue;
    const branches = e.schema as SchemaNode[];
    const choice = chooseBranch(branches, e.data);
    if (typeof choice === 'number') {
      branches.forEach((_, i) => {
        if (i !== choice)
          dropped.push({ instancePath: e.instancePath, schemaPath: `${e.schemaPath}/${i}` });
      });
    } else {
      dropped.push({ instancePath: e.instancePath, schemaPath: e.schemaPath });
      problems.push(
        choice
          ? {
              file,
              path: `${e.instancePath}/${choice.key}`,
              ...found(choice.value),
              expected: choice.expected,
            }
          : {
              file,
              path: e.instancePath,
              ...found(e.data),
              expected: `must be ${describeAnyOf(branches)}`,
            },
      );
    }
  }
  for (const e of errors) {
    if (e.keyword !== 'anyOf' && !isDropped(e)) problems.push(problem(e, file));
  }
  return problems;
}

type Choice = number | { key: string; value: unknown; expected: string } | undefined;

function chooseBranch(branches: SchemaNode[], data: unknown): Choice {
  const fitting = branches.flatMap((b, i) => (typeFits(b, data) ? [i] : []));
  // A failed constant ("migrate") says less than the list of what the value may be.
  if (fitting.length === 1)
    return branches[fitting[0]!]!.const === undefined ? fitting[0] : undefined;
  if (fitting.length < 2 || !isPlainObject(data)) return undefined;
  const candidates = fitting.map((i) => branches[i]!);
  const key = Object.keys(candidates[0]!.properties ?? {}).find((k) =>
    candidates.every((b) => b.properties?.[k]?.const !== undefined),
  );
  if (key === undefined) return undefined;
  const i = candidates.findIndex((b) => b.properties![key]!.const === data[key]);
  if (i >= 0) return fitting[i];
  const allowed = candidates.map((b) => String(b.properties![key]!.const));
  return {
    key,
    value: data[key],
    expected:
      data[key] === undefined
        ? `missing: the key "${key}" is required (one of ${allowed.join(', ')})`
        : `must be one of ${allowed.join(', ')}`,
  };
}

function typeFits(schema: SchemaNode, data: unknown): boolean {
  switch (schema.type) {
    case 'string':
      return typeof data === 'string';
    case 'boolean':
      return typeof data === 'boolean';
    case 'integer':
    case 'number':
      return typeof data === 'number';
    case 'array':
      return Array.isArray(data);
    case 'object':
      return isPlainObject(data);
    default:
      return schema.anyOf ? schema.anyOf.some((b) => typeFits(b, data)) : true;
  }
}

function describeAnyOf(branches: SchemaNode[]): string {
  if (branches.every((b) => b.const !== undefined)) {
    return `one of ${branches.map((b) => String(b.const)).join(', ')}`;
  }
  const parts = branches.map(describe);
  return parts.length === 1 ? parts[0]! : `${parts.slice(0, -1).join(', ')} or ${parts.at(-1)}`;
}

function describe(schema: SchemaNode): string {
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.anyOf) return describeAnyOf(schema.anyOf);
  if (schema.title) return article(schema.title);
  if (schema.type === 'object' && schema.properties) {
    const keys = Object.keys(schema.properties).map((k) => `"${k}"`);
    return `a mapping with ${keys.join(', ')}`;
  }
  return TYPE_PHRASES[schema.type ?? ''] ?? 'a valid value';
}

const TYPE_PHRASES: Record<string, string> = {
  string: 'a string',
  integer: 'a whole number',
  number: 'a number',
  boolean: 'true or false',
  object: 'a mapping (key: value)',
  array: 'a list',
  null: 'empty',
};

const FORMAT_PHRASES: Record<string, string> = {
  'date-time': 'an ISO 8601 date-time with offset, such as "2025-03-01T18:00:00Z"',
};

function problem(e: ErrorObject, file: string): Problem {
  const at = (path: string, expected: string, data?: unknown): Problem =>
    data === undefined ? { file, path, expected } : { file, path, ...found(data), expected };
  const parent = e.parentSchema as SchemaNode | undefined;
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case 'additionalProperties': {
      const key = String(p.additionalProperty);
      const path = `${e.instancePath}/${escapePointer(key)}`;
      const known = Object.keys(parent?.properties ?? {});
      if (known.length === 0) {
        const pattern = Object.keys(parent?.patternProperties ?? {})[0];
        return at(path, `is not a valid key: keys must match ${pattern ?? 'nothing'}`);
      }
      const near = closest(key, known);
      const hint = near ? `did you mean "${near}"?` : `known keys: ${known.join(', ')}`;
      return at(path, `unknown key "${key}"; ${hint}`);
    }
    case 'required': {
      const key = String(p.missingProperty);
      return at(`${e.instancePath}/${escapePointer(key)}`, `missing: the key "${key}" is required`);
    }
    case 'type': {
      // YAML reads `version: 12` as a number; say how to write the string.
      const quote =
        p.type === 'string' && (typeof e.data === 'number' || typeof e.data === 'boolean')
          ? ` (write it in quotes: "${String(e.data)}")`
          : '';
      return at(
        e.instancePath,
        `must be ${TYPE_PHRASES[String(p.type)] ?? String(p.type)}${quote}`,
        e.data,
      );
    }
    case 'const':
      return at(e.instancePath, `must be ${JSON.stringify(p.allowedValue)}`, e.data);
    case 'enum':
      return at(
        e.instancePath,
        `must be one of ${(p.allowedValues as unknown[]).join(', ')}`,
        e.data,
      );
    case 'pattern':
      return at(
        e.instancePath,
        `must be ${parent?.title ? article(parent.title) : `a string matching ${String(p.pattern)}`}`,
        e.data,
      );
    case 'format':
      return at(
        e.instancePath,
        `must be ${FORMAT_PHRASES[String(p.format)] ?? `a ${String(p.format)}`}`,
        e.data,
      );
    case 'minLength':
      return at(
        e.instancePath,
        p.limit === 1 ? 'must not be empty' : `must be at least ${String(p.limit)} characters long`,
        e.data,
      );
    case 'maxLength':
      return {
        file,
        path: e.instancePath,
        found: `${(e.data as string).length} characters`,
        expected: `must be at most ${String(p.limit)} characters long`,
      };
    case 'minimum':
      return at(e.instancePath, `must be at least ${String(p.limit)}`, e.data);
    case 'maximum':
      return at(e.instancePath, `must be at most ${String(p.limit)}`, e.data);
    case 'minItems':
      return at(
        e.instancePath,
        p.limit === 1 ? 'must not be empty' : `must list at least ${String(p.limit)} items`,
      );
    case 'maxItems':
      return at(e.instancePath, `must list at most ${String(p.limit)} items`);
    case 'uniqueItems': {
      const [first, again] = [p.i as number, p.j as number].sort((a, b) => a - b);
      return at(
        `${e.instancePath}/${again}`,
        `must not repeat an item (the same as item ${first})`,
        (e.data as unknown[])[again!],
      );
    }
    case 'minProperties':
    case 'maxProperties': {
      const keys = Object.keys(parent?.properties ?? {});
      return at(e.instancePath, `must give exactly one of ${keys.join(', ')}`);
    }
    default:
      return at(e.instancePath, e.message ?? `must pass ${e.keyword}`, e.data);
  }
}

// ---------------------------------------------------------------- checks beyond the schema

function semanticProblems(kind: DocumentKind, value: unknown, file: string): Problem[] {
  const problems: Problem[] = [];
  const add = (path: string, expected: string, data?: unknown) =>
    problems.push(
      data === undefined ? { file, path, expected } : { file, path, ...found(data), expected },
    );
  if (kind === 'DeploymentSettings') settingsProblems(value, add);
  if (kind === 'AdvertisementPolicy' && isPlainObject(value)) {
    if (value.requireUserPermission === true && value.whenNoAnswer === 'install') {
      add('/whenNoAnswer', PERMISSION_EXPECTED, 'install');
    }
  }
  return problems;
}

/** Nothing is ever installed without a yes: the one rule a document can break in two places. */
export const PERMISSION_EXPECTED =
  'must be one of postpone, decline when requireUserPermission is true';

type Add = (path: string, expected: string, data?: unknown) => void;

function settingsProblems(value: unknown, add: Add): void {
  const options = field(value, 'options');
  if (
    field(options, 'requireUserPermission') === true &&
    field(options, 'whenNoAnswer') === 'install'
  ) {
    add('/options/whenNoAnswer', PERMISSION_EXPECTED, 'install');
  }
  const postponement = field(options, 'postponement');
  const maximum = field(postponement, 'maximum');
  if (
    field(postponement, 'allowed') !== false &&
    typeof maximum === 'string' &&
    DURATION_RE.test(maximum)
  ) {
    if (parseDuration(maximum) === 0) {
      add(
        '/options/postponement/maximum',
        'must be longer than 0 when postponement is allowed (set allowed: false to allow none)',
        maximum,
      );
    }
  }

  const migration = field(value, 'migration');
  list(field(migration, 'ruleSets')).forEach((name, i) => {
    if (typeof name !== 'string' || isBuiltinRuleSet(name)) return;
    const known = builtinRuleSets.map((r) => r.name);
    const near = closest(name, known);
    const note =
      name === 'machine-state' || name === 'client-state'
        ? ' (machine and client state are chosen in machineState and clientState)'
        : near
          ? ` (did you mean "${near}"?)`
          : '';
    add(
      `/migration/ruleSets/${i}`,
      `must be a built-in rule set: ${known.join(', ')}${note}`,
      name,
    );
  });
  const names = new Map<string, number>();
  list(field(migration, 'rules')).forEach((rule, i) => {
    const name = field(rule, 'name');
    if (typeof name === 'string') {
      const first = names.get(name);
      if (first === undefined) names.set(name, i);
      else
        add(`/migration/rules/${i}/name`, `must be unique (rule ${first} has the same name)`, name);
    }
    for (const key of ['include', 'exclude', 'unconditionalExclude']) {
      list(field(rule, key)).forEach((pattern, j) => {
        const why = typeof pattern === 'string' ? patternProblem(pattern) : undefined;
        if (why) add(`/migration/rules/${i}/${key}/${j}`, why, pattern);
      });
    }
  });

  const set = field(field(field(value, 'machineState'), 'ipAddress'), 'set');
  if (isPlainObject(set)) addressProblems(set, add);

  stateStoreSurvivesWipe(value, add);
}

function addressProblems(set: Record<string, unknown>, add: Add): void {
  const base = '/machineState/ipAddress/set';
  const family = typeof set.address === 'string' ? isIP(set.address) : 0;
  if (typeof set.address === 'string' && family === 0) {
    add(`${base}/address`, 'must be an IPv4 or IPv6 address', set.address);
  }
  if (family === 4 && typeof set.prefix === 'number' && set.prefix > 32) {
    add(`${base}/prefix`, 'must be at most 32 for an IPv4 address', set.prefix);
  }
  if (typeof set.gateway === 'string' && isIP(set.gateway) === 0) {
    add(`${base}/gateway`, 'must be an IPv4 or IPv6 address', set.gateway);
  }
  list(set.dns).forEach((dns, i) => {
    if (typeof dns === 'string' && isIP(dns) === 0)
      add(`${base}/dns/${i}`, 'must be an IPv4 or IPv6 address', dns);
  });
}

/** A local state store that the wipe deletes would take the users' data with it. */
function stateStoreSurvivesWipe(value: unknown, add: Add): void {
  const store = field(value, 'stateStore');
  if (field(store, 'type') === 'share') return;
  const given = field(store, 'path');
  const path = typeof given === 'string' ? given : defaults.stateStorePath;
  const wipe = field(value, 'wipe');
  const osPaths = strings(field(wipe, 'osPaths'), defaults.osPaths);
  const keep = strings(field(wipe, 'keep'), defaults.keep);
  const wiped = osPaths.find((p) => within(path, p));
  if (wiped === undefined || keep.some((p) => within(path, p))) return;
  add(
    typeof given === 'string' ? '/stateStore/path' : '/wipe/keep',
    `must keep the local state store ${path}: it is inside wipe.osPaths entry ${wiped}, so the wipe would delete the captured state (add it to wipe.keep, or use a share)`,
    given,
  );
}

// ---------------------------------------------------------------- small helpers

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function field(v: unknown, key: string): unknown {
  return isPlainObject(v) ? v[key] : undefined;
}

function list(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function strings(v: unknown, fallback: readonly string[]): readonly string[] {
  return Array.isArray(v) ? v.filter((s): s is string => typeof s === 'string') : fallback;
}

function nearSecret(path: string): boolean {
  return secretPaths.some((s) => within(s, path) || within(path, s));
}

/** Whether `path` is `dir` or below it, for JSON pointers and file paths alike. */
function within(path: string, dir: string): boolean {
  const d = dir.endsWith('/') ? dir.slice(0, -1) : dir;
  return path === d || path.startsWith(d + '/');
}

/** The value as the user wrote it, in JSON, cut short: enough to recognize it. */
function found(data: unknown): { found: string } | Record<string, never> {
  if (data === undefined) return {};
  const text = JSON.stringify(data);
  return { found: text.length > 80 ? `${text.slice(0, 77)}...` : text };
}

function article(phrase: string): string {
  return /^[aeiou]/i.test(phrase) ? `an ${phrase}` : `a ${phrase}`;
}

function escapePointer(key: string): string {
  return key.replace(/~/g, '~0').replace(/\//g, '~1');
}

function unescapePointer(segment: string): string {
  return segment.replace(/~1/g, '/').replace(/~0/g, '~');
}

/** The known word within a small edit distance of `word`, to suggest for a typo. */
function closest(word: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(2, Math.floor(word.length / 3)) + 1;
  for (const k of known) {
    const d = editDistance(word.toLowerCase(), k.toLowerCase());
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(
        row[j]! + 1,
        next[j - 1]! + 1,
        row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    row = next;
  }
  return row[b.length]!;
}

/** The line of the value at `pointer`, or of its nearest ancestor in the file (keys' lines for mappings). */
function lineOf(doc: Document, lc: LineCounter, pointer: string): number | undefined {
  let node: unknown = doc.contents;
  let offset = isScalar(node) || isMap(node) || isSeq(node) ? node.range?.[0] : undefined;
  for (const raw of pointer.split('/').slice(1)) {
    const segment = unescapePointer(raw);
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === segment);
      if (!pair) break;
      if (isScalar(pair.key)) offset = pair.key.range?.[0] ?? offset;
      node = pair.value;
    } else if (isSeq(node)) {
      const item = node.items[Number(segment)];
      if (!isScalar(item) && !isMap(item) && !isSeq(item)) break;
      offset = item.range?.[0] ?? offset;
      node = item;
    } else break;
  }
  return offset === undefined ? undefined : lc.linePos(offset).line;
}
