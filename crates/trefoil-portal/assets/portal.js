// The portal's one script: fills the server-rendered pages from the REST
// API (/api/v1), the same surface the CLI uses, so every write here is
// validated, versioned and authorised (the same bearer tokens) as a CLI
// write is. No framework and no build: the pages are small, and a mesh
// without internet must still show them.
'use strict';

// Every request of the portal goes through api(): the one place that adds
// the bearer token (kept in sessionStorage from the login link or the login
// form) and reads the API's JSON answers and error bodies.
const TOKEN_KEY = 'trefoil.token';

// A login link (`trefoil up` prints one, as Jupyter does) carries the token
// in its fragment, which the browser never sends to a server: it is kept
// for this tab and taken out of the address bar and the history.
function takeToken() {
  const m = /^#token=([A-Za-z0-9_.-]+)$/.exec(location.hash);
  if (!m) return false;
  sessionStorage.setItem(TOKEN_KEY, m[1]);
  history.replaceState(null, '', location.pathname + location.search);
  return true;
}
takeToken();
// The link opened on a page already showing (only the fragment changes).
window.addEventListener('hashchange', () => { if (takeToken()) location.reload(); });

// Without a token (or with one expired or revoked) the API answers 401:
// the page asks for one, once.
let loginShown = false;
function showLogin(reason) {
  if (loginShown) return;
  loginShown = true;
  const input = el('input', { type: 'password', id: 'login-token', autocomplete: 'off', 'aria-label': 'API token' });
  const login = (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (token) { sessionStorage.setItem(TOKEN_KEY, token); location.reload(); }
  };
  document.body.prepend(el('form', { id: 'login', class: 'login', onsubmit: login },
    el('p', {}, reason + ' Open the link `trefoil up` printed, or paste a token (`trefoil token create --role viewer`): ',
      input, ' ', el('button', { type: 'submit' }, 'Log in'))));
  input.focus();
}
async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.set('Authorization', 'Bearer ' + token);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (e) {
    health('control plane unreachable', true);
    return { status: 0, ok: false, body: { error: 'the control plane did not answer: ' + e.message } };
  }
  health('', false);
  const text = await response.text();
  let body = null;
  if (text) {
    try { body = JSON.parse(text); } catch (_) { body = { error: text }; }
  }
  if (response.status === 401) showLogin((body && body.error) || 'The API needs a token.');
  return { status: response.status, ok: response.ok, body };
}

function health(text, bad) {
  const h = document.getElementById('health');
  if (h) { h.textContent = text; h.className = bad ? 'bad' : ''; }
}

// Builds an element; strings become text nodes, never markup, so names and
// messages from the API cannot inject anything.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function fill(tableId, rows, empty) {
  const body = document.querySelector('#' + tableId + ' tbody');
  const cols = document.querySelectorAll('#' + tableId + ' thead th').length;
  body.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: cols, class: 'empty' }, empty))]));
}

function row(cells, attrs) {
  return el('tr', attrs || {}, cells.map((c) => el('td', {}, c)));
}

async function list(kind) {
  const r = await api('/api/v1/' + kind);
  return r.ok && r.body && Array.isArray(r.body.items) ? r.body.items : [];
}

const nameOf = (o) => (o.metadata && o.metadata.name) || '';
const specOf = (o) => o.spec || {};
const byName = (a, b) => nameOf(a).localeCompare(nameOf(b));

// ---- YAML, for showing and editing resources the API returns as JSON ----

