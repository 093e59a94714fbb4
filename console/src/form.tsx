/**
 * The console's form pieces: labelled inputs whose problems are tied to them (aria-describedby),
 * a form that focuses the first problem after a refused submit, write-only secrets, secrets shown
 * once, and deletes that ask first. Every create/edit page builds on these.
 */
import {
  useEffect,
  useId,
  useRef,
  useState,
  type FormEvent,
  type ReactNode,
  type RefObject,
} from 'react';
import { ApiError, type Problem } from './api';
import { ErrorBox } from './ui';

/** Label, hint and problems around one control; `children` gets the control's id and describedby. */
export function FieldFrame({
  label,
  hint,
  problems = [],
  className,
  children,
}: {
  label: string;
  hint?: ReactNode;
  problems?: ReactNode[];
  className?: string;
  children: (a: { id: string; describedBy: string | undefined; invalid: boolean }) => ReactNode;
}) {
  const id = useId();
  const invalid = problems.length > 0;
  const describedBy =
    [hint ? `${id}-hint` : '', invalid ? `${id}-err` : ''].filter(Boolean).join(' ') || undefined;
  return (
    <div className={`field${invalid ? ' invalid' : ''}${className ? ` ${className}` : ''}`}>
      <label htmlFor={id}>{label}</label>
      {children({ id, describedBy, invalid })}
      {hint ? (
        <small id={`${id}-hint`} className="hint">
          {hint}
        </small>
      ) : null}
      {invalid ? (
        <ul id={`${id}-err`} className="problems">
          {problems.map((p, i) => (
            <li key={typeof p === 'string' ? p : i}>{p}</li>
          ))}
        </ul>
      ) : null}
    </div>
  );
}

/** A labelled input with its problems (from the checks as you type and from the server). */
export function Field({
  label,
  value,
  onChange,
  problems,
  type = 'text',
  hint,
  required,
  placeholder,
  name,
  autoComplete,
  disabled,
  inputMode,
}: {
  label: string;
  value: string;
  onChange: (v: string) => void;
  problems?: ReactNode[];
  type?: string;
  hint?: ReactNode;
  required?: boolean;
  placeholder?: string;
  name?: string;
  autoComplete?: string;
  disabled?: boolean;
  inputMode?: 'numeric' | 'text';
}) {
  return (
    <FieldFrame label={label} hint={hint} problems={problems}>
      {({ id, describedBy, invalid }) => (
        <input
          id={id}
          name={name}
          type={type}
          value={value}
          placeholder={placeholder}
          required={required}
          disabled={disabled}
          inputMode={inputMode}
          autoComplete={autoComplete ?? 'off'}
          aria-invalid={invalid}
          aria-describedby={describedBy}
          onChange={(e) => onChange(e.target.value)}
        />
      )}
    </FieldFrame>
  );
}

/** A labelled textarea (one item a line, rules, JSON). */
export function TextArea({
  label,
  value,
  onChange,
  problems,
  hint,
  rows = 3,
  code,
  name,
}: {
  label: string;
  value: string;
  onChange: (v: string) => void;
  problems?: ReactNode[];
  hint?: ReactNode;
  rows?: number;
  code?: boolean;
  name?: string;
}) {
  return (
    <FieldFrame label={label} hint={hint} problems={problems}>
      {({ id, describedBy, invalid }) => (
        <textarea
          id={id}
          name={name}
          rows={rows}
          value={value}
          className={code ? 'code' : undefined}
          spellCheck={code ? false : undefined}
          aria-invalid={invalid}
          aria-describedby={describedBy}
          onChange={(e) => onChange(e.target.value)}
        />
      )}
    </FieldFrame>
  );
}

export function Select({
  label,
  value,
  onChange,
  options,
  problems,
  hint,
  name,
}: {
  label: string;
  value: string;
  onChange: (v: string) => void;
  options: { value: string; label: string }[];
  problems?: ReactNode[];
  hint?: ReactNode;
  name?: string;
}) {
  return (
    <FieldFrame label={label} hint={hint} problems={problems}>
      {({ id, describedBy, invalid }) => (
        <select
          id={id}
          name={name}
          value={value}
          aria-invalid={invalid}
          aria-describedby={describedBy}
          onChange={(e) => onChange(e.target.value)}
        >
          {options.map((o) => (
            <option key={o.value} value={o.value}>
              {o.label}
            </option>
          ))}
        </select>
      )}
    </FieldFrame>
  );
}

