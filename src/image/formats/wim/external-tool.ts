/**
 * What the formats that go through an external command-line tool (wim, squashfs) share:
 * finding the tool on PATH, running it without a shell, a private temporary directory, a
 * staging directory for write(), and a sparse-aware directory reader for read().
 *
 * The squashfs format imports this module too; it lives here only because each format owns
 * its folder (it could move to src/image/formats/ as is).
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants, closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { access, mkdtemp, open, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, delimiter, dirname, isAbsolute, join, resolve } from 'node:path';
import { ReimageError } from '../../../errors.js';
import { applyTree, treeFromDirectory } from '../../tree.js';
import { dataSegments } from '../../posix.js';
import type { TreeEntry } from '../api.js';

/** The absolute path of `cmd` on PATH (an executable regular file), or undefined. */
export async function findOnPath(cmd: string): Promise<string | undefined> {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (!dir || !isAbsolute(dir)) continue;
    const candidate = join(dir, cmd);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** The command-line tools a format needs, and the Debian package that has them. */
export interface Tools {
  names: readonly string[];
  pkg: string;
}

/** `unavailable()` of a tool-backed format: why it cannot be used, naming the Debian package. */
export async function toolMissing(tools: Tools): Promise<string | undefined> {
  for (const t of tools.names) {
    if (!(await findOnPath(t))) return `${t} not found: install Debian package ${tools.pkg}`;
  }
  return undefined;
}

async function requireTools(tools: Tools, format: string): Promise<void> {
  const why = await toolMissing(tools);
  if (why) {
    throw new ReimageError('FORMAT_UNAVAILABLE', `format ${format} cannot be used here: ${why}`, {
      details: { format, package: tools.pkg },
    });
  }
}

/** Bytes of a tool's stderr kept for error messages (the end is what explains a failure). */
const STDERR_TAIL = 4096;

/** Why a tool run failed: its exit status or signal and the tail of its stderr. */
export class ToolFailure extends Error {
  constructor(
    readonly tool: string,
    readonly status: number | null,
    readonly signal: NodeJS.Signals | null,
    readonly stderrTail: string,
    cause?: unknown,
  ) {
    super(
      `${tool} ${
        cause
          ? `could not run: ${(cause as Error).message}`
          : status !== null
            ? `exited with status ${status}`
            : `was killed by ${signal}`
      }${stderrTail ? `: ${stderrTail}` : ''}`,
      cause === undefined ? undefined : { cause },
    );
  }
}

/**
 * Runs `tool` (no shell) with stdin closed; resolves with its stdout when it exits 0, rejects
 * with a ToolFailure otherwise. stdout is returned only when `stdout` is true (else ignored).
 */
export function runTool(
  tool: string,
  args: readonly string[],
  opts: { stdout?: boolean; signal?: AbortSignal } = {},
): Promise<Buffer> {
  return new Promise((resolvePromise, reject) => {
    // SOURCE_DATE_EPOCH would make mksquashfs clamp every mtime to it: the tree is exact.
    const { SOURCE_DATE_EPOCH: _clamp, ...env } = process.env;
    const child = spawn(tool, args, {
      stdio: ['ignore', opts.stdout ? 'pipe' : 'ignore', 'pipe'],
      env: { ...env, LC_ALL: 'C.UTF-8' },
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
    const out: Buffer[] = [];
    let err = Buffer.alloc(0);
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr!.on('data', (b: Buffer) => {
      err = Buffer.concat([err, b]);
      if (err.length > 2 * STDERR_TAIL) err = err.subarray(err.length - STDERR_TAIL);
    });
    // 'error' (could not start, or aborted) may come without 'close'; a promise settles once.
    child.on('error', (e) => reject(new ToolFailure(tool, null, null, tail(err), e)));
    child.on('close', (status, signal) => {
      if (status === 0) resolvePromise(Buffer.concat(out));
      else reject(new ToolFailure(tool, status, signal, tail(err)));
    });
  });
}

/** The last lines of a tool's stderr, trimmed, on one line (progress bars' \r removed). */
function tail(err: Buffer): string {
  const text = err
    .subarray(Math.max(0, err.length - STDERR_TAIL))
    .toString('utf8')
    .split(/[\r\n]+/)
    .map((l) => l.trim())
    .filter((l) => l.length > 0);
  return text.slice(-8).join(' | ');
}

/** A fresh private (0700) directory under os.tmpdir(). */
export function makeTempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), `reimage-${prefix}-`));
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
}

/** Granularity of holes found by zero detection (the usual filesystem block). */
const HOLE_BLOCK = 4096;

/**
 * The data regions of a sparse file `fd` of `size` bytes: what SEEK_DATA/SEEK_HOLE reports,
 * narrowed to the HOLE_BLOCK-aligned blocks that are not all zeros. Tools leave holes at their
 * own granularity (squashfs: whole 128 KiB blocks; wimlib: any run of zeros), so this gives
 * the same regions whichever wrote the file.
 */
function sparseRegions(fd: number, size: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  const buf = Buffer.allocUnsafe(1 << 20);
  const add = (start: number, end: number) => {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === start) last[1] += end - start;
    else out.push([start, end - start]);
  };
  for (const [start, len] of dataSegments(fd, size)) {
    const end = start + len;
    let pos = start - (start % HOLE_BLOCK);
    while (pos < end) {
      const want = Math.min(buf.length, end - pos);
      const n = readSync(fd, buf, 0, want, pos);
      if (n === 0) break;
      for (let b = 0; b < n; b += HOLE_BLOCK) {
        const blockEnd = Math.min(b + HOLE_BLOCK, n);
        if (!isZero(buf, b, blockEnd)) add(Math.max(pos + b, start), pos + blockEnd);
      }
      pos += n;
    }
  }
  return out;
}

