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

// A login link (`trefoil up`, `trefoil demo` and `trefoil portal
// login-link` print one, as Jupyter does) carries a one-time code in its
// fragment, which the browser never sends to a server. It is taken out of
// the address bar and the history at once, then exchanged (POST
// /api/v1/login) for a session token of the code's role, kept for this tab.
// A code logs in once: a reused or expired link is refused on the login form.
const LOGIN_CODE = /^[0-9a-f]{16,128}$/;
let loginError = null;
async function exchange(code) {
  try {
    const response = await fetch('/api/v1/login', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ code }), cache: 'no-store',
    });
    const body = await response.json().catch(() => ({}));
    if (response.ok && body.token) {
      sessionStorage.setItem(TOKEN_KEY, body.token);
      return null;
    }
    return body.error || ('the login was refused (HTTP ' + response.status + ')');
  } catch (e) {
    return 'the control plane did not answer: ' + e.message;
  }
}
async function takeLoginCode() {
  const m = /^#login=([0-9a-f]+)$/.exec(location.hash);
  if (!m) return;
  history.replaceState(null, '', location.pathname + location.search);
  loginError = await exchange(m[1]);
}
// Every call waits for the exchange, so the first ones carry the new token.
const loggedIn = takeLoginCode().then(() => { if (loginError) showLogin(loginError); });
// The link opened on a page already showing (only the fragment changes).
window.addEventListener('hashchange', () => { if (location.hash.startsWith('#login=')) location.reload(); });

// Without a token (or with one expired or revoked) the API answers 401:
// the page asks for a token or a login code, once.
let loginShown = false;
function showLogin(reason) {
  if (loginShown) return;
  loginShown = true;
  const input = el('input', { type: 'password', id: 'login-token', autocomplete: 'off', 'aria-label': 'API token or login code' });
  const login = async (e) => {
    e.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    if (LOGIN_CODE.test(value)) {
      const refused = await exchange(value);
      if (refused) { document.getElementById('login-error').textContent = refused; return; }
    } else {
      sessionStorage.setItem(TOKEN_KEY, value);
    }
    location.reload();
  };
  document.body.prepend(el('form', { id: 'login', class: 'login', onsubmit: login },
    el('p', { id: 'login-error', role: 'alert' }, reason),
    el('p', {}, 'Open a new login link (`trefoil portal login-link`), or paste a token (`trefoil token create --role viewer`) or a login code: ',
      input, ' ', el('button', { type: 'submit' }, 'Log in'))));
  input.focus();
}
async function api(path, options = {}) {
  await loggedIn;
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
    if (v === null || v === undefined || v === false) continue;
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

// ---- Who is asking: a viewer sees no edit or action button ----

// Elements of class `edit` are hidden by the style sheet until the role is
// known to be editor or admin (body[data-role]); the API refuses a
// viewer's writes anyway (403).
const me = { role: null };
const canEdit = () => me.role === 'editor' || me.role === 'admin';
const whoami = api('/api/v1/whoami').then((r) => {
  me.role = r.ok && r.body ? r.body.role : null;
  document.body.dataset.role = me.role || 'none';
  if (me.role === 'viewer') for (const e of document.querySelectorAll('.edit')) e.remove();
});

// ---- The live feed: server-sent events over fetch (so the bearer token
// goes in a header, as for every other call) ----

// Calls onSnapshot with each snapshot of GET /api/v1/live; reconnects, a
// little later each time, when the stream ends or fails.
function live(onSnapshot) {
  let backoff = 500;
  const connect = async () => {
    await loggedIn;
    const headers = new Headers({ Accept: 'text/event-stream' });
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.set('Authorization', 'Bearer ' + token);
    try {
      const response = await fetch('/api/v1/live', { headers, cache: 'no-store' });
      if (response.status === 401) {
        const body = await response.json().catch(() => ({}));
        showLogin(body.error || 'The API needs a token.');
        return;
      }
      if (!response.ok || !response.body) throw new Error('HTTP ' + response.status);
      health('', false);
      backoff = 500;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = frame.split('\n').filter((l) => l.startsWith('data: ')).map((l) => l.slice(6)).join('\n');
          if (data) onSnapshot(JSON.parse(data));
        }
      }
    } catch (e) {
      health('live feed interrupted; reconnecting', true);
    }
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10000);
  };
  connect();
}

// The page's first data is on screen: body[data-ready] holds the time since
// navigation start (ms), once, for a person's dev tools and the browser test.
function ready() {
  if (document.body.dataset.ready) return;
  document.body.dataset.ready = String(Math.round(performance.now()));
}

function stamp(snapshot) {
  const u = document.getElementById('updated');
  if (u) {
    u.textContent = 'Snapshot ' + snapshot.seq + ' at ' + new Date(snapshot.timeMs).toLocaleTimeString() + '.';
    u.dataset.seq = snapshot.seq;
  }
}

// ---- Dashboard ----

const percent = (x) => (x === null || x === undefined ? '—' : (x * 100).toFixed(1) + '%');
function latency(s) {
  if (s === null || s === undefined) return '—';
  if (s >= 1) return s.toFixed(2) + 's';
  if (s >= 0.01) return Math.round(s * 1000) + 'ms';
  return (s * 1000).toFixed(2) + 'ms';
}

function dashboard(snap) {
  const status = snap.proxies || { items: [] };
  fill('proxies', status.items.map((p) => row([
    p.name,
    el('span', { class: p.connected ? 'ok' : 'bad' }, p.connected ? 'yes' : 'no'),
    el('span', { class: p.ackedVersion && p.ackedVersion === p.latestVersion ? 'ok' : 'wait' }, p.ackedVersion || '—'),
    p.latestVersion || '—',
    p.nack ? el('span', { class: 'bad' }, 'v' + p.nack.version + ': ' + p.nack.error) : '—',
  ], { 'data-proxy': p.name })), 'no proxies declared');
  document.getElementById('compiled').textContent = 'compiled revision ' + status.compiledRevision;
  fill('traffic', (snap.traffic || []).map((t) => row([
    t.service || '(no route)', t.version || '—', t.rps.toFixed(1),
    el('span', { class: t.successRate === null || t.successRate === undefined ? '' : t.successRate >= 0.99 ? 'ok' : 'bad' }, percent(t.successRate)),
    latency(t.p50Seconds), latency(t.p99Seconds), String(Math.round(t.total)),
  ], { 'data-service': t.service, 'data-version': t.version, 'data-total': Math.round(t.total) })), 'no requests seen by the proxies yet');
  const services = snap.services || [], workloads = snap.workloads || [];
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
    // Replicas' state: the proxies of this workload that are connected.
    const proxies = status.items.filter((p) => p.name === nameOf(w) || p.name.startsWith(nameOf(w) + '-'));
    const up = proxies.filter((p) => p.connected).length;
    const want = s.replicas === undefined ? 1 : s.replicas;
    const state = proxies.length ? el('span', { class: up >= want ? 'ok' : 'wait' }, up + ' of ' + want + ' connected') : String(want);
    return row([nameOf(w), s.service || '—', s.version || '—', state, s.node || '—']);
  }), 'no workloads');
  fill('events', (snap.events || []).map(specOf).map((e) => row([e.timeMs ? new Date(e.timeMs).toLocaleTimeString() : '—', e.regarding || '—', e.reason || '—', e.message || ''])), 'no events yet');
  stamp(snap);
  ready();
}

// ---- The editor (CNF Provisioning and Resources): check, diff, confirm, apply ----

// What the editor holds: the kind and name loaded (null for a new one), the
// object as loaded (the handler editor and the form builder start from it),
// and the text last checked, which is the only text Apply may store.
const editor = { kind: 'CNF', name: null, object: null, checked: null, stored: () => {} };

const yamlBox = () => document.getElementById('yaml');

