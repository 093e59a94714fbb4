import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { createPublicKey, randomBytes, sign, verify, type KeyObject } from 'node:crypto';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { MachinePolicy, PolicyAdvertisement } from '../client/agent-api.js';
import { openRemote } from '../content/remote.js';
import { isReimageError, ReimageError } from '../errors.js';
import { keyIdOf, loadPublicKey } from '../image/library.js';
import { writeFileAtomic } from './files.js';
import type { OutboxEntry, SendBatch } from './outbox.js';

/**
 * Serverless mode (docs/serverless.md): an administrator publishes signed advertisements and
 * their content to a share or a static web server; a machine configured with that location
 * reads its policy from there, and drops its status as files that a server imports later.
 *
 * This module holds the published format (shared with the publisher, src/cli/serverless.ts),
 * the machine's reader and the drop-folder sender.
 *
 *   LOCATION/                                  a complete content store (packs, objects/…)
 *   LOCATION/serverless/advertisements/N.json  a published advertisement (PublishedAdvertisement)
 *   LOCATION/serverless/advertisements/N.json.sig   its signature (PublishedSignature)
 *   LOCATION/serverless/index.json(.sig)       the names published, for http(s) locations
 *   LOCATION/status/<GUID>/…                   the default drop folder (folder locations)
 */

export const ADVERTISEMENTS_DIR = 'serverless/advertisements';
export const INDEX_FILE = 'serverless/index.json';
export const SIGNATURE_SUFFIX = '.sig';
export const ADVERTISEMENT_FORMAT = 'reimage-serverless-advertisement';
export const INDEX_FORMAT = 'reimage-serverless-index';
/** The drop file format, read by src/server/status-import.ts. */
export const DROP_FORMAT = 'reimage-status-drop';
/** Poll period told to the agent: a share has no server to say otherwise. */
const POLL_SECONDS = 900;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const MAX_DOCUMENT = 4 * 1024 * 1024;

/** Who an advertisement is for: entries with an id match that GUID, entries with only a name match that name. */
export interface PublishedTarget {
  id?: string;
  name?: string;
  /** Rollout wave (1-based); machines above the schedule's activeWave wait. */
  wave: number;
}

/** `serverless/advertisements/<name>.json`, signed byte for byte. */
export interface PublishedAdvertisement {
  format: typeof ADVERTISEMENT_FORMAT;
  version: 1;
  publishedAt: string;
  /** After this time machines ignore the document (absent: never expires). */
  expiresAt?: string;
  /** The signing key's id (as `reimage key create` prints it). */
  keyId: string;
  advertisement: {
    id: string;
    name: string;
    availableFrom: string | null;
    deadline: string | null;
    schedule: unknown;
  };
  package: PolicyAdvertisement['package'];
  /** The package image's catalog record and the PE to boot (absent: the agent refuses to deploy). */
  image?: PolicyAdvertisement['image'];
  pe?: PolicyAdvertisement['pe'];
  /** Deployment settings; never with secrets (the publisher refuses those). */
  settings: unknown;
  effectivePolicy: unknown;
  targets: { allMachines: boolean; machines: PublishedTarget[] };
}

/** `serverless/index.json`: the advertisement names, for locations that cannot be listed. */
export interface PublishedIndex {
  format: typeof INDEX_FORMAT;
  version: 1;
  generatedAt: string;
  keyId: string;
  advertisements: string[];
}

/** A `.sig` file. */
export interface PublishedSignature {
  algorithm: 'ed25519';
  keyId: string;
  /** base64 Ed25519 signature of {@link signedStatement}. */
  value: string;
}

/**
 * What a signature covers: a label naming what the bytes are (so a signed index can never
 * pass for an advertisement, nor an image signature for either) and the file's bytes exactly.
 */
export function signedStatement(kind: 'advertisement' | 'index', bytes: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`reimage-serverless-v1 ${kind}\n`), bytes]);
}

/** The `.sig` file for `bytes`. */
export function signPublished(
  kind: 'advertisement' | 'index',
  bytes: Buffer,
  key: KeyObject,
): Buffer {
  const sig: PublishedSignature = {
    algorithm: 'ed25519',
    keyId: keyIdOf(createPublicKey(key)),
    value: sign(null, signedStatement(kind, bytes), key).toString('base64'),
  };
  return Buffer.from(JSON.stringify(sig, null, 2) + '\n');
}

