// Bundle the example page's script (examples/web/src/app.js) with the pinned SDK from this
// folder's node_modules into one IIFE, exactly as `npm run build` in examples/web does.
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

await build({
  entryPoints: [join(here, '..', '..', 'examples', 'web', 'src', 'app.js')],
  outfile: join(here, 'build', 'app.js'),
  // Resolve '@vapi-ai/web' from tests/e2e/node_modules (npm ci here), not examples/web's.
  nodePaths: [join(here, 'node_modules')],
  bundle: true,
  format: 'iife',
  globalName: 'VapiExample',
  platform: 'browser',
  target: 'es2020',
  define: { 'process.env.NODE_ENV': '"production"' },
  logLevel: 'warning',
});
