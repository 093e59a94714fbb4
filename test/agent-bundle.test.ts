import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildAgentBundle, collectAgentFiles, type BundleResult } from '../src/lab/bundle.js';
import { createLabMachine } from '../src/lab/machine.js';
import { runFirmware } from '../src/lab/firmware.js';
import { reimage } from './cli.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const VERSION = '9.9.9-test';

/** Runs a bundle as a machine would: plain node, cwd elsewhere, no NODE_PATH, a misleading REIMAGE_NATIVE. */
function runBundle(file: string, args: string[], env: Record<string, string> = {}) {
  const clean: Record<string, string | undefined> = { ...process.env };
  delete clean.NODE_PATH;
  delete clean.NODE_OPTIONS;
  delete clean.REIMAGE_AGENT_RUN_DIR;
  const r = spawnSync(process.execPath, [file, ...args], {
    cwd: tmpdir(),
    encoding: 'utf8',
    env: { ...clean, REIMAGE_NATIVE: '/nonexistent/reimage_native.node', ...env },
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('agent bundle', () => {
  let work: string;
  let built: BundleResult;
  let bundle: string;

  before(() => {
    work = mkdtempSync(join(tmpdir(), 'reimage-bundle-'));
    built = buildAgentBundle({ root: ROOT, version: VERSION, out: join(work, 'build.bundle') });
    bundle = join(work, 'disk', 'usr', 'lib', 'reimage', 'agent.bundle');
    mkdirSync(dirname(bundle), { recursive: true });
    copyFileSync(built.out, bundle);
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  test('holds the agent modules, its worker scripts, its packages and both native addons', () => {
    const names = collectAgentFiles(ROOT).files.map((f) => f.name);
    for (const n of [
      'dist/src/agent/main.js',
      'dist/src/image/apply-worker.js',
      'dist/src/image/capture-worker.js',
      'build/Release/reimage_native.node',
      'node_modules/zstd-napi/build/Release/binding.node',
      'node_modules/zstd-napi/package.json',
    ])
      assert.ok(names.includes(n), `${n} is in the bundle`);
    // Build-time dependencies of zstd-napi stay out.
    assert.ok(!names.some((n) => n.startsWith('node_modules/prebuild-install/')));
    assert.ok(!names.some((n) => n.startsWith('node_modules/node-addon-api/')));
    assert.ok(built.packages.some((p) => p.startsWith('zstd-napi@')));
  });

  test('building twice gives the same bytes', () => {
    const again = buildAgentBundle({
      root: ROOT,
      version: VERSION,
      out: join(work, 'again.bundle'),
    });
    assert.equal(again.sha256, built.sha256);
    assert.deepEqual(readFileSync(again.out), readFileSync(built.out));
  });

  test('runs alone, outside the checkout: --version, then a capture and apply with its addons and workers', () => {
    const v = runBundle(bundle, ['--version']);
    assert.equal(v.status, 0, v.stderr);
    assert.equal(v.stdout, `${VERSION}\n`);
    const runDir = join(dirname(bundle), 'run');
    const extracted = readdirSync(runDir);
    assert.deepEqual(extracted, [`agent-${VERSION}-${built.sha256.slice(0, 16)}`]);
    const main = join(runDir, extracted[0]!, 'dist/src/agent/main.js');
    const ino = statSync(main).ino;

    const s = runBundle(bundle, ['selftest']);
    assert.equal(s.status, 0, s.stderr);
    assert.match(s.stdout, new RegExp(`^selftest ok: agent ${VERSION.replace(/\./g, '\\.')} `));
    // Extracted once: the second start used the same tree.
    assert.equal(statSync(main).ino, ino);
    assert.deepEqual(readdirSync(runDir), extracted);
  });

  test('a tampered bundle is refused and extracts nothing', () => {
    const dir = join(work, 'tampered');
    mkdirSync(dir);
    const file = join(dir, 'agent.bundle');
    const bytes = readFileSync(built.out);
    // Flip one bit in the middle of the archive, on a byte that neither is nor becomes an escape.
    let i = Math.floor(bytes.length / 2);
    while ([0x2a, 0x2b, 0x01, 0x00].includes(bytes[i]!) || bytes[i - 1] === 0x2a) i++;
    bytes[i] = bytes[i]! ^ 0x01;
    writeFileSync(file, bytes);
    const r = runBundle(file, ['--version']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /SHA-256 .* the bundle is damaged or was altered; refusing to run/);
    assert.equal(r.stdout, '');
    assert.equal(existsSync(join(dir, 'run')) && readdirSync(join(dir, 'run')).length > 0, false);
  });

  test('a truncated bundle does not run', () => {
    const dir = join(work, 'truncated');
    mkdirSync(dir);
    const file = join(dir, 'agent.bundle');
    writeFileSync(file, readFileSync(built.out).subarray(0, Math.floor(built.bytes * 0.7)));
    const r = runBundle(file, ['--version']);
    assert.notEqual(r.status, 0);
    assert.equal(r.stdout, '');
    assert.equal(existsSync(join(dir, 'run')), false);
  });

  test('a half extraction left by a killed start is removed, never used', () => {
    const dir = join(work, 'killed');
    const run = join(dir, 'run');
    const name = `agent-${VERSION}-${built.sha256.slice(0, 16)}`;
    // A process that has ended: its pid names the leftover folder.
    const gone = spawnSync(process.execPath, ['-e', '0']).pid;
    const leftover = join(run, `.${name}.tmp-${gone}-0badf00d`);
    mkdirSync(join(leftover, 'dist/src/agent'), { recursive: true });
    writeFileSync(join(leftover, 'dist/src/agent/main.js'), 'throw new Error("half")');
    copyFileSync(built.out, join(dir, 'agent.bundle'));
    const r = runBundle(join(dir, 'agent.bundle'), ['--version']);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(readdirSync(run), [name]);
  });

  test('two first starts at once both run, and leave one extracted tree', async () => {
    const dir = join(work, 'race');
    mkdirSync(dir);
    copyFileSync(built.out, join(dir, 'agent.bundle'));
    const start = () =>
      new Promise<{ code: number | null; out: string }>((resolve) => {
        const env: Record<string, string | undefined> = { ...process.env };
        delete env.REIMAGE_AGENT_RUN_DIR;
        const c = spawn(process.execPath, [join(dir, 'agent.bundle'), '--version'], {
          cwd: tmpdir(),
          env,
        });
        let out = '';
        c.stdout.on('data', (d: Buffer) => (out += d.toString()));
        c.on('close', (code) => resolve({ code, out }));
      });
    const results = await Promise.all([start(), start()]);
    assert.deepEqual(results, [
      { code: 0, out: `${VERSION}\n` },
      { code: 0, out: `${VERSION}\n` },
    ]);
    assert.deepEqual(readdirSync(join(dir, 'run')), [
      `agent-${VERSION}-${built.sha256.slice(0, 16)}`,
    ]);
  });

  test('REIMAGE_AGENT_RUN_DIR chooses where it extracts', () => {
    const runDir = join(work, 'elsewhere');
    const r = runBundle(bundle, ['--version'], { REIMAGE_AGENT_RUN_DIR: runDir });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(readdirSync(runDir), [`agent-${VERSION}-${built.sha256.slice(0, 16)}`]);
  });

  test('a lab machine boots the bundle installed on its disk', async () => {
    const m = await createLabMachine({
      dir: join(work, 'machine'),
      name: 'lt-bundle-1',
      site: 'hq',
      agentBundle: built.out,
      tree: { scale: 'small', users: 1 },
      osArgs: ['selftest'],
    });
    assert.deepEqual(JSON.parse(readFileSync(join(m.dir, 'machine.json'), 'utf8')), m.identity);
    const r = await runFirmware({ machine: m.dir, maxBoots: 3 });
    assert.equal(r.end, 'power-off');
    assert.deepEqual(
      r.boots.map((b) => [b.entry, b.outcome]),
      [['os', 'power-off']],
    );
    const log = readFileSync(join(m.dir, 'console.log'), 'utf8');
    assert.match(log, /booting os: \/usr\/lib\/reimage\/agent\.bundle selftest --machine /);
    assert.match(
      log,
      new RegExp(`os\\[\\d+\\] out: selftest ok: agent ${VERSION.replace(/\./g, '\\.')}`),
    );
    // Extracted on the machine's own disk, next to the bundle.
    assert.equal(readdirSync(join(m.disk, 'usr/lib/reimage/run')).length, 1);
  });

  test('reimage agent bundle: bad version refused, writes nothing', () => {
    const out = join(work, 'bad.bundle');
    const r = reimage(['agent', 'bundle', '--version', '../1', '--out', out]);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /INVALID_ARGUMENT: agent version "..\/1" is not valid/);
    assert.equal(existsSync(out), false);
    const ok = reimage(['agent', 'bundle', '--version', '2.0.0', '--out', out, '--json']);
    assert.equal(ok.status, 0, ok.stderr);
    assert.equal(ok.json.version, '2.0.0');
    assert.equal(runBundle(out, ['--version']).stdout, '2.0.0\n');
  });
});
