/**
 * Serverless mode end to end (docs/serverless.md): a real server publishes an advertisement
 * to a folder, the server stops, machines read their policy from the folder (and from the
 * same folder served by nginx), drop their status as files from two processes at once, and
 * a server started again on the same data imports them into the machines' timelines.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createPrivateKey, generateKeyPairSync, randomUUID } from 'node:crypto';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  acceptedPublicationsFile,
  dropFolderSender,
  readServerlessPolicy,
  type AcceptedPublications,
} from '../src/agent/serverless.js';
import type { MachinePolicy } from '../src/client/agent-api.js';
import type { Advertisement, ImageRecord, PackageRecord } from '../src/catalog/catalog.js';
import { fetchImage } from '../src/content/fetch.js';
import { openRemote } from '../src/content/remote.js';
import { ContentStore } from '../src/content/store.js';
import type { ReimageError } from '../src/errors.js';
import { publishAdvertisement, type Publication } from '../src/cli/serverless.js';
import { reimage, reimageAsync } from './cli.js';
import {
  addImage,
  createAdvertisement,
  createCollection,
  createPackage,
  enrollMachine,
  exampleSettings,
  expectStatus,
  packageFiles,
  type EnrolledMachine,
} from './support/fixtures.js';
import { nginxSkip, startNginx } from './support/nginx.js';
import { forEachDatabase } from './support/server.js';

const work = mkdtempSync(join(tmpdir(), 'reimage-serverless-'));
after(() => rmSync(work, { recursive: true, force: true }));

function keyPair(name: string): { privateFile: string; publicPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const privateFile = join(work, `${name}.pem`);
  writeFileSync(privateFile, privateKey.export({ format: 'pem', type: 'pkcs8' }), {
    mode: 0o600,
  });
  return { privateFile, publicPem: publicKey.export({ format: 'pem', type: 'spki' }).toString() };
}

const admin = keyPair('admin');
const other = keyPair('other');

/** Reads a policy, collecting what was rejected. */
async function policyOf(
  location: string,
  machine: { guid: string; name: string; appliedImageId?: string },
  publicKey = admin.publicPem,
): Promise<{ policy: MachinePolicy; rejected: ReimageError[] }> {
  const rejected: ReimageError[] = [];
  const policy = await readServerlessPolicy(
    { location, publicKey },
    machine,
    () => new Date('2026-01-01T00:00:00Z'),
    { onRejected: (e) => rejected.push(e) },
  );
  return { policy, rejected };
}

