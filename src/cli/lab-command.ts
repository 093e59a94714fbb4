import type { Command } from 'commander';
import { ReimageError } from '../errors.js';
import { runFirmware } from '../lab/firmware.js';
import { createLabMachine } from '../lab/machine.js';

function wholeNumber(flag: string, min: number): (v: string) => number {
  return (v) => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min)
      throw new ReimageError(
        'USAGE',
        `${flag} must be a whole number ≥ ${min}, not ${JSON.stringify(v)}`,
      );
    return n;
  };
}

/** `reimage lab …`: lab machines (docs/lab.md). */
export function registerLabCommands(program: Command): void {
  const lab = program.command('lab').description('simulated machines: create them, boot them');

  lab
    .command('create')
    .description('create a lab machine folder: machine.json, a generated disk, the agent bundle')
    .argument('<machine-dir>', 'the machine folder (must not exist or be empty)')
    .requiredOption('--name <name>', 'the machine name (also its hostname)')
    .requiredOption('--site <site>', 'the site the machine is at')
    .option('--agent-bundle <file>', 'install this agent bundle at /usr/lib/reimage/agent.bundle')
    .option('--seed <n>', 'seed of the generated tree', wholeNumber('--seed', 0))
    .option('--users <n>', 'regular users on the disk', wholeNumber('--users', 0))
    .option('--small', 'a small tree (≈ 400 files) instead of the default (≈ 2000 files)')
    .option('--json', 'print the machine as JSON')
    .action(
      async (
        dir: string,
        o: {
          name: string;
          site: string;
          agentBundle?: string;
          seed?: number;
          users?: number;
          small?: boolean;
          json?: boolean;
        },
      ) => {
        const m = await createLabMachine({
          dir,
          name: o.name,
          site: o.site,
          agentBundle: o.agentBundle,
          tree: { seed: o.seed, users: o.users, scale: o.small ? 'small' : 'default' },
        });
        process.stdout.write(
          o.json
            ? JSON.stringify({ dir: m.dir, ...m.identity, boot: m.boot }, null, 2) + '\n'
            : `lab machine ${m.identity.name} (${m.identity.mac}, ${m.identity.ip}, site ${m.identity.site}): ${m.dir}\n`,
        );
      },
    );

  lab
    .command('boot')
    .description(
      "power on a lab machine: boot the entry its disk's boot.json names, until it powers off",
    )
    .argument('<machine-dir>', 'the machine folder')
    .option(
      '--max-boots <n>',
      'stop after this many boots (for tests)',
      wholeNumber('--max-boots', 1),
    )
    .option(
      '--max-boots-per-minute <n>',
      'boot-loop guard: halt when the machine boots more often than this (default 10)',
      wholeNumber('--max-boots-per-minute', 1),
    )
    .option(
      '--power-cycle-delay <ms>',
      'wait after a kill or crash before booting again (default 1000)',
      wholeNumber('--power-cycle-delay', 0),
    )
    .option('--quiet', 'do not echo the console (console.log still has it)')
    .option('--json', 'print how the machine ended as JSON')
    .action(
      async (
        dir: string,
        o: {
          maxBoots?: number;
          maxBootsPerMinute?: number;
          powerCycleDelay?: number;
          quiet?: boolean;
          json?: boolean;
        },
      ) => {
        // Stopping the firmware pulls the machine's power: its program is killed.
        const ac = new AbortController();
        const stop = () => ac.abort();
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
        try {
          const r = await runFirmware({
            machine: dir,
            maxBoots: o.maxBoots,
            loopGuard:
              o.maxBootsPerMinute === undefined
                ? undefined
                : { boots: o.maxBootsPerMinute, windowMs: 60_000 },
            powerCycleDelayMs: o.powerCycleDelay,
            signal: ac.signal,
            onConsole: o.quiet || o.json ? undefined : (line) => process.stdout.write(line + '\n'),
          });
          if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
        } finally {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
        }
      },
    );
}