/** Throws PUBLICATION_SIGNATURE_INVALID unless `sigFile` is a valid signature of `bytes` by `trusted`. */
export function checkPublished(
  kind: 'advertisement' | 'index',
  bytes: Buffer,
  sigFile: Buffer | undefined,
  trusted: KeyObject,
  what: string,
): void {
  const want = keyIdOf(trusted);
  const bad = (why: string) =>
    new ReimageError('PUBLICATION_SIGNATURE_INVALID', `${what}: ${why}; it is ignored`, {
      details: { file: what, trusted: want },
    });
  if (sigFile === undefined) throw bad('it has no signature file');
  let sig: Partial<PublishedSignature>;
  try {
    sig = JSON.parse(sigFile.toString('utf8')) as Partial<PublishedSignature>;
  } catch {
    throw bad('its signature file is not JSON');
  }
  if (sig.algorithm !== 'ed25519' || typeof sig.value !== 'string')
    throw bad('its signature file is not an ed25519 signature');
  if (sig.keyId !== want)
    throw bad(`it is signed by key ${sig.keyId}, not the trusted key ${want}`);
  if (!verify(null, signedStatement(kind, bytes), trusted, Buffer.from(sig.value, 'base64')))
    throw bad('the signature does not verify: the file was altered after it was signed');
}

/** The machine as serverless targeting sees it. */
export interface ServerlessMachine {
  guid: string;
  name: string;
  site?: string;
  /** The image the machine runs now: an advertisement of the same image is `skip-same-image`. */
  appliedImageId?: string;
}

export interface ServerlessOptions {
  /**
   * Told about each published advertisement that is not used because it is unsigned, wrongly
   * signed or malformed (default: a line on stderr). Such an advertisement is never deployed.
   */
  onRejected?: (e: ReimageError) => void;
  /**
   * The newest `publishedAt` the machine has accepted per advertisement id (kept across
   * reboots and the wipe): an older copy put back on the share is a replay, left out.
   */
  accepted?: AcceptedPublications;
}

/** The machine's memory of what it accepted from a serverless location. */
export interface AcceptedPublications {
  get(advertisementId: string): string | undefined;
  set(advertisementId: string, publishedAt: string): void;
}

