import { ReimageError } from '../errors.js';
import type { PolicyAdvertisement } from '../client/agent-api.js';
import type { TransferWindow } from '../content/window.js';
import type { DeploymentPlan } from './deploy.js';

/**
 * The client daemon's reading of one advertisement of its policy: the notification policy,
 * the schedule, and the deployment plan. The package documents' schemas live in
 * src/package/schema.ts, which the agent may not import (rooms): what is read here is plain
 * JSON checked field by field, with the documented defaults repeated below (a test compares
 * them with the schema's).
 */

/** The defaults of src/package/schema.ts `defaults` the agent needs. */
export const AGENT_DEFAULTS = {
  requireUserPermission: false,
  allowDecline: false,
  postponement: { allowed: true, maximum: '3d' },
  whenNoAnswer: { withoutPermission: 'install', withPermission: 'postpone' },
  countdown: '15m',
  redeploySameImage: false,
  stateStorePath: '/var/lib/reimage/state',
  encrypt: true,
  osPaths: [
    '/bin',
    '/boot',
    '/etc',
    '/lib',
    '/lib32',
    '/lib64',
    '/libx32',
    '/opt',
    '/root',
    '/sbin',
    '/tmp',
    '/usr',
    '/var',
  ],
  keep: ['/var/lib/reimage'],
  retainDays: 0,
  prestage: false,
} as const;

/** Where the new OS's client is (what the image installs): the new OS's boot entry. */
export const NEW_CLIENT_PROGRAM = '/usr/lib/reimage/agent.bundle';

export type WhenNoAnswer = 'install' | 'postpone' | 'decline';

/** The effective notification policy of an advertisement, in milliseconds and epoch times. */
export interface NotificationPolicy {
  requireUserPermission: boolean;
  allowDecline: boolean;
  /** 0 when postponement is not allowed. */
  postponementMaximumMs: number;
  /** Never `install` when permission is required. */
  whenNoAnswer: WhenNoAnswer;
  /** Epoch ms of the mandatory deadline. */
  deadline?: number;
  countdownMs: number;
  message?: string;
  preNotificationMs?: number;
}

export interface AdSchedule {
  windows: TransferWindow[];
  rerun: 'never' | 'if-failed' | 'always';
  /** The wait before a failed deployment runs again (doubled for each failure before it). */
  retryAfterMs: number;
  redeploySameImage: boolean;
}

/** schedule.retryAfter when the advertisement does not say. */
export const DEFAULT_RETRY_AFTER = '15m';

const unusable = (ad: { id: string }, what: string) =>
  new ReimageError('AGENT_POLICY_UNUSABLE', `Advertisement ${ad.id}: ${what}`, {
    details: { advertisementId: ad.id },
  });

const DURATION = /^(?=\d)(?:(\d{1,5})d)?(?:(\d{1,5})h)?(?:(\d{1,5})m)?(?:(\d{1,5})s)?$/;

/** "2d6h", "15m", "0s" → milliseconds; undefined when the text is not a duration. */
export function parseDuration(text: string): number | undefined {
  const m = DURATION.exec(text);
  if (!m) return undefined;
  const [d, h, min, s] = [m[1], m[2], m[3], m[4]].map((x) => Number(x ?? 0)) as [
    number,
    number,
    number,
    number,
  ];
  return (((d * 24 + h) * 60 + min) * 60 + s) * 1000;
}

const obj = (v: unknown): Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};

/** A field of the effective policy: `{value, source}` as the server sends it, or a bare value. */
function field(ep: Record<string, unknown>, k: string): unknown {
  const v = ep[k];
  return typeof v === 'object' && v !== null && 'value' in v ? (v as { value: unknown }).value : v;
}

function typed<T>(
  ad: { id: string },
  name: string,
  v: unknown,
  check: (v: unknown) => v is T,
  fallback: T,
): T {
  if (v === undefined || v === null) return fallback;
  if (!check(v)) throw unusable(ad, `${name} is ${JSON.stringify(v)}, not a valid value.`);
  return v;
}

const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
const isString = (v: unknown): v is string => typeof v === 'string';
const isWhen = (v: unknown): v is WhenNoAnswer =>
  v === 'install' || v === 'postpone' || v === 'decline';

function duration(ad: { id: string }, name: string, v: unknown): number | undefined {
  if (v === undefined || v === null) return undefined;
  const ms = typeof v === 'string' ? parseDuration(v) : undefined;
  if (ms === undefined) throw unusable(ad, `${name} is ${JSON.stringify(v)}, not a duration.`);
  return ms;
}

