import { Type, type Static, type TLiteral, type TSchema, type TUnion } from '@sinclair/typebox';

import { RuleComponent, builtinRuleSets, defaultRuleSets } from '../migrate/rule-format.js';

/**
 * The schemas of the package documents: the package definition file, the deployment
 * settings file, and the notification policy an advertisement gives. They are plain JSON
 * Schema (served as fastify route schemas and published in docs/schemas/), with
 * `additionalProperties: false` everywhere so that a misspelt key is an error, not ignored.
 *
 * Documents are kept as written: `default` annotations document what an absent value means
 * (and {@link defaults} holds the same values for code), so that the effective policy can
 * tell a value the package chose from a default.
 *
 * The `title` of a patterned string is a noun phrase that completes "must be a ...": error
 * messages use it.
 */

export const API_VERSION = 'reimage/v1';

/** One to five digits per unit keeps every duration far below Number.MAX_SAFE_INTEGER ms. */
export const DURATION_PATTERN =
  '^(?=\\d)(?:(\\d{1,5})d)?(?:(\\d{1,5})h)?(?:(\\d{1,5})m)?(?:(\\d{1,5})s)?$';

/** The documented defaults, one place for code and schema annotations. */
export const defaults = {
  format: 'native',
  machineStateItem: 'migrate',
  clientStateItem: 'migrate',
  redeploySameImage: false,
  requireUserPermission: false,
  postponement: { allowed: true, maximum: '3d' },
  allowDecline: false,
  /** When permission is required nothing installs without a yes, so no answer postpones. */
  whenNoAnswer: { withoutPermission: 'install', withPermission: 'postpone' },
  countdown: '15m',
  stateStorePath: '/var/lib/reimage/state',
  encrypt: true,
  ruleSets: [...defaultRuleSets],
  /** Debian: everything the OS owns. /home, /srv, /mnt and /media are data and stay. */
  osPaths: [
    '/bin',
    '/boot',
    '/etc',
    '/lib',
    '/lib32',
    '/lib64',
    '/libx32',
    '/opt',
    '/root',
    '/sbin',
    '/tmp',
    '/usr',
    '/var',
  ],
  /** The agent's journal and the local state store live here and must survive the wipe. */
  keep: ['/var/lib/reimage'],
  retainDays: 0,
  prestage: false,
  contentFallback: true,
} as const;

/** A union of string constants (TypeBox has no plain string enum outside Unsafe). */
function literals<const T extends readonly string[]>(
  values: T,
  options: object = {},
): TUnion<{ -readonly [K in keyof T]: TLiteral<T[K]> }> {
  return Type.Union(
    values.map((v) => Type.Literal(v)),
    options,
  ) as never;
}

export const duration = (options: object = {}) =>
  Type.String({
    title: 'duration such as "3d", "12h", "2d6h" or "15m" (days, hours, minutes, seconds)',
    pattern: DURATION_PATTERN,
    ...options,
  });

const absolutePath = (options: object = {}) =>
  Type.String({
    title: 'absolute path such as "/var/lib/reimage" (no ".." segments)',
    pattern: '^(?!.*/\\.\\.(/|$))/.*$',
    maxLength: 4096,
    ...options,
  });

/** A write-only value: given as a string, stored encrypted, shown as `{"secret": "set"}`. */
export const SecretMarker = Type.Object(
  { secret: Type.Literal('set') },
  { additionalProperties: false },
);
export type SecretMarker = Static<typeof SecretMarker>;

export const Secret = Type.Union([Type.String({ minLength: 1, maxLength: 4096 }), SecretMarker], {
  description:
    'A secret: write-only. Stored encrypted; every response shows {"secret": "set"} instead, and sending that marker back keeps the stored value.',
});

/**
 * JSON pointers of every secret in a DeploymentSettings document (a test checks the schema).
 * Here rather than in secrets.ts so that document.ts can keep them out of error messages.
 */
export const secretPaths = [
  '/machineState/productKey/set',
  '/machineState/administratorPassword/set',
  '/stateStore/password',
] as const;

export const WhenNoAnswer = literals(['install', 'postpone', 'decline'], {
  description:
    'What happens when the user does not answer before the countdown ends: install (start now), postpone (ask again later), decline (not installed on this machine). Never install when permission is required. Default: install, or postpone when permission is required.',
});
export type WhenNoAnswer = Static<typeof WhenNoAnswer>;

