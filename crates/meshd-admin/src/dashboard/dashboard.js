// meshd dashboard: a client of the public admin API (docs/admin-api.md),
// nothing more. Vanilla JS, no build step, no external resources.
//
// The token lives in this tab's sessionStorage and is only ever sent in the
// Authorization header: never in a URL. The log is followed with fetch()
// streaming (EventSource cannot send headers).
'use strict';

const TOKEN_KEY = 'meshd-admin-token';
const POLL_MS = 5000;
/** Buckets the table's sparklines show (2 minutes of 5 s buckets). */
const TABLE_BUCKETS = 24;
/** Most log lines the page keeps. */
const MAX_LOG_LINES = 1000;
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  apps: [],
  stats: { interval_seconds: 5, apps: {} },
  selected: null,
  pollTimer: null,
  log: null, // { name, abort, after }
  keptKey: null,
};

// ---------- talking to the admin API ----------

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (state.token) headers['Authorization'] = 'Bearer ' + state.token;
  return headers;
}

/** One admin API call; resolves to { status, json }. */
async function api(method, path, options) {
  const opts = options || {};
  const init = { method, headers: authHeaders(opts.headers), cache: 'no-store' };
  if (opts.json !== undefined) {
    init.body = JSON.stringify(opts.json);
    init.headers['Content-Type'] = 'application/json';
  }
  const response = await fetch(path, init);
  let json = null;
  try { json = await response.json(); } catch (_) { json = null; }
  if (response.status === 401) signOut('The token was refused: ' + errorText(json));
  return { status: response.status, json };
}

function errorText(json) {
  if (json && json.error) return json.error.kind + ': ' + json.error.message;
  return 'no answer';
}

// ---------- signing in and out ----------

async function signIn(token) {
  state.token = token || null;
  const reply = await api('GET', '/v1/apps');
  if (reply.status !== 200) {
    $('login-error').textContent = reply.status === 401
      ? 'That is not the admin token.'
      : 'meshd answered ' + reply.status + ': ' + errorText(reply.json);
    state.token = null;
    return;
  }
  if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
  $('login-error').textContent = '';
  $('token').value = '';
  $('login').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  state.apps = reply.json.apps;
  await poll();
}

function signOut(why) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  clearTimeout(state.pollTimer);
  stopLog();
  $('app').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = why || '';
  $('token').focus();
}

// ---------- polling ----------

async function poll() {
  clearTimeout(state.pollTimer);
  try {
    const [apps, stats] = await Promise.all([
      api('GET', '/v1/apps'),
      api('GET', '/v1/stats?last=' + TABLE_BUCKETS),
    ]);
    if (apps.status === 200) state.apps = apps.json.apps;
    if (stats.status === 200) state.stats = stats.json;
    renderTable();
    if (state.selected) await renderDetails();
    setStatus('Updated ' + new Date().toLocaleTimeString());
  } catch (e) {
    setStatus('Cannot reach meshd: ' + e.message);
  }
  if (state.token !== null || !$('app').hidden) {
    state.pollTimer = setTimeout(poll, POLL_MS);
  }
}

function setStatus(text) { $('status').textContent = text; }

// ---------- the apps table ----------

function sum(values) { return (values || []).reduce((a, b) => a + (b || 0), 0); }

/** Rates of an app over the table's window. */
function appRates(name) {
  const series = state.stats.apps[name];
  const interval = state.stats.interval_seconds || 5;
  if (!series || series.requests.length === 0) {
    return { series: null, rate: 0, errors: 0, p50: null, p99: null, requests: 0, errorCount: 0 };
  }
  const n = series.requests.length;
  const last = n - 1;
  return {
    series,
    requests: sum(series.requests),
    errorCount: sum(series.errors),
    rate: series.requests[last] / interval,
    errors: series.errors[last] / interval,
    p50: lastValue(series.p50_ms),
    p99: lastValue(series.p99_ms),
  };
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null) return values[i];
  return null;
}

function matches(app, needle) {
  if (!needle) return true;
  const hay = [app.name, app.route || '', app.state, app.origin].join(' ').toLowerCase();
  return needle.split(/\s+/).every((word) => hay.includes(word));
}

