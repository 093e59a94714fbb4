/** Progress of a long operation, as the CLI shows it and `--progress json` streams it. */
export interface Progress {
  operation: 'capture' | 'apply' | 'verify';
  phase: 'scan' | 'data' | 'metadata' | 'commit' | 'done';
  file?: string;
  bytesDone: number;
  bytesTotal: number;
  filesDone: number;
  filesTotal: number;
  elapsedMs: number;
  /** bytes per second over the data phase so far */
  rate: number;
  /** estimated, from the rate; undefined until there is a rate */
  remainingMs?: number;
}

export interface Warning {
  code: string;
  path?: string;
  message: string;
}

/** Turns counters into Progress events, at most every `everyMs` (and always for phase changes). */
export class ProgressMeter {
  private readonly start = Date.now();
  private dataStart = 0;
  private last = 0;
  bytesDone = 0;
  bytesTotal = 0;
  filesDone = 0;
  filesTotal = 0;
  file: string | undefined;
  private phase: Progress['phase'] = 'scan';

  constructor(
    private readonly operation: Progress['operation'],
    private readonly sink: ((p: Progress) => void) | undefined,
    private readonly everyMs = 200,
  ) {}

  setPhase(phase: Progress['phase']): void {
    if (phase === 'data') this.dataStart = Date.now();
    this.phase = phase;
    this.emit(true);
  }

  tick(): void {
    this.emit(false);
  }

  snapshot(): Progress {
    const now = Date.now();
    const dataMs = this.dataStart ? now - this.dataStart : 0;
    const rate = dataMs > 0 ? (this.bytesDone * 1000) / dataMs : 0;
    const p: Progress = {
      operation: this.operation,
      phase: this.phase,
      bytesDone: this.bytesDone,
      bytesTotal: this.bytesTotal,
      filesDone: this.filesDone,
      filesTotal: this.filesTotal,
      elapsedMs: now - this.start,
      rate: Math.round(rate),
    };
    if (this.file !== undefined) p.file = this.file;
    if (rate > 0 && this.phase === 'data') {
      p.remainingMs = Math.round(((this.bytesTotal - this.bytesDone) / rate) * 1000);
    }
    return p;
  }

  private emit(force: boolean): void {
    if (!this.sink) return;
    const now = Date.now();
    if (!force && now - this.last < this.everyMs) return;
    this.last = now;
    this.sink(this.snapshot());
  }
}
