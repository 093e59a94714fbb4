import { useState } from 'react';
import { qs, useGet } from '../api';
import { Link } from '../router';
import type { Advertisement, List, TrendGroup } from '../types';
import { Field, Select } from '../form';
import { Bar, LoadState, Page, Section } from '../ui';

export function TrendTable({ groups }: { groups: TrendGroup[] }) {
  if (groups.length === 0) return <p className="empty">No failure trends.</p>;
  const max = Math.max(...groups.map((g) => g.score), 0);
  return (
    <div className="table-wrap">
      <table>
        <caption className="sr-only">Failure groups by score</caption>
        <thead>
          <tr>
            <th scope="col">Failure</th>
            <th scope="col">Attribute</th>
            <th scope="col" className="num">
              Failures
            </th>
            <th scope="col" className="num">
              Machines
            </th>
            <th scope="col" className="num">
              Rate
            </th>
            <th scope="col" className="num">
              Baseline
            </th>
            <th scope="col" className="num">
              Lift
            </th>
            <th scope="col">Score</th>
            <th scope="col">Example</th>
          </tr>
        </thead>
        <tbody>
          {groups.map((g) => (
            <tr key={`${g.messageId}/${g.code ?? ''}/${g.attribute}/${g.value}`}>
              <th scope="row">
                {g.messageId}
                {g.code ? ` ${g.code}` : ''}
              </th>
              <td>
                {g.attribute} = {g.value}
              </td>
              <td className="num">{g.failures}</td>
              <td className="num">{g.machines}</td>
              <td className="num">{(g.rate * 100).toFixed(1)}%</td>
              <td className="num">{(g.baseline * 100).toFixed(1)}%</td>
              <td className="num">{g.lift.toFixed(1)}×</td>
              <td>
                <Bar value={g.score} max={max} label={`score ${g.score.toFixed(2)}`} />{' '}
                {g.score.toFixed(2)}
              </td>
              <td>
                <Link to={`/machines/${g.example.machine}#seq-${g.example.seq}`}>
                  {g.example.machine.slice(0, 8)} #{g.example.seq}
                </Link>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

export function Trends() {
  const [ad, setAd] = useState('');
  const [since, setSince] = useState('');
  const ads = useGet<List<Advertisement>>('/api/v1/advertisements');
  const trends = useGet<{ groups: TrendGroup[] }>(
    `/api/v1/status/trends${qs({ advertisement: ad, since: since ? new Date(since).toISOString() : '' })}`,
    (e) => e.type !== 'status',
  );
  return (
    <Page title="Trends">
      <form className="filters" aria-label="Filter trends" onSubmit={(e) => e.preventDefault()}>
        <Select
          label="Advertisement"
          value={ad}
          onChange={setAd}
          options={[
            { value: '', label: 'All' },
            ...(ads.data?.items ?? []).map((a) => ({ value: a.id, label: a.name })),
          ]}
        />
        <Field label="Since" type="datetime-local" value={since} onChange={setSince} />
      </form>
      <Section title="Failure groups">
        <div aria-live="polite">
          <LoadState loaded={trends} what="trends">
            {(t) => <TrendTable groups={t.groups} />}
          </LoadState>
        </div>
      </Section>
    </Page>
  );
}
