import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { Decompressor } from 'zstd-napi';

import { isReimageError } from '../errors.js';
import { HASH_BYTES, sha256 } from './digest.js';
import {
  decodeIndex,
  encodeIndex,
  FRAME_CHUNK_RECORD,
  FRAME_TARGET,
  FrameBuilder,
  INDEX_MAGIC,
  MAX_CHUNK_BYTES,
  MAX_FRAME_BYTES,
  PACK_MAGIC,
  type Frame,
  type IndexEntry,
} from './pack.js';
import { randomData } from '../../test/support/random.js';

const KiB = 1024;
const MiB = 1024 * KiB;

interface Chunk {
  hash: Buffer;
  data: Buffer;
}

function makeChunk(seed: string, n: number): Chunk {
  const data = randomData(seed, n);
  return { hash: sha256(data), data };
}

interface FrameRecord {
  hash: Buffer;
  offset: number;
  length: number;
}

function records(frame: Frame): FrameRecord[] {
  assert.equal(frame.chunks.length % FRAME_CHUNK_RECORD, 0);
  const out: FrameRecord[] = [];
  for (let r = 0; r < frame.chunks.length; r += FRAME_CHUNK_RECORD) {
    out.push({
      hash: Buffer.from(frame.chunks.subarray(r, r + HASH_BYTES)),
      offset: frame.chunks.readUInt32LE(r + HASH_BYTES),
      length: frame.chunks.readUInt32LE(r + HASH_BYTES + 4),
    });
  }
  return out;
}

/** Feeds chunks through a FrameBuilder (reusing one input buffer, as capture workers do). */
function build(chunks: Chunk[], level?: number): Frame[] {
  const frames: Frame[] = [];
  const fb =
    level === undefined
      ? new FrameBuilder((f) => frames.push(f))
      : new FrameBuilder((f) => frames.push(f), level);
  let scratch = Buffer.alloc(0);
  for (const c of chunks) {
    if (scratch.length < c.data.length) scratch = Buffer.alloc(c.data.length);
    c.data.copy(scratch);
    const hash = Buffer.from(c.hash);
    fb.add(hash, scratch.subarray(0, c.data.length));
    hash.fill(0); // the builder must have copied it
    scratch.fill(0xee); // and the data
  }
  fb.flush();
  return frames;
}

/** Checks that the frames hold exactly `chunks`, in order, at their recorded offsets. */
function checkFrames(frames: Frame[], chunks: Chunk[]): void {
  const dec = new Decompressor();
  let next = 0;
  for (const [fi, frame] of frames.entries()) {
    const raw = dec.decompress(frame.data);
    const recs = records(frame);
    assert.ok(recs.length > 0, `frame ${fi} is empty`);
    let expectOffset = 0;
    for (const rec of recs) {
      const c = chunks[next++];
      assert.ok(c, 'more chunks in frames than were added');
      assert.ok(rec.hash.equals(c.hash), `frame ${fi}: wrong hash for chunk ${next - 1}`);
      assert.equal(rec.offset, expectOffset, `frame ${fi}: chunks are not back to back`);
      assert.equal(rec.length, c.data.length);
      assert.ok(raw.subarray(rec.offset, rec.offset + rec.length).equals(c.data));
      expectOffset += rec.length;
    }
    assert.equal(raw.length, expectOffset, `frame ${fi}: raw size differs from its chunks`);
  }
  assert.equal(next, chunks.length, 'some chunks were not emitted');
}

function rawSize(frame: Frame): number {
  return records(frame).reduce((a, r) => a + r.length, 0);
}

