/**
 * The collection rule language: a small boolean language over machine inventory, e.g.
 * `os = "debian" and disk_free_gb >= 20 and site in ["paris", "lyon"]`. The server parses a
 * rule when a collection is saved (so mistakes are reported with their position and nothing
 * is stored) and evaluates the compiled predicate against each machine's facts.
 *
 * The language, its fields and its semantics are documented in docs/collections.md; a test
 * fails when that page's field table drifts from `ruleFields`.
 */
import assert from 'node:assert/strict';

import { ReimageError } from '../errors.js';

// ---------------------------------------------------------------------------------------
// Fields

/** The type of an inventory field; `string[]` fields hold several values (addresses, tags). */
export type RuleFieldType = 'number' | 'string' | 'boolean' | 'string[]';

/** One inventory field a rule may name. */
export interface RuleFieldSpec {
  readonly type: RuleFieldType;
  readonly description: string;
  /** The values are IP addresses, so `in subnet "cidr"` applies. */
  readonly addresses?: boolean;
}

/**
 * The inventory fields a rule may name, in the order the docs list them. Sizes are in GiB
 * (2^30 bytes, as operating systems show them) and may be fractional.
 */
export const ruleFields = Object.freeze({
  name: { type: 'string', description: 'The machine name (host name).' },
  guid: { type: 'string', description: 'The GUID the machine was given at enrollment.' },
  site: { type: 'string', description: 'The site the machine belongs to.' },
  os: {
    type: 'string',
    description:
      'Operating system family, lower case (os-release `ID`): `debian`, `ubuntu`, `windows`.',
  },
  os_version: {
    type: 'string',
    description: 'Operating system version (os-release `VERSION_ID`): `12`, `22.04`.',
  },
  arch: {
    type: 'string',
    description: 'Processor architecture as the client reports it: `x86_64`, `aarch64`.',
  },
  model: { type: 'string', description: 'Hardware model (firmware product name).' },
  manufacturer: { type: 'string', description: 'Hardware manufacturer (firmware vendor).' },
  serial: { type: 'string', description: 'Hardware serial number.' },
  disk_size_gb: {
    type: 'number',
    description: 'Size of the disk that holds the operating system, in GiB.',
  },
  disk_free_gb: {
    type: 'number',
    description: 'Free space on the file system that holds the operating system, in GiB.',
  },
  memory_gb: { type: 'number', description: 'Installed memory, in GiB.' },
  cpu_count: { type: 'number', description: 'Number of logical processors.' },
  mac: {
    type: 'string[]',
    description:
      'MAC addresses of the network interfaces, lower case with colons: `52:54:00:12:34:56`.',
  },
  ip: {
    type: 'string[]',
    description: 'IPv4 and IPv6 addresses of the network interfaces.',
    addresses: true,
  },
  client_version: { type: 'string', description: 'Version of the reimage client: `0.3.1`.' },
  image: {
    type: 'string',
    description: 'Id of the image last applied to the machine (64 hex digits).',
  },
  image_name: {
    type: 'string',
    description: 'Name of the image last applied to the machine, as it was named then.',
  },
  last_contact_days: {
    type: 'number',
    description: 'Days since the machine last contacted the server (fractional: 0.5 is 12 hours).',
  },
  tags: { type: 'string[]', description: 'Labels an administrator gave the machine.' },
} as const satisfies Record<string, RuleFieldSpec>);

/** The name of a field a rule may use. */
export type RuleFieldName = keyof typeof ruleFields;

type FactOf<T extends RuleFieldType> = T extends 'number'
  ? number
  : T extends 'string'
    ? string
    : T extends 'boolean'
      ? boolean
      : readonly string[];

/**
 * What the catalog knows about one machine, as rules see it. Any field may be missing or
 * null (not yet reported); a value of the wrong type counts as missing.
 */
export type MachineFacts = {
  readonly [K in RuleFieldName]?: FactOf<(typeof ruleFields)[K]['type']> | null;
};

/** Limits that keep parsing and evaluation cheap whatever the rule. */
export const ruleLimits = Object.freeze({ length: 4096, depth: 32, listItems: 1000 });

// ---------------------------------------------------------------------------------------
// Syntax tree

/** A literal in a rule. */
export type RuleValue = string | number | boolean;

/** The comparison operators. On strings, `<` and friends use version order. */
export type RuleCompareOp = '=' | '!=' | '<' | '<=' | '>' | '>=';

/**
 * A parsed rule. It holds no source positions, so `parseRule(formatRule(ast))` deep-equals
 * `ast`; `and` and `or` have two or more operands and never directly contain their own kind.
 */
export type RuleAst =
  | { readonly kind: 'or'; readonly operands: readonly RuleAst[] }
  | { readonly kind: 'and'; readonly operands: readonly RuleAst[] }
  | { readonly kind: 'not'; readonly operand: RuleAst }
  | { readonly kind: 'exists'; readonly field: RuleFieldName }
  | {
      readonly kind: 'compare';
      readonly field: RuleFieldName;
      readonly op: RuleCompareOp;
      readonly value: RuleValue;
    }
  | {
      readonly kind: 'in';
      readonly field: RuleFieldName;
      readonly negated: boolean;
      readonly values: readonly RuleValue[];
    }
  | {
      readonly kind: 'match';
      readonly field: RuleFieldName;
      readonly negated: boolean;
      readonly pattern: string;
    }
  | { readonly kind: 'has'; readonly field: RuleFieldName; readonly value: string }
  | {
      readonly kind: 'subnet';
      readonly field: RuleFieldName;
      readonly negated: boolean;
      readonly cidr: string;
    };

// ---------------------------------------------------------------------------------------
// Errors

