import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

/** The user-space link proxy lives in the lab (src/lab/link.ts); tests and benches import it from here. */
export { startLink } from '../../src/lab/link.js';
export type { Link, LinkEvent, LinkOptions } from '../../src/lab/link.js';

/**
 * The namespace variant: two network namespaces of our own (`<name>s` for the server side,
 * `<name>c` for the client side) joined by a veth pair, with `tc tbf` limiting the server's
 * egress (downstream). Processes are run inside with `ip netns exec` (see `argv`). The
 * addresses exist only inside these namespaces. Outages: `cut()` sets the server's veth
 * down (packets are dropped: existing connections stall, new ones time out). Latency and
 * loss are not available here (`netem` is not in this kernel; loss would need nftables).
 * Needs root, `ip` and `tc`; `namespaceUnavailable()` says why not.
 */
export interface NamespaceLink {
  serverNs: string;
  clientNs: string;
  serverAddr: string;
  clientAddr: string;
  /** argv prefix that runs a command in a namespace: [...argv('server'), 'nginx', ...]. */
  argv(side: 'server' | 'client'): string[];
  cut(): void;
  restore(): void;
  close(): void;
  /** Packets nftables dropped so far (0 without `lossPercent`). */
  dropped(): number;
}

let nsCounter = 0;

function toolPath(tool: string): string | undefined {
  for (const d of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/bin']) {
    if (d && existsSync(join(d, tool))) return join(d, tool);
  }
  return undefined;
}

/** Why the namespace variant cannot run here, or undefined when it can. */
export function namespaceUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  if (!toolPath('ip') || !toolPath('tc')) return 'ip or tc (iproute2) is missing';
  return undefined;
}

/**
 * Two namespaces joined by a veth pair, rate-limited with `tc tbf` on the server's side and,
 * with `lossPercent`, dropping that share of the server's packets at random with nftables
 * (`numgen random mod 100 < N drop`, counted: `dropped()`). `netem` is not in this kernel.
 */
export function startNamespaceLink(opts: {
  rateBitsPerSec: number;
  lossPercent?: number;
}): NamespaceLink {
  const why = namespaceUnavailable();
  if (why) throw new Error(why);
  const ip = toolPath('ip')!;
  const tc = toolPath('tc')!;
  const name = `rwan${process.pid}n${nsCounter++}`;
  const s = `${name}s`;
  const c = `${name}c`;
  const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: 'pipe' });
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    process.off('exit', close);
    for (const ns of [s, c]) {
      try {
        run(ip, ['netns', 'del', ns]); // deleting a namespace removes its veth end too
      } catch {
        // not created
      }
    }
  };
  process.on('exit', close);
  try {
    run(ip, ['netns', 'add', s]);
    run(ip, ['netns', 'add', c]);
    run(ip, [
      'link',
      'add',
      `${name}a`,
      'netns',
      s,
      'type',
      'veth',
      'peer',
      'name',
      `${name}b`,
      'netns',
      c,
    ]);
    run(ip, ['-n', s, 'addr', 'add', '10.213.0.1/30', 'dev', `${name}a`]);
    run(ip, ['-n', c, 'addr', 'add', '10.213.0.2/30', 'dev', `${name}b`]);
    for (const [ns, dev] of [
      [s, `${name}a`],
      [c, `${name}b`],
      [s, 'lo'],
      [c, 'lo'],
    ] as const) {
      run(ip, ['-n', ns, 'link', 'set', dev, 'up']);
    }
    // One packet per segment: otherwise TCP hands the veth 64 KiB TSO/GSO packets, tbf and
    // nftables see a few dozen "packets" per MiB, and a 3 % drop rule may drop none at all.
    run(ip, ['-n', s, 'link', 'set', `${name}a`, 'gso_max_segs', '1']);
    run(ip, ['-n', c, 'link', 'set', `${name}b`, 'gso_max_segs', '1']);
    const rate = `${Math.round(opts.rateBitsPerSec / 1000)}kbit`;
    run(tc, [
      '-n',
      s,
      'qdisc',
      'add',
      'dev',
      `${name}a`,
      'root',
      'tbf',
      'rate',
      rate,
      'burst',
      '32kbit',
      'latency',
      '400ms',
    ]);
    if (opts.lossPercent) {
      const nft = toolPath('nft');
      if (!nft) throw new Error('nft (nftables) is missing: apt-get install nftables');
      const loss = Math.round(opts.lossPercent);
      run(ip, ['netns', 'exec', s, nft, 'add', 'table', 'inet', 'rwan']);
      run(ip, [
        'netns',
        'exec',
        s,
        nft,
        'add chain inet rwan out { type filter hook output priority 0 ; }',
      ]);
      run(ip, [
        'netns',
        'exec',
        s,
        nft,
        `add rule inet rwan out oifname "${name}a" numgen random mod 100 < ${loss} counter drop`,
      ]);
    }
  } catch (e) {
    close();
    throw e;
  }
  const nft = toolPath('nft');
  return {
    dropped: () => {
      if (!opts.lossPercent || !nft) return 0;
      const out = execFileSync(ip, ['netns', 'exec', s, nft, 'list', 'table', 'inet', 'rwan'], {
        encoding: 'utf8',
      });
      return Number(/counter packets (\d+)/.exec(out)?.[1] ?? 0);
    },
    serverNs: s,
    clientNs: c,
    serverAddr: '10.213.0.1',
    clientAddr: '10.213.0.2',
    argv: (side) => [ip, 'netns', 'exec', side === 'server' ? s : c],
    cut: () => run(ip, ['-n', s, 'link', 'set', `${name}a`, 'down']),
    restore: () => run(ip, ['-n', s, 'link', 'set', `${name}a`, 'up']),
    close,
  };
}
