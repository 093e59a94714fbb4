/**
 * The client's configuration and identity on the machine's disk, in /etc/reimage (an OS path:
 * captured as client state in phase 1 and restored in phase 3, so the new client is the same
 * machine to the server). The lab generator writes the same files (src/lab/machine-tree.ts).
 *
 *   etc/reimage/client.json        ClientConfig (no secrets)
 *   etc/reimage/credential         the machine credential `rim_…` (mode 0600), after enrollment
 *   etc/reimage/enrollment-token   an enrollment token `rie_…` (mode 0600), deleted once used
 *   etc/reimage/policy-cache.json  the last policy received
 */
export interface ClientConfig {
  /** The machine's GUID, chosen by the server at enrollment (or locally when serverless). */
  guid?: string;
  /** The management server, `https://host:port` (or `http://127.0.0.1:port` in a lab). */
  server?: string;
  /** The server certificate's SHA-256 fingerprint to pin. */
  fingerprint?: string;
  site?: string;
  distributionPoint?: string;
  enrolledAt?: string;
  /** Serverless mode: where published advertisements are read (docs/serverless.md). */
  serverless?: {
    /** A folder, `file://` URL or `http(s)://` URL of a published folder. */
    location: string;
    /** The Ed25519 public key (PEM, SPKI) the published advertisements must be signed with. */
    publicKey: string;
    /** Where status files are dropped; default `<location>/status` (a folder location only). */
    dropFolder?: string;
  };
  /** Seconds between policy polls (default: what the server says; ±20 % jitter). */
  pollSeconds?: number;
}

export const CLIENT_DIR = 'etc/reimage';
export const CLIENT_CONFIG = 'etc/reimage/client.json';
export const CLIENT_CREDENTIAL = 'etc/reimage/credential';
export const CLIENT_ENROLLMENT_TOKEN = 'etc/reimage/enrollment-token';
export const CLIENT_POLICY_CACHE = 'etc/reimage/policy-cache.json';
