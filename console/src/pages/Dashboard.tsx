import { useGet } from '../api';
import { stateLabel } from '../derive';
import { Link } from '../router';
import { useAdvertisementStatus, useFleet } from '../status';
import { countKeys, type Advertisement, type List } from '../types';
import { LoadState, Page, Section, Table } from '../ui';
import { StatusChart } from './charts';
import { TrendTable } from './Trends';

function AdRow({ ad }: { ad: Advertisement }) {
  const s = useAdvertisementStatus(ad);
  const c = s.summary?.counts;
  const inFlight = c ? c.phase1 + c.phase2 + c.phase3 : 0;
  return (
    <tr>
      <th scope="row">
        <Link to={`/advertisements/${ad.id}`}>{ad.name}</Link>
      </th>
      <td>{ad.enabled ? 'enabled' : 'disabled'}</td>
      <td className="num">{c ? c.waiting + c.notified + c.postponed : '—'}</td>
      <td className="num">{c ? inFlight : '—'}</td>
      <td className="num">{c ? c.succeeded : '—'}</td>
      <td className="num">{c ? c.failed + c.rolledBack : '—'}</td>
    </tr>
  );
}

export function Dashboard() {
  const ads = useGet<List<Advertisement>>('/api/v1/advertisements', (e) => e.type === 'tick');
  const fleet = useFleet();
  return (
    <Page title="Dashboard">
      <Section title="Deployments now">
        <LoadState loaded={ads} what="advertisements">
          {(d) =>
            d.items.length === 0 ? (
              <p className="empty">
                No advertisements yet. <Link to="/advertisements/new">Create one</Link>.
              </p>
            ) : (
              <div className="table-wrap" aria-live="polite">
                <table>
                  <caption className="sr-only">Deployments by advertisement</caption>
                  <thead>
                    <tr>
                      <th scope="col">Advertisement</th>
                      <th scope="col">State</th>
                      <th scope="col" className="num">
                        Waiting
                      </th>
                      <th scope="col" className="num">
                        In progress
                      </th>
                      <th scope="col" className="num">
                        Succeeded
                      </th>
                      <th scope="col" className="num">
                        Failed
                      </th>
                    </tr>
                  </thead>
                  <tbody>
                    {d.items.map((ad) => (
                      <AdRow key={ad.id} ad={ad} />
                    ))}
                  </tbody>
                </table>
              </div>
            )
          }
        </LoadState>
      </Section>
      <Section title="Fleet">
        <LoadState loaded={fleet} what="fleet status">
          {(f) => (
            <>
              <Table
                caption="Machines by state now"
                columns={[
                  { header: 'State', cell: (k: (typeof countKeys)[number]) => stateLabel[k] },
                  { header: 'Machines', cell: (k) => f.now[k] ?? 0, numeric: true },
                ]}
                rows={countKeys.filter((k) => (f.now[k] ?? 0) > 0)}
                rowKey={(k) => k}
                empty="No machine has reported a deployment yet."
              />
              <StatusChart data={f.overTime} title="Success and failure over time" />
            </>
          )}
        </LoadState>
      </Section>
      <Section title="Top trends">
        {fleet.fromServer && fleet.data ? (
          <TrendTable groups={fleet.data.topTrends} />
        ) : (
          <p className="empty">No trends yet.</p>
        )}
      </Section>
    </Page>
  );
}
