import type { Dirent, Stats } from 'node:fs';
import { lstat, readdir, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';

import { ReimageError } from '../errors.js';
import { nameSelected } from './accounts.js';
import type { ItemKind, StateItem, UserAccount } from './model.js';
import {
  defaultRuleSets,
  globRegExp,
  isBuiltinRuleSet,
  parsePattern,
  type RuleComponent,
} from './rule-format.js';
import { builtinComponents, type StateComponent } from './rulesets.js';

/**
 * The rule engine: which files of a machine's tree a deployment captures. The semantics are
 * documented, with examples, in docs/migration-rules.md. In short: a location glob selects the
 * entries it names and, for a folder, everything below it; `~/` is each selected user's
 * home; a file is taken when some component's include covers it and no exclude of that same
 * component is at least as specific; an unconditional exclude from any component wins over
 * every include. Specificity is the number of literal path segments before the first
 * wildcard, then whether the pattern has a type filter.
 *
 * The walk never follows a symlink (symlinks are recorded as items), so nothing outside
 * `root` is read, and it descends only into folders that some include can still match.
 */

export type { StateComponent } from './rulesets.js';

export interface SelectOptions {
  /** The machine's root folder (the old OS as mounted, or "/" on the live system). */
  root: string;
  /** The built-in components named plus inline ones ({@link componentsFor}), plus any machine or client state components. */
  components: readonly StateComponent[];
  /** The users that migrate (already selected): whose homes `~/` stands for. */
  users: readonly UserAccount[];
}

export type ExcludeReason = 'unconditional-exclude' | 'exclude' | 'more-specific-exclude';

export interface Excluded {
  /** Relative to root; a folder stands for everything below it. */
  path: string;
  type: 'file' | 'dir' | 'symlink';
  /** The component whose rule excluded it. */
  component: string;
  /** `exclude`: an exclude as specific as the include; `more-specific-exclude`: more specific. */
  reason: ExcludeReason;
  /** The excluding pattern as written. */
  pattern: string;
}

export interface Skipped {
  path: string;
  /** Sockets, devices and fifos are never captured; unreadable folders and non-UTF-8 names are left out. */
  reason: 'special-file' | 'unreadable' | 'non-utf8-name';
}

export interface Selection {
  /** Sorted by path: files, symlinks and folders (see docs: selected folders and the folders on the way to selected items). */
  items: StateItem[];
  /** What an include covered but an exclude took out, sorted by path. */
  excluded: Excluded[];
  /** Entries an include covered that cannot be captured. */
  skipped: Skipped[];
  /** Total size of the selected files. */
  bytes: number;
}

/**
 * The components of a deployment's migration settings: the named built-in rule sets (the
 * default sets when `ruleSets` is absent; `[]` names none), then the inline rules. Throws
 * REFERENCE_UNKNOWN for a rule set this version does not know (from a newer server), rather
 * than silently migrating less.
 */
export function componentsFor(migration: {
  ruleSets?: readonly string[];
  rules?: readonly RuleComponent[];
}): RuleComponent[] {
  const names = migration.ruleSets ?? defaultRuleSets;
  const out: RuleComponent[] = [];
  for (const name of new Set(names)) {
    if (!isBuiltinRuleSet(name)) {
      throw new ReimageError(
        'REFERENCE_UNKNOWN',
        `unknown migration rule set ${JSON.stringify(name)}: this reimage knows ${Object.keys(builtinComponents).join(', ')}`,
        { details: { kind: 'rule set', name } },
      );
    }
    out.push(...builtinComponents[name]);
  }
  out.push(...(migration.rules ?? []));
  return out;
}

// ---------------------------------------------------------------- compiled patterns

type Segment = { lit: string } | { glob: RegExp } | 'globstar';

type Role = 'include' | 'exclude' | 'unconditional';

interface Rule {
  component: number;
  role: Role;
  pattern: string;
  user?: string;
  segments: Segment[];
  /** File name tests (case-insensitive); undefined: every entry. */
  types?: RegExp[];
  /** Literal segments before the first wildcard, ×2, +1 with a type filter. */
  specificity: number;
}

function splitPath(path: string): string[] {
  return path.split('/').filter((s) => s !== '' && s !== '.');
}

function compileGlob(glob: string, pattern: string, nocase = false): RegExp {
  const re = globRegExp(glob, { nocase });
  if (!re) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `migration rule pattern ${JSON.stringify(pattern)} has a character class that is not valid in ${JSON.stringify(glob)}`,
    );
  }
  return re;
}