// Line numbers beside a textarea; `marks` are lines to flag.
function numberLines(gutterId, text, marks) {
  const lines = text.split('\n').length;
  const g = document.getElementById(gutterId);
  g.replaceChildren(...Array.from({ length: lines }, (_, i) => {
    const n = i + 1;
    return marks && marks.has(n) ? el('span', { class: 'mark', 'data-line': n }, n) : n + '\n';
  }));
  return g;
}

function gutter(marks) {
  numberLines('gutter', yamlBox().value, marks).scrollTop = yamlBox().scrollTop;
}

function selectLine(box, line) {
  const lines = box.value.split('\n');
  const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
  box.focus();
  box.setSelectionRange(start, start + (lines[line - 1] || '').length);
  box.scrollTop = Math.max(0, (line - 4) * parseFloat(getComputedStyle(box).lineHeight || '20'));
}
const goToLine = (line) => selectLine(yamlBox(), line);

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
    return [];
  }
  const marks = new Set(errors.map((e) => e.line).filter(Boolean));
  document.getElementById('problems').replaceChildren(...errors.map((e) => el('div', { class: 'problem', 'data-line': e.line, 'data-field': e.field },
    el('b', {}, 'line ' + e.line + (e.column ? ', column ' + e.column : '')), ' · ', el('code', {}, e.field || '(document)'), ': ', e.message,
    e.line ? el('button', { type: 'button', class: 'secondary', onclick: () => goToLine(e.line) }, 'Go to line') : null)));
  gutter(marks);
  return errors;
}

// Validates the editor's text (POST /api/v1/validate: `trefoil validate`'s
// checks and a write's, nothing stored) and shows the line diff against
// what is stored; Apply is enabled only then, for exactly this text.
async function check() {
  invalidate();
  const text = yamlBox().value;
  const answer = await api('/api/v1/validate', { method: 'POST', headers: { 'Content-Type': 'application/yaml' }, body: text });
  if (!answer.ok) return { errors: showProblems(answer) };
  gutter();
  const object = answer.body;
  const kind = object.kind, name = nameOf(object);
  // From the list, not GET by name: a new resource is not an error to log.
  const stored = (await list(kind)).find((o) => nameOf(o) === name);
  const before = stored ? toYaml(editable(stored, false)) : '';
  const after = toYaml(editable(object, false));
  const lines = diffLines(before, after);
  const added = lines.filter(([op]) => op === '+').length, removed = lines.filter(([op]) => op === '-').length;
  document.getElementById('diff').replaceChildren(...lines.map(([op, l]) => el('span', { class: op === '+' ? 'add' : op === '-' ? 'del' : '' }, op + ' ' + l + '\n')));
  document.getElementById('diff-summary').textContent = stored
    ? kind + '/' + name + ': ' + added + ' line(s) added, ' + removed + ' removed, against version ' + stored.metadata.resourceVersion + ' as stored.'
    : kind + '/' + name + ' does not exist yet: every line is new.';
  document.getElementById('diff-box').hidden = false;
  const changed = added + removed > 0;
  editor.checked = { kind, name, text, created: !stored };
  document.getElementById('apply').disabled = !changed;
  say('info', changed ? (stored ? kind + '/' + name + ' is valid; the change is below. Confirm and apply stores it.' : kind + '/' + name + ' is valid and new. Confirm and apply creates it.') : 'Valid, and the same as what is stored: nothing to apply.');
  if (changed) document.getElementById('diff-box').scrollIntoView({ block: 'nearest' });
  return { errors: [], changed };
}

async function apply() {
  const checked = editor.checked;
  if (!checked || checked.text !== yamlBox().value) return check();
  document.getElementById('apply').disabled = true;
  // The revision every proxy is at now, so the table shows each one move.
  const answer = await api('/api/v1/' + checked.kind + '/' + encodeURIComponent(checked.name), { method: 'PUT', headers: { 'Content-Type': 'application/yaml' }, body: checked.text });
  if (!answer.ok) {
    showProblems(answer);
    if (answer.status === 409) say('problem', 'Conflict: ' + (answer.body.error || '') + ' Someone changed ' + checked.kind + '/' + checked.name + ' since you loaded it; nothing was overwritten. Reload to see their version (copy your edit first).');
    return;
  }
  const version = Number(answer.body.metadata.resourceVersion);
  say('info', 'Stored ' + checked.kind + '/' + checked.name + ' at version ' + version + '. Waiting for the proxies.');
  await loadObject(checked.kind, checked.name, true);
  editor.stored();
  watchAcks(version);
}

// Shows each proxy's acknowledgement of `version` as it arrives (the acked
// revision each proxy reports, GET /api/v1/status/proxies), until all
// acknowledged it, one refused it, or 30 s passed.
async function watchAcks(version) {
  document.getElementById('acks-box').hidden = false;
  const summary = document.getElementById('acks-summary');
  summary.dataset.version = version;
  delete summary.dataset.done;
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
      fill('acks', items.map((p) => { const [c, t] = state(p); return row([p.name, el('span', { class: c }, t), p.ackedVersion || '—'], { 'data-proxy': p.name, 'data-state': c, 'data-acked': p.ackedVersion || '' }); }), 'no proxies');
      const states = items.map((p) => state(p)[0]);
      if (states.includes('bad')) { summary.textContent = 'A proxy refused version ' + version + '.'; summary.dataset.done = 'refused'; return; }
      if (states.every((s) => s === 'ok')) { summary.textContent = 'Every proxy acknowledged version ' + version + '.'; summary.dataset.done = 'acked'; return; }
      summary.textContent = states.filter((s) => s === 'ok').length + ' of ' + items.length + ' proxies acknowledged version ' + version + '…';
    }
    await new Promise((r) => setTimeout(r, 400));
  }
  summary.textContent = 'Not every proxy acknowledged version ' + version + ' within 30 s.';
  summary.dataset.done = 'timeout';
}

// Puts `object` into the editor as YAML (with its resourceVersion, so the
// write is optimistic), and remembers it.
function edit(object) {
  editor.object = object;
  editor.kind = object.kind;
  editor.name = nameOf(object) || null;
  yamlBox().value = toYaml(editable(object, true));
  editor.rendered = yamlBox().value;
  document.getElementById('editing').textContent = (object.metadata && object.metadata.resourceVersion)
    ? 'Editing ' + object.kind + '/' + nameOf(object) + ' as of version ' + object.metadata.resourceVersion + '.'
    : 'A new ' + object.kind + (nameOf(object) ? ' named ' + nameOf(object) : '') + '.';
  invalidate();
  gutter();
  if (typeof handlersLoad === 'function' && document.getElementById('lua')) handlersLoad();
}

async function loadObject(kind, name, quiet) {
  const answer = await api('/api/v1/' + kind + '/' + encodeURIComponent(name));
  if (!answer.ok) return showProblems(answer);
  edit(answer.body);
  if (!quiet) {
    document.getElementById('problems').replaceChildren();
    document.getElementById('acks-box').hidden = true;
    yamlBox().focus();
  }
}
const load = (name, quiet) => loadObject('CNF', name, quiet);

function editorSetup() {
  const box = yamlBox();
  box.addEventListener('input', () => { invalidate(); gutter(); });
  box.addEventListener('scroll', () => { document.getElementById('gutter').scrollTop = box.scrollTop; });
  document.getElementById('check').addEventListener('click', check);
  document.getElementById('apply').addEventListener('click', apply);
  document.getElementById('reload').addEventListener('click', () => (editor.name ? loadObject(editor.kind, editor.name) : null));
}

// ---- CNF Provisioning ----

const mesh = { functions: [] };

