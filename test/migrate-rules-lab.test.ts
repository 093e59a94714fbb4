// The built-in rule sets on a lab machine tree. Here rather than beside src/migrate/rules.ts
// because src/migrate may not import src/lab (see eslint.config.js).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { makeMachineTree, type MachineTreeFacts } from '../src/lab/machine-tree.js';
import { readAccounts, selectUsers } from '../src/migrate/accounts.js';
import { componentsFor, selectItems, type Selection } from '../src/migrate/rules.js';
import { clientStateComponent, machineStateComponents } from '../src/migrate/rulesets.js';

describe('built-in rule sets on a lab machine', () => {
  let root: string;
  let facts: MachineTreeFacts;
  let selection: Selection;
  let taken: Set<string>;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'reimage-rules-lab-'));
    facts = await makeMachineTree(root, { scale: 'small' });
    const users = await selectUsers(root, (await readAccounts(root)).users);
    assert.deepEqual(
      users.map((u) => u.name),
      Object.keys(facts.userFiles).sort(),
      'the regular users migrate',
    );
    selection = await selectItems({ root, components: componentsFor({}), users });
    taken = new Set(selection.items.map((i) => i.path));
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  it("takes each user's documents, pictures, browser profiles, keys and settings", () => {
    for (const category of [
      'documents',
      'pictures',
      'music',
      'videos',
      'firefox',
      'chromium',
      'ssh-keys',
      'gpg-keys',
      'shell-settings',
      'desktop-settings',
      'share-settings',
      'keyrings',
      'accounts',
    ] as const) {
      const missing = facts.categories[category].filter((f) => !taken.has(f));
      assert.deepEqual(missing, [], `${category} all taken`);
    }
    for (const user of Object.keys(facts.userFiles)) {
      assert.ok(
        selection.items.some((i) => i.user === user && i.component === 'user-documents'),
        `${user} has documents`,
      );
    }
  });

  it('takes no caches, trash, partial downloads, logs or data outside home', () => {
    for (const category of [
      'cache',
      'trash',
      'partial-downloads',
      'logs',
      'database',
      'web-site',
      'machine-state',
      'client-state',
    ] as const) {
      const wrong = facts.categories[category].filter((f) => taken.has(f));
      assert.deepEqual(wrong, [], `${category} not taken`);
    }
    assert.ok(![...taken].some((p) => /\/\.cache(\/|$)/.test(p)), 'nothing of ~/.cache');
  });

  it('machine and client state components take the machine and client state files', async () => {
    const s = await selectItems({
      root,
      components: [...Object.values(machineStateComponents), clientStateComponent],
      users: [],
    });
    const got = new Set(s.items.map((i) => i.path));
    for (const category of ['machine-state', 'client-state'] as const) {
      assert.deepEqual(
        facts.categories[category].filter((f) => !got.has(f)),
        [],
        `${category} all taken`,
      );
    }
  });
});
