/**
 * The admin commands: `reimage login/logout` and the nouns of the management server's API
 * (package, dp, machine, collection, advertisement, status, user, token, audit), plus the
 * server side of `reimage image`. Each command is a thin client of one or two API calls:
 * the server validates, and its errors (ReimageError with the server's code) propagate to
 * main(), which prints them and exits with the code's status. Tokens and passwords are never
 * printed; a newly made token is shown once, because showing it is what creating it is for.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline/promises';
import { parse as parseYaml, stringify as toYaml } from 'yaml';
import type {
  Advertisement,
  ApiToken,
  AuditEntry,
  Collection,
  DistributionPoint,
  EnrollmentToken,
  ImageRecord,
  Machine,
  PackageRecord,
  StoredStatusMessage,
  User,
} from '../catalog/catalog.js';
import { ApiClient, parseFingerprint } from '../client/http.js';
import { ReimageError, isReimageError } from '../errors.js';
import {
  defaultConfigFile,
  resolveConnection,
  saveConnection,
  type Environment,
} from './config.js';
import { formatBytes } from './output.js';
import { registerServerlessCommands } from './serverless.js';

/** What the admin commands get from the entry point. */
export interface AdminContext {
  /** The environment (REIMAGE_SERVER, REIMAGE_TOKEN, REIMAGE_SERVER_FINGERPRINT, XDG_CONFIG_HOME). */
  env: Environment;
  /** The config file (default `${XDG_CONFIG_HOME:-~/.config}/reimage/config.json`). */
  configFile?: string;
  /** The `image` command, which gets `register` and `rescan`. */
  image?: Command;
}

/** The connection flags every server command takes. */
export interface ConnectionOptions {
  server?: string;
  token?: string;
  serverFingerprint?: string;
  json?: boolean;
}

type Items<T> = { items: T[] };
type Status = StoredStatusMessage & { text: string };
type Effective = Record<string, { value: unknown; source: string }>;

const USER_AGENT = 'reimage-cli';

// ------------------------------------------------------------------ connection

/** Adds `--server`, `--token` and `--server-fingerprint` to a command. */
export function withConnection(cmd: Command): Command {
  return cmd
    .option('--server <url>', 'management server (default: $REIMAGE_SERVER, then `reimage login`)')
    .option('--token <token>', 'API token (default: $REIMAGE_TOKEN, then `reimage login`)')
    .option(
      '--server-fingerprint <fp>',
      "pin the server's TLS certificate (default: $REIMAGE_SERVER_FINGERPRINT, then `reimage login`)",
    );
}

function configFileOf(ctx: AdminContext): string {
  return ctx.configFile ?? defaultConfigFile(ctx.env);
}

/** A client of the server given by flags, environment or config file (a USAGE error when none is). */
export async function connect(
  o: ConnectionOptions,
  ctx: AdminContext,
  extra: { timeoutMs?: number } = {},
): Promise<ApiClient> {
  const c = await resolveConnection({
    flags: { server: o.server, token: o.token, fingerprint: o.serverFingerprint },
    env: ctx.env,
    configFile: configFileOf(ctx),
  });
  if (c === undefined)
    throw new ReimageError(
      'USAGE',
      'no management server given: pass --server URL, set REIMAGE_SERVER, or log in with `reimage login --server URL`',
    );
  return new ApiClient({
    server: c.server,
    token: c.token,
    fingerprint: c.fingerprint,
    userAgent: USER_AGENT,
    ...extra,
  });
}

/** Runs `fn` with a client of the configured server, and closes its connections after. */
async function withClient<T>(
  o: ConnectionOptions,
  ctx: AdminContext,
  fn: (api: ApiClient) => Promise<T>,
): Promise<T> {
  const api = await connect(o, ctx);
  try {
    return await fn(api);
  } finally {
    api.close();
  }
}

/**
 * The server the `image list/show/delete` commands talk to, or undefined when they work on a
 * local store. `--store` means the local store and `--server` the server (both is an error);
 * otherwise REIMAGE_STORE means the local store, and a server from REIMAGE_SERVER or the config
 * file means the server. The caller closes the client.
 */
export async function remoteFor(
  o: ConnectionOptions & { store?: string },
  ctx: AdminContext,
): Promise<ApiClient | undefined> {
  if (o.store !== undefined && o.server !== undefined)
    throw new ReimageError(
      'USAGE',
      '--store (a local content store) and --server (the management server) exclude each other',
    );
  if (o.store !== undefined) return undefined;
  if (o.server === undefined && nonEmpty(ctx.env.REIMAGE_STORE)) return undefined;
  const c = await resolveConnection({
    flags: { server: o.server, token: o.token, fingerprint: o.serverFingerprint },
    env: ctx.env,
    configFile: configFileOf(ctx),
  });
  if (c === undefined) return undefined;
  return new ApiClient({
    server: c.server,
    token: c.token,
    fingerprint: c.fingerprint,
    userAgent: USER_AGENT,
  });
}

// ------------------------------------------------------------------ output

function print(o: { json?: boolean }, doc: unknown, text: () => string | string[]): void {
  if (o.json) {
    process.stdout.write(JSON.stringify(doc, null, 2) + '\n');
  } else {
    const t = text();
    process.stdout.write((Array.isArray(t) ? t.join('\n') : t) + '\n');
  }
}

type Cell = string | number | boolean | null | undefined;

/** Columns padded to their widest cell; an empty cell shows as `-`. */
function table(headers: string[], rows: Cell[][]): string[] {
  const cells = rows.map((r) =>
    r.map((c) => (c === null || c === undefined || c === '' ? '-' : String(c))),
  );
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...cells.map(line)];
}

function listOrNone(rows: unknown[], what: string, lines: () => string[]): string[] {
  return rows.length === 0 ? [`no ${what}`] : lines();
}

/** `2025-03-01T18:00:00.000Z` → `2025-03-01 18:00:00Z`. */
function when(iso: string | null | undefined): string {
  if (!iso) return '-';
  return iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function field(label: string, value: Cell): string {
  return `${`${label}:`.padEnd(15)}${value === null || value === undefined || value === '' ? '-' : String(value)}`;
}

function yamlBlock(label: string, value: unknown): string[] {
  const text = toYaml(value ?? {}).trimEnd();
  return [`${label}:`, ...text.split('\n').map((l) => `  ${l}`)];
}

function short(id: string | null | undefined): string {
  return id ? id.slice(0, 12) : '-';
}

const ref = (r: string) => encodeURIComponent(r);

// ------------------------------------------------------------------ arguments

function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

function wholeNumber(min: number, max = Number.MAX_SAFE_INTEGER) {
  return (v: string): number => {
    if (!/^\d+$/.test(v.trim())) throw new InvalidArgumentError('expected a whole number.');
    const n = Number(v);
    if (n < min || n > max) throw new InvalidArgumentError(`expected ${min} to ${max}.`);
    return n;
  };
}

const DAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const;
type Day = (typeof DAYS)[number];
export interface TimeWindow {
  days?: Day[];
  from: string;
  to: string;
}

/**
 * `"mon,tue 20:00-06:00"`, `"mon-fri 08:00-17:00"` or `"22:00-05:00"` (every day): a window
 * of local time that may cross midnight.
 */
export function parseWindow(text: string, flag: string): TimeWindow {
  const bad = (why: string) =>
    new ReimageError(
      'INVALID_ARGUMENT',
      `${flag} ${JSON.stringify(text)}: ${why}; expected "[DAYS ]HH:MM-HH:MM", e.g. "mon-fri 20:00-06:00" or "sat,sun 00:00-23:59"`,
      { details: { [flag.replace(/^--/, '')]: text } },
    );
  const m = /^\s*(?:([a-z,-]+)\s+)?(\d{2}:\d{2})-(\d{2}:\d{2})\s*$/i.exec(text);
  if (!m) throw bad('not a time window');
  const time = /^([01]\d|2[0-3]):[0-5]\d$/;
  if (!time.test(m[2]!) || !time.test(m[3]!)) throw bad('times are HH:MM, 00:00 to 23:59');
  if (m[2] === m[3]) throw bad('the window is empty (from = to)');
  const w: TimeWindow = { from: m[2]!, to: m[3]! };
  if (m[1] !== undefined) {
    const days = new Set<Day>();
    for (const part of m[1].toLowerCase().split(',')) {
      const [a, b] = part.split('-');
      const i = DAYS.indexOf(a as Day);
      const j = b === undefined ? i : DAYS.indexOf(b as Day);
      if (i < 0 || j < 0 || part.split('-').length > 2)
        throw bad(`"${part}" is not a day (mon, tue, wed, thu, fri, sat, sun) or a range of days`);
      for (let k = i; ; k = (k + 1) % 7) {
        days.add(DAYS[k]!);
        if (k === j) break;
      }
    }
    w.days = DAYS.filter((d) => days.has(d));
  }
  return w;
}

function formatWindow(w: TimeWindow): string {
  return `${w.days && w.days.length < 7 ? `${w.days.join(',')} ` : ''}${w.from}-${w.to}`;
}

/** `--wave 10%` → a share of the machines; `--wave 25` → that many machines. */
export function parseWave(text: string): { percent: number } | { machines: number } {
  const m = /^\s*(\d+)\s*(%?)\s*$/.exec(text);
  const n = m ? Number(m[1]) : NaN;
  if (!m || (m[2] === '%' ? n < 1 || n > 100 : n < 1))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `--wave ${JSON.stringify(text)} is neither a percentage (1% to 100%) nor a number of machines (1 or more)`,
      { details: { wave: text } },
    );
  return m[2] === '%' ? { percent: n } : { machines: n };
}

