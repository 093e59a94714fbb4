/**
 * Bad input to the management API: every request in the table is refused with its HTTP
 * status, its stable error code and a message that says what was wrong, in the one error
 * body `{ error: { code, message, details } }`, and changes nothing: every catalog table is
 * the same after the request as before it. Runs against SQLite and PostgreSQL.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { before, test } from 'node:test';
import type { Collection, ImageRecord, PackageRecord, Role } from '../src/catalog/catalog.js';
import type { ErrorCode } from '../src/errors.js';
import { errorCodes } from '../src/errors.js';
import { newSecret, secretHash } from '../src/server/credentials.js';
import {
  addImage,
  createAdvertisement,
  createCollection,
  createDp,
  createEnrollmentToken,
  createPackage,
  enrollMachine,
  expectStatus,
  packageFiles,
  range,
  snapshotCatalog,
  statusMessages,
  type EnrolledMachine,
  type PackageFiles,
} from './support/fixtures.js';
import { forEachDatabase, type TestServer } from './support/server.js';

/** What the table's requests refer to, made once per database. */
interface World {
  image: ImageRecord;
  /** A package an advertisement uses (requires permission, 2d postponement, no decline). */
  used: PackageRecord;
  usedFiles: PackageFiles;
  /** A package nothing uses. */
  free: PackageRecord;
  freeFiles: PackageFiles;
  usedCollection: Collection;
  freeCollection: Collection;
  a: EnrolledMachine;
  b: EnrolledMachine;
  revokedToken: string;
  usedUpToken: string;
  expiredToken: string;
  expiredApiToken: string;
  disabledUserToken: string;
}

interface Request {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  url: string;
  /** A JSON body. */
  body?: unknown;
  /** A body sent as is, with `contentType`. */
  raw?: string | Buffer;
  contentType?: string;
  /** A bearer credential; null sends none. Default: the token of `role` (default admin). */
  token?: string | null;
  /** A whole Authorization header instead. */
  authorization?: string;
  role?: Role;
}

interface BadInput {
  name: string;
  request: (w: World) => Request;
  expectStatus: number;
  expectCode: ErrorCode;
  /** A fragment the message must hold. */
  expectMessage?: string | RegExp;
  /** For a document error: the file the message must name, with a line number. */
  file?: string;
}

const DEF_FILE = 'bad.package.yaml';
const SET_FILE = 'bad.deploy.yaml';

/** A package definition as YAML text; `extra` lines are appended, `image` replaces the image block. */
function defYaml(
  o: { name?: string; version?: string; image?: string; extra?: string; kind?: string } = {},
  w?: World,
): string {
  return [
    'apiVersion: reimage/v1',
    `kind: ${o.kind ?? 'PackageDefinition'}`,
    `name: ${o.name ?? 'bad-pkg'}`,
    `version: ${o.version ?? "'1.0'"}`,
    o.image ?? `image:\n  name: ${w?.image.name ?? 'img'}`,
    o.extra ?? '',
  ].join('\n');
}

const SETTINGS_OK = [
  'apiVersion: reimage/v1',
  'kind: DeploymentSettings',
  'options:',
  '  requireUserPermission: true',
  '  whenNoAnswer: postpone',
  '',
].join('\n');

function setYaml(body: string): string {
  return `apiVersion: reimage/v1\nkind: DeploymentSettings\n${body}\n`;
}

function pkgBody(definition: string, settings = SETTINGS_OK): Record<string, string> {
  return { definition, settings, definitionFile: DEF_FILE, settingsFile: SET_FILE };
}

const newPackage = (definition: string, settings?: string): Request => ({
  method: 'POST',
  url: '/api/v1/packages',
  role: 'operator',
  body: pkgBody(definition, settings),
});

const newAd = (w: World, body: Record<string, unknown>): Request => ({
  method: 'POST',
  url: '/api/v1/advertisements',
  role: 'operator',
  body: { name: 'bad-ad', package: w.free.id, collection: w.freeCollection.name, ...body },
});

const newDp = (body: Record<string, unknown>): Request => ({
  method: 'POST',
  url: '/api/v1/distribution-points',
  role: 'operator',
  body: { name: 'bad-dp', address: 'https://dp.example.com/x', site: 'PARIS', ...body },
});

const status = (w: World, body: Record<string, unknown>, as = w.a): Request => ({
  method: 'POST',
  url: '/api/v1/client/status',
  token: as.credential,
  body: { machineId: as.id, ...body },
});

const enroll = (token: string, extra: Record<string, unknown> = {}): Request => ({
  method: 'POST',
  url: '/api/v1/client/enroll',
  token: null,
  body: { token, name: 'bad-machine', inventory: { os: 'debian' }, ...extra },
});

