/**
 * The lab firmware: what "powers on" a lab machine. It reads the boot configuration from the
 * machine's EFI system partition (`esp/reimage/boot.json`), boots the entry it names by running
 * `node DISK/<program> <args> --machine MACHINE` (only code found on that disk), and treats the
 * program's end as the machine's: exit 0 powers off, exit 3 reboots, a kill or a crash is a
 * power cycle. See docs/lab.md and docs/adr/0003-agent-and-lab.md ("The lab").
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ReimageError } from '../errors.js';

import { EXIT_REBOOT } from '../agent/main.js';
import { BOOT_CONFIG } from '../agent/platform.js';

/** Where the boot configuration lives, relative to the machine's folder (its EFI partition). */
export { BOOT_CONFIG, EXIT_REBOOT };

export interface BootEntry {
  /** Path of the program on the machine's disk ("/usr/lib/reimage/agent.bundle"). */
  program: string;
  args?: string[];
}

/** `esp/reimage/boot.json`. */
export interface BootConfig {
  default: string;
  /** One-time entry: cleared (on disk) before it is booted. */
  next?: string;
  entries: Record<string, BootEntry>;
}

export interface FirmwareOptions {
  /** The machine's folder (holds machine.json, disk/, console.log). */
  machine: string;
  /** Stop (state "max-boots") instead of booting again after this many boots. For tests. */
  maxBoots?: number;
  /** Boot-loop guard: halt when the machine would boot more than `boots` times within `windowMs`. Default 10 per minute. */
  loopGuard?: { boots: number; windowMs: number };
  /** Wait before booting again after a kill or a crash (a power cycle). Default 1000 ms. */
  powerCycleDelayMs?: number;
  /** Environment variables added to the booted program's (after the host's are cleaned). */
  env?: Record<string, string>;
  /** Pulls the power: the running program is killed (SIGKILL) and the firmware stops. */
  signal?: AbortSignal;
  /** Each line written to console.log, as written. */
  onConsole?: (line: string) => void;
}

export type FirmwareEnd = 'power-off' | 'max-boots' | 'power-removed';

export interface BootRecord {
  entry: string;
  program: string;
  pid: number | undefined;
  /** How the program ended. */
  code: number | null;
  signal: NodeJS.Signals | null;
  /** What the firmware made of it. */
  outcome: 'power-off' | 'reboot' | 'power-cycle' | 'power-removed';
}

export interface FirmwareResult {
  end: FirmwareEnd;
  boots: BootRecord[];
}

/**
 * Host variables that would make node load code from outside the disk (preloads, module
 * paths, our addon override), or put the agent's extracted tree outside it.
 */
const HOST_ONLY_ENV = ['NODE_OPTIONS', 'NODE_PATH', 'REIMAGE_NATIVE', 'REIMAGE_AGENT_RUN_DIR'];

/**
 * Runs the machine until it powers off (resolves), or halts: no bootable device, an invalid
 * boot configuration, or a boot loop (throws a ReimageError after reporting it in console.log).
 */
