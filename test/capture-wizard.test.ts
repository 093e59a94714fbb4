import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { makeMachineTree } from '../src/lab/machine-tree.js';
import { reimage, reimageAsync } from './cli.js';
import { makeTestServer, type TestServer } from './support/server.js';
import { KEY, startTerminal } from './support/pty.js';
import { sambaSkip, startSamba, type Samba } from './support/samba.js';

const work = mkdtempSync(join(tmpdir(), 'reimage-wizard-test-'));
// Temporary stores of share captures go here, so the test sees that none is left.
const tmp = join(work, 'tmp');
mkdirSync(tmp);
after(() => rmSync(work, { recursive: true, force: true }));

/** Every entry under a folder with its type, size and content hash: to see that nothing changed. */
function snapshot(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string) => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const p = rel ? `${rel}/${name}` : name;
      const st = lstatSync(join(root, p));
      if (st.isDirectory()) {
        out.push(`d ${p} ${st.mode}`);
        walk(p);
      } else if (st.isSymbolicLink()) out.push(`l ${p} -> ${readlinkSync(join(root, p))}`);
      else
        out.push(
          `f ${p} ${st.mode} ${st.size} ${st.mtimeMs} ${createHash('sha256')
            .update(readFileSync(join(root, p)))
            .digest('hex')}`,
        );
    }
  };
  walk('');
  return out;
}

const env = { TMPDIR: tmp, REIMAGE_SHARE_PASSWORD: undefined, REIMAGE_STORE: undefined };
let tree: string;
let facts: Awaited<ReturnType<typeof makeMachineTree>>;

before(async () => {
  tree = join(work, 'model');
  facts = await makeMachineTree(tree, { scale: 'small', seed: 9 });
});

/** The source page for a folder source; `dest` is typed as is. */
async function sourcePage(t: ReturnType<typeof startTerminal>, name: string, dest: string) {
  await t.waitFor('── Source ──');
  await t.answer('What do you want to capture?', KEY.down);
  await t.answer('Root folder to capture:', tree);
  await t.answer('Image name:', name);
  await t.answer('Store the image in', dest);
}

/** Properties page with the prefilled values, plus one free property. */
async function propertiesPage(t: ReturnType<typeof startTerminal>) {
  await t.waitFor('── Image properties ──');
  await t.answer('Description:');
  await t.answer('Operating system:');
  await t.answer('Version:');
  await t.answer('Architecture:');
  await t.answer('Add a property', 'team=eng');
  await t.answer('Add a property');
}

