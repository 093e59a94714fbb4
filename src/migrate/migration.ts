import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import {
  chmod,
  lchown,
  lstat,
  lutimes,
  mkdir,
  open,
  readlink,
  rename,
  rm,
  stat,
  symlink,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { ReimageError } from '../errors.js';
import { mergeAccounts, readAccounts, selectUsers } from './accounts.js';
import type { UserPolicy } from './accounts.js';
import { applyMachineStateDirect, cloudInitNoCloud, writeNoCloudSeed } from './answer-files.js';
import { readMachineState, resolveMachineState } from './machine-state.js';
import type { PlaceholderFacts, MachineStateSettings } from './machine-state.js';
import type { GroupAccount, ItemKind, MachineState, StateItem, UserAccount } from './model.js';
import { componentsFor, selectItems } from './rules.js';
import type { StateComponent } from './rules.js';
import type { RuleComponent } from './rule-format.js';
import { clientStateComponent, machineStateComponents } from './rulesets.js';
import { StateReader, StateWriter } from './state-store.js';
import type { CommitResult, StateBackend } from './state-store.js';

export type MachineStateComponent = keyof typeof machineStateComponents;

/** The machine-state files captured by default: the ones restore puts back as they were. */
export const defaultMachineStateFiles: MachineStateComponent[] = [
  'domain',
  'network',
  'sshHostKeys',
  'machineId',
];

export interface CaptureStateOptions {
  /** The old OS's root folder. */
  root: string;
  backend: StateBackend;
  machineId: string;
  /** 32 bytes: encrypt the store (the default of deployment settings); undefined: plain. */
  key?: Buffer;
  hardLinks?: boolean;
  /** The deployment settings' `migration` section: rule sets by name plus inline rules. */
  migration?: { ruleSets?: string[]; rules?: RuleComponent[] };
  users?: UserPolicy;
  /** Which machine-state files to capture (default {@link defaultMachineStateFiles}). */
  machineStateFiles?: MachineStateComponent[];
  /** Capture the reimage client's own state (GUID, server, credential, policy cache). Default true. */
  clientState?: boolean;
  now?: number;
  /** Called after each file is in the store (the agent's kill tests hook a failpoint here). */
  onFile?: (done: number) => void;
}

export interface CaptureStateResult extends CommitResult {
  users: string[];
  excluded: number;
  skipped: { path: string; reason: string }[];
}

/**
 * Phase 1: captures what must survive the new OS into a state store — the selected users'
 * accounts, the files the rule sets select (user data, application and OS settings), the
 * machine-state files, the client's state, and the old machine state as a document for the
 * answer files. The store's manifest is written last: a capture killed midway leaves a store
 * that readers ignore, and the old OS is untouched either way.
 */
export async function captureState(o: CaptureStateOptions): Promise<CaptureStateResult> {
  const accounts = await readAccounts(o.root);
  const users = await selectUsers(o.root, accounts.users, o.users ?? {}, o.now);
  const gids = new Set(users.flatMap((u) => [u.gid]));
  const names = new Set(users.map((u) => u.name));
  const groups = accounts.groups.filter(
    (g) => gids.has(g.gid) || g.members.some((m) => names.has(m)),
  );
  const components: StateComponent[] = [
    ...componentsFor(o.migration ?? {}),
    ...(o.machineStateFiles ?? defaultMachineStateFiles).map((k) => machineStateComponents[k]),
    ...(o.clientState === false ? [] : [clientStateComponent]),
  ];
  const selection = await selectItems({ root: o.root, components, users });
  const writer = await StateWriter.create(o.backend, {
    machineId: o.machineId,
    key: o.key,
    hardLinks: o.hardLinks,
  });
  try {
    let files = 0;
    for (const item of selection.items) {
      if (item.type === 'file') {
        await writer.addFile(item, join(o.root, item.path));
        o.onFile?.(++files);
      } else writer.addEntry(item);
    }
    writer.addDocument('accounts', { users, groups });
    writer.addDocument('machine-state', await readMachineState(o.root));
    writer.addDocument('capture', {
      components: components.map((c) => c.name),
      excluded: selection.excluded.length,
      skipped: selection.skipped,
    });
    const result = await writer.commit();
    return {
      ...result,
      users: users.map((u) => u.name),
      excluded: selection.excluded.length,
      skipped: selection.skipped,
    };
  } catch (e) {
    await writer.abort().catch(() => {});
    throw e;
  }
}

/** What restore does when the new OS already has a file the store holds. */
export type ConflictRule = 'keep-user' | 'keep-image' | 'keep-both';

export interface RestoreStateOptions {
  /** The new OS's root folder (the image applied, data kept). */
  root: string;
  backend: StateBackend;
  key?: Buffer;
  /** A store folder by name; default the newest complete one (of `machineId`). */
  store?: string;
  machineId?: string;
  /** For user files and application settings (default keep-user). OS settings always keep both. */
  conflict?: ConflictRule;
  /** The deployment settings' `machineState` section (secrets decrypted, from the machine's policy). */
  machineState?: MachineStateSettings;
  facts?: PlaceholderFacts & { instanceId?: string };
  /**
   * The deployment settings' `clientState` section: `fresh` for the GUID drops the old
   * client's identity entirely (the new client enrolls anew); `fresh` for the policy drops
   * the policy cache. Default: everything migrates.
   */
  clientState?: { guid?: 'migrate' | 'fresh' | object; policy?: 'migrate' | 'fresh' | object };
  /** Called after each file is written back (the agent's kill tests hook a failpoint here). */
  onFile?: (done: number) => void;
  /**
   * Called with a tree path (relative to root) just before it is created or changed: an
   * intent log kept by the caller lists what a run killed midway wrote, since a second run
   * finds those files already there with the same content and leaves them out of `written`.
   */
  onWrite?: (path: string) => void;
}

export interface RestoreReport {
  store: string;
  restored: number;
  bytes: number;
  skipped: { path: string; reason: string }[];
  conflicts: {
    path: string;
    resolution: 'replaced' | 'kept-image' | 'saved-beside';
    savedAs?: string;
  }[];
  accounts: { users: string[]; groups: string[]; notes: string[] };
  machineState: { written: string[]; cloudInit: boolean };
  /**
   * Every path of the new OS (relative to root, sorted, unique) this run created or changed:
   * the merged account files, the restored folders, symlinks and files, the `.restored`
   * copies beside conflicts, the machine state's direct writes and the cloud-init seed.
   * Folders made only to hold one of them are not listed; a file already there with the same
   * content is not written, so not listed, unless its mode or owner had to be put back. Paths
   * only: never any content.
   */
  written: string[];
}

/**
 * Phase 3: restores a state store into the new OS — accounts first (merged into the new OS's
 * files with their uids and gids, so restored files keep their owners), then every item with
 * its mode, owner and time, then the machine state as answer files and direct writes.
 *
 * Conflicts (the new OS ships a file the store also has, with other content): user files and
 * application settings follow `conflict`; OS settings keep the image's file and save the
 * user's beside it (`<name>.restored`); machine and client state always take the migrated
 * file, since the settings asked for it. Nothing is written below a symlink of the new tree.
 */
export async function restoreState(o: RestoreStateOptions): Promise<RestoreReport> {
  const reader = await StateReader.open(o.backend, o.key, {
    store: o.store,
    machineId: o.machineId,
  });
  const report: RestoreReport = {
    store: reader.store,
    restored: 0,
    bytes: 0,
    skipped: [],
    conflicts: [],
    accounts: { users: [], groups: [], notes: [] },
    machineState: { written: [], cloudInit: false },
    written: [],
  };
  const written = new Set<string>();
  const willWrite = (path: string) => {
    o.onWrite?.(path);
    written.add(path);
  };
  const owners = process.getuid?.() === 0;

  const saved = reader.document<{ users: UserAccount[]; groups: GroupAccount[] }>('accounts');
  if (saved && saved.users.length > 0) {
    const target = await readAccounts(o.root);
    const merge = mergeAccounts(target.files, saved.users, saved.groups);
    for (const [name, mode] of [
      ['passwd', 0o644],
      ['group', 0o644],
      ['shadow', 0o640],
      ['gshadow', 0o640],
    ] as const) {
      willWrite(`etc/${name}`);
      await replaceFile(o.root, `etc/${name}`, merge.files[name], mode);
    }
    report.accounts = { users: merge.users, groups: merge.groups, notes: merge.notes };
  }

  for (const item of reader.items) {
    if (ACCOUNT_FILES.has(item.path)) continue; // merged above, never copied over the new OS's
    if (item.kind === 'client-state' && !clientStateMigrates(item.path, o.clientState)) {
      report.skipped.push({ path: item.path, reason: 'client state configured fresh' });
      continue;
    }
    const safe = await safeParent(o.root, item.path);
    if (!safe) {
      report.skipped.push({
        path: item.path,
        reason: 'a folder on its path is a symlink or not a folder in the new OS',
      });
      continue;
    }
    const abs = join(o.root, item.path);
    const existing = await lstat(abs).catch(() => undefined);
    if (item.type === 'dir') {
      if (!existing) {
        willWrite(item.path);
        await mkdir(abs, { mode: item.mode & 0o7777 });
        await setMeta(abs, item, owners);
        report.restored++;
      } else if (!existing.isDirectory())
        report.skipped.push({ path: item.path, reason: 'the new OS has a non-folder there' });
      continue;
    }
    if (item.type === 'symlink') {
      if (existing?.isSymbolicLink() && (await readlink(abs)) === item.target) continue; // kept by the wipe
      if (existing) {
        report.skipped.push({ path: item.path, reason: 'the new OS has an entry there' });
        continue;
      }
      willWrite(item.path);
      await symlink(item.target ?? '', abs);
      if (owners) await lchown(abs, item.uid, item.gid);
      report.restored++;
      continue;
    }
    let dest = abs;
    if (existing) {
      if (!existing.isFile()) {
        report.skipped.push({ path: item.path, reason: 'the new OS has a non-file there' });
        continue;
      }
      if ((await fileSha256(abs)) === item.sha256) {
        // The same content: nothing to resolve; a mode or owner put back is still a change.
        if (
          (existing.mode & 0o7777) !== (item.mode & 0o7777) ||
          (owners && (existing.uid !== item.uid || existing.gid !== item.gid))
        )
          willWrite(item.path);
        await setMeta(abs, item, owners);
        continue;
      }
      const rule: ConflictRule = conflictRule(item.kind, o.conflict ?? 'keep-user');
      if (rule === 'keep-image') {
        report.conflicts.push({ path: item.path, resolution: 'kept-image' });
        continue;
      }
      if (rule === 'keep-both') {
        // A run killed midway may have saved it already: the same copy, not a second one.
        const saved = item.sha256 ? await savedBeside(abs, item.sha256) : undefined;
        dest = saved ?? (await freeName(`${abs}.restored`));
        const savedAs = dest.slice(o.root.length + 1);
        report.conflicts.push({ path: item.path, resolution: 'saved-beside', savedAs });
        if (saved) {
          written.add(savedAs);
          continue;
        }
      } else report.conflicts.push({ path: item.path, resolution: 'replaced' });
    }
    willWrite(dest.slice(o.root.length + 1));
    await writeFromStore(reader, item, dest, owners);
    report.restored++;
    report.bytes += item.size;
    o.onFile?.(report.restored);
  }

  const old = reader.document<MachineState>('machine-state') ?? {};
  const state = resolveMachineState(old, o.machineState ?? {}, { facts: o.facts });
  const direct = await applyMachineStateDirect(o.root, state, { macAddress: o.facts?.macs?.[0] });
  report.machineState.written = direct.written;
  if (await exists(join(o.root, 'etc/cloud'))) {
    const files = cloudInitNoCloud(state, {
      instanceId: o.facts?.instanceId ?? `reimage-${reader.machineId}`,
      macAddress: o.facts?.macs?.[0],
    });
    report.machineState.written.push(...(await writeNoCloudSeed(o.root, files)));
    report.machineState.cloudInit = true;
  }
  // Reported after the fact (they are few and every run writes them again).
  for (const p of report.machineState.written) willWrite(p.replace(/^\/+/, ''));
  report.written = [...written].sort();
  return report;
}

function clientStateMigrates(path: string, c: RestoreStateOptions['clientState']): boolean {
  if (c?.guid === 'fresh') return false;
  if (c?.policy === 'fresh' && /(^|\/)policy-cache[^/]*$/.test(path)) return false;
  return true;
}

const ACCOUNT_FILES = new Set(['etc/passwd', 'etc/shadow', 'etc/group', 'etc/gshadow']);

function conflictRule(kind: ItemKind, chosen: ConflictRule): ConflictRule {
  if (kind === 'machine-state' || kind === 'client-state') return 'keep-user';
  if (kind === 'os-settings') return 'keep-both';
  return chosen;
}

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

/** Every folder between root and the item is a real folder (not a symlink), or missing. */
async function safeParent(root: string, path: string): Promise<boolean> {
  const parts = path.split('/').slice(0, -1);
  let cur = root;
  for (const p of parts) {
    cur = join(cur, p);
    const st = await lstat(cur).catch(() => undefined);
    if (!st) return true; // created by a folder item before (sorted) or below: mkdir will make it
    if (!st.isDirectory()) return false;
  }
  return true;
}

async function fileSha256(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h);
  return h.digest('hex');
}