/** The notification policy, from the advertisement's effective policy (server-computed). */
export function notificationPolicy(ad: PolicyAdvertisement): NotificationPolicy {
  const ep = obj(ad.effectivePolicy);
  const D = AGENT_DEFAULTS;
  const requireUserPermission = typed(
    ad,
    'requireUserPermission',
    field(ep, 'requireUserPermission'),
    isBool,
    D.requireUserPermission,
  );
  const allowed = typed(
    ad,
    'postponementAllowed',
    field(ep, 'postponementAllowed'),
    isBool,
    D.postponement.allowed,
  );
  const maximum =
    duration(ad, 'postponementMaximum', field(ep, 'postponementMaximum')) ??
    parseDuration(D.postponement.maximum)!;
  let whenNoAnswer = typed(
    ad,
    'whenNoAnswer',
    field(ep, 'whenNoAnswer'),
    isWhen,
    requireUserPermission ? D.whenNoAnswer.withPermission : D.whenNoAnswer.withoutPermission,
  );
  // Never install without a yes when permission is required, whatever the server sent.
  if (requireUserPermission && whenNoAnswer === 'install') whenNoAnswer = 'postpone';
  const deadlineText = ad.deadline ?? typed(ad, 'deadline', field(ep, 'deadline'), isString, '');
  const deadline = deadlineText ? Date.parse(deadlineText) : undefined;
  if (deadline !== undefined && Number.isNaN(deadline))
    throw unusable(ad, `deadline ${JSON.stringify(deadlineText)} is not a date-time.`);
  const message = typed(ad, 'message', field(ep, 'message'), isString, '');
  const pre = duration(ad, 'preNotification', field(ep, 'preNotification'));
  return {
    requireUserPermission,
    allowDecline: typed(ad, 'allowDecline', field(ep, 'allowDecline'), isBool, D.allowDecline),
    postponementMaximumMs: allowed ? maximum : 0,
    whenNoAnswer,
    ...(deadline !== undefined ? { deadline } : {}),
    countdownMs: duration(ad, 'countdown', field(ep, 'countdown')) ?? parseDuration(D.countdown)!,
    ...(message ? { message } : {}),
    ...(pre ? { preNotificationMs: pre } : {}),
  };
}

const DAYS = new Set(['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun']);
const CLOCK = /^([01]\d|2[0-3]):[0-5]\d$/;

/** Maintenance windows, re-run rule and the same-image rule of an advertisement. */
export function adSchedule(ad: PolicyAdvertisement): AdSchedule {
  const s = obj(ad.schedule);
  const raw = s['maintenanceWindows'];
  const windows: TransferWindow[] = [];
  if (raw !== undefined) {
    if (!Array.isArray(raw)) throw unusable(ad, 'schedule.maintenanceWindows is not a list.');
    for (const w of raw) {
      const o = obj(w);
      const days = o['days'];
      if (
        !isString(o['from']) ||
        !isString(o['to']) ||
        !CLOCK.test(o['from']) ||
        !CLOCK.test(o['to']) ||
        (days !== undefined &&
          (!Array.isArray(days) || !days.every((d) => isString(d) && DAYS.has(d))))
      )
        throw unusable(ad, `maintenance window ${JSON.stringify(w)} is not valid.`);
      windows.push({
        from: o['from'],
        to: o['to'],
        ...(days !== undefined ? { days: days as string[] } : {}),
      });
    }
  }
  const rerun = s['rerun'] ?? 'if-failed';
  if (rerun !== 'never' && rerun !== 'if-failed' && rerun !== 'always')
    throw unusable(ad, `schedule.rerun ${JSON.stringify(rerun)} is not valid.`);
  const retryText = s['retryAfter'] ?? DEFAULT_RETRY_AFTER;
  const retryAfterMs = isString(retryText) ? parseDuration(retryText) : undefined;
  if (retryAfterMs === undefined)
    throw unusable(ad, `schedule.retryAfter ${JSON.stringify(retryText)} is not a duration.`);
  const options = obj(obj(ad.settings)['options']);
  return {
    windows,
    rerun,
    retryAfterMs,
    redeploySameImage: typed(
      ad,
      'options.redeploySameImage',
      options['redeploySameImage'],
      isBool,
      AGENT_DEFAULTS.redeploySameImage,
    ),
  };
}

const stringList = (ad: { id: string }, name: string, v: unknown): string[] | undefined => {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every(isString)) throw unusable(ad, `${name} is not a list of text.`);
  return v;
};