describe('capture wizard on a terminal', () => {
  test('every page to a folder: source, generalization (listed, confirmed), properties, summary with Back, progress, completion', async () => {
    const before = snapshot(tree);
    const store = join(work, 'store-1');
    const t = startTerminal(['image', 'capture', '--read-rate', '2'], { env });
    await sourcePage(t, 'model-a', store);
    await t.waitFor('── Generalization ──');
    await t.answer('Generalize the image', 'y');
    const list = await t.waitFor(/Generalize these \d+ item/);
    assert.match(list, /emptied {2}\/etc\/machine-id/);
    assert.match(list, /left out {2}\/etc\/ssh\/ssh_host_ed25519_key /);
    assert.match(list, /left out {2}\/etc\/reimage\/credential/);
    assert.match(list, /\/root\/\.bash_history/);
    await t.answer('');
    await propertiesPage(t);
    const summary = await t.waitFor('Start the capture?');
    assert.match(summary, new RegExp(`source: +${tree}`));
    assert.match(summary, /image name: +model-a/);
    assert.match(summary, new RegExp(`destination: +folder ${store}`));
    assert.match(summary, /os=debian, version=12, arch=\w+, team=eng/);
    assert.match(summary, /generalize: +yes/);
    // Back: the source page again, with the answers as defaults.
    await t.answer('', KEY.down);
    await t.waitFor('── Source ──');
    for (const q of ['What do you want', 'Root folder', 'Image name:', 'Store the image in'])
      await t.answer(q);
    await t.answer('Generalize the image');
    await t.answer('Generalize these');
    await propertiesPage(t);
    await t.answer('Start the capture?');
    await t.waitFor('── Capturing ──');
    await t.waitFor(/captured: +[\d.]+ \w*B of [\d.]+ \w*B/);
    await t.waitFor(/elapsed: +\d\d:\d\d +remaining:/);
    const done = await t.waitFor(/stored in: +folder .*\n/);
    assert.equal(await t.exited, 0, t.screen());
    const id = /image id: +([0-9a-f]{64})/.exec(done)?.[1];
    assert.ok(id, done);
    assert.match(done, /name: +model-a/);
    assert.match(done, /size: +[\d.]+ MiB in \d+ files/);

    const show = reimage(['image', 'show', 'model-a', '--store', store, '--files', '--json']);
    assert.equal(show.status, 0, show.stderr);
    assert.equal(show.json.image.id, id);
    assert.equal(show.json.image.properties.custom.team, 'eng');
    assert.equal(show.json.image.properties.osFamily, 'debian');
    const files = (show.json.files as string[]).join('\n');
    assert.match(files, /file +0444 0:0 +0 \/etc\/machine-id/);
    assert.doesNotMatch(files, /ssh_host_/);
    assert.doesNotMatch(files, /\/etc\/reimage\/credential|bash_history|system\.journal/);
    assert.match(files, /file +\d+ \d+:\d+ +0 \/var\/log\/syslog\n/);
    // Generalization happened in the image only: the model computer is untouched.
    assert.deepEqual(snapshot(tree), before);
    assert.ok(readFileSync(join(tree, 'etc/machine-id'), 'utf8').startsWith(facts.machineId));
  });

  test('Ctrl-C on the progress page asks; "no" carries on, "yes" cancels and leaves the store as it was', async () => {
    const store = join(work, 'store-2');
    const first = reimage([
      'image',
      'capture',
      tree,
      '--name',
      'first',
      '--to',
      store,
      '--exclude',
      '/usr',
    ]);
    assert.equal(first.status, 0, first.stderr);
    const before = snapshot(store);
    const t = startTerminal(['image', 'capture', '--wizard', '--read-rate', '0.5'], { env });
    await sourcePage(t, 'second', store);
    await t.answer('Generalize the image', 'n');
    await propertiesPage(t);
    await t.answer('Start the capture?');
    await t.waitFor(/captured: +[\d.]+ \w*B of/);
    t.type(KEY.ctrlC);
    await t.answer('Cancel capture? nothing will be kept', 'n');
    await t.waitFor(/captured: +[\d.]+ \w*B of/);
    t.type(KEY.ctrlC);
    await t.answer('Cancel capture? nothing will be kept', 'y');
    await t.waitFor('Capture cancelled; nothing was kept.');
    assert.equal(await t.exited, 130);
    assert.deepEqual(
      snapshot(store),
      before,
      'the store is as it was: no image, no packs, no temp',
    );
    assert.deepEqual(readdirSync(tmp), [], 'no temporary files');
    const list = reimage(['image', 'list', '--store', store, '--json']);
    assert.deepEqual(
      list.json.images.map((i: { names: string[] }) => i.names),
      [['first']],
    );
  });

  test('Cancel on the summary page captures nothing; bad input is refused on its page', async () => {
    const store = join(work, 'store-3');
    const t = startTerminal(['image', 'capture'], { env });
    await t.waitFor('── Source ──');
    await t.answer('What do you want to capture?', KEY.down);
    await t.answer('Root folder to capture:', join(work, 'nowhere'));
    await t.waitFor('does not exist');
    // Clear the typed path and give the real one.
    t.type('\x15'.repeat(1) + '\b'.repeat(200));
    await t.answer('', tree);
    await t.answer('Image name:', 'bad name!');
    await t.waitFor('is not a valid image name');
    t.type('\b'.repeat(20));
    await t.answer('', 'ok-name');
    await t.answer('Store the image in', store);
    await t.answer('Generalize the image', 'n');
    await propertiesPage(t);
    await t.answer('Start the capture?', KEY.down + KEY.down);
    await t.waitFor('Cancelled; nothing was captured.');
    assert.equal(await t.exited, 130);
    assert.equal(existsSync(store), false);
  });
});

