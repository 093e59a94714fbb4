import { BlockList, isIP } from 'node:net';
import type { DistributionPoint } from '../catalog/catalog.js';

/** `10.1.0.0/16` → a matcher, or undefined when it is not a subnet in CIDR form. */
export function parseCidr(cidr: string): ((ip: string) => boolean) | undefined {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(cidr.trim());
  if (!m) return undefined;
  const family = isIP(m[1]!);
  const prefix = Number(m[2]);
  if (family === 0 || prefix > (family === 4 ? 32 : 128)) return undefined;
  const type = family === 4 ? 'ipv4' : 'ipv6';
  const list = new BlockList();
  list.addSubnet(m[1]!, prefix, type);
  return (ip) => isIP(ip) === family && list.check(ip, type);
}

/** The site whose distribution points' boundaries contain one of the machine's addresses. */
export function siteByBoundary(dps: DistributionPoint[], ips: readonly string[]): string | null {
  for (const dp of dps)
    for (const cidr of dp.boundaries) {
      const inside = parseCidr(cidr);
      if (inside && ips.some(inside)) return dp.site;
    }
  return null;
}

/**
 * Content locations in the order a machine should try them: the DPs of its site, then DPs
 * whose boundaries hold one of its addresses, then every other DP as a fallback.
 */
export function orderLocations(
  dps: DistributionPoint[],
  site: string | null,
  ips: readonly string[],
) {
  const rank = (dp: DistributionPoint) => {
    if (site !== null && dp.site === site) return 0;
    if (
      dp.boundaries.some((c) => {
        const inside = parseCidr(c);
        return !!inside && ips.some(inside);
      })
    )
      return 1;
    return 2;
  };
  return dps
    .map((dp) => ({ dp, rank: rank(dp) }))
    .sort((a, b) => a.rank - b.rank || a.dp.name.localeCompare(b.dp.name))
    .map(({ dp, rank }) => ({
      distributionPoint: dp.name,
      address: dp.address,
      site: dp.site,
      preference:
        rank === 0 ? ('site' as const) : rank === 1 ? ('boundary' as const) : ('fallback' as const),
    }));
}
