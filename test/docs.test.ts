import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { renderErrorsDoc } from '../src/errors-doc.js';

test('docs/errors.md matches the error registry (run `npm run docs` after changing codes)', () => {
  const committed = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  assert.equal(committed, renderErrorsDoc());
});
