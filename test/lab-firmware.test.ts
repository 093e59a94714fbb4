import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { isReimageError } from '../src/errors.js';
import { runFirmware, type BootConfig } from '../src/lab/firmware.js';
import { createLabMachine } from '../src/lab/machine.js';
import { reimage, reimageAsync } from './cli.js';

/**
 * The program the test machines boot: a script on their disk that records each boot (its
 * entry, its arguments, and the `next` that boot.json held while it ran) and ends as
 * disk/plan.json says for that boot: an exit code, or "hang" (waits to be killed).
 */
const BOOT_PROGRAM = `
const fs = require('node:fs');
const disk = process.cwd();
const boot = JSON.parse(fs.readFileSync('../esp/reimage/boot.json', 'utf8'));
fs.appendFileSync('boots.jsonl', JSON.stringify({ args: process.argv.slice(2), next: boot.next ?? null }) + '\\n');
const n = fs.readFileSync('boots.jsonl', 'utf8').trim().split('\\n').length;
const action = JSON.parse(fs.readFileSync('plan.json', 'utf8'))[n - 1] ?? 0;
console.log('boot ' + n + ': ' + action);
console.error('a line on stderr');
if (action === 'hang') {
  fs.writeFileSync('pid', String(process.pid));
  setInterval(() => {}, 1000);
} else process.exitCode = action;
`;

let work: string;
let count = 0;

interface Machine {
  dir: string;
  disk: string;
  boots: () => Array<{ args: string[]; next: string | null }>;
  console: () => string;
}

function machine(plan: Array<number | 'hang'>, config?: Partial<BootConfig>): Machine {
  const dir = join(work, `m${++count}`);
  const disk = join(dir, 'disk');
  mkdirSync(join(dir, 'esp/reimage'), { recursive: true });
  mkdirSync(join(disk, 'usr/lib/test'), { recursive: true });
  writeFileSync(join(dir, 'machine.json'), JSON.stringify({ name: `m${count}` }));
  writeFileSync(join(disk, 'usr/lib/test/boot.js'), BOOT_PROGRAM);
  writeFileSync(join(disk, 'plan.json'), JSON.stringify(plan));
  const boot: BootConfig = {
    default: 'os',
    entries: {
      os: { program: '/usr/lib/test/boot.js', args: ['os'] },
      pe: { program: '/usr/lib/test/boot.js', args: ['pe'] },
    },
    ...config,
  };
  writeFileSync(join(dir, 'esp/reimage/boot.json'), JSON.stringify(boot));
  return {
    dir,
    disk,
    boots: () =>
      existsSync(join(disk, 'boots.jsonl'))
        ? readFileSync(join(disk, 'boots.jsonl'), 'utf8')
            .trim()
            .split('\n')
            .map((l) => JSON.parse(l) as { args: string[]; next: string | null })
        : [],
    console: () => readFileSync(join(dir, 'console.log'), 'utf8'),
  };
}

