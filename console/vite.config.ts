import { fileURLToPath } from 'node:url';
import react from '@vitejs/plugin-react';
import { defineConfig } from 'vite';

const here = fileURLToPath(new URL('.', import.meta.url));

// The console is a static single-page app that `reimage server` serves at `/` from dist/console.
export default defineConfig({
  root: here,
  base: '/',
  plugins: [react()],
  build: {
    outDir: fileURLToPath(new URL('../dist/console', import.meta.url)),
    emptyOutDir: true,
    sourcemap: false,
    chunkSizeWarningLimit: 1200,
    // No inline scripts or styles (the server's CSP forbids inline scripts).
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
  server: {
    // `npx vite --config console/vite.config.ts` during development: the API of a local server.
    proxy: { '/api': process.env.REIMAGE_SERVER ?? 'http://127.0.0.1:8443' },
  },
});