const PLAIN = /^[A-Za-z_/][\w./@:-]*$/;
const RESERVED = /^(true|false|null|yes|no|on|off|y|n|~)$/i;
function scalar(v) {
  if (v === null || v === undefined) return 'null';
  if (typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) return '[]';
  if (typeof v === 'object') return '{}';
  const s = String(v);
  return PLAIN.test(s) && !RESERVED.test(s) && !/:$/.test(s) ? s : JSON.stringify(s);
}
const complex = (v) => v !== null && typeof v === 'object' && Object.keys(v).length > 0;
// A multi-line string (a handler script) as a literal block, as people write it.
function literal(s) {
  return s.includes('\n') && !/^\s/.test(s) && !/\n\n$/.test(s) && !/[^\S\n]\n/.test(s);
}
function emit(v, pad, out) {
  if (Array.isArray(v)) {
    for (const item of v) {
      if (complex(item)) {
        const sub = [];
        emit(item, pad + '  ', sub);
        sub[0] = pad + '- ' + sub[0].slice(pad.length + 2);
        out.push(...sub);
      } else {
        out.push(pad + '- ' + scalar(item));
      }
    }
    return;
  }
  for (const [k, val] of Object.entries(v)) {
    const key = scalar(k);
    if (complex(val)) {
      out.push(pad + key + ':');
      emit(val, Array.isArray(val) ? pad : pad + '  ', out);
    } else if (typeof val === 'string' && literal(val)) {
      out.push(pad + key + ': |' + (val.endsWith('\n') ? '' : '-'));
      for (const line of val.replace(/\n$/, '').split('\n')) out.push(line ? pad + '  ' + line : '');
    } else {
      out.push(pad + key + ': ' + scalar(val));
    }
  }
}
function toYaml(obj) {
  const out = [];
  emit(obj, '', out);
  return out.join('\n') + '\n';
}

// What a person edits: the object without the fields the server sets,
// except resourceVersion, which makes the next write optimistic.
function editable(obj, keepVersion) {
  const copy = JSON.parse(JSON.stringify(obj));
  if (copy.metadata) {
    delete copy.metadata.generation;
    if (!keepVersion) delete copy.metadata.resourceVersion;
  }
  delete copy.status;
  return copy;
}

// Line diff (longest common subsequence; resources are a few hundred lines).
function diffLines(before, after) {
  const a = before.split('\n'), b = after.split('\n');
  const n = a.length, m = b.length;
  const L = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) L[i][j] = a[i] === b[j] ? L[i + 1][j + 1] + 1 : Math.max(L[i + 1][j], L[i][j + 1]);
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push([' ', a[i]]); i++; j++; }
    else if (j < m && (i === n || L[i][j + 1] >= L[i + 1][j])) { out.push(['+', b[j]]); j++; }
    else { out.push(['-', a[i]]); i++; }
  }
  return out;
}

// ---- Dashboard ----

async function dashboard() {
  const [status, services, workloads, events] = await Promise.all([
    api('/api/v1/status/proxies'), list('services'), list('workloads'), list('events'),
  ]);
  const proxies = status.ok ? status.body.items : [];
  fill('proxies', proxies.map((p) => row([
    p.name,
    el('span', { class: p.connected ? 'ok' : 'bad' }, p.connected ? 'yes' : 'no'),
    el('span', { class: p.ackedVersion && p.ackedVersion === p.latestVersion ? 'ok' : 'wait' }, p.ackedVersion || '—'),
    p.latestVersion || '—',
    p.nack ? el('span', { class: 'bad' }, 'v' + p.nack.version + ': ' + p.nack.error) : '—',
  ])), 'no proxies declared');
  if (status.ok) document.getElementById('compiled').textContent = 'compiled revision ' + status.body.compiledRevision;
  // A workload's service exists whether or not a Service declares its ports.
  const names = [...new Set(services.map(nameOf).concat(workloads.map((w) => specOf(w).service).filter(Boolean)))].sort();
  fill('services', names.map((name) => {
    const declared = specOf(services.find((s) => nameOf(s) === name) || {});
    const mine = workloads.filter((w) => specOf(w).service === name);
    const ports = (declared.ports || []).map((p) => (p.name ? p.name + ' ' : '') + p.port + '/' + (p.protocol || 'http')).join(', ');
    const versions = [...new Set(mine.map((w) => specOf(w).version || 'v1'))].join(', ');
    return row([name, ports || '—', mine.map(nameOf).join(', ') || (declared.endpoints ? 'static endpoints' : '—'), versions || '—']);
  }), 'no services');
  fill('workloads', workloads.sort(byName).map((w) => {
    const s = specOf(w);
    return row([nameOf(w), s.service || '—', s.version || '—', s.replicas === undefined ? 1 : s.replicas, s.node || '—']);
  }), 'no workloads');
  const recent = events.map((e) => specOf(e)).sort((x, y) => (y.timeMs || 0) - (x.timeMs || 0)).slice(0, 20);
  fill('events', recent.map((e) => row([e.timeMs ? new Date(e.timeMs).toLocaleTimeString() : '—', e.regarding || '—', e.reason || '—', e.message || '']), 'no events yet'));
  document.getElementById('updated').textContent = 'Last update ' + new Date().toLocaleTimeString() + '.';
}

