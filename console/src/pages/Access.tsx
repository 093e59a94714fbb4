/**
 * Who and what may talk to the server: your API tokens (an admin sees everyone's), enrollment
 * tokens for machines (operators and admins), and users with their roles (admins). Every new
 * secret is shown once.
 */
import { useEffect, useMemo, useState } from 'react';
import { api, useGet } from '../api';
import {
  Check,
  ConfirmButton,
  Field,
  Form,
  intProblem,
  patterns,
  Select,
  serverProblems,
  ShownOnce,
} from '../form';
import { useCanWrite, useIsAdmin, useUser } from '../session';
import { roles, type ApiToken, type EnrollmentToken, type List, type User } from '../types';
import { fmtTime, LoadState, Page, Section, Table } from '../ui';

/** The problems of a small form: local ones once touched (or after a submit), the server's always. */
function useProblems(local: Map<string, string[]>) {
  const [touched, setTouched] = useState<Set<string>>(new Set());
  const [server, setServer] = useState<Map<string, string[]>>(new Map());
  return {
    of: (path: string) => [
      ...(touched.has(path) || touched.has('*') ? (local.get(path) ?? []) : []),
      ...(server.get(path) ?? []),
    ],
    touch: (path: string) => {
      setTouched((t) => new Set(t).add(path));
      setServer(new Map());
    },
    submitted: () => setTouched(new Set(['*'])),
    reset: () => {
      setTouched(new Set());
      setServer(new Map());
    },
    setServer,
  };
}

function ApiTokens() {
  const me = useUser();
  const admin = useIsAdmin();
  const tokens = useGet<List<ApiToken>>('/api/v1/tokens');
  const users = useGet<List<User>>(admin ? '/api/v1/users' : null);
  const who = new Map((users.data?.items ?? []).map((u) => [u.id, u.username]));
  const [name, setName] = useState('');
  const [days, setDays] = useState('');
  const [error, setError] = useState<Error | null>(null);
  const [shown, setShown] = useState<{ token: string; name: string } | null>(null);
  const local = useMemo(() => {
    const m = new Map<string, string[]>();
    if (!name.trim()) m.set('/name', ['is required']);
    else if (name.length > 100) m.set('/name', ['must have at most 100 characters']);
    const d = intProblem(days, 1, 3650);
    if (d) m.set('/expiresInDays', [d]);
    return m;
  }, [name, days]);
  const p = useProblems(local);
  const submit = async () => {
    p.submitted();
    setError(null);
    if (local.size) return false;
    try {
      const r = await api<{ token: string; tokenInfo: ApiToken }>('POST', '/api/v1/tokens', {
        name: name.trim(),
        ...(days.trim() ? { expiresInDays: Number(days) } : {}),
      });
      setShown({ token: r.token, name: r.tokenInfo.name });
      setName('');
      setDays('');
      p.reset();
      tokens.reload();
      return true;
    } catch (e) {
      setError(e as Error);
      p.setServer(serverProblems(e));
      return false;
    }
  };
  return (
    <Section title="API tokens">
      <p className="muted">
        Tokens for scripts and the CLI; a token acts with its user’s role
        {admin ? '. As an admin you see everyone’s.' : '.'}
      </p>
      <LoadState loaded={tokens} what="API tokens">
        {(d) => (
          <Table
            caption="API tokens"
            rows={d.items}
            rowKey={(t) => t.id}
            empty="No API tokens."
            columns={[
              { header: 'Name', cell: (t) => t.name },
              ...(admin
                ? [{ header: 'User', cell: (t: ApiToken) => who.get(t.userId) ?? t.userId }]
                : []),
              { header: 'Created', cell: (t) => fmtTime(t.createdAt) },
              { header: 'Expires', cell: (t) => (t.expiresAt ? fmtTime(t.expiresAt) : 'never') },
              { header: 'Last used', cell: (t) => fmtTime(t.lastUsedAt) },
              {
                header: 'Revoke',
                cell: (t) => (
                  <ConfirmButton
                    label={`Revoke ${t.name}${admin ? ` of ${who.get(t.userId) ?? t.userId}` : ''}`}
                    text="Revoke"
                    question={`Revoke the token ${t.name}${t.userId === me?.id ? '' : ` of ${who.get(t.userId) ?? 'another user'}`}? Whatever uses it stops working${t.name === 'login' && t.userId === me?.id ? ' (this may be your own session)' : ''}.`}
                    confirmLabel={`Yes, revoke ${t.name}`}
                    onConfirm={async () => {
                      await api('DELETE', `/api/v1/tokens/${encodeURIComponent(t.id)}`);
                      tokens.reload();
                    }}
                  />
                ),
              },
            ]}
          />
        )}
      </LoadState>
      <h3>New API token</h3>
      {shown ? (
        <ShownOnce
          what={`API token ${shown.name}`}
          secret={shown.token}
          onDone={() => setShown(null)}
        />
      ) : null}
      <Form label="New API token" submitLabel="Create API token" onSubmit={submit} error={error}>
        <div className="grid">
          <Field
            label="Token name"
            name="token-name"
            value={name}
            onChange={(v) => {
              setName(v);
              p.touch('/name');
            }}
            problems={p.of('/name')}
            hint="What uses it, e.g. nightly-report."
            required
          />
          <Field
            label="Expires in days"
            name="token-days"
            inputMode="numeric"
            value={days}
            onChange={(v) => {
              setDays(v);
              p.touch('/expiresInDays');
            }}
            problems={p.of('/expiresInDays')}
            hint="Empty: never (1-3650)."
          />
        </div>
      </Form>
    </Section>
  );
}

