import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import zstd from 'zstd-napi/binding.js';
import { isReimageError } from '../errors.js';
import {
  applyDelta,
  decodeDeltaIndex,
  encodeDeltaIndex,
  makeDelta,
  refsOf,
  type DeltaEntry,
} from './delta.js';

const digest = (s: string) => createHash('sha256').update(s).digest();

function sample(): { buf: Buffer; entries: DeltaEntry[]; seqs: Buffer[] } {
  const seqs = [Buffer.concat([digest('old-0'), digest('old-1'), digest('old-2')])];
  const entries: DeltaEntry[] = [
    { hash: digest('b'), length: 1000, offset: 8, deltaLength: 50, seq: 0, first: 1, count: 2 },
    { hash: digest('a'), length: 700, offset: 58, deltaLength: 40, seq: 0, first: 0, count: 0 },
  ];
  return { buf: encodeDeltaIndex(seqs, entries), entries, seqs };
}

test('a delta index round-trips, sorted, with its references', () => {
  const { buf } = sample();
  const idx = decodeDeltaIndex(buf, 'x');
  assert.equal(idx.entries.size, 2);
  assert.equal(idx.packSize, 98);
  const b = [...idx.entries.values()].find((e) => e.length === 1000)!;
  assert.deepEqual(
    refsOf(idx, b).map((r) => r.toString('hex')),
    [digest('old-1').toString('hex'), digest('old-2').toString('hex')],
  );
});

test('a damaged or hostile delta index is refused', () => {
  const { buf, seqs, entries } = sample();
  const flipped = Buffer.from(buf);
  flipped[20]! ^= 1;
  const refused = (b: Buffer, why: RegExp) =>
    assert.throws(
      () => decodeDeltaIndex(b, 'x'),
      (e: unknown) => isReimageError(e, 'PACK_CORRUPT') && why.test((e as Error).message),
    );
  refused(flipped, /checksum/);
  refused(buf.subarray(0, 30), /header|checksum/);
  // Checksummed but out of bounds: a reference past its run, a chunk over 16 MiB.
  refused(encodeDeltaIndex(seqs, [{ ...entries[0]!, first: 2, count: 2 }]), /out of bounds/);
  refused(encodeDeltaIndex(seqs, [{ ...entries[0]!, length: 17 * 1024 * 1024 }]), /out of bounds/);
  refused(encodeDeltaIndex(seqs, [{ ...entries[0]!, seq: 1 }]), /out of bounds/);
});

test('a delta rebuilds its chunk, and must declare exactly its length', () => {
  const ref = Buffer.from('the quick brown fox jumps over the lazy dog\n'.repeat(2000));
  const chunk = Buffer.from(ref.subarray(1000, 60000));
  chunk.write('CHANGED', 30000);
  const cctx = new zstd.CCtx();
  const dctx = new zstd.DCtx();
  const delta = makeDelta(cctx, dctx, chunk, ref)!;
  assert.ok(delta.length < 200, `${delta.length} bytes`);
  assert.ok(applyDelta(dctx, delta, ref, chunk.length).equals(chunk));
  assert.throws(() => applyDelta(dctx, delta, ref, chunk.length - 1), /claims/);
  assert.throws(
    () => applyDelta(dctx, Buffer.from('not zstd'), ref, 10),
    /not a zstd frame|claims/,
  );
});
