// larder dashboard: the models, memory over time, load times, advice and events of the
// larderd that serves this page, live from GET /v1/events.
//
// Everything the daemon says (model names, errors, event details) is put into the page
// as text (textContent, setAttribute), never parsed as HTML.
'use strict';

const SVG = 'http://www.w3.org/2000/svg';
const TOKEN_KEY = 'larder.adminToken';
const WINDOW_MS = 10 * 60 * 1000;   // the timeline shows the last ten minutes
const MAX_EVENTS = 300;
const MAX_MARKERS = 500;

const models = new Map();           // name -> {info, since, exact, loadStart, reason, fetched, row}
const samples = [];                 // {t, rss, reserved, cgroup}
const markers = [];                 // {t, kind, name, text}
let memory = null;                  // the last GET /v1/memory
let sort = {key: 'name', asc: true};

// ---- small helpers --------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function bytes(n) {
  if (n === null || n === undefined || n < 0) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(n < 10 ? 2 : 1) : String(n)) + ' ' + u[i];
}

function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return '–';
  const s = ms / 1000;
  if (s < 1) return Math.round(ms) + ' ms';
  if (s < 90) return s.toFixed(1) + ' s';
  if (s < 5400) return Math.round(s / 60) + ' min';
  return (s / 3600).toFixed(1) + ' h';
}

function notice(text, error) {
  const n = $('notice');
  n.textContent = text;
  n.className = error ? 'notice error' : 'notice';
}

async function getJSON(path) {
  const r = await fetch(path, {cache: 'no-store'});
  const body = await r.json().catch(() => null);
  return {status: r.status, body};
}

function errorText(body, status) {
  const e = body && body.error;
  return e ? `${e.code}: ${e.message}` : `HTTP ${status}`;
}

// ---- admin token: asked for once, kept in this tab's sessionStorage only ---------------

let tokenWaiter = null;

function askToken() {
  const form = $('token-form');
  form.hidden = false;
  $('token-input').value = '';
  $('token-input').focus();
  return new Promise(resolve => { tokenWaiter = resolve; });
}

function setupToken() {
  $('token-form').addEventListener('submit', ev => {
    ev.preventDefault();
    const t = $('token-input').value.trim();
    $('token-input').value = '';
    $('token-form').hidden = true;
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    $('btn-forget').hidden = !t;
    if (tokenWaiter) tokenWaiter(t || null);
    tokenWaiter = null;
  });
  $('token-cancel').addEventListener('click', () => {
    $('token-form').hidden = true;
    if (tokenWaiter) tokenWaiter(null);
    tokenWaiter = null;
  });
  $('btn-forget').hidden = !sessionStorage.getItem(TOKEN_KEY);
  $('btn-forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $('btn-forget').hidden = true;
    notice('admin token forgotten');
  });
}

// POST an admin route with the token in the Authorization header (never in the URL).
async function admin(path, what) {
  for (let attempt = 0; attempt < 2; attempt++) {
    let token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) token = await askToken();
    if (!token) { notice(`${what}: no admin token`, true); return; }
    notice(`${what}…`);
    const r = await fetch(path, {method: 'POST', headers: {'Authorization': 'Bearer ' + token}});
    const body = await r.json().catch(() => null);
    if (r.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      $('btn-forget').hidden = true;
      notice(`${what}: the token was refused`, true);
      continue;
    }
    if (r.ok) notice(`${what}: done`);
    else notice(`${what}: ${errorText(body, r.status)}`, true);
    return;
  }
}

// ---- models table ------------------------------------------------------------------------

const columns = [
  ['name', m => m.info.name],
  ['backend', m => m.info.backend],
  ['isolation', m => isolation(m.info)],
  ['state', m => m.info.state],
  ['instances', m => m.info.instances ? m.info.instances.busy : 0],
  ['estimate', m => m.info.memory ? m.info.memory.estimate_bytes : 0],
  ['measured', m => m.info.memory ? m.info.memory.measured_bytes : 0],
  ['hits', m => m.info.hits],
  ['cold', m => m.info.cold_starts],
  ['evictions', m => m.info.evictions],
  ['load_last', m => m.info.load_ms ? m.info.load_ms.last : 0],
  ['expires', m => expiresIn(m)],
  ['priority', m => (m.info.pin ? 1e9 : 0) + m.info.priority],
  ['fallback', m => m.info.fallback || ''],
  ['error', m => m.info.last_error ? m.info.last_error.message || '' : ''],
];

