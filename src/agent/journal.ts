import { join } from 'node:path';
import { AppendLog, parseJsonObject } from './files.js';

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
  private readonly log: AppendLog<JournalRecord>;

  constructor(
    readonly dir: string,
    private readonly now: () => Date = () => new Date(),
  ) {
    this.log = new AppendLog(join(dir, FILE), parseRecord);
    for (const r of this.log.initial) this.apply(r);
  }

  private apply(r: JournalRecord): void {
    this.records.push(r);
    if (r.event === 'done') this.doneData.set(r.step, r.data);
  }

  private append(r: JournalRecord): void {
    this.log.append(r);
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

  close(): void {
    this.log.close();
  }
}

function parseRecord(line: string): JournalRecord | undefined {
  const r = parseJsonObject(line) as Partial<JournalRecord> | undefined;
  if (!r || typeof r.step !== 'string' || typeof r.t !== 'string') return undefined;
  if (r.event !== 'begin' && r.event !== 'done' && r.event !== 'failed') return undefined;
  return r as JournalRecord;
}
