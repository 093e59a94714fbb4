import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import { isReimageError, type ErrorCode } from '../errors.js';
import {
  MAX_DOCUMENT_BYTES,
  PERMISSION_EXPECTED,
  formatDuration,
  parseDuration,
  parsePackageFile,
  validateDocument,
  type FileKind,
  type Problem,
} from './document.js';

const HEX = 'a'.repeat(64);

const definition = (body: string) =>
  `apiVersion: reimage/v1\nkind: PackageDefinition\nname: debian-12\nversion: '1'\n${body}`;
const withImage = (body: string) => definition(`image: {name: debian-12-base}\n${body}`);
const settings = (body: string) => `apiVersion: reimage/v1\nkind: DeploymentSettings\n${body}`;
const rule = (fields: string) =>
  settings(`migration:\n  rules:\n    - {name: r, kind: user-files, ${fields}}\n`);

interface Bad {
  name: string;
  kind?: FileKind;
  text: string;
  code?: ErrorCode;
  path?: string;
  expected?: RegExp;
  line?: number;
  found?: string;
}

const bad: Bad[] = [
  // --- not YAML, or not one document
  { name: 'unclosed flow sequence', text: settings('wipe: {keep: [/a\n'), code: 'YAML_INVALID' },
  {
    name: 'duplicate keys',
    text: settings('prestage: {}\nprestage: {}\n'),
    code: 'YAML_INVALID',
    line: 4,
  },
  {
    name: 'tab indentation',
    text: settings('options:\n\tallowDecline: true\n'),
    code: 'YAML_INVALID',
  },
  {
    name: 'alias bomb',
    text: `a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n`,
    code: 'YAML_INVALID',
  },
  {
    name: 'two documents',
    text: settings('---\n') + settings(''),
    path: '',
    expected: /must hold one DeploymentSettings document/,
    line: 3,
  },
  { name: 'empty file', text: '# nothing\n', path: '', expected: /the file is empty/ },
  {
    name: 'oversized',
    text: settings(`# ${'x'.repeat(MAX_DOCUMENT_BYTES)}\n`),
    path: '',
    expected: /at most 1048576 bytes/,
  },
  { name: 'a list, not a mapping', text: '- a\n- b\n', path: '', expected: /must be a mapping/ },

  // --- package definition
  {
    name: 'wrong apiVersion',
    kind: 'PackageDefinition',
    text: withImage('').replace('v1', 'v2'),
    path: '/apiVersion',
    expected: /must be "reimage\/v1"/,
    found: '"reimage/v2"',
  },
  {
    name: 'settings parsed as a definition',
    kind: 'PackageDefinition',
    text: settings(''),
    path: '/kind',
    expected: /must be "PackageDefinition"/,
  },
  {
    name: 'missing name',
    kind: 'PackageDefinition',
    text: withImage('').replace('name: debian-12\n', ''),
    path: '/name',
    expected: /missing: the key "name" is required/,
  },
  {
    name: 'bad package name',
    kind: 'PackageDefinition',
    text: withImage('').replace('name: debian-12', 'name: -x'),
    path: '/name',
    expected: /must be a package name/,
  },
  {
    name: 'version read as a number',
    kind: 'PackageDefinition',
    text: withImage('').replace("'1'", '12'),
    path: '/version',
    expected: /must be a string \(write it in quotes: "12"\)/,
    line: 4,
  },
  {
    name: 'image by both name and id',
    kind: 'PackageDefinition',
    text: definition(`image: {name: x, id: ${HEX}}\n`),
    path: '/image',
    expected: /exactly one of name, id/,
    line: 5,
  },
  {
    name: 'image by neither',
    kind: 'PackageDefinition',
    text: definition('image: {}\n'),
    path: '/image',
    expected: /exactly one of name, id/,
  },
  {
    name: 'image missing',
    kind: 'PackageDefinition',
    text: definition(''),
    path: '/image',
    expected: /missing: the key "image"/,
  },
  {
    name: 'image id not hex',
    kind: 'PackageDefinition',
    text: definition('image: {id: abc}\n'),
    path: '/image/id',
    expected: /64 lowercase hex digits/,
  },
  {
    name: 'image name that is an id',
    kind: 'PackageDefinition',
    text: definition(`image: {name: '${HEX}'}\n`),
    path: '/image/name',
    expected: /not 64 hex digits/,
  },
  {
    name: 'unknown format',
    kind: 'PackageDefinition',
    text: withImage('format: squashfs\n'),
    path: '/format',
    expected: /must be one of native, opaque/,
  },
  {
    name: 'misspelt key',
    kind: 'PackageDefinition',
    text: withImage('descripton: x\n'),
    path: '/descripton',
    expected: /unknown key "descripton"; did you mean "description"\?/,
    line: 6,
  },
  {
    name: 'program without command',
    kind: 'PackageDefinition',
    text: withImage('program: {runAs: user}\n'),
    path: '/program/command',
    expected: /missing: the key "command"/,
  },
  {
    name: 'program runAs',
    kind: 'PackageDefinition',
    text: withImage('program: {command: x, runAs: root}\n'),
    path: '/program/runAs',
    expected: /one of system, user/,
  },
  {
    name: 'program runtime 0',
    kind: 'PackageDefinition',
    text: withImage('program: {command: x, maxRuntimeMinutes: 0}\n'),
    path: '/program/maxRuntimeMinutes',
    expected: /at least 1/,
  },
  {
    name: 'environment variable name',
    kind: 'PackageDefinition',
    text: withImage('program: {command: x, environment: {1X: y}}\n'),
    path: '/program/environment/1X',
    expected: /is not a valid key/,
  },
  {
    name: 'secret in a definition',
    kind: 'PackageDefinition',
    text: withImage('program: {command: x, password: hunter2}\n'),
    path: '/program/password',
    expected: /unknown key "password"/,
  },
  {
    name: 'secret marker in the environment',
    kind: 'PackageDefinition',
    text: withImage('program: {command: x, environment: {TOKEN: {secret: set}}}\n'),
    path: '/program/environment/TOKEN',
    expected: /must be a string/,
  },

  // --- deployment settings: options
  {
    name: 'permission required and install on no answer',
    text: settings('options:\n  requireUserPermission: true\n  whenNoAnswer: install\n'),
    path: '/options/whenNoAnswer',
    expected: new RegExp(`^${PERMISSION_EXPECTED}$`),
    found: '"install"',
    line: 5,
  },
  {
    name: 'unknown whenNoAnswer',
    text: settings('options: {whenNoAnswer: ignore}\n'),
    path: '/options/whenNoAnswer',
    expected: /one of install, postpone, decline/,
  },
  {
    name: 'duration in words',
    text: settings('options: {postponement: {maximum: 3 days}}\n'),
    path: '/options/postponement/maximum',
    expected: /must be a duration such as "3d"/,
  },
  {
    name: 'duration units out of order',
    text: settings('options: {postponement: {maximum: 6h2d}}\n'),
    path: '/options/postponement/maximum',
    expected: /duration/,
  },
  {
    name: 'empty duration',
    text: settings("options: {postponement: {maximum: ''}}\n"),
    path: '/options/postponement/maximum',
    expected: /duration/,
  },
  {
    name: 'zero postponement allowed',
    text: settings('options: {postponement: {allowed: true, maximum: 0h}}\n'),
    path: '/options/postponement/maximum',
    expected: /longer than 0/,
  },
  {
    name: 'boolean as a string',
    text: settings("options: {redeploySameImage: 'false'}\n"),
    path: '/options/redeploySameImage',
    expected: /must be true or false/,
    found: '"false"',
  },
  {
    name: 'yes is not a boolean',
    text: settings('prestage: {enabled: yes}\n'),
    path: '/prestage/enabled',
    expected: /must be true or false/,
  },
  {
    name: 'misspelt option',
    text: settings('options: {allowDecine: true}\n'),
    path: '/options/allowDecine',
    expected: /did you mean "allowDecline"/,
  },
  {
    name: 'misspelt section',
    text: settings('mashineState: {}\n'),
    path: '/mashineState',
    expected: /did you mean "machineState"/,
  },
  {
    name: '__proto__ key',
    text: settings('__proto__: {polluted: true}\n'),
    path: '/__proto__',
    expected: /unknown key/,
  },

  // --- machine and client state
  {
    name: 'machine state typo',
    text: settings('machineState: {computerName: migrat}\n'),
    path: '/machineState/computerName',
    expected: /must be "migrate" or a mapping with "set"/,
  },
  {
    name: 'bad computer name',
    text: settings("machineState: {computerName: {set: 'PC_%SERIAL%'}}\n"),
    path: '/machineState/computerName/set',
    expected: /computer name/,
  },
  {
    name: 'secret of the wrong type',
    text: settings('machineState: {productKey: {set: 12345}}\n'),
    path: '/machineState/productKey/set',
    expected: /a string or a mapping with "secret"/,
  },
  {
    name: 'static address not an address',
    text: settings(
      'machineState: {ipAddress: {set: {address: 300.1.1.1, prefix: 24, gateway: 10.0.0.1}}}\n',
    ),
    path: '/machineState/ipAddress/set/address',
    expected: /IPv4 or IPv6/,
  },
  {
    name: 'IPv4 prefix over 32',
    text: settings(
      'machineState: {ipAddress: {set: {address: 10.0.0.2, prefix: 33, gateway: 10.0.0.1}}}\n',
    ),
    path: '/machineState/ipAddress/set/prefix',
    expected: /at most 32/,
  },
  {
    name: 'ip address neither dhcp nor static',
    text: settings('machineState: {ipAddress: {set: static}}\n'),
    path: '/machineState/ipAddress/set',
    expected: /"dhcp" or a mapping with "address"/,
  },
  {
    name: 'client state value',
    text: settings('clientState: {guid: new}\n'),
    path: '/clientState/guid',
    expected: /must be one of migrate, fresh/,
  },
  {
    name: 'site code',
    text: settings("clientState: {siteAssignment: {site: 'a b'}}\n"),
    path: '/clientState/siteAssignment/site',
    expected: /site code/,
  },

  // --- state store and wipe
  {
    name: 'unknown state store type',
    text: settings('stateStore: {type: nfs}\n'),
    path: '/stateStore/type',
    expected: /must be one of local, share/,
    found: '"nfs"',
  },
  {
    name: 'state store without type',
    text: settings('stateStore: {path: /x}\n'),
    path: '/stateStore/type',
    expected: /missing: the key "type"/,
  },
  {
    name: 'share URL scheme',
    text: settings('stateStore: {type: share, url: ftp://h/s, username: u, password: p}\n'),
    path: '/stateStore/url',
    expected: /smb:\/\/host\/share/,
  },
  {
    name: 'share without username',
    text: settings('stateStore: {type: share, url: smb://h/s, password: p}\n'),
    path: '/stateStore/username',
    expected: /missing/,
  },
  {
    name: 'wrong secret marker',
    text: settings(
      'stateStore: {type: share, url: smb://h/s, username: u, password: {secret: yes}}\n',
    ),
    path: '/stateStore/password/secret',
    expected: /must be "set"/,
  },
  {
    name: 'relative state store path',
    text: settings('stateStore: {type: local, path: state}\n'),
    path: '/stateStore/path',
    expected: /absolute path/,
  },
  {
    name: 'state store path with ..',
    text: settings('stateStore: {type: local, path: /srv/../var}\n'),
    path: '/stateStore/path',
    expected: /absolute path/,
  },
  {
    name: 'state store inside the wipe',
    text: settings('stateStore: {type: local, path: /var/state}\n'),
    path: '/stateStore/path',
    expected: /inside wipe.osPaths entry \/var/,
  },
  {
    name: 'default state store no longer kept',
    text: settings('wipe: {keep: []}\n'),
    path: '/wipe/keep',
    expected: /must keep the local state store \/var\/lib\/reimage\/state/,
  },
  {
    name: 'no OS paths',
    text: settings('wipe: {osPaths: []}\n'),
    path: '/wipe/osPaths',
    expected: /must not be empty/,
  },
  {
    name: 'rollback too long',
    text: settings('rollback: {retainDays: 400}\n'),
    path: '/rollback/retainDays',
    expected: /at most 365/,
  },
  {
    name: 'rollback fraction',
    text: settings('rollback: {retainDays: 1.5}\n'),
    path: '/rollback/retainDays',
    expected: /whole number/,
  },

  // --- migration
  {
    name: 'unknown rule set',
    text: settings('migration: {ruleSets: [user-document]}\n'),
    path: '/migration/ruleSets/0',
    expected: /built-in rule set: .*did you mean "user-documents"/,
  },
  {
    name: 'machine state is not a rule set',
    text: settings('migration: {ruleSets: [machine-state]}\n'),
    path: '/migration/ruleSets/0',
    expected: /chosen in machineState and clientState/,
  },
  {
    name: 'rule set listed twice',
    text: settings('migration: {ruleSets: [user-documents, user-documents]}\n'),
    path: '/migration/ruleSets/1',
    expected: /must not repeat/,
  },
  {
    name: 'pattern not anchored',
    text: rule("include: ['Documents/**']"),
    path: '/migration/rules/0/include/0',
    expected: /must start with "\/" or "~\/"/,
  },
  {
    name: 'pattern with ..',
    text: rule("include: ['~/../etc/**']"),
    path: '/migration/rules/0/include/0',
    expected: /must not have "\.\." segments/,
  },
  {
    name: 'pattern with empty types',
    text: rule("include: ['~/x', '~/y []']"),
    path: '/migration/rules/0/include/1',
    expected: /comma-separated file name globs/,
  },
  {
    name: 'bad exclude pattern',
    text: rule("include: ['~/x'], unconditionalExclude: ['x/**']"),
    path: '/migration/rules/0/unconditionalExclude/0',
    expected: /must start with/,
  },
  {
    name: 'rule kind',
    text: rule("kind: files, include: ['~/x']").replace('kind: user-files, ', ''),
    path: '/migration/rules/0/kind',
    expected: /one of os-settings, app-settings, user-files/,
  },
  {
    name: 'rule without include',
    text: rule('users: {}'),
    path: '/migration/rules/0/include',
    expected: /missing/,
  },
  {
    name: 'rule with empty include',
    text: rule('include: []'),
    path: '/migration/rules/0/include',
    expected: /must not be empty/,
  },
  {
    name: 'two rules with one name',
    text: settings(
      "migration:\n  rules:\n    - {name: r, kind: user-files, include: ['~/a']}\n    - {name: r, kind: user-files, include: ['~/b']}\n",
    ),
    path: '/migration/rules/1/name',
    expected: /must be unique/,
    line: 6,
  },
];

