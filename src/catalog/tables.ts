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
  /** 'pending' | 'copying' | 'done' | 'failed' */
  state: string;
  bytes_done: number | string;
  bytes_total: number | string;
  error: string | null;
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
}
