// nbqueue's panel: the stores of this user, their clusters, groups, running tasks and
// failures, polled from the JSON API of the nbqueue server extension (or of
// `nbqueue dashboard`). The same module is mounted by the standalone page and by the
// JupyterLab side panel; it is served by the Python side, so changing it needs no rebuild
// of the lab extension.
//
// Every figure shown comes from the JSON; the DOM is built with textContent only, and rows
// are updated in place, keyed by id, so a selected task, an open traceback, the scroll
// position and the focus survive each refresh.

const CSS_MARK = 'data-nbqueue-panel-css';
const STALE_AFTER = 5; // seconds: older figures say when they were read
const REQUEST_TIMEOUT = 10000; // ms: a poll that hangs longer is a failed poll
const MIN_GAP = 200; // ms between the end of a poll and the next, however slow the server

let nextUid = 0;

/** Link panel.css (next to this module) into `doc`, once per document. */
function ensureStylesheet(doc) {
  if (doc.querySelector(`link[${CSS_MARK}]`)) return;
  const link = doc.createElement('link');
  link.rel = 'stylesheet';
  link.href = new URL('./panel.css', import.meta.url).href;
  link.setAttribute(CSS_MARK, '');
  doc.head.appendChild(link);
}

// ---------------------------------------------------------------- formatting

function pad2(n) {
  return String(n).padStart(2, '0');
}

/** HH:MM:SS of a unix time, in the browser's time zone. */
function clock(unixSeconds) {
  const d = new Date(unixSeconds * 1000);
  return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
}

/** "3.2 s", "42 s", "1 min 20 s", "2 h 5 min"; whole seconds only when `whole`. */
function duration(seconds, whole = false) {
  if (!Number.isFinite(seconds) || seconds < 0) return '';
  if (seconds < 10 && !whole) return `${seconds.toFixed(1)} s`;
  const s = Math.max(whole ? 1 : 0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) {
    const m = Math.floor(s / 60);
    const r = s % 60;
    return r ? `${m} min ${r} s` : `${m} min`;
  }
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return m ? `${h} h ${m} min` : `${h} h`;
}

function rate(r) {
  return Number.isFinite(r) ? `${r.toFixed(1)} tasks/s` : '';
}

function num(n) {
  return Number.isFinite(n) ? n : 0;
}

function oneLine(text) {
  return String(text ?? '')
    .replace(/\s+/g, ' ')
    .trim();
}

const CLUSTER_STATES = { stale: 'stale heartbeat' };

// ---------------------------------------------------------------- DOM helpers

function make(doc, tag, className, text) {
  const node = doc.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Set text only when it changed: no DOM churn, text selections survive. */
function setText(node, text) {
  const value = String(text ?? '');
  if (node.textContent !== value) node.textContent = value;
}

function setAttr(node, name, value) {
  const v = String(value);
  if (node.getAttribute(name) !== v) node.setAttribute(name, v);
}

function show(node, visible) {
  if (node.hidden === visible) node.hidden = !visible;
}

function setClass(node, name, on) {
  if (node.classList.contains(name) !== on) node.classList.toggle(name, on);
}

/**
 * Bring the children of `list` in line with `items`: rows are kept by key, created when
 * new, updated in place, moved only when out of order (moving a node drops its focus),
 * and removed when gone.
 */
function syncRows(list, rows, items, key, create, update) {
  const seen = new Set();
  let cursor = list.firstChild;
  for (const item of items) {
    const k = String(key(item));
    if (seen.has(k)) continue; // a duplicate id: the first one wins
    seen.add(k);
    let row = rows.get(k);
    if (!row) {
      row = create(item, k);
      rows.set(k, row);
    }
    update(row, item);
    if (row.el !== cursor) list.insertBefore(row.el, cursor);
    else cursor = cursor.nextSibling;
  }
  for (const [k, row] of rows) {
    if (!seen.has(k)) {
      row.el.remove();
      rows.delete(k);
    }
  }
}

/**
 * A row that acts on a click anywhere but its buttons and its <pre>, and on Enter and
 * Space when `node` (its focusable part) has the focus, like a button would.
 */
function clickable(node, area, onActivate) {
  node.tabIndex = 0;
  node.setAttribute('role', 'button');
  area.addEventListener('click', (event) => {
    if (event.target.closest('button, a, input, pre')) return;
    const selection = node.ownerDocument.getSelection();
    if (selection && !selection.isCollapsed && area.contains(selection.anchorNode)) return;
    onActivate();
  });
  node.addEventListener('keydown', (event) => {
    if (event.target !== node) return;
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      onActivate();
    }
  });
}

