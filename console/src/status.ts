/**
 * Status as pages need it, live: the server's summaries and timelines when it has the status
 * routes, else the same shapes derived from the raw status messages (GET /api/v1/status).
 */
import { useMemo } from 'react';
import { useGet, type LiveEvent } from './api';
import { emptyCounts, latestByMachine, stateOf, timelineFrom } from './derive';
import type { Advertisement, List, Machine, StatusMessage, Summary, Timeline } from './types';

const forAd = (adId: string | undefined) => (e: LiveEvent) =>
  e.type === 'tick' ||
  (e.type === 'status' && (!adId || e.advertisement === adId || e.advertisement === null)) ||
  (e.type === 'summary' && (!adId || e.advertisement === adId));

export interface MachineRow {
  machine: string;
  name: string;
  state: ReturnType<typeof stateOf>;
  last: StatusMessage | undefined;
}

/** An advertisement's summary (server or derived) and one row per machine that reported. */
export function useAdvertisementStatus(ad: Advertisement | undefined) {
  const live = useMemo(() => forAd(ad?.id), [ad?.id]);
  const summary = useGet<Summary>(
    ad ? `/api/v1/status/advertisements/${encodeURIComponent(ad.id)}/summary` : null,
    live,
  );
  const messages = useGet<List<StatusMessage>>(
    ad ? `/api/v1/status?advertisement=${encodeURIComponent(ad.id)}&limit=10000` : null,
    live,
  );
  const members = useGet<List<Machine>>(
    ad ? `/api/v1/collections/${encodeURIComponent(ad.collectionId)}/members` : null,
    live,
  );
  const rows: MachineRow[] = useMemo(() => {
    const latest = latestByMachine(messages.data?.items ?? []);
    const names = new Map((members.data?.items ?? []).map((m) => [m.id, m.name]));
    const ids = new Set([...names.keys(), ...latest.keys()]);
    return [...ids]
      .map((id) => {
        const last = latest.get(id);
        return {
          machine: id,
          name: names.get(id) ?? id,
          state: last ? stateOf(last) : ('waiting' as const),
          last,
        };
      })
      .sort((a, b) => a.name.localeCompare(b.name));
  }, [messages.data, members.data]);
  const derived: Summary | undefined = useMemo(() => {
    if (!ad || !messages.data) return undefined;
    const counts = emptyCounts();
    for (const r of rows) counts[r.state]++;
    // Replays the messages in time order: the count of each state after each minute.
    const state = new Map<string, ReturnType<typeof stateOf>>();
    const overTime: Summary['overTime'] = [];
    const sorted = [...messages.data.items].sort(
      (a, b) => a.time.localeCompare(b.time) || a.seq - b.seq,
    );
    for (const m of sorted) {
      state.set(m.machineId, stateOf(m));
      const minute = `${m.time.slice(0, 16)}:00Z`;
      const c = emptyCounts();
      for (const s of state.values()) c[s]++;
      if (overTime.length && overTime[overTime.length - 1]!.time === minute) overTime.pop();
      overTime.push({ time: minute, ...c });
    }
    return {
      advertisement: { id: ad.id, name: ad.name },
      counts,
      postponedUntil: rows
        .filter((r) => r.state === 'postponed' && r.last?.properties.until)
        .map((r) => ({ machine: r.name, until: String(r.last!.properties.until) })),
      overTime,
      waves: [],
    };
  }, [ad, messages.data, rows]);
  return {
    summary: summary.data ?? (summary.missing ? derived : undefined),
    fromServer: summary.data !== undefined,
    rows,
    error: messages.error ?? members.error,
    loading: summary.loading || messages.loading,
  };
}

/** A machine's timeline: the status route's, else built from GET /api/v1/machines/:ref/timeline. */
export function useTimeline(ref: string) {
  const live = useMemo(
    () => (e: LiveEvent) => e.type === 'tick' || (e.type === 'status' && e.machine === ref),
    [ref],
  );
  const t = useGet<Timeline>(`/api/v1/status/machines/${encodeURIComponent(ref)}/timeline`, live);
  const machine = useGet<Machine>(`/api/v1/machines/${encodeURIComponent(ref)}`, live);
  const raw = useGet<List<StatusMessage>>(
    t.missing ? `/api/v1/machines/${encodeURIComponent(ref)}/timeline` : null,
    live,
  );
  const derived = useMemo(
    () =>
      machine.data && raw.data
        ? timelineFrom(
            {
              id: machine.data.id,
              name: machine.data.name,
              site: machine.data.site,
              model: (machine.data.inventory.model as string | undefined) ?? null,
              clientVersion: machine.data.clientVersion,
            },
            raw.data.items,
          )
        : undefined,
    [machine.data, raw.data],
  );
  return {
    timeline: t.data ?? derived,
    machine: machine.data,
    error: machine.error ?? raw.error ?? (t.missing ? undefined : t.error),
  };
}
