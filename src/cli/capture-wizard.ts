import { confirm, input, password, select } from '@inquirer/prompts';
import { closeSync, constants, openSync, readSync, statSync } from 'node:fs';
import { machine } from 'node:os';
import { errorCodes, isReimageError, ReimageError } from '../errors.js';
import { listGeneralization } from '../image/generalize.js';
import { checkImageName } from '../image/library.js';
import type { Progress } from '../image/progress.js';
import {
  checkPlan,
  describeDestination,
  parseDestination,
  type CapturePlan,
} from './capture-plan.js';
import {
  runCapture,
  type CaptureExtras,
  type CaptureOutcome,
  type StageProgress,
} from './capture-run.js';
import { formatBytes, formatDuration } from './output.js';

/**
 * The capture wizard: a terminal dialogue of pages (source, generalization, image properties,
 * summary, progress, completion; a cancel confirmation and an error page) that ends in the same
 * runCapture() the flags and answer files use. docs/capture.md shows the pages.
 */
export interface WizardIo {
  input: NodeJS.ReadStream;
  output: NodeJS.WriteStream;
  env: Record<string, string | undefined>;
}

/** Answers so far: the wizard's pages start from them (flags, an answer file, or Back). */
export interface WizardAnswers {
  source?: string;
  system?: boolean;
  name?: string;
  destinationText?: string;
  user?: string;
  domain?: string;
  description?: string;
  properties?: Record<string, string>;
  generalize?: boolean;
  excludes?: string[];
}

const bold = (s: string) => `\x1b[1m${s}\x1b[22m`;

const DEBIAN_ARCH: Record<string, string> = {
  x86_64: 'amd64',
  aarch64: 'arm64',
  armv7l: 'armhf',
  i686: 'i386',
  ppc64le: 'ppc64el',
  s390x: 's390x',
  riscv64: 'riscv64',
};

/** /etc/os-release of the source root (read without following a symlink out of it). */
function osRelease(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of ['etc/os-release', 'usr/lib/os-release']) {
    let fd: number;
    try {
      fd = openSync(`${root.replace(/\/$/, '')}/${p}`, constants.O_RDONLY | constants.O_NOFOLLOW);
    } catch {
      continue;
    }
    try {
      const buf = Buffer.alloc(64 * 1024);
      const n = readSync(fd, buf, 0, buf.length, 0);
      for (const line of buf.subarray(0, n).toString('utf8').split('\n')) {
        const m = /^([A-Z_]+)=(?:"([^"]*)"|'([^']*)'|(\S*))\s*$/.exec(line.trim());
        if (m) out[m[1]!] = m[2] ?? m[3] ?? m[4] ?? '';
      }
      return out;
    } finally {
      closeSync(fd);
    }
  }
  return out;
}

class Wizard {
  private readonly ctx: {
    input: NodeJS.ReadStream;
    output: NodeJS.WriteStream;
    clearPromptOnDone: boolean;
  };
  private secret: string | undefined;

  constructor(
    private readonly io: WizardIo,
    private a: WizardAnswers,
    private readonly extras: CaptureExtras,
    secret: string | undefined,
  ) {
    this.ctx = { input: io.input, output: io.output, clearPromptOnDone: false };
    this.secret = secret;
  }

  private say(lines: string | string[]): void {
    this.io.output.write((Array.isArray(lines) ? lines.join('\n') : lines) + '\n');
  }

  private page(title: string): void {
    this.say(['', bold(`── ${title} ──`)]);
  }

