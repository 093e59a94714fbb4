/**
 * `reimage status advertisement|machine|trends`: the status summaries of the server
 * (docs/status.md), as text or, with `--json`, as the API's JSON document.
 */
import type { Command } from 'commander';
import type { ApiClient } from '../client/http.js';
import { connect, withConnection, type AdminContext, type ConnectionOptions } from './admin.js';

type Cell = string | number | null | undefined;

function table(headers: string[], rows: Cell[][]): string[] {
  const cells = rows.map((r) =>
    r.map((c) => (c === null || c === undefined || c === '' ? '-' : String(c))),
  );
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...cells.map(line)];
}

const when = (iso: string | null | undefined) =>
  iso ? iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z') : '-';

const duration = (ms: number) =>
  ms < 1000
    ? `${ms} ms`
    : ms < 120_000
      ? `${(ms / 1000).toFixed(1)} s`
      : ms < 7_200_000
        ? `${(ms / 60_000).toFixed(1)} min`
        : `${(ms / 3_600_000).toFixed(1)} h`;

const pct = (x: number) => `${(x * 100).toFixed(1)}%`;

function out(o: { json?: boolean }, doc: unknown, text: () => string[]): void {
  process.stdout.write((o.json ? JSON.stringify(doc, null, 2) : text().join('\n')) + '\n');
}

interface AdSummary {
  advertisement: { id: string; name: string };
  counts: Record<string, number>;
  postponedUntil: { machine: string; until: string | null }[];
  waves: {
    wave: number;
    state: string;
    succeeded: number;
    failed: number;
    total: number;
    reason?: string;
  }[];
  halted: boolean;
  haltReason?: string;
}

interface Timeline {
  machine: {
    id: string;
    name: string;
    site: string | null;
    model: string | null;
    clientVersion?: string;
  };
  messages: {
    seq: number;
    id: number;
    time: string;
    severity: string;
    component: string;
    text: string;
  }[];
  steps: {
    component: string;
    phase: string;
    start: string;
    durationMs: number;
    firstSeq: number;
    lastSeq: number;
  }[];
  state: {
    deployments: {
      advertisement: { name: string | null; id: string };
      state: string;
      since: string;
    }[];
  };
}

interface Trends {
  attempted: number;
  failed: number;
  groups: {
    messageId: number;
    code?: string;
    attribute: string;
    value: string;
    failures: number;
    population: number;
    share: number;
    rate: number;
    baseline: number;
    lift: number;
    score: number;
    example?: { machine: string; seq: number };
  }[];
}

function command(
  parent: Command,
  spec: string,
  description: string,
  ctx: AdminContext,
  configure: (c: Command) => Command,
  action: (
    api: ApiClient,
    args: string[],
    o: ConnectionOptions & Record<string, unknown>,
  ) => Promise<void>,
): void {
  const cmd = withConnection(
    configure(parent.command(spec).description(description)).option(
      '--json',
      'print one JSON document',
    ),
  );
  cmd.action(async (...all: unknown[]) => {
    const args = all.slice(0, -2) as string[];
    const o = all[all.length - 2] as ConnectionOptions & Record<string, unknown>;
    const api = await connect(o, ctx);
    try {
      await action(api, args, o);
    } finally {
      api.close();
    }
  });
}

