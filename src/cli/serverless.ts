/**
 * The publisher's side of serverless mode (docs/serverless.md): `reimage advertisement
 * publish` writes an advertisement, signed with the administrator's Ed25519 key, and its
 * content to a folder (a share, or the root of a static web server), and `reimage status
 * import` asks the server to read the status files machines dropped.
 */
import { type Command } from 'commander';
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
import { randomBytes, type KeyObject } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import {
  ADVERTISEMENT_FORMAT,
  ADVERTISEMENTS_DIR,
  INDEX_FILE,
  INDEX_FORMAT,
  SIGNATURE_SUFFIX,
  signPublished,
  type PublishedAdvertisement,
  type PublishedIndex,
  type PublishedTarget,
} from '../agent/serverless.js';
import type { PolicyAdvertisement } from '../client/agent-api.js';
import type { ApiClient } from '../client/http.js';
import type { ConnectionOptions } from './admin.js';
import { openRemote, type RemoteStore } from '../content/remote.js';
import { replicateImage, type ReplicateResult } from '../content/replicate.js';
import { isReimageError, ReimageError } from '../errors.js';
import { keyIdOf, loadPrivateKey } from '../image/library.js';
import { parseDuration } from '../agent/daemon-policy.js';
import { createPublicKey } from 'node:crypto';

/** What GET /api/v1/advertisements/:ref/publication answers (src/server/routes/publication.ts). */
export interface Publication {
  advertisement: {
    id: string;
    name: string;
    availableFrom: string | null;
    deadline: string | null;
    schedule: unknown;
  };
  collection: { id: string; name: string };
  package: PolicyAdvertisement['package'];
  /** The package image's catalog record and the PE, as the machine's policy would send them. */
  image: PolicyAdvertisement['image'];
  pe: PolicyAdvertisement['pe'];
  packageDocument: unknown;
  settings: unknown;
  effectivePolicy: unknown;
  members: Array<{ id: string; name: string; wave: number }>;
  sources: Array<{ distributionPoint: string; address: string }>;
}

export interface PublishOptions {
  publication: Publication;
  /**
   * Where the image is copied from, tried in order: a content store folder (the server's
   * library: locked against gc while read) or any RemoteStore (a DP).
   */
  from: Array<string | RemoteStore>;
  /** The folder to publish to; made a content store if it is not one. */
  to: string;
  key: KeyObject;
  /** Target every machine that reads the location (not only the collection's members). */
  allMachines?: boolean;
  /** More targets: machine GUIDs or names (machines that never enrolled are known by name). */
  machines?: string[];
  /** How long machines accept the document (default 90 days; null: it never expires). */
  validForMs?: number | null;
  now?: () => Date;
}

/** `--valid-for` when not given: a copy put back on the share after this is refused anyway. */
export const DEFAULT_VALID_FOR = '90d';