function renderTable() {
  const started = performance.now();
  const needle = $('filter').value.trim().toLowerCase();
  const sort = $('sort').value;
  const rows = state.apps
    .filter((app) => matches(app, needle))
    .map((app) => ({ app, rates: appRates(app.name) }));
  if (sort === 'errors') {
    rows.sort((a, b) => b.rates.errorCount - a.rates.errorCount || a.app.name.localeCompare(b.app.name));
  } else if (sort === 'rate') {
    rows.sort((a, b) => b.rates.requests - a.rates.requests || a.app.name.localeCompare(b.app.name));
  }
  // A refresh must not take the keyboard focus away from a row's button.
  const focusedRow = document.activeElement && document.activeElement.closest('#apps-body tr');
  const focused = focusedRow ? focusedRow.dataset.app : null;
  const body = document.createDocumentFragment();
  for (const { app, rates } of rows) body.appendChild(appRow(app, rates));
  $('apps-body').replaceChildren(body);
  if (focused) {
    const row = [...$('apps-body').children].find((tr) => tr.dataset.app === focused);
    if (row) row.querySelector('button').focus();
  }
  const ms = performance.now() - started;
  $('count').textContent = rows.length + ' of ' + state.apps.length + ' apps';
  document.body.dataset.renderMs = ms.toFixed(1);
  document.body.dataset.rows = String(rows.length);
}

function cell(row, text, className) {
  const td = document.createElement('td');
  if (text instanceof Node) td.appendChild(text); else td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function appRow(app, rates) {
  const row = document.createElement('tr');
  row.dataset.app = app.name;
  if (app.name === state.selected) row.className = 'selected';
  if (app.last_error) row.classList.add('has-error');
  const name = document.createElement('button');
  name.type = 'button';
  name.className = 'name-button';
  name.textContent = app.name;
  name.setAttribute('aria-label', 'Show app ' + app.name);
  name.addEventListener('click', () => select(app.name));
  const th = document.createElement('th');
  th.scope = 'row';
  th.appendChild(name);
  row.appendChild(th);
  cell(row, app.route || '—', 'mono');
  cell(row, app.origin);
  cell(row, app.state + (app.last_error ? ' (last change refused)' : ''));
  cell(row, app.version ? app.version.id + ' since ' + when(app.version.deployed_at) : 'none', 'mono');
  cell(row, app.canary ? app.canary.id + ' at ' + app.canary.percent + '%' : '—', 'mono');
  const rate = document.createElement('span');
  rate.textContent = rates.rate.toFixed(1) + ' ';
  const rateCell = cell(row, rate, 'num');
  if (rates.series) rateCell.appendChild(sparkline(rates.series.requests, 'requests per 5 s'));
  cell(row, rates.errors.toFixed(1), 'num');
  cell(row, ms(rates.p50) + ' / ' + ms(rates.p99), 'num');
  return row;
}

function ms(value) { return value === null ? '—' : value.toFixed(value < 10 ? 2 : 0) + ' ms'; }

function when(rfc3339) {
  const date = new Date(rfc3339);
  return isNaN(date) ? rfc3339 : date.toLocaleString();
}

function sparkline(values, what) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('viewBox', '0 0 80 20');
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', what + ': ' + values.join(', '));
  const line = document.createElementNS(SVG, 'polyline');
  line.setAttribute('points', points(values, 80, 20));
  svg.appendChild(line);
  return svg;
}

function points(values, width, height) {
  const max = Math.max(1, ...values.map((v) => v || 0));
  const step = values.length > 1 ? width / (values.length - 1) : width;
  return values
    .map((v, i) => (i * step).toFixed(1) + ',' + (height - ((v || 0) / max) * (height - 2) - 1).toFixed(1))
    .join(' ');
}

/** A chart of one or two series in `container`, with its numbers in text. */
function chart(container, series, unit, perSecond) {
  const interval = state.stats.interval_seconds || 5;
  const scaled = series.map((s) => ({
    name: s.name,
    values: s.values.map((v) => (v === null ? null : perSecond ? v / interval : v)),
  }));
  const all = scaled.flatMap((s) => s.values.filter((v) => v !== null));
  const max = Math.max(0, ...all);
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 300 90');
  svg.setAttribute('role', 'img');
  const summary = scaled
    .map((s) => s.name + ' now ' + fmt(lastValue(s.values)) + ' ' + unit)
    .join('; ');
  svg.setAttribute('aria-label', summary + '; highest ' + fmt(max) + ' ' + unit);
  for (const s of scaled) {
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', points(s.values, 300, 80).split(' ').map((p) => {
      const [x, y] = p.split(',');
      return x + ',' + (Number(y) + 10).toFixed(1);
    }).join(' '));
    line.setAttribute('class', s.name);
    svg.appendChild(line);
  }
  const label = document.createElementNS(SVG, 'text');
  label.setAttribute('x', '4');
  label.setAttribute('y', '10');
  label.textContent = 'max ' + fmt(max) + ' ' + unit;
  svg.appendChild(label);
  const text = document.createElement('p');
  text.className = 'note';
  text.textContent = summary;
  container.replaceChildren(svg, text);
  container.dataset.total = String(sum(series[0].values));
}

