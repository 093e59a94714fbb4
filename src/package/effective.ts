import { ReimageError } from '../errors.js';
import { parseDuration } from './document.js';
import {
  defaults,
  type AdvertisementPolicy,
  type DeploymentSettings,
  type WhenNoAnswer,
} from './schema.js';

/**
 * The notification policy a machine follows: the package's options, tightened by the
 * advertisement. An advertisement may only tighten (checkTightenOnly rejects the rest); the
 * effective policy also takes the stricter of the two for every setting, so a loosening value
 * that got past the check still changes nothing.
 *
 * Strictness of whenNoAnswer runs install → postpone → decline (less is installed without an
 * answer). With permission required only postpone and decline are possible.
 */

export type PolicySource = 'package' | 'advertisement' | 'default';

export interface Effective<T> {
  value: T;
  source: PolicySource;
}

export interface EffectivePolicy {
  requireUserPermission: Effective<boolean>;
  allowDecline: Effective<boolean>;
  postponementAllowed: Effective<boolean>;
  /** A duration ("3d"); "0s" when postponement is not allowed. */
  postponementMaximum: Effective<string>;
  whenNoAnswer: Effective<WhenNoAnswer>;
  /** ISO date-time, or null for no deadline. */
  deadline: Effective<string | null>;
  countdown: Effective<string>;
  /** The custom notification text, or null for the agent's standard one. */
  message: Effective<string | null>;
  /** How long before the start users are told, or null for no advance notice. */
  preNotification: Effective<string | null>;
}

/** One setting an advertisement tried to loosen; `details.problems` of POLICY_LOOSENED. */
export interface PolicyProblem {
  setting: keyof AdvertisementPolicy;
  found: unknown;
  packageValue: unknown;
  expected: string;
}

const RANK: Record<WhenNoAnswer, number> = { install: 0, postpone: 1, decline: 2 };

export function effectivePolicy(
  settings: DeploymentSettings,
  ad: AdvertisementPolicy,
): EffectivePolicy {
  const pkg = packagePolicy(settings);
  const requireUserPermission =
    ad.requireUserPermission === true && !pkg.requireUserPermission.value
      ? fromAd(true)
      : pkg.requireUserPermission;
  const allowDecline =
    ad.allowDecline === false && pkg.allowDecline.value ? fromAd(false) : pkg.allowDecline;

  let postponementAllowed = pkg.postponementAllowed;
  let postponementMaximum = pkg.postponementMaximum;
  if (ad.postponementMaximum !== undefined && postponementAllowed.value) {
    const ms = parseDuration(ad.postponementMaximum);
    if (ms === 0) {
      postponementAllowed = fromAd(false);
      postponementMaximum = fromAd('0s');
    } else if (ms < parseDuration(postponementMaximum.value)) {
      postponementMaximum = fromAd(ad.postponementMaximum);
    }
  }

  // The package's own whenNoAnswer, its default following the effective permission setting.
  let whenNoAnswer: Effective<WhenNoAnswer> = settings.options?.whenNoAnswer
    ? { value: settings.options.whenNoAnswer, source: 'package' }
    : { value: defaultWhenNoAnswer(requireUserPermission.value), source: 'default' };
  if (ad.whenNoAnswer !== undefined && RANK[ad.whenNoAnswer] > RANK[whenNoAnswer.value]) {
    whenNoAnswer = fromAd(ad.whenNoAnswer);
  }
  if (requireUserPermission.value && whenNoAnswer.value === 'install') {
    // Only reachable when the advertisement made permission required: its doing.
    whenNoAnswer = fromAd('postpone');
  }

  return {
    requireUserPermission,
    allowDecline,
    postponementAllowed,
    postponementMaximum,
    whenNoAnswer,
    deadline: ad.deadline !== undefined ? fromAd(ad.deadline) : byDefault(null),
    countdown: ad.countdown !== undefined ? fromAd(ad.countdown) : byDefault(defaults.countdown),
    message: ad.message !== undefined ? fromAd(ad.message) : byDefault(null),
    preNotification:
      ad.preNotification !== undefined ? fromAd(ad.preNotification) : byDefault(null),
  };
}

