import { spawn, type IPty } from '@lydell/node-pty';
import { BIN } from '../cli.js';

/**
 * The real `reimage` command on a pseudo-terminal, as a person at a keyboard sees it: the test
 * waits for text to appear on the screen and types keys. Waits end when the text appears or the
 * program exits (then the wait fails with the screen so far), never on a clock alone.
 */
export interface Terminal {
  /** Everything written so far, without colour and cursor codes. */
  screen(): string;
  /** Waits for text (or a pattern) after the previous match; returns the text from there to the match's end. */
  waitFor(what: string | RegExp): Promise<string>;
  /** Types keys (use KEY for special keys). */
  type(keys: string): void;
  /** Answers a prompt: waits for its text, then types the keys and Enter. */
  answer(prompt: string | RegExp, keys?: string): Promise<void>;
  exited: Promise<number>;
  pid: number;
}

export const KEY = { enter: '\r', down: '\x1b[B', up: '\x1b[A', ctrlC: '\x03' };

const ANSI = /\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Z0-9]|\x1b[=>78]/g;

export function startTerminal(
  args: string[],
  opts: { env?: Record<string, string | undefined>; cwd?: string } = {},
): Terminal {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...opts.env }))
    if (v !== undefined) env[k] = v;
  env.TERM = 'xterm-256color';
  const p: IPty = spawn(process.execPath, [BIN, ...args], {
    name: 'xterm-256color',
    cols: 220,
    rows: 60,
    cwd: opts.cwd ?? process.cwd(),
    env,
  });
  let raw = '';
  let cursor = 0;
  let exitCode: number | undefined;
  const listeners = new Set<() => void>();
  p.onData((d) => {
    raw += d;
    for (const l of listeners) l();
  });
  const exited = new Promise<number>((resolve) =>
    p.onExit(({ exitCode: c }) => {
      exitCode = c;
      for (const l of listeners) l();
      resolve(c);
    }),
  );
  const screen = () => raw.replace(ANSI, '').replace(/\r/g, '');
  const waitFor = (what: string | RegExp) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const s = screen();
        const rest = s.slice(cursor);
        let end = -1;
        if (typeof what === 'string') {
          const i = rest.indexOf(what);
          if (i >= 0) end = i + what.length;
        } else {
          const m = what.exec(rest);
          if (m) end = m.index + m[0].length;
        }
        if (end >= 0) {
          listeners.delete(check);
          const got = rest.slice(0, end);
          cursor += end;
          resolve(got);
          return true;
        }
        if (exitCode !== undefined) {
          listeners.delete(check);
          reject(
            new Error(
              `the program exited (${exitCode}) before ${String(what)} appeared; screen after the last match:\n${rest}`,
            ),
          );
          return true;
        }
        return false;
      };
      if (!check()) listeners.add(check);
    });
  return {
    screen,
    waitFor,
    type: (keys) => p.write(keys),
    async answer(prompt, keys = '') {
      await waitFor(prompt);
      // The prompt is drawn before it listens; a keypress sent in the same tick could be lost.
      await new Promise((r) => setImmediate(r));
      p.write(keys + KEY.enter);
    },
    exited,
    pid: p.pid,
  };
}
