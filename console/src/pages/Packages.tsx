import { useEffect, useMemo, useState } from 'react';
import definitionSchema from '../../../docs/schemas/package-definition.schema.json';
import settingsSchema from '../../../docs/schemas/deployment-settings.schema.json';
import { api, ApiError, useGet, type Problem } from '../api';
import { Link, navigate, useLocation } from '../router';
import { validate, type Issue, type Schema } from '../schema';
import type { Image, List, Package } from '../types';
import { Field, Form, Select } from '../form';
import { useCanWrite } from '../session';
import { ErrorBox, fmtTime, LoadState, Page, Section, short, Table } from '../ui';

export function Packages() {
  const canWrite = useCanWrite();
  const pkgs = useGet<List<Package>>('/api/v1/packages');
  return (
    <Page
      title="Packages"
      actions={
        canWrite ? (
          <Link to="/packages/new" className="button">
            New package
          </Link>
        ) : null
      }
    >
      <Section title="Packages">
        <LoadState loaded={pkgs} what="packages">
          {(d) => (
            <Table
              caption="Packages"
              rows={d.items}
              rowKey={(p) => p.id}
              empty="No packages yet."
              columns={[
                { header: 'Name', cell: (p) => <Link to={`/packages/${p.id}`}>{p.name}</Link> },
                { header: 'Version', cell: (p) => p.version },
                { header: 'Image', cell: (p) => <code title={p.imageId}>{short(p.imageId)}</code> },
                { header: 'Description', cell: (p) => p.description },
                { header: 'Revision', cell: (p) => p.revision, numeric: true },
                { header: 'Updated', cell: (p) => fmtTime(p.updatedAt) },
              ]}
            />
          )}
        </LoadState>
      </Section>
    </Page>
  );
}

/** The secrets of deployment settings (write-only: the API answers {"secret": "set"}). */
const secrets = [
  { path: ['machineState', 'productKey', 'set'], label: 'Product key' },
  { path: ['machineState', 'administratorPassword', 'set'], label: 'Administrator password' },
  { path: ['stateStore', 'password'], label: 'State store password' },
] as const;

function at(o: unknown, path: readonly string[]): unknown {
  let v = o;
  for (const k of path)
    v = v && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined;
  return v;
}

function put(o: Record<string, unknown>, path: readonly string[], value: unknown): void {
  let cur = o;
  for (const k of path.slice(0, -1)) {
    const next = cur[k];
    if (!next || typeof next !== 'object') cur[k] = {};
    cur = cur[k] as Record<string, unknown>;
  }
  cur[path[path.length - 1]!] = value;
}

const isMarker = (v: unknown) =>
  !!v && typeof v === 'object' && (v as { secret?: unknown }).secret === 'set';

const defaultSettings = {
  apiVersion: 'reimage/v1',
  kind: 'DeploymentSettings',
  machineState: { computerName: 'migrate' },
  clientState: { guid: 'migrate', policy: 'fresh', distributionPoint: 'fresh' },
  options: {
    redeploySameImage: false,
    requireUserPermission: true,
    postponement: { allowed: true, maximum: '2d' },
    allowDecline: false,
    whenNoAnswer: 'postpone',
  },
  migration: { ruleSets: ['user-accounts', 'user-documents'] },
  rollback: { retainDays: 7 },
};

interface DefForm {
  name: string;
  version: string;
  description: string;
  image: string;
  format: string;
  command: string;
  args: string;
}

function definitionOf(f: DefForm, base: Record<string, unknown>): Record<string, unknown> {
  const d: Record<string, unknown> = {
    ...base,
    apiVersion: 'reimage/v1',
    kind: 'PackageDefinition',
    name: f.name,
    version: f.version,
    image: { id: f.image },
    format: f.format,
  };
  if (f.description) d.description = f.description;
  else delete d.description;
  if (f.command)
    d.program = {
      command: f.command,
      arguments: f.args
        .split('\n')
        .map((a) => a.trim())
        .filter(Boolean),
    };
  else delete d.program;
  return d;
}

/** Problems by the JSON pointer they name, from both the local checks and the server. */
function group(issues: Issue[]): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const i of issues) m.set(i.path, [...(m.get(i.path) ?? []), i.message]);
  return m;
}

const under = (m: Map<string, string[]>, prefix: string) =>
  [...m.entries()]
    .filter(([p]) => p === prefix || p.startsWith(`${prefix}/`))
    .flatMap(([p, msgs]) =>
      msgs.map((x) => (p === prefix ? x : `${p.slice(prefix.length + 1)}: ${x}`)),
    );