const tokenState = (t: EnrollmentToken) =>
  t.revoked
    ? 'revoked'
    : Date.parse(t.expiresAt) < Date.now()
      ? 'expired'
      : t.usesLeft === 0
        ? 'used up'
        : 'valid';

function EnrollmentTokens() {
  const tokens = useGet<List<EnrollmentToken>>('/api/v1/enrollment-tokens');
  const [site, setSite] = useState('');
  const [uses, setUses] = useState('');
  const [hours, setHours] = useState('168');
  const [error, setError] = useState<Error | null>(null);
  const [shown, setShown] = useState<{ token: string; info: EnrollmentToken } | null>(null);
  const local = useMemo(() => {
    const m = new Map<string, string[]>();
    if (site && !patterns.site.re.test(site)) m.set('/site', [patterns.site.message]);
    const u = intProblem(uses, 1, 1_000_000);
    if (u) m.set('/uses', [u]);
    const h = hours.trim() ? intProblem(hours, 1, 24 * 365) : 'is required';
    if (h) m.set('/expiresInHours', [h]);
    return m;
  }, [site, uses, hours]);
  const p = useProblems(local);
  const submit = async () => {
    p.submitted();
    setError(null);
    if (local.size) return false;
    try {
      const r = await api<{ token: string; tokenInfo: EnrollmentToken }>(
        'POST',
        '/api/v1/enrollment-tokens',
        {
          ...(site ? { site } : {}),
          ...(uses.trim() ? { uses: Number(uses) } : {}),
          expiresInHours: Number(hours),
        },
      );
      setShown({ token: r.token, info: r.tokenInfo });
      setSite('');
      setUses('');
      p.reset();
      tokens.reload();
      return true;
    } catch (e) {
      setError(e as Error);
      p.setServer(serverProblems(e));
      return false;
    }
  };
  const touch = (path: string, set: (v: string) => void) => (v: string) => {
    set(v);
    p.touch(path);
  };
  return (
    <Section title="Enrollment tokens">
      <p className="muted">
        Machines exchange an enrollment token for their own credential (
        <code>reimage client enroll</code>); the token’s site becomes theirs.
      </p>
      <LoadState loaded={tokens} what="enrollment tokens">
        {(d) => (
          <Table
            caption="Enrollment tokens"
            rows={d.items}
            rowKey={(t) => t.id}
            empty="No enrollment tokens."
            columns={[
              { header: 'Token', cell: (t) => <code>{t.id}</code> },
              { header: 'Site', cell: (t) => t.site ?? 'any' },
              {
                header: 'Uses left',
                cell: (t) => (t.usesLeft === null ? 'unlimited' : t.usesLeft),
                numeric: true,
              },
              { header: 'Expires', cell: (t) => fmtTime(t.expiresAt) },
              { header: 'Created by', cell: (t) => t.createdBy },
              {
                header: 'State',
                cell: tokenState,
              },
              {
                header: 'Revoke',
                cell: (t) =>
                  tokenState(t) !== 'valid' ? null : (
                    <ConfirmButton
                      label={`Revoke enrollment token ${t.id}`}
                      text="Revoke"
                      question={`Revoke enrollment token ${t.id}? Machines already enrolled keep working.`}
                      confirmLabel="Yes, revoke it"
                      onConfirm={async () => {
                        await api(
                          'DELETE',
                          `/api/v1/enrollment-tokens/${encodeURIComponent(t.id)}`,
                        );
                        tokens.reload();
                      }}
                    />
                  ),
              },
            ]}
          />
        )}
      </LoadState>
      <h3>New enrollment token</h3>
      {shown ? (
        <ShownOnce what="enrollment token" secret={shown.token} onDone={() => setShown(null)}>
          <p className="muted">
            Site {shown.info.site ?? 'any'}, {shown.info.usesLeft ?? 'unlimited'} use
            {shown.info.usesLeft === 1 ? '' : 's'}, expires {fmtTime(shown.info.expiresAt)}.
          </p>
        </ShownOnce>
      ) : null}
      <Form
        label="New enrollment token"
        submitLabel="Create enrollment token"
        onSubmit={submit}
        error={error}
      >
        <div className="grid">
          <Field
            label="Site of the machines"
            name="enroll-site"
            value={site}
            onChange={touch('/site', setSite)}
            problems={p.of('/site')}
            hint="Empty: the machines’ site comes from the DP boundaries."
          />
          <Field
            label="Uses"
            name="enroll-uses"
            inputMode="numeric"
            value={uses}
            onChange={touch('/uses', setUses)}
            problems={p.of('/uses')}
            hint="How many machines may enroll with it; empty: unlimited until it expires."
          />
          <Field
            label="Expires in hours"
            name="enroll-hours"
            inputMode="numeric"
            value={hours}
            onChange={touch('/expiresInHours', setHours)}
            problems={p.of('/expiresInHours')}
            hint="1 to 8760 (a year); 168 is a week."
            required
          />
        </div>
      </Form>
    </Section>
  );
}

