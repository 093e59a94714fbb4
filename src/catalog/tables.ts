/**
 * The catalog's tables as Kysely sees them. One schema serves SQLite and PostgreSQL, so the
 * column types are the portable subset: text (ids, ISO-8601 UTC times, JSON documents),
 * integer (counters, 0/1 booleans) and bigint (byte counts; PostgreSQL hands those back as
 * strings, so repositories convert with Number()).
 */
export interface UserRow {
  id: string;
  username: string;
  password_hash: string;
  role: string;
  disabled: number;
  created_at: string;
}

export interface ApiTokenRow {
  id: string;
  user_id: string;
  name: string;
  token_hash: string;
  created_at: string;
  expires_at: string | null;
  last_used_at: string | null;
}

export interface ImageRow {
  id: string;
  name: string;
  format: string;
  properties: string;
  size: number | string;
  stored_size: number | string;
  file_count: number;
  source_machine: string | null;
  registered_at: string;
  registered_by: string;
  /** JSON, since migration 0003 */
  inventory: string | null;
}

export interface PackageRow {
  id: string;
  name: string;
  version: string;
  description: string;
  image_id: string;
  definition: string;
  settings: string;
  secrets: string | null;
  revision: number;
  created_at: string;
  updated_at: string;
}

export interface DistributionPointRow {
  id: string;
  name: string;
  address: string;
  site: string;
  boundaries: string;
  bandwidth: string;
  /** Sealed credentials for writing to the DP, or null. */
  credentials: string | null;
  created_at: string;
  updated_at: string;
}

export interface MachineRow {
  id: string;
  name: string;
  site: string | null;
  credential_hash: string;
  inventory: string;
  tags: string;
  applied_image_id: string | null;
  client_version: string | null;
  enrolled_at: string;
  last_contact_at: string | null;
}

export interface EnrollmentTokenRow {
  id: string;
  token_hash: string;
  site: string | null;
  uses_left: number | null;
  expires_at: string;
  created_by: string;
  created_at: string;
  revoked: number;
}

export interface CollectionRow {
  id: string;
  name: string;
  description: string;
  rule: string | null;
  include_machines: string;
  exclude_machines: string;
  created_at: string;
  updated_at: string;
}

export interface AdvertisementRow {
  id: string;
  name: string;
  package_id: string;
  collection_id: string;
  available_from: string | null;
  deadline: string | null;
  policy: string;
  schedule: string;
  enabled: number;
  created_at: string;
  updated_at: string;
}

export interface StatusMessageRow {
  machine_id: string;
  seq: number;
  message_id: number;
  component: string;
  phase: string;
  severity: string;
  advertisement_id: string | null;
  time: string;
  received_at: string;
  properties: string;
}

export interface AuditRow {
  id: string;
  at: string;
  actor: string;
  action: string;
  kind: string;
  target: string;
  summary: string;
}

export interface DistributionRow {
  package_id: string;
  dp_id: string;
  /** 'pending' | 'copying' | 'waiting' | 'done' | 'failed' */
  state: string;
  bytes_done: number | string;
  bytes_total: number | string;
  error: string | null;
  /** The DP the copy reads from; null for the library. */
  source_dp_id: string | null;
  /** What a copy is waiting for, e.g. "waiting for window until 22:00". */
  note: string | null;
  updated_at: string;
}

/** Where one machine stands in one advertisement (derived at status ingest; migration 0006). */
export interface DeploymentStateRow {
  advertisement_id: string;
  machine_id: string;
  state: string;
  /** Sequence number and time of the message that set `state`. */
  state_seq: number;
  state_time: string;
  /** Time of the earliest message about this deployment seen so far. */
  first_time: string;
  last_seq: number;
  postponed_until: string | null;
  failure_message_id: number | null;
  failure_code: string | null;
  failure_step: string | null;
  failure_seq: number | null;
  dp: string | null;
  dp_seq: number | null;
  /** Attributes for trends, taken when the deployment was first seen. */
  site: string | null;
  model: string | null;
  client_version: string | null;
  disk_band: string | null;
  image: string | null;
}

/** A machine's latest status message (derived at ingest). */
export interface MachineStatusRow {
  machine_id: string;
  last_seq: number;
  last_message_id: number;
  last_time: string;
  last_severity: string;
  advertisement_id: string | null;
  messages: number;
  updated_at: string;
}

/** Deployments entering and leaving a state, per advertisement and 5-minute bucket. */
export interface StatusBucketRow {
  advertisement_id: string;
  /** ISO time the bucket starts. */
  bucket: string;
  state: string;
  entered: number;
  exited: number;
}

/** A rollout halted by its failure threshold (or resumed by an operator). */
export interface RolloutRow {
  advertisement_id: string;
  halted: number;
  halted_wave: number | null;
  reason: string | null;
  halted_at: string | null;
  /** JSON: wave → failures an operator accepted when resuming. */
  acknowledged: string;
  updated_at: string;
}

export interface Tables {
  users: UserRow;
  api_tokens: ApiTokenRow;
  images: ImageRow;
  packages: PackageRow;
  distribution_points: DistributionPointRow;
  machines: MachineRow;
  enrollment_tokens: EnrollmentTokenRow;
  collections: CollectionRow;
  advertisements: AdvertisementRow;
  status_messages: StatusMessageRow;
  audit_log: AuditRow;
  distributions: DistributionRow;
  deployment_states: DeploymentStateRow;
  machine_status: MachineStatusRow;
  status_buckets: StatusBucketRow;
  rollouts: RolloutRow;
}
