import { useEffect, useMemo, useState } from 'react';
import policySchema from '../../../docs/schemas/advertisement-policy.schema.json';
import { api, ApiError, useGet } from '../api';
import { stateLabel } from '../derive';
import { Link, navigate } from '../router';
import { validate, type Schema } from '../schema';
import { useAdvertisementStatus } from '../status';
import {
  countKeys,
  type Advertisement,
  type Collection,
  type List,
  type Package,
  type Wave,
} from '../types';
import { ErrorBox, fmtTime, LoadState, Page, Section, StateBadge, Table } from '../ui';
import { byPath, Check, Field, Form, Select } from '../form';
import { useCanWrite } from '../session';
import { StatusChart } from './charts';

export function Advertisements() {
  const canWrite = useCanWrite();
  const ads = useGet<List<Advertisement>>('/api/v1/advertisements', (e) => e.type === 'tick');
  const pkgs = useGet<List<Package>>('/api/v1/packages');
  const cols = useGet<List<Collection>>('/api/v1/collections');
  const pName = new Map((pkgs.data?.items ?? []).map((p) => [p.id, `${p.name}@${p.version}`]));
  const cName = new Map((cols.data?.items ?? []).map((c) => [c.id, c.name]));
  return (
    <Page
      title="Advertisements"
      actions={
        canWrite ? (
          <Link to="/advertisements/new" className="button">
            New advertisement
          </Link>
        ) : null
      }
    >
      <Section title="Advertisements">
        <LoadState loaded={ads} what="advertisements">
          {(d) => (
            <Table
              caption="Advertisements"
              rows={d.items}
              rowKey={(a) => a.id}
              empty="No advertisements yet."
              columns={[
                {
                  header: 'Name',
                  cell: (a) => <Link to={`/advertisements/${a.id}`}>{a.name}</Link>,
                },
                { header: 'Package', cell: (a) => pName.get(a.packageId) ?? a.packageId },
                { header: 'Collection', cell: (a) => cName.get(a.collectionId) ?? a.collectionId },
                { header: 'Waves', cell: (a) => waveText(a.schedule.waves) },
                { header: 'Available from', cell: (a) => fmtTime(a.availableFrom) },
                { header: 'Enabled', cell: (a) => (a.enabled ? 'yes' : 'no') },
              ]}
            />
          )}
        </LoadState>
      </Section>
    </Page>
  );
}

const waveText = (w: Wave[] | undefined) =>
  w?.length
    ? w.map((x) => (x.percent !== undefined ? `${x.percent}%` : `${x.machines}`)).join(' → ')
    : 'one wave';

