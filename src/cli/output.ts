import cliProgress from 'cli-progress';
import type { Progress, Warning } from '../image/progress.js';

/** How progress is shown: a bar on a terminal, plain lines otherwise, JSON lines on request. */
export type ProgressMode = 'auto' | 'bar' | 'plain' | 'json' | 'none';

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return `${n.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

export function formatDuration(ms: number | undefined): string {
  if (ms === undefined || !Number.isFinite(ms)) return '--:--';
  const s = Math.round(ms / 1000);
  const m = Math.floor(s / 60);
  const h = Math.floor(m / 60);
  const pad = (x: number) => String(x).padStart(2, '0');
  return h > 0 ? `${h}:${pad(m % 60)}:${pad(s % 60)}` : `${pad(m)}:${pad(s % 60)}`;
}

function shorten(s: string, max: number): string {
  return s.length <= max ? s : '…' + s.slice(s.length - max + 1);
}

export interface ProgressView {
  onProgress: (p: Progress) => void;
  onWarning: (w: Warning) => void;
  stop(): void;
}

export function progressView(mode: ProgressMode, json: boolean): ProgressView {
  const resolved: ProgressMode =
    mode === 'auto' ? (json ? 'none' : process.stderr.isTTY ? 'bar' : 'plain') : mode;
  const warnings: Warning[] = [];
  const onWarningText = (w: Warning) => process.stderr.write(`warning: ${w.message}\n`);
  if (resolved === 'json') {
    return {
      onProgress: (p) => process.stderr.write(JSON.stringify({ event: 'progress', ...p }) + '\n'),
      onWarning: (w) => process.stderr.write(JSON.stringify({ event: 'warning', ...w }) + '\n'),
      stop() {},
    };
  }
  if (resolved === 'none') {
    return {
      onProgress() {},
      onWarning: (w) => (json ? warnings.push(w) : onWarningText(w)),
      stop() {},
    };
  }
  if (resolved === 'plain') {
    let last = 0;
    return {
      onProgress(p) {
        const now = Date.now();
        if (p.phase === 'data' && now - last < 2000 && p.bytesDone < p.bytesTotal) return;
        last = now;
        process.stderr.write(
          `${p.operation} ${p.phase}: ${formatBytes(p.bytesDone)} / ${formatBytes(p.bytesTotal)}, ${p.filesDone}/${p.filesTotal} files, ${formatBytes(p.rate)}/s, elapsed ${formatDuration(p.elapsedMs)}, remaining ${formatDuration(p.remainingMs)}${p.file ? `, ${p.file}` : ''}\n`,
        );
      },
      onWarning: onWarningText,
      stop() {},
    };
  }
  const bar = new cliProgress.SingleBar(
    {
      format:
        '{op} [{bar}] {percentage}% {bytesDone}/{bytesTotal} {rate}/s elapsed {elapsed} left {left} {file}',
      barsize: 20,
      hideCursor: true,
      clearOnComplete: true,
      stream: process.stderr,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    onProgress(p) {
      const payload = {
        op: `${p.operation} ${p.phase}`.padEnd(14),
        bytesDone: formatBytes(p.bytesDone),
        bytesTotal: formatBytes(p.bytesTotal),
        rate: formatBytes(p.rate),
        elapsed: formatDuration(p.elapsedMs),
        left: formatDuration(p.remainingMs),
        file: shorten(p.file ?? '', 40),
      };
      if (!started) {
        bar.start(Math.max(1, p.bytesTotal), p.bytesDone, payload);
        started = true;
      } else {
        bar.setTotal(Math.max(1, p.bytesTotal));
        bar.update(p.bytesDone, payload);
      }
    },
    onWarning(w) {
      if (started) bar.stop();
      started = false;
      onWarningText(w);
    },
    stop() {
      if (started) bar.stop();
      started = false;
    },
  };
}
