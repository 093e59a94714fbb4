import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
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
import { canConnect, freePort, serviceSkip } from './services.js';

/**
 * A throwaway Samba server for the tests of one file: its own smb.conf, password database and
 * state in a temporary folder, `smbd` on 127.0.0.1 and a free port, one share `[state]` that
 * the Unix user `reimage-test` (made with useradd when missing) may write, with a random
 * password. Stopped and removed at the end.
 *
 * Needs root and Debian's `samba` and `smbclient`. Where that is missing the share tests skip,
 * except under CI (CI=true), where that is a failure.
 */
export interface Samba {
  /** smb://127.0.0.1:PORT/state */
  url: string;
  username: string;
  password: string;
  /** The share's folder on this machine. */
  shareDir: string;
  /** smbd's log files (to check that no secret reaches them). */
  logs(): string;
  stop(): Promise<void>;
}

export const SAMBA_USER = 'reimage-test';

function which(tool: string): string | undefined {
  for (const d of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/bin', '/sbin']) {
    if (d && existsSync(join(d, tool))) return join(d, tool);
  }
  return undefined;
}

/** Why Samba tests cannot run here, or undefined when they can. */
export function sambaUnavailable(): string | undefined {
  for (const tool of ['smbd', 'smbpasswd']) {
    if (!which(tool)) return `Samba is not installed (apt-get install samba smbclient): no ${tool}`;
  }
  if (!which('smbclient')) return 'smbclient is not installed (apt-get install smbclient)';
  if (process.getuid?.() !== 0) return 'starting a throwaway Samba server needs root';
  return undefined;
}

/** Skip option for node:test: skip locally, fail under CI. */
export function sambaSkip(): string | false {
  return serviceSkip('Samba', sambaUnavailable());
}

function ensureUser(): { uid: number; gid: number } {
  if (spawnSync('id', ['-u', SAMBA_USER]).status !== 0) {
    const r = spawnSync(
      'useradd',
      ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', SAMBA_USER],
      { encoding: 'utf8' },
    );
    // Another test process may have made it meanwhile.
    if (r.status !== 0 && spawnSync('id', ['-u', SAMBA_USER]).status !== 0) {
      throw new Error(`useradd ${SAMBA_USER} failed: ${r.stderr}`);
    }
  }
  const id = (flag: string) =>
    Number(spawnSync('id', [flag, SAMBA_USER], { encoding: 'utf8' }).stdout.trim());
  return { uid: id('-u'), gid: id('-g') };
}

export async function startSamba(): Promise<Samba> {
  const dir = mkdtempSync(join(tmpdir(), 'reimage-samba-'));
  // The share's user must get through to its folder.
  chmodSync(dir, 0o711);
  const { uid, gid } = ensureUser();
  const sub = (name: string, mode = 0o700) => {
    const d = join(dir, name);
    mkdirSync(d, { recursive: true, mode });
    return d;
  };
  const shareDir = sub('share');
  chownSync(shareDir, uid, gid);
  const priv = sub('private');
  const lock = sub('lock', 0o755);
  const port = await freePort();
  // A password with the characters that break naive quoting: blank, ';', '%', '"', '#', '$'.
  const password = `Pw ;%"#$${randomBytes(12).toString('base64url')}`;
  const conf = join(dir, 'smb.conf');
  writeFileSync(
    conf,
    [
      '[global]',
      '  server role = standalone server',
      `  smb ports = ${port}`,
      '  bind interfaces only = yes',
      '  interfaces = 127.0.0.1',
      '  disable netbios = yes',
      `  private dir = ${priv}`,
      `  lock directory = ${lock}`,
      `  state directory = ${sub('state', 0o755)}`,
      `  cache directory = ${sub('cache', 0o755)}`,
      `  pid directory = ${sub('pid', 0o755)}`,
      `  ncalrpc dir = ${join(lock, 'ncalrpc')}`,
      `  passdb backend = tdbsam:${join(priv, 'passdb.tdb')}`,
      `  log file = ${join(sub('log', 0o755), 'log.%m')}`,
      '  log level = 1',
      '  load printers = no',
      '  printcap name = /dev/null',
      '  disable spoolss = yes',
      '  map to guest = never',
      '  usershare path =',
      '',
      '[state]',
      `  path = ${shareDir}`,
      '  read only = no',
      `  valid users = ${SAMBA_USER}`,
      '',
    ].join('\n'),
  );
  // The password reaches smbpasswd on its standard input, never on a command line.
  const pw = spawnSync(which('smbpasswd')!, ['-c', conf, '-a', '-s', SAMBA_USER], {
    input: `${password}\n${password}\n`,
    encoding: 'utf8',
  });
  if (pw.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`smbpasswd failed: ${pw.stderr}`);
  }
  // smbd gets its own process group (detached): on SIGTERM it signals its whole group, which
  // must not be ours (--no-process-group keeps it from making one itself).
  const child: ChildProcess = spawn(
    which('smbd')!,
    ['--foreground', '--no-process-group', '-s', conf],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
      detached: true,
    },
  );
  const killGroup = () => {
    try {
      if (child.pid) process.kill(-child.pid, 'SIGKILL');
    } catch {
      /* gone already */
    }
  };
  process.once('exit', killGroup);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let exitedEarly = false;
  void exited.then(() => (exitedEarly = true));
  const stop = async () => {
    if (!exitedEarly) {
      child.kill('SIGTERM');
      const timer = setTimeout(killGroup, 5000);
      await exited;
      clearTimeout(timer);
    }
    process.off('exit', killGroup);
    rmSync(dir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 15_000;
  while (!(await canConnect(port))) {
    if (exitedEarly || Date.now() > deadline) {
      await stop();
      throw new Error(`smbd did not start: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    url: `smb://127.0.0.1:${port}/state`,
    username: SAMBA_USER,
    password,
    shareDir,
    logs() {
      const logDir = join(dir, 'log');
      return [
        stderr,
        ...readdirSync(logDir, { withFileTypes: true })
          .filter((f) => f.isFile())
          .map((f) => readFileSync(join(logDir, f.name), 'utf8')),
      ].join('\n');
    },
    stop,
  };
}
