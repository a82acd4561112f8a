// End-to-end check of the offline GraphiQL playground in headless Chromium.
//
// Usage: node web-playground/e2e/playground.mjs <baseUrl> <workflowId> <screenshotPath>
//
// Opens <baseUrl>/playground in a fresh browser profile (fresh localStorage), replaces the query editor's
// content with a `workflowEvents` subscription for <workflowId> (then prettifies it), presses the run button
// and watches the result pane until it has shown TASK_STARTED and, in a later rendering, WORKFLOW_COMPLETED.
// The pane must have updated live: polls saw at least two different texts, and at least once it showed an
// event for >= 250 ms before the next one replaced it (a finished workflow's replayed history arrives in one
// burst and fails this check). Any request to a host other than <baseUrl>'s fails the run: the playground
// must work with no network. Writes a full-page screenshot to <screenshotPath> (also on most failures).
//
// Prints "[playground-e2e] SUBSCRIBED: ..." once the pane shows the first event, so a caller can hold the
// workflow back until then (tests/tests/playground.rs starts the worker at that line), and the event types
// observed. Uses the system Chromium (CHROMIUM env var, default /usr/bin/chromium) through playwright-core;
// it never downloads a browser. Exit code 0 on success; 1 (2 for bad usage) with a message on stderr.

import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parse, print } from 'graphql';
import { chromium } from 'playwright-core';

const [baseArg, workflowId, screenshotPath] = process.argv.slice(2);
if (!baseArg || !workflowId || !screenshotPath) {
  console.error('usage: node web-playground/e2e/playground.mjs <baseUrl> <workflowId> <screenshotPath>');
  process.exit(2);
}
const base = baseArg.replace(/\/+$/, '');
const origin = new URL(base).origin;
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const RESULT_TIMEOUT_MS = 30_000;
const OVERALL_TIMEOUT_MS = 90_000;
// A live update: the pane showed one event for at least this long before the next one replaced it (a replayed
// history arrives in one burst). Workflows watched by this script need tasks longer than that.
const LIVE_GAP_MS = 250;

const QUERY = `subscription { workflowEvents(workflowId: "${workflowId}") { sequence type taskKey } }`;

const log = (...args) => console.log('[playground-e2e]', ...args);

class Failure extends Error {}
const fail = (msg) => {
  throw new Failure(msg);
};

// Never hang a test run: hard stop after OVERALL_TIMEOUT_MS.
const watchdog = setTimeout(() => {
  console.error(`[playground-e2e] FAILED: gave up after ${OVERALL_TIMEOUT_MS / 1000} s`);
  process.exit(1);
}, OVERALL_TIMEOUT_MS);
watchdog.unref();

const profile = mkdtempSync(join(tmpdir(), 'taskorch-playground-chromium-'));
let context;
let page;
let screenshotTaken = false;
const screenshot = async () => {
  mkdirSync(dirname(screenshotPath), { recursive: true });
  await page.screenshot({ path: screenshotPath, fullPage: true });
  screenshotTaken = true;
  log(`screenshot: ${screenshotPath}`);
};
// GraphiQL's run button is an operation-picker menu while its React state still holds several operations (the
// default document has two); that state follows the editor a render after CodeMirror's own parse. A click in that
// window opens the menu and runs nothing. So: wait for the plain run button, click it, and click again (at most
// three times) if the result pane has not changed within 3 s — the login mutation is idempotent and a subscription
// that started shows its replayed first events at once.
const RUN_BUTTON = 'button.graphiql-execute-button:not([aria-haspopup])';
const resultText = () => page.evaluate(() => document.querySelector('.result-window .CodeMirror').CodeMirror.getValue());
const run = async (what) => {
  const before = await resultText();
  for (let attempt = 1; attempt <= 3; attempt++) {
    await page
      .click(RUN_BUTTON, { timeout: 5_000 })
      .catch(() => fail(`no GraphiQL run button (${RUN_BUTTON}) to run ${what}`));
    const changed = (timeout) =>
      page
        .waitForFunction(
          (b) => document.querySelector('.result-window .CodeMirror').CodeMirror.getValue() !== b,
          before,
          { timeout },
        )
        .then(() => true)
        .catch(() => false);
    if (await changed(3_000)) return;
    // Still running (the button turned into "Stop query"): wait for its answer rather than stopping it.
    const running = await page.evaluate(() =>
      (document.querySelector('button.graphiql-execute-button')?.getAttribute('aria-label') ?? '').startsWith('Stop'),
    );
    if (running && (await changed(15_000))) return;
    await page.keyboard.press('Escape'); // close the operation picker if the click opened it
    log(`running ${what}: the result pane did not change after click ${attempt}; clicking again`);
  }
  fail(`running ${what} in the playground changed nothing in the result pane after three clicks`);
};
const remoteRequests = [];
const pageErrors = [];
const badResponses = [];