/** `<abs>.restored` (or `.restored.N`) holding exactly `sha256`, if there is one. */
async function savedBeside(abs: string, sha256: string): Promise<string | undefined> {
  for (let i = 0; ; i++) {
    const name = i === 0 ? `${abs}.restored` : `${abs}.restored.${i}`;
    const st = await lstat(name).catch(() => undefined);
    if (!st) return undefined;
    if (st.isFile() && (await fileSha256(name)) === sha256) return name;
  }
}

async function freeName(base: string): Promise<string> {
  for (let i = 0; ; i++) {
    const name = i === 0 ? base : `${base}.${i}`;
    if (!(await lstat(name).catch(() => undefined))) return name;
  }
}

async function setMeta(abs: string, item: StateItem, owners: boolean): Promise<void> {
  if (owners) await lchown(abs, item.uid, item.gid);
  await chmod(abs, item.mode & 0o7777); // after chown: chown clears setuid/setgid
  const t = item.mtimeMs / 1000;
  await lutimes(abs, t, t);
}

/** Streams the item's verified content to a new file beside `dest`, then renames it over. */
async function writeFromStore(
  reader: StateReader,
  item: StateItem,
  dest: string,
  owners: boolean,
): Promise<void> {
  await mkdir(dirname(dest), { recursive: true });
  const tmp = join(dirname(dest), `.reimage-restore-${randomUUID()}`);
  try {
    await pipeline(
      await reader.openFile(item.path),
      createWriteStream(tmp, { flags: 'wx', mode: 0o600 }),
    );
    const fh = await open(tmp, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  await setMeta(tmp, item, owners);
  await rename(tmp, dest);
}

async function replaceFile(root: string, rel: string, text: string, mode: number): Promise<void> {
  const abs = join(root, rel);
  const before = await lstat(abs).catch(() => undefined);
  if (before && !before.isFile())
    throw new ReimageError(
      'APPLY_FAILED',
      `/${rel} in the new OS is not a regular file; accounts were not merged.`,
    );
  const tmp = `${abs}.reimage-${randomUUID()}`;
  const fh = await open(tmp, 'wx', mode);
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
  if (before && process.getuid?.() === 0) await lchown(tmp, before.uid, before.gid);
  await chmod(tmp, before ? before.mode & 0o7777 : mode);
  await rename(tmp, abs);
}
