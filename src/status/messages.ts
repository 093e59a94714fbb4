/**
 * The catalog of status messages: every event a component reports has a stable numeric id
 * (never reused, never changing meaning), a component, a phase, a severity, a text template
 * whose `{placeholders}` name its properties, and documented properties. Later capabilities
 * add entries; the id ranges keep each area's numbers together and name the message's group
 * (docs/status-messages.md is generated from this file; a test checks it is current).
 *
 *   1000-1999 client: enrollment, inventory, policy
 *   2000-2999 advertisement and notification
 *   3000-3999 phase 1 (prepare)      4000-4999 phase 2 (wipe and load)
 *   5000-5999 phase 3 (restore)      6000-6999 rollback
 *   7000-7999 server: rollout waves, reachability (the server's own events)
 *   9000-9999 errors
 */
export type Component = 'server' | 'old-client' | 'pe' | 'new-client' | 'client' | 'dp';
export type Phase = 'none' | 'notification' | 'prepare' | 'wipe-and-load' | 'restore' | 'rollback';
export type Severity = 'info' | 'warning' | 'error';

/**
 * Where one machine stands in one advertisement, as the status summaries count it. The server
 * derives it from the message with the highest sequence number that moves it (see `stateOf`);
 * `waiting` (a member with no message yet) and `notReachable` (such a member out of contact)
 * are never set by a message.
 */
export type DeploymentState =
  | 'waiting'
  | 'notified'
  | 'postponed'
  | 'declined'
  | 'phase1'
  | 'phase2'
  | 'phase3'
  | 'succeeded'
  | 'failed'
  | 'rolledBack'
  | 'skippedSameImage'
  | 'notReachable';

/** Every state, in the order summaries list them. */
export const deploymentStates: readonly DeploymentState[] = [
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
];

export interface StatusMessageDef {
  component: Component;
  phase: Phase;
  severity: Severity;
  text: string;
  /**
   * Properties beyond the common ones (`propertyDocs`), name → description, or a better
   * description of a common one for this message. Every `{placeholder}` of `text` is a
   * property; one that is neither here nor in `propertyDocs` fails the docs generation.
   */
  properties?: Readonly<Record<string, string>>;
  /** The state this message moves the deployment to; `null`: none; absent: by phase and severity (`stateOf`). */
  state?: DeploymentState | null;
}

/** Descriptions of properties that several messages carry. */
export const propertyDocs: Readonly<Record<string, string>> = {
  name: 'the machine name',
  clientVersion: 'version of the reimage client that reports',
  os: 'operating system family (debian, windows, …)',
  osVersion: 'operating system version',
  diskFreeGb: 'free space on the system disk, GB',
  advertisements: 'number of advertisements in the policy',
  retrySeconds: 'seconds until the next attempt',
  advertisement: 'advertisement name',
  package: 'package as name@version',
  countdown: 'time left before the deployment starts, as the user saw it (e.g. "15 min")',
  until: 'ISO 8601 time the deployment is postponed to',
  outcome: 'what the policy did: started, postponed or declined',
  image: 'image id (64 hex digits) or name',
  items: 'number of state items',
  bytes: 'number of bytes',
  dp: 'distribution point name the content comes from',
  paths: 'number of paths',
  done: 'bytes done so far',
  total: 'bytes in all (a download: the frames planned so far, which grows as packs are planned)',
  rate: 'bytes per second since the step started',
  percent: 'how far the step is, in tenths (10, 20 … 90); a download counts chunks, an apply bytes',
  step: 'the deployment step (journal step name, e.g. wipe, apply, restore-users)',
  code: 'the error code (docs/errors.md)',
  message: 'the error message (never holds secrets)',
  logTail: 'the last lines of the agent log before the error (at most 4 KiB)',
  what: 'what failed verification: a chunk, pack or file name',
  wave: '1-based rollout wave',
  reason: 'why the server did it',
  since: 'ISO 8601 time of the last contact',
  startsAt: 'ISO 8601 time the deployment is planned to start',
  opensAt: 'ISO 8601 time the next maintenance window opens',
  deadline: 'ISO 8601 mandatory deadline of the advertisement',
  state: 'the advertisement state in the policy (waiting-for-wave, not-yet-available)',
};

/** The properties every error carries, beside those of its template. */
export const errorProperties: readonly string[] = ['code', 'step', 'logTail'];

