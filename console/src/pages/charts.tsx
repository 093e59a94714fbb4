/** The status chart shared by the dashboard and the advertisement page (recharts). */
import {
  Area,
  AreaChart,
  CartesianGrid,
  Legend,
  ResponsiveContainer,
  Tooltip,
  XAxis,
  YAxis,
} from 'recharts';
import type { Counts } from '../types';

const series: { key: keyof Counts; label: string; color: string }[] = [
  { key: 'succeeded', label: 'Succeeded', color: '#1a7f37' },
  { key: 'failed', label: 'Failed', color: '#c62828' },
  { key: 'phase1', label: 'Phase 1', color: '#6a8fd6' },
  { key: 'phase2', label: 'Phase 2', color: '#3f6bc4' },
  { key: 'phase3', label: 'Phase 3', color: '#254a96' },
  { key: 'postponed', label: 'Postponed', color: '#b7791f' },
];

export function StatusChart({
  data,
  title,
}: {
  data: ({ time: string } & Partial<Counts>)[];
  title: string;
}) {
  if (data.length === 0) return <p className="empty">No status over time yet.</p>;
  const rows = data.map((d) => ({ ...d, label: d.time.slice(11, 16) }));
  const last = data[data.length - 1]!;
  return (
    <figure className="chart">
      <div className="chart-box" aria-hidden="true">
        <ResponsiveContainer width="100%" height={240}>
          <AreaChart data={rows} margin={{ top: 8, right: 16, bottom: 0, left: 0 }}>
            <CartesianGrid strokeDasharray="3 3" />
            <XAxis dataKey="label" />
            <YAxis allowDecimals={false} />
            <Tooltip />
            <Legend />
            {series.map((s) => (
              <Area
                key={s.key}
                type="stepAfter"
                dataKey={s.key}
                name={s.label}
                stackId="1"
                stroke={s.color}
                fill={s.color}
                fillOpacity={0.5}
                isAnimationActive={false}
              />
            ))}
          </AreaChart>
        </ResponsiveContainer>
      </div>
      <figcaption>
        {title}: at {last.time.replace('T', ' ')},{' '}
        {series.map((s) => `${s.label.toLowerCase()} ${last[s.key] ?? 0}`).join(', ')}.
      </figcaption>
    </figure>
  );
}
