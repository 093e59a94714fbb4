import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { renderErrorsDoc } from '../src/errors-doc.js';
import { renderOpenApi } from '../src/server/openapi.js';
import { renderStatusMessagesDoc } from '../src/status/messages-doc.js';

const committed = (path: string) => readFileSync(new URL(`../../${path}`, import.meta.url), 'utf8');

test('docs/errors.md matches the error registry (run `npm run docs` after changing codes)', () => {
  assert.equal(committed('docs/errors.md'), renderErrorsDoc());
});

test('docs/openapi.json matches the server routes (run `npm run docs` after changing the API)', async () => {
  const doc = await renderOpenApi();
  assert.equal(committed('docs/openapi.json'), doc);
  const paths = Object.keys(JSON.parse(doc).paths);
  assert.ok(
    paths.includes('/api/v1/client/status') && paths.includes('/api/v1/packages'),
    'the document lists the API',
  );
});

test('docs/status-messages.md matches the status message catalog (run `npm run docs` after adding messages)', () => {
  assert.equal(committed('docs/status-messages.md'), renderStatusMessagesDoc());
});