function lineAt(text: string, position: number): { line: number; start: number; end: number } {
  let line = 1;
  let start = 0;
  for (let i = 0; i < position && i < text.length; i++) {
    if (text[i] === '\n') {
      line++;
      start = i + 1;
    }
  }
  let end = text.indexOf('\n', start);
  if (end < 0) end = text.length;
  if (end > start && text[end - 1] === '\r') end--;
  return { line, start, end };
}

const excerptWidth = 80;

/** The line of the rule holding `position`, with carets under `length` characters. */
function excerpt(text: string, position: number, length: number, start: number, end: number) {
  let from = start;
  let to = end;
  let prefix = '';
  let suffix = '';
  if (to - from > excerptWidth) {
    from = Math.max(start, Math.min(position - 30, end - excerptWidth));
    to = Math.min(end, from + excerptWidth);
    if (from > start) prefix = '...';
    if (to < end) suffix = '...';
  }
  const shown = prefix + text.slice(from, to).replace(/[\t\r\v\f]/g, ' ') + suffix;
  const offset = prefix.length + position - from;
  const carets = Math.max(1, Math.min(length, to - position));
  return `  ${shown}\n  ${' '.repeat(offset)}${'^'.repeat(carets)}`;
}

interface Problem {
  /** What is wrong, without the position: "unknown field 'dsk_free_gb'". */
  problem: string;
  /** What the parser wanted there, for `details.expected`. */
  expected: string;
  /** What to do, appended after the position. */
  hint?: string;
  found?: string;
  suggestion?: string;
}

function ruleError(text: string, position: number, length: number, p: Problem): ReimageError {
  const { line, start, end } = lineAt(text, position);
  const column = position - start + 1;
  const where = text.includes('\n') ? `line ${line}, column ${column}` : `column ${column}`;
  const message =
    `${p.problem} at ${where}${p.hint === undefined ? '' : `; ${p.hint}`}\n` +
    excerpt(text, position, length, start, end);
  const details: Record<string, unknown> = { position, line, column, expected: p.expected };
  if (p.found !== undefined) details.found = p.found;
  if (p.suggestion !== undefined) details.suggestion = p.suggestion;
  return new ReimageError('RULE_INVALID', message, { details });
}

/** Optimal string alignment distance (Levenshtein plus adjacent swaps). */
function editDistance(a: string, b: string): number {
  const rows: number[][] = [];
  for (let i = 0; i <= a.length; i++) {
    const row: number[] = [i];
    for (let j = 1; j <= b.length; j++) {
      if (i === 0) {
        row.push(j);
        continue;
      }
      const prev = rows[i - 1]!;
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d = Math.min(d, rows[i - 2]![j - 2]! + 1);
      }
      row.push(d);
    }
    rows.push(row);
  }
  return rows[a.length]![b.length]!;
}

