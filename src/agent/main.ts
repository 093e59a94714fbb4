/**
 * The agent's entry point: what the agent bundle runs (`node agent.bundle ARGS`).
 * One program, three roles (old client, PE agent, new client): see docs/adr/0003-agent-and-lab.md.
 */
import { parseArgs } from 'node:util';
import { isReimageError } from '../errors.js';

/** Set by the bundle's loader (`globalThis.__REIMAGE_AGENT_VERSION__`); "dev" when run from dist/. */
export function agentVersion(): string {
  const v = (globalThis as { __REIMAGE_AGENT_VERSION__?: unknown }).__REIMAGE_AGENT_VERSION__;
  return typeof v === 'string' ? v : 'dev';
}

/** Exit code that asks the lab firmware (or the linux adapter's wrapper) to boot again. */
export const EXIT_REBOOT = 3;

const USAGE = `usage: agent run --role client|pe --machine LAB-MACHINE-DIR [--once]
       agent --version`;

/** Runs the agent with its arguments; resolves to the process exit code. */
export async function agentMain(argv: string[]): Promise<number> {
  if (argv[0] === '--version' || argv[0] === 'version') {
    process.stdout.write(`${agentVersion()}\n`);
    return 0;
  }
  if (argv[0] === 'run') return run(argv.slice(1));
  if (argv[0] === 'selftest') return selftest();
  process.stderr.write(
    `reimage agent ${agentVersion()}: unknown command ${JSON.stringify(argv[0] ?? '')}\n${USAGE}\n`,
  );
  return 2;
}

/**
 * `run`: what a boot of the machine does (docs/agent.md) — go on with the deployment in
 * progress (if any), then, as the client, poll the policy and act on it until SIGTERM (or
 * once, with `--once`). Exits 0 when done (the lab firmware then powers the machine off),
 * EXIT_REBOOT to boot again.
 */
async function run(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        role: { type: 'string' },
        machine: { type: 'string' },
        once: { type: 'boolean', default: false },
      },
      strict: true,
    }));
  } catch (e) {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n${USAGE}\n`);
    return 2;
  }
  const role = values.role;
  if ((role !== 'client' && role !== 'pe') || !values.machine) {
    process.stderr.write(`${USAGE}\n`);
    return 2;
  }
  // Loaded here, so that `--version` needs none of the engine's modules.
  const { runAgent } = await import('./daemon.js');
  // The user is asked on a loopback web page and by `reimage agent prompt` (docs/notification.md).
  const { askUser } = await import('./notify.js');
  const { labPlatform } = await import('./platform.js');
  const platform = labPlatform(values.machine);
  const log = (line: string) =>
    process.stderr.write(`${new Date().toISOString()} agent ${agentVersion()} ${role}: ${line}\n`);
  const stop = new AbortController();
  const onTerm = () => {
    log('SIGTERM: stopping');
    stop.abort(new Error('SIGTERM'));
  };
  process.once('SIGTERM', onTerm);
  try {
    const result = await runAgent({
      platform,
      role,
      once: values.once,
      ask: askUser,
      signal: stop.signal,
      log,
    });
    log(`done (${result})`);
    return 0;
  } catch (e) {
    if (stop.signal.aborted) return 0;
    log(`${isReimageError(e) ? e.code : 'INTERNAL'}: ${e instanceof Error ? e.stack : String(e)}`);
    return 1;
  } finally {
    process.removeListener('SIGTERM', onTerm);
  }
}

/**
 * Hidden `selftest`: captures a tiny tree into a throwaway content store and applies it again
 * with the image engine, so that a bundle proves its native addons (reimage_native, zstd) and
 * worker threads load from where it was extracted. Prints one line; exit code 0 when the
 * applied tree equals the source. Loaded lazily so that other commands do not pay for it.
 */
async function selftest(): Promise<number> {
  const { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { ContentStore } = await import('../content/store.js');
  const { captureImage } = await import('../image/capture.js');
  const { applyImage } = await import('../image/apply.js');
  const work = mkdtempSync(join(tmpdir(), 'reimage-agent-selftest-'));
  try {
    const source = join(work, 'source');
    mkdirSync(join(source, 'etc'), { recursive: true });
    const files: Record<string, string> = {
      'etc/hostname': 'selftest\n',
      'etc/big.txt': 'reimage agent selftest\n'.repeat(40_000),
    };
    for (const [rel, text] of Object.entries(files)) writeFileSync(join(source, rel), text);
    const store = ContentStore.open(join(work, 'store'), { create: true });
    const captured = await captureImage({ source, store, name: 'selftest', workers: 2 });
    const target = join(work, 'target');
    const applied = await applyImage({
      store,
      image: captured.record.id,
      target,
      owners: false,
      workers: 2,
    });
    for (const [rel, text] of Object.entries(files)) {
      if (readFileSync(join(target, rel), 'utf8') !== text)
        throw new Error(`selftest: ${rel} differs after capture and apply`);
    }
    process.stdout.write(
      `selftest ok: agent ${agentVersion()} captured and applied ${applied.entries} entries ` +
        `(${applied.bytes} bytes) with native addons and worker threads\n`,
    );
    return 0;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
