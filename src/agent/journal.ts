import {
  closeSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';

/**
 * The deployment journal (docs/adr/0003-agent-and-lab.md): an append-only file, flushed to
 * the disk at every record, that says which step began and which is done. `begin` is written
 * before a step acts and `done` (with the step's result) after, so after any restart — a
 * reboot, a kill, a power loss — the engine skips what is done and runs the step that began
 * again. Steps are written to be idempotent: run again, they finish the job.
 */

export type JournalEvent = 'begin' | 'done' | 'failed';

export interface JournalRecord {
  /** ISO 8601 UTC. */
  t: string;
  step: string;
  event: JournalEvent;
  /** `done`: the step's result; `failed`: { code, message }. */
  data?: unknown;
}

const FILE = 'journal.jsonl';

export class Journal {
  private readonly records: JournalRecord[] = [];
  private readonly doneData = new Map<string, unknown>();
  private fd: number;

  constructor(
    readonly dir: string,
    private readonly now: () => Date = () => new Date(),
  ) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const path = join(dir, FILE);
    let text = '';
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    let good = 0;
    const complete = text.slice(0, text.lastIndexOf('\n') + 1);
    for (const line of complete.split('\n').slice(0, -1)) {
      const r = parseRecord(line);
      if (!r) break; // torn by a crash: what follows is cut off
      this.apply(r);
      good += Buffer.byteLength(line) + 1;
    }
    this.fd = openSync(path, 'a+', 0o600);
    if (good < Buffer.byteLength(text)) {
      ftruncateSync(this.fd, good);
      fsyncSync(this.fd);
    }
  }

  private apply(r: JournalRecord): void {
    this.records.push(r);
    if (r.event === 'done') this.doneData.set(r.step, r.data);
  }

  private append(r: JournalRecord): void {
    const line = Buffer.from(`${JSON.stringify(r)}\n`);
    let off = 0;
    while (off < line.length) off += writeSync(this.fd, line, off);
    fsyncSync(this.fd);
    this.apply(r);
  }

  isDone(step: string): boolean {
    return this.doneData.has(step);
  }

  /** The result a done step recorded. */
  result<T>(step: string): T | undefined {
    return this.doneData.get(step) as T | undefined;
  }

  /** How many times the step began (more than once: it was interrupted and run again). */
  attempts(step: string): number {
    return this.records.filter((r) => r.step === step && r.event === 'begin').length;
  }

  /** The last record, if any: where the deployment stands. */
  last(): JournalRecord | undefined {
    return this.records[this.records.length - 1];
  }

  history(): readonly JournalRecord[] {
    return this.records;
  }

  begin(step: string): void {
    this.append({ t: this.now().toISOString(), step, event: 'begin' });
  }

  done(step: string, data?: unknown): void {
    this.append({
      t: this.now().toISOString(),
      step,
      event: 'done',
      ...(data === undefined ? {} : { data }),
    });
  }

  failed(step: string, code: string, message: string): void {
    this.append({ t: this.now().toISOString(), step, event: 'failed', data: { code, message } });
  }

  /**
   * Runs a step once: a step already done returns its recorded result without acting;
   * otherwise `begin` is written, the step runs, and `done` records its result. A step that
   * throws gets a `failed` record (its error code and message) and the error goes on.
   */
  async run<T>(step: string, fn: (attempt: number) => Promise<T> | T): Promise<T> {
    if (this.isDone(step)) return this.result<T>(step) as T;
    this.begin(step);
    try {
      const data = await fn(this.attempts(step));
      this.done(step, data);
      return data;
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      this.failed(
        step,
        typeof code === 'string' ? code : 'INTERNAL',
        e instanceof Error ? e.message : String(e),
      );
      throw e;
    }
  }

  /** Closes the file; closing again does nothing. */
  close(): void {
    if (this.fd < 0) return;
    closeSync(this.fd);
    this.fd = -1;
  }
}

function parseRecord(line: string): JournalRecord | undefined {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const r = v as Partial<JournalRecord>;
  if (typeof r.step !== 'string' || typeof r.t !== 'string') return undefined;
  if (r.event !== 'begin' && r.event !== 'done' && r.event !== 'failed') return undefined;
  return r as JournalRecord;
}