// ---------------------------------------------------------------- package definition

export const ImageRef = Type.Object(
  {
    name: Type.Optional(
      Type.String({
        title:
          'image name: 1-128 letters, digits, ".", "_" or "-", starting with a letter or digit, and not 64 hex digits (an id goes in image.id)',
        pattern: '^(?![0-9a-f]{64}$)[A-Za-z0-9][A-Za-z0-9._-]{0,127}$',
      }),
    ),
    id: Type.Optional(
      Type.String({ title: 'image id: 64 lowercase hex digits', pattern: '^[0-9a-f]{64}$' }),
    ),
  },
  {
    additionalProperties: false,
    minProperties: 1,
    maxProperties: 1,
    description:
      'The image, by exactly one of name (follows the name to its newest image when the package is built) or id (that exact image).',
  },
);

export const PackageDefinition = Type.Object(
  {
    apiVersion: Type.Literal(API_VERSION),
    kind: Type.Literal('PackageDefinition'),
    name: Type.String({
      title:
        'package name: 1-128 letters, digits, ".", "_" or "-", starting with a letter or digit',
      pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$',
    }),
    version: Type.String({
      title: 'version: 1-64 letters, digits, ".", "+", "_", "~" or "-", such as "12.5-1"',
      pattern: '^[A-Za-z0-9][A-Za-z0-9.+_~-]{0,63}$',
    }),
    description: Type.Optional(Type.String({ maxLength: 2000 })),
    image: ImageRef,
    format: Type.Optional(
      literals(['native', 'opaque'], {
        default: defaults.format,
        description:
          'native: applied file by file from chunks (deduplicated, verified); opaque: the stored file is applied by its own format (a WIM, a squashfs).',
      }),
    ),
    pe: Type.Optional(
      Type.Object(
        {
          name: Type.String({ minLength: 1, maxLength: 128 }),
          version: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
        },
        {
          additionalProperties: false,
          description:
            'The pre-installation environment the machine boots into to wipe and load (newest version when not given).',
        },
      ),
    ),
    program: Type.Optional(
      Type.Object(
        {
          command: Type.String({ minLength: 1, maxLength: 4096 }),
          arguments: Type.Optional(Type.Array(Type.String({ maxLength: 4096 }))),
          workingDirectory: Type.Optional(absolutePath()),
          runAs: Type.Optional(literals(['system', 'user'], { default: 'system' })),
          maxRuntimeMinutes: Type.Optional(
            Type.Integer({ minimum: 1, maximum: 1440, default: 120 }),
          ),
          environment: Type.Optional(
            Type.Record(
              Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]{0,127}$' }),
              Type.String({ maxLength: 4096 }),
              { additionalProperties: false },
            ),
          ),
        },
        {
          additionalProperties: false,
          description:
            'A command run on the new OS after its state is restored (first boot), to finish the installation. It is copied to distribution points: put no secrets here.',
        },
      ),
    ),
  },
  { additionalProperties: false },
);
export type PackageDefinition = Static<typeof PackageDefinition>;

// ---------------------------------------------------------------- deployment settings

const migrateOr = <T extends TSchema>(set: T, description: string) =>
  Type.Optional(
    Type.Union([Type.Literal('migrate'), Type.Object({ set }, { additionalProperties: false })], {
      default: defaults.machineStateItem,
      description: `${description} "migrate" keeps the old OS's value; {set: ...} sets this one.`,
    }),
  );

export const StaticAddress = Type.Object(
  {
    address: Type.String({ minLength: 2, maxLength: 45, description: 'IPv4 or IPv6 address.' }),
    prefix: Type.Integer({ minimum: 0, maximum: 128, description: 'Prefix length, e.g. 24.' }),
    gateway: Type.String({ minLength: 2, maxLength: 45 }),
    dns: Type.Optional(Type.Array(Type.String({ minLength: 2, maxLength: 45 }), { maxItems: 8 })),
  },
  { additionalProperties: false },
);

