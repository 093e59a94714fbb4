import { createServer, connect, type Server, type Socket } from 'node:net';

/**
 * An emulated WAN link for the lab, tests and benchmarks: an in-process TCP proxy on 127.0.0.1 in
 * front of a target (a distribution point such as the test nginx). It emulates
 *
 * - **rate**: a token bucket on the downstream direction (target → client), shared by all
 *   connections of the link, in bits per second (and optionally upstream, for uploads);
 * - **latency**: every chunk, in both directions, is delivered `latencyMs` after it arrived
 *   (a pipeline: latency does not reduce throughput);
 * - **loss**: TCP hides packet loss from applications (it retransmits), so what a client can
 *   observe of a lossy link is stalls and connection resets. Loss is emulated as connection
 *   resets: each MB forwarded downstream ends the connection with an RST with probability
 *   `lossPercent` %;
 * - **outages** (scheduled, or by `cut()`/`restore()`): existing connections are
 *   **blackholed** — nothing is forwarded and nothing is closed, so the client sees a stall and
 *   must notice it with its own timeout — and new connections are refused (the listening
 *   socket is closed, so a connect gets ECONNREFUSED). Data the target sent during the outage
 *   is held by the link and delivered after `restore()` if the client is still connected.
 *
 * Bytes are counted at the link (what it delivered to the client), not by the client under
 * test. Only loopback is used. Packet-level effects (reordering, duplication, congestion
 * control reacting to loss) are not emulated: see docs/wan-emulation.md.
 */
export interface LinkOptions {
  target: { host: string; port: number };
  /** Downstream rate in bits per second (none by default). */
  rateBitsPerSec?: number;
  /** Upstream rate (client → target) in bits per second, for uploads (none by default). */
  upRateBitsPerSec?: number;
  /** Added one-way delay per chunk, both directions (default 0). */
  latencyMs?: number;
  /** Probability (percent) that a connection is reset per MB forwarded downstream. */
  lossPercent?: number;
  /**
   * Scheduled outages: from `atMs` after the link starts, or once `atBytes` bytes have been
   * delivered downstream, or `atBytesUp` upstream (whichever is given), for `forMs`.
   */
  outages?: Array<{ atMs?: number; atBytes?: number; atBytesUp?: number; forMs: number }>;
  /** Seed for the loss generator (reproducible runs); random by default. */
  seed?: number;
}

export interface LinkEvent {
  /** ms since the link started */
  t: number;
  event: 'cut' | 'restore' | 'reset' | 'refused' | 'connect';
  bytesDown: number;
}

export interface Link {
  /** http://127.0.0.1:PORT/ — give this to the client instead of the target's URL. */
  url: string;
  port: number;
  /** Bytes delivered downstream (target → client) so far, counted at the link. */
  bytesDown(): number;
  /** Bytes delivered upstream (client → target) so far. */
  bytesUp(): number;
  /** Starts an outage now (until `restore()`). */
  cut(): void;
  /** Ends an outage. */
  restore(): void;
  isDown(): boolean;
  /** What happened on the link, in order (outages, resets, connections). */
  events(): LinkEvent[];
  close(): Promise<void>;
}

const PIECE = 16 * 1024;
const HIGH_WATER = 256 * 1024;
const MB = 1024 * 1024;

/** Mulberry32: a small seeded generator for reproducible loss. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

class Bucket {
  private tokens: number;
  private last = Date.now();
  private tail: Promise<void> = Promise.resolve();
  constructor(
    private readonly rate: number, // bytes per second
    private readonly burst = Math.max(PIECE, rate / 50),
  ) {
    this.tokens = 0;
  }
  /** Waits until n bytes may pass; callers are served in order (one link, one queue). */
  take(n: number): Promise<void> {
    const run = this.tail.then(async () => {
      const now = Date.now();
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.rate);
      this.last = now;
      this.tokens -= n;
      if (this.tokens < 0) await sleep((-this.tokens / this.rate) * 1000);
    });
    this.tail = run;
    return run;
  }
}

