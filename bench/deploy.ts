// bench/deploy: the downtime of an in-place deployment — from the reboot into the PE (phase 2
// starts) to the new client up (phase 3 starts), content pre-staged — against applying the
// same image locally into an empty folder (`reimage image apply`, `zstd -d | tar -x`,
// `wimlib-imagex apply`), with and without reuse of the old OS's identical files. Every write
// lands on a freshly made ext4 on a loop device; page cache dropped before every timed run.
// Prints a table and writes bench/results/deploy-<date>.json; asserts nothing.
//   npm run build && sudo node dist/bench/deploy.js          (RUNS=3, see bench/README.md)
import { execFileSync, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { cpus, homedir, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { keptPaths, runDeployment, startDeployment } from '../src/agent/deploy.js';
import type { DeploymentOutcome } from '../src/agent/deploy.js';
import { Outbox } from '../src/agent/outbox.js';
import { BOOT_CONFIG, labPlatform } from '../src/agent/platform.js';
import { makeLabMachine, makePlan } from '../test/support/deploy.js';
import { captureUpgrade, copyOs, upgradeOs } from '../test/support/reuse.js';
import type { DeployFixture } from '../test/support/deploy.js';
import { defaults } from '../src/package/schema.js';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../..');
const RUNS = Number(process.env['RUNS'] ?? 3);
const WIM_RUNS = Number(process.env['WIM_RUNS'] ?? 1);
const CACHE =
  process.env['BENCH_CACHE'] ??
  join(process.env['XDG_CACHE_HOME'] ?? join(homedir(), '.cache'), 'reimage-bench');
const V2_INCLUDE = process.env['V2_INCLUDE'] ?? 'python3,perl';
const SUITE = process.env['SUITE'] ?? 'bookworm';
const FS_SIZE = process.env['BENCH_FS_SIZE'] ?? '4G';
const RESULTS = process.env['RESULTS_DIR'] ?? join(repo, 'bench/results');
const CORPUS = process.env['CORPUS'] ?? 'auto'; // auto | debootstrap | generated
const osTop = defaults.osPaths.map((p) => p.slice(1));

function sh(cmd: string, args: string[], opts: { cwd?: string } = {}): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 28, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.error}`);
  return r.stdout;
}
const log = (s: string) =>
  process.stderr.write(`[bench deploy ${new Date().toISOString().slice(11, 19)}] ${s}\n`);

if (process.getuid?.() !== 0) {
  console.error('bench/deploy: must run as root (loop mounts, mkfs, dropping caches)');
  process.exit(1);
}

let canDrop = true;
function dropCaches(): void {
  sh('sync', []);
  if (!canDrop) return;
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3\n');
  } catch {
    canDrop = false;
    log('cannot drop caches (/proc/sys/vm/drop_caches not writable): runs are warm');
  }
}

// ------------------------------------------------------------------ scratch filesystems
const work = mkdtempSync(join(CACHE, 'deploy.'));
const mnt = join(work, 'mnt');
const img = join(work, 'fs.img');
mkdirSync(mnt);
let mounted = false;
function freshFs(): string {
  if (mounted) sh('umount', [mnt]);
  mounted = false;
  rmSync(img, { force: true });
  sh('truncate', ['-s', FS_SIZE, img]);
  sh('mkfs.ext4', ['-q', '-F', img]);
  sh('mount', ['-o', 'loop', img, mnt]);
  mounted = true;
  return mnt;
}
function cleanup(): void {
  if (mounted) spawnSync('umount', [mnt]);
  mounted = false;
  rmSync(work, { recursive: true, force: true });
}
process.on('exit', cleanup);
for (const s of ['SIGINT', 'SIGTERM'] as const)
  process.on(s, () => {
    cleanup();
    process.exit(130);
  });

// ------------------------------------------------------------------ corpus
const v1Deb = join(CACHE, 'corpus', `${SUITE}-minbase`);
const v2Deb = join(CACHE, 'corpus', `${SUITE}-minbase+${V2_INCLUDE}`);
const useDeb =
  CORPUS === 'debootstrap' ||
  (CORPUS === 'auto' && existsSync(`${v1Deb}.done`) && existsSync(`${v2Deb}.done`));
if (CORPUS === 'debootstrap' && !useDeb)
  throw new Error('no debootstrap corpus: run bench/image once');
const SEED = 7;
const BUNDLE = '// reimage agent 2.0.0 (bench)\n';

/** A lab machine at DIR: generated users and data; the OS is v1 (debootstrap or generated). */
async function makeMachine(dir: string): Promise<void> {
  await makeLabMachine(dir, SEED);
  if (!useDeb) return;
  const disk = join(dir, 'disk');
  // The machine's identity and accounts stay the lab's (its users own the homes).
  const keep = join(dir, 'etc-kept');
  mkdirSync(keep);
  const kept = ['reimage', 'passwd', 'group', 'shadow', 'gshadow', 'hostname'];
  for (const k of kept)
    if (existsSync(join(disk, 'etc', k))) sh('cp', ['-a', join(disk, 'etc', k), join(keep, k)]);
  for (const top of osTop) {
    if (top === 'var') {
      // /var/lib/postgresql and the like are the machine's data: only Debian's /var is replaced.
      for (const sub of ['cache', 'log', 'lib/apt', 'lib/dpkg', 'lib/systemd', 'lib/pam'])
        rmSync(join(disk, 'var', sub), { recursive: true, force: true });
      sh('cp', ['-a', '--remove-destination', `${v1Deb}/var/.`, join(disk, 'var')]);
      continue;
    }
    rmSync(join(disk, top), { recursive: true, force: true });
    if (existsSync(join(v1Deb, top))) sh('cp', ['-a', join(v1Deb, top), join(disk, top)]);
  }
  for (const k of kept) {
    if (!existsSync(join(keep, k))) continue;
    rmSync(join(disk, 'etc', k), { recursive: true, force: true });
    sh('cp', ['-a', join(keep, k), join(disk, 'etc', k)]);
  }
  rmSync(keep, { recursive: true });
}

log(
  `corpus: ${useDeb ? `debootstrap ${SUITE} minbase → +${V2_INCLUDE}` : 'generated lab tree → upgraded copy'}`,
);
// The image v2 and the PE in a DP on the root filesystem (read, never written, when timed).
const dpBase = join(work, 'dp-base');
mkdirSync(dpBase);
const model = join(work, 'model');
await makeMachine(model);
const v2 = join(work, 'v2');
if (useDeb) {
  sh('cp', ['-a', v2Deb, v2]);
  mkdirSync(join(v2, 'usr/lib/reimage'), { recursive: true });
  writeFileSync(join(v2, 'usr/lib/reimage/agent.bundle'), BUNDLE);
} else {
  copyOs(join(model, 'disk'), v2);
  upgradeOs(v2, BUNDLE);
}
const f: DeployFixture = await captureUpgrade(dpBase, v2, '// pe (bench)\n');
const imageBytes = Number(sh('du', ['-sb', '--apparent-size', v2]).split('\t')[0] ?? 0);
const tarZst = join(work, 'v2.tar.zst');
execFileSync('sh', ['-c', `tar -C "${v2}" -cf - . | zstd -q -3 -T0 -o "${tarZst}"`]);
const hasWim = spawnSync('wimlib-imagex', ['--version']).status === 0 && WIM_RUNS > 0;
const wim = join(work, 'v2.wim');
if (hasWim) sh('wimlib-imagex', ['capture', v2, wim, '--unix-data', '--compress=LZX']);
const entries = Number(sh('sh', ['-c', `find "${v2}" | wc -l`]).trim());
log(`image v2: ${imageBytes} bytes, ${entries} entries`);

// ------------------------------------------------------------------ measurements
class Reboot extends Error {}
async function boot(
  dir: string,
  role?: 'pe' | 'client',
): Promise<{ outcome: DeploymentOutcome | 'rebooted'; role: string }> {
  const platform = labPlatform(dir, {
    exit: () => {
      throw new Reboot();
    },
  });
  const cfg = platform.bootConfig();
  const entry = cfg.next ?? cfg.default;
  if (cfg.next) writeFileSync(join(dir, BOOT_CONFIG), JSON.stringify({ ...cfg, next: undefined }));
  const r = role ?? (entry === 'pe' ? 'pe' : 'client');
  const outbox = new Outbox(keptPaths(platform.root).outbox);
  try {
    return { outcome: await runDeployment({ platform, outbox, role: r }), role: r };
  } catch (e) {
    if (e instanceof Reboot) return { outcome: 'rebooted', role: r };
    throw e;
  } finally {
    outbox.close();
  }
}

interface DeploySample {
  downtimeS: number;
  /** Phase 2's steps from the journal (begin → done), seconds. */
  stepsS: Record<string, number>;
  phase3S: number;
  reusedFiles: number;
  reusedBytes: number;
  outcome: string;
}

async function deployRun(reuse: boolean, k: number): Promise<DeploySample> {
  const fs = freshFs();
  const dir = join(fs, 'machine');
  // The machine is made from scratch on the fresh ext4 (as a real disk holding v1).
  await makeMachine(dir);
  const root = join(dir, 'disk');
  startDeployment(
    root,
    makePlan(f, `bench-${k}-${reuse ? 'reuse' : 'plain'}`, {
      image: { id: f.imageId, os: 'debian', arch: 'x86_64', bytes: imageBytes },
      prestage: true,
      reuseOldFiles: reuse,
    }),
  );
  const p1 = await boot(dir); // phase 1 (untimed): state capture, pre-staging, PE
  if (p1.outcome !== 'rebooted') throw new Error(`phase 1 ended ${p1.outcome}`);
  dropCaches();
  const t0 = performance.now();
  const p2 = await boot(dir); // the PE: phase 2
  sh('sync', []); // a reboot flushes what phase 2 wrote
  const t1 = performance.now();
  if (p2.role !== 'pe' || p2.outcome !== 'rebooted') throw new Error(`phase 2 ended ${p2.outcome}`);
  const p3 = await boot(dir); // the new client: phase 3 (restore; not downtime by this measure)
  const t2 = performance.now();
  const ob = new Outbox(keptPaths(root).outbox);
  const applied = ob.all().find((m) => m.id === 4003)?.properties ?? {};
  ob.close();
  const stepsS: Record<string, number> = {};
  const hist = keptPaths(root).history;
  for (const d of readdirSync(hist)) {
    const begun = new Map<string, number>();
    for (const line of readFileSync(join(hist, d, 'journal.jsonl'), 'utf8').split('\n')) {
      if (!line) continue;
      const r = JSON.parse(line) as { t: string; step: string; event: string };
      if (r.event === 'begin') begun.set(r.step, Date.parse(r.t));
      else if (r.event === 'done' && begun.has(r.step))
        stepsS[r.step] = (Date.parse(r.t) - begun.get(r.step)!) / 1000;
    }
  }
  return {
    downtimeS: (t1 - t0) / 1000,
    stepsS,
    phase3S: (t2 - t1) / 1000,
    reusedFiles: Number(applied['reusedFiles'] ?? 0),
    reusedBytes: Number(applied['reusedBytes'] ?? 0),
    outcome: String(p3.outcome),
  };
}

function timed(what: string, cmd: string): number {
  dropCaches();
  const t0 = performance.now();
  execFileSync('sh', ['-c', `${cmd} && sync`], { stdio: ['ignore', 'ignore', 'pipe'] });
  const t = (performance.now() - t0) / 1000;
  log(`${what}: ${t.toFixed(2)} s`);
  return t;
}

const reimage = `node ${join(repo, 'bin/reimage.js')}`;
const samples = {
  deployReuse: [] as DeploySample[],
  deployPlain: [] as DeploySample[],
  apply: [] as number[],
  tar: [] as number[],
  wim: [] as number[],
};
const load = { before: loadavg() };
for (let k = 0; k < RUNS; k++) {
  samples.deployReuse.push(await deployRun(true, k));
  log(`deploy, reuse: ${samples.deployReuse.at(-1)!.downtimeS.toFixed(2)} s downtime`);
  freshFs();
  samples.apply.push(
    timed(
      'reimage image apply',
      `${reimage} image apply ${f.imageId} "${mnt}/target" --store "${f.dp}" >/dev/null`,
    ),
  );
  samples.deployPlain.push(await deployRun(false, k));
  log(`deploy, no reuse: ${samples.deployPlain.at(-1)!.downtimeS.toFixed(2)} s downtime`);
  freshFs();
  mkdirSync(join(mnt, 'target'));
  samples.tar.push(
    timed('zstd -d | tar -x', `zstd -d -c "${tarZst}" | tar -C "${mnt}/target" -xf -`),
  );
  if (hasWim && k < WIM_RUNS) {
    freshFs();
    samples.wim.push(
      timed(
        'wimlib-imagex apply',
        `wimlib-imagex apply "${wim}" 1 "${mnt}/target" --unix-data >/dev/null`,
      ),
    );
  }
}
const loadAfter = loadavg();

// ------------------------------------------------------------------ report
const median = (xs: number[]) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
const dReuse = median(samples.deployReuse.map((s) => s.downtimeS));
const dPlain = median(samples.deployPlain.map((s) => s.downtimeS));
const apply = median(samples.apply);
const tar = median(samples.tar);
const wimT = median(samples.wim);
const reused = samples.deployReuse[0]!;
const fmt = (x: number) => (Number.isFinite(x) ? `${x.toFixed(2)} s` : '—');
const ratio = (a: number, b: number) =>
  Number.isFinite(a) && Number.isFinite(b) ? `${(a / b).toFixed(2)}×` : '—';
const rows: Array<[string, string, string, string, string]> = [
  [
    'downtime, reuse (phase 2 + sync)',
    fmt(dReuse),
    ratio(dReuse, apply),
    ratio(dReuse, tar),
    '≤ 1.2× apply',
  ],
  ['downtime, no reuse', fmt(dPlain), ratio(dPlain, apply), ratio(dPlain, tar), '≤ 1.2× apply'],
  ['reimage image apply (empty folder)', fmt(apply), '1.00×', ratio(apply, tar), ''],
  ['zstd -d \\| tar -x', fmt(tar), ratio(tar, apply), '1.00×', ''],
  ['wimlib-imagex apply (LZX)', fmt(wimT), ratio(wimT, apply), ratio(wimT, tar), ''],
];
const out: string[] = [];
out.push(
  `bench/deploy — ${new Date().toISOString()} — ${cpus().length} cores, ${cpus()[0]?.model ?? ''}, node ${process.version}`,
);
out.push(
  `load ${load.before.map((x) => x.toFixed(2)).join(' ')} → ${loadAfter.map((x) => x.toFixed(2)).join(' ')}; runs ${RUNS} (medians); page cache ${canDrop ? 'dropped before every timed run' : 'NOT dropped (warm)'}`,
);
out.push(
  `corpus: ${useDeb ? `v1 = debootstrap ${SUITE} minbase, v2 = + ${V2_INCLUDE}` : 'generated lab tree, v2 = its upgraded copy'}; image v2 ${(imageBytes / 1e6).toFixed(1)} MB, ${entries} entries; reused ${reused.reusedFiles} files, ${(reused.reusedBytes / 1e6).toFixed(1)} MB`,
);
out.push('');
out.push('| operation | time | ÷ apply | ÷ tar | target |');
out.push('| --- | --- | --- | --- | --- |');
for (const r of rows) out.push(`| ${r.join(' | ')} |`);
out.push('');
out.push(
  `phase 3 (restore, not downtime here): median ${fmt(median(samples.deployReuse.map((s) => s.phase3S)))} with reuse; outcomes: ${[...samples.deployReuse, ...samples.deployPlain].map((s) => s.outcome).join(' ')}`,
);
const stepMedian = (xs: DeploySample[], step: string) =>
  median(xs.map((s) => s.stepsS[step] ?? NaN));
for (const [name, xs] of [
  ['reuse', samples.deployReuse],
  ['no reuse', samples.deployPlain],
] as const)
  out.push(
    `phase 2 steps, ${name} (medians): ${['content', 'apply', 'swap-aside', 'swap-in', 'boot-os']
      .map((st) => `${st} ${fmt(stepMedian(xs, st))}`)
      .join(', ')}`,
  );
console.log(out.join('\n'));
mkdirSync(RESULTS, { recursive: true });
const file = join(
  RESULTS,
  `deploy-${new Date()
    .toISOString()
    .slice(0, 19)
    .replace(/[-:]/g, '')
    .replace(/^(\d{4})(\d{2})(\d{2})/, '$1-$2-$3')}.json`,
);
writeFileSync(
  file,
  `${JSON.stringify(
    {
      date: new Date().toISOString(),
      machine: {
        cores: cpus().length,
        cpu: cpus()[0]?.model,
        node: process.version,
        load: { before: load.before, after: loadAfter },
      },
      cachesDropped: canDrop,
      runs: RUNS,
      corpus: useDeb
        ? { kind: 'debootstrap', suite: SUITE, v2Include: V2_INCLUDE }
        : { kind: 'generated', seed: SEED },
      image: { id: f.imageId, bytes: imageBytes, entries },
      medians: {
        downtimeReuseS: dReuse,
        downtimeNoReuseS: dPlain,
        applyS: apply,
        tarS: tar,
        wimS: Number.isFinite(wimT) ? wimT : null,
      },
      ratios: { reuseVsApply: dReuse / apply, noReuseVsApply: dPlain / apply, target: 1.2 },
      samples,
      table: out,
    },
    null,
    2,
  )}\n`,
);
log(`written ${file}`);
