import { InvalidArgumentError, type Command } from 'commander';
import { ReimageError } from '../errors.js';
import { listGeneralization } from '../image/generalize.js';
import {
  checkPlan,
  parseDestination,
  readAnswerFile,
  readSecret,
  type CapturePlan,
} from './capture-plan.js';
import { captureCacheStore, runCapture, type CaptureExtras } from './capture-run.js';
import { connect } from './admin.js';
import { runWizard, type WizardAnswers } from './capture-wizard.js';
import {
  cancellable,
  collect,
  out,
  parseProperties,
  readKeyFile,
  summary,
  withCommon,
  type Common,
} from './common.js';
import { formatBytes, progressView } from './output.js';

type Env = Record<string, string | undefined>;

interface CaptureFlags extends Common {
  name?: string;
  description?: string;
  property?: string[];
  exclude?: string[];
  system?: boolean;
  oneFileSystem?: boolean;
  skipUnreadable?: boolean;
  parent?: string;
  /** commander's negation of --no-deltas */
  deltas?: boolean;
  signKey?: string;
  sourceMachine?: string;
  workers?: number;
  to?: string;
  user?: string;
  domain?: string;
  passwordFile?: string;
  answers?: string;
  wizard?: boolean;
  generalize?: boolean;
  yes?: boolean;
  readRate?: number;
  serverFingerprint?: string;
  requestTimeout?: number;
}

/** Flags over the answer file: what the user typed last wins. */
function answersFrom(source: string | undefined, o: CaptureFlags, env: Env): WizardAnswers {
  const file = o.answers ? readAnswerFile(o.answers) : {};
  const props = { ...(file.properties ?? {}), ...parseProperties(o.property) };
  const a: WizardAnswers = { ...file };
  if (source !== undefined) a.source = source;
  if (o.system) a.system = true;
  if (o.name !== undefined) a.name = o.name;
  if (o.description !== undefined) a.description = o.description;
  if (Object.keys(props).length) a.properties = props;
  if (o.generalize) a.generalize = true;
  if (o.exclude?.length) a.excludes = [...(file.excludes ?? []), ...o.exclude];
  const dest = o.to ?? o.store ?? file.destinationText ?? env.REIMAGE_STORE;
  if (dest !== undefined) a.destinationText = dest;
  if (o.user !== undefined) a.user = o.user;
  if (o.domain !== undefined) a.domain = o.domain;
  return a;
}

function planFrom(a: WizardAnswers): CapturePlan {
  if (!a.source)
    throw new ReimageError(
      'USAGE',
      'no source given: `reimage image capture SOURCE --name NAME --to DEST` (or run it on a terminal for the wizard)',
    );
  if (!a.name) throw new ReimageError('USAGE', 'no image name given: --name NAME');
  if (!a.destinationText)
    throw new ReimageError(
      'USAGE',
      'no destination given: --to FOLDER|//host/share/path|https://server (or --store PATH, REIMAGE_STORE)',
    );
  const p: CapturePlan = {
    source: a.source,
    system: !!a.system,
    name: a.name,
    destination: parseDestination(a.destinationText, { user: a.user, domain: a.domain }),
    properties: a.properties ?? {},
    generalize: !!a.generalize,
    excludes: a.excludes ?? [],
  };
  if (a.description !== undefined) p.description = a.description;
  checkPlan(p);
  return p;
}

