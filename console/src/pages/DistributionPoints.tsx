import { useEffect, useMemo, useState } from 'react';
import { api, useGet } from '../api';
import {
  Check,
  ConfirmButton,
  Field,
  Form,
  intProblem,
  listOf,
  patterns,
  SecretField,
  serverProblems,
  TextArea,
} from '../form';
import { Link, navigate } from '../router';
import { useCanWrite, WriteOnly } from '../session';
import {
  weekdays,
  type Bandwidth,
  type DistributionPoint,
  type List,
  type Package,
  type Replication,
} from '../types';
import { Bar, ErrorBox, fmtBytes, fmtTime, LoadState, Page, Section, Table } from '../ui';

const windowText = (b: Bandwidth) =>
  [
    b.rateLimitKbps ? `${b.rateLimitKbps} kbit/s` : 'no rate limit',
    b.windows?.length
      ? `windows ${b.windows.map((w) => `${w.days?.join(',') ?? 'daily'} ${w.from}-${w.to}`).join('; ')}`
      : 'any time',
  ].join(' · ');

function Replications({ dp, names }: { dp: DistributionPoint; names: Map<string, string> }) {
  const canWrite = useCanWrite();
  const rep = useGet<List<Replication>>(
    `/api/v1/distribution-points/${encodeURIComponent(dp.id)}/distribution`,
    (e) => e.type === 'tick',
  );
  return (
    <Section title={`${dp.name} (${dp.site})`}>
      <p className="muted">
        {dp.address} · boundaries {dp.boundaries.join(', ') || '—'} ·{' '}
        {windowText(dp.bandwidth ?? {})} · credentials {dp.hasCredentials ? 'set' : 'none'}
        {canWrite ? (
          <>
            {' · '}
            <Link to={`/distribution-points/${encodeURIComponent(dp.name)}/edit`}>
              Edit {dp.name}
            </Link>
          </>
        ) : null}
      </p>
      <div aria-live="polite">
        <LoadState loaded={rep} what="replication state">
          {(d) => (
            <Table
              caption={`Packages on ${dp.name}`}
              rows={d.items}
              rowKey={(r) => r.packageId}
              empty="No package distributed here yet."
              columns={[
                { header: 'Package', cell: (r) => names.get(r.packageId) ?? r.packageId },
                {
                  header: 'State',
                  cell: (r) => <span className={`badge rep-${r.state}`}>{r.state}</span>,
                },
                {
                  header: 'Progress',
                  cell: (r) => (
                    <>
                      <Bar
                        value={r.bytesDone}
                        max={r.bytesTotal}
                        label={`${fmtBytes(r.bytesDone)} of ${fmtBytes(r.bytesTotal)}`}
                      />{' '}
                      {fmtBytes(r.bytesDone)} / {fmtBytes(r.bytesTotal)}
                    </>
                  ),
                },
                { header: 'Source', cell: (r) => r.sourceDpName ?? 'server' },
                { header: 'Note', cell: (r) => r.error ?? r.note ?? '' },
                { header: 'Updated', cell: (r) => fmtTime(r.updatedAt) },
              ]}
            />
          )}
        </LoadState>
      </div>
    </Section>
  );
}

export function DistributionPoints() {
  const canWrite = useCanWrite();
  const dps = useGet<List<DistributionPoint>>('/api/v1/distribution-points');
  const pkgs = useGet<List<Package>>('/api/v1/packages');
  const names = new Map((pkgs.data?.items ?? []).map((p) => [p.id, `${p.name}@${p.version}`]));
  return (
    <Page
      title="Distribution points"
      actions={
        canWrite ? (
          <Link to="/distribution-points/new" className="button">
            New distribution point
          </Link>
        ) : null
      }
    >
      <LoadState loaded={dps} what="distribution points">
        {(d) =>
          d.items.length === 0 ? (
            <p className="empty">No distribution points yet.</p>
          ) : (
            <>
              {d.items.map((dp) => (
                <Replications key={dp.id} dp={dp} names={names} />
              ))}
            </>
          )
        }
      </LoadState>
    </Page>
  );
}