function readTextFile(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (e) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `cannot read the ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      { cause: e, details: { file } },
    );
  }
}

function readYamlFile(file: string, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = parseYaml(readTextFile(file, what), { uniqueKeys: true });
  } catch (e) {
    if (isReimageError(e)) throw e;
    throw new ReimageError('YAML_INVALID', `${file}: ${(e as Error).message}`, {
      cause: e,
      details: { file },
    });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value))
    throw new ReimageError('VALIDATION_FAILED', `${file}: the ${what} must be a mapping`, {
      details: { problems: [{ file, path: '', expected: 'must be a mapping' }] },
    });
  return value as Record<string, unknown>;
}

// ------------------------------------------------------------------ terminal input

/** Reads everything on stdin (a password piped in), without its final line break. */
async function readStdin(what: string): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(Buffer.from(c as Buffer));
  const text = Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
  if (text === '') throw new ReimageError('INVALID_ARGUMENT', `no ${what} on standard input`);
  return text;
}

/** Asks for a secret on the terminal without echoing it. */
async function askSecret(prompt: string): Promise<string> {
  const stdin = process.stdin;
  if (!stdin.isTTY)
    throw new ReimageError(
      'USAGE',
      'no terminal to ask for the password on: pipe it in with --password-stdin',
    );
  process.stderr.write(prompt);
  stdin.setRawMode(true);
  stdin.setEncoding('utf8');
  stdin.resume();
  return new Promise<string>((resolve, reject) => {
    let value: string[] = [];
    const finish = () => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
    };
    const onData = (chunk: string) => {
      for (const ch of chunk) {
        if (ch === '\r' || ch === '\n' || ch === '\u0004') {
          finish();
          resolve(value.join(''));
          return;
        }
        if (ch === '\u0003') {
          finish();
          reject(new ReimageError('CANCELLED', 'cancelled'));
          return;
        }
        if (ch === '\u007f' || ch === '\b') value = value.slice(0, -1);
        else if (ch === '\u0015') value = [];
        else if (ch >= ' ') value.push(ch);
      }
    };
    stdin.on('data', onData);
  });
}

/** A password from stdin (`--password-stdin`) or, on a terminal, asked for (twice when new). */
async function password(fromStdin: boolean | undefined, prompt: string, confirm: boolean) {
  if (fromStdin) return readStdin('password');
  const first = await askSecret(`${prompt}: `);
  if (confirm && (await askSecret(`${prompt} again: `)) !== first)
    throw new ReimageError('INVALID_ARGUMENT', 'the two passwords differ; nothing was changed');
  if (first === '') throw new ReimageError('INVALID_ARGUMENT', 'the password is empty');
  return first;
}

async function confirmOnTty(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    const answer = await rl.question(question);
    return /^y(es)?$/i.test(answer.trim());
  } finally {
    rl.close();
  }
}

// ------------------------------------------------------------------ login / logout

interface LoginOptions extends ConnectionOptions {
  user: string;
  passwordStdin?: boolean;
}

async function login(o: LoginOptions, ctx: AdminContext): Promise<void> {
  const file = configFileOf(ctx);
  const c = await resolveConnection({
    flags: { server: o.server, fingerprint: o.serverFingerprint },
    env: { ...ctx.env, REIMAGE_TOKEN: undefined },
    configFile: file,
  });
  if (c === undefined)
    throw new ReimageError('USAGE', 'log in to which server? pass --server https://HOST:PORT');
  const server = c.server.replace(/\/+$/, '');
  let fingerprint = c.fingerprint === undefined ? undefined : parseFingerprint(c.fingerprint);

  if (fingerprint === undefined && server.startsWith('https:')) {
    // A certificate from a CA this machine trusts needs no pin; a self-signed one does.
    const probe = new ApiClient({ server, userAgent: USER_AGENT });
    try {
      await probe.request('GET', '/api/v1/server');
    } catch (e) {
      if (!isReimageError(e, 'SERVER_CERT_MISMATCH')) throw e;
      const presented = await ApiClient.fetchFingerprint(server);
      if (!process.stdin.isTTY || o.passwordStdin)
        throw new ReimageError(
          'SERVER_CERT_MISMATCH',
          `The certificate of ${server} is not signed by a trusted CA; it presents fingerprint ${presented}. Check it against the one the server printed at start-up, then pass --server-fingerprint ${presented}.`,
          { cause: e, details: { presented } },
        );
      process.stderr.write(
        `The certificate of ${server} is not signed by a CA this machine trusts.\n` +
          `Its fingerprint is\n  ${presented}\n` +
          'Compare it with the fingerprint the server printed when it started.\n',
      );
      if (!(await confirmOnTty('Trust this certificate and pin it? [y/N] ')))
        throw new ReimageError(
          'SERVER_CERT_MISMATCH',
          `The certificate of ${server} was not trusted; nothing was sent.`,
          { details: { presented } },
        );
      fingerprint = presented;
    } finally {
      probe.close();
    }
  }

  const api = new ApiClient({ server, fingerprint, userAgent: USER_AGENT });
  try {
    const pw = await password(o.passwordStdin, `password of ${o.user} at ${server}`, false);
    const res = await api.request<{ token: string; expiresAt: string; user: User }>(
      'POST',
      '/api/v1/auth/login',
      { body: { username: o.user, password: pw } },
    );
    await saveConnection(file, { server, token: res.token, fingerprint });
    print(
      o,
      {
        server,
        user: res.user,
        expiresAt: res.expiresAt,
        fingerprint: fingerprint ?? null,
        configFile: file,
      },
      () => [
        `logged in to ${server} as ${res.user.username} (${res.user.role}) until ${when(res.expiresAt)}`,
        `token saved in ${file}${fingerprint ? `; certificate pinned (${fingerprint})` : ''}`,
      ],
    );
  } finally {
    api.close();
  }
}

async function logout(o: { json?: boolean }, ctx: AdminContext): Promise<void> {
  const file = configFileOf(ctx);
  // Only the config file's own login is revoked: a token from REIMAGE_TOKEN belongs to a script.
  const saved = await resolveConnection({ flags: {}, env: {}, configFile: file });
  if (saved?.token === undefined) {
    print(o, { server: saved?.server ?? null, loggedOut: false }, () => 'not logged in');
    return;
  }
  let revoked = false;
  let warning: string | undefined;
  const api = new ApiClient({
    server: saved.server,
    token: saved.token,
    fingerprint: saved.fingerprint,
    userAgent: USER_AGENT,
  });
  try {
    await api.request('POST', '/api/v1/auth/logout');
    revoked = true;
  } catch (e) {
    if (isReimageError(e, 'UNAUTHENTICATED'))
      revoked = true; // expired or revoked already
    else if (isReimageError(e, 'NOT_FOUND') && e.details.kind === 'endpoint')
      warning = 'this server cannot revoke a login token; it expires on its own within 12 hours';
    else if (isReimageError(e))
      warning = `could not revoke the token on the server (${e.code}: ${e.message})`;
    else throw e;
  } finally {
    api.close();
  }
  await saveConnection(file, { server: saved.server, fingerprint: saved.fingerprint });
  if (warning) process.stderr.write(`warning: ${warning}\n`);
  print(
    o,
    { server: saved.server, loggedOut: true, revoked },
    () => `logged out of ${saved.server}${revoked ? '' : ' (the token is forgotten here)'}`,
  );
}

// ------------------------------------------------------------------ images (server side)

/** Remote `image list`: the images registered in the catalog. */
export async function remoteImageList(api: ApiClient, o: { json?: boolean }): Promise<void> {
  try {
    const { items } = await api.request<Items<ImageRecord>>('GET', '/api/v1/images');
    print(o, { images: items }, () =>
      listOrNone(items, 'images', () =>
        table(
          ['ID', 'NAME', 'FORMAT', 'OS', 'FILES', 'SIZE', 'REGISTERED'],
          items.map((i) => [
            short(i.id),
            i.name,
            i.format,
            [i.properties.osFamily, i.properties.osVersion].filter(Boolean).join(' '),
            i.fileCount,
            formatBytes(i.size),
            when(i.registeredAt),
          ]),
        ),
      ),
    );
  } finally {
    api.close();
  }
}

function imageLines(i: ImageRecord): string[] {
  return [
    field('id', i.id),
    field('name', i.name),
    field('format', i.format),
    field(
      'size',
      `${formatBytes(i.size)} (${i.fileCount} files; ${formatBytes(i.storedSize)} stored)`,
    ),
    field('source', i.sourceMachine),
    field('registered', `${when(i.registeredAt)} by ${i.registeredBy}`),
    ...Object.entries(i.properties).map(([k, v]) => field(k, v)),
    ...(i.inventory ? yamlBlock('inventory', i.inventory) : []),
  ];
}

/** Remote `image show`. */
export async function remoteImageShow(
  api: ApiClient,
  imageRef: string,
  o: { json?: boolean; files?: boolean },
): Promise<void> {
  try {
    if (o.files)
      throw new ReimageError(
        'USAGE',
        '--files lists a local image: give --store PATH (the server lists no files)',
      );
    const image = await api.request<ImageRecord>('GET', `/api/v1/images/${ref(imageRef)}`);
    print(o, { image }, () => imageLines(image));
  } finally {
    api.close();
  }
}

/** Remote `image delete`: every reference is resolved first, so a bad one changes nothing. */
export async function remoteImageDelete(
  api: ApiClient,
  refs: string[],
  o: { json?: boolean; allVersions?: boolean },
): Promise<void> {
  try {
    if (o.allVersions)
      throw new ReimageError(
        'USAGE',
        '--all-versions applies to a local store; on the server, delete each version by id',
      );
    const images = [];
    for (const r of refs)
      images.push(await api.request<ImageRecord>('GET', `/api/v1/images/${ref(r)}`));
    const deleted: string[] = [];
    for (const i of images) {
      if (deleted.includes(i.id)) continue;
      await api.request('DELETE', `/api/v1/images/${ref(i.id)}`);
      deleted.push(i.id);
    }
    print(
      o,
      { deleted },
      () =>
        `removed ${deleted.length} image(s) from the catalog; the server's library keeps their content until \`reimage store gc\``,
    );
  } finally {
    api.close();
  }
}