function isolation(info) {
  const v = info.isolation;
  if (typeof v === 'string' && v) return v;
  if (v && typeof v === 'object' && typeof v.mode === 'string') return v.mode;
  return 'in-process';
}

function expiresIn(m) {
  const e = m.info.expires_in_ms;
  if (e === undefined || e < 0) return -1;
  return Math.max(0, e - (Date.now() - m.fetched));
}

function setModel(info, exactChange) {
  const now = Date.now();
  let m = models.get(info.name);
  if (!m) {
    m = {info, since: now, exact: false, loadStart: null, reason: null, fetched: now, row: null};
    models.set(info.name, m);
  } else if (m.info.state !== info.state) {
    m.since = now;
    m.exact = true;
  }
  if (exactChange) m.exact = true;
  m.info = info;
  m.fetched = now;
  if (info.state !== 'loading') m.loadStart = null;
  else if (!m.loadStart) m.loadStart = now;
}

function makeRow(name) {
  const tr = el('tr');
  tr.setAttribute('data-name', name);
  tr.cells_ = {};
  for (const [key] of columns) {
    const td = el('td');
    td.setAttribute('data-col', key);
    tr.cells_[key] = td;
    tr.appendChild(td);
  }
  const td = el('td', 'admin');
  const load = el('button', 'load', 'Load');
  load.type = 'button';
  load.addEventListener('click', () =>
    admin(`/v1/models/${encodeURIComponent(name)}/load?wait=no`, `load ${name}`));
  const unload = el('button', 'unload', 'Unload');
  unload.type = 'button';
  unload.addEventListener('click', () =>
    admin(`/v1/models/${encodeURIComponent(name)}/unload`, `unload ${name}`));
  td.append(load, ' ', unload);
  tr.appendChild(td);
  for (const k of ['instances', 'estimate', 'measured', 'hits', 'cold', 'evictions',
                   'load_last', 'expires'])
    tr.cells_[k].className = 'num';
  tr.cells_.error.className = 'err';
  return tr;
}

function fillRow(m) {
  const i = m.info, c = m.row.cells_, now = Date.now();
  c.name.textContent = i.name;
  c.backend.textContent = i.backend;
  c.isolation.textContent = isolation(i);
  c.state.replaceChildren();
  const badge = el('span', 'state ' + i.state, i.state);
  c.state.append(badge);
  c.state.append(el('span', 'since', (m.exact ? '' : '≥ ') + duration(now - m.since)));
  if (i.state === 'loading' && m.loadStart) {
    const expected = i.load_ms && i.load_ms.avg > 0 ? i.load_ms.avg : 0;
    const elapsed = now - m.loadStart;
    if (expected) {
      const p = el('progress');
      p.max = expected;
      p.value = Math.min(elapsed, expected);
      c.state.append(p);
      c.state.append(el('span', 'since', `${duration(elapsed)} of ~${duration(expected)}`));
    }
  }
  const inst = i.instances || {};
  c.instances.textContent = `${inst.busy ?? 0}/${inst.created ?? 0}` + (inst.max ? ` (max ${inst.max})` : '');
  c.estimate.textContent = bytes(i.memory && i.memory.estimate_bytes);
  c.measured.textContent = i.memory && i.memory.measured_bytes ? bytes(i.memory.measured_bytes) : '–';
  c.hits.textContent = i.hits;
  c.cold.textContent = i.cold_starts;
  c.evictions.textContent = i.evictions + (m.reason ? ` (${m.reason})` : '');
  c.load_last.textContent = i.loads ? `${Math.round(i.load_ms.last)} / ${Math.round(i.load_ms.avg)}` : '–';
  const e = expiresIn(m);
  c.expires.textContent = e < 0 ? '–' : duration(e);
  c.priority.textContent = (i.pin ? 'pinned, ' : '') + i.priority;
  c.fallback.textContent = i.fallback || '';
  c.error.textContent = i.last_error ? (i.last_error.message || i.last_error.name || '') : '';
}