function closest(
  word: string,
  candidates: readonly string[],
  maxDistance = word.length <= 3 ? 1 : Math.max(2, Math.floor(word.length / 3)),
): string | undefined {
  const w = word.toLowerCase();
  let best: string | undefined;
  let bestDistance = maxDistance + 1;
  for (const c of candidates) {
    const d = editDistance(w, c);
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best;
}

/** Words people reach for that are not field names. */
const fieldSynonyms: Readonly<Record<string, RuleFieldName>> = {
  hostname: 'name',
  host: 'name',
  computer_name: 'name',
  computername: 'name',
  id: 'guid',
  uuid: 'guid',
  memory: 'memory_gb',
  ram: 'memory_gb',
  mem: 'memory_gb',
  cpus: 'cpu_count',
  cpu: 'cpu_count',
  cores: 'cpu_count',
  tag: 'tags',
  label: 'tags',
  labels: 'tags',
  ips: 'ip',
  ip_address: 'ip',
  ip_addresses: 'ip',
  address: 'ip',
  addresses: 'ip',
  macs: 'mac',
  mac_address: 'mac',
  mac_addresses: 'mac',
  vendor: 'manufacturer',
  make: 'manufacturer',
  serial_number: 'serial',
  platform: 'os',
  architecture: 'arch',
  free_space: 'disk_free_gb',
  disk_free: 'disk_free_gb',
  disk_size: 'disk_size_gb',
  last_seen: 'last_contact_days',
  last_contact: 'last_contact_days',
  image_id: 'image',
};

const fieldNames = Object.keys(ruleFields) as RuleFieldName[];

function isFieldName(word: string): word is RuleFieldName {
  return Object.hasOwn(ruleFields, word);
}

function fieldSpec(name: RuleFieldName): RuleFieldSpec {
  return ruleFields[name];
}

// ---------------------------------------------------------------------------------------
// Tokens

type Token =
  | { kind: 'word'; text: string; pos: number; end: number }
  | { kind: 'string'; text: string; value: string; pos: number; end: number }
  | { kind: 'number'; text: string; value: number; pos: number; end: number }
  | { kind: 'punct'; text: string; pos: number; end: number }
  | { kind: 'end'; text: ''; pos: number; end: number };

const keywords = new Set([
  'and',
  'or',
  'not',
  'in',
  'has',
  'exists',
  'subnet',
  'true',
  'false',
  'null',
]);

const isWordStart = (c: string) => /[A-Za-z_]/.test(c);
// `-` and `.` are never part of a valid word; reading them lets `disk-free-gb` and
// `os.version` be reported as one unknown field with a suggestion.
const isWordChar = (c: string) => /[A-Za-z0-9_.-]/.test(c);
const isDigit = (c: string | undefined) => c !== undefined && c >= '0' && c <= '9';

/** Operators people bring from other languages, and what to write instead. */
const foreignOperators: ReadonlyArray<[string, string]> = [
  ['===', "use '=' to compare"],
  ['!==', "use '!=' to compare"],
  ['==', "use '=' to compare"],
  ['=~', "use '~' for a glob match"],
  ['=<', "use '<='"],
  ['=>', "use '>='"],
  ['<>', "use '!='"],
  ['&&', "use 'and'"],
  ['||', "use 'or'"],
  ['&', "use 'and'"],
  ['|', "use 'or'"],
];

/** Operator words from SQL and elsewhere, and what to write instead. */
const foreignWords: Readonly<Record<string, string>> = {
  is: "use '=' to compare, or 'exists field' to test that it is reported",
  eq: "use '='",
  ne: "use '!='",
  like: 'use \'~\' with * and ? ("deb*")',
  ilike: 'use \'~\' with * and ? ("deb*"); it ignores case',
  matches: "use '~' with * and ?",
  contains: 'use \'has\' for a list field, or ~ "*text*" for a string',
  between: 'use field >= low and field <= high',
};

const operatorTokens = ['!=', '<=', '>=', '!~', '=', '<', '>', '~', '(', ')', '[', ']', ','];

/** A lazy tokenizer, so that the earliest problem in the rule is the one reported. */
class Lexer {
  private pos = 0;
  private peeked: Token | undefined;

  constructor(private readonly text: string) {}

  peek(): Token {
    this.peeked ??= this.read();
    return this.peeked;
  }

  next(): Token {
    const t = this.peek();
    this.peeked = undefined;
    return t;
  }

  private fail(pos: number, length: number, p: Problem): never {
    throw ruleError(this.text, pos, length, p);
  }

  private read(): Token {
    const s = this.text;
    while (this.pos < s.length && /\s/.test(s[this.pos]!)) this.pos++;
    const pos = this.pos;
    if (pos >= s.length) return { kind: 'end', text: '', pos, end: pos };
    const c = s[pos]!;

    if (c === '"') return this.readString(pos);
    if (isDigit(c) || (c === '-' && isDigit(s[pos + 1]))) return this.readNumber(pos);
    if (isWordStart(c)) {
      let end = pos + 1;
      while (end < s.length && isWordChar(s[end]!)) end++;
      this.pos = end;
      return { kind: 'word', text: s.slice(pos, end), pos, end };
    }
    for (const [op, hint] of foreignOperators) {
      if (s.startsWith(op, pos)) {
        this.fail(pos, op.length, {
          problem: `'${op}' is not an operator`,
          expected: 'an operator',
          found: op,
          hint,
        });
      }
    }
    for (const op of operatorTokens) {
      if (s.startsWith(op, pos)) {
        this.pos = pos + op.length;
        return { kind: 'punct', text: op, pos, end: this.pos };
      }
    }
    if (c === '!') {
      this.fail(pos, 1, {
        problem: "'!' alone is not an operator",
        expected: 'an operator',
        found: '!',
        hint: "use 'not' to negate, '!=' or '!~' to compare",
      });
    }
    if (c === "'" || c === '\u2018' || c === '\u2019' || c === '\u201c' || c === '\u201d') {
      this.fail(pos, 1, {
        problem: `unexpected ${c}`,
        expected: 'a value',
        found: c,
        hint: 'write strings in straight double quotes: "debian"',
      });
    }
    if (c === '.' && isDigit(s[pos + 1])) {
      this.fail(pos, 1, {
        problem: 'a number cannot start with a point',
        expected: 'a value',
        found: c,
        hint: 'write 0.5, not .5',
      });
    }
    const cp = String.fromCodePoint(s.codePointAt(pos)!);
    const ascii = ({ '≥': '>=', '≤': '<=', '≠': '!=', '¬': 'not' } as Record<string, string>)[cp];
    return this.fail(pos, cp.length, {
      problem: `unexpected character '${cp}'`,
      expected: 'a field name, an operator or a value',
      found: cp,
      hint: ascii === undefined ? undefined : `write '${ascii}'`,
    });
  }

  private readString(pos: number): Token {
    const s = this.text;
    let value = '';
    let i = pos + 1;
    for (;;) {
      if (i >= s.length) {
        this.fail(pos, 1, {
          problem: 'the string is not closed',
          expected: 'a closing "',
          found: 'the end of the rule',
          hint: 'add the closing ", or write \\" for a quote inside the string',
        });
      }
      const c = s[i]!;
      if (c === '"') break;
      if (c === '\n' || c === '\r') {
        this.fail(pos, 1, {
          problem: 'the string is not closed before the end of the line',
          expected: 'a closing "',
          found: 'a line break',
          hint: 'a string stays on one line; write \\n for a line break inside it',
        });
      }
      if (c !== '\\') {
        value += c;
        i++;
        continue;
      }
      const e = s[i + 1];
      const simple: Record<string, string> = { '"': '"', '\\': '\\', n: '\n', t: '\t', r: '\r' };
      if (e !== undefined && Object.hasOwn(simple, e)) {
        value += simple[e];
        i += 2;
      } else if (e === 'u' && /^[0-9A-Fa-f]{4}$/.test(s.slice(i + 2, i + 6))) {
        value += String.fromCharCode(parseInt(s.slice(i + 2, i + 6), 16));
        i += 6;
      } else {
        this.fail(i, e === undefined ? 1 : 2, {
          problem: `unknown escape '\\${e ?? ''}' in a string`,
          expected: 'one of \\" \\\\ \\n \\t \\r \\uXXXX',
          found: `\\${e ?? ''}`,
          hint: 'write \\\\ for a backslash',
        });
      }
    }
    this.pos = i + 1;
    return { kind: 'string', text: s.slice(pos, this.pos), value, pos, end: this.pos };
  }

  private readNumber(pos: number): Token {
    const s = this.text;
    const re = /-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/y;
    re.lastIndex = pos;
    const m = re.exec(s)!;
    const end = pos + m[0].length;
    const after = s[end];
    if (after !== undefined && (isWordChar(after) || after === '.')) {
      let tail = end;
      while (tail < s.length && (isWordChar(s[tail]!) || s[tail] === '.')) tail++;
      this.fail(pos, tail - pos, {
        problem: `'${s.slice(pos, tail)}' is not a number`,
        expected: 'a number',
        found: s.slice(pos, tail),
        hint: 'numbers have no unit (sizes are in GiB), and versions are strings: "12.1"',
      });
    }
    const value = Number(m[0]);
    if (!Number.isFinite(value)) {
      this.fail(pos, end - pos, {
        problem: `the number ${m[0]} is too large`,
        expected: 'a number',
        found: m[0],
      });
    }
    this.pos = end;
    // -0 would print as 0 and break `parseRule(formatRule(ast))` deep equality.
    return { kind: 'number', text: m[0], value: value === 0 ? 0 : value, pos, end };
  }
}

// ---------------------------------------------------------------------------------------
// Parser

const startOfTerm = "a field name, 'not', 'exists' or '('";

function shown(t: Token): string {
  return t.kind === 'end' ? 'the end of the rule' : `'${t.text}'`;
}

function typeName(type: RuleFieldType): string {
  return type === 'string[]' ? 'a list of strings' : `a ${type}`;
}

function valueType(v: RuleValue): 'number' | 'string' | 'boolean' {
  return typeof v as 'number' | 'string' | 'boolean';
}

function operatorsFor(spec: RuleFieldSpec): string[] {
  switch (spec.type) {
    case 'number':
      return ['=', '!=', '<', '<=', '>', '>=', 'in', 'not in'];
    case 'string':
      return ['=', '!=', '<', '<=', '>', '>=', 'in', 'not in', '~', '!~'];
    case 'boolean':
      return ['=', '!='];
    case 'string[]':
      return spec.addresses ? ['has', '~', '!~', 'in subnet', 'not in subnet'] : ['has', '~', '!~'];
  }
}

class Parser {
  private readonly lexer: Lexer;

  constructor(private readonly text: string) {
    this.lexer = new Lexer(text);
  }

  private fail(t: { pos: number; end: number }, p: Problem): never {
    throw ruleError(this.text, t.pos, t.end - t.pos, p);
  }

  private unexpected(t: Token, expected: string, extra: Partial<Problem> = {}): never {
    const p: Problem = { problem: `expected ${expected}, found ${shown(t)}`, expected };
    p.found = t.kind === 'end' ? 'the end of the rule' : t.text;
    if (t.kind === 'end') {
      p.problem = 'the rule ends too early';
      p.hint = `expected ${expected}${extra.hint === undefined ? '' : `; ${extra.hint}`}`;
      this.fail(t, { ...p, ...extra, hint: p.hint });
    }
    this.fail(t, { ...p, ...extra });
  }

  private isWord(t: Token, word: string): boolean {
    return t.kind === 'word' && t.text.toLowerCase() === word;
  }

  private isPunct(t: Token, text: string): boolean {
    return t.kind === 'punct' && t.text === text;
  }

  parse(): RuleAst {
    if (this.text.length > ruleLimits.length) {
      this.fail(
        { pos: ruleLimits.length, end: ruleLimits.length + 1 },
        {
          problem: `the rule is longer than ${ruleLimits.length} characters`,
          expected: 'the end of the rule',
          hint: 'split it, or use a tag or static members for long lists of machines',
        },
      );
    }
    if (this.lexer.peek().kind === 'end') {
      this.fail(this.lexer.peek(), {
        problem: 'the rule is empty',
        expected: startOfTerm,
        hint: 'write a condition such as os = "debian"; a collection without a rule has only its static members',
      });
    }
    const ast = this.parseOr(0);
    const t = this.lexer.peek();
    if (t.kind !== 'end') {
      if (this.isPunct(t, ')')) {
        this.fail(t, {
          problem: "')' has no matching '('",
          expected: "'and', 'or' or the end of the rule",
          found: ')',
        });
      }
      this.unexpected(
        t,
        "'and', 'or' or the end of the rule",
        this.wordSuggestion(t, ['and', 'or']),
      );
    }
    return ast;
  }

  /** A hint for a misspelt keyword ('adn'), or for a condition that lacks 'and' before it. */
  private wordSuggestion(t: Token, words: readonly string[]): Partial<Problem> {
    if (t.kind !== 'word') return {};
    if (isFieldName(t.text.toLowerCase()) && words.includes('and')) {
      return { hint: "join conditions with 'and' or 'or'" };
    }
    const s = closest(t.text, words, 1);
    return s === undefined ? {} : { hint: `did you mean '${s}'?`, suggestion: s };
  }

  private parseOr(depth: number): RuleAst {
    const operands = [this.parseAnd(depth)];
    while (this.isWord(this.lexer.peek(), 'or')) {
      this.lexer.next();
      operands.push(this.parseAnd(depth));
    }
    return operands.length === 1
      ? operands[0]!
      : { kind: 'or', operands: operands.flatMap((o) => (o.kind === 'or' ? o.operands : [o])) };
  }

  private parseAnd(depth: number): RuleAst {
    const operands = [this.parseNot(depth)];
    while (this.isWord(this.lexer.peek(), 'and')) {
      this.lexer.next();
      operands.push(this.parseNot(depth));
    }
    return operands.length === 1
      ? operands[0]!
      : { kind: 'and', operands: operands.flatMap((o) => (o.kind === 'and' ? o.operands : [o])) };
  }

  private enter(t: Token, depth: number): number {
    if (depth + 1 > ruleLimits.depth) {
      this.fail(t, {
        problem: `the rule nests deeper than ${ruleLimits.depth} levels of parentheses and 'not'`,
        expected: 'a shallower rule',
        found: t.text,
        hint: 'simplify it',
      });
    }
    return depth + 1;
  }

  private parseNot(depth: number): RuleAst {
    const t = this.lexer.peek();
    if (this.isWord(t, 'not')) {
      this.lexer.next();
      return { kind: 'not', operand: this.parseNot(this.enter(t, depth)) };
    }
    return this.parsePrimary(depth);
  }

  private parsePrimary(depth: number): RuleAst {
    const t = this.lexer.peek();
    if (this.isPunct(t, '(')) {
      this.lexer.next();
      const inner = this.parseOr(this.enter(t, depth));
      const close = this.lexer.peek();
      if (!this.isPunct(close, ')')) {
        const col = t.pos - lineAt(this.text, t.pos).start + 1;
        this.unexpected(close, `')' to close the '(' at column ${col}`, {
          expected: "')'",
          ...this.wordSuggestion(close, ['and', 'or']),
        });
      }
      this.lexer.next();
      return inner;
    }
    if (this.isWord(t, 'exists')) {
      this.lexer.next();
      return { kind: 'exists', field: this.parseField() };
    }
    return this.parseComparison(this.parseField());
  }

  private parseField(): RuleFieldName {
    const t = this.lexer.next();
    if (t.kind === 'string' || t.kind === 'number') {
      this.unexpected(t, startOfTerm, {
        hint: 'a condition starts with the field name: os = "debian"',
      });
    }
    if (t.kind !== 'word') this.unexpected(t, startOfTerm);
    const word = t.text.toLowerCase();
    if (keywords.has(word)) {
      this.unexpected(t, startOfTerm, {
        hint:
          word === 'true' || word === 'false'
            ? 'a rule starts with a field name: exists guid matches every machine'
            : undefined,
      });
    }
    if (isFieldName(word)) return word;
    const suggestion = fieldSynonyms[word] ?? closest(word, fieldNames);
    this.fail(t, {
      problem: `unknown field '${t.text}'`,
      expected: 'a field name',
      found: t.text,
      hint:
        suggestion === undefined
          ? `the fields are ${fieldNames.join(', ')}`
          : `did you mean '${suggestion}'?`,
      suggestion,
    });
  }

  private parseComparison(field: RuleFieldName): RuleAst {
    const spec = fieldSpec(field);
    const ops = operatorsFor(spec);
    const expectedOp = `an operator (${ops.join(', ')})`;
    const t = this.lexer.next();

    const refuse = (op: Token, hint: string, name = op.text): never =>
      this.fail(op, {
        problem: `'${name}' does not apply to ${typeName(spec.type).replace(/^an? /, 'the ')} '${field}'`,
        expected: expectedOp,
        found: op.text,
        hint,
      });
    const listHint = `use ${field} has "..." to test for one value, or ${field} ~ "glob"`;

    if (t.kind === 'punct' && ['=', '!=', '<', '<=', '>', '>='].includes(t.text)) {
      const op = t.text as RuleCompareOp;
      if (spec.type === 'string[]') refuse(t, listHint);
      if (spec.type === 'boolean' && op !== '=' && op !== '!=') {
        refuse(t, "use '=' or '!='");
      }
      const value = this.parseValue(field, spec, op);
      return { kind: 'compare', field, op, value };
    }

    if (t.kind === 'punct' && (t.text === '~' || t.text === '!~')) {
      if (spec.type !== 'string' && spec.type !== 'string[]') {
        refuse(t, "compare it with '=', '<', '>' or 'in'");
      }
      const p = this.lexer.next();
      if (p.kind !== 'string') {
        this.unexpected(p, 'a glob pattern in double quotes', { expected: 'a string' });
      }
      return { kind: 'match', field, negated: t.text === '!~', pattern: p.value };
    }

    if (this.isWord(t, 'has')) {
      if (spec.type !== 'string[]') {
        refuse(t, `'has' looks inside a list: use ${field} = "..." or ${field} ~ "glob"`);
      }
      const value = this.parseValue(field, spec, 'has');
      return { kind: 'has', field, value: value as string };
    }

    const negated = this.isWord(t, 'not');
    if (negated) {
      const n = this.lexer.next();
      if (!this.isWord(n, 'in')) {
        this.unexpected(n, "'in' after 'not'", {
          hint: `to negate a condition, put 'not' before it: not (${field} ...)`,
        });
      }
    }
    if (negated || this.isWord(t, 'in')) {
      const next = this.lexer.peek();
      if (this.isWord(next, 'subnet')) {
        if (!spec.addresses) {
          const users = fieldNames.filter((f) => fieldSpec(f).addresses).join(', ');
          refuse(
            next,
            `it needs a field of IP addresses: ${users}`,
            negated ? 'not in subnet' : 'in subnet',
          );
        }
        this.lexer.next();
        return { kind: 'subnet', field, negated, cidr: this.parseCidr() };
      }
      if (spec.type === 'string[]') {
        refuse(t, listHint, negated ? 'not in' : 'in');
      }
      return { kind: 'in', field, negated, values: this.parseList(field, spec) };
    }

    if (this.isWord(t, 'exists')) {
      this.fail(t, {
        problem: "'exists' comes before the field",
        expected: expectedOp,
        found: t.text,
        hint: `write exists ${field}`,
      });
    }
    const foreign = t.kind === 'word' ? foreignWords[t.text.toLowerCase()] : undefined;
    return this.unexpected(
      t,
      expectedOp,
      foreign === undefined ? this.wordSuggestion(t, ['has', 'in', 'not']) : { hint: foreign },
    );
  }

  private parseValue(field: RuleFieldName, spec: RuleFieldSpec, op: string): RuleValue {
    const t = this.lexer.next();
    const want = spec.type === 'string[]' ? 'string' : spec.type;
    const expected = `a ${want}`;
    let value: RuleValue;
    if (t.kind === 'string' || t.kind === 'number') {
      value = t.value;
    } else if (this.isWord(t, 'true') || this.isWord(t, 'false')) {
      value = t.text.toLowerCase() === 'true';
    } else if (this.isWord(t, 'null')) {
      return this.fail(t, {
        problem: 'null is not a value',
        expected,
        found: t.text,
        hint:
          op === '!='
            ? `write exists ${field} for machines that report it`
            : `write not exists ${field} for machines that do not report it`,
      });
    } else if (t.kind === 'word') {
      const w = t.text.toLowerCase();
      return this.fail(t, {
        problem: isFieldName(w)
          ? `'${t.text}' is a field; a rule compares a field with a value, not with another field`
          : `expected ${expected}, found '${t.text}'`,
        expected,
        found: t.text,
        hint: want === 'string' ? `write strings in double quotes: "${t.text}"` : undefined,
      });
    } else {
      return this.unexpected(t, expected);
    }
    if (valueType(value) !== want) {
      this.fail(t, {
        problem: `expected ${expected} for '${field}', found ${typeName(valueType(value)).replace(/^an? /, 'the ')} ${t.text}`,
        expected,
        found: t.text,
        hint:
          want === 'string'
            ? `write strings in double quotes: "${t.text}"`
            : want === 'number'
              ? `write a number without quotes: ${field} ${op} 20`
              : `write true or false`,
      });
    }
    return value;
  }

  private parseList(field: RuleFieldName, spec: RuleFieldSpec): RuleValue[] {
    const open = this.lexer.next();
    if (!this.isPunct(open, '[')) {
      this.unexpected(open, "'[' to start a list of values", {
        expected: "'['",
        hint: `write ${field} in [a, b, c]`,
      });
    }
    const values: RuleValue[] = [];
    for (;;) {
      const t = this.lexer.peek();
      if (this.isPunct(t, ']')) break;
      if (values.length === ruleLimits.listItems) {
        this.fail(t, {
          problem: `the list has more than ${ruleLimits.listItems} values`,
          expected: "']'",
          found: t.text,
          hint: 'use a tag, or static members of the collection, for long lists of machines',
        });
      }
      values.push(this.parseValue(field, spec, 'in'));
      const sep = this.lexer.peek();
      if (this.isPunct(sep, ',')) {
        this.lexer.next();
        continue;
      }
      if (!this.isPunct(sep, ']')) {
        const col = open.pos - lineAt(this.text, open.pos).start + 1;
        this.unexpected(sep, `',' or ']' to close the list at column ${col}`, {
          expected: "',' or ']'",
        });
      }
    }
    this.lexer.next();
    return values;
  }

  private parseCidr(): string {
    const t = this.lexer.next();
    if (t.kind !== 'string') {
      this.unexpected(t, 'a subnet in double quotes ("10.1.0.0/16" or "fd00::/8")', {
        expected: 'a string',
      });
    }
    const r = parseSubnet(t.value);
    if ('problem' in r) this.fail(t, { ...r, expected: 'a subnet', found: t.text });
    return t.value;
  }
}

/**
 * Parses a rule into its syntax tree, checking field names and value types.
 * @throws ReimageError RULE_INVALID with `details: { position, line, column, expected, found?, suggestion? }`
 */
export function parseRule(text: string): RuleAst {
  return new Parser(text).parse();
}

// ---------------------------------------------------------------------------------------
// Canonical text

function formatString(s: string): string {
  let out = '"';
  for (const c of s) {
    if (c === '"' || c === '\\') out += `\\${c}`;
    else if (c === '\n') out += '\\n';
    else if (c === '\t') out += '\\t';
    else if (c === '\r') out += '\\r';
    else if (c < ' ' || c === '\u007f') {
      out += `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`;
    } else out += c;
  }
  return `${out}"`;
}

function formatValue(v: RuleValue): string {
  return typeof v === 'string' ? formatString(v) : String(v);
}

/**
 * The canonical text of a rule: lower-case keywords and fields, single spaces, parentheses
 * only where precedence needs them (and always after `not`, except `not exists`).
 * `parseRule(formatRule(ast))` deep-equals `ast`.
 */
export function formatRule(ast: RuleAst): string {
  switch (ast.kind) {
    case 'or':
      return ast.operands
        .map((o) => (o.kind === 'or' ? `(${formatRule(o)})` : formatRule(o)))
        .join(' or ');
    case 'and':
      return ast.operands
        .map((o) => (o.kind === 'or' || o.kind === 'and' ? `(${formatRule(o)})` : formatRule(o)))
        .join(' and ');
    case 'not':
      return ast.operand.kind === 'exists'
        ? `not ${formatRule(ast.operand)}`
        : `not (${formatRule(ast.operand)})`;
    case 'exists':
      return `exists ${ast.field}`;
    case 'compare':
      return `${ast.field} ${ast.op} ${formatValue(ast.value)}`;
    case 'in':
      return `${ast.field} ${ast.negated ? 'not in' : 'in'} [${ast.values.map(formatValue).join(', ')}]`;
    case 'match':
      return `${ast.field} ${ast.negated ? '!~' : '~'} ${formatString(ast.pattern)}`;
    case 'has':
      return `${ast.field} has ${formatString(ast.value)}`;
    case 'subnet':
      return `${ast.field} ${ast.negated ? 'not in' : 'in'} subnet ${formatString(ast.cidr)}`;
  }
}

/** The fields a rule reads, sorted and without repeats: the inventory changes that can change its result. */
export function ruleFieldsUsed(ast: RuleAst): RuleFieldName[] {
  const used = new Set<RuleFieldName>();
  const walk = (n: RuleAst): void => {
    if (n.kind === 'or' || n.kind === 'and') n.operands.forEach(walk);
    else if (n.kind === 'not') walk(n.operand);
    else used.add(n.field);
  };
  walk(ast);
  return [...used].sort();
}

// ---------------------------------------------------------------------------------------
// Evaluation

/** A compiled rule: true when the machine is a member. */
export type RulePredicate = (facts: MachineFacts) => boolean;

type Scalar = string | number | boolean;

/** The fact as the field's type says, or undefined when missing, null or of another type. */
function readScalar(
  facts: MachineFacts,
  field: RuleFieldName,
  type: RuleFieldType,
): Scalar | undefined {
  const v: unknown = (facts as Record<string, unknown>)[field];
  if (type === 'number') return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
  return typeof v === type ? (v as Scalar) : undefined;
}

function readList(facts: MachineFacts, field: RuleFieldName): string[] | undefined {
  const v: unknown = (facts as Record<string, unknown>)[field];
  return Array.isArray(v) ? v.filter((e): e is string => typeof e === 'string') : undefined;
}

const fold = (s: string) => s.toLowerCase();

/**
 * Version order: runs of digits compare as numbers, the rest as text, so "9" < "12" and
 * "22.04" < "22.10". Ties (such as "01" and "1") fall back to plain text order.
 */
export function compareVersions(a: string, b: string): number {
  const pa = a.match(/\d+|\D+/g) ?? [];
  const pb = b.match(/\d+|\D+/g) ?? [];
  for (let i = 0; i < pa.length && i < pb.length; i++) {
    const x = pa[i]!;
    const y = pb[i]!;
    if (isDigit(x[0]) && isDigit(y[0])) {
      const xs = x.replace(/^0+(?=\d)/, '');
      const ys = y.replace(/^0+(?=\d)/, '');
      if (xs.length !== ys.length) return xs.length < ys.length ? -1 : 1;
      if (xs !== ys) return xs < ys ? -1 : 1;
    } else if (x !== y) {
      return x < y ? -1 : 1;
    }
  }
  if (pa.length !== pb.length) return pa.length < pb.length ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

function ordered(op: RuleCompareOp, c: number): boolean {
  switch (op) {
    case '=':
      return c === 0;
    case '!=':
      return c !== 0;
    case '<':
      return c < 0;
    case '<=':
      return c <= 0;
    case '>':
      return c > 0;
    case '>=':
      return c >= 0;
  }
}

type GlobPart = { star: true } | { star: false; any: boolean; char: string };

/**
 * A case-insensitive glob matcher: `*` any run, `?` one character, `\` takes the next
 * character literally. Matching is O(pattern × text) whatever the pattern; no RegExp, so a
 * rule cannot make the server backtrack for long.
 */
export function globMatcher(pattern: string): (text: string) => boolean {
  const parts: GlobPart[] = [];
  const chars = [...fold(pattern)];
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (c === '*') {
      if (parts.at(-1)?.star !== true) parts.push({ star: true });
    } else if (c === '?') parts.push({ star: false, any: true, char: '' });
    else if (c === '\\' && i + 1 < chars.length)
      parts.push({ star: false, any: false, char: chars[++i]! });
    else parts.push({ star: false, any: false, char: c });
  }
  return (text: string) => {
    const s = [...fold(text)];
    let p = 0;
    let i = 0;
    let starP = -1;
    let starI = 0;
    while (i < s.length) {
      const part = parts[p];
      if (part !== undefined && !part.star && (part.any || part.char === s[i])) {
        p++;
        i++;
      } else if (part !== undefined && part.star) {
        starP = p++;
        starI = i;
      } else if (starP >= 0) {
        p = starP + 1;
        i = ++starI;
      } else {
        return false;
      }
    }
    while (parts[p]?.star === true) p++;
    return p === parts.length;
  };
}

function compile(ast: RuleAst): RulePredicate {
  switch (ast.kind) {
    case 'or': {
      const ps = ast.operands.map(compile);
      return (f) => ps.some((p) => p(f));
    }
    case 'and': {
      const ps = ast.operands.map(compile);
      return (f) => ps.every((p) => p(f));
    }
    case 'not': {
      const p = compile(ast.operand);
      return (f) => !p(f);
    }
    case 'exists': {
      const { field } = ast;
      const type = fieldSpec(field).type;
      return type === 'string[]'
        ? (f) => readList(f, field) !== undefined
        : (f) => readScalar(f, field, type) !== undefined;
    }
    case 'compare': {
      const { field, op, value } = ast;
      const type = fieldSpec(field).type;
      if (typeof value === 'string') {
        const want = fold(value);
        return (f) => {
          const v = readScalar(f, field, type);
          if (typeof v !== 'string') return false;
          if (op === '=' || op === '!=') return (fold(v) === want) === (op === '=');
          return ordered(op, compareVersions(fold(v), want));
        };
      }
      return (f) => {
        const v = readScalar(f, field, type);
        if (v === undefined) return false;
        return ordered(op, v === value ? 0 : v < value ? -1 : 1);
      };
    }
    case 'in': {
      const { field, negated } = ast;
      const type = fieldSpec(field).type;
      const set = new Set(ast.values.map((v) => (typeof v === 'string' ? fold(v) : v)));
      return (f) => {
        const v = readScalar(f, field, type);
        if (v === undefined) return false;
        return set.has(typeof v === 'string' ? fold(v) : v) !== negated;
      };
    }
    case 'match': {
      const { field, negated } = ast;
      const type = fieldSpec(field).type;
      const matches = globMatcher(ast.pattern);
      if (type === 'string[]') {
        return (f) => {
          const list = readList(f, field);
          return list !== undefined && list.some(matches) !== negated;
        };
      }
      return (f) => {
        const v = readScalar(f, field, type);
        return typeof v === 'string' && matches(v) !== negated;
      };
    }
    case 'has': {
      const { field } = ast;
      const want = fold(ast.value);
      return (f) => readList(f, field)?.some((e) => fold(e) === want) ?? false;
    }
    case 'subnet': {
      const { field, negated } = ast;
      const subnet = parseSubnet(ast.cidr);
      assert(!('problem' in subnet), `parseRule checked the subnet ${ast.cidr}`);
      const shift = BigInt(128 - subnet.bits);
      const network = subnet.base >> shift;
      const inside = (text: string): boolean => {
        const a = parseInventoryAddress(text);
        return a !== undefined && a >> shift === network;
      };
      return (f) => {
        const list = readList(f, field);
        return list !== undefined && list.some(inside) !== negated;
      };
    }
  }
}

/**
 * Parses a rule and compiles it into a predicate over one machine's facts.
 * @throws ReimageError RULE_INVALID, as `parseRule`
 */
export function compileRule(text: string): RulePredicate {
  return compile(parseRule(text));
}

// ---------------------------------------------------------------------------------------
// IP addresses. Every address is a 128-bit number; IPv4 addresses are IPv4-mapped IPv6
// (::ffff:a.b.c.d), so "10.0.0.0/8" also matches ::ffff:10.1.2.3.

const v4MappedPrefix = 0xffffn << 32n;

function ipv4Number(text: string): number | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let n = 0;
  for (const p of parts) {
    if (!/^(0|[1-9]\d{0,2})$/.test(p) || Number(p) > 255) return undefined;
    n = n * 256 + Number(p);
  }
  return n;
}

