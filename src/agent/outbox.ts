import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { AppendLog, parseJsonObject, writeFileAtomic } from './files.js';

/**
 * The persistent status outbox (docs/adr/0003-agent-and-lab.md): every status message is
 * appended, with the machine's next sequence number, to `log.jsonl` and flushed to the disk
 * before anything is sent. The old client, the PE and the new client share one outbox in
 * the kept area, so the sequence numbers of a machine are continuous across all three and
 * the server (idempotent by machine and seq) shows one timeline.
 *
 * A message may carry a `key` (`DEPLOYMENT/STEP/EVENT`): a second message with a key the
 * outbox already holds is not added; the first one's seq is returned. That is what keeps a
 * step re-run after a kill from reporting twice.
 */

export interface StatusMessage {
  /** Status message id (src/status/messages.ts). */
  id: number;
  /** ISO 8601 time in UTC. */
  time: string;
  advertisementId?: string;
  properties?: Record<string, unknown>;
}

export interface OutboxEntry extends StatusMessage {
  seq: number;
  key?: string;
}

/** What the server answers for a batch: the outbox only needs to know it was taken. */
export type SendBatch = (batch: OutboxEntry[]) => Promise<void>;

/** The server takes at most this many messages per request. */
export const MAX_BATCH = 1000;

const LOG = 'log.jsonl';
const ACKED = 'acked';
const DEAD = 'dead.jsonl';

export class Outbox {
  private readonly entries: OutboxEntry[] = [];
  private readonly byKey = new Map<string, number>();
  private nextSeq = 1;
  private acked = 0;
  private readonly log: AppendLog<OutboxEntry>;

  /** Opens (creating) the outbox folder `dir`; a torn last line from a crash is cut off. */
  constructor(private readonly dir: string) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.log = new AppendLog(join(dir, LOG), parseEntry);
    for (const e of this.log.initial) this.remember(e);
    try {
      const n = Number(readFileSync(join(dir, ACKED), 'utf8').trim());
      if (Number.isSafeInteger(n) && n >= 0) this.acked = n;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }

  private remember(e: OutboxEntry): void {
    this.entries.push(e);
    if (e.key !== undefined) this.byKey.set(e.key, e.seq);
    this.nextSeq = Math.max(this.nextSeq, e.seq + 1);
  }

  /**
   * Adds a message; returns its seq. With a key the outbox already holds, nothing is added
   * and the earlier message's seq is returned. The message is on the disk when this returns.
   */
  add(msg: StatusMessage, key?: string): number {
    if (key !== undefined) {
      const seen = this.byKey.get(key);
      if (seen !== undefined) return seen;
    }
    const entry: OutboxEntry = { seq: this.nextSeq, ...(key !== undefined ? { key } : {}), ...msg };
    this.log.append(entry);
    this.remember(entry);
    return entry.seq;
  }

  /** Has a message with this key been added (by any role, before any reboot)? */
  has(key: string): boolean {
    return this.byKey.has(key);
  }

  /** Messages not yet acknowledged by the server, in seq order. */
  pending(): OutboxEntry[] {
    return this.entries.filter((e) => e.seq > this.acked);
  }

  /** Every message still in the outbox (acknowledged ones until {@link compact}). */
  all(): readonly OutboxEntry[] {
    return this.entries;
  }

  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  get ackedSeq(): number {
    return this.acked;
  }

  /**
   * Sends what is pending in batches, oldest first; each batch the server took is recorded
   * (atomically) before the next is sent. A failure stops the flush and is rethrown: the rest
   * stays for the next try (re-sending what the server already has is harmless). A batch the
   * server refuses for good ({@link PermanentRefusal}) is sent again one message at a time,
   * and a message refused alone is moved to `dead.jsonl`, so one bad message cannot block the
   * machine's timeline.
   */
  async flush(send: SendBatch): Promise<number> {
    let sent = 0;
    for (;;) {
      const batch = this.pending().slice(0, MAX_BATCH);
      if (batch.length === 0) return sent;
      try {
        await send(batch);
      } catch (e) {
        if (!(e instanceof PermanentRefusal)) throw e;
        for (const one of batch) {
          try {
            await send([one]);
          } catch (e1) {
            if (!(e1 instanceof PermanentRefusal)) throw e1;
            this.bury(one, e1.message);
          }
          this.ack(one.seq);
          sent++;
        }
        continue;
      }
      this.ack(batch[batch.length - 1]!.seq);
      sent += batch.length;
    }
  }

  private bury(entry: OutboxEntry, reason: string): void {
    const fd = openSync(join(this.dir, DEAD), 'a', 0o600);
    try {
      writeSync(fd, `${JSON.stringify({ ...entry, refused: reason })}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  private ack(seq: number): void {
    if (seq <= this.acked) return;
    writeFileAtomic(join(this.dir, ACKED), `${seq}\n`);
    this.acked = seq;
  }

  /**
   * Drops acknowledged messages from the log (keeping the sequence going). Keys of dropped
   * messages are forgotten, so call it only between deployments.
   */
  compact(): void {
    const keep = this.pending();
    const last = this.entries[this.entries.length - 1];
    // The newest message stays so that the next seq survives a restart.
    if (last && !keep.includes(last)) keep.unshift(last);
    this.log.rewrite(keep);
    this.entries.length = 0;
    this.byKey.clear();
    for (const e of keep) this.remember(e);
  }

  /** Closes the file; closing again does nothing. */
  close(): void {
    this.log.close();
  }
}

function parseEntry(line: string): OutboxEntry | undefined {
  const e = parseJsonObject(line) as Partial<OutboxEntry> | undefined;
  if (!e || !Number.isSafeInteger(e.seq) || (e.seq as number) < 1) return undefined;
  if (!Number.isSafeInteger(e.id) || typeof e.time !== 'string') return undefined;
  return e as OutboxEntry;
}

/** What a send function throws when the server refused a batch for good (a 4xx answer). */
export class PermanentRefusal extends Error {}
