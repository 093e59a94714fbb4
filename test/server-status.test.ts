/**
 * Status ingest: batches are idempotent by (machine, seq), may arrive in any order, and a
 * machine posts only its own. Runs against SQLite and PostgreSQL.
 */
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import {
  enrollMachine,
  expectStatus,
  range,
  snapshotCatalog,
  statusMessages,
  type EnrolledMachine,
} from './support/fixtures.js';
import { forEachDatabase, type TestServer } from './support/server.js';

interface Timeline {
  items: { seq: number; messageId: number; text: string; properties: Record<string, unknown> }[];
}

async function post(server: TestServer, as: EnrolledMachine, body: Record<string, unknown>) {
  return server.call<{ accepted: number; duplicates: number }>('POST', '/api/v1/client/status', {
    token: as.credential,
    body: { machineId: as.id, ...body },
  });
}

async function timeline(server: TestServer, m: EnrolledMachine): Promise<Timeline['items']> {
  const res = await server.call<Timeline>('GET', `/api/v1/machines/${m.id}/timeline`, {
    role: 'read-only',
  });
  expectStatus(res, 200, 'timeline');
  return res.body.items;
}

forEachDatabase('status ingest', (get) => {
  let a: EnrolledMachine;
  let b: EnrolledMachine;
  let c: EnrolledMachine;
  before(async () => {
    a = await enrollMachine(get(), { name: 'status-a' });
    b = await enrollMachine(get(), { name: 'status-b' });
    c = await enrollMachine(get(), { name: 'status-c' });
  });

  test('the same batch posted twice is stored once', async () => {
    const server = get();
    const batch = statusMessages(range(1, 4));
    const first = await post(server, a, { messages: batch });
    expectStatus(first, 200, 'first post');
    assert.deepEqual(first.body, { accepted: 4, duplicates: 0 });
    const again = await post(server, a, { messages: batch });
    expectStatus(again, 200, 'second post');
    assert.deepEqual(again.body, { accepted: 0, duplicates: 4 });
    // A retry that overlaps: only the new messages count.
    const overlap = await post(server, a, { messages: statusMessages(range(3, 6)) });
    assert.deepEqual(overlap.body, { accepted: 2, duplicates: 2 });
    assert.deepEqual(
      (await timeline(server, a)).map((m) => m.seq),
      range(1, 6),
    );
  });

  test('a message stored once is not replaced by a later one with the same seq', async () => {
    const server = get();
    const res = await post(server, a, {
      messages: statusMessages([2], () => ({ advertisements: 'replaced' })),
    });
    assert.deepEqual(res.body, { accepted: 0, duplicates: 1 });
    const two = (await timeline(server, a)).find((m) => m.seq === 2)!;
    assert.deepEqual(two.properties, { advertisements: 2 });
    assert.equal(two.text, 'Policy received: 2 advertisement(s).');
  });

  test('batches out of order make one timeline in sequence order', async () => {
    const server = get();
    const late = await post(server, b, { messages: statusMessages(range(5, 8)) });
    assert.deepEqual(late.body, { accepted: 4, duplicates: 0 });
    const early = await post(server, b, { messages: statusMessages(range(1, 4).reverse()) });
    assert.deepEqual(early.body, { accepted: 4, duplicates: 0 });
    const items = await timeline(server, b);
    assert.deepEqual(
      items.map((m) => m.seq),
      range(1, 8),
    );
    assert.deepEqual(
      items.map((m) => m.properties.advertisements),
      range(1, 8),
    );
    // The status query by machine reads the same timeline, and pages by afterSeq.
    const page = await server.call<Timeline>(
      'GET',
      `/api/v1/status?machine=${b.id}&afterSeq=3&limit=2`,
      { role: 'read-only' },
    );
    expectStatus(page, 200, 'status query');
    assert.deepEqual(
      page.body.items.map((m) => m.seq),
      [4, 5],
    );
  });

  test('a batch for another machine is refused and nothing is stored', async () => {
    const server = get();
    const before = await snapshotCatalog(server);
    for (const machineId of [b.id, c.id, c.id.toUpperCase(), 'not-a-machine']) {
      const res = await server.call<{ error: { code: string; details: unknown } }>(
        'POST',
        '/api/v1/client/status',
        { token: a.credential, body: { machineId, messages: statusMessages(range(100, 103)) } },
      );
      assert.equal(res.status, 403, res.raw);
      assert.equal(res.body.error.code, 'MACHINE_MISMATCH');
    }
    assert.deepEqual(await snapshotCatalog(server), before);
    assert.deepEqual(await timeline(server, c), []);
    assert.ok((await timeline(server, a)).every((m) => m.seq < 100));
  });

  test('a batch that fails validation stores none of its messages', async () => {
    const server = get();
    const res = await post(server, c, {
      messages: [...statusMessages([1, 2]), { seq: 3, id: 4242, time: '2025-01-01T00:00:00Z' }],
    });
    assert.equal(res.status, 400, JSON.stringify(res.body));
    assert.deepEqual(await timeline(server, c), []);
  });
});