// ---- CNF Provisioning ----

const editor = { kind: 'CNF', name: null, checked: null };

async function cnfTables() {
  const [cnfs, routes, functions, services, workloads, endpoints] = await Promise.all([
    list('cnfs'), list('routes'), list('networkfunctions'), list('services'), list('workloads'), list('endpoints'),
  ]);
  fill('cnfs', cnfs.sort(byName).map((c) => {
    const s = specOf(c);
    const steps = (s.chain || []).map((st) => st.function + ' (' + (st.mode || 'callout') + ' / ' + (st.phase || 'request') + ')');
    const using = routes.filter((r) => (specOf(r).rules || []).some((rule) => rule.chain === nameOf(c))).map(nameOf);
    const edit = el('button', { type: 'button', class: 'secondary', onclick: () => load(nameOf(c)) }, 'Edit');
    const del = el('button', { type: 'button', class: 'danger', onclick: () => remove(c) }, 'Delete');
    return row([nameOf(c), steps.join(' → ') || '—', Object.keys(s.handlers || {}).join(', ') || '—', using.join(', ') || '—', el('span', { class: 'actions' }, edit, ' ', del)]);
  }), 'no CNFs');
  fill('functions', functions.sort(byName).map((f) => {
    const svc = specOf(f).service || nameOf(f);
    const service = services.find((s) => nameOf(s) === svc);
    const found = endpoints.find((e) => nameOf(e) === svc);
    const discovered = found ? specOf(found).endpoints || [] : [];
    const fixed = service ? (specOf(service).endpoints || []).map((e) => e.address) : [];
    const addresses = discovered.map((e) => e.address).concat(fixed);
    const ready = discovered.filter((e) => e.ready).length;
    const replicas = workloads.filter((w) => specOf(w).service === svc).reduce((n, w) => n + (specOf(w).replicas === undefined ? 1 : specOf(w).replicas), 0);
    let readiness = fixed.length ? 'static endpoints' : '—';
    if (discovered.length || replicas) readiness = el('span', { class: ready > 0 && ready >= replicas ? 'ok' : 'wait' }, ready + ' of ' + Math.max(replicas, discovered.length) + ' ready');
    return row([nameOf(f), svc, addresses.join(', ') || '—', readiness]);
  }), 'no network functions');
}

const yamlBox = () => document.getElementById('yaml');

function gutter(marks) {
  const lines = yamlBox().value.split('\n').length;
  const g = document.getElementById('gutter');
  g.replaceChildren(...Array.from({ length: lines }, (_, i) => {
    const n = i + 1;
    return marks && marks.has(n) ? el('span', { class: 'mark' }, n) : n + '\n';
  }));
  g.scrollTop = yamlBox().scrollTop;
}

function goToLine(line) {
  const box = yamlBox();
  const lines = box.value.split('\n');
  const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
  box.focus();
  box.setSelectionRange(start, start + (lines[line - 1] || '').length);
  box.scrollTop = Math.max(0, (line - 4) * parseFloat(getComputedStyle(box).lineHeight || '20'));
}

function say(kind, ...parts) {
  document.getElementById('problems').replaceChildren(el('div', { class: kind }, ...parts));
}

