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
