/**
 * The agent's entry point: what the agent bundle runs (`node agent.bundle ARGS`).
 * One program, three roles (old client, PE agent, new client): see docs/adr/0003-agent-and-lab.md.
 */

/** Set by the bundle's loader (`globalThis.__REIMAGE_AGENT_VERSION__`); "dev" when run from dist/. */
export function agentVersion(): string {
  const v = (globalThis as { __REIMAGE_AGENT_VERSION__?: unknown }).__REIMAGE_AGENT_VERSION__;
  return typeof v === 'string' ? v : 'dev';
}

/** Exit code that asks the lab firmware (or the linux adapter's wrapper) to boot again. */
export const EXIT_REBOOT = 3;

/** Runs the agent with its arguments; resolves to the process exit code. */
export async function agentMain(argv: string[]): Promise<number> {
  if (argv[0] === '--version' || argv[0] === 'version') {
    process.stdout.write(`${agentVersion()}\n`);
    return 0;
  }
  process.stderr.write(
    `reimage agent ${agentVersion()}: unknown command ${JSON.stringify(argv[0] ?? '')}\n`,
  );
  return 2;
}