function invalidate() {
  editor.checked = null;
  document.getElementById('apply').disabled = true;
  document.getElementById('diff-box').hidden = true;
}

function showProblems(answer) {
  const body = answer.body || {};
  const errors = body.errors || [];
  if (!errors.length) {
    say('problem', (answer.status === 409 ? 'Conflict: ' : 'Refused: ') + (body.error || 'HTTP ' + answer.status));
    gutter();
    return;
  }
  const marks = new Set(errors.map((e) => e.line).filter(Boolean));
  document.getElementById('problems').replaceChildren(...errors.map((e) => el('div', { class: 'problem', 'data-line': e.line, 'data-field': e.field },
    el('b', {}, 'line ' + e.line + (e.column ? ', column ' + e.column : '')), ' · ', el('code', {}, e.field || '(document)'), ': ', e.message,
    e.line ? el('button', { type: 'button', class: 'secondary', onclick: () => goToLine(e.line) }, 'Go to line') : null)));
  gutter(marks);
}

async function check() {
  invalidate();
  const text = yamlBox().value;
  const answer = await api('/api/v1/validate', { method: 'POST', headers: { 'Content-Type': 'application/yaml' }, body: text });
  if (!answer.ok) return showProblems(answer);
  gutter();
  const object = answer.body;
  const kind = object.kind, name = nameOf(object);
  // From the list, not GET by name: a new resource is not an error to log.
  const stored = (await list(kind)).find((o) => nameOf(o) === name);
  const current = { ok: stored !== undefined, body: stored };
  const before = current.ok ? toYaml(editable(current.body, false)) : '';
  const after = toYaml(editable(object, false));
  const lines = diffLines(before, after);
  const changed = lines.some(([op]) => op !== ' ');
  document.getElementById('diff').replaceChildren(...lines.map(([op, l]) => el('span', { class: op === '+' ? 'add' : op === '-' ? 'del' : '' }, op + ' ' + l + '\n')));
  document.getElementById('diff-box').hidden = false;
  editor.checked = { kind, name, text, created: !current.ok };
  document.getElementById('apply').disabled = !changed;
  say('info', changed ? (current.ok ? kind + '/' + name + ' is valid; the change is below. Apply stores it.' : kind + '/' + name + ' is valid and new. Apply creates it.') : 'Valid, and the same as what is stored: nothing to apply.');
}

async function apply() {
  const checked = editor.checked;
  if (!checked || checked.text !== yamlBox().value) return check();
  document.getElementById('apply').disabled = true;
  const answer = await api('/api/v1/' + checked.kind + '/' + encodeURIComponent(checked.name), { method: 'PUT', headers: { 'Content-Type': 'application/yaml' }, body: checked.text });
  if (!answer.ok) {
    showProblems(answer);
    if (answer.status === 409) say('problem', 'Conflict: ' + (answer.body.error || '') + ' Someone changed ' + checked.kind + '/' + checked.name + ' since you loaded it; nothing was overwritten. Reload to see their version (copy your edit first).');
    return;
  }
  const version = Number(answer.body.metadata.resourceVersion);
  say('info', 'Stored ' + checked.kind + '/' + checked.name + ' at version ' + version + '. Waiting for the proxies.');
  await load(checked.name, true);
  cnfTables();
  watchAcks(version);
}