export async function runFirmware(opts: FirmwareOptions): Promise<FirmwareResult> {
  const machine = path.resolve(opts.machine);
  const disk = path.join(machine, 'disk');
  let diskReal: string;
  try {
    if (!fs.statSync(path.join(machine, 'machine.json')).isFile()) throw new Error('not a file');
    diskReal = fs.realpathSync(disk);
    if (!fs.statSync(diskReal).isDirectory()) throw new Error(`${disk} is not a folder`);
  } catch (e) {
    throw new ReimageError(
      'LAB_MACHINE_INVALID',
      `${machine} is not a lab machine (it needs machine.json and disk/): ${(e as Error).message}`,
      { cause: e },
    );
  }
  const guard = opts.loopGuard ?? { boots: 10, windowMs: 60_000 };
  const delay = opts.powerCycleDelayMs ?? 1000;
  const consoleFd = fs.openSync(path.join(machine, 'console.log'), 'a');
  const log = (source: string, line: string) => {
    const text = `${new Date().toISOString()} ${source}: ${line}`;
    fs.writeSync(consoleFd, text + '\n');
    opts.onConsole?.(text);
  };
  const halt = (e: ReimageError, boots: BootRecord[]): never => {
    log('firmware', `halted: ${e.message}`);
    e.details.boots = boots.length;
    throw e;
  };
  const boots: BootRecord[] = [];
  const starts: number[] = [];
  try {
    log('firmware', `power on (${machine})`);
    for (;;) {
      if (opts.signal?.aborted) {
        log('firmware', 'power removed');
        return { end: 'power-removed', boots };
      }
      if (opts.maxBoots !== undefined && boots.length >= opts.maxBoots) {
        log('firmware', `stopping after ${boots.length} boots (--max-boots)`);
        return { end: 'max-boots', boots };
      }
      const now = Date.now();
      while (starts.length > 0 && starts[0]! <= now - guard.windowMs) starts.shift();
      if (starts.length >= guard.boots)
        halt(
          new ReimageError(
            'LAB_BOOT_LOOP',
            `boot loop: ${starts.length} boots within ${Math.round(guard.windowMs / 1000)} s; the machine is halted`,
          ),
          boots,
        );
      starts.push(now);

      let chosen: { name: string; entry: BootEntry; program: string };
      try {
        chosen = chooseEntry(disk, diskReal, (m) => log('firmware', m));
      } catch (e) {
        if (e instanceof ReimageError) halt(e, boots);
        throw e;
      }
      const args = [...(chosen.entry.args ?? []), '--machine', machine];
      log('firmware', `booting ${chosen.name}: ${chosen.entry.program} ${args.join(' ')}`);
      const record = await boot(chosen, args, disk, opts, log);
      boots.push(record);
      if (record.outcome === 'power-off') {
        log('firmware', 'power off');
        return { end: 'power-off', boots };
      }
      if (record.outcome === 'power-removed') {
        log('firmware', 'power removed');
        return { end: 'power-removed', boots };
      }
      if (record.outcome === 'power-cycle' && delay > 0) {
        try {
          await sleep(delay, undefined, { signal: opts.signal });
        } catch {
          // Aborted while waiting: the loop's first check reports it.
        }
      }
    }
  } finally {
    fs.closeSync(consoleFd);
  }
}

/**
 * The entry to boot: `next` (cleared on disk first, so a crash while it runs boots the
 * default) or `default`; its program resolved inside the disk.
 */
function chooseEntry(
  disk: string,
  diskReal: string,
  log: (m: string) => void,
): { name: string; entry: BootEntry; program: string } {
  const file = path.join(path.dirname(disk), BOOT_CONFIG);
  const config = readBootConfig(file);
  let name = config.default;
  if (config.next !== undefined) {
    const { next: _next, ...rest } = config;
    writeBootConfig(file, rest);
    if (config.entries[config.next]) name = config.next;
    else
      log(
        `one-time entry ${JSON.stringify(config.next)} is not in the boot configuration; booting the default`,
      );
  }
  const entry = config.entries[name];
  if (!entry)
    throw new ReimageError(
      'LAB_BOOT_CONFIG_INVALID',
      `${file}: the default entry ${JSON.stringify(name)} is not among the entries`,
    );
  return { name, entry, program: resolveProgram(disk, diskReal, entry.program) };
}

/** Reads and checks boot.json. */
export function readBootConfig(file: string): BootConfig {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ReimageError(
      'LAB_NO_BOOT_DEVICE',
      `no bootable device: cannot read the boot configuration ${file}: ${(e as Error).message}`,
      { cause: e },
    );
  }
  const bad = (why: string): never => {
    throw new ReimageError('LAB_BOOT_CONFIG_INVALID', `${file}: ${why}`);
  };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    return bad(`not JSON (${(e as Error).message})`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return bad('not an object');
  const c = doc as Record<string, unknown>;
  if (typeof c.default !== 'string') bad('"default" must name an entry');
  if (c.next !== undefined && typeof c.next !== 'string') bad('"next" must name an entry');
  if (typeof c.entries !== 'object' || c.entries === null || Array.isArray(c.entries))
    bad('"entries" must be an object of boot entries');
  for (const [name, e] of Object.entries(c.entries as Record<string, unknown>)) {
    const entry = e as Record<string, unknown> | null;
    if (typeof entry !== 'object' || entry === null || typeof entry.program !== 'string')
      bad(`entry ${JSON.stringify(name)} needs a "program" (a path on the disk)`);
    if (
      entry!.args !== undefined &&
      !(Array.isArray(entry!.args) && entry!.args.every((a) => typeof a === 'string'))
    )
      bad(`entry ${JSON.stringify(name)}: "args" must be a list of strings`);
  }
  return doc as BootConfig;
}

