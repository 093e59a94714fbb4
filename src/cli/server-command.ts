/**
 * `reimage server`: runs the management server in the foreground until SIGINT or SIGTERM.
 * The request log is JSON lines on stdout (fastify's pino logger); what an administrator
 * needs at start-up (the URL, the certificate fingerprint to pin, where the first admin
 * password was written) goes to stderr.
 */
import { Option, type Command } from 'commander';
import net from 'node:net';
import { ReimageError } from '../errors.js';
import type { Environment } from './config.js';

export interface ServerCommandContext {
  /** The environment (REIMAGE_DATA). */
  env: Environment;
}

interface ServerOptions {
  data?: string;
  database?: string;
  listen: string;
  cert?: string;
  key?: string;
  insecureHttp?: boolean;
  logLevel: string;
}

const DEFAULT_DATA = '/var/lib/reimage';
const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

/** `HOST:PORT`, `[v6]:PORT`, or `:PORT` (all IPv4 interfaces). */
export function parseListen(text: string): { host: string; port: number } {
  const bad = (why: string) =>
    new ReimageError(
      'SERVER_CONFIG_INVALID',
      `--listen ${JSON.stringify(text)}: ${why}; expected HOST:PORT, e.g. 0.0.0.0:8443, 127.0.0.1:0 or [::]:8443`,
      { details: { listen: text } },
    );
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(text.trim());
  if (!m) throw bad('not an address and port');
  const host = m[1] ?? (m[2] === '' ? '0.0.0.0' : m[2]!);
  if (m[1] !== undefined && !net.isIPv6(host)) throw bad(`${host} is not an IPv6 address`);
  const port = Number(m[3]);
  if (port > 65535) throw bad('the port is above 65535');
  return { host, port };
}

export function registerServerCommand(program: Command, ctx: ServerCommandContext): void {
  program
    .command('server')
    .description(
      'run the management server (until Ctrl-C or SIGTERM); the request log goes to stdout',
    )
    .option(
      '--data <dir>',
      `data folder: catalog, secret key, TLS certificate, image library (default: $REIMAGE_DATA or ${DEFAULT_DATA})`,
    )
    .option('--database <url>', 'postgres://… for PostgreSQL (default: SQLite in the data folder)')
    .option('--listen <host:port>', 'address to listen on', '0.0.0.0:8443')
    .option(
      '--cert <file>',
      'TLS certificate (PEM; default: a self-signed one kept in the data folder)',
    )
    .option('--key <file>', 'private key (PEM) of --cert')
    .option('--insecure-http', 'plain HTTP, on a loopback address only (behind a TLS proxy)')
    .addOption(
      new Option('--log-level <level>', 'request log level').choices(LOG_LEVELS).default('info'),
    )
    .action(async (o: ServerOptions) => {
      const { host, port } = parseListen(o.listen);
      if ((o.cert === undefined) !== (o.key === undefined))
        throw new ReimageError(
          'SERVER_CONFIG_INVALID',
          '--cert and --key go together: give the certificate and its private key',
        );
      if (o.insecureHttp && o.cert !== undefined)
        throw new ReimageError(
          'SERVER_CONFIG_INVALID',
          '--insecure-http serves no certificate: drop --cert and --key',
        );
      const dataDir =
        o.data ??
        (ctx.env.REIMAGE_DATA !== undefined && ctx.env.REIMAGE_DATA !== ''
          ? ctx.env.REIMAGE_DATA
          : DEFAULT_DATA);

      // Listen for the stop signals before starting, so none is lost while the server opens.
      let stop!: (signal: string) => void;
      const stopped = new Promise<string>((resolve) => (stop = resolve));
      const onSignal = (signal: string) => stop(signal);
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      try {
        // Loaded here: the server's modules (fastify, database drivers) would slow every other command.
        const { startServer } = await import('../server/start.js');
        const running = await startServer({
          dataDir,
          database: o.database,
          host,
          port,
          certFile: o.cert,
          keyFile: o.key,
          insecureHttp: !!o.insecureHttp,
          logger: { level: o.logLevel },
        });
        const lines = [`reimage server: listening on ${running.url}`];
        if (running.fingerprint) {
          lines.push(`  certificate fingerprint: ${running.fingerprint}`);
          lines.push(
            `  log in with: reimage login --server ${running.url} --server-fingerprint ${running.fingerprint}`,
          );
        }
        if (running.initialAdminPasswordFile)
          lines.push(
            `  first start: the password of user "admin" was written to ${running.initialAdminPasswordFile}`,
          );
        process.stderr.write(lines.join('\n') + '\n');

        const signal = await stopped;
        process.stderr.write(`reimage server: ${signal}, stopping\n`);
        // A second signal while closing means: stop now.
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
        const force = () => process.exit(1);
        process.once('SIGINT', force);
        process.once('SIGTERM', force);
        await running.close();
        process.stderr.write('reimage server: stopped\n');
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });
}
