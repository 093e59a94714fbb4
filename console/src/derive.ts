/**
 * What a machine's latest status message says about its deployment. The server's summary
 * route (GET /api/v1/status/advertisements/:ref/summary) is the reference; the console uses this
 * only when that route is missing, from the raw messages of GET /api/v1/status.
 */
import type { CountKey, Counts, StatusMessage, Timeline, TimelineMessage } from './types';
import { countKeys } from './types';

export function stateOf(m: { messageId: number; properties: Record<string, unknown> }): CountKey {
  const id = m.messageId;
  if (id >= 9000) return 'failed';
  if (id >= 6000) return 'rolledBack';
  if (id === 5003) return 'succeeded';
  if (id >= 5000) return 'phase3';
  if (id >= 4000) return 'phase2';
  if (id >= 3000) return 'phase1';
  if (id === 2003) return 'postponed';
  if (id === 2004) return 'declined';
  if (id === 2006) return 'skippedSameImage';
  if (id === 2005) {
    const o = String(m.properties.outcome ?? '');
    return o.startsWith('decline')
      ? 'declined'
      : o.startsWith('postpone')
        ? 'postponed'
        : 'notified';
  }
  if (id >= 2000) return 'notified';
  if (id === 1003) return 'notReachable';
  return 'waiting';
}

export const stateLabel: Record<CountKey, string> = {
  waiting: 'Waiting',
  notified: 'Notified',
  postponed: 'Postponed',
  declined: 'Declined',
  phase1: 'Phase 1 (prepare)',
  phase2: 'Phase 2 (wipe and load)',
  phase3: 'Phase 3 (restore)',
  succeeded: 'Succeeded',
  failed: 'Failed',
  rolledBack: 'Rolled back',
  skippedSameImage: 'Skipped (same image)',
  notReachable: 'Not reachable',
};

export function emptyCounts(): Counts {
  return Object.fromEntries(countKeys.map((k) => [k, 0])) as Counts;
}

/** The latest message of each machine, in seq order per machine. */
export function latestByMachine(messages: StatusMessage[]): Map<string, StatusMessage> {
  const out = new Map<string, StatusMessage>();
  for (const m of messages) {
    const had = out.get(m.machineId);
    if (!had || m.seq > had.seq) out.set(m.machineId, m);
  }
  return out;
}

/** The count of machines in each state after each minute, replaying the messages in time order. */
export function overTimeFrom(messages: StatusMessage[]): ({ time: string } & Counts)[] {
  const state = new Map<string, CountKey>();
  const out: ({ time: string } & Counts)[] = [];
  const sorted = [...messages].sort((a, b) => a.time.localeCompare(b.time) || a.seq - b.seq);
  for (const m of sorted) {
    state.set(m.machineId, stateOf(m));
    const minute = `${m.time.slice(0, 16)}:00Z`;
    const c = emptyCounts();
    for (const s of state.values()) c[s]++;
    if (out.length && out[out.length - 1]!.time === minute) out.pop();
    out.push({ time: minute, ...c });
  }
  return out;
}

/** A timeline in the status route's shape from the machine timeline route's raw messages. */
export function timelineFrom(machine: Timeline['machine'], items: StatusMessage[]): Timeline {
  const messages: TimelineMessage[] = items.map((m) => ({
    seq: m.seq,
    id: m.messageId,
    time: m.time,
    component: m.component,
    phase: m.phase,
    severity: m.severity,
    text: m.text,
    properties: m.properties,
  }));
  const steps: Timeline['steps'] = [];
  for (const m of messages) {
    const last = steps[steps.length - 1];
    if (last && last.component === m.component && last.phase === m.phase) {
      last.lastSeq = m.seq;
      last.end = m.time;
      last.durationMs = Date.parse(last.end) - Date.parse(last.start);
    } else {
      steps.push({
        component: m.component,
        phase: m.phase,
        firstSeq: m.seq,
        lastSeq: m.seq,
        start: m.time,
        end: m.time,
        durationMs: 0,
      });
    }
  }
  const last = items[items.length - 1];
  return { machine, messages, steps, state: last ? stateOf(last) : 'waiting' };
}
