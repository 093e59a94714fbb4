import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { ReimageError } from '../errors.js';
import { captureState, restoreState } from '../migrate/migration.js';
import type { ConflictRule } from '../migrate/migration.js';
import { shareBackend } from '../migrate/share.js';
import { keyFromBase64, listStores, localBackend, StateReader } from '../migrate/state-store.js';
import type { StateBackend } from '../migrate/state-store.js';

interface StateFlags {
  path?: string;
  share?: string;
  shareUser?: string;
  shareDomain?: string;
  passwordStdin?: boolean;
  keyFile?: string;
  store?: string;
  json?: boolean;
}

type Env = Record<string, string | undefined>;

function print(o: StateFlags, doc: unknown, text: () => string): void {
  process.stdout.write(o.json ? JSON.stringify(doc, null, 2) + '\n' : text() + '\n');
}

/** Where the store is: a folder, or a share whose password comes from stdin or REIMAGE_SHARE_PASSWORD (never a flag). */
function backendFor(o: StateFlags, env: Env): StateBackend & { close?: () => Promise<void> } {
  if (o.path && o.share) throw new ReimageError('USAGE', 'give --path or --share, not both');
  if (o.path) return localBackend(o.path);
  if (!o.share)
    throw new ReimageError(
      'USAGE',
      'give the state store: --path DIR or --share smb://host/share/folder',
    );
  if (!o.shareUser) throw new ReimageError('USAGE', '--share needs --share-user');
  const password = o.passwordStdin
    ? readFileSync(0, 'utf8').replace(/\r?\n$/, '')
    : env.REIMAGE_SHARE_PASSWORD;
  if (!password)
    throw new ReimageError(
      'USAGE',
      'the share password comes from --password-stdin or REIMAGE_SHARE_PASSWORD',
    );
  return shareBackend({ url: o.share, username: o.shareUser, password, domain: o.shareDomain });
}

/** The store key: a file holding it in base64 (mode 0600), or REIMAGE_STATE_KEY; none for a plain store. */
function keyFor(o: StateFlags, env: Env): Buffer | undefined {
  if (o.keyFile) return keyFromBase64(readFileSync(o.keyFile, 'utf8'));
  return env.REIMAGE_STATE_KEY ? keyFromBase64(env.REIMAGE_STATE_KEY) : undefined;
}

function withStoreFlags(c: Command): Command {
  return c
    .option('--path <dir>', 'a state store folder (local or mounted)')
    .option('--share <url>', 'a network share: smb://host/share/folder')
    .option('--share-user <name>', 'the share account')
    .option('--share-domain <domain>', 'the share account’s domain')
    .option(
      '--password-stdin',
      'read the share password from standard input (else REIMAGE_SHARE_PASSWORD)',
    )
    .option(
      '--key-file <file>',
      'the store key, base64 (else REIMAGE_STATE_KEY; none for a plain store)',
    )
    .option(
      '--store <name>',
      'which store (state-<machine>-<time>); default the newest complete one',
    )
    .option('--json', 'one JSON document');
}

async function withReader<T>(
  o: StateFlags,
  env: Env,
  fn: (r: StateReader) => Promise<T>,
): Promise<T> {
  const backend = backendFor(o, env);
  try {
    return await fn(await StateReader.open(backend, keyFor(o, env), { store: o.store }));
  } finally {
    await backend.close?.();
  }
}

