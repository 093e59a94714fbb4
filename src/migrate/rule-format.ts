import { Type, type Static } from '@sinclair/typebox';

import { ReimageError } from '../errors.js';

/**
 * The YAML format of one migration rule component: what a deployment captures from the old
 * OS and restores onto the new one. Deployment settings name built-in rule sets and may add
 * inline components in this same format.
 *
 * A pattern is a location glob, optionally followed by the file types it is limited to in
 * brackets: `~/Documents/** [*.odt, *.pdf]`. `~/` is each selected user's home folder.
 */

const EXAMPLE = '"~/Documents/** [*.odt, *.pdf]"';

const Pattern = Type.String({ minLength: 1, maxLength: 4096 });
const UserGlob = Type.String({ minLength: 1, maxLength: 256 });

export const RuleComponent = Type.Object(
  {
    name: Type.String({
      title: 'rule name: 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit',
      pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$',
    }),
    kind: Type.Union([
      Type.Literal('os-settings'),
      Type.Literal('app-settings'),
      Type.Literal('user-files'),
    ]),
    include: Type.Array(Pattern, {
      minItems: 1,
      description: 'What is captured: location globs with optional [file types].',
    }),
    exclude: Type.Optional(
      Type.Array(Pattern, { description: 'Left out of what this component includes.' }),
    ),
    unconditionalExclude: Type.Optional(
      Type.Array(Pattern, {
        description:
          'Never captured, even when another component or rule set includes it (caches, secrets of other systems).',
      }),
    ),
    users: Type.Optional(
      Type.Object(
        {
          include: Type.Optional(Type.Array(UserGlob)),
          exclude: Type.Optional(Type.Array(UserGlob)),
        },
        {
          additionalProperties: false,
          description:
            'Whose home folders "~/" stands for: user name globs (default: every local user with a home folder).',
        },
      ),
    ),
  },
  { additionalProperties: false },
);
export type RuleComponent = Static<typeof RuleComponent>;

/**
 * The built-in rule sets a deployment can name. Machine and client state are not rule sets
 * here: the `machineState` and `clientState` sections of the deployment settings choose them
 * item by item, so there is one switch per thing.
 */
export const builtinRuleSets = [
  {
    name: 'user-accounts',
    description:
      'Local users and groups (uid/gid 1000 and up) so that restored files keep their owners.',
  },
  {
    name: 'user-desktop-settings',
    description: 'Desktop, shell and application settings in home folders (~/.config, dotfiles).',
  },
  {
    name: 'browser-profiles',
    description: 'Firefox and Chromium profiles: bookmarks, passwords, extensions.',
  },
  { name: 'ssh-gpg-keys', description: 'SSH and GnuPG keys and configuration (~/.ssh, ~/.gnupg).' },
  {
    name: 'network-shares',
    description:
      'Mounted network shares (CIFS/NFS fstab entries, credential files) and saved network connections.',
  },
  { name: 'user-documents', description: 'Documents and desktop files in home folders.' },
  { name: 'user-pictures-media', description: 'Pictures, music and videos in home folders.' },
  {
    name: 'data-outside-home',
    description: 'User-owned data outside home folders (/srv, /data, /opt/data), not OS files.',
  },
] as const;

export type BuiltinRuleSetName = (typeof builtinRuleSets)[number]['name'];

/**
 * The rule sets a deployment applies when its settings name none: all but
 * `data-outside-home` (src/package/schema.ts takes its `defaults.ruleSets` from here).
 */
export const defaultRuleSets: readonly BuiltinRuleSetName[] = [
  'user-accounts',
  'user-desktop-settings',
  'browser-profiles',
  'ssh-gpg-keys',
  'network-shares',
  'user-documents',
  'user-pictures-media',
];

export function isBuiltinRuleSet(name: string): name is BuiltinRuleSetName {
  return builtinRuleSets.some((r) => r.name === name);
}

/** A parsed pattern: where to look (`~/` = each selected user's home), and which file types. */
export interface RulePattern {
  location: string;
  inHome: boolean;
  /** File name globs such as `*.pdf`; undefined means every file. */
  types?: string[];
}

// The type list is the last bracket group, set off by whitespace, so a glob class such as
// `/data/[ab]*` stays part of the location.
const TYPES_RE = /^(.*?)\s+\[([^[\]]*)\]$/s;
const TYPE_RE = /^[^/\s,[\]]+$/;

/** What is wrong with `text` as a pattern ("must ..."), or undefined when it is valid. */
export function patternProblem(text: string): string | undefined {
  const p = splitPattern(text);
  return typeof p === 'string' ? p : undefined;
}

/** Splits "location [types]"; throws INVALID_ARGUMENT saying what is wrong when it is malformed. */
export function parsePattern(text: string): RulePattern {
  const p = splitPattern(text);
  if (typeof p === 'string') {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `migration rule pattern ${JSON.stringify(text)} ${p}`,
    );
  }
  return p;
}

function splitPattern(text: string): RulePattern | string {
  const m = TYPES_RE.exec(text.trim());
  const location = (m ? m[1]! : text).trim();
  const types = m ? m[2]!.split(',').map((t) => t.trim()) : undefined;
  if (types && !types.every((t) => TYPE_RE.test(t))) {
    return `must list its file types as comma-separated file name globs in the final brackets, such as ${EXAMPLE}`;
  }
  const inHome = location.startsWith('~/');
  if (!inHome && !location.startsWith('/')) {
    return `must start with "/" or "~/" (a home folder), such as ${EXAMPLE}`;
  }
  if (location.split('/').includes('..')) return 'must not have ".." segments';
  if (location.includes('\0')) return 'must not contain NUL characters';
  for (const glob of [...location.split('/'), ...(types ?? [])]) {
    if (globRegExp(glob) === undefined) {
      return `has a character class that is not valid in ${JSON.stringify(glob)} (such as [a-z] or [!.])`;
    }
  }
  return types ? { location, inHome, types } : { location, inHome };
}

/**
 * One path segment's glob as a regular expression: `*` any characters, `?` one character,
 * `[a-z]`, `[!.]` (or `[^.]`) a class, `\x` the character x; a `[` without its `]` is
 * literal. Wildcards match a leading "." too. Undefined when a class is not valid (`[z-a]`).
 */
export function globRegExp(glob: string, options: { nocase?: boolean } = {}): RegExp | undefined {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]!;
    if (c === '\\' && i + 1 < glob.length) {
      re += escapeRegExp(glob[++i]!);
    } else if (c === '*') {
      re += '.*';
    } else if (c === '?') {
      re += '.';
    } else if (c === '[') {
      // A "]" right after "[" or "[!" belongs to the class.
      let j = i + 1;
      if (glob[j] === '!' || glob[j] === '^') j++;
      if (glob[j] === ']') j++;
      const close = glob.indexOf(']', j);
      if (close < 0) {
        re += '\\[';
        continue;
      }
      let body = glob.slice(i + 1, close);
      const negate = body.startsWith('!') || body.startsWith('^');
      if (negate) body = body.slice(1);
      re += `[${negate ? '^' : ''}${body.replace(/[\\\]^[]/g, '\\$&')}]`;
      i = close;
    } else {
      re += escapeRegExp(c);
    }
  }
  try {
    return new RegExp(`^${re}$`, options.nocase ? 'isu' : 'su');
  } catch {
    return undefined;
  }
}

function escapeRegExp(c: string): string {
  return /[\\^$.*+?()[\]{}|/]/.test(c) ? `\\${c}` : c;
}
