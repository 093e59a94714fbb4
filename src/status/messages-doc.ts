import {
  documentedProperties,
  groupOf,
  stateOf,
  statusGroups,
  statusMessages,
} from './messages.js';

const cell = (s: string) => s.replace(/\|/g, '\\|');

/** docs/status-messages.md, generated from the catalog (`npm run docs`); a test fails when they drift. */
export function renderStatusMessagesDoc(): string {
  const ids = Object.keys(statusMessages)
    .map(Number)
    .sort((a, b) => a - b);
  const out = [
    '# Status messages',
    '',
    'Generated from `src/status/messages.ts` by `npm run docs`; do not edit by hand.',
    'Every event a component reports is one of these messages: a stable numeric id (never reused,',
    'never changing meaning), the component that sends it, the phase, the severity, a text template',
    'whose `{placeholders}` are filled from the properties, and the properties it carries. Errors',
    'always carry `code` (docs/errors.md), `step` and `logTail`. **state** is the deployment state',
    'the message moves the machine to in the summaries (docs/status.md); `-` moves none.',
    '',
  ];
  for (const g of statusGroups) {
    const mine = ids.filter((id) => groupOf(id) === g.id);
    if (mine.length === 0) continue;
    out.push(`## ${g.title} (${g.from}–${g.to})`, '');
    out.push('| id | component | phase | severity | state | text | properties |');
    out.push('| --- | --- | --- | --- | --- | --- | --- |');
    for (const id of mine) {
      const d = statusMessages[id]!;
      const props = Object.entries(documentedProperties(id))
        .map(([k, v]) => `\`${k}\`: ${v}`)
        .join('<br>');
      out.push(
        `| ${id} | ${d.component} | ${d.phase} | ${d.severity} | ${stateOf(d) ?? '-'} | ${cell(d.text)} | ${cell(props) || '-'} |`,
      );
    }
    out.push('');
  }
  const other = ids.filter((id) => groupOf(id) === 'other');
  if (other.length > 0) throw new Error(`status messages outside every group: ${other.join(', ')}`);
  return out.join('\n');
}
