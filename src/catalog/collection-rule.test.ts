import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import { isReimageError, type ReimageError } from '../errors.js';
import {
  compareVersions,
  compileRule,
  formatRule,
  globMatcher,
  parseRule,
  ruleFields,
  ruleFieldsUsed,
  ruleLimits,
  type MachineFacts,
  type RuleAst,
  type RuleFieldName,
} from './collection-rule.js';

const imageId = 'c0ffee'.padEnd(64, '0');

/** Twelve machines: varied os, sites, disks, addresses and tags, some with missing, null or ill-typed facts. */
const machines: Array<MachineFacts & { name: string }> = [
  {
    name: 'web-paris-01',
    guid: 'g-01',
    site: 'paris',
    os: 'debian',
    os_version: '12',
    arch: 'x86_64',
    manufacturer: 'Dell Inc.',
    model: 'OptiPlex 7090',
    disk_size_gb: 256,
    disk_free_gb: 120,
    memory_gb: 16,
    cpu_count: 8,
    mac: ['52:54:00:aa:00:01'],
    ip: ['10.1.2.10', 'fe80::1%eth0'],
    client_version: '0.3.1',
    last_contact_days: 0.2,
    tags: ['web', 'prod'],
  },
  {
    name: 'web-paris-02',
    guid: 'g-02',
    site: 'paris',
    os: 'debian',
    os_version: '11.7',
    arch: 'x86_64',
    disk_free_gb: 15,
    memory_gb: 8,
    cpu_count: 4,
    mac: ['52:54:00:aa:00:02'],
    ip: ['10.1.3.11/24'],
    client_version: '0.2.9',
    last_contact_days: 3,
    tags: ['web'],
  },
  {
    name: 'kiosk-lyon-01',
    guid: 'g-03',
    site: 'lyon',
    os: 'ubuntu',
    os_version: '22.04',
    arch: 'aarch64',
    disk_free_gb: 40.5,
    memory_gb: 4,
    cpu_count: 4,
    mac: ['52:54:00:BB:00:03'],
    ip: ['10.2.0.5', '2001:db8:2::5'],
    client_version: '0.3.1',
    last_contact_days: 1,
    tags: ['Kiosk'],
  },
  {
    name: 'kiosk-lyon-02',
    guid: 'g-04',
    site: 'lyon',
    os: 'Ubuntu',
    os_version: '22.10',
    arch: 'x86_64',
    disk_free_gb: 19.9,
    memory_gb: 4,
    cpu_count: 2,
    mac: ['a4:bb:6d:00:00:04'],
    ip: ['10.2.0.6'],
    client_version: '0.3.0',
    last_contact_days: 45,
    tags: ['kiosk', 'lab'],
  },
  {
    name: 'LAB-NANTES-07',
    guid: 'g-05',
    site: 'nantes',
    os: 'windows',
    os_version: '10.0.19045',
    arch: 'x86_64',
    manufacturer: 'LENOVO',
    disk_free_gb: 300,
    memory_gb: 32,
    cpu_count: 16,
    ip: ['192.168.7.7', '::ffff:10.1.9.9'],
    client_version: '0.3.1',
    last_contact_days: 0.01,
    tags: [],
  },
  {
    name: 'db-paris-01',
    guid: 'g-06',
    site: 'paris',
    os: 'debian',
    os_version: '12.5',
    arch: 'x86_64',
    manufacturer: 'Dell Inc.',
    disk_free_gb: 800,
    memory_gb: 128,
    cpu_count: 64,
    ip: ['10.1.100.1', '2001:db8:1::10'],
    client_version: '0.3.1',
    last_contact_days: 0.5,
    image: imageId,
    image_name: 'debian-12-db',
    tags: ['db', 'prod'],
  },
  { name: 'new-machine', guid: 'g-07' },
  { name: 'ghost', guid: 'g-08', os: null, site: null, disk_free_gb: null, tags: null, ip: null },
  {
    name: 'win-lyon-03',
    guid: 'g-09',
    site: 'lyon',
    os: 'windows',
    os_version: '11',
    disk_free_gb: 20,
    memory_gb: 16,
    cpu_count: 8,
    ip: ['10.2.1.3'],
    client_version: '0.3.0',
    last_contact_days: 2,
    tags: ['Finance'],
  },
  {
    name: 'rpi-nantes',
    guid: 'g-10',
    site: 'nantes',
    os: 'debian',
    os_version: '9',
    arch: 'armv7l',
    disk_free_gb: 2,
    memory_gb: 1,
    cpu_count: 4,
    ip: ['192.168.7.20'],
    client_version: '0.2.9',
    last_contact_days: 200,
    tags: ['iot'],
  },
  // Facts of the wrong type (a buggy client, an old database row) count as missing.
  {
    name: 'bad-types',
    guid: 'g-11',
    site: 'paris',
    os: 42,
    disk_free_gb: 'lots',
    memory_gb: NaN,
    tags: 'kiosk',
    ip: ['not-an-ip', 7, '10.1.5.5'],
  } as unknown as MachineFacts & { name: string },
  {
    name: 'v6-only',
    guid: 'g-12',
    site: 'paris',
    os: 'fedora',
    os_version: '40',
    arch: 'x86_64',
    disk_free_gb: 60,
    memory_gb: 16.5,
    cpu_count: 8,
    ip: ['2001:db8:1::99'],
    client_version: '0.3.1',
    last_contact_days: 0.1,
    tags: ['web'],
  },
];