function segmentOf(text: string, pattern: string): Segment {
  if (text === '**') return 'globstar';
  if (!/[*?[\\]/.test(text)) return { lit: text };
  return { glob: compileGlob(text, pattern) };
}

/** One rule per pattern, or per selected user's home for a `~/` pattern. */
function compile(
  text: string,
  component: number,
  role: Role,
  homes: readonly Home[],
  userFilter: StateComponent['users'],
): Rule[] {
  const p = parsePattern(text);
  const types = p.types?.map((t) => compileGlob(t, text, true));
  const make = (prefix: string[], rest: string, user?: string): Rule => {
    const segments = [
      ...prefix.map((lit) => ({ lit })),
      ...splitPath(rest).map((s) => segmentOf(s, text)),
    ];
    const wild = segments.findIndex((s) => s === 'globstar' || 'glob' in s);
    const literal = wild < 0 ? segments.length : wild;
    const rule: Rule = {
      component,
      role,
      pattern: text,
      segments,
      specificity: literal * 2 + (types ? 1 : 0),
    };
    if (types) rule.types = types;
    if (user !== undefined) rule.user = user;
    return rule;
  };
  if (!p.inHome) return [make([], p.location)];
  return homes
    .filter((h) => nameSelected(h.user, userFilter?.include, userFilter?.exclude))
    .map((h) => make(h.segments, p.location.slice(2), h.user));
}

// ---------------------------------------------------------------- matching state

/**
 * A rule's progress along the walk: the pattern positions reachable after the path so far,
 * or `above` once it matched a folder above (it then covers everything below). Immutable, so
 * that an `above` state is shared by the whole subtree.
 */
interface Live {
  readonly rule: Rule;
  readonly positions: readonly number[];
  readonly above: boolean;
}

function closure(rule: Rule, positions: number[]): number[] {
  const out: number[] = [];
  for (let p of positions) {
    for (;;) {
      if (!out.includes(p)) out.push(p);
      if (rule.segments[p] !== 'globstar') break;
      p++;
    }
  }
  return out;
}

/** The state after descending into `name`, or undefined when the rule can match nothing there. */
function step(live: Live, name: string): Live | undefined {
  if (live.above) return live;
  const { rule } = live;
  if (live.positions.includes(rule.segments.length)) return { rule, positions: [], above: true };
  const next: number[] = [];
  for (const p of live.positions) {
    const s = rule.segments[p]!;
    if (s === 'globstar') next.push(p);
    else if ('lit' in s ? s.lit === name : s.glob.test(name)) next.push(p + 1);
  }
  return next.length === 0 ? undefined : { rule, positions: closure(rule, next), above: false };
}

/** The rule matches this entry or a folder above it. */
const covers = (l: Live) => l.above || l.positions.includes(l.rule.segments.length);
const typeMatches = (r: Rule, name: string) => !r.types || r.types.some((t) => t.test(name));

/** The most specific rule (the first of equals, i.e. the earliest written). */
function strongest(list: readonly (Live | Rule)[]): Rule | undefined {
  let best: Rule | undefined;
  for (const x of list) {
    const r = 'rule' in x ? x.rule : x;
    if (!best || r.specificity > best.specificity) best = r;
  }
  return best;
}

function reasonOf(b: { include: Rule; exclude: Rule }): ExcludeReason {
  return b.exclude.specificity > b.include.specificity ? 'more-specific-exclude' : 'exclude';
}

// ---------------------------------------------------------------- the walk

interface Home {
  user: string;
  segments: string[];
}

/**
 * Selects the items the components take from the tree at `root` (see the module comment and
 * docs/migration-rules.md). Throws INVALID_ARGUMENT for a malformed pattern,
 * SOURCE_NOT_DIRECTORY when root is not a folder, SOURCE_UNREADABLE on an I/O error other
 * than a permission refusal or an entry that vanished.
 */
export async function selectItems(o: SelectOptions): Promise<Selection> {
  let rootStat: Stats;
  try {
    rootStat = await stat(o.root);
  } catch (e) {
    throw new ReimageError('SOURCE_NOT_DIRECTORY', `${o.root} does not exist`, { cause: e });
  }
  if (!rootStat.isDirectory()) {
    throw new ReimageError('SOURCE_NOT_DIRECTORY', `${o.root} is not a directory`);
  }

  const homes: Home[] = [];
  for (const u of o.users) {
    const segments = await resolveInRoot(o.root, u.home);
    // A home at the root would make "~/**" the whole machine.
    if (segments && segments.length > 0) homes.push({ user: u.name, segments });
  }

  const rules: Rule[] = [];
  const unconditional = new Set<string>();
  o.components.forEach((c, i) => {
    const add = (list: readonly string[] | undefined, role: Role) => {
      for (const text of list ?? []) {
        // The built-in sets share their unconditional excludes: one copy does.
        if (role === 'unconditional') {
          if (unconditional.has(text)) continue;
          unconditional.add(text);
        }
        rules.push(...compile(text, i, role, homes, c.users));
      }
    };
    add(c.include, 'include');
    add(c.exclude, 'exclude');
    add(c.unconditionalExclude, 'unconditional');
  });

  const w = new Walk(o.root, o.components, homes);
  await w.dir(
    '',
    rules.map((rule) => ({ rule, positions: closure(rule, [0]), above: false })),
  );
  const byPath = <T extends { path: string }>(a: T, b: T) =>
    a.path < b.path ? -1 : a.path > b.path ? 1 : 0;
  return {
    items: w.items.sort(byPath),
    excluded: w.excluded.sort(byPath),
    skipped: w.skipped.sort(byPath),
    bytes: w.bytes,
  };
}

/**
 * A path's real location inside `root` as segments, resolving symlinks as if `root` were "/"
 * (an absolute link target starts again at root; ".." stops at root), or undefined when it
 * does not exist or is not a folder.
 */
export async function resolveInRoot(root: string, path: string): Promise<string[] | undefined> {
  const todo = splitPath(path);
  const done: string[] = [];
  let hops = 0;
  while (todo.length > 0) {
    const seg = todo.shift()!;
    if (seg === '..') {
      done.pop();
      continue;
    }
    const here = join(root, ...done, seg);
    try {
      const st = await lstat(here);
      if (st.isSymbolicLink()) {
        if (++hops > 40) return undefined;
        const target = await readlink(here);
        if (target.startsWith('/')) done.length = 0;
        todo.unshift(...splitPath(target));
        continue;
      }
      if (!st.isDirectory()) return undefined;
    } catch {
      return undefined;
    }
    done.push(seg);
  }
  return done;
}

type EntryType = 'file' | 'dir' | 'symlink' | 'special';

function typeOf(e: Dirent | Stats): EntryType | undefined {
  if (e.isFile()) return 'file';
  if (e.isDirectory()) return 'dir';
  if (e.isSymbolicLink()) return 'symlink';
  if (e.isFIFO() || e.isSocket() || e.isBlockDevice() || e.isCharacterDevice()) return 'special';
  return undefined; // the file system did not say (DT_UNKNOWN)
}

const errno = (e: unknown) => (e as NodeJS.ErrnoException).code;

/** A leaf that a component takes, waiting for its metadata. */
interface Taken {
  path: string;
  type: 'file' | 'symlink';
  rule: Rule;
}

class Walk {
  readonly items: StateItem[] = [];
  readonly excluded: Excluded[] = [];
  readonly skipped: Skipped[] = [];
  bytes = 0;

  constructor(
    private readonly root: string,
    private readonly components: readonly StateComponent[],
    private readonly homes: readonly Home[],
  ) {}

  /**
   * Walks the folder `rel` (its rules already stepped to it). Returns the first item taken
   * below it (the folder's own item is named after it), or undefined when none was.
   */
  async dir(rel: string, live: readonly Live[]): Promise<StateItem | undefined> {
    let entries: Dirent[];
    try {
      entries = await readdir(join(this.root, rel), { withFileTypes: true });
    } catch (e) {
      if (errno(e) === 'ENOENT') {
        // readdir decodes names as UTF-8: a name that is not cannot be opened again.
        if (rel.includes('\uFFFD')) this.skipped.push({ path: rel, reason: 'non-utf8-name' });
        return undefined; // else removed while we walk
      }
      return this.unreadable(rel, e);
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

    const found: (StateItem | undefined)[] = [];
    const taken: { at: number; leaf: Taken }[] = [];
    for (const entry of entries) {
      // Step every live rule into the entry; entries that no include reaches are not looked at.
      const next: Live[] = [];
      let include = false;
      for (const l of live) {
        const s = step(l, entry.name);
        if (!s) continue;
        next.push(s);
        if (s.rule.role === 'include') include = true;
      }
      if (!include) continue;
      const path = rel === '' ? entry.name : `${rel}/${entry.name}`;
      let type = typeOf(entry);
      if (type === undefined) {
        try {
          type = typeOf(await lstat(join(this.root, path)));
        } catch (e) {
          if (errno(e) !== 'ENOENT') this.unreadable(path, e);
          continue;
        }
      }
      if (type === 'dir') {
        found.push(await this.folder(path, next));
      } else if (type === 'file' || type === 'symlink') {
        const rule = this.leaf(path, entry.name, type, next);
        if (rule) taken.push({ at: found.length, leaf: { path, type, rule } });
        found.push(undefined);
      } else if (
        next.some((l) => l.rule.role === 'include' && covers(l) && typeMatches(l.rule, entry.name))
      ) {
        this.skipped.push({ path, reason: 'special-file' });
      }
    }
    // Leaves are looked up together, only those taken.
    const items = await Promise.all(taken.map((t) => this.record(t.leaf)));
    taken.forEach((t, i) => (found[t.at] = items[i]));
    return found.find((f) => f !== undefined);
  }

  private async folder(path: string, live: readonly Live[]): Promise<StateItem | undefined> {
    const whole = (l: Live) => !l.rule.types && covers(l);
    const unconditional = live.find((l) => l.rule.role === 'unconditional' && whole(l));
    if (unconditional) {
      this.exclude(path, 'dir', unconditional.rule, 'unconditional-exclude');
      return undefined;
    }
    // Per component: the strongest of its excludes that covers the whole folder, and whether
    // one of its includes is stronger (it may take something here or below).
    const includes = live.filter((l) => l.rule.role === 'include');
    let descend = false;
    let selectedBy: Rule | undefined;
    let beaten: { include: Rule; exclude: Rule } | undefined;
    for (const c of new Set(includes.map((l) => l.rule.component))) {
      const exclude = strongest(
        live.filter((l) => l.rule.component === c && l.rule.role === 'exclude' && whole(l)),
      );
      const bar = exclude?.specificity ?? -1;
      const mine = includes.filter((l) => l.rule.component === c);
      if (mine.some((l) => l.rule.specificity > bar)) descend = true;
      const own = strongest(mine.filter((l) => whole(l) && l.rule.specificity > bar));
      if (own && (!selectedBy || own.specificity > selectedBy.specificity)) selectedBy = own;
      const best = strongest(mine)!;
      if (exclude && (!beaten || best.specificity > beaten.include.specificity)) {
        beaten = { include: best, exclude };
      }
    }
    if (!descend) {
      this.exclude(path, 'dir', beaten!.exclude, reasonOf(beaten!));
      return undefined;
    }
    const below = await this.dir(path, live);
    if (!selectedBy && !below) return undefined;
    let st: Stats;
    try {
      st = await lstat(join(this.root, path));
    } catch (e) {
      if (errno(e) !== 'ENOENT') this.unreadable(path, e);
      return undefined;
    }
    if (!st.isDirectory()) return undefined;
    return this.item(path, 'dir', st, selectedBy ? { rule: selectedBy } : { item: below! });
  }

  /** The include that takes this file or symlink, or undefined (reported when excluded). */
  private leaf(
    path: string,
    name: string,
    type: 'file' | 'symlink',
    live: readonly Live[],
  ): Rule | undefined {
    const applies = live.filter((l) => covers(l) && typeMatches(l.rule, name));
    const includes = applies.filter((l) => l.rule.role === 'include').map((l) => l.rule);
    if (includes.length === 0) return undefined;
    const unconditional = applies.find((l) => l.rule.role === 'unconditional');
    if (unconditional) {
      this.exclude(path, type, unconditional.rule, 'unconditional-exclude');
      return undefined;
    }
    let chosen: Rule | undefined;
    let beaten: { include: Rule; exclude: Rule } | undefined;
    for (const c of new Set(includes.map((r) => r.component))) {
      const include = strongest(includes.filter((r) => r.component === c))!;
      const exclude = strongest(
        applies.filter((l) => l.rule.component === c && l.rule.role === 'exclude'),
      );
      if (!exclude || include.specificity > exclude.specificity) {
        if (!chosen || include.specificity > chosen.specificity) chosen = include;
      } else if (!beaten || include.specificity > beaten.include.specificity) {
        beaten = { include, exclude };
      }
    }
    if (!chosen) this.exclude(path, type, beaten!.exclude, reasonOf(beaten!));
    return chosen;
  }

  private async record(t: Taken): Promise<StateItem | undefined> {
    const full = join(this.root, t.path);
    try {
      const st = await lstat(full);
      if (typeOf(st) !== t.type) return undefined; // replaced while we walk
      const target = t.type === 'symlink' ? await readlink(full) : undefined;
      return this.item(t.path, t.type, st, { rule: t.rule }, target);
    } catch (e) {
      if (errno(e) === 'ENOENT') {
        if (t.path.includes('\uFFFD')) this.skipped.push({ path: t.path, reason: 'non-utf8-name' });
        return undefined;
      }
      return this.unreadable(t.path, e);
    }
  }

  private item(
    path: string,
    type: StateItem['type'],
    st: Stats,
    by: { rule: Rule } | { item: StateItem },
    target?: string,
  ): StateItem {
    const from = 'rule' in by ? this.components[by.rule.component]! : undefined;
    const kind: ItemKind = from ? from.kind : (by as { item: StateItem }).item.kind;
    const item: StateItem = {
      path,
      type,
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtimeMs: st.mtimeMs,
      size: type === 'file' ? st.size : 0,
      kind,
      component: from ? from.name : (by as { item: StateItem }).item.component,
    };
    if (target !== undefined) item.target = target;
    // A folder on the way to a user's item belongs to that user only inside their home.
    const user = 'rule' in by ? by.rule.user : this.inHomeOf(path, by.item.user);
    if (user !== undefined) item.user = user;
    if (type === 'file') this.bytes += st.size;
    this.items.push(item);
    return item;
  }

  private inHomeOf(path: string, user: string | undefined): string | undefined {
    const home = this.homes.find((h) => h.user === user);
    if (!home) return undefined;
    const h = home.segments.join('/');
    return path === h || path.startsWith(`${h}/`) ? user : undefined;
  }

  private exclude(path: string, type: Excluded['type'], rule: Rule, reason: ExcludeReason): void {
    const component = this.components[rule.component]!.name;
    this.excluded.push({ path, type, component, reason, pattern: rule.pattern });
  }

  /** A permission refusal leaves the entry out with a note; any other error stops the walk. */
  private unreadable(path: string, e: unknown): undefined {
    const code = errno(e);
    if (code === 'EACCES' || code === 'EPERM') {
      this.skipped.push({ path, reason: 'unreadable' });
      return undefined;
    }
    throw new ReimageError('SOURCE_UNREADABLE', `cannot read ${join(this.root, path)}`, {
      cause: e,
    });
  }
}
