import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { canConnect, freePort, serviceSkip } from './services.js';

/**
 * A throwaway nginx serving a folder as a passive distribution point: its own nginx.conf,
 * pid file and logs in a temporary folder, on 127.0.0.1 and a free port. The access log
 * records `$body_bytes_sent` per request, so a test counts bytes on the server side, not
 * in the client it is testing.
 *
 * Needs Debian's `nginx-light` (or `nginx`). Where it is missing the tests skip, except under
 * CI (CI=true), where that is a failure.
 */
export interface Nginx {
  /** http://127.0.0.1:PORT/ */
  url: string;
  /** Requests logged so far: path, status, body bytes sent, method, request bytes received and the Range header ('-': none). */
  log(): Array<{
    uri: string;
    status: number;
    bytes: number;
    method: string;
    received: number;
    range: string;
  }>;
  /** Body bytes sent so far (optionally only for URIs with this prefix). */
  bytesSent(prefix?: string): number;
  stop(): Promise<void>;
}

function which(tool: string): string | undefined {
  for (const d of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/usr/bin', '/sbin']) {
    if (d && existsSync(join(d, tool))) return join(d, tool);
  }
  return undefined;
}

/** Why nginx tests cannot run here, or undefined when they can. */
export function nginxUnavailable(): string | undefined {
  return which('nginx') ? undefined : 'nginx is not installed (apt-get install nginx-light)';
}

/** Skip option for node:test: skip locally, fail under CI. */
export function nginxSkip(): string | false {
  return serviceSkip('nginx', nginxUnavailable());
}

export interface NginxOptions {
  /**
   * Also accept WebDAV writes (PUT, DELETE, MKCOL, COPY, MOVE) under `root`, as a writable
   * distribution point; with `auth`, writes need these basic-auth credentials (reads stay anonymous).
   */
  dav?: { auth?: { username: string; password: string } };
}

/** Starts nginx serving `root` (read-only unless `dav`; byte ranges are on by default). */
export async function startNginx(root: string, opts: NginxOptions = {}): Promise<Nginx> {
  const nginx = which('nginx');
  if (!nginx) throw new Error('nginx is not installed');
  const dir = mkdtempSync(join(tmpdir(), 'reimage-nginx-'));
  const port = await freePort();
  const access = join(dir, 'access.log');
  const errors = join(dir, 'error.log');
  const conf = join(dir, 'nginx.conf');
  const dav: string[] = [];
  if (opts.dav) {
    dav.push('    dav_methods PUT DELETE MKCOL COPY MOVE;', '    client_max_body_size 0;');
    const auth = opts.dav.auth;
    if (auth) {
      const users = join(dir, 'users');
      writeFileSync(users, `${auth.username}:{PLAIN}${auth.password}\n`, { mode: 0o600 });
      // Machines read anonymously; only writes need the credentials.
      dav.push(
        '    limit_except GET HEAD {',
        '      auth_basic "reimage test DP";',
        `      auth_basic_user_file ${users};`,
        '    }',
      );
    }
  }
  writeFileSync(
    conf,
    [
      'daemon off;',
      'master_process off;',
      // As root, workers would drop to nobody, who cannot read our private temp folders.
      ...(process.getuid?.() === 0 ? ['user root;'] : []),
      `pid ${join(dir, 'nginx.pid')};`,
      `error_log ${errors} info;`,
      'events {}',
      'http {',
      "  log_format bytes '$request_uri $status $body_bytes_sent $request_method $request_length $http_range';",
      `  access_log ${access} bytes;`,
      `  client_body_temp_path ${join(dir, 'body')};`,
      '  keepalive_requests 10000;',
      '  server {',
      `    listen 127.0.0.1:${port};`,
      `    root ${root};`,
      ...(dav.length > 0 ? ['    location / {', ...dav.map((l) => `  ${l}`), '    }'] : []),
      '  }',
      '}',
      '',
    ].join('\n'),
  );
  const child: ChildProcess = spawn(nginx, ['-c', conf, '-p', dir, '-e', errors], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  let exited = false;
  child.on('exit', () => (exited = true));
  const deadline = Date.now() + 10_000;
  while (!(await canConnect(port))) {
    if (exited || Date.now() > deadline) {
      child.kill('SIGKILL');
      const log = existsSync(errors) ? readFileSync(errors, 'utf8') : '';
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`nginx did not start: ${stderr}\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const log = () =>
    (existsSync(access) ? readFileSync(access, 'utf8') : '')
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        const [uri = '', status = '0', bytes = '0', method = '', received = '0', range = '-'] =
          line.split(' ');
        return {
          uri,
          status: Number(status),
          bytes: Number(bytes),
          method,
          received: Number(received),
          range,
        };
      });
  return {
    url: `http://127.0.0.1:${port}/`,
    log,
    bytesSent: (prefix = '') =>
      log()
        .filter((l) => l.uri.startsWith(prefix))
        .reduce((n, l) => n + l.bytes, 0),
    stop: async () => {
      if (!exited) {
        const gone = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await gone;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
