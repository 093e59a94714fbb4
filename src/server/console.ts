/**
 * The web console: the static single-page app built by `npm run build:console` into
 * dist/console, served at `/` with an SPA fallback (a client route such as /machines/x gets
 * index.html) and strict security headers. The API keeps its own 404s: /api/… never falls back.
 */
import { existsSync, statSync } from 'node:fs';
import { extname, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { ReimageError } from '../errors.js';
import type { App } from './app.js';

/** dist/console, next to dist/src where this module runs from. */
export function defaultConsoleDir(): string {
  return fileURLToPath(new URL('../../console/', import.meta.url));
}

/**
 * No inline scripts, no framing, nothing from elsewhere. Inline style attributes stay allowed
 * (the charts set element styles); scripts come only from the console's own files.
 */
export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self' 'unsafe-inline'",
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const assetExtensions = new Set([
  '.js',
  '.mjs',
  '.css',
  '.map',
  '.png',
  '.svg',
  '.ico',
  '.json',
  '.txt',
  '.woff',
  '.woff2',
]);

function securityHeaders(reply: FastifyReply): void {
  reply.header('content-security-policy', CONSOLE_CSP);
  reply.header('x-content-type-options', 'nosniff');
  reply.header('x-frame-options', 'DENY');
  reply.header('referrer-policy', 'no-referrer');
  reply.header('cross-origin-opener-policy', 'same-origin');
}

/**
 * Serves the console from `dir` (default dist/console). Without a built console (no
 * index.html) the server runs without it; `false` turns it off.
 */
export async function registerConsole(app: App, dir: string | false = defaultConsoleDir()) {
  if (dir === false || !existsSync(resolve(dir, 'index.html'))) {
    app.log.info({ dir }, 'web console not built (npm run build:console); serving the API only');
    return;
  }
  const root = resolve(dir);
  await app.register(fastifyStatic, { root, serve: false });
  const handler = async (req: FastifyRequest, reply: FastifyReply) => {
    const pathname = req.url.split('?')[0] ?? '/';
    if (pathname === '/api' || pathname.startsWith('/api/'))
      throw new ReimageError('NOT_FOUND', `No API endpoint ${req.method} ${pathname}.`, {
        details: { kind: 'endpoint' },
      });
    let rel: string;
    try {
      rel = decodeURIComponent(pathname).replace(/^\/+/, '');
    } catch {
      rel = '';
    }
    const abs = resolve(root, rel);
    const inside = abs.startsWith(root + sep) && !rel.includes('\0');
    const isFile = inside && existsSync(abs) && statSync(abs).isFile();
    securityHeaders(reply);
    if (isFile) {
      // Vite names built assets by content hash: they never change under the same name.
      const immutable = rel.startsWith('assets/');
      return reply.sendFile(rel, root, {
        cacheControl: true,
        immutable,
        maxAge: immutable ? 365 * 24 * 3600 * 1000 : 0,
      });
    }
    // A missing file (a name with an extension) is a 404, not the app; client routes get the app.
    if (assetExtensions.has(extname(rel).toLowerCase()))
      throw new ReimageError('NOT_FOUND', `No file ${pathname}.`, { details: { kind: 'file' } });
    reply.header('cache-control', 'no-cache');
    return reply.sendFile('index.html', root, { cacheControl: false });
  };
  const opts = { config: { access: 'public' as const }, schema: { hide: true } };
  app.get('/', opts, handler);
  app.get('/*', opts, handler);
}
