import { mkdirSync, readdirSync, readFileSync, renameSync, statSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import type { Catalog, Machine } from '../catalog/catalog.js';
import type { IngestMessage } from '../catalog/status-store.js';
import { isReimageError, ReimageError } from '../errors.js';
import { newSecret, secretHash } from './credentials.js';
import { checkStatusBatch, type IncomingStatus } from './status-ingest.js';

/**
 * Imports the status files serverless machines dropped (docs/serverless.md, "The drop
 * folder") into the same timelines as POST /api/v1/client/status: the same checks
 * (status-ingest.ts) and the same idempotent ingest by (machine, seq), so a file imported
 * twice, or a batch a machine wrote twice, adds nothing the second time.
 *
 *   DIR/<machine GUID>/<firstSeq>-<lastSeq>-<random>.json   a batch, written by dropFolderSender
 *   DIR/.imported/<machine GUID>/…                          moved here once ingested
 *   DIR/.rejected/<machine GUID>/…                          malformed files, with the reason in the report
 *
 * Files are imported per machine in seq order; a file is moved only after its messages are
 * committed (a crash in between imports it again, harmlessly).
 */

export const DROP_FORMAT = 'reimage-status-drop';
export const IMPORTED_DIR = '.imported';
export const REJECTED_DIR = '.rejected';

const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const DROP_FILE = /^(\d{1,10})-(\d{1,10})-[0-9a-z]{1,64}\.json$/;
const MAX_FILE = 4 * 1024 * 1024;
const MAX_BATCH = 1000;
const MAX_NAME = 255;

export interface StatusImportReport {
  /** Files ingested (and moved to `.imported/`). */
  files: number;
  accepted: number;
  duplicates: number;
  /** GUIDs of machines the server did not know, recorded by this import. */
  machinesCreated: string[];
  /** Files moved to `.rejected/`, each with why. */
  rejected: Array<{ file: string; code: string; message: string }>;
}

/** The drop file as dropFolderSender writes it (src/agent/serverless.ts). */
interface DropFile {
  machineId: string;
  machineName?: string;
  messages: IncomingStatus[];
}

function invalid(file: string, why: string): ReimageError {
  return new ReimageError('STATUS_DROP_INVALID', `${file}: ${why}`, { details: { file } });
}

const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** Checks a drop file's shape (the route's schema does this for the API). */
export function parseDropFile(text: string, file: string, folderGuid: string): DropFile {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw invalid(file, `not JSON (${(e as Error).message})`);
  }
  if (!isObject(doc) || doc.format !== DROP_FORMAT || doc.version !== 1)
    throw invalid(file, `not a ${DROP_FORMAT} document of version 1`);
  const { machineId, machineName, messages } = doc;
  if (typeof machineId !== 'string' || machineId.toLowerCase() !== folderGuid)
    throw invalid(file, `machineId ${JSON.stringify(machineId)} is not the folder's GUID`);
  if (
    machineName !== undefined &&
    (typeof machineName !== 'string' || machineName.length < 1 || machineName.length > MAX_NAME)
  )
    throw invalid(file, `machineName must be 1-${MAX_NAME} characters`);
  if (!Array.isArray(messages) || messages.length < 1 || messages.length > MAX_BATCH)
    throw invalid(file, `messages must be a list of 1-${MAX_BATCH} status messages`);
  const out: IncomingStatus[] = messages.map((m: unknown, i) => {
    const at = `messages/${i}`;
    if (!isObject(m)) throw invalid(file, `${at} is not an object`);
    const extra = Object.keys(m).filter(
      (k) => !['seq', 'id', 'time', 'advertisementId', 'properties', 'key'].includes(k),
    );
    if (extra.length > 0) throw invalid(file, `${at} has unknown fields: ${extra.join(', ')}`);
    const { seq, id, time, advertisementId, properties } = m;
    if (!Number.isSafeInteger(seq) || (seq as number) < 1 || (seq as number) > 2_000_000_000)
      throw invalid(file, `${at}/seq must be a whole number from 1 to 2000000000`);
    if (!Number.isSafeInteger(id) || (id as number) < 1 || (id as number) > 99999)
      throw invalid(file, `${at}/id must be a whole number from 1 to 99999`);
    if (
      typeof time !== 'string' ||
      !/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(time) ||
      Number.isNaN(Date.parse(time))
    )
      throw invalid(file, `${at}/time must be an ISO 8601 date-time`);
    if (
      advertisementId !== undefined &&
      (typeof advertisementId !== 'string' || advertisementId.length > 64)
    )
      throw invalid(file, `${at}/advertisementId must be text of at most 64 characters`);
    if (properties !== undefined && !isObject(properties))
      throw invalid(file, `${at}/properties must be an object`);
    if (properties && Object.keys(properties).some((k) => k.length > 64))
      throw invalid(file, `${at}/properties has a name longer than 64 characters`);
    return {
      seq: seq as number,
      id: id as number,
      time,
      ...(advertisementId !== undefined ? { advertisementId } : {}),
      ...(properties !== undefined ? { properties } : {}),
    };
  });
  return {
    machineId: folderGuid,
    ...(typeof machineName === 'string' ? { machineName } : {}),
    messages: out,
  };
}

