import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { MAX_BATCH, Outbox, PermanentRefusal } from './outbox.js';
import type { OutboxEntry } from './outbox.js';

const base = mkdtempSync(join(tmpdir(), 'reimage-outbox-'));
after(() => rmSync(base, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(base, `o${++n}`);
const msg = (id: number) => ({ id, time: new Date(0).toISOString() });

describe('Outbox', () => {
  it('numbers messages continuously across reopenings (old client, PE, new client)', () => {
    const dir = fresh();
    const a = new Outbox(dir);
    assert.equal(a.add(msg(3000)), 1);
    assert.equal(a.add(msg(3001)), 2);
    a.close();
    const b = new Outbox(dir); // the PE opens the same outbox after the reboot
    assert.equal(b.add(msg(4000)), 3);
    assert.deepEqual(
      b.pending().map((e) => [e.seq, e.id]),
      [
        [1, 3000],
        [2, 3001],
        [3, 4000],
      ],
    );
    b.close();
  });

  it('a key already in the outbox adds nothing and returns the first seq', () => {
    const dir = fresh();
    const o = new Outbox(dir);
    assert.equal(o.add(msg(3000), 'd1/prepare/begin'), 1);
    assert.equal(o.add(msg(3002), 'd1/capture-state/done'), 2);
    o.close();
    const again = new Outbox(dir); // the step ran again after a kill
    assert.equal(again.add(msg(3002), 'd1/capture-state/done'), 2);
    assert.equal(again.pending().length, 2);
    assert.equal(again.has('d1/prepare/begin'), true);
    again.close();
  });

  it('flush sends batches of at most MAX_BATCH and remembers what the server took', async () => {
    const dir = fresh();
    const o = new Outbox(dir);
    for (let i = 0; i < MAX_BATCH + 5; i++) o.add(msg(1001));
    const batches: number[][] = [];
    let fail = true;
    const send = async (b: OutboxEntry[]) => {
      if (batches.length === 1 && fail) {
        fail = false;
        throw new Error('network down');
      }
      batches.push(b.map((e) => e.seq));
    };
    await assert.rejects(o.flush(send), /network down/);
    assert.equal(o.ackedSeq, MAX_BATCH);
    o.close();
    const reopened = new Outbox(dir);
    assert.equal(reopened.pending().length, 5, 'the acknowledged high-water mark is on disk');
    assert.equal(await reopened.flush(send), 5);
    assert.deepEqual(batches[1], [1001, 1002, 1003, 1004, 1005]);
    assert.equal(reopened.pending().length, 0);
    reopened.close();
  });

  it('a message the server refuses for good goes to dead.jsonl and does not block the rest', async () => {
    const dir = fresh();
    const o = new Outbox(dir);
    o.add(msg(1001));
    o.add(msg(77777));
    o.add(msg(1002));
    const delivered: number[] = [];
    await o.flush(async (b) => {
      if (b.some((e) => e.id === 77777)) throw new PermanentRefusal('unknown status message id');
      delivered.push(...b.map((e) => e.seq));
    });
    assert.deepEqual(delivered, [1, 3]);
    assert.equal(o.pending().length, 0);
    const dead = readFileSync(join(dir, 'dead.jsonl'), 'utf8').trim().split('\n');
    assert.equal(dead.length, 1);
    assert.equal(JSON.parse(dead[0]!).seq, 2);
    assert.match(JSON.parse(dead[0]!).refused, /unknown status message id/);
    o.close();
  });

  it('a torn last line (a crash mid-write) is cut off; the seq goes on from the last whole one', () => {
    const dir = fresh();
    const o = new Outbox(dir);
    o.add(msg(3000));
    o.add(msg(3001));
    o.close();
    appendFileSync(join(dir, 'log.jsonl'), '{"seq":3,"id":30');
    const r = new Outbox(dir);
    assert.equal(r.lastSeq, 2);
    assert.equal(r.add(msg(3002)), 3);
    r.close();
    const lines = readFileSync(join(dir, 'log.jsonl'), 'utf8').trim().split('\n');
    assert.deepEqual(
      lines.map((l) => (JSON.parse(l) as OutboxEntry).seq),
      [1, 2, 3],
    );
  });

  it('compact drops acknowledged messages and keeps the sequence going', async () => {
    const dir = fresh();
    const o = new Outbox(dir);
    for (let i = 0; i < 10; i++) o.add(msg(1002));
    await o.flush(async () => {});
    o.add(msg(1003));
    o.compact();
    o.close();
    const r = new Outbox(dir);
    assert.equal(r.pending().length, 1);
    assert.equal(r.add(msg(1002)), 12);
    r.close();
  });

  it('killed with SIGKILL while adding: the outbox reopens whole, seqs continuous', async () => {
    const dir = fresh();
    const outboxJs = fileURLToPath(new URL('./outbox.js', import.meta.url));
    const script = `
      const { Outbox } = await import(${JSON.stringify(outboxJs)});
      const o = new Outbox(${JSON.stringify(dir)});
      for (let i = 0; ; i++) {
        o.add({ id: 4010, time: new Date().toISOString(), properties: { done: i, pad: 'x'.repeat(i % 700) } }, 'k' + i);
        if (i === 50) process.stdout.write('going\\n');
      }`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((resolve) => child.stdout.once('data', () => resolve()));
    await new Promise((r) => setTimeout(r, 150));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const o = new Outbox(dir);
    const seqs = o.all().map((e) => e.seq);
    assert.ok(seqs.length > 50);
    assert.deepEqual(
      seqs,
      seqs.map((_, i) => i + 1),
    );
    const next = o.add(msg(4011), `k${seqs.length - 1}`); // the last key: already there
    assert.equal(next, seqs.length);
    o.close();
  });
});