/** A path that wraps after its slashes rather than anywhere. */
function setPath(node, path) {
  if (node.dataset.path === path) return;
  node.dataset.path = path;
  node.textContent = '';
  const parts = path.split('/');
  parts.forEach((part, i) => {
    node.append(i < parts.length - 1 ? `${part}/` : part);
    if (i < parts.length - 1) node.append(node.ownerDocument.createElement('wbr'));
  });
}

/** Keep a <pre> scrolled to its end if it was there; otherwise keep its scroll position. */
function setPre(pre, text) {
  const value = String(text ?? '');
  if (pre.textContent === value) return;
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  const top = pre.scrollTop;
  const left = pre.scrollLeft;
  pre.textContent = value;
  pre.scrollTop = atEnd ? pre.scrollHeight : top;
  pre.scrollLeft = left;
}

/** A bar of segments, as fractions of a total; decorative (the figures are in text). */
function makeBar(doc, kinds) {
  const bar = make(doc, 'div', 'nbq-bar');
  bar.setAttribute('aria-hidden', 'true');
  const segments = {};
  for (const kind of kinds) {
    segments[kind] = make(doc, 'span', `nbq-seg nbq-seg-${kind}`);
    bar.appendChild(segments[kind]);
  }
  return { bar, segments };
}

function setBar(bar, values, total) {
  for (const [kind, value] of Object.entries(values)) {
    const width = total > 0 ? `${Math.min(100, (100 * num(value)) / total).toFixed(2)}%` : '0%';
    if (bar.segments[kind].style.width !== width) bar.segments[kind].style.width = width;
  }
}

// ---------------------------------------------------------------- requests

function reasonOf(error) {
  if (error && error.name === 'AbortError') return `no answer in ${REQUEST_TIMEOUT / 1000} s`;
  const text = oneLine(error && error.message ? error.message : error);
  return text || 'unknown error';
}

/** "404 Not Found: <the server's message>" for a failed response. */
async function describeResponse(response) {
  let message = '';
  try {
    const body = await response.clone().json();
    message = oneLine(body && (body.message || body.reason));
  } catch {
    // not JSON: the status says enough
  }
  const status = `${response.status} ${response.statusText || ''}`.trim();
  return message ? `${status}: ${message}` : status;
}

const JSON_HEADERS = { 'Content-Type': 'application/json' };

// ---------------------------------------------------------------- the panel

/**
 * Mount the panel in `container` and poll the API every `interval` ms.
 *
 * `request(path, init)` answers a fetch Response for `path` relative to the server's
 * `nbqueue/` base (the caller adds authentication and the XSRF token). With `paused`,
 * nothing is requested until `resume()`. Returns `{ dispose, pause, resume, refresh }`.
 */