// ------------------------------------------------------------------ command building

type Action<A extends unknown[], O> = (api: ApiClient, ...args: [...A, O]) => Promise<void>;

/** A server command: `--json` and the connection flags; its action gets a connected client. */
function serverCommand<A extends unknown[], O extends ConnectionOptions>(
  parent: Command,
  spec: string,
  description: string,
  ctx: AdminContext,
  configure: (cmd: Command) => Command,
  action: Action<A, O>,
): Command {
  const cmd = withConnection(
    configure(parent.command(spec).description(description)).option(
      '--json',
      'print one JSON document',
    ),
  );
  cmd.action(async (...all: unknown[]) => {
    // commander passes the arguments, the options, then the command itself.
    const args = all.slice(0, -2) as A;
    const o = all[all.length - 2] as O;
    await withClient(o, ctx, (api) => action(api, ...args, o));
  });
  return cmd;
}

const same = (c: Command) => c;

function deleteCommand(parent: Command, ctx: AdminContext, kind: string, apiPath: string): void {
  serverCommand<[string], ConnectionOptions>(
    parent,
    'delete <ref>',
    `delete a ${kind} (by name or id)`,
    ctx,
    same,
    async (api, r, o) => {
      await api.request('DELETE', `${apiPath}/${ref(r)}`);
      print(o, { deleted: { kind, ref: r } }, () => `deleted ${kind} ${r}`);
    },
  );
}

// ------------------------------------------------------------------ packages

function packageLines(p: PackageRecord): string[] {
  return [
    field('id', p.id),
    field('package', `${p.name}@${p.version}`),
    field('revision', p.revision),
    field('description', p.description),
    field('image', p.imageId),
    field('created', when(p.createdAt)),
    field('updated', when(p.updatedAt)),
    ...yamlBlock('definition', p.definition),
    ...yamlBlock('settings', p.settings),
  ];
}

function packageBody(o: { definition: string; settings: string }) {
  return {
    definition: readTextFile(o.definition, 'package definition'),
    settings: readTextFile(o.settings, 'deployment settings'),
    definitionFile: path.basename(o.definition),
    settingsFile: path.basename(o.settings),
  };
}

function registerPackage(program: Command, ctx: AdminContext): void {
  const pkg = program
    .command('package')
    .description('packages: an image with its deployment settings, on the server');
  type Files = ConnectionOptions & { definition: string; settings: string };
  const files = (c: Command) =>
    c
      .requiredOption('--definition <file>', 'package definition (YAML or JSON)')
      .requiredOption('--settings <file>', 'deployment settings (YAML or JSON)');

  serverCommand<[], ConnectionOptions>(pkg, 'list', 'list packages', ctx, same, async (api, o) => {
    const { items } = await api.request<Items<PackageRecord>>('GET', '/api/v1/packages');
    print(o, { packages: items }, () =>
      listOrNone(items, 'packages', () =>
        table(
          ['NAME', 'VERSION', 'REV', 'IMAGE', 'UPDATED', 'DESCRIPTION'],
          items.map((p) => [
            p.name,
            p.version,
            p.revision,
            short(p.imageId),
            when(p.updatedAt),
            p.description,
          ]),
        ),
      ),
    );
  });
  serverCommand<[string], ConnectionOptions>(
    pkg,
    'show <ref>',
    'show a package (id, name@version, or name for the newest version)',
    ctx,
    same,
    async (api, r, o) => {
      const p = await api.request<PackageRecord>('GET', `/api/v1/packages/${ref(r)}`);
      print(o, { package: p }, () => packageLines(p));
    },
  );
  serverCommand<[], Files>(
    pkg,
    'create',
    'create a package from its definition and deployment settings files',
    ctx,
    files,
    async (api, o) => {
      const p = await api.request<PackageRecord>('POST', '/api/v1/packages', {
        body: packageBody(o),
      });
      print(o, { package: p }, () => `created package ${p.name}@${p.version} (${p.id})`);
    },
  );
  serverCommand<[string], Files>(
    pkg,
    'update <ref>',
    'replace a package’s definition and settings (name and version stay; secrets given as {secret: set} keep their value)',
    ctx,
    files,
    async (api, r, o) => {
      const p = await api.request<PackageRecord>('PUT', `/api/v1/packages/${ref(r)}`, {
        body: packageBody(o),
      });
      print(
        o,
        { package: p },
        () => `updated package ${p.name}@${p.version} to revision ${p.revision}`,
      );
    },
  );
  deleteCommand(pkg, ctx, 'package', '/api/v1/packages');
  serverCommand<[string], ConnectionOptions>(
    pkg,
    'document <ref>',
    'the package file distribution points get (no secrets)',
    ctx,
    same,
    async (api, r, o) => {
      const doc = await api.request<Record<string, unknown>>(
        'GET',
        `/api/v1/packages/${ref(r)}/document`,
      );
      print(o, doc, () => toYaml(doc).trimEnd());
    },
  );
  serverCommand<[string], ConnectionOptions & { dp?: string[]; fromDp?: string }>(
    pkg,
    'distribute <ref>',
    'copy the package’s content to distribution points (only what they lack; runs on the server; see `package distribution`)',
    ctx,
    (c) =>
      same(c)
        .requiredOption('--dp <name...>', 'distribution points by name')
        .option(
          '--from-dp <name>',
          'fill them from this DP instead of the library (hub and spoke; the package must be done there)',
        ),
    async (api, r, o) => {
      const res = await api.request<{ items: DistributionRow[] }>(
        'POST',
        `/api/v1/packages/${ref(r)}/distribute`,
        {
          body: {
            distributionPoints: o.dp ?? [],
            ...(o.fromDp ? { fromDistributionPoint: o.fromDp } : {}),
          },
        },
      );
      print(o, res, () => distributionLines(res.items));
    },
  );
  serverCommand<[string], ConnectionOptions>(
    pkg,
    'distribution <ref>',
    'replication state of a package on each distribution point',
    ctx,
    same,
    async (api, r, o) => {
      const res = await api.request<{ items: DistributionRow[] }>(
        'GET',
        `/api/v1/packages/${ref(r)}/distribution`,
      );
      print(o, res, () => distributionLines(res.items));
    },
  );
}

