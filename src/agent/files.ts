import {
  closeSync,
  fsyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { ReimageError } from '../errors.js';

/** Writes a small file so that a reader sees the old content or the new, never a mix. */
export function writeFileAtomic(path: string, data: string | Buffer, mode = 0o600): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', mode);
  try {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  const dfd = openSync(dirname(path), 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

/**
 * Removes what atomic writes cut by a kill or a power cut left in `dir` (not below it): the
 * temporary files `NAME.tmp-PID` of {@link writeFileAtomic} whose process is gone. They may
 * hold what the real file holds (a policy cache with secrets: mode 0600 still). Returns the
 * names removed.
 */
export function removeStaleTemps(dir: string): string[] {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  const removed: string[] = [];
  for (const name of names) {
    const pid = Number(/\.tmp-(\d+)$/.exec(name)?.[1]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || alive(pid)) continue;
    rmSync(join(dir, name), { force: true });
    removed.push(name);
  }
  return removed;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM'; // another user's process: alive
  }
}

/** Reads a JSON file written by {@link writeFileAtomic}; undefined when it does not exist. */
export function readJsonFile<T>(path: string): T | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new ReimageError('AGENT_STATE_INVALID', `${path} is not valid JSON.`);
  }
}

/**
 * An append-only file of JSON lines, each flushed to the disk before `append` returns. A crash
 * can leave a torn last line: on opening, only lines ended by a newline count, and the first
 * one that `parse` refuses ends the log (it and what follows are cut off).
 */
export class AppendLog<T> {
  /** What the file held when it was opened. */
  readonly initial: T[] = [];
  private fd: number;

  constructor(
    readonly path: string,
    parse: (line: string) => T | undefined,
  ) {
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    let text = '';
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    let good = 0;
    const complete = text.slice(0, text.lastIndexOf('\n') + 1);
    for (const line of complete.split('\n').slice(0, -1)) {
      const v = parse(line);
      if (v === undefined) break;
      this.initial.push(v);
      good += Buffer.byteLength(line) + 1;
    }
    this.fd = openSync(path, 'a+', 0o600);
    if (good < Buffer.byteLength(text)) {
      ftruncateSync(this.fd, good);
      fsyncSync(this.fd);
    }
  }

  append(value: T): void {
    const line = Buffer.from(`${JSON.stringify(value)}\n`);
    let off = 0;
    while (off < line.length) off += writeSync(this.fd, line, off);
    fsyncSync(this.fd);
  }

  /** Replaces the whole file (atomically) with these values. */
  rewrite(values: T[]): void {
    writeFileAtomic(this.path, values.map((v) => `${JSON.stringify(v)}\n`).join(''));
    closeSync(this.fd);
    this.fd = openSync(this.path, 'a+', 0o600);
  }

  /** Closes the file; closing again does nothing. */
  close(): void {
    if (this.fd < 0) return;
    closeSync(this.fd);
    this.fd = -1;
  }
}

/** A JSON object from one line, or undefined when the line is not one. */
export function parseJsonObject(line: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(line);
    return typeof v === 'object' && v !== null && !Array.isArray(v)
      ? (v as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}
