/**
 * A lab machine: a folder with its hardware identity (machine.json), its disk (disk/, a
 * generated Debian tree from machine-tree.ts with the agent bundle installed and a boot
 * configuration) and, once booted, console.log. See docs/lab.md.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ReimageError } from '../errors.js';
import { BOOT_CONFIG, writeBootConfig, type BootConfig } from './firmware.js';
import { makeMachineTree, type MachineTreeFacts, type MachineTreeOptions } from './machine-tree.js';

/** Where the OS tree carries the agent (the old client's bundle). */
export const AGENT_BUNDLE_PATH = '/usr/lib/reimage/agent.bundle';

/** machine.json: the machine's hardware identity (what the Platform's lab adapter reports). */
export interface LabMachineIdentity {
  name: string;
  mac: string;
  ip: string;
  site: string;
  model: string;
  diskBytes: number;
  arch: string;
}

export interface CreateLabMachineOptions {
  /** The machine's folder: created; must not exist or be empty. */
  dir: string;
  name: string;
  site: string;
  /** Default: a locally administered MAC derived from the name. */
  mac?: string;
  /** Default: the static address the disk's network files configure, else one derived from the name. */
  ip?: string;
  /** Default "reimage-lab-1". */
  model?: string;
  /** Default 256 GiB. */
  diskBytes?: number;
  /** Default "amd64" (Debian's name, as the image's properties say it). */
  arch?: string;
  /** The agent bundle file to install at /usr/lib/reimage/agent.bundle (none: no agent, nothing to boot). */
  agentBundle?: string;
  /** Options for the generated tree (seed, users, scale); the hostname is the machine's name. */
  tree?: Omit<MachineTreeOptions, 'hostname'>;
  /** Arguments of the `os` boot entry. Default `run --role client`. */
  osArgs?: string[];
}

export interface LabMachine {
  dir: string;
  disk: string;
  identity: LabMachineIdentity;
  boot: BootConfig;
  tree: MachineTreeFacts;
}

const NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;

/** Creates a lab machine folder. Bad options change nothing. */
export async function createLabMachine(opts: CreateLabMachineOptions): Promise<LabMachine> {
  const dir = path.resolve(opts.dir);
  if (!NAME_RE.test(opts.name))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `machine name ${JSON.stringify(opts.name)} is not valid: use lower-case letters, digits and -, at most 63`,
    );
  if (!opts.site) throw new ReimageError('INVALID_ARGUMENT', 'a lab machine needs a site');
  if (opts.mac !== undefined && !/^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(opts.mac))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `MAC ${JSON.stringify(opts.mac)} is not aa:bb:cc:dd:ee:ff`,
    );
  if (opts.diskBytes !== undefined && !(Number.isSafeInteger(opts.diskBytes) && opts.diskBytes > 0))
    throw new ReimageError('INVALID_ARGUMENT', `diskBytes must be a positive whole number`);
  if (
    opts.agentBundle !== undefined &&
    !fs.statSync(opts.agentBundle, { throwIfNoEntry: false })?.isFile()
  )
    throw new ReimageError('INVALID_ARGUMENT', `agent bundle ${opts.agentBundle} is not a file`);
  if (fs.existsSync(dir) && fs.readdirSync(dir).length > 0)
    throw new ReimageError('LAB_MACHINE_INVALID', `${dir} already exists and is not empty`);

  const disk = path.join(dir, 'disk');
  fs.mkdirSync(disk, { recursive: true });
  const tree = await makeMachineTree(disk, { ...opts.tree, hostname: opts.name });
  const h = createHash('sha256').update(opts.name).digest();
  const net = tree.machineState.network;
  const identity: LabMachineIdentity = {
    name: opts.name,
    mac:
      opts.mac ??
      ['02', ...[...h.subarray(0, 5)].map((b) => b.toString(16).padStart(2, '0'))].join(':'),
    ip:
      opts.ip ??
      (net.mode === 'static' ? net.address : `10.${h[5]! % 200}.${h[6]}.${(h[7]! % 250) + 2}`),
    site: opts.site,
    model: opts.model ?? 'reimage-lab-1',
    diskBytes: opts.diskBytes ?? 256 * 1024 ** 3,
    arch: opts.arch ?? 'amd64',
  };
  fs.writeFileSync(path.join(dir, 'machine.json'), JSON.stringify(identity, null, 2) + '\n');

  if (opts.agentBundle !== undefined) {
    const target = path.join(disk, AGENT_BUNDLE_PATH);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    fs.copyFileSync(opts.agentBundle, target);
    fs.chmodSync(target, 0o755);
  }
  const boot: BootConfig = {
    default: 'os',
    entries: {
      os: { program: AGENT_BUNDLE_PATH, args: opts.osArgs ?? ['run', '--role', 'client'] },
    },
  };
  writeBootConfig(path.join(dir, BOOT_CONFIG), boot);
  return { dir, disk, identity, boot, tree };
}

/** Reads a machine's machine.json. */
export function readLabMachine(dir: string): LabMachineIdentity {
  const file = path.join(path.resolve(dir), 'machine.json');
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as LabMachineIdentity;
  } catch (e) {
    throw new ReimageError('LAB_MACHINE_INVALID', `cannot read ${file}: ${(e as Error).message}`, {
      cause: e,
    });
  }
}
