// murmur's web UI: one ES module, no dependencies. It reads the agent's HTTP API (the same
// endpoints Consul clients use, plus /v1/internal/ui/*) and follows blocking queries, so a
// change shows within a moment of reaching the agent. Every piece of data is put in the page
// as text (textContent, createTextNode), never as markup.

const state = {
  dc: localStorage.getItem('murmur-dc') || '',
  ownDc: '',
  token: localStorage.getItem('murmur-token') || '',
};

/// The page being shown: aborting it stops its blocking queries.
let page = new AbortController();

class ApiError extends Error {
  constructor(status, message, path) {
    super(`${path}: ${status} ${message}`);
    this.status = status;
  }
}

/// An element: h('td', {class: 'x'}, 'text', child, …). Strings become text nodes.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'value') el.value = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const main = () => document.getElementById('main');

function showError(error) {
  const banner = document.getElementById('error');
  banner.textContent = error.message || String(error);
  banner.hidden = false;
  if (error.status === 403) {
    banner.append(document.createTextNode('\nSet an ACL token that may read this (the "ACL token" button).'));
    document.getElementById('token-form').hidden = false;
  }
}

function clearError() {
  document.getElementById('error').hidden = true;
}

/// Asks the agent. `index` makes it a blocking query; the answer's data and X-Consul-Index.
async function api(path, { method = 'GET', body, index, signal, raw } = {}) {
  const url = new URL(path, location.origin);
  if (state.dc && state.dc !== state.ownDc) url.searchParams.set('dc', state.dc);
  if (index) {
    url.searchParams.set('index', index);
    url.searchParams.set('wait', '30s');
  }
  const headers = {};
  if (state.token) headers['X-Consul-Token'] = state.token;
  let response;
  try {
    response = await fetch(url, { method, body, headers, signal });
  } catch (error) {
    if (signal && signal.aborted) throw error;
    throw new Error(`cannot reach the murmur agent at ${location.host} (${error.message}): is it running? Trying again every second.`);
  }
  const text = await response.text();
  if (!response.ok) throw new ApiError(response.status, text.trim() || response.statusText, path);
  let data = text;
  if (!raw) {
    try {
      data = text ? JSON.parse(text) : null;
    } catch (e) {
      throw new ApiError(response.status, `an answer that is not JSON: ${text.slice(0, 200)}`, path);
    }
  }
  return { data, index: Number(response.headers.get('X-Consul-Index')) || 0 };
}

/// Calls render(data) with each new answer of `path` until the page changes.
async function live(path, render, { every } = {}) {
  const signal = page.signal;
  let index = 0;
  while (!signal.aborted) {
    try {
      const answer = await api(path, { index: every ? 0 : index, signal });
      if (signal.aborted) return;
      clearError();
      if (index === 0 || answer.index !== index || every) render(answer.data);
      // An index that went backwards (a restarted agent) starts over, as Consul's clients do.
      index = answer.index > 0 && answer.index >= index ? answer.index : 0;
      if (every || index === 0) await sleep(every || 1000);
    } catch (error) {
      if (signal.aborted) return;
      showError(error);
      await sleep(1000);
    }
  }
}

/// Runs `action`, showing its error instead of failing silently.
async function attempt(action) {
  try {
    clearError();
    await action();
  } catch (error) {
    showError(error);
  }
}

const statusOf = (status) => h('span', { class: `status ${status}` }, status);
const tags = (list) => (list || []).map((t) => h('span', { class: 'tag' }, t));
const link = (href, text) => h('a', { href }, text);
const enc = encodeURIComponent;
const encPath = (path) => path.split('/').map(enc).join('/');

function table(headings, rows, empty) {
  if (rows.length === 0) return h('p', { class: 'note' }, empty);
  return h('table', {}, h('thead', {}, h('tr', {}, headings.map((x) => h('th', {}, x)))), h('tbody', {}, rows));
}

// ---- pages ----

