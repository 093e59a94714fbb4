import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LoginThrottle } from './login-throttle.js';

describe('LoginThrottle', () => {
  it('refuses a username after its failures, until the oldest leaves the window', () => {
    let t = 1_000_000;
    const th = new LoginThrottle({ perUser: 3, perAddress: 100, windowMs: 60_000, now: () => t });
    for (let i = 0; i < 3; i++) {
      assert.equal(th.retryAfter('admin', '10.0.0.1'), 0);
      th.failed('admin', `10.0.0.${i + 1}`);
      t += 10_000;
    }
    // Three failures at 0, 10 and 20 s: the next attempt waits for the first to expire (60 s).
    assert.equal(th.retryAfter('admin', '10.0.0.9'), 30);
    assert.equal(th.retryAfter('other', '10.0.0.9'), 0, 'other users are not affected');
    t += 30_000;
    assert.equal(th.retryAfter('admin', '10.0.0.9'), 0);
  });

  it('refuses an address that guesses many usernames', () => {
    let t = 0;
    const th = new LoginThrottle({ perUser: 100, perAddress: 5, windowMs: 60_000, now: () => t });
    for (let i = 0; i < 5; i++) th.failed(`user${i}`, '192.0.2.7');
    assert.ok(th.retryAfter('someone-else', '192.0.2.7') > 0);
    assert.equal(th.retryAfter('someone-else', '192.0.2.8'), 0);
    t += 60_001;
    assert.equal(th.retryAfter('someone-else', '192.0.2.7'), 0);
  });

  it('a success clears the counts of that username and address', () => {
    const th = new LoginThrottle({ perUser: 2, perAddress: 2, windowMs: 60_000, now: () => 5 });
    th.failed('admin', '192.0.2.1');
    th.succeeded('admin', '192.0.2.1');
    th.failed('admin', '192.0.2.1');
    assert.equal(th.retryAfter('admin', '192.0.2.1'), 0);
  });
});