/** {@link AcceptedPublications} in a JSON file (the daemon's is in the kept area). */
export function acceptedPublicationsFile(path: string): AcceptedPublications {
  const load = (): Record<string, string> => {
    try {
      const v: unknown = JSON.parse(readFileSync(path, 'utf8'));
      return isObject(v) ? (v as Record<string, string>) : {};
    } catch {
      return {};
    }
  };
  return {
    get: (id) => {
      const v = load()[id];
      return typeof v === 'string' ? v : undefined;
    },
    set: (id, publishedAt) => {
      const all = load();
      if (all[id] === publishedAt) return;
      all[id] = publishedAt;
      writeFileAtomic(path, `${JSON.stringify(all, null, 2)}\n`, 0o644);
    },
  };
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** A published file that is left out (reported), as against a location that cannot be read (thrown). */
const isRejection = (e: unknown): e is ReimageError =>
  isReimageError(e, 'PUBLICATION_SIGNATURE_INVALID') ||
  isReimageError(e, 'PUBLICATION_INVALID') ||
  isReimageError(e, 'PUBLICATION_STALE');

function stale(what: string, why: string): ReimageError {
  return new ReimageError('PUBLICATION_STALE', `${what}: ${why}; it is ignored`, {
    details: { file: what },
  });
}

function malformed(what: string, why: string): ReimageError {
  return new ReimageError('PUBLICATION_INVALID', `${what}: ${why}; it is ignored`, {
    details: { file: what },
  });
}

/** A folder location's path, or undefined for http(s). */
function folderOf(location: string): string | undefined {
  if (/^https?:\/\//i.test(location)) return undefined;
  return resolve(location.startsWith('file:') ? fileURLToPath(location) : location);
}

/** Checks a verified document's shape: the publisher is trusted, but a newer format is not understood. */
function parseAdvertisement(bytes: Buffer, name: string, what: string): PublishedAdvertisement {
  let doc: unknown;
  try {
    doc = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw malformed(what, 'not JSON');
  }
  if (!isObject(doc) || doc.format !== ADVERTISEMENT_FORMAT || doc.version !== 1)
    throw malformed(what, `not a ${ADVERTISEMENT_FORMAT} document of version 1`);
  const ad = doc.advertisement;
  const pkg = doc.package;
  const targets = doc.targets;
  if (!isObject(ad) || typeof ad.id !== 'string' || ad.name !== name)
    throw malformed(what, `its advertisement is not named ${name} like its file`);
  if (!isObject(pkg) || typeof pkg.imageId !== 'string' || !/^[0-9a-f]{64}$/.test(pkg.imageId))
    throw malformed(what, 'its package has no image id');
  if (!isObject(targets) || !Array.isArray(targets.machines))
    throw malformed(what, 'it has no targets');
  if (typeof doc.publishedAt !== 'string' || Number.isNaN(Date.parse(doc.publishedAt)))
    throw malformed(what, 'it has no publication time');
  if (
    doc.expiresAt !== undefined &&
    (typeof doc.expiresAt !== 'string' || Number.isNaN(Date.parse(doc.expiresAt)))
  )
    throw malformed(what, 'its expiry is not a time');
  return doc as unknown as PublishedAdvertisement;
}

function targetOf(doc: PublishedAdvertisement, m: ServerlessMachine): PublishedTarget | undefined {
  const guid = m.guid.toLowerCase();
  const name = m.name.toLowerCase();
  const hit = doc.targets.machines.find((t) =>
    t.id !== undefined ? t.id.toLowerCase() === guid : t.name?.toLowerCase() === name,
  );
  if (hit) return hit;
  return doc.targets.allMachines ? { wave: 1 } : undefined;
}

/**
 * The machine's policy from a serverless location (a folder, `file://` or `http(s)://` URL).
 * Every advertisement's signature is checked with `cfg.publicKey` (PEM); one that does not
 * verify, or is malformed, is left out and reported to `onRejected`. Content addresses point
 * at the location itself (it is a content store).
 *
 * There is no server key to derive the state-store key from, so each advertisement gets a
 * fresh random key at every read: the agent keeps the key of the deployment it starts (in
 * the deployment folder), and no server can read such a state store back.
 */
export async function readServerlessPolicy(
  cfg: { location: string; publicKey: string },
  machine: ServerlessMachine,
  now: () => Date = () => new Date(),
  opts: ServerlessOptions = {},
): Promise<MachinePolicy> {
  const trusted = loadPublicKey(cfg.publicKey, 'the serverless public key');
  const report =
    opts.onRejected ??
    ((e: ReimageError) => process.stderr.write(`reimage: ${e.code}: ${e.message}\n`));
  const remote = openRemote(cfg.location, { retries: 2, retryForMs: 30_000 });
  const read = async (rel: string): Promise<Buffer | undefined> => {
    try {
      return await remote.readFile(rel);
    } catch (e) {
      if (isReimageError(e, 'DP_FILE_MISSING')) return undefined;
      throw e;
    }
  };
  const folder = folderOf(cfg.location);
  let names: string[];
  if (folder !== undefined) {
    // A share that is not mounted is not "nothing published".
    if (!existsSync(folder))
      throw new ReimageError(
        'DP_UNREACHABLE',
        `the serverless location ${folder} does not exist (is the share mounted?)`,
        { details: { location: cfg.location } },
      );
    try {
      names = readdirSync(join(folder, ADVERTISEMENTS_DIR))
        .filter((f) => f.endsWith('.json'))
        .map((f) => f.slice(0, -'.json'.length))
        .sort();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      names = [];
    }
  } else {
    // A web server cannot be listed: the signed index names what is published.
    const index = await read(INDEX_FILE);
    names = [];
    if (index !== undefined) {
      try {
        checkPublished(
          'index',
          index,
          await read(INDEX_FILE + SIGNATURE_SUFFIX),
          trusted,
          INDEX_FILE,
        );
        let doc: Partial<PublishedIndex> = {};
        try {
          doc = JSON.parse(index.toString('utf8')) as Partial<PublishedIndex>;
        } catch {
          throw malformed(INDEX_FILE, 'not JSON');
        }
        if (doc.format !== INDEX_FORMAT || doc.version !== 1 || !Array.isArray(doc.advertisements))
          throw malformed(INDEX_FILE, `not a ${INDEX_FORMAT} document of version 1`);
        names = doc.advertisements.filter((n): n is string => typeof n === 'string').sort();
      } catch (e) {
        if (!isRejection(e)) throw e;
        report(e);
      }
    }
  }

  const at = now();
  const out: PolicyAdvertisement[] = [];
  for (const name of names) {
    const rel = `${ADVERTISEMENTS_DIR}/${name}.json`;
    try {
      if (!NAME.test(name)) throw malformed(rel, 'not an advertisement name');
      const bytes = await read(rel);
      if (bytes === undefined) throw malformed(rel, 'listed in the index but missing');
      if (bytes.length > MAX_DOCUMENT) throw malformed(rel, `larger than ${MAX_DOCUMENT} bytes`);
      checkPublished('advertisement', bytes, await read(rel + SIGNATURE_SUFFIX), trusted, rel);
      const doc = parseAdvertisement(bytes, name, rel);
      // Signed is not enough: an old signed copy put back on the share (or a copy past its
      // time) must not deploy again.
      if (doc.expiresAt !== undefined && Date.parse(doc.expiresAt) <= at.getTime())
        throw stale(rel, `it expired at ${doc.expiresAt} (publish it again)`);
      const seen = opts.accepted?.get(doc.advertisement.id);
      if (seen !== undefined && Date.parse(doc.publishedAt) < Date.parse(seen))
        throw stale(
          rel,
          `published at ${doc.publishedAt}, before the copy this machine already accepted (${seen}): an older copy put back (a replay)`,
        );
      opts.accepted?.set(doc.advertisement.id, doc.publishedAt);
      const target = targetOf(doc, machine);
      if (!target) continue;
      const schedule = (isObject(doc.advertisement.schedule) ? doc.advertisement.schedule : {}) as {
        activeWave?: number;
      };
      const settings = doc.settings as { options?: { redeploySameImage?: boolean } } | undefined;
      const from = doc.advertisement.availableFrom;
      const state: PolicyAdvertisement['state'] =
        machine.appliedImageId === doc.package.imageId &&
        !(settings?.options?.redeploySameImage ?? false)
          ? 'skip-same-image'
          : from && Date.parse(from) > at.getTime()
            ? 'not-yet-available'
            : target.wave > (schedule.activeWave ?? 1)
              ? 'waiting-for-wave'
              : 'active';
      out.push({
        id: doc.advertisement.id,
        name: doc.advertisement.name,
        state,
        wave: target.wave,
        availableFrom: from,
        deadline: doc.advertisement.deadline,
        package: doc.package,
        image: doc.image ?? null,
        pe: doc.pe ?? null,
        settings: doc.settings,
        effectivePolicy: doc.effectivePolicy,
        schedule: doc.advertisement.schedule,
        stateStoreKey: randomBytes(32).toString('base64'),
        content: [
          {
            distributionPoint: 'serverless',
            address: folder ?? cfg.location,
            site: machine.site ?? '',
            preference: 'serverless',
          },
        ],
      });
    } catch (e) {
      if (!isRejection(e)) throw e;
      report(e);
    }
  }
  return {
    machineId: machine.guid,
    name: machine.name,
    site: machine.site ?? null,
    generatedAt: at.toISOString(),
    pollSeconds: POLL_SECONDS,
    advertisements: out,
  };
}

/**
 * Where a serverless machine drops its status: `dropFolder`, else `status/` in a folder
 * location. An http(s) location needs a drop folder of its own (a web server is read-only).
 */
export function dropFolderOf(cfg: { location: string; dropFolder?: string }): string {
  if (cfg.dropFolder !== undefined) return cfg.dropFolder;
  const folder = folderOf(cfg.location);
  if (folder === undefined)
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `the serverless location ${cfg.location} is a web server: give serverless.dropFolder (a folder or share machines can write) for status`,
    );
  return join(folder, 'status');
}

function writeDurably(path: string, data: Buffer): void {
  const fd = openSync(path, 'wx', 0o644);
  try {
    let off = 0;
    while (off < data.length) off += writeSync(fd, data, off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * A SendBatch that writes each batch as `DIR/<machineGuid>/<firstSeq>-<lastSeq>-<random>.json`:
 * first under a temporary name starting with `.` (which importers skip), then renamed, so a
 * reader never sees half a file; the random part keeps two machines, or two sends of one
 * batch, from ever writing the same name. Sending a batch again writes another file: the
 * importer keeps each (machine, seq) once. The drop folder must exist (publishing makes
 * `status/` in the published folder); the machine's subfolder is made on first use.
 */
export function dropFolderSender(
  dropFolder: string,
  machineGuid: string,
  opts: { machineName?: string } = {},
): SendBatch {
  const dir = join(dropFolder, machineGuid.toLowerCase());
  return async (batch: OutboxEntry[]) => {
    if (batch.length === 0) return;
    const seqs = batch.map((e) => e.seq);
    const doc = {
      format: DROP_FORMAT,
      version: 1,
      machineId: machineGuid.toLowerCase(),
      ...(opts.machineName !== undefined ? { machineName: opts.machineName } : {}),
      writtenAt: new Date().toISOString(),
      messages: batch.map((e) => ({
        seq: e.seq,
        id: e.id,
        time: e.time,
        ...(e.advertisementId !== undefined ? { advertisementId: e.advertisementId } : {}),
        ...(e.properties !== undefined ? { properties: e.properties } : {}),
      })),
    };
    // The drop folder itself is never made here: on a share that is not mounted that would
    // put the status on the machine's own disk, where no server ever reads it.
    if (!existsSync(dropFolder))
      throw new ReimageError(
        'DP_UNREACHABLE',
        `the drop folder ${dropFolder} does not exist (is the share mounted?); the status stays in the outbox`,
        { details: { dropFolder } },
      );
    mkdirSync(dir, { recursive: true });
    const random = randomBytes(8).toString('hex');
    const tmp = join(dir, `.tmp-${random}.json`);
    const final = join(dir, `${Math.min(...seqs)}-${Math.max(...seqs)}-${random}.json`);
    try {
      writeDurably(tmp, Buffer.from(JSON.stringify(doc) + '\n'));
      renameSync(tmp, final);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw e;
    }
    const dfd = openSync(dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  };
}
