import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtemp, open, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ReimageError } from '../errors.js';
import type { StateBackend } from './state-store.js';

/**
 * A state store backend on an SMB share, reached in user space with Samba's `smbclient`
 * (no kernel cifs needed). The password goes to smbclient in an authentication file (mode 0600,
 * in a private 0700 temporary folder, removed as soon as smbclient exits): never on a command
 * line, in the environment, in a message or a log.
 *
 * Writes are queued and sent in batches (one smbclient run uploads many files): a put() is on
 * the share after the next flush(), which the state writer calls before it writes the manifest.
 * Every file is uploaded under a temporary name and renamed, so readers see whole files only.
 */
export interface ShareOptions {
  /** `smb://host[:port]/share[/folder...]`; no credentials in it. */
  url: string;
  username: string;
  password: string;
  domain?: string;
  /** Where files are staged and the authentication file lives (default: the OS's). */
  tmpDir?: string;
  /** The smbclient program (default: `smbclient` on PATH). */
  smbclient?: string;
  /** Queued bytes that start an upload (default 64 MiB). */
  batchBytes?: number;
  /** Queued files that start an upload (default 256). */
  batchFiles?: number;
  /** smbclient's per-operation timeout (default 60 s). */
  timeoutSeconds?: number;
  /**
   * SMB signing or SMB3 transport encryption (smbclient --client-protection); default: what
   * client and server negotiate. The store's own encryption does not depend on it.
   */
  protection?: 'sign' | 'encrypt';
}

export interface ShareBackend extends StateBackend {
  flush(): Promise<void>;
  /** Removes local temporary files; the backend can still be used afterwards. */
  close(): Promise<void>;
}

interface ShareAddress {
  host: string;
  port?: number;
  share: string;
  /** The folder below the share, '/'-separated, '' for its root. */
  base: string;
}

// What smbclient's command parser and SMB file names cannot carry.
const UNSAFE = /["\\;*?<>|:\x00-\x1f\x7f]/;

function parseUrl(url: string): ShareAddress {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      'the share address is not a URL: use smb://host/share/folder',
    );
  }
  if (u.protocol !== 'smb:') {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `the share address must start with smb://, not ${u.protocol}//`,
    );
  }
  if (u.username || u.password) {
    // Not echoed: it may carry a password.
    throw new ReimageError(
      'INVALID_ARGUMENT',
      'the share address must not carry a user name or password: give them separately',
    );
  }
  if (u.search || u.hash)
    throw new ReimageError('INVALID_ARGUMENT', 'the share address has a query or fragment');
  const host = u.hostname;
  if (!host || !/^[A-Za-z0-9.-]+$/.test(host)) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `the share address needs a host name or IPv4 address (${url})`,
    );
  }
  let segments: string[];
  try {
    segments = u.pathname
      .split('/')
      .filter((s) => s !== '')
      .map((s) => decodeURIComponent(s));
  } catch {
    throw new ReimageError('INVALID_ARGUMENT', `the share address has a bad %-escape (${url})`);
  }
  if (segments.length === 0) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `the share address names no share: smb://${host}/SHARE/folder`,
    );
  }
  for (const s of segments) {
    if (s === '.' || s === '..' || UNSAFE.test(s) || s.trim() !== s) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `the share address has a folder name that cannot be used: ${JSON.stringify(s)}`,
      );
    }
  }
  return {
    host,
    port: u.port ? Number(u.port) : undefined,
    share: segments[0]!,
    base: segments.slice(1).join('/'),
  };
}

function checkCredential(what: string, value: string, isPassword: boolean): void {
  // smbclient's authentication file is line-based and strips leading blanks of a value.
  const bad =
    typeof value !== 'string' ||
    /[\r\n\0]/.test(value) ||
    (isPassword ? /^[ \t]/.test(value) : value.trim() !== value || value === '');
  if (bad) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      isPassword
        ? 'the share password cannot start with a space or tab or contain a line break (smbclient cannot take it)'
        : `the share ${what} is empty, has surrounding blanks or a line break`,
    );
  }
}

type Op =
  | { kind: 'put'; local: string; remote: string; bytes: number }
  | { kind: 'rename'; from: string; to: string };

interface Batch {
  dir: string;
  ops: Op[];
  bytes: number;
  files: number;
}

