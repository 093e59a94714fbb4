import type { NotificationRequest } from './notify.js';
import { formatRemaining, formatWhen, LATER_DELAYS, type NotificationText } from './notify-text.js';

/**
 * The notification's web page: one self-contained document (inline style and script, allowed
 * by a per-response CSP nonce; nothing loaded from elsewhere). Every text from the policy —
 * the administrator's message above all — goes through {@link escapeHtml}; the script sets
 * only textContent. Without script the page still shows every text, just not the buttons' effect.
 */

/** Escapes text for HTML element content and quoted attribute values. */
export function escapeHtml(s: string): string {
  return s.replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!,
  );
}

export interface PageInput {
  req: NotificationRequest;
  token: string;
  nonce: string;
  serverNow: string;
  laterLimit?: string;
  text: NotificationText;
}

const STYLE = `
:root { color-scheme: light dark; --accent: #0b57d0; }
body { font: 1.05rem/1.5 system-ui, sans-serif; margin: 0; padding: 2rem 1rem; }
main { max-width: 40rem; margin: 0 auto; }
h1 { font-size: 1.5rem; margin: 0 0 1rem; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 0; }
.message { white-space: pre-wrap; border-left: 4px solid var(--accent); padding: .5rem 1rem; margin: 1rem 0; }
.countdown { font-size: 1.3rem; font-variant-numeric: tabular-nums; }
.actions { display: flex; flex-wrap: wrap; gap: .75rem; align-items: end; margin: 1.5rem 0; }
.later { display: flex; flex-direction: column; gap: .25rem; }
button, select { font: inherit; padding: .5rem 1rem; border-radius: .4rem; }
button { border: 2px solid var(--accent); background: var(--accent); color: #fff; cursor: pointer; }
button.secondary { background: transparent; color: inherit; }
button:disabled { opacity: .5; cursor: default; }
button:focus-visible, select:focus-visible { outline: 3px solid var(--accent); outline-offset: 2px; }
.error { color: #b3261e; font-weight: bold; }
.result { font-weight: bold; }
`;

// Runs in the browser. Reads its data from the page's data- attributes; writes only
// textContent. Counts on the agent's clock (serverNow) so that the page and the agent agree.
const SCRIPT = `
(() => {
  'use strict';
  const root = document.getElementById('notification');
  const d = root.dataset;
  const offset = Date.parse(d.serverNow) - Date.now();
  const now = () => Date.now() + offset;
  const ends = Date.parse(d.ends);
  const limit = d.laterLimit ? Date.parse(d.laterLimit) : undefined;
  const countdown = document.getElementById('countdown');
  const result = document.getElementById('result');
  const error = document.getElementById('error');
  const delay = document.getElementById('delay');
  const buttons = Array.from(document.querySelectorAll('button[data-choice]'));
  let done = false;
  const two = (n) => String(n).padStart(2, '0');
  const left = (ms) => {
    const s = Math.max(0, Math.ceil(ms / 1000));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h > 0 ? h + ' h ' + two(m) + ' min ' + two(sec) + ' s' : m > 0 ? m + ' min ' + two(sec) + ' s' : sec + ' s';
  };
  const finish = (text) => {
    done = true;
    for (const b of buttons) b.disabled = true;
    if (delay) delay.disabled = true;
    result.textContent = text;
  };
  const refreshDelays = () => {
    if (!delay) return;
    for (const o of delay.options) {
      if (o.value === 'max') continue;
      o.disabled = limit !== undefined && now() + Number(o.value) > limit;
    }
    if (delay.selectedOptions[0] && delay.selectedOptions[0].disabled) delay.value = 'max';
  };
  const tick = () => {
    if (done) return;
    const ms = ends - now();
    countdown.textContent = left(ms);
    refreshDelays();
    if (ms <= 0) finish('Time is up. ' + d.noAnswer);
    else setTimeout(tick, 1000 - (now() % 1000) + 5);
  };
  const answer = async (choice) => {
    if (done) return;
    error.textContent = '';
    const body = { token: d.token, choice, by: 'web' };
    if (choice === 'later') {
      const v = delay.value;
      body.until = v === 'max' ? d.laterLimit : new Date(Math.min(now() + Number(v), limit === undefined ? Infinity : limit)).toISOString();
    }
    for (const b of buttons) b.disabled = true;
    try {
      const r = await fetch('/api/answer', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const j = await r.json();
      if (r.ok) return finish(j.text);
      error.textContent = (j.error && j.error.message) || 'The answer was refused (HTTP ' + r.status + ').';
      if (j.error && j.error.code === 'NOTIFICATION_ALREADY_ANSWERED') return finish('This notification was already answered.');
    } catch (e) {
      error.textContent = 'The agent did not answer: the notification may have ended.';
    }
    if (!done) for (const b of buttons) b.disabled = false;
  };
  for (const b of buttons) b.addEventListener('click', () => answer(b.dataset.choice));
  tick();
})();
`;

/** The page for one notification; `nonce` must match the response's Content-Security-Policy. */
export function renderNotificationPage(p: PageInput): string {
  const { req, text } = p;
  const e = escapeHtml;
  const when = (iso: string) => `<time datetime="${e(iso)}">${e(formatWhen(iso))}</time>`;
  const later = req.buttons.later
    ? `<div class="later">
        <label for="delay">Postpone until</label>
        <select id="delay">
          ${(p.laterLimit === undefined
            ? LATER_DELAYS
            : LATER_DELAYS.filter(
                (o) => Date.parse(p.serverNow) + o.ms <= Date.parse(p.laterLimit!),
              )
          )
            .map((o) => `<option value="${o.ms}">${e(o.label)}</option>`)
            .join('')}
          ${p.laterLimit ? `<option value="max" selected>As late as allowed (${e(formatWhen(p.laterLimit))})</option>` : ''}
        </select>
        <button type="button" data-choice="later" class="secondary">Install later</button>
      </div>`
    : '';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>${e(text.title)}</title>
<style nonce="${e(p.nonce)}">${STYLE}</style>
</head>
<body>
<main id="notification" data-token="${e(p.token)}" data-ends="${e(req.countdownEndsAt)}" data-server-now="${e(p.serverNow)}" data-later-limit="${e(p.laterLimit ?? '')}" data-no-answer="${e(text.noAnswer)}">
  <h1>${e(text.title)}</h1>
  <p id="intro">${e(text.intro)}</p>
  ${text.message !== undefined ? `<section aria-labelledby="message-title"><h2 id="message-title">Message from your administrator</h2><p class="message" id="message">${e(text.message)}</p></section>` : ''}
  ${req.kind === 'pre' && req.startsAt ? `<p>The installation starts at ${when(req.startsAt)}.</p>` : ''}
  ${text.facts.map((f) => `<p>${e(f)}</p>`).join('\n  ')}
  <p class="countdown">Time left to answer: <span id="countdown" role="timer">${e(formatRemaining(Date.parse(req.countdownEndsAt) - Date.parse(p.serverNow)))}</span></p>
  <p>${e(text.noAnswer)}</p>
  <div class="actions" role="group" aria-label="Your answer">
    ${req.buttons.now ? '<button type="button" data-choice="now">Install now</button>' : ''}
    ${later}
    ${req.buttons.decline ? '<button type="button" data-choice="decline" class="secondary">Decline</button>' : ''}
  </div>
  <p class="error" id="error" role="alert"></p>
  <p class="result" id="result" role="status" aria-live="polite"></p>
</main>
<script nonce="${e(p.nonce)}">${SCRIPT}</script>
</body>
</html>
`;
}