// Shows each proxy's acknowledgement of `version` as it arrives, until all
// acknowledged it, one refused it, or 30 s passed.
async function watchAcks(version) {
  document.getElementById('acks-box').hidden = false;
  const summary = document.getElementById('acks-summary');
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    const answer = await api('/api/v1/status/proxies');
    if (answer.ok) {
      const compiled = Number(answer.body.compiledRevision);
      const items = answer.body.items;
      const state = (p) => {
        if (p.nack && Number(p.nack.version) >= version) return ['bad', 'refused: ' + p.nack.error];
        if (compiled >= version && p.connected && p.ackedVersion && p.ackedVersion === p.latestVersion) return ['ok', 'acknowledged'];
        return ['wait', p.connected ? 'waiting' : 'not connected'];
      };
      fill('acks', items.map((p) => { const [c, t] = state(p); return row([p.name, el('span', { class: c }, t), p.ackedVersion || '—'], { 'data-proxy': p.name, 'data-state': c }); }), 'no proxies');
      const states = items.map((p) => state(p)[0]);
      if (states.includes('bad')) { summary.textContent = 'A proxy refused version ' + version + '.'; return; }
      if (states.every((s) => s === 'ok')) { summary.textContent = 'Every proxy acknowledged version ' + version + '.'; return; }
      summary.textContent = states.filter((s) => s === 'ok').length + ' of ' + items.length + ' proxies acknowledged version ' + version + '…';
    }
    await new Promise((r) => setTimeout(r, 400));
  }
  summary.textContent = 'Not every proxy acknowledged version ' + version + ' within 30 s.';
}

async function load(name, quiet) {
  const answer = await api('/api/v1/cnfs/' + encodeURIComponent(name));
  if (!answer.ok) return showProblems(answer);
  yamlBox().value = toYaml(editable(answer.body, true));
  editor.name = name;
  invalidate();
  gutter();
  if (!quiet) {
    document.getElementById('problems').replaceChildren();
    document.getElementById('acks-box').hidden = true;
    yamlBox().focus();
  }
}

async function remove(cnf) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = 'Delete CNF ' + nameOf(cnf) + '? Routes that use it stop running its chain.';
  dialog.returnValue = '';
  dialog.showModal();
  await new Promise((r) => dialog.addEventListener('close', r, { once: true }));
  if (dialog.returnValue !== 'delete') return;
  const answer = await api('/api/v1/cnfs/' + encodeURIComponent(nameOf(cnf)) + '?resourceVersion=' + cnf.metadata.resourceVersion, { method: 'DELETE' });
  if (!answer.ok) showProblems(answer); else say('info', 'Deleted CNF ' + nameOf(cnf) + '.');
  cnfTables();
}

const TEMPLATE = 'apiVersion: trefoil.dev/v1alpha1\nkind: CNF\nmetadata:\n  name: my-cnf\nspec:\n  chain:\n    - function: FUNCTION\n      mode: callout\n      phase: request\n  handlers: {}\n';

function cnfPage() {
  const box = yamlBox();
  box.addEventListener('input', () => { invalidate(); gutter(); });
  box.addEventListener('scroll', () => { document.getElementById('gutter').scrollTop = box.scrollTop; });
  document.getElementById('check').addEventListener('click', check);
  document.getElementById('apply').addEventListener('click', apply);
  document.getElementById('reload').addEventListener('click', () => (editor.name ? load(editor.name) : null));
  document.getElementById('new-cnf').addEventListener('click', () => { box.value = TEMPLATE; editor.name = null; invalidate(); gutter(); box.focus(); });
  box.value = TEMPLATE;
  gutter();
  cnfTables();
  setInterval(cnfTables, 5000);
}

// ---- CNF Tracing ----

const tracing = { live: true, clearedAt: 0, details: new Map(), summaries: [], open: null };

function facts(detail) {
  const cnfs = new Set(), events = new Set(), paths = new Set();
  for (const s of detail.spans) {
    const a = s.attributes || {};
    if (a['trefoil.cnf']) cnfs.add(a['trefoil.cnf']);
    if (a['trefoil.event']) events.add(a['trefoil.event']);
    if (a['url.path']) paths.add(a['url.path']);
    for (const e of s.events || []) events.add(e.name);
  }
  return { cnfs: [...cnfs], events: [...events], paths: [...paths] };
}

