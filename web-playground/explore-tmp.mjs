import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true,
  args: ['--no-sandbox','--disable-gpu','--disable-quic','--no-first-run','--disable-background-networking','--disable-component-update','--disable-sync'] });
console.log('version', browser.version());
const ctx = await browser.newContext();
const page = await ctx.newPage();
page.on('console', m => console.log('console:', m.text()));
page.on('requestfailed', r => console.log('failed', r.url()));
await page.goto('http://127.0.0.1:18555/playground');
await page.waitForSelector('.graphiql-query-editor .CodeMirror', {timeout: 15000});
const info = await page.evaluate(() => {
  const cms = [...document.querySelectorAll('.CodeMirror')].map(e => ({cls: e.parentElement.className, hasCM: !!e.CodeMirror}));
  const btns = [...document.querySelectorAll('button')].map(b => b.className + '|' + b.getAttribute('aria-label'));
  return {cms, btns};
});
console.log(JSON.stringify(info, null, 1));
await browser.close();
