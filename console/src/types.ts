/** The API's shapes as the console reads them (docs/openapi.json is the reference). */
export interface List<T> {
  items: T[];
}

export interface User {
  id: string;
  username: string;
  role: 'admin' | 'operator' | 'read-only';
  disabled?: boolean;
  createdAt?: string;
}

export const roles = ['admin', 'operator', 'read-only'] as const;

/** An API token's record (the token itself is shown once, at creation). */
export interface ApiToken {
  id: string;
  userId: string;
  name: string;
  createdAt: string;
  expiresAt: string | null;
  lastUsedAt: string | null;
}

export interface EnrollmentToken {
  id: string;
  site: string | null;
  usesLeft: number | null;
  expiresAt: string;
  createdBy: string;
  createdAt: string;
  revoked: boolean;
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
  bandwidth: Bandwidth;
  hasCredentials: boolean;
}

export const weekdays = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'] as const;

/** A DP's replication limits: a rate and the windows in which replication may run. */
export interface Bandwidth {
  rateLimitKbps?: number;
  windows?: { days?: (typeof weekdays)[number][]; from: string; to: string }[];
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
  createdAt?: string;
  updatedAt?: string;
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
  /**
   * The status route's machine state (its deployments, newest last), or a state name when the
   * timeline was derived in the browser from the plain message list.
   */
  state:
    | string
    | { deployments?: { advertisement: string | null; state: string; since?: string | null }[] };
}

/** One word for a timeline's state: its most recently changed deployment's. */
export function timelineState(t: Timeline): string {
  if (typeof t.state === 'string') return t.state;
  const ds = [...(t.state?.deployments ?? [])].sort((a, b) =>
    (a.since ?? '').localeCompare(b.since ?? ''),
  );
  return ds.at(-1)?.state ?? 'waiting';
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
