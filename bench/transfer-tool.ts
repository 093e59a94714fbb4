// bench/transfer-tool: the Node side of bench/transfer (the shell script drives it).
//
//   node dist/bench/transfer-tool.js link TARGET_PORT PORT_FILE COUNTS_FILE
//     A counting TCP proxy on 127.0.0.1 (the link emulator of test/support/wan.ts with no rate,
//     latency or outage) in front of TARGET_PORT. Writes its port to PORT_FILE once listening;
//     on SIGTERM/SIGINT writes {"down": B, "up": B} (bytes counted at the link) to COUNTS_FILE
//     and exits. Used to count rsync's, casync's and reimage's bytes on the wire.
//
//   node dist/bench/transfer-tool.js outages DP_URL OLD_ID NEW_ID WORK_DIR
//     Bytes re-sent per outage. Two machine stores, each holding OLD_ID (fetched straight from
//     the DP, not counted); then NEW_ID is fetched into the first through a clean link and into
//     the second through a link with OUTAGES outages of OUTAGE_SECS s (env; default 3 × 20 s,
//     rate LINK_MBIT Mbit/s, default 10), each triggered when a fraction k/(OUTAGES+1) of the
//     clean fetch's bytes has crossed the link, so that each cuts a transfer in flight. Prints
//     one JSON document: link bytes of both fetches and (outage − clean) / outages.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ContentStore } from '../src/content/store.js';
import { startLink, type LinkOptions } from '../test/support/wan.js';

/** The store and fetch code, loaded only by the commands that fetch (`link` needs none of it). */
async function content() {
  const [{ ContentStore }, { httpRemote }, { fetchImage }, { decodeManifest }] = await Promise.all([
    import('../src/content/store.js'),
    import('../src/content/remote.js'),
    import('../src/content/fetch.js'),
    import('../src/image/formats/native/v1/manifest-codec.js'),
  ]);
  function* chunksOf(manifest: Buffer): Iterable<Uint8Array> {
    for (const e of decodeManifest(manifest).entries) {
      if (!e.chunks) continue;
      for (let i = 0; i < e.chunks.length; i += 32) yield e.chunks.subarray(i, i + 32);
    }
  }
  return { ContentStore, httpRemote, fetchImage, chunksOf };
}

function usage(): never {
  process.stderr.write(
    'usage: transfer-tool link TARGET_PORT PORT_FILE COUNTS_FILE\n' +
      '       transfer-tool outages DP_URL OLD_ID NEW_ID WORK_DIR\n',
  );
  process.exit(64);
}

async function link(targetPort: number, portFile: string, countsFile: string): Promise<void> {
  const l = await startLink({ target: { host: '127.0.0.1', port: targetPort } });
  const stop = () => {
    writeFileSync(countsFile, JSON.stringify({ down: l.bytesDown(), up: l.bytesUp() }) + '\n');
    void l.close().then(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  writeFileSync(portFile, `${l.port}\n`);
}

async function fetchThrough(
  dpUrl: string,
  linkOpts: Omit<LinkOptions, 'target'>,
  imageId: string,
  into: ContentStore,
  timeoutMs: number,
) {
  const { httpRemote, fetchImage, chunksOf } = await content();
  const dp = new URL(dpUrl);
  const l = await startLink({ ...linkOpts, target: { host: '127.0.0.1', port: Number(dp.port) } });
  const t0 = Date.now();
  try {
    // The same path on the DP, through the link.
    const url = new URL(dp.pathname, l.url).toString();
    const r = await fetchImage({
      sources: [httpRemote(url, { timeoutMs, retryForMs: 600_000 })],
      imageId,
      into,
      chunksOf,
    });
    return {
      linkBytesDown: l.bytesDown(),
      linkBytesUp: l.bytesUp(),
      clientBytes: r.bytesDownloaded,
      framesFetched: r.framesFetched,
      chunksFetched: r.chunksFetched,
      chunksFromLocal: r.chunksFromLocal,
      badSources: r.badSources.length,
      seconds: (Date.now() - t0) / 1000,
      events: l
        .events()
        .filter((e) => e.event === 'cut' || e.event === 'restore')
        .map((e) => ({ t: e.t, event: e.event, bytesDown: e.bytesDown })),
    };
  } finally {
    await l.close();
  }
}

async function outages(dpUrl: string, oldId: string, newId: string, work: string) {
  const n = Number(process.env.OUTAGES ?? 3);
  const forMs = Number(process.env.OUTAGE_SECS ?? 20) * 1000;
  const rate = Number(process.env.LINK_MBIT ?? 10) * 1e6;
  if (!(n >= 1 && forMs > 0 && rate > 0)) throw new Error('OUTAGES, OUTAGE_SECS, LINK_MBIT: > 0');
  const { ContentStore, httpRemote, fetchImage, chunksOf } = await content();
  const machine = async (name: string) => {
    mkdirSync(work, { recursive: true });
    const store = ContentStore.open(join(work, name), { create: true });
    // The machine already holds the old image (not counted: straight from the DP).
    await fetchImage({ sources: [httpRemote(dpUrl)], imageId: oldId, into: store, chunksOf });
    return store;
  };
  const clean = await fetchThrough(dpUrl, {}, newId, await machine('clean'), 30_000);
  const cut = await fetchThrough(
    dpUrl,
    {
      rateBitsPerSec: rate,
      outages: Array.from({ length: n }, (_, k) => ({
        atBytes: Math.round((clean.linkBytesDown * (k + 1)) / (n + 1)),
        forMs,
      })),
    },
    newId,
    await machine('outages'),
    5_000,
  );
  const cuts = cut.events.filter((e) => e.event === 'cut').length;
  process.stdout.write(
    JSON.stringify(
      {
        outages: n,
        outageSeconds: forMs / 1000,
        rateBitsPerSec: rate,
        cuts,
        clean,
        withOutages: cut,
        resentPerOutage: cuts ? (cut.linkBytesDown - clean.linkBytesDown) / cuts : null,
      },
      null,
      2,
    ) + '\n',
  );
}

const [cmd, ...args] = process.argv.slice(2);
if (cmd === 'link' && args.length === 3) {
  await link(Number(args[0]), args[1]!, args[2]!);
} else if (cmd === 'outages' && args.length === 4) {
  await outages(args[0]!, args[1]!, args[2]!, args[3]!);
} else usage();
