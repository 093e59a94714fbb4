import path from 'node:path';
import type { Command } from 'commander';
import { answerNotification } from '../agent/notify.js';
import { ReimageError } from '../errors.js';
import type { DemoMachineResult, DemoResult, MachineProgress } from '../lab/demo.js';
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

/** A comma-separated list of machine indexes (`--opaque 2,5`). */
function indexList(flag: string): (v: string) => number[] {
  const one = wholeNumber(flag, 0);
  return (v) => v.split(',').map((x) => one(x.trim()));
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

  lab
    .command('demo')
    .description(
      'the whole story on one computer: server, two sites with a DP behind an emulated link, lab machines, an advertised v2 image, simulated users (docs/lab.md)',
    )
    .option(
      '--dir <dir>',
      'the work folder (emptied first if it holds an earlier demo)',
      'lab-data/demo',
    )
    .option('--machines <n>', 'lab machines (default 12)', wholeNumber('--machines', 1))
    .option(
      '--countdown <s>',
      'notification countdown in seconds (default 20)',
      wholeNumber('--countdown', 1),
    )
    .option(
      '--timeout <s>',
      'give up after this many seconds (default 900)',
      wholeNumber('--timeout', 1),
    )
    .option(
      '--until-done',
      'exit once every machine reached its end state (default: then keep the server up until Ctrl-C)',
    )
    .option('--json', "print the machines' end states as one JSON document at the end")
    .option(
      '--opaque <i,...>',
      'machines (indexes from 0, in creation order) deployed from an opaque tar.zst package of v2',
      indexList('--opaque'),
    )
    .option(
      '--serverless <i,...>',
      'machines (indexes from 0) deployed serverless from a signed publication on a share folder',
      indexList('--serverless'),
    )
    .option(
      '--in-process-firmware',
      "run the machines' firmware loops in this process instead of one `reimage lab boot` process each",
    )
    .action(
      async (o: {
        dir: string;
        machines?: number;
        countdown?: number;
        timeout?: number;
        untilDone?: boolean;
        json?: boolean;
        opaque?: number[];
        serverless?: number[];
        inProcessFirmware?: boolean;
      }) => {
        // Loaded here, not at the top: the demo brings the server and the lab, which every
        // other command would otherwise pay for at start (about 1 s on this machine).
        const { machineProblems, progressTable, runDemo } = await import('../lab/demo.js');
        const ac = new AbortController();
        const stop = () => ac.abort();
        process.on('SIGINT', stop);
        process.on('SIGTERM', stop);
        const tty = !o.json && process.stdout.isTTY === true;
        let drawn = 0;
        let printed = false;
        const lastPhase = new Map<string, string>();
        const progress = (rows: MachineProgress[]) => {
          if (o.json) return;
          if (tty) {
            const lines = progressTable(rows, process.stdout.columns || 120);
            process.stdout.write(
              (drawn > 0 ? `\x1b[${drawn}A` : '') + lines.map((l) => `\x1b[2K${l}\n`).join(''),
            );
            drawn = lines.length;
            return;
          }
          for (const r of rows) {
            const line = `${r.phase}: ${r.lastStatus}`;
            if (lastPhase.get(r.name) === line) continue;
            lastPhase.set(r.name, line);
            process.stdout.write(`${r.name} ${line}\n`);
          }
        };
        try {
          const r = await runDemo({
            dir: o.dir,
            machines: o.machines,
            countdownSeconds: o.countdown,
            timeoutMs: o.timeout === undefined ? undefined : o.timeout * 1000,
            answer: answerNotification,
            ...(o.opaque ? { opaque: o.opaque } : {}),
            ...(o.serverless ? { serverless: o.serverless } : {}),
            firmware: o.inProcessFirmware ? 'in-process' : 'process',
            signal: ac.signal,
            log: (line) => {
              if (o.json) process.stderr.write(`${line}\n`);
              else if (!tty || drawn === 0) process.stdout.write(`${line}\n`);
            },
            onProgress: progress,
            afterRun: async (lab, result) => {
              if (o.untilDone) return;
              process.stdout.write(
                o.json ? `${JSON.stringify(jsonResult(result), null, 2)}\n` : summary(result),
              );
              printed = true;
              process.stderr.write(
                `\nThe server is still up at ${lab.server.url}: reimage login --server ${lab.server.url} --password-stdin < ${path.join(lab.dir, 'server', 'initial-admin-password')}, ` +
                  `then reimage machine list, reimage status list, ... Ctrl-C stops it.\n`,
              );
              if (!ac.signal.aborted)
                await new Promise<void>((resolve) =>
                  ac.signal.addEventListener('abort', () => resolve()),
                );
            },
          });
          if (!printed)
            process.stdout.write(
              o.json ? `${JSON.stringify(jsonResult(r), null, 2)}\n` : summary(r),
            );
          const off = r.machines
            .map((m) => ({ name: m.name, problems: machineProblems(m) }))
            .filter((m) => m.problems.length > 0);
          if (off.length > 0)
            throw new ReimageError(
              'LAB_DEMO_UNEXPECTED',
              `${off.length} machine(s) did not end as expected: ${off.map((m) => `${m.name}: ${m.problems.join(', ')}`).join('; ')}`,
              { details: { reported: true } },
            );
        } finally {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
        }
      },
    );
}

