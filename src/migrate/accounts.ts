import { lstat, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

import { ReimageError } from '../errors.js';
import type { GroupAccount, UserAccount } from './model.js';
import { globRegExp } from './rule-format.js';

/**
 * Local accounts: read from the old OS's /etc/passwd, /etc/shadow, /etc/group and
 * /etc/gshadow, chosen by a policy, and merged into the new OS's files with the same uids
 * and gids, so that restored files keep their owners.
 *
 * Merge rule: an account keeps its uid (and a group its gid). When the new OS already has
 * the same name with the same id, the old OS's entry replaces it (it is the user's account:
 * their password hash, shell, GECOS). When the name has another id on the new OS, or the id
 * belongs to another name there, nothing is merged: the merge fails with every conflict
 * listed, before anything is written. The new OS's own entries are kept as they are.
 */

/** The account files of one tree, as text (absent files as undefined). */
export interface AccountFiles {
  passwd: string;
  shadow?: string;
  group: string;
  gshadow?: string;
}

/** Which users migrate. Globs match user names; ranges are inclusive. */
export interface UserPolicy {
  include?: string[];
  exclude?: string[];
  /** Default 1000: system accounts stay with the OS. */
  minUid?: number;
  /** Default 59999 (Debian's last dynamically allocated uid; 65534 is nobody). */
  maxUid?: number;
  /** Only users with something in their home modified this recently. */
  activeWithinDays?: number;
}

export const DEFAULT_MIN_UID = 1000;
export const DEFAULT_MAX_UID = 59999;

/** Reads and parses the account files under `root` (a missing passwd or group reads as empty). */
export async function readAccounts(
  root: string,
): Promise<{ files: AccountFiles; users: UserAccount[]; groups: GroupAccount[] }> {
  const [passwd, shadow, group, gshadow] = await Promise.all(
    ['passwd', 'shadow', 'group', 'gshadow'].map((f) => readOptional(join(root, 'etc', f))),
  );
  const files: AccountFiles = { passwd: passwd ?? '', group: group ?? '' };
  if (shadow !== undefined) files.shadow = shadow;
  if (gshadow !== undefined) files.gshadow = gshadow;
  return { files, ...parseAccounts(files) };
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ReimageError('SOURCE_UNREADABLE', `cannot read ${path}`, { cause: e });
  }
}

interface PasswdLine {
  name: string;
  password: string;
  uid: number;
  gid: number;
  gecos: string;
  home: string;
  shell: string;
}

interface GroupLine {
  name: string;
  password: string;
  gid: number;
  members: string[];
}

const ID_RE = /^(0|[1-9]\d{0,9})$/;
const MAX_ID = 4294967294; // (uid_t)-1 means "no id"

function parseId(text: string | undefined): number | undefined {
  if (text === undefined || !ID_RE.test(text)) return undefined;
  const n = Number(text);
  return n <= MAX_ID ? n : undefined;
}

/** Non-comment lines that are entries (NIS "+"/"-" compat lines are not accounts). */
function entries(text: string): string[][] {
  return lines(text)
    .filter((l) => l !== '' && !l.startsWith('#') && !l.startsWith('+') && !l.startsWith('-'))
    .map((l) => l.split(':'));
}

function lines(text: string): string[] {
  const all = text.split('\n');
  if (all[all.length - 1] === '') all.pop();
  return all;
}

function parsePasswd(text: string): PasswdLine[] {
  const out: PasswdLine[] = [];
  for (const f of entries(text)) {
    const uid = parseId(f[2]);
    const gid = parseId(f[3]);
    if (f.length !== 7 || !f[0] || uid === undefined || gid === undefined) continue;
    out.push({
      name: f[0],
      password: f[1]!,
      uid,
      gid,
      gecos: f[4]!,
      home: f[5]!,
      shell: f[6]!,
    });
  }
  return out;
}

function parseGroup(text: string): GroupLine[] {
  const out: GroupLine[] = [];
  for (const f of entries(text)) {
    const gid = parseId(f[2]);
    if (f.length !== 4 || !f[0] || gid === undefined) continue;
    out.push({ name: f[0], password: f[1]!, gid, members: splitMembers(f[3]!) });
  }
  return out;
}