describe('capture to an SMB share', { skip: sambaSkip() }, () => {
  let samba: Samba;
  before(async () => {
    samba = await startSamba();
  });
  after(async () => {
    await samba?.stop();
  });
  const shareDest = () => `${samba.url.replace(/^smb:/, '')}/images`;

  test('a wrong password shows the error page; Back and the right password capture to the share', async () => {
    const t = startTerminal(['image', 'capture', '--read-rate', '4'], { env });
    await sourcePage(t, 'model-smb', shareDest());
    await t.answer('Account for the share', samba.username);
    await t.answer('Password for', 'wrong-password');
    await t.answer('Generalize the image', 'n');
    await propertiesPage(t);
    await t.answer('Start the capture?');
    const err = await t.waitFor('What now?');
    assert.match(err, /── Error ──/);
    assert.match(err, /SHARE_AUTH_FAILED: wrong user name or password/);
    await t.answer('', ''); // Back
    await t.waitFor('── Source ──');
    for (const q of [
      'What do you want',
      'Root folder',
      'Image name:',
      'Store the image in',
      'Account for the share',
    ])
      await t.answer(q);
    await t.answer('Password for', samba.password);
    await t.answer('Generalize the image', 'n');
    await propertiesPage(t);
    await t.answer('Start the capture?');
    await t.waitFor(/copying to the share: \d+\/\d+ files/);
    // Whatever runs now (smbclient included) carries no password in its arguments or environment.
    for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
      for (const f of ['cmdline', 'environ']) {
        let text = '';
        try {
          text = readFileSync(`/proc/${pid}/${f}`, 'latin1');
        } catch {
          continue; // gone meanwhile
        }
        assert.ok(!text.includes(samba.password), `the password is in /proc/${pid}/${f}`);
      }
    }
    const done = await t.waitFor(/copied: +\d+ files.*\n/);
    assert.equal(await t.exited, 0, t.screen());
    assert.match(done, /stored in: +share smb:\/\/127\.0\.0\.1:\d+\/state\/images as reimage-test/);
    // The share's folder is a content store with the image, whole.
    const shareStore = join(samba.shareDir, 'images');
    const v = reimage(['image', 'verify', 'model-smb', '--store', shareStore, '--json']);
    assert.equal(v.status, 0, v.stderr);
    assert.equal(v.json.ok, true);
    assert.deepEqual(readdirSync(tmp), [], 'no temporary store left');
    assert.ok(!t.screen().includes(samba.password), 'the password is never shown');
    assert.ok(!samba.logs().includes(samba.password));
  });

  test('cancelled on the progress page, a share capture leaves the share and the temporary folder as they were', async () => {
    const shareStore = join(samba.shareDir, 'images');
    const before = existsSync(shareStore) ? snapshot(shareStore) : [];
    const t = startTerminal(['image', 'capture', '--read-rate', '0.5'], {
      env: { ...env, REIMAGE_SHARE_PASSWORD: samba.password },
    });
    await sourcePage(t, 'cancelled-smb', shareDest());
    await t.answer('Account for the share', samba.username);
    await t.answer('Password for'); // Enter keeps the one from the environment
    await t.answer('Generalize the image', 'n');
    await propertiesPage(t);
    await t.answer('Start the capture?');
    await t.waitFor(/captured: +[\d.]+ \w*B of/);
    t.type(KEY.ctrlC);
    await t.answer('Cancel capture? nothing will be kept', 'y');
    await t.waitFor('Capture cancelled; nothing was kept.');
    assert.equal(await t.exited, 130);
    assert.deepEqual(existsSync(shareStore) ? snapshot(shareStore) : [], before);
    assert.deepEqual(readdirSync(tmp), []);
  });

  test('a scripted capture from an answer file copies only what the share lacks', async () => {
    const answers = join(work, 'answers.yaml');
    writeFileSync(
      answers,
      [
        `source: ${tree}`,
        'name: scripted',
        `destination: ${shareDest()}`,
        `user: ${samba.username}`,
        'description: scripted capture',
        'os: debian',
        'properties:',
        '  team: ops',
        'generalize: true',
        'exclude: [/srv]',
        '',
      ].join('\n'),
    );
    const pwFile = join(work, 'pw');
    writeFileSync(pwFile, samba.password + '\n', { mode: 0o600 });
    const run = () =>
      reimage(
        [
          'image',
          'capture',
          '--answers',
          answers,
          '--password-file',
          pwFile,
          '--yes',
          '--json',
          '--progress',
          'none',
        ],
        { env: { ...process.env, ...env, TMPDIR: tmp } as NodeJS.ProcessEnv },
      );
    const a = run();
    assert.equal(a.status, 0, a.stderr);
    assert.equal(a.json.image.properties.custom.team, 'ops');
    assert.equal(a.json.image.properties.description, 'scripted capture');
    // The same tree again: only the name record is copied.
    const b = run();
    assert.equal(b.status, 0, b.stderr);
    assert.equal(b.json.image.id, a.json.image.id);
    assert.ok(
      b.json.copied.files < a.json.copied.files,
      JSON.stringify([a.json.copied, b.json.copied]),
    );
    const list = reimage(['image', 'list', '--store', join(samba.shareDir, 'images'), '--json']);
    assert.ok(list.json.images.some((i: { names: string[] }) => i.names.includes('scripted')));
    assert.ok(!a.stderr.includes(samba.password) && !a.stdout.includes(samba.password));

    // A password in the answer file is refused, and not echoed.
    writeFileSync(
      answers,
      `source: ${tree}\nname: x\ndestination: ${shareDest()}\npassword: hunter2-secret\n`,
    );
    const bad = run();
    assert.equal(bad.status, 2);
    assert.match(bad.stderr + bad.stdout, /VALIDATION_FAILED/);
    assert.ok(!(bad.stderr + bad.stdout).includes('hunter2-secret'));
  });
});

