import assert from 'node:assert/strict';
import { test } from 'node:test';
import { progressGate } from './progress-gate.js';

test('progress is reported at each tenth passed, never twice, at most once per interval', () => {
  let t = 0;
  const gate = progressGate(3000, () => t);
  assert.equal(gate(0.05), undefined, 'under a tenth: nothing (the start message says 0 %)');
  assert.equal(gate(0.1), 1);
  t += 1000;
  assert.equal(gate(0.35), undefined, 'too soon after the last');
  t += 2000;
  assert.equal(gate(0.35), 3, 'the tenth reached by now, skipping the one passed meanwhile');
  t += 5000;
  assert.equal(gate(0.3), undefined, 'a tenth already reported is not reported again');
  assert.equal(gate(1), 9, '100 % is the done message: at most 90 % here');
  t += 5000;
  assert.equal(gate(1), undefined);
  assert.equal(gate(Number.NaN), undefined);
});