const allNames = machines.map((m) => m.name);

/** Each rule with the names of the machines it matches, in table order. */
const membership: Array<[rule: string, members: string[]]> = [
  ['os = "debian"', ['web-paris-01', 'web-paris-02', 'db-paris-01', 'rpi-nantes']],
  ['os = "DEBIAN"', ['web-paris-01', 'web-paris-02', 'db-paris-01', 'rpi-nantes']],
  // A missing, null or ill-typed os is neither equal nor unequal to anything...
  ['os != "debian"', ['kiosk-lyon-01', 'kiosk-lyon-02', 'LAB-NANTES-07', 'win-lyon-03', 'v6-only']],
  // ...but `not` is plain negation, so it includes them.
  [
    'not (os = "debian")',
    [
      'kiosk-lyon-01',
      'kiosk-lyon-02',
      'LAB-NANTES-07',
      'new-machine',
      'ghost',
      'win-lyon-03',
      'bad-types',
      'v6-only',
    ],
  ],
  [
    'os = "debian" and disk_free_gb >= 20 and site in ["paris","lyon"]',
    ['web-paris-01', 'db-paris-01'],
  ],
  [
    'disk_free_gb >= 20',
    ['web-paris-01', 'kiosk-lyon-01', 'LAB-NANTES-07', 'db-paris-01', 'win-lyon-03', 'v6-only'],
  ],
  ['disk_free_gb < 20', ['web-paris-02', 'kiosk-lyon-02', 'rpi-nantes']],
  ['disk_free_gb = 20', ['win-lyon-03']],
  [
    'site in ["Paris", "LYON"]',
    [
      'web-paris-01',
      'web-paris-02',
      'kiosk-lyon-01',
      'kiosk-lyon-02',
      'db-paris-01',
      'win-lyon-03',
      'bad-types',
      'v6-only',
    ],
  ],
  [
    'site not in ["paris"]',
    ['kiosk-lyon-01', 'kiosk-lyon-02', 'LAB-NANTES-07', 'win-lyon-03', 'rpi-nantes'],
  ],
  ['tags has "kiosk"', ['kiosk-lyon-01', 'kiosk-lyon-02']],
  ['not (tags has "prod")', allNames.filter((n) => n !== 'web-paris-01' && n !== 'db-paris-01')],
  ['name ~ "web-*"', ['web-paris-01', 'web-paris-02']],
  ['name ~ "*-LYON-0?"', ['kiosk-lyon-01', 'kiosk-lyon-02', 'win-lyon-03']],
  ['mac ~ "52:54:00:*"', ['web-paris-01', 'web-paris-02', 'kiosk-lyon-01']],
  // A reported prefix length is ignored, and IPv4-mapped IPv6 addresses are IPv4 addresses.
  [
    'ip in subnet "10.1.0.0/16"',
    ['web-paris-01', 'web-paris-02', 'LAB-NANTES-07', 'db-paris-01', 'bad-types'],
  ],
  ['ip in subnet "2001:db8:1::/48"', ['db-paris-01', 'v6-only']],
  ['ip not in subnet "10.0.0.0/8"', ['rpi-nantes', 'v6-only']],
  ['ip in subnet "::/0"', allNames.filter((n) => n !== 'new-machine' && n !== 'ghost')],
  [
    'ip in subnet "0.0.0.0/0"',
    allNames.filter((n) => !['new-machine', 'ghost', 'v6-only'].includes(n)),
  ],
  ['ip in subnet "10.2.0.5"', ['kiosk-lyon-01']],
  [
    'exists disk_free_gb',
    allNames.filter((n) => !['new-machine', 'ghost', 'bad-types'].includes(n)),
  ],
  ['not exists site', ['new-machine', 'ghost']],
  ['exists guid', allNames],
  // Version order: "9" < "11.7" < "12" < "12.5" < "22.04" < "22.10".
  [
    'os_version >= "12"',
    ['web-paris-01', 'kiosk-lyon-01', 'kiosk-lyon-02', 'db-paris-01', 'v6-only'],
  ],
  ['os = "ubuntu" and os_version < "22.10"', ['kiosk-lyon-01']],
  ['client_version < "0.3.0"', ['web-paris-02', 'rpi-nantes']],
  [
    '(site = "lyon" or site = "nantes") and not (tags has "kiosk") and memory_gb >= 16',
    ['LAB-NANTES-07', 'win-lyon-03'],
  ],
  [
    'last_contact_days > 30 or not exists last_contact_days',
    ['kiosk-lyon-02', 'new-machine', 'ghost', 'rpi-nantes', 'bad-types'],
  ],
  ['memory_gb in [4, 16.5]', ['kiosk-lyon-01', 'kiosk-lyon-02', 'v6-only']],
  ['manufacturer ~ "dell*" and cpu_count >= 8', ['web-paris-01', 'db-paris-01']],
  [`image = "${imageId.toUpperCase()}" or image_name ~ "debian-12-*"`, ['db-paris-01']],
  // Keywords and field names are case-insensitive; not binds tighter than and.
  ['NOT Os = "debian" AND Site = "paris"', ['bad-types', 'v6-only']],
  ['tags has "web" and not (ip in subnet "10.0.0.0/8")', ['v6-only']],
  [
    'arch in ["x86_64"] or arch ~ "arm*"',
    [
      'web-paris-01',
      'web-paris-02',
      'kiosk-lyon-02',
      'LAB-NANTES-07',
      'db-paris-01',
      'rpi-nantes',
      'v6-only',
    ],
  ],
  [
    'os !~ "*u*"',
    [
      'web-paris-01',
      'web-paris-02',
      'LAB-NANTES-07',
      'db-paris-01',
      'win-lyon-03',
      'rpi-nantes',
      'v6-only',
    ],
  ],
  // On a list, !~ means: reported, and no element matches (an empty list matches no glob).
  [
    'tags !~ "k*"',
    [
      'web-paris-01',
      'web-paris-02',
      'LAB-NANTES-07',
      'db-paris-01',
      'win-lyon-03',
      'rpi-nantes',
      'v6-only',
    ],
  ],
  [
    'os = "debian" or os = "ubuntu" and memory_gb > 4',
    ['web-paris-01', 'web-paris-02', 'db-paris-01', 'rpi-nantes'],
  ],
  [
    '(os = "debian" or os = "ubuntu") and memory_gb > 4',
    ['web-paris-01', 'web-paris-02', 'db-paris-01'],
  ],
  ['os = "debian"\r\n\tand disk_free_gb >= 10\n', ['web-paris-01', 'web-paris-02', 'db-paris-01']],
];