/** `reimage image capture`: a tree into the library, from flags, an answer file or the wizard. */
export function registerCaptureCommand(image: Command, deps: { env: Env }): void {
  withCommon(
    image
      .command('capture')
      .description(
        'capture a tree (the live system or a folder) into an image library; on a terminal without a source, a wizard asks',
      )
      .argument('[source]', 'root of the tree to capture (/ with --system for the live system)')
      .option(
        '--name <name>',
        'image name (unique in the store; a new capture keeps the older one by id)',
      )
      .option(
        '--to <destination>',
        'where the image goes: a store folder, an SMB share //host[:port]/share/path, or a server https://… (default: --store)',
      )
      .option('--user <name>', 'the share account')
      .option('--domain <domain>', 'the share account’s domain')
      .option(
        '--password-file <file>',
        'the share password (first line; else REIMAGE_SHARE_PASSWORD): never a flag value',
      )
      .option(
        '--answers <file>',
        'answer file (YAML) with the wizard’s fields; see docs/capture.md',
      )
      .option('--wizard', 'ask with the wizard even when a source is given')
      .option(
        '--server-fingerprint <sha256>',
        'pin the server certificate (server destination; default: REIMAGE_SERVER_FINGERPRINT, the login)',
      )
      .option(
        '--request-timeout <seconds>',
        'server destination: give up on one upload request after this long, then retry (default 30)',
        (v: string) => {
          const n = Number(v);
          if (!Number.isFinite(n) || n <= 0)
            throw new InvalidArgumentError('expected seconds > 0.');
          return n;
        },
      )
      .option('--description <text>', 'description')
      .option(
        '--property <key=value>',
        'property (os, version, arch, or any key); repeatable',
        collect,
      )
      .option(
        '--exclude <pattern>',
        'glob to leave out (/-anchored at the root, else any depth); repeatable',
        collect,
      )
      .option(
        '--system',
        'capturing a live system: leave out /proc, /sys, /dev, /run, /tmp contents, package caches and the reimage client state; one filesystem',
      )
      .option(
        '--generalize',
        'leave machine identity out of the image (machine id, SSH host keys, client identity, logs…); the source is not changed',
      )
      .option('--yes', 'confirm the generalization list without asking')
      .option('--one-file-system', 'do not descend into other filesystems')
      .option('--skip-unreadable', 'leave out unreadable files with a warning instead of failing')
      .option(
        '--parent <image>',
        'earlier capture of this tree: files unchanged since (size, mtime, inode, ctime) are not read again',
      )
      .option(
        '--no-deltas',
        'with --parent: do not store delta chunks against the parent (docs/content-store.md)',
      )
      .option('--sign-key <file>', 'ed25519 private key (PEM) to sign the image with')
      .option(
        '--source-machine <name>',
        'source machine recorded in the properties (default: this host)',
      )
      .option('--read-rate <MiB/s>', 'read at most this fast, so the machine stays usable', (v) =>
        parseFloat(v),
      )
      .option('--workers <n>', 'worker threads (default: one per core)', (v) => parseInt(v, 10)),
  ).action(async (source: string | undefined, o: CaptureFlags) => {
    const env = deps.env;
    if (o.readRate !== undefined && !(o.readRate > 0))
      throw new ReimageError('INVALID_ARGUMENT', '--read-rate must be a positive number of MiB/s');
    const answers = answersFrom(source, o, env);
    const secret = readSecret(o.passwordFile, env);
    const extras: CaptureExtras = {
      // The server destination: the token from the wizard or --password-file, else REIMAGE_TOKEN
      // or the login; the capture goes through a local cache store that is kept.
      connectServer: (url, token) =>
        connect(
          { server: url, token, serverFingerprint: o.serverFingerprint },
          { env },
          o.requestTimeout ? { timeoutMs: o.requestTimeout * 1000 } : {},
        ),
      cacheStore: captureCacheStore(env),
      ...(o.readRate ? { readRate: o.readRate * 1024 * 1024 } : {}),
      ...(o.workers ? { workers: o.workers } : {}),
      ...(o.signKey ? { signKey: readKeyFile(o.signKey, 'private') } : {}),
      ...(o.sourceMachine ? { sourceMachine: o.sourceMachine } : {}),
      ...(o.parent ? { parent: o.parent } : {}),
      ...(o.deltas === false ? { deltas: false } : {}),
      ...(o.skipUnreadable ? { skipUnreadable: true } : {}),
      ...(o.oneFileSystem ? { oneFileSystem: true } : {}),
    };
    const terminal = !!process.stdin.isTTY && !!process.stdout.isTTY;
    if (o.wizard || (source === undefined && !o.answers && terminal)) {
      if (!terminal)
        throw new ReimageError(
          'USAGE',
          'the wizard needs a terminal; give the capture as flags or --answers FILE',
        );
      await runWizard(
        { input: process.stdin, output: process.stdout, env },
        answers,
        extras,
        secret,
      );
      return;
    }

    const plan = planFrom(answers);
    // A server's token never comes from the share password's variable.
    const planSecret =
      plan.destination.kind === 'server'
        ? o.passwordFile
          ? readSecret(o.passwordFile, {})
          : undefined
        : secret;
    if (plan.generalize) {
      const items = listGeneralization(plan.source);
      process.stderr.write(
        `generalization: ${items.length} item(s) left out of or emptied in the image (${plan.source} itself is not changed):\n` +
          items
            .map(
              (i) => `  ${i.action === 'empty' ? 'empty' : 'leave out'}  ${i.path}  (${i.what})\n`,
            )
            .join(''),
      );
      if (!o.yes)
        throw new ReimageError(
          'USAGE',
          'generalization needs confirmation: check the list above and add --yes',
        );
    }
    const view = progressView(o.progress ?? 'auto', !!o.json);
    const c = cancellable();
    try {
      const res = await runCapture(
        plan,
        planSecret,
        {
          signal: c.signal,
          onProgress: view.onProgress,
          onWarning: view.onWarning,
          onStage: (s) => {
            if (s.stage === 'copying' && s.filesDone === 0 && !o.json && o.progress !== 'none')
              process.stderr.write(
                `copying ${s.filesTotal} file(s) (${formatBytes(s.bytesTotal ?? 0)}) to the share…\n`,
              );
          },
        },
        extras,
      );
      view.stop();
      out(
        o,
        {
          image: res.record,
          created: res.created,
          reused: res.reused,
          warnings: res.warnings,
          destination: res.where,
          ...(res.copied ? { copied: res.copied } : {}),
          ...(res.uploaded ? { uploaded: res.uploaded } : {}),
          ...(res.deltas ? { deltas: res.deltas } : {}),
        },
        () => [
          ...summary(res.record, [plan.name]),
          `stored:       ${formatBytes(res.storedBytes)} new in the store${res.created ? '' : ' (identical tree was already there)'}`,
          `stored in:    ${res.where}`,
          ...(res.deltas
            ? [
                `deltas:       ${res.deltas.chunks} chunks as ${formatBytes(res.deltas.bytes)} of deltas against the parent (${(res.deltas.ms / 1000).toFixed(1)} s)`,
              ]
            : []),
          ...(res.copied
            ? [`copied:       ${res.copied.files} files, ${formatBytes(res.copied.bytes)}`]
            : []),
          ...(res.uploaded
            ? [`uploaded:     ${res.uploaded.chunks} chunks, ${formatBytes(res.uploaded.bytes)}`]
            : []),
          ...(res.warnings.length ? [`warnings:     ${res.warnings.length}`] : []),
          res.record.id,
        ],
      );
    } finally {
      view.stop();
      c.done();
    }
  });
}