describe('FrameBuilder', () => {
  it('packs several small chunks into one frame', () => {
    const chunks = Array.from({ length: 20 }, (_, i) => makeChunk(`small-${i}`, 100 + i * 37));
    const frames = build(chunks);
    assert.equal(frames.length, 1);
    assert.equal(records(frames[0]!).length, 20);
    checkFrames(frames, chunks);
  });

  it('compresses: a frame of compressible chunks is smaller than its raw data', () => {
    const chunks = Array.from({ length: 8 }, (_, i) => ({
      hash: sha256(Buffer.alloc(4096, i)),
      data: Buffer.alloc(4096, i),
    }));
    const frames = build(chunks);
    assert.equal(frames.length, 1);
    assert.ok(frames[0]!.data.length < 1024, `${frames[0]!.data.length} bytes`);
    checkFrames(frames, chunks);
  });

  it('cuts frames once they hold FRAME_TARGET bytes, and not before', () => {
    // ~7 MiB of chunks between 16 and 256 KiB.
    const chunks: Chunk[] = [];
    let total = 0;
    for (let i = 0; total < 7 * MiB; i++) {
      const n = 16 * KiB + ((i * 7919 * 31) % (240 * KiB));
      chunks.push(makeChunk(`mid-${i}`, n));
      total += n;
    }
    const frames = build(chunks);
    assert.ok(frames.length >= 3 && frames.length <= 4, `${frames.length} frames`);
    frames.forEach((f, i) => {
      const size = rawSize(f);
      if (i < frames.length - 1) {
        assert.ok(size >= FRAME_TARGET, `frame ${i} cut early at ${size}`);
        assert.ok(size <= FRAME_TARGET + 256 * KiB, `frame ${i} too big: ${size}`);
        // Cut as soon as the target was reached: without its last chunk it was below.
        const recs = records(f);
        assert.ok(size - recs[recs.length - 1]!.length < FRAME_TARGET);
      }
    });
    checkFrames(frames, chunks);
  });

  it('grows its record table past 1024 chunks in one frame', () => {
    const chunks = Array.from({ length: 3000 }, (_, i) => makeChunk(`tiny-${i}`, 1 + (i % 200)));
    const frames = build(chunks);
    assert.equal(frames.length, 1);
    assert.equal(records(frames[0]!).length, 3000);
    checkFrames(frames, chunks);
  });

  it('handles a chunk larger than FRAME_TARGET (and the frame buffer)', () => {
    const chunks = [
      makeChunk('before', 10 * KiB),
      makeChunk('huge', FRAME_TARGET + 700 * KiB),
      makeChunk('after-1', 20 * KiB),
      makeChunk('huge-2', 3 * MiB + 5),
      makeChunk('after-2', 30 * KiB),
    ];
    const frames = build(chunks);
    checkFrames(frames, chunks);
    // The huge chunks are alone in their frames (the frame before is cut, the huge one is full).
    const huge = frames.filter((f) => records(f).some((r) => r.length > FRAME_TARGET));
    assert.equal(huge.length, 2);
    for (const f of huge) assert.equal(records(f).length, 1);
  });

  it('emits nothing on flush when empty, and works at another compression level', () => {
    const frames: Frame[] = [];
    const fb = new FrameBuilder((f) => frames.push(f), 1);
    fb.flush();
    assert.equal(frames.length, 0);
    const chunks = [makeChunk('lvl-a', 1000), makeChunk('lvl-b', 2000)];
    checkFrames(build(chunks, 19), chunks);
  });
});

function entry(seed: string, over: Partial<IndexEntry> = {}): IndexEntry {
  return {
    hash: sha256(Buffer.from(seed)),
    frameOffset: PACK_MAGIC.length,
    frameLength: 1000,
    offset: 0,
    length: 500,
    ...over,
  };
}

interface Visited {
  hash: string;
  frameOffset: number;
  frameLength: number;
  offset: number;
  length: number;
}

function decodeAll(buf: Buffer, packSize: number): Visited[] {
  const out: Visited[] = [];
  const n = decodeIndex(
    buf,
    packSize,
    'test-pack',
    (hash, frameOffset, frameLength, offset, length) =>
      out.push({ hash: hash.toString('hex'), frameOffset, frameLength, offset, length }),
  );
  assert.equal(n, out.length);
  return out;
}

function assertCorrupt(fn: () => unknown, what: string): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(isReimageError(e, 'PACK_CORRUPT'), `${what}: ${String(e)}`);
    assert.equal(e.details.pack, 'test-pack');
    return true;
  });
}

