import http from 'node:http';
import https from 'node:https';
import { ReimageError } from '../errors.js';
import type { DpWriter } from './dp-writer.js';
import { STORE_FORMAT, STORE_VERSION } from './store.js';

export interface DavCredentials {
  username: string;
  password: string;
}

/**
 * A distribution point served over WebDAV (nginx's dav module, Apache mod_dav, IIS): files go
 * up with PUT under `tmp/` and are moved into place with MOVE. WebDAV has no append, so a
 * file whose upload was cut is sent again whole (`appends` is false); nginx keeps an upload
 * in its own temporary file until it is complete, so a cut PUT leaves nothing behind.
 */
export function davWriter(baseUrl: string, creds?: DavCredentials): DpWriter {
  return new DavWriter(baseUrl, creds);
}

class DavWriter implements DpWriter {
  readonly name: string;
  readonly appends = false;
  private readonly base: URL;
  private readonly auth: string | undefined;
  private readonly agent: http.Agent;
  private readonly madeDirs = new Set<string>();

  constructor(baseUrl: string, creds?: DavCredentials) {
    const base = new URL(baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`);
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw new ReimageError('INVALID_ARGUMENT', `${baseUrl} is not an http(s) URL`);
    }
    if (base.username || base.password) {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        'put WebDAV credentials in the distribution point credentials, not in its address',
      );
    }
    this.base = base;
    this.name = base.href;
    this.auth = creds
      ? `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`
      : undefined;
    this.agent =
      base.protocol === 'https:'
        ? new https.Agent({ keepAlive: true, maxSockets: 2 })
        : new http.Agent({ keepAlive: true, maxSockets: 2 });
  }

  async open(): Promise<() => Promise<void>> {
    if ((await this.stat('reimage-store.json')) < 0) {
      const info = {
        format: STORE_FORMAT,
        version: STORE_VERSION,
        created: new Date().toISOString(),
      };
      const data = Buffer.from(JSON.stringify(info, null, 2) + '\n');
      await this.put('tmp/reimage-store.json', 0, data.length, one(data));
      await this.rename('tmp/reimage-store.json', 'reimage-store.json');
    }
    return async () => this.agent.destroy();
  }

  async stat(path: string): Promise<number> {
    const r = await this.request('HEAD', path);
    if (r.status === 404) return -1;
    this.expect(r, 'HEAD', path, [200]);
    const n = Number(r.headers['content-length']);
    if (!Number.isSafeInteger(n)) {
      throw this.failed(`HEAD ${path} answered without a Content-Length`);
    }
    return n;
  }

  async read(path: string): Promise<Buffer> {
    const r = await this.request('GET', path);
    this.expect(r, 'GET', path, [200]);
    return r.body;
  }

  async put(
    path: string,
    at: number,
    length: number,
    chunks: AsyncIterable<Buffer>,
  ): Promise<void> {
    if (at !== 0) throw new RangeError('WebDAV cannot append');
    await this.mkdirs(path);
    const r = await this.request('PUT', path, { 'content-length': String(length) }, chunks);
    this.expect(r, 'PUT', path, [200, 201, 204]);
  }

  async rename(from: string, to: string): Promise<void> {
    await this.mkdirs(to);
    const r = await this.request('MOVE', from, {
      destination: new URL(encodePath(to), this.base).href,
      overwrite: 'T',
    });
    this.expect(r, 'MOVE', from, [201, 204]);
  }

  async remove(path: string): Promise<void> {
    const r = await this.request('DELETE', path);
    if (r.status !== 404) this.expect(r, 'DELETE', path, [200, 204]);
  }

  /** MKCOL each folder above `path` (nginx's MOVE does not create them). */
  private async mkdirs(path: string): Promise<void> {
    const parts = path.split('/').slice(0, -1);
    for (let i = 1; i <= parts.length; i++) {
      const dir = parts.slice(0, i).join('/') + '/';
      if (this.madeDirs.has(dir)) continue;
      const r = await this.request('MKCOL', dir);
      // 405: it exists already.
      if (r.status !== 405) this.expect(r, 'MKCOL', dir, [201]);
      this.madeDirs.add(dir);
    }
  }

  private expect(r: { status: number }, method: string, path: string, ok: number[]): void {
    if (!ok.includes(r.status)) throw this.failed(`${method} ${path} answered HTTP ${r.status}`);
  }

  private failed(what: string): ReimageError {
    // The message names the DP by its address, which holds no credentials (refused above).
    return new ReimageError('DP_WRITE_FAILED', `distribution point ${this.name}: ${what}`, {
      details: { dp: this.name },
    });
  }

  private request(
    method: string,
    path: string,
    headers: Record<string, string> = {},
    body?: AsyncIterable<Buffer>,
  ): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }> {
    const url = new URL(encodePath(path), this.base);
    const mod = url.protocol === 'https:' ? https : http;
    const h: Record<string, string> = { ...headers };
    if (this.auth) h.authorization = this.auth;
    if (!body && method !== 'GET' && method !== 'HEAD') h['content-length'] = '0';
    return new Promise((resolve, reject) => {
      const req = mod.request(url, { method, headers: h, agent: this.agent }, (res) => {
        const parts: Buffer[] = [];
        res.on('data', (c: Buffer) => parts.push(c));
        res.on('end', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(parts),
          }),
        );
        res.on('error', reject);
      });
      req.on('error', (e) =>
        reject(
          new ReimageError(
            'DP_WRITE_FAILED',
            `distribution point ${this.name}: ${method} ${path} failed: ${e.message}`,
            {
              cause: e,
              details: { dp: this.name },
            },
          ),
        ),
      );
      if (!body) return void req.end();
      void (async () => {
        try {
          for await (const c of body) {
            if (!req.write(c)) await new Promise((r) => req.once('drain', r));
          }
          req.end();
        } catch (e) {
          req.destroy();
          reject(e);
        }
      })();
    });
  }
}

function encodePath(p: string): string {
  return p.split('/').map(encodeURIComponent).join('/');
}

async function* one(data: Buffer): AsyncGenerator<Buffer> {
  yield data;
}
