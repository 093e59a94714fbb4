/**
 * Drop-folder throughput (docs/serverless.md, "Measured"): MACHINES machines each write
 * BATCHES drop files of PER messages with dropFolderSender, then importStatusDrop ingests
 * them into a fresh SQLite catalog. Prints the two times; never fails on a time.
 *
 *   npm run build && node dist/bench/serverless-import.js [MACHINES BATCHES PER]
 */
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dropFolderSender } from '../src/agent/serverless.js';
import { Catalog } from '../src/catalog/catalog.js';
import { openCatalogDb } from '../src/catalog/db.js';
import { migrateToLatest } from '../src/catalog/migrations.js';
import { importStatusDrop } from '../src/server/status-import.js';

const [machines = 10, batches = 50, per = 20] = process.argv.slice(2).map(Number);
const dir = mkdtempSync(join(tmpdir(), 'reimage-bench-drop-'));
const db = openCatalogDb(join(dir, 'catalog.sqlite'));
try {
  await migrateToLatest(db);
  const catalog = new Catalog(db);
  const drop = join(dir, 'drop');
  mkdirSync(drop);
  let t = performance.now();
  for (let m = 0; m < machines; m++) {
    const send = dropFolderSender(drop, randomUUID(), { machineName: `pc-${m}` });
    for (let b = 0; b < batches; b++)
      await send(
        Array.from({ length: per }, (_, i) => ({
          seq: b * per + i + 1,
          id: 1002,
          time: new Date().toISOString(),
          properties: { advertisements: 1 },
        })),
      );
  }
  const write = performance.now() - t;
  t = performance.now();
  const r = await importStatusDrop(catalog, drop, (m, messages) =>
    catalog.status.ingest(m.id, messages, {
      site: m.site,
      model: null,
      clientVersion: m.clientVersion,
      diskBand: null,
    }),
  );
  const imported = performance.now() - t;
  const files = machines * batches;
  console.log(
    `${files} drop files, ${files * per} messages: write ${(write / 1000).toFixed(1)} s (${(write / files).toFixed(1)} ms a file); ` +
      `import ${(imported / 1000).toFixed(1)} s (${Math.round((r.accepted * 1000) / imported)} messages/s), ${r.machinesCreated.length} machines recorded`,
  );
} finally {
  await db.close();
  rmSync(dir, { recursive: true, force: true });
}
