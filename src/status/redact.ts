/**
 * Secrets out of free text: log lines, log tails and error messages that travel in status
 * messages. The server's ingest drops the values of secret-looking property *names*
 * ({@link isSecretName}, the same names as below); `redactText` is for secrets inside text. Used twice on purpose: by the agent
 * before a line reaches its log (so the log on the disk holds no secret either), and by the
 * server on every string it stores (an older or foreign agent may not have).
 *
 * What it finds: the secrets the caller knows exactly (a share password from the plan), the
 * password of a URL (`https://user:…@host`), `Bearer …`, reimage's own bearer secrets (`rit_`,
 * `rim_`, `rie_` + 43 base64url characters), `name=value` and `"name": "value"` where the name
 * looks secret (password, passwd, pwd, secret, token, credential, api key, product key,
 * private key, authorization), and product keys (five groups of five letters or digits).
 */

/** What a secret is replaced with. */
export const REDACTED = '[redacted]';

const SECRET_NAME = String.raw`(?:pass(?:word|wd|phrase)?|pwd|secret|token|credentials?|api.?key|product.?key|private.?key|authorization)`;

const SECRET_NAME_RE = new RegExp(SECRET_NAME, 'i');

/** Does a property or option name look like it holds a secret (`sharePassword`, `apiKey`, …)? */
export function isSecretName(name: string): boolean {
  return SECRET_NAME_RE.test(name);
}

const PATTERNS: [RegExp, string][] = [
  // scheme://user:password@host → keep the user, drop the password
  [/\b([a-z][a-z0-9+.-]*:\/\/[^\s/:@]*):[^\s/@]*@/gi, `$1:${REDACTED}@`],
  [/\bBearer\s+[A-Za-z0-9._~+/=-]+/g, `Bearer ${REDACTED}`],
  [/\bri[tme]_[A-Za-z0-9_-]{20,}/g, REDACTED],
  // "password": "…" (JSON) and password=… / password: … (command lines, config, URLs' queries)
  [
    new RegExp(String.raw`("[\w.-]*${SECRET_NAME}[\w.-]*"\s*:\s*)"(?:[^"\\]|\\.)*"`, 'gi'),
    `$1"${REDACTED}"`,
  ],
  [
    new RegExp(
      String.raw`\b([\w.-]*${SECRET_NAME}[\w.-]*\s*[=:]\s*)(?!\[redacted\]|Bearer\s)("[^"]*"|'[^']*'|[^\s&;,"']+)`,
      'gi',
    ),
    `$1${REDACTED}`,
  ],
  [/\b[A-Z0-9]{5}(?:-[A-Z0-9]{5}){4}\b/g, REDACTED],
];

/** A cheap first look: most text has none of these, and then nothing else runs. */
const MAYBE = new RegExp(
  String.raw`://[^\s/]*@|Bearer|ri[tme]_|${SECRET_NAME}|[A-Z0-9]{5}-[A-Z0-9]{5}-`,
  'i',
);

/**
 * `text` with every secret it can find replaced by `[redacted]`. `known` are exact secrets the
 * caller holds (shorter than 4 characters they are ignored: they would hide ordinary words).
 */
export function redactText(text: string, known: Iterable<string> = []): string {
  let out = text;
  for (const s of known) if (s.length >= 4) out = out.split(s).join(REDACTED);
  if (!MAYBE.test(out)) return out;
  for (const [re, to] of PATTERNS) out = out.replace(re, to);
  return out;
}