describe('capture into the server library', () => {
  let server: TestServer;
  let url: string;
  before(async () => {
    server = await makeTestServer('sqlite');
    await server.app.listen({ host: '127.0.0.1', port: 0 });
    const a = server.app.server.address();
    assert.ok(a && typeof a === 'object');
    url = `http://127.0.0.1:${a.port}`;
  });
  after(async () => {
    await server?.close();
  });

  /** The CLI runs beside the server in this process: never a synchronous spawn here. */
  async function capture(args: string[], token: string) {
    const child = reimageAsync(
      ['image', 'capture', ...args, '--to', url, '--json', '--progress', 'none'],
      {
        env: {
          ...process.env,
          REIMAGE_TOKEN: token,
          XDG_CACHE_HOME: join(work, 'cache'),
          XDG_CONFIG_HOME: join(work, 'config'),
          REIMAGE_SERVER: '',
          REIMAGE_STORE: '',
        },
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const status = await new Promise<number | null>((r) => child.once('close', r));
    return { status, stderr, json: status === 0 ? JSON.parse(stdout) : undefined };
  }

  test('a capture goes through the kept cache store; the next one uploads only what changed', async () => {
    const model = join(work, 'server-model');
    await makeMachineTree(model, { scale: 'small', seed: 21 });
    const a = await capture([model, '--name', 'srv-model'], server.tokens.operator);
    assert.equal(a.status, 0, a.stderr);
    assert.ok(a.json.uploaded.chunks > 0);
    assert.match(a.json.destination, /server library/);
    writeFileSync(join(model, 'etc/motd'), 'version 2 of the model\n');
    const b = await capture([model, '--name', 'srv-model'], server.tokens.operator);
    assert.equal(b.status, 0, b.stderr);
    assert.ok(
      b.json.uploaded.chunks < a.json.uploaded.chunks / 10,
      `second capture sent ${b.json.uploaded.chunks} chunks, the first ${a.json.uploaded.chunks}`,
    );
    const res = await server.call<{ items: Array<{ name: string; id: string }> }>(
      'GET',
      '/api/v1/images',
    );
    assert.equal(res.status, 200, res.raw);
    assert.ok(JSON.stringify(res.body).includes(b.json.image.id), res.raw);
    assert.ok(existsSync(join(work, 'cache', 'reimage', 'capture-store', 'reimage-store.json')));
    // A wrong token fails before anything is captured.
    const imagesBefore = readdirSync(
      join(work, 'cache', 'reimage', 'capture-store', 'objects', 'images'),
    );
    const bad = await capture([model, '--name', 'srv-bad'], 'rit_wrong');
    assert.equal(bad.status, 1);
    assert.match(bad.stderr, /UNAUTHENTICATED/);
    assert.deepEqual(
      readdirSync(join(work, 'cache', 'reimage', 'capture-store', 'objects', 'images')),
      imagesBefore,
    );
  });
});
