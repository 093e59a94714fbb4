import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { isReimageError } from '../errors.js';
import { checkTightenOnly, effectivePolicy, type PolicyProblem } from './effective.js';
import type { AdvertisementPolicy, DeploymentSettings, WhenNoAnswer } from './schema.js';

type Options = NonNullable<DeploymentSettings['options']>;
const pkg = (options?: Options): DeploymentSettings => ({
  apiVersion: 'reimage/v1',
  kind: 'DeploymentSettings',
  ...(options ? { options } : {}),
});

describe('effective policy', () => {
  it('defaults when neither package nor advertisement says', () => {
    const e = effectivePolicy(pkg(), {});
    assert.deepEqual(e, {
      requireUserPermission: { value: false, source: 'default' },
      allowDecline: { value: false, source: 'default' },
      postponementAllowed: { value: true, source: 'default' },
      postponementMaximum: { value: '3d', source: 'default' },
      whenNoAnswer: { value: 'install', source: 'default' },
      deadline: { value: null, source: 'default' },
      countdown: { value: '15m', source: 'default' },
      message: { value: null, source: 'default' },
      preNotification: { value: null, source: 'default' },
    });
  });

  it('takes what the package says', () => {
    const e = effectivePolicy(
      pkg({ requireUserPermission: true, allowDecline: true, postponement: { maximum: '2d' } }),
      {},
    );
    assert.deepEqual(e.requireUserPermission, { value: true, source: 'package' });
    assert.deepEqual(e.allowDecline, { value: true, source: 'package' });
    assert.deepEqual(e.postponementMaximum, { value: '2d', source: 'package' });
    assert.deepEqual(e.whenNoAnswer, { value: 'postpone', source: 'default' });
  });

  it('takes what the advertisement tightens or adds', () => {
    const e = effectivePolicy(pkg({ allowDecline: true, whenNoAnswer: 'postpone' }), {
      requireUserPermission: true,
      allowDecline: false,
      postponementMaximum: '12h',
      whenNoAnswer: 'decline',
      deadline: '2025-03-01T18:00:00Z',
      countdown: '5m',
      message: 'Tonight.',
      preNotification: '1d',
    });
    const { postponementAllowed, ...rest } = e;
    assert.deepEqual(postponementAllowed, { value: true, source: 'default' });
    for (const [key, value] of Object.entries(rest)) {
      assert.equal(value.source, 'advertisement', key);
    }
    assert.equal(e.postponementMaximum.value, '12h');
    assert.equal(e.whenNoAnswer.value, 'decline');
  });

  it('"0s" from the advertisement turns postponement off', () => {
    const e = effectivePolicy(pkg(), { postponementMaximum: '0s' });
    assert.deepEqual(e.postponementAllowed, { value: false, source: 'advertisement' });
    assert.deepEqual(e.postponementMaximum, { value: '0s', source: 'advertisement' });
  });

  it('ignores loosening values (checkTightenOnly rejects them first)', () => {
    const e = effectivePolicy(
      pkg({
        requireUserPermission: true,
        postponement: { allowed: false },
        whenNoAnswer: 'decline',
      }),
      {
        requireUserPermission: false,
        allowDecline: true,
        postponementMaximum: '9d',
        whenNoAnswer: 'install',
      },
    );
    assert.deepEqual(e.requireUserPermission, { value: true, source: 'package' });
    assert.deepEqual(e.allowDecline, { value: false, source: 'default' });
    assert.deepEqual(e.postponementAllowed, { value: false, source: 'package' });
    assert.deepEqual(e.postponementMaximum, { value: '0s', source: 'package' });
    assert.deepEqual(e.whenNoAnswer, { value: 'decline', source: 'package' });
  });

  it('permission required by the advertisement turns the default install into postpone', () => {
    assert.deepEqual(effectivePolicy(pkg(), { requireUserPermission: true }).whenNoAnswer, {
      value: 'postpone',
      source: 'default',
    });
    assert.deepEqual(
      effectivePolicy(pkg({ whenNoAnswer: 'install' }), { requireUserPermission: true })
        .whenNoAnswer,
      { value: 'postpone', source: 'advertisement' },
    );
  });

  it('invariant: with permission effectively required, whenNoAnswer is never install', () => {
    const bools = [undefined, false, true];
    const answers: (WhenNoAnswer | undefined)[] = [undefined, 'install', 'postpone', 'decline'];
    let combos = 0;
    for (const rup of bools)
      for (const wna of answers)
        for (const adRup of bools)
          for (const adWna of answers) {
            const options: Options = {};
            if (rup !== undefined) options.requireUserPermission = rup;
            if (wna !== undefined) options.whenNoAnswer = wna;
            const ad: AdvertisementPolicy = {};
            if (adRup !== undefined) ad.requireUserPermission = adRup;
            if (adWna !== undefined) ad.whenNoAnswer = adWna;
            const e = effectivePolicy(pkg(options), ad);
            combos++;
            if (e.requireUserPermission.value) {
              assert.notEqual(e.whenNoAnswer.value, 'install', JSON.stringify({ options, ad }));
            }
            if (rup === true) assert.equal(e.requireUserPermission.value, true, 'never looser');
          }
    assert.equal(combos, 144);
  });
});