/** `--json`: the issue's shape first, then the lab's details. */
function jsonResult(r: DemoResult) {
  return {
    machines: r.machines.map((m) => ({
      name: m.name,
      endState: m.endState,
      imageId: m.imageId,
      clientVersion: m.clientVersion,
      userDataIntact: m.userDataIntact,
      statusMessages: m.statusMessages,
      site: m.site,
      plan: m.plan,
      via: m.via,
      expected: m.expected,
      expectedImageId: m.expectedImageId,
      userData: m.userData,
      guid: m.guid,
      boots: m.boots,
      ...(m.endState === 'installed' ? { restoreReport: m.restoreReport, osTree: m.osTree } : {}),
    })),
    ok: r.ok,
    images: r.images,
    versions: r.versions,
    seconds: r.seconds,
    dir: r.dir,
  };
}

function summary(r: DemoResult): string {
  const short = (id: string | null) =>
    id === r.images.v2 ? 'v2' : id === r.images.v1 ? 'v1' : (id?.slice(0, 12) ?? '-');
  const lines = [
    '',
    `${'machine'.padEnd(14)} ${'user'.padEnd(12)} ${'end state'.padEnd(14)} image client  data    os tree  msgs`,
    ...r.machines.map(
      (m) =>
        `${m.name.padEnd(14)} ${m.plan.padEnd(12)} ${(m.endState === m.expected ? m.endState : `${m.endState}!`).padEnd(14)} ${short(m.imageId).padEnd(5)} ${(m.clientVersion ?? '-').padEnd(7)} ${(m.userDataIntact ? 'intact' : 'CHANGED').padEnd(7)} ${osTreeCell(m).padEnd(8)} ${String(m.statusMessages).padStart(4)}`,
    ),
    '',
    r.ok
      ? `every machine ended as expected, user data intact, installed OS trees equal to the image (${r.seconds.toFixed(0)} s; work folder ${r.dir})`
      : `some machines did not end as expected (marked !) (${r.seconds.toFixed(0)} s; work folder ${r.dir})`,
  ];
  return lines.join('\n') + '\n';
}

/** The summary's "os tree" column: an installed machine's disk against the image. */
function osTreeCell(m: DemoMachineResult): string {
  if (m.endState !== 'installed') return '-';
  const t = m.osTree;
  if (!t) return '?';
  return t.missing.length + t.added.length + t.changed.length === 0 ? '= image' : 'DIFFERS';
}