const m = (
  component: Component,
  phase: Phase,
  severity: Severity,
  text: string,
  more: Pick<StatusMessageDef, 'properties' | 'state'> = {},
): StatusMessageDef => ({
  component,
  phase,
  severity,
  text,
  ...more,
});

export const statusMessages: Readonly<Record<number, StatusMessageDef>> = {
  1000: m('client', 'none', 'info', 'Machine {name} enrolled (client {clientVersion}).'),
  1001: m('client', 'none', 'info', 'Inventory reported: {os} {osVersion}, {diskFreeGb} GB free.'),
  1002: m('client', 'none', 'info', 'Policy received: {advertisements} advertisement(s).'),
  1003: m('client', 'none', 'warning', 'Server not reachable; retrying in {retrySeconds} s.'),
  2000: m(
    'client',
    'notification',
    'info',
    'Advertisement {advertisement} received for package {package}.',
  ),
  2001: m('client', 'notification', 'info', 'User notified; the deployment starts in {countdown}.'),
  2002: m('client', 'notification', 'info', 'The user chose to install now.'),
  2003: m('client', 'notification', 'info', 'The user postponed the deployment until {until}.', {
    state: 'postponed',
  }),
  2004: m('client', 'notification', 'warning', 'The user declined the deployment.', {
    state: 'declined',
  }),
  2005: m(
    'client',
    'notification',
    'info',
    'Nobody answered; the deployment was {outcome} by policy.',
  ),
  2006: m('client', 'notification', 'info', 'Skipped: image {image} is already applied.', {
    state: 'skippedSameImage',
  }),
  2007: m(
    'client',
    'notification',
    'info',
    'User told in advance: the deployment starts at {startsAt}.',
  ),
  2008: m(
    'client',
    'notification',
    'info',
    'Outside the maintenance windows; waiting for the next one at {opensAt}.',
    { state: 'waiting' },
  ),
  2009: m(
    'client',
    'notification',
    'warning',
    'Deadline {deadline} reached; the deployment starts without asking.',
  ),
  2010: m('client', 'notification', 'info', 'Waiting: the advertisement is {state} here.', {
    state: 'waiting',
  }),
  2011: m(
    'client',
    'notification',
    'info',
    'The last run failed; run {run} of {maxRuns} starts no earlier than {retryAt}.',
    {
      state: null,
      properties: {
        run: 'the run that comes next (2 or 3)',
        maxRuns: 'the most runs a failed advertisement gets',
        retryAt: 'ISO 8601 time the run may start (schedule.retryAfter, doubled per failure)',
      },
    },
  ),
  3000: m('old-client', 'prepare', 'info', 'Phase 1 (prepare) started.'),
  3001: m('old-client', 'prepare', 'info', 'Pre-deployment checks passed.'),
  3002: m('old-client', 'prepare', 'info', 'State captured: {items} item(s), {bytes} bytes.'),
  3003: m('old-client', 'prepare', 'info', 'PE installed; rebooting into it.'),
  3010: m('old-client', 'prepare', 'info', 'Pre-staging: {done} of {total} bytes at {rate} B/s.'),
  4000: m('pe', 'wipe-and-load', 'info', 'Phase 2 (wipe and load) started in the PE.'),
  4001: m('pe', 'wipe-and-load', 'info', 'Connected to distribution point {dp}.'),
  4002: m(
    'pe',
    'wipe-and-load',
    'info',
    'Old operating system removed ({paths} paths); non-OS data kept.',
  ),
  4003: m('pe', 'wipe-and-load', 'info', 'Image {image} applied: {bytes} bytes.'),
  4004: m('pe', 'wipe-and-load', 'info', 'Answer file written; rebooting into the new OS.'),
  4010: m('pe', 'wipe-and-load', 'info', 'Downloading: {done} of {total} bytes at {rate} B/s.'),
  4011: m(
    'pe',
    'wipe-and-load',
    'info',
    'Applying the image: {done} of {total} bytes at {rate} B/s.',
  ),
  5000: m('new-client', 'restore', 'info', 'Phase 3 (restore) started by client {clientVersion}.'),
  5001: m('new-client', 'restore', 'info', 'Client settings restored.'),
  5002: m('new-client', 'restore', 'info', 'User state and data restored: {items} item(s).'),
  5003: m('new-client', 'restore', 'info', 'Deployment succeeded: image {image}.', {
    state: 'succeeded',
  }),
  6000: m('client', 'rollback', 'warning', 'Rolling back to the previous operating system.', {
    state: null,
  }),
  6001: m(
    'client',
    'rollback',
    'info',
    'Rollback finished; the previous operating system is back.',
    { state: 'rolledBack' },
  ),
  7000: m('server', 'none', 'info', 'Rollout wave {wave} released: {reason}.', { state: null }),
  7001: m('server', 'none', 'warning', 'Rollout halted at wave {wave}: {reason}.', {
    state: null,
  }),
  7002: m('server', 'none', 'info', 'Rollout resumed by {user} at wave {wave}.', {
    state: null,
    properties: { user: 'the operator who resumed it' },
  }),
  9000: m('client', 'none', 'error', 'Step {step} failed: {code}: {message}'),
  9001: m('client', 'none', 'error', 'Content verification failed: {what}.'),
  9002: m('client', 'none', 'error', 'Published advertisement {name} refused: {code}.', {
    state: null,
    properties: { name: 'the name of the published advertisement (its file name)' },
  }),
};

