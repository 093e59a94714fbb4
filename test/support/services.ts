import { connect, createServer } from 'node:net';

/**
 * What the test-owned services (PostgreSQL, Samba, nginx) share: a free loopback port, a
 * readiness probe, and the skip rule — skip locally when a service cannot run here, fail
 * under CI (CI=true), where `.ci/run` installs everything.
 */
export function serviceSkip(service: string, why: string | undefined): string | false {
  if (why && process.env.CI) throw new Error(`${service} tests must run in CI: ${why}`);
  return why ?? false;
}

/** A TCP port free on 127.0.0.1 right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

/** Whether something accepts connections on 127.0.0.1:port. */
export function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect({ host: '127.0.0.1', port }, () => {
      c.destroy();
      resolve(true);
    });
    c.on('error', () => resolve(false));
  });
}