function members(rule: string): string[] {
  const matches = compileRule(rule);
  return machines.filter((m) => matches(m)).map((m) => m.name);
}

describe('collection rules select machines', () => {
  for (const [rule, expected] of membership) {
    it(rule, () => {
      assert.deepEqual(members(rule), expected);
    });
  }

  it('every comparison on a missing, null or ill-typed field is false, and its negation true', () => {
    const probes: Record<string, string[]> = {
      number: ['= 1', '!= 1', '< 1', '>= 1', 'in [1]', 'not in [1]'],
      string: ['= "a"', '!= "a"', '< "a"', '>= "a"', 'in ["a"]', 'not in ["a"]', '~ "*"', '!~ "a"'],
      'string[]': ['has "a"', '~ "*"', '!~ "a"'],
    };
    const wrong: Record<string, unknown> = { number: 'x', string: 7, 'string[]': 'a' };
    for (const [field, spec] of Object.entries(ruleFields)) {
      for (const probe of probes[spec.type] ?? []) {
        const rule = `${field} ${probe}`;
        for (const facts of [{}, { [field]: null }, { [field]: wrong[spec.type] }]) {
          assert.equal(
            compileRule(rule)(facts as MachineFacts),
            false,
            `${rule} on ${JSON.stringify(facts)}`,
          );
          assert.equal(compileRule(`not (${rule})`)(facts as MachineFacts), true, rule);
        }
      }
      assert.equal(compileRule(`exists ${field}`)({}), false);
    }
    for (const probe of ['in subnet "::/0"', 'not in subnet "::/0"']) {
      for (const facts of [{}, { ip: null }, { ip: '10.0.0.1' }]) {
        assert.equal(compileRule(`ip ${probe}`)(facts as MachineFacts), false, probe);
      }
    }
    assert.equal(compileRule('ip not in subnet "10.0.0.0/8"')({ ip: ['garbage'] }), true);
    assert.equal(compileRule('ip in subnet "::/0"')({ ip: ['garbage', 'fe80::1%'] }), true);
  });

  it('an empty list is reported (exists) but has nothing', () => {
    assert.equal(compileRule('exists tags')({ tags: [] }), true);
    assert.equal(compileRule('tags has "a"')({ tags: [] }), false);
    assert.equal(compileRule('tags ~ "*"')({ tags: [] }), false);
  });
});

