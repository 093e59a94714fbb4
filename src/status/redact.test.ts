import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isSecretName, REDACTED, redactText } from './redact.js';

describe('redactText', () => {
  it('hides the secrets the caller knows, wherever they are', () => {
    assert.equal(
      redactText('mount //nas/state failed for hunter2-long (user backup)', ['hunter2-long']),
      `mount //nas/state failed for ${REDACTED} (user backup)`,
    );
    // too short to be told from ordinary words: left alone
    assert.equal(redactText('a b c', ['b']), 'a b c');
  });

  it('hides the password of a URL and keeps the rest', () => {
    assert.equal(
      redactText('GET https://deploy:s3cr3t@dp-lyon.example/packs/ab: 404'),
      `GET https://deploy:${REDACTED}@dp-lyon.example/packs/ab: 404`,
    );
    assert.equal(
      redactText('smb://ad%5Cbob:p%40ss@nas/share'),
      `smb://ad%5Cbob:${REDACTED}@nas/share`,
    );
  });

  it("hides bearer secrets and reimage's own tokens", () => {
    const rim = `rim_${'A'.repeat(43)}`;
    assert.equal(redactText(`Authorization: Bearer ${rim}`), `Authorization: Bearer ${REDACTED}`);
    assert.equal(redactText(`credential file holds ${rim}.`), `credential file holds ${REDACTED}.`);
    assert.equal(redactText(`token rie_${'x_-9'.repeat(11)}`), `token ${REDACTED}`);
  });

  it('hides values of secret-looking names in JSON, options and queries', () => {
    assert.equal(
      redactText('{"user":"bob","password":"p\\"w","productKey":"k"}'),
      `{"user":"bob","password":"${REDACTED}","productKey":"${REDACTED}"}`,
    );
    assert.equal(
      redactText('smbclient -U bob --password=hunter2 //nas/s'),
      `smbclient -U bob --password=${REDACTED} //nas/s`,
    );
    assert.equal(
      redactText('GET /state?user=bob&pwd=x1&size=3'),
      `GET /state?user=bob&pwd=${REDACTED}&size=3`,
    );
    assert.equal(redactText("share_password: 'a b'"), `share_password: ${REDACTED}`);
  });

  it('hides product keys', () => {
    assert.equal(
      redactText('key VK7JG-NPHTM-C97JM-9MPGT-3V66T applied'),
      `key ${REDACTED} applied`,
    );
  });

  it('leaves ordinary log lines as they are', () => {
    for (const line of [
      '2026-11-26T07:00:00.000Z step prestage (done before)',
      'step fetch failed (CHUNK_MISSING): chunk 3f2a… is missing on dp-lyon (http://10.0.0.2:8080/)',
      'rollback: 1200 reused files checked, 0 written again',
    ])
      assert.equal(redactText(line), line);
  });

  it('tells secret-looking names, as the ingest drops their values', () => {
    for (const n of ['sharePassword', 'pwd', 'apiKey', 'api_key', 'productKey', 'token', 'secret'])
      assert.equal(isSecretName(n), true, n);
    for (const n of ['step', 'code', 'logTail', 'dp', 'message', 'keyId'])
      assert.equal(isSecretName(n), false, n);
  });

  it('is idempotent', () => {
    const once = redactText('password=abc https://u:p@h/ Bearer xyz');
    assert.equal(redactText(once), once);
  });
});
