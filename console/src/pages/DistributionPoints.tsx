import { useGet } from '../api';
import type { DistributionPoint, List, Package, Replication } from '../types';
import { Bar, fmtBytes, fmtTime, LoadState, Page, Section, Table } from '../ui';

function Replications({ dp, names }: { dp: DistributionPoint; names: Map<string, string> }) {
  const rep = useGet<List<Replication>>(
    `/api/v1/distribution-points/${encodeURIComponent(dp.id)}/distribution`,
    (e) => e.type === 'tick',
  );
  return (
    <Section title={`${dp.name} (${dp.site})`}>
      <p className="muted">
        {dp.address} · boundaries {dp.boundaries.join(', ') || '—'} · credentials{' '}
        {dp.hasCredentials ? 'set' : 'none'}
      </p>
      <div aria-live="polite">
        <LoadState loaded={rep} what="replication state">
          {(d) => (
            <Table
              caption={`Packages on ${dp.name}`}
              rows={d.items}
              rowKey={(r) => r.packageId}
              empty="No package distributed here yet."
              columns={[
                { header: 'Package', cell: (r) => names.get(r.packageId) ?? r.packageId },
                {
                  header: 'State',
                  cell: (r) => <span className={`badge rep-${r.state}`}>{r.state}</span>,
                },
                {
                  header: 'Progress',
                  cell: (r) => (
                    <>
                      <Bar
                        value={r.bytesDone}
                        max={r.bytesTotal}
                        label={`${fmtBytes(r.bytesDone)} of ${fmtBytes(r.bytesTotal)}`}
                      />{' '}
                      {fmtBytes(r.bytesDone)} / {fmtBytes(r.bytesTotal)}
                    </>
                  ),
                },
                { header: 'Source', cell: (r) => r.sourceDpName ?? 'server' },
                { header: 'Note', cell: (r) => r.error ?? r.note ?? '' },
                { header: 'Updated', cell: (r) => fmtTime(r.updatedAt) },
              ]}
            />
          )}
        </LoadState>
      </div>
    </Section>
  );
}

export function DistributionPoints() {
  const dps = useGet<List<DistributionPoint>>('/api/v1/distribution-points');
  const pkgs = useGet<List<Package>>('/api/v1/packages');
  const names = new Map((pkgs.data?.items ?? []).map((p) => [p.id, `${p.name}@${p.version}`]));
  return (
    <Page title="Distribution points">
      <LoadState loaded={dps} what="distribution points">
        {(d) =>
          d.items.length === 0 ? (
            <p className="empty">No distribution points yet.</p>
          ) : (
            <>
              {d.items.map((dp) => (
                <Replications key={dp.id} dp={dp} names={names} />
              ))}
            </>
          )
        }
      </LoadState>
    </Page>
  );
}