function splitMembers(field: string): string[] {
  return field === '' ? [] : field.split(',').filter((m) => m !== '');
}

/** name → the fields after the name, for /etc/shadow and /etc/gshadow. */
function parseByName(text: string | undefined): Map<string, string> {
  const out = new Map<string, string>();
  for (const l of lines(text ?? '')) {
    const colon = l.indexOf(':');
    if (colon <= 0 || l.startsWith('#') || l.startsWith('+') || l.startsWith('-')) continue;
    const name = l.slice(0, colon);
    if (!out.has(name)) out.set(name, l.slice(colon + 1));
  }
  return out;
}

/**
 * Parses account files into users and groups. Malformed lines are skipped (they are kept
 * verbatim when these files are the target of a merge). The first entry of a name wins, as
 * in glibc.
 */
export function parseAccounts(files: AccountFiles): {
  users: UserAccount[];
  groups: GroupAccount[];
} {
  const shadow = parseByName(files.shadow);
  const groupLines = firstByName(parseGroup(files.group));
  const groups: GroupAccount[] = groupLines.map((g) => ({
    name: g.name,
    gid: g.gid,
    members: g.members,
  }));
  const users = firstByName(parsePasswd(files.passwd)).map((p) => {
    const u: UserAccount = {
      name: p.name,
      uid: p.uid,
      gid: p.gid,
      gecos: p.gecos,
      home: p.home,
      shell: p.shell,
      groups: groups.filter((g) => g.members.includes(p.name)).map((g) => g.name),
    };
    const s = shadow.get(p.name);
    if (s !== undefined) u.shadow = s;
    return u;
  });
  return { users, groups };
}

function firstByName<T extends { name: string }>(list: T[]): T[] {
  const seen = new Set<string>();
  return list.filter((x) => !seen.has(x.name) && seen.add(x.name));
}

/**
 * Whether `name` is matched by one of `include` (all when absent) and none of `exclude`:
 * globs as in rule patterns (`*`, `?`, `[a-z]`, `[!x]`). INVALID_ARGUMENT for a bad class.
 */
export function nameSelected(name: string, include?: string[], exclude?: string[]): boolean {
  const m = (glob: string) => {
    const re = globRegExp(glob);
    if (!re) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `user name glob ${JSON.stringify(glob)} has a character class that is not valid`,
      );
    }
    return re.test(name);
  };
  return (include === undefined || include.some(m)) && !(exclude ?? []).some(m);
}

/**
 * The users that migrate: uid in range, name matched by the globs and, with
 * `activeWithinDays`, something in the home (under `root`) modified within that many days of
 * `now`. Sorted by uid, then name.
 */
