import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import { Ajv } from 'ajv';
import formats from 'ajv-formats';

import {
  AdvertisementPolicy,
  DeploymentSettings,
  documentSchemas,
  PackageDefinition,
  Secret,
  publishedSchemas,
} from './schema.js';
import { secretPaths } from './secrets.js';

interface Node {
  properties?: Record<string, Node>;
  patternProperties?: Record<string, Node>;
  anyOf?: Node[];
  items?: Node;
}

/** The schema as the plain JSON it publishes. */
const plain = (schema: unknown): Node => JSON.parse(JSON.stringify(schema)) as Node;

/** JSON pointers of every place in `schema` that holds a Secret ("*" for array items). */
function secretsIn(schema: Node, pointer = ''): string[] {
  if (JSON.stringify(schema) === JSON.stringify(Secret)) return [pointer];
  return [
    ...Object.entries(schema.properties ?? {}).flatMap(([k, s]) => secretsIn(s, `${pointer}/${k}`)),
    ...Object.values(schema.patternProperties ?? {}).flatMap((s) => secretsIn(s, `${pointer}/*`)),
    ...(schema.anyOf ?? []).flatMap((s) => secretsIn(s, pointer)),
    ...(schema.items ? secretsIn(schema.items, `${pointer}/*`) : []),
  ];
}

describe('schemas', () => {
  it('the published docs/schemas files are what the code generates (run `npm run docs`)', () => {
    for (const [name, text] of Object.entries(publishedSchemas())) {
      const committed = readFileSync(
        new URL(`../../../docs/schemas/${name}`, import.meta.url),
        'utf8',
      );
      assert.deepEqual(JSON.parse(committed), JSON.parse(text), `docs/schemas/${name} is stale`);
    }
  });

  it('the secret-path list names every secret of the deployment settings schema', () => {
    assert.deepEqual(secretsIn(plain(DeploymentSettings)).sort(), [...secretPaths].sort());
  });

  it('a package definition holds no secrets (it is copied to distribution points)', () => {
    assert.deepEqual(secretsIn(plain(PackageDefinition)), []);
  });

  it('every object forbids unknown keys', () => {
    const open: string[] = [];
    const walk = (s: Node & { type?: string; additionalProperties?: unknown }, at: string) => {
      if (s.type === 'object' && s.additionalProperties !== false) open.push(at);
      Object.entries(s.properties ?? {}).forEach(([k, c]) => walk(c, `${at}/${k}`));
      Object.values(s.patternProperties ?? {}).forEach((c) => walk(c, `${at}/*`));
      (s.anyOf ?? []).forEach((c) => walk(c, at));
      if (s.items) walk(s.items, `${at}/*`);
    };
    walk(plain(DeploymentSettings), '');
    walk(plain(PackageDefinition), '');
    walk(plain(AdvertisementPolicy), '');
    assert.deepEqual(open, []);
  });

  it("compile under fastify's Ajv options (strict schema, defaults, coercion)", () => {
    const ajv = new Ajv({ coerceTypes: 'array', useDefaults: true, removeAdditional: true });
    formats.default(ajv);
    for (const schema of Object.values(documentSchemas)) ajv.compile(schema);
  });
});