export const MachineState = Type.Object(
  {
    computerName: migrateOr(
      Type.String({
        title:
          'computer name: 1-63 letters, digits and "-", with optional %SERIAL% or %MAC% placeholders',
        pattern: '^(?:[A-Za-z0-9-]|%SERIAL%|%MAC%){1,63}$',
      }),
      'The host name.',
    ),
    userName: migrateOr(Type.String({ minLength: 1, maxLength: 256 }), 'The registered user.'),
    organization: migrateOr(
      Type.String({ minLength: 1, maxLength: 256 }),
      'The registered organization.',
    ),
    productKey: migrateOr(Secret, 'The OS product key (a secret).'),
    administratorPassword: migrateOr(
      Secret,
      'The password of the administrator (root on Linux; a secret).',
    ),
    ipAddress: migrateOr(
      Type.Union([Type.Literal('dhcp'), StaticAddress]),
      'The network address: "dhcp" or a static {address, prefix, gateway, dns}.',
    ),
  },
  { additionalProperties: false },
);

const clientItem = (description: string) =>
  Type.Optional(
    literals(['migrate', 'fresh'], {
      default: defaults.clientStateItem,
      description: `${description} "migrate" keeps it; "fresh" configures it anew.`,
    }),
  );

export const ClientState = Type.Object(
  {
    guid: clientItem("The agent's machine identity at the server."),
    siteAssignment: Type.Optional(
      Type.Union(
        [
          Type.Literal('migrate'),
          Type.Literal('fresh'),
          Type.Object(
            {
              site: Type.String({
                title: 'site code: 1-64 letters, digits, ".", "_" or "-"',
                pattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$',
              }),
            },
            { additionalProperties: false },
          ),
        ],
        {
          default: defaults.clientStateItem,
          description:
            'The site the agent belongs to: "migrate" keeps it, "fresh" finds it anew, {site: CODE} assigns that site.',
        },
      ),
    ),
    policy: clientItem("The agent's downloaded policy."),
    distributionPoint: clientItem('The distribution point the agent uses.'),
  },
  { additionalProperties: false },
);

export const Options = Type.Object(
  {
    redeploySameImage: Type.Optional(
      Type.Boolean({
        default: defaults.redeploySameImage,
        description:
          'Deploy even to a machine that already runs this image (false: such machines report success and are left alone).',
      }),
    ),
    requireUserPermission: Type.Optional(
      Type.Boolean({
        default: defaults.requireUserPermission,
        description: 'Nothing is installed until the user says yes.',
      }),
    ),
    postponement: Type.Optional(
      Type.Object(
        {
          allowed: Type.Optional(Type.Boolean({ default: defaults.postponement.allowed })),
          maximum: Type.Optional(
            duration({
              default: defaults.postponement.maximum,
              description: 'How long, in all, the user may postpone.',
            }),
          ),
        },
        { additionalProperties: false },
      ),
    ),
    allowDecline: Type.Optional(
      Type.Boolean({
        default: defaults.allowDecline,
        description: 'The user may decline the deployment for this machine.',
      }),
    ),
    whenNoAnswer: Type.Optional(WhenNoAnswer),
  },
  { additionalProperties: false },
);

// No `default` keywords inside the union's branches: Ajv ignores them there, and in strict
// mode (fastify's) refuses the schema, so the defaults are stated in the descriptions.
const encrypt = Type.Optional(
  Type.Boolean({
    description: `Encrypt the captured state with a per-deployment key (default ${defaults.encrypt}).`,
  }),
);

export const StateStore = Type.Union(
  [
    Type.Object(
      {
        type: Type.Literal('local'),
        path: Type.Optional(absolutePath({ description: `Default ${defaults.stateStorePath}.` })),
        encrypt,
      },
      {
        additionalProperties: false,
        description: "On the machine's own disk, in a folder the wipe keeps.",
      },
    ),
    Type.Object(
      {
        type: Type.Literal('share'),
        url: Type.String({
          title: 'share URL: smb://host/share[/path] or https://host/path (WebDAV)',
          pattern: '^(?:smb://[^/\\s]+/[^/\\s]+(?:/\\S*)?|https://[^/\\s]+(?:/\\S*)?)$',
          maxLength: 2048,
        }),
        username: Type.String({ minLength: 1, maxLength: 256 }),
        password: Secret,
        domain: Type.Optional(Type.String({ minLength: 1, maxLength: 256 })),
        encrypt,
      },
      { additionalProperties: false, description: 'On a network share.' },
    ),
  ],
  { description: 'Where captured state and user data wait while the machine is wiped.' },
);

export const Migration = Type.Object(
  {
    ruleSets: Type.Optional(
      Type.Array(Type.String(), {
        uniqueItems: true,
        default: defaults.ruleSets,
        description: `Built-in rule sets to apply: ${builtinRuleSets.map((r) => r.name).join(', ')}. [] migrates none.`,
      }),
    ),
    rules: Type.Optional(
      Type.Array(RuleComponent, { description: 'Inline rule components added to the rule sets.' }),
    ),
  },
  { additionalProperties: false },
);

