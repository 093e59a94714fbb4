import { StrictMode, useEffect, useState, type FormEvent, type ReactNode } from 'react';
import { createRoot } from 'react-dom/client';
import { api, ApiError, getToken, liveFeed, onTokenChange, setToken, useLiveMode } from './api';
import { Link, match, navigate, useLocation } from './router';
import { Field } from './form';
import { ErrorBox } from './ui';
import { Dashboard } from './pages/Dashboard';
import { Images } from './pages/Images';
import { Packages, PackageEditor } from './pages/Packages';
import { DistributionPoints, DpEditor } from './pages/DistributionPoints';
import { CollectionEditor, Collections } from './pages/Collections';
import { Access } from './pages/Access';
import { UserProvider, WriteOnly } from './session';
import { Advertisements, AdvertisementDetail, AdvertisementEditor } from './pages/Advertisements';
import { Machines, MachineDetail } from './pages/Machines';
import { Trends } from './pages/Trends';
import type { User } from './types';
import './styles.css';

const nav: { to: string; label: string }[] = [
  { to: '/', label: 'Dashboard' },
  { to: '/images', label: 'Images' },
  { to: '/packages', label: 'Packages' },
  { to: '/distribution-points', label: 'Distribution points' },
  { to: '/collections', label: 'Collections' },
  { to: '/advertisements', label: 'Advertisements' },
  { to: '/machines', label: 'Machines' },
  { to: '/trends', label: 'Trends' },
  { to: '/access', label: 'Access' },
];

const routes: [string, (p: Record<string, string>) => ReactNode][] = [
  ['/', () => <Dashboard />],
  ['/images', () => <Images />],
  ['/packages', () => <Packages />],
  [
    '/packages/new',
    () => (
      <WriteOnly what="packages">
        <PackageEditor />
      </WriteOnly>
    ),
  ],
  ['/packages/:ref', (p) => <PackageEditor packageRef={p.ref!} />],
  ['/distribution-points', () => <DistributionPoints />],
  ['/distribution-points/new', () => <DpEditor />],
  ['/distribution-points/:ref/edit', (p) => <DpEditor dpRef={p.ref!} />],
  ['/collections', () => <Collections />],
  ['/collections/new', () => <CollectionEditor />],
  ['/collections/:ref/edit', (p) => <CollectionEditor collectionRef={p.ref!} />],
  ['/advertisements', () => <Advertisements />],
  [
    '/advertisements/new',
    () => (
      <WriteOnly what="advertisements">
        <AdvertisementEditor />
      </WriteOnly>
    ),
  ],
  [
    '/advertisements/:ref/edit',
    (p) => (
      <WriteOnly what="advertisements">
        <AdvertisementEditor adRef={p.ref!} />
      </WriteOnly>
    ),
  ],
  ['/advertisements/:ref', (p) => <AdvertisementDetail adRef={p.ref!} />],
  ['/machines', () => <Machines />],
  ['/machines/:ref', (p) => <MachineDetail machineRef={p.ref!} />],
  ['/trends', () => <Trends />],
  ['/access', () => <Access />],
];

function Login() {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<Error | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const r = await api<{ token: string }>('POST', '/api/v1/auth/login', { username, password });
      setToken(r.token);
    } catch (err) {
      setError(err as Error);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main id="main" className="login">
      <h1>reimage console</h1>
      <form onSubmit={submit} aria-label="Log in" className="card">
        <Field
          label="Username"
          name="username"
          value={username}
          onChange={setUsername}
          required
          autoComplete="username"
        />
        <Field
          label="Password"
          name="password"
          type="password"
          value={password}
          onChange={setPassword}
          required
          autoComplete="current-password"
        />
        {error ? <ErrorBox error={error} /> : null}
        <button type="submit" disabled={busy}>
          Log in
        </button>
      </form>
    </main>
  );
}

function LiveIndicator() {
  const mode = useLiveMode();
  const label =
    mode === 'stream' ? 'Live (event stream)' : mode === 'polling' ? 'Live (polling)' : 'Idle';
  return (
    <span className={`live live-${mode}`} title="How this page learns of new status">
      {label}
    </span>
  );
}

function Shell({ user }: { user: User }) {
  const { path } = useLocation();
  let page: ReactNode = null;
  for (const [pattern, render] of routes) {
    const p = match(pattern, path);
    if (p) {
      page = render(p);
      break;
    }
  }
  useEffect(() => {
    document.getElementById('page-title')?.focus();
    const h = document.getElementById('page-title')?.textContent;
    document.title = h ? `${h} · reimage` : 'reimage console';
  }, [path]);
  const section = (to: string) =>
    to === '/' ? path === '/' : path === to || path.startsWith(`${to}/`);
  const logout = async () => {
    try {
      await api('POST', '/api/v1/auth/logout');
    } catch {
      // The token may already be gone; logging out locally is what matters.
    }
    setToken(null);
  };
  return (
    <>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="top">
        <span className="brand">reimage</span>
        <nav aria-label="Main">
          <ul>
            {nav.map((n) => (
              <li key={n.to}>
                <Link to={n.to} aria-current={section(n.to) ? 'page' : undefined}>
                  {n.label}
                </Link>
              </li>
            ))}
          </ul>
        </nav>
        <div className="who">
          <LiveIndicator />
          <span>
            {user.username} ({user.role})
          </span>
          <button type="button" className="link" onClick={() => void logout()}>
            Log out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        {page ?? (
          <>
            <h1 id="page-title" tabIndex={-1}>
              Not found
            </h1>
            <p>
              No page at {path}. <Link to="/">Go to the dashboard</Link>.
            </p>
          </>
        )}
      </main>
    </>
  );
}

function App() {
  const [token, setTok] = useState(getToken());
  const [user, setUser] = useState<User | null>(null);
  const [error, setError] = useState<Error | null>(null);
  useEffect(() => onTokenChange(() => setTok(getToken())), []);
  useEffect(() => {
    setUser(null);
    setError(null);
    if (!token) return;
    liveFeed.restart();
    api<User>('GET', '/api/v1/whoami').then(setUser, (e: Error) => {
      if (!(e instanceof ApiError && e.status === 401)) setError(e);
    });
  }, [token]);
  if (!token) return <Login />;
  if (error) return <ErrorBox error={error} />;
  if (!user) return <p className="muted">Loading…</p>;
  return (
    <UserProvider user={user}>
      <Shell user={user} />
    </UserProvider>
  );
}

// An old link with a token in it never stays in the address bar or the history.
if (/[?&#](token|access_token)=/.test(location.href)) navigate(location.pathname, true);

createRoot(document.getElementById('root')!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