describe('lab firmware', () => {
  before(() => {
    work = mkdtempSync(join(tmpdir(), 'reimage-firmware-'));
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  test('boots the default entry with --machine; exit 0 powers off', async () => {
    const m = machine([0]);
    const r = await runFirmware({ machine: m.dir });
    assert.equal(r.end, 'power-off');
    assert.deepEqual(
      r.boots.map((b) => [b.entry, b.code, b.outcome]),
      [['os', 0, 'power-off']],
    );
    assert.deepEqual(m.boots(), [{ args: ['os', '--machine', m.dir], next: null }]);
    const log = m.console();
    assert.match(log, /^\S+Z firmware: power on/m);
    assert.match(log, /firmware: booting os: \/usr\/lib\/test\/boot\.js os --machine /);
    assert.match(log, /^\S+Z os\[\d+\] out: boot 1: 0$/m);
    assert.match(log, /^\S+Z os\[\d+\] err: a line on stderr$/m);
    assert.match(log, /firmware: power off$/m);
  });

  test('exit 3 reboots: the machine boots again', async () => {
    const m = machine([3, 3, 0]);
    const r = await runFirmware({ machine: m.dir });
    assert.deepEqual(
      r.boots.map((b) => b.outcome),
      ['reboot', 'reboot', 'power-off'],
    );
    assert.equal(m.boots().length, 3);
  });

  test('next boots its entry once (cleared on disk before it runs), then the default', async () => {
    const m = machine([3, 0], { next: 'pe' });
    const r = await runFirmware({ machine: m.dir });
    assert.deepEqual(
      r.boots.map((b) => b.entry),
      ['pe', 'os'],
    );
    assert.deepEqual(
      m.boots().map((b) => [b.args[0], b.next]),
      [
        ['pe', null],
        ['os', null],
      ],
    );
    const onDisk = JSON.parse(readFileSync(join(m.dir, 'esp/reimage/boot.json'), 'utf8'));
    assert.equal('next' in onDisk, false);
    assert.equal(onDisk.default, 'os');
    assert.deepEqual(Object.keys(onDisk.entries), ['os', 'pe']);
  });

  test('a SIGKILL of the program is a power cycle: the machine boots again', async () => {
    const m = machine(['hang', 0]);
    const running = runFirmware({ machine: m.dir, powerCycleDelayMs: 10 });
    const pidFile = join(m.disk, 'pid');
    while (!existsSync(pidFile)) await sleep(20);
    const pid = Number(readFileSync(pidFile, 'utf8'));
    process.kill(pid, 'SIGKILL');
    const r = await running;
    assert.deepEqual(
      r.boots.map((b) => [b.pid === pid, b.signal, b.outcome]),
      [
        [true, 'SIGKILL', 'power-cycle'],
        [false, null, 'power-off'],
      ],
    );
    assert.match(m.console(), /os killed by SIGKILL: power cycle/);
  });

  test('a crash is a power cycle too; a boot loop halts the machine', async () => {
    const m = machine([1, 1, 1, 1, 1, 0]);
    await assert.rejects(
      runFirmware({
        machine: m.dir,
        powerCycleDelayMs: 0,
        loopGuard: { boots: 3, windowMs: 600_000 },
      }),
      (e) => isReimageError(e, 'LAB_BOOT_LOOP') && e.details.boots === 3,
    );
    assert.equal(m.boots().length, 3);
    assert.match(m.console(), /os exited with code 1: power cycle/);
    assert.match(m.console(), /firmware: halted: boot loop: 3 boots/);
  });

  test('--max-boots stops a machine that keeps rebooting', async () => {
    const m = machine([3, 3, 3, 3]);
    const r = await runFirmware({ machine: m.dir, maxBoots: 2 });
    assert.equal(r.end, 'max-boots');
    assert.equal(m.boots().length, 2);
  });

  test('a missing boot program halts: no bootable device', async () => {
    const m = machine([0], {
      next: 'pe',
      entries: {
        os: { program: '/usr/lib/test/boot.js' },
        pe: { program: '/.reimage/pe/agent.bundle' },
      },
    });
    await assert.rejects(
      runFirmware({ machine: m.dir }),
      (e) =>
        isReimageError(e, 'LAB_NO_BOOT_DEVICE') && /\/\.reimage\/pe\/agent\.bundle/.test(e.message),
    );
    assert.equal(m.boots().length, 0);
    assert.match(
      m.console(),
      /firmware: halted: no bootable device: the boot program \/\.reimage\/pe\/agent\.bundle is not on the disk/,
    );
  });

  test('a boot program outside the disk is refused, by .. or by a symbolic link', async () => {
    const outside = join(work, 'outside.js');
    writeFileSync(
      outside,
      `require('node:fs').writeFileSync(${JSON.stringify(join(work, 'ran'))}, 'x')`,
    );
    const dotdot = machine([0], {
      entries: { os: { program: '/../../outside.js' } },
    });
    await assert.rejects(runFirmware({ machine: dotdot.dir }), (e) =>
      isReimageError(e, 'LAB_BOOT_CONFIG_INVALID'),
    );
    const link = machine([0], { entries: { os: { program: '/usr/lib/test/evil.js' } } });
    symlinkSync(outside, join(link.disk, 'usr/lib/test/evil.js'));
    await assert.rejects(
      runFirmware({ machine: link.dir }),
      (e) =>
        isReimageError(e, 'LAB_BOOT_CONFIG_INVALID') &&
        /outside the machine's disk/.test(e.message),
    );
    assert.equal(existsSync(join(work, 'ran')), false);
    assert.match(link.console(), /halted: boot program \/usr\/lib\/test\/evil\.js leads outside/);
  });

  test('a broken boot.json halts with a clear message', async () => {
    const m = machine([0]);
    writeFileSync(join(m.dir, 'esp/reimage/boot.json'), '{"default": "os", "entries": {"os": {}}}');
    await assert.rejects(
      runFirmware({ machine: m.dir }),
      (e) =>
        isReimageError(e, 'LAB_BOOT_CONFIG_INVALID') &&
        /entry "os" needs a "program"/.test(e.message),
    );
  });

  test('reimage lab boot: the command, its exit status and JSON', () => {
    const m = machine([3, 0]);
    const r = reimage(['lab', 'boot', m.dir, '--json']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.json.end, 'power-off');
    assert.equal(r.json.boots.length, 2);
    const missing = reimage(['lab', 'boot', join(work, 'nope')]);
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /LAB_MACHINE_INVALID/);
    const halted = machine([0], { entries: { os: { program: '/nothing.js' } } });
    const h = reimage(['lab', 'boot', halted.dir]);
    assert.equal(h.status, 1);
    assert.match(h.stderr, /LAB_NO_BOOT_DEVICE: no bootable device/);
  });

  test('stopping the firmware pulls the power: the running program is killed', async () => {
    const m = machine(['hang']);
    const fw = reimageAsync(['lab', 'boot', m.dir, '--json']);
    let stdout = '';
    fw.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    const pidFile = join(m.disk, 'pid');
    while (!existsSync(pidFile)) await sleep(20);
    const pid = Number(readFileSync(pidFile, 'utf8'));
    const exited = new Promise<number | null>((resolve) => fw.on('close', (code) => resolve(code)));
    fw.kill('SIGTERM');
    assert.equal(await exited, 0);
    assert.equal(JSON.parse(stdout).end, 'power-removed');
    assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
    assert.match(m.console(), /os killed by SIGKILL: power-removed/);
  });

  test('createLabMachine refuses bad input and changes nothing', async () => {
    const dir = join(work, 'new-machine');
    await assert.rejects(createLabMachine({ dir, name: 'Bad Name', site: 'hq' }), (e) =>
      isReimageError(e, 'INVALID_ARGUMENT'),
    );
    await assert.rejects(
      createLabMachine({ dir, name: 'lt-1', site: 'hq', agentBundle: join(work, 'none') }),
      (e) => isReimageError(e, 'INVALID_ARGUMENT'),
    );
    assert.equal(existsSync(dir), false);
    mkdirSync(dir);
    writeFileSync(join(dir, 'keep'), 'x');
    await assert.rejects(createLabMachine({ dir, name: 'lt-1', site: 'hq' }), (e) =>
      isReimageError(e, 'LAB_MACHINE_INVALID'),
    );
    assert.deepEqual(readdirSync(dir), ['keep']);
  });
});