function parseError(
  kind: FileKind,
  text: string,
): { code: string; message: string; problems: Problem[]; details: Record<string, unknown> } {
  try {
    parsePackageFile(kind, text, 'deploy.yaml');
  } catch (e) {
    assert.ok(isReimageError(e), `not a ReimageError: ${String(e)}`);
    return {
      code: e.code,
      message: e.message,
      problems: (e.details.problems ?? []) as Problem[],
      details: e.details,
    };
  }
  assert.fail('the document was accepted');
}

describe('bad package documents are refused with what is wrong', () => {
  assert.ok(bad.length >= 30);
  for (const c of bad) {
    it(c.name, () => {
      const err = parseError(c.kind ?? 'DeploymentSettings', c.text);
      assert.equal(err.code, c.code ?? 'VALIDATION_FAILED', err.message);
      if (err.code === 'YAML_INVALID') {
        assert.match(err.message, /^deploy\.yaml(:\d+:\d+)?: \S/);
        if (c.line !== undefined) assert.equal(err.details.line, c.line);
        return;
      }
      const p = err.problems.find((p) => p.path === c.path);
      assert.ok(p, `no problem at ${c.path}; got ${err.message}`);
      assert.equal(p.file, 'deploy.yaml');
      if (c.expected) assert.match(p.expected, c.expected);
      if (c.line !== undefined) assert.equal(p.line, c.line);
      if (c.found !== undefined) assert.equal(p.found, c.found);
      assert.ok(err.message.includes(`${p.path || '/'}: ${p.expected}`), err.message);
    });
  }
});

