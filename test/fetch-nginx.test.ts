import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  cpSync,
  mkdtempSync,
  openSync,
  closeSync,
  readSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestTree } from './support/tree.js';
import { independentListing, diffListings } from './support/listing.js';
import { nginxSkip, startNginx, type Nginx } from './support/nginx.js';
import { ContentStore } from '../src/content/store.js';
import { captureImage } from '../src/image/capture.js';
import { applyImage } from '../src/image/apply.js';
import { ImageLibrary } from '../src/image/library.js';
import { decodeManifest } from '../src/image/formats/native/v1/manifest-codec.js';
import { httpRemote } from '../src/content/remote.js';
import { fetchImage } from '../src/content/fetch.js';

const skip = nginxSkip();
let work: string;
let tree: string;
let imageId: string;
let packs: string[];
let packBytes: number;
let nginx: Nginx | undefined;

/** The manifest codec lives in src/image; fetch takes it as a function. */
function* chunksOf(manifest: Buffer): Iterable<Uint8Array> {
  for (const e of decodeManifest(manifest).entries) {
    if (!e.chunks) continue;
    for (let i = 0; i < e.chunks.length; i += 32) yield e.chunks.subarray(i, i + 32);
  }
}

const listing = (root: string) => independentListing(root, { ignoreSockets: true });

before(async () => {
  if (skip) return;
  work = mkdtempSync(join(tmpdir(), 'reimage-fetch-'));
  tree = join(work, 'tree');
  await makeTestTree(tree, { seed: 11, scale: 'small' });
  // dp/good is the library itself; dp/bad a copy with one flipped byte in a pack.
  const good = ContentStore.open(join(work, 'dp', 'good'), { create: true });
  const cap = await captureImage({ source: tree, store: good, name: 'fetched' });
  imageId = cap.record.id;
  packs = cap.record.packs;
  packBytes = packs.reduce((n, p) => n + statSync(good.packPath(p)).size, 0);
  cpSync(join(work, 'dp', 'good'), join(work, 'dp', 'bad'), { recursive: true });
  const bad = ContentStore.open(join(work, 'dp', 'bad'));
  const victim = bad.packPath(packs[0]!);
  const fd = openSync(victim, 'r+');
  const at = Math.floor(statSync(victim).size / 2);
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, at);
  b[0] = b[0]! ^ 0xff;
  writeSync(fd, b, 0, 1, at);
  closeSync(fd);
  nginx = await startNginx(join(work, 'dp'));
});

after(async () => {
  await nginx?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('fetch an image from nginx distribution points', { skip }, () => {
  test('from a clean DP: applies to the same tree, served bytes close to the packs', async () => {
    const staging = ContentStore.open(join(work, 'staging-clean'), { create: true });
    const before = nginx!.bytesSent();
    const r = await fetchImage({
      sources: [httpRemote(`${nginx!.url}good/`)],
      imageId,
      into: staging,
      chunksOf,
    });
    const served = nginx!.bytesSent() - before;
    console.log(
      `clean fetch: packs ${packBytes} B, served by nginx ${served} B (${(served / packBytes).toFixed(3)}x), client payload ${r.bytesDownloaded} B, ${r.framesFetched} frames`,
    );
    assert.ok(served <= packBytes * 1.2, `served ${served} for ${packBytes} bytes of packs`);
    assert.equal(r.badSources.length, 0);
    const target = join(work, 'applied-clean');
    await applyImage({ store: staging, image: imageId, target });
    assert.equal(diffListings(listing(tree), listing(target), ['source', 'applied']), '');
  });

  test('a corrupt DP listed first is detected and the good one used; a re-run downloads nothing', async () => {
    const staging = ContentStore.open(join(work, 'staging'), { create: true });
    const bad = httpRemote(`${nginx!.url}bad/`);
    const good = httpRemote(`${nginx!.url}good/`);
    const goodBefore = nginx!.bytesSent('/good/');
    const r = await fetchImage({ sources: [bad, good], imageId, into: staging, chunksOf });
    const goodServed = nginx!.bytesSent('/good/') - goodBefore;
    console.log(
      `fallback fetch: good DP served ${goodServed} B, bad DP ${nginx!.bytesSent('/bad/')} B; bad sources: ${JSON.stringify(r.badSources)}`,
    );
    assert.ok(
      r.badSources.some(
        (b) =>
          b.source === bad.name &&
          b.pack === packs[0] &&
          /CHUNK_CORRUPT|PACK_CORRUPT/.test(b.code ?? ''),
      ),
      JSON.stringify(r.badSources),
    );
    assert.ok(r.packSources[packs[0]!]?.includes(good.name), JSON.stringify(r.packSources));
    assert.ok(goodServed <= packBytes * 1.2, `good DP served ${goodServed}`);

    const target = join(work, 'applied');
    await applyImage({ store: staging, image: imageId, target });
    assert.equal(diffListings(listing(tree), listing(target), ['source', 'applied']), '');
    // The staged record is a normal library record.
    assert.ok(new ImageLibrary(staging).getRecord(imageId));

    const total = nginx!.bytesSent();
    const again = await fetchImage({ sources: [bad, good], imageId, into: staging, chunksOf });
    assert.equal(again.bytesDownloaded, 0);
    assert.equal(again.framesFetched, 0);
    assert.equal(nginx!.bytesSent(), total, 'nginx served nothing for the second fetch');
  });

  test('a cancelled fetch keeps what it verified; the re-run fetches only the rest', async () => {
    const staging = ContentStore.open(join(work, 'staging-resume'), { create: true });
    const good = httpRemote(`${nginx!.url}good/`);
    const ac = new AbortController();
    const start = nginx!.bytesSent('/good/packs/');
    await assert.rejects(
      fetchImage({
        sources: [good],
        imageId,
        into: staging,
        chunksOf,
        batchBytes: 1024 * 1024,
        // One read at a time: a cancel discards the reads in flight, and this test counts bytes.
        perSource: 1,
        signal: ac.signal,
        onProgress: (p) => {
          if (p.framesFetched > 0) ac.abort();
        },
      }),
      (e: unknown) => (e as { code?: string }).code === 'CANCELLED',
    );
    const first = nginx!.bytesSent('/good/packs/') - start;
    const r = await fetchImage({ sources: [good], imageId, into: staging, chunksOf });
    const total = nginx!.bytesSent('/good/packs/') - start;
    console.log(
      `resume: first run ${first} B, second ${total - first} B, chunks from local ${r.chunksFromLocal}`,
    );
    assert.ok(r.chunksFromLocal > 0, 'the second run started from the first one’s chunks');
    assert.ok(total <= packBytes * 1.2 + 64 * 1024, `served ${total} for ${packBytes}`);
    const target = join(work, 'applied-resume');
    await applyImage({ store: staging, image: imageId, target });
    assert.equal(diffListings(listing(tree), listing(target), ['source', 'applied']), '');
  });
});