type Day = (typeof weekdays)[number];
interface Window {
  days: Day[];
  from: string;
  to: string;
}
interface DpForm {
  name: string;
  address: string;
  site: string;
  boundaries: string;
  rate: string;
  windows: Window[];
  username: string;
  password: string;
  domain: string;
  forget: boolean;
}

const blank: DpForm = {
  name: '',
  address: '',
  site: '',
  boundaries: '',
  rate: '',
  windows: [],
  username: '',
  password: '',
  domain: '',
  forget: false,
};

/** A plausible CIDR (the server parses it for real): an IPv4 or IPv6 address and a prefix. */
function cidrProblem(c: string): string | undefined {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(c);
  if (!m) return `'${c}' is not CIDR (address/prefix, e.g. 10.1.0.0/16)`;
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(m[1]!);
  const prefix = Number(m[2]);
  if (v4) {
    if (v4.slice(1).some((o) => Number(o) > 255)) return `'${c}': an octet is over 255`;
    if (prefix > 32) return `'${c}': an IPv4 prefix is at most 32`;
    return undefined;
  }
  if (!/^[0-9a-f:.]+$/i.test(m[1]!) || !m[1]!.includes(':')) return `'${c}' is not an IP address`;
  if (prefix > 128) return `'${c}': an IPv6 prefix is at most 128`;
  return undefined;
}

function localChecks(f: DpForm, editing: boolean): Map<string, string[]> {
  const m = new Map<string, string[]>();
  const add = (path: string, msg: string | undefined) => {
    if (msg) m.set(path, [...(m.get(path) ?? []), msg]);
  };
  if (!editing) add('/name', patterns.name.re.test(f.name) ? undefined : patterns.name.message);
  add(
    '/address',
    !f.address
      ? 'is required'
      : /^(\/|file:\/\/|https?:\/\/|smb:\/\/)/.test(f.address)
        ? undefined
        : 'must be a folder (/path or file://…), share (smb://…) or http(s):// URL',
  );
  add('/site', patterns.site.re.test(f.site) ? undefined : patterns.site.message);
  for (const c of listOf(f.boundaries)) add('/boundaries', cidrProblem(c));
  add('/bandwidth/rateLimitKbps', intProblem(f.rate, 8, 100_000_000));
  f.windows.forEach((w, i) => {
    add(
      `/bandwidth/windows/${i}/from`,
      patterns.clock.re.test(w.from) ? undefined : patterns.clock.message,
    );
    add(
      `/bandwidth/windows/${i}/to`,
      patterns.clock.re.test(w.to) ? undefined : patterns.clock.message,
    );
  });
  if (!f.forget && !f.username && (f.password || f.domain))
    add('/credentials/username', 'is required with a password or a domain');
  return m;
}

function bandwidthOf(f: DpForm): Bandwidth {
  const b: Bandwidth = {};
  if (f.rate.trim()) b.rateLimitKbps = Number(f.rate);
  if (f.windows.length)
    b.windows = f.windows.map((w) => ({
      ...(w.days.length ? { days: w.days } : {}),
      from: w.from,
      to: w.to,
    }));
  return b;
}