export interface PublishResult {
  /** The document written, store-relative. */
  document: string;
  targets: number;
  allMachines: boolean;
  /** When machines stop accepting it (absent: never). */
  expiresAt?: string;
  copy: ReplicateResult;
  /** The PE image's copy (absent when the server found no PE: machines then refuse the advertisement). */
  peCopy?: ReplicateResult;
  /** The source the image came from. */
  from: string;
}

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Writes a file so that a reader sees the old content or the new, never a mix. */
function writeAtomic(path: string, data: Buffer): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = join(dirname(path), `.tmp-${randomBytes(8).toString('hex')}`);
  const fd = openSync(tmp, 'wx', 0o644);
  try {
    let off = 0;
    while (off < data.length) off += writeSync(fd, data, off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  const dfd = openSync(dirname(path), 'r');
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}

/** The document as it is signed: the bytes on the share are exactly these. */
export function publishedDocument(o: PublishOptions): Buffer {
  const p = o.publication;
  const targets: PublishedTarget[] = p.members.map((m) => ({
    id: m.id,
    name: m.name,
    wave: m.wave,
  }));
  for (const t of o.machines ?? []) {
    const known = targets.some((x) =>
      GUID.test(t) ? x.id === t.toLowerCase() : x.id === undefined && x.name === t,
    );
    if (!known)
      targets.push(GUID.test(t) ? { id: t.toLowerCase(), wave: 1 } : { name: t, wave: 1 });
  }
  const now = (o.now ?? (() => new Date()))();
  const validFor = o.validForMs === undefined ? parseDuration(DEFAULT_VALID_FOR)! : o.validForMs;
  const doc: PublishedAdvertisement = {
    format: ADVERTISEMENT_FORMAT,
    version: 1,
    publishedAt: now.toISOString(),
    ...(validFor !== null ? { expiresAt: new Date(now.getTime() + validFor).toISOString() } : {}),
    keyId: keyIdOf(createPublicKey(o.key)),
    advertisement: p.advertisement,
    package: p.package,
    image: p.image ?? null,
    pe: p.pe ?? null,
    settings: p.settings,
    effectivePolicy: p.effectivePolicy,
    targets: { allMachines: o.allMachines ?? false, machines: targets },
  };
  return Buffer.from(JSON.stringify(doc, null, 2) + '\n');
}

/**
 * Publishes: copies the image, the PE image and the package document into `to` like a DP
 * replication (only what it lacks), then writes the signed advertisement and, last, the signed index.
 * A machine reading meanwhile sees the old advertisement or the new one once its signature
 * follows (between the two renames the pair does not verify, and the advertisement is
 * skipped for that one poll).
 */
export async function publishAdvertisement(o: PublishOptions): Promise<PublishResult> {
  const p = o.publication;
  if (o.from.length === 0)
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `package ${p.package.name}@${p.package.version} is on no distribution point: give --from (the server's library folder, or a content store that holds image ${p.package.imageId})`,
    );
  if (p.members.length === 0 && !o.allMachines && (o.machines ?? []).length === 0)
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `collection ${p.collection.name} has no members now: name machines with --machine, or target every machine that reads the folder with --all-machines`,
    );
  const to = resolve(o.to);
  const bytes = publishedDocument(o);
  const pkgDoc = Buffer.from(JSON.stringify(p.packageDocument, null, 2) + '\n');
  let copy: ReplicateResult | undefined;
  let peCopy: ReplicateResult | undefined;
  let from = '';
  const failures: string[] = [];
  for (const source of o.from) {
    const name = typeof source === 'string' ? source : source.name;
    try {
      const c = await replicateImage({
        from: source,
        to,
        imageId: p.package.imageId,
        extraObjects: [{ path: `objects/packages/${p.package.id}.json`, data: pkgDoc }],
      });
      // The PE the machine boots in phase 2 comes from the same place (the server's library
      // holds both; a DP holds the PE once a package using it was distributed there).
      if (p.pe) peCopy = await replicateImage({ from: source, to, imageId: p.pe.imageId });
      copy = c;
      from = name;
      break;
    } catch (e) {
      if (!isReimageError(e) || o.from.length === 1) throw e;
      failures.push(`${name}: ${e.message}`);
    }
  }
  if (!copy)
    throw new ReimageError(
      'DISTRIBUTION_SOURCE_NOT_READY',
      `no source could provide image ${p.package.imageId}${p.pe ? ` and PE ${p.pe.imageId}` : ''}: ${failures.join('; ')}`,
    );
  // The default drop folder: machines never make it themselves (docs/serverless.md).
  mkdirSync(join(to, 'status'), { recursive: true });
  const rel = `${ADVERTISEMENTS_DIR}/${p.advertisement.name}.json`;
  writeAtomic(join(to, rel), bytes);
  writeAtomic(join(to, rel + SIGNATURE_SUFFIX), signPublished('advertisement', bytes, o.key));
  writeIndex(to, o.key, o.now);
  const doc = JSON.parse(bytes.toString('utf8')) as PublishedAdvertisement;
  return {
    document: rel,
    targets: doc.targets.machines.length,
    allMachines: doc.targets.allMachines,
    ...(doc.expiresAt ? { expiresAt: doc.expiresAt } : {}),
    copy,
    ...(peCopy ? { peCopy } : {}),
    from,
  };
}

