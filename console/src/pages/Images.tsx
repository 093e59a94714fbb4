import { useGet } from '../api';
import { Link } from '../router';
import type { Image, List } from '../types';
import { fmtBytes, fmtTime, LoadState, Page, Section, short, Table } from '../ui';

export function Images() {
  const images = useGet<List<Image>>('/api/v1/images');
  return (
    <Page title="Images">
      <Section title="Images in the catalog">
        <LoadState loaded={images} what="images">
          {(d) => (
            <Table
              caption="Images"
              rows={d.items}
              rowKey={(i) => i.id}
              empty="No images yet: capture one and register it (reimage image register)."
              columns={[
                { header: 'Name', cell: (i) => i.name },
                { header: 'Id', cell: (i) => <code title={i.id}>{short(i.id)}</code> },
                { header: 'Format', cell: (i) => i.format },
                { header: 'Size', cell: (i) => fmtBytes(i.size), numeric: true },
                { header: 'Stored', cell: (i) => fmtBytes(i.storedSize), numeric: true },
                {
                  header: 'Dedup',
                  numeric: true,
                  cell: (i) =>
                    i.size > 0 ? `${((1 - i.storedSize / i.size) * 100).toFixed(0)}% saved` : '—',
                },
                { header: 'Files', cell: (i) => i.fileCount.toLocaleString('en'), numeric: true },
                {
                  header: 'Properties',
                  cell: (i) =>
                    Object.entries(i.properties)
                      .filter(([, v]) => typeof v !== 'object')
                      .slice(0, 4)
                      .map(([k, v]) => `${k}: ${String(v)}`)
                      .join(', ') || '—',
                },
                {
                  header: 'Registered',
                  cell: (i) => `${fmtTime(i.registeredAt)} by ${i.registeredBy}`,
                },
                {
                  header: 'Actions',
                  cell: (i) => <Link to={`/packages/new?image=${i.id}`}>Create package</Link>,
                },
              ]}
            />
          )}
        </LoadState>
      </Section>
    </Page>
  );
}
