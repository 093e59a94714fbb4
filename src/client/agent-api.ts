/**
 * What the agent receives from the management server (`GET /api/v1/client/policy`), as plain
 * types: the server's TypeBox schema (src/server/policy.ts) is the source of truth, and the
 * agent may not import the server. A serverless location publishes the same shape
 * (docs/serverless.md), so the agent has one code path for both.
 */
export type AdvertisementState =
  'active' | 'waiting-for-wave' | 'not-yet-available' | 'skip-same-image';

export interface PolicyContentLocation {
  distributionPoint: string;
  /** A folder, `file://` or `http(s)://` address of the DP's content store. */
  address: string;
  site: string;
  preference: string;
}

export interface PolicyAdvertisement {
  id: string;
  name: string;
  state: AdvertisementState;
  wave: number;
  availableFrom: string | null;
  deadline: string | null;
  package: {
    id: string;
    name: string;
    version: string;
    revision: number;
    imageId: string;
    definition: unknown;
  };
  /** The package image as the catalog knows it (null: not in the catalog). */
  image: {
    id: string;
    name: string;
    format: string;
    /** Bytes of the applied tree. */
    size: number;
    /** Capture properties: `os`, `version`, `arch`… */
    properties: Record<string, string>;
  } | null;
  /**
   * The PE to boot for phase 2, resolved by the server from the package definition's `pe`
   * (default: the newest image named `reimage-pe`); null when there is none.
   */
  pe: { imageId: string; name: string; program: string } | null;
  /** Deployment settings, with secrets. */
  settings: unknown;
  effectivePolicy: unknown;
  schedule: unknown;
  /** base64 AES-256 key for this machine's state store in this deployment. */
  stateStoreKey: string;
  content: PolicyContentLocation[];
}

export interface MachinePolicy {
  machineId: string;
  name: string;
  site: string | null;
  generatedAt: string;
  pollSeconds: number;
  advertisements: PolicyAdvertisement[];
}

/** What a client reports about its machine (`PUT /api/v1/client/inventory`). */
export interface AgentInventory {
  hostname?: string;
  os?: string;
  osVersion?: string;
  arch?: string;
  model?: string;
  manufacturer?: string;
  serial?: string;
  diskSizeGb?: number;
  diskFreeGb?: number;
  memoryGb?: number;
  cpuCount?: number;
  macs?: string[];
  ips?: string[];
}

/** The body of `PUT /api/v1/client/inventory`. */
export interface InventoryReport {
  inventory: AgentInventory;
  clientVersion?: string;
  /** The image this machine runs, when the client knows it. */
  appliedImageId?: string | null;
}

/** The body of `POST /api/v1/client/enroll`. */
export interface EnrollRequest extends InventoryReport {
  token: string;
  name: string;
}

/** What `POST /api/v1/client/enroll` answers: the credential is shown this once. */
export interface EnrollResponse {
  machine: { id: string; name: string; site: string | null };
  credential: string;
}

/** One message of `POST /api/v1/client/status`. */
export interface StatusMessageIn {
  seq: number;
  id: number;
  time: string;
  advertisementId?: string;
  properties?: Record<string, unknown>;
}