/** Adds `advertisement`, `machine` and `trends` to the `status` command. */
export function registerStatusSummaries(status: Command, ctx: AdminContext): void {
  command(
    status,
    'advertisement <ref>',
    'an advertisement’s deployments by state, postponements and rollout waves',
    ctx,
    (c) => c.option('--bucket <width>', 'bucket of the counts over time (5m, 1h, 1d…; default 1h)'),
    async (api, [ref], o) => {
      const s = await api.request<AdSummary & Record<string, unknown>>(
        'GET',
        `/api/v1/status/advertisements/${encodeURIComponent(ref!)}/summary`,
        { query: { bucket: o.bucket as string | undefined } },
      );
      out(o, s, () => [
        `advertisement ${s.advertisement.name} (${s.advertisement.id})${s.halted ? '  HALTED' : ''}`,
        ...(s.haltReason ? [`halted: ${s.haltReason}`] : []),
        '',
        ...table(
          ['STATE', 'MACHINES'],
          Object.entries(s.counts).map(([k, v]) => [k, v]),
        ),
        ...(s.waves.length > 0
          ? [
              '',
              ...table(
                ['WAVE', 'STATE', 'SUCCEEDED', 'FAILED', 'TOTAL', 'REASON'],
                s.waves.map((w) => [w.wave, w.state, w.succeeded, w.failed, w.total, w.reason]),
              ),
            ]
          : []),
        ...(s.postponedUntil.length > 0
          ? [
              '',
              ...table(
                ['POSTPONED', 'UNTIL'],
                s.postponedUntil.map((p) => [p.machine, when(p.until)]),
              ),
            ]
          : []),
      ]);
    },
  );

  command(
    status,
    'machine <ref>',
    'a machine’s whole timeline, its steps with durations, and its deployments',
    ctx,
    (c) => c,
    async (api, [ref], o) => {
      const t = await api.request<Timeline>(
        'GET',
        `/api/v1/status/machines/${encodeURIComponent(ref!)}/timeline`,
      );
      out(o, t, () => [
        `machine ${t.machine.name} (${t.machine.id}) site ${t.machine.site ?? '-'} model ${t.machine.model ?? '-'}${t.machine.clientVersion ? ` client ${t.machine.clientVersion}` : ''}`,
        ...t.state.deployments.map(
          (d) =>
            `  ${d.advertisement.name ?? d.advertisement.id}: ${d.state} since ${when(d.since)}`,
        ),
        '',
        ...table(
          ['STEP', 'COMPONENT', 'START', 'DURATION', 'SEQ'],
          t.steps.map((s) => [
            s.phase,
            s.component,
            when(s.start),
            duration(s.durationMs),
            `${s.firstSeq}-${s.lastSeq}`,
          ]),
        ),
        '',
        ...(t.messages.length === 0
          ? ['no status messages']
          : table(
              ['SEQ', 'TIME', 'ID', 'SEVERITY', 'COMPONENT', 'TEXT'],
              t.messages.map((m) => [m.seq, when(m.time), m.id, m.severity, m.component, m.text]),
            )),
      ]);
    },
  );

  command(
    status,
    'trends',
    'failures grouped by message × attribute, the groups that stand out first',
    ctx,
    (c) =>
      c
        .option('--advertisement <ref>', 'of this advertisement only')
        .option('--since <time>', 'deployments first seen from this ISO 8601 time')
        .option('--limit <n>', 'at most n groups (default 20)'),
    async (api, _args, o) => {
      const t = await api.request<Trends>('GET', '/api/v1/status/trends', {
        query: {
          advertisement: o.advertisement as string | undefined,
          since: o.since as string | undefined,
          limit: o.limit as string | undefined,
        },
      });
      out(o, t, () => [
        `${t.failed} failed of ${t.attempted} attempted deployments`,
        '',
        ...(t.groups.length === 0
          ? ['no failure group stands out']
          : table(
              [
                'SCORE',
                'MESSAGE',
                'CODE',
                'ATTRIBUTE',
                'VALUE',
                'FAILED',
                'RATE',
                'BASELINE',
                'LIFT',
                'SHARE',
                'EXAMPLE',
              ],
              t.groups.map((g) => [
                g.score.toFixed(1),
                g.messageId,
                g.code,
                g.attribute,
                g.value,
                `${g.failures}/${g.population}`,
                pct(g.rate),
                pct(g.baseline),
                `${g.lift.toFixed(1)}x`,
                pct(g.share),
                g.example ? `${g.example.machine}#${g.example.seq}` : '-',
              ]),
            )),
      ]);
    },
  );
}