export const Wipe = Type.Object(
  {
    osPaths: Type.Optional(
      Type.Array(absolutePath(), {
        minItems: 1,
        default: defaults.osPaths,
        description: 'The paths that are the OS: deleted before the new image is loaded.',
      }),
    ),
    keep: Type.Optional(
      Type.Array(absolutePath(), {
        default: defaults.keep,
        description: 'Paths inside osPaths that survive the wipe.',
      }),
    ),
  },
  { additionalProperties: false },
);

export const DeploymentSettings = Type.Object(
  {
    apiVersion: Type.Literal(API_VERSION),
    kind: Type.Literal('DeploymentSettings'),
    machineState: Type.Optional(MachineState),
    clientState: Type.Optional(ClientState),
    options: Type.Optional(Options),
    stateStore: Type.Optional(StateStore),
    migration: Type.Optional(Migration),
    wipe: Type.Optional(Wipe),
    rollback: Type.Optional(
      Type.Object(
        {
          retainDays: Type.Optional(
            Type.Integer({
              minimum: 0,
              maximum: 365,
              default: defaults.retainDays,
              description: 'Days the old OS is kept for rollback (0: not kept).',
            }),
          ),
        },
        { additionalProperties: false },
      ),
    ),
    prestage: Type.Optional(
      Type.Object(
        {
          enabled: Type.Optional(
            Type.Boolean({
              default: defaults.prestage,
              description: 'Download everything in phase 1, before the machine is wiped.',
            }),
          ),
        },
        { additionalProperties: false },
      ),
    ),
    content: Type.Optional(
      Type.Object(
        {
          fallback: Type.Optional(
            Type.Boolean({
              default: defaults.contentFallback,
              description:
                "Let machines fetch from distribution points outside their site and boundaries (fallback) when theirs fail; false: only their site's and boundaries' DPs.",
            }),
          ),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);
export type DeploymentSettings = Static<typeof DeploymentSettings>;

// ---------------------------------------------------------------- advertisement policy

/** The notification policy an advertisement gives; it may only tighten its package's options. */
export const AdvertisementPolicy = Type.Object(
  {
    requireUserPermission: Type.Optional(Type.Boolean()),
    allowDecline: Type.Optional(Type.Boolean()),
    postponementMaximum: Type.Optional(
      duration({ description: 'At most the package\'s maximum; "0s" allows no postponement.' }),
    ),
    whenNoAnswer: Type.Optional(WhenNoAnswer),
    deadline: Type.Optional(
      Type.String({
        format: 'date-time',
        description: 'ISO 8601 date-time with offset, e.g. "2025-03-01T18:00:00Z".',
      }),
    ),
    countdown: Type.Optional(
      duration({
        default: defaults.countdown,
        description: 'How long a notification waits for an answer.',
      }),
    ),
    message: Type.Optional(Type.String({ maxLength: 2000 })),
    preNotification: Type.Optional(
      duration({ description: 'How long before the start users are told it is coming.' }),
    ),
  },
  { additionalProperties: false },
);
export type AdvertisementPolicy = Static<typeof AdvertisementPolicy>;

/** The documents, by kind; the keys are the `kind` values of the two files. */
export const documentSchemas = {
  PackageDefinition,
  DeploymentSettings,
  AdvertisementPolicy,
} as const;
export type DocumentKind = keyof typeof documentSchemas;
export interface DocumentTypes {
  PackageDefinition: PackageDefinition;
  DeploymentSettings: DeploymentSettings;
  AdvertisementPolicy: AdvertisementPolicy;
}

/** The JSON Schema files committed in docs/schemas/, by file name (text with a final newline). */
export function publishedSchemas(): Record<string, string> {
  const file = (title: string, schema: TSchema) =>
    JSON.stringify(
      { $schema: 'http://json-schema.org/draft-07/schema#', title, ...schema },
      null,
      2,
    ) + '\n';
  return {
    'package-definition.schema.json': file('reimage package definition', PackageDefinition),
    'deployment-settings.schema.json': file('reimage deployment settings', DeploymentSettings),
    'advertisement-policy.schema.json': file(
      'reimage advertisement notification policy',
      AdvertisementPolicy,
    ),
  };
}
