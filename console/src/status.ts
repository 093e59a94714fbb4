/**
 * Status as pages need it, live: the server's summaries and timelines when it has the status
 * routes, else the same shapes derived from the raw status messages (GET /api/v1/status).
 */
import { useMemo } from 'react';
import { useGet, type LiveEvent } from './api';
import { emptyCounts, latestByMachine, overTimeFrom, stateOf, timelineFrom } from './derive';
import type {
  Advertisement,
  Counts,
  Fleet,
  List,
  Machine,
  StatusMessage,
  Summary,
  Timeline,
} from './types';

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
    const overTime = overTimeFrom(messages.data.items);
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

/** The fleet's status now and over time: the server's, else derived from every status message. */
export function useFleet() {
  const live = (e: LiveEvent) => e.type !== 'status';
  const fleet = useGet<Fleet>('/api/v1/status/fleet', live);
  const raw = useGet<List<StatusMessage>>(
    fleet.missing ? '/api/v1/status?limit=10000' : null,
    live,
  );
  const derived = useMemo((): Fleet | undefined => {
    if (!raw.data) return undefined;
    const now: Partial<Counts> = emptyCounts();
    for (const m of latestByMachine(raw.data.items).values()) {
      const k = stateOf(m);
      now[k] = (now[k] ?? 0) + 1;
    }
    return { now, overTime: overTimeFrom(raw.data.items), topTrends: [] };
  }, [raw.data]);
  return {
    ...fleet,
    data: fleet.data ?? derived,
    missing: fleet.missing && !derived && !raw.loading,
    fromServer: fleet.data !== undefined,
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