/** Removes a published advertisement (document, then signature) and rewrites the index; false when it was not there. */
export function unpublishAdvertisement(to: string, name: string, key: KeyObject): boolean {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(name))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${JSON.stringify(name)} is not an advertisement name`,
    );
  const doc = join(resolve(to), ADVERTISEMENTS_DIR, `${name}.json`);
  const was = existsSync(doc);
  rmSync(doc, { force: true });
  rmSync(doc + SIGNATURE_SUFFIX, { force: true });
  writeIndex(resolve(to), key);
  return was;
}

/** Rewrites the signed index from the advertisements in the folder (web servers cannot be listed). */
export function writeIndex(to: string, key: KeyObject, now?: () => Date): void {
  let names: string[] = [];
  try {
    names = readdirSync(join(to, ADVERTISEMENTS_DIR))
      .filter((f) => f.endsWith('.json') && !f.startsWith('.'))
      .map((f) => f.slice(0, -'.json'.length))
      .sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  const index: PublishedIndex = {
    format: INDEX_FORMAT,
    version: 1,
    generatedAt: (now ?? (() => new Date()))().toISOString(),
    keyId: keyIdOf(createPublicKey(key)),
    advertisements: names,
  };
  const bytes = Buffer.from(JSON.stringify(index, null, 2) + '\n');
  writeAtomic(join(to, INDEX_FILE), bytes);
  writeAtomic(join(to, INDEX_FILE + SIGNATURE_SUFFIX), signPublished('index', bytes, key));
}

/** Options of the two commands (connection flags come from admin.ts). */
interface PublishFlags extends ConnectionOptions {
  to: string;
  key: string;
  from?: string[];
  allMachines?: boolean;
  machine?: string[];
  validFor?: string;
  json?: boolean;
}

/** admin.ts's command builder: connection flags, `--json`, and a connected client for the action. */
export type ServerCommandBuilder = <A extends unknown[], O extends ConnectionOptions>(
  parent: Command,
  spec: string,
  description: string,
  configure: (cmd: Command) => Command,
  action: (api: ApiClient, ...args: [...A, O]) => Promise<void>,
) => Command;

const collect = (v: string, prev: string[] = []) => [...prev, v];

/**
 * Adds `advertisement publish` and `status import` to the admin nouns. `serverCommand` is
 * admin.ts's builder (connection flags, `--json`, a connected client).
 */
export function registerServerlessCommands(
  nouns: { advertisement: Command; status: Command },
  serverCommand: ServerCommandBuilder,
  print: (o: { json?: boolean }, doc: unknown, text: () => string | string[]) => void,
): void {
  serverCommand<[string], PublishFlags>(
    nouns.advertisement,
    'publish <ref>',
    'publish the advertisement and its content, signed, to a share or web-server folder for machines that work without the server (docs/serverless.md)',
    (c) =>
      c
        .requiredOption('--to <dir>', 'the folder to publish to (a share, or a web server root)')
        .requiredOption(
          '--key <file>',
          'the Ed25519 private key to sign with (`reimage key create`)',
        )
        .option(
          '--from <store>',
          "where to copy the image from: the server's library folder, a DP folder or http(s) URL (default: the DPs that hold the package); repeatable",
          collect,
        )
        .option(
          '--all-machines',
          'for every machine that reads the folder, not only the collection',
        )
        .option('--machine <guid-or-name>', 'also for this machine; repeatable', collect)
        .option(
          '--valid-for <duration>',
          `how long machines accept it, e.g. "30d", or "never" (default ${DEFAULT_VALID_FOR}); publish again to extend`,
        ),
    async (api, r, o) => {
      let validForMs: number | null | undefined;
      if (o.validFor === 'never') validForMs = null;
      else if (o.validFor !== undefined) {
        validForMs = parseDuration(o.validFor);
        if (validForMs === undefined || validForMs === 0)
          throw new ReimageError(
            'INVALID_ARGUMENT',
            `--valid-for ${JSON.stringify(o.validFor)}: give a duration such as "30d", "12h" or "90d6h", or "never"`,
          );
      }
      if (!existsSync(o.key))
        throw new ReimageError('INVALID_ARGUMENT', `--key ${o.key}: no such file`);
      const key = loadPrivateKey(readFileSync(o.key), o.key);
      const publication = await api.request<Publication>(
        'GET',
        `/api/v1/advertisements/${encodeURIComponent(r)}/publication`,
      );
      const from: Array<string | RemoteStore> = o.from?.length
        ? o.from.map((f) =>
            /^https?:\/\//i.test(f)
              ? openRemote(f)
              : existsSync(join(f, 'reimage-store.json'))
                ? f
                : openRemote(f),
          )
        : publication.sources.flatMap((s) => {
            try {
              return [openRemote(s.address)];
            } catch {
              return []; // e.g. an smb:// DP: not readable from here
            }
          });
      const res = await publishAdvertisement({
        publication,
        from,
        to: o.to,
        key,
        ...(o.allMachines ? { allMachines: true } : {}),
        ...(o.machine ? { machines: o.machine } : {}),
        ...(validForMs !== undefined ? { validForMs } : {}),
      });
      print(o, { published: res }, () => [
        `published ${publication.advertisement.name} to ${resolve(o.to)}/${res.document}`,
        `  for ${res.allMachines ? 'every machine reading the folder' : `${res.targets} machine(s)`}, ${res.expiresAt ? `until ${res.expiresAt}` : 'with no expiry'}; image from ${res.from}: ${res.copy.filesCopied} file(s) copied, ${res.copy.filesSkipped} already there`,
        publication.pe
          ? `  PE ${publication.pe.name} (${publication.pe.imageId.slice(0, 12)}): ${res.peCopy?.filesCopied ?? 0} file(s) copied, ${res.peCopy?.filesSkipped ?? 0} already there`
          : '  warning: the server found no PE image for this package: machines will refuse to deploy it (register a PE image and publish again)',
      ]);
    },
  );

  nouns.advertisement
    .command('unpublish <name>')
    .description(
      'remove a published advertisement from a serverless folder and re-sign its index (no server needed; the content stays for `reimage store gc`)',
    )
    .requiredOption('--to <dir>', 'the folder it was published to')
    .requiredOption('--key <file>', 'the Ed25519 private key that signs the index')
    .option('--json', 'print one JSON document')
    .action((name: string, o: { to: string; key: string; json?: boolean }) => {
      const key = loadPrivateKey(readFileSync(o.key), o.key);
      const removed = unpublishAdvertisement(o.to, name, key);
      print(o, { unpublished: { name, removed } }, () =>
        removed
          ? `unpublished ${name} from ${resolve(o.to)}`
          : `${name} was not published in ${resolve(o.to)}; index re-signed`,
      );
    });

  serverCommand<[string], ConnectionOptions>(
    nouns.status,
    'import <folder>',
    'import the status files serverless machines dropped in a folder the server can read (admins)',
    (c) => c,
    async (api, folder, o) => {
      const r = await api.request<{
        files: number;
        accepted: number;
        duplicates: number;
        machinesCreated: string[];
        rejected: Array<{ file: string; code: string; message: string }>;
      }>('POST', '/api/v1/status/import', { body: { folder: resolve(folder) } });
      print(o, { imported: r }, () => [
        `imported ${r.files} file(s): ${r.accepted} new message(s), ${r.duplicates} already there; ${r.machinesCreated.length} machine(s) recorded`,
        ...r.rejected.map((x) => `  rejected ${x.file}: ${x.code}: ${x.message}`),
      ]);
    },
  );
}
