// Drives the example page in headless Chromium (Debian's /usr/bin/chromium, never a downloaded
// browser) for the pytest suite. One browser (a fresh --user-data-dir) for the whole run; one
// page per case.
//
// Protocol: one JSON object per line on stdin, `{"id", "url", "timeoutMs", "until"}`; one JSON
// line per case on stdout: `{"id", "done", "reachedJoin", "result", "events", "status",
// "requests", "websockets", "replies", "refused", "console", "timings"}` (timings in ms since
// the case began). The first line is `{"ready": true}`. EOF on stdin closes the browser.
// `until` is "settled" (wait for start() to return) or "daily-join" (stop once the SDK has the
// call and begins joining Daily: offline that join fails only after Daily's three attempts 3 s
// apart, which one dedicated case waits out).
//
// Network rule: nothing leaves 127.0.0.1. Chromium sends everything else to a "proxy" on loopback
// that this script runs: it records the target (`refused`, whoever asked: the page or Chromium's
// own background services) and refuses it; and no host but 127.0.0.1 resolves. What the page
// itself asked for is in `requests` and `websockets`. The pytest side decides which attempts
// are allowed (Daily's, see conftest). Not page.route: while any route is registered,
// playwright-core answers every CORS preflight itself with allow-everything headers (see
// `isInterceptedOptionsPreflight` in its coreBundle.js), which would fake the very preflight the
// proxy must answer.
import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const CHROMIUM = process.env.E2E_CHROMIUM || '/usr/bin/chromium';
const userDataDir = mkdtempSync(join(tmpdir(), 'vapi-proxy-e2e-'));

function send(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

let current = null; // the case whose page is open: what the page does is recorded into it
let refusedBetweenCases = []; // the browser's own attempts while no case runs: given to the next

// The refusing proxy: reads the request line (`CONNECT host:443` or `GET http://...`), records
// it, answers 403 and closes. Bounded: a silent client is dropped after 5 s.
const refuser = createServer((socket) => {
  socket.setTimeout(5000, () => socket.destroy());
  socket.on('error', () => {});
  socket.once('data', (chunk) => {
    const [method = '?', target = '?'] = chunk.toString('latin1').split('\r\n', 1)[0].split(' ');
    const url = method === 'CONNECT' ? `https://${target}/` : target;
    (current ? current.refused : refusedBetweenCases).push({ url, via: method });
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
});
await new Promise((resolve) => refuser.listen(0, '127.0.0.1', resolve));
refuser.unref();

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
    // Quiet Chromium's own background services (autofill, translate, ...), which would
    // otherwise knock on Google's hosts; what still tries is refused (see conftest).
    '--disable-features=AutofillServerCommunication,OptimizationHints,MediaRouter,Translate,' +
      'CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,' +
      'DialMediaRouteProvider,PrivacySandboxSettings4',
    '--disable-client-side-phishing-detection',
    '--disable-default-apps',
    '--disable-extensions',
    '--disable-domain-reliability',
    '--no-pings',
    '--disable-breakpad',
    '--metrics-recording-only',
    // Everything but loopback (bypassed implicitly) goes to the refusing proxy; nothing but
    // 127.0.0.1 resolves; WebRTC may not send UDP around the proxy.
    `--proxy-server=http://127.0.0.1:${refuser.address().port}`,
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
    '--force-webrtc-ip-handling-policy=disable_non_proxied_udp',
    // No permission prompt or real device for Daily's getUserMedia.
    '--use-fake-ui-for-media-stream',
    '--use-fake-device-for-media-stream',
  ],
  timeout: 20000,
});

context.on('request', (request) => {
  // Whether a bearer was sent, never its value (the token is the test's own anyway).
  const authorization = 'authorization' in request.headers();
  current?.requests.push({ method: request.method(), url: request.url(), authorization });
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
    websockets: [],
    replies: [],
    refused: refusedBetweenCases,
    console: [],
  };
  refusedBetweenCases = [];
  current = record;
  const t0 = Date.now();
  const mark = (name) => {
    record.timings[name] = Date.now() - t0;
  };
  record.timings = {};
  const page = await context.newPage();
  mark('newPage');
  page.on('console', (message) => record.console.push(`${message.type()}: ${message.text()}`));
  page.on('pageerror', (error) => record.console.push(`pageerror: ${error.message}`));
  page.on('websocket', (socket) => record.websockets.push({ url: socket.url() }));
  // What the proxy answered to the SDK's POST, as the page received it (after CORS).
  const reading = [];
  page.on('response', (response) => {
    const request = response.request();
    if (request.method() !== 'POST' || !new URL(response.url()).pathname.endsWith('/call/web')) {
      return;
    }
    reading.push(
      response
        .text()
        .catch(() => null)
        .then((body) => {
          const retryAfter = response.headers()['retry-after'] ?? null;
          record.replies.push({ url: response.url(), status: response.status(), retryAfter, body });
        }),
    );
  });
  try {
    await page.goto(url, { timeout: timeoutMs });
    mark('loaded');
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
    mark('finished');
    await Promise.race([Promise.allSettled(reading), new Promise((r) => setTimeout(r, 2000))]);
  } catch (error) {
    record.driverError = String(error?.message || error);
  } finally {
    current = null;
    await page.close().catch(() => {});
    mark('closed');
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
refuser.close();
rmSync(userDataDir, { recursive: true, force: true });