// The two tables fill independently, each as soon as its own lists arrived
// (all six are asked for at once): the CNFs do not wait for the functions.
function cnfTables() {
  const cnfs = Promise.all([list('cnfs'), list('routes')]).then(([c, r]) => cnfTable(c, r));
  const functions = Promise.all([list('networkfunctions'), list('services'), list('workloads'), list('endpoints')]).then((lists) => functionTable(...lists));
  return Promise.all([cnfs, functions]);
}

function cnfTable(cnfs, routes) {
  fill('cnfs', cnfs.sort(byName).map((c) => {
    const s = specOf(c);
    const steps = (s.chain || []).map((st) => st.function + ' (' + (st.mode || 'callout') + ' / ' + (st.phase || 'request') + ')');
    const using = routes.filter((r) => (specOf(r).rules || []).some((rule) => rule.chain === nameOf(c))).map(nameOf);
    const edit = el('button', { type: 'button', class: 'secondary edit', onclick: () => load(nameOf(c)) }, 'Edit');
    const del = el('button', { type: 'button', class: 'danger edit', onclick: () => remove(c) }, 'Delete');
    const actions = me.role === 'viewer' ? '—' : el('span', { class: 'actions' }, edit, ' ', del);
    return row([nameOf(c), steps.join(' → ') || '—', Object.keys(s.handlers || {}).join(', ') || '—', using.join(', ') || '—', actions], { id: 'cnf-' + nameOf(c) });
  }), 'no CNFs');
  ready();
}