/** Invalid rules: the column the error points at and a fragment of its message. */
const invalid: Array<[rule: string, column: number, fragment: string]> = [
  [
    'os = "debian" and dsk_free_gb >= 20',
    19,
    "unknown field 'dsk_free_gb' at column 19; did you mean 'disk_free_gb'?",
  ],
  ['memory = 8', 1, "did you mean 'memory_gb'?"],
  ['x = 1 and', 1, "unknown field 'x'"],
  ['disk_free_gb = "x"', 16, "expected a number for 'disk_free_gb'"],
  ['os > 3', 6, 'expected a string'],
  ['tags = "kiosk"', 6, "'=' does not apply to the list of strings 'tags'"],
  ['tags in ["kiosk"]', 6, "'in' does not apply"],
  ['os has "x"', 4, "'has' does not apply to the string 'os'"],
  ['cpu_count ~ "8"', 11, "'~' does not apply to the number 'cpu_count'"],
  ['site in subnet "10.0.0.0/8"', 9, "'in subnet' does not apply"],
  ['ip in subnet "10.1.2.0/16"', 14, 'did you mean "10.1.0.0/16"?'],
  ['ip in subnet "fd00::1/8"', 14, 'did you mean "fd00::/8"?'],
  ['ip in subnet "10.0.0.0/33"', 14, "'/33' is not a prefix length"],
  ['ip in subnet "fd00:::1/8"', 14, 'not an IPv4 or IPv6 address'],
  ['ip in subnet 10', 14, 'a subnet in double quotes'],
  ['os == "debian"', 4, "'==' is not an operator"],
  ['os = "debian" && site = "paris"', 15, "use 'and'"],
  ["os = 'debian'", 6, 'straight double quotes'],
  ['os = debian', 6, 'write strings in double quotes: "debian"'],
  ['os = "debian', 6, 'the string is not closed'],
  [
    '(os = "debian"',
    15,
    "the rule ends too early at column 15; expected ')' to close the '(' at column 1",
  ],
  ['os = "debian")', 14, "')' has no matching '('"],
  ['', 1, 'the rule is empty'],
  ['   ', 4, 'the rule is empty'],
  ['os = "debian" and', 18, 'the rule ends too early'],
  ['os', 3, 'expected an operator (=, !=, <, <=, >, >=, in, not in, ~, !~)'],
  ['disk_free_gb >= 20GB', 17, 'numbers have no unit'],
  ['os_version = 12.1.3', 14, "'12.1.3' is not a number"],
  ['disk_free_gb > .5', 16, 'write 0.5'],
  ['os = null', 6, 'write not exists os'],
  ['os != null', 7, 'write exists os'],
  ['site in ["paris" "lyon"]', 18, "expected ',' or ']' to close the list at column 9"],
  ['site in "paris"', 9, "expected '[' to start a list"],
  ['os = "a\\qb"', 8, "unknown escape '\\q'"],
  ['os = "debian" adn site = "x"', 15, "did you mean 'and'?"],
  ['os = "debian" site = "x"', 15, "join conditions with 'and' or 'or'"],
  ['os is "debian"', 4, "use '=' to compare"],
  ['os exists', 4, 'write exists os'],
  ['os = os_version', 6, "'os_version' is a field"],
  ['os not = "x"', 8, "expected 'in' after 'not'"],
  ['"debian" = os', 1, 'a condition starts with the field name'],
  ['and os = "x"', 1, "expected a field name, 'not', 'exists' or '(', found 'and'"],
  ['os = "x" or or', 13, "found 'or'"],
  ['os ~ debian*', 6, 'expected a glob pattern in double quotes'],
  ['disk_free_gb > 1e999', 16, 'too large'],
  ['os = "x" # comment', 10, "unexpected character '#'"],
  ['memory_gb ≥ 8', 11, "write '>='"],
  ['os = "x"\nand sitee = "y"', 5, "unknown field 'sitee' at line 2, column 5"],
];