/**
 * The change controls of one user. The row is keyed by the user's id, so it lives across the
 * reload that follows a change; its outcome goes to the section's status line (`onDone`), which
 * a reload cannot erase.
 */
function UserRow({
  u,
  reload,
  onDone,
}: {
  u: User;
  reload: () => void;
  onDone: (note: string) => void;
}) {
  const [role, setRole] = useState<string>(u.role);
  const [error, setError] = useState<Error | null>(null);
  useEffect(() => setRole(u.role), [u.role]);
  const patch = async (body: Record<string, unknown>, what: string) => {
    setError(null);
    onDone('');
    try {
      await api('PATCH', `/api/v1/users/${encodeURIComponent(u.id)}`, body);
      onDone(what);
      reload();
    } catch (e) {
      setError(e as Error);
    }
  };
  return (
    <div className="user-actions">
      <Select
        label={`Role of ${u.username}`}
        value={role}
        onChange={setRole}
        options={roles.map((r) => ({ value: r, label: r }))}
        problems={error ? [error.message] : []}
      />
      <button
        type="button"
        disabled={role === u.role}
        aria-label={`Change the role of ${u.username}`}
        onClick={() => void patch({ role }, `${u.username} is now ${role}.`)}
      >
        Change role
      </button>
      <Check
        label={`${u.username} is disabled`}
        checked={!!u.disabled}
        onChange={(disabled) =>
          void patch({ disabled }, `${u.username} is ${disabled ? 'disabled' : 'enabled'}.`)
        }
      />
      <ConfirmButton
        label={`Delete ${u.username}`}
        text="Delete"
        question={`Delete the user ${u.username} and their tokens?`}
        confirmLabel={`Yes, delete ${u.username}`}
        onConfirm={async () => {
          await api('DELETE', `/api/v1/users/${encodeURIComponent(u.id)}`);
          onDone(`Deleted ${u.username}.`);
          reload();
        }}
      />
    </div>
  );
}