function parseIpv4(text: string): bigint | undefined {
  const n = ipv4Number(text);
  return n === undefined ? undefined : BigInt(n);
}

function parseIpv6(text: string): bigint | undefined {
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  // Groups as 4 hex digits each, turned into one BigInt at the end: far cheaper than
  // BigInt arithmetic per group when a rule runs over many machines.
  const groups = (half: string): string[] | undefined => {
    if (half === '') return [];
    const out: string[] = [];
    const parts = half.split(':');
    for (let i = 0; i < parts.length; i++) {
      const p = parts[i]!;
      if (i === parts.length - 1 && p.includes('.')) {
        const v4 = ipv4Number(p);
        if (v4 === undefined) return undefined;
        out.push(v4.toString(16).padStart(8, '0'));
      } else if (/^[0-9A-Fa-f]{1,4}$/.test(p)) {
        out.push(p.padStart(4, '0'));
      } else {
        return undefined;
      }
    }
    return out;
  };
  const head = groups(halves[0]!);
  const tail = halves.length === 2 ? groups(halves[1]!) : [];
  if (head === undefined || tail === undefined) return undefined;
  // An embedded IPv4 part may only end the address.
  if (halves.length === 2 && halves[0]!.includes('.')) return undefined;
  const headHex = head.join('');
  const tailHex = tail.join('');
  const length = headHex.length + tailHex.length;
  if (halves.length === 2 ? length > 28 : length !== 32) return undefined;
  return BigInt(`0x${headHex}${'0'.repeat(32 - length)}${tailHex}`);
}

