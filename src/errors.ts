/**
 * The one registry of user-facing error codes. A code never changes meaning and is never
 * reused; `docs/errors.md` is generated from this table and a test fails when they drift.
 * A broken invariant is a bug (`assert`), not a code from this table.
 */
export const errorCodes = {
  USAGE: { exit: 2, help: 'The command line is wrong: see `reimage <noun> <verb> --help`.' },
  INVALID_ARGUMENT: {
    exit: 2,
    help: 'A value given on the command line or in a file is not valid; the message names it.',
  },
  SOURCE_UNREADABLE: {
    exit: 1,
    help: 'A file of the tree being captured cannot be read. Fix its permissions, exclude it with `--exclude`, or pass `--skip-unreadable` to leave it out with a warning.',
  },
  SOURCE_NOT_DIRECTORY: {
    exit: 2,
    help: 'The capture source must be a directory (the root of the tree).',
  },
  STORE_NOT_FOUND: {
    exit: 1,
    help: 'No content store at that path. Capture into it once to create it, or check `--store`.',
  },
  STORE_INVALID: {
    exit: 1,
    help: 'The folder is not a reimage content store, or was written by a newer version.',
  },
  STORE_BUSY: {
    exit: 1,
    help: 'Another process holds a lock that conflicts (garbage collection waits for captures and applies to finish). Retry later, or remove a stale lock with `reimage store unlock` once you are sure its process is gone.',
  },
  IMAGE_NOT_FOUND: {
    exit: 1,
    http: 404,
    help: 'No image with that name or id in the store: `reimage image list` shows what is there.',
  },
  IMAGE_NAME_INVALID: {
    exit: 2,
    help: 'Image names are 1-128 characters of letters, digits, `.`, `_`, `-`, start with a letter or digit, and are not 64 hex digits (that is an id).',
  },
  IMAGE_IN_USE: {
    exit: 1,
    help: 'The image is still named; delete it by name, or delete the names first.',
  },
  MANIFEST_INVALID: {
    exit: 1,
    help: 'The image manifest is malformed or hostile (absolute or `..` paths, entries below a symlink, bad hard links, sizes that disagree with chunks, duplicates). Nothing was written.',
  },
  MANIFEST_HASH_MISMATCH: {
    exit: 1,
    help: 'The stored manifest does not hash to the image id: the store is corrupt or tampered with.',
  },
  SIGNATURE_MISSING: {
    exit: 1,
    help: 'A trusted key was given but the image is not signed. Sign it with `reimage image sign`.',
  },
  SIGNATURE_INVALID: {
    exit: 1,
    help: 'The image signature does not verify with the trusted key: it was signed by another key or altered since.',
  },
  KEY_INVALID: {
    exit: 2,
    help: 'The key file is not an ed25519 key in PEM form (`reimage key create` makes one).',
  },
  CHUNK_MISSING: {
    exit: 1,
    help: 'A chunk the image needs is not in the store. Re-copy the store or recapture the image.',
  },
  CHUNK_CORRUPT: {
    exit: 1,
    help: 'A chunk does not hash to its name (a flipped byte, a truncated pack). Re-copy the pack from a good store, or recapture.',
  },
  PACK_CORRUPT: {
    exit: 1,
    help: 'A pack or its index is unreadable or truncated. Re-copy it from a good store.',
  },
  TARGET_NOT_EMPTY: {
    exit: 1,
    help: 'Apply writes into a new or empty directory only, so that nothing in the target can redirect a write. Empty it or choose another.',
  },
  TARGET_UNSAFE: {
    exit: 1,
    help: 'Apply writes into an existing empty directory only when it belongs to the user running the apply (another owner could redirect writes while it runs). Use a new directory, or change its owner.',
  },
  APPLY_FAILED: {
    exit: 1,
    help: 'Writing the tree failed; the message names the entry and the system error.',
  },
  FORMAT_UNKNOWN: {
    exit: 2,
    help: 'The file is in no image format reimage knows, or `--format` names none: `reimage formats` lists them; a plugin adds one (`--format-plugin PATH`).',
  },
  FORMAT_UNAVAILABLE: {
    exit: 1,
    help: 'The format needs a tool that is not installed here; the message names the package (e.g. wimtools, squashfs-tools).',
  },
  FORMAT_TOOL_FAILED: {
    exit: 1,
    help: 'The external tool of an image format (wimlib-imagex, mksquashfs, unsquashfs) failed; the message ends with its error output.',
  },
  CANCELLED: {
    exit: 130,
    help: 'The operation was cancelled (Ctrl-C); temporary data was removed and nothing was recorded.',
  },
  VALIDATION_FAILED: {
    exit: 2,
    http: 400,
    help: 'A document or request does not match its schema. `details.problems` lists each one: the file, the path in the document (and its line), what was found and what is expected.',
  },
  YAML_INVALID: {
    exit: 2,
    http: 400,
    help: 'The file is not well-formed YAML (or JSON); the message gives the line and column.',
  },
  REFERENCE_UNKNOWN: {
    exit: 1,
    http: 400,
    help: 'The document names something the catalog does not have (an image, package, collection, distribution point, rule set, machine). Create it first or fix the name.',
  },
  NOT_FOUND: {
    exit: 1,
    http: 404,
    help: 'No such object in the catalog (`details.kind` says which kind); `reimage <noun> list` shows what there is.',
  },
  ALREADY_EXISTS: {
    exit: 1,
    http: 409,
    help: 'An object of that kind and name already exists. Choose another name, or update the existing one.',
  },
  IN_USE: {
    exit: 1,
    http: 409,
    help: 'The object is still referenced (a package by an advertisement, a collection by an advertisement, ...). Delete or change the referrers first; `details.referrers` lists them.',
  },
  POLICY_LOOSENED: {
    exit: 1,
    http: 400,
    help: "An advertisement may only tighten its package's deployment settings (shorter postponement, no decline, a deadline, permission required), never loosen them. `details.problems` names each setting.",
  },
  RULE_INVALID: {
    exit: 2,
    http: 400,
    help: 'A collection rule does not parse or names an unknown inventory field; the message shows the position. See docs/collections.md for the rule language.',
  },
  UNAUTHENTICATED: {
    exit: 1,
    http: 401,
    help: 'No credentials, or wrong ones: log in with `reimage login`, or set REIMAGE_TOKEN to a valid API token.',
  },
  LOGIN_THROTTLED: {
    exit: 1,
    http: 429,
    help: 'Too many failed logins for this username or from this address in the last 15 minutes (10 per user, 30 per address): wait for the time the message gives (also in the Retry-After header). A successful login clears the count.',
  },
  FORBIDDEN: {
    exit: 1,
    http: 403,
    help: 'Your role does not allow this (read-only users read; operators also change the catalog; only admins manage users and tokens).',
  },
  MACHINE_MISMATCH: {
    exit: 1,
    http: 403,
    help: "A machine's credentials were used for another machine's policy or status. Each machine reads and reports only as itself.",
  },
  ENROLLMENT_REFUSED: {
    exit: 1,
    http: 401,
    help: 'The enrollment token is unknown, expired or used up. Ask the administrator for a new one (`reimage machine enroll-token create`).',
  },
  PAYLOAD_TOO_LARGE: {
    exit: 1,
    http: 413,
    help: 'The request body is larger than the server accepts for that endpoint.',
  },
  STATUS_MESSAGE_UNKNOWN: {
    exit: 1,
    http: 400,
    help: 'A status message carries an id that is not in the status message catalog (docs/status-messages.md).',
  },
  SERVER_UNREACHABLE: {
    exit: 1,
    help: 'The management server did not answer. Check `--server` (or REIMAGE_SERVER / the config file) and the network.',
  },
  SERVER_CERT_MISMATCH: {
    exit: 1,
    help: "The server's TLS certificate does not match the pinned fingerprint (or is not trusted). If the server's certificate was replaced on purpose, pin the new fingerprint with `--server-fingerprint`; otherwise something is intercepting the connection.",
  },
  SERVER_CONFIG_INVALID: {
    exit: 2,
    help: 'The server cannot start with these settings (database URL, certificate, key file, listen address); the message says which.',
  },
  DATABASE_ERROR: {
    exit: 1,
    http: 503,
    help: 'The catalog database failed or is unreachable; the message carries its error. Nothing was changed.',
  },
  DATABASE_TOO_NEW: {
    exit: 1,
    help: 'The database was migrated by a newer reimage than this one. Upgrade reimage.',
  },
  SECRET_KEY_INVALID: {
    exit: 1,
    http: 500,
    help: "The server's secret key cannot decrypt the stored secrets (a different key file than the one they were written with). Restore the server's key file.",
  },
  STATE_STORE_INVALID: {
    exit: 1,
    help: 'No complete state store there: the capture that wrote it did not finish (a store without its manifest is incomplete and ignored), or the store is malformed or from a newer reimage. The message says which; capture the state again.',
  },
  STATE_STORE_TAMPERED: {
    exit: 1,
    help: 'The state store failed its integrity check: its manifest or a stored file was altered, truncated, swapped or removed; the message names the item. Do not restore from it; `reimage state verify` lists what is intact and `reimage state extract` rescues that.',
  },
  STATE_STORE_KEY_INVALID: {
    exit: 1,
    help: "The key does not open the state store: it is missing, not 32 bytes in base64, or another key than the store was encrypted with (the message gives both key ids). Use the key from the machine's policy at capture time.",
  },
  STATE_STORE_IO_FAILED: {
    exit: 1,
    help: 'Reading or writing the state store failed (no space left, no permission, the connection dropped); the message names the file and the system or SMB error. Nothing was committed.',
  },
  SHARE_AUTH_FAILED: {
    exit: 1,
    help: 'The network share refused the account: a wrong user name or password, or an account that is disabled, locked or not allowed on that share. Fix the credentials in the deployment settings.',
  },
  SHARE_UNREACHABLE: {
    exit: 1,
    help: 'The network share did not answer (host unknown or down, port blocked), or the server has no share of that name. Check the smb:// address and the network.',
  },
  SHARE_CLIENT_UNAVAILABLE: {
    exit: 1,
    help: 'Network shares are reached with `smbclient`, which is not installed here: `apt-get install smbclient`.',
  },
  SHARE_IO_FAILED: {
    exit: 1,
    help: 'Copying an image to the network share failed (no space left, no permission, the connection dropped); the message names the file and the SMB error. What this capture had copied was removed again; the share holds no partial image.',
  },
  DESTINATION_UNAVAILABLE: {
    exit: 1,
    help: 'This reimage cannot capture into that kind of destination yet (the message says which). Capture to a folder or an SMB share instead.',
  },
  DP_UNREACHABLE: {
    exit: 1,
    help: 'A distribution point did not answer (or kept failing) for longer than the retry window. Check its address and the network; the fetch resumes where it stopped when run again.',
  },
  DP_FILE_MISSING: {
    exit: 1,
    help: 'A distribution point lacks a file the image needs (`details.dp`, `details.path`): the package was not (fully) replicated there. Replicate it again, or let the machine use another DP.',
  },
  DEPLOYMENT_CHECK_FAILED: {
    exit: 1,
    help: "Phase 1's checks refused the deployment before anything changed: the image's OS family or architecture does not match the machine, the disk lacks space for the staged content and the new OS, or the client has no identity. The message says which.",
  },
  DISK_FULL: {
    exit: 1,
    help: 'The disk ran out of space while applying an image (or would: the estimate before the apply says how much is missing). What the apply wrote was removed again; in a deployment the machine rolls back to its old OS. Free space on the disk (or give the machine a larger one) and deploy again.',
  },
  PE_INVALID: {
    exit: 1,
    help: 'The PE image of the package does not hold the agent program the package names (`pe.program`). Rebuild the PE image.',
  },
  PE_BOOT_FAILED: {
    exit: 1,
    help: 'The machine booted its old OS three times instead of the PE that phase 1 installed: the boot entry is not honoured. Nothing of the old OS changed.',
  },
  AGENT_STATE_INVALID: {
    exit: 1,
    help: "A file of the agent's kept area (`/.reimage`: journal, plan, identity) cannot be read as written. The message names it; the deployment stops there rather than guess.",
  },
  AGENT_POLICY_UNUSABLE: {
    exit: 1,
    help: "The agent cannot turn an advertisement of its policy into a deployment: no PE image (name one in the package definition's `pe`, or register an image named `reimage-pe`), a state store on a share (the in-place deployment keeps it on the machine's disk), or a field of the wrong type. Reported once as status 9000 (step `plan`); nothing on the machine changed.",
  },
  NOTIFICATION_NOT_PENDING: {
    exit: 1,
    http: 404,
    help: 'No notification is waiting for an answer on this machine (none was shown, or it was already answered or timed out). See docs/notification.md.',
  },
  NOTIFICATION_TOKEN_INVALID: {
    exit: 1,
    http: 403,
    help: "The notification's token is missing or wrong (or the request came from another web origin). Use the address in /.reimage/notify/current.json, or `reimage agent prompt`.",
  },
  NOTIFICATION_ANSWER_INVALID: {
    exit: 2,
    http: 400,
    help: 'The answer is not one the notification allows: a button the administrator did not allow, or "later" past the latest time allowed. The message says which; nothing was recorded and the question is still open.',
  },
  NOTIFICATION_ALREADY_ANSWERED: {
    exit: 1,
    http: 409,
    help: 'The notification was already answered (only the first answer counts, from the web page or the terminal).',
  },
  DP_WRITE_FAILED: {
    exit: 1,
    help: 'Writing to a distribution point failed (`details.dp`): the WebDAV server refused a request, or smbclient reported an error. Check the address, the credentials and the free space there, then distribute again: what arrived is kept.',
  },
  DISTRIBUTION_SOURCE_NOT_READY: {
    exit: 1,
    http: 409,
    help: 'A distribution point can be filled from another one (`--from-dp`) only once the package is `done` there, and not from itself. Distribute to the source first and wait for it (`reimage package distribution`), then distribute again.',
  },
  LAB_MACHINE_INVALID: {
    exit: 2,
    help: 'The folder is not a lab machine: it needs machine.json and disk/ (make one with the lab, see docs/lab.md), or the machine folder to create already holds files.',
  },
  LAB_BOOT_CONFIG_INVALID: {
    exit: 1,
    help: "The machine's boot configuration (esp/reimage/boot.json) is not valid: bad JSON, a default entry that does not exist, or a boot program that is not a plain path on the machine's disk (`..` and symbolic links leading out of the disk are refused). The machine halts; fix the file (docs/lab.md).",
  },
  LAB_NO_BOOT_DEVICE: {
    exit: 1,
    help: "No bootable device: the boot configuration or the program its entry names is missing or unreadable on the machine's disk. The machine halts; console.log tells which. Reinstall the program (e.g. the agent bundle) or fix the entry.",
  },
  LAB_BOOT_LOOP: {
    exit: 1,
    help: 'The machine rebooted or crashed more often than the boot-loop guard allows (default 10 boots a minute) and was halted. Read console.log for why its program keeps ending; raise the limit with `--max-boots-per-minute` if the boots are expected.',
  },
  LAB_DEMO_UNEXPECTED: {
    exit: 1,
    help: "A machine of `reimage lab demo` did not end as its simulated user's plan says (installed, declined, not installed), or the lab's hashes found its user data changed. The table (or `--json`) names the machine; its console.log in the work folder and its timeline at the server (`reimage status list --machine NAME`) say why.",
  },
  UPLOAD_NOT_FOUND: {
    exit: 1,
    http: 404,
    help: 'The server has no open upload with that id: it was committed, it expired after being idle, or the server restarted. Run the upload again: chunks that reached the library are not sent again.',
  },
  UPLOAD_DATA_INVALID: {
    exit: 1,
    http: 400,
    help: 'Data sent to an upload is malformed (a frame or a chunk record out of bounds) or a chunk does not hash to its name. Nothing of that request was stored; the local store may be damaged: `reimage image verify` checks it.',
  },
  UPLOAD_MANIFEST_INVALID: {
    exit: 1,
    http: 400,
    help: 'The manifest sent to commit an upload does not hash to the image id, cannot be decompressed, or is malformed. Nothing was recorded; `reimage image verify` checks the local copy.',
  },
  UPLOAD_INCOMPLETE: {
    exit: 1,
    http: 409,
    help: 'The upload was committed before the library had every chunk the manifest names (`details.missing` counts them). Nothing was recorded; run the upload again to send what is missing.',
  },
  PUBLICATION_REFUSED: {
    exit: 1,
    http: 409,
    help: 'The advertisement cannot be published to a serverless location: it is disabled, or its package settings hold secrets, which never go to a share in clear text (docs/serverless.md). Enable it, or use a package without secrets.',
  },
  PUBLICATION_SIGNATURE_INVALID: {
    exit: 1,
    help: 'A published advertisement (or the index of a published folder) has no signature, or it does not verify with the public key the machine is configured with: it is ignored, never deployed. Publish it again with the right key (`reimage advertisement publish --key`).',
  },
  PUBLICATION_INVALID: {
    exit: 1,
    help: 'A file of a serverless location is malformed (not a published advertisement of a known version, or its name does not match its content). Publish it again.',
  },
  PUBLICATION_STALE: {
    exit: 1,
    help: 'A signed serverless advertisement is past its expiry, or older than the copy the machine already accepted (an older copy put back on the share). Publish it again (`reimage advertisement publish`); check who can write the share.',
  },
  STATUS_DROP_INVALID: {
    exit: 1,
    http: 400,
    help: 'A status file in the drop folder is malformed; the import moved it to `.rejected/` in the drop folder and went on with the others. The message names the file and what is wrong.',
  },
  INTERNAL: {
    exit: 70,
    http: 500,
    help: 'A bug in reimage. The server log has the details under the request id; please report it.',
  },
} as const;

export type ErrorCode = keyof typeof errorCodes;

/** An error the user can act on: a stable code, a message naming what was wrong, and details for `--json`. */
export class ReimageError extends Error {
  readonly code: ErrorCode;
  readonly details: Record<string, unknown>;

  constructor(
    code: ErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ReimageError';
    this.code = code;
    this.details = options.details ?? {};
  }

  get exitCode(): number {
    return errorCodes[this.code].exit;
  }

  /** The HTTP status the server answers with for this error (400 when the code has none). */
  get httpStatus(): number {
    const e = errorCodes[this.code];
    return 'http' in e ? e.http : 400;
  }
}

/**
 * Also recognizes errors from another copy of this module (a format plugin with its own
 * node_modules): by name and a known code, not by class identity.
 */
export function isReimageError(e: unknown, code?: ErrorCode): e is ReimageError {
  const known =
    e instanceof ReimageError ||
    (e instanceof Error &&
      e.name === 'ReimageError' &&
      typeof (e as { code?: unknown }).code === 'string' &&
      (e as unknown as { code: string }).code in errorCodes);
  return known && (code === undefined || (e as ReimageError).code === code);
}