function ruleInvalid(rule: string): ReimageError {
  try {
    parseRule(rule);
  } catch (e) {
    assert.ok(isReimageError(e, 'RULE_INVALID'), `expected RULE_INVALID, got ${String(e)}`);
    return e;
  }
  assert.fail(`the rule parsed: ${rule}`);
}

describe('invalid rules are refused with their position', () => {
  for (const [rule, column, fragment] of invalid) {
    it(JSON.stringify(rule), () => {
      const e = ruleInvalid(rule);
      assert.ok(e.message.includes(fragment), `${e.message}\n  lacks: ${fragment}`);
      assert.equal(e.details.column, column, e.message);
      assert.equal(typeof e.details.expected, 'string');
      const position = e.details.position as number;
      const lineStart = rule.lastIndexOf('\n', position - 1) + 1;
      assert.equal(position - lineStart + 1, column);
      // The message shows the rule's line with a caret under the column.
      const [, shown, carets] = e.message.split('\n');
      assert.equal(shown, `  ${rule.slice(lineStart).split('\n')[0]}`);
      assert.equal(carets?.indexOf('^'), column + 1, e.message);
    });
  }

  it('suggests the closest field in details', () => {
    const e = ruleInvalid('os = "debian" and dsk_free_gb >= 20');
    assert.deepEqual(e.details, {
      position: 18,
      line: 1,
      column: 19,
      expected: 'a field name',
      found: 'dsk_free_gb',
      suggestion: 'disk_free_gb',
    });
  });

  it('shows a window of a long line around the position', () => {
    const rule = `${'os = "x" or '.repeat(100)}sitee = "y"`;
    const e = ruleInvalid(rule);
    assert.equal(e.details.column, 1201);
    const [, shown, carets] = e.message.split('\n');
    assert.ok(shown!.length < 100, shown);
    assert.equal(shown!.slice(carets!.indexOf('^'), carets!.lastIndexOf('^') + 1), 'sitee');
  });
});

