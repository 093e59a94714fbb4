/**
 * Serverless deployment end to end (docs/serverless.md): an administrator publishes an
 * advertisement (package image and PE) from a real server to a folder; the server is
 * stopped; a lab machine configured with that folder and the public key, and no server,
 * deploys through the three phases with its status dropped as files; a server started again
 * on the same data imports them into the machine's timeline. A document whose signature
 * does not verify is never deployed, and the machine says so.
 */
import assert from 'node:assert/strict';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify } from 'yaml';
import type { AskUser, NotificationAnswer, NotificationRequest } from '../src/agent/ask.js';
import { runAgent } from '../src/agent/daemon.js';
import { BOOT_CONFIG, labPlatform } from '../src/agent/platform.js';
import type { PublishedAdvertisement } from '../src/agent/serverless.js';
import { publishAdvertisement, type Publication } from '../src/cli/serverless.js';
import type { MachineTreeFacts } from '../src/lab/machine-tree.js';
import { dataSnapshot, makeDeployFixture, makeLabMachine } from './support/deploy.js';
import type { DeployFixture } from './support/deploy.js';
import {
  createAdvertisement,
  createCollection,
  createPackage,
  expectStatus,
  registerImage,
} from './support/fixtures.js';
import { makeTestServer } from './support/server.js';
import type { TestServer } from './support/server.js';
import { isProgressMessage } from '../src/status/messages.js';

class Reboot extends Error {}

const base = mkdtempSync(join(tmpdir(), 'reimage-serverless-deploy-'));
const pub = join(base, 'published');
let server: TestServer;
let f: DeployFixture;
let publication: Publication;

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const publicPem = publicKey.export({ format: 'pem', type: 'spki' }).toString();
const privateFile = join(base, 'admin.pem');
writeFileSync(privateFile, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });

const T0 = Date.parse('2030-01-07T09:00:00Z');

interface LabMachine {
  dir: string;
  root: string;
  facts: MachineTreeFacts;
  name: string;
}

let n = 0;
/** A lab machine whose client reads `location` and trusts the admin key; no server, no credential. */
async function serverlessMachine(location: string): Promise<LabMachine> {
  const dir = join(base, `m${++n}`);
  const facts = await makeLabMachine(dir, 200 + n, '// reimage agent 1.0.0\n');
  const root = join(dir, 'disk');
  writeFileSync(
    join(root, 'etc/reimage/client.json'),
    JSON.stringify({ serverless: { location, publicKey: publicPem } }),
  );
  rmSync(join(root, 'etc/reimage/credential'), { force: true });
  return { dir, root, facts, name: facts.hostname };
}

/** Answers 'now' a minute before the countdown ends. */
const askNow = (asked: NotificationRequest[]): AskUser =>
  async function ask(req): Promise<NotificationAnswer> {
    asked.push(req);
    return {
      choice: 'now',
      at: new Date(Date.parse(req.countdownEndsAt) - 60_000).toISOString(),
      by: 'web',
    };
  };

/** The lab firmware's loop, as in test/agent-daemon.test.ts: `agent run --once` per boot. */
async function boot(m: LabMachine, ask?: AskUser): Promise<{ roles: string[]; log: string[] }> {
  const roles: string[] = [];
  const log: string[] = [];
  const g = globalThis as { __REIMAGE_AGENT_VERSION__?: string };
  try {
    for (let i = 0; i < 8; i++) {
      const platform = labPlatform(m.dir, {
        exit: () => {
          throw new Reboot();
        },
      });
      const cfg = platform.bootConfig();
      const name = cfg.next ?? cfg.default;
      if (cfg.next)
        writeFileSync(join(m.dir, BOOT_CONFIG), JSON.stringify({ ...cfg, next: undefined }));
      const entry = cfg.entries[name]!;
      const program = readFileSync(join(m.root, entry.program), 'utf8');
      g.__REIMAGE_AGENT_VERSION__ = /(\d+\.\d+\.\d+)/.exec(program)![1]!;
      const role = entry.args.includes('pe') ? 'pe' : 'client';
      roles.push(role);
      try {
        await runAgent({
          platform,
          role,
          once: true,
          ...(ask ? { ask } : {}),
          now: () => new Date(T0),
          random: () => 0.5,
          log: (l) => log.push(`${role}: ${l}`),
        });
        return { roles, log };
      } catch (e) {
        if (!(e instanceof Reboot)) throw e;
      }
    }
    return { roles, log };
  } finally {
    delete g.__REIMAGE_AGENT_VERSION__;
  }
}

