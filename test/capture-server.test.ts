/**
 * `reimage image capture … --to http://server` on a lab model machine (docs/capture.md): the
 * real CLI as a child process, a real server on loopback (SQLite). A second capture with small
 * changes sends about its new chunks only, and a capture whose upload is interrupted — the
 * process killed, or the link cut — completes without re-sending what arrived. Every figure is
 * the server's count of request body bytes (`bytesReceived`), not the uploader's.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { UploadStatus } from '../src/client/uploads.js';
import { ContentStore } from '../src/content/store.js';
import { ImageLibrary } from '../src/image/library.js';
import { verifyImage } from '../src/image/verify.js';
import { makeMachineTree } from '../src/lab/machine-tree.js';
import { reimageAsync } from './cli.js';
import { expectStatus } from './support/fixtures.js';
import { randomData } from './support/random.js';
import { makeTestServer, type TestServer } from './support/server.js';
import { startLink } from './support/wan.js';

const MB = 1024 * 1024;
/**
 * One request in flight at a break. The server takes request bodies of up to 8 MiB, but the
 * uploader sends about 1 MiB of frames per request (one frame at least, and a frame of
 * incompressible data is up to ~2.1 MiB): a break costs at most that again.
 */
const IN_FLIGHT = 2.2 * MB;
/** The upstream rate of the link, so that an upload is still running when it is interrupted. */
const UP_RATE = 16e6;

let work: string;
let tree: string;
let server: TestServer;
let url: string;

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'reimage-capture-server-'));
  tree = join(work, 'model');
  await makeMachineTree(tree, { scale: 'small', seed: 9, hostname: 'model-01' });
  server = await makeTestServer('sqlite');
  await server.app.listen({ host: '127.0.0.1', port: 0 });
  const a = server.app.server.address();
  assert.ok(a && typeof a === 'object');
  url = `http://127.0.0.1:${a.port}`;
});

after(async () => {
  await server?.close();
  rmSync(work, { recursive: true, force: true });
});

const cacheStore = () => join(work, 'cache', 'reimage', 'capture-store');

function env(): NodeJS.ProcessEnv {
  return {
    ...process.env,
    REIMAGE_TOKEN: server.tokens.operator,
    XDG_CACHE_HOME: join(work, 'cache'),
    XDG_CONFIG_HOME: join(work, 'config'),
    REIMAGE_SERVER: '',
    REIMAGE_STORE: '',
  };
}

function captureArgs(to: string, extra: string[] = []): string[] {
  return [
    'image',
    'capture',
    tree,
    '--name',
    'model',
    '--to',
    to.replace(/\/$/, ''),
    '--property',
    'os=debian',
    '--source-machine',
    'model-01',
    '--workers',
    '2',
    '--json',
    '--progress',
    'none',
    ...extra,
  ];
}

interface CliRun {
  status: number | null;
  stdout: string;
  stderr: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json: any;
}

/** Starts the CLI in the background (the server runs in this process: never a synchronous spawn). */
function spawnCli(args: string[]) {
  const child = reimageAsync(args, { env: env() });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<CliRun>((resolve) =>
    child.once('close', (status) => {
      let json: unknown;
      try {
        json = JSON.parse(stdout);
      } catch {
        json = undefined;
      }
      resolve({ status, stdout, stderr, json });
    }),
  );
  return { child, done, stderr: () => stderr };
}

async function uploads(): Promise<UploadStatus[]> {
  const res = await server.call<{ items: UploadStatus[] }>('GET', '/api/v1/uploads');
  expectStatus(res, 200, 'list uploads');
  return res.body.items;
}

async function uploadOf(imageId: string): Promise<UploadStatus> {
  const u = (await uploads()).filter((x) => x.imageId === imageId);
  assert.equal(u.length, 1, `one upload of ${imageId}: ${JSON.stringify(u)}`);
  return u[0]!;
}