function servicesPage() {
  const body = h('div', { id: 'services' });
  main().replaceChildren(h('h1', {}, 'Services'), body);
  live('/v1/internal/ui/services', (services) => {
    const rows = services.map((s) =>
      h('tr', { 'data-service': s.Name },
        h('td', {}, link(`#/services/${enc(s.Name)}`, s.Name)),
        h('td', {}, tags(s.Tags)),
        h('td', {}, String(s.InstanceCount)),
        h('td', { class: s.InstancesPassing ? 'passing' : 'zero' }, String(s.InstancesPassing)),
        h('td', { class: s.InstancesWarning ? 'warning' : 'zero' }, String(s.InstancesWarning)),
        h('td', { class: s.InstancesCritical ? 'critical' : 'zero' }, String(s.InstancesCritical)),
        h('td', {}, String((s.Nodes || []).length))));
    body.replaceChildren(table(
      ['Service', 'Tags', 'Instances', 'Passing', 'Warning', 'Critical', 'Nodes'], rows,
      'No services are registered (or the ACL token may read none).'));
  });
}

function servicePage(name) {
  const body = h('div', { id: 'instances' });
  main().replaceChildren(
    h('p', { class: 'crumbs' }, link('#/services', 'Services'), ' / '),
    h('h1', {}, name),
    h('p', {}, link(`#/topology/${enc(name)}`, 'Topology: who calls it, whom it calls')),
    body);
  live(`/v1/health/service/${enc(name)}`, (entries) => {
    const rows = entries.map((e) => {
      const worst = worstOf(e.Checks.map((c) => c.Status));
      const checks = e.Checks.map((c) =>
        h('div', { class: 'check', 'data-check': c.CheckID },
          statusOf(c.Status), ' ', c.Name || c.CheckID,
          c.Output ? h('pre', { class: 'output' }, c.Output) : null));
      return h('tr', { 'data-instance': e.Service.ID, 'data-status': worst },
        h('td', {}, e.Service.ID),
        h('td', {}, link(`#/nodes`, e.Node.Node)),
        h('td', {}, `${e.Service.Address || e.Node.Address}:${e.Service.Port}`),
        h('td', {}, tags(e.Service.Tags)),
        h('td', {}, statusOf(worst)),
        h('td', {}, checks));
    });
    body.replaceChildren(table(['Instance', 'Node', 'Address', 'Tags', 'Health', 'Checks'], rows,
      'No instances (or the ACL token may not read this service).'));
  });
}

function worstOf(statuses) {
  for (const s of ['critical', 'maintenance', 'warning']) if (statuses.includes(s)) return s;
  return 'passing';
}

function nodesPage() {
  const body = h('div', { id: 'nodes' });
  main().replaceChildren(h('h1', {}, 'Nodes'), body);
  // Membership changes (suspect, failed) are not catalog writes: asked again every 2 s.
  live('/v1/internal/ui/nodes', (nodes) => {
    const rows = nodes.map((n) =>
      h('tr', { 'data-node': n.Node },
        h('td', {}, n.Node),
        h('td', {}, n.Address),
        h('td', {}, statusOf(n.Status)),
        h('td', {}, n.Services.map((s) => h('div', {}, link(`#/services/${enc(s.Service)}`, s.Service), ` ${s.ID}:${s.Port}`))),
        h('td', { class: n.ChecksCritical ? 'critical' : '' }, String(n.ChecksCritical))));
    body.replaceChildren(table(['Node', 'Address', 'Status', 'Services', 'Critical checks'], rows, 'No nodes.'));
  }, { every: 2000 });
}

function kvPage(prefix) {
  const crumbs = h('p', { class: 'crumbs' }, link('#/kv/', 'Key/Value'), ' / ');
  let sofar = '';
  for (const part of prefix.split('/').filter(Boolean)) {
    sofar += `${part}/`;
    crumbs.append(link(`#/kv/${encPath(sofar)}`, part), ' / ');
  }
  const list = h('div', { id: 'kv-list' });
  const key = h('input', { id: 'kv-new-key', placeholder: 'name, or folder/name', required: true });
  const value = h('textarea', { id: 'kv-new-value', placeholder: 'value' });
  const flags = h('input', { id: 'kv-new-flags', type: 'number', min: 0, value: '0' });
  const form = h('form', { id: 'kv-create-form', onsubmit: (event) => {
    event.preventDefault();
    attempt(async () => {
      const full = prefix + key.value;
      // cas=0: made only if no one made it meanwhile.
      const made = await api(`/v1/kv/${encPath(full)}?cas=0&flags=${enc(flags.value || '0')}`,
        { method: 'PUT', body: value.value });
      if (made.data !== true) throw new Error(`${full} exists already: open it to edit it`);
      location.hash = `#/kv-edit/${encPath(full)}`;
    });
  } },
  h('label', {}, `New key in ${prefix || '/'}`, key),
  h('label', {}, 'Flags', flags),
  h('label', { class: 'wide' }, 'Value', value),
  h('button', { id: 'kv-create', type: 'submit' }, 'Create'));
  main().replaceChildren(crumbs, h('h1', {}, prefix || 'Key/Value'), list, h('h2', {}, 'Create'), form);
  live(`/v1/kv/${encPath(prefix)}?keys&separator=/`, (keys) => {
    const rows = (keys || []).filter((k) => k !== prefix).map((k) => {
      const name = k.slice(prefix.length);
      const href = k.endsWith('/') ? `#/kv/${encPath(k)}` : `#/kv-edit/${encPath(k)}`;
      return h('tr', { 'data-key': k }, h('td', {}, link(href, name)));
    });
    list.replaceChildren(table(['Key'], rows, 'No keys here.'));
  });
}

