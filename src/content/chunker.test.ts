import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, chunkLengths, cutPoint } from './chunker.js';
import { sha256Hex } from './digest.js';
import { randomData } from '../../test/support/random.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function chunkHashes(data: Uint8Array, lengths: number[]): string[] {
  const out: string[] = [];
  let pos = 0;
  for (const len of lengths) {
    out.push(sha256Hex(data.subarray(pos, pos + len)));
    pos += len;
  }
  return out;
}

function sum(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0);
}

function assertBounds(lengths: number[], total: number): void {
  assert.equal(sum(lengths), total);
  lengths.forEach((len, i) => {
    assert.ok(len <= CHUNK_MAX, `chunk ${i} is ${len} bytes, more than CHUNK_MAX`);
    assert.ok(len > 0, `chunk ${i} is empty`);
    if (i < lengths.length - 1) {
      assert.ok(len >= CHUNK_MIN, `chunk ${i} is ${len} bytes, less than CHUNK_MIN`);
    }
  });
}

describe('chunker', () => {
  const data4 = randomData('chunker-4MiB', 4 * MiB);

  it('keeps every chunk but the last within [CHUNK_MIN, CHUNK_MAX] and covers the input', () => {
    const lengths = chunkLengths(data4);
    assert.ok(lengths.length > 10, `only ${lengths.length} chunks in 4 MiB`);
    assertBounds(lengths, data4.length);
  });

  it('keeps bounds on low-entropy data too (zeros, a repeated short pattern)', () => {
    const zeros = Buffer.alloc(3 * MiB + 123);
    const zl = chunkLengths(zeros);
    assertBounds(zl, zeros.length);
    const pattern = Buffer.alloc(2 * MiB + 7);
    for (let i = 0; i < pattern.length; i++) pattern[i] = (i * 7) % 13;
    assertBounds(chunkLengths(pattern), pattern.length);
  });

  it('is deterministic', () => {
    const a = chunkLengths(data4);
    const b = chunkLengths(Buffer.from(data4)); // a copy, not the same memory
    assert.deepEqual(a, b);
    assert.deepEqual(chunkLengths(data4), a);
  });

  it('is content-defined: an insertion near the start only changes the first chunk or two', () => {
    const before = chunkLengths(data4);
    const inserted = Buffer.concat([
      data4.subarray(0, 1000),
      randomData('inserted', 100),
      data4.subarray(1000),
    ]);
    const after = chunkLengths(inserted);
    assertBounds(after, inserted.length);

    const hBefore = chunkHashes(data4, before);
    const hAfter = new Set(chunkHashes(inserted, after));
    const shared = hBefore.filter((h) => hAfter.has(h)).length;
    assert.ok(
      shared / hBefore.length >= 0.9,
      `only ${shared} of ${hBefore.length} chunks survive a 100-byte insertion`,
    );
    const lost = hBefore.length - shared;
    assert.ok(lost >= 1 && lost <= 2, `${lost} chunks changed; expected the first one or two`);
    // The changed chunks are the first ones; every boundary after them is the same, shifted.
    assert.deepEqual(
      hBefore.slice(lost),
      chunkHashes(inserted, after).slice(-(hBefore.length - lost)),
    );
  });

  it('is content-defined: a deletion in the middle leaves the chunks before and after it alone', () => {
    const before = chunkHashes(data4, chunkLengths(data4));
    const cut = 2 * MiB;
    const edited = Buffer.concat([data4.subarray(0, cut), data4.subarray(cut + 50)]);
    const after = new Set(chunkHashes(edited, chunkLengths(edited)));
    const shared = before.filter((h) => after.has(h)).length;
    assert.ok(before.length - shared <= 2, `${before.length - shared} chunks changed`);
  });

  it('averages 40-100 KiB per chunk on 16 MiB of random data', () => {
    const data = randomData('chunker-16MiB', 16 * MiB);
    const lengths = chunkLengths(data);
    assertBounds(lengths, data.length);
    const avg = data.length / lengths.length;
    assert.ok(
      avg >= 40 * KiB && avg <= 100 * KiB,
      `average chunk is ${(avg / KiB).toFixed(1)} KiB`,
    );
    // Normalized chunking: most chunks are near CHUNK_AVG, few hit CHUNK_MAX.
    const atMax = lengths.filter((l) => l === CHUNK_MAX).length;
    assert.ok(atMax / lengths.length < 0.05, `${atMax} of ${lengths.length} chunks hit CHUNK_MAX`);
    const mid = lengths.filter((l) => l >= CHUNK_AVG / 2 && l <= CHUNK_AVG * 2).length;
    assert.ok(mid / lengths.length > 0.5, `only ${mid} of ${lengths.length} chunks are 32-128 KiB`);
  });

  it('makes one chunk of an input no longer than CHUNK_MIN, and none of an empty one', () => {
    assert.deepEqual(chunkLengths(new Uint8Array(0)), []);
    assert.deepEqual(chunkLengths(randomData('one', 1)), [1]);
    assert.deepEqual(chunkLengths(randomData('small', 5000)), [5000]);
    assert.deepEqual(chunkLengths(randomData('min-1', CHUNK_MIN - 1)), [CHUNK_MIN - 1]);
    assert.deepEqual(chunkLengths(randomData('min', CHUNK_MIN)), [CHUNK_MIN]);
  });

  it('cutPoint returns the whole remainder when at most CHUNK_MIN bytes are left', () => {
    const data = randomData('tail', 100 * KiB);
    assert.equal(cutPoint(data, 90 * KiB, 90 * KiB + 10), 10);
    assert.equal(cutPoint(data, 50 * KiB, 50 * KiB + CHUNK_MIN), CHUNK_MIN);
    assert.equal(cutPoint(data, 7, 7), 0);
  });

  it('gives the same chunks when only CHUNK_MAX bytes past the start are available (streaming)', () => {
    const data = randomData('stream', 6 * MiB + 12345);
    const whole = chunkLengths(data);

    // Same buffer, end limited to pos + CHUNK_MAX.
    const limited: number[] = [];
    for (let pos = 0; pos < data.length;) {
      const len = cutPoint(data, pos, Math.min(data.length, pos + CHUNK_MAX));
      limited.push(len);
      pos += len;
    }
    assert.deepEqual(limited, whole);

    // A separate window buffer of at most CHUNK_MAX bytes, as a streaming reader would hold.
    const windowed: number[] = [];
    for (let pos = 0; pos < data.length;) {
      const window = Buffer.from(data.subarray(pos, Math.min(data.length, pos + CHUNK_MAX)));
      const len = cutPoint(window, 0, window.length);
      windowed.push(len);
      pos += len;
    }
    assert.deepEqual(windowed, whole);
  });

  it('cuts the same way at a non-zero start as on a copy starting at zero', () => {
    const data = randomData('offset', MiB);
    for (const start of [1, 333, 70_000, 500_000]) {
      const copy = Buffer.from(data.subarray(start));
      assert.equal(cutPoint(data, start, data.length), cutPoint(copy, 0, copy.length));
    }
  });
});
