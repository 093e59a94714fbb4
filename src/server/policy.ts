import { createHash } from 'node:crypto';
import { Type } from '@sinclair/typebox';
import type { Static } from '@sinclair/typebox';
import type { Advertisement, ImageRecord, Machine } from '../catalog/catalog.js';
import { effectivePolicy } from '../package/effective.js';
import { defaults, type AdvertisementPolicy } from '../package/schema.js';
import type { ServerDeps } from './app.js';
import { Membership } from './membership.js';
import type { Schedule } from './routes/advertisements.js';
import { packageSettingsWithSecrets } from './routes/packages.js';
import { orderLocations } from './site.js';
import { stateStoreKey } from './state-key.js';

const POLL_SECONDS = 900;

/**
 * The PE a package gets when its definition names none: the newest image of this name
 * (docs/agent.md). Its agent program is at {@link DEFAULT_PE_PROGRAM} unless the image's
 * `program` property says otherwise.
 */
export const DEFAULT_PE_NAME = 'reimage-pe';
export const DEFAULT_PE_PROGRAM = '/agent.bundle';

export const Policy = Type.Object({
  machineId: Type.String(),
  name: Type.String(),
  site: Type.Union([Type.String(), Type.Null()]),
  generatedAt: Type.String(),
  pollSeconds: Type.Integer({ description: 'poll again after about this long (add jitter)' }),
  advertisements: Type.Array(
    Type.Object({
      id: Type.String(),
      name: Type.String(),
      state: Type.Union([
        Type.Literal('active'),
        Type.Literal('waiting-for-wave'),
        Type.Literal('not-yet-available'),
        Type.Literal('skip-same-image'),
      ]),
      wave: Type.Integer({ description: '1-based rollout wave of this machine' }),
      availableFrom: Type.Union([Type.String(), Type.Null()]),
      deadline: Type.Union([Type.String(), Type.Null()]),
      package: Type.Object({
        id: Type.String(),
        name: Type.String(),
        version: Type.String(),
        revision: Type.Integer(),
        imageId: Type.String(),
        definition: Type.Unknown(),
      }),
      image: Type.Union(
        [
          Type.Object({
            id: Type.String(),
            name: Type.String(),
            format: Type.String(),
            size: Type.Number({ description: 'bytes of the applied tree' }),
            properties: Type.Record(Type.String(), Type.String()),
          }),
          Type.Null(),
        ],
        { description: 'the package image as the catalog knows it (os, arch, version properties)' },
      ),
      pe: Type.Union(
        [
          Type.Object({
            imageId: Type.String(),
            name: Type.String(),
            program: Type.String({ description: 'path of the agent program inside the PE image' }),
          }),
          Type.Null(),
        ],
        {
          description: `the PE to boot for phase 2: the newest image named as the package definition's pe says (name, and version property when given), else the newest image named ${DEFAULT_PE_NAME}; null when there is none`,
        },
      ),
      settings: Type.Unknown({ description: 'deployment settings, with secrets' }),
      effectivePolicy: Type.Unknown(),
      schedule: Type.Unknown(),
      stateStoreKey: Type.String({
        description:
          'base64 AES-256 key for this machine’s state store in this deployment (derived from the server key; an admin can read it back to rescue a store)',
      }),
      content: Type.Array(
        Type.Object({
          distributionPoint: Type.String(),
          address: Type.String(),
          site: Type.String(),
          preference: Type.String(),
        }),
      ),
    }),
  ),
});
export type Policy = Static<typeof Policy>;

/** Stable position of a machine in an advertisement's rollout, independent of enrollment order. */
const rolloutKey = (adId: string, machineId: string) =>
  createHash('sha256').update(`${adId}/${machineId}`).digest('hex');

/**
 * The 1-based wave of `machineId` among `memberIds` (1 when there are no waves). Waves given
 * only as percentages place each machine by a stable hash of (advertisement, machine), so a
 * machine keeps its wave as the collection grows or shrinks (the share of each wave is then
 * close to, not exactly, its percentage). Waves with machine counts are exact: members are
 * ranked in that same hash order and cut by count — adding members can then move some
 * machines to a later wave.
 */
export function waveOf(
  ad: Pick<Advertisement, 'id'>,
  schedule: Schedule,
  memberIds: string[],
  machineId: string,
): number {
  const waves = schedule.waves ?? [];
  if (waves.length === 0) return 1;
  let end = 0;
  if (waves.every((w) => 'percent' in w)) {
    const position = (parseInt(rolloutKey(ad.id, machineId).slice(0, 12), 16) / 2 ** 48) * 100;
    for (const [i, w] of waves.entries()) {
      end += 'percent' in w ? w.percent : 0;
      if (position < end) return i + 1;
    }
    return waves.length;
  }
  const order = [...memberIds].sort((a, b) =>
    rolloutKey(ad.id, a) < rolloutKey(ad.id, b) ? -1 : 1,
  );
  const rank = order.indexOf(machineId);
  for (const [i, w] of waves.entries()) {
    end += 'machines' in w ? w.machines : Math.ceil((w.percent * order.length) / 100);
    if (rank < end) return i + 1;
  }
  return waves.length;
}

