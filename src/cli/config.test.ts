import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { isReimageError } from '../errors.js';
import {
  defaultConfigFile,
  resolveConnection,
  saveConnection,
  type Connection,
  type ConnectionFlags,
  type Environment,
} from './config.js';

let root: string;
before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'reimage-config-test-'));
});
after(() => {
  fs.rmSync(root, { recursive: true, force: true });
});

let seq = 0;
function configPath(): string {
  return path.join(root, `c${seq++}`, 'reimage', 'config.json');
}

const FP_FILE = 'sha256:11';
const FP_ENV = 'sha256:22';
const FP_FLAG = 'sha256:33';

describe('resolveConnection', () => {
  const fileA = { server: 'https://a.example:8443', token: 'file-token', fingerprint: FP_FILE };
  const cases: {
    name: string;
    flags?: ConnectionFlags;
    env?: Environment;
    file?: Record<string, unknown>;
    want: Connection | undefined;
  }[] = [
    { name: 'nothing anywhere', want: undefined },
    {
      name: 'the file alone',
      file: fileA,
      want: {
        ...fileA,
        source: { server: 'file', token: 'file', fingerprint: 'file' },
      },
    },
    {
      name: 'the environment beats the file',
      file: fileA,
      env: { REIMAGE_TOKEN: 'env-token', REIMAGE_SERVER_FINGERPRINT: FP_ENV },
      want: {
        server: fileA.server,
        token: 'env-token',
        fingerprint: FP_ENV,
        source: { server: 'file', token: 'env', fingerprint: 'env' },
      },
    },
    {
      name: 'a flag beats the environment',
      file: fileA,
      env: { REIMAGE_TOKEN: 'env-token', REIMAGE_SERVER_FINGERPRINT: FP_ENV },
      flags: { token: 'flag-token', fingerprint: FP_FLAG },
      want: {
        server: fileA.server,
        token: 'flag-token',
        fingerprint: FP_FLAG,
        source: { server: 'file', token: 'flag', fingerprint: 'flag' },
      },
    },
    {
      name: 'the same server named by a flag keeps the file’s token and pin',
      file: fileA,
      flags: { server: 'https://a.example:8443/' },
      want: {
        server: 'https://a.example:8443/',
        token: 'file-token',
        fingerprint: FP_FILE,
        source: { server: 'flag', token: 'file', fingerprint: 'file' },
      },
    },
    {
      name: 'another server does not get the file’s token or pin',
      file: fileA,
      env: { REIMAGE_SERVER: 'https://b.example' },
      want: { server: 'https://b.example', source: { server: 'env' } },
    },
    {
      name: 'the environment alone',
      env: {
        REIMAGE_SERVER: 'https://b.example',
        REIMAGE_TOKEN: 'env-token',
        REIMAGE_SERVER_FINGERPRINT: FP_ENV,
      },
      want: {
        server: 'https://b.example',
        token: 'env-token',
        fingerprint: FP_ENV,
        source: { server: 'env', token: 'env', fingerprint: 'env' },
      },
    },
    {
      name: 'a server flag beats the environment’s',
      env: { REIMAGE_SERVER: 'https://b.example', REIMAGE_TOKEN: 'env-token' },
      flags: { server: 'https://c.example' },
      want: {
        server: 'https://c.example',
        token: 'env-token',
        source: { server: 'flag', token: 'env' },
      },
    },
    {
      name: 'empty values count as not given',
      file: { server: 'https://a.example:8443', fingerprint: '' },
      env: { REIMAGE_SERVER: '', REIMAGE_TOKEN: '' },
      flags: { server: '', token: '' },
      want: { server: 'https://a.example:8443', source: { server: 'file' } },
    },
    {
      name: 'a token without a server is no connection',
      env: { REIMAGE_TOKEN: 'env-token' },
      want: undefined,
    },
  ];

  for (const c of cases) {
    it(c.name, async () => {
      const configFile = configPath();
      if (c.file !== undefined) {
        fs.mkdirSync(path.dirname(configFile), { recursive: true });
        fs.writeFileSync(configFile, JSON.stringify(c.file), { mode: 0o600 });
      }
      const got = await resolveConnection({ flags: c.flags ?? {}, env: c.env ?? {}, configFile });
      assert.deepEqual(got, c.want);
    });
  }

  it('refuses a config file with a token that others can read', async (t) => {
    if (process.platform === 'win32') return t.skip('no POSIX modes');
    const configFile = configPath();
    fs.mkdirSync(path.dirname(configFile), { recursive: true });
    fs.writeFileSync(configFile, JSON.stringify({ server: 'https://a', token: 't' }));
    for (const mode of [0o644, 0o640, 0o604, 0o660]) {
      fs.chmodSync(configFile, mode);
      await assert.rejects(
        resolveConnection({ flags: {}, env: {}, configFile }),
        (e: unknown) =>
          isReimageError(e, 'SERVER_CONFIG_INVALID') &&
          e.message.includes(`chmod 600 ${configFile}`),
      );
    }
    // Even when the token would not be used, the file is not read past that check.
    await assert.rejects(
      resolveConnection({ flags: { server: 'https://a', token: 'x' }, env: {}, configFile }),
      (e: unknown) => isReimageError(e, 'SERVER_CONFIG_INVALID'),
    );
    fs.chmodSync(configFile, 0o600);
    const ok = await resolveConnection({ flags: {}, env: {}, configFile });
    assert.equal(ok?.token, 't');
  });

  it('reads a config file without a token whatever its mode', async () => {
    const configFile = configPath();
    fs.mkdirSync(path.dirname(configFile), { recursive: true });
    fs.writeFileSync(configFile, JSON.stringify({ server: 'https://a', fingerprint: FP_FILE }));
    fs.chmodSync(configFile, 0o644);
    const got = await resolveConnection({ flags: {}, env: {}, configFile });
    assert.equal(got?.fingerprint, FP_FILE);
  });

  it('refuses a malformed config file, naming it', async () => {
    for (const text of ['{ not json', '[1]', '{"server": 5}']) {
      const configFile = configPath();
      fs.mkdirSync(path.dirname(configFile), { recursive: true });
      fs.writeFileSync(configFile, text, { mode: 0o600 });
      await assert.rejects(
        resolveConnection({ flags: {}, env: {}, configFile }),
        (e: unknown) => isReimageError(e, 'INVALID_ARGUMENT') && e.message.includes(configFile),
        text,
      );
    }
  });

  it('finds the config file under XDG_CONFIG_HOME, else ~/.config', () => {
    assert.equal(
      defaultConfigFile({ XDG_CONFIG_HOME: '/x/cfg', HOME: '/home/u' }),
      path.join('/x/cfg', 'reimage', 'config.json'),
    );
    assert.equal(
      defaultConfigFile({ HOME: '/home/u' }),
      path.join('/home/u', '.config', 'reimage', 'config.json'),
    );
    // A relative XDG_CONFIG_HOME is invalid per the XDG spec and ignored.
    assert.equal(
      defaultConfigFile({ XDG_CONFIG_HOME: 'rel', HOME: '/home/u' }),
      path.join('/home/u', '.config', 'reimage', 'config.json'),
    );
  });

  it('uses the default config file when none is given', async () => {
    const xdg = path.join(root, 'xdg');
    const file = path.join(xdg, 'reimage', 'config.json');
    await saveConnection(file, { server: 'https://d.example', token: 'd' });
    const got = await resolveConnection({ flags: {}, env: { XDG_CONFIG_HOME: xdg } });
    assert.equal(got?.server, 'https://d.example');
    assert.equal(got?.token, 'd');
  });
});