describe('limits', () => {
  it(`a rule is at most ${ruleLimits.length} characters`, () => {
    const rule = 'os = "x"';
    parseRule(rule.padEnd(ruleLimits.length));
    const e = ruleInvalid(rule.padEnd(ruleLimits.length + 1));
    assert.equal(e.details.position, ruleLimits.length);
    assert.match(e.message, /longer than 4096 characters/);
  });

  it(`parentheses and not nest at most ${ruleLimits.depth} deep`, () => {
    const d = ruleLimits.depth;
    parseRule(`${'('.repeat(d)}os = "x"${')'.repeat(d)}`);
    parseRule(`${'not '.repeat(d)}exists os`);
    parseRule(`${'not ('.repeat(d / 2)}os = "x"${')'.repeat(d / 2)}`);
    let e = ruleInvalid(`${'('.repeat(d + 1)}os = "x"${')'.repeat(d + 1)}`);
    assert.equal(e.details.column, d + 1);
    assert.match(e.message, /nests deeper than 32/);
    e = ruleInvalid(`${'NOT '.repeat(d + 1)}exists os`);
    assert.equal(e.details.position, 4 * d);
    // Far past the limit, the parser still stops at the limit (no stack overflow).
    e = ruleInvalid('not '.repeat(1000) + 'exists os');
    assert.equal(e.details.position, 4 * d);
    e = ruleInvalid('('.repeat(4000));
    assert.equal(e.details.position, d);
  });

  it('long and/or chains are flat, not deep', () => {
    const rule = Array.from({ length: 200 }, (_, i) => `cpu_count = ${i}`).join(' or ');
    const ast = parseRule(rule);
    assert.equal(ast.kind, 'or');
    assert.equal(ast.kind === 'or' && ast.operands.length, 200);
    assert.equal(compileRule(rule)({ cpu_count: 199 }), true);
  });

  it(`a list holds at most ${ruleLimits.listItems} values`, () => {
    const list = (n: number) => `cpu_count in [${Array(n).fill('1').join(',')}]`;
    parseRule(list(ruleLimits.listItems));
    const e = ruleInvalid(list(ruleLimits.listItems + 1));
    assert.match(e.message, /more than 1000 values/);
    assert.equal(e.details.position, 'cpu_count in ['.length + 2 * ruleLimits.listItems);
  });

  it('glob matching stays linear-ish on hostile patterns', () => {
    const match = globMatcher(`${'*a'.repeat(60)}*b`);
    assert.equal(match('a'.repeat(3000)), false);
    assert.equal(match(`${'a'.repeat(3000)}b`), true);
  });
});

