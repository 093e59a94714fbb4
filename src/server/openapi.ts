import { randomBytes } from 'node:crypto';
import { Catalog } from '../catalog/catalog.js';
import { openCatalogDb } from '../catalog/db.js';
import { migrateToLatest } from '../catalog/migrations.js';
import { createServer } from './app.js';
import { SecretBox } from './secret-box.js';

/** The OpenAPI document of the management API, generated from the route schemas (`docs/openapi.json`). */
export async function renderOpenApi(): Promise<string> {
  const db = openCatalogDb(':memory:');
  try {
    await migrateToLatest(db);
    const app = await createServer({
      catalog: new Catalog(db),
      secrets: SecretBox.fromKey(randomBytes(32)),
    });
    await app.ready();
    const doc = app.swagger();
    await app.close();
    return JSON.stringify(doc, null, 2) + '\n';
  } finally {
    await db.close();
  }
}