/** `reimage state …`: capture and restore machine state by hand, and inspect, verify or rescue a store. */
export function registerStateCommands(program: Command, ctx: { env: Env }): void {
  const state = program
    .command('state')
    .description('state stores: what migrates across a re-image');
  withStoreFlags(state.command('list').description('the stores in a folder or share')).action(
    async (o: StateFlags) => {
      const backend = backendFor(o, ctx.env);
      try {
        const stores = await listStores(backend);
        print(o, { stores }, () =>
          stores.length === 0
            ? 'no state stores'
            : stores
                .map(
                  (s) =>
                    `${s.store}  ${s.complete ? 'complete' : 'INCOMPLETE'}  ${s.encrypted ? 'encrypted' : 'plain'}`,
                )
                .join('\n'),
        );
      } finally {
        await backend.close?.();
      }
    },
  );
  withStoreFlags(
    state.command('show').description('what a store holds: items by component, documents'),
  ).action(async (o: StateFlags) =>
    withReader(o, ctx.env, async (r) => {
      const byComponent: Record<string, { items: number; bytes: number }> = {};
      for (const i of r.items) {
        const c = (byComponent[i.component] ??= { items: 0, bytes: 0 });
        c.items++;
        c.bytes += i.type === 'file' ? i.size : 0;
      }
      const doc = {
        store: r.store,
        machineId: r.machineId,
        created: r.created,
        encrypted: r.encrypted,
        items: r.items.length,
        components: byComponent,
        documents: r.documentNames(),
      };
      print(o, doc, () =>
        [
          `store:     ${r.store}`,
          `machine:   ${r.machineId}`,
          `created:   ${r.created}`,
          `encrypted: ${r.encrypted ? 'yes' : 'no'}`,
          `items:     ${r.items.length}`,
          ...Object.entries(byComponent).map(
            ([c, v]) =>
              `  ${c.padEnd(24)} ${String(v.items).padStart(6)} items ${String(v.bytes).padStart(12)} bytes`,
          ),
          `documents: ${r.documentNames().join(', ') || 'none'}`,
        ].join('\n'),
      );
    }),
  );
  withStoreFlags(
    state.command('verify').description('re-read and check every item (authenticated, SHA-256)'),
  ).action(async (o: StateFlags) =>
    withReader(o, ctx.env, async (r) => {
      const v = await r.verify();
      print(o, v, () =>
        [
          `ok: ${v.ok} items; bad: ${v.bad.length}`,
          ...v.bad.map((b) => `  ${b.path}: ${b.reason}`),
        ].join('\n'),
      );
      if (v.bad.length > 0)
        throw new ReimageError(
          'STATE_STORE_TAMPERED',
          `${v.bad.length} item(s) of the store are damaged or tampered with`,
          { details: { bad: v.bad } },
        );
    }),
  );
  withStoreFlags(
    state
      .command('extract')
      .description('write a store’s items into a new or empty folder (rescue by hand)'),
  )
    .argument('<dest>', 'new or empty folder')
    .option('--component <name...>', 'only these components')
    .action(async (dest: string, o: StateFlags & { component?: string[] }) =>
      withReader(o, ctx.env, async (r) => {
        const only = o.component ? new Set(o.component) : undefined;
        await r.extract(dest, only ? (i) => only.has(i.component) : undefined);
        const n = r.items.filter((i) => !only || only.has(i.component)).length;
        print(o, { dest, items: n }, () => `extracted ${n} items into ${dest}`);
      }),
    );
  withStoreFlags(
    state
      .command('capture')
      .description('phase 1 by hand: capture a machine’s state from its root folder'),
  )
    .argument('<root>', 'the machine’s root folder')
    .requiredOption('--machine-id <guid>', 'names the store')
    .option(
      '--rule-set <name...>',
      'built-in rule sets (default: the deployment settings’ defaults)',
    )
    .action(async (root: string, o: StateFlags & { machineId: string; ruleSet?: string[] }) => {
      const backend = backendFor(o, ctx.env);
      try {
        const r = await captureState({
          root,
          backend,
          machineId: o.machineId,
          key: keyFor(o, ctx.env),
          migration: { ruleSets: o.ruleSet },
        });
        print(
          o,
          r,
          () =>
            `captured ${r.items} items (${r.bytes} bytes, ${r.storedBytes} stored) of users ${r.users.join(', ') || 'none'} into ${r.store}`,
        );
      } finally {
        await backend.close?.();
      }
    });
  withStoreFlags(
    state
      .command('restore')
      .description('phase 3 by hand: restore a store into a new OS’s root folder'),
  )
    .argument('<root>', 'the new OS’s root folder')
    .option(
      '--conflict <rule>',
      'keep-user | keep-image | keep-both (user files and app settings)',
      'keep-user',
    )
    .action(async (root: string, o: StateFlags & { conflict: string }) => {
      if (!['keep-user', 'keep-image', 'keep-both'].includes(o.conflict))
        throw new ReimageError('USAGE', '--conflict is keep-user, keep-image or keep-both');
      const backend = backendFor(o, ctx.env);
      try {
        const r = await restoreState({
          root,
          backend,
          key: keyFor(o, ctx.env),
          store: o.store,
          conflict: o.conflict as ConflictRule,
        });
        print(o, r, () =>
          [
            `restored ${r.restored} items (${r.bytes} bytes) from ${r.store}; accounts: ${r.accounts.users.join(', ') || 'none'}`,
            ...r.conflicts.map(
              (c) => `  conflict ${c.path}: ${c.resolution}${c.savedAs ? ` → ${c.savedAs}` : ''}`,
            ),
            ...r.skipped.map((s) => `  skipped ${s.path}: ${s.reason}`),
          ].join('\n'),
        );
      } finally {
        await backend.close?.();
      }
    });
}
