/**
 * The shared words of state migration (phase 1 captures what must survive the new OS, phase 3
 * restores it). The rule engine selects items, the state store keeps them, restore puts them
 * back; answer files carry machine state into the new OS's first-boot setup.
 */

/** What kind of state an item is: the three rule kinds, plus the two state sections of a deployment. */
export type ItemKind =
  'os-settings' | 'app-settings' | 'user-files' | 'machine-state' | 'client-state';

/**
 * One captured filesystem entry. `path` is relative to the machine's root, '/'-separated,
 * with no leading '/', no '.' or '..' segments (the store refuses any other).
 */
export interface StateItem {
  path: string;
  type: 'file' | 'dir' | 'symlink';
  /** Permission bits incl. setuid/setgid/sticky (st_mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Modification time in milliseconds (fractional allowed). */
  mtimeMs: number;
  /** Bytes, for files. */
  size: number;
  /** For symlinks. */
  target?: string;
  /** SHA-256 hex of the content, for files (filled in by the store). */
  sha256?: string;
  kind: ItemKind;
  /** The rule component (or state property) that selected it, e.g. "user-documents". */
  component: string;
  /** The user whose home it came from, for per-user rules. */
  user?: string;
}

/** A local account as /etc/passwd, /etc/shadow and /etc/group describe it. */
export interface UserAccount {
  name: string;
  uid: number;
  gid: number;
  gecos: string;
  home: string;
  shell: string;
  /** The /etc/shadow line's fields after the name (hash included): a secret. */
  shadow?: string;
  /** Supplementary groups by name. */
  groups: string[];
}

export interface GroupAccount {
  name: string;
  gid: number;
  members: string[];
}

/**
 * Machine state as the deployment settings choose it: each property migrated from the old OS
 * or set to a value. Secrets (productKey, administratorPassword hash) never reach logs.
 */
export interface MachineState {
  computerName?: string;
  domain?: string;
  userName?: string;
  organization?: string;
  productKey?: string;
  /** A crypt(3) hash (Linux) or a clear password (Windows answer files need one). */
  administratorPassword?: { hash?: string; clear?: string };
  timezone?: string;
  locale?: string;
  network?:
    | { mode: 'dhcp' }
    | {
        mode: 'static';
        interface?: string;
        address: string;
        prefix: number;
        gateway?: string;
        dns?: string[];
      };
  sshHostKeys?: boolean;
}
