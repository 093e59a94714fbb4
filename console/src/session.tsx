/** Who is logged in, for the pages: read-only users see no create, edit or delete controls. */
import { createContext, useContext, type ReactNode } from 'react';
import type { User } from './types';

const UserContext = createContext<User | null>(null);

export function UserProvider({ user, children }: { user: User; children: ReactNode }) {
  return <UserContext.Provider value={user}>{children}</UserContext.Provider>;
}

export function useUser(): User | null {
  return useContext(UserContext);
}

/** True for roles that may change the catalog (operator and admin; the server checks too). */
export function useCanWrite(): boolean {
  const u = useUser();
  return !!u && u.role !== 'read-only';
}

export function useIsAdmin(): boolean {
  return useUser()?.role === 'admin';
}

/** Shows `children` to operators and admins; a read-only user reads why not. */
export function WriteOnly({ what, children }: { what: string; children: ReactNode }) {
  const u = useUser();
  if (u && u.role !== 'read-only') return <>{children}</>;
  return (
    <>
      <h1 id="page-title" tabIndex={-1}>
        Not allowed
      </h1>
      <p>
        Your role ({u?.role ?? 'none'}) can read but not change {what}; ask an admin for the
        operator role.
      </p>
    </>
  );
}