/** Writes boot.json atomically: a temporary file, fsync, rename, fsync of the folder. */
export function writeBootConfig(file: string, config: BootConfig): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w', 0o644);
  try {
    fs.writeSync(fd, JSON.stringify(config, null, 2) + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  const dfd = fs.openSync(path.dirname(file), 'r');
  try {
    fs.fsyncSync(dfd);
  } finally {
    fs.closeSync(dfd);
  }
}

/**
 * The program's path on the host: the entry's path taken from the disk's root. `..` is
 * refused outright, and so is a path that leaves the disk through a symbolic link (symbolic
 * links are resolved on the host, so an absolute link target must itself lie in the disk).
 */
function resolveProgram(disk: string, diskReal: string, program: string): string {
  if (program.split(/[\\/]/).includes('..') || program.includes('\0'))
    throw new ReimageError(
      'LAB_BOOT_CONFIG_INVALID',
      `boot program ${JSON.stringify(program)} contains "..": a boot program must be a path on the machine's disk`,
    );
  const onDisk = path.join(disk, program);
  let real: string;
  try {
    real = fs.realpathSync(onDisk);
  } catch (e) {
    throw new ReimageError(
      'LAB_NO_BOOT_DEVICE',
      `no bootable device: the boot program ${program} is not on the disk (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`,
      { cause: e },
    );
  }
  if (!real.startsWith(diskReal + path.sep))
    throw new ReimageError(
      'LAB_BOOT_CONFIG_INVALID',
      `boot program ${program} leads outside the machine's disk (to ${real}) through a symbolic link: refused`,
    );
  try {
    if (!fs.statSync(real).isFile()) throw new Error('not a regular file');
    fs.accessSync(real, fs.constants.R_OK);
  } catch (e) {
    throw new ReimageError(
      'LAB_NO_BOOT_DEVICE',
      `no bootable device: the boot program ${program} cannot be read: ${(e as Error).message}`,
      { cause: e },
    );
  }
  return real;
}

/** Runs one boot: the program, its console into console.log, until it ends. */
function boot(
  chosen: { name: string; program: string },
  args: string[],
  disk: string,
  opts: FirmwareOptions,
  log: (source: string, line: string) => void,
): Promise<BootRecord> {
  const env: Record<string, string | undefined> = { ...process.env };
  for (const k of HOST_ONLY_ENV) delete env[k];
  Object.assign(env, opts.env);
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [chosen.program, ...args], {
      cwd: disk,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const source = `${chosen.name}[${child.pid ?? '?'}]`;
    for (const [stream, tag] of [
      [child.stdout, 'out'],
      [child.stderr, 'err'],
    ] as const) {
      let rest = '';
      stream.setEncoding('utf8');
      stream.on('data', (s: string) => {
        const lines = (rest + s).split('\n');
        rest = lines.pop()!;
        for (const l of lines) log(`${source} ${tag}`, l);
      });
      stream.on('end', () => {
        if (rest) log(`${source} ${tag}`, rest);
      });
    }
    const onAbort = () => child.kill('SIGKILL');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    let spawnError: Error | undefined;
    child.on('error', (e) => {
      spawnError = e;
    });
    child.on('close', (code, signal) => {
      opts.signal?.removeEventListener('abort', onAbort);
      let outcome: BootRecord['outcome'];
      if (opts.signal?.aborted) outcome = 'power-removed';
      else if (code === 0) outcome = 'power-off';
      else if (code === EXIT_REBOOT) outcome = 'reboot';
      else outcome = 'power-cycle';
      const how = spawnError
        ? `could not start: ${spawnError.message}`
        : signal
          ? `killed by ${signal}`
          : `exited with code ${code}`;
      log(
        'firmware',
        `${chosen.name} ${how}: ${outcome === 'power-cycle' ? 'power cycle' : outcome}`,
      );
      resolve({
        entry: chosen.name,
        program: chosen.program,
        pid: child.pid,
        code,
        signal,
        outcome,
      });
    });
  });
}