const guidOf = (m: LabMachine) =>
  (JSON.parse(readFileSync(join(m.root, 'etc/reimage/client.json'), 'utf8')) as { guid?: string })
    .guid;

/** Every message a machine dropped, in file order. */
function dropped(drop: string, guid: string): { seq: number; id: number; properties?: object }[] {
  const dir = join(drop, guid);
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((x) => !x.startsWith('.'))
    .flatMap(
      (x) =>
        (
          JSON.parse(readFileSync(join(dir, x), 'utf8')) as {
            messages: { seq: number; id: number; properties?: object }[];
          }
        ).messages,
    )
    .sort((a, b) => a.seq - b.seq);
}

const PHASES = [3000, 3001, 3002, 3003, 4000, 4001, 4002, 4003, 4004, 5000, 5001, 5002, 5003];

before(async () => {
  server = await makeTestServer('sqlite');
  f = await makeDeployFixture(base, (where) => `// reimage agent 2.0.0 (${where})\n`, {
    dp: server.store.root,
  });
  await registerImage(server, 'debian-13');
  await registerImage(server, 'reimage-pe');
  await createPackage(server, {
    definition: stringify({
      apiVersion: 'reimage/v1',
      kind: 'PackageDefinition',
      name: 'sl',
      version: '1',
      image: { name: 'debian-13' },
    }),
    settings: stringify({
      apiVersion: 'reimage/v1',
      kind: 'DeploymentSettings',
      options: {},
      stateStore: { type: 'local', path: '/var/lib/reimage/state', encrypt: true },
    }),
    definitionFile: 'sl.package.yaml',
    settingsFile: 'sl.deploy.yaml',
  });
  // Nobody enrolled: the collection is empty, the machines are named at publication.
  await createCollection(server, { name: 'sl-lab', rule: 'name = "sl-nobody"' });
  await createAdvertisement(server, { name: 'sl-ad', package: 'sl@1', collection: 'sl-lab' });
});

after(async () => {
  await server?.close();
  rmSync(base, { recursive: true, force: true });
});