/** The image's record in the kept cache store: its new content as the capture stored it. */
function cachedRecord(id: string) {
  const rec = new ImageLibrary(ContentStore.open(cacheStore())).getRecord(id);
  assert.ok(rec, `image ${id} in the cache store`);
  return rec;
}

/**
 * Request bodies besides the frames: the start (with the inventory), the hash questions (the
 * whole image's chunk hashes, ~67 B each, once per run, and a batch's again after a break) and
 * the manifest.
 */
function overhead(rec: { stats: { uniqueChunks: number; manifestBytes: number } }): number {
  return 2 * rec.stats.uniqueChunks * 70 + rec.stats.manifestBytes + 16 * 1024;
}

function addFiles(tag: string, count: number, size: number): void {
  mkdirSync(join(tree, 'opt', 'tool'), { recursive: true });
  for (let i = 0; i < count; i++)
    writeFileSync(join(tree, 'opt', 'tool', `${tag}-${i}.bin`), randomData(`${tag}-${i}`, size));
}

const ids: string[] = [];

describe('capture into the server library: only new chunks, resumable', () => {
  test('v1, then v2 with small changes: the server receives about the new chunks only', async () => {
    const r1 = await spawnCli(captureArgs(url)).done;
    assert.equal(r1.status, 0, r1.stderr);
    assert.ok(!(r1.stdout + r1.stderr).includes(server.tokens.operator), 'no token in the output');
    const v1 = r1.json.image.id as string;
    ids.push(v1);
    const u1 = await uploadOf(v1);
    assert.equal(u1.state, 'committed');

    // Small changes, as between two captures of a model computer.
    writeFileSync(join(tree, 'etc', 'motd'), 'Welcome to the lab model, version 2\n');
    addFiles('v2', 1, 600_000);
    const r2 = await spawnCli(captureArgs(url)).done;
    assert.equal(r2.status, 0, r2.stderr);
    const v2 = r2.json.image.id as string;
    ids.push(v2);
    assert.notEqual(v2, v1);
    const u2 = await uploadOf(v2);
    assert.equal(u2.state, 'committed');
    const new1 = r1.json.image.stats.storedBytes as number;
    const new2 = r2.json.image.stats.storedBytes as number;
    console.log(
      `v1: new content ${new1} B compressed, server received ${u1.bytesReceived} B in ${u1.requests} requests; ` +
        `v2: new content ${new2} B, server received ${u2.bytesReceived} B in ${u2.requests} requests`,
    );
    assert.ok(u1.bytesReceived >= new1 * 0.9, 'v1 sends its content');
    assert.ok(new2 > 600_000 && new2 < new1 / 4, `v2's new content: ${new2} B`);
    // The new chunks, plus the whole image's hash questions and its manifest.
    assert.ok(
      u2.bytesReceived < 2 * new2 + 64 * 1024,
      `v2: ${u2.bytesReceived} B received for ${new2} B of new content`,
    );
    assert.ok(u2.bytesReceived < u1.bytesReceived / 3, 'v2 costs far less than v1');

    const lib = new ImageLibrary(server.store);
    assert.equal(lib.getName('model')!.id, v2);
    assert.deepEqual(lib.getName('model')!.previous, [v1]);
    await verifyImage({ store: server.store, image: v2 });
  });

  test('a capture killed during its upload is run again: it resumes without re-sending what arrived', async () => {
    addFiles('v3', 4, 2 * MB);
    const link = await startLink({
      target: { host: '127.0.0.1', port: Number(new URL(url).port) },
      upRateBitsPerSec: UP_RATE,
    });
    try {
      const args = captureArgs(link.url);
      const killed = spawnCli(args);
      let open: UploadStatus | undefined;
      for (;;) {
        open = (await uploads()).find((u) => u.state === 'open' && !ids.includes(u.imageId));
        if ((open?.bytesReceived ?? 0) > 3 * MB) break;
        assert.equal(
          killed.child.exitCode,
          null,
          `the capture ended before it was killed: ${killed.stderr()}`,
        );
        await new Promise((r) => setTimeout(r, 20));
      }
      killed.child.kill('SIGKILL');
      await killed.done;
      const v3 = open!.imageId;
      const atKill = await uploadOf(v3);
      assert.equal(atKill.state, 'open');
      // The killed run had captured v3 into the cache store before uploading: its new content.
      const rec = cachedRecord(v3);
      const new3 = rec.stats.storedBytes;
      assert.ok(atKill.bytesReceived < new3, 'killed midway');

      const again = await spawnCli(args).done;
      assert.equal(again.status, 0, again.stderr);
      assert.equal(again.json.image.id, v3, 'the same tree is the same image');
      assert.equal(again.json.created, false);
      assert.equal(again.json.uploaded.resumed, true, 'the open upload was resumed');
      ids.push(v3);
      const done = await uploadOf(v3);
      assert.equal(done.state, 'committed');
      console.log(
        `v3: killed at ${atKill.bytesReceived} B received; total received ${done.bytesReceived} B in ${done.requests} requests ` +
          `for ${new3} B of new content (${done.bytesReceived - new3} B over it; bound ${Math.round(IN_FLIGHT + overhead(rec))} B)`,
      );
      assert.ok(
        done.bytesReceived <= new3 + IN_FLIGHT + overhead(rec),
        `received ${done.bytesReceived} B for ${new3} B of new content`,
      );
      assert.equal(new ImageLibrary(server.store).getName('model')!.id, v3);
      await verifyImage({ store: server.store, image: v3 });
      const images = await server.call<{ items: Array<{ id: string; name: string }> }>(
        'GET',
        '/api/v1/images',
      );
      expectStatus(images, 200, 'list images');
      assert.equal(images.body.items.find((i) => i.id === v3)?.name, 'model', 'registered');
    } finally {
      await link.close();
    }
  });

  test('a capture whose link is cut during the upload completes without re-sending what arrived', async () => {
    addFiles('v4', 4, 2 * MB);
    const link = await startLink({
      target: { host: '127.0.0.1', port: Number(new URL(url).port) },
      upRateBitsPerSec: UP_RATE,
      latencyMs: 10,
      // Blackholed once 4 MB went up (mid-request), then refused, for 5 s: longer than the
      // request timeout, so the request in flight is given up and the upload retried.
      outages: [{ atBytesUp: 4 * MB, forMs: 5000 }],
    });
    try {
      const r = await spawnCli(captureArgs(link.url, ['--request-timeout', '2'])).done;
      assert.equal(r.status, 0, r.stderr);
      const v4 = r.json.image.id as string;
      assert.ok(!ids.includes(v4));
      ids.push(v4);
      assert.ok(
        link.events().some((e) => e.event === 'cut'),
        'the link was cut',
      );
      assert.ok(r.json.uploaded.retries >= 1, 'the cut was noticed and retried');
      const rec = cachedRecord(v4);
      const new4 = r.json.image.stats.storedBytes as number;
      assert.equal(new4, rec.stats.storedBytes);
      const done = await uploadOf(v4);
      assert.equal(done.state, 'committed');
      console.log(
        `v4: link cut at 4 MiB up for 5 s: server received ${done.bytesReceived} B in ${done.requests} requests ` +
          `for ${new4} B of new content (${done.bytesReceived - new4} B over it; bound ${Math.round(IN_FLIGHT + overhead(rec))} B); ` +
          `link carried ${link.bytesUp()} B up; ${r.json.uploaded.retries} retries`,
      );
      assert.ok(
        done.bytesReceived <= new4 + IN_FLIGHT + overhead(rec),
        `received ${done.bytesReceived} B for ${new4} B of new content`,
      );
      assert.equal(new ImageLibrary(server.store).getName('model')!.id, v4);
      await verifyImage({ store: server.store, image: v4 });
    } finally {
      await link.close();
    }
  });
});
