// fastapi-taskflow dashboard. Plain ES2020, no build step, no dependencies.
// Rule: every value that comes from a task (names, args, errors, logs, tags) goes into the page
// through textContent or an attribute, never through HTML parsing.
"use strict";

(function () {
  const BASE = location.pathname.replace(/\/dashboard\/?$/, "");
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const SVG = "http://www.w3.org/2000/svg";

  const state = {
    config: null,
    view: "overview",
    rows: new Map(),        // task_id -> row data on the current page
    order: [],              // task ids in display order
    cursors: [null],        // cursor of each page visited; last is the current page
    next: null,
    sort: null,             // {key, dir}
    detailId: null,
    detailTimer: null,
    metrics: null,
    pollTimer: null,
    streamErrors: 0,
    queues: {},
    instancesTimer: null,
  };

  // ---- small helpers ----------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
    return node;
  }

  function fmtTime(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toLocaleString();
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 0) + " ms";
    if (seconds < 120) return seconds.toFixed(2) + " s";
    return (seconds / 60).toFixed(1) + " min";
  }

  function fmtNumber(n) {
    return typeof n === "number" ? n.toLocaleString() : "—";
  }

  function toast(message, isError) {
    const box = $("#toast");
    box.textContent = message;
    box.className = "toast" + (isError ? " error" : "");
    box.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { box.hidden = true; }, 5000);
  }

  function csrfToken() {
    return (state.config && state.config.csrf_token) || "same-origin";
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      // Every change carries the header: the session's token when signed in, any value under
      // the app's own auth (a page on another origin cannot send a custom header).
      headers["X-CSRF-Token"] = csrfToken();
      if (body !== undefined) headers["Content-Type"] = "application/json";
    }
    const response = await fetch(BASE + path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      location.href = BASE + "/auth/login";
      throw new Error("signed out");
    }
    let data = null;
    const type = response.headers.get("content-type") || "";
    if (type.includes("application/json")) data = await response.json();
    if (!response.ok) {
      let detail = data && data.detail;
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
      throw new Error(detail || response.statusText || "request failed");
    }
    return { data, headers: response.headers };
  }

  // ---- views --------------------------------------------------------------------------------

  function show(view) {
    state.view = view;
    for (const tab of $$(".tabs [role=tab]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.view === view));
      tab.tabIndex = tab.dataset.view === view ? 0 : -1;
    }
    for (const section of $$(".view")) section.hidden = section.id !== "view-" + view;
    if (view === "tasks") loadTasks();
    if (view === "failed") loadFailed();
    if (view === "queues") loadQueues();
    clearInterval(state.instancesTimer);
    if (view === "instances") { loadInstances(); state.instancesTimer = setInterval(loadInstances, 5000); }
    if (view === "registry") loadRegistry();
    if (view === "audit") loadAudit();
    if (view === "overview") loadMetrics();
    try { history.replaceState(null, "", "#" + view); } catch (e) { /* file: urls */ }
  }

  // ---- overview -----------------------------------------------------------------------------

  async function loadMetrics() {
    try {
      const { data } = await api("GET", "/metrics");
      renderMetrics(data);
    } catch (err) { toast(err.message, true); }
  }

  function renderMetrics(m) {
    if (!m) return;
    state.metrics = m;
    const cards = $("#cards");
    const rate = m.total ? (m.success_rate * 100).toFixed(1) + " %" : "—";
    const perMinute = throughputNow(m.throughput);
    const items = [
      ["Total", fmtNumber(m.total)], ["Running", fmtNumber(m.running)],
      ["Pending", fmtNumber(m.pending)], ["Succeeded", fmtNumber(m.success)],
      ["Failed", fmtNumber(m.failed)], ["Success rate", rate],
      ["Throughput", perMinute === null ? "—" : perMinute.toFixed(1) + " /min"],
      ["p95 duration", fmtDuration(m.duration_p95)],
    ];
    cards.replaceChildren(...items.map(([label, value]) =>
      el("div", { class: "card", "data-card": label },
        el("div", { class: "label", text: label }), el("div", { class: "value", text: value }))));
    drawThroughput(m.throughput || []);
    drawHistogram(m.duration_histogram || []);
    $("#percentiles").textContent =
      "p50 " + fmtDuration(m.duration_p50) + " · p95 " + fmtDuration(m.duration_p95) +
      " · p99 " + fmtDuration(m.duration_p99) + " · mean " + fmtDuration(m.avg_duration_seconds);
    if (m.queues) updateQueueNumbers(m.queues);
  }

  function rates(samples) {
    const points = [];
    for (let i = 1; i < samples.length; i++) {
      const [t0, s0, f0] = samples[i - 1];
      const [t1, s1, f1] = samples[i];
      const minutes = Math.max((t1 - t0) / 60, 1 / 60);
      points.push([t1, Math.max(0, (s1 - s0) / minutes), Math.max(0, (f1 - f0) / minutes)]);
    }
    return points;
  }

  function throughputNow(samples) {
    const points = rates(samples || []);
    return points.length ? points[points.length - 1][1] + points[points.length - 1][2] : null;
  }

  function drawThroughput(samples) {
    const chart = $("#chart-throughput");
    const points = rates(samples);
    const W = 600, H = 200, P = 28;
    const nodes = [svg("line", { class: "axis", x1: P, y1: H - P, x2: W - 6, y2: H - P })];
    if (points.length < 2) {
      nodes.push(svg("text", { x: W / 2 - 90, y: H / 2, text: "collecting samples (every 5 s)…" }));
      chart.replaceChildren(...nodes);
      return;
    }
    const t0 = points[0][0], t1 = points[points.length - 1][0];
    const max = Math.max(1, ...points.map((p) => Math.max(p[1], p[2])));
    const x = (t) => P + ((t - t0) / Math.max(t1 - t0, 1)) * (W - P - 10);
    const y = (v) => H - P - (v / max) * (H - 2 * P);
    for (const [index, cls] of [[1, "ok"], [2, "bad"]]) {
      const d = points.map((p, i) => (i ? "L" : "M") + x(p[0]).toFixed(1) + " " + y(p[index]).toFixed(1)).join(" ");
      nodes.push(svg("path", { class: cls, d }));
    }
    nodes.push(svg("text", { x: 2, y: P, text: max.toFixed(0) }));
    nodes.push(svg("text", { x: 2, y: H - P, text: "0" }));
    nodes.push(svg("text", { x: P, y: H - 8, text: new Date(t0 * 1000).toLocaleTimeString() }));
    nodes.push(svg("text", { x: W - 80, y: H - 8, text: new Date(t1 * 1000).toLocaleTimeString() }));
    chart.replaceChildren(...nodes);
  }

  function drawHistogram(buckets) {
    const chart = $("#chart-durations");
    const W = 600, H = 200, P = 28;
    const nodes = [svg("line", { class: "axis", x1: P, y1: H - P, x2: W - 6, y2: H - P })];
    if (!buckets.length) {
      nodes.push(svg("text", { x: W / 2 - 60, y: H / 2, text: "no finished tasks yet" }));
      chart.replaceChildren(...nodes);
      return;
    }
    const max = Math.max(...buckets.map((b) => b[1]));
    const width = (W - P - 10) / buckets.length;
    buckets.forEach(([upper, count], i) => {
      const h = (count / max) * (H - 2 * P);
      const bar = svg("rect", { class: "bar", x: P + i * width + 1, y: H - P - h, width: Math.max(width - 2, 1), height: h });
      bar.append(svg("title", { text: "≤ " + (upper < 0 ? "∞" : fmtDuration(upper)) + ": " + count }));
      nodes.push(bar);
    });
    const first = buckets[0][0], last = buckets[buckets.length - 1][0];
    nodes.push(svg("text", { x: P, y: H - 8, text: "≤ " + fmtDuration(first) }));
    nodes.push(svg("text", { x: W - 90, y: H - 8, text: "≤ " + (last < 0 ? "∞" : fmtDuration(last)) }));
    nodes.push(svg("text", { x: 2, y: P, text: String(max) }));
    chart.replaceChildren(...nodes);
  }

  // ---- tasks table --------------------------------------------------------------------------

  function filters() {
    const form = $("#filters");
    const params = new URLSearchParams();
    for (const name of ["status", "func_name", "queue", "tag", "since", "q"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    return params;
  }

  async function loadTasks() {
    const params = filters();
    params.set("limit", $("#page-size").value);
    const cursor = state.cursors[state.cursors.length - 1];
    if (cursor) params.set("cursor", cursor);
    try {
      const { data, headers } = await api("GET", "?" + params.toString());
      state.next = headers.get("X-Next-Cursor");
      state.rows = new Map(data.map((t) => [t.task_id, t]));
      state.order = data.map((t) => t.task_id);
      renderTable();
    } catch (err) { toast(err.message, true); }
  }

  function matchesFilters(task) {
    const p = filters();
    if (p.get("status") && task.status !== p.get("status")) return false;
    if (p.get("func_name") && task.func_name !== p.get("func_name")) return false;
    if (p.get("queue") && task.queue !== p.get("queue")) return false;
    if (p.get("tag")) {
      const [key, ...rest] = p.get("tag").split(":");
      if ((task.tags || {})[key] !== rest.join(":")) return false;
    }
    if (p.get("q")) {
      const needle = p.get("q").toLowerCase();
      const hay = [task.func_name, task.task_id, task.error || ""].join("\n").toLowerCase();
      if (!hay.includes(needle)) return false;
    }
    return true;
  }

  function sortedIds() {
    if (!state.sort) return state.order;
    const { key, dir } = state.sort;
    const value = (id) => { const v = state.rows.get(id)[key]; return v === null || v === undefined ? "" : v; };
    return [...state.order].sort((a, b) => (value(a) > value(b) ? 1 : value(a) < value(b) ? -1 : 0) * dir);
  }

  function renderTable() {
    const body = $("#task-table tbody");
    const rows = sortedIds().map((id) => taskRow(state.rows.get(id)));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No tasks match." })));
    body.replaceChildren(...rows);
    $("#prev").disabled = state.cursors.length <= 1;
    $("#next").disabled = !state.next;
    $("#page-info").textContent = "Page " + state.cursors.length;
  }

  function statusBadge(status) {
    return el("span", { class: "badge " + status, text: status });
  }

  function tagList(tags) {
    const box = el("span");
    for (const [k, v] of Object.entries(tags || {})) box.append(el("span", { class: "tag", text: k + ":" + v }));
    return box;
  }

  function taskRow(t) {
    const nameCell = el("td", {}, el("div", { class: "name", text: t.func_name }),
      el("div", { class: "sub mono", text: t.task_id }));
    if (t.status === "running" && typeof t.progress === "number") {
      nameCell.append(el("progress", { max: 1, value: t.progress, "aria-label": "progress" }));
    }
    if (t.error) nameCell.append(el("div", { class: "sub error-cell", text: t.error }));
    if (t.status === "pending" && t.waiting_reason) nameCell.append(el("div", { class: "sub waiting", text: t.waiting_reason }));
    return el("tr", {
      "data-id": t.task_id, "data-status": t.status, tabindex: 0,
      onclick: () => openDetail(t.task_id),
      onkeydown: (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openDetail(t.task_id); } },
    },
    nameCell,
    el("td", {}, statusBadge(t.status)),
    el("td", { class: "hide-s", text: t.queue }),
    el("td", { text: fmtTime(t.created_at) }),
    el("td", { text: fmtDuration(t.duration) }),
    el("td", { class: "hide-s", text: t.retries_used }),
    el("td", { class: "hide-s" }, tagList(t.tags)));
  }

  function applyDelta(tasks) {
    if (state.view !== "tasks") return;
    const firstPage = state.cursors.length === 1;
    const limit = parseInt($("#page-size").value, 10);
    let changed = false;
    for (const t of tasks) {
      if (state.rows.has(t.task_id)) {
        state.rows.set(t.task_id, t);
        changed = true;
      } else if (firstPage && matchesFilters(t)) {
        state.rows.set(t.task_id, t);
        state.order.unshift(t.task_id);
        changed = true;
      }
    }
    if (!changed) return;
    state.order.sort((a, b) => (state.rows.get(b).created_at || "").localeCompare(state.rows.get(a).created_at || ""));
    while (state.order.length > limit) {
      state.rows.delete(state.order.pop());
      if (!state.next) state.next = "more";  // a reload fetches the real cursor
    }
    renderTable();
  }

  // ---- detail panel -------------------------------------------------------------------------

  async function openDetail(id) {
    state.detailId = id;
    const panel = $("#detail");
    panel.hidden = false;
    try {
      const { data } = await api("GET", "/" + encodeURIComponent(id));
      if (state.detailId === id) renderDetail(data);
    } catch (err) {
      $("#detail-body").replaceChildren(el("p", { class: "error", text: err.message }));
    }
    panel.focus();
  }

  function closeDetail() {
    state.detailId = null;
    $("#detail").hidden = true;
    const row = document.querySelector("tr[data-id]");
    if (row) row.focus();
  }

  function renderDetail(t) {
    $("#detail-title").textContent = t.func_name;
    const facts = [
      ["Task id", t.task_id], ["Status", statusBadge(t.status)], ["Queue", t.queue],
      ["Executor", t.executor], ["Priority", t.priority === null ? "—" : t.priority],
      ["Source", t.source], ["Created", fmtTime(t.created_at)], ["Started", fmtTime(t.start_time)],
      ["Ended", fmtTime(t.end_time)], ["Duration", fmtDuration(t.duration)],
      ["Retries used", t.retries_used], ["Idempotency key", t.idempotency_key || "—"],
      ["Tags", tagList(t.tags)],
    ];
    if (t.status === "pending" && t.waiting_reason) facts.push(["Waiting for", t.waiting_reason]);
    const dl = el("dl");
    for (const [label, value] of facts) dl.append(el("dt", { text: label }), el("dd", {}, value));
    const parts = [dl];
    if (typeof t.progress === "number") {
      parts.push(el("h3", { text: "Progress" }),
        el("progress", { max: 1, value: t.progress, "aria-label": "progress" }),
        el("div", { class: "sub", text: Math.round(t.progress * 100) + " %" + (t.progress_message ? " · " + t.progress_message : "") }));
    }
    parts.push(el("h3", { text: "Arguments" }));
    if (t.encrypted) parts.push(el("p", { class: "muted", text: "Encrypted: not shown." }));
    else if ("args" in t) parts.push(el("pre", { class: "args", text: JSON.stringify({ args: t.args, kwargs: t.kwargs }, null, 2) }));
    else parts.push(el("p", { class: "muted", text: "Hidden (display_func_args is off)." }));
    if (t.status === "success") {
      parts.push(el("h3", { text: "Result" }));
      if (!("result" in t)) parts.push(el("p", { class: "muted", text: "Hidden (display_results is off)." }));
      else if (t.has_result) parts.push(el("pre", { class: "result", text: JSON.stringify(t.result, null, 2) }));
      else parts.push(el("p", { class: "muted", text: t.result_note || "None (the task returned nothing)." }));
    }
    if (t.error) parts.push(el("h3", { text: "Error" }), el("pre", { class: "error-text", text: t.error }));
    if (t.stacktrace) parts.push(el("h3", { text: "Stack trace" }), el("pre", { class: "trace", text: t.stacktrace }));
    parts.push(el("h3", { text: "Logs (" + (t.logs || []).length + ")" }));
    parts.push((t.logs || []).length ? el("pre", { class: "logs", text: t.logs.join("\n") }) : el("p", { class: "muted", text: "No logs." }));
    $("#detail-body").replaceChildren(...parts);
    const readOnly = state.config && state.config.read_only;
    $("#detail-retry").hidden = readOnly || !["failed", "interrupted", "cancelled"].includes(t.status);
    $("#detail-cancel").hidden = readOnly || !["pending", "running"].includes(t.status);
  }

  function refreshDetailSoon() {
    clearTimeout(state.detailTimer);
    state.detailTimer = setTimeout(() => { if (state.detailId) openDetailQuiet(state.detailId); }, 250);
  }

  async function openDetailQuiet(id) {
    try {
      const { data } = await api("GET", "/" + encodeURIComponent(id));
      if (state.detailId === id) renderDetail(data);
    } catch (err) { /* it may have been replaced by a retry */ }
  }

  async function retryTask(id) {
    try {
      const { data } = await api("POST", "/" + encodeURIComponent(id) + "/retry");
      toast("Retried: new task " + data.task_id);
      if (state.rows.has(id) && data.task_id !== id) {
        state.rows.delete(id);
        state.order = state.order.filter((x) => x !== id);
      }
      state.rows.set(data.task_id, data.task);
      if (!state.order.includes(data.task_id)) state.order.unshift(data.task_id);
      renderTable();
      openDetail(data.task_id);
    } catch (err) { toast("Retry failed: " + err.message, true); }
  }

  async function cancelTask(id) {
    try {
      const { data } = await api("POST", "/" + encodeURIComponent(id) + "/cancel");
      toast(data.delivery === "owner" ? "Cancel sent to instance " + data.instance_id : "Cancelled on this instance");
      refreshDetailSoon();
    } catch (err) { toast("Cancel failed: " + err.message, true); }
  }

  // ---- dead letters ---------------------------------------------------------------------------

  async function loadFailed() {
    try {
      const { data } = await api("GET", "?status=failed&limit=200");
      const rows = data.map((t) => el("tr", { "data-failed": t.task_id },
        el("td", {}, el("input", { type: "checkbox", value: t.task_id, "aria-label": "select " + t.task_id })),
        el("td", {}, el("div", { class: "name", text: t.func_name }), el("div", { class: "sub mono", text: t.task_id })),
        el("td", {}, statusBadge(t.status)),
        el("td", { text: fmtTime(t.end_time) }),
        el("td", { class: "error-cell", text: t.error || "" })));
      if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No failed tasks." })));
      $("#failed-table tbody").replaceChildren(...rows);
    } catch (err) { toast(err.message, true); }
  }

  async function retrySelected() {
    const ids = $$("#failed-table input[type=checkbox]:checked").map((box) => box.value);
    if (!ids.length) { toast("Select tasks first", true); return; }
    try {
      const { data } = await api("POST", "/bulk-retry", { task_ids: ids });
      toast(data.dispatched + " retried, " + data.skipped + " skipped");
      loadFailed();
    } catch (err) { toast(err.message, true); }
  }

  async function retryWindow() {
    const since = $("#failed-window").value;
    try {
      const { data } = await api("POST", "/retry-failed?since=" + encodeURIComponent(since));
      toast(data.dispatched + " retried, " + data.skipped + " skipped");
      loadFailed();
    } catch (err) { toast(err.message, true); }
  }

  // ---- queues ---------------------------------------------------------------------------------

  async function loadQueues() {
    try {
      const { data } = await api("GET", "/queues");
      state.queues = data;
      const rows = Object.entries(data).map(([name, q]) => {
        const conc = el("input", { type: "number", min: 1, name: "concurrency", value: q.concurrency === null ? "" : q.concurrency, "aria-label": name + " concurrency" });
        const size = el("input", { type: "number", min: 1, name: "max_size", value: q.max_size === null ? "" : q.max_size, "aria-label": name + " max size" });
        const save = el("button", { type: "button", class: "mutating", text: "Save", onclick: () => saveQueue(name, conc, size) });
        return el("tr", { "data-queue": name },
          el("td", { class: "name", text: name }),
          el("td", { "data-field": "running", text: q.running }),
          el("td", { "data-field": "waiting", text: q.waiting }),
          el("td", { "data-field": "success", text: q.counts.success }),
          el("td", { "data-field": "failed", text: q.counts.failed }),
          el("td", {}, conc), el("td", {}, size), el("td", {}, save));
      });
      $("#queue-table tbody").replaceChildren(...rows);
    } catch (err) { toast(err.message, true); }
  }

  function updateQueueNumbers(queues) {
    if (state.view !== "queues") return;
    for (const [name, q] of Object.entries(queues)) {
      const row = document.querySelector('tr[data-queue="' + CSS.escape(name) + '"]');
      if (!row) continue;
      for (const [field, value] of [["running", q.running], ["waiting", q.waiting], ["success", q.counts.success], ["failed", q.counts.failed]]) {
        const cell = row.querySelector('[data-field="' + field + '"]');
        if (cell) cell.textContent = String(value);
      }
    }
  }

  async function saveQueue(name, conc, size) {
    const value = (input) => (input.value.trim() === "" ? null : Number(input.value));
    try {
      const { data } = await api("PATCH", "/queues/" + encodeURIComponent(name), { concurrency: value(conc), max_size: value(size) });
      toast("Queue " + name + " updated on " + data.scope);
      loadQueues();
    } catch (err) { toast(err.message, true); }
  }

  // ---- instances ------------------------------------------------------------------------------

  async function loadInstances() {
    try {
      const { data } = await api("GET", "/instances");
      const rows = data.map((i) => el("tr", { "data-instance": i.instance_id },
        el("td", { class: "mono", text: i.instance_id }), el("td", { text: i.host }),
        el("td", { text: i.pid }), el("td", { text: i.version }),
        el("td", { text: fmtTime(i.started_at) }), el("td", { text: fmtTime(i.heartbeat_at) }),
        el("td", { "data-field": "running", text: i.running }),
        el("td", { "data-field": "waiting", text: i.waiting })));
      if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No live instance." })));
      $("#instance-table tbody").replaceChildren(...rows);
    } catch (err) { toast(err.message, true); }
  }

  // ---- registry and audit -----------------------------------------------------------------------

  async function loadRegistry() {
    try {
      const { data } = await api("GET", "/registry");
      const rows = data.tasks.map((t) => el("tr", {},
        el("td", { class: "name mono", text: t.name }), el("td", { text: t.executor }),
        el("td", { text: t.queue }), el("td", { text: t.retries }),
        el("td", { text: t.delay + " s × " + t.backoff }), el("td", { text: t.timeout === null ? "—" : t.timeout + " s" }),
        el("td", { text: t.persist ? "yes" : "no" })));
      if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 7, class: "muted", text: "No registered tasks." })));
      $("#registry-table tbody").replaceChildren(...rows);
      const schedules = data.schedules.map((s) => el("tr", {},
        el("td", { class: "name mono", text: s.name }), el("td", { text: s.every === null ? "—" : s.every }),
        el("td", { class: "mono", text: s.cron || "—" }), el("td", { text: s.timezone }),
        el("td", { text: s.run_on_startup ? "yes" : "no" })));
      if (!schedules.length) schedules.push(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No schedules." })));
      $("#schedule-table tbody").replaceChildren(...schedules);
    } catch (err) { toast(err.message, true); }
  }

  async function loadAudit() {
    try {
      const { data } = await api("GET", "/audit?limit=200");
      const rows = data.map((e) => el("tr", {},
        el("td", { text: fmtTime(e.timestamp) }), el("td", { text: e.actor }),
        el("td", { text: e.action }), el("td", { class: "mono", text: e.task_id }),
        el("td", { text: (e.detail && e.detail.result) || "" })));
      if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "Nothing yet." })));
      $("#audit-table tbody").replaceChildren(...rows);
    } catch (err) { toast(err.message, true); }
  }

  // ---- live updates -------------------------------------------------------------------------

  function connect() {
    if (!window.EventSource) { startPolling(); return; }
    const source = new EventSource(BASE + "/dashboard/stream");
    const live = $("#live");
    source.addEventListener("hello", (e) => {
      state.streamErrors = 0;
      live.textContent = "live";
      live.className = "live on";
      stopPolling();
      const data = JSON.parse(e.data);
      if (state.view === "overview") renderMetrics(data.metrics);
    });
    source.addEventListener("delta", (e) => {
      const data = JSON.parse(e.data);
      if (data.metrics && state.view === "overview") renderMetrics(data.metrics);
      else if (data.metrics) { state.metrics = data.metrics; updateQueueNumbers(data.metrics.queues || {}); }
      if (data.overflow && state.view === "tasks" && state.cursors.length === 1) loadTasks();
      else applyDelta(data.tasks);
      if (state.detailId && (data.overflow || data.tasks.some((t) => t.task_id === state.detailId))) refreshDetailSoon();
    });
    source.addEventListener("reset", () => { if (state.view === "tasks") loadTasks(); });
    source.onerror = () => {
      state.streamErrors += 1;
      live.textContent = "reconnecting…";
      live.className = "live off";
      if (state.streamErrors >= 3) {
        source.close();
        live.textContent = "polling";
        startPolling();
        setTimeout(connect, 30000);
      }
    };
  }

  function startPolling() {
    if (state.pollTimer) return;
    const every = Math.max(1, (state.config && state.config.poll_interval) || 30) * 1000;
    state.pollTimer = setInterval(() => {
      if (state.view === "overview") loadMetrics();
      if (state.view === "tasks") loadTasks();
    }, every);
  }

  function stopPolling() {
    clearInterval(state.pollTimer);
    state.pollTimer = null;
  }

  // ---- wiring -------------------------------------------------------------------------------

  function applyTheme(theme) {
    if (theme) document.documentElement.dataset.theme = theme;
  }

  function wire() {
    for (const tab of $$(".tabs [role=tab]")) {
      tab.addEventListener("click", () => show(tab.dataset.view));
      tab.addEventListener("keydown", (e) => {
        const tabs = $$(".tabs [role=tab]");
        const i = tabs.indexOf(tab);
        const step = e.key === "ArrowRight" ? 1 : e.key === "ArrowLeft" ? -1 : 0;
        if (step) { const next = tabs[(i + step + tabs.length) % tabs.length]; next.focus(); show(next.dataset.view); }
      });
    }
    $("#filters").addEventListener("submit", (e) => { e.preventDefault(); state.cursors = [null]; loadTasks(); });
    $("#filters").addEventListener("reset", () => setTimeout(() => { state.cursors = [null]; loadTasks(); }, 0));
    $("#page-size").addEventListener("change", () => { state.cursors = [null]; loadTasks(); });
    $("#next").addEventListener("click", async () => {
      if (state.next === "more") { await loadTasks(); }
      if (!state.next || state.next === "more") return;
      state.cursors.push(state.next);
      loadTasks();
    });
    $("#prev").addEventListener("click", () => { if (state.cursors.length > 1) { state.cursors.pop(); loadTasks(); } });
    for (const button of $$("th button[data-sort]")) {
      button.addEventListener("click", () => {
        const key = button.dataset.sort;
        state.sort = state.sort && state.sort.key === key ? { key, dir: -state.sort.dir } : { key, dir: key === "created_at" ? -1 : 1 };
        renderTable();
      });
    }
    $("#detail-close").addEventListener("click", closeDetail);
    document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.detailId) closeDetail(); });
    $("#detail-retry").addEventListener("click", () => state.detailId && retryTask(state.detailId));
    $("#detail-cancel").addEventListener("click", () => state.detailId && cancelTask(state.detailId));
    $("#failed-select-all").addEventListener("click", () => {
      for (const box of $$("#failed-table input[type=checkbox]")) box.checked = true;
    });
    $("#failed-retry-selected").addEventListener("click", retrySelected);
    $("#failed-retry-window").addEventListener("click", retryWindow);
    $("#theme").addEventListener("click", () => {
      const dark = document.documentElement.dataset.theme
        ? document.documentElement.dataset.theme === "dark"
        : window.matchMedia("(prefers-color-scheme: dark)").matches;
      const theme = dark ? "light" : "dark";
      applyTheme(theme);
      try { localStorage.setItem("taskflow-theme", theme); } catch (e) { /* storage off */ }
    });
    $("#logout").addEventListener("click", async () => {
      try {
        await fetch(BASE + "/auth/logout", {
          method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrfToken() },
        });
      } catch (e) { /* leaving anyway */ }
      location.href = BASE + "/auth/login";
    });
  }

  async function start() {
    try { applyTheme(localStorage.getItem("taskflow-theme")); } catch (e) { /* storage off */ }
    wire();
    try {
      const { data } = await api("GET", "/dashboard/config");
      state.config = data;
    } catch (err) {
      toast("Could not load the dashboard settings: " + err.message, true);
      return;
    }
    document.title = state.config.title;
    $("#title").textContent = state.config.title;
    if (state.config.read_only) document.body.classList.add("read-only");
    if (state.config.auth) {
      $("#user").textContent = state.config.user;
      $("#logout").hidden = false;
    }
    const initial = (location.hash || "").slice(1);
    show(["overview", "tasks", "failed", "queues", "instances", "registry", "audit"].includes(initial) ? initial : "overview");
    connect();
    document.body.dataset.ready = "true";
  }

  start();
})();
