import { useState } from 'react';
import { useGet } from '../api';
import { Link } from '../router';
import { Field } from '../form';
import { useTimeline } from '../status';
import type { List, Machine, TimelineMessage } from '../types';
import { timelineState } from '../types';
import { Bar, ErrorBox, fmtDuration, fmtTime, LoadState, Page, Section, short, Table } from '../ui';

export function Machines() {
  const machines = useGet<List<Machine>>('/api/v1/machines', (e) => e.type === 'tick');
  const [filter, setFilter] = useState('');
  const rows = (machines.data?.items ?? []).filter((m) =>
    `${m.name} ${m.site ?? ''} ${String(m.inventory.model ?? '')}`
      .toLowerCase()
      .includes(filter.toLowerCase()),
  );
  return (
    <Page title="Machines">
      <form
        className="filters"
        role="search"
        aria-label="Filter machines"
        onSubmit={(e) => e.preventDefault()}
      >
        <Field label="Filter by name, site or model" value={filter} onChange={setFilter} />
      </form>
      <Section title="Inventory">
        <LoadState loaded={machines} what="machines">
          {() => (
            <Table
              caption="Machines"
              rows={rows}
              rowKey={(m) => m.id}
              empty="No machines enrolled yet."
              columns={[
                { header: 'Name', cell: (m) => <Link to={`/machines/${m.id}`}>{m.name}</Link> },
                { header: 'Site', cell: (m) => m.site ?? '—' },
                {
                  header: 'OS',
                  cell: (m) =>
                    `${String(m.inventory.os ?? '')} ${String(m.inventory.osVersion ?? '')}`,
                },
                { header: 'Model', cell: (m) => String(m.inventory.model ?? '—') },
                {
                  header: 'Disk free',
                  cell: (m) =>
                    m.inventory.diskFreeGb !== undefined
                      ? `${String(m.inventory.diskFreeGb)} GB`
                      : '—',
                  numeric: true,
                },
                {
                  header: 'Image',
                  cell: (m) => (m.appliedImageId ? <code>{short(m.appliedImageId)}</code> : '—'),
                },
                { header: 'Client', cell: (m) => m.clientVersion ?? '—' },
                { header: 'Last contact', cell: (m) => fmtTime(m.lastContactAt) },
              ]}
            />
          )}
        </LoadState>
      </Section>
    </Page>
  );
}

/** The lines worth showing for an error: its code, step and message (the log tail the agent sent). */
function ErrorDetail({ m, before }: { m: TimelineMessage; before: TimelineMessage[] }) {
  const p = m.properties;
  const tail = [p.logTail, p.log, p.message].find((x) => typeof x === 'string') as
    string | undefined;
  return (
    <article className="error-detail" aria-labelledby={`err-${m.seq}`}>
      <h3 id={`err-${m.seq}`}>
        {p.code ? <code className="code-tag">{String(p.code)}</code> : null} #{m.seq}{' '}
        {p.step ? `in step ${String(p.step)}` : ''} at {fmtTime(m.time)}
      </h3>
      {tail && tail === p.message ? null : <p>{m.text}</p>}
      {tail ? (
        <>
          <h4>Log tail</h4>
          <pre className="log" tabIndex={0}>
            {tail}
          </pre>
        </>
      ) : null}
      {before.length ? (
        <details>
          <summary>The {before.length} messages before it</summary>
          <pre className="log">
            {before.map((b) => `#${b.seq} ${fmtTime(b.time)} [${b.severity}] ${b.text}`).join('\n')}
          </pre>
        </details>
      ) : null}
    </article>
  );
}

export function MachineDetail({ machineRef }: { machineRef: string }) {
  const { timeline, machine, error } = useTimeline(machineRef);
  const errors = timeline?.messages.filter((m) => m.severity === 'error') ?? [];
  const longest = Math.max(1, ...(timeline?.steps.map((s) => s.durationMs) ?? []));
  return (
    <Page title={`Machine ${machine?.name ?? timeline?.machine.name ?? ''}`}>
      {error ? <ErrorBox error={error} /> : null}
      {machine ? (
        <Section title="Inventory">
          <dl className="props">
            <dt>Id</dt>
            <dd>
              <code>{machine.id}</code>
            </dd>
            <dt>Site</dt>
            <dd>{machine.site ?? '—'}</dd>
            <dt>Client</dt>
            <dd>{machine.clientVersion ?? '—'}</dd>
            <dt>Last contact</dt>
            <dd>{fmtTime(machine.lastContactAt)}</dd>
            {Object.entries(machine.inventory).map(([k, v]) => (
              <div key={k} className="prop">
                <dt>{k}</dt>
                <dd>{Array.isArray(v) ? v.join(', ') : String(v)}</dd>
              </div>
            ))}
          </dl>
        </Section>
      ) : null}
      {timeline ? (
        <>
          <Section title="State">
            <p aria-live="polite" id="machine-state">
              <span className={`badge state-${timelineState(timeline)}`}>
                {timelineState(timeline)}
              </span>
            </p>
          </Section>
          <Section title="Errors">
            <div aria-live="polite">
              {errors.length === 0 ? (
                <p className="empty">No errors.</p>
              ) : (
                errors.map((m) => (
                  <ErrorDetail
                    key={m.seq}
                    m={m}
                    before={timeline.messages.filter((x) => x.seq < m.seq).slice(-5)}
                  />
                ))
              )}
            </div>
          </Section>
          <Section title="Steps">
            <Table
              caption="Steps with their durations"
              rows={timeline.steps}
              rowKey={(s) => `${s.firstSeq}`}
              empty="No steps yet."
              columns={[
                { header: 'Step', cell: (s) => `${s.component} · ${s.phase}` },
                { header: 'Messages', cell: (s) => `#${s.firstSeq}–#${s.lastSeq}` },
                { header: 'Start', cell: (s) => fmtTime(s.start) },
                {
                  header: 'Duration',
                  cell: (s) => (
                    <>
                      <Bar value={s.durationMs} max={longest} label={fmtDuration(s.durationMs)} />{' '}
                      {fmtDuration(s.durationMs)}
                    </>
                  ),
                },
              ]}
            />
          </Section>
          <Section title="Timeline">
            <div aria-live="polite">
              <Table
                caption="Status messages in sequence order"
                rows={timeline.messages}
                rowKey={(m) => String(m.seq)}
                empty="No status messages yet."
                columns={[
                  { header: 'Seq', cell: (m) => <span id={`seq-${m.seq}`}>{m.seq}</span> },
                  { header: 'Time', cell: (m) => fmtTime(m.time) },
                  { header: 'Id', cell: (m) => m.id },
                  { header: 'Component', cell: (m) => m.component },
                  { header: 'Phase', cell: (m) => m.phase },
                  {
                    header: 'Severity',
                    cell: (m) => <span className={`sev sev-${m.severity}`}>{m.severity}</span>,
                  },
                  { header: 'Text', cell: (m) => m.text },
                ]}
              />
            </div>
          </Section>
        </>
      ) : !error ? (
        <LoadState
          loaded={{
            data: undefined,
            error: undefined,
            missing: false,
            loading: true,
            reload: () => {},
          }}
          what="timeline"
        >
          {() => null}
        </LoadState>
      ) : null}
    </Page>
  );
}