  /** Source page: what to capture, the image name, where it goes and the account for it. */
  private async sourcePage(): Promise<void> {
    this.page('Source');
    const live = await select(
      {
        message: 'What do you want to capture?',
        choices: [
          {
            name: 'This system (/), as it runs',
            value: 'system',
            description:
              'leaves out /proc, /sys, /dev, /run, temporary files, package caches and the reimage client state',
          },
          { name: 'A folder or mounted drive', value: 'folder' },
        ],
        default: this.a.source && this.a.source !== '/' ? 'folder' : 'system',
      },
      this.ctx,
    );
    if (live === 'system') {
      this.a.source = '/';
      this.a.system = true;
    } else {
      this.a.source = await input(
        {
          message: 'Root folder to capture:',
          default: this.a.source && this.a.source !== '/' ? this.a.source : undefined,
          validate: (v) => {
            try {
              return statSync(v).isDirectory() || `${v} is not a folder`;
            } catch {
              return `${v} does not exist`;
            }
          },
        },
        this.ctx,
      );
      this.a.system = false;
    }
    this.a.name = await input(
      {
        message: 'Image name:',
        default: this.a.name,
        validate: (v) => {
          try {
            checkImageName(v);
            return true;
          } catch (e) {
            return (e as Error).message + ' (letters, digits, . _ -)';
          }
        },
      },
      this.ctx,
    );
    this.a.destinationText = await input(
      {
        message:
          'Store the image in (a folder, an SMB share //host/share/path, or a server https://…):',
        default: this.a.destinationText,
        validate: (v) => {
          try {
            parseDestination(v, { user: 'x' });
            return true;
          } catch (e) {
            return (e as Error).message;
          }
        },
      },
      this.ctx,
    );
    const dest = parseDestination(this.a.destinationText, { user: 'x' });
    if (dest.kind === 'share') {
      const who = await input(
        {
          message: 'Account for the share (user or DOMAIN\\user):',
          default: this.a.user
            ? `${this.a.domain ? `${this.a.domain}\\` : ''}${this.a.user}`
            : undefined,
          validate: (v) => v.trim() !== '' || 'the share needs an account',
        },
        this.ctx,
      );
      const bs = who.indexOf('\\');
      this.a.user = bs >= 0 ? who.slice(bs + 1) : who;
      this.a.domain = bs >= 0 ? who.slice(0, bs) : undefined;
      this.secret = await password(
        {
          message: `Password for ${who}${this.secret ? ' (Enter keeps the one given)' : ''}:`,
          mask: '*',
        },
        this.ctx,
      ).then((p) => (p === '' && this.secret ? this.secret : p));
    } else if (dest.kind === 'server') {
      // Empty: the token of REIMAGE_TOKEN or `reimage login`.
      this.secret =
        (await password(
          { message: 'API token for the server (Enter: REIMAGE_TOKEN or the login):', mask: '*' },
          this.ctx,
        )) || undefined;
    }
  }

  /** Generalization page: the list of what leaves the image, confirmed. */
  private async generalizePage(): Promise<void> {
    this.page('Generalization');
    const want = await confirm(
      {
        message:
          'Generalize the image (leave out machine id, SSH host keys, the reimage client identity, logs, histories, leases)?',
        default: this.a.generalize ?? false,
      },
      this.ctx,
    );
    if (!want) {
      this.a.generalize = false;
      return;
    }
    const items = listGeneralization(this.a.source!);
    this.say(
      items.length
        ? [
            `In the image (the source ${this.a.source} itself is not changed):`,
            ...items.map(
              (i) =>
                `  ${i.action === 'empty' ? 'emptied' : 'left out'}  ${i.path}  (${i.what}, ${formatBytes(i.bytes)})`,
            ),
          ]
        : ['Nothing to generalize was found in the source.'],
    );
    this.a.generalize = await confirm(
      { message: `Generalize these ${items.length} item(s)?`, default: true },
      this.ctx,
    );
  }

  /** Image properties page, prefilled from the source's os-release and this machine. */
  private async propertiesPage(): Promise<void> {
    this.page('Image properties');
    const rel = osRelease(this.a.source!);
    const props = { ...(this.a.properties ?? {}) };
    this.a.description = await input(
      {
        message: 'Description:',
        default: this.a.description ?? (rel.PRETTY_NAME ? `${rel.PRETTY_NAME} model` : undefined),
      },
      this.ctx,
    );
    props.os = await input({ message: 'Operating system:', default: props.os ?? rel.ID }, this.ctx);
    props.version = await input(
      { message: 'Version:', default: props.version ?? rel.VERSION_ID },
      this.ctx,
    );
    props.arch = await input(
      { message: 'Architecture:', default: props.arch ?? DEBIAN_ARCH[machine()] ?? machine() },
      this.ctx,
    );
    for (const k of ['os', 'version', 'arch']) if (props[k] === '') delete props[k];
    const free = Object.entries(props).filter(([k]) => !['os', 'version', 'arch'].includes(k));
    if (free.length) this.say(`Other properties: ${free.map(([k, v]) => `${k}=${v}`).join(', ')}`);
    for (;;) {
      const kv = await input(
        {
          message: 'Add a property (key=value; Enter when done):',
          validate: (v) => v === '' || v.indexOf('=') > 0 || 'write key=value',
        },
        this.ctx,
      );
      if (kv === '') break;
      props[kv.slice(0, kv.indexOf('='))] = kv.slice(kv.indexOf('=') + 1);
    }
    this.a.properties = props;
  }