interface DistributionRow {
  dpName: string;
  sourceDpName?: string | null;
  note?: string | null;
  state: string;
  bytesDone: number;
  bytesTotal: number;
  error: string | null;
  updatedAt: string;
}

function distributionLines(rows: DistributionRow[]): string {
  if (rows.length === 0) return 'not distributed to any distribution point';
  return rows
    .map((d) => {
      const pct = d.bytesTotal > 0 ? ` ${Math.floor((100 * d.bytesDone) / d.bytesTotal)}%` : '';
      const from = d.sourceDpName ? ` (from ${d.sourceDpName})` : '';
      return `${d.dpName.padEnd(16)} ${d.state}${d.state === 'copying' || d.state === 'waiting' ? pct : ''}${from}${d.note ? `: ${d.note}` : ''}${d.error ? `: ${d.error}` : ''}`;
    })
    .join('\n');
}

// ------------------------------------------------------------------ distribution points

interface DpOptions extends ConnectionOptions {
  address?: string;
  site?: string;
  boundary?: string[];
  rateLimit?: string;
  window?: string[];
  anyTime?: boolean;
  username?: string;
  domain?: string;
  passwordStdin?: boolean;
  forgetCredentials?: boolean;
}

/** Write credentials from --username (password from stdin or asked for), or undefined. */
async function credentialsOf(o: DpOptions) {
  if (o.username === undefined) {
    if (o.domain !== undefined || o.passwordStdin)
      throw new ReimageError('USAGE', '--domain and --password-stdin go with --username');
    return undefined;
  }
  return {
    username: o.username,
    password: await password(o.passwordStdin, `password of ${o.username} on the DP: `, false),
    ...(o.domain !== undefined ? { domain: o.domain } : {}),
  };
}

function dpLines(d: DistributionPoint): string[] {
  return [
    field('id', d.id),
    field('name', d.name),
    field('address', d.address),
    field('site', d.site),
    field('boundaries', d.boundaries.join(', ')),
    field('rate limit', d.bandwidth.rateLimitKbps ? `${d.bandwidth.rateLimitKbps} kbit/s` : 'none'),
    field(
      'windows',
      d.bandwidth.windows?.length
        ? (d.bandwidth.windows as TimeWindow[]).map(formatWindow).join('; ')
        : 'any time',
    ),
    field('credentials', d.hasCredentials ? 'stored (sealed)' : 'none'),
    field('updated', when(d.updatedAt)),
  ];
}

function bandwidthOf(o: DpOptions, base: DistributionPoint['bandwidth'] = {}) {
  const b: DistributionPoint['bandwidth'] = { ...base };
  if (o.rateLimit !== undefined) {
    if (o.rateLimit === 'none') delete b.rateLimitKbps;
    else b.rateLimitKbps = wholeNumberArg(o.rateLimit, '--rate-limit', 8, 100_000_000);
  }
  if (o.anyTime) delete b.windows;
  if (o.window?.length) b.windows = o.window.map((w) => parseWindow(w, '--window'));
  return b;
}

