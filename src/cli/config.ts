/**
 * The admin CLI's connection settings: which management server, with which token, pinned
 * to which certificate. A flag beats the environment, which beats the config file. Only the
 * CLI entry point reads flags and the environment; it passes them in here.
 */
import fs, { type FileHandle } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { ReimageError } from '../errors.js';
import { writeAtomic } from '../content/store.js';

export type SettingSource = 'flag' | 'env' | 'file';

export interface ConnectionFlags {
  server?: string;
  token?: string;
  fingerprint?: string;
}

/** What `saveConnection` writes and the config file holds. */
export interface SavedConnection {
  server: string;
  token?: string;
  fingerprint?: string;
}

export interface Connection {
  server: string;
  token?: string;
  fingerprint?: string;
  /** Where each setting came from (absent settings have no source). */
  source: { server: SettingSource; token?: SettingSource; fingerprint?: SettingSource };
}

export type Environment = Record<string, string | undefined>;

/** `${XDG_CONFIG_HOME:-~/.config}/reimage/config.json`. */
export function defaultConfigFile(env: Environment): string {
  const xdg = env.XDG_CONFIG_HOME;
  const base =
    xdg !== undefined && path.isAbsolute(xdg)
      ? xdg
      : path.join(env.HOME !== undefined && env.HOME !== '' ? env.HOME : os.homedir(), '.config');
  return path.join(base, 'reimage', 'config.json');
}

/**
 * The connection to use, or undefined when no server is named anywhere. The config file's
 * token and fingerprint belong to the config file's server: when a flag or the environment
 * names another server, they are not used (a token must not go to a server it was not made for).
 */
export async function resolveConnection(input: {
  flags: ConnectionFlags;
  env: Environment;
  configFile?: string;
}): Promise<Connection | undefined> {
  const { flags, env } = input;
  const file = await readConfigFile(input.configFile ?? defaultConfigFile(env));

  const fromFlagOrEnv = (
    flag: string | undefined,
    envName: string,
  ): { value: string; source: SettingSource } | undefined => {
    if (nonEmpty(flag)) return { value: flag, source: 'flag' };
    const e = env[envName];
    if (nonEmpty(e)) return { value: e, source: 'env' };
    return undefined;
  };

  const serverGiven = fromFlagOrEnv(flags.server, 'REIMAGE_SERVER');
  const server =
    serverGiven ??
    (file?.server !== undefined ? { value: file.server, source: 'file' as const } : undefined);
  if (server === undefined) return undefined;

  const fileApplies =
    file?.server !== undefined && sameServer(file.server, server.value) ? file : undefined;
  const pick = (flag: string | undefined, envName: string, fromFile: string | undefined) =>
    fromFlagOrEnv(flag, envName) ??
    (nonEmpty(fromFile) ? { value: fromFile, source: 'file' as const } : undefined);

  const token = pick(flags.token, 'REIMAGE_TOKEN', fileApplies?.token);
  const fingerprint = pick(
    flags.fingerprint,
    'REIMAGE_SERVER_FINGERPRINT',
    fileApplies?.fingerprint,
  );

  const connection: Connection = { server: server.value, source: { server: server.source } };
  if (token !== undefined) {
    connection.token = token.value;
    connection.source.token = token.source;
  }
  if (fingerprint !== undefined) {
    connection.fingerprint = fingerprint.value;
    connection.source.fingerprint = fingerprint.source;
  }
  return connection;
}

/**
 * Writes the config file readable by its owner only (0600, in a 0700 directory when the
 * directory is new), atomically: a crash leaves the old file or the new one.
 */
export async function saveConnection(file: string, connection: SavedConnection): Promise<void> {
  const body: SavedConnection = { server: connection.server };
  if (nonEmpty(connection.token)) body.token = connection.token;
  if (nonEmpty(connection.fingerprint)) body.fingerprint = connection.fingerprint;

  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  writeAtomic(file, `${JSON.stringify(body, null, 2)}\n`, true, 0o600);
}

async function readConfigFile(file: string): Promise<Partial<SavedConnection> | undefined> {
  let handle: FileHandle;
  try {
    handle = await fs.open(file, 'r');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `Cannot read the config file ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}.`,
      { cause: e, details: { file } },
    );
  }
  let text: string;
  let mode: number;
  try {
    // Mode and content from the same open file, so the checked file is the one read.
    mode = (await handle.stat()).mode;
    text = await handle.readFile('utf8');
  } finally {
    await handle.close();
  }

  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `The config file ${file} is not valid JSON (${(cause as Error).message}). Fix it, or remove it and log in again with \`reimage login\`.`,
      { cause, details: { file } },
    );
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `The config file ${file} must hold a JSON object { "server", "token", "fingerprint" }.`,
      { details: { file } },
    );
  }
  const out: Partial<SavedConnection> = {};
  for (const key of ['server', 'token', 'fingerprint'] as const) {
    const v = (parsed as Record<string, unknown>)[key];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string') {
      throw new ReimageError(
        'INVALID_ARGUMENT',
        `In the config file ${file}, "${key}" must be a string.`,
        { details: { file, key } },
      );
    }
    if (v !== '') out[key] = v;
  }

  // Windows has no POSIX modes to check (its ACLs protect the profile folder instead).
  if (out.token !== undefined && process.platform !== 'win32' && (mode & 0o077) !== 0) {
    throw new ReimageError(
      'SERVER_CONFIG_INVALID',
      `The config file ${file} holds a token but can be read by other users (mode ${(mode & 0o777).toString(8).padStart(3, '0')}). Make it private with \`chmod 600 ${file}\`, then run the command again.`,
      { details: { file, mode: (mode & 0o777).toString(8).padStart(3, '0') } },
    );
  }
  return out;
}

/** Two addresses name the same server when their origins and paths agree. */
function sameServer(a: string, b: string): boolean {
  return normalizeServer(a) === normalizeServer(b);
}

function normalizeServer(s: string): string {
  try {
    const u = new URL(s);
    return `${u.origin}${u.pathname.replace(/\/+$/, '')}`;
  } catch {
    return s.trim();
  }
}

function nonEmpty(s: string | undefined): s is string {
  return s !== undefined && s !== '';
}
