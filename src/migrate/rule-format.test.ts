import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { isReimageError } from '../errors.js';
import { builtinRuleSets, isBuiltinRuleSet, parsePattern, patternProblem } from './rule-format.js';

describe('rule patterns', () => {
  it('split a location from its bracketed file types', () => {
    assert.deepEqual(parsePattern('~/Documents/** [*.odt, *.pdf]'), {
      location: '~/Documents/**',
      inHome: true,
      types: ['*.odt', '*.pdf'],
    });
    assert.deepEqual(parsePattern('/etc/app/**'), { location: '/etc/app/**', inHome: false });
    assert.deepEqual(parsePattern('~/My Documents/*'), {
      location: '~/My Documents/*',
      inHome: true,
    });
  });

  it('keep a glob class that is not set off by a space in the location', () => {
    assert.deepEqual(parsePattern('/data/[ab]*'), { location: '/data/[ab]*', inHome: false });
    assert.deepEqual(parsePattern('/data/[ab]* [*.csv]'), {
      location: '/data/[ab]*',
      inHome: false,
      types: ['*.csv'],
    });
  });

  it('say what is wrong', () => {
    const cases: [string, RegExp][] = [
      ['Documents/**', /must start with "\/" or "~\/"/],
      ['~Documents', /must start with/],
      ['', /must start with/],
      ['/a/../b', /".." segments/],
      ['~/x []', /file types/],
      ['~/x [*.a,,*.b]', /file types/],
      ['~/x [sub/*.a]', /file types/],
    ];
    for (const [text, why] of cases) {
      assert.match(patternProblem(text) ?? 'valid', why, text);
      assert.throws(
        () => parsePattern(text),
        (e) => isReimageError(e, 'INVALID_ARGUMENT'),
      );
    }
  });

  it('built-in rule sets have unique kebab-case names and a description', () => {
    const names = builtinRuleSets.map((r) => r.name);
    assert.equal(new Set(names).size, names.length);
    for (const r of builtinRuleSets) {
      assert.match(r.name, /^[a-z]+(-[a-z]+)*$/);
      assert.ok(r.description.length > 10);
    }
    assert.ok(isBuiltinRuleSet('user-documents'));
    assert.ok(!isBuiltinRuleSet('machine-state'));
  });
});