const badInputs: BadInput[] = [
  // ---- package documents: malformed YAML
  {
    name: 'definition indented with a tab',
    request: (w) => newPackage(defYaml({ image: `image:\n\tname: ${w.image.name}` }, w)),
    expectStatus: 400,
    expectCode: 'YAML_INVALID',
    file: DEF_FILE,
  },
  {
    name: 'definition with an unclosed quote',
    request: (w) => newPackage(defYaml({ version: "'1.0" }, w)),
    expectStatus: 400,
    expectCode: 'YAML_INVALID',
    file: DEF_FILE,
  },
  {
    name: 'definition with a duplicate key',
    request: (w) => newPackage(defYaml({ extra: 'name: again' }, w)),
    expectStatus: 400,
    expectCode: 'YAML_INVALID',
    expectMessage: 'Map keys must be unique: "name" appears twice',
    file: DEF_FILE,
  },
  {
    name: 'settings indented with a tab',
    request: (w) => newPackage(defYaml({}, w), setYaml('options:\n\tallowDecline: true')),
    expectStatus: 400,
    expectCode: 'YAML_INVALID',
    file: SET_FILE,
  },
  {
    name: 'settings with an unclosed double quote',
    request: (w) =>
      newPackage(defYaml({}, w), setYaml('options:\n  postponement:\n    maximum: "2d')),
    expectStatus: 400,
    expectCode: 'YAML_INVALID',
    file: SET_FILE,
  },
  {
    name: 'settings with a duplicate key',
    request: (w) =>
      newPackage(defYaml({}, w), setYaml('options:\n  allowDecline: false\n  allowDecline: true')),
    expectStatus: 400,
    expectCode: 'YAML_INVALID',
    expectMessage: 'Map keys must be unique: "allowDecline" appears twice',
    file: SET_FILE,
  },
  {
    name: 'definition that is two YAML documents',
    request: (w) => newPackage(`${defYaml({}, w)}\n---\n${defYaml({}, w)}`),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: '---',
    file: DEF_FILE,
  },
  // ---- package documents: schema violations
  {
    name: 'unknown key in the definition, with a suggestion',
    request: (w) => newPackage(defYaml({ extra: 'descripton: typo' }, w)),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: /\/descripton: unknown key "descripton"; did you mean "description"\?/,
    file: DEF_FILE,
  },
  {
    name: 'unknown key in the settings, with a suggestion',
    request: (w) => newPackage(defYaml({}, w), setYaml('options:\n  requireUserPermision: true')),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: /did you mean "requireUserPermission"/,
    file: SET_FILE,
  },
  {
    name: 'version of the wrong type (a number)',
    request: (w) => newPackage(defYaml({ version: '12.5' }, w)),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: /\/version: must be a string \(write it in quotes: "12.5"\)/,
    file: DEF_FILE,
  },
  {
    name: 'settings value of the wrong type',
    request: (w) => newPackage(defYaml({}, w), setYaml('rollback:\n  retainDays: seven')),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: '/rollback/retainDays: must be a whole number',
    file: SET_FILE,
  },
  {
    name: 'definition without the required image',
    request: () => newPackage(defYaml({ image: '' })),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'missing: the key "image" is required',
    file: DEF_FILE,
  },
  {
    name: 'definition of the wrong kind',
    request: (w) => newPackage(defYaml({ kind: 'DeploymentSettings' }, w)),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: '/kind: must be "PackageDefinition"',
    file: DEF_FILE,
  },
  {
    name: 'bad enum value (format)',
    request: (w) => newPackage(defYaml({ extra: 'format: zip' }, w)),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: /\/format: must be one of native, opaque/,
    file: DEF_FILE,
  },
  {
    name: 'bad enum value (whenNoAnswer)',
    request: (w) => newPackage(defYaml({}, w), setYaml('options:\n  whenNoAnswer: maybe')),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: /\/options\/whenNoAnswer: must be one of install, postpone, decline/,
    file: SET_FILE,
  },
  {
    name: 'bad duration',
    request: (w) =>
      newPackage(defYaml({}, w), setYaml('options:\n  postponement:\n    maximum: 3 days')),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: /\/options\/postponement\/maximum: must be a duration/,
    file: SET_FILE,
  },
  {
    name: 'permission required but whenNoAnswer install',
    request: (w) =>
      newPackage(
        defYaml({}, w),
        setYaml('options:\n  requireUserPermission: true\n  whenNoAnswer: install'),
      ),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage:
      /\/options\/whenNoAnswer: must be one of postpone, decline when requireUserPermission/,
    file: SET_FILE,
  },
  {
    name: 'image id that is not 64 hex digits',
    request: () => newPackage(defYaml({ image: 'image:\n  id: ABCDEF' })),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: '/image/id: must be an image id: 64 lowercase hex digits',
    file: DEF_FILE,
  },
  {
    name: 'both image id and image name',
    request: (w) =>
      newPackage(defYaml({ image: `image:\n  id: ${w.image.id}\n  name: ${w.image.name}` })),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: '/image: must give exactly one of name, id',
    file: DEF_FILE,
  },
  {
    name: 'unknown migration rule set',
    request: (w) => newPackage(defYaml({}, w), setYaml('migration:\n  ruleSets: [user-acounts]')),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'did you mean "user-accounts"?',
    file: SET_FILE,
  },
  {
    name: 'local state store that the wipe deletes',
    request: (w) =>
      newPackage(defYaml({}, w), setYaml('stateStore:\n  type: local\n  path: /var/tmp/state')),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: '/stateStore/path: must keep the local state store /var/tmp/state',
    file: SET_FILE,
  },
  {
    name: 'an empty settings file',
    request: (w) => newPackage(defYaml({}, w), '# nothing\n'),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: `${SET_FILE} /: must be a DeploymentSettings document (the file is empty)`,
  },
  {
    name: 'a secret marker in a new package (nothing stored to keep)',
    request: (w) =>
      newPackage(defYaml({}, w), setYaml('machineState:\n  productKey:\n    set: { secret: set }')),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: `${SET_FILE} /machineState/productKey/set: must be given: no secret is stored to keep`,
  },
  // ---- package requests
  {
    name: 'package naming an image the catalog does not have',
    request: () => newPackage(defYaml({ image: 'image:\n  name: no-such-image' })),
    expectStatus: 400,
    expectCode: 'REFERENCE_UNKNOWN',
    expectMessage: `${DEF_FILE} /image: no image 'no-such-image' in the catalog`,
  },
  {
    name: 'package with the name and version of an existing one',
    request: (w) => ({
      method: 'POST',
      url: '/api/v1/packages',
      role: 'operator',
      body: w.freeFiles,
    }),
    expectStatus: 409,
    expectCode: 'ALREADY_EXISTS',
    expectMessage: "A package named 'free-pkg@1.0' already exists",
  },
  {
    name: 'package request body without settings',
    request: (w) => ({
      method: 'POST',
      url: '/api/v1/packages',
      role: 'operator',
      body: { definition: defYaml({}, w) },
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: "body: missing required property 'settings'",
  },
  {
    name: 'package request body with an unknown property',
    request: (w) => ({
      method: 'POST',
      url: '/api/v1/packages',
      role: 'operator',
      body: { ...pkgBody(defYaml({}, w)), secrets: 'x' },
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: "unknown property 'secrets'",
  },
  {
    name: 'package definition sent as an object instead of file text',
    request: () => ({
      method: 'POST',
      url: '/api/v1/packages',
      role: 'operator',
      body: { definition: { name: 'x' }, settings: SETTINGS_OK },
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/definition: must be string',
  },
  {
    name: "update changing the package's name",
    request: (w) => ({
      method: 'PUT',
      url: `/api/v1/packages/${w.free.id}`,
      role: 'operator',
      body: { ...w.freeFiles, definition: w.freeFiles.definition.replace('free-pkg', 'other-pkg') },
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'name and version identify the package and cannot change (free-pkg@1.0)',
  },
  {
    name: "update changing the package's version",
    request: (w) => ({
      method: 'PUT',
      url: `/api/v1/packages/${w.free.id}`,
      role: 'operator',
      body: {
        ...w.freeFiles,
        definition: w.freeFiles.definition.replace(/^version: .*$/m, 'version: "1.1"'),
      },
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'cannot change (free-pkg@1.0)',
  },
  {
    name: 'update that would make an advertisement loosen the package',
    request: (w) => ({
      method: 'PUT',
      url: `/api/v1/packages/${w.used.id}`,
      role: 'operator',
      body: {
        ...w.usedFiles,
        settings: w.usedFiles.settings.replace('maximum: 2d', 'maximum: 12h'),
      },
    }),
    expectStatus: 400,
    expectCode: 'POLICY_LOOSENED',
    expectMessage: /advertisement used-ad would loosen the package: .*postponementMaximum/s,
  },
  {
    name: 'update of a package that does not exist',
    request: (w) => ({
      method: 'PUT',
      url: '/api/v1/packages/no-such-pkg@1.0',
      role: 'operator',
      body: w.freeFiles,
    }),
    expectStatus: 404,
    expectCode: 'NOT_FOUND',
    expectMessage: "No package 'no-such-pkg@1.0'",
  },
  {
    name: 'deleting a package an advertisement uses',
    request: (w) => ({ method: 'DELETE', url: `/api/v1/packages/${w.used.id}`, role: 'operator' }),
    expectStatus: 409,
    expectCode: 'IN_USE',
    expectMessage: 'used by advertisement(s) used-ad',
  },
  {
    name: 'deleting an image a package uses',
    request: (w) => ({ method: 'DELETE', url: `/api/v1/images/${w.image.id}`, role: 'operator' }),
    expectStatus: 409,
    expectCode: 'IN_USE',
    expectMessage: 'used by package(s)',
  },
  {
    name: 'registering an image the library does not have',
    request: () => ({
      method: 'POST',
      url: '/api/v1/images/register',
      role: 'operator',
      body: { ref: 'no-such-image' },
    }),
    expectStatus: 404,
    expectCode: 'IMAGE_NOT_FOUND',
    expectMessage: 'no-such-image',
  },
  // ---- advertisements
  {
    name: 'advertisement of an unknown package',
    request: (w) => newAd(w, { package: 'no-such-pkg' }),
    expectStatus: 400,
    expectCode: 'REFERENCE_UNKNOWN',
    expectMessage: "No package 'no-such-pkg' in the catalog",
  },
  {
    name: 'advertisement to an unknown collection',
    request: (w) => newAd(w, { collection: 'no-such-collection' }),
    expectStatus: 400,
    expectCode: 'REFERENCE_UNKNOWN',
    expectMessage: "No collection 'no-such-collection' in the catalog",
  },
  {
    name: 'advertisement allowing a longer postponement than the package',
    request: (w) => newAd(w, { policy: { postponementMaximum: '5d' } }),
    expectStatus: 400,
    expectCode: 'POLICY_LOOSENED',
    expectMessage: "postponementMaximum: must be at most the package's maximum, 2d",
  },
  {
    name: 'advertisement allowing a decline the package forbids',
    request: (w) => newAd(w, { policy: { allowDecline: true } }),
    expectStatus: 400,
    expectCode: 'POLICY_LOOSENED',
    expectMessage: 'allowDecline: must be false or unset',
  },
  {
    name: 'advertisement turning off the permission the package requires',
    request: (w) => newAd(w, { policy: { requireUserPermission: false } }),
    expectStatus: 400,
    expectCode: 'POLICY_LOOSENED',
    expectMessage:
      "requireUserPermission: must be true or unset: the package requires the user's permission",
  },
  {
    name: 'advertisement installing without an answer where permission is required',
    request: (w) => newAd(w, { policy: { whenNoAnswer: 'install' } }),
    expectStatus: 400,
    expectCode: 'POLICY_LOOSENED',
    expectMessage: 'nothing is installed without a yes',
  },
  {
    name: 'patch loosening an existing advertisement',
    request: () => ({
      method: 'PATCH',
      url: '/api/v1/advertisements/used-ad',
      role: 'operator',
      body: { policy: { allowDecline: true } },
    }),
    expectStatus: 400,
    expectCode: 'POLICY_LOOSENED',
    expectMessage: 'allowDecline',
  },
  {
    name: 'deadline before availableFrom',
    request: (w) =>
      newAd(w, {
        availableFrom: '2030-06-01T00:00:00Z',
        policy: { deadline: '2030-05-01T00:00:00Z' },
      }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/policy/deadline: the deadline must come after availableFrom',
  },
  {
    name: 'wave percentages adding up to more than 100',
    request: (w) =>
      newAd(w, { schedule: { waves: [{ percent: 10 }, { percent: 50 }, { percent: 60 }] } }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'wave percentages add up to 120%, more than 100%',
  },
  {
    name: 'active wave beyond the waves',
    request: (w) => newAd(w, { schedule: { waves: [{ percent: 10 }], activeWave: 3 } }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/schedule/activeWave: there are only 1 waves',
  },
  {
    name: 'empty maintenance window',
    request: (w) =>
      newAd(w, { schedule: { maintenanceWindows: [{ from: '22:00', to: '22:00' }] } }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'the window is empty',
  },
  {
    name: 'advertisement with a bad countdown duration',
    request: (w) => newAd(w, { policy: { countdown: '15 minutes' } }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/policy/countdown: must be a duration such as "3d"',
  },
  {
    name: 'advertisement with a date that is not a date',
    request: (w) => newAd(w, { availableFrom: 'next tuesday' }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/availableFrom: must be an ISO 8601 date-time',
  },
  {
    name: 'advertisement with an unknown policy setting',
    request: (w) => newAd(w, { policy: { postpone: '1d' } }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: "body/policy: unknown property 'postpone'",
  },
  {
    name: 'advertisement name that is not a name',
    request: (w) => newAd(w, { name: 'bad name!' }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/name',
  },
  {
    name: 'advertisement with an existing name',
    request: (w) => newAd(w, { name: 'used-ad' }),
    expectStatus: 409,
    expectCode: 'ALREADY_EXISTS',
    expectMessage: "An advertisement named 'used-ad' already exists",
  },
  {
    name: 'empty patch of an advertisement',
    request: () => ({
      method: 'PATCH',
      url: '/api/v1/advertisements/used-ad',
      role: 'operator',
      body: {},
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
  },
  {
    name: 'patch of an advertisement that does not exist',
    request: () => ({
      method: 'PATCH',
      url: '/api/v1/advertisements/no-such-ad',
      role: 'operator',
      body: { enabled: false },
    }),
    expectStatus: 404,
    expectCode: 'NOT_FOUND',
    expectMessage: "No advertisement 'no-such-ad'",
  },
  // ---- collections
  {
    name: 'collection rule that does not parse',
    request: () => ({
      method: 'POST',
      url: '/api/v1/collections',
      role: 'operator',
      body: { name: 'bad-col', rule: 'os = "debian" and and' },
    }),
    expectStatus: 400,
    expectCode: 'RULE_INVALID',
  },
  {
    name: 'collection rule with an unknown field',
    request: () => ({
      method: 'POST',
      url: '/api/v1/collections',
      role: 'operator',
      body: { name: 'bad-col', rule: 'operating_system = "debian"' },
    }),
    expectStatus: 400,
    expectCode: 'RULE_INVALID',
    expectMessage: 'operating_system',
  },
  {
    name: 'collection rule with an unclosed string',
    request: () => ({
      method: 'PATCH',
      url: '/api/v1/collections/free-col',
      role: 'operator',
      body: { rule: 'os = "debian' },
    }),
    expectStatus: 400,
    expectCode: 'RULE_INVALID',
  },
  {
    name: 'previewing a bad rule',
    request: () => ({
      method: 'POST',
      url: '/api/v1/collections/preview',
      role: 'read-only',
      body: { rule: 'disk_free_gb >= "a lot" or' },
    }),
    expectStatus: 400,
    expectCode: 'RULE_INVALID',
  },
  {
    name: 'collection including an unknown machine',
    request: () => ({
      method: 'POST',
      url: '/api/v1/collections',
      role: 'operator',
      body: { name: 'bad-col', include: ['no-such-machine'] },
    }),
    expectStatus: 400,
    expectCode: 'REFERENCE_UNKNOWN',
    expectMessage: "include: no machine 'no-such-machine'",
  },
  {
    name: 'collection excluding an unknown machine GUID',
    request: () => ({
      method: 'PATCH',
      url: '/api/v1/collections/free-col',
      role: 'operator',
      body: { exclude: ['00000000-0000-4000-8000-000000000000'] },
    }),
    expectStatus: 400,
    expectCode: 'REFERENCE_UNKNOWN',
    expectMessage: "exclude: no machine '00000000-0000-4000-8000-000000000000'",
  },
  {
    name: 'collection with an existing name',
    request: () => ({
      method: 'POST',
      url: '/api/v1/collections',
      role: 'operator',
      body: { name: 'used-col' },
    }),
    expectStatus: 409,
    expectCode: 'ALREADY_EXISTS',
    expectMessage: "A collection named 'used-col' already exists",
  },
  {
    name: 'deleting a collection an advertisement uses',
    request: (w) => ({
      method: 'DELETE',
      url: `/api/v1/collections/${w.usedCollection.id}`,
      role: 'operator',
    }),
    expectStatus: 409,
    expectCode: 'IN_USE',
    expectMessage: 'used by advertisement(s) used-ad',
  },
  // ---- distribution points
  {
    name: 'distribution point boundary that is not CIDR',
    request: () => newDp({ boundaries: ['10.1.0.0/16', '10.2.0.0/33', 'paris'] }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'Not a subnet in CIDR form: 10.2.0.0/33, paris',
  },
  {
    name: 'distribution point address with a password in the URL',
    request: () => newDp({ address: 'smb://svc:hunter2@files.example.com/reimage' }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'must not carry a password',
  },
  {
    name: 'distribution point address of an unknown scheme',
    request: () => newDp({ address: 'ftp://files.example.com/reimage' }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/address',
  },
  {
    name: 'distribution point with an existing name',
    request: () => newDp({ name: 'dp-paris' }),
    expectStatus: 409,
    expectCode: 'ALREADY_EXISTS',
    expectMessage: "A distribution point named 'dp-paris' already exists",
  },
  {
    name: 'distribution point rate limit below the minimum',
    request: () => newDp({ bandwidth: { rateLimitKbps: 1 } }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/bandwidth/rateLimitKbps',
  },
  // ---- roles and credentials
  {
    name: 'read-only user creating a collection',
    request: () => ({
      method: 'POST',
      url: '/api/v1/collections',
      role: 'read-only',
      body: { name: 'ro-col' },
    }),
    expectStatus: 403,
    expectCode: 'FORBIDDEN',
    expectMessage: 'This needs the operator role; readonly is read-only',
  },
  {
    name: 'read-only user creating a package',
    request: (w) => ({ ...newPackage(defYaml({ name: 'ro-pkg' }, w)), role: 'read-only' }),
    expectStatus: 403,
    expectCode: 'FORBIDDEN',
  },
  {
    name: 'read-only user deleting an advertisement',
    request: () => ({ method: 'DELETE', url: '/api/v1/advertisements/used-ad', role: 'read-only' }),
    expectStatus: 403,
    expectCode: 'FORBIDDEN',
  },
  {
    name: 'operator creating a user',
    request: () => ({
      method: 'POST',
      url: '/api/v1/users',
      role: 'operator',
      body: { username: 'mallory', password: 'a-long-enough-password', role: 'admin' },
    }),
    expectStatus: 403,
    expectCode: 'FORBIDDEN',
    expectMessage: 'This needs the admin role; operator is operator',
  },
  {
    name: 'operator reading the audit log',
    request: () => ({ method: 'GET', url: '/api/v1/audit', role: 'operator' }),
    expectStatus: 403,
    expectCode: 'FORBIDDEN',
  },
  {
    name: 'no credentials',
    request: () => ({ method: 'GET', url: '/api/v1/packages', token: null }),
    expectStatus: 401,
    expectCode: 'UNAUTHENTICATED',
    expectMessage: 'Authorization: Bearer',
  },
  {
    name: 'garbage token',
    request: () => ({ method: 'GET', url: '/api/v1/packages', token: 'rit_garbage' }),
    expectStatus: 401,
    expectCode: 'UNAUTHENTICATED',
  },
  {
    name: 'a well-formed token nobody was given',
    request: () => ({
      method: 'POST',
      url: '/api/v1/collections',
      token: newSecret('rit'),
      body: { name: 'x' },
    }),
    expectStatus: 401,
    expectCode: 'UNAUTHENTICATED',
  },
  {
    name: 'basic authentication instead of a bearer token',
    request: () => ({
      method: 'GET',
      url: '/api/v1/packages',
      authorization: `Basic ${Buffer.from('admin:admin-password-long').toString('base64')}`,
    }),
    expectStatus: 401,
    expectCode: 'UNAUTHENTICATED',
  },
  {
    name: 'expired API token',
    request: (w) => ({ method: 'GET', url: '/api/v1/packages', token: w.expiredApiToken }),
    expectStatus: 401,
    expectCode: 'UNAUTHENTICATED',
    expectMessage: 'has expired',
  },
  {
    name: "a disabled user's token",
    request: (w) => ({
      method: 'POST',
      url: '/api/v1/collections',
      token: w.disabledUserToken,
      body: { name: 'x' },
    }),
    expectStatus: 401,
    expectCode: 'UNAUTHENTICATED',
  },
  {
    name: 'wrong password at login',
    request: () => ({
      method: 'POST',
      url: '/api/v1/auth/login',
      token: null,
      body: { username: 'admin', password: 'not-the-password' },
    }),
    expectStatus: 401,
    expectCode: 'UNAUTHENTICATED',
    expectMessage: 'Wrong username or password',
  },
  {
    name: 'a machine credential on an admin endpoint',
    request: (w) => ({
      method: 'POST',
      url: '/api/v1/collections',
      token: w.a.credential,
      body: { name: 'x' },
    }),
    expectStatus: 401,
    expectCode: 'UNAUTHENTICATED',
  },
  {
    name: 'a machine credential reading the machines',
    request: (w) => ({ method: 'GET', url: '/api/v1/machines', token: w.a.credential }),
    expectStatus: 401,
    expectCode: 'UNAUTHENTICATED',
  },
  {
    name: 'an admin token on a client endpoint',
    request: () => ({ method: 'GET', url: '/api/v1/client/policy', role: 'admin' }),
    expectStatus: 401,
    expectCode: 'UNAUTHENTICATED',
    expectMessage: 'machine credential',
  },
  {
    name: 'an admin token posting status',
    request: (w) => ({ ...status(w, { messages: statusMessages([1]) }), token: undefined }),
    expectStatus: 401,
    expectCode: 'UNAUTHENTICATED',
  },
  // ---- users
  {
    name: 'deleting the last admin',
    request: () => ({ method: 'DELETE', url: '/api/v1/users/admin' }),
    expectStatus: 409,
    expectCode: 'IN_USE',
    expectMessage: 'last enabled admin',
  },
  {
    name: 'disabling the last admin while naming its role',
    request: () => ({
      method: 'PATCH',
      url: '/api/v1/users/admin',
      body: { role: 'admin', disabled: true },
    }),
    expectStatus: 409,
    expectCode: 'IN_USE',
    expectMessage: 'last enabled admin',
  },
  // ---- what PostgreSQL and SQLite would treat differently, refused alike
  {
    name: 'a NUL character in a login name (no credentials needed)',
    request: () => ({
      method: 'POST',
      url: '/api/v1/auth/login',
      token: null,
      body: { username: 'a\u0000b', password: 'whatever-long-enough' },
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'NUL',
  },
  {
    name: 'a NUL character in a URL parameter',
    request: () => ({ method: 'GET', url: '/api/v1/packages/a%00b', role: 'read-only' }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'NUL',
  },
  {
    name: 'a sequence number past what the catalog stores',
    request: () => ({
      method: 'GET',
      url: '/api/v1/status?afterSeq=9999999999',
      role: 'read-only',
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'afterSeq',
  },
  {
    name: 'a malformed percent-encoded URL',
    request: () => ({ method: 'GET', url: '/api/v1/packages/%E0%A4%A', role: 'read-only' }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'percent-encoding',
  },
  {
    name: 'status properties nested very deep',
    request: (w) =>
      status(w, {
        machineId: w.a.id,
        messages: statusMessages([900], () => ({
          a: JSON.parse('['.repeat(1000) + ']'.repeat(1000)) as unknown,
        })),
      }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'deeper',
  },
  {
    name: 'demoting the last admin',
    request: () => ({ method: 'PATCH', url: '/api/v1/users/admin', body: { role: 'operator' } }),
    expectStatus: 409,
    expectCode: 'IN_USE',
    expectMessage: 'last enabled admin',
  },
  {
    name: 'a new user with a short password',
    request: () => ({
      method: 'POST',
      url: '/api/v1/users',
      body: { username: 'alice', password: 'short', role: 'operator' },
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/password',
  },
  {
    name: 'a new user with an existing username',
    request: () => ({
      method: 'POST',
      url: '/api/v1/users',
      body: { username: 'operator', password: 'a-long-enough-password', role: 'operator' },
    }),
    expectStatus: 409,
    expectCode: 'ALREADY_EXISTS',
    expectMessage: "A user named 'operator' already exists",
  },
  {
    name: 'a new user with an unknown role',
    request: () => ({
      method: 'POST',
      url: '/api/v1/users',
      body: { username: 'alice', password: 'a-long-enough-password', role: 'root' },
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/role: must be one of "admin", "operator", "read-only"',
  },
  // ---- machines: enrollment, status
  {
    name: 'enrollment with an unknown token',
    request: () => enroll(newSecret('rie')),
    expectStatus: 401,
    expectCode: 'ENROLLMENT_REFUSED',
  },
  {
    name: 'enrollment with a revoked token',
    request: (w) => enroll(w.revokedToken),
    expectStatus: 401,
    expectCode: 'ENROLLMENT_REFUSED',
  },
  {
    name: 'enrollment with a used-up token',
    request: (w) => enroll(w.usedUpToken),
    expectStatus: 401,
    expectCode: 'ENROLLMENT_REFUSED',
  },
  {
    name: 'enrollment with an expired token',
    request: (w) => enroll(w.expiredToken),
    expectStatus: 401,
    expectCode: 'ENROLLMENT_REFUSED',
  },
  {
    name: 'enrollment with a malformed inventory',
    request: (w) => enroll(w.usedUpToken, { inventory: { macs: ['not-a-mac'] } }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/inventory/macs/0',
  },
  {
    name: 'status batch for another machine',
    request: (w) => status(w, { machineId: w.b.id, messages: statusMessages([1, 2]) }),
    expectStatus: 403,
    expectCode: 'MACHINE_MISMATCH',
  },
  {
    name: 'status message id not in the catalog',
    request: (w) =>
      status(w, {
        messages: [...statusMessages([1]), { seq: 2, id: 1999, time: '2025-01-01T00:00:00Z' }],
      }),
    expectStatus: 400,
    expectCode: 'STATUS_MESSAGE_UNKNOWN',
    expectMessage: 'Status message id 1999 (messages/1)',
  },
  {
    name: 'duplicate sequence number in a batch',
    request: (w) => status(w, { messages: statusMessages([1, 2, 2]) }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/messages/2/seq: sequence number 2 appears twice',
  },
  {
    name: 'status batch of more than 1000 messages',
    request: (w) => status(w, { messages: statusMessages(range(1, 1001)) }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/messages',
  },
  {
    name: 'empty status batch',
    request: (w) => status(w, { messages: [] }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/messages',
  },
  {
    name: 'status message properties larger than 8 KiB',
    request: (w) =>
      status(w, { messages: statusMessages([1], () => ({ detail: 'x'.repeat(9000) })) }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/messages/0/properties: larger than 8192 bytes',
  },
  {
    name: 'status message with a time that is not a time',
    request: (w) => status(w, { messages: [{ seq: 1, id: 1002, time: 'yesterday' }] }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'body/messages/0/time: must be an ISO 8601 date-time',
  },
  {
    name: 'inventory with an unknown key',
    request: (w) => ({
      method: 'PUT',
      url: '/api/v1/client/inventory',
      token: w.a.credential,
      body: { inventory: { os: 'debian', colour: 'blue' } },
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: "body/inventory: unknown property 'colour'",
  },
  // ---- the request itself
  {
    name: 'body larger than 1 MiB',
    request: (w) => newPackage(defYaml({ extra: `description: ${'x'.repeat(1024 * 1024)}` }, w)),
    expectStatus: 413,
    expectCode: 'PAYLOAD_TOO_LARGE',
  },
  {
    name: 'body that is not JSON (text/plain)',
    request: () => ({
      method: 'POST',
      url: '/api/v1/collections',
      role: 'operator',
      raw: 'name=text-col',
      contentType: 'text/plain',
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
  },
  {
    name: 'body of an unsupported content type',
    request: () => ({
      method: 'POST',
      url: '/api/v1/collections',
      role: 'operator',
      raw: '<collection name="xml-col"/>',
      contentType: 'application/xml',
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'Content-Type: application/json',
  },
  {
    name: 'invalid JSON',
    request: () => ({
      method: 'POST',
      url: '/api/v1/collections',
      role: 'operator',
      raw: '{"name": "json-col",}',
      contentType: 'application/json',
    }),
    expectStatus: 400,
    expectCode: 'YAML_INVALID',
    expectMessage: 'not valid JSON',
  },
  {
    name: 'empty JSON body',
    request: () => ({
      method: 'POST',
      url: '/api/v1/collections',
      role: 'operator',
      raw: '',
      contentType: 'application/json',
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
  },
  {
    name: 'a JSON array where an object is expected',
    request: () => ({
      method: 'POST',
      url: '/api/v1/distribution-points',
      role: 'operator',
      body: [{ name: 'dp' }],
    }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
  },
  {
    name: 'unknown endpoint',
    request: () => ({ method: 'GET', url: '/api/v1/packagez' }),
    expectStatus: 404,
    expectCode: 'NOT_FOUND',
    expectMessage: 'No API endpoint GET /api/v1/packagez',
  },
  {
    name: 'unknown method on a known endpoint',
    request: () => ({ method: 'PUT', url: '/api/v1/advertisements', body: {} }),
    expectStatus: 404,
    expectCode: 'NOT_FOUND',
  },
  {
    name: 'a package that does not exist',
    request: () => ({ method: 'GET', url: '/api/v1/packages/no-such-pkg', role: 'read-only' }),
    expectStatus: 404,
    expectCode: 'NOT_FOUND',
    expectMessage: "No package 'no-such-pkg'",
  },
  {
    name: 'a status query with a bad limit',
    request: () => ({ method: 'GET', url: '/api/v1/status?limit=lots', role: 'read-only' }),
    expectStatus: 400,
    expectCode: 'VALIDATION_FAILED',
    expectMessage: 'querystring/limit',
  },
];

/** Sends a request as is (a raw body with its own content type, any Authorization header). */
async function send(server: TestServer, r: Request) {
  const headers: Record<string, string> = {};
  const token = r.token === null ? undefined : (r.token ?? server.tokens[r.role ?? 'admin']);
  if (r.authorization) headers.authorization = r.authorization;
  else if (token) headers.authorization = `Bearer ${token}`;
  let payload: string | Buffer | undefined = r.raw;
  if (r.raw !== undefined && r.contentType) headers['content-type'] = r.contentType;
  else if (r.body !== undefined) {
    payload = JSON.stringify(r.body);
    headers['content-type'] = 'application/json';
  }
  const res = await server.app.inject({
    method: r.method,
    url: r.url,
    headers,
    ...(payload === undefined ? {} : { payload }),
  });
  return { status: res.statusCode, raw: res.body, contentType: res.headers['content-type'] };
}

async function makeWorld(server: TestServer): Promise<World> {
  const image = await addImage(server, 'bad-input-image');
  const usedFiles = packageFiles({ name: 'used-pkg', version: '1.0', image: image.name });
  const freeFiles = packageFiles({ name: 'free-pkg', version: '1.0', image: image.id });
  const used = await createPackage(server, usedFiles);
  const free = await createPackage(server, freeFiles);
  await createDp(server, { name: 'dp-paris' });
  const a = await enrollMachine(server, { name: 'machine-a' });
  const b = await enrollMachine(server, { name: 'machine-b' });
  const usedCollection = await createCollection(server, { name: 'used-col', include: [a.id] });
  const freeCollection = await createCollection(server, {
    name: 'free-col',
    rule: 'os = "debian"',
  });
  await createAdvertisement(server, {
    name: 'used-ad',
    package: used.id,
    collection: usedCollection.id,
    policy: { postponementMaximum: '1d' },
  });

  const revoked = await createEnrollmentToken(server, {});
  expectStatus(
    await server.call('DELETE', `/api/v1/enrollment-tokens/${revoked.id}`, { role: 'operator' }),
    204,
    'revoke an enrollment token',
  );
  const usedUp = await createEnrollmentToken(server, { uses: 1 });
  await enrollMachine(server, { name: 'machine-c', token: usedUp.token });
  const expiredToken = newSecret('rie');
  await server.catalog.createEnrollmentToken({
    tokenHash: secretHash(expiredToken),
    site: null,
    usesLeft: null,
    expiresAt: new Date(Date.now() - 60_000).toISOString(),
    createdBy: 'test',
  });

  const admin = await server.catalog.getUser('admin');
  const expiredApiToken = newSecret('rit');
  await server.catalog.createToken({
    userId: admin.id,
    name: 'expired',
    tokenHash: secretHash(expiredApiToken),
    expiresAt: new Date(Date.now() - 60_000).toISOString(),
  });
  const created = await server.call<{ id: string }>('POST', '/api/v1/users', {
    body: {
      username: 'dora',
      password: `disabled-${randomBytes(8).toString('hex')}`,
      role: 'admin',
    },
  });
  expectStatus(created, 201, 'create a user');
  const disabledUserToken = newSecret('rit');
  await server.catalog.createToken({
    userId: created.body.id,
    name: 'dora',
    tokenHash: secretHash(disabledUserToken),
    expiresAt: null,
  });
  expectStatus(
    await server.call('PATCH', '/api/v1/users/dora', { body: { disabled: true } }),
    200,
    'disable a user',
  );
  return {
    image,
    used,
    usedFiles,
    free,
    freeFiles,
    usedCollection,
    freeCollection,
    a,
    b,
    revokedToken: revoked.token,
    usedUpToken: usedUp.token,
    expiredToken,
    expiredApiToken,
    disabledUserToken,
  };
}

test('the table of bad inputs is large and its names are unique', () => {
  assert.ok(badInputs.length >= 60, `${badInputs.length} bad inputs`);
  assert.equal(new Set(badInputs.map((c) => c.name)).size, badInputs.length);
  for (const c of badInputs) {
    const e = errorCodes[c.expectCode];
    assert.equal('http' in e ? e.http : 400, c.expectStatus, `${c.name}: the code's HTTP status`);
  }
});

forEachDatabase('bad input changes nothing', (get) => {
  let world: World;
  before(async () => {
    world = await makeWorld(get());
  });

  for (const c of badInputs) {
    test(c.name, async (t) => {
      const server = get();
      const request = c.request(world);
      const before = await snapshotCatalog(server);
      const res = await send(server, request);
      assert.equal(res.status, c.expectStatus, `HTTP status; body ${res.raw}`);
      assert.match(String(res.contentType), /^application\/json/);
      const body = JSON.parse(res.raw) as { error?: Record<string, unknown> };
      assert.ok(body.error && typeof body.error === 'object', `an error body: ${res.raw}`);
      const { code, message, details } = body.error;
      t.diagnostic(`${String(code)}: ${String(message)}`);
      assert.equal(code, c.expectCode, `code; message: ${String(message)}`);
      assert.equal(typeof message, 'string');
      assert.ok((message as string).trim().length >= 10, `a useful message: ${String(message)}`);
      assert.ok(
        details !== null && typeof details === 'object' && !Array.isArray(details),
        'details is an object',
      );
      if (c.expectMessage !== undefined) {
        if (typeof c.expectMessage === 'string')
          assert.ok(
            (message as string).includes(c.expectMessage),
            `message ${JSON.stringify(message)} should hold ${JSON.stringify(c.expectMessage)}`,
          );
        else assert.match(message as string, c.expectMessage);
      }
      if (c.file) {
        const escaped = c.file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
        assert.match(message as string, new RegExp(`${escaped}:\\d+`), 'names the file and line');
      }
      if (c.expectCode === 'VALIDATION_FAILED' && c.file)
        assert.ok(Array.isArray((details as { problems?: unknown }).problems), 'details.problems');
      assert.deepEqual(await snapshotCatalog(server), before, 'the catalog did not change');
    });
  }
});