describe('saveConnection', () => {
  it('writes a private file that resolveConnection reads back', async () => {
    const file = configPath();
    await saveConnection(file, { server: 'https://a', token: 'secret', fingerprint: FP_FILE });
    if (process.platform !== 'win32') {
      assert.equal(fs.statSync(file).mode & 0o777, 0o600);
      assert.equal(fs.statSync(path.dirname(file)).mode & 0o777, 0o700);
    }
    assert.deepEqual(JSON.parse(fs.readFileSync(file, 'utf8')), {
      server: 'https://a',
      token: 'secret',
      fingerprint: FP_FILE,
    });
    assert.deepEqual(await resolveConnection({ flags: {}, env: {}, configFile: file }), {
      server: 'https://a',
      token: 'secret',
      fingerprint: FP_FILE,
      source: { server: 'file', token: 'file', fingerprint: 'file' },
    });
  });

  it('replaces the file and fixes a loose mode, leaving no temporary file', async () => {
    const file = configPath();
    fs.mkdirSync(path.dirname(file), { recursive: true });
    fs.writeFileSync(file, '{"server":"https://old"}');
    fs.chmodSync(file, 0o644);
    await saveConnection(file, { server: 'https://new', token: 't' });
    if (process.platform !== 'win32') assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(fs.readdirSync(path.dirname(file)), ['config.json']);
    const got = await resolveConnection({ flags: {}, env: {}, configFile: file });
    assert.equal(got?.server, 'https://new');
    assert.equal(got?.fingerprint, undefined);
  });
});