export function mountPanel(container, { request, interval = 1000, paused = false } = {}) {
  if (typeof request !== 'function') throw new TypeError('mountPanel needs a request function');
  const doc = container.ownerDocument;
  ensureStylesheet(doc);

  const root = make(doc, 'div');
  root.id = 'nbqueue-panel';
  const connection = make(doc, 'p', 'nbq-connection nbq-error');
  connection.setAttribute('role', 'status');
  connection.hidden = true;
  const waiting = make(doc, 'p', 'nbq-note', 'reading the stores…');
  const storesNode = make(doc, 'div', 'nbq-stores');
  const noStores = make(doc, 'p', 'nbq-empty', 'no stores registered yet');
  noStores.hidden = true;
  root.append(connection, waiting, noStores, storesNode, makeAddForm());
  container.appendChild(root);

  const stores = new Map(); // api id -> store view
  let running = !paused;
  let disposed = false;
  let inFlight = false;
  let again = false;
  let sleeping = false; // the page is hidden: poll again when it shows
  let timer = null;
  const controllers = new Set();

  // -------------------------------------------------------------- requests

  async function getJson(path) {
    const controller = new AbortController();
    controllers.add(controller);
    const timeout = setTimeout(() => controller.abort(), REQUEST_TIMEOUT);
    try {
      const response = await request(path, { method: 'GET', signal: controller.signal });
      if (!response.ok) throw new Error(await describeResponse(response));
      return await response.json();
    } finally {
      clearTimeout(timeout);
      controllers.delete(controller);
    }
  }

  /** POST `body` to `path`: `{ ok, message }` from the server, or why it failed. */
  async function post(path, body = {}) {
    try {
      const response = await request(path, {
        method: 'POST',
        body: JSON.stringify(body),
        headers: JSON_HEADERS,
      });
      let answer = null;
      try {
        answer = await response.json();
      } catch {
        // not JSON
      }
      const failed = !response.ok || !answer || answer.ok === false;
      const message = oneLine(answer && answer.message) || (await describeResponse(response));
      return { ok: !failed, message, answer };
    } catch (error) {
      return { ok: false, message: `cannot reach the server: ${reasonOf(error)}`, answer: null };
    }
  }

  // -------------------------------------------------------------- polling

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(tick, ms);
  }

  function tick() {
    timer = null;
    if (!running || disposed || inFlight) return;
    if (doc.visibilityState === 'hidden') {
      sleeping = true;
      return;
    }
    poll();
  }

  function onVisibility() {
    if (doc.visibilityState !== 'hidden' && sleeping) {
      sleeping = false;
      if (running && !inFlight && !disposed) poll();
    }
  }
  doc.addEventListener('visibilitychange', onVisibility);

  async function poll() {
    inFlight = true;
    again = false;
    sleeping = false;
    const started = performance.now();
    try {
      let list;
      try {
        list = await getJson('api/stores');
        if (!Array.isArray(list)) throw new Error('api/stores did not answer a list');
      } catch (error) {
        if (disposed) return;
        show(waiting, false);
        setText(connection, `cannot reach the server: ${reasonOf(error)} (retrying)`);
        show(connection, true);
        for (const view of stores.values()) view.markFailed();
        return;
      }
      const details = await Promise.all(
        list.map((entry) =>
          getJson(`api/stores/${encodeURIComponent(entry.id)}`).then(
            (data) => ({ data }),
            (error) => ({ error }),
          ),
        ),
      );
      if (disposed) return;
      show(connection, false);
      try {
        render(list, details);
      } catch (error) {
        // a bug of the panel: say so, and keep polling
        console.error('nbqueue panel', error);
        setText(connection, `the panel could not show the answer: ${reasonOf(error)}`);
        show(connection, true);
      }
    } finally {
      inFlight = false;
      if (running && !disposed) {
        schedule(again ? 0 : Math.max(MIN_GAP, interval - (performance.now() - started)));
      }
    }
  }

  /** Poll now, or right after the poll under way. */
  function refresh() {
    if (disposed || !running) return;
    if (inFlight) {
      again = true;
    } else {
      clearTimeout(timer);
      timer = null;
      poll();
    }
  }

  function render(list, details) {
    show(waiting, false);
    show(noStores, list.length === 0);
    const items = list.map((entry, i) => ({ entry, ...details[i] }));
    syncRows(
      storesNode,
      stores,
      items,
      (item) => item.entry.id,
      (item) => makeStoreView(item.entry),
      (view, item) => view.update(item),
    );
  }

  // -------------------------------------------------------------- actions

  /**
   * Make `button` of a row POST `action` on the row's subject
   * (`api/stores/<store>/<kind>/<key>/<action>`): disabled while its POST is pending,
   * and while `enabled()` says no.
   */
  function wireAction(view, row, button, kind, key, action, enabled = () => true) {
    row.refreshButtons = () => {
      button.disabled = row.pending.has(button) || !enabled();
    };
    button.addEventListener('click', () =>
      act(
        view,
        row,
        button,
        `api/stores/${encodeURIComponent(view.id)}/${kind}/${encodeURIComponent(key)}/${action}`,
      ),
    );
  }

  /** Run an action for `button`: disabled while its POST is pending, the answer shown. */
  async function act(view, row, button, path) {
    row.pending.add(button);
    button.disabled = true;
    view.setStatus('', false);
    const { ok, message } = await post(path);
    row.pending.delete(button);
    if (disposed) return;
    row.refreshButtons();
    view.setStatus(message, !ok);
    refresh();
  }

  // -------------------------------------------------------------- the add form

  function makeAddForm() {
    const form = make(doc, 'form', 'nbq-add');
    const id = `nbqueue-add-${++nextUid}`;
    const label = make(doc, 'label', 'nbq-add-label', 'Add a store by path');
    label.htmlFor = id;
    const input = make(doc, 'input', 'nbq-input');
    input.id = id;
    input.type = 'text';
    input.name = 'directory';
    input.autocomplete = 'off';
    input.spellcheck = false;
    input.placeholder = '/path/to/.nbqueue';
    const button = make(doc, 'button', 'nbq-button', 'Add');
    button.type = 'submit';
    const status = make(doc, 'p', 'nbq-status');
    status.setAttribute('role', 'status');
    status.hidden = true;
    const line = make(doc, 'div', 'nbq-add-line');
    line.append(input, button);
    form.append(label, line, status);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const directory = input.value.trim();
      if (!directory || button.disabled) return;
      button.disabled = true;
      const { ok, message, answer } = await post('api/stores', { directory });
      button.disabled = false;
      if (disposed) return;
      const text = ok && answer && answer.directory ? `added ${answer.directory}` : message;
      setText(status, text);
      setClass(status, 'nbq-error', !ok);
      show(status, true);
      if (ok) {
        input.value = '';
        refresh();
      }
    });
    return form;
  }

  // -------------------------------------------------------------- a store

  function makeSection(title) {
    const section = make(doc, 'section', 'nbq-section');
    const heading = make(doc, 'h3', 'nbq-heading');
    const name = make(doc, 'span', '', title);
    const count = make(doc, 'span', 'nbq-count');
    heading.append(name, count);
    const empty = make(doc, 'p', 'nbq-empty');
    empty.hidden = true;
    const list = make(doc, 'ul', 'nbq-list');
    section.append(heading, empty, list);
    return { section, count, empty, list, rows: new Map() };
  }

  function makeStoreView(entry) {
    const el = make(doc, 'section', 'nbq-store');
    el.dataset.nbqueueKind = 'store';
    const header = make(doc, 'header', 'nbq-store-header');
    const directory = make(doc, 'h2', 'nbq-directory');
    const queued = make(doc, 'span', 'nbq-queued');
    const title = make(doc, 'div', 'nbq-store-title');
    title.append(directory, queued);
    const stale = make(doc, 'p', 'nbq-stale');
    stale.hidden = true;
    const storeError = make(doc, 'p', 'nbq-error');
    storeError.setAttribute('role', 'status');
    storeError.hidden = true;
    const status = make(doc, 'p', 'nbq-status');
    status.setAttribute('role', 'status');
    status.hidden = true;
    header.append(title, stale, storeError, status);

    const clusters = makeSection('Clusters');
    setText(clusters.empty, 'no cluster serves this store');
    const hint = make(doc, 'span', 'nbq-hint', ' (start one with ');
    hint.append(make(doc, 'code', '', 'nbqueue cluster'), doc.createTextNode(')'));
    clusters.empty.append(hint);
    const groups = makeSection('Groups');
    setText(groups.empty, 'no groups');
    const runningSection = makeSection('Running');
    setText(runningSection.empty, 'no task running');
    const output = make(doc, 'div', 'nbq-output');
    output.hidden = true;
    const outputCaption = make(doc, 'p', 'nbq-output-caption');
    const outputPre = make(doc, 'pre', 'nbq-pre nbq-output-pre');
    outputPre.tabIndex = 0;
    output.append(outputCaption, outputPre);
    runningSection.section.append(output);
    const failures = makeSection('Failures');
    setText(failures.empty, 'no failures');

    el.append(
      header,
      clusters.section,
      groups.section,
      runningSection.section,
      failures.section,
    );

    const view = {
      el,
      id: String(entry.id),
      data: null, // the last payload read
      failed: false, // the last poll of this store failed
      selected: null, // id of the running task whose output shows
      selectedName: '',
      expanded: new Set(), // ids of failures whose traceback shows
    };

    view.setStatus = (message, isError) => {
      setText(status, message);
      setClass(status, 'nbq-error', Boolean(isError));
      show(status, Boolean(message));
    };

    view.markFailed = () => {
      view.failed = true;
      updateStale();
    };

    function updateStale() {
      // by this browser's clock, when the figures came: a server's clock may differ
      const updated = view.data && Number(view.receivedAt);
      const old = Number.isFinite(updated) && Date.now() / 1000 - updated > STALE_AFTER;
      const notUpdated = Boolean(view.data) && (view.failed || old);
      if (notUpdated) {
        setText(
          stale,
          Number.isFinite(updated) ? `not updated since ${clock(updated)}` : 'not updated',
        );
      }
      show(stale, notUpdated);
      setClass(el, 'nbq-not-updated', notUpdated);
    }

    view.update = ({ entry: e, data, error }) => {
      setAttr(el, 'data-nbqueue-id', e.directory ?? '');
      setPath(directory, e.directory ?? '');
      if (error) {
        view.failed = true;
        setText(storeError, `cannot read this store: ${reasonOf(error)} (retrying)`);
        show(storeError, true);
        updateStale();
        return;
      }
      view.failed = false;
      view.data = data;
      view.receivedAt = Date.now() / 1000;
      show(storeError, false);
      updateStale();
      setText(queued, Number.isFinite(data.queued) ? `${data.queued} queued` : '');
      updateClusters(data);
      updateGroups(data);
      updateRunning(data);
      updateFailures(data);
    };

    // ------------------------------------------------------------ clusters

    function updateClusters(data) {
      const items = Array.isArray(data.clusters) ? data.clusters : [];
      setText(clusters.count, items.length ? ` (${items.length})` : '');
      show(clusters.list, items.length > 0);
      show(clusters.empty, items.length === 0 || data.served === false);
      syncRows(clusters.list, clusters.rows, items, (c) => c.id, makeClusterRow, updateClusterRow);
    }

    function makeClusterRow(cluster, key) {
      const li = make(doc, 'li', 'nbq-row');
      li.dataset.nbqueueKind = 'cluster';
      li.dataset.nbqueueId = key;
      const head = make(doc, 'div', 'nbq-row-head');
      const main = make(doc, 'div', 'nbq-row-main');
      const label = make(doc, 'span', 'nbq-name');
      const state = make(doc, 'span', 'nbq-state');
      main.append(label, state);
      const stop = make(doc, 'button', 'nbq-button', 'Stop');
      stop.type = 'button';
      head.append(main, stop);
      const where = make(doc, 'p', 'nbq-detail');
      const load = make(doc, 'p', 'nbq-detail');
      const err = make(doc, 'p', 'nbq-error nbq-wrap');
      const wait = make(doc, 'p', 'nbq-note nbq-wrap');
      li.append(head, where, load, err, wait);
      const row = { el: li, pending: new Set(), cluster };
      wireAction(view, row, stop, 'clusters', key, 'stop', () => row.cluster.state === 'running');
      Object.assign(row, { label, state, where, load, err, wait });
      return row;
    }

    function updateClusterRow(row, c) {
      row.cluster = c;
      setText(row.label, c.label ?? '');
      setText(row.state, CLUSTER_STATES[c.state] ?? c.state ?? '');
      setAttr(row.state, 'data-state', c.state ?? '');
      const where = [];
      if (c.host) where.push(`host ${c.host}`);
      if (c.pid != null) where.push(`pid ${c.pid}`);
      if (c.executor) where.push(c.executor);
      setText(row.where, where.join(' · '));
      const load = [];
      if (c.workers != null) load.push(`${c.workers} worker${c.workers === 1 ? '' : 's'}`);
      if (c.busy != null) load.push(`${c.busy} busy`);
      if (c.rate != null) load.push(rate(c.rate));
      if (c.done != null) load.push(`${c.done} done`);
      if (c.failed != null) load.push(`${c.failed} failed`);
      setText(row.load, load.join(' · '));
      setText(row.err, c.error ? oneLine(c.error) : '');
      show(row.err, Boolean(c.error));
      setText(row.wait, c.waiting ? oneLine(c.waiting) : '');
      show(row.wait, Boolean(c.waiting));
      row.refreshButtons();
    }

    // ------------------------------------------------------------ groups

    function updateGroups(data) {
      const items = Array.isArray(data.groups) ? data.groups : [];
      setText(groups.count, items.length ? ` (${items.length})` : '');
      show(groups.list, items.length > 0);
      show(groups.empty, items.length === 0);
      syncRows(groups.list, groups.rows, items, (g) => g.name, makeGroupRow, updateGroupRow);
    }

    function makeGroupRow(group, key) {
      const li = make(doc, 'li', 'nbq-row');
      li.dataset.nbqueueKind = 'group';
      li.dataset.nbqueueId = key;
      const head = make(doc, 'div', 'nbq-row-head');
      const main = make(doc, 'div', 'nbq-row-main');
      const name = make(doc, 'span', 'nbq-name', key);
      const state = make(doc, 'span', 'nbq-state');
      main.append(name, state);
      const retry = make(doc, 'button', 'nbq-button', 'Retry');
      retry.type = 'button';
      retry.hidden = true;
      head.append(main, retry);
      const counts = make(doc, 'p', 'nbq-detail');
      const bar = makeBar(doc, ['done', 'failed', 'cancelled']);
      const pace = make(doc, 'p', 'nbq-detail');
      li.append(head, counts, bar.bar, pace);
      const row = { el: li, pending: new Set(), name, state, retry, counts, bar, pace };
      wireAction(view, row, retry, 'groups', key, 'retry');
      return row;
    }

    function updateGroupRow(row, g) {
      const done = num(g.done);
      const failed = num(g.failed);
      const cancelled = num(g.cancelled);
      const total = num(g.total);
      setAttr(row.el, 'data-done', done);
      setAttr(row.el, 'data-failed', failed);
      setAttr(row.el, 'data-cancelled', cancelled);
      setAttr(row.el, 'data-total', total);
      setText(row.state, g.state ?? '');
      setAttr(row.state, 'data-state', g.state ?? '');
      setText(
        row.counts,
        `${done} done / ${failed} failed / ${cancelled} cancelled / ${total} total`,
      );
      setBar(row.bar, { done, failed, cancelled }, total);
      const pace = [];
      if (g.rate != null) pace.push(rate(g.rate));
      if (g.eta != null && Number.isFinite(g.eta)) pace.push(`~${duration(g.eta, true)} left`);
      if (g.running) pace.push(`${g.running} running`);
      setText(row.pace, pace.join(' · '));
      show(row.pace, pace.length > 0);
      show(row.retry, failed + cancelled > 0);
      row.refreshButtons();
    }

    // ------------------------------------------------------------ running tasks

    function updateRunning(data) {
      const items = Array.isArray(data.running) ? data.running : [];
      setText(runningSection.count, items.length ? ` (${items.length})` : '');
      show(runningSection.list, items.length > 0);
      show(runningSection.empty, items.length === 0);
      syncRows(
        runningSection.list,
        runningSection.rows,
        items,
        (t) => t.id,
        makeTaskRow,
        updateTaskRow,
      );
      updateOutput(items);
    }

    function updateOutput(items) {
      if (view.selected == null) {
        show(output, false);
        return;
      }
      show(output, true); // before the text: a <pre> just shown starts at its end
      const task = items.find((t) => String(t.id) === view.selected);
      if (task) {
        view.selectedName = task.name ?? view.selected;
        setText(outputCaption, `output of ${view.selectedName}`);
        setPre(outputPre, task.output ?? '');
      } else {
        setText(outputCaption, `output of ${view.selectedName} (no longer running)`);
      }
    }

    function select(key) {
      view.selected = view.selected === key ? null : key;
      for (const [k, row] of runningSection.rows) {
        const on = k === view.selected;
        setClass(row.el, 'nbq-selected', on);
        setAttr(row.main, 'aria-pressed', on);
      }
      if (view.selected != null) outputPre.textContent = '';
      updateOutput(view.data && Array.isArray(view.data.running) ? view.data.running : []);
    }

    function makeTaskRow(task, key) {
      const li = make(doc, 'li', 'nbq-row');
      li.dataset.nbqueueKind = 'task';
      li.dataset.nbqueueId = key;
      const head = make(doc, 'div', 'nbq-row-head');
      const main = make(doc, 'div', 'nbq-row-main nbq-clickable');
      main.title = 'show its output';
      const name = make(doc, 'span', 'nbq-name');
      const since = make(doc, 'span', 'nbq-detail');
      main.append(name, since);
      const cancel = make(doc, 'button', 'nbq-button', 'Cancel');
      cancel.type = 'button';
      head.append(main, cancel);
      const func = make(doc, 'p', 'nbq-detail nbq-code nbq-wrap');
      const progress = make(doc, 'div', 'nbq-progress');
      const bar = makeBar(doc, ['done']);
      const progressText = make(doc, 'p', 'nbq-detail nbq-wrap');
      progress.append(bar.bar, progressText);
      const last = make(doc, 'p', 'nbq-last-line nbq-code');
      li.append(head, func, progress, last);
      clickable(main, li, () => select(key));
      setAttr(main, 'aria-pressed', view.selected === key);
      setClass(li, 'nbq-selected', view.selected === key);
      const row = { el: li, pending: new Set(), main, name, since, func, progress, bar };
      Object.assign(row, { progressText, last });
      wireAction(view, row, cancel, 'tasks', key, 'cancel');
      return row;
    }

    function updateTaskRow(row, t) {
      setText(row.name, t.name ?? '');
      setAttr(row.main, 'aria-label', `output of ${t.name ?? ''}`);
      setText(
        row.since,
        t.seconds != null
          ? `for ${duration(Number(t.seconds))}`
          : t.state === 'leased'
            ? 'leased: waiting for a worker'
            : 'starting',
      );
      const where = [t.func ?? ''];
      if (t.group != null) where.push(`in ${t.group}`);
      setText(row.func, where.join(' · '));
      const p = t.progress;
      if (p && typeof p === 'object') {
        const done = num(p.done);
        const total = Number(p.total);
        const known = p.total != null && Number.isFinite(total) && total > 0;
        let text = known
          ? `${done} / ${total} (${Math.floor((100 * done) / total)}%)`
          : `${done} done`;
        if (p.message) text += ` ${oneLine(p.message)}`;
        setText(row.progressText, text);
        show(row.bar.bar, known);
        if (known) setBar(row.bar, { done }, total);
        show(row.progress, true);
      } else {
        show(row.progress, false);
      }
      setText(row.last, t.last_line ?? '');
      show(row.last, Boolean(t.last_line));
      row.refreshButtons();
    }

    // ------------------------------------------------------------ failures

    function updateFailures(data) {
      const items = Array.isArray(data.failures) ? [...data.failures] : [];
      items.sort((a, b) => num(b.stopped) - num(a.stopped)); // newest first; stable
      setText(failures.count, items.length ? ` (${items.length})` : '');
      show(failures.list, items.length > 0);
      show(failures.empty, items.length === 0);
      syncRows(failures.list, failures.rows, items, (f) => f.id, makeFailureRow, updateFailureRow);
      for (const id of view.expanded) if (!failures.rows.has(id)) view.expanded.delete(id);
    }

    function makeFailureRow(failure, key) {
      const li = make(doc, 'li', 'nbq-row');
      li.dataset.nbqueueKind = 'failure';
      li.dataset.nbqueueId = key;
      const head = make(doc, 'div', 'nbq-row-head');
      const main = make(doc, 'div', 'nbq-row-main nbq-clickable');
      main.title = 'show its traceback';
      const name = make(doc, 'span', 'nbq-name');
      const where = make(doc, 'span', 'nbq-detail');
      main.append(name, where);
      const error = make(doc, 'p', 'nbq-error nbq-failure-error nbq-wrap');
      const retry = make(doc, 'button', 'nbq-button', 'Retry');
      retry.type = 'button';
      head.append(main, retry);
      const traceback = make(doc, 'pre', 'nbq-pre nbq-traceback');
      traceback.tabIndex = 0;
      traceback.hidden = true;
      li.append(head, error, traceback);
      const row = { el: li, pending: new Set(), main, name, where, error, traceback, text: null };
      const toggle = () => {
        const open = !view.expanded.has(key);
        if (open) view.expanded.add(key);
        else view.expanded.delete(key);
        setAttr(main, 'aria-expanded', open);
        show(traceback, open);
      };
      clickable(main, li, toggle);
      setAttr(main, 'aria-expanded', view.expanded.has(key));
      traceback.hidden = !view.expanded.has(key);
      wireAction(view, row, retry, 'tasks', key, 'retry');
      return row;
    }

    function updateFailureRow(row, f) {
      setText(row.name, f.name ?? '');
      setAttr(row.main, 'aria-label', `traceback of ${f.name ?? ''}`);
      const where = [];
      if (f.group != null) where.push(`in ${f.group}`);
      if (f.cause && f.cause !== 'raised') where.push(String(f.cause));
      if (Number.isFinite(f.stopped)) where.push(`at ${clock(f.stopped)}`);
      setText(row.where, where.join(' · '));
      setText(row.error, oneLine(f.error));
      const text = String(f.traceback ?? '');
      if (row.text !== text) {
        row.text = text;
        renderTraceback(row.traceback, text);
      }
      row.refreshButtons();
    }

    /** The traceback as text, its last line (the exception) highlighted. */
    function renderTraceback(pre, text) {
      const lines = text.replace(/\s+$/, '').split('\n');
      const last = lines.pop() ?? '';
      pre.textContent = '';
      if (lines.length) pre.append(doc.createTextNode(`${lines.join('\n')}\n`));
      pre.append(make(doc, 'span', 'nbq-tb-error', last));
    }

    view.updateStale = updateStale;
    return view;
  }

  // -------------------------------------------------------------- the handle

  // The notice "not updated since" must appear when a store's figures age, even between
  // answers (a poll that hangs until its timeout).
  const ager = setInterval(() => {
    for (const view of stores.values()) view.updateStale();
  }, 1000);

  if (running) poll();

  return {
    /** Stop polling and remove the panel. */
    dispose() {
      if (disposed) return;
      disposed = true;
      running = false;
      clearTimeout(timer);
      clearInterval(ager);
      for (const controller of controllers) controller.abort();
      doc.removeEventListener('visibilitychange', onVisibility);
      root.remove();
    },
    /** Stop polling (the panel is hidden); the figures stay, marked when they age. */
    pause() {
      running = false;
      clearTimeout(timer);
      timer = null;
    },
    /** Poll again, at once. */
    resume() {
      if (disposed || running) return;
      running = true;
      if (!inFlight) poll();
    },
    refresh,
  };
}
