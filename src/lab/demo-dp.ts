/**
 * A lab distribution point: a folder served over HTTP on loopback, the way nginx serves one —
 * GET and HEAD with single byte ranges for machines, and the few WebDAV methods the server's
 * replication writes with (PUT, MKCOL, MOVE, DELETE; src/content/dav-writer.ts), guarded by
 * basic authentication. Small on purpose: the demo needs a DP without root and without nginx.
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';

export interface LabDpOptions {
  /** The folder served (created when missing). */
  root: string;
  /** Basic-auth user and password that writes need; without them the DP is read-only. */
  writer?: { username: string; password: string };
  /** Port on 127.0.0.1 (default: any free one). */
  port?: number;
}

export interface LabDp {
  /** http://127.0.0.1:PORT/ */
  url: string;
  port: number;
  root: string;
  /** Requests answered so far, by method. */
  requests(): Record<string, number>;
  close(): Promise<void>;
}

/** Starts a DP server on 127.0.0.1. Always `close()` it. */
export async function startLabDp(opts: LabDpOptions): Promise<LabDp> {
  const root = path.resolve(opts.root);
  fs.mkdirSync(root, { recursive: true });
  const counts: Record<string, number> = {};
  const expected = opts.writer
    ? Buffer.from(
        `Basic ${Buffer.from(`${opts.writer.username}:${opts.writer.password}`).toString('base64')}`,
      )
    : undefined;
  const mayWrite = (req: http.IncomingMessage) => {
    if (!expected) return false;
    const got = Buffer.from(req.headers.authorization ?? '');
    return got.length === expected.length && timingSafeEqual(got, expected);
  };

  const server = http.createServer((req, res) => {
    const method = req.method ?? 'GET';
    counts[method] = (counts[method] ?? 0) + 1;
    handle(req, res, method).catch((e: unknown) => {
      if (!res.headersSent) send(res, 500, (e as Error).message);
      else res.destroy();
    });
  });

  async function handle(req: http.IncomingMessage, res: http.ServerResponse, method: string) {
    const file = resolveInside(root, req.url ?? '/');
    if (file === undefined) return send(res, 400, 'bad path');
    if (method === 'GET' || method === 'HEAD') return serveFile(req, res, file, method === 'HEAD');
    if (!['PUT', 'MKCOL', 'MOVE', 'DELETE'].includes(method)) return send(res, 405, 'not allowed');
    if (!mayWrite(req)) {
      req.resume();
      res.setHeader('www-authenticate', 'Basic realm="reimage lab dp"');
      return send(res, 401, 'authentication required');
    }
    if (method === 'MKCOL') {
      req.resume();
      if (fs.existsSync(file)) return send(res, 405, 'exists');
      fs.mkdirSync(file, { recursive: true });
      return send(res, 201);
    }
    if (method === 'DELETE') {
      req.resume();
      if (!fs.existsSync(file)) return send(res, 404);
      fs.rmSync(file, { recursive: true, force: true });
      return send(res, 204);
    }
    if (method === 'MOVE') {
      req.resume();
      const dest = req.headers.destination;
      let target: string | undefined;
      try {
        target = typeof dest === 'string' ? resolveInside(root, new URL(dest).pathname) : undefined;
      } catch {
        target = undefined;
      }
      if (target === undefined) return send(res, 400, 'bad destination');
      if (!fs.existsSync(file)) return send(res, 404);
      const existed = fs.existsSync(target);
      if (existed && req.headers.overwrite === 'F') return send(res, 412);
      fs.mkdirSync(path.dirname(target), { recursive: true });
      fs.renameSync(file, target);
      return send(res, existed ? 204 : 201);
    }
    // PUT: into a temporary file beside the target, then renamed: a cut upload leaves nothing.
    fs.mkdirSync(path.dirname(file), { recursive: true });
    const tmp = `${file}.put-${randomBytes(6).toString('hex')}`;
    const existed = fs.existsSync(file);
    try {
      await pipeline(req, fs.createWriteStream(tmp));
      fs.renameSync(tmp, file);
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      throw e;
    }
    return send(res, existed ? 204 : 201);
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address();
  const port = typeof a === 'object' && a ? a.port : 0;
  return {
    url: `http://127.0.0.1:${port}/`,
    port,
    root,
    requests: () => ({ ...counts }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** The file a request path names inside `root`, or undefined for a path that leaves it. */
function resolveInside(root: string, urlPath: string): string | undefined {
  let p: string;
  try {
    p = decodeURIComponent(urlPath.split('?')[0]!);
  } catch {
    return undefined;
  }
  const parts = p.split('/').filter((s) => s !== '');
  if (parts.some((s) => s === '.' || s === '..' || s.includes('\0'))) return undefined;
  return path.join(root, ...parts);
}

function send(res: http.ServerResponse, status: number, text = ''): void {
  res.writeHead(status, {
    'content-type': 'text/plain',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

async function serveFile(
  req: http.IncomingMessage,
  res: http.ServerResponse,
  file: string,
  head: boolean,
): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    return send(res, 404, 'not found');
  }
  if (!st.isFile()) return send(res, 404, 'not a file');
  const size = st.size;
  const range = req.headers.range;
  let start = 0;
  let end = size - 1;
  let status = 200;
  if (range !== undefined) {
    const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
    if (!m || (m[1] === '' && m[2] === '')) return send(res, 416, 'one byte range only');
    if (m[1] === '') {
      start = Math.max(0, size - Number(m[2]));
    } else {
      start = Number(m[1]);
      if (m[2] !== '') end = Math.min(size - 1, Number(m[2]));
    }
    if (start >= size || start > end) {
      res.writeHead(416, { 'content-range': `bytes */${size}`, 'content-length': 0 });
      return void res.end();
    }
    status = 206;
  }
  const headers: http.OutgoingHttpHeaders = {
    'content-type': 'application/octet-stream',
    'content-length': size === 0 ? 0 : end - start + 1,
    'accept-ranges': 'bytes',
  };
  if (status === 206) headers['content-range'] = `bytes ${start}-${end}/${size}`;
  res.writeHead(status, headers);
  if (head || size === 0) return void res.end();
  await pipeline(fs.createReadStream(file, { start, end }), res);
}