/**
 * Everything a machine's agent needs: the enabled advertisements whose collection holds it,
 * with package, settings (secrets included: this goes only to the machine itself over its
 * authenticated connection), the effective notification policy, and content locations in
 * the order to try them.
 */
export async function machinePolicy(deps: ServerDeps, machine: Machine): Promise<Policy> {
  const { catalog, secrets } = deps;
  const now = (deps.clock ?? Date.now)();
  const membership = await Membership.load(catalog, now);
  const dps = await catalog.listDps();
  const ips = ((machine.inventory as { ips?: string[] }).ips ?? []) as string[];
  const content = orderLocations(dps, machine.site, ips);
  const out: Policy['advertisements'] = [];
  const images = await catalog.listImages();
  for (const ad of await catalog.listAdvertisements()) {
    if (!ad.enabled) continue;
    const collection = await catalog.getCollection(ad.collectionId);
    const members = membership.members(collection).map((m) => m.id);
    if (!members.includes(machine.id)) continue;
    const pkg = await catalog.getPackage(ad.packageId);
    const settings = await packageSettingsWithSecrets(catalog, secrets, pkg);
    const schedule = ad.schedule as Schedule;
    const wave = waveOf(ad, schedule, members, machine.id);
    const state =
      machine.appliedImageId === pkg.imageId && !(settings.options?.redeploySameImage ?? false)
        ? 'skip-same-image'
        : ad.availableFrom && Date.parse(ad.availableFrom) > now
          ? 'not-yet-available'
          : wave > (schedule.activeWave ?? 1)
            ? 'waiting-for-wave'
            : 'active';
    out.push({
      id: ad.id,
      name: ad.name,
      state,
      wave,
      availableFrom: ad.availableFrom,
      deadline: ad.deadline,
      package: {
        id: pkg.id,
        name: pkg.name,
        version: pkg.version,
        revision: pkg.revision,
        imageId: pkg.imageId,
        definition: pkg.definition,
      },
      image: imageOf(images.find((i) => i.id === pkg.imageId)),
      pe: resolvePe(images, pkg.definition),
      settings,
      effectivePolicy: effectivePolicy(settings, ad.policy as AdvertisementPolicy),
      schedule,
      stateStoreKey: stateStoreKey(deps, machine.id, ad.id),
      content:
        (settings.content?.fallback ?? defaults.contentFallback)
          ? content
          : content.filter((c) => c.preference !== 'fallback'),
    });
  }
  return {
    machineId: machine.id,
    name: machine.name,
    site: machine.site,
    generatedAt: new Date(now).toISOString(),
    pollSeconds: POLL_SECONDS,
    advertisements: out,
  };
}

/** The package image's catalog record as the policy sends it (null: not in the catalog). */
export function imageOf(i: ImageRecord | undefined): Policy['advertisements'][number]['image'] {
  if (!i) return null;
  return { id: i.id, name: i.name, format: i.format, size: i.size, properties: i.properties };
}

/**
 * The PE for a package: the newest image (by registration) named as its definition's `pe`
 * says — with `version`, only images captured with that version (`--property version=V`,
 * the catalog's `osVersion`) — or, when the definition names none, the newest image named
 * {@link DEFAULT_PE_NAME}. The agent program is at the image's `program` property
 * (`--property program=/path`), else {@link DEFAULT_PE_PROGRAM}.
 */
export function resolvePe(
  images: readonly ImageRecord[],
  definition: unknown,
): Policy['advertisements'][number]['pe'] {
  const want = (definition as { pe?: { name?: unknown; version?: unknown } } | null)?.pe;
  const name = typeof want?.name === 'string' ? want.name : DEFAULT_PE_NAME;
  const version = typeof want?.version === 'string' ? want.version : undefined;
  const found = images
    .filter(
      (i) =>
        i.name === name &&
        (version === undefined ||
          i.properties['osVersion'] === version ||
          i.properties['custom.version'] === version),
    )
    .sort((a, b) =>
      a.registeredAt < b.registeredAt ? 1 : a.registeredAt > b.registeredAt ? -1 : 0,
    )[0];
  if (!found) return null;
  return {
    imageId: found.id,
    name: found.name,
    program: found.properties['custom.program'] ?? DEFAULT_PE_PROGRAM,
  };
}