function fmt(v) { return v === null || v === undefined ? '—' : (Math.round(v * 100) / 100).toString(); }

// ---------- one app ----------

function select(name) {
  state.selected = name;
  $('details').hidden = false;
  $('action-result').replaceChildren();
  $('remove-confirm').hidden = true;
  for (const row of $('apps-body').children) {
    row.classList.toggle('selected', row.dataset.app === name);
  }
  renderDetails();
  followLog(name);
  $('details-title').focus();
}

function closeDetails() {
  state.selected = null;
  stopLog();
  $('details').hidden = true;
  renderTable();
}

function fact(list, term, value) {
  const dt = document.createElement('dt');
  dt.textContent = term;
  const dd = document.createElement('dd');
  dd.textContent = value;
  list.append(dt, dd);
}

async function renderDetails() {
  const name = state.selected;
  const app = state.apps.find((a) => a.name === name);
  $('details-title').textContent = 'App ' + name;
  $('details-title').tabIndex = -1;
  const facts = document.createDocumentFragment();
  if (!app) {
    fact(facts, 'State', 'gone (removed)');
    $('details-facts').replaceChildren(facts);
    return;
  }
  fact(facts, 'Route', app.route || '—');
  fact(facts, 'Origin', app.origin + (app.origin === 'api' ? '' : ' (changes only through its own source)'));
  fact(facts, 'State', app.state);
  fact(facts, 'Live version', app.version
    ? app.version.digest + ' (id ' + app.version.id + '), live since ' + when(app.version.deployed_at)
    : 'none');
  fact(facts, 'Canary', app.canary
    ? app.canary.id + ' serves ' + app.canary.percent + '% since ' + when(app.canary.deployed_at)
      + (app.canary.sticky_header ? ', sticky by ' + app.canary.sticky_header : '')
    : 'none');
  fact(facts, 'In flight', String(app.in_flight));
  if (app.version) {
    const r = app.version.requests;
    fact(facts, 'Responses (live version)', ['1xx', '2xx', '3xx', '4xx', '5xx'].map((k) => k + ' ' + r[k]).join(', '));
  }
  $('details-facts').replaceChildren(facts);

  const error = $('details-error');
  if (app.last_error) {
    const heading = document.createElement('h3');
    heading.textContent = 'Last refused change';
    const pre = document.createElement('pre');
    pre.className = 'refused';
    pre.textContent = app.last_error.kind + ' at ' + app.last_error.at + ':\n' + app.last_error.message;
    error.replaceChildren(heading, pre);
  } else {
    error.replaceChildren();
  }

  renderKept(app);

  const reply = await api('GET', '/v1/apps/' + encodeURIComponent(name) + '/stats');
  if (reply.status === 200 && state.selected === name) {
    state.stats.interval_seconds = reply.json.interval_seconds;
    const s = reply.json.apps[name];
    chart($('chart-rate'), [{ name: 'requests', values: s.requests }], 'req/s', true);
    chart($('chart-errors'), [{ name: 'errors', values: s.errors }], '5xx/s', true);
    chart($('chart-latency'), [{ name: 'p50', values: s.p50_ms }, { name: 'p99', values: s.p99_ms }], 'ms', false);
  }
}

function renderKept(app) {
  // Rebuilt only when something in it changed, so that a refresh does not
  // take the keyboard focus away from its buttons.
  const key = JSON.stringify([app.name, app.origin, app.kept, app.canary && app.canary.digest]);
  if (key === state.keptKey) return;
  state.keptKey = key;
  const body = document.createDocumentFragment();
  const select = $('canary-version');
  const chosen = select.value;
  const options = document.createDocumentFragment();
  for (const kept of app.kept) {
    const row = document.createElement('tr');
    const th = document.createElement('th');
    th.scope = 'row';
    th.className = 'mono';
    th.textContent = kept.id;
    th.title = kept.digest;
    row.appendChild(th);
    cell(row, when(kept.deployed_at));
    cell(row, kept.origin);
    cell(row, kept.live ? 'live' : '—');
    const actions = cell(row, '');
    if (!kept.live && app.origin === 'api') {
      const button = document.createElement('button');
      button.type = 'button';
      button.textContent = 'Roll back to ' + kept.id;
      button.addEventListener('click', () =>
        act('Rollback to ' + kept.id, 'POST', '/rollback', { version: kept.digest }));
      actions.appendChild(button);
      const option = document.createElement('option');
      option.value = kept.digest;
      option.textContent = kept.id + ' (' + when(kept.deployed_at) + ')';
      options.appendChild(option);
    }
    body.appendChild(row);
  }
  $('kept-body').replaceChildren(body);
  select.replaceChildren(options);
  if (chosen) select.value = chosen;
  const editable = app.origin === 'api';
  for (const id of ['canary-version', 'canary-percent', 'remove']) $(id).disabled = !editable;
  $('canary-form').querySelector('button[type=submit]').disabled = !editable || select.options.length === 0;
  $('canary-promote').disabled = !editable || !app.canary;
  $('canary-abort').disabled = !editable || !app.canary;
}

