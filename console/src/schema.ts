/**
 * A small JSON Schema checker for the console's forms: the keywords docs/schemas use (type,
 * required, properties, additionalProperties, enum, const, pattern, min/max, items, anyOf,
 * $ref to $defs). It answers as the user types; the server's validation stays the judge.
 */
export interface Schema {
  type?: string | string[];
  properties?: Record<string, Schema>;
  required?: string[];
  additionalProperties?: boolean | Schema;
  enum?: unknown[];
  const?: unknown;
  pattern?: string;
  minLength?: number;
  maxLength?: number;
  minimum?: number;
  maximum?: number;
  minItems?: number;
  maxItems?: number;
  items?: Schema;
  anyOf?: Schema[];
  oneOf?: Schema[];
  $ref?: string;
  $defs?: Record<string, Schema>;
  definitions?: Record<string, Schema>;
  title?: string;
  description?: string;
  format?: string;
}

export interface Issue {
  path: string;
  message: string;
}

function typeOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function typeMatches(want: string, got: string): boolean {
  return want === got || (want === 'number' && got === 'integer');
}

export function validate(root: Schema, value: unknown): Issue[] {
  const out: Issue[] = [];
  const resolve = (s: Schema): Schema => {
    if (!s.$ref) return s;
    const name = s.$ref.replace(/^#\/(\$defs|definitions)\//, '');
    return root.$defs?.[name] ?? root.definitions?.[name] ?? {};
  };
  const walk = (raw: Schema, v: unknown, path: string): void => {
    const s = resolve(raw);
    const alts = s.anyOf ?? s.oneOf;
    if (alts) {
      const results = alts.map((a) => {
        const sub: Issue[] = [];
        const saved = out.length;
        walk(a, v, path);
        sub.push(...out.splice(saved));
        return sub;
      });
      if (!results.some((r) => r.length === 0)) {
        const consts = alts.map(resolve).filter((a) => 'const' in a);
        if (consts.length === alts.length)
          out.push({
            path,
            message: `must be one of ${consts.map((c) => JSON.stringify(c.const)).join(', ')}`,
          });
        else {
          // The branch of the value's own type explains best.
          const best = results.reduce((a, b) => (b.length < a.length ? b : a));
          out.push(...best);
        }
      }
    }
    const t = typeOf(v);
    if (s.type) {
      const types = Array.isArray(s.type) ? s.type : [s.type];
      if (!types.some((w) => typeMatches(w, t))) {
        out.push({ path, message: `must be ${types.join(' or ')}` });
        return;
      }
    }
    if ('const' in s && JSON.stringify(s.const) !== JSON.stringify(v) && !alts)
      out.push({ path, message: `must be ${JSON.stringify(s.const)}` });
    if (s.enum && !s.enum.some((e) => JSON.stringify(e) === JSON.stringify(v)))
      out.push({
        path,
        message: `must be one of ${s.enum.map((e) => JSON.stringify(e)).join(', ')}`,
      });
    if (typeof v === 'string') {
      if (s.minLength !== undefined && v.length < s.minLength)
        out.push({
          path,
          message:
            s.minLength === 1
              ? 'must not be empty'
              : `must have at least ${s.minLength} characters`,
        });
      if (s.maxLength !== undefined && v.length > s.maxLength)
        out.push({ path, message: `must have at most ${s.maxLength} characters` });
      if (s.pattern && !matches(s.pattern, v))
        out.push({
          path,
          message: s.title
            ? `must be ${/^[aeiou]/i.test(s.title) ? 'an' : 'a'} ${s.title}`
            : `must match ${s.pattern}`,
        });
    }
    if (typeof v === 'number') {
      if (s.minimum !== undefined && v < s.minimum)
        out.push({ path, message: `must be ≥ ${s.minimum}` });
      if (s.maximum !== undefined && v > s.maximum)
        out.push({ path, message: `must be ≤ ${s.maximum}` });
    }
    if (Array.isArray(v)) {
      if (s.minItems !== undefined && v.length < s.minItems)
        out.push({ path, message: `needs at least ${s.minItems} item(s)` });
      if (s.maxItems !== undefined && v.length > s.maxItems)
        out.push({ path, message: `takes at most ${s.maxItems} item(s)` });
      if (s.items) v.forEach((x, i) => walk(s.items!, x, `${path}/${i}`));
    }
    if (t === 'object') {
      const o = v as Record<string, unknown>;
      for (const r of s.required ?? [])
        if (!(r in o)) out.push({ path: `${path}/${r}`, message: 'is required' });
      for (const [k, x] of Object.entries(o)) {
        const p = s.properties?.[k];
        if (p) walk(p, x, `${path}/${k}`);
        else if (s.additionalProperties === false)
          out.push({ path: `${path}/${k}`, message: `unknown property '${k}'` });
        else if (typeof s.additionalProperties === 'object')
          walk(s.additionalProperties, x, `${path}/${k}`);
      }
    }
  };
  walk(root, value, '');
  return out;
}

/** False when `v` fails the pattern; a pattern this browser cannot compile passes (the server checks). */
function matches(pattern: string, v: string): boolean {
  try {
    return new RegExp(pattern).test(v);
  } catch {
    return true;
  }
}
