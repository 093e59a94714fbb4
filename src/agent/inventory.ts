import { lstatSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentInventory } from '../client/agent-api.js';
import { keptPaths } from './deploy.js';
import { readJsonFile, writeFileAtomic } from './files.js';
import type { Platform } from './platform.js';

/**
 * What the client reports about its machine: the OS from the disk's os-release, the hardware
 * from the platform (lab: machine.json), and the image the machine runs.
 */
export function collectInventory(platform: Platform): AgentInventory {
  const root = platform.root;
  const id = platform.identity();
  const release = osRelease(root);
  const hostname = readText(join(root, 'etc/hostname'))?.trim() || id.name;
  const gb = (bytes: number) => Math.round((bytes / 1024 ** 3) * 10) / 10;
  let free: number | undefined;
  try {
    free = platform.freeBytes();
  } catch {
    free = undefined; // a disk the platform cannot measure: leave it out
  }
  return {
    hostname: hostname.slice(0, 255),
    ...(release['ID'] ? { os: release['ID'].slice(0, 64) } : {}),
    ...(release['VERSION_ID'] ? { osVersion: release['VERSION_ID'].slice(0, 64) } : {}),
    ...(id.arch ? { arch: id.arch.slice(0, 32) } : {}),
    ...(id.model ? { model: id.model.slice(0, 200) } : {}),
    ...(Number.isFinite(id.diskBytes) ? { diskSizeGb: gb(id.diskBytes) } : {}),
    ...(free !== undefined ? { diskFreeGb: gb(free) } : {}),
    ...(id.mac && /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/.test(id.mac) ? { macs: [id.mac] } : {}),
    ...(id.ip ? { ips: [id.ip] } : {}),
  };
}

/** `/.reimage/applied.json`: the image the last successful deployment put on this machine. */
export interface AppliedImage {
  imageId: string;
  package?: string;
  deployment?: string;
  at: string;
}

const APPLIED = 'applied.json';

/** Written by the new client once phase 3 succeeded. */
export function writeAppliedImage(root: string, a: AppliedImage): void {
  writeFileAtomic(join(keptPaths(root).kept, APPLIED), `${JSON.stringify(a, null, 2)}\n`);
}

/**
 * The image this machine runs, as far as the client knows: the marker the new client wrote,
 * else the newest succeeded deployment of the kept area's history (a client killed between
 * the success and the marker), else undefined (a machine never deployed by reimage).
 */
export function appliedImageId(root: string): string | undefined {
  const p = keptPaths(root);
  const marker = readJsonFile<Partial<AppliedImage>>(join(p.kept, APPLIED));
  if (typeof marker?.imageId === 'string') return marker.imageId;
  let best: { t: string; imageId: string } | undefined;
  let dirs: string[] = [];
  try {
    dirs = readdirSync(p.history);
  } catch {
    return undefined;
  }
  for (const d of dirs) {
    const journal = readText(join(p.history, d, 'journal.jsonl')) ?? '';
    const finished = journal
      .split('\n')
      .map((l) => {
        try {
          return JSON.parse(l) as { t?: string; step?: string; event?: string; data?: unknown };
        } catch {
          return undefined;
        }
      })
      .find((r) => r?.step === 'finished' && r.event === 'done' && r.data === 'succeeded');
    if (!finished?.t) continue;
    const plan = readJsonFile<{ image?: { id?: unknown } }>(join(p.history, d, 'plan.json'));
    const imageId = plan?.image?.id;
    if (typeof imageId === 'string' && (!best || finished.t > best.t))
      best = { t: finished.t, imageId };
  }
  return best?.imageId;
}

/** The key=value pairs of the disk's os-release. */
export function osRelease(root: string): Record<string, string> {
  // /etc/os-release is usually a link to /usr/lib/os-release: read the link's target inside
  // the disk, never the host's (an absolute link would leave the lab disk).
  const etc = join(root, 'etc/os-release');
  let isLink = false;
  try {
    isLink = lstatSync(etc).isSymbolicLink();
  } catch {
    // absent
  }
  const text =
    (isLink ? undefined : readText(etc)) ?? readText(join(root, 'usr/lib/os-release')) ?? '';
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z_]+)=("?)(.*)\2$/.exec(line.trim());
    if (m) out[m[1]!] = m[3]!;
  }
  return out;
}

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}
