/**
 * The catalog of status messages: every event a component reports has a stable numeric id
 * (never reused, never changing meaning), a component, a phase, a severity and a text
 * template whose `{placeholders}` name its properties. Later capabilities add entries;
 * the id ranges keep each area's numbers together.
 *
 *   1000-1999 client: enrollment, inventory, policy
 *   2000-2999 advertisement and notification
 *   3000-3999 phase 1 (prepare)      4000-4999 phase 2 (wipe and load)
 *   5000-5999 phase 3 (restore)      6000-6999 rollback      9000-9999 errors
 */
export type Component = 'server' | 'old-client' | 'pe' | 'new-client' | 'client' | 'dp';
export type Phase = 'none' | 'notification' | 'prepare' | 'wipe-and-load' | 'restore' | 'rollback';
export type Severity = 'info' | 'warning' | 'error';

export interface StatusMessageDef {
  component: Component;
  phase: Phase;
  severity: Severity;
  text: string;
}

const m = (
  component: Component,
  phase: Phase,
  severity: Severity,
  text: string,
): StatusMessageDef => ({
  component,
  phase,
  severity,
  text,
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
  2003: m('client', 'notification', 'info', 'The user postponed the deployment until {until}.'),
  2004: m('client', 'notification', 'warning', 'The user declined the deployment.'),
  2005: m(
    'client',
    'notification',
    'info',
    'Nobody answered; the deployment was {outcome} by policy.',
  ),
  2006: m('client', 'notification', 'info', 'Skipped: image {image} is already applied.'),
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
  ),
  2009: m(
    'client',
    'notification',
    'warning',
    'Deadline {deadline} reached; the deployment starts without asking.',
  ),
  2010: m('client', 'notification', 'info', 'Waiting: the advertisement is {state} here.'),
  3000: m('old-client', 'prepare', 'info', 'Phase 1 (prepare) started.'),
  3001: m('old-client', 'prepare', 'info', 'Pre-deployment checks passed.'),
  3002: m('old-client', 'prepare', 'info', 'State captured: {items} item(s), {bytes} bytes.'),
  3003: m('old-client', 'prepare', 'info', 'PE installed; rebooting into it.'),
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
  5000: m('new-client', 'restore', 'info', 'Phase 3 (restore) started by client {clientVersion}.'),
  5001: m('new-client', 'restore', 'info', 'Client settings restored.'),
  5002: m('new-client', 'restore', 'info', 'User state and data restored: {items} item(s).'),
  5003: m('new-client', 'restore', 'info', 'Deployment succeeded: image {image}.'),
  6000: m('client', 'rollback', 'warning', 'Rolling back to the previous operating system.'),
  6001: m(
    'client',
    'rollback',
    'info',
    'Rollback finished; the previous operating system is back.',
  ),
  9000: m('client', 'none', 'error', 'Step {step} failed: {code}: {message}'),
  9001: m('client', 'none', 'error', 'Content verification failed: {what}.'),
};

/** The message's definition, or undefined for an id the catalog does not have. */
export function statusMessage(id: number): StatusMessageDef | undefined {
  return Object.prototype.hasOwnProperty.call(statusMessages, id) ? statusMessages[id] : undefined;
}

/** Fills a template with a message's properties (missing ones show as `{name}`). */
export function renderStatusText(def: StatusMessageDef, props: Record<string, unknown>): string {
  return def.text.replace(/\{(\w+)\}/g, (all, k: string) => (k in props ? String(props[k]) : all));
}