  private plan(): CapturePlan {
    const p: CapturePlan = {
      source: this.a.source!,
      system: !!this.a.system,
      name: this.a.name!,
      destination: parseDestination(this.a.destinationText!, {
        user: this.a.user,
        domain: this.a.domain,
      }),
      properties: this.a.properties ?? {},
      generalize: !!this.a.generalize,
      excludes: this.a.excludes ?? [],
    };
    if (this.a.description) p.description = this.a.description;
    checkPlan(p);
    return p;
  }

  /** Summary page: Start, Back or Cancel. */
  private async summaryPage(plan: CapturePlan): Promise<'start' | 'back' | 'cancel'> {
    this.page('Summary');
    const props = Object.entries(plan.properties)
      .map(([k, v]) => `${k}=${v}`)
      .join(', ');
    this.say([
      `  source:       ${plan.source}${plan.system ? ' (live system: pseudo filesystems, caches and client state left out)' : ''}`,
      `  image name:   ${plan.name}`,
      `  destination:  ${describeDestination(plan.destination)}`,
      `  description:  ${plan.description ?? ''}`,
      `  properties:   ${props || '(none)'}`,
      `  generalize:   ${plan.generalize ? 'yes' : 'no'}`,
    ]);
    return select(
      {
        message: 'Start the capture?',
        choices: [
          { name: 'Start', value: 'start' as const },
          { name: 'Back', value: 'back' as const },
          { name: 'Cancel', value: 'cancel' as const },
        ],
      },
      this.ctx,
    );
  }

  /** Progress page, with the cancel confirmation on Ctrl-C; resolves with the outcome. */
  private async progressPage(plan: CapturePlan): Promise<CaptureOutcome> {
    this.page('Capturing');
    const out = this.io.output;
    const ac = new AbortController();
    let shown = 0;
    let last = 0;
    let asking: Promise<void> | undefined;
    let latest: Progress | undefined;
    let stage: StageProgress = { stage: 'checking' };
    const draw = (force = false) => {
      if (asking) return;
      const now = Date.now();
      if (!force && now - last < 200) return;
      last = now;
      const lines: string[] = [];
      if (stage.stage === 'checking') lines.push('  checking the destination…');
      else if (stage.stage === 'copying')
        lines.push(
          `  copying to the share: ${stage.filesDone}/${stage.filesTotal} files, ${formatBytes(stage.bytesDone ?? 0)} of ${formatBytes(stage.bytesTotal ?? 0)}`,
        );
      else if (stage.stage === 'uploading')
        lines.push(
          `  uploading to the server: ${stage.filesDone} of ${stage.filesTotal} missing chunks, ${formatBytes(stage.bytesDone ?? 0)} of ~${formatBytes(stage.bytesTotal ?? 0)}`,
        );
      else if (stage.stage === 'cleaning') lines.push('  removing what was copied…');
      else {
        const p = latest;
        lines.push(
          `  phase:      ${p?.phase ?? 'scan'}`,
          `  file:       ${(p?.file ?? '').slice(-70)}`,
          `  captured:   ${formatBytes(p?.bytesDone ?? 0)} of ${formatBytes(p?.bytesTotal ?? 0)} found so far (${p?.filesDone ?? 0} of ${p?.filesTotal ?? 0} files)`,
          `  elapsed:    ${formatDuration(p?.elapsedMs)}    remaining: ${formatDuration(p?.remainingMs)}`,
        );
      }
      lines.push('  (Ctrl-C to cancel)');
      out.write((shown ? `\x1b[${shown}A\x1b[J` : '') + lines.join('\n') + '\n');
      shown = lines.length;
    };
    const onInt = () => {
      if (asking || ac.signal.aborted) return;
      shown = 0;
      asking = confirm(
        { message: 'Cancel capture? nothing will be kept', default: false },
        this.ctx,
      )
        .catch(() => true) // Ctrl-C again: yes
        .then((yes) => {
          if (yes) {
            this.say('Cancelling…');
            ac.abort();
          }
          asking = undefined;
          draw(true);
        });
    };
    // A SIGTERM (shutdown, a service manager) does not ask: it cancels, leaving nothing.
    const onTerm = () => ac.abort();
    process.on('SIGINT', onInt);
    process.on('SIGTERM', onTerm);
    draw(true);
    try {
      return await runCapture(
        plan,
        this.secret,
        {
          signal: ac.signal,
          onProgress: (p) => {
            latest = p;
            draw(p.phase !== 'data');
          },
          onWarning: (w) => {
            if (!asking) {
              out.write(`  warning: ${w.message}\n`);
              shown = 0;
            }
          },
          onStage: (s) => {
            stage = s;
            draw(true);
          },
          beforeCommit: async () => {
            while (asking) await asking;
          },
        },
        this.extras,
      );
    } finally {
      while (asking) await asking;
      process.off('SIGINT', onInt);
      process.off('SIGTERM', onTerm);
    }
  }

