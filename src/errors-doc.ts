import { errorCodes } from './errors.js';

/** docs/errors.md, generated from the registry (`npm run docs`); a test fails when they drift. */
export function renderErrorsDoc(): string {
  const rows = Object.entries(errorCodes).map(
    ([code, e]) =>
      `| \`${code}\` | ${e.exit} | ${'http' in e ? e.http : ''} | ${e.help.replace(/\|/g, '\\|')} |`,
  );
  return [
    '# Error codes',
    '',
    'Generated from `src/errors.ts` by `npm run docs`; do not edit by hand.',
    'Every error reimage reports carries one of these codes (in `--json` output: `error.code`).',
    'Codes never change meaning and are never reused. Scripts branch on the code, never on the message.',
    '',
    '| code | exit status | HTTP status | what it means and what to do |',
    '| --- | --- | --- | --- |',
    ...rows,
    '',
    'Exit status 70 is an internal error (a bug): please report it with the command and its output.',
    '',
  ].join('\n');
}
