// Regenerates the committed, generated documents (run by `npm run docs`; the tests fail when
// the committed files differ from what the code generates): the error table, the OpenAPI
// document of the management API, the status message catalog, and the JSON Schema of the package documents.
import { mkdirSync, writeFileSync } from 'node:fs';
import { renderErrorsDoc } from '../dist/src/errors-doc.js';
import { publishedSchemas } from '../dist/src/package/schema.js';
import { renderOpenApi } from '../dist/src/server/openapi.js';
import { renderStatusMessagesDoc } from '../dist/src/status/messages-doc.js';

const docs = new URL('../docs/', import.meta.url);
writeFileSync(new URL('errors.md', docs), renderErrorsDoc());
writeFileSync(new URL('openapi.json', docs), await renderOpenApi());
writeFileSync(new URL('status-messages.md', docs), renderStatusMessagesDoc());
mkdirSync(new URL('schemas/', docs), { recursive: true });
for (const [name, text] of Object.entries(publishedSchemas()))
  writeFileSync(new URL(`schemas/${name}`, docs), text);
