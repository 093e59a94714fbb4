/**
 * The console's one door to the server: fetch with the session's bearer token, errors as
 * `ApiError` (with the server's `problems` by field), and live updates from the status event
 * stream (read with fetch, since EventSource cannot send an Authorization header).
 */
import { useCallback, useEffect, useRef, useState } from 'react';

export interface Problem {
  path?: string;
  file?: string;
  message?: string;
  found?: unknown;
  expected?: unknown;
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly problems: Problem[] = [],
  ) {
    super(message);
  }
}

const TOKEN_KEY = 'reimage.token';
let token: string | null = sessionStorage.getItem(TOKEN_KEY);
const tokenListeners = new Set<() => void>();

export function getToken(): string | null {
  return token;
}

/** The session's token lives in memory and in sessionStorage (this tab only), never in a URL. */
export function setToken(t: string | null): void {
  token = t;
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
  for (const l of tokenListeners) l();
}

export function onTokenChange(l: () => void): () => void {
  tokenListeners.add(l);
  return () => tokenListeners.delete(l);
}

export async function api<T>(method: string, url: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(url, {
    method,
    headers,
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  const data: unknown = text ? JSON.parse(text) : undefined;
  if (!res.ok) {
    const err = (data as { error?: { code?: string; message?: string; details?: unknown } })?.error;
    const details = (err?.details ?? {}) as { problems?: Problem[]; path?: string; file?: string };
    const problems =
      details.problems ?? (details.path ? [{ ...details, message: err?.message }] : []);
    if (res.status === 401 && token) setToken(null);
    throw new ApiError(
      res.status,
      err?.code ?? `HTTP_${res.status}`,
      err?.message ?? res.statusText,
      problems,
    );
  }
  return data as T;
}

export const get = <T>(url: string) => api<T>('GET', url);

export interface Loaded<T> {
  data: T | undefined;
  error: ApiError | Error | undefined;
  /** True when the route answered 404 (a route this server does not have yet, or a missing item). */
  missing: boolean;
  loading: boolean;
  reload: () => void;
}

/**
 * Loads `url` and loads it again whenever `deps` change, `reload()` is called, or a live event
 * matching `live` arrives (see useLiveEvents). `url` null loads nothing.
 */
export function useGet<T>(url: string | null, live?: (e: LiveEvent) => boolean): Loaded<T> {
  const [state, setState] = useState<{
    data?: T;
    error?: Error;
    missing: boolean;
    loading: boolean;
  }>({ missing: false, loading: true });
  const [n, setN] = useState(0);
  const reload = useCallback(() => setN((x) => x + 1), []);
  useEffect(() => {
    if (!url) return;
    let stop = false;
    get<T>(url).then(
      (data) => !stop && setState({ data, missing: false, loading: false }),
      (error: Error) =>
        !stop &&
        setState((s) => ({
          ...s,
          error,
          missing: error instanceof ApiError && error.status === 404,
          loading: false,
        })),
    );
    return () => {
      stop = true;
    };
  }, [url, n]);
  const liveRef = useRef(live);
  liveRef.current = live;
  useLiveEvents(
    useCallback(
      (e: LiveEvent) => {
        if (liveRef.current?.(e)) reload();
      },
      [reload],
    ),
  );
  return {
    data: state.data,
    error: state.error,
    missing: state.missing,
    loading: state.loading,
    reload,
  };
}

export type LiveEvent =
  | { type: 'status'; machine: string; advertisement: string | null; id: number; seq: number }
  | { type: 'summary'; advertisement: string }
  | { type: 'tick' };

/**
 * One shared live feed for the whole console. It reads `GET /api/v1/status/events` (Server-Sent
 * Events) with fetch; when the server has no such route, or the stream breaks, it falls back to
 * a `tick` event every few seconds so pages poll instead.
 */
class LiveFeed {
  private listeners = new Set<(e: LiveEvent) => void>();
  private abort: AbortController | null = null;
  private timer: ReturnType<typeof setInterval> | null = null;
  mode: 'off' | 'stream' | 'polling' = 'off';
  private modeListeners = new Set<() => void>();
  pollMs = 2000;

  subscribe(l: (e: LiveEvent) => void): () => void {
    this.listeners.add(l);
    if (this.listeners.size === 1) this.start();
    return () => {
      this.listeners.delete(l);
      if (this.listeners.size === 0) this.stop();
    };
  }

  onMode(l: () => void): () => void {
    this.modeListeners.add(l);
    return () => this.modeListeners.delete(l);
  }

  private setMode(m: LiveFeed['mode']) {
    this.mode = m;
    for (const l of this.modeListeners) l();
  }

  private emit(e: LiveEvent) {
    for (const l of [...this.listeners]) l(e);
  }

  private start() {
    if (!token) return;
    const ctl = new AbortController();
    this.abort = ctl;
    void this.stream(ctl).catch((e: unknown) => {
      if (ctl.signal.aborted) return;
      this.poll(this.pollMs);
      // A server without the route polls for good; a broken stream is tried again later.
      if (!(e instanceof ApiError && e.status === 404))
        setTimeout(() => {
          if (this.abort === ctl && this.listeners.size > 0) {
            if (this.timer) clearInterval(this.timer);
            this.timer = null;
            this.start();
          }
        }, 10_000);
    });
  }

  private stop() {
    this.abort?.abort();
    this.abort = null;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.setMode('off');
  }

  restart() {
    if (this.listeners.size === 0) return;
    this.stop();
    this.start();
  }

  /** Ticks make pages poll: often without the stream, now and then with it (for what it does not cover). */
  private poll(ms: number, mode: LiveFeed['mode'] = 'polling') {
    if (this.timer) clearInterval(this.timer);
    this.setMode(mode);
    this.timer = setInterval(() => this.emit({ type: 'tick' }), ms);
  }

  private async stream(ctl: AbortController) {
    const res = await fetch('/api/v1/status/events', {
      headers: { authorization: `Bearer ${token}`, accept: 'text/event-stream' },
      signal: ctl.signal,
    });
    if (!res.ok || !res.body)
      throw new ApiError(res.status, `HTTP_${res.status}`, 'no event stream');
    this.poll(this.pollMs * 5, 'stream');
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value;
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block
          .split('\n')
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).trimStart())
          .join('\n');
        if (!data) continue;
        try {
          this.emit(JSON.parse(data) as LiveEvent);
        } catch {
          // A line that is not JSON (a comment or keep-alive) carries no event.
        }
      }
    }
    throw new Error('events: stream ended');
  }
}

export const liveFeed = new LiveFeed();

export function useLiveEvents(l: (e: LiveEvent) => void): void {
  useEffect(() => liveFeed.subscribe(l), [l]);
}

export function useLiveMode(): LiveFeed['mode'] {
  const [mode, setMode] = useState(liveFeed.mode);
  useEffect(() => liveFeed.onMode(() => setMode(liveFeed.mode)), []);
  return mode;
}

/** Builds a query string, leaving out empty values. */
export function qs(o: Record<string, string | number | undefined | null>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(o))
    if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : '';
}