/** A change of the selected app through the API; its answer shown in place. */
async function act(label, method, suffix, json) {
  const name = state.selected;
  const out = $('action-result');
  out.replaceChildren(document.createTextNode(label + '…'));
  const reply = await api(method, '/v1/apps/' + encodeURIComponent(name) + suffix, json === undefined ? {} : { json });
  out.replaceChildren(answerView(label, reply.status, reply.json));
  await poll();
}

/** The pipeline's answer: what is live now, or the refusal in full. */
function answerView(label, status, json) {
  const p = document.createElement('pre');
  if (status >= 200 && status < 300) {
    p.className = 'ok';
    if (json && json.removed) {
      p.textContent = label + ': removed ' + json.removed;
    } else if (json && json.name) {
      p.textContent = label + ': done (' + status + '). ' + json.name + ' is ' + json.state
        + (json.version ? ', live version ' + json.version.id : '')
        + (json.canary ? ', canary ' + json.canary.id + ' at ' + json.canary.percent + '%' : '');
    } else {
      p.textContent = label + ': accepted (' + status + ')';
    }
  } else {
    p.className = 'refused';
    p.setAttribute('role', 'alert');
    p.textContent = label + ' refused (' + status + ' ' + (json && json.error ? json.error.kind : '') + '):\n'
      + (json && json.error ? json.error.message : 'no JSON answer');
  }
  return p;
}

// ---------- following the log ----------

function stopLog() {
  if (state.log) state.log.abort.abort();
  state.log = null;
}

function followLog(name) {
  stopLog();
  $('log').replaceChildren();
  const log = { name, abort: new AbortController(), after: 0 };
  state.log = log;
  readLog(log);
}