export function AdvertisementDetail({ adRef }: { adRef: string }) {
  const canWrite = useCanWrite();
  const ad = useGet<Advertisement>(
    `/api/v1/advertisements/${encodeURIComponent(adRef)}`,
    (e) => e.type === 'summary',
  );
  const s = useAdvertisementStatus(ad.data);
  const [actionError, setActionError] = useState<Error | null>(null);
  const release = async () => {
    if (!ad.data) return;
    setActionError(null);
    try {
      const next = (ad.data.schedule.activeWave ?? 1) + 1;
      await api('PATCH', `/api/v1/advertisements/${ad.data.id}`, {
        schedule: { ...ad.data.schedule, activeWave: next },
      });
      ad.reload();
    } catch (e) {
      setActionError(e as Error);
    }
  };
  const a = ad.data;
  return (
    <Page
      title={a ? `Advertisement ${a.name}` : 'Advertisement'}
      actions={
        a && canWrite ? (
          <Link to={`/advertisements/${a.id}/edit`} className="button">
            Edit
          </Link>
        ) : null
      }
    >
      {ad.error ? <ErrorBox error={ad.error} /> : null}
      {s.error ? <ErrorBox error={s.error} /> : null}
      {a && s.summary ? (
        <>
          <Section title="Status now">
            <ul className="counts" aria-live="polite" aria-label="Machines by state">
              {countKeys
                .filter((k) => s.summary!.counts[k] > 0 || ['succeeded', 'failed'].includes(k))
                .map((k) => (
                  <li key={k} className={`count state-${k}`}>
                    <span className="n">{s.summary!.counts[k]}</span> {stateLabel[k]}
                  </li>
                ))}
            </ul>
            {s.fromServer ? null : (
              <p className="muted small">
                Counted in the browser from the status messages (this server has no summary route).
              </p>
            )}
          </Section>
          <Section title="Over time">
            <StatusChart data={s.summary.overTime} title={`${a.name} over time`} />
          </Section>
          <Section title="Waves">
            {s.summary.waves.length ? (
              <Table
                caption="Waves"
                rows={s.summary.waves}
                rowKey={(w) => String(w.wave)}
                columns={[
                  { header: 'Wave', cell: (w) => w.wave },
                  { header: 'State', cell: (w) => <StateBadge state={w.state} label={w.state} /> },
                  { header: 'Succeeded', cell: (w) => w.succeeded, numeric: true },
                  { header: 'Failed', cell: (w) => w.failed, numeric: true },
                  { header: 'Machines', cell: (w) => w.total, numeric: true },
                  { header: 'Why', cell: (w) => w.reason ?? '' },
                ]}
              />
            ) : (
              <p className="muted">
                Waves: {waveText(a.schedule.waves)}; released up to wave{' '}
                {a.schedule.activeWave ?? 1}.
              </p>
            )}
            {canWrite && (a.schedule.waves?.length ?? 0) > (a.schedule.activeWave ?? 1) ? (
              <button type="button" onClick={() => void release()}>
                Release wave {(a.schedule.activeWave ?? 1) + 1}
              </button>
            ) : null}
            {actionError ? <ErrorBox error={actionError} /> : null}
          </Section>
          {s.summary.postponedUntil.length ? (
            <Section title="Postponed">
              <Table
                caption="Postponed machines"
                rows={s.summary.postponedUntil}
                rowKey={(p) => p.machine}
                columns={[
                  { header: 'Machine', cell: (p) => p.machine },
                  { header: 'Until', cell: (p) => fmtTime(p.until) },
                ]}
              />
            </Section>
          ) : null}
        </>
      ) : (
        <p className="muted">Loading status…</p>
      )}
      <Section title="Machines">
        <div aria-live="polite" id="ad-machines">
          <Table
            caption="Machines of this advertisement"
            rows={s.rows}
            rowKey={(r) => r.machine}
            empty="No machine in this advertisement's collection yet."
            columns={[
              {
                header: 'Machine',
                cell: (r) => <Link to={`/machines/${r.machine}`}>{r.name}</Link>,
              },
              {
                header: 'State',
                cell: (r) => <StateBadge state={r.state} label={stateLabel[r.state]} />,
              },
              { header: 'Last message', cell: (r) => r.last?.text ?? '—' },
              { header: 'At', cell: (r) => fmtTime(r.last?.time) },
            ]}
          />
        </div>
      </Section>
    </Page>
  );
}

interface AdForm {
  name: string;
  package: string;
  collection: string;
  availableFrom: string;
  enabled: boolean;
  requireUserPermission: boolean;
  allowDecline: boolean;
  postponementMaximum: string;
  whenNoAnswer: string;
  countdown: string;
  message: string;
  deadline: string;
  waves: { kind: 'percent' | 'machines'; n: string }[];
  successThreshold: string;
  failureThreshold: string;
}

const blank: AdForm = {
  name: '',
  package: '',
  collection: '',
  availableFrom: '',
  enabled: true,
  requireUserPermission: false,
  allowDecline: false,
  postponementMaximum: '',
  whenNoAnswer: '',
  countdown: '',
  message: '',
  deadline: '',
  waves: [],
  successThreshold: '',
  failureThreshold: '',
};

const iso = (local: string) => (local ? new Date(local).toISOString() : undefined);
const toLocal = (s: string | null | undefined) => (s ? new Date(s).toISOString().slice(0, 16) : '');