/** An address as written in a rule: IPv4 dotted quad or IPv6, no zone, no prefix. */
function parseAddress(text: string): { value: bigint; v4: boolean } | undefined {
  const v4 = parseIpv4(text);
  if (v4 !== undefined) return { value: v4MappedPrefix | v4, v4: true };
  const v6 = text.includes(':') ? parseIpv6(text) : undefined;
  return v6 === undefined ? undefined : { value: v6, v4: false };
}

/** An address as a client reports it, which may carry a zone (`%eth0`) or a prefix (`/24`). */
function parseInventoryAddress(text: string): bigint | undefined {
  return parseAddress(text.trim().replace(/[%/].*$/, ''))?.value;
}

function formatIpv6(value: bigint): string {
  const groups = Array.from({ length: 8 }, (_, i) =>
    Number((value >> BigInt(112 - 16 * i)) & 0xffffn),
  );
  // RFC 5952: compress the longest run of two or more zero groups, the first one on a tie.
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLength))}`;
}

function formatIpv4(value: bigint): string {
  return [24n, 16n, 8n, 0n].map((s) => String((value >> s) & 0xffn)).join('.');
}

/**
 * A subnet in CIDR form ("10.1.0.0/16", "fd00::/8"; an address alone is a subnet of one),
 * as a 128-bit base and prefix length, or a message saying what is wrong with it.
 */
function parseSubnet(
  text: string,
): { base: bigint; bits: number } | { problem: string; hint?: string } {
  const slash = text.indexOf('/');
  const addressText = slash < 0 ? text : text.slice(0, slash);
  const address = parseAddress(addressText);
  if (address === undefined) {
    return {
      problem: `'${addressText}' is not an IPv4 or IPv6 address`,
      hint: 'write a subnet as "10.1.0.0/16" or "fd00::/8"',
    };
  }
  const max = address.v4 ? 32 : 128;
  let bits = max;
  if (slash >= 0) {
    const b = text.slice(slash + 1);
    if (!/^(0|[1-9]\d{0,2})$/.test(b) || Number(b) > max) {
      return {
        problem: `'/${b}' is not a prefix length for an ${address.v4 ? 'IPv4' : 'IPv6'} subnet`,
        hint: `write 0 to ${max}`,
      };
    }
    bits = Number(b);
  }
  const bits128 = address.v4 ? bits + 96 : bits;
  const hostMask = (1n << BigInt(128 - bits128)) - 1n;
  if ((address.value & hostMask) !== 0n) {
    const network = address.value & ~hostMask;
    const fixed = address.v4 ? formatIpv4(network & 0xffffffffn) : formatIpv6(network);
    return {
      problem: `'${text}' has address bits set after the first ${bits}`,
      hint: `did you mean "${fixed}/${bits}"?`,
    };
  }
  return { base: address.value, bits: bits128 };
}