export async function selectUsers(
  root: string,
  users: readonly UserAccount[],
  policy: UserPolicy = {},
  now: number = Date.now(),
): Promise<UserAccount[]> {
  const minUid = policy.minUid ?? DEFAULT_MIN_UID;
  const maxUid = policy.maxUid ?? DEFAULT_MAX_UID;
  const out: UserAccount[] = [];
  for (const u of users) {
    if (u.uid < minUid || u.uid > maxUid) continue;
    if (!nameSelected(u.name, policy.include, policy.exclude)) continue;
    if (policy.activeWithinDays !== undefined) {
      const since = now - policy.activeWithinDays * 86_400_000;
      if (!(await modifiedSince(join(root, u.home), since))) continue;
    }
    out.push(u);
  }
  return out.sort((a, b) => a.uid - b.uid || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Whether anything at or below `path` (symlinks not followed) has an mtime ≥ `since`. */
async function modifiedSince(path: string, since: number): Promise<boolean> {
  let st;
  try {
    st = await lstat(path);
  } catch {
    return false; // no home, no activity
  }
  if (st.mtimeMs >= since) return true;
  if (!st.isDirectory()) return false;
  let names: string[];
  try {
    names = await readdir(path);
  } catch {
    return false;
  }
  for (const n of names) {
    if (await modifiedSince(join(path, n), since)) return true;
  }
  return false;
}

/** One reason the accounts cannot be merged. */
export interface AccountConflict {
  kind: 'user' | 'group';
  name: string;
  id: number;
  /** `name-has-other-id`: the new OS has this name with `existing.id`; `id-taken`: `existing.name` has this id there. */
  problem: 'name-has-other-id' | 'id-taken';
  existing: { name: string; id: number };
}

export interface AccountMerge {
  files: Required<AccountFiles>;
  /** Users and groups added or replaced, by name. */
  users: string[];
  groups: string[];
  /** What was left out and why (a membership of a group the new OS lacks, an unknown shell). */
  notes: string[];
}

export interface MergeOptions {
  /** Groups in this gid range with a migrating member migrate too (default 1000-59999). */
  minGid?: number;
  maxGid?: number;
  /** The new OS's /etc/shells: a user whose shell it does not list keeps it, with a note. */
  shells?: string;
}

/**
 * Every conflict between the migrating users (and their groups) and the new OS's accounts.
 * Empty when {@link mergeAccounts} would succeed; phase 1 can check this against the image's
 * files before anything is wiped.
 */
export function findAccountConflicts(
  target: AccountFiles,
  users: readonly UserAccount[],
  groups: readonly GroupAccount[],
  options: MergeOptions = {},
): AccountConflict[] {
  return plan(target, users, groups, options).conflicts;
}

/**
 * Merges the migrating `users` (and the groups they need, from the old OS's `groups`) into
 * the new OS's account files and returns the new texts; the caller writes them (shadow and
 * gshadow with mode 0640, group shadow). Throws ALREADY_EXISTS, with `details.conflicts`,
 * when an account's name or id is taken on the new OS (see the rule above); INVALID_ARGUMENT
 * for an account that cannot be written (root, a ":" or newline in a field).
 */
export function mergeAccounts(
  target: AccountFiles,
  users: readonly UserAccount[],
  groups: readonly GroupAccount[],
  options: MergeOptions = {},
): AccountMerge {
  const p = plan(target, users, groups, options);
  if (p.conflicts.length > 0) {
    throw new ReimageError(
      'ALREADY_EXISTS',
      `cannot merge accounts into the new OS: ${p.conflicts.map(describeConflict).join('; ')}. Change the uid/gid on the old OS or the image, or leave these users out`,
      { details: { conflicts: p.conflicts } },
    );
  }
  return p.merge;
}

export function describeConflict(c: AccountConflict): string {
  const id = c.kind === 'user' ? 'uid' : 'gid';
  return c.problem === 'id-taken'
    ? `${c.kind} ${c.name} (${id} ${c.id}): the new OS has ${id} ${c.id} as "${c.existing.name}"`
    : `${c.kind} ${c.name} (${id} ${c.id}): the new OS has "${c.name}" as ${id} ${c.existing.id}`;
}

function checkFields(kind: string, name: string, fields: (string | number)[]): void {
  for (const f of fields) {
    if (typeof f === 'string' && /[:\n\r\0]/.test(f)) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `${kind} ${JSON.stringify(name)} has a field with ":", a newline or NUL, which /etc files cannot hold`,
      );
    }
    if (typeof f === 'number' && !(Number.isInteger(f) && f >= 0 && f <= MAX_ID)) {
      throw new ReimageError('INVALID_ARGUMENT', `${kind} ${JSON.stringify(name)} has id ${f}`);
    }
  }
  if (name === '' || name.startsWith('+') || name.startsWith('-') || name.startsWith('#')) {
    throw new ReimageError('INVALID_ARGUMENT', `${kind} name ${JSON.stringify(name)} is not valid`);
  }
}