/** Create or edit a DP. Credentials are write-only: empty keeps the stored ones. */
export function DpEditor({ dpRef }: { dpRef?: string }) {
  const existing = useGet<DistributionPoint>(
    dpRef ? `/api/v1/distribution-points/${encodeURIComponent(dpRef)}` : null,
  );
  const [f, setF] = useState<DpForm>(blank);
  const [touched, setTouched] = useState<Set<string>>(new Set());
  const [server, setServer] = useState<Map<string, string[]>>(new Map());
  const [error, setError] = useState<Error | null>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const dp = existing.data;
  useEffect(() => {
    if (!dp) return;
    setF({
      ...blank,
      name: dp.name,
      address: dp.address,
      site: dp.site,
      boundaries: dp.boundaries.join('\n'),
      rate: dp.bandwidth?.rateLimitKbps ? String(dp.bandwidth.rateLimitKbps) : '',
      windows: (dp.bandwidth?.windows ?? []).map((w) => ({
        days: w.days ?? [],
        from: w.from,
        to: w.to,
      })),
    });
  }, [dp]);
  const local = useMemo(() => localChecks(f, !!dpRef), [f, dpRef]);
  const problems = (path: string) => [
    ...(touched.has(path) || touched.has('*') ? (local.get(path) ?? []) : []),
    ...(server.get(path) ?? []),
  ];
  const upd =
    <K extends keyof DpForm>(k: K, path: string = `/${k}`) =>
    (v: DpForm[K]) => {
      setF((x) => ({ ...x, [k]: v }));
      setTouched((t) => new Set(t).add(path));
      setServer(new Map());
      setSaved(null);
    };
  const setWindow = (i: number, w: Window | null) => {
    setF((x) => {
      const windows = [...x.windows];
      if (w) windows[i] = w;
      else windows.splice(i, 1);
      return { ...x, windows };
    });
    setTouched((t) =>
      new Set(t).add(`/bandwidth/windows/${i}/from`).add(`/bandwidth/windows/${i}/to`),
    );
  };

  const submit = async (): Promise<boolean> => {
    setTouched(new Set(['*']));
    setError(null);
    setSaved(null);
    if (local.size) return false;
    const body: Record<string, unknown> = {
      address: f.address,
      site: f.site,
      boundaries: listOf(f.boundaries),
      bandwidth: bandwidthOf(f),
    };
    if (f.forget) body.credentials = null;
    else if (f.username)
      body.credentials = {
        username: f.username,
        password: f.password,
        ...(f.domain ? { domain: f.domain } : {}),
      };
    try {
      const d = dpRef
        ? await api<DistributionPoint>(
            'PATCH',
            `/api/v1/distribution-points/${encodeURIComponent(dpRef)}`,
            body,
          )
        : await api<DistributionPoint>('POST', '/api/v1/distribution-points', {
            name: f.name,
            ...body,
          });
      setF((x) => ({ ...x, username: '', password: '', domain: '', forget: false }));
      setTouched(new Set());
      if (!dpRef) navigate(`/distribution-points/${encodeURIComponent(d.name)}/edit`, true);
      else existing.reload();
      setSaved(`Saved ${d.name}.`);
      return true;
    } catch (e) {
      setError(e as Error);
      setServer(serverProblems(e));
      return false;
    }
  };

  const title = dpRef ? `Distribution point ${dp?.name ?? dpRef}` : 'New distribution point';
  return (
    <WriteOnly what="distribution points">
      <Page title={title}>
        {dpRef && existing.error ? <ErrorBox error={existing.error} /> : null}
        <Form
          label={title}
          submitLabel={dpRef ? 'Save distribution point' : 'Create distribution point'}
          onSubmit={submit}
          status={saved}
          error={error}
          actions={
            dp ? (
              <ConfirmButton
                label={`Delete ${dp.name}`}
                question={`Delete the distribution point ${dp.name}? Machines stop using it; its files stay where they are.`}
                confirmLabel={`Yes, delete ${dp.name}`}
                onConfirm={async () => {
                  await api('DELETE', `/api/v1/distribution-points/${encodeURIComponent(dp.id)}`);
                  navigate('/distribution-points');
                }}
              />
            ) : null
          }
        >
          <Section title="Where">
            <div className="grid">
              <Field
                label="Name"
                name="name"
                value={f.name}
                onChange={upd('name')}
                problems={problems('/name')}
                disabled={!!dpRef}
                hint={dpRef ? 'A DP keeps its name (its credentials are sealed to it).' : undefined}
                required
              />
              <Field
                label="Site"
                name="site"
                value={f.site}
                onChange={upd('site')}
                problems={problems('/site')}
                hint="The site code machines of this site read from, e.g. paris."
                required
              />
              <Field
                label="Address"
                name="address"
                value={f.address}
                onChange={upd('address')}
                problems={problems('/address')}
                hint="A folder (/srv/dp), a share (smb://host/share/path) or an http(s):// URL."
                required
              />
            </div>
            <TextArea
              label="Boundaries (CIDR, one a line)"
              name="boundaries"
              value={f.boundaries}
              onChange={upd('boundaries')}
              problems={problems('/boundaries')}
              hint="The subnets this DP serves, e.g. 10.1.0.0/16; machines there read from it."
            />
          </Section>
          <Section title="Replication limits">
            <Field
              label="Rate limit (kbit/s)"
              name="rate"
              inputMode="numeric"
              value={f.rate}
              onChange={upd('rate', '/bandwidth/rateLimitKbps')}
              problems={problems('/bandwidth/rateLimitKbps')}
              hint="Empty: no limit. From 8 to 100000000."
            />
            <p className="muted">
              Replication runs only inside these windows (server time); none means any time.
            </p>
            {f.windows.map((w, i) => (
              <fieldset key={i} className="wave">
                <legend>Window {i + 1}</legend>
                <fieldset className="days">
                  <legend>Days of window {i + 1} (none: every day)</legend>
                  {weekdays.map((d) => (
                    <Check
                      key={d}
                      label={d}
                      checked={w.days.includes(d)}
                      onChange={(on) =>
                        setWindow(i, {
                          ...w,
                          days: on
                            ? weekdays.filter((x) => x === d || w.days.includes(x))
                            : w.days.filter((x) => x !== d),
                        })
                      }
                    />
                  ))}
                </fieldset>
                <Field
                  label={`Window ${i + 1} from`}
                  value={w.from}
                  placeholder="HH:MM"
                  onChange={(from) => setWindow(i, { ...w, from })}
                  problems={problems(`/bandwidth/windows/${i}/from`)}
                />
                <Field
                  label={`Window ${i + 1} to`}
                  value={w.to}
                  placeholder="HH:MM"
                  onChange={(to) => setWindow(i, { ...w, to })}
                  problems={problems(`/bandwidth/windows/${i}/to`)}
                />
                <button type="button" className="link" onClick={() => setWindow(i, null)}>
                  Remove window {i + 1}
                </button>
              </fieldset>
            ))}
            <button
              type="button"
              onClick={() => setWindow(f.windows.length, { days: [], from: '20:00', to: '06:00' })}
            >
              Add a window
            </button>
          </Section>
          <Section title="Write credentials (write-only)">
            <p className="muted" id="dp-cred-note">
              How the server writes to this DP when it replicates (WebDAV or SMB user). They are
              sealed at rest and never shown again
              {dp?.hasCredentials ? '; leave empty to keep the stored ones' : ''}.
            </p>
            <div className="grid">
              <Field
                label={`User name${dp?.hasCredentials ? ' (set)' : ''}`}
                name="cred-user"
                autoComplete="off"
                value={f.username}
                placeholder={dp?.hasCredentials ? 'leave empty to keep' : ''}
                onChange={upd('username', '/credentials/username')}
                problems={problems('/credentials/username')}
              />
              <SecretField
                label="Password"
                value={f.password}
                stored={!!dp?.hasCredentials}
                onChange={upd('password', '/credentials/password')}
                problems={problems('/credentials/password')}
              />
              <Field
                label="Domain or workgroup (SMB)"
                name="cred-domain"
                value={f.domain}
                onChange={upd('domain', '/credentials/domain')}
                problems={problems('/credentials/domain')}
              />
            </div>
            {dp?.hasCredentials ? (
              <Check
                label="Forget the stored credentials"
                checked={f.forget}
                onChange={upd('forget', '/credentials')}
              />
            ) : null}
          </Section>
        </Form>
      </Page>
    </WriteOnly>
  );
}