export function Check({
  label,
  checked,
  onChange,
  name,
}: {
  label: string;
  checked: boolean;
  onChange: (v: boolean) => void;
  name?: string;
}) {
  const id = useId();
  return (
    <div className="field check">
      <input
        id={id}
        name={name}
        type="checkbox"
        checked={checked}
        onChange={(e) => onChange(e.target.checked)}
      />
      <label htmlFor={id}>{label}</label>
    </div>
  );
}

/**
 * A write-only secret: the stored value is never shown; empty keeps it. The label says whether
 * one is stored, so the user knows what "leave empty" means.
 */
export function SecretField({
  label,
  value,
  onChange,
  stored,
  problems,
  hint,
}: {
  label: string;
  value: string;
  onChange: (v: string) => void;
  stored: boolean;
  problems?: ReactNode[];
  hint?: ReactNode;
}) {
  return (
    <Field
      label={`${label} (${stored ? 'set' : 'not set'})`}
      type="password"
      autoComplete="new-password"
      value={value}
      onChange={onChange}
      problems={problems}
      placeholder={stored ? 'leave empty to keep' : ''}
      hint={hint}
    />
  );
}

/** Focuses the first control marked invalid in `form`, else its error box. */
function focusFirstProblem(form: HTMLFormElement | null): void {
  const bad = form?.querySelector<HTMLElement>('[aria-invalid="true"], [role="alert"]');
  if (!bad) return;
  if (bad.getAttribute('role') === 'alert') bad.tabIndex = -1;
  bad.focus();
}

/**
 * A form with a submit button, a status line and the server's error. `onSubmit` answers true
 * when it saved; on false or an error, the first problem gets the focus.
 */
export function Form({
  label,
  submitLabel,
  onSubmit,
  status,
  error,
  children,
  actions,
  formRef,
}: {
  label: string;
  submitLabel: string;
  onSubmit: () => Promise<boolean>;
  status?: ReactNode;
  error?: Error | null;
  children: ReactNode;
  /** More buttons beside the submit button. */
  actions?: ReactNode;
  formRef?: RefObject<HTMLFormElement | null>;
}) {
  const own = useRef<HTMLFormElement>(null);
  const ref = formRef ?? own;
  const [busy, setBusy] = useState(false);
  const [refused, setRefused] = useState(0);
  useEffect(() => {
    if (refused) focusFirstProblem(ref.current);
  }, [refused, ref]);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (busy) return;
    setBusy(true);
    let ok = false;
    try {
      ok = await onSubmit();
    } finally {
      setBusy(false);
      if (!ok) setRefused((n) => n + 1);
    }
  };
  return (
    <form ref={ref} onSubmit={(e) => void submit(e)} aria-label={label} noValidate>
      {children}
      <div className="actions">
        <button type="submit" disabled={busy}>
          {submitLabel}
        </button>
        {actions}
        <div aria-live="polite" className="status-line">
          {status}
        </div>
      </div>
      {error ? <ErrorBox error={error} /> : null}
    </form>
  );
}

/**
 * Problems by path: `/a/b` → messages. Server paths such as `body/schedule/waves` are normalised,
 * and a `details.path` error (REFERENCE_UNKNOWN) lands on its field.
 */
export function byPath(problems: Problem[]): Map<string, string[]> {
  const m = new Map<string, string[]>();
  for (const p of problems) {
    const path = `/${(p.path ?? '').replace(/^\/?body\/?/, '').replace(/^\//, '')}`;
    const msg =
      p.message ??
      (p.expected !== undefined ? `expected ${JSON.stringify(p.expected)}` : 'is not valid');
    m.set(path, [...(m.get(path) ?? []), msg]);
  }
  return m;
}

/** The server's problems of a failed save, by path (empty when the error is not the API's). */
export const serverProblems = (e: unknown) =>
  e instanceof ApiError ? byPath(e.problems) : new Map<string, string[]>();

