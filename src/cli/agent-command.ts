import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { promptNotification } from '../agent/notify-prompt.js';
import { buildAgentBundle } from '../lab/bundle.js';
import { formatBytes } from './output.js';

/** The checkout this command runs from (dist/src/cli/ → root): what the bundle is built from. */
function checkoutRoot(): string {
  return join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
}

/** `reimage agent …`: build the agent's bundle; answer a notification on a terminal. */
export function registerAgentCommands(program: Command): void {
  const agent = program
    .command('agent')
    .description('build the agent (its bundle); answer its notification (prompt)');
  agent
    .command('bundle')
    .description(
      'build the self-contained agent bundle: one file that runs with `node FILE` (docs/lab.md)',
    )
    .requiredOption('--version <version>', 'the agent version the bundle carries (e.g. 2.0.0)')
    .requiredOption('--out <file>', 'where to write the bundle (replaced atomically)')
    .option('--json', 'print the result as JSON')
    .action((o: { version: string; out: string; json?: boolean }) => {
      const started = process.hrtime.bigint();
      const r = buildAgentBundle({ root: checkoutRoot(), version: o.version, out: o.out });
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (o.json) {
        process.stdout.write(JSON.stringify({ ...r, seconds }, null, 2) + '\n');
        return;
      }
      process.stdout.write(
        [
          `agent bundle ${r.version}: ${r.out}`,
          `size:     ${formatBytes(r.bytes)} (archive ${formatBytes(r.archiveBytes)}, ${formatBytes(r.tarBytes)} unpacked)`,
          `sha256:   ${r.sha256}`,
          `files:    ${r.files.total} (${r.files.modules} modules, ${r.files.packageFiles} package files, ${r.files.native} native addons)`,
          `packages: ${r.packages.join(', ') || 'none'}`,
          `built in  ${seconds.toFixed(2)} s`,
        ].join('\n') + '\n',
      );
    });
  agent
    .command('prompt')
    .description(
      'answer the notification pending on this machine, on the terminal (docs/notification.md); exits 1 when none is pending',
    )
    .option('--machine <dir>', "the machine's root folder", '/')
    .option('--json', 'print the recorded answer as JSON')
    .action(async (o: { machine: string; json?: boolean }) => {
      const r = await promptNotification(o.machine, {
        input: process.stdin,
        output: process.stdout,
      });
      if (o.json)
        process.stdout.write(JSON.stringify({ answer: r?.answer ?? null }, null, 2) + '\n');
    });
}