describe('serverless deployment', () => {
  let m: LabMachine;

  it('the publication carries the image record and the PE, and both images are copied', async () => {
    m = await serverlessMachine(pub);
    const res = await server.call<Publication>('GET', '/api/v1/advertisements/sl-ad/publication', {
      role: 'operator',
    });
    expectStatus(res, 200, 'publication');
    publication = res.body;
    assert.equal(publication.image?.id, f.imageId);
    assert.equal(publication.image?.name, 'debian-13');
    assert.deepEqual(publication.pe, {
      imageId: f.peId,
      name: 'reimage-pe',
      program: '/agent.bundle',
    });
    const r = await publishAdvertisement({
      publication,
      from: [server.store.root],
      to: pub,
      key: createPrivateKey(readFileSync(privateFile)),
      machines: [m.name],
      // An hour before the machines' clock (T0): within its 90 days of validity.
      now: () => new Date(T0 - 3600_000),
    });
    assert.ok(r.peCopy && r.peCopy.filesCopied > 0, JSON.stringify(r));
    const doc = JSON.parse(
      readFileSync(join(pub, 'serverless/advertisements/sl-ad.json'), 'utf8'),
    ) as PublishedAdvertisement;
    assert.deepEqual(doc.image, publication.image);
    assert.deepEqual(doc.pe, publication.pe);
  });

  it('with the server stopped, the machine deploys the three phases from the folder, data intact', async () => {
    await server.app.close(); // no server from here on
    const before = dataSnapshot(m.root, m.facts);
    const asked: NotificationRequest[] = [];
    const { roles, log } = await boot(m, askNow(asked));
    assert.deepEqual(roles, ['client', 'pe', 'client'], log.join('\n'));
    assert.equal(asked.length, 1);
    assert.match(readFileSync(join(m.root, 'usr/lib/os-release'), 'utf8'), /VERSION_ID="?13/);
    assert.deepEqual(dataSnapshot(m.root, m.facts), before, 'user data unchanged, in place');
    const guid = guidOf(m);
    assert.match(guid ?? '', /^[0-9a-f-]{36}$/);
    const seen = dropped(join(pub, 'status'), guid!).map((x) => x.id);
    assert.deepEqual(
      seen.filter((id) => id >= 3000 && id < 6000 && !isProgressMessage(id)),
      PHASES,
      log.join('\n'),
    );
    // Booting again does nothing more: the image is applied (skip-same-image).
    const again = await boot(m, askNow(asked));
    assert.deepEqual(again.roles, ['client']);
    assert.equal(asked.length, 1);
  });

  it('a server started again on the same data imports the drop: 3000…5003 once, in order', async () => {
    await server.restart();
    const drop = join(pub, 'status');
    const guid = guidOf(m)!;
    const r = await server.call<{ machinesCreated: string[]; rejected: unknown[] }>(
      'POST',
      '/api/v1/status/import',
      { body: { folder: drop } },
    );
    expectStatus(r, 200, 'import');
    assert.deepEqual(r.body.rejected, []);
    assert.deepEqual(r.body.machinesCreated, [guid]);
    const t = await server.call<{ items: { seq: number; messageId: number }[] }>(
      'GET',
      `/api/v1/machines/${guid}/timeline`,
      { role: 'read-only' },
    );
    expectStatus(t, 200, 'timeline');
    const items = t.body.items;
    assert.deepEqual(
      items
        .map((x) => x.messageId)
        .filter((id) => id >= 3000 && id < 6000 && !isProgressMessage(id)),
      PHASES,
    );
    assert.deepEqual(
      items.map((x) => x.seq),
      items.map((_, i) => i + 1),
      'one continuous sequence across old client, PE and new client',
    );
  });

  it('a published document whose signature does not verify: not deployed, 9002 says so', async () => {
    // The published document altered after signing (its signature kept), in a folder of its own.
    const bad = join(base, 'tampered');
    const ads = join(bad, 'serverless/advertisements');
    mkdirSync(ads, { recursive: true });
    mkdirSync(join(bad, 'status'));
    const m2 = await serverlessMachine(bad);
    const doc = JSON.parse(
      readFileSync(join(pub, 'serverless/advertisements/sl-ad.json'), 'utf8'),
    ) as PublishedAdvertisement;
    doc.targets.machines.push({ name: m2.name, wave: 1 });
    writeFileSync(join(ads, 'sl-ad.json'), JSON.stringify(doc, null, 2) + '\n');
    copyFileSync(
      join(pub, 'serverless/advertisements/sl-ad.json.sig'),
      join(ads, 'sl-ad.json.sig'),
    );
    const before = readFileSync(join(m2.root, 'usr/lib/os-release'), 'utf8');
    const asked: NotificationRequest[] = [];
    const { roles, log } = await boot(m2, askNow(asked));
    assert.deepEqual(roles, ['client'], log.join('\n'));
    assert.equal(asked.length, 0);
    assert.equal(readFileSync(join(m2.root, 'usr/lib/os-release'), 'utf8'), before);
    const msgs = dropped(join(bad, 'status'), guidOf(m2)!);
    const refused = msgs.filter((x) => x.id === 9002);
    assert.equal(refused.length, 1, JSON.stringify(msgs));
    assert.deepEqual(
      { ...(refused[0]!.properties as object), message: undefined },
      { name: 'sl-ad', code: 'PUBLICATION_SIGNATURE_INVALID', message: undefined },
    );
    assert.ok(!msgs.some((x) => x.id === 2000), 'the advertisement was never received');
    // Polling again does not report it twice.
    await boot(m2, askNow(asked));
    assert.equal(dropped(join(bad, 'status'), guidOf(m2)!).filter((x) => x.id === 9002).length, 1);
  });
});
