import {
  createPrompt,
  isDownKey,
  isEnterKey,
  isUpKey,
  makeTheme,
  useEffect,
  useKeypress,
  usePrefix,
  useState,
} from '@inquirer/core';
import { styleText } from 'node:util';
import { ReimageError } from '../errors.js';
import {
  fetchNotification,
  postAnswer,
  readPendingNotification,
  type NotificationAnswer,
  type PendingNotificationFile,
} from './notify.js';
import { readJsonFile } from './files.js';
import { currentNotificationPath } from './notify.js';
import {
  CHOICE_LABELS,
  LATER_DELAYS,
  formatRemaining,
  formatWhen,
  type AnswerChoice,
} from './notify-text.js';

/**
 * `reimage agent prompt`: the notification on a terminal. It reads the same API as the web
 * page (found through current.json), shows the same texts with a live countdown, and posts the
 * answer with `by: 'terminal'`. docs/notification.md shows a session.
 */

export interface PromptIo {
  input: NodeJS.ReadableStream;
  output: NodeJS.WritableStream;
}

/**
 * Text from the policy, made safe for a terminal: no control characters (an escape sequence in
 * the administrator's message could otherwise rewrite the screen) and no bidirectional overrides.
 */
export function terminalSafe(s: string): string {
  return s.replace(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g, '');
}

interface CountdownSelectConfig<V> {
  message: string;
  /** The live line under the question (called at every render, once a second). */
  status: () => string;
  choices: { name: string; value: V }[];
}

/** A select whose status line re-renders every second: the countdown stays live while asking. */
const countdownSelect = createPrompt(
  <V>(config: CountdownSelectConfig<V>, done: (value: V) => void): string => {
    const theme = makeTheme({});
    const [status, setStatus] = useState<'idle' | 'done'>('idle');
    const [active, setActive] = useState(0);
    const [, setTick] = useState(0);
    const prefix = usePrefix({ status, theme });
    useEffect(() => {
      const t = setInterval(() => setTick((n) => n + 1), 1000);
      return () => clearInterval(t);
    }, []);
    const n = config.choices.length;
    useKeypress((key) => {
      if (status === 'done') return;
      if (isEnterKey(key)) {
        setStatus('done');
        done(config.choices[active]!.value);
      } else if (isUpKey(key)) setActive((active - 1 + n) % n);
      else if (isDownKey(key)) setActive((active + 1) % n);
    });
    const message = theme.style.message(config.message, status);
    if (status === 'done')
      return `${prefix} ${message} ${theme.style.answer(config.choices[active]!.name)}`;
    return [
      `${prefix} ${message}`,
      `  ${config.status()}`,
      ...config.choices.map((c, i) =>
        i === active ? theme.style.highlight(`❯ ${c.name}`) : `  ${c.name}`,
      ),
      styleText('dim', '↑↓ choose • ⏎ answer'),
    ].join('\n');
  },
);

/**
 * Shows the notification pending at `root` and asks for an answer. Resolves with the recorded
 * answer and its text; throws NOTIFICATION_NOT_PENDING when there is none (or it ends while
 * asking), NOTIFICATION_ANSWER_INVALID when the agent refuses the answer, CANCELLED on Ctrl-C.
 */
export async function promptNotification(
  root: string,
  io: PromptIo,
): Promise<{ answer: NotificationAnswer; text: string } | undefined> {
  const pending = readPendingNotification(root);
  const view = await fetchNotification(pending);
  const req = view.notification;
  const offset = Date.parse(view.serverNow) - Date.now();
  const now = () => Date.now() + offset;
  const ends = Date.parse(req.countdownEndsAt);
  const limit = view.laterLimit === undefined ? undefined : Date.parse(view.laterLimit);
  const say = (lines: string[]) => io.output.write(lines.join('\n') + '\n');
  const t = view.text;

  say([
    '',
    styleText('bold', `── ${terminalSafe(t.title)} ──`),
    terminalSafe(t.intro),
    ...(t.message !== undefined
      ? [
          '',
          'Message from your administrator:',
          ...terminalSafe(t.message)
            .split('\n')
            .map((l) => `  │ ${l}`),
          '',
        ]
      : []),
    ...t.facts.map(terminalSafe),
    terminalSafe(t.noAnswer),
    '',
  ]);
  const allowed = (Object.keys(CHOICE_LABELS) as AnswerChoice[]).filter((k) => req.buttons[k]);
  if (allowed.length === 0) {
    say(['No choice is offered for this notification.']);
    return undefined;
  }

  // The question ends when the countdown does, or when the notification goes away (answered on
  // the web page): the prompt is aborted and says why.
  const ac = new AbortController();
  let ended: string | undefined;
  const watch = setInterval(() => {
    if (now() >= ends) ended = `Time is up. ${terminalSafe(t.noAnswer)}`;
    else if (!stillPending(root, pending))
      ended = 'The notification was answered elsewhere, or has ended.';
    if (ended) ac.abort();
  }, 250);
  const status = () => `Time left to answer: ${styleText('bold', formatRemaining(ends - now()))}`;
  const ctx = { input: io.input, output: io.output, signal: ac.signal };
  try {
    const choice = await countdownSelect<AnswerChoice>(
      {
        message: 'What do you want to do?',
        status,
        choices: allowed.map((k) => ({ name: CHOICE_LABELS[k], value: k })),
      },
      ctx,
    );
    let until: string | undefined;
    if (choice === 'later') {
      const options = LATER_DELAYS.filter((d) => limit === undefined || now() + d.ms <= limit).map(
        (d) => ({ name: d.label, value: d.ms as number | 'max' }),
      );
      if (limit !== undefined)
        options.push({
          name: `As late as allowed (${formatWhen(view.laterLimit!)})`,
          value: 'max',
        });
      const v = await countdownSelect({ message: 'Postpone until', status, choices: options }, ctx);
      until =
        v === 'max'
          ? view.laterLimit
          : new Date(Math.min(now() + v, limit ?? Infinity)).toISOString();
    }
    clearInterval(watch);
    const r = await postAnswer(pending, { choice, until }, 'terminal');
    say(['', r.text]);
    return r;
  } catch (e) {
    if (e instanceof Error && e.name === 'AbortPromptError' && ended) {
      say(['', ended]);
      throw new ReimageError('NOTIFICATION_NOT_PENDING', ended);
    }
    if (e instanceof Error && e.name === 'ExitPromptError')
      throw new ReimageError('CANCELLED', 'No answer was given; the question is still open.');
    throw e;
  } finally {
    clearInterval(watch);
  }
}

function stillPending(root: string, pending: PendingNotificationFile): boolean {
  try {
    return (
      readJsonFile<PendingNotificationFile>(currentNotificationPath(root))?.token === pending.token
    );
  } catch {
    return false;
  }
}
