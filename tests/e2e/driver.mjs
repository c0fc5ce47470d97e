// Drives the example page in headless Chromium (Debian's /usr/bin/chromium, never a downloaded
// browser) for the pytest suite. One browser (a fresh --user-data-dir) for the whole run; one
// page per case.
//
// Protocol: one JSON object per line on stdin, `{"id", "url", "timeoutMs", "until"}`; one JSON
// line per case on stdout: `{"id", "done", "reachedJoin", "result", "events", "status",
// "requests", "offLoopback", "console"}`. The first line is `{"ready": true}`. EOF on stdin
// closes the browser. `until` is "settled" (wait for start() to return) or "daily-join" (stop
// once the SDK has the call and begins joining Daily: offline that join fails only after Daily's
// three attempts 3 s apart, which one dedicated case waits out).
//
// Network rule: the page may reach 127.0.0.1 only. Every other request is aborted and recorded
// in `offLoopback`; the pytest side decides which of those are allowed (Daily's, see conftest).
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const CHROMIUM = process.env.E2E_CHROMIUM || '/usr/bin/chromium';
const userDataDir = mkdtempSync(join(tmpdir(), 'vapi-proxy-e2e-'));

const isLoopback = (url) => {
  try {
    const { protocol, hostname } = new URL(url);
    return hostname === '127.0.0.1' || protocol === 'data:' || protocol === 'blob:';
  } catch {
    return false;
  }
};

function send(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    // Belt and braces: nothing but loopback resolves, whatever escapes page.route.
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    // No permission prompt or real device for Daily's getUserMedia.
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
  ],
  timeout: 20000,
});

let current = null; // the case whose page is open: requests are recorded into it

await context.route('**/*', async (route) => {
  const url = route.request().url();
  if (isLoopback(url)) {
    await route.continue();
    return;
  }
  current?.offLoopback.push({ url, via: 'route' });
  await route.abort('internetdisconnected');
});
context.on('request', (request) => {
  current?.requests.push({ method: request.method(), url: request.url() });
});

function finished(until) {
  const state = window.vapiExample;
  if (!state) return false;
  if (state.done) return true;
  return (
    until === 'daily-join' &&
    state.events.some(
      (e) => e.name === 'call-start-progress' && e.payload?.stage === 'daily-call-join',
    )
  );
}

async function runCase({ id, url, timeoutMs = 15000, until = 'settled' }) {
  const record = {
    id,
    done: false,
    result: null,
    events: [],
    requests: [],
    offLoopback: [],
    console: [],
  };
  current = record;
  const page = await context.newPage();
  page.on('console', (message) => record.console.push(`${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => record.console.push(`pageerror: ${error.message}`));
  page.on('websocket', (socket) => {
    if (!isLoopback(socket.url())) {
      record.offLoopback.push({ url: socket.url(), via: 'websocket' });
    }
  });
  try {
    await page.goto(url, { timeout: timeoutMs });
    // start() has no timeout of its own: bound the wait here, and report what happened so far.
    await page
      .waitForFunction(finished, until, {
        timeout: timeoutMs,
        polling: 50,
      })
      .catch(() => {});
    const state = await page.evaluate(() => ({
      done: window.vapiExample?.done ?? false,
      result: window.vapiExample?.result ?? null,
      events: window.vapiExample?.events ?? [],
      status: document.getElementById('status')?.textContent ?? '',
      reachedJoin: (window.vapiExample?.events ?? []).some(
        (e) => e.name === 'call-start-progress' && e.payload?.stage === 'daily-call-join',
      ),
    }));
    Object.assign(record, state);
  } catch (error) {
    record.driverError = String(error?.message || error);
  } finally {
    current = null;
    await page.close().catch(() => {});
  }
  return record;
}

send({ ready: true });

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    send({ driverError: `bad request line: ${error.message}` });
    continue;
  }
  send(await runCase(request));
}

await context.close();
rmSync(userDataDir, { recursive: true, force: true });