/** Progress reports of long steps (pre-staging, download, apply): a step may send none. */
export const PROGRESS_MESSAGE_IDS: readonly number[] = [3010, 4010, 4011];
export const isProgressMessage = (id: number): boolean => PROGRESS_MESSAGE_IDS.includes(id);

/** The message's definition, or undefined for an id the catalog does not have. */
export function statusMessage(id: number): StatusMessageDef | undefined {
  return Object.prototype.hasOwnProperty.call(statusMessages, id) ? statusMessages[id] : undefined;
}

/** Fills a template with a message's properties (missing ones show as `{name}`). */
export function renderStatusText(def: StatusMessageDef, props: Record<string, unknown>): string {
  return def.text.replace(/\{(\w+)\}/g, (all, k: string) => (k in props ? String(props[k]) : all));
}

/**
 * The deployment state a message moves to, or undefined when it moves none: an explicit
 * `state`; else any error → failed; else by phase (notification → notified, prepare →
 * phase 1, wipe-and-load → phase 2, restore → phase 3). Client and rollback messages without
 * an explicit state move nothing.
 */
export function stateOf(def: StatusMessageDef): DeploymentState | undefined {
  if (def.state !== undefined) return def.state ?? undefined;
  if (def.severity === 'error') return 'failed';
  switch (def.phase) {
    case 'notification':
      return 'notified';
    case 'prepare':
      return 'phase1';
    case 'wipe-and-load':
      return 'phase2';
    case 'restore':
      return 'phase3';
    default:
      return undefined;
  }
}

/** A group of the catalog: one id range, one area. */
export interface StatusGroup {
  id: string;
  title: string;
  from: number;
  to: number;
}

export const statusGroups: readonly StatusGroup[] = [
  { id: 'client', title: 'Client: enrollment, inventory, policy', from: 1000, to: 1999 },
  { id: 'notification', title: 'Advertisement and notification', from: 2000, to: 2999 },
  { id: 'phase1', title: 'Phase 1: prepare (old client)', from: 3000, to: 3999 },
  { id: 'phase2', title: 'Phase 2: wipe and load (PE)', from: 4000, to: 4999 },
  { id: 'phase3', title: 'Phase 3: restore (new client)', from: 5000, to: 5999 },
  { id: 'rollback', title: 'Rollback', from: 6000, to: 6999 },
  { id: 'server', title: 'Server: rollout waves', from: 7000, to: 7999 },
  { id: 'errors', title: 'Errors', from: 9000, to: 9999 },
];

/** The group a message id belongs to (`other` outside every range). */
export function groupOf(id: number): string {
  return statusGroups.find((g) => id >= g.from && id <= g.to)?.id ?? 'other';
}

/**
 * A message's documented properties, name → description: its template's placeholders, the
 * error properties for errors, and its own `properties`. Throws on a property without a
 * description (the docs generation and its test catch it).
 */
export function documentedProperties(id: number): Record<string, string> {
  const def = statusMessage(id);
  if (!def) throw new Error(`status message ${id} is not in the catalog`);
  const names = new Set<string>();
  for (const [, k] of def.text.matchAll(/\{(\w+)\}/g)) names.add(k!);
  if (def.severity === 'error') for (const k of errorProperties) names.add(k);
  for (const k of Object.keys(def.properties ?? {})) names.add(k);
  const out: Record<string, string> = {};
  for (const k of names) {
    const d = def.properties?.[k] ?? propertyDocs[k];
    if (!d) throw new Error(`status message ${id}: property '${k}' has no description`);
    out[k] = d;
  }
  return out;
}
