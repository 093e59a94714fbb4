import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { isReimageError } from '../errors.js';
import { validateDocument } from './document.js';
import type { DeploymentSettings } from './schema.js';
import { joinSecrets, redact, secretPaths, splitSecrets } from './secrets.js';

const full: DeploymentSettings = {
  apiVersion: 'reimage/v1',
  kind: 'DeploymentSettings',
  machineState: {
    computerName: { set: 'PC-%SERIAL%' },
    productKey: { set: 'KEY-1234' },
    administratorPassword: { set: 'root-password' },
  },
  stateStore: {
    type: 'share',
    url: 'smb://files/state',
    username: 'svc',
    password: 'share-password',
  },
};
const values = ['KEY-1234', 'root-password', 'share-password'];

describe('secrets', () => {
  it('split replaces every secret with the marker and returns them by JSON pointer', () => {
    const { public: pub, secrets } = splitSecrets(full);
    assert.deepEqual(secrets, {
      '/machineState/productKey/set': 'KEY-1234',
      '/machineState/administratorPassword/set': 'root-password',
      '/stateStore/password': 'share-password',
    });
    assert.deepEqual(pub.machineState?.productKey, { set: { secret: 'set' } });
    assert.deepEqual(pub.stateStore, { ...full.stateStore, password: { secret: 'set' } });
    assert.deepEqual(pub.machineState?.computerName, { set: 'PC-%SERIAL%' }, 'not a secret');
    assert.equal(
      full.stateStore?.type === 'share' && full.stateStore.password,
      'share-password',
      'input unchanged',
    );
    validateDocument('DeploymentSettings', pub); // the public form is a valid document
  });

  it('join puts them back: a round trip', () => {
    const { public: pub, secrets } = splitSecrets(full);
    assert.deepEqual(joinSecrets(pub, secrets), full);
  });

  it('an edited document with markers keeps the stored secrets, a new value replaces one', () => {
    const stored = splitSecrets(full).secrets;
    const edited = structuredClone(redact(full));
    edited.machineState!.productKey = { set: 'NEW-KEY' };
    const again = splitSecrets(joinSecrets(edited, stored));
    assert.equal(again.secrets['/machineState/productKey/set'], 'NEW-KEY');
    assert.equal(again.secrets['/stateStore/password'], 'share-password');
  });

  it('secrets whose setting is gone are dropped', () => {
    const stored = splitSecrets(full).secrets;
    const local: DeploymentSettings = { ...redact(full), stateStore: { type: 'local' } };
    assert.equal(
      splitSecrets(joinSecrets(local, stored)).secrets['/stateStore/password'],
      undefined,
    );
  });

  it('a marker with nothing stored is VALIDATION_FAILED naming the path', () => {
    assert.throws(
      () => joinSecrets(redact(full), { '/stateStore/password': 'p' }),
      (e) =>
        isReimageError(e, 'VALIDATION_FAILED') &&
        /\/machineState\/productKey\/set: must be given/.test(e.message) &&
        !e.message.includes('/stateStore/password'),
    );
  });

  it('redact never leaks a secret value, whatever the shape', () => {
    const shapes: DeploymentSettings[] = [
      full,
      { ...full, machineState: { productKey: 'migrate', administratorPassword: { set: 'pw' } } },
      { apiVersion: 'reimage/v1', kind: 'DeploymentSettings' },
      {
        ...full,
        stateStore: {
          type: 'share',
          url: 'https://dav/x',
          username: 'u',
          password: { secret: 'set' },
        },
      },
    ];
    for (const s of shapes) {
      const text = JSON.stringify(redact(s));
      for (const v of [...values, 'pw']) assert.ok(!text.includes(v), `${v} leaked: ${text}`);
    }
  });

  it('lists three secret paths', () => {
    assert.equal(secretPaths.length, 3);
  });
});