/** A process that writes `batches` drop files of 10 messages each for `guid`, and one batch twice. */
function senderProcess(drop: string, guid: string, name: string, batches: number) {
  const module = fileURLToPath(new URL('../src/agent/serverless.js', import.meta.url));
  const code = `
    const { dropFolderSender } = await import(${JSON.stringify(module)});
    const send = dropFolderSender(${JSON.stringify(drop)}, ${JSON.stringify(guid)}, { machineName: ${JSON.stringify(name)} });
    const msg = (seq) => ({ seq, id: 1002, time: new Date(Date.UTC(2026, 0, 1, 0, 0, seq)).toISOString(), properties: { advertisements: seq } });
    for (let b = 0; b < ${batches}; b++) {
      const batch = Array.from({ length: 10 }, (_, i) => msg(b * 10 + i + 1));
      await send(batch);
      if (b === 0) await send(batch); // a resend after a lost acknowledgement
    }
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise<void>((resolve, reject) =>
    child.on('exit', (status) =>
      status === 0 ? resolve() : reject(new Error(`sender exited ${status}: ${stderr}`)),
    ),
  );
}

forEachDatabase('serverless', (get) => {
  let image: ImageRecord;
  let pkg: PackageRecord;
  let ad: Advertisement;
  let pc1: EnrolledMachine;
  let publication: Publication;
  let pub: string;
  let drop: string;
  const lab7 = randomUUID();

  before(async () => {
    const server = get();
    const dir = mkdtempSync(join(work, `${server.kind}-`));
    pub = join(dir, 'published');
    drop = join(dir, 'drop');
    image = await addImage(server, 'srvless-image');
    pkg = await createPackage(
      server,
      packageFiles({ name: 'srvless', version: '1.0', image: image.id }),
    );
    pc1 = await enrollMachine(server, { name: 'pc-1' });
    await enrollMachine(server, { name: 'pc-2' });
    await createCollection(server, { name: 'srvless-lab', include: [pc1.id] });
    ad = await createAdvertisement(server, {
      name: 'srvless-ad',
      package: 'srvless@1.0',
      collection: 'srvless-lab',
    });
  });

  test('publishes a signed advertisement and its content to a folder', async () => {
    const server = get();
    const res = await server.call<Publication>(
      'GET',
      '/api/v1/advertisements/srvless-ad/publication',
      { role: 'operator' },
    );
    expectStatus(res, 200, 'publication');
    publication = res.body;
    assert.deepEqual(
      publication.members.map((m) => [m.name, m.wave]),
      [['pc-1', 1]],
    );
    assert.equal(publication.package.imageId, image.id);
    const ro = await server.call('GET', '/api/v1/advertisements/srvless-ad/publication', {
      role: 'read-only',
    });
    expectStatus(ro, 403, 'read-only may not publish');

    const r = await publishAdvertisement({
      publication,
      from: [server.store.root],
      to: pub,
      key: createPrivateKey(readFileSync(admin.privateFile)),
      // A machine that never enrolled, known by its name.
      machines: ['lab-pc-7'],
    });
    assert.equal(r.document, 'serverless/advertisements/srvless-ad.json');
    assert.equal(r.targets, 2);
    assert.ok(r.copy.filesCopied > 3, JSON.stringify(r));
    assert.ok(existsSync(join(pub, 'reimage-store.json')));
    assert.ok(existsSync(join(pub, `objects/packages/${pkg.id}.json`)));
    assert.ok(existsSync(join(pub, 'serverless/advertisements/srvless-ad.json.sig')));
    assert.ok(existsSync(join(pub, 'serverless/index.json.sig')));

    // Publishing again copies only what is missing: nothing.
    const again = await publishAdvertisement({
      publication,
      from: [server.store.root],
      to: pub,
      key: createPrivateKey(readFileSync(admin.privateFile)),
      machines: ['lab-pc-7'],
    });
    assert.equal(again.copy.bytesCopied, 0);
  });

  test('the CLI publishes through the server API', async () => {
    const server = get();
    await server.app.listen({ host: '127.0.0.1', port: 0 });
    const addr = server.app.server.address() as { port: number };
    const cliPub = join(work, `${server.kind}-cli-published`);
    const env = { PATH: process.env.PATH ?? '', HOME: work, XDG_CONFIG_HOME: work };
    // Asynchronously: the server answers from this very process.
    const child = reimageAsync(
      [
        'advertisement',
        'publish',
        'srvless-ad',
        '--to',
        cliPub,
        '--key',
        admin.privateFile,
        '--from',
        server.store.root,
        '--all-machines',
        '--valid-for',
        '30d',
        '--server',
        `http://127.0.0.1:${addr.port}`,
        '--token',
        server.tokens.operator,
        '--json',
      ],
      { env },
    );
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const status = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    const r = {
      status,
      stderr,
      json: JSON.parse(stdout || '{}') as {
        published: { allMachines: boolean; expiresAt?: string };
      },
    };
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.json.published.allMachines, true);
    const doc = JSON.parse(
      readFileSync(join(cliPub, 'serverless/advertisements/srvless-ad.json'), 'utf8'),
    ) as { publishedAt: string; expiresAt: string };
    assert.equal(r.json.published.expiresAt, doc.expiresAt);
    assert.equal(Date.parse(doc.expiresAt) - Date.parse(doc.publishedAt), 30 * 86_400_000);
    const { policy } = await policyOf(cliPub, { guid: randomUUID(), name: 'anyone' });
    assert.deepEqual(
      policy.advertisements.map((a) => a.name),
      ['srvless-ad'],
    );

    // Unpublishing needs only the folder and the key.
    const u = reimage(
      ['advertisement', 'unpublish', 'srvless-ad', '--to', cliPub, '--key', admin.privateFile],
      { env },
    );
    assert.equal(u.status, 0, u.stderr);
    const after = await policyOf(cliPub, { guid: randomUUID(), name: 'anyone' });
    assert.deepEqual(after.policy.advertisements, []);
    assert.deepEqual(after.rejected, []);
    const index = JSON.parse(readFileSync(join(cliPub, 'serverless/index.json'), 'utf8'));
    assert.deepEqual(index.advertisements, []);
  });

  test('with the server stopped, a targeted machine reads its policy from the folder', async () => {
    const server = get();
    await server.app.close();

    const { policy, rejected } = await policyOf(pub, { guid: pc1.id, name: 'pc-1' });
    assert.deepEqual(rejected, []);
    assert.equal(policy.machineId, pc1.id);
    assert.equal(policy.advertisements.length, 1);
    const a = policy.advertisements[0]!;
    assert.equal(a.id, ad.id);
    assert.equal(a.state, 'active');
    assert.equal(a.package.imageId, image.id);
    assert.equal(a.content.length, 1);
    assert.equal(a.content[0]!.address, pub);
    assert.equal(Buffer.from(a.stateStoreKey, 'base64').length, 32);
    assert.deepEqual(
      (a.settings as { machineState: unknown }).machineState,
      exampleSettings().machineState,
    );

    // The content address is a store the image can be fetched from.
    const into = ContentStore.open(join(work, `${server.kind}-staging`), { create: true });
    const f = await fetchImage({
      sources: [openRemote(a.content[0]!.address)],
      imageId: image.id,
      into,
    });
    assert.equal(f.badSources.length, 0);

    // The machine named on the command line, which never enrolled, by name.
    const byName = await policyOf(pub, { guid: lab7, name: 'LAB-PC-7' });
    assert.equal(byName.policy.advertisements.length, 1);
    // Same image already applied: skipped, as the server would say.
    const same = await policyOf(pub, { guid: pc1.id, name: 'pc-1', appliedImageId: image.id });
    assert.equal(same.policy.advertisements[0]!.state, 'skip-same-image');
    // Not a member (pc-2 is enrolled but not in the collection).
    const none = await policyOf(pub, { guid: randomUUID(), name: 'pc-2' });
    assert.deepEqual(none.policy.advertisements, []);
    assert.deepEqual(none.rejected, []);
    // A share that is not there is an error, not an empty policy.
    await assert.rejects(policyOf(join(work, 'not-mounted'), { guid: pc1.id, name: 'pc-1' }), {
      code: 'DP_UNREACHABLE',
    });
  });

  test('a tampered document, a missing signature or another key is never returned', async () => {
    const server = get();
    const rel = 'serverless/advertisements/srvless-ad.json';
    const machine = { guid: pc1.id, name: 'pc-1' };

    const tampered = join(work, `${server.kind}-tampered`);
    cpSync(pub, tampered, { recursive: true });
    const bytes = readFileSync(join(tampered, rel));
    // One byte: the wave of the first target, 1 → 2 (still valid JSON, still well formed).
    const at = bytes.indexOf('"wave": 1');
    assert.ok(at > 0);
    bytes[at + '"wave": '.length] = '2'.charCodeAt(0);
    writeFileSync(join(tampered, rel), bytes);
    const t = await policyOf(tampered, machine);
    assert.deepEqual(t.policy.advertisements, []);
    assert.equal(t.rejected.length, 1);
    assert.equal(t.rejected[0]!.code, 'PUBLICATION_SIGNATURE_INVALID');
    assert.match(t.rejected[0]!.message, /altered after it was signed/);

    const wrongKey = await policyOf(pub, machine, other.publicPem);
    assert.deepEqual(wrongKey.policy.advertisements, []);
    assert.match(wrongKey.rejected[0]!.message, /signed by key .*, not the trusted key/);

    const unsigned = join(work, `${server.kind}-unsigned`);
    cpSync(pub, unsigned, { recursive: true });
    rmSync(join(unsigned, `${rel}.sig`));
    const u = await policyOf(unsigned, machine);
    assert.deepEqual(u.policy.advertisements, []);
    assert.match(u.rejected[0]!.message, /no signature file/);
  });

  test('an expired copy, and an older copy put back on the share (a replay), are never returned', async () => {
    const server = get();
    const key = createPrivateKey(readFileSync(admin.privateFile));
    const folder = join(work, `${server.kind}-replay`);
    const rel = 'serverless/advertisements/srvless-ad.json';
    const day = 86_400_000;
    const T1 = Date.parse('2026-03-01T00:00:00Z');
    const publish = (at: number, validForMs?: number | null) =>
      publishAdvertisement({
        publication,
        from: [server.store.root],
        to: folder,
        key,
        allMachines: true,
        ...(validForMs !== undefined ? { validForMs } : {}),
        now: () => new Date(at),
      });
    const read = (at: number, accepted?: AcceptedPublications) => {
      const rejected: ReimageError[] = [];
      return readServerlessPolicy(
        { location: folder, publicKey: admin.publicPem },
        { guid: pc1.id, name: 'pc-1' },
        () => new Date(at),
        { onRejected: (e) => rejected.push(e), ...(accepted ? { accepted } : {}) },
      ).then((policy) => ({ names: policy.advertisements.map((a) => a.name), rejected }));
    };

    // Valid for 10 days: read on day 5, refused on day 11.
    await publish(T1, 10 * day);
    assert.deepEqual((await read(T1 + 5 * day)).names, ['srvless-ad']);
    const expired = await read(T1 + 11 * day);
    assert.deepEqual(expired.names, []);
    assert.equal(expired.rejected[0]?.code, 'PUBLICATION_STALE');
    assert.match(expired.rejected[0]!.message, /expired at 2026-03-11T00:00:00.000Z/);

    // The default is 90 days; "never" (null) writes no expiry.
    await publish(T1);
    const withDefault = JSON.parse(readFileSync(join(folder, rel), 'utf8')) as {
      expiresAt: string;
    };
    assert.equal(withDefault.expiresAt, new Date(T1 + 90 * day).toISOString());
    await publish(T1, null);
    const old = {
      doc: readFileSync(join(folder, rel)),
      sig: readFileSync(join(folder, `${rel}.sig`)),
    };
    assert.equal('expiresAt' in JSON.parse(old.doc.toString('utf8')), false);

    // A machine that accepted the copy of day 20 refuses the copy of day 0 put back.
    const memory = acceptedPublicationsFile(join(work, `${server.kind}-accepted.json`));
    assert.deepEqual((await read(T1 + day, memory)).names, ['srvless-ad']);
    await publish(T1 + 20 * day, null);
    assert.deepEqual((await read(T1 + 21 * day, memory)).names, ['srvless-ad']);
    assert.equal(memory.get(publication.advertisement.id), new Date(T1 + 20 * day).toISOString());
    writeFileSync(join(folder, rel), old.doc);
    writeFileSync(join(folder, `${rel}.sig`), old.sig);
    const replayed = await read(T1 + 22 * day, memory);
    assert.deepEqual(replayed.names, []);
    assert.equal(replayed.rejected[0]?.code, 'PUBLICATION_STALE');
    assert.match(replayed.rejected[0]!.message, /a replay/);
    // The memory survives a restart (it is a file in the kept area).
    const again = await read(
      T1 + 22 * day,
      acceptedPublicationsFile(join(work, `${server.kind}-accepted.json`)),
    );
    assert.deepEqual(again.names, []);
    // A machine with no memory of the newer copy takes the old one: the expiry is what bounds it.
    assert.deepEqual((await read(T1 + 22 * day)).names, ['srvless-ad']);
  });

  test('the folder served by nginx works over http too', { skip: nginxSkip() }, async () => {
    const server = get();
    const nginx = await startNginx(pub);
    try {
      const { policy, rejected } = await policyOf(nginx.url, { guid: pc1.id, name: 'pc-1' });
      assert.deepEqual(rejected, []);
      assert.equal(policy.advertisements.length, 1);
      const a = policy.advertisements[0]!;
      assert.equal(a.content[0]!.address, nginx.url);
      const into = ContentStore.open(join(work, `${server.kind}-staging-http`), { create: true });
      const f = await fetchImage({ sources: [openRemote(nginx.url)], imageId: image.id, into });
      assert.equal(f.badSources.length, 0);
      assert.ok(nginx.bytesSent('/serverless/index.json') > 0);
      // A wrong key over http: the index itself does not verify.
      const wrong = await policyOf(nginx.url, { guid: pc1.id, name: 'pc-1' }, other.publicPem);
      assert.deepEqual(wrong.policy.advertisements, []);
      assert.equal(wrong.rejected[0]!.code, 'PUBLICATION_SIGNATURE_INVALID');
    } finally {
      await nginx.stop();
    }
  });

  test('two processes dropping status at once never clash', async () => {
    // A drop folder that is not there (share not mounted) is an error, not a local folder.
    await assert.rejects(
      dropFolderSender(
        join(work, 'not-mounted'),
        pc1.id,
      )([{ seq: 1, id: 1002, time: '2026-01-01T00:00:00Z' }]),
      { code: 'DP_UNREACHABLE' },
    );
    assert.ok(!existsSync(join(work, 'not-mounted')));
    mkdirSync(drop);
    await Promise.all([
      senderProcess(drop, pc1.id, 'pc-1', 60),
      senderProcess(drop, lab7, 'lab-pc-7', 60),
    ]);
    for (const guid of [pc1.id, lab7]) {
      const files = readdirSync(join(drop, guid));
      // 60 batches and one resent: 61 whole files, no temporary file left.
      assert.equal(files.length, 61, files.join(' '));
      assert.ok(
        files.every((f) => /^\d+-\d+-[0-9a-f]{16}\.json$/.test(f)),
        files.join(' '),
      );
      const seqs = files.flatMap((f) =>
        (
          JSON.parse(readFileSync(join(drop, guid, f), 'utf8')) as { messages: { seq: number }[] }
        ).messages.map((m) => m.seq),
      );
      assert.equal(new Set(seqs).size, 600);
    }
    // The sender used in-process, as the agent's outbox does.
    await dropFolderSender(
      drop,
      pc1.id,
    )([{ seq: 601, id: 1002, time: '2026-01-01T01:00:00Z', advertisementId: ad.id }]);
  });

  test('a server started again imports the drop into the timelines, once', async () => {
    const server = get();
    await server.restart();
    // A malformed file is set aside; the others are imported.
    writeFileSync(join(drop, pc1.id, '700-700-bad.json'), '{"format": "reimage-status-drop"');
    const r = await server.call<{
      files: number;
      accepted: number;
      duplicates: number;
      machinesCreated: string[];
      rejected: { file: string; code: string }[];
    }>('POST', '/api/v1/status/import', { body: { folder: drop } });
    expectStatus(r, 200, 'import');
    assert.equal(r.body.files, 123);
    assert.equal(r.body.accepted, 1201);
    assert.equal(r.body.duplicates, 20);
    assert.deepEqual(r.body.machinesCreated, [lab7]);
    assert.deepEqual(
      r.body.rejected.map((x) => [x.file, x.code]),
      [[`${pc1.id}/700-700-bad.json`, 'STATUS_DROP_INVALID']],
    );
    assert.ok(existsSync(join(drop, '.rejected', pc1.id, '700-700-bad.json')));
    assert.deepEqual(readdirSync(join(drop, pc1.id)), []);

    const timeline = async (m: string) => {
      const t = await server.call<{ items: { seq: number; advertisementId: string | null }[] }>(
        'GET',
        `/api/v1/machines/${m}/timeline`,
        { role: 'read-only' },
      );
      expectStatus(t, 200, 'timeline');
      return t.body.items;
    };
    const first = await timeline(pc1.id);
    assert.deepEqual(
      first.map((s) => s.seq),
      Array.from({ length: 601 }, (_, i) => i + 1),
    );
    assert.equal(first[600]!.advertisementId, ad.id);
    const lab = await server.call<{ name: string; tags: string[] }>(
      'GET',
      `/api/v1/machines/${lab7}`,
      { role: 'read-only' },
    );
    expectStatus(lab, 200, 'the recorded machine');
    assert.equal(lab.body.name, 'lab-pc-7');
    assert.deepEqual(lab.body.tags, ['serverless']);
    assert.equal((await timeline(lab7)).length, 600);

    // The same drop imported twice (by the CLI this time): the files put back, nothing added.
    for (const guid of [pc1.id, lab7])
      for (const f of readdirSync(join(drop, '.imported', guid)))
        renameSync(join(drop, '.imported', guid, f), join(drop, guid, f));
    await server.app.listen({ host: '127.0.0.1', port: 0 });
    const addr = server.app.server.address() as { port: number };
    const child = reimageAsync(
      [
        'status',
        'import',
        drop,
        '--server',
        `http://127.0.0.1:${addr.port}`,
        '--token',
        server.tokens.admin,
        '--json',
      ],
      { env: { PATH: process.env.PATH ?? '', HOME: work, XDG_CONFIG_HOME: work } },
    );
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    assert.equal(await new Promise((resolve) => child.on('exit', resolve)), 0, stderr);
    const again = (
      JSON.parse(stdout) as {
        imported: { files: number; accepted: number; duplicates: number };
      }
    ).imported;
    assert.equal(again.files, 123);
    assert.equal(again.accepted, 0);
    assert.equal(again.duplicates, 1221);
    assert.deepEqual(await timeline(pc1.id), first);

    const operator = await server.call('POST', '/api/v1/status/import', {
      role: 'operator',
      body: { folder: drop },
    });
    expectStatus(operator, 403, 'operators may not import');
  });

  test('a package whose settings hold secrets is not published', async () => {
    const server = get();
    const settings = exampleSettings();
    (settings.machineState as Record<string, unknown>).productKey = { set: 'AAAAA-BBBBB-CCCCC' };
    await createPackage(
      server,
      packageFiles({ name: 'srvless-secret', version: '1.0', image: image.id, settings }),
    );
    await createAdvertisement(server, {
      name: 'srvless-secret-ad',
      package: 'srvless-secret@1.0',
      collection: 'srvless-lab',
    });
    const res = await server.call<{ error: { code: string; message: string } }>(
      'GET',
      '/api/v1/advertisements/srvless-secret-ad/publication',
      { role: 'operator' },
    );
    expectStatus(res, 409, 'publication with secrets');
    assert.equal(res.body.error.code, 'PUBLICATION_REFUSED');
    assert.match(res.body.error.message, /\/machineState\/productKey\/set/);
    assert.ok(!res.raw.includes('AAAAA-BBBBB-CCCCC'));

    const disabled = await server.call('PATCH', '/api/v1/advertisements/srvless-ad', {
      role: 'operator',
      body: { enabled: false },
    });
    expectStatus(disabled, 200, 'disable');
    const off = await server.call<{ error: { code: string } }>(
      'GET',
      '/api/v1/advertisements/srvless-ad/publication',
      { role: 'operator' },
    );
    expectStatus(off, 409, 'publication of a disabled advertisement');
  });
});