/** Is `p` (an absolute path) `dir` or inside it? */
const within = (p: string, dir: string) => p === dir || p.startsWith(`${dir.replace(/\/$/, '')}/`);

/**
 * The deployment plan for an advertisement: the package's image and PE, the content
 * locations in the policy's order, and the deployment settings (wipe, keep, rollback,
 * prestage, state store, migration, machine and client state). Throws AGENT_POLICY_UNUSABLE
 * when the advertisement cannot be deployed in place (no PE, a state store on a share).
 */
export function planFor(
  ad: PolicyAdvertisement,
  deploymentId: string,
): { plan: DeploymentPlan; stateKey?: Buffer } {
  if (!ad.pe)
    throw unusable(
      ad,
      'the server found no PE image for its package: name one in the package definition (pe), or register an image named reimage-pe.',
    );
  const settings = obj(ad.settings);
  const D = AGENT_DEFAULTS;
  const store = obj(settings['stateStore']);
  const storeType = store['type'] ?? 'local';
  if (storeType !== 'local')
    throw unusable(
      ad,
      `its state store is of type ${JSON.stringify(storeType)}; the in-place deployment keeps the state on the machine's disk (type local).`,
    );
  const storePath = typed(ad, 'stateStore.path', store['path'], isString, D.stateStorePath);
  const encrypt = typed(ad, 'stateStore.encrypt', store['encrypt'], isBool, D.encrypt);
  const wipe = obj(settings['wipe']);
  const osPaths = stringList(ad, 'wipe.osPaths', wipe['osPaths']) ?? [...D.osPaths];
  const keep = stringList(ad, 'wipe.keep', wipe['keep']) ?? [...D.keep];
  // The state store must survive the wipe: kept when it lies in an OS path and no kept path holds it.
  if (osPaths.some((p) => within(storePath, p)) && !keep.some((k) => within(storePath, k)))
    keep.push(storePath);
  const retain = obj(settings['rollback'])['retainDays'];
  const migration = obj(settings['migration']);
  const clientState = obj(settings['clientState']);
  const image = ad.image;
  const props = image?.properties ?? {};
  const plan: DeploymentPlan = {
    id: deploymentId,
    advertisementId: ad.id,
    package: { name: ad.package.name, version: ad.package.version },
    image: {
      id: ad.package.imageId,
      // The catalog's names of the capture properties os and arch.
      ...(props['osFamily'] ? { os: props['osFamily'] } : {}),
      ...(props['architecture'] ? { arch: props['architecture'] } : {}),
      bytes: image?.size ?? 0,
    },
    pe: { imageId: ad.pe.imageId, program: ad.pe.program },
    sources: ad.content.map((c) => c.address),
    sourceNames: ad.content.map((c) => c.distributionPoint),
    wipe: { osPaths, keep },
    rollbackRetainDays: typeof retain === 'number' && retain >= 0 ? retain : D.retainDays,
    prestage: typed(
      ad,
      'prestage.enabled',
      obj(settings['prestage'])['enabled'],
      isBool,
      D.prestage,
    ),
    stateStore: { path: storePath },
    ...(settings['migration'] !== undefined
      ? {
          migration: {
            ...(migration['ruleSets'] !== undefined
              ? { ruleSets: stringList(ad, 'migration.ruleSets', migration['ruleSets']) }
              : {}),
            ...(Array.isArray(migration['rules'])
              ? { rules: migration['rules'] as NonNullable<DeploymentPlan['migration']>['rules'] }
              : {}),
          },
        }
      : {}),
    ...(settings['machineState'] !== undefined
      ? { machineState: obj(settings['machineState']) as DeploymentPlan['machineState'] }
      : {}),
    ...(settings['clientState'] !== undefined
      ? {
          clientState: {
            ...(clientState['guid'] !== undefined
              ? { guid: clientState['guid'] as 'migrate' | 'fresh' }
              : {}),
            ...(clientState['policy'] !== undefined
              ? { policy: clientState['policy'] as 'migrate' | 'fresh' }
              : {}),
          },
        }
      : {}),
    newClient: { program: NEW_CLIENT_PROGRAM, args: ['run', '--role', 'client'] },
  };
  if (ad.content.length === 0)
    throw unusable(ad, 'the policy names no distribution point to fetch the content from.');
  let stateKey: Buffer | undefined;
  if (encrypt) {
    stateKey = Buffer.from(ad.stateStoreKey, 'base64');
    if (stateKey.length !== 32) throw unusable(ad, 'its state store key is not 32 bytes.');
  }
  return { plan, ...(stateKey ? { stateKey } : {}) };
}
