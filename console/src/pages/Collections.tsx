import { useState } from 'react';
import { useGet } from '../api';
import { Link } from '../router';
import type { Collection, List, Machine } from '../types';
import { LoadState, Page, Section, Table } from '../ui';

function Members({ c }: { c: Collection }) {
  const m = useGet<List<Machine>>(`/api/v1/collections/${encodeURIComponent(c.id)}/members`);
  return (
    <Section title={`Members of ${c.name}`}>
      <LoadState loaded={m} what="members">
        {(d) => (
          <Table
            caption={`Members of ${c.name}`}
            rows={d.items}
            rowKey={(x) => x.id}
            empty="No machine matches this collection."
            columns={[
              { header: 'Machine', cell: (x) => <Link to={`/machines/${x.id}`}>{x.name}</Link> },
              { header: 'Site', cell: (x) => x.site ?? '—' },
              {
                header: 'OS',
                cell: (x) =>
                  `${String(x.inventory.os ?? '')} ${String(x.inventory.osVersion ?? '')}`,
              },
            ]}
          />
        )}
      </LoadState>
    </Section>
  );
}

export function Collections() {
  const cols = useGet<List<Collection>>('/api/v1/collections');
  const [open, setOpen] = useState<string | null>(null);
  const chosen = cols.data?.items.find((c) => c.id === open);
  return (
    <Page title="Collections">
      <Section title="Collections">
        <LoadState loaded={cols} what="collections">
          {(d) => (
            <Table
              caption="Collections"
              rows={d.items}
              rowKey={(c) => c.id}
              empty="No collections yet."
              columns={[
                { header: 'Name', cell: (c) => c.name },
                { header: 'Rule', cell: (c) => (c.rule ? <code>{c.rule}</code> : '—') },
                { header: 'Include', cell: (c) => c.include.join(', ') || '—' },
                { header: 'Exclude', cell: (c) => c.exclude.join(', ') || '—' },
                { header: 'Description', cell: (c) => c.description },
                {
                  header: 'Members',
                  cell: (c) => (
                    <button
                      type="button"
                      className="link"
                      aria-pressed={open === c.id}
                      onClick={() => setOpen(open === c.id ? null : c.id)}
                    >
                      {open === c.id ? 'Hide members' : 'Show members'}
                    </button>
                  ),
                },
              ]}
            />
          )}
        </LoadState>
      </Section>
      {chosen ? <Members c={chosen} /> : null}
    </Page>
  );
}
