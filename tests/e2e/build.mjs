// Bundle the example page's script (examples/web/src/app.js) with this folder's pinned SDK into
// one IIFE, with the same options as `npm run build` in examples/web (see its package.json).
import { build } from 'esbuild';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

// Always the SDK from tests/e2e/node_modules (npm ci from this lockfile), even when a developer
// has also run `npm install` in examples/web: the suite judges the pinned version.
const pinnedSdk = {
  name: 'pinned-sdk',
  setup(builder) {
    builder.onResolve({ filter: /^@vapi-ai\/web$/ }, () => ({
      path: require.resolve('@vapi-ai/web'),
    }));
  },
};

await build({
  entryPoints: [join(here, '..', '..', 'examples', 'web', 'src', 'app.js')],
  outfile: join(here, 'build', 'app.js'),
  plugins: [pinnedSdk],
  bundle: true,
  format: 'iife',
  globalName: 'VapiExample',
  platform: 'browser',
  target: 'es2020',
  define: { 'process.env.NODE_ENV': '"production"' },
  logLevel: 'warning',
});