function list(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
}

function moveTo(dir: string, area: string, guid: string, file: string): void {
  mkdirSync(join(dir, area, guid), { recursive: true });
  renameSync(join(dir, guid, file), join(dir, area, guid, file));
}

/**
 * Ingests every drop file under `dir`. A machine the server does not know (it never enrolled:
 * it works only serverless) is recorded with the GUID of its folder, the name its files
 * carry (else `serverless-<first 8 digits>`) and the tag `serverless`; it has no credential
 * anyone knows, so it cannot call the API until it enrolls.
 */
export async function importStatusDrop(
  catalog: Catalog,
  dir: string,
  /** Stores a batch like the client API does (the status service: timelines and summaries). */
  ingest: (
    machine: Machine,
    messages: IngestMessage[],
  ) => Promise<{ accepted: number; duplicates: number }>,
  actor = 'status-import',
): Promise<StatusImportReport> {
  if (!isAbsolute(dir))
    throw new ReimageError(
      'INVALID_ARGUMENT',
      `${dir}: give the drop folder as an absolute path on the server`,
      { details: { folder: dir } },
    );
  try {
    if (!statSync(dir).isDirectory()) throw new Error('not a folder');
  } catch (e) {
    throw new ReimageError('INVALID_ARGUMENT', `${dir} is not a readable drop folder`, {
      cause: e,
      details: { folder: dir },
    });
  }
  const report: StatusImportReport = {
    files: 0,
    accepted: 0,
    duplicates: 0,
    machinesCreated: [],
    rejected: [],
  };
  for (const entry of list(dir)) {
    if (entry.startsWith('.') || !GUID.test(entry)) continue;
    if (!statSync(join(dir, entry)).isDirectory()) continue;
    const guid = entry.toLowerCase();
    const files = list(join(dir, entry))
      .filter((f) => !f.startsWith('.'))
      .map((f) => ({ f, m: DROP_FILE.exec(f) }))
      // Oldest messages first: the timeline fills in order.
      .sort((a, b) => Number(a.m?.[1] ?? 0) - Number(b.m?.[1] ?? 0) || (a.f < b.f ? -1 : 1));
    for (const { f, m } of files) {
      const rel = `${entry}/${f}`;
      try {
        if (!m) throw invalid(rel, 'not named <firstSeq>-<lastSeq>-<random>.json');
        const path = join(dir, entry, f);
        const st = statSync(path);
        if (!st.isFile()) throw invalid(rel, 'not a file');
        if (st.size > MAX_FILE) throw invalid(rel, `larger than ${MAX_FILE} bytes`);
        const drop = parseDropFile(readFileSync(path, 'utf8'), rel, guid);
        const messages = checkStatusBatch(drop.messages);
        const created = await catalog.transaction(async (tx) => {
          let created = false;
          try {
            await tx.getMachine(guid);
          } catch (e) {
            if (!isReimageError(e, 'NOT_FOUND')) throw e;
            const name = drop.machineName ?? `serverless-${guid.slice(0, 8)}`;
            await tx.createMachine({
              id: guid,
              name,
              site: null,
              // Nobody knows this credential: the machine cannot log in until it enrolls.
              credentialHash: secretHash(newSecret('rim')),
              inventory: {},
              clientVersion: null,
              appliedImageId: null,
            });
            await tx.updateMachine(guid, { tags: ['serverless'] });
            await tx.audit({
              actor,
              action: 'create',
              kind: 'machine',
              target: `${name} ${guid}`,
              summary: 'recorded from serverless status files',
            });
            created = true;
          }
          return created;
        });
        const r = { ...(await ingest(await catalog.getMachine(guid), messages)), created };
        moveTo(dir, IMPORTED_DIR, entry, f);
        report.files++;
        report.accepted += r.accepted;
        report.duplicates += r.duplicates;
        if (r.created) report.machinesCreated.push(guid);
      } catch (e) {
        if (!isReimageError(e) || e.code === 'DATABASE_ERROR' || e.code === 'INTERNAL') throw e;
        report.rejected.push({ file: rel, code: e.code, message: e.message });
        moveTo(dir, REJECTED_DIR, entry, f);
      }
    }
  }
  return report;
}