function functionTable(functions, services, workloads, endpoints) {
  mesh.functions = functions.sort(byName);
  builderFunctions();
  fill('functions', functions.map((f) => {
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

const TEMPLATE = { apiVersion: 'trefoil.dev/v1alpha1', kind: 'CNF', metadata: { name: 'my-cnf' }, spec: { chain: [{ function: 'FUNCTION', mode: 'callout', phase: 'request' }], handlers: {} } };

// ---- The handler editor: one Lua script per event, compiled as you type ----

const handlers = { scripts: {}, event: null, timer: null, seq: 0 };
const luaBox = () => document.getElementById('lua');

// The events the CNF's handlers may take: those the mesh's functions
// publish, and any the CNF already handles.
function handlerEvents() {
  const events = new Set(mesh.functions.flatMap((f) => specOf(f).events || []));
  for (const e of Object.keys(handlers.scripts)) events.add(e);
  return [...events].sort();
}

function handlerOptions() {
  const select = document.getElementById('h-event');
  if (!select) return;
  const object = editor.object, on = object && object.kind === 'CNF';
  document.getElementById('h-cnf').replaceChildren(on ? el('b', {}, 'CNF/' + (nameOf(object) || '(unnamed)')) : '', on ? ' · handles ' + (Object.keys(handlers.scripts).sort().join(', ') || 'no event yet') : 'Edit a CNF to see its handlers.');
  select.replaceChildren(...handlerEvents().map((e) => el('option', { value: e }, e + (handlers.scripts[e] ? ' (handled)' : ''))));
  if (handlers.event) select.value = handlers.event;
  else if (select.value) { handlers.event = select.value; handlerShow(); }
}

// The CNF in the editor, loaded or built: its handlers into the editor.
function handlersLoad() {
  const object = editor.object;
  const on = object && object.kind === 'CNF';
  for (const id of ['h-event', 'h-clear', 'h-save', 'lua']) document.getElementById(id).disabled = !on;
  handlers.scripts = on ? { ...(specOf(object).handlers || {}) } : {};
  const events = Object.keys(handlers.scripts);
  handlers.event = events.length ? events.sort()[0] : handlerEvents()[0] || null;
  handlerOptions();
  handlerShow();
}

function handlerShow() {
  luaBox().value = handlers.event ? handlers.scripts[handlers.event] || '' : '';
  luaGutter();
  document.getElementById('lua-problems').replaceChildren();
}

function luaGutter(marks) {
  numberLines('h-gutter', luaBox().value, marks).scrollTop = luaBox().scrollTop;
  luaColour();
}

// Basic Lua highlighting: keywords, strings, comments, numbers and the
// `trefoil.` API, as text nodes in spans (never markup from the script).
const LUA_TOKEN = /(--\[\[[\s\S]*?\]\]|--[^\n]*)|("(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|\[\[[\s\S]*?\]\])|\b(and|break|do|else|elseif|end|false|for|function|goto|if|in|local|nil|not|or|repeat|return|then|true|until|while)\b|\b(trefoil\.[A-Za-z_]+|event)\b|\b(\d+(?:\.\d+)?)\b/g;
function luaColour() {
  const pre = document.getElementById('lua-colour');
  if (!pre) return;
  const text = luaBox().value;
  const parts = [];
  let last = 0;
  for (const m of text.matchAll(LUA_TOKEN)) {
    if (m.index > last) parts.push(text.slice(last, m.index));
    const kind = m[1] ? 'lua-com' : m[2] ? 'lua-str' : m[3] ? 'lua-kw' : m[4] ? 'lua-api' : 'lua-num';
    parts.push(el('span', { class: kind }, m[0]));
    last = m.index + m[0].length;
  }
  parts.push(text.slice(last) + '\n');
  pre.replaceChildren(...parts);
  pre.scrollTop = luaBox().scrollTop;
  pre.scrollLeft = luaBox().scrollLeft;
}

// What the textarea holds becomes the event's script (none when empty).
function handlerKeep() {
  if (!handlers.event) return;
  const code = luaBox().value;
  if (code.trim()) handlers.scripts[handlers.event] = code.endsWith('\n') ? code : code + '\n';
  else delete handlers.scripts[handlers.event];
}

// The editor's CNF with the handlers as they are in the handler editor.
function withHandlers() {
  handlerKeep();
  const object = JSON.parse(JSON.stringify(editor.object));
  object.spec = object.spec || {};
  object.spec.handlers = { ...handlers.scripts };
  return object;
}

// Compiles the handlers through POST /api/v1/validate and shows the
// shown handler's syntax errors at their line of the script.
async function luaCheck() {
  const seq = ++handlers.seq;
  const event = handlers.event;
  const text = toYaml(editable(withHandlers(), false));
  const answer = await api('/api/v1/validate', { method: 'POST', headers: { 'Content-Type': 'application/yaml' }, body: text });
  if (seq !== handlers.seq || event !== handlers.event) return;
  const box = document.getElementById('lua-problems');
  const errors = (answer.body && answer.body.errors) || [];
  const mine = errors.filter((e) => e.field === 'spec.handlers.' + event);
  if (!mine.length) {
    luaGutter();
    box.replaceChildren(luaBox().value.trim() ? el('div', { class: 'info', 'data-state': 'compiled' }, 'The ' + event + ' handler compiles.') : '');
    return;
  }
  // The script's line: the error's line in the document, less the line of its key (`event: |`).
  const key = text.split('\n').findIndex((l) => l.trimStart().startsWith(event + ':')) + 1;
  const at = (e) => Math.max(1, e.line - key);
  luaGutter(new Set(mine.map(at)));
  box.replaceChildren(...mine.map((e) => el('div', { class: 'problem', 'data-line': at(e) }, el('b', {}, 'line ' + at(e)), ' of ', el('code', {}, event), ': ', e.message,
    el('button', { type: 'button', class: 'secondary', onclick: () => selectLine(luaBox(), at(e)) }, 'Go to line'))));
}

function handlerSetup() {
  const box = luaBox();
  box.addEventListener('input', () => {
    clearTimeout(handlers.timer);
    luaGutter();
    handlers.timer = setTimeout(luaCheck, 350);
  });
  box.addEventListener('scroll', () => {
    document.getElementById('h-gutter').scrollTop = box.scrollTop;
    const pre = document.getElementById('lua-colour');
    pre.scrollTop = box.scrollTop;
    pre.scrollLeft = box.scrollLeft;
  });
  // Tab indents inside the script; Escape then Tab leaves the editor.
  box.addEventListener('keydown', (e) => {
    if (e.key === 'Tab' && !e.shiftKey && !box.dataset.escaped) {
      e.preventDefault();
      box.setRangeText('  ', box.selectionStart, box.selectionEnd, 'end');
      box.dispatchEvent(new Event('input'));
    } else if (e.key === 'Escape') box.dataset.escaped = '1';
  });
  box.addEventListener('blur', () => { delete box.dataset.escaped; });
  document.getElementById('h-event').addEventListener('change', (e) => {
    handlerKeep();
    handlers.event = e.target.value;
    handlerOptions();
    handlerShow();
    if (luaBox().value.trim()) luaCheck();
  });
  document.getElementById('h-clear').addEventListener('click', () => {
    luaBox().value = '';
    handlerKeep();
    handlerOptions();
    handlerShow();
  });
  document.getElementById('h-save').addEventListener('click', async () => {
    clearTimeout(handlers.timer);
    // Edits made meanwhile in the YAML editor are kept (its handlers give
    // way to these): the YAML as it stands, validated, is the base.
    if (yamlBox().value !== editor.rendered) {
      const answer = await api('/api/v1/validate', { method: 'POST', headers: { 'Content-Type': 'application/yaml' }, body: yamlBox().value });
      if (!answer.ok || answer.body.kind !== 'CNF') {
        if (answer.ok) document.getElementById('problems').replaceChildren();
        else showProblems(answer);
        document.getElementById('problems').prepend(el('div', { class: 'problem' }, 'The YAML below has changed and is not a valid CNF (or Reload it): the handlers were not saved into it.'));
        return;
      }
      editor.object = answer.body;
    }
    const object = withHandlers();
    editor.object = object;
    yamlBox().value = toYaml(editable(object, true));
    editor.rendered = yamlBox().value;
    handlerOptions();
    const result = await check();
    if (result.errors && result.errors.length) luaCheck();
  });
}

// ---- The form builder: a CNF from the mesh's functions ----

const builder = { steps: [] };
const MODES = ['callout', 'inline', 'tap'], PHASES = ['request', 'response'], METHODS = ['', 'GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'];

function builderFunctions() {
  const select = document.getElementById('b-function');
  if (!select) return;
  const keep = select.value;
  select.replaceChildren(...mesh.functions.map((f) => el('option', { value: nameOf(f) }, nameOf(f) + ((specOf(f).events || []).length ? ' (publishes ' + specOf(f).events.join(', ') + ')' : ''))));
  if (keep) select.value = keep;
}

function choice(label, values, value, onchange, attrs) {
  const select = el('select', { ...attrs }, values.map((v) => el('option', { value: v }, v || 'any')));
  select.value = value;
  select.addEventListener('change', () => onchange(select.value));
  return el('label', {}, label, select);
}

function builderRender(focus) {
  const list = document.getElementById('b-steps');
  document.getElementById('b-empty').hidden = builder.steps.length > 0;
  list.replaceChildren(...builder.steps.map((s, i) => {
    const n = i + 1;
    const move = (to) => { const [step] = builder.steps.splice(i, 1); builder.steps.splice(to, 0, step); builderRender({ index: to, button: to < i ? 'up' : 'down' }); };
    const pathInput = el('input', { type: 'text', value: s.path, placeholder: '/upload', 'aria-label': 'Step ' + n + ' path', 'data-field': 'path' });
    pathInput.addEventListener('input', () => { s.path = pathInput.value; });
    return el('li', { class: 'step', 'data-step': i, 'data-function': s.function, draggable: 'true' },
      el('b', { class: 'fn' }, s.function),
      el('span', { class: 'step-fields' },
        choice('Mode', MODES, s.mode, (v) => { s.mode = v; }, { 'aria-label': 'Step ' + n + ' mode', 'data-field': 'mode' }),
        choice('Phase', PHASES, s.phase, (v) => { s.phase = v; }, { 'aria-label': 'Step ' + n + ' phase', 'data-field': 'phase' }),
        choice('When path', ['prefix', 'exact', 'regex'], s.match, (v) => { s.match = v; }, { 'aria-label': 'Step ' + n + ' path match', 'data-field': 'match' }),
        el('label', {}, 'path', pathInput),
        choice('method', METHODS, s.method, (v) => { s.method = v; }, { 'aria-label': 'Step ' + n + ' method', 'data-field': 'method' })),
      el('span', { class: 'actions' },
        el('button', { type: 'button', class: 'secondary', 'data-move': 'up', 'aria-label': 'Move step ' + n + ' (' + s.function + ') up', disabled: i === 0 ? '' : null, onclick: () => move(i - 1) }, '↑'),
        el('button', { type: 'button', class: 'secondary', 'data-move': 'down', 'aria-label': 'Move step ' + n + ' (' + s.function + ') down', disabled: i === builder.steps.length - 1 ? '' : null, onclick: () => move(i + 1) }, '↓'),
        el('button', { type: 'button', class: 'secondary', 'aria-label': 'Remove step ' + n + ' (' + s.function + ')', onclick: () => { builder.steps.splice(i, 1); builderRender(); } }, 'Remove')),
      el('div', { class: 'step-problems' }));
  }));
  // Dragging a step onto another moves it there (the arrows do the same by keyboard).
  for (const li of list.children) {
    li.addEventListener('dragstart', (e) => { e.dataTransfer.setData('text/plain', li.dataset.step); });
    li.addEventListener('dragover', (e) => e.preventDefault());
    li.addEventListener('drop', (e) => {
      e.preventDefault();
      const from = Number(e.dataTransfer.getData('text/plain')), to = Number(li.dataset.step);
      if (Number.isInteger(from) && from !== to) { const [step] = builder.steps.splice(from, 1); builder.steps.splice(to, 0, step); builderRender(); }
    });
  }
  if (focus) {
    const item = list.children[focus.index];
    const target = item && (item.querySelector('button[data-move=' + focus.button + ']:not([disabled])') || item.querySelector('button:not([disabled])'));
    if (target) target.focus();
  }
}

// The form as a CNF object: what the YAML editor then shows and checks.
function builderObject() {
  const chain = builder.steps.map((s) => {
    const step = { function: s.function, mode: s.mode, phase: s.phase };
    const when = {};
    if (s.path.trim()) when.path = { [s.match]: s.path.trim() };
    if (s.method) when.method = s.method;
    if (Object.keys(when).length) step.when = when;
    return step;
  });
  return { apiVersion: 'trefoil.dev/v1alpha1', kind: 'CNF', metadata: { name: document.getElementById('b-name').value.trim() }, spec: { chain } };
}

async function builderCheck(e) {
  e.preventDefault();
  const box = document.getElementById('b-problems');
  for (const p of document.querySelectorAll('#b-steps .step-problems')) p.replaceChildren();
  for (const li of document.querySelectorAll('#b-steps li')) li.classList.remove('bad-step');
  const object = builderObject();
  edit(object);
  document.getElementById('acks-box').hidden = true;
  const result = await check();
  const errors = result.errors || [];
  if (!errors.length) {
    box.replaceChildren(result.changed === undefined ? '' : el('div', { class: 'info' }, 'Valid: the YAML and what it creates are in the editor below, for you to confirm.'));
    if (result.changed !== undefined) document.getElementById('diff-box').scrollIntoView({ block: 'nearest' });
    return;
  }
  // An error on a step (spec.chain[N]...) shows on that step too.
  const other = [];
  for (const err of errors) {
    const m = /^spec\.chain\[(\d+)\]/.exec(err.field || '');
    const li = m && document.querySelector('#b-steps li[data-step="' + m[1] + '"]');
    const text = ['line ' + err.line + ' · ', el('code', {}, err.field), ': ' + err.message];
    if (li) { li.classList.add('bad-step'); li.querySelector('.step-problems').append(el('div', { class: 'problem', 'data-field': err.field, 'data-line': err.line }, ...text)); } else other.push(el('div', { class: 'problem', 'data-field': err.field || '', 'data-line': err.line }, ...text));
  }
  box.replaceChildren(...other, el('div', { class: 'note' }, errors.length + ' problem(s); nothing was stored. The YAML below marks each line.'));
}

function builderSetup() {
  document.getElementById('b-add').addEventListener('click', () => {
    const fn = document.getElementById('b-function').value;
    if (!fn) return;
    builder.steps.push({ function: fn, mode: 'callout', phase: 'request', match: 'prefix', path: '', method: '' });
    builderRender();
  });
  document.getElementById('builder').addEventListener('submit', builderCheck);
  builderRender();
}

function cnfPage() {
  // The lists are asked for first; the editors are set up while they come.
  const tables = cnfTables();
  editorSetup();
  editor.stored = cnfTables;
  handlerSetup();
  builderSetup();
  document.getElementById('new-cnf').addEventListener('click', () => { edit(JSON.parse(JSON.stringify(TEMPLATE))); yamlBox().focus(); });
  edit(JSON.parse(JSON.stringify(TEMPLATE)));
  Promise.all([tables, whoami]).then(() => {
    if (!canEdit()) return;
    handlerOptions();
    // `/cnfs#NAME` (the graph links a CNF here) opens it in the editor.
    const wanted = decodeURIComponent(location.hash.slice(1));
    if (wanted && !wanted.includes('=') && document.getElementById('cnf-' + wanted)) load(wanted, true);
  });
  setInterval(cnfTables, 5000);
}

// ---- CNF Tracing ----

const tracing = { live: true, clearedAt: 0, summaries: [], open: null };

// A trace's CNFs, events and paths come with its summary (the server reads
// them from the spans), so the list needs one request, not one per trace.
const factsOf = (t) => ({ cnfs: t.cnfs || [], events: t.events || [], paths: t.paths || [] });

async function traceTick() {
  if (!tracing.live) return;
  const answer = await api('/api/v1/traces?limit=200');
  if (!answer.ok) return;
  tracing.summaries = answer.body.items;
  renderTraces();
  ready();
}

function renderTraces() {
  const cnf = document.getElementById('f-cnf').value, status = document.getElementById('f-status').value;
  const path = document.getElementById('f-path').value.trim(), event = document.getElementById('f-event').value.trim();
  const select = document.getElementById('f-cnf');
  const known = new Set(tracing.summaries.flatMap((t) => factsOf(t).cnfs));
  for (const c of known) if (![...select.options].some((o) => o.value === c)) select.append(el('option', { value: c }, c));
  const shown = tracing.summaries.filter((t) => {
    const f = factsOf(t);
    return t.startUnixNano > tracing.clearedAt && (!status || t.status === status) && (!cnf || f.cnfs.includes(cnf))
      && (!event || f.events.some((e) => e.includes(event))) && (!path || t.root.includes(path) || f.paths.some((p) => p.includes(path)));
  });
  fill('traces', shown.map((t) => {
    const f = factsOf(t);
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

    const bar = el('span', { class: 'bar' });
    bar.style.left = left + '%';
    bar.style.width = width + '%';
    const events = (s.events || []).map((e) => e.name).join(' ');
    // A deny is shown on its span: the step or call that stopped the request, and with what status.
    const attrs = s.attributes || {};
    const deny = attrs['trefoil.verdict'] === 'deny' ? 'deny' + (attrs['trefoil.deny.status'] ? ' ' + attrs['trefoil.deny.status'] : '') : null;
    const label = el('span', { class: 'label' }, '\u00a0'.repeat(depth(s) * 3) + s.name + ' · ' + ((s.endUnixNano - s.startUnixNano) / 1e6).toFixed(2) + ' ms',
      deny ? el('span', { class: 'bad' }, ' · ' + deny) : null, events ? el('span', { class: 'span-events' }, ' · ' + events) : null);
    const node = el('div', { class: 'span' + (s.error ? ' error' : ''), role: 'listitem', tabindex: '0', 'data-span': s.name, 'data-events': events || null, 'data-verdict': attrs['trefoil.verdict'] || null }, label, el('span', { class: 'track' }, bar));
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
  // The list and a linked trace are read at once, not one after the other.
  traceTick();
  if (wanted) openTrace(wanted);
  setInterval(traceTick, 2000);
}

// ---- Resources ----

const browsing = { selected: null };

async function showKind() {
  const kind = document.getElementById('kind').value;
  const items = (await list(kind)).sort(byName);
  const pre = document.getElementById('object-yaml');
  const editButton = document.getElementById('edit-object');
  const show = (o, node) => {
    document.querySelectorAll('#objects tr.selected').forEach((n) => n.classList.remove('selected'));
    node.classList.add('selected');
    pre.textContent = toYaml(o);
    browsing.selected = o;
    if (editButton) { editButton.disabled = false; editButton.setAttribute('aria-label', 'Edit ' + kind + '/' + nameOf(o)); }
    history.replaceState(null, '', '#' + kind + '/' + nameOf(o));
  };
  browsing.selected = null;
  if (editButton) editButton.disabled = true;
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
  ready();
}

function resourcesPage() {
  const select = document.getElementById('kind');
  const [kind] = location.hash.slice(1).split('/');
  if (kind && [...select.options].some((o) => o.value === kind)) select.value = kind;
  select.addEventListener('change', () => { history.replaceState(null, '', '#' + select.value); showKind(); });
  // Edit: the selected object in the shared editor (check, diff, confirm, acknowledgements).
  const section = document.getElementById('editor-section');
  section.hidden = true;
  editorSetup();
  editor.stored = showKind;
  document.getElementById('edit-object').addEventListener('click', () => {
    if (!browsing.selected) return;
    section.hidden = false;
    document.getElementById('problems').replaceChildren();
    document.getElementById('acks-box').hidden = true;
    loadObject(browsing.selected.kind, nameOf(browsing.selected));
  });
  showKind();
}

// ---- Rollouts ----

// SVG elements need the SVG namespace; derived from the page's own (an
// absolute URL in the script would look like something fetched).
const SVG_NS = document.documentElement.namespaceURI.replace('1999/xhtml', '2000/svg');
function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const ACTIONS = { Promote: ['Progressing', 'Paused'], Pause: ['Progressing'], Resume: ['Paused'], Abort: ['Progressing', 'Paused'] };
// Events (kept by the store) carry the figures of the checks that decided
// something; the checks in between are seen live, as the status's last
// check, and kept here while the page is open.
const rolloutState = { events: new Map(), versions: new Map(), checks: new Map(), snap: null, prefetch: null };

// The canary's weight after each event, as the controller's notes tell it.
function weightAfter(e, before) {
  if (e.reason === 'Started') return 0;
  if (e.reason === 'Promoted') return 100;
  if (e.reason === 'Aborted' || e.reason === 'RolledBack') return 0;
  if (e.reason === 'WeightChanged') { const m = /(\d+)%/.exec(e.message || ''); if (m) return Number(m[1]); }
  return before;
}

// A small chart: `points` [[timeMs, value, ok?]] over [t0, t1]; a bound as a dashed line.
function chart(title, points, t0, t1, opts) {
  const W = 300, H = 80, P = 6;
  const values = points.map((p) => p[1]).concat(opts.bound === undefined ? [] : [opts.bound]);
  const lo = opts.lo !== undefined ? opts.lo : Math.min(...values, 0), hi = opts.hi !== undefined ? opts.hi : Math.max(...values, 1e-9);
  const x = (t) => P + ((t - t0) / Math.max(1, t1 - t0)) * (W - 2 * P);
  const y = (v) => H - P - ((v - lo) / Math.max(1e-9, hi - lo)) * (H - 2 * P);
  const kids = [svg('title', {}, title), svg('rect', { x: 0, y: 0, width: W, height: H, class: 'frame' })];
  if (opts.bound !== undefined) kids.push(svg('line', { x1: P, x2: W - P, y1: y(opts.bound), y2: y(opts.bound), class: 'bound' }));
  if (opts.step && points.length) {
    let d = 'M' + x(points[0][0]) + ' ' + y(points[0][1]);
    for (let i = 1; i < points.length; i++) d += ' H' + x(points[i][0]) + ' V' + y(points[i][1]);
    d += ' H' + x(t1);
    kids.push(svg('path', { d, class: 'line' }));
  }
  for (const [t, v, ok] of points) if (!opts.step) kids.push(svg('circle', { cx: x(t), cy: y(v), r: 3, class: ok === false ? 'bad-dot' : 'ok-dot' }, svg('title', {}, new Date(t).toLocaleTimeString() + ': ' + opts.format(v))));
  const last = points.length ? opts.format(points[points.length - 1][1]) : 'no data yet';
  return el('figure', { class: 'chart' }, svg('svg', { viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': title + ': ' + last }, kids), el('figcaption', {}, title + ': ', el('b', {}, last)));
}

async function act(name, action) {
  const answer = await api('/api/v1/rollouts/' + encodeURIComponent(name) + '/' + action.toLowerCase(), { method: 'POST' });
  const box = document.getElementById('rollout-message');
  box.replaceChildren(el('div', { class: answer.ok ? 'info' : 'problem' }, answer.ok ? action + ': ' + name + ' is now ' + answer.body.status.phase + ' at ' + answer.body.status.weight + '%.' : action + ' refused: ' + ((answer.body && answer.body.error) || 'HTTP ' + answer.status)));
}

// A snapshot is drawn as it arrives, with the events known so far; when a
// rollout's status changed, its events are read again and the cards drawn
// once more. The page's first events are asked for while the feed opens
// (rolloutsPage), not after its first snapshot.
async function rollouts(snap) {
  const statuses = new Map((snap.rolloutStatuses || []).map((s) => [nameOf(s), s]));
  for (const [name, s] of statuses) {
    const st = specOf(s);
    if (!st.lastCheck || !st.lastCheckMs) continue;
    if (!rolloutState.checks.has(name)) rolloutState.checks.set(name, new Map());
    rolloutState.checks.get(name).set(st.lastCheckMs, st.lastCheck.figures || []);
  }
  rolloutState.snap = snap;
  const items = (snap.rollouts || []).sort(byName);
  // A rollout's events are read again when its status changed.
  const stale = items.some((r) => { const s = statuses.get(nameOf(r)); return s && rolloutState.versions.get(nameOf(r)) !== s.metadata.resourceVersion; });
  rolloutDraw();
  if (!stale) return;
  // The events asked for at page load may predate this snapshot: they are
  // drawn, but do not count as read for its statuses (the next snapshot
  // reads them again).
  const early = rolloutState.prefetch;
  rolloutState.prefetch = null;
  const events = await (early || list('events'));
  rolloutState.events = new Map();
  for (const e of events.map(specOf).sort((a, b) => a.timeMs - b.timeMs)) {
    const k = (e.regarding || '').replace(/^Rollout\//, '');
    if (!rolloutState.events.has(k)) rolloutState.events.set(k, []);
    rolloutState.events.get(k).push(e);
  }
  if (!early) for (const r of items) { const s = statuses.get(nameOf(r)); if (s) rolloutState.versions.set(nameOf(r), s.metadata.resourceVersion); }
  rolloutDraw();
}

// Draws the latest snapshot's rollouts with the events read so far.
function rolloutDraw() {
  const snap = rolloutState.snap;
  const items = (snap.rollouts || []).sort(byName);
  const statuses = new Map((snap.rolloutStatuses || []).map((s) => [nameOf(s), s]));
  const box = document.getElementById('rollouts');
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.action : null;
  const focusedOf = focused && document.activeElement.closest('.rollout') ? document.activeElement.closest('.rollout').dataset.name : null;
  box.replaceChildren(...(items.length ? items.map((r) => rolloutCard(r, statuses.get(nameOf(r)), snap.timeMs)) : [el('p', { class: 'empty' }, 'no rollouts')]));
  if (focused) { const b = box.querySelector('.rollout[data-name="' + CSS.escape(focusedOf) + '"] [data-action="' + focused + '"]'); if (b) b.focus(); }
  if (location.hash && !rolloutState.scrolled) {
    const target = document.getElementById('rollout-' + location.hash.slice(1));
    if (target) { target.scrollIntoView(); rolloutState.scrolled = true; }
  }
  stamp(snap);
  ready();
}

function rolloutsPage() {
  rolloutState.prefetch = list('events');
  live(rollouts);
}

function rolloutCard(r, status, now) {
  const spec = specOf(r), st = status ? specOf(status) : null;
  const name = nameOf(r);
  const phase = st ? st.phase : 'Pending';
  const steps = (spec.strategy && spec.strategy.canary && spec.strategy.canary.steps) || [];
  const stepText = (s) => (s === undefined ? '—' : s.setWeight !== undefined ? 'setWeight ' + s.setWeight : s.pause !== undefined ? 'pause ' + s.pause : s.analysis ? 'analysis (' + s.analysis.checks + ' checks)' : JSON.stringify(s));
  const step = st ? (steps.length ? 'step ' + Math.min(st.step + 1, steps.length) + ' of ' + steps.length + ': ' + stepText(steps[st.step]) : Object.keys(spec.strategy || {})[0] || '—') : '—';
  const events = rolloutState.events.get(name) || [];
  const t0 = events.length ? events[0].timeMs : now - 60000, t1 = Math.max(now, t0 + 1000);
  // Weight over time, from the events; the status has the latest word.
  const weights = [];
  let w = 0;
  for (const e of events) { w = weightAfter(e, w); weights.push([e.timeMs, w]); }
  if (st) weights.push([t1, st.weight]);
  const charts = [chart('Canary weight (%)', weights, t0, t1, { step: true, lo: 0, hi: 100, format: (v) => v + '%' })];
  const metrics = new Map();
  const checks = [...(rolloutState.checks.get(name) || new Map())].map(([timeMs, figures]) => ({ timeMs, figures }));
  const judged = events.concat(checks).sort((a, b) => a.timeMs - b.timeMs);
  for (const e of judged) for (const f of e.figures || []) if (f.value !== null && f.value !== undefined) {
    if (!metrics.has(f.metric)) metrics.set(f.metric, { points: [], bound: f.min !== undefined ? f.min : f.max });
    const points = metrics.get(f.metric).points;
    // An event repeats the check that made it: one point per moment.
    if (!points.length || points[points.length - 1][0] !== e.timeMs) points.push([e.timeMs, f.value, f.ok]);
  }
  for (const [metric, m] of metrics) {
    const seconds = /latency/i.test(metric);
    charts.push(chart(metric, m.points, t0, t1, { bound: m.bound, format: (v) => (seconds ? latency(v) : Number(v.toFixed(3)).toString()) }));
  }
  const buttons = me.role === 'viewer' ? [] : Object.entries(ACTIONS).map(([action, when]) => el('button', {
    type: 'button', class: 'edit ' + (action === 'Abort' ? 'danger' : action === 'Promote' ? '' : 'secondary'), 'data-action': action,
    onclick: () => act(name, action), ...(st && when.includes(phase) ? {} : { disabled: '' }),
  }, action));
  const decided = events.filter((e) => (e.figures || []).length || ['WeightChanged', 'Promoted', 'RolledBack', 'Aborted', 'Paused', 'Resumed', 'CheckFailed'].includes(e.reason)).slice(-8).reverse();
  const phaseClass = { Succeeded: 'ok', RolledBack: 'bad', Aborted: 'bad', Paused: 'wait' }[phase] || '';
  const card = el('section', { class: 'rollout', id: 'rollout-' + name, 'data-name': name, 'data-phase': phase, 'data-weight': st ? st.weight : '', 'aria-labelledby': 'rh-' + name },
    el('h2', { id: 'rh-' + name }, name, ' ', el('span', { class: 'phase ' + phaseClass }, phase)),
    el('p', {}, spec.service + ': ', el('b', {}, spec.stable), ' → ', el('b', {}, spec.canary), ' · weight ', el('b', { class: 'weight' }, st ? st.weight + '%' : '—'), ' · ', step, ' · route ', spec.route || '—'),
    el('div', { class: 'meter', role: 'meter', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': st ? st.weight : 0, 'aria-label': 'canary weight' }, el('span', {})),
    st && st.message ? el('p', { class: 'note' }, st.message) : null,
    st && st.lastCheck ? el('p', { class: 'note' }, 'Last check: ' + st.lastCheck.verdict + ' on ' + st.lastCheck.requests + ' canary requests') : null,
    buttons.length ? el('p', { class: 'actions edit' }, buttons) : null,
    el('div', { class: 'charts' }, charts),
    decided.length ? el('div', { class: 'scroll' }, el('table', { class: 'decisions' }, el('thead', {}, el('tr', {}, el('th', {}, 'When'), el('th', {}, 'Reason'), el('th', {}, 'Figures'), el('th', {}, 'Message'))),
      el('tbody', {}, decided.map((e) => row([new Date(e.timeMs).toLocaleTimeString(), e.reason, (e.figures || []).map((f) => f.metric + ' ' + (f.value === null || f.value === undefined ? 'n/a' : Number(f.value.toFixed(4))) + (f.ok ? ' ✓' : ' ✗')).join(', ') || '—', e.message]))))) : null);
  // Through the CSSOM: the page's policy allows no style attribute.
  card.querySelector('.meter span').style.width = (st ? st.weight : 0) + '%';
  return card;
}

// ---- Service graph ----

const graphState = { graph: null, focus: null, query: '', open: new Set(), fetching: false, last: 0 };
// More nodes than this start folded into one box per kind and namespace.
const FOLD_ABOVE = 120;
const COLUMNS = ['gateway', 'cnf', 'function', 'service'];
const KIND_LABEL = { gateway: 'gateway', cnf: 'CNF', function: 'function', service: 'service' };

// The chain step's mode and phase are drawn in the CNF; the label keeps to
// version, weight and the live figures (the tooltip has everything).
function edgeLabel(e) {
  const parts = [];
  if (e.version) parts.push(e.version + (e.weight !== undefined ? ' ' + e.weight + '%' : ''));
  else if (e.weight !== undefined) parts.push(e.weight + '%');
  parts.push(e.rps.toFixed(1) + ' rps');
  if (e.errorRate !== null && e.errorRate !== undefined) parts.push((e.errorRate * 100).toFixed(1) + '% err');
  return parts.join(' · ');
}

// Which nodes and edges are drawn: a focused node and its neighbours; the
// matches of a search and theirs; else everything, folded when large.
function visible(g) {
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const near = (ids) => {
    const out = new Set(ids);
    for (const e of g.edges) { if (ids.has(e.from)) out.add(e.to); if (ids.has(e.to)) out.add(e.from); }
    return out;
  };
  let keep = null, folded = false;
  if (graphState.focus && byId.has(graphState.focus)) keep = near(new Set([graphState.focus]));
  else if (graphState.query) keep = near(new Set(g.nodes.filter((n) => n.name.toLowerCase().includes(graphState.query.toLowerCase())).map((n) => n.id)));
  else folded = g.nodes.length > FOLD_ABOVE;
  const rep = new Map();
  const nodes = [];
  const groups = new Map();
  for (const n of g.nodes) {
    if (keep && !keep.has(n.id)) continue;
    const key = n.kind + '/' + n.group;
    if (folded && !graphState.open.has(key)) {
      if (!groups.has(key)) { const box = { id: 'Group/' + key, kind: n.kind, name: n.group, group: n.group, folded: true, count: 0, rps: 0, key }; groups.set(key, box); nodes.push(box); }
      const box = groups.get(key);
      box.count++; box.rps += n.rps || 0;
      rep.set(n.id, box.id);
    } else {
      nodes.push(n);
      rep.set(n.id, n.id);
    }
  }
  const merged = new Map();
  for (const e of g.edges) {
    const from = rep.get(e.from), to = rep.get(e.to);
    if (!from || !to || from === to) continue;
    if (from === e.from && to === e.to) { merged.set(from + '>' + to + '@' + (e.version || '') + '#' + merged.size, { ...e }); continue; }
    const k = from + '>' + to;
    const m = merged.get(k) || { from, to, kind: e.kind, rps: 0, errorRate: null, count: 0 };
    m.rps += e.rps; m.count++;
    merged.set(k, m);
  }
  return { nodes, edges: [...merged.values()], folded };
}

function graphDraw() {
  const g = graphState.graph;
  if (!g) return;
  const { nodes, edges, folded } = visible(g);
  const svgBox = document.getElementById('graph');
  const active = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.node : null;
  const COLW = 320, NODEW = 190, ROW = 14;
  const pos = new Map();
  const heights = [];
  const kids = [];
  // On a narrow screen the four columns stack into one, and every edge
  // becomes an arc on its right: the drawing fits a phone's width.
  const narrow = svgBox.parentElement.clientWidth < 700;
  let y = narrow ? 30 : 56;
  COLUMNS.forEach((kind, col) => {
    const x = narrow ? 16 : 16 + col * COLW;
    const mine = nodes.filter((n) => n.kind === kind).sort((a, b) => a.group.localeCompare(b.group) || a.name.localeCompare(b.name));
    if (narrow && !mine.length) return;
    if (narrow) { kids.push(svg('text', { x, y: y - 4, class: 'col' }, KIND_LABEL[kind] + 's')); y += 6; }
    else { y = 56; kids.push(svg('text', { x, y: 20, class: 'col' }, KIND_LABEL[kind] + 's')); }
    let group = null;
    for (const n of mine) {
      if (!n.folded && n.group !== group) { group = n.group; kids.push(svg('text', { x, y: y + 10, class: 'ns' }, 'namespace ' + group)); y += 16; }
      const h = n.folded ? 36 : n.kind === 'cnf' ? 26 + ROW * (n.steps || []).length : 26;
      pos.set(n.id, { x, y, h });
      y += h + 22;
    }
    heights.push(y);
    if (narrow) y += 24;
  });
  // Labels sit just before the arrow head, stacked per target, where the
  // edges into one node have fanned in but not yet met.
  const into = new Map();
  for (const e of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    const k = into.get(e.to) || 0;
    into.set(e.to, k + 1);
    const x1 = a.x + NODEW, y1 = a.y + a.h / 2, x2 = b.x, y2 = b.y + b.h / 2;
    const same = a.x === b.x;
    const back = !same && x2 <= x1;
    // An edge that skips a column runs in a lane above the nodes, not through them.
    const skip = !back && x2 - x1 > COLW;
    const lane = 30 + (k % 4) * 4 + (edges.indexOf(e) % 3) * 2;
    // Within one column: an arc out to the right, wider the farther apart.
    const off = Math.min(170, 24 + Math.abs(y2 - y1) / 4);
    const d = same ? 'M' + x1 + ' ' + y1 + ' C' + (x1 + off) + ' ' + y1 + ' ' + (x1 + off) + ' ' + y2 + ' ' + x1 + ' ' + y2
      : skip ? 'M' + x1 + ' ' + y1 + ' C' + (x1 + 24) + ' ' + y1 + ' ' + (x1 + 24) + ' ' + lane + ' ' + (x1 + 60) + ' ' + lane + ' L' + (x2 - 60) + ' ' + lane + ' C' + (x2 - 24) + ' ' + lane + ' ' + (x2 - 24) + ' ' + y2 + ' ' + x2 + ' ' + y2
      : back ? 'M' + (a.x + NODEW / 2) + ' ' + (a.y + a.h) + ' C' + (a.x + NODEW / 2) + ' ' + (a.y + a.h + 40) + ' ' + (b.x + NODEW / 2) + ' ' + (b.y - 40) + ' ' + (b.x + NODEW / 2) + ' ' + b.y
      : 'M' + x1 + ' ' + y1 + ' C' + (x1 + 30) + ' ' + y1 + ' ' + (x2 - 30) + ' ' + y2 + ' ' + x2 + ' ' + y2;
    const err = e.errorRate || 0;
    const cls = 'edge ' + e.kind + (err >= 0.05 ? ' bad' : err > 0 ? ' warn' : e.rps > 0 ? ' busy' : '');
    const label = e.count > 1 ? e.count + ' edges · ' + e.rps.toFixed(1) + ' rps' : edgeLabel(e);
    const title = e.from + ' → ' + e.to + ': ' + label + (e.step ? ' (' + e.step + ')' : '');
    const id = e.from + '>' + e.to + (e.version ? '@' + e.version : '');
    kids.unshift(svg('g', { class: cls, 'data-edge': id, 'data-weight': e.weight === undefined ? '' : e.weight, 'data-rps': e.rps.toFixed(2) },
      svg('title', {}, title),
      svg('path', { d, 'marker-end': 'url(#arrow)' }),
      svg('text', same ? { x: x1 + off * 0.75 + 4, y: (y1 + y2) / 2 + 4, class: 'elabel' } : back ? { x: b.x + NODEW / 2 + 6, y: b.y - 6 - k * 12, class: 'elabel' } : { x: x2 - 10, y: y2 - 5 - k * 12, class: 'elabel', 'text-anchor': 'end' }, label)));
  }
  for (const n of nodes) {
    const p = pos.get(n.id);
    const sub = [svg('rect', { x: p.x, y: p.y, width: NODEW, height: p.h, rx: 5 })];
    if (n.folded) {
      sub.push(svg('text', { x: p.x + 8, y: p.y + 15, class: 'name' }, n.name + ' (' + n.count + ' ' + KIND_LABEL[n.kind] + 's)'));
      sub.push(svg('text', { x: p.x + 8, y: p.y + 30, class: 'meta' }, n.rps.toFixed(1) + ' rps · select to open'));
    } else {
      const meta = n.kind === 'cnf' ? '' : ' · ' + (n.rps || 0).toFixed(1) + ' rps' + (n.errorRate ? ' · ' + (n.errorRate * 100).toFixed(1) + '% err' : '');
      sub.push(svg('text', { x: p.x + 8, y: p.y + 17, class: 'name' }, n.name, svg('tspan', { class: 'meta' }, meta)));
      (n.steps || []).forEach((s, i) => sub.push(svg('text', { x: p.x + 14, y: p.y + 34 + i * ROW, class: 'step' }, (i + 1) + '. ' + s.function + ' (' + s.mode + ' / ' + s.phase + ')')));
    }
    const attrs = { class: 'node ' + n.kind + (n.folded ? ' folded' : '') + (graphState.focus === n.id ? ' focused' : ''), 'data-node': n.id, tabindex: '0', role: 'link',
      'aria-label': (n.folded ? 'namespace ' + n.name + ', ' + n.count + ' ' + KIND_LABEL[n.kind] + 's, open' : KIND_LABEL[n.kind] + ' ' + n.name) };
    const open = () => {
      if (n.folded) { graphState.open.add(n.key); graphDraw(); return; }
      if (n.href) location.href = n.href;
    };
    attrs.onclick = open;
    attrs.onkeydown = (ev) => {
      if (ev.key === 'Enter') { ev.preventDefault(); open(); }
      else if (ev.key === 'f' && !n.folded) { ev.preventDefault(); graphState.focus = n.id; graphDraw(); }
    };
    kids.push(svg('g', attrs, svg('title', {}, n.folded ? n.name : n.id + (n.href ? ' (Enter opens its page, f focuses)' : '')), sub));
  }
  // Room on the right for the arcs of the last column.
  const W = (narrow ? 16 + NODEW : 16 + COLUMNS.length * COLW) + 200, H = Math.max(...heights, 60) + 10;
  const defs = svg('defs', {}, svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, svg('path', { d: 'M0 0 L10 5 L0 10 z', class: 'arrow' })));
  svgBox.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
  svgBox.setAttribute('width', W);
  svgBox.setAttribute('height', H);
  svgBox.replaceChildren(defs, ...kids);
  const summary = g.nodes.length + ' nodes, ' + g.edges.length + ' edges' + (graphState.focus ? '; focused on ' + graphState.focus + ' and its neighbours' : graphState.query ? '; matching “' + graphState.query + '” and neighbours' : folded ? '; folded by namespace' : '') + '.';
  document.getElementById('graph-summary').textContent = summary;
  ready();
  if (active) { const again = svgBox.querySelector('[data-node="' + CSS.escape(active) + '"]'); if (again) again.focus(); }
}

async function graphFetch() {
  if (graphState.fetching) return;
  graphState.fetching = true;
  const answer = await api('/api/v1/graph');
  graphState.fetching = false;
  if (!answer.ok) return;
  const first = !graphState.graph;
  graphState.graph = answer.body;
  if (first) {
    document.getElementById('g-names').replaceChildren(...answer.body.nodes.map((n) => el('option', { value: n.name }, KIND_LABEL[n.kind] + ' ' + n.name)));
    const m = /^#focus=(.+)$/.exec(location.hash);
    if (m) graphState.focus = decodeURIComponent(m[1]);
  }
  graphDraw();
}

function graphPage() {
  const search = document.getElementById('g-search');
  document.getElementById('graph-controls').addEventListener('submit', (e) => {
    e.preventDefault();
    const q = search.value.trim().toLowerCase();
    const g = graphState.graph;
    const hit = g && (g.nodes.find((n) => n.name.toLowerCase() === q) || g.nodes.find((n) => n.name.toLowerCase().includes(q)));
    graphState.focus = q && hit ? hit.id : null;
    graphState.query = '';
    history.replaceState(null, '', graphState.focus ? '#focus=' + encodeURIComponent(graphState.focus) : location.pathname);
    graphDraw();
  });
  search.addEventListener('input', () => { graphState.query = search.value.trim(); graphState.focus = null; graphDraw(); });
  document.getElementById('g-all').addEventListener('click', () => {
    graphState.focus = null; graphState.query = ''; search.value = ''; graphState.open.clear();
    history.replaceState(null, '', location.pathname);
    graphDraw();
  });
  // The structure and the rates change with the feed: read the graph again
  // on a snapshot, at most once a second.
  // The layout depends on the width: draw again when it changes.
  let width = window.innerWidth;
  window.addEventListener('resize', () => { if (window.innerWidth !== width) { width = window.innerWidth; graphDraw(); } });
  graphState.last = Date.now();
  graphFetch();
  live((snap) => {
    stamp(snap);
    if (Date.now() - graphState.last < 1000) return;
    graphState.last = Date.now();
    graphFetch();
  });
}

const PAGES = {
  dashboard: () => live(dashboard),
  rollouts: rolloutsPage,
  graph: graphPage,
  cnfs: cnfPage,
  traces: tracesPage,
  resources: resourcesPage,
};
(PAGES[document.body.dataset.page] || (() => {}))();