async function traceTick() {
  if (!tracing.live) return;
  const answer = await api('/api/v1/traces?limit=200');
  if (!answer.ok) return;
  tracing.summaries = answer.body.items;
  // Spans of a trace arrive from several proxies: fetch again while its count grows.
  const stale = tracing.summaries.filter((t) => { const d = tracing.details.get(t.traceId); return !d || d.spans !== t.spans; }).slice(0, 25);
  await Promise.all(stale.map(async (t) => {
    const d = await api('/api/v1/traces/' + t.traceId);
    if (d.ok) tracing.details.set(t.traceId, { spans: t.spans, facts: facts(d.body) });
  }));
  const live = new Set(tracing.summaries.map((t) => t.traceId));
  for (const id of tracing.details.keys()) if (!live.has(id)) tracing.details.delete(id);
  renderTraces();
}

function renderTraces() {
  const cnf = document.getElementById('f-cnf').value, status = document.getElementById('f-status').value;
  const path = document.getElementById('f-path').value.trim(), event = document.getElementById('f-event').value.trim();
  const select = document.getElementById('f-cnf');
  const known = new Set([...tracing.details.values()].flatMap((d) => d.facts.cnfs));
  for (const c of known) if (![...select.options].some((o) => o.value === c)) select.append(el('option', { value: c }, c));
  const shown = tracing.summaries.filter((t) => {
    const f = (tracing.details.get(t.traceId) || { facts: { cnfs: [], events: [], paths: [] } }).facts;
    return t.startUnixNano > tracing.clearedAt && (!status || t.status === status) && (!cnf || f.cnfs.includes(cnf))
      && (!event || f.events.some((e) => e.includes(event))) && (!path || t.root.includes(path) || f.paths.some((p) => p.includes(path)));
  });
  fill('traces', shown.map((t) => {
    const f = (tracing.details.get(t.traceId) || { facts: { cnfs: [], events: [], paths: [] } }).facts;
    const open = () => openTrace(t.traceId);
    return row([el('code', {}, t.traceId), new Date(t.startUnixNano / 1e6).toLocaleTimeString(), t.root + (f.paths && f.paths.length ? ' ' + f.paths[0] : ''), f.cnfs.join(', ') || '—', f.events.join(', ') || '—',
      el('span', { class: t.status === 'ok' ? 'ok' : 'bad' }, t.status), t.durationMs.toFixed(1) + ' ms'],
    { class: 'pick' + (tracing.open === t.traceId ? ' selected' : ''), tabindex: '0', 'data-trace': t.traceId, onclick: open, onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); open(); } } });
  }), tracing.summaries.length ? 'no trace matches the filters' : 'no traces yet: send a request through the mesh');
  document.getElementById('trace-count').textContent = shown.length + ' of ' + tracing.summaries.length + ' recent traces' + (tracing.live ? ', live' : ', stopped');
}

async function openTrace(id) {
  const answer = await api('/api/v1/traces/' + encodeURIComponent(id));
  if (!answer.ok) return;
  tracing.open = id;
  history.replaceState(null, '', '#trace=' + id);
  const spans = answer.body.spans;
  const t0 = Math.min(...spans.map((s) => s.startUnixNano));
  const total = Math.max(1, Math.max(...spans.map((s) => s.endUnixNano)) - t0);
  const parents = new Map(spans.map((s) => [s.spanId, s.parentSpanId]));
  const depth = (s) => { let d = 0, p = s.parentSpanId; while (p && parents.has(p) && d < 32) { d++; p = parents.get(p); } return d; };
  const detail = document.getElementById('span-detail');
  const show = (s, node) => {
    document.querySelectorAll('.span.selected').forEach((n) => n.classList.remove('selected'));
    node.classList.add('selected');
    const lines = [s.name + '  (' + s.service + ')', 'span ' + s.spanId + (s.parentSpanId ? ' ← ' + s.parentSpanId : ''),
      'duration ' + ((s.endUnixNano - s.startUnixNano) / 1e6).toFixed(3) + ' ms' + (s.error ? '  ERROR' : ''), ''];
    for (const [k, v] of Object.entries(s.attributes || {})) lines.push(k + ' = ' + v);
    for (const e of s.events || []) lines.push('event ' + e.name + ' +' + ((e.timeUnixNano - s.startUnixNano) / 1e6).toFixed(3) + ' ms ' + Object.entries(e.attributes || {}).map(([k, v]) => k + '=' + v).join(' '));
    detail.textContent = lines.join('\n');
  };
  document.getElementById('trace-id').textContent = id;
  const rows = spans.map((s) => {
    const left = ((s.startUnixNano - t0) / total) * 100, width = ((s.endUnixNano - s.startUnixNano) / total) * 100;
    const label = el('span', { class: 'label' }, '\u00a0'.repeat(depth(s) * 3) + s.name + ' · ' + ((s.endUnixNano - s.startUnixNano) / 1e6).toFixed(2) + ' ms');
    const bar = el('span', { class: 'bar' });
    bar.style.left = left + '%';
    bar.style.width = width + '%';
    const node = el('div', { class: 'span' + (s.error ? ' error' : ''), role: 'listitem', tabindex: '0', 'data-span': s.name }, label, el('span', { class: 'track' }, bar));
    node.addEventListener('click', () => show(s, node));
    node.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); show(s, node); } });
    return node;
  });
  document.getElementById('waterfall').replaceChildren(...rows);
  detail.textContent = 'Select a span to see its attributes and events.';
  const section = document.getElementById('trace');
  section.hidden = false;
  section.scrollIntoView({ block: 'start' });
  renderTraces();
}

