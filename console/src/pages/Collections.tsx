import { useEffect, useMemo, useState, type ReactNode } from 'react';
import { api, ApiError, useGet } from '../api';
import { ConfirmButton, Field, Form, listOf, patterns, serverProblems, TextArea } from '../form';
import { Link, navigate } from '../router';
import { useCanWrite, WriteOnly } from '../session';
import type { Collection, List, Machine } from '../types';
import { ErrorBox, LoadState, Page, Section, Table } from '../ui';

function MachineTable({
  caption,
  rows,
  empty,
}: {
  caption: string;
  rows: Machine[];
  empty: string;
}) {
  return (
    <Table
      caption={caption}
      rows={rows}
      rowKey={(x) => x.id}
      empty={empty}
      columns={[
        { header: 'Machine', cell: (x) => <Link to={`/machines/${x.id}`}>{x.name}</Link> },
        { header: 'Site', cell: (x) => x.site ?? '—' },
        {
          header: 'OS',
          cell: (x) => `${String(x.inventory.os ?? '')} ${String(x.inventory.osVersion ?? '')}`,
        },
      ]}
    />
  );
}

function Members({ c }: { c: Collection }) {
  const m = useGet<List<Machine>>(`/api/v1/collections/${encodeURIComponent(c.id)}/members`);
  return (
    <Section title={`Members of ${c.name}`}>
      <LoadState loaded={m} what="members">
        {(d) => (
          <MachineTable
            caption={`Members of ${c.name}`}
            rows={d.items}
            empty="No machine matches this collection."
          />
        )}
      </LoadState>
    </Section>
  );
}

export function Collections() {
  const canWrite = useCanWrite();
  const cols = useGet<List<Collection>>('/api/v1/collections');
  const [open, setOpen] = useState<string | null>(null);
  const chosen = cols.data?.items.find((c) => c.id === open);
  return (
    <Page
      title="Collections"
      actions={
        canWrite ? (
          <Link to="/collections/new" className="button">
            New collection
          </Link>
        ) : null
      }
    >
      <Section title="Collections">
        <LoadState loaded={cols} what="collections">
          {(d) => (
            <Table
              caption="Collections"
              rows={d.items}
              rowKey={(c) => c.id}
              empty="No collections yet."
              columns={[
                {
                  header: 'Name',
                  cell: (c) =>
                    canWrite ? (
                      <Link to={`/collections/${encodeURIComponent(c.name)}/edit`}>{c.name}</Link>
                    ) : (
                      c.name
                    ),
                },
                { header: 'Rule', cell: (c) => (c.rule ? <code>{c.rule}</code> : '—') },
                { header: 'Include', cell: (c) => c.include.length || '—' },
                { header: 'Exclude', cell: (c) => c.exclude.length || '—' },
                { header: 'Description', cell: (c) => c.description },
                {
                  header: 'Members',
                  cell: (c) => (
                    <button
                      type="button"
                      className="link"
                      aria-pressed={open === c.id}
                      onClick={() => setOpen(open === c.id ? null : c.id)}
                    >
                      {open === c.id ? `Hide members of ${c.name}` : `Show members of ${c.name}`}
                    </button>
                  ),
                },
              ]}
            />
          )}
        </LoadState>
      </Section>
      {chosen ? <Members c={chosen} /> : null}
    </Page>
  );
}

type Preview =
  | { state: 'none' }
  | { state: 'checking' }
  | { state: 'ok'; members: Machine[] }
  | { state: 'bad'; message: string }
  | { state: 'error'; error: Error };

/**
 * Checks the rule as the user types (after a short pause) with the server's own parser, through
 * POST /api/v1/collections/preview, which also answers the machines the rule matches now.
 */
