/**
 * The JSON client of the management server's API, shared by the admin CLI and the agent.
 * It uses node:https rather than fetch so that it controls TLS: a pinned fingerprint is
 * checked on the TLS socket before the socket is handed to the HTTP request, so not one
 * byte of a request (nor its Authorization header) reaches a server with another certificate.
 */
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';

import { ReimageError, errorCodes, type ErrorCode } from '../errors.js';

export interface ApiClientOptions {
  /** `https://host:port[/prefix]`, or `http://` on a loopback address only. */
  server: string;
  /** An API or machine token, sent as `Authorization: Bearer`. */
  token?: string;
  /**
   * The pinned SHA-256 fingerprint of the server's certificate (`sha256:AB:CD:...`; the
   * prefix, colons and case are optional). When given, only a server presenting exactly
   * that certificate is talked to, whoever signed it; system CAs and `ca` are not used.
   */
  fingerprint?: string;
  /** Extra trusted CA certificates (PEM), besides Node's bundled ones. */
  ca?: string;
  /** How long a request may take, connection included (default 30 s). */
  timeoutMs?: number;
  userAgent?: string;
}

export type QueryValue = string | number | boolean | undefined | readonly (string | number)[];

export interface RequestOptions {
  /** Sent as JSON. */
  body?: unknown;
  /** Sent as is, as `application/octet-stream` unless `headers` say otherwise (not with `body`). */
  bytes?: Uint8Array;
  query?: Record<string, QueryValue>;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_USER_AGENT = 'reimage';

/** A client of one management server; keeps connections alive between requests. */
export class ApiClient {
  /** The server's URL, as given. */
  readonly server: string;
  readonly #url: URL;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;
  readonly #userAgent: string;
  readonly #agent: http.Agent;