function policyOf(f: AdForm): Record<string, unknown> {
  const p: Record<string, unknown> = {};
  if (f.requireUserPermission) p.requireUserPermission = true;
  if (f.allowDecline) p.allowDecline = true;
  if (f.postponementMaximum) p.postponementMaximum = f.postponementMaximum;
  if (f.whenNoAnswer) p.whenNoAnswer = f.whenNoAnswer;
  if (f.countdown) p.countdown = f.countdown;
  if (f.message) p.message = f.message;
  if (f.deadline) p.deadline = iso(f.deadline);
  return p;
}

function scheduleOf(f: AdForm, base: Advertisement['schedule']): Record<string, unknown> {
  const s: Record<string, unknown> = { ...base };
  delete s.waves;
  if (f.waves.length) s.waves = f.waves.map((w) => ({ [w.kind]: Number(w.n) }));
  if (f.successThreshold) s.successThreshold = Number(f.successThreshold);
  else delete s.successThreshold;
  if (f.failureThreshold) s.failureThreshold = Number(f.failureThreshold);
  else delete s.failureThreshold;
  return s;
}

function localChecks(f: AdForm): Map<string, string[]> {
  const m = new Map<string, string[]>();
  const add = (p: string, msg: string) => m.set(p, [...(m.get(p) ?? []), msg]);
  if (!f.name.trim()) add('/name', 'is required');
  else if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/.test(f.name))
    add('/name', 'must be 1-128 letters, digits, ".", "_" or "-", starting with a letter or digit');
  if (!f.package) add('/package', 'choose a package');
  if (!f.collection) add('/collection', 'choose a collection');
  let pct = 0;
  f.waves.forEach((w, i) => {
    const n = Number(w.n);
    if (!/^\d+$/.test(w.n) || n < 1 || (w.kind === 'percent' && n > 100))
      add(
        `/schedule/waves/${i}`,
        w.kind === 'percent'
          ? 'must be a whole percentage from 1 to 100'
          : 'must be a whole number of machines, at least 1',
      );
    if (w.kind === 'percent') pct += n || 0;
  });
  if (pct > 100) add('/schedule/waves', `wave percentages add up to ${pct}%, more than 100%`);
  for (const k of ['successThreshold', 'failureThreshold'] as const)
    if (f[k] && (!/^\d+$/.test(f[k]) || Number(f[k]) > 100))
      add(`/schedule/${k}`, 'must be a whole percentage from 0 to 100');
  for (const i of validate(policySchema as unknown as Schema, policyOf(f)))
    add(`/policy${i.path}`, i.message);
  return m;
}