function renderTable() {
  const tbody = document.querySelector('#models tbody');
  const fn = columns.find(c => c[0] === sort.key)[1];
  const list = [...models.values()].sort((a, b) => {
    const x = fn(a), y = fn(b);
    const r = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y));
    return (sort.asc ? r : -r) || a.info.name.localeCompare(b.info.name);
  });
  list.forEach((m, k) => {
    if (!m.row) m.row = makeRow(m.info.name);
    fillRow(m);
    if (tbody.children[k] !== m.row) tbody.insertBefore(m.row, tbody.children[k] || null);
  });
  for (const tr of [...tbody.children])
    if (!models.has(tr.getAttribute('data-name'))) tr.remove();
  let loaded = 0, reserved = 0;
  for (const m of models.values()) {
    if (m.info.state === 'ready') loaded++;
    reserved += m.info.memory ? m.info.memory.reserved_bytes : 0;
  }
  $('summary').textContent = `${models.size} models, ${loaded} ready, ${bytes(reserved)} reserved` +
    (memory ? ` of ${bytes(memory.budget_bytes)}` : '');
}

function setupSort() {
  for (const th of document.querySelectorAll('#models th[data-key]')) {
    th.addEventListener('click', () => {
      const key = th.getAttribute('data-key');
      sort = {key, asc: sort.key === key ? !sort.asc : true};
      for (const o of document.querySelectorAll('#models th')) o.classList.remove('sorted', 'asc');
      th.classList.add('sorted');
      if (sort.asc) th.classList.add('asc');
      renderTable();
    });
  }
}

async function refreshAll() {
  const r = await getJSON('/v1/models');
  if (r.status !== 200 || !r.body) { notice(`models: ${errorText(r.body, r.status)}`, true); return; }
  const seen = new Set();
  for (const info of r.body.models) { setModel(info, false); seen.add(info.name); }
  for (const name of [...models.keys()]) if (!seen.has(name)) models.delete(name);
  renderTable();
}

// One model again, after an event about it: the table follows the events, one request
// for the model they name, rather than polling every model.
const pending = new Map();
function refreshModel(name) {
  if (pending.has(name)) return;
  pending.set(name, setTimeout(async () => {
    pending.delete(name);
    const r = await getJSON(`/v1/models/${encodeURIComponent(name)}`);
    if (r.status === 404) models.delete(name);
    else if (r.status === 200 && r.body) setModel(r.body, true);
    renderTable();
  }, 50));
}

// ---- memory timeline ----------------------------------------------------------------------

function addSample(h) {
  if (samples.some(s => s.t === h.time_ms)) return;
  samples.push({t: h.time_ms, rss: h.rss_bytes, reserved: h.reserved_bytes, cgroup: h.cgroup_bytes});
  samples.sort((a, b) => a.t - b.t);
  while (samples.length && samples[0].t < Date.now() - 2 * WINDOW_MS) samples.shift();
}

function markerText(kind, ev) {
  const lines = [`${kind}${ev.reason ? ' (' + ev.reason + ')' : ''}${ev.name ? ': ' + ev.name : ''}`];
  if (kind === 'load' && ev.bytes) lines.push(`reserved ${bytes(ev.bytes)}`);
  if (kind === 'load' && ev.load_ms !== undefined) lines.push(`took ${duration(ev.load_ms)}`);
  if (kind === 'evict' && ev.bytes) lines.push(`freed ${bytes(ev.bytes)} of the budget`);
  if (kind === 'unload') {
    if (ev.bytes) lines.push(`reserved ${bytes(ev.bytes)}`);
    if (ev.bytes_returned !== undefined) lines.push(`returned ${bytes(ev.bytes_returned)} to the system`);
  }
  if (ev.message) lines.push(ev.message);
  return lines.join('\n');
}

function addMarker(t, kind, ev) {
  markers.push({t, kind, name: ev.name || '', text: markerText(kind, ev)});
  if (markers.length > MAX_MARKERS) markers.shift();
}