function serverIssues(problems: Problem[], file: string): Issue[] {
  return problems
    .filter((p) => (p.file ?? '') === file || (!p.file && file === 'definition'))
    .map((p) => ({
      path: (p.path ?? '').replace(/^body\/?[a-z]*/i, '') || '/',
      message:
        p.message ??
        (p.expected !== undefined
          ? `expected ${JSON.stringify(p.expected)}, found ${JSON.stringify(p.found)}`
          : 'is not valid'),
    }));
}

export function PackageEditor({ packageRef }: { packageRef?: string }) {
  const { query } = useLocation();
  const existing = useGet<Package>(
    packageRef ? `/api/v1/packages/${encodeURIComponent(packageRef)}` : null,
  );
  const images = useGet<List<Image>>('/api/v1/images');
  const [form, setForm] = useState<DefForm>({
    name: '',
    version: '1',
    description: '',
    image: query.get('image') ?? '',
    format: 'native',
    command: '',
    args: '',
  });
  const [baseDef, setBaseDef] = useState<Record<string, unknown>>({});
  const [settingsText, setSettingsText] = useState(JSON.stringify(defaultSettings, null, 2));
  const [secretValues, setSecretValues] = useState<Record<string, string>>({});
  const [server, setServer] = useState<{ def: Issue[]; settings: Issue[]; error?: Error }>({
    def: [],
    settings: [],
  });
  const [touched, setTouched] = useState(false);
  const [saved, setSaved] = useState<string | null>(null);

  useEffect(() => {
    const p = existing.data;
    if (!p) return;
    const d = p.definition;
    const program = d.program as { command?: string; arguments?: string[] } | undefined;
    setBaseDef(d);
    setForm({
      name: p.name,
      version: p.version,
      description: p.description,
      image: p.imageId,
      format: String(d.format ?? 'native'),
      command: program?.command ?? '',
      args: (program?.arguments ?? []).join('\n'),
    });
    setSettingsText(JSON.stringify(p.settings, null, 2));
  }, [existing.data]);
  useEffect(() => {
    if (!form.image && images.data?.items[0])
      setForm((f) => ({ ...f, image: images.data!.items[0]!.id }));
  }, [images.data, form.image]);

  const definition = useMemo(() => definitionOf(form, baseDef), [form, baseDef]);
  const parsed = useMemo((): { value?: Record<string, unknown>; error?: string } => {
    try {
      const v: unknown = JSON.parse(settingsText);
      if (!v || typeof v !== 'object' || Array.isArray(v))
        return { error: 'must be a JSON object' };
      return { value: v as Record<string, unknown> };
    } catch (e) {
      return { error: `not valid JSON: ${(e as Error).message}` };
    }
  }, [settingsText]);
  const settings = useMemo(() => {
    if (!parsed.value) return undefined;
    const s = structuredClone(parsed.value);
    for (const sec of secrets) {
      const v = secretValues[sec.path.join('/')];
      if (v) put(s, sec.path, v);
    }
    return s;
  }, [parsed.value, secretValues]);
  const defIssues = useMemo(
    () => group([...validate(definitionSchema as unknown as Schema, definition), ...server.def]),
    [definition, server.def],
  );
  const setIssues = useMemo(
    () =>
      parsed.error
        ? [{ path: '/', message: parsed.error }]
        : [...validate(settingsSchema as unknown as Schema, settings ?? {}), ...server.settings],
    [parsed.error, settings, server.settings],
  );
  const set = (k: keyof DefForm) => (v: string) => {
    setTouched(true);
    setServer({ def: [], settings: [] });
    setForm((f) => ({ ...f, [k]: v }));
  };
  const show = (path: string) => (touched || server.def.length ? under(defIssues, path) : []);

  const submit = async (): Promise<boolean> => {
    setTouched(true);
    setSaved(null);
    if (defIssues.size || setIssues.length || !settings) return false;
    const body = {
      definition: JSON.stringify(definition),
      settings: JSON.stringify(settings),
      definitionFile: 'definition',
      settingsFile: 'settings',
    };
    try {
      const p = packageRef
        ? await api<Package>('PUT', `/api/v1/packages/${encodeURIComponent(packageRef)}`, body)
        : await api<Package>('POST', '/api/v1/packages', body);
      setSecretValues({});
      setSaved(`Saved ${p.name}@${p.version} (revision ${p.revision}).`);
      if (!packageRef) navigate(`/packages/${p.id}`, true);
      else existing.reload();
      return true;
    } catch (err) {
      const problems = err instanceof ApiError ? err.problems : [];
      setServer({
        def: serverIssues(problems, 'definition'),
        settings: serverIssues(problems, 'settings'),
        error: err as Error,
      });
      return false;
    }
  };

  const title = packageRef
    ? `Package ${existing.data ? `${existing.data.name}@${existing.data.version}` : ''}`
    : 'New package';
  return (
    <Page title={title}>
      {packageRef && existing.error ? <ErrorBox error={existing.error} /> : null}
      <Form
        label={title}
        submitLabel={packageRef ? 'Save package' : 'Create package'}
        onSubmit={submit}
        status={saved}
        error={server.error}
      >
        <Section title="Definition">
          <div className="grid">
            <Field
              label="Name"
              value={form.name}
              onChange={set('name')}
              problems={show('/name')}
              required
            />
            <Field
              label="Version"
              value={form.version}
              onChange={set('version')}
              problems={show('/version')}
              required
            />
            <Select
              label="Image"
              value={form.image}
              onChange={set('image')}
              problems={show('/image')}
              options={[
                { value: '', label: 'Choose an image' },
                ...(images.data?.items ?? []).map((i) => ({
                  value: i.id,
                  label: `${i.name} (${short(i.id)}, ${i.format})`,
                })),
              ]}
            />
            <Select
              label="Format"
              value={form.format}
              onChange={set('format')}
              problems={show('/format')}
              options={[
                { value: 'native', label: 'native (file tree)' },
                { value: 'opaque', label: 'opaque (disk image)' },
              ]}
            />
            <Field
              label="Description"
              value={form.description}
              onChange={set('description')}
              problems={show('/description')}
            />
            <Field
              label="Program to run after deployment"
              value={form.command}
              onChange={set('command')}
              problems={show('/program')}
              hint="An absolute path in the new OS; leave empty for none."
            />
          </div>
          <div className="field">
            <label htmlFor="pkg-args">Program arguments (one a line)</label>
            <textarea
              id="pkg-args"
              rows={3}
              value={form.args}
              onChange={(e) => set('args')(e.target.value)}
            />
          </div>
          {under(defIssues, '').filter((x) => /^(apiVersion|kind|pe|program)\b/.test(x)).length ? (
            <ul className="problems">
              {under(defIssues, '')
                .filter((x) => /^(apiVersion|kind|pe)\b/.test(x))
                .map((x) => (
                  <li key={x}>{x}</li>
                ))}
            </ul>
          ) : null}
        </Section>
        <Section title="Deployment settings">
          <div className={`field${setIssues.length ? ' invalid' : ''}`}>
            <label htmlFor="pkg-settings">
              Settings (JSON; docs/schemas/deployment-settings.schema.json)
            </label>
            <textarea
              id="pkg-settings"
              rows={18}
              spellCheck={false}
              className="code"
              value={settingsText}
              aria-invalid={setIssues.length > 0}
              aria-describedby="pkg-settings-problems"
              onChange={(e) => {
                setTouched(true);
                setServer({ def: [], settings: [] });
                setSettingsText(e.target.value);
              }}
            />
            <ul id="pkg-settings-problems" className="problems" aria-live="polite">
              {setIssues.map((i) => (
                <li key={`${i.path}:${i.message}`}>
                  <code>{i.path || '/'}</code> {i.message}
                </li>
              ))}
            </ul>
          </div>
          <fieldset>
            <legend>Secrets (write-only)</legend>
            {secrets.map((sec) => {
              const key = sec.path.join('/');
              const current = at(parsed.value, sec.path);
              const state = isMarker(current)
                ? 'set'
                : typeof current === 'string'
                  ? 'typed in the settings'
                  : 'not set';
              return (
                <Field
                  key={key}
                  label={`${sec.label} (${state})`}
                  type="password"
                  autoComplete="new-password"
                  value={secretValues[key] ?? ''}
                  placeholder={state === 'set' ? 'set — type to replace' : ''}
                  onChange={(v) => setSecretValues((s) => ({ ...s, [key]: v }))}
                  hint={`/${key}`}
                />
              );
            })}
          </fieldset>
        </Section>
      </Form>
    </Page>
  );
}
