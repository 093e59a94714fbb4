import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'node:test';
import type { ImageRecord } from '../catalog/catalog.js';
import { resolvePe, waveOf } from './policy.js';

const ad = { id: 'ad-1' };
const ids = (n: number) => Array.from({ length: n }, () => randomUUID());

describe('rollout waves', () => {
  it('percentage waves keep each machine in its wave as the collection grows', () => {
    const first = ids(50);
    const schedule = { waves: [{ percent: 10 }, { percent: 40 }, { percent: 50 }] };
    const before = first.map((m) => waveOf(ad, schedule, first, m));
    const grown = [...first, ...ids(500)];
    assert.deepEqual(
      first.map((m) => waveOf(ad, schedule, grown, m)),
      before,
    );
    const counts = [0, 0, 0];
    for (const m of grown) counts[waveOf(ad, schedule, grown, m) - 1]!++;
    // 550 machines: about 55 / 220 / 275 (a hash, so only near the shares).
    assert.ok(counts[0]! > 25 && counts[0]! < 90, `wave 1 had ${counts[0]}`);
    assert.ok(counts[1]! > 170 && counts[1]! < 270, `wave 2 had ${counts[1]}`);
  });

  it('machine-count waves are exact, and the last wave takes the rest', () => {
    const members = ids(23);
    const schedule = { waves: [{ machines: 3 }, { percent: 50 }, { machines: 1 }] };
    const counts = [0, 0, 0];
    for (const m of members) counts[waveOf(ad, schedule, members, m) - 1]!++;
    assert.deepEqual(counts, [3, 12, 8]);
  });

  it('no waves: everyone is in wave 1', () => {
    const members = ids(5);
    assert.ok(members.every((m) => waveOf(ad, {}, members, m) === 1));
  });
});

describe('the PE of a package', () => {
  const image = (id: string, name: string, at: string, properties: Record<string, string> = {}) =>
    ({
      id: id.repeat(64),
      name,
      format: 'native',
      properties,
      size: 1,
      storedSize: 1,
      fileCount: 1,
      sourceMachine: null,
      inventory: null,
      registeredAt: at,
      registeredBy: 'test',
    }) satisfies ImageRecord;
  const images = [
    image('a', 'reimage-pe', '2030-01-01T00:00:00.000Z'),
    image('b', 'reimage-pe', '2030-01-02T00:00:00.000Z'),
    image('c', 'lab-pe', '2030-01-01T00:00:00.000Z', { osVersion: '1', 'custom.program': '/x' }),
    image('d', 'lab-pe', '2030-01-03T00:00:00.000Z', { osVersion: '2' }),
  ];

  it('named: the newest of that name (and version); default: the newest reimage-pe; else null', () => {
    assert.equal(resolvePe(images, {})?.imageId, 'b'.repeat(64));
    assert.equal(resolvePe(images, { pe: { name: 'lab-pe' } })?.imageId, 'd'.repeat(64));
    assert.deepEqual(resolvePe(images, { pe: { name: 'lab-pe', version: '1' } }), {
      imageId: 'c'.repeat(64),
      name: 'lab-pe',
      program: '/x',
    });
    assert.equal(resolvePe(images, { pe: { name: 'lab-pe' } })?.program, '/agent.bundle');
    assert.equal(resolvePe(images, { pe: { name: 'lab-pe', version: '3' } }), null);
    assert.equal(resolvePe([], {}), null);
  });
});
