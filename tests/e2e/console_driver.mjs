// Drives the operator console (/admin) in headless Chromium (Debian's /usr/bin/chromium) for
// tests/e2e/test_console.py, one step per stdin line, as a person would: fill, click, wait for
// text, download, screenshot. One page for the whole session, a laptop-sized viewport.
//
// Protocol: `{"id", "op", ...}` per line in; `{"id", "ok", "value"?, "error"?}` per line out;
// the first line out is `{"ready": true}`. Every wait is bounded by the step's `timeoutMs`.
// Network rule as in driver.mjs: nothing leaves 127.0.0.1 (a refusing proxy records attempts).
import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const CHROMIUM = process.env.E2E_CHROMIUM || '/usr/bin/chromium';
const userDataDir = mkdtempSync(join(tmpdir(), 'vapi-proxy-console-'));
const send = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

const refused = [];
const refuser = createServer((socket) => {
  socket.setTimeout(5000, () => socket.destroy());
  socket.on('error', () => {});
  socket.once('data', (chunk) => {
    const [method = '?', target = '?'] = chunk.toString('latin1').split('\r\n', 1)[0].split(' ');
    refused.push(method === 'CONNECT' ? `https://${target}/` : target);
    socket.end('HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
  });
});
await new Promise((resolve) => refuser.listen(0, '127.0.0.1', resolve));
refuser.unref();

const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1440, height: 900 },
  acceptDownloads: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--disable-features=AutofillServerCommunication,OptimizationHints,MediaRouter,Translate,' +
      'CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,' +
      'DialMediaRouteProvider,PrivacySandboxSettings4',
    '--disable-client-side-phishing-detection', '--disable-default-apps', '--disable-extensions',
    '--disable-domain-reliability', '--no-pings', '--disable-breakpad', '--metrics-recording-only',
    `--proxy-server=http://127.0.0.1:${refuser.address().port}`,
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
  ],
  timeout: 20000,
});

const requests = [];
const consoleLines = [];
context.on('request', (request) => requests.push({ method: request.method(), url: request.url() }));
const page = context.pages()[0] || (await context.newPage());
page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));

async function step({ op, sel, value, url, text, path, state, timeoutMs = 10000 }) {
  switch (op) {
    case 'goto':
      await page.goto(url, { timeout: timeoutMs });
      return null;
    case 'fill':
      await page.fill(sel, value, { timeout: timeoutMs });
      return null;
    case 'click':
      await page.click(sel, { timeout: timeoutMs });
      return null;
    case 'check':
      await page.check(sel, { timeout: timeoutMs });
      return null;
    case 'select':
      await page.selectOption(sel, value, { timeout: timeoutMs });
      return null;
    case 'waitFor':
      // Visible (or `state`), and containing `text` when given.
      if (text === undefined) {
        await page.waitForSelector(sel, { state: state || 'visible', timeout: timeoutMs });
      } else {
        await page.waitForFunction(
          ([s, t]) => [...document.querySelectorAll(s)].some((n) => n.textContent.includes(t)),
          [sel, text],
          { timeout: timeoutMs, polling: 100 },
        );
      }
      return null;
    case 'text':
      return await page.$$eval(sel, (nodes) => nodes.map((n) => n.textContent.trim()));
    case 'attr':
      return await page.$$eval(sel, (nodes, name) => nodes.map((n) => n.getAttribute(name)), value);
    case 'screenshot':
      await page.screenshot({ path, fullPage: true, timeout: timeoutMs });
      return path;
    case 'download': {
      const [download] = await Promise.all([
        page.waitForEvent('download', { timeout: timeoutMs }),
        page.click(sel, { timeout: timeoutMs }),
      ]);
      const file = await download.path();
      return { name: download.suggestedFilename(), text: readFileSync(file, 'utf8') };
    }
    case 'cookieJar':
      // What a script on the page could read of the session: document.cookie.
      return await page.evaluate(() => document.cookie);
    case 'report':
      return { requests, refused, console: consoleLines };
    default:
      throw new Error(`unknown op ${op}`);
  }
}

send({ ready: true });
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    send({ ok: false, error: `bad request line: ${error.message}` });
    continue;
  }
  try {
    send({ id: request.id, ok: true, value: await step(request) });
  } catch (error) {
    send({ id: request.id, ok: false, error: String(error?.message || error) });
  }
}
await context.close();
refuser.close();
rmSync(userDataDir, { recursive: true, force: true });