function Users() {
  const users = useGet<List<User>>('/api/v1/users');
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [role, setRole] = useState<string>('read-only');
  const [error, setError] = useState<Error | null>(null);
  const [saved, setSaved] = useState('');
  const [changed, setChanged] = useState('');
  const local = useMemo(() => {
    const m = new Map<string, string[]>();
    if (!/^[a-z_][a-z0-9_.-]{0,63}$/.test(username))
      m.set('/username', [
        'must be a user name of 1-64 lowercase letters, digits, "_", "." or "-"',
      ]);
    if (password.length < 12) m.set('/password', ['must have at least 12 characters']);
    return m;
  }, [username, password]);
  const p = useProblems(local);
  const submit = async () => {
    p.submitted();
    setError(null);
    setSaved('');
    if (local.size) return false;
    try {
      const u = await api<User>('POST', '/api/v1/users', { username, password, role });
      setSaved(`Created ${u.username} (${u.role}).`);
      setUsername('');
      setPassword('');
      p.reset();
      users.reload();
      return true;
    } catch (e) {
      setError(e as Error);
      p.setServer(serverProblems(e));
      return false;
    }
  };
  return (
    <Section title="Users">
      <LoadState loaded={users} what="users">
        {(d) => (
          <Table
            caption="Users"
            rows={d.items}
            rowKey={(u) => u.id}
            empty="No users."
            columns={[
              { header: 'User', cell: (u) => u.username },
              { header: 'Role', cell: (u) => u.role },
              { header: 'State', cell: (u) => (u.disabled ? 'disabled' : 'enabled') },
              { header: 'Created', cell: (u) => fmtTime(u.createdAt) },
              {
                header: 'Change',
                cell: (u) => <UserRow u={u} reload={users.reload} onDone={setChanged} />,
              },
            ]}
          />
        )}
      </LoadState>
      <p aria-live="polite" className="status-line">
        {changed}
      </p>
      <h3>New user</h3>
      <Form
        label="New user"
        submitLabel="Create user"
        onSubmit={submit}
        status={saved}
        error={error}
      >
        <div className="grid">
          <Field
            label="User name"
            name="new-username"
            value={username}
            onChange={(v) => {
              setUsername(v);
              p.touch('/username');
            }}
            problems={p.of('/username')}
            required
          />
          <Field
            label="Initial password"
            name="new-password"
            type="password"
            autoComplete="new-password"
            value={password}
            onChange={(v) => {
              setPassword(v);
              p.touch('/password');
            }}
            problems={p.of('/password')}
            hint="At least 12 characters; tell it to the user another way."
            required
          />
          <Select
            label="Role"
            name="new-role"
            value={role}
            onChange={setRole}
            options={[
              { value: 'read-only', label: 'read-only: reads everything' },
              { value: 'operator', label: 'operator: also changes the catalog' },
              { value: 'admin', label: 'admin: also manages users' },
            ]}
          />
        </div>
      </Form>
    </Section>
  );
}

export function Access() {
  const canWrite = useCanWrite();
  const admin = useIsAdmin();
  return (
    <Page title="Access">
      <ApiTokens />
      {canWrite ? <EnrollmentTokens /> : null}
      {admin ? <Users /> : null}
    </Page>
  );
}