describe('problem messages', () => {
  it('say file, line, path, expected and found in one line', () => {
    const err = parseError(
      'DeploymentSettings',
      settings('options:\n  requireUserPermission: true\n  whenNoAnswer: install\n'),
    );
    assert.equal(
      err.message,
      'deploy.yaml:5 /options/whenNoAnswer: must be one of postpone, decline when requireUserPermission is true (found "install")',
    );
  });

  it('list every problem, in file order', () => {
    const err = parseError(
      'DeploymentSettings',
      settings('prestage: {enabled: 1}\noptions: {allowDecline: no}\nrollback: {days: 1}\n'),
    );
    assert.deepEqual(
      err.problems.map((p) => [p.line, p.path]),
      [
        [3, '/prestage/enabled'],
        [4, '/options/allowDecline'],
        [5, '/rollback/days'],
      ],
    );
    assert.match(err.message, /^3 problems:\n {2}deploy\.yaml:3 /);
  });

  it('report only the problems of the union branch the user meant', () => {
    const err = parseError(
      'DeploymentSettings',
      settings(
        'stateStore: {type: share, url: smb://h/s, username: u, password: p, encrypt: maybe}\n',
      ),
    );
    assert.deepEqual(
      err.problems.map((p) => p.path),
      ['/stateStore/encrypt'],
    );
  });
});

