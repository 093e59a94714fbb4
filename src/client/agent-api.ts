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