function wholeNumberArg(v: string, flag: string, min: number, max: number): number {
  try {
    return wholeNumber(min, max)(v);
  } catch (e) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${flag} ${JSON.stringify(v)}: ${(e as Error).message}`,
    );
  }
}

function registerDp(program: Command, ctx: AdminContext): void {
  const dp = program
    .command('dp')
    .description('distribution points: where machines of a site fetch images from');
  const common = (c: Command) =>
    c
      .option(
        '--boundary <cidr>',
        'a subnet the DP serves; repeatable (replaces the list)',
        collect,
      )
      .option('--rate-limit <kbps>', 'replication rate limit in kbit/s (`none` for no limit)')
      .option(
        '--window <window>',
        'replicate only inside this window, e.g. "mon-fri 20:00-06:00"; repeatable (replaces the list)',
        collect,
      )
      .option(
        '--username <user>',
        'who the server writes to the DP as (WebDAV basic auth, SMB user); the password is asked for',
      )
      .option('--domain <domain>', 'SMB workgroup or domain of --username')
      .option('--password-stdin', 'read the password of --username from stdin');

  serverCommand<[], ConnectionOptions>(
    dp,
    'list',
    'list distribution points',
    ctx,
    same,
    async (api, o) => {
      const { items } = await api.request<Items<DistributionPoint>>(
        'GET',
        '/api/v1/distribution-points',
      );
      print(o, { distributionPoints: items }, () =>
        listOrNone(items, 'distribution points', () =>
          table(
            ['NAME', 'SITE', 'ADDRESS', 'BOUNDARIES', 'RATE LIMIT', 'WINDOWS'],
            items.map((d) => [
              d.name,
              d.site,
              d.address,
              d.boundaries.join(','),
              d.bandwidth.rateLimitKbps ? `${d.bandwidth.rateLimitKbps} kbit/s` : '',
              (d.bandwidth.windows as TimeWindow[] | undefined)?.map(formatWindow).join('; '),
            ]),
          ),
        ),
      );
    },
  );
  serverCommand<[string], ConnectionOptions>(
    dp,
    'show <ref>',
    'show a distribution point',
    ctx,
    same,
    async (api, r, o) => {
      const d = await api.request<DistributionPoint>(
        'GET',
        `/api/v1/distribution-points/${ref(r)}`,
      );
      print(o, { distributionPoint: d }, () => dpLines(d));
    },
  );
  serverCommand<[string], DpOptions & { address: string; site: string }>(
    dp,
    'create <name>',
    'add a distribution point',
    ctx,
    (c) =>
      common(
        c
          .requiredOption(
            '--address <address>',
            'a folder (/path), smb://host/share/path, or http(s)://',
          )
          .requiredOption('--site <site>', 'the site it belongs to'),
      ),
    async (api, name, o) => {
      const bandwidth = bandwidthOf(o);
      const credentials = await credentialsOf(o);
      const d = await api.request<DistributionPoint>('POST', '/api/v1/distribution-points', {
        body: {
          name,
          address: o.address,
          site: o.site,
          ...(o.boundary ? { boundaries: o.boundary } : {}),
          ...(Object.keys(bandwidth).length ? { bandwidth } : {}),
          ...(credentials ? { credentials } : {}),
        },
      });
      print(o, { distributionPoint: d }, () => `created distribution point ${d.name} (${d.id})`);
    },
  );
  serverCommand<[string], DpOptions>(
    dp,
    'update <ref>',
    'change a distribution point',
    ctx,
    (c) =>
      common(c.option('--address <address>', 'new address').option('--site <site>', 'new site'))
        .option('--any-time', 'replicate at any time (remove the windows)')
        .option('--forget-credentials', 'forget the stored write credentials'),
    async (api, r, o) => {
      const body: Record<string, unknown> = {};
      const credentials = await credentialsOf(o);
      if (credentials) body.credentials = credentials;
      else if (o.forgetCredentials) body.credentials = null;
      if (o.address !== undefined) body.address = o.address;
      if (o.site !== undefined) body.site = o.site;
      if (o.boundary) body.boundaries = o.boundary;
      if (o.rateLimit !== undefined || o.window || o.anyTime) {
        const current = await api.request<DistributionPoint>(
          'GET',
          `/api/v1/distribution-points/${ref(r)}`,
        );
        body.bandwidth = bandwidthOf(o, current.bandwidth);
      }
      if (Object.keys(body).length === 0)
        throw new ReimageError('USAGE', 'nothing to change: give at least one option');
      const d = await api.request<DistributionPoint>(
        'PATCH',
        `/api/v1/distribution-points/${ref(r)}`,
        { body },
      );
      print(o, { distributionPoint: d }, () => `updated distribution point ${d.name}`);
    },
  );
  deleteCommand(dp, ctx, 'distribution point', '/api/v1/distribution-points');
}

// ------------------------------------------------------------------ machines

function machineTable(items: Machine[]): string[] {
  return table(
    ['NAME', 'ID', 'SITE', 'OS', 'IP', 'IMAGE', 'LAST CONTACT'],
    items.map((m) => {
      const inv = m.inventory as { os?: string; osVersion?: string; ips?: string[] };
      return [
        m.name,
        m.id,
        m.site,
        [inv.os, inv.osVersion].filter(Boolean).join(' '),
        inv.ips?.[0],
        short(m.appliedImageId),
        when(m.lastContactAt),
      ];
    }),
  );
}

function machineLines(m: Machine): string[] {
  return [
    field('id', m.id),
    field('name', m.name),
    field('site', m.site),
    field('tags', m.tags.join(', ')),
    field('image', m.appliedImageId),
    field('client', m.clientVersion),
    field('enrolled', when(m.enrolledAt)),
    field('last contact', when(m.lastContactAt)),
    ...Object.entries(m.inventory).map(([k, v]) =>
      field(k, Array.isArray(v) ? v.join(', ') : (v as Cell)),
    ),
  ];
}

function statusTable(items: Status[], names: Map<string, string>): string[] {
  return table(
    ['TIME', 'MACHINE', 'SEQ', 'ID', 'SEVERITY', 'PHASE', 'TEXT'],
    items.map((s) => [
      when(s.time),
      names.get(s.machineId) ?? s.machineId,
      s.seq,
      s.messageId,
      s.severity,
      s.phase,
      s.text,
    ]),
  );
}

function registerMachine(program: Command, ctx: AdminContext): void {
  const machine = program.command('machine').description('machines enrolled with the server');
  serverCommand<[], ConnectionOptions>(
    machine,
    'list',
    'list machines',
    ctx,
    same,
    async (api, o) => {
      const { items } = await api.request<Items<Machine>>('GET', '/api/v1/machines');
      print(o, { machines: items }, () => listOrNone(items, 'machines', () => machineTable(items)));
    },
  );
  serverCommand<[string], ConnectionOptions>(
    machine,
    'show <ref>',
    'show a machine (by name or GUID) and its inventory',
    ctx,
    same,
    async (api, r, o) => {
      const m = await api.request<Machine>('GET', `/api/v1/machines/${ref(r)}`);
      print(o, { machine: m }, () => machineLines(m));
    },
  );
  serverCommand<
    [string],
    ConnectionOptions & { name?: string; site?: string; tag?: string[]; clearTags?: boolean }
  >(
    machine,
    'update <ref>',
    'rename a machine, move it to a site, or set its tags',
    ctx,
    (c) =>
      c
        .option('--name <name>', 'new name')
        .option('--site <site>', 'its site (`none` for no site)')
        .option('--tag <tag>', 'a tag; repeatable (replaces the tags)', collect)
        .option('--clear-tags', 'remove every tag'),
    async (api, r, o) => {
      const body: Record<string, unknown> = {};
      if (o.name !== undefined) body.name = o.name;
      if (o.site !== undefined) body.site = o.site === 'none' ? null : o.site;
      if (o.tag) body.tags = [...new Set(o.tag)];
      else if (o.clearTags) body.tags = [];
      if (Object.keys(body).length === 0)
        throw new ReimageError(
          'USAGE',
          'nothing to change: give --name, --site, --tag or --clear-tags',
        );
      const m = await api.request<Machine>('PATCH', `/api/v1/machines/${ref(r)}`, { body });
      print(o, { machine: m }, () => `updated machine ${m.name} (${m.id})`);
    },
  );
  serverCommand<[string], ConnectionOptions>(
    machine,
    'delete <ref>',
    'forget a machine (its credential stops working; it must enroll again)',
    ctx,
    same,
    async (api, r, o) => {
      await api.request('DELETE', `/api/v1/machines/${ref(r)}`);
      print(o, { deleted: { kind: 'machine', ref: r } }, () => `deleted machine ${r}`);
    },
  );
  serverCommand<[string], ConnectionOptions>(
    machine,
    'timeline <ref>',
    "a machine's status messages, in order",
    ctx,
    same,
    async (api, r, o) => {
      const { items } = await api.request<Items<Status>>(
        'GET',
        `/api/v1/machines/${ref(r)}/timeline`,
      );
      print(o, { status: items }, () =>
        listOrNone(items, 'status messages', () =>
          table(
            ['TIME', 'SEQ', 'ID', 'SEVERITY', 'COMPONENT', 'PHASE', 'TEXT'],
            items.map((s) => [
              when(s.time),
              s.seq,
              s.messageId,
              s.severity,
              s.component,
              s.phase,
              s.text,
            ]),
          ),
        ),
      );
    },
  );

  const et = machine
    .command('enroll-token')
    .description('enrollment tokens: what a new machine exchanges for its own credential');
  serverCommand<[], ConnectionOptions & { site?: string; uses?: number; expiresIn?: number }>(
    et,
    'create',
    'make an enrollment token (shown once)',
    ctx,
    (c) =>
      c
        .option(
          '--site <site>',
          'machines that enroll with it join this site (default: by boundary)',
        )
        .option(
          '--uses <n>',
          'how many machines may use it (default: unlimited until it expires)',
          wholeNumber(1, 1_000_000),
        )
        .option(
          '--expires-in <hours>',
          'hours until it expires (default 168)',
          wholeNumber(1, 24 * 365),
        ),
    async (api, o) => {
      const res = await api.request<{ token: string; tokenInfo: EnrollmentToken }>(
        'POST',
        '/api/v1/enrollment-tokens',
        {
          body: {
            ...(o.site !== undefined ? { site: o.site } : {}),
            ...(o.uses !== undefined ? { uses: o.uses } : {}),
            ...(o.expiresIn !== undefined ? { expiresInHours: o.expiresIn } : {}),
          },
        },
      );
      print(o, res, () => [
        `enrollment token ${res.tokenInfo.id}: site ${res.tokenInfo.site ?? 'by boundary'}, ${res.tokenInfo.usesLeft ?? 'unlimited'} use(s), expires ${when(res.tokenInfo.expiresAt)}`,
        'the token (shown only now):',
        res.token,
      ]);
    },
  );
  serverCommand<[], ConnectionOptions>(
    et,
    'list',
    'list enrollment tokens',
    ctx,
    same,
    async (api, o) => {
      const { items } = await api.request<Items<EnrollmentToken>>(
        'GET',
        '/api/v1/enrollment-tokens',
      );
      print(o, { enrollmentTokens: items }, () =>
        listOrNone(items, 'enrollment tokens', () =>
          table(
            ['ID', 'SITE', 'USES LEFT', 'EXPIRES', 'CREATED BY', 'STATE'],
            items.map((t) => [
              t.id,
              t.site,
              t.usesLeft ?? 'unlimited',
              when(t.expiresAt),
              t.createdBy,
              t.revoked
                ? 'revoked'
                : Date.parse(t.expiresAt) < Date.now()
                  ? 'expired'
                  : t.usesLeft === 0
                    ? 'used up'
                    : 'valid',
            ]),
          ),
        ),
      );
    },
  );
  serverCommand<[string], ConnectionOptions>(
    et,
    'revoke <id>',
    'revoke an enrollment token (enrolled machines keep their credentials)',
    ctx,
    same,
    async (api, id, o) => {
      await api.request('DELETE', `/api/v1/enrollment-tokens/${ref(id)}`);
      print(
        o,
        { revoked: { kind: 'enrollment token', id } },
        () => `revoked enrollment token ${id}`,
      );
    },
  );
}

// ------------------------------------------------------------------ collections

function collectionLines(c: Collection): string[] {
  return [
    field('id', c.id),
    field('name', c.name),
    field('description', c.description),
    field('rule', c.rule ?? '(static: only included machines)'),
    field('include', c.include.join(', ')),
    field('exclude', c.exclude.join(', ')),
    field('updated', when(c.updatedAt)),
  ];
}

type CollectionOptions = ConnectionOptions & {
  rule?: string | false;
  include?: string[];
  exclude?: string[];
  description?: string;
};

function registerCollection(program: Command, ctx: AdminContext): void {
  const col = program
    .command('collection')
    .description('collections: machines chosen by a rule and by name');
  const members = (c: Command) =>
    c
      .option(
        '--include <machine>',
        'always a member (name or GUID); repeatable (replaces the list)',
        collect,
      )
      .option(
        '--exclude <machine>',
        'never a member (name or GUID); repeatable (replaces the list)',
        collect,
      )
      .option('--description <text>', 'description');

  serverCommand<[], ConnectionOptions>(
    col,
    'list',
    'list collections',
    ctx,
    same,
    async (api, o) => {
      const { items } = await api.request<Items<Collection>>('GET', '/api/v1/collections');
      print(o, { collections: items }, () =>
        listOrNone(items, 'collections', () =>
          table(
            ['NAME', 'INCLUDE', 'EXCLUDE', 'RULE'],
            items.map((c) => [c.name, c.include.length, c.exclude.length, c.rule ?? '(static)']),
          ),
        ),
      );
    },
  );
  serverCommand<[string], ConnectionOptions>(
    col,
    'show <ref>',
    'show a collection',
    ctx,
    same,
    async (api, r, o) => {
      const c = await api.request<Collection>('GET', `/api/v1/collections/${ref(r)}`);
      print(o, { collection: c }, () => collectionLines(c));
    },
  );
  serverCommand<[string], ConnectionOptions>(
    col,
    'members <ref>',
    'the machines in a collection now',
    ctx,
    same,
    async (api, r, o) => {
      const { items } = await api.request<Items<Machine>>(
        'GET',
        `/api/v1/collections/${ref(r)}/members`,
      );
      print(o, { machines: items }, () => listOrNone(items, 'members', () => machineTable(items)));
    },
  );
  serverCommand<[], ConnectionOptions & { rule: string }>(
    col,
    'preview',
    'the machines a rule would match now',
    ctx,
    (c) =>
      c.requiredOption('--rule <rule>', 'a rule, e.g. \'os = "debian" and disk_free_gb >= 20\''),
    async (api, o) => {
      const { items } = await api.request<Items<Machine>>('POST', '/api/v1/collections/preview', {
        body: { rule: o.rule },
      });
      print(o, { machines: items }, () =>
        listOrNone(items, 'matching machines', () => machineTable(items)),
      );
    },
  );
  serverCommand<[string], CollectionOptions>(
    col,
    'create <name>',
    'create a collection',
    ctx,
    (c) =>
      members(
        c.option(
          '--rule <rule>',
          'membership rule (docs/collections.md); none for a static collection',
        ),
      ),
    async (api, name, o) => {
      const c = await api.request<Collection>('POST', '/api/v1/collections', {
        body: {
          name,
          ...(typeof o.rule === 'string' ? { rule: o.rule } : {}),
          ...(o.include ? { include: o.include } : {}),
          ...(o.exclude ? { exclude: o.exclude } : {}),
          ...(o.description !== undefined ? { description: o.description } : {}),
        },
      });
      print(o, { collection: c }, () => `created collection ${c.name} (${c.id})`);
    },
  );
  serverCommand<[string], CollectionOptions>(
    col,
    'update <ref>',
    'change a collection',
    ctx,
    (c) =>
      members(
        c
          .option('--rule <rule>', 'new membership rule')
          .option('--no-rule', 'no rule: a static collection of the included machines'),
      ),
    async (api, r, o) => {
      const body: Record<string, unknown> = {};
      if (o.rule !== undefined) body.rule = o.rule === false ? null : o.rule;
      if (o.include) body.include = o.include;
      if (o.exclude) body.exclude = o.exclude;
      if (o.description !== undefined) body.description = o.description;
      if (Object.keys(body).length === 0)
        throw new ReimageError('USAGE', 'nothing to change: give at least one option');
      const c = await api.request<Collection>('PATCH', `/api/v1/collections/${ref(r)}`, { body });
      print(o, { collection: c }, () => `updated collection ${c.name}`);
    },
  );
  deleteCommand(col, ctx, 'collection', '/api/v1/collections');
}

// ------------------------------------------------------------------ advertisements

interface AdOptions extends ConnectionOptions {
  package?: string;
  collection?: string;
  availableFrom?: string | false;
  policy?: string;
  message?: string;
  deadline?: string;
  postponeMax?: string;
  decline?: boolean;
  requirePermission?: boolean;
  whenNoAnswer?: string;
  wave?: string[];
  maintenanceWindow?: string[];
  anyTime?: boolean;
  rerun?: string;
  retryAfter?: string;
  activeWave?: number;
  successThreshold?: number;
  failureThreshold?: number;
  disabled?: boolean;
  enable?: boolean;
  disable?: boolean;
}

/** The policy from `--policy FILE` and the flags (flags win), over `base`. */
function adPolicy(
  o: AdOptions,
  base: Record<string, unknown> = {},
): Record<string, unknown> | undefined {
  const fromFlags: Record<string, unknown> = {};
  if (o.message !== undefined) fromFlags.message = o.message;
  if (o.deadline !== undefined) fromFlags.deadline = o.deadline;
  if (o.postponeMax !== undefined) fromFlags.postponementMaximum = o.postponeMax;
  if (o.decline === false) fromFlags.allowDecline = false;
  if (o.requirePermission) fromFlags.requireUserPermission = true;
  if (o.whenNoAnswer !== undefined) fromFlags.whenNoAnswer = o.whenNoAnswer;
  const fromFile =
    o.policy === undefined ? undefined : readYamlFile(o.policy, 'advertisement policy');
  if (fromFile === undefined && Object.keys(fromFlags).length === 0) return undefined;
  // A policy file replaces the policy; flags alone change only what they name.
  return { ...(fromFile ?? base), ...fromFlags };
}

function adSchedule(
  o: AdOptions,
  base: Record<string, unknown> = {},
): Record<string, unknown> | undefined {
  const s: Record<string, unknown> = { ...base };
  let changed = false;
  const set = (k: string, v: unknown) => {
    s[k] = v;
    changed = true;
  };
  if (o.wave?.length) set('waves', o.wave.map(parseWave));
  if (o.anyTime) {
    delete s.maintenanceWindows;
    changed = true;
  }
  if (o.maintenanceWindow?.length)
    set(
      'maintenanceWindows',
      o.maintenanceWindow.map((w) => parseWindow(w, '--maintenance-window')),
    );
  if (o.rerun !== undefined) set('rerun', o.rerun);
  if (o.retryAfter !== undefined) set('retryAfter', o.retryAfter);
  if (o.activeWave !== undefined) set('activeWave', o.activeWave);
  if (o.successThreshold !== undefined) set('successThreshold', o.successThreshold);
  if (o.failureThreshold !== undefined) set('failureThreshold', o.failureThreshold);
  return changed ? s : undefined;
}

function adLines(a: Advertisement, names: Map<string, string>): string[] {
  const sched = a.schedule as {
    waves?: ({ percent: number } | { machines: number })[];
    maintenanceWindows?: TimeWindow[];
    rerun?: string;
    retryAfter?: string;
    activeWave?: number;
  };
  return [
    field('id', a.id),
    field('name', a.name),
    field('package', names.get(a.packageId) ?? a.packageId),
    field('collection', names.get(a.collectionId) ?? a.collectionId),
    field('enabled', a.enabled ? 'yes' : 'no'),
    field('available', a.availableFrom ? when(a.availableFrom) : 'now'),
    field('deadline', when(a.deadline)),
    field(
      'waves',
      sched.waves?.length
        ? `${sched.waves.map((w) => ('percent' in w ? `${w.percent}%` : `${w.machines} machines`)).join(', ')} (released up to wave ${sched.activeWave ?? 1})`
        : 'all at once',
    ),
    field(
      'windows',
      sched.maintenanceWindows?.length
        ? sched.maintenanceWindows.map(formatWindow).join('; ')
        : 'any time',
    ),
    field(
      'rerun',
      `${sched.rerun ?? 'if-failed'}${sched.rerun === 'never' ? '' : `, a failed run again after ${sched.retryAfter ?? '15m'} (doubled per failure)`}`,
    ),
    ...yamlBlock('policy', a.policy),
  ];
}

async function adNames(api: ApiClient): Promise<Map<string, string>> {
  const [pkgs, cols] = await Promise.all([
    api.request<Items<PackageRecord>>('GET', '/api/v1/packages'),
    api.request<Items<Collection>>('GET', '/api/v1/collections'),
  ]);
  return new Map([
    ...pkgs.items.map((p) => [p.id, `${p.name}@${p.version}`] as const),
    ...cols.items.map((c) => [c.id, c.name] as const),
  ]);
}

function registerAdvertisement(program: Command, ctx: AdminContext): void {
  const ad = program
    .command('advertisement')
    .description('advertisements: offer a package to a collection, with a policy and a schedule');
  const options = (c: Command) =>
    c
      .option(
        '--policy <file>',
        'the notification policy (YAML or JSON); the flags below override it',
      )
      .option('--message <text>', 'text of the notification users see')
      .option('--deadline <iso>', 'install at the latest then (ISO date-time with offset)')
      .option(
        '--postpone-max <duration>',
        'users may postpone at most this long in all (e.g. 2d, 12h, 0s)',
      )
      .option('--no-decline', 'users may not decline')
      .option('--require-permission', 'install only when the user says yes')
      .addOption(
        new Option('--when-no-answer <what>', 'what a notification nobody answers does').choices([
          'postpone',
          'decline',
        ]),
      )
      .option(
        '--wave <size>',
        'a rollout wave: "10%" of the machines or a number of them, in addition to the waves before; repeatable, in order (the last takes the rest)',
        collect,
      )
      .option(
        '--maintenance-window <window>',
        'start only inside this window, e.g. "mon-fri 22:00-05:00"; repeatable',
        collect,
      )
      .addOption(
        new Option('--rerun <when>', 'run again where it already ran (default if-failed)').choices([
          'never',
          'if-failed',
          'always',
        ]),
      )
      .option(
        '--retry-after <duration>',
        'wait this long before a failed deployment runs again, doubled per failure (default 15m)',
      )
      .option('--active-wave <n>', 'release the waves up to this one', wholeNumber(1, 20))
      .option(
        '--success-threshold <percent>',
        '% of a wave that must succeed before the next (default 90)',
        wholeNumber(0, 100),
      )
      .option(
        '--failure-threshold <percent>',
        '% of failures in a wave that halts the rollout (default 10)',
        wholeNumber(1, 100),
      );

  serverCommand<[], ConnectionOptions>(
    ad,
    'list',
    'list advertisements',
    ctx,
    same,
    async (api, o) => {
      const { items } = await api.request<Items<Advertisement>>('GET', '/api/v1/advertisements');
      const names = o.json || items.length === 0 ? new Map<string, string>() : await adNames(api);
      print(o, { advertisements: items }, () =>
        listOrNone(items, 'advertisements', () =>
          table(
            ['NAME', 'PACKAGE', 'COLLECTION', 'ENABLED', 'AVAILABLE', 'DEADLINE'],
            items.map((a) => [
              a.name,
              names.get(a.packageId) ?? a.packageId,
              names.get(a.collectionId) ?? a.collectionId,
              a.enabled ? 'yes' : 'no',
              a.availableFrom ? when(a.availableFrom) : 'now',
              when(a.deadline),
            ]),
          ),
        ),
      );
    },
  );
  serverCommand<[string], ConnectionOptions>(
    ad,
    'show <ref>',
    'show an advertisement',
    ctx,
    same,
    async (api, r, o) => {
      const a = await api.request<Advertisement>('GET', `/api/v1/advertisements/${ref(r)}`);
      const names = o.json ? new Map<string, string>() : await adNames(api);
      print(o, { advertisement: a }, () => adLines(a, names));
    },
  );
  serverCommand<[string], ConnectionOptions>(
    ad,
    'effective-policy <ref>',
    'the policy machines follow: each value and where it comes from (package, advertisement, default)',
    ctx,
    same,
    async (api, r, o) => {
      const p = await api.request<Effective>(
        'GET',
        `/api/v1/advertisements/${ref(r)}/effective-policy`,
      );
      print(o, { effectivePolicy: p }, () =>
        table(
          ['SETTING', 'VALUE', 'FROM'],
          Object.entries(p).map(([k, v]) => [
            k,
            v.value === null
              ? 'none'
              : typeof v.value === 'string'
                ? v.value
                : JSON.stringify(v.value),
            v.source,
          ]),
        ),
      );
    },
  );
  serverCommand<[string], AdOptions & { package: string; collection: string }>(
    ad,
    'create <name>',
    'advertise a package to a collection',
    ctx,
    (c) =>
      options(
        c
          .requiredOption(
            '--package <ref>',
            'the package: id, name@version, or name (newest version)',
          )
          .requiredOption('--collection <ref>', 'the collection')
          .option(
            '--available-from <iso>',
            'not before then (ISO date-time with offset; default now)',
          ),
      ).option('--disabled', 'create it switched off'),
    async (api, name, o) => {
      const policy = adPolicy(o);
      const schedule = adSchedule(o);
      const a = await api.request<Advertisement>('POST', '/api/v1/advertisements', {
        body: {
          name,
          package: o.package,
          collection: o.collection,
          ...(typeof o.availableFrom === 'string' ? { availableFrom: o.availableFrom } : {}),
          ...(policy ? { policy } : {}),
          ...(schedule ? { schedule } : {}),
          ...(o.disabled ? { enabled: false } : {}),
        },
      });
      print(
        o,
        { advertisement: a },
        () => `created advertisement ${a.name} (${a.id})${a.enabled ? '' : ', disabled'}`,
      );
    },
  );
  serverCommand<[string], AdOptions>(
    ad,
    'update <ref>',
    'change an advertisement (e.g. release the next wave with --active-wave)',
    ctx,
    (c) =>
      options(
        c
          .option('--package <ref>', 'another package')
          .option('--collection <ref>', 'another collection')
          .option('--available-from <iso>', 'not before then')
          .option('--no-available-from', 'available now'),
      )
        .option('--any-time', 'remove the maintenance windows')
        .option('--enable', 'switch it on')
        .option('--disable', 'switch it off'),
    async (api, r, o) => {
      if (o.enable && o.disable)
        throw new ReimageError('USAGE', '--enable and --disable exclude each other');
      const current = await api.request<Advertisement>('GET', `/api/v1/advertisements/${ref(r)}`);
      const body: Record<string, unknown> = {};
      if (o.package !== undefined) body.package = o.package;
      if (o.collection !== undefined) body.collection = o.collection;
      if (o.availableFrom !== undefined)
        body.availableFrom = o.availableFrom === false ? null : o.availableFrom;
      const policy = adPolicy(o, current.policy);
      if (policy) body.policy = policy;
      const schedule = adSchedule(o, current.schedule);
      if (schedule) body.schedule = schedule;
      if (o.enable) body.enabled = true;
      if (o.disable) body.enabled = false;
      if (Object.keys(body).length === 0)
        throw new ReimageError('USAGE', 'nothing to change: give at least one option');
      const a = await api.request<Advertisement>(
        'PATCH',
        `/api/v1/advertisements/${ref(current.id)}`,
        { body },
      );
      print(o, { advertisement: a }, () => `updated advertisement ${a.name}`);
    },
  );
  deleteCommand(ad, ctx, 'advertisement', '/api/v1/advertisements');
}

// ------------------------------------------------------------------ status, audit

function registerStatus(program: Command, ctx: AdminContext): void {
  const status = program.command('status').description('status messages machines reported');
  serverCommand<
    [],
    ConnectionOptions & { machine?: string; advertisement?: string; limit?: number }
  >(
    status,
    'list',
    'status messages, by machine or advertisement',
    ctx,
    (c) =>
      c
        .option('--machine <ref>', 'of this machine (name or GUID)')
        .option('--advertisement <ref>', 'about this advertisement')
        .option('--limit <n>', 'at most n messages', wholeNumber(1, 99999)),
    async (api, o) => {
      const { items } = await api.request<Items<Status>>('GET', '/api/v1/status', {
        query: { machine: o.machine, advertisement: o.advertisement, limit: o.limit },
      });
      let names = new Map<string, string>();
      if (!o.json && items.length > 0) {
        const machines = await api.request<Items<Machine>>('GET', '/api/v1/machines');
        names = new Map(machines.items.map((m) => [m.id, m.name]));
      }
      print(o, { status: items }, () =>
        listOrNone(items, 'status messages', () => statusTable(items, names)),
      );
    },
  );

  const audit = program.command('audit').description('the audit log of changes (admins only)');
  serverCommand<[], ConnectionOptions & { limit?: number }>(
    audit,
    'list',
    'the newest entries of the audit log',
    ctx,
    (c) => c.option('--limit <n>', 'at most n entries (default 200)', wholeNumber(1, 5000)),
    async (api, o) => {
      const { items } = await api.request<Items<AuditEntry>>('GET', '/api/v1/audit', {
        query: { limit: o.limit },
      });
      print(o, { audit: items }, () =>
        listOrNone(items, 'audit entries', () =>
          table(
            ['AT', 'ACTOR', 'ACTION', 'KIND', 'TARGET', 'SUMMARY'],
            items.map((e) => [when(e.at), e.actor, e.action, e.kind, e.target, e.summary]),
          ),
        ),
      );
    },
  );
}

// ------------------------------------------------------------------ users, tokens

const ROLES = ['admin', 'operator', 'read-only'];

function registerUsers(program: Command, ctx: AdminContext): void {
  const user = program.command('user').description('admin users of the server (admins only)');
  serverCommand<[], ConnectionOptions>(user, 'list', 'list users', ctx, same, async (api, o) => {
    const { items } = await api.request<Items<User>>('GET', '/api/v1/users');
    print(o, { users: items }, () =>
      table(
        ['NAME', 'ROLE', 'STATE', 'CREATED'],
        items.map((u) => [
          u.username,
          u.role,
          u.disabled ? 'disabled' : 'enabled',
          when(u.createdAt),
        ]),
      ),
    );
  });
  serverCommand<[string], ConnectionOptions & { role: string; passwordStdin?: boolean }>(
    user,
    'create <name>',
    'add a user (the password is asked for, or read from stdin)',
    ctx,
    (c) =>
      c
        .addOption(
          new Option('--role <role>', 'what the user may do').choices(ROLES).makeOptionMandatory(),
        )
        .option('--password-stdin', 'read the password from standard input'),
    async (api, name, o) => {
      const pw = await password(o.passwordStdin, `password for ${name}`, true);
      const u = await api.request<User>('POST', '/api/v1/users', {
        body: { username: name, password: pw, role: o.role },
      });
      print(o, { user: u }, () => `created user ${u.username} (${u.role})`);
    },
  );
  serverCommand<
    [string],
    ConnectionOptions & {
      role?: string;
      disable?: boolean;
      enable?: boolean;
      newPassword?: boolean;
      passwordStdin?: boolean;
    }
  >(
    user,
    'update <name>',
    "change a user's role, state or password",
    ctx,
    (c) =>
      c
        .addOption(new Option('--role <role>', 'new role').choices(ROLES))
        .option('--disable', 'the user can no longer log in; their tokens stop working')
        .option('--enable', 'the user can log in again')
        .option('--new-password', 'set a new password (asked for on the terminal)')
        .option('--password-stdin', 'set a new password read from standard input'),
    async (api, name, o) => {
      if (o.enable && o.disable)
        throw new ReimageError('USAGE', '--enable and --disable exclude each other');
      const body: Record<string, unknown> = {};
      if (o.role !== undefined) body.role = o.role;
      if (o.disable) body.disabled = true;
      if (o.enable) body.disabled = false;
      if (o.newPassword || o.passwordStdin)
        body.password = await password(o.passwordStdin, `new password for ${name}`, true);
      if (Object.keys(body).length === 0)
        throw new ReimageError(
          'USAGE',
          'nothing to change: give --role, --disable, --enable or a new password',
        );
      const u = await api.request<User>('PATCH', `/api/v1/users/${ref(name)}`, { body });
      print(
        o,
        { user: u },
        () => `updated user ${u.username} (${u.role}${u.disabled ? ', disabled' : ''})`,
      );
    },
  );
  deleteCommand(user, ctx, 'user', '/api/v1/users');

  const token = program
    .command('token')
    .description('API tokens for scripts (your own; admins see all)');
  serverCommand<[string], ConnectionOptions & { expiresInDays?: number }>(
    token,
    'create <name>',
    'make an API token for yourself (shown once)',
    ctx,
    (c) =>
      c.option(
        '--expires-in-days <n>',
        'days until it expires (default: never)',
        wholeNumber(1, 3650),
      ),
    async (api, name, o) => {
      const res = await api.request<{ token: string; tokenInfo: ApiToken }>(
        'POST',
        '/api/v1/tokens',
        {
          body: {
            name,
            ...(o.expiresInDays !== undefined ? { expiresInDays: o.expiresInDays } : {}),
          },
        },
      );
      print(o, res, () => [
        `API token ${res.tokenInfo.id} (${res.tokenInfo.name}), expires ${res.tokenInfo.expiresAt ? when(res.tokenInfo.expiresAt) : 'never'}`,
        'the token (shown only now; use it as REIMAGE_TOKEN):',
        res.token,
      ]);
    },
  );
  serverCommand<[], ConnectionOptions>(
    token,
    'list',
    'list API tokens',
    ctx,
    same,
    async (api, o) => {
      const { items } = await api.request<Items<ApiToken>>('GET', '/api/v1/tokens');
      let users = new Map<string, string>();
      if (!o.json) {
        // Only admins may list users; others see their own tokens and their user id.
        try {
          users = new Map(
            (await api.request<Items<User>>('GET', '/api/v1/users')).items.map((u) => [
              u.id,
              u.username,
            ]),
          );
        } catch (e) {
          if (!isReimageError(e, 'FORBIDDEN')) throw e;
        }
      }
      print(o, { tokens: items }, () =>
        listOrNone(items, 'tokens', () =>
          table(
            ['ID', 'NAME', 'USER', 'CREATED', 'EXPIRES', 'LAST USED'],
            items.map((t) => [
              t.id,
              t.name,
              users.get(t.userId) ?? t.userId,
              when(t.createdAt),
              t.expiresAt ? when(t.expiresAt) : 'never',
              when(t.lastUsedAt),
            ]),
          ),
        ),
      );
    },
  );
  serverCommand<[string], ConnectionOptions>(
    token,
    'revoke <id>',
    'revoke an API token',
    ctx,
    same,
    async (api, id, o) => {
      await api.request('DELETE', `/api/v1/tokens/${ref(id)}`);
      print(o, { revoked: { kind: 'token', id } }, () => `revoked token ${id}`);
    },
  );
}

// ------------------------------------------------------------------ registration

/**
 * Adds `login`, `logout`, the server nouns, and `image register`/`image rescan` (when
 * `ctx.image` is given) to the program.
 */
export function registerAdminCommands(program: Command, ctx: AdminContext): void {
  withConnection(
    program
      .command('login')
      .description('log in to a management server; the token is saved in the config file')
      .option('--user <name>', 'user name', 'admin')
      .option(
        '--password-stdin',
        'read the password from standard input (else asked for on the terminal)',
      )
      .option('--json', 'print one JSON document'),
  ).action((o: LoginOptions) => login(o, ctx));
  program
    .command('logout')
    .description('revoke the saved login token and forget it')
    .option('--json', 'print one JSON document')
    .action((o: { json?: boolean }) => logout(o, ctx));

  if (ctx.image) {
    serverCommand<[string], ConnectionOptions>(
      ctx.image,
      'register <ref>',
      "record an image of the server's library in its catalog (name, id or id prefix)",
      ctx,
      same,
      async (api, r, o) => {
        const image = await api.request<ImageRecord>('POST', '/api/v1/images/register', {
          body: { ref: r },
        });
        print(o, { image }, () => `registered image ${image.name} (${image.id})`);
      },
    );
    serverCommand<[], ConnectionOptions>(
      ctx.image,
      'rescan',
      "register every named image of the server's library",
      ctx,
      same,
      async (api, o) => {
        const res = await api.request<{ registered: number }>('POST', '/api/v1/images/rescan');
        print(o, res, () => `${res.registered} new image(s) registered`);
      },
    );
  }

  registerPackage(program, ctx);
  registerDp(program, ctx);
  registerMachine(program, ctx);
  registerCollection(program, ctx);
  registerAdvertisement(program, ctx);
  registerStatus(program, ctx);
  registerUsers(program, ctx);
  const noun = (n: string) => program.commands.find((c) => c.name() === n)!;
  registerServerlessCommands(
    { advertisement: noun('advertisement'), status: noun('status') },
    (parent, spec, description, configure, action) =>
      serverCommand(parent, spec, description, ctx, configure, action),
    print,
  );
}

function nonEmpty(s: string | undefined): s is string {
  return s !== undefined && s !== '';
}
