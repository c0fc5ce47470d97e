// The example page's logic: read the settings (form or query string), call the real Web SDK
// against the proxy, and show every event the SDK emits. The e2e suite drives this same page.
import Vapi from '@vapi-ai/web';

// Turn the page's settings into the arguments of `vapi.start(...)`, one form per way the SDK
// can be called (WEB-SDK.md: string, object, assistantOverrides, squad, workflow).
export function buildStartArgs({ form, profile, variables, overrides }) {
  const vars = variables || {};
  const extra = overrides || {};
  const withVars = Object.keys(vars).length ? { variableValues: vars } : {};
  const assistantOverrides = { ...withVars, ...extra };
  const orUndefined = (o) => (Object.keys(o).length ? o : undefined);
  switch (form) {
    case 'string': // start('p') → {"assistantId": "p"}
      return [profile, orUndefined(assistantOverrides)];
    case 'object': // start({assistantType: 'p', firstName: 'Ann'}) → {"assistant": {...}}
      return [{ assistantType: profile, ...vars }, orUndefined(extra)];
    case 'squad': // start(null, null, 'p') → {"assistant": null, ..., "squadId": "p"}
      return [null, null, profile];
    case 'squad-object':
      return [null, null, { assistantType: profile }];
    case 'workflow': // start(null, null, null, 'p') → {"workflowId": "p"}
      return [null, null, null, profile];
    case 'workflow-object':
      return [null, null, null, { assistantType: profile }, orUndefined(withVars)];
    default:
      throw new Error(`unknown start form: ${form}`);
  }
}

// The proxy's refusal is the JSON body `{message, error, statusCode, requestId}`; the SDK hands
// it on as the event's `error` (call-start-failed) or `error.error` (error event). Its `message`
// may be a string or, like Vapi's validation errors, a list of strings.
export function readableMessage(value) {
  if (value == null) return '';
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) return value.map(readableMessage).join('; ');
  if (typeof value === 'object') {
    if ('message' in value) return readableMessage(value.message);
    if ('msg' in value) return readableMessage(value.msg); // Daily's own errors
    if ('error' in value) return readableMessage(value.error);
  }
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

function parseJson(text, what) {
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`${what} is not valid JSON`);
  }
}

function settingsFromPage() {
  const get = (id) => document.getElementById(id).value.trim();
  return {
    proxy: get('proxy'),
    token: get('token'),
    profile: get('profile'),
    form: get('form'),
    variables: parseJson(get('variables'), 'Variables'),
    overrides: parseJson(get('overrides'), 'assistantOverrides'),
  };
}

// Query-string parameters fill the form (handy for links and for the e2e suite); `autostart=1`
// presses Start. Do not put a real user's token in a URL outside local testing.
function fillFromQuery() {
  const query = new URLSearchParams(window.location.search);
  for (const id of ['proxy', 'token', 'profile', 'form', 'variables', 'overrides']) {
    if (query.has(id)) document.getElementById(id).value = query.get(id);
  }
  return query.get('autostart') === '1';
}

const state = { vapi: null, events: [], done: false, result: undefined };
window.vapiExample = state;

// A listener must never throw: the SDK emits from inside start().
function plain(value) {
  try {
    return JSON.parse(JSON.stringify(value ?? null));
  } catch {
    return String(value);
  }
}

function log(name, payload) {
  state.events.push({ name, payload: plain(payload) });
  const line = document.createElement('li');
  let text = name;
  if (name === 'error' || name === 'call-start-failed') {
    // Both carry the failure in `error`: the proxy's body itself (call-start-failed), or an
    // object whose `message`/`error` is that body (error, type 'start-method-error').
    const message = readableMessage(payload?.error);
    text += `: ${message}`;
    document.getElementById('status').textContent = message;
  } else if (name === 'call-start-progress') {
    text += `: ${payload?.stage} ${payload?.status}`;
  }
  line.textContent = text;
  document.getElementById('log').append(line);
}

const EVENTS = [
  'call-start-progress',
  'call-start-success',
  'call-start-failed',
  'call-start',
  'call-end',
  'error',
];

async function start() {
  state.done = false;
  state.result = undefined;
  document.getElementById('status').textContent = 'Starting…';
  let settings;
  try {
    settings = settingsFromPage();
  } catch (error) {
    document.getElementById('status').textContent = error.message;
    state.result = { rejected: error.message };
    state.done = true;
    return;
  }
  // One instance per start: the SDK keeps one module-wide base URL and refuses a second start()
  // on an instance that is still "started".
  const vapi = new Vapi(settings.token, settings.proxy);
  state.vapi = vapi;
  for (const name of EVENTS) vapi.on(name, (payload) => log(name, payload));
  try {
    const call = await vapi.start(...buildStartArgs(settings));
    state.result = { resolved: call ? { id: call.id ?? null, webCallUrl: call.webCallUrl } : null };
    if (call) document.getElementById('status').textContent = `In call ${call.id}`;
  } catch (error) {
    state.result = { rejected: readableMessage(error) };
    document.getElementById('status').textContent = readableMessage(error);
  } finally {
    state.done = true;
  }
}

async function stop() {
  await state.vapi?.stop();
}

document.getElementById('start').addEventListener('click', start);
document.getElementById('stop').addEventListener('click', stop);
if (fillFromQuery()) start();