  constructor(options: ApiClientOptions) {
    this.server = options.server;
    this.#url = parseServerUrl(options.server);
    this.#token = options.token === '' ? undefined : options.token;
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#userAgent = options.userAgent ?? DEFAULT_USER_AGENT;

    if (this.#url.protocol === 'http:') {
      if (options.fingerprint !== undefined) {
        throw new ReimageError(
          'INVALID_ARGUMENT',
          `A certificate fingerprint was given for ${options.server}, which is plain HTTP: use the server's https:// address, or drop the fingerprint.`,
          { details: { server: options.server } },
        );
      }
      this.#agent = new http.Agent({ keepAlive: true });
    } else if (options.fingerprint !== undefined) {
      this.#agent = new PinnedAgent(parseFingerprint(options.fingerprint), this.#timeoutMs);
    } else {
      this.#agent = new https.Agent({
        keepAlive: true,
        ...(options.ca === undefined ? {} : { ca: [...tls.rootCertificates, options.ca] }),
      });
    }
  }

  /**
   * Sends one request and resolves with the parsed JSON answer (undefined when empty).
   * The server's `{ error: { code, message, details } }` becomes a ReimageError with that
   * code; no answer becomes SERVER_UNREACHABLE; a certificate that is not the pinned one
   * (or not trusted) becomes SERVER_CERT_MISMATCH.
   */
  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<T> {
    const upper = method.toUpperCase();
    try {
      return await this.#send<T>(upper, path, options);
    } catch (e) {
      // A kept-alive connection the server closed meanwhile: retry a request that is safe
      // to repeat, once, on a new connection.
      if ((upper === 'GET' || upper === 'HEAD') && e instanceof StaleSocketError) {
        return this.#send<T>(upper, path, options);
      }
      throw e instanceof StaleSocketError ? e.error : e;
    }
  }

  /** Closes the kept-alive connections (the process can then exit without waiting). */
  close(): void {
    this.#agent.destroy();
  }

  /**
   * Connects to `server` and returns the SHA-256 fingerprint (`sha256:AB:...`) of the
   * certificate it presents, without trusting it and without sending any request: for
   * `reimage login` to show the administrator what is about to be pinned.
   */
  static async fetchFingerprint(
    server: string,
    options: { timeoutMs?: number } = {},
  ): Promise<string> {
    const url = parseServerUrl(server);
    if (url.protocol !== 'https:') {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `${server} is not an https:// address: there is no certificate to pin.`,
        { details: { server } },
      );
    }
    const host = hostOf(url);
    const port = Number(url.port || 443);
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    return new Promise<string>((resolve, reject) => {
      const socket = tls.connect({
        host,
        port,
        ...(net.isIP(host) ? {} : { servername: host }),
        rejectUnauthorized: false,
      });
      socket.setTimeout(timeoutMs, () =>
        socket.destroy(timeoutError(`${host}:${port}`, timeoutMs)),
      );
      socket.once('secureConnect', () => {
        const fp = socket.getPeerCertificate().fingerprint256;
        socket.end();
        if (!fp) {
          reject(new ReimageError('SERVER_CERT_MISMATCH', `${server} presented no certificate.`));
        } else {
          resolve(`sha256:${fp}`);
        }
      });
      socket.once('error', (err) => {
        socket.destroy();
        reject(toReimageError(err, server, undefined));
      });
    });
  }

  #send<T>(method: string, path: string, options: RequestOptions): Promise<T> {
    const target = this.#target(path, options.query);
    const headers: Record<string, string> = {
      accept: 'application/json',
      'user-agent': this.#userAgent,
      ...lowerKeys(options.headers ?? {}),
    };
    let payload: Uint8Array | undefined;
    if (options.bytes !== undefined) {
      payload = options.bytes;
      headers['content-type'] ??= 'application/octet-stream';
      headers['content-length'] = String(payload.length);
    } else if (options.body !== undefined) {
      payload = Buffer.from(JSON.stringify(options.body), 'utf8');
      headers['content-type'] ??= 'application/json';
      headers['content-length'] = String(payload.length);
    }
    if (this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;

    const url = this.#url;
    const host = hostOf(url);
    const transport = url.protocol === 'https:' ? https : http;
    const where = `${method} ${url.origin}${target}`;

    let req: http.ClientRequest;
    try {
      req = transport.request({
        method,
        host,
        port: url.port || (url.protocol === 'https:' ? 443 : 80),
        path: target,
        headers,
        agent: this.#agent,
        ...(url.protocol === 'https:' && !net.isIP(host) ? { servername: host } : {}),
      });
    } catch (cause) {
      // Node refuses bad methods and header values (a token with a line break) up front.
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `Cannot send ${where}: ${this.#redact(cause instanceof Error ? cause.message : String(cause))}`,
        { cause },
      );
    }

    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(
        () => req.destroy(timeoutError(url.origin, this.#timeoutMs)),
        this.#timeoutMs,
      );
      const finish = (err: unknown, value?: T) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        options.signal?.removeEventListener('abort', onAbort);
        if (err === undefined) resolve(value as T);
        else reject(err);
      };
      const onAbort = () =>
        req.destroy(
          new ReimageError('CANCELLED', `${where} was cancelled.`, {
            cause: options.signal?.reason,
          }),
        );
      if (options.signal?.aborted) onAbort();
      else options.signal?.addEventListener('abort', onAbort, { once: true });

      req.once('error', (err) => {
        const mapped = toReimageError(err, url.origin, this.#token);
        if (req.reusedSocket && (err as NodeJS.ErrnoException).code === 'ECONNRESET') {
          finish(new StaleSocketError(mapped));
        } else {
          finish(mapped);
        }
      });

      req.once('response', (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.once('error', (err) => finish(toReimageError(err, url.origin, this.#token)));
        res.once('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          const status = res.statusCode ?? 0;
          if (status >= 200 && status < 300) {
            if (text.trim() === '' || method === 'HEAD') return finish(undefined, undefined);
            try {
              finish(undefined, JSON.parse(text) as T);
            } catch (cause) {
              finish(
                new ReimageError(
                  'INTERNAL',
                  `${where} answered ${status} with a body that is not JSON.`,
                  { cause, details: { status, body: this.#redact(text.slice(0, 200)) } },
                ),
              );
            }
            return;
          }
          finish(this.#errorFromResponse(where, status, text));
        });
      });

      req.end(payload);
    });
  }

  #target(path: string, query: Record<string, QueryValue> | undefined): string {
    if (!path.startsWith('/')) {
      throw new ReimageError('INVALID_ARGUMENT', `API path "${path}" must start with "/".`);
    }
    const base = this.#url.pathname.replace(/\/+$/, '');
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) {
      if (v === undefined) continue;
      if (Array.isArray(v)) for (const item of v) params.append(k, String(item));
      else params.append(k, String(v));
    }
    const qs = params.toString();
    return `${base}${path}${qs === '' ? '' : `?${qs}`}`;
  }

  #errorFromResponse(where: string, status: number, text: string): ReimageError {
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    const error = (body as { error?: unknown } | undefined)?.error;
    if (error !== null && typeof error === 'object') {
      const { code, message, details } = error as {
        code?: unknown;
        message?: unknown;
        details?: unknown;
      };
      const known = typeof code === 'string' && Object.hasOwn(errorCodes, code);
      const keptDetails =
        details !== null && typeof details === 'object' && !Array.isArray(details)
          ? (details as Record<string, unknown>)
          : {};
      const msg =
        typeof message === 'string' && message !== ''
          ? message
          : `${where} failed with HTTP ${status}${typeof code === 'string' ? ` (${code})` : ''}.`;
      return new ReimageError(
        known ? (code as ErrorCode) : 'INTERNAL',
        this.#redact(msg),
        known
          ? { details: keptDetails }
          : { details: { ...keptDetails, status, serverCode: code } },
      );
    }
    // No error body: a proxy or something that is not a reimage server answered.
    if (status === 502 || status === 503 || status === 504) {
      return new ReimageError(
        'SERVER_UNREACHABLE',
        `${where}: a proxy answered HTTP ${status}; the management server behind it did not answer.`,
        { details: { status } },
      );
    }
    if (status === 401) {
      return new ReimageError('UNAUTHENTICATED', `${where} answered HTTP 401.`, {
        details: { status },
      });
    }
    return new ReimageError(
      'INTERNAL',
      `${where} answered HTTP ${status} without a reimage error body; is ${this.server} a reimage server?`,
      { details: { status, body: this.#redact(text.slice(0, 200)) } },
    );
  }

  #redact(text: string): string {
    return redact(text, this.#token);
  }
}

/**
 * The canonical form `sha256:AB:CD:...` of a SHA-256 certificate fingerprint given with or
 * without the `sha256:` prefix, colons, or in either case.
 */
export function parseFingerprint(text: string): string {
  const hex = text
    .trim()
    .replace(/^sha256:/i, '')
    .replace(/[:\s]/g, '')
    .toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `"${text}" is not a SHA-256 certificate fingerprint (expected sha256: and 32 hex bytes, as \`reimage login\` or the server's start-up log shows).`,
      { details: { fingerprint: text } },
    );
  }
  return `sha256:${hex.match(/../g)!.join(':')}`;
}