describe('good documents', () => {
  const example = (name: string) =>
    readFileSync(new URL(`../../../examples/packages/${name}`, import.meta.url), 'utf8');

  it('the examples validate', () => {
    const def = parsePackageFile(
      'PackageDefinition',
      example('debian-12.package.yaml'),
      'debian-12.package.yaml',
    );
    assert.equal(def.image.name, 'debian-12-desktop');
    const s = parsePackageFile(
      'DeploymentSettings',
      example('debian-12.deploy.yaml'),
      'debian-12.deploy.yaml',
    );
    assert.equal(s.options?.whenNoAnswer, 'postpone');
    assert.equal(
      s.migration?.rules?.[0]?.include[1],
      '~/.local/share/accounting/** [*.db, *.conf]',
    );
  });

  it('the minimal documents validate and are returned as written', () => {
    assert.deepEqual(parsePackageFile('DeploymentSettings', settings(''), 'd.yaml'), {
      apiVersion: 'reimage/v1',
      kind: 'DeploymentSettings',
    });
    const def = parsePackageFile(
      'PackageDefinition',
      definition(`image: {id: ${HEX}}\n`),
      'p.yaml',
    );
    assert.equal(def.format, undefined);
  });

  it('JSON is YAML too', () => {
    const json = JSON.stringify({
      apiVersion: 'reimage/v1',
      kind: 'DeploymentSettings',
      options: { allowDecline: true },
    });
    assert.equal(
      parsePackageFile('DeploymentSettings', json, 'd.json').options?.allowDecline,
      true,
    );
  });

  it('permission required alone defaults to postpone, which is valid', () => {
    parsePackageFile(
      'DeploymentSettings',
      settings('options: {requireUserPermission: true, whenNoAnswer: decline}\n'),
      'd.yaml',
    );
  });

  it('a share state store with a marker for its stored password', () => {
    parsePackageFile(
      'DeploymentSettings',
      settings(
        'stateStore: {type: share, url: https://dav.example/state, username: u, password: {secret: set}}\n',
      ),
      'd.yaml',
    );
  });
});

