// Regenerates the committed, generated documents (run by `npm run docs`; checked by the tests).
import { writeFileSync } from 'node:fs';
import { renderErrorsDoc } from '../dist/src/errors-doc.js';

writeFileSync(new URL('../docs/errors.md', import.meta.url), renderErrorsDoc());