async function readLog(log) {
  while (state.log === log) {
    $('log-state').textContent = '(following)';
    try {
      const response = await fetch('/v1/apps/' + encodeURIComponent(log.name) + '/logs?follow=1&after=' + log.after, {
        headers: authHeaders({ Accept: 'text/event-stream' }),
        signal: log.abort.signal,
        cache: 'no-store',
      });
      if (!response.ok) throw new Error('meshd answered ' + response.status);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          onEvent(log, buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (e) {
      if (state.log !== log) return;
      $('log-state').textContent = '(' + e.message + '; retrying)';
    }
    await new Promise((resolve) => setTimeout(resolve, 3000));
  }
}

function onEvent(log, text) {
  let event = 'message';
  let data = '';
  for (const line of text.split('\n')) {
    if (line.startsWith('event: ')) event = line.slice(7);
    else if (line.startsWith('data: ')) data += line.slice(6);
  }
  if (!data) return;
  const json = JSON.parse(data);
  const li = document.createElement('li');
  if (event === 'gap') {
    li.className = 'gap';
    li.textContent = '… ' + json.missed + ' lines not shown (no longer kept, or this page was too slow)';
  } else if (event === 'line') {
    log.after = json.seq;
    li.value = json.seq;
    li.className = json.stream + (json.level ? ' level-' + json.level : '');
    const tag = json.stream === 'logging' ? json.level + (json.context ? ' ' + json.context : '') : json.stream;
    li.textContent = json.at.slice(11, 23) + ' [' + tag + '] ' + json.text;
  } else {
    return;
  }
  const list = $('log');
  const atBottom = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.appendChild(li);
  while (list.children.length > MAX_LOG_LINES) list.firstChild.remove();
  if (atBottom) list.scrollTop = list.scrollHeight;
}

// ---------- deploying ----------

function setFile(input, file) {
  const transfer = new DataTransfer();
  transfer.items.add(file);
  input.files = transfer.files;
}

function onDrop(event) {
  event.preventDefault();
  $('drop').classList.remove('over');
  for (const file of event.dataTransfer.files) {
    if (file.name.endsWith('.toml')) {
      setFile($('deploy-manifest'), file);
    } else {
      setFile($('deploy-wasm'), file);
      if (!$('deploy-name').value) $('deploy-name').value = file.name.replace(/\.wasm$/, '');
    }
  }
}

function deploy(event) {
  event.preventDefault();
  const name = $('deploy-name').value.trim();
  const wasm = $('deploy-wasm').files[0];
  const manifest = $('deploy-manifest').files[0];
  const out = $('deploy-result');
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(name)) {
    out.replaceChildren(answerView('Deploy', 400, { error: { kind: 'bad_request', message: 'An app name is ASCII letters, digits, - and _, starting with a letter or digit, at most 64 characters.' } }));
    return;
  }
  if (!wasm) return;
  const progress = $('deploy-progress');
  progress.hidden = false;
  progress.value = 0;
  out.replaceChildren(document.createTextNode('Uploading ' + wasm.name + '…'));
  const asCanary = $('deploy-as-canary').checked;
  const percent = Number($('deploy-canary-percent').value);
  const label = (asCanary ? 'Canary upload of ' : 'Deploy of ') + name;
  const xhr = new XMLHttpRequest();
  if (asCanary) {
    xhr.open('POST', '/v1/apps/' + encodeURIComponent(name) + '/canary?percent=' + encodeURIComponent(percent));
  } else {
    xhr.open('PUT', '/v1/apps/' + encodeURIComponent(name));
  }
  if (state.token) xhr.setRequestHeader('Authorization', 'Bearer ' + state.token);
  xhr.upload.addEventListener('progress', (e) => {
    if (e.lengthComputable) progress.value = Math.round((e.loaded / e.total) * 100);
  });
  xhr.upload.addEventListener('load', () => {
    progress.value = 100;
    out.replaceChildren(document.createTextNode('Uploaded; meshd is checking and compiling it…'));
  });
  xhr.addEventListener('load', () => {
    let json = null;
    try { json = JSON.parse(xhr.responseText); } catch (_) { json = null; }
    out.replaceChildren(answerView(label, xhr.status, json));
    poll();
  });
  xhr.addEventListener('error', () => {
    out.replaceChildren(answerView(label, 0, { error: { kind: 'network', message: 'the upload failed (connection lost)' } }));
  });
  if (manifest) {
    const form = new FormData();
    form.append('wasm', wasm, wasm.name);
    form.append('manifest', manifest, manifest.name);
    xhr.send(form);
  } else {
    xhr.setRequestHeader('Content-Type', 'application/wasm');
    xhr.send(wasm);
  }
}

// ---------- wiring ----------

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

document.addEventListener('DOMContentLoaded', () => {
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    signIn($('token').value.trim());
  });
  $('logout').addEventListener('click', () => signOut('Signed out.'));
  $('filter').addEventListener('input', debounce(renderTable, 100));
  $('sort').addEventListener('change', renderTable);
  $('details-close').addEventListener('click', closeDetails);
  $('deploy-form').addEventListener('submit', deploy);
  const drop = $('deploy');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); $('drop').classList.add('over'); });
  drop.addEventListener('dragleave', () => $('drop').classList.remove('over'));
  drop.addEventListener('drop', onDrop);
  $('canary-percent').addEventListener('input', () => {
    $('canary-percent-out').value = $('canary-percent').value;
  });
  $('canary-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const version = $('canary-version').value;
    const percent = Number($('canary-percent').value);
    act('Canary of ' + version.slice(0, 12) + ' at ' + percent + '%', 'POST', '/canary', { version, percent });
  });
  $('canary-promote').addEventListener('click', () => act('Promote', 'POST', '/promote'));
  $('canary-abort').addEventListener('click', () => act('Abort canary', 'POST', '/abort'));
  $('remove').addEventListener('click', () => {
    $('remove-name').textContent = state.selected;
    $('remove-confirm').hidden = false;
    $('remove-no').focus();
  });
  $('remove-no').addEventListener('click', () => { $('remove-confirm').hidden = true; });
  $('remove-yes').addEventListener('click', async () => {
    $('remove-confirm').hidden = true;
    await act('Remove ' + state.selected, 'DELETE', '');
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && state.selected) closeDetails();
  });
  if (state.token !== null) signIn(state.token); else $('token').focus();
});