function useRulePreview(rule: string): Preview {
  const [p, setP] = useState<Preview>({ state: 'none' });
  useEffect(() => {
    if (!rule.trim()) {
      setP({ state: 'none' });
      return;
    }
    setP({ state: 'checking' });
    let stop = false;
    const t = setTimeout(() => {
      api<List<Machine>>('POST', '/api/v1/collections/preview', { rule }).then(
        (d) => !stop && setP({ state: 'ok', members: d.items }),
        (e: Error) => {
          if (stop) return;
          if (
            e instanceof ApiError &&
            (e.code === 'RULE_INVALID' || e.code === 'VALIDATION_FAILED')
          )
            setP({ state: 'bad', message: e.message });
          else setP({ state: 'error', error: e });
        },
      );
    }, 300);
    return () => {
      stop = true;
      clearTimeout(t);
    };
  }, [rule]);
  return p;
}

interface CollectionForm {
  name: string;
  description: string;
  rule: string;
  include: string;
  exclude: string;
}

export function CollectionEditor({ collectionRef }: { collectionRef?: string }) {
  const existing = useGet<Collection>(
    collectionRef ? `/api/v1/collections/${encodeURIComponent(collectionRef)}` : null,
  );
  const machines = useGet<List<Machine>>('/api/v1/machines');
  const [f, setF] = useState<CollectionForm>({
    name: '',
    description: '',
    rule: '',
    include: '',
    exclude: '',
  });
  const [touched, setTouched] = useState<Set<string>>(new Set());
  const [server, setServer] = useState<Map<string, string[]>>(new Map());
  const [error, setError] = useState<Error | null>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const c = existing.data;
  // Include and exclude are stored as GUIDs; the form shows names.
  const nameOf = useMemo(
    () => new Map((machines.data?.items ?? []).map((m) => [m.id, m.name])),
    [machines.data],
  );
  useEffect(() => {
    if (!c || !machines.data) return;
    setF({
      name: c.name,
      description: c.description,
      rule: c.rule ?? '',
      include: c.include.map((id) => nameOf.get(id) ?? id).join('\n'),
      exclude: c.exclude.map((id) => nameOf.get(id) ?? id).join('\n'),
    });
  }, [c, machines.data, nameOf]);
  const preview = useRulePreview(f.rule);
  const known = useMemo(
    () => new Set((machines.data?.items ?? []).flatMap((m) => [m.id, m.name])),
    [machines.data],
  );
  const local = useMemo(() => {
    const m = new Map<string, string[]>();
    if (!collectionRef && !patterns.name.re.test(f.name)) m.set('/name', [patterns.name.message]);
    for (const k of ['include', 'exclude'] as const) {
      const unknown = machines.data ? listOf(f[k]).filter((x) => !known.has(x)) : [];
      if (unknown.length) m.set(`/${k}`, [`no machine named ${unknown.join(', ')}`]);
    }
    return m;
  }, [f, collectionRef, known, machines.data]);
  const problems = (path: string): ReactNode[] => [
    ...(touched.has(path) || touched.has('*') ? (local.get(path) ?? []) : []),
    ...(server.get(path) ?? []),
  ];
  const ruleProblems: ReactNode[] = [
    ...(preview.state === 'bad' ? [<pre className="rule-error">{preview.message}</pre>] : []),
    ...(server.get('/rule') ?? []),
  ];
  const upd = (k: keyof CollectionForm) => (v: string) => {
    setF((x) => ({ ...x, [k]: v }));
    setTouched((t) => new Set(t).add(`/${k}`));
    setServer(new Map());
    setSaved(null);
  };

  const submit = async (): Promise<boolean> => {
    setTouched(new Set(['*']));
    setError(null);
    setSaved(null);
    if (local.size || preview.state === 'bad') return false;
    const body: Record<string, unknown> = {
      description: f.description,
      include: listOf(f.include),
      exclude: listOf(f.exclude),
    };
    if (f.rule.trim()) body.rule = f.rule;
    else if (collectionRef) body.rule = null;
    try {
      const saved = collectionRef
        ? await api<Collection>(
            'PATCH',
            `/api/v1/collections/${encodeURIComponent(collectionRef)}`,
            body,
          )
        : await api<Collection>('POST', '/api/v1/collections', { name: f.name, ...body });
      if (!collectionRef) navigate(`/collections/${encodeURIComponent(saved.name)}/edit`, true);
      else existing.reload();
      setSaved(`Saved ${saved.name}.`);
      setTouched(new Set());
      return true;
    } catch (e) {
      setError(e as Error);
      const byField = serverProblems(e);
      if (e instanceof ApiError && e.code === 'RULE_INVALID') byField.set('/rule', [e.message]);
      setServer(byField);
      return false;
    }
  };

  const title = collectionRef ? `Collection ${c?.name ?? collectionRef}` : 'New collection';
  return (
    <WriteOnly what="collections">
      <Page title={title}>
        {collectionRef && existing.error ? <ErrorBox error={existing.error} /> : null}
        <Form
          label={title}
          submitLabel={collectionRef ? 'Save collection' : 'Create collection'}
          onSubmit={submit}
          status={saved}
          error={error}
          actions={
            c ? (
              <ConfirmButton
                label={`Delete ${c.name}`}
                question={`Delete the collection ${c.name}? The server refuses while an advertisement targets it.`}
                confirmLabel={`Yes, delete ${c.name}`}
                onConfirm={async () => {
                  await api('DELETE', `/api/v1/collections/${encodeURIComponent(c.id)}`);
                  navigate('/collections');
                }}
              />
            ) : null
          }
        >
          <Section title="Collection">
            <div className="grid">
              <Field
                label="Name"
                name="name"
                value={f.name}
                onChange={upd('name')}
                problems={problems('/name')}
                disabled={!!collectionRef}
                required
              />
              <Field
                label="Description"
                name="description"
                value={f.description}
                onChange={upd('description')}
                problems={problems('/description')}
              />
            </div>
            <TextArea
              label="Rule"
              name="rule"
              code
              rows={3}
              value={f.rule}
              onChange={upd('rule')}
              problems={ruleProblems}
              hint={
                <>
                  Checked by the server as you type (docs/collections.md), e.g.{' '}
                  <code>os = "debian" and disk_free_gb &gt;= 20</code>. Empty: a static collection
                  of the machines included below.
                </>
              }
            />
            <div className="grid">
              <TextArea
                label="Include (machine names, one a line)"
                name="include"
                value={f.include}
                onChange={upd('include')}
                problems={problems('/include')}
                hint="Members whatever the rule says."
              />
              <TextArea
                label="Exclude (machine names, one a line)"
                name="exclude"
                value={f.exclude}
                onChange={upd('exclude')}
                problems={problems('/exclude')}
                hint="Never members, even when the rule or the include list names them."
              />
            </div>
          </Section>
          <Section title="Machines the rule matches now">
            <div aria-live="polite">
              {preview.state === 'none' ? (
                <p className="muted">No rule: only the included machines.</p>
              ) : preview.state === 'checking' ? (
                <p className="muted">Checking the rule…</p>
              ) : preview.state === 'bad' ? (
                <p className="muted">The rule has a problem (see above).</p>
              ) : preview.state === 'error' ? (
                <ErrorBox error={preview.error} />
              ) : (
                <>
                  <p>
                    {preview.members.length} machine{preview.members.length === 1 ? '' : 's'} match
                    the rule (before include and exclude).
                  </p>
                  <MachineTable
                    caption="Machines the rule matches"
                    rows={preview.members.slice(0, 100)}
                    empty="No machine matches the rule now."
                  />
                  {preview.members.length > 100 ? (
                    <p className="muted">The first 100 are shown.</p>
                  ) : null}
                </>
              )}
            </div>
          </Section>
        </Form>
        {c ? <Members key={c.updatedAt} c={c} /> : null}
      </Page>
    </WriteOnly>
  );
}