/** Starts a link in front of `target`. Always `close()` it (in a finally or `after`). */
export async function startLink(opts: LinkOptions): Promise<Link> {
  const started = Date.now();
  const latency = opts.latencyMs ?? 0;
  const bucket =
    opts.rateBitsPerSec && opts.rateBitsPerSec > 0
      ? new Bucket(opts.rateBitsPerSec / 8)
      : undefined;
  const upBucket =
    opts.upRateBitsPerSec && opts.upRateBitsPerSec > 0
      ? new Bucket(opts.upRateBitsPerSec / 8)
      : undefined;
  const lossPerMB = (opts.lossPercent ?? 0) / 100;
  const random = rng(opts.seed ?? Math.floor(Math.random() * 2 ** 32));
  const sockets = new Set<Socket>();
  const log: LinkEvent[] = [];
  const timers = new Set<NodeJS.Timeout>();
  let down = 0;
  let up = 0;
  let outage = false;
  let closed = false;
  let waiters: Array<() => void> = [];
  let server: Server | undefined;
  let port = 0;
  const byteOutages = (opts.outages ?? [])
    .filter((o) => o.atBytes !== undefined)
    .map((o) => ({ at: o.atBytes!, forMs: o.forMs, done: false }))
    .sort((a, b) => a.at - b.at);
  const upByteOutages = (opts.outages ?? [])
    .filter((o) => o.atBytesUp !== undefined)
    .map((o) => ({ at: o.atBytesUp!, forMs: o.forMs, done: false }));

  const note = (event: LinkEvent['event']) =>
    log.push({ t: Date.now() - started, event, bytesDown: down });

  const whenUp = () =>
    outage && !closed ? new Promise<void>((r) => waiters.push(r)) : Promise.resolve();

  /** One direction of one connection: queued chunks delivered in order, when due. */
  const pipe = (
    src: Socket,
    dst: Socket,
    downstream: boolean,
    conn: { dead: boolean; kill(): void },
  ) => {
    const queue: Array<{ buf: Buffer; due: number }> = [];
    let queued = 0;
    let running = false;
    let ended = false;
    let budget = random() * MB; // bytes until the next loss draw
    const pump = async () => {
      if (running) return;
      running = true;
      try {
        while (queue.length > 0 && !dst.destroyed && !conn.dead) {
          await whenUp();
          const head = queue[0]!;
          const wait = head.due - Date.now();
          if (wait > 0) await sleep(wait);
          const piece = head.buf.subarray(0, PIECE);
          if (downstream && bucket) await bucket.take(piece.length);
          if (!downstream && upBucket) await upBucket.take(piece.length);
          if (outage) continue; // blackholed: hold the data, deliver after restore
          if (dst.destroyed || conn.dead) break;
          dst.write(piece);
          if (downstream) {
            down += piece.length;
            checkByteOutages();
            budget -= piece.length;
            if (budget <= 0) {
              budget += MB;
              if (random() < lossPerMB) {
                note('reset');
                conn.kill();
                break;
              }
            }
          } else {
            up += piece.length;
            checkUpByteOutages();
          }
          head.buf = head.buf.subarray(piece.length);
          queued -= piece.length;
          if (head.buf.length === 0) queue.shift();
          if (queued < HIGH_WATER / 2 && src.isPaused()) src.resume();
        }
        if (ended && queue.length === 0 && !dst.destroyed && !conn.dead) dst.end();
      } finally {
        running = false;
      }
    };
    src.on('data', (buf: Buffer) => {
      queue.push({ buf, due: Date.now() + latency });
      queued += buf.length;
      if (queued > HIGH_WATER) src.pause();
      void pump();
    });
    src.on('end', () => {
      ended = true;
      void pump();
    });
    return pump;
  };

  const onConnection = (client: Socket) => {
    if (outage) {
      note('refused');
      client.resetAndDestroy();
      return;
    }
    note('connect');
    const target = connect(opts.target);
    sockets.add(client);
    sockets.add(target);
    const conn = { dead: false, kill };
    function kill() {
      conn.dead = true;
      // Reset once the last write has been handed to the kernel: a reset issued with a write
      // still queued in libuv closes with a FIN instead (measured), which is no loss at all.
      target.pause();
      setTimeout(() => {
        if (!client.destroyed) client.resetAndDestroy();
        target.destroy();
      }, 20);
    }
    pipe(client, target, false, conn);
    pipe(target, client, true, conn);
    const gone = () => {
      sockets.delete(client);
      sockets.delete(target);
      if (!client.destroyed) client.destroy();
      if (!target.destroyed) target.destroy();
    };
    // A client that gives up (its timeout) closes its side; the target side goes with it.
    // A target that ends cleanly is passed on by the pipe once its queue is delivered.
    client.on('close', gone);
    client.on('error', () => {});
    target.on('error', () => client.destroy());
  };

  const listen = (p: number) =>
    new Promise<Server>((resolve, reject) => {
      const s = createServer(onConnection);
      s.once('error', reject);
      s.listen(p, '127.0.0.1', () => {
        s.off('error', reject);
        resolve(s);
      });
    });

  const cut = () => {
    if (outage || closed) return;
    outage = true;
    note('cut');
    // Stop accepting: new connections are refused while the link is down.
    server?.close();
    server = undefined;
  };
  const restore = () => {
    if (!outage) return;
    outage = false;
    note('restore');
    const w = waiters;
    waiters = [];
    for (const r of w) r();
    if (!closed) {
      void listen(port).then(
        (s) => {
          if (closed || outage) s.close();
          else server = s;
        },
        () => {},
      );
    }
  };
  const schedule = (forMs: number) => {
    cut();
    const t = setTimeout(() => {
      timers.delete(t);
      restore();
    }, forMs);
    timers.add(t);
  };
  function checkUpByteOutages() {
    for (const o of upByteOutages) {
      if (!o.done && up >= o.at) {
        o.done = true;
        schedule(o.forMs);
      }
    }
  }
  function checkByteOutages() {
    for (const o of byteOutages) {
      if (!o.done && down >= o.at) {
        o.done = true;
        schedule(o.forMs);
      }
    }
  }
  for (const o of opts.outages ?? []) {
    if (o.atMs === undefined || o.atBytes !== undefined || o.atBytesUp !== undefined) continue;
    const t = setTimeout(() => {
      timers.delete(t);
      schedule(o.forMs);
    }, o.atMs);
    timers.add(t);
  }

  server = await listen(0);
  const a = server.address();
  if (typeof a !== 'object' || !a) throw new Error('the link has no port');
  port = a.port;

  return {
    url: `http://127.0.0.1:${port}/`,
    port,
    bytesDown: () => down,
    bytesUp: () => up,
    cut,
    restore,
    isDown: () => outage,
    events: () => [...log],
    close: async () => {
      closed = true;
      outage = false;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      const w = waiters;
      waiters = [];
      for (const r of w) r();
      for (const s of sockets) s.destroy();
      const s = server;
      server = undefined;
      if (s) await new Promise<void>((r) => s.close(() => r()));
    },
  };
}