function plan(
  target: AccountFiles,
  users: readonly UserAccount[],
  groups: readonly GroupAccount[],
  options: MergeOptions,
): { conflicts: AccountConflict[]; merge: AccountMerge } {
  const minGid = options.minGid ?? DEFAULT_MIN_UID;
  const maxGid = options.maxGid ?? DEFAULT_MAX_UID;
  const shells =
    options.shells === undefined ? undefined : new Set(entriesOfShells(options.shells));
  const tUsers = firstByName(parsePasswd(target.passwd));
  const tGroups = firstByName(parseGroup(target.group));
  const conflicts: AccountConflict[] = [];
  const notes: string[] = [];

  for (const u of users) {
    checkFields('user', u.name, [u.name, u.gecos, u.home, u.shell, u.uid, u.gid]);
    if (u.shadow !== undefined && (/[\n\r\0]/.test(u.shadow) || u.shadow.split(':').length !== 8)) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `user ${JSON.stringify(u.name)} has a shadow entry that is not the 8 fields after the name`,
      );
    }
    if (u.uid === 0) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `user ${JSON.stringify(u.name)} has uid 0: root is never merged (its password is the administratorPassword machine state)`,
      );
    }
  }
  for (const g of groups) checkFields('group', g.name, [g.name, g.gid, ...g.members]);

  // Users: same name and uid → replace; otherwise a taken name or uid is a conflict.
  const replaceUsers = new Set<string>();
  const addUsers: UserAccount[] = [];
  for (const u of sortById(users, (x) => x.uid)) {
    const byName = tUsers.find((t) => t.name === u.name);
    const byId = tUsers.find((t) => t.uid === u.uid && t.name !== u.name);
    if (byName && byName.uid !== u.uid) {
      conflicts.push(conflict('user', u.name, u.uid, 'name-has-other-id', byName.name, byName.uid));
    } else if (byId) {
      conflicts.push(conflict('user', u.name, u.uid, 'id-taken', byId.name, byId.uid));
    } else if (byName) {
      replaceUsers.add(u.name);
    } else {
      addUsers.push(u);
    }
    if (shells && !shells.has(u.shell)) {
      notes.push(`user ${u.name}: shell ${u.shell} is not in the new OS's /etc/shells`);
    }
  }

  // Groups that migrate: each user's primary group, and user-range groups with a migrating member.
  const userNames = new Set(users.map((u) => u.name));
  const wanted = new Map<string, GroupAccount>();
  for (const u of users) {
    const primary = groups.find((g) => g.gid === u.gid);
    if (primary) wanted.set(primary.name, primary);
    else if (!tGroups.some((t) => t.gid === u.gid)) {
      notes.push(`user ${u.name}: primary gid ${u.gid} has no group on either OS`);
    }
  }
  for (const g of groups) {
    if (g.gid >= minGid && g.gid <= maxGid && g.members.some((m) => userNames.has(m))) {
      wanted.set(g.name, g);
    }
  }
  const addGroups: GroupAccount[] = [];
  const sameGroups = new Set<string>();
  for (const g of sortById([...wanted.values()], (x) => x.gid)) {
    const byName = tGroups.find((t) => t.name === g.name);
    const byId = tGroups.find((t) => t.gid === g.gid && t.name !== g.name);
    if (byName && byName.gid !== g.gid) {
      conflicts.push(
        conflict('group', g.name, g.gid, 'name-has-other-id', byName.name, byName.gid),
      );
    } else if (byId) {
      conflicts.push(conflict('group', g.name, g.gid, 'id-taken', byId.name, byId.gid));
    } else if (byName) {
      sameGroups.add(g.name);
    } else {
      addGroups.push(g);
    }
  }

  // Memberships to add, by group name: a migrated group's members that exist on the new OS,
  // and each migrating user's other groups where the new OS has a group of that name.
  const known = new Set([...tUsers.map((t) => t.name), ...userNames]);
  const addMembers = new Map<string, string[]>();
  const member = (group: string, name: string) => {
    const list = addMembers.get(group) ?? [];
    if (!list.includes(name)) list.push(name);
    addMembers.set(group, list);
  };
  for (const g of wanted.values()) {
    for (const m of g.members) {
      if (known.has(m)) member(g.name, m);
      else notes.push(`group ${g.name}: member ${m} is not a user on the new OS; left out`);
    }
  }
  const groupNames = new Set([...tGroups.map((t) => t.name), ...addGroups.map((g) => g.name)]);
  for (const u of users) {
    for (const name of u.groups) {
      if (wanted.has(name)) continue;
      if (groupNames.has(name)) member(name, u.name);
      else
        notes.push(
          `user ${u.name}: group ${name} does not exist on the new OS; membership left out`,
        );
    }
  }

  const byName = new Map(users.map((u) => [u.name, u]));
  const passwdLine = (u: UserAccount) =>
    `${u.name}:x:${u.uid}:${u.gid}:${u.gecos}:${u.home}:${u.shell}`;
  const shadowLine = (u: UserAccount) => `${u.name}:${u.shadow ?? '!:::::::'}`;

  const passwd = rewrite(
    target.passwd,
    (name) => (replaceUsers.has(name) ? passwdLine(byName.get(name)!) : undefined),
    addUsers.map(passwdLine),
  );
  const shadowNames = parseByName(target.shadow);
  const shadow = rewrite(
    target.shadow ?? '',
    (name) => (replaceUsers.has(name) ? shadowLine(byName.get(name)!) : undefined),
    [...users]
      .filter((u) => (replaceUsers.has(u.name) && !shadowNames.has(u.name)) || addUsers.includes(u))
      .sort((a, b) => a.uid - b.uid)
      .map(shadowLine),
  );
  const membersOf = (name: string, existing: string[]) => {
    const extra = (addMembers.get(name) ?? []).filter((m) => !existing.includes(m));
    return [...existing, ...extra];
  };
  const group = rewrite(
    target.group,
    (name, fields) => {
      if (!addMembers.has(name) || fields.length !== 4) return undefined;
      const members = membersOf(name, splitMembers(fields[3]!));
      return [...fields.slice(0, 3), members.join(',')].join(':');
    },
    addGroups.map((g) => `${g.name}:x:${g.gid}:${membersOf(g.name, []).join(',')}`),
  );
  const gshadowNames = parseByName(target.gshadow);
  const gshadow = rewrite(
    target.gshadow ?? '',
    (name, fields) => {
      if (!addMembers.has(name) || fields.length !== 4) return undefined;
      const members = membersOf(name, splitMembers(fields[3]!));
      return [...fields.slice(0, 3), members.join(',')].join(':');
    },
    addGroups
      .filter((g) => !gshadowNames.has(g.name))
      .map((g) => `${g.name}:!::${membersOf(g.name, []).join(',')}`),
  );

  return {
    conflicts,
    merge: {
      files: { passwd, shadow, group, gshadow },
      users: [...replaceUsers, ...addUsers.map((u) => u.name)].sort(),
      groups: [...sameGroups, ...addGroups.map((g) => g.name)].sort(),
      notes,
    },
  };
}

