// The operator console: plain DOM and fetch, no third-party code. The session lives in an
// HttpOnly cookie this script cannot read; it keeps only the CSRF token (not a credential on its
// own) in memory and sends it with every request that changes something.
'use strict';

(() => {
  const API = 'admin/api/';
  const LIVE_POLL_MS = 2000;
  let csrf = null;
  let liveTimer = null;
  let lastLive = [];
  let liveFetchedAt = 0;

  const $ = (id) => document.getElementById(id);
  const show = (id, on) => { $(id).hidden = !on; };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === 'class') node.className = value;
      else if (key.startsWith('data-')) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  async function api(path, options = {}) {
    const headers = { Accept: 'application/json', ...(options.headers || {}) };
    const method = options.method || 'GET';
    if (method !== 'GET' && csrf) headers['X-CSRF-Token'] = csrf;
    if (options.body !== undefined) headers['Content-Type'] = 'application/json';
    const reply = await fetch(API + path, {
      method,
      headers,
      credentials: 'same-origin',
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
    let data = null;
    try { data = await reply.json(); } catch (e) { data = null; }
    if (!reply.ok) {
      const message = (data && data.message) || `${reply.status} ${reply.statusText}`;
      const error = new Error(Array.isArray(message) ? message.join('; ') : message);
      error.status = reply.status;
      throw error;
    }
    return data;
  }

  function notice(text, kind = 'ok') {
    const box = $('notice');
    box.textContent = text;
    box.className = `notice ${kind}`;
    box.hidden = false;
    clearTimeout(notice.timer);
    notice.timer = setTimeout(() => { box.hidden = true; }, 6000);
  }

  function fail(error) {
    if (error && error.status === 401) { signedOut(); return; }
    notice(error.message || String(error), 'error');
  }

  // --- formatting ---------------------------------------------------------------------------
  const fmt = {
    int: (n) => Number(n || 0).toLocaleString('en-US'),
    minutes: (n) => Number(n || 0).toLocaleString('en-US', { maximumFractionDigits: Math.abs(n) < 1 ? 2 : 1 }),
    usd: (n) => (n === null || n === undefined) ? '–'
      : '$' + Number(n).toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 }),
    when: (iso) => iso ? iso.replace('T', ' ').replace(/(:\d\d)(\.\d+)?Z$/, '$1 UTC') : '–',
    duration: (seconds) => {
      const s = Math.max(0, Math.floor(seconds));
      const m = Math.floor(s / 60);
      return `${m}:${String(s % 60).padStart(2, '0')}`;
    },
  };

  // --- chart: a hand-drawn SVG bar chart --------------------------------------------------------
  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    const power = 10 ** Math.floor(Math.log10(value));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  function barChart(container, points, key, format, bucket) {
    container.textContent = '';
    const width = 420, height = 170, left = 44, bottom = 22, top = 8, right = 8;
    const plotW = width - left - right, plotH = height - top - bottom;
    const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', class: 'bars' });
    const values = points.map((p) => Number(p[key] || 0));
    const max = niceMax(Math.max(0, ...values));
    chart.setAttribute('aria-label', `${key} per ${bucket}, highest ${format(Math.max(0, ...values))}`);
    for (let i = 0; i <= 4; i++) {
      const y = top + plotH - (plotH * i) / 4;
      chart.append(svg('line', { x1: left, x2: width - right, y1: y, y2: y, class: 'grid' }));
      const label = svg('text', { x: left - 6, y: y + 4, class: 'axis', 'text-anchor': 'end' });
      label.textContent = format((max * i) / 4);
      chart.append(label);
    }
    const n = Math.max(points.length, 1);
    const slot = plotW / n;
    const barW = Math.max(1, slot * 0.78);
    points.forEach((p, i) => {
      const v = values[i];
      const h = (v / max) * plotH;
      const bar = svg('rect', {
        x: left + i * slot + (slot - barW) / 2, y: top + plotH - h, width: barW,
        height: Math.max(h, v > 0 ? 1 : 0), class: 'bar',
      });
      const tip = svg('title', {});
      tip.textContent = `${fmt.when(p.t)}: ${format(v)}`;
      bar.append(tip);
      chart.append(bar);
    });
    const ticks = n <= 12 ? n : 6;
    for (let j = 0; j < ticks; j++) {
      const i = Math.round((j * (n - 1)) / Math.max(ticks - 1, 1));
      const p = points[i];
      if (!p) continue;
      const label = svg('text', {
        x: left + i * slot + slot / 2, y: height - 6, class: 'axis', 'text-anchor': 'middle',
      });
      label.textContent = bucket === 'hour' ? p.t.slice(11, 16) : p.t.slice(5, 10);
      chart.append(label);
    }
    container.append(chart);
  }

  // --- usage --------------------------------------------------------------------------------
  function filterParams() {
    const hours = Number($('f-range').value);
    const until = new Date();
    until.setUTCMinutes(0, 0, 0);
    until.setUTCHours(until.getUTCHours() + 1);
    const since = new Date(until.getTime() - hours * 3600 * 1000);
    const params = new URLSearchParams({ since: since.toISOString(), until: until.toISOString() });
    const bucket = $('f-bucket').value;
    if (bucket) params.set('bucket', bucket);
    for (const [name, id] of [['profile', 'f-profile'], ['tenant', 'f-tenant'], ['identity', 'f-identity']]) {
      const value = $(id).value.trim();
      if (value) params.set(name, value);
    }
    return params;
  }

  function summariseLimits(limits) {
    if (limits === null || limits === undefined) return 'unknown';
    if (!limits.length) return 'no limits';
    return limits.map((r) => {
      const what = { rate: 'req', quota: 'calls', minutes: 'min', usd: '$', concurrency: 'at once' }[r.what] || r.what;
      const period = r.period ? `/${r.period}` : '';
      const left = r.what === 'usd' ? Number(r.remaining).toFixed(2) : fmt.minutes(r.remaining);
      return `${left} of ${r.what === 'usd' ? Number(r.limit).toFixed(2) : fmt.minutes(r.limit)} ${what}${period}`;
    }).join(' · ');
  }

  async function loadUsage() {
    const params = filterParams();
    $('export').href = `${API}usage.csv?${params}`;
    const data = await api(`usage?${params}`);
    $('t-calls').textContent = fmt.int(data.totals.calls);
    $('t-chats').textContent = fmt.int(data.totals.chats);
    $('t-minutes').textContent = fmt.minutes(data.totals.minutes);
    $('t-cost').textContent = fmt.usd(data.totals.costUsd);
    const bucket = data.filter.bucket;
    barChart($('chart-calls'), data.series, 'calls', (v) => fmt.int(Math.round(v)), bucket);
    barChart($('chart-minutes'), data.series, 'minutes', (v) => fmt.minutes(v), bucket);
    barChart($('chart-cost'), data.series, 'costUsd', (v) => '$' + Number(v).toFixed(v < 10 ? 2 : 0), bucket);

    const profiles = $('profiles').tBodies[0];
    profiles.textContent = '';
    const names = $('profile-names');
    for (const p of data.profiles) {
      profiles.append(el('tr', {}, el('td', {}, p.profile), el('td', { class: 'num' }, fmt.int(p.calls)),
        el('td', { class: 'num' }, fmt.int(p.chats)), el('td', { class: 'num' }, fmt.minutes(p.minutes)),
        el('td', { class: 'num' }, fmt.usd(p.costUsd))));
      if (![...names.options].some((o) => o.value === p.profile)) names.append(el('option', { value: p.profile }));
    }
    if (!data.profiles.length) profiles.append(el('tr', {}, el('td', { colSpan: 5, class: 'empty' }, 'No usage in this range.')));

    const users = $('top-users').tBodies[0];
    users.textContent = '';
    for (const u of data.topUsers) {
      const block = el('button', { type: 'button', class: 'quiet small', 'data-identity': u.identity }, 'Block…');
      block.addEventListener('click', () => { $('b-identity').value = u.identity; $('b-reason').focus(); });
      users.append(el('tr', {}, el('td', { class: 'ident', title: u.tenant ? `tenant ${u.tenant}` : '' }, u.identity),
        el('td', { class: 'num' }, fmt.int(u.calls)), el('td', { class: 'num' }, fmt.minutes(u.minutes)),
        el('td', { class: 'num' }, fmt.usd(u.costUsd)), el('td', { class: 'limits' }, summariseLimits(u.limits)),
        el('td', {}, block)));
    }
    if (!data.topUsers.length) users.append(el('tr', {}, el('td', { colSpan: 6, class: 'empty' }, 'Nobody yet.')));
  }

  // --- live calls -----------------------------------------------------------------------------
  function renderLive() {
    const body = $('live').tBodies[0];
    body.textContent = '';
    const drift = (Date.now() - liveFetchedAt) / 1000;
    for (const call of lastLive) {
      const end = el('button', { type: 'button', class: 'danger small', 'data-call': call.id }, 'End call');
      end.addEventListener('click', () => endCall(call.id, end));
      body.append(el('tr', { 'data-call': call.id },
        el('td', { class: 'ident' }, call.identity), el('td', {}, call.profile),
        el('td', {}, el('span', { class: `status ${call.status}` }, call.status)),
        el('td', {}, fmt.when(call.startedAt || call.createdAt)),
        el('td', { class: 'num' }, fmt.duration(call.durationSeconds + drift)),
        el('td', { class: 'num' }, fmt.usd(call.costUsd)), el('td', {}, end)));
    }
    $('live-count').textContent = String(lastLive.length);
    show('live-empty', lastLive.length === 0);
    $('live').hidden = lastLive.length === 0;
  }

  async function loadLive() {
    const data = await api('calls/live');
    lastLive = data.items;
    liveFetchedAt = Date.now();
    $('live-updated').textContent = `updated ${new Date().toLocaleTimeString('en-GB')}`;
    renderLive();
  }

  async function endCall(id, button) {
    button.disabled = true;
    try {
      await api(`calls/${encodeURIComponent(id)}/end`, { method: 'POST' });
      notice('Asked Vapi to end the call; it leaves this list when Vapi reports the end.');
      await Promise.all([loadLive(), loadAudit()]);
    } catch (error) { button.disabled = false; fail(error); }
  }

  // --- blocks ---------------------------------------------------------------------------------
  async function loadBlocks() {
    const data = await api('blocks');
    const body = $('blocks').tBodies[0];
    body.textContent = '';
    const active = data.items.filter((b) => b.active);
    for (const b of active) {
      const unblock = el('button', { type: 'button', class: 'quiet small', 'data-identity': b.identity }, 'Unblock');
      unblock.addEventListener('click', async () => {
        unblock.disabled = true;
        try {
          await api('unblock', { method: 'POST', body: { identity: b.identity } });
          notice(`Unblocked ${b.identity}.`);
          await Promise.all([loadBlocks(), loadAudit()]);
        } catch (error) { unblock.disabled = false; fail(error); }
      });
      body.append(el('tr', { 'data-identity': b.identity }, el('td', { class: 'ident' }, b.identity),
        el('td', {}, b.reason), el('td', {}, b.expiresAt ? fmt.when(b.expiresAt) : 'until unblocked'),
        el('td', {}, b.createdBy), el('td', {}, unblock)));
    }
    show('blocks-empty', active.length === 0);
    $('blocks').hidden = active.length === 0;
  }

  async function submitBlock(event) {
    event.preventDefault();
    const until = $('b-until').value;
    const body = {
      identity: $('b-identity').value.trim(),
      reason: $('b-reason').value.trim(),
      endCalls: $('b-end').checked,
    };
    if (until) body.expiresAt = `${until.slice(0, 16)}:00Z`;
    try {
      const result = await api('blocks', { method: 'POST', body });
      const ended = result.endedCalls.length ? ` and ended ${result.endedCalls.length} live call(s)` : '';
      notice(`Blocked ${body.identity}${ended}.`);
      $('block-form').reset();
      await Promise.all([loadBlocks(), loadLive(), loadAudit()]);
    } catch (error) { fail(error); }
  }

  // --- webhooks and audit -----------------------------------------------------------------------
  async function loadWebhooks() {
    const data = await api('webhooks');
    const body = $('hook-events').tBodies[0];
    body.textContent = '';
    for (const e of data.events) {
      body.append(el('tr', {}, el('td', {}, e.type), el('td', { class: 'num' }, fmt.int(e.count)),
        el('td', { class: 'num' }, fmt.int(e.unknownCall)), el('td', {}, fmt.when(e.last))));
    }
    if (!data.events.length) body.append(el('tr', {}, el('td', { colSpan: 4, class: 'empty' }, 'No webhooks received.')));
    const rejected = Object.entries(data.verification.rejected);
    const failures = rejected.reduce((sum, [, n]) => sum + n, 0);
    $('hook-rejected').textContent = failures
      ? `${fmt.int(failures)} (${rejected.map(([why, n]) => `${why}: ${fmt.int(n)}`).join(', ')}) across all workers and replicas`
      : `none (of ${fmt.int(data.verification.received)} received across all workers and replicas)`;
    const box = data.outbox;
    $('hook-backlog').textContent = `${fmt.int(box.pending)} waiting, ${fmt.int(box.parked)} parked`;
    $('hook-oldest').textContent = box.oldestPending
      ? `${box.oldestPending.type} to ${box.oldestPending.target}, ${fmt.duration(box.oldestPending.ageSeconds)} old`
        + (box.oldestPending.lastError ? ` (${box.oldestPending.lastError})` : '')
      : 'nothing waiting';
  }

  async function loadAudit() {
    const data = await api('audit?limit=25');
    const body = $('audit').tBodies[0];
    body.textContent = '';
    for (const a of data.items) {
      body.append(el('tr', { class: a.outcome === 'ok' ? '' : 'muted' }, el('td', {}, fmt.when(a.at)),
        el('td', {}, a.actor), el('td', {}, a.action), el('td', { class: 'ident' }, a.target || ''),
        el('td', {}, a.outcome), el('td', {}, a.client || '')));
    }
  }

  // --- session --------------------------------------------------------------------------------
  function signedOut() {
    csrf = null;
    clearInterval(liveTimer);
    show('console', false);
    show('who', false);
    show('sign-in', true);
    $('admin-key').focus();
  }

  async function signedIn(actor) {
    $('actor').textContent = actor;
    show('sign-in', false);
    show('who', true);
    show('console', true);
    await refreshAll();
    clearInterval(liveTimer);
    liveTimer = setInterval(() => { loadLive().catch(fail); }, LIVE_POLL_MS);
    if (!signedIn.ticking) { signedIn.ticking = setInterval(renderLive, 1000); }
  }

  async function refreshAll() {
    const results = await Promise.allSettled([loadUsage(), loadLive(), loadBlocks(), loadWebhooks(), loadAudit()]);
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) fail(failed.reason);
  }

  async function start() {
    $('sign-in-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      $('sign-in-error').textContent = '';
      const input = $('admin-key');
      try {
        const session = await api('session', { method: 'POST', body: { key: input.value } });
        input.value = '';
        csrf = session.csrfToken;
        await signedIn(session.actor);
      } catch (error) {
        $('sign-in-error').textContent = error.message;
      }
    });
    $('sign-out').addEventListener('click', async () => {
      try { await api('session', { method: 'DELETE' }); } catch (e) { /* signed out anyway */ }
      signedOut();
    });
    $('filters').addEventListener('submit', (event) => { event.preventDefault(); loadUsage().catch(fail); });
    for (const id of ['f-range', 'f-bucket']) $(id).addEventListener('change', () => loadUsage().catch(fail));
    $('block-form').addEventListener('submit', submitBlock);
    // The rest follows on its own, more slowly than the live calls.
    setInterval(() => {
      if (csrf) Promise.allSettled([loadUsage(), loadWebhooks(), loadBlocks(), loadAudit()]);
    }, 15000);
    try {
      const session = await api('session');
      csrf = session.csrfToken;
      await signedIn(session.actor);
    } catch (error) {
      signedOut();
    }
  }

  document.addEventListener('DOMContentLoaded', start);
})();