try {
  // A persistent context on a brand-new profile directory: fresh localStorage, no cached GraphiQL tabs.
  context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    viewport: { width: 1800, height: 900 },
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });

  // Offline guarantee: only the server under test may be contacted.
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (url.startsWith('data:') || url.startsWith('blob:') || new URL(url).origin === origin) {
      return route.continue();
    }
    remoteRequests.push(url);
    return route.abort();
  });

  page = context.pages()[0] ?? (await context.newPage());
  const version = await context
    .newCDPSession(page)
    .then((cdp) => cdp.send('Browser.getVersion'))
    .then((v) => v.product)
    .catch(() => 'version unknown');
  log(`browser: ${version} (${executablePath})`);
  page.on('pageerror', (err) => pageErrors.push(String(err)));
  page.on('response', (res) => {
    if (res.status() >= 400) badResponses.push(`${res.status()} ${res.url()}`);
  });

  const resp = await page.goto(`${base}/playground`, { waitUntil: 'load', timeout: 20_000 });
  if (!resp || !resp.ok()) fail(`GET ${base}/playground answered ${resp ? resp.status() : 'nothing'}`);

  // GraphiQL 4 (@graphiql/react 0.x) uses CodeMirror 5: the query editor is `.graphiql-query-editor .CodeMirror`
  // and the result pane `.result-window .CodeMirror`; both DOM nodes carry their CodeMirror instance.
  const editorSel = '.graphiql-query-editor .CodeMirror';
  await page
    .waitForSelector(editorSel, { state: 'visible', timeout: 20_000 })
    .catch(() => fail(`the GraphiQL query editor (${editorSel}) did not appear`));
  await page
    .waitForFunction(() => !!document.querySelector('.result-window .CodeMirror')?.CodeMirror, null, { timeout: 10_000 })
    .catch(() => fail('the GraphiQL result pane (.result-window .CodeMirror) did not appear'));

  // Log in like a user would: run the `login` mutation in the editor; the playground keeps the token and sends
  // it with the subscription (over the WebSocket's connection_init).
  const email = process.env.TASKORCH_E2E_EMAIL;
  const password = process.env.TASKORCH_E2E_PASSWORD;
  if (!email || !password) fail('TASKORCH_E2E_EMAIL and TASKORCH_E2E_PASSWORD must name a user to log in as');
  const LOGIN = `mutation Login { login(email: ${JSON.stringify(email)}, password: ${JSON.stringify(password)}) { accessToken expiresAt } }`;
  await page.evaluate(([sel, q]) => document.querySelector(sel).CodeMirror.setValue(q), [editorSel, LOGIN]);
  await page
    .waitForFunction(
      (sel) => {
        const ops = document.querySelector(sel).CodeMirror.operations ?? [];
        return ops.length === 1 && ops[0].operation === 'mutation';
      },
      editorSel,
      { timeout: 5_000 },
    )
    .catch(() => fail('GraphiQL did not pick up the login mutation'));
  await run('the login mutation');
  await page
    .waitForFunction(
      () => (document.querySelector('.result-window .CodeMirror').CodeMirror.getValue() || '').includes('accessToken'),
      null,
      { timeout: 15_000 },
    )
    .catch(async () => {
      const state = await page.evaluate((sel) => ({
        editor: document.querySelector(sel).CodeMirror.getValue(),
        result: document.querySelector('.result-window .CodeMirror').CodeMirror.getValue(),
        token: window.localStorage.getItem('taskorch.token'),
      }), editorSel);
      fail(`running the login mutation in the playground did not answer an accessToken; page state: ${JSON.stringify(state)}`);
    });
  if (!(await page.evaluate(() => window.localStorage.getItem('taskorch.token')))) {
    fail('the playground did not keep the token of the login');
  }
  log('logged in through the playground');

  // Record every value the result pane takes (a subscription replaces it with each new payload).
  await page.evaluate(() => {
    const cm = document.querySelector('.result-window .CodeMirror').CodeMirror;
    window.__resultSnapshots = [];
    const record = () => {
      const v = cm.getValue();
      const s = window.__resultSnapshots;
      if (v && s.at(-1)?.text !== v) s.push({ text: v, t: performance.now() });
    };
    cm.on('change', record);
    window.__recordResult = record;
  });

  // Type the subscription like a user would: focus the editor, select all, insert the text (insertText
  // avoids CodeMirror's auto-closing brackets and hint pop-ups that key-by-key typing would trigger).
  await page.click(`${editorSel} .CodeMirror-lines`);
  await page.keyboard.press('Control+A');
  await page.keyboard.insertText(QUERY);
  await page.keyboard.press('Escape'); // close any autocomplete pop-up
  let typed = await page.evaluate((sel) => document.querySelector(sel).CodeMirror.getValue(), editorSel);
  if (typed !== QUERY) {
    log(`typing left ${JSON.stringify(typed)}; setting the editor value directly`);
    typed = await page.evaluate(
      ([sel, q]) => {
        const cm = document.querySelector(sel).CodeMirror;
        cm.setValue(q);
        return cm.getValue();
      },
      [editorSel, QUERY],
    );
    if (typed !== QUERY) fail(`could not put the subscription into the query editor; it holds ${JSON.stringify(typed)}`);
  }
  log(`query editor: ${typed}`);

  // Prettify (toolbar button) so the whole subscription is visible in the screenshot, not one long line.
  await page
    .click('button[aria-label^="Prettify"]', { timeout: 5_000 })
    .catch(() => fail('no GraphiQL prettify button (button[aria-label^="Prettify"])'));
  await page
    .waitForFunction((sel) => document.querySelector(sel).CodeMirror.lineCount() > 1, editorSel, { timeout: 5_000 })
    .catch(() => fail('prettifying the query editor did nothing'));
  const pretty = await page.evaluate((sel) => document.querySelector(sel).CodeMirror.getValue(), editorSel);
  let same = false;
  try {
    same = print(parse(pretty)) === print(parse(QUERY));
  } catch {}
  if (!same) fail(`prettifying changed the subscription; the editor holds:\n${pretty}`);

  // GraphiQL parses the editor 100 ms after the last change (debounced) and only then forgets the previous
  // document's operation name ("Submit" of the default query); running before that sends the stale name.
  // Wait, as a user's pause would, until it has parsed our single anonymous subscription.
  await page
    .waitForFunction(
      (sel) => {
        const cm = document.querySelector(sel).CodeMirror;
        const ops = cm.operations ?? [];
        return ops.length === 1 && ops[0].operation === 'subscription' && !cm.operationName;
      },
      editorSel,
      { timeout: 5_000 },
    )
    .catch(() => fail('GraphiQL did not pick up the subscription typed into the query editor'));

  await run('the subscription');

  // Poll the result pane until it has shown TASK_STARTED and, in a later rendering, WORKFLOW_COMPLETED. Two
  // records: every rendering (from the change listener, so none is missed) and the distinct texts read by the
  // polls themselves; the latter must be at least two, or the pane never visibly changed while we watched
  // (e.g. a finished workflow whose whole history was replayed in one burst).
  const deadline = Date.now() + RESULT_TIMEOUT_MS;
  const timeline = []; // { ms, type, sequence, text } per rendering, in order
  const polled = new Set();
  let startedAt = -1;
  let completedAt = -1;
  let errorText;
  let announced = false;
  while (Date.now() < deadline) {
    const { snaps, current } = await page.evaluate((from) => {
      window.__recordResult();
      return { snaps: window.__resultSnapshots.slice(from), current: window.__resultSnapshots.at(-1)?.text };
    }, timeline.length);
    if (current) polled.add(current);
    for (const { text, t } of snaps) {
      let parsed;
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = undefined;
      }
      const ev = parsed?.data?.workflowEvents;
      if (parsed?.errors || !ev) errorText ??= text;
      const idx = timeline.length;
      timeline.push({ t, type: ev?.type ?? '(no event)', sequence: ev?.sequence, text });
      if (ev?.type === 'TASK_STARTED' && startedAt < 0) startedAt = idx;
      if (ev?.type === 'WORKFLOW_COMPLETED' && startedAt >= 0) completedAt = idx;
    }
    if (!announced && timeline.length > 0 && !errorText) {
      // A caller may hold the workflow back until the browser follows it (see tests/tests/playground.rs).
      const first = timeline[0];
      log(`SUBSCRIBED: the result pane shows #${first.sequence} ${first.type}`);
      announced = true;
    }
    if (completedAt >= 0 || errorText) break;
    await page.waitForTimeout(50);
  }

  const t0 = timeline[0]?.t ?? 0;
  const renderings = timeline.map(
    (r) => `${r.sequence !== undefined ? `#${r.sequence} ${r.type}` : r.type} +${Math.round(r.t - t0)}ms`,
  );
  let longestGap = 0;
  for (let i = 1; i < timeline.length; i++) longestGap = Math.max(longestGap, timeline[i].t - timeline[i - 1].t);
  log(`result pane renderings (${timeline.length}): ${renderings.join(', ')}`);
  log(`event types observed: ${[...new Set(timeline.map((t) => t.type))].join(', ')}`);
  log(`distinct result texts seen by polling: ${polled.size}; longest pause between two renderings: ${Math.round(longestGap)} ms`);

  await screenshot();

  if (errorText) fail(`the result pane shows an error or no workflow event:\n${errorText}`);
  if (startedAt < 0) {
    fail(`the result pane never showed TASK_STARTED within ${RESULT_TIMEOUT_MS / 1000} s; last text:\n${timeline.at(-1)?.text ?? '(empty)'}`);
  }
  if (completedAt < 0) {
    fail(`the result pane showed TASK_STARTED but never WORKFLOW_COMPLETED after it within ${RESULT_TIMEOUT_MS / 1000} s`);
  }
  if (polled.size < 2 || longestGap < LIVE_GAP_MS) {
    fail(
      `no live update seen: the result pane changed ${polled.size < 2 ? 'never while polled' : `only in bursts (longest pause ${Math.round(longestGap)} ms < ${LIVE_GAP_MS} ms)`}` +
        ' — was the workflow already finished (its history replayed at once)?',
    );
  }
  if (remoteRequests.length) fail(`the page tried to reach the network:\n  ${remoteRequests.join('\n  ')}`);
  if (pageErrors.length) log(`page errors (not fatal): ${pageErrors.join(' | ')}`);
  if (badResponses.length) log(`HTTP errors (not fatal): ${badResponses.join(' | ')}`);
  log('OK');
} catch (err) {
  // Keep a picture of what the page looked like when it went wrong.
  if (page && !screenshotTaken) await screenshot().catch(() => {});
  if (remoteRequests.length) console.error(`[playground-e2e] remote requests blocked: ${remoteRequests.join(', ')}`);
  if (pageErrors.length) console.error(`[playground-e2e] page errors: ${pageErrors.join(' | ')}`);
  if (badResponses.length) console.error(`[playground-e2e] HTTP errors: ${badResponses.join(' | ')}`);
  console.error(`[playground-e2e] FAILED: ${err instanceof Failure ? err.message : err?.stack ?? err}`);
  process.exitCode = 1;
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
process.exit(process.exitCode ?? 0);
