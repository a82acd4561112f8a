// Bundles src/main.jsx into dist/playground.js and dist/playground.css.
// dist/index.html is a static file kept in git; it is not generated.
import * as esbuild from 'esbuild';
import { readFileSync } from 'node:fs';

// Refuse to build output that would fetch from a remote host at runtime
// (CSS @import / url() pointing at http(s)://...).
function checkCssOffline(path) {
  const css = readFileSync(path, 'utf8');
  const bad = css.match(/(@import\s+(url\()?\s*["']?|url\(\s*["']?)(https?:)?\/\/[^)"'\s]+/gi);
  if (bad) {
    throw new Error(`${path} references remote resources:\n  ${bad.join('\n  ')}`);
  }
}

await esbuild.build({
  entryPoints: { playground: 'src/main.jsx' },
  outdir: 'dist',
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  jsx: 'automatic',
  define: { 'process.env.NODE_ENV': '"production"' },
  loader: {
    '.css': 'css',
    '.woff': 'dataurl',
    '.woff2': 'dataurl',
    '.ttf': 'dataurl',
    '.svg': 'dataurl',
    '.png': 'dataurl',
  },
  legalComments: 'none',
  sourcemap: false,
  logLevel: 'info',
});

checkCssOffline('dist/playground.css');
console.log('css offline check: ok');