const AUTH_STATUSES = new Set([
  'NT_STATUS_LOGON_FAILURE',
  'NT_STATUS_WRONG_PASSWORD',
  'NT_STATUS_NO_SUCH_USER',
  'NT_STATUS_ACCOUNT_DISABLED',
  'NT_STATUS_ACCOUNT_LOCKED_OUT',
  'NT_STATUS_ACCOUNT_RESTRICTION',
  'NT_STATUS_ACCOUNT_EXPIRED',
  'NT_STATUS_PASSWORD_EXPIRED',
  'NT_STATUS_PASSWORD_MUST_CHANGE',
  'NT_STATUS_INVALID_LOGON_HOURS',
  'NT_STATUS_INVALID_WORKSTATION',
  'NT_STATUS_LOGON_TYPE_NOT_GRANTED',
]);
const NOT_FOUND = /NT_STATUS_(OBJECT_NAME_NOT_FOUND|OBJECT_PATH_NOT_FOUND|NO_SUCH_FILE)\b/;
const ENTRY =
  /^ {2}(.+?)\s+([A-Z]+)\s+(\d+)\s+(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$/;
const MAX_COMMANDS = 60 * 1024; // characters per smbclient run (an argument may have 128 KiB)

/** FileHandle.write may write less than asked for; this does not. */
async function writeAll(fh: FileHandle, data: Buffer): Promise<void> {
  for (let at = 0; at < data.length;)
    at += (await fh.write(data, at, data.length - at)).bytesWritten;
}

class SmbBackend implements ShareBackend {
  readonly description: string;
  private readonly address: ShareAddress;
  private batch: Batch | undefined;
  private readonly knownDirs = new Set<string>();
  private readonly prefetched = new Map<string, string>();
  private prefetchDirs: string[] = [];

  constructor(private readonly o: ShareOptions) {
    this.address = parseUrl(o.url);
    checkCredential('user name', o.username, false);
    checkCredential('password', o.password, true);
    if (o.domain !== undefined) checkCredential('domain', o.domain, false);
    const a = this.address;
    this.description = `smb://${a.host}${a.port ? `:${a.port}` : ''}/${a.share}${a.base ? `/${a.base}` : ''}`;
  }

  private get shareUrl(): string {
    const a = this.address;
    return `smb://${a.host}${a.port ? `:${a.port}` : ''}/${a.share}`;
  }

  private remote(name: string): string {
    if (
      UNSAFE.test(name) ||
      name.startsWith('/') ||
      name.split('/').some((s) => s === '..' || s === '.')
    ) {
      throw new Error(`bug: ${JSON.stringify(name)} is not a state store name`);
    }
    const trimmed = name.endsWith('/') ? name.slice(0, -1) : name;
    return [this.address.base, trimmed].filter((s) => s !== '').join('/');
  }

  // -- running smbclient ------------------------------------------------------------------------

  private async privateDir(): Promise<string> {
    const dir = await mkdtemp(join(this.o.tmpDir ?? tmpdir(), 'reimage-smb-'));
    if (UNSAFE.test(dir)) {
      await rm(dir, { recursive: true, force: true });
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `the temporary folder ${dir} has characters smbclient cannot take`,
      );
    }
    return dir; // mkdtemp makes it 0700
  }

  /** Runs smbclient with these commands (already split to fit); returns its output. */
  private async run(commands: string[], dir?: string): Promise<string> {
    const own = dir ?? (await this.privateDir());
    const auth = join(own, `auth-${randomUUID().slice(0, 8)}`);
    const lines = [`username = ${this.o.username}`, `password = ${this.o.password}`];
    if (this.o.domain !== undefined) lines.push(`domain = ${this.o.domain}`);
    try {
      await writeFile(auth, lines.join('\n') + '\n', { mode: 0o600, flag: 'wx' });
      const a = this.address;
      const args = [`//${a.host}/${a.share}`, '-A', auth];
      if (a.port) args.push('-p', String(a.port));
      args.push('-t', String(this.o.timeoutSeconds ?? 60));
      if (this.o.protection) args.push(`--client-protection=${this.o.protection}`);
      args.push('-c', commands.join('; '));
      const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C', LANG: 'C' };
      for (const k of ['PASSWD', 'PASSWD_FD', 'PASSWD_FILE']) delete env[k];
      const { code, output } = await new Promise<{ code: number; output: string }>((res, rej) => {
        const child = spawn(this.o.smbclient ?? 'smbclient', args, {
          env,
          stdio: ['ignore', 'pipe', 'pipe'],
        });
        const parts: Buffer[] = [];
        child.stdout.on('data', (d: Buffer) => parts.push(d));
        child.stderr.on('data', (d: Buffer) => parts.push(d));
        child.on('error', rej);
        child.on('close', (c) =>
          res({ code: c ?? 1, output: Buffer.concat(parts).toString('utf8') }),
        );
      });
      this.checkConnection(code, output);
      return output;
    } catch (e) {
      if (
        (e as NodeJS.ErrnoException).code === 'ENOENT' &&
        (e as NodeJS.ErrnoException).syscall?.startsWith('spawn')
      ) {
        throw new ReimageError(
          'SHARE_CLIENT_UNAVAILABLE',
          `cannot reach ${this.shareUrl}: smbclient is not installed (apt-get install smbclient)`,
        );
      }
      throw e;
    } finally {
      await rm(auth, { force: true });
      if (!dir) await rm(own, { recursive: true, force: true });
    }
  }

  /** Removes the password from text that may end up in a message. */
  private scrub(text: string): string {
    const p = this.o.password;
    return (p ? text.split(p).join('***') : text).trim().slice(-2000);
  }

  /** Throws for a run that did not get to the share; errors of single commands are checkOps's. */
  private checkConnection(code: number, output: string): void {
    const status = /NT_STATUS_[A-Z0-9_]+/.exec(output)?.[0];
    const details = { url: this.shareUrl, user: this.o.username, status };
    const connecting =
      /session setup failed|tree connect failed|do_connect|protocol negotiation failed|Connection to \S+ failed/.test(
        output,
      );
    if (status && AUTH_STATUSES.has(status) && (connecting || code !== 0)) {
      throw new ReimageError(
        'SHARE_AUTH_FAILED',
        status === 'NT_STATUS_LOGON_FAILURE' ||
          status === 'NT_STATUS_WRONG_PASSWORD' ||
          status === 'NT_STATUS_NO_SUCH_USER'
          ? `wrong user name or password for ${this.shareUrl} (user ${this.o.username})`
          : `${this.shareUrl} refused the account ${this.o.username} (${status})`,
        { details },
      );
    }
    if (connecting) {
      if (status === 'NT_STATUS_ACCESS_DENIED') {
        throw new ReimageError(
          'SHARE_AUTH_FAILED',
          `the account ${this.o.username} may not use ${this.shareUrl} (${status})`,
          { details },
        );
      }
      if (status === 'NT_STATUS_BAD_NETWORK_NAME') {
        throw new ReimageError(
          'SHARE_UNREACHABLE',
          `${this.address.host} has no share named ${this.address.share} (${status})`,
          { details },
        );
      }
      throw new ReimageError(
        'SHARE_UNREACHABLE',
        `cannot reach ${this.shareUrl}${status ? ` (${status})` : ''}: ${this.scrub(output)}`,
        { details },
      );
    }
    if (
      code !== 0 &&
      !status &&
      !/does not exist|Error (opening|writing|reading) local file/.test(output)
    ) {
      throw new ReimageError(
        'STATE_STORE_IO_FAILED',
        `smbclient failed on ${this.shareUrl} (exit status ${code}): ${this.scrub(output)}`,
        { details },
      );
    }
  }

  /** Throws for error lines of a run that are not in `ignore`. */
  private checkOps(output: string, what: string, ignore?: (line: string) => boolean): void {
    for (const line of output.split('\n')) {
      const failed =
        /NT_STATUS_[A-Z0-9_]+/.test(line) ||
        /does not exist|Error opening local file|Error writing local file|Error reading local file/.test(
          line,
        );
      if (!failed) continue;
      if (/NT_STATUS_OBJECT_NAME_COLLISION making remote directory/.test(line)) continue;
      if (ignore?.(line)) continue;
      const status = /NT_STATUS_[A-Z0-9_]+/.exec(line)?.[0];
      throw new ReimageError(
        'STATE_STORE_IO_FAILED',
        `${what} on ${this.description} failed: ${this.scrub(line)}`,
        {
          details: { url: this.shareUrl, status },
        },
      );
    }
  }

  /** Runs commands in as few smbclient runs as fit. */
  private async runAll(
    commands: string[],
    what: string,
    dir?: string,
    ignore?: (l: string) => boolean,
  ): Promise<string> {
    let out = '';
    for (let i = 0; i < commands.length;) {
      let j = i;
      let length = 0;
      while (j < commands.length && (j === i || length + commands[j]!.length + 2 <= MAX_COMMANDS)) {
        length += commands[j]!.length + 2;
        j++;
      }
      const output = await this.run(commands.slice(i, j), dir);
      this.checkOps(output, what, ignore);
      out += output;
      i = j;
    }
    return out;
  }

  private mkdirs(remotePath: string, into: string[]): void {
    const parts = remotePath.split('/').slice(0, -1);
    for (let k = 1; k <= parts.length; k++) {
      const d = parts.slice(0, k).join('/');
      if (this.knownDirs.has(d)) continue;
      into.push(`mkdir "${d}"`);
      this.knownDirs.add(d);
    }
  }

  // -- the backend -----------------------------------------------------------------------------

  async put(name: string, data: Buffer | NodeJS.ReadableStream): Promise<void> {
    const remote = this.remote(name);
    const batch = (this.batch ??= { dir: await this.privateDir(), ops: [], bytes: 0, files: 0 });
    const local = join(batch.dir, `f${batch.files}`);
    batch.files++;
    let fh: FileHandle | undefined;
    let bytes = 0;
    try {
      fh = await open(local, 'wx', 0o600);
      if (Buffer.isBuffer(data)) {
        await fh.writeFile(data);
        bytes = data.length;
      } else {
        for await (const chunk of data) {
          await writeAll(fh, chunk as Buffer);
          bytes += chunk.length;
        }
      }
    } catch (e) {
      await rm(local, { force: true });
      throw e instanceof ReimageError
        ? e
        : new ReimageError(
            'STATE_STORE_IO_FAILED',
            `cannot stage ${name} for ${this.description}: ${(e as Error).message}`,
            {
              cause: e,
            },
          );
    } finally {
      await fh?.close();
    }
    // A later put of the same name replaces the queued one.
    batch.ops = batch.ops.filter((op) => !(op.kind === 'put' && op.remote === remote));
    batch.ops.push({ kind: 'put', local, remote, bytes });
    batch.bytes += bytes;
    if (
      batch.bytes >= (this.o.batchBytes ?? 64 * 1024 * 1024) ||
      batch.ops.length >= (this.o.batchFiles ?? 256)
    ) {
      await this.flush();
    }
  }

  async rename(from: string, to: string): Promise<void> {
    const src = this.remote(from);
    const dst = this.remote(to);
    const queued = this.batch?.ops.find((op) => op.kind === 'put' && op.remote === src);
    if (queued && queued.kind === 'put') {
      this.batch!.ops = this.batch!.ops.filter((op) => !(op.kind === 'put' && op.remote === dst));
      queued.remote = dst;
      return;
    }
    const batch = (this.batch ??= { dir: await this.privateDir(), ops: [], bytes: 0, files: 0 });
    batch.ops.push({ kind: 'rename', from: src, to: dst });
  }

  async flush(): Promise<void> {
    const batch = this.batch;
    if (!batch) return;
    this.batch = undefined;
    try {
      const commands: string[] = [];
      const base = this.address.base;
      if (base) this.mkdirs(`${base}/x`, commands);
      for (const op of batch.ops) {
        if (op.kind === 'put') {
          const part = `${op.remote}.reimage-part-${randomUUID().slice(0, 8)}`;
          this.mkdirs(op.remote, commands);
          commands.push(`put "${op.local}" "${part}"`, `rename "${part}" "${op.remote}" -f`);
        } else {
          this.mkdirs(op.to, commands);
          commands.push(`rename "${op.from}" "${op.to}" -f`);
        }
      }
      if (commands.length > 0) await this.runAll(commands, 'uploading files', batch.dir);
    } catch (e) {
      this.knownDirs.clear();
      throw e;
    } finally {
      await rm(batch.dir, { recursive: true, force: true });
    }
  }

  async get(name: string): Promise<NodeJS.ReadableStream> {
    const remote = this.remote(name);
    await this.flush();
    const cached = this.prefetched.get(remote);
    if (cached) return (await open(cached, 'r')).createReadStream();
    const dir = await this.privateDir();
    try {
      const local = join(dir, 'file');
      const output = await this.run([`get "${remote}" "${local}"`], dir);
      if (NOT_FOUND.test(output)) {
        throw Object.assign(new Error(`${name} is not on ${this.description}`), { code: 'ENOENT' });
      }
      this.checkOps(output, `reading ${name}`);
      // The open file outlives its removal below: nothing is left behind.
      const fh = await open(local, 'r');
      return fh.createReadStream();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }

  async prefetch(names: string[]): Promise<void> {
    await this.flush();
    const wanted = [...new Set(names.map((n) => this.remote(n)))].filter(
      (r) => !this.prefetched.has(r),
    );
    if (wanted.length === 0) return;
    const dir = await this.privateDir();
    this.prefetchDirs.push(dir);
    const locals = wanted.map((_, i) => join(dir, `f${i}`));
    await this.runAll(
      wanted.map((r, i) => `get "${r}" "${locals[i]}"`),
      'reading files',
      dir,
      (line) => NOT_FOUND.test(line), // a missing file is reported by get() when it is read
    );
    for (const [i, r] of wanted.entries()) {
      try {
        await stat(locals[i]!);
        this.prefetched.set(r, locals[i]!);
      } catch {
        /* not on the share */
      }
    }
  }

  async dropPrefetched(): Promise<void> {
    this.prefetched.clear();
    const dirs = this.prefetchDirs;
    this.prefetchDirs = [];
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  }

  async list(prefix: string, recursive = true): Promise<string[]> {
    await this.flush();
    const folder = this.remote(prefix);
    const mask = folder === '' ? '*' : `${folder}/*`;
    const output = await this.run([`${recursive ? 'recurse; ' : ''}ls "${mask}"`]);
    const out: string[] = [];
    let section = folder;
    for (const line of output.split('\n')) {
      if (NOT_FOUND.test(line)) continue;
      if (line.startsWith('\\')) {
        section = line.slice(1).replace(/\\/g, '/');
        continue;
      }
      const m = ENTRY.exec(line);
      if (!m) {
        this.checkOps(line, `listing ${prefix || 'the root'}`);
        continue;
      }
      const entry = m[1]!;
      if (entry === '.' || entry === '..' || entry.includes('.reimage-part-')) continue;
      const full = section === '' ? entry : `${section}/${entry}`;
      const base = this.address.base;
      if (base !== '' && !full.startsWith(`${base}/`)) continue;
      const rel = base === '' ? full : full.slice(base.length + 1);
      if (m[2]!.includes('D')) {
        if (!recursive) out.push(`${rel}/`);
      } else out.push(rel);
    }
    return out.sort();
  }

  async remove(prefix: string): Promise<void> {
    const target = this.remote(prefix);
    if (this.batch) {
      // A queued file need not be uploaded to be removed (the writer removes only names it put
      // in this session: temporary names of content it already had).
      const under = (r: string) => prefix === '' || r === target || r.startsWith(`${target}/`);
      const before = this.batch.ops.length;
      this.batch.ops = this.batch.ops.filter((op) => !(op.kind === 'put' && under(op.remote)));
      if (!prefix.endsWith('/') && prefix !== '' && this.batch.ops.length < before) return;
    }
    await this.flush();
    // The backend's own folder stays, as a local folder's does.
    const mask = target === '' ? '*' : prefix === '' ? `${target}/*` : target;
    await this.runAll(
      [`deltree "${mask}"`],
      `removing ${prefix || 'everything'}`,
      undefined,
      (line) => NOT_FOUND.test(line),
    );
    for (const d of [...this.knownDirs])
      if (target === '' || d === target || d.startsWith(`${target}/`)) this.knownDirs.delete(d);
  }

  async close(): Promise<void> {
    await this.dropPrefetched();
    if (this.batch) {
      await rm(this.batch.dir, { recursive: true, force: true });
      this.batch = undefined;
    }
  }
}

/**
 * A state store backend on an SMB share: `smb://host[:port]/share/folder`. Needs Debian's
 * `smbclient`. Errors: SHARE_AUTH_FAILED (wrong user name or password), SHARE_UNREACHABLE,
 * SHARE_CLIENT_UNAVAILABLE, STATE_STORE_IO_FAILED; none ever carries the password.
 */
export function shareBackend(o: ShareOptions): ShareBackend {
  return new SmbBackend(o);
}