/** Rewrites the trailing checksum after an edit, so that only the semantic check can refuse it. */
function resum(buf: Buffer): Buffer {
  const body = buf.subarray(0, buf.length - 32);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

describe('pack index', () => {
  const entries: IndexEntry[] = [
    entry('a', { frameOffset: 8, frameLength: 4000, offset: 0, length: 1000 }),
    entry('b', { frameOffset: 8, frameLength: 4000, offset: 1000, length: 3000 }),
    entry('c', { frameOffset: 4008, frameLength: 2 ** 20, offset: 12, length: 65536 }),
    entry('d', { frameOffset: 2 ** 33 + 5, frameLength: 77, offset: 0, length: 77 }),
  ];
  const packSize = 2 ** 33 + 5 + 77;

  it('round-trips entries, visiting them sorted by hash', () => {
    const shuffled = [entries[2]!, entries[0]!, entries[3]!, entries[1]!];
    const buf = encodeIndex(shuffled);
    assert.ok(buf.subarray(0, 8).equals(INDEX_MAGIC));
    const got = decodeAll(buf, packSize);
    const want = [...entries]
      .sort((a, b) => Buffer.compare(a.hash, b.hash))
      .map((e) => ({
        hash: e.hash.toString('hex'),
        frameOffset: e.frameOffset,
        frameLength: e.frameLength,
        offset: e.offset,
        length: e.length,
      }));
    assert.deepEqual(got, want);
    // The input array is left alone.
    assert.equal(shuffled[0], entries[2]);
  });

  it('round-trips an empty index and a large one', () => {
    assert.deepEqual(decodeAll(encodeIndex([]), 8), []);
    const many = Array.from({ length: 5000 }, (_, i) =>
      entry(`many-${i}`, { frameOffset: 8 + i, frameLength: 1, offset: i, length: i }),
    );
    const got = decodeAll(encodeIndex(many), 8 + 5000);
    assert.equal(got.length, 5000);
    for (let i = 1; i < got.length; i++) assert.ok(got[i - 1]!.hash < got[i]!.hash);
  });

  it('refuses every single flipped byte', () => {
    const buf = encodeIndex(entries.slice(0, 3));
    for (let i = 0; i < buf.length; i++) {
      const bad = Buffer.from(buf);
      bad[i] = bad[i]! ^ 0x01;
      assertCorrupt(() => decodeAll(bad, packSize), `flip at ${i}`);
      bad[i] = bad[i]! ^ 0xff;
      assertCorrupt(() => decodeAll(bad, packSize), `flip at ${i}`);
    }
  });

  it('refuses a truncated or extended index', () => {
    const buf = encodeIndex(entries);
    for (let n = 0; n < buf.length; n++) {
      assertCorrupt(() => decodeAll(buf.subarray(0, n), packSize), `truncated to ${n}`);
    }
    assertCorrupt(() => decodeAll(Buffer.concat([buf, Buffer.alloc(1)]), packSize), 'extended');
    assertCorrupt(() => decodeAll(Buffer.alloc(0), packSize), 'empty');
  });

  it('refuses a wrong magic, even with a valid checksum', () => {
    const buf = Buffer.from(encodeIndex(entries));
    Buffer.from('RIMGIX02').copy(buf, 0);
    assertCorrupt(() => decodeAll(resum(buf), packSize), 'magic RIMGIX02');
    Buffer.from('RIMGPK01').copy(buf, 0);
    assertCorrupt(() => decodeAll(resum(buf), packSize), 'pack magic');
  });

  it('refuses entries out of bounds of the pack', () => {
    const cases: Array<[string, IndexEntry, number]> = [
      ['frame past the end', entry('x', { frameOffset: 1000, frameLength: 1001 }), 2000],
      ['frame ends one byte past the end', entry('x', { frameOffset: 8, frameLength: 100 }), 107],
      ['frame inside the pack magic', entry('x', { frameOffset: 4, frameLength: 10 }), 2000],
      ['frame at offset 0', entry('x', { frameOffset: 0, frameLength: 10 }), 2000],
      ['empty frame', entry('x', { frameOffset: 8, frameLength: 0, length: 0 }), 2000],
      [
        'frame above MAX_FRAME_BYTES',
        entry('x', { frameOffset: 8, frameLength: MAX_FRAME_BYTES + 1 }),
        2 * MAX_FRAME_BYTES,
      ],
      [
        'chunk above MAX_CHUNK_BYTES',
        entry('x', { frameOffset: 8, frameLength: 100, length: MAX_CHUNK_BYTES + 1 }),
        2000,
      ],
      ['huge frame offset', entry('x', { frameOffset: 2 ** 52, frameLength: 10 }), 2000],
    ];
    for (const [what, e, size] of cases) {
      const buf = encodeIndex([entry('ok', { frameOffset: 8, frameLength: 10 }), e]);
      assertCorrupt(() => decodeAll(buf, size), what);
    }
    // The limits themselves are accepted.
    const edge = encodeIndex([
      entry('edge', { frameOffset: 8, frameLength: MAX_FRAME_BYTES, length: MAX_CHUNK_BYTES }),
    ]);
    assert.equal(decodeAll(edge, 8 + MAX_FRAME_BYTES).length, 1);
    // And the same index is refused against a pack one byte shorter.
    assertCorrupt(() => decodeAll(edge, 7 + MAX_FRAME_BYTES), 'one byte short');
  });

  it('refuses entries out of order or duplicated', () => {
    const dup = encodeIndex([entry('same'), entry('same')]);
    assertCorrupt(() => decodeAll(dup, 2000), 'duplicate');
    // Swap the two entries of a valid index and fix the checksum.
    const buf = Buffer.from(encodeIndex([entry('p'), entry('q')]));
    const size = (buf.length - 12 - 32) / 2;
    const first = Buffer.from(buf.subarray(12, 12 + size));
    buf.copy(buf, 12, 12 + size, 12 + 2 * size);
    first.copy(buf, 12 + size);
    assertCorrupt(() => decodeAll(resum(buf), 2000), 'swapped');
  });

  it('refuses a count that disagrees with the length', () => {
    const buf = Buffer.from(encodeIndex(entries));
    buf.writeUInt32LE(entries.length + 1, 8);
    assertCorrupt(() => decodeAll(resum(buf), packSize), 'count + 1');
    buf.writeUInt32LE(0xffffffff, 8);
    assertCorrupt(() => decodeAll(resum(buf), packSize), 'count 2^32-1');
  });
});
