import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Decompressor } from 'zstd-napi';
import { isReimageError } from '../errors.js';
import { sha256 } from './digest.js';
import { decodeFrameStream, encodeFrameStream, FRAME_STREAM_MAGIC } from './frame-stream.js';
import { FrameBuilder, type Frame } from './pack.js';

function frames(): Frame[] {
  const out: Frame[] = [];
  const b = new FrameBuilder((f) => out.push(f));
  for (let i = 0; i < 3; i++) {
    const data = Buffer.from(`chunk ${i} `.repeat(1000 + i));
    b.add(sha256(data), data);
  }
  b.flush();
  const big = Buffer.alloc(3 * 1024 * 1024, 7);
  b.add(sha256(big), big);
  b.flush();
  return out;
}

const refused = (body: Buffer, why: RegExp) =>
  assert.throws(
    () => decodeFrameStream(body, new Decompressor()),
    (e) => isReimageError(e, 'UPLOAD_DATA_INVALID') && why.test(e.message),
  );

test('a frame stream round-trips, every chunk verified', () => {
  const f = frames();
  assert.equal(f.length, 2);
  const back = decodeFrameStream(encodeFrameStream(f), new Decompressor());
  assert.deepEqual(
    back.map((x) => [x.data.length, x.chunks.toString('hex')]),
    f.map((x) => [x.data.length, x.chunks.toString('hex')]),
  );
});

test('a bad frame stream is refused whole, naming what is wrong', () => {
  const body = encodeFrameStream(frames());
  refused(Buffer.from('not frames'), /magic/);
  refused(FRAME_STREAM_MAGIC, /no frame/);
  refused(body.subarray(0, body.length - 1), /frame 1 runs past the end/);
  const zero = Buffer.from(body);
  zero.writeUInt32LE(0, 8);
  refused(zero, /frame 0 claims 0 chunks/);
  const wrongHash = Buffer.from(body);
  wrongHash[16] = wrongHash[16]! ^ 1; // first byte of the first chunk's hash
  refused(wrongHash, /chunk [0-9a-f]{64} of frame 0 does not hash to its name/);
  const outside = Buffer.from(body);
  outside.writeUInt32LE(1 << 30, 16 + 36); // the first chunk's length
  refused(outside, /lies outside the frame/);
  const notZstd = Buffer.from(body);
  const dataAt = 16 + notZstd.readUInt32LE(8) * 40;
  notZstd.fill(0, dataAt, dataAt + 8);
  refused(notZstd, /frame 0 cannot be decompressed/);
});