describe('tighten-only', () => {
  const table: [string, Options | undefined, AdvertisementPolicy, string[]][] = [
    ['nothing said', undefined, {}, []],
    ['ad requires permission', undefined, { requireUserPermission: true }, []],
    [
      'ad drops required permission',
      { requireUserPermission: true },
      { requireUserPermission: false },
      ['requireUserPermission'],
    ],
    [
      'ad repeats the package',
      { requireUserPermission: true, allowDecline: true },
      { requireUserPermission: true, allowDecline: true },
      [],
    ],
    ['ad allows decline', undefined, { allowDecline: true }, ['allowDecline']],
    ['ad forbids decline', { allowDecline: true }, { allowDecline: false }, []],
    ['ad shortens postponement', undefined, { postponementMaximum: '2d' }, []],
    ['ad keeps the maximum in other units', undefined, { postponementMaximum: '72h' }, []],
    [
      'ad lengthens postponement',
      undefined,
      { postponementMaximum: '3d1s' },
      ['postponementMaximum'],
    ],
    [
      'ad postpones what the package does not',
      { postponement: { allowed: false } },
      { postponementMaximum: '1h' },
      ['postponementMaximum'],
    ],
    [
      'ad says no postponement either',
      { postponement: { allowed: false } },
      { postponementMaximum: '0s' },
      [],
    ],
    [
      'ad moves postpone to install',
      { whenNoAnswer: 'postpone' },
      { whenNoAnswer: 'install' },
      ['whenNoAnswer'],
    ],
    [
      'ad moves decline to postpone',
      { whenNoAnswer: 'decline' },
      { whenNoAnswer: 'postpone' },
      ['whenNoAnswer'],
    ],
    ['ad moves install to decline', undefined, { whenNoAnswer: 'decline' }, []],
    [
      'ad installs without a yes',
      { requireUserPermission: true },
      { whenNoAnswer: 'install' },
      ['whenNoAnswer'],
    ],
    [
      'ad requires a yes and installs anyway',
      undefined,
      { requireUserPermission: true, whenNoAnswer: 'install' },
      ['whenNoAnswer'],
    ],
    [
      'ad requires a yes over an install',
      { whenNoAnswer: 'install' },
      { requireUserPermission: true, whenNoAnswer: 'postpone' },
      [],
    ],
    [
      'ad-only settings',
      undefined,
      { deadline: '2025-03-01T18:00:00Z', countdown: '1h', message: 'Hi', preNotification: '2d' },
      [],
    ],
    [
      'several at once',
      { requireUserPermission: true, postponement: { maximum: '1d' } },
      { requireUserPermission: false, allowDecline: true, postponementMaximum: '2d' },
      ['requireUserPermission', 'allowDecline', 'postponementMaximum'],
    ],
  ];
  for (const [name, options, ad, loosened] of table) {
    it(name, () => {
      const settings = pkg(options);
      if (loosened.length === 0) {
        checkTightenOnly(settings, ad);
        return;
      }
      assert.throws(
        () => checkTightenOnly(settings, ad),
        (e) => {
          assert.ok(isReimageError(e, 'POLICY_LOOSENED'));
          const problems = e.details.problems as PolicyProblem[];
          assert.deepEqual(
            problems.map((p) => p.setting),
            loosened,
          );
          for (const p of problems) {
            assert.equal(p.found, ad[p.setting]);
            assert.ok(e.message.includes(`${p.setting}: ${p.expected}`), e.message);
          }
          return true;
        },
      );
    });
  }

  it("explains a postponement limit in the package's terms", () => {
    assert.throws(
      () =>
        checkTightenOnly(pkg({ postponement: { maximum: '1d' } }), { postponementMaximum: '2d' }),
      /postponementMaximum: must be at most the package's maximum, 1d \(found "2d"\)/,
    );
  });

  it('explains which whenNoAnswer values are left', () => {
    assert.throws(
      () => checkTightenOnly(pkg({ whenNoAnswer: 'postpone' }), { whenNoAnswer: 'install' }),
      /whenNoAnswer: must be one of postpone, decline: an advertisement may only move the package's postpone toward decline/,
    );
  });
});