function fromHistory(history) {
  for (const h of history) {
    if (h.kind === 'sample') addSample(h);
    else if (h.kind === 'unload') addMarker(h.time_ms, 'unload', {name: h.name, bytes_returned: h.bytes});
    else addMarker(h.time_ms, h.kind, {name: h.name, bytes: h.bytes});
  }
}

async function refreshMemory(history) {
  const r = await getJSON(`/v1/memory?history=${history}`);
  if (r.status !== 200 || !r.body) return;
  memory = r.body;
  if (history > 60) fromHistory(memory.history);
  else for (const h of memory.history) if (h.kind === 'sample') addSample(h);
  // The history samples each second while the manager has work; the figures read now
  // keep the lines going between them.
  const last = samples.length ? samples[samples.length - 1].t : 0;
  if (Date.now() - last > 1500)
    addSample({time_ms: Date.now(), rss_bytes: memory.process.rss_bytes, reserved_bytes: memory.reserved_bytes,
               cgroup_bytes: memory.cgroup ? memory.cgroup.current_bytes : 0});
  renderTimeline();
}

function renderTimeline() {
  const box = $('timeline');
  const W = box.clientWidth || 800, H = box.clientHeight || 260;
  const L = 64, R = 10, T = 40, B = 22;
  box.setAttribute('viewBox', `0 0 ${W} ${H}`);
  box.replaceChildren();
  // the last ten minutes, or less while the page has seen less
  const now = Date.now();
  const first = Math.min(samples.length ? samples[0].t : now, markers.length ? markers[0].t : now);
  const span = Math.min(WINDOW_MS, Math.max(60000, now - first));
  const t0 = now - span;
  const shown = samples.filter(s => s.t >= t0);
  const budget = memory ? memory.budget_bytes : 0;
  const cg = memory && memory.cgroup ? memory.cgroup : null;
  const cgLimit = cg && (cg.max_bytes ?? cg.high_bytes);
  let top = budget;
  for (const s of shown) top = Math.max(top, s.rss, s.reserved, s.cgroup || 0);
  if (cgLimit && cgLimit < top * 1.5) top = Math.max(top, cgLimit);
  top = top * 1.1 || 1;
  const x = t => L + (W - L - R) * (t - t0) / span;
  const y = v => T + (H - T - B) * (1 - v / top);
  for (let k = 0; k <= 4; k++) {
    const v = top * k / 4;
    box.append(svg('line', {x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid'}));
    const label = svg('text', {x: 4, y: y(v) + 3});
    label.textContent = bytes(v);
    box.append(label);
  }
  for (let k = 0; k <= 5; k++) {
    const label = svg('text', {x: x(t0 + span * k / 5) - 10, y: H - 6});
    label.textContent = k === 5 ? 'now' : '-' + duration(span * (5 - k) / 5);
    box.append(label);
  }
  const line = (cls, pick) => {
    const pts = shown.filter(s => pick(s) > 0).map(s => `${x(s.t).toFixed(1)},${y(pick(s)).toFixed(1)}`);
    if (pts.length > 1) box.append(svg('polyline', {points: pts.join(' '), class: 'series ' + cls}));
  };
  if (budget) box.append(svg('line', {x1: L, x2: W - R, y1: y(budget), y2: y(budget), class: 'series budget'}));
  if (cgLimit && cgLimit <= top)
    box.append(svg('line', {x1: L, x2: W - R, y1: y(cgLimit), y2: y(cgLimit), class: 'series cglimit'}));
  line('reserved', s => s.reserved);
  line('rss', s => s.rss);
  line('cgroup', s => s.cgroup);
  if (memory && memory.gpus)
    memory.gpus.forEach(g => {
      if (g.used_bytes <= top)
        box.append(svg('line', {x1: x(now) - 6, x2: x(now), y1: y(g.used_bytes), y2: y(g.used_bytes), class: 'series gpu'}));
    });
  for (const mk of markers) {
    if (mk.t < t0) continue;
    const row = ['load', 'load_fail', 'evict', 'unload', 'pressure'].indexOf(mk.kind);
    const c = svg('circle', {cx: x(mk.t), cy: 7 + 7 * Math.max(0, row), r: 4, class: 'marker ' + mk.kind});
    c.setAttribute('data-kind', mk.kind);
    c.setAttribute('data-name', mk.name);
    const title = svg('title');
    title.textContent = mk.text;
    c.append(title);
    c.addEventListener('mouseenter', ev => showTip(mk.text, ev));
    c.addEventListener('mouseleave', () => { $('tip').hidden = true; });
    box.append(c);
  }
}

function showTip(text, ev) {
  const tip = $('tip'), wrap = tip.parentElement.getBoundingClientRect();
  tip.textContent = text;
  tip.hidden = false;
  tip.style.left = Math.min(ev.clientX - wrap.left + 10, wrap.width - 240) + 'px';
  tip.style.top = (ev.clientY - wrap.top + 10) + 'px';
}

function renderLegend() {
  const lg = $('legend');
  for (const [name, color] of [['budget', '--budget'], ['reserved', '--reserved'], ['process RSS', '--rss'],
                               ['cgroup usage / limit', '--cgroup'], ['GPU used', '--gpu']]) {
    const s = el('span');
    const sw = el('i');
    sw.style.background = `var(${color})`;
    s.append(sw, name);
    lg.append(s);
  }
  lg.append(el('span', null, '● load ● evict ● unload ● pressure: hover for figures'));
}

// ---- load-time distribution (per model, from /metrics) -----------------------------------

async function refreshLoadTimes() {
  const r = await fetch('/metrics', {cache: 'no-store'});
  if (!r.ok) return;
  const text = await r.text();
  const per = new Map();
  const re = /^larder_component_load_duration_seconds_bucket\{name="([^"]*)",le="([^"]*)"\} (\d+)/;
  for (const l of text.split('\n')) {
    const m = re.exec(l);
    if (!m) continue;
    if (!per.has(m[1])) per.set(m[1], []);
    per.get(m[1]).push([m[2], Number(m[3])]);
  }
  const box = $('loadtimes');
  box.replaceChildren();
  if (!per.size) box.append(el('p', 'none', 'no loads yet'));
  for (const [name, cum] of [...per.entries()].sort()) {
    const counts = cum.map(([le, n], k) => [le, n - (k ? cum[k - 1][1] : 0)]);
    let first = counts.findIndex(c => c[1] > 0), last = counts.length - 1;
    while (last > 0 && counts[last][1] === 0) last--;
    first = Math.max(0, Math.min(first, last - 3));
    const shown = counts.slice(first, last + 1);
    const max = Math.max(1, ...shown.map(c => c[1]));
    const fig = el('figure');
    fig.setAttribute('data-name', name);
    fig.append(el('figcaption', null, `${name}: ${cum[cum.length - 1][1]} loads`));
    const s = svg('svg', {viewBox: '0 0 200 70', preserveAspectRatio: 'none'});
    const w = 200 / shown.length;
    shown.forEach(([le, n], k) => {
      const h = 50 * n / max;
      const rect = svg('rect', {x: k * w + 1, y: 55 - h, width: w - 2, height: h});
      const t = svg('title');
      t.textContent = `≤ ${le} s: ${n}`;
      rect.append(t);
      s.append(rect);
      const label = svg('text', {x: k * w + 1, y: 66});
      label.textContent = le === '+Inf' ? '>' : '≤' + le;
      s.append(label);
    });
    fig.append(s);
    box.append(fig);
  }
}

// ---- advice -------------------------------------------------------------------------------

async function refreshAdvice() {
  const r = await getJSON('/v1/advice');
  if (r.status !== 200 || !r.body) return;
  const ul = $('advice');
  ul.replaceChildren();
  if (!r.body.advice.length) ul.append(el('li', 'none', 'nothing to change'));
  for (const a of r.body.advice) {
    const li = el('li');
    li.setAttribute('data-kind', a.kind);
    li.append(el('span', 'kind', a.kind + (a.model ? ' · ' + a.model : '')));
    li.append(el('span', null, a.suggestion));
    const ev = Object.entries(a.evidence || {}).map(([k, v]) =>
      `${k} ${typeof v === 'number' && /bytes$/.test(k) ? bytes(v) : typeof v === 'number' ? +v.toFixed(2) : v}`);
    li.append(el('div', 'evidence', ev.join(' · ')));
    ul.append(li);
  }
}

let adviceTimer = null;
function soonAdvice() {
  if (adviceTimer) return;
  adviceTimer = setTimeout(() => { adviceTimer = null; refreshAdvice(); }, 1000);
}

let loadTimesTimer = null;
function soonLoadTimes() {
  if (loadTimesTimer) return;
  loadTimesTimer = setTimeout(() => { loadTimesTimer = null; refreshLoadTimes(); }, 300);
}

// ---- events -------------------------------------------------------------------------------

const TYPES = ['load_start', 'load_done', 'load_fail', 'evict', 'unload', 'instance_new',
               'instance_free', 'pressure', 'fallback', 'reload'];

function logEvent(type, ev) {
  const parts = [new Date().toLocaleTimeString(), type];
  if (ev.name) parts.push(ev.name);
  if (ev.reason) parts.push('reason=' + ev.reason);
  if (ev.bytes) parts.push(bytes(ev.bytes));
  if (ev.bytes_returned !== undefined) parts.push('returned ' + bytes(ev.bytes_returned));
  if (ev.load_ms !== undefined) parts.push(duration(ev.load_ms));
  if (ev.served_by) parts.push('served by ' + ev.served_by);
  if (ev.error) parts.push(ev.error);
  if (ev.message) parts.push(ev.message);
  if (type === 'reload') parts.push(JSON.stringify(ev));
  const li = el('li', type === 'load_fail' || type === 'pressure' ? 'warn' : null, parts.join('  '));
  li.setAttribute('data-type', type);
  const ol = $('events');
  ol.insertBefore(li, ol.firstChild);
  while (ol.children.length > MAX_EVENTS) ol.lastChild.remove();
}

function onEvent(type, ev) {
  logEvent(type, ev);
  const now = Date.now();
  const m = ev.name ? models.get(ev.name) : null;
  if (type === 'load_start' && m) { m.loadStart = now; m.info.state = 'loading'; m.since = now; m.exact = true; }
  if (type === 'evict' && m) m.reason = ev.reason;
  if (type === 'load_done') { addMarker(now, 'load', ev); soonLoadTimes(); }
  if (type === 'load_fail') addMarker(now, 'load_fail', ev);
  if (type === 'evict') addMarker(now, 'evict', ev);
  if (type === 'unload') addMarker(now, 'unload', ev);
  if (type === 'pressure') addMarker(now, 'pressure', ev);
  if (type === 'reload') refreshAll();
  else if (ev.name) refreshModel(ev.name);
  if (type !== 'instance_new' && type !== 'instance_free') soonAdvice();
  renderTable();
  renderTimeline();
}

function connect() {
  const es = new EventSource('/v1/events');
  es.addEventListener('open', () => {
    $('conn').textContent = 'live';
    $('conn').className = 'conn live';
    refreshAll();
  });
  es.addEventListener('error', () => {
    $('conn').textContent = 'reconnecting…';
    $('conn').className = 'conn';
  });
  for (const t of TYPES)
    es.addEventListener(t, e => {
      let ev = {};
      try { ev = JSON.parse(e.data); } catch (_) { return; }
      onEvent(t, ev);
    });
}

// ---- start --------------------------------------------------------------------------------

function start() {
  setupToken();
  setupSort();
  renderLegend();
  $('btn-cleanup').addEventListener('click', () => admin('/v1/memory/cleanup', 'cleanup'));
  $('btn-reload').addEventListener('click', () => admin('/v1/reload', 'reload'));
  refreshAll();
  refreshMemory(3600);
  refreshLoadTimes();
  refreshAdvice();
  connect();
  setInterval(renderTable, 1000);            // time in state, expiry, load progress
  setInterval(() => refreshMemory(5), 2000); // the samples, one a second
  setInterval(refreshAdvice, 15000);
  window.addEventListener('resize', renderTimeline);
}

document.addEventListener('DOMContentLoaded', start);