  /** Error page: the message and its code; Back (to the source page) or Quit. */
  private async errorPage(e: ReimageError): Promise<'back' | 'quit'> {
    this.page('Error');
    this.say([`  ${e.code}: ${e.message}`, `  ${errorCodes[e.code].help}`]);
    return select(
      {
        message: 'What now?',
        choices: [
          { name: 'Back (change the settings)', value: 'back' as const },
          { name: 'Quit', value: 'quit' as const },
        ],
      },
      this.ctx,
    );
  }

  private completionPage(res: CaptureOutcome): void {
    this.page('Done');
    const r = res.record;
    this.say([
      `  image id:     ${r.id}`,
      `  name:         ${r.properties.name}`,
      `  size:         ${formatBytes(r.stats.bytes)} in ${r.stats.files} files; ${formatBytes(res.storedBytes)} new in the store${res.created ? '' : ' (identical tree was already there)'}`,
      `  stored in:    ${res.where}`,
      ...(res.copied
        ? [`  copied:       ${res.copied.files} files, ${formatBytes(res.copied.bytes)}`]
        : []),
      ...(res.uploaded
        ? [
            `  uploaded:     ${res.uploaded.chunks} chunks, ${formatBytes(res.uploaded.bytes)}${res.uploaded.resumed ? ' (resumed)' : ''}`,
          ]
        : []),
      ...(res.warnings.length ? [`  warnings:     ${res.warnings.length}`] : []),
    ]);
  }

  async run(): Promise<CaptureOutcome> {
    this.say(
      bold('reimage image capture: capture this computer (or a folder) into an image library'),
    );
    for (;;) {
      await this.sourcePage();
      if (this.a.source) await this.generalizePage();
      await this.propertiesPage();
      let plan: CapturePlan;
      try {
        plan = this.plan();
      } catch (e) {
        if (!isReimageError(e)) throw e;
        if ((await this.errorPage(e)) === 'quit') throw e;
        continue;
      }
      const choice = await this.summaryPage(plan);
      if (choice === 'back') continue;
      if (choice === 'cancel') {
        this.say('Cancelled; nothing was captured.');
        throw new ReimageError(
          'CANCELLED',
          'capture cancelled at the summary; nothing was captured',
          {
            details: { reported: true },
          },
        );
      }
      try {
        const res = await this.progressPage(plan);
        this.completionPage(res);
        return res;
      } catch (e) {
        if (isReimageError(e, 'CANCELLED')) {
          this.say('Capture cancelled; nothing was kept.');
          throw new ReimageError('CANCELLED', e.message, { cause: e, details: { reported: true } });
        }
        if (!isReimageError(e)) throw e;
        if ((await this.errorPage(e)) === 'quit') {
          throw new ReimageError(e.code, e.message, {
            cause: e,
            details: { ...e.details, reported: true },
          });
        }
      }
    }
  }
}

/** Runs the wizard on a terminal; the answers given (flags, answer file) are its defaults. */
export async function runWizard(
  io: WizardIo,
  answers: WizardAnswers,
  extras: CaptureExtras,
  secret: string | undefined,
): Promise<CaptureOutcome> {
  try {
    return await new Wizard(io, answers, extras, secret).run();
  } catch (e) {
    // Ctrl-C on a question (not on the progress page): the wizard ends, nothing was captured.
    if (e instanceof Error && e.name === 'ExitPromptError') {
      io.output.write('\nCancelled; nothing was captured.\n');
      throw new ReimageError('CANCELLED', 'capture wizard cancelled; nothing was captured', {
        details: { reported: true },
      });
    }
    throw e;
  }
}