describe('formatRule', () => {
  const canonical: Array<[rule: string, formatted: string]> = [
    [
      'OS="debian"AND(site="paris"OR site = "lyon")',
      'os = "debian" and (site = "paris" or site = "lyon")',
    ],
    ['(os = "x") or (site = "x")', 'os = "x" or site = "x"'],
    ['((os = "x" or site = "y") or arch = "z")', 'os = "x" or site = "y" or arch = "z"'],
    ['not os = "x" and site = "y"', 'not (os = "x") and site = "y"'],
    ['not (os = "x" and site = "y")', 'not (os = "x" and site = "y")'],
    ['NOT   NOT EXISTS Tags', 'not (not exists tags)'],
    ['site in ["a","b",]', 'site in ["a", "b"]'],
    ['site not in []', 'site not in []'],
    ['cpu_count in [-0, 1.50, 2e3, 1E-7]', 'cpu_count in [0, 1.5, 2000, 1e-7]'],
    ['ip NOT IN SUBNET "10.0.0.0/8"', 'ip not in subnet "10.0.0.0/8"'],
    ['name ~ "a\\u0041\\t\\"\\\\"', 'name ~ "aA\\t\\"\\\\"'],
    ['name = "é\\u0001"', 'name = "é\\u0001"'],
  ];
  for (const [rule, formatted] of canonical) {
    it(`${rule} → ${formatted}`, () => {
      assert.equal(formatRule(parseRule(rule)), formatted);
    });
  }

  it('round-trips every rule of the tables: parse(format(ast)) equals ast', () => {
    for (const rule of [...membership.map(([r]) => r), ...canonical.map(([r]) => r)]) {
      const ast = parseRule(rule);
      const text = formatRule(ast);
      assert.deepEqual(parseRule(text), ast, `${rule}\n→ ${text}`);
      assert.equal(formatRule(parseRule(text)), text);
      assert.deepEqual(members(text), members(rule));
    }
  });

  it('round-trips random rules', () => {
    let seed = 42;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const pick = <T>(xs: readonly T[]): T => xs[rand(xs.length)]!;
    const strings = [
      '',
      'debian',
      'a"b',
      'back\\slash',
      'tab\there',
      'line\nbreak',
      'ünï',
      '\u0007',
      '*?',
    ];
    const numbers = [0, -1, 1.5, 1e21, 123456789.125, 1e-9, -2.5e-300];
    const fields = Object.keys(ruleFields) as RuleFieldName[];
    const leaf = (): RuleAst => {
      const field = pick(fields);
      const spec = ruleFields[field];
      const value = () => (spec.type === 'number' ? pick(numbers) : pick(strings));
      if (rand(6) === 0) return { kind: 'exists', field };
      if (spec.type === 'string[]') {
        if (field === 'ip' && rand(2) === 0) {
          return {
            kind: 'subnet',
            field,
            negated: rand(2) === 0,
            cidr: pick(['10.0.0.0/8', '::/0', 'fd00::/8', '1.2.3.4']),
          };
        }
        return rand(2) === 0
          ? { kind: 'has', field, value: pick(strings) }
          : { kind: 'match', field, negated: rand(2) === 0, pattern: pick(strings) };
      }
      switch (rand(3)) {
        case 0:
          return {
            kind: 'compare',
            field,
            op: pick(['=', '!=', '<', '<=', '>', '>='] as const),
            value: value(),
          };
        case 1:
          return {
            kind: 'in',
            field,
            negated: rand(2) === 0,
            values: Array.from({ length: rand(4) }, value),
          };
        default:
          return spec.type === 'string'
            ? { kind: 'match', field, negated: rand(2) === 0, pattern: pick(strings) }
            : { kind: 'compare', field, op: '=', value: value() };
      }
    };
    const node = (depth: number): RuleAst => {
      if (depth > 4 || rand(3) === 0) return leaf();
      const k = rand(3);
      if (k === 0) return { kind: 'not', operand: node(depth + 1) };
      const kind = k === 1 ? 'and' : 'or';
      const operands = Array.from({ length: 2 + rand(3) }, () => node(depth + 1)).flatMap((o) =>
        o.kind === kind ? o.operands : [o],
      );
      return { kind, operands };
    };
    for (let i = 0; i < 500; i++) {
      const ast = node(0);
      const text = formatRule(ast);
      assert.deepEqual(parseRule(text), ast, text);
    }
  });
});