export function AdvertisementEditor({ adRef }: { adRef?: string }) {
  const existing = useGet<Advertisement>(
    adRef ? `/api/v1/advertisements/${encodeURIComponent(adRef)}` : null,
  );
  const pkgs = useGet<List<Package>>('/api/v1/packages');
  const cols = useGet<List<Collection>>('/api/v1/collections');
  const [f, setF] = useState<AdForm>(blank);
  const [touched, setTouched] = useState<Set<string>>(new Set());
  const [serverProblems, setServerProblems] = useState<Map<string, string[]>>(new Map());
  const [error, setError] = useState<Error | null>(null);
  useEffect(() => {
    const a = existing.data;
    if (!a) return;
    const p = a.policy as Record<string, string | boolean | undefined>;
    setF({
      name: a.name,
      package: a.packageId,
      collection: a.collectionId,
      availableFrom: toLocal(a.availableFrom),
      enabled: a.enabled,
      requireUserPermission: p.requireUserPermission === true,
      allowDecline: p.allowDecline === true,
      postponementMaximum: String(p.postponementMaximum ?? ''),
      whenNoAnswer: String(p.whenNoAnswer ?? ''),
      countdown: String(p.countdown ?? ''),
      message: String(p.message ?? ''),
      deadline: toLocal(p.deadline as string | undefined),
      waves: (a.schedule.waves ?? []).map((w) =>
        w.percent !== undefined
          ? { kind: 'percent' as const, n: String(w.percent) }
          : { kind: 'machines' as const, n: String(w.machines) },
      ),
      successThreshold:
        a.schedule.successThreshold !== undefined ? String(a.schedule.successThreshold) : '',
      failureThreshold:
        a.schedule.failureThreshold !== undefined ? String(a.schedule.failureThreshold) : '',
    });
  }, [existing.data]);
  const local = useMemo(() => localChecks(f), [f]);
  const problems = (path: string) => [
    ...(touched.has(path) || touched.has('*') ? (local.get(path) ?? []) : []),
    ...(serverProblems.get(path) ?? []),
  ];
  const upd =
    <K extends keyof AdForm>(k: K, path = `/${k}`) =>
    (v: AdForm[K]) => {
      setF((x) => ({ ...x, [k]: v }));
      setTouched((t) => new Set(t).add(path));
      setServerProblems(new Map());
    };
  const setWave = (i: number, w: AdForm['waves'][number] | null) => {
    setF((x) => {
      const waves = [...x.waves];
      if (w) waves[i] = w;
      else waves.splice(i, 1);
      return { ...x, waves };
    });
    setTouched((t) => new Set(t).add(`/schedule/waves/${i}`).add('/schedule/waves'));
  };
  const submit = async (): Promise<boolean> => {
    setTouched(new Set(['*']));
    setError(null);
    if (local.size) return false;
    const body: Record<string, unknown> = {
      name: f.name,
      package: f.package,
      collection: f.collection,
      policy: policyOf(f),
      schedule: scheduleOf(f, existing.data?.schedule ?? {}),
      enabled: f.enabled,
    };
    const from = iso(f.availableFrom);
    if (from) body.availableFrom = from;
    try {
      const a = adRef
        ? await api<Advertisement>(
            'PATCH',
            `/api/v1/advertisements/${encodeURIComponent(adRef)}`,
            body,
          )
        : await api<Advertisement>('POST', '/api/v1/advertisements', body);
      navigate(`/advertisements/${a.id}`);
      return true;
    } catch (err) {
      setError(err as Error);
      if (err instanceof ApiError) setServerProblems(byPath(err.problems));
      return false;
    }
  };
  const allPolicy = [...local.entries()].filter(
    ([p]) =>
      p.startsWith('/policy/') &&
      ![
        '/policy/postponementMaximum',
        '/policy/countdown',
        '/policy/message',
        '/policy/deadline',
        '/policy/whenNoAnswer',
      ].includes(p),
  );
  const title = adRef ? `Edit advertisement ${existing.data?.name ?? ''}` : 'New advertisement';
  return (
    <Page title={title}>
      <Form
        label={title}
        submitLabel={adRef ? 'Save advertisement' : 'Create advertisement'}
        onSubmit={submit}
        error={error}
      >
        <Section title="What and where">
          <div className="grid">
            <Field
              label="Name"
              name="name"
              value={f.name}
              onChange={upd('name')}
              problems={problems('/name')}
              required
            />
            <Select
              label="Package"
              name="package"
              value={f.package}
              onChange={upd('package')}
              problems={problems('/package')}
              options={[
                { value: '', label: 'Choose a package' },
                ...(pkgs.data?.items ?? []).map((p) => ({
                  value: p.id,
                  label: `${p.name}@${p.version}`,
                })),
              ]}
            />
            <Select
              label="Collection"
              name="collection"
              value={f.collection}
              onChange={upd('collection')}
              problems={problems('/collection')}
              options={[
                { value: '', label: 'Choose a collection' },
                ...(cols.data?.items ?? []).map((c) => ({ value: c.id, label: c.name })),
              ]}
            />
            <Field
              label="Available from"
              type="datetime-local"
              value={f.availableFrom}
              onChange={upd('availableFrom')}
              problems={problems('/availableFrom')}
              hint="Empty: now."
            />
          </div>
          <Check label="Enabled" checked={f.enabled} onChange={upd('enabled')} />
        </Section>
        <Section title="User experience (tightens the package's settings)">
          <div className="grid">
            <Check
              label="Require the user's permission"
              checked={f.requireUserPermission}
              onChange={upd('requireUserPermission', '/policy/requireUserPermission')}
            />
            <Check
              label="Allow the user to decline"
              checked={f.allowDecline}
              onChange={upd('allowDecline', '/policy/allowDecline')}
            />
            <Field
              label="Longest postponement"
              value={f.postponementMaximum}
              onChange={upd('postponementMaximum', '/policy/postponementMaximum')}
              problems={problems('/policy/postponementMaximum')}
              hint="A duration such as 2d or 4h."
            />
            <Select
              label="When nobody answers"
              value={f.whenNoAnswer}
              onChange={upd('whenNoAnswer', '/policy/whenNoAnswer')}
              problems={problems('/policy/whenNoAnswer')}
              options={[
                { value: '', label: 'Package default' },
                { value: 'install', label: 'install' },
                { value: 'postpone', label: 'postpone' },
                { value: 'decline', label: 'decline' },
              ]}
            />
            <Field
              label="Countdown"
              value={f.countdown}
              onChange={upd('countdown', '/policy/countdown')}
              problems={problems('/policy/countdown')}
              hint="A duration such as 15m."
            />
            <Field
              label="Deadline"
              type="datetime-local"
              value={f.deadline}
              onChange={upd('deadline', '/policy/deadline')}
              problems={problems('/policy/deadline')}
            />
            <Field
              label="Message to the user"
              value={f.message}
              onChange={upd('message', '/policy/message')}
              problems={problems('/policy/message')}
            />
          </div>
          {allPolicy.length && touched.size ? (
            <ul className="problems">
              {allPolicy.flatMap(([p, m]) => m.map((x) => <li key={p + x}>{`${p}: ${x}`}</li>))}
            </ul>
          ) : null}
        </Section>
        <Section title="Waves">
          <p className="muted">
            Rollout waves in order; the last wave also takes every remaining machine.
          </p>
          {f.waves.map((w, i) => (
            <fieldset key={i} className="wave">
              <legend>Wave {i + 1}</legend>
              <Select
                label={`Wave ${i + 1} size in`}
                value={w.kind}
                onChange={(k) => setWave(i, { ...w, kind: k as 'percent' | 'machines' })}
                options={[
                  { value: 'percent', label: 'percent of the machines' },
                  { value: 'machines', label: 'machines' },
                ]}
              />
              <Field
                label={`Wave ${i + 1} size`}
                value={w.n}
                onChange={(n) => setWave(i, { ...w, n })}
                problems={problems(`/schedule/waves/${i}`)}
              />
              <button type="button" className="link" onClick={() => setWave(i, null)}>
                Remove wave {i + 1}
              </button>
            </fieldset>
          ))}
          {problems('/schedule/waves').length ? (
            <ul className="problems" role="alert">
              {problems('/schedule/waves').map((x) => (
                <li key={x}>{x}</li>
              ))}
            </ul>
          ) : null}
          <button
            type="button"
            onClick={() => setWave(f.waves.length, { kind: 'percent', n: '10' })}
          >
            Add a wave
          </button>
          <div className="grid">
            <Field
              label="Success threshold (%)"
              value={f.successThreshold}
              onChange={upd('successThreshold', '/schedule/successThreshold')}
              problems={problems('/schedule/successThreshold')}
              hint="Of a wave, before the next starts (default 90)."
            />
            <Field
              label="Failure threshold (%)"
              value={f.failureThreshold}
              onChange={upd('failureThreshold', '/schedule/failureThreshold')}
              problems={problems('/schedule/failureThreshold')}
              hint="Failures that halt the rollout (default 10)."
            />
          </div>
        </Section>
      </Form>
    </Page>
  );
}