/** A secret the server shows once: displayed until dismissed, with a copy button. */
export function ShownOnce({
  what,
  secret,
  onDone,
  children,
}: {
  what: string;
  secret: string;
  onDone: () => void;
  children?: ReactNode;
}) {
  const hid = useId();
  const [copied, setCopied] = useState(false);
  const ref = useRef<HTMLDivElement>(null);
  useEffect(() => ref.current?.focus(), []);
  return (
    <div className="once" role="region" aria-labelledby={hid} tabIndex={-1} ref={ref}>
      <h3 id={hid}>New {what}: shown once</h3>
      <p>Copy it now; the server keeps only its hash and cannot show it again.</p>
      <p>
        <code className="secret" aria-label={`The new ${what}`}>
          {secret}
        </code>
      </p>
      {children}
      <div className="actions">
        <button
          type="button"
          onClick={() =>
            void navigator.clipboard?.writeText(secret).then(
              () => setCopied(true),
              () => setCopied(false),
            )
          }
        >
          Copy
        </button>
        <button type="button" className="link" onClick={onDone}>
          I have stored it
        </button>
        <span aria-live="polite" className="status-line">
          {copied ? 'Copied.' : ''}
        </span>
      </div>
    </div>
  );
}

/**
 * A delete (or revoke) that asks first, in the page rather than in a dialog box: the first
 * button shows the question with the confirming button focused; Cancel puts focus back.
 */
export function ConfirmButton({
  label,
  text,
  question,
  confirmLabel,
  onConfirm,
}: {
  /** The button's accessible name, e.g. "Revoke token nightly". */
  label: string;
  /** Its visible text when shorter than `label` (a table column of "Revoke" buttons). */
  text?: string;
  question: string;
  confirmLabel: string;
  onConfirm: () => Promise<void>;
}) {
  const [asking, setAsking] = useState(false);
  const [error, setError] = useState<Error | null>(null);
  const [busy, setBusy] = useState(false);
  const yes = useRef<HTMLButtonElement>(null);
  const first = useRef<HTMLButtonElement>(null);
  const wasAsking = useRef(false);
  useEffect(() => {
    if (asking) yes.current?.focus();
    else if (wasAsking.current) first.current?.focus();
    wasAsking.current = asking;
  }, [asking]);
  if (!asking)
    return (
      <button
        type="button"
        className="danger"
        ref={first}
        aria-label={text ? label : undefined}
        onClick={() => setAsking(true)}
      >
        {text ?? label}
      </button>
    );
  return (
    <div className="confirm" role="group" aria-label={question}>
      <span>{question}</span>
      <button
        type="button"
        className="danger"
        ref={yes}
        disabled={busy}
        onClick={() => {
          setBusy(true);
          setError(null);
          onConfirm().then(
            () => setBusy(false),
            (e: Error) => {
              setBusy(false);
              setError(e);
            },
          );
        }}
      >
        {confirmLabel}
      </button>
      <button type="button" className="link" onClick={() => setAsking(false)}>
        Cancel
      </button>
      {error ? <ErrorBox error={error} /> : null}
    </div>
  );
}

/** Lines of a textarea (or commas), trimmed, without empties. */
export const listOf = (text: string) =>
  text
    .split(/[\n,]/)
    .map((s) => s.trim())
    .filter(Boolean);

/** The API's patterns, with the same words its `title`s use. */
export const patterns = {
  name: {
    re: /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/,
    message:
      'must be a name of 1-128 letters, digits, ".", "_" or "-", starting with a letter or digit',
  },
  site: {
    re: /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/,
    message: 'must be a site code of 1-64 letters, digits, ".", "_" or "-"',
  },
  clock: {
    re: /^([01][0-9]|2[0-3]):[0-5][0-9]$/,
    message: 'must be a time of day as HH:MM (00:00-23:59)',
  },
};

/** An integer in [min, max] typed as text; undefined when empty. */
export function intProblem(text: string, min: number, max: number): string | undefined {
  if (!text.trim()) return undefined;
  if (!/^\d+$/.test(text.trim())) return 'must be a whole number';
  const n = Number(text);
  if (n < min) return `must be ≥ ${min}`;
  if (n > max) return `must be ≤ ${max}`;
  return undefined;
}