function tracesPage() {
  const liveButton = document.getElementById('live');
  liveButton.addEventListener('click', () => {
    tracing.live = !tracing.live;
    liveButton.textContent = tracing.live ? 'Stop' : 'Start';
    liveButton.setAttribute('aria-pressed', String(tracing.live));
    if (tracing.live) traceTick(); else renderTraces();
  });
  document.getElementById('clear').addEventListener('click', () => {
    tracing.clearedAt = Math.max(tracing.clearedAt, ...tracing.summaries.map((t) => t.startUnixNano));
    renderTraces();
  });
  for (const id of ['f-cnf', 'f-status', 'f-path', 'f-event']) document.getElementById(id).addEventListener('input', renderTraces);
  document.getElementById('filters').addEventListener('submit', (e) => e.preventDefault());
  const wanted = new URLSearchParams(location.hash.slice(1)).get('trace');
  traceTick().then(() => (wanted ? openTrace(wanted) : null));
  setInterval(traceTick, 2000);
}

// ---- Resources ----

async function showKind() {
  const kind = document.getElementById('kind').value;
  const items = (await list(kind)).sort(byName);
  const pre = document.getElementById('object-yaml');
  const show = (o, node) => {
    document.querySelectorAll('#objects tr.selected').forEach((n) => n.classList.remove('selected'));
    node.classList.add('selected');
    pre.textContent = toYaml(o);
    history.replaceState(null, '', '#' + kind + '/' + nameOf(o));
  };
  fill('objects', items.map((o) => {
    const tr = row([nameOf(o), o.metadata.resourceVersion || '—', o.metadata.generation || '—'], { class: 'pick', tabindex: '0', 'data-name': nameOf(o) });
    tr.addEventListener('click', () => show(o, tr));
    tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); show(o, tr); } });
    return tr;
  }), 'no ' + kind + ' objects');
  pre.textContent = items.length ? 'Select an object to see its YAML.' : '';
  const [, want] = location.hash.slice(1).split('/');
  const pick = want && document.querySelector('#objects tr[data-name="' + CSS.escape(want) + '"]');
  if (pick) pick.click();
}

function resourcesPage() {
  const select = document.getElementById('kind');
  const [kind] = location.hash.slice(1).split('/');
  if (kind && [...select.options].some((o) => o.value === kind)) select.value = kind;
  select.addEventListener('change', () => { history.replaceState(null, '', '#' + select.value); showKind(); });
  showKind();
}

const PAGES = {
  dashboard: () => { dashboard(); setInterval(dashboard, 2000); },
  cnfs: cnfPage,
  traces: tracesPage,
  resources: resourcesPage,
};
(PAGES[document.body.dataset.page] || (() => {}))();