function isZero(buf: Buffer, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if (buf[i] !== 0) return false;
  return true;
}

/**
 * Reads a directory the tool extracted (see treeFromDirectory), adding the data regions of
 * files the tool left sparse, so that holes survive.
 */
export async function* treeFromExtracted(dir: string): AsyncGenerator<TreeEntry> {
  const root = Buffer.from(resolve(dir) + '/');
  for await (const te of treeFromDirectory(dir)) {
    const e = te.entry;
    if (e.type !== 'file' || e.size === 0) {
      yield te;
      continue;
    }
    const full = Buffer.concat([root, e.path]);
    const fd = openSync(full, constants.O_RDONLY | constants.O_NOFOLLOW);
    let segments: Array<[number, number]> | undefined;
    try {
      const st = fstatSync(fd, { bigint: true });
      if (st.blocks * 512n < st.size) {
        const s = sparseRegions(fd, e.size);
        if (!(s.length === 1 && s[0]![0] === 0 && s[0]![1] === e.size)) segments = s;
      }
    } finally {
      closeSync(fd);
    }
    if (!segments) {
      yield te;
      continue;
    }
    const regions = segments;
    yield {
      entry: { ...e, segments: regions },
      data: async function* () {
        const f = openSync(full, constants.O_RDONLY | constants.O_NOFOLLOW);
        try {
          const buf = Buffer.allocUnsafe(1 << 20);
          for (const [start, len] of regions) {
            let off = 0;
            while (off < len) {
              const n = readSync(f, buf, 0, Math.min(buf.length, len - off), start + off);
              if (n === 0) break;
              off += n;
              yield Buffer.from(buf.subarray(0, n));
            }
          }
        } finally {
          closeSync(f);
        }
      },
    };
  }
}

/**
 * read() of a tool-backed format: `extract(dir, file)` makes the tool fill the fresh directory
 * `dir` (which does not exist yet; its parent is private, so nothing the tool creates is
 * reachable by other users meanwhile), then the tree is yielded. A missing tool is
 * FORMAT_UNAVAILABLE. A tool
 * failure becomes INVALID_ARGUMENT naming the file, with the tool's stderr tail. The temporary
 * directory is removed when the stream ends, fails or is abandoned.
 */
export async function* readViaTool(
  format: string,
  tools: Tools,
  file: string,
  what: string,
  extract: (dir: string, file: string) => Promise<void>,
): AsyncGenerator<TreeEntry> {
  await requireTools(tools, format);
  const tmp = await makeTempDir(format);
  try {
    const dir = join(tmp, 'root');
    try {
      // Absolute, so that a name starting with '-' is never taken for an option.
      await extract(dir, resolve(file));
    } catch (e) {
      if (!(e instanceof ToolFailure)) throw e;
      throw new ReimageError('INVALID_ARGUMENT', `cannot read ${file} as ${what}: ${e.message}`, {
        cause: e,
        details: { file, tool: e.tool, status: e.status, stderr: e.stderrTail },
      });
    }
    yield* treeFromExtracted(dir);
  } finally {
    await removeDir(tmp);
  }
}

/**
 * write() of a tool-backed format: lays the entries out in a private staging directory
 * (owners when root, devices allowed), then `build(staging, out)` makes the tool write `out`,
 * a temporary name next to `file` (absolute) that is renamed to `file` once complete, so a
 * failure leaves no partial file behind. Staging and temporaries are removed in every case.
 */
export async function writeViaTool(
  format: string,
  tools: Tools,
  entries: AsyncIterable<TreeEntry>,
  file: string,
  what: string,
  build: (staging: string, out: string) => Promise<void>,
): Promise<void> {
  await requireTools(tools, format);
  const tmp = await makeTempDir(format);
  const out = join(
    dirname(resolve(file)),
    `.${basename(file)}.reimage-${randomBytes(6).toString('hex')}.tmp`,
  );
  try {
    const staging = join(tmp, 'root');
    await applyTree(entries, staging, { owners: process.getuid?.() === 0, devices: true });
    try {
      // The tool must create a new file: a stale temporary from a crashed run goes first.
      await rm(out, { force: true });
      await build(staging, out);
    } catch (e) {
      if (!(e instanceof ToolFailure)) throw e;
      throw new ReimageError(
        'FORMAT_TOOL_FAILED',
        `cannot write ${file} as ${what}: ${e.message}`,
        {
          cause: e,
          details: { file, tool: e.tool, status: e.status, stderr: e.stderrTail },
        },
      );
    }
    await rename(out, file);
  } catch (e) {
    await rm(out, { force: true });
    throw e;
  } finally {
    await removeDir(tmp);
  }
}

/** Whether the file starts with `magic` (false when it cannot be read or is shorter). */
export async function startsWith(file: string, magic: Buffer): Promise<boolean> {
  let fh;
  try {
    fh = await open(file, 'r');
    const buf = Buffer.alloc(magic.length);
    const { bytesRead } = await fh.read(buf, 0, magic.length, 0);
    return bytesRead === magic.length && buf.equals(magic);
  } catch {
    return false;
  } finally {
    await fh?.close();
  }
}