describe('advertisement policies (JSON bodies)', () => {
  const cases: [string, unknown, string, RegExp][] = [
    ['message too long', { message: 'x'.repeat(2001) }, '/message', /at most 2000 characters/],
    ['deadline not a date-time', { deadline: 'tomorrow' }, '/deadline', /ISO 8601 date-time/],
    ['countdown in words', { countdown: '15 minutes' }, '/countdown', /duration/],
    [
      'permission and install',
      { requireUserPermission: true, whenNoAnswer: 'install' },
      '/whenNoAnswer',
      /when requireUserPermission is true/,
    ],
    [
      'unknown key',
      { postponeMaximum: '1d' },
      '/postponeMaximum',
      /did you mean "postponementMaximum"/,
    ],
  ];
  for (const [name, value, path, expected] of cases) {
    it(name, () => {
      assert.throws(
        () => validateDocument('AdvertisementPolicy', value),
        (e) => {
          assert.ok(isReimageError(e, 'VALIDATION_FAILED'));
          const p = (e.details.problems as Problem[]).find((p) => p.path === path);
          assert.ok(p, e.message);
          assert.equal(p.file, 'request body');
          assert.equal(p.line, undefined);
          assert.match(p.expected, expected);
          return true;
        },
      );
    });
  }

  it('a full policy validates', () => {
    validateDocument('AdvertisementPolicy', {
      requireUserPermission: true,
      allowDecline: false,
      postponementMaximum: '1d',
      whenNoAnswer: 'decline',
      deadline: '2025-03-01T18:00:00Z',
      countdown: '15m',
      message: 'Your computer gets Debian 12 tonight.',
      preNotification: '2d',
    });
  });
});

describe('durations', () => {
  it('parse', () => {
    assert.equal(parseDuration('3d'), 3 * 86_400_000);
    assert.equal(parseDuration('2d6h'), 54 * 3_600_000);
    assert.equal(parseDuration('15m'), 900_000);
    assert.equal(parseDuration('1h30m15s'), 5_415_000);
    assert.equal(parseDuration('0s'), 0);
  });

  it('refuse anything else', () => {
    for (const text of ['', '3', '3 d', 'd', '6h2d', '1.5h', '-1h', '3D', '1w', '123456h']) {
      assert.throws(
        () => parseDuration(text),
        (e) => isReimageError(e, 'INVALID_ARGUMENT'),
        text,
      );
    }
  });

  it('format to the shortest text and round-trip', () => {
    assert.equal(formatDuration(0), '0s');
    assert.equal(formatDuration(54 * 3_600_000), '2d6h');
    assert.equal(formatDuration(72 * 3_600_000), '3d');
    assert.equal(formatDuration(90_400), '1m30s');
    for (const text of ['3d', '2d6h', '15m', '1d1h1m1s', '45s']) {
      assert.equal(formatDuration(parseDuration(text)), text);
    }
    assert.throws(() => formatDuration(-1), RangeError);
  });
});
