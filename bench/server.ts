// bench/server: throughput of the management server's hot paths, in-process (fastify inject,
// no network), on SQLite and on a throwaway PostgreSQL: status ingest (batches of 100), policy
// requests from enrolled machines, and enrollment. Prints figures; asserts nothing.
//   npm run build && node dist/bench/server.js [MACHINES=500] [BATCHES=200]
import { performance } from 'node:perf_hooks';
import {
  addImage,
  createAdvertisement,
  createCollection,
  createDp,
  createEnrollmentToken,
  createPackage,
  packageFiles,
  statusMessages,
} from '../test/support/fixtures.js';
import { postgresUnavailable, startPostgres } from '../test/support/postgres.js';
import type { Postgres } from '../test/support/postgres.js';
import { makeTestServer } from '../test/support/server.js';

const MACHINES = Number(process.env.MACHINES ?? 500);
const BATCHES = Number(process.env.BATCHES ?? 200);

async function run(kind: 'sqlite' | 'postgres', pg?: Postgres) {
  const s = await makeTestServer(kind, pg);
  try {
    await createDp(s, { name: 'dp-paris', site: 'paris', boundaries: ['10.1.0.0/16'] });
    await createDp(s, { name: 'dp-lyon', site: 'lyon', boundaries: ['10.2.0.0/16'] });
    await addImage(s, 'bench-image');
    await createPackage(s, packageFiles({ name: 'bench', version: '1', image: 'bench-image' }));
    await createCollection(s, { name: 'big-disks', rule: 'os = "debian" and disk_free_gb >= 20' });
    await createAdvertisement(s, {
      name: 'bench-ad',
      package: 'bench@1',
      collection: 'big-disks',
      schedule: { waves: [{ percent: 10 }, { percent: 90 }] },
    });
    const { token } = await createEnrollmentToken(s, { uses: MACHINES });
    const machines: { id: string; credential: string }[] = [];
    let t = performance.now();
    for (let i = 0; i < MACHINES; i++) {
      const r = await s.call<{ machine: { id: string }; credential: string }>(
        'POST',
        '/api/v1/client/enroll',
        {
          token: null,
          body: {
            token,
            name: `pc-${i}`,
            inventory: {
              os: i % 3 ? 'debian' : 'ubuntu',
              diskFreeGb: 10 + (i % 50),
              ips: [`10.${1 + (i % 2)}.${i >> 8}.${i & 255}`],
            },
          },
        },
      );
      machines.push({ id: r.body.machine.id, credential: r.body.credential });
    }
    const enrollRate = MACHINES / ((performance.now() - t) / 1000);

    t = performance.now();
    let stored = 0;
    for (let b = 0; b < BATCHES; b++) {
      const m = machines[b % machines.length]!;
      const seq0 = Math.floor(b / machines.length) * 100;
      const r = await s.call<{ accepted: number }>('POST', '/api/v1/client/status', {
        token: m.credential,
        body: {
          machineId: m.id,
          messages: statusMessages(Array.from({ length: 100 }, (_, k) => seq0 + k + 1)),
        },
      });
      stored += r.body.accepted;
    }
    const ingestRate = stored / ((performance.now() - t) / 1000);

    const polls = Math.min(MACHINES, 200);
    t = performance.now();
    for (let i = 0; i < polls; i++)
      await s.call('GET', '/api/v1/client/policy', { token: machines[i]!.credential });
    const policyRate = polls / ((performance.now() - t) / 1000);
    console.log(
      `${kind.padEnd(8)}  enroll ${enrollRate.toFixed(0).padStart(5)}/s   status ingest ${ingestRate.toFixed(0).padStart(6)} messages/s (batches of 100)   policy ${policyRate.toFixed(0).padStart(4)}/s with ${MACHINES} machines`,
    );
  } finally {
    await s.close();
  }
}

console.log(`management server, in-process, ${MACHINES} machines, ${BATCHES} status batches`);
await run('sqlite');
const why = postgresUnavailable();
if (why) console.log(`postgres  skipped: ${why}`);
else {
  const pg = await startPostgres();
  try {
    await run('postgres', pg);
  } finally {
    pg.stop();
  }
}
