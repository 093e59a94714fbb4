import { test } from 'node:test';
import assert from 'node:assert/strict';
import { moduleSpecifiers, stuff, writeTar } from './bundle.js';

test('moduleSpecifiers finds static, dynamic, re-export and worker specifiers', () => {
  const js = [
    "import { a } from './a.js';",
    'import {',
    '  b,',
    "} from 'zstd-napi';",
    "import './side.js';",
    "export { c } from '../c.js';",
    "export * from '@scope/pkg/sub';",
    "const m = await import('./formats/tar/index.js');",
    "const w = new URL('./apply-worker.js', import.meta.url);",
    'const dynamic = await import(somePath);',
    "import fs from 'node:fs';",
    '/**',
    " * Workers are named with `new URL('./x.js', import.meta.url)`; see import('./doc.js').",
    ' */',
    "const u = 'http://x/'; // or import('./commented.js')",
  ].join('\n');
  assert.deepEqual(moduleSpecifiers(js).sort(), [
    '../c.js',
    './a.js',
    './apply-worker.js',
    './formats/tar/index.js',
    './side.js',
    '@scope/pkg/sub',
    'node:fs',
    'zstd-napi',
  ]);
});

test('stuff never leaves the end of a block comment in the archive', () => {
  const data = Buffer.from('a*/b**//*\x01*');
  const s = stuff(data);
  assert.equal(s.includes('*/'), false);
  assert.deepEqual(s, Buffer.from('a*\x01/b*\x01*\x01//*\x01\x01*\x01'));
});

test('writeTar writes ustar that tar tools read, long names included', () => {
  const long = `node_modules/${'x'.repeat(120)}/${'y'.repeat(90)}.js`;
  const tar = writeTar([
    { name: 'package.json', data: Buffer.from('{}'), executable: false },
    { name: long, data: Buffer.from('long'), executable: true },
  ]);
  assert.equal(tar.length % 512, 0);
  assert.equal(tar.subarray(257, 262).toString(), 'ustar');
  // The long name goes in the ustar prefix field.
  assert.equal(tar.subarray(1024 + 345, 1024 + 345 + 13).toString(), 'node_modules/');
});