/**
 * Hands a TLS socket to an HTTP request only after the server's certificate was compared
 * with the pin: the agent's asynchronous `createConnection` callback form means the request
 * has no socket to write to until then. Chain verification is off (the certificate is
 * usually self-signed); the pin replaces it.
 */
class PinnedAgent extends https.Agent {
  readonly #pin: string;
  readonly #handshakeTimeoutMs: number;

  constructor(pin: string, handshakeTimeoutMs: number) {
    // No TLS session resumption: every new connection shows its certificate afresh.
    super({ keepAlive: true, rejectUnauthorized: false, maxCachedSessions: 0 });
    this.#pin = pin;
    this.#handshakeTimeoutMs = handshakeTimeoutMs;
  }

  override createConnection(
    options: https.RequestOptions,
    callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex | null | undefined {
    if (callback === undefined) {
      // Node's Agent always passes the callback; without it there is no safe way to
      // hold the request back, so refuse rather than hand out an unchecked socket.
      throw new Error('PinnedAgent.createConnection needs the callback form');
    }
    const socket = super.createConnection(options) as tls.TLSSocket;
    const where = `${options.host ?? 'localhost'}:${options.port ?? 443}`;
    let done = false;
    const settle = (err: Error | null) => {
      if (done) return;
      done = true;
      socket.setTimeout(0);
      socket.removeListener('secureConnect', onSecure);
      socket.removeListener('error', onError);
      if (err !== null) {
        socket.destroy();
        callback(err, socket);
      } else {
        callback(null, socket);
      }
    };
    const onSecure = () => {
      const presented = socket.getPeerCertificate().fingerprint256;
      const fp = presented ? `sha256:${presented}` : undefined;
      if (fp !== this.#pin) {
        settle(
          new ReimageError(
            'SERVER_CERT_MISMATCH',
            `The server at ${where} presented a certificate with fingerprint ${fp ?? '(none)'}, not the pinned ${this.#pin}. Nothing was sent.`,
            { details: { expected: this.#pin, presented: fp ?? null } },
          ),
        );
      } else {
        settle(null);
      }
    };
    const onError = (err: Error) => settle(err);
    socket.once('secureConnect', onSecure);
    socket.once('error', onError);
    socket.setTimeout(this.#handshakeTimeoutMs, () =>
      settle(timeoutError(where, this.#handshakeTimeoutMs)),
    );
    return undefined;
  }
}

/** Wraps an error of a reused keep-alive socket, so that a safe request can be retried. */
class StaleSocketError extends Error {
  constructor(readonly error: ReimageError) {
    super(error.message);
  }
}

const CERT_ERROR_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
  'CERT_SIGNATURE_FAILURE',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'HOSTNAME_MISMATCH',
]);

function toReimageError(err: unknown, where: string, token: string | undefined): ReimageError {
  if (err instanceof ReimageError) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const message = redact(err instanceof Error ? err.message : String(err), token);
  if (code !== undefined && CERT_ERROR_CODES.has(code)) {
    return new ReimageError(
      'SERVER_CERT_MISMATCH',
      `The certificate of ${where} is not trusted (${code}: ${message}). Pin its fingerprint with --server-fingerprint (\`reimage login\` shows it), or give the CA that signed it.`,
      { cause: err, details: { reason: code } },
    );
  }
  return new ReimageError(
    'SERVER_UNREACHABLE',
    `Cannot reach the management server at ${where}: ${code === undefined ? message : `${code} (${message})`}.`,
    { cause: err, details: { reason: code ?? message } },
  );
}

function timeoutError(where: string, ms: number): ReimageError {
  return new ReimageError(
    'SERVER_UNREACHABLE',
    `The management server at ${where} did not answer within ${Math.round(ms / 100) / 10} s.`,
    { details: { reason: 'timeout', timeoutMs: ms } },
  );
}

function parseServerUrl(server: string): URL {
  let url: URL;
  try {
    url = new URL(server);
  } catch (cause) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `"${server}" is not a server address; expected https://host:port.`,
      { cause, details: { server } },
    );
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new ReimageError('INVALID_ARGUMENT', `"${server}" is not an https:// address.`, {
      details: { server },
    });
  }
  if (url.username !== '' || url.password !== '' || url.search !== '' || url.hash !== '') {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `The server address "${url.origin}${url.pathname}" must not carry credentials, a query or a fragment; give a token with --token or REIMAGE_TOKEN.`,
      { details: { server: `${url.origin}${url.pathname}` } },
    );
  }
  if (url.protocol === 'http:' && !isLoopback(hostOf(url))) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `Plain http:// is only used on loopback (127.0.0.1, ::1, localhost), not for ${url.host}: tokens would cross the network in clear. Use https://.`,
      { details: { server } },
    );
  }
  return url;
}

/** The host to connect to: URL.hostname keeps the brackets of an IPv6 address. */
function hostOf(url: URL): string {
  return url.hostname.replace(/^\[(.*)\]$/, '$1');
}

function isLoopback(host: string): boolean {
  const h = host.toLowerCase();
  if (h === 'localhost') return true;
  if (net.isIPv4(h)) return h.split('.')[0] === '127';
  if (net.isIPv6(h)) {
    const list = new net.BlockList();
    list.addAddress('::1', 'ipv6');
    list.addSubnet('::ffff:127.0.0.0', 104, 'ipv6');
    return list.check(h, 'ipv6');
  }
  return false;
}

function lowerKeys(headers: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
}

function redact(text: string, token: string | undefined): string {
  return token === undefined || token === '' ? text : text.split(token).join('<token>');
}