describe('ruleFieldsUsed', () => {
  it('lists each field once, sorted', () => {
    assert.deepEqual(
      ruleFieldsUsed(
        parseRule(
          '(os = "x" or not exists tags) and os_version > "1" and ip in subnet "::/0" and os != "y"',
        ),
      ),
      ['ip', 'os', 'os_version', 'tags'],
    );
    assert.deepEqual(ruleFieldsUsed(parseRule('exists guid')), ['guid']);
  });
});

describe('compareVersions', () => {
  const ascending = [
    '',
    '01',
    '1',
    '1.0',
    '1.0-rc1',
    '1.2',
    '1.10',
    '2',
    '9',
    '10.0.19045',
    '11',
    '11.7',
    '12',
    '12.5',
    '22.04',
    '22.10',
    'a',
    'b',
  ];
  it('orders versions', () => {
    for (let i = 0; i + 1 < ascending.length; i++) {
      const [a, b] = [ascending[i]!, ascending[i + 1]!];
      assert.equal(compareVersions(a, b), -1, `${a} < ${b}`);
      assert.equal(compareVersions(b, a), 1, `${b} > ${a}`);
      assert.equal(compareVersions(a, a), 0);
    }
    assert.equal(compareVersions('9'.repeat(40), `1${'0'.repeat(40)}`), -1);
  });
});

describe('globMatcher', () => {
  const cases: Array<[pattern: string, text: string, matches: boolean]> = [
    ['*', '', true],
    ['', '', true],
    ['', 'a', false],
    ['?', '', false],
    ['?', 'é', true],
    ['?', '😀', true],
    ['a*b*c', 'aXbYc', true],
    ['a*b*c', 'aXbYcZ', false],
    ['*.example.org', 'HOST.Example.ORG', true],
    ['web-??', 'web-01', true],
    ['web-??', 'web-1', false],
    ['a\\*b', 'a*b', true],
    ['a\\*b', 'aXb', false],
    ['a\\', 'a\\', true],
    ['**a**', 'bab', true],
  ];
  for (const [pattern, text, expected] of cases) {
    it(`${JSON.stringify(pattern)} ${expected ? 'matches' : 'does not match'} ${JSON.stringify(text)}`, () => {
      assert.equal(globMatcher(pattern)(text), expected);
    });
  }
});

describe('docs/collections.md', () => {
  const doc = readFileSync(new URL('../../../docs/collections.md', import.meta.url), 'utf8');
  const cells = (line: string) =>
    line
      .split('|')
      .slice(1, -1)
      .map((c) => c.trim());
  const block = (heading: string) => {
    const start = doc.indexOf('```', doc.indexOf(heading)) + 3;
    return doc.slice(doc.indexOf('\n', start) + 1, doc.indexOf('```', start)).trimEnd();
  };

  it('lists every field with its type and description (the table is kept in step with ruleFields)', () => {
    const rows = doc
      .split('\n')
      .filter((l) => /^\|\s*`[a-z_]+`\s*\|/.test(l))
      .map(cells);
    const expected = Object.entries(ruleFields).map(([name, spec]) => [
      `\`${name}\``,
      spec.type,
      spec.description,
    ]);
    assert.deepEqual(rows, expected);
  });

  it('has examples that parse', () => {
    const section = doc.slice(doc.indexOf('## Examples'), doc.indexOf('## Grammar'));
    const rules = section
      .split('\n')
      .filter((l) => l.startsWith('| `'))
      .map((l) => cells(l)[0]!.slice(1, -1));
    assert.ok(rules.length >= 5);
    for (const rule of rules) assert.equal(formatRule(parseRule(rule)), rule);
  });

  it('shows the canonical form as formatRule gives it', () => {
    const [rule, canonical] = block('## Canonical form').split('\n');
    assert.equal(formatRule(parseRule(rule!)), canonical);
  });

  it('shows an error as parseRule gives it', () => {
    const [first, ...rest] = block('## Errors').split('\n');
    const e = ruleInvalid(rest[0]!.trim());
    assert.equal(e.message, [first, ...rest].join('\n'));
  });
});
