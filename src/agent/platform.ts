import { readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { ReimageError } from '../errors.js';
import { readJsonFile, writeFileAtomic } from './files.js';
import { EXIT_REBOOT } from './main.js';

/**
 * What the deployment engine needs from a machine (docs/adr/0003-agent-and-lab.md): its disk,
 * its identity, its boot entries and a way to reboot. Two adapters: the lab (a machine is a
 * folder, booted by the lab firmware) and, later, linux (GRUB one-shot entry or kexec).
 */
export interface Platform {
  /** The machine's disk root as this process sees it (`/` on a real machine). */
  readonly root: string;
  identity(): MachineIdentity;
  /** Bytes free on the disk that holds `root`. */
  freeBytes(): number;
  /** Adds or replaces a boot entry. */
  setBootEntry(name: string, entry: BootEntry): void;
  /** Boots `name` once at the next start, then the default again. */
  bootNext(name: string): void;
  setDefaultBoot(name: string): void;
  bootConfig(): BootConfig;
  /** Ends this boot; the machine starts again from its boot configuration. Never returns. */
  reboot(): never;
}

export interface MachineIdentity {
  name: string;
  mac: string;
  ip: string;
  site?: string;
  model: string;
  diskBytes: number;
  arch: string;
}

export interface BootEntry {
  /** Path on the disk (absolute, as the machine sees it) of the program to start. */
  program: string;
  args: string[];
}

export interface BootConfig {
  default: string;
  next?: string;
  entries: Record<string, BootEntry>;
}

/**
 * Where the boot configuration lives on a lab machine: its EFI system partition
 * (`MACHINE/esp/`), a partition of the disk apart from the OS's root (`MACHINE/disk/`), so
 * that replacing the OS does not take the boot configuration with it.
 */
export const BOOT_CONFIG = 'esp/reimage/boot.json';

/**
 * A lab machine: `MACHINE/machine.json` (identity) and `MACHINE/disk/` (its disk). The lab
 * firmware (`reimage lab boot`) reads the boot configuration from the disk and starts what it
 * names; exiting with {@link EXIT_REBOOT} boots again.
 */
export function labPlatform(machineDir: string, opts: { exit?: (code: number) => never } = {}) {
  const root = join(machineDir, 'disk');
  const bootPath = join(machineDir, BOOT_CONFIG);
  let identity: MachineIdentity | undefined;
  const readBoot = (): BootConfig => {
    const c = readJsonFile<BootConfig>(bootPath);
    if (!c || typeof c.default !== 'string' || typeof c.entries !== 'object')
      throw new ReimageError(
        'AGENT_STATE_INVALID',
        `The boot configuration ${BOOT_CONFIG} of the lab machine is missing or invalid.`,
      );
    return c;
  };
  const writeBoot = (c: BootConfig) => writeFileAtomic(bootPath, `${JSON.stringify(c, null, 2)}\n`);
  const platform: Platform = {
    root,
    identity() {
      if (!identity) {
        const text = readFileSync(join(machineDir, 'machine.json'), 'utf8');
        identity = JSON.parse(text) as MachineIdentity;
      }
      return identity;
    },
    freeBytes() {
      // The lab disk is a folder on the host: its size is the machine's, its use is the
      // folder's. Measured on the host filesystem, capped by the simulated disk.
      const st = statfsSync(root);
      return Math.min(st.bavail * st.bsize, platform.identity().diskBytes);
    },
    setBootEntry(name, entry) {
      const c = readBoot();
      c.entries[name] = entry;
      writeBoot(c);
    },
    bootNext(name) {
      const c = readBoot();
      if (!c.entries[name])
        throw new ReimageError('AGENT_STATE_INVALID', `No boot entry ${JSON.stringify(name)}.`);
      c.next = name;
      writeBoot(c);
    },
    setDefaultBoot(name) {
      const c = readBoot();
      if (!c.entries[name])
        throw new ReimageError('AGENT_STATE_INVALID', `No boot entry ${JSON.stringify(name)}.`);
      c.default = name;
      delete c.next;
      writeBoot(c);
    },
    bootConfig: readBoot,
    reboot() {
      return (opts.exit ?? ((code: number) => process.exit(code)))(EXIT_REBOOT);
    },
  };
  return platform;
}