/**
 * Throws POLICY_LOOSENED listing every setting of `ad` that is looser than the package's:
 * not requiring permission the package requires, allowing a decline the package does not,
 * a longer postponement, or a whenNoAnswer toward install.
 */
export function checkTightenOnly(settings: DeploymentSettings, ad: AdvertisementPolicy): void {
  const pkg = packagePolicy(settings);
  const problems: PolicyProblem[] = [];
  const loosened = (
    setting: keyof AdvertisementPolicy,
    packageValue: unknown,
    expected: string,
  ): void => {
    problems.push({ setting, found: ad[setting], packageValue, expected });
  };

  if (ad.requireUserPermission === false && pkg.requireUserPermission.value) {
    loosened(
      'requireUserPermission',
      true,
      "must be true or unset: the package requires the user's permission",
    );
  }
  if (ad.allowDecline === true && !pkg.allowDecline.value) {
    loosened('allowDecline', false, 'must be false or unset: the package does not allow declining');
  }
  if (ad.postponementMaximum !== undefined) {
    const ms = parseDuration(ad.postponementMaximum);
    if (!pkg.postponementAllowed.value && ms > 0) {
      loosened(
        'postponementMaximum',
        '0s',
        'must be "0s" or unset: the package allows no postponement',
      );
    } else if (ms > parseDuration(pkg.postponementMaximum.value)) {
      const max = pkg.postponementMaximum.value;
      loosened('postponementMaximum', max, `must be at most the package's maximum, ${max}`);
    }
  }
  if (ad.whenNoAnswer !== undefined) {
    const permission = pkg.requireUserPermission.value || ad.requireUserPermission === true;
    const own =
      settings.options?.whenNoAnswer ?? defaultWhenNoAnswer(pkg.requireUserPermission.value);
    const allowed = (Object.keys(RANK) as WhenNoAnswer[]).filter(
      (w) => RANK[w] >= RANK[own] && !(permission && w === 'install'),
    );
    if (!allowed.includes(ad.whenNoAnswer)) {
      const why =
        permission && ad.whenNoAnswer === 'install'
          ? 'nothing is installed without a yes when permission is required'
          : `an advertisement may only move the package's ${own} toward decline (install → postpone → decline)`;
      loosened('whenNoAnswer', own, `must be one of ${allowed.join(', ')}: ${why}`);
    }
  }

  if (problems.length > 0) {
    const lines = problems.map(
      (p) => `${p.setting}: ${p.expected} (found ${JSON.stringify(p.found)})`,
    );
    throw new ReimageError(
      'POLICY_LOOSENED',
      `the advertisement loosens its package's deployment settings:\n  ${lines.join('\n  ')}`,
      { details: { problems } },
    );
  }
}

/** What the package alone gives, before any advertisement. */
function packagePolicy(settings: DeploymentSettings) {
  const o = settings.options ?? {};
  const own = <T>(value: T | undefined, fallback: T): Effective<T> =>
    value !== undefined ? { value, source: 'package' } : byDefault(fallback);
  const postponementAllowed = own(o.postponement?.allowed, defaults.postponement.allowed);
  return {
    requireUserPermission: own(o.requireUserPermission, defaults.requireUserPermission),
    allowDecline: own(o.allowDecline, defaults.allowDecline),
    postponementAllowed,
    postponementMaximum: postponementAllowed.value
      ? own(o.postponement?.maximum, defaults.postponement.maximum)
      : { value: '0s', source: postponementAllowed.source },
  };
}

function defaultWhenNoAnswer(requireUserPermission: boolean): WhenNoAnswer {
  return requireUserPermission
    ? defaults.whenNoAnswer.withPermission
    : defaults.whenNoAnswer.withoutPermission;
}

const fromAd = <T>(value: T): Effective<T> => ({ value, source: 'advertisement' });
const byDefault = <T>(value: T): Effective<T> => ({ value, source: 'default' });
