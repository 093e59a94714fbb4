import assert from 'node:assert/strict';
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Journal } from './journal.js';

const base = mkdtempSync(join(tmpdir(), 'reimage-journal-'));
after(() => rmSync(base, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(base, `j${++n}`);

describe('Journal', () => {
  it('runs a step once; a step that began but did not finish runs again', async () => {
    const dir = fresh();
    const j = new Journal(dir);
    let runs = 0;
    assert.deepEqual(
      await j.run('capture-state', () => {
        runs++;
        return { items: 3 };
      }),
      { items: 3 },
    );
    assert.deepEqual(
      await j.run('capture-state', () => {
        runs++;
        return { items: 4 };
      }),
      { items: 3 },
    );
    assert.equal(runs, 1);
    j.begin('wipe'); // then the process was killed
    j.close();
    const k = new Journal(dir);
    assert.equal(k.isDone('capture-state'), true);
    assert.equal(k.isDone('wipe'), false);
    const attempt = await k.run('wipe', (a) => a);
    assert.equal(attempt, 2, 'the step knows it is a re-run');
    k.close();
  });

  it('a failing step is journaled with its code and the error goes on', async () => {
    const dir = fresh();
    const j = new Journal(dir);
    await assert.rejects(
      j.run('apply', () => {
        throw Object.assign(new Error('disk full'), { code: 'NO_SPACE' });
      }),
      /disk full/,
    );
    assert.deepEqual(j.last(), {
      t: j.last()!.t,
      step: 'apply',
      event: 'failed',
      data: { code: 'NO_SPACE', message: 'disk full' },
    });
    assert.equal(j.isDone('apply'), false);
    j.close();
  });

  it('a torn record is cut off on reopening', () => {
    const dir = fresh();
    const j = new Journal(dir);
    j.begin('a');
    j.done('a', 1);
    j.close();
    appendFileSync(join(dir, 'journal.jsonl'), '{"t":"x","step":"b","ev');
    const k = new Journal(dir);
    assert.equal(k.history().length, 2);
    k.begin('b');
    k.close();
    assert.equal(new Journal(dir).history().length, 3);
  });
});