function b64decode(text) {
  const bytes = Uint8Array.from(atob(text || ''), (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

async function kvEditPage(key) {
  const folder = key.includes('/') ? key.slice(0, key.lastIndexOf('/') + 1) : '';
  main().replaceChildren(h('p', { class: 'crumbs' }, link(`#/kv/${encPath(folder)}`, folder || 'Key/Value'), ' / '), h('h1', {}, key));
  let entry;
  try {
    const answer = await api(`/v1/kv/${encPath(key)}`, { signal: page.signal });
    entry = answer.data[0];
  } catch (error) {
    if (error.status === 404) main().append(h('p', { class: 'note' }, 'This key does not exist (any more).'));
    else showError(error);
    return;
  }
  const value = h('textarea', { id: 'kv-value' });
  value.value = b64decode(entry.Value);
  const flags = h('input', { id: 'kv-flags', type: 'number', min: 0, value: String(entry.Flags) });
  const info = h('p', { class: 'note', id: 'kv-index' }, `ModifyIndex ${entry.ModifyIndex}, session ${entry.Session || 'none'}`);
  const save = h('form', { id: 'kv-edit-form', onsubmit: (event) => {
    event.preventDefault();
    attempt(async () => {
      // Check-and-set on the index this editor read: someone else's save in between is
      // refused, not overwritten.
      const saved = await api(`/v1/kv/${encPath(key)}?cas=${entry.ModifyIndex}&flags=${enc(flags.value || '0')}`,
        { method: 'PUT', body: value.value });
      if (saved.data !== true) throw new Error(`${key} was changed by someone else since it was opened: nothing was saved. Reload to see their value.`);
      kvEditPage(key);
    });
  } }, h('label', { class: 'wide' }, 'Value', value), h('label', {}, 'Flags', flags),
  h('button', { id: 'kv-save', type: 'submit' }, 'Save'),
  h('button', { id: 'kv-delete', type: 'button', onclick: () => attempt(async () => {
    const gone = await api(`/v1/kv/${encPath(key)}?cas=${entry.ModifyIndex}`, { method: 'DELETE' });
    if (gone.data !== true) throw new Error(`${key} was changed since it was opened: not deleted. Reload first.`);
    location.hash = `#/kv/${encPath(folder)}`;
  }) }, 'Delete'));
  main().append(info, save);
}

function intentionsPage() {
  const list = h('div', { id: 'intentions' });
  const source = h('input', { id: 'intention-source', placeholder: 'web or *', required: true });
  const destination = h('input', { id: 'intention-destination', placeholder: 'db or *', required: true });
  const action = h('select', { id: 'intention-action' }, h('option', { value: 'allow' }, 'allow'), h('option', { value: 'deny' }, 'deny'));
  const description = h('input', { id: 'intention-description', placeholder: 'why' });
  const create = h('form', { id: 'intention-form', onsubmit: (event) => {
    event.preventDefault();
    attempt(async () => {
      const body = JSON.stringify({ SourceName: source.value, DestinationName: destination.value,
        Action: action.value, Description: description.value });
      await api('/v1/connect/intentions', { method: 'POST', body });
      source.value = destination.value = description.value = '';
    });
  } }, h('label', {}, 'Source', source), h('label', {}, 'Destination', destination),
  h('label', {}, 'Action', action), h('label', {}, 'Description', description),
  h('button', { id: 'intention-create', type: 'submit' }, 'Create'));
  const checkSource = h('input', { id: 'check-source', required: true });
  const checkDestination = h('input', { id: 'check-destination', required: true });
  const result = h('output', { id: 'check-result' });
  const check = h('form', { id: 'check-form', onsubmit: (event) => {
    event.preventDefault();
    attempt(async () => {
      const answer = await api(`/v1/connect/intentions/check?source=${enc(checkSource.value)}&destination=${enc(checkDestination.value)}`);
      result.replaceChildren(statusOf(answer.data.Allowed ? 'allow' : 'deny'),
        ` ${checkSource.value} → ${checkDestination.value} is ${answer.data.Allowed ? 'allowed' : 'denied'}`);
      result.dataset.allowed = answer.data.Allowed;
    });
  } }, h('label', {}, 'Source', checkSource), h('label', {}, 'Destination', checkDestination),
  h('button', { id: 'check-run', type: 'submit' }, 'Check'), result);
  main().replaceChildren(h('h1', {}, 'Intentions'), h('p', { class: 'note' }, 'In precedence order: the first that matches a pair decides.'),
    list, h('h2', {}, 'Create'), create, h('h2', {}, 'Check a pair'), check);
  live('/v1/connect/intentions', (intentions) => {
    const ordered = [...(intentions || [])].sort((a, b) => (b.Precedence || 0) - (a.Precedence || 0));
    const rows = ordered.map((i) =>
      h('tr', { 'data-intention': `${i.SourceName} => ${i.DestinationName}` },
        h('td', {}, i.SourceName), h('td', {}, i.DestinationName), h('td', {}, statusOf(i.Action)),
        h('td', {}, String(i.Precedence ?? '')), h('td', {}, i.Description || ''),
        h('td', {}, h('button', { type: 'button', onclick: () => attempt(() =>
          api(`/v1/connect/intentions/exact?source=${enc(i.SourceName)}&destination=${enc(i.DestinationName)}`, { method: 'DELETE' })) }, 'Delete'))));
    list.replaceChildren(table(['Source', 'Destination', 'Action', 'Precedence', 'Description', ''], rows, 'No intentions: the default policy decides.'));
  });
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text !== undefined) el.textContent = text;
  return el;
}

function bytes(n) {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const duration = (ms) => (ms < 1 ? `${Math.round(ms * 1000)} µs` : `${ms.toFixed(1)} ms`);

/// The figures of a pair in brief, for the graph's edges.
function edgeText(link) {
  const f = link.Figures;
  if (!f) return link.Intention === 'deny' ? 'denied' : 'no traffic';
  return `${f.connections} conns · ${bytes(f.bytes_out + f.bytes_in)}`;
}

function figuresText(link) {
  const f = link.Figures;
  if (!f) return link.Declared ? 'declared, no traffic counted' : 'no traffic counted';
  const p50 = f.connect_p50_ms == null ? '' : `, connect p50 ${duration(f.connect_p50_ms)}`;
  const refused = f.refused ? `, ${f.refused} refused` : '';
  return `${f.connections} conns, ${bytes(f.bytes_out)} out / ${bytes(f.bytes_in)} in${p50}${refused}`;
}

function topologyPage(name) {
  const graph = h('div', { id: 'topology' });
  const details = h('div', { id: 'topology-table' });
  main().replaceChildren(
    h('p', { class: 'crumbs' }, link('#/services', 'Services'), ' / ', link(`#/services/${enc(name)}`, name), ' / '),
    h('h1', {}, `Topology of ${name}`),
    h('p', { class: 'note' }, 'Callers on the left, callees on the right. Figures are what the proxies counted since they started (bytes when each connection ends).'),
    graph, details);
  live(`/v1/internal/ui/service-topology/${enc(name)}`, (t) => {
    const rowHeight = 64;
    const rows = Math.max(t.Downstreams.length, t.Upstreams.length, 1);
    const width = 960;
    const height = rows * rowHeight + 40;
    const box = { w: 180, h: 36 };
    const drawing = svg('svg', { class: 'topology', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img' });
    const center = { x: width / 2 - box.w / 2, y: height / 2 - box.h / 2 };
    const column = (links, x, toCenter) => links.forEach((l, i) => {
      const y = 20 + i * rowHeight + (rowHeight - box.h) / 2;
      const [x1, y1, x2, y2] = toCenter
        ? [x + box.w, y + box.h / 2, center.x, center.y + box.h / 2]
        : [center.x + box.w, center.y + box.h / 2, x, y + box.h / 2];
      drawing.append(svg('line', { x1, y1, x2, y2, class: l.Intention === 'deny' ? 'deny' : '' }));
      drawing.append(svg('rect', { x, y, width: box.w, height: box.h, rx: 4 }));
      drawing.append(svg('text', { x: x + 8, y: y + 22 }, l.Name));
      drawing.append(svg('text', { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - 6, class: 'figures', 'text-anchor': 'middle' }, edgeText(l)));
    });
    column(t.Downstreams, 20, true);
    column(t.Upstreams, width - box.w - 20, false);
    drawing.append(svg('rect', { x: center.x, y: center.y, width: box.w, height: box.h, rx: 4, class: 'center' }));
    drawing.append(svg('text', { x: center.x + 8, y: center.y + 22 }, t.Service));
    graph.replaceChildren(drawing);
    const rowOf = (direction, l) => h('tr', { 'data-pair': direction === 'calls' ? `${l.Name} => ${name}` : `${name} => ${l.Name}` },
      h('td', {}, direction === 'calls' ? `${l.Name} → ${name}` : `${name} → ${l.Name}`),
      h('td', {}, l.Declared ? 'yes' : 'no'),
      h('td', {}, l.Intention ? statusOf(l.Intention) : 'default policy'),
      h('td', {}, figuresText(l)),
      h('td', {}, l.Figures && l.Figures.connect_p99_ms != null ? duration(l.Figures.connect_p99_ms) : ''));
    details.replaceChildren(
      table(['Pair', 'Declared upstream', 'Intention', 'Traffic', 'Connect p99'],
        [...t.Downstreams.map((l) => rowOf('calls', l)), ...t.Upstreams.map((l) => rowOf('called', l))],
        'No caller or callee is known: no sidecar declares one, no intention names it, no traffic was counted.'),
      h('p', { class: 'note' }, t.Unreachable.length ? `Figures missing from: ${t.Unreachable.join('; ')}` : ''));
  }, { every: 5000 });
}

// ---- frame ----

const routes = [
  [/^#\/services\/(.+)$/, (m) => servicePage(decodeURIComponent(m[1])), 'services'],
  [/^#\/services\/?$/, servicesPage, 'services'],
  [/^#\/nodes\/?$/, nodesPage, 'nodes'],
  [/^#\/kv\/(.*)$/, (m) => kvPage(decodeURIComponent(m[1])), 'kv'],
  [/^#\/kv-edit\/(.+)$/, (m) => kvEditPage(decodeURIComponent(m[1])), 'kv'],
  [/^#\/intentions\/?$/, intentionsPage, 'intentions'],
  [/^#\/topology\/(.+)$/, (m) => topologyPage(decodeURIComponent(m[1])), 'services'],
];

function route() {
  page.abort();
  page = new AbortController();
  clearError();
  const hash = location.hash || '#/services';
  for (const [pattern, show, section] of routes) {
    const match = hash.match(pattern);
    if (match) {
      for (const a of document.querySelectorAll('header nav a')) a.classList.toggle('current', a.dataset.page === section);
      show(match);
      return;
    }
  }
  main().replaceChildren(h('p', {}, `No page at ${hash}. `, link('#/services', 'Services')));
}

async function datacenters() {
  const select = document.getElementById('dc');
  try {
    const self = await fetch('/v1/agent/self', { headers: state.token ? { 'X-Consul-Token': state.token } : {} });
    if (self.ok) state.ownDc = (await self.json()).Config.Datacenter;
    const known = (await api('/v1/catalog/datacenters')).data;
    if (!state.dc || !known.includes(state.dc)) state.dc = state.ownDc || known[0] || '';
    select.replaceChildren(...known.map((dc) => h('option', { value: dc }, dc)));
    select.value = state.dc;
  } catch (error) {
    showError(error);
  }
  select.addEventListener('change', () => {
    state.dc = select.value;
    localStorage.setItem('murmur-dc', state.dc);
    route();
  });
}

function tokenForm() {
  const form = document.getElementById('token-form');
  const input = document.getElementById('token-input');
  document.getElementById('token-button').addEventListener('click', () => { form.hidden = !form.hidden; });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    state.token = input.value.trim();
    localStorage.setItem('murmur-token', state.token);
    form.hidden = true;
    route();
  });
  document.getElementById('token-clear').addEventListener('click', () => {
    state.token = '';
    input.value = '';
    localStorage.removeItem('murmur-token');
    route();
  });
}

tokenForm();
window.addEventListener('hashchange', route);
datacenters().then(route);
