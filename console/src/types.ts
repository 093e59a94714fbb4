/** The API's shapes as the console reads them (docs/openapi.json is the reference). */
export interface List<T> {
  items: T[];
}

export interface User {
  id: string;
  username: string;
  role: 'admin' | 'operator' | 'read-only';
}

export interface Image {
  id: string;
  name: string;
  format: string;
  properties: Record<string, unknown>;
  size: number;
  storedSize: number;
  fileCount: number;
  sourceMachine: string | null;
  registeredAt: string;
  registeredBy: string;
}

export interface Package {
  id: string;
  name: string;
  version: string;
  description: string;
  imageId: string;
  definition: Record<string, unknown>;
  settings: Record<string, unknown>;
  revision: number;
  createdAt: string;
  updatedAt: string;
}

export interface DistributionPoint {
  id: string;
  name: string;
  address: string;
  site: string;
  boundaries: string[];
  hasCredentials: boolean;
}

export interface Replication {
  packageId: string;
  dpId: string;
  dpName: string;
  state: string;
  sourceDpName: string | null;
  note: string | null;
  bytesDone: number;
  bytesTotal: number;
  error: string | null;
  updatedAt: string;
}

export interface Collection {
  id: string;
  name: string;
  description: string;
  rule: string | null;
  include: string[];
  exclude: string[];
}

export interface Wave {
  machines?: number;
  percent?: number;
}

export interface Advertisement {
  id: string;
  name: string;
  packageId: string;
  collectionId: string;
  availableFrom: string | null;
  deadline: string | null;
  policy: Record<string, unknown>;
  schedule: {
    waves?: Wave[];
    successThreshold?: number;
    failureThreshold?: number;
    activeWave?: number;
    rerun?: string;
  };
  enabled: boolean;
  createdAt: string;
}

export interface Machine {
  id: string;
  name: string;
  site: string | null;
  inventory: Record<string, unknown>;
  tags: string[];
  appliedImageId: string | null;
  clientVersion: string | null;
  enrolledAt: string;
  lastContactAt: string | null;
}

export interface StatusMessage {
  machineId: string;
  seq: number;
  messageId: number;
  component: string;
  phase: string;
  severity: string;
  advertisementId: string | null;
  time: string;
  text: string;
  properties: Record<string, unknown>;
}

export const countKeys = [
  'waiting',
  'notified',
  'postponed',
  'declined',
  'phase1',
  'phase2',
  'phase3',
  'succeeded',
  'failed',
  'rolledBack',
  'skippedSameImage',
  'notReachable',
] as const;
export type CountKey = (typeof countKeys)[number];
export type Counts = Record<CountKey, number>;

export interface Summary {
  advertisement: { id: string; name: string };
  counts: Counts;
  postponedUntil: { machine: string; until: string }[];
  overTime: ({ time: string } & Partial<Counts>)[];
  waves: {
    wave: number;
    state: 'released' | 'waiting' | 'halted';
    succeeded: number;
    failed: number;
    total: number;
    reason?: string;
  }[];
}

export interface TimelineMessage {
  seq: number;
  id: number;
  time: string;
  component: string;
  phase: string;
  severity: string;
  text: string;
  properties: Record<string, unknown>;
}

export interface Timeline {
  machine: {
    id: string;
    name: string;
    site?: string | null;
    model?: string | null;
    clientVersion?: string | null;
  };
  messages: TimelineMessage[];
  steps: {
    component: string;
    phase: string;
    firstSeq: number;
    lastSeq: number;
    start: string;
    end: string;
    durationMs: number;
  }[];
  state: string;
}

export interface TrendGroup {
  messageId: number;
  code?: string;
  attribute: string;
  value: string;
  failures: number;
  machines: number;
  share: number;
  rate: number;
  baseline: number;
  lift: number;
  score: number;
  example: { machine: string; seq: number };
}

export interface Fleet {
  now: Partial<Counts>;
  overTime: ({ time: string } & Partial<Counts>)[];
  topTrends: TrendGroup[];
}