function entriesOfShells(text: string): string[] {
  return lines(text)
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'));
}

function conflict(
  kind: 'user' | 'group',
  name: string,
  id: number,
  problem: AccountConflict['problem'],
  existingName: string,
  existingId: number,
): AccountConflict {
  return { kind, name, id, problem, existing: { name: existingName, id: existingId } };
}

function sortById<T extends { name: string }>(list: readonly T[], id: (x: T) => number): T[] {
  return [...list].sort((a, b) => id(a) - id(b) || (a.name < b.name ? -1 : 1));
}

/**
 * The text with the lines whose entry `replace` answers for replaced (only the first line of
 * a name), and `append` added at the end. Every other line stays byte for byte.
 */
function rewrite(
  text: string,
  replace: (name: string, fields: string[]) => string | undefined,
  append: string[],
): string {
  const out: string[] = [];
  const done = new Set<string>();
  for (const l of lines(text)) {
    const fields = l.split(':');
    const name = fields[0]!;
    const entry = l !== '' && !l.startsWith('#') && !l.startsWith('+') && !l.startsWith('-');
    const r = entry && !done.has(name) ? replace(name, fields) : undefined;
    if (entry) done.add(name);
    out.push(r ?? l);
  }
  out.push(...append);
  return out.length === 0 ? '' : `${out.join('\n')}\n`;
}
