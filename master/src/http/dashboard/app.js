// Retire-Cluster dashboard. Plain JavaScript, no library, no build step: the
// master serves this file from its own binary.
//
// Everything shown comes from the JSON API; live changes come from one
// Server-Sent Events stream (/api/v1/events). There is no polling loop: an
// event updates what it carries at once, and a burst of events asks the
// master for the page being shown at most once per REFRESH_MS.
"use strict";

// The API routes the page uses, in one place (docs/http.md lists them).
const ROUTES = {
  session: "/api/v1/session",
  status: "/api/v1/status",
  devices: "/api/v1/devices?limit=500",
  device: (id) => `/api/v1/devices/${encodeURIComponent(id)}`,
  drain: (id) => `/api/v1/devices/${encodeURIComponent(id)}/drain`,
  revoke: (id) => `/api/v1/devices/${encodeURIComponent(id)}/revoke`,
  tasks: "/api/v1/tasks",
  task: (id) => `/api/v1/tasks/${encodeURIComponent(id)}`,
  cancel: (id) => `/api/v1/tasks/${encodeURIComponent(id)}/cancel`,
  retry: (id) => `/api/v1/tasks/${encodeURIComponent(id)}/retry`,
  dead: "/api/v1/dead",
  deadRetryAll: "/api/v1/dead/retry",
  deadDelete: (id) => `/api/v1/dead/${encodeURIComponent(id)}`,
  command: "/api/v1/command",
  events: "/api/v1/events",
  deviceStream: "/stream/devices",
};

// A burst of events refreshes the page shown at most this often.
const REFRESH_MS = 1000;
// Tasks per page of the task table.
const PAGE_SIZE = 100;
// Tasks read once to draw the last hour's charts (the API's largest page).
const HISTORY_TASKS = 1000;
// The charts' span, in one-minute buckets.
const MINUTES = 60;
const CSRF_HEADER = "X-CSRF-Token";
// How long a notice stays: a success, a refusal or error.
const NOTICE_OK_MS = 3000;
const NOTICE_ERROR_MS = 10000;
const STATES = ["queued", "assigned", "running", "retrying", "completed", "failed", "timed_out", "cancelled", "dead_letter"];
const FINISHED = new Set(["completed", "failed", "timed_out", "cancelled", "dead_letter"]);

const $ = (id) => document.getElementById(id);

const state = {
  page: "overview",
  csrf: null,
  devices: new Map(),
  tasks: [],
  nextCursor: null,
  counts: {},
  finishedPerMinute: new Array(MINUTES).fill(0),
  queuePerMinute: new Array(MINUTES).fill(null),
  chartsMinute: 0,
  historyLoaded: false,
  detailId: null,
  events: null,
  deviceStream: null,
  refreshTimer: null,
  refreshDue: new Set(),
  commandHistory: [],
  commandCursor: 0,
};

// ---- small helpers -------------------------------------------------------

// Builds an element; children are nodes or text (always inserted as text, so
// nothing a worker or a task sent can become markup).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function cell(label, ...children) {
  return el("td", { "data-label": label }, ...children);
}

function pill(status) {
  return el("span", { class: `pill s-${status}` }, status.replace("_", " "));
}

function ago(iso) {
  if (!iso) return "–";
  const seconds = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (!Number.isFinite(seconds)) return iso;
  if (seconds < 60) return `${Math.max(seconds, 0)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

function percent(value) {
  if (typeof value !== "number") return "–";
  const clamped = Math.max(0, Math.min(100, value));
  const fill = el("span");
  // Through the CSSOM, which the Content-Security-Policy allows (a style attribute it would not).
  fill.style.width = `${clamped}%`;
  return el("span", {}, el("span", { class: "meter" }, fill), `${value.toFixed(0)}%`);
}

function firstNumber(object, names) {
  for (const name of names) {
    if (object && typeof object[name] === "number") return object[name];
  }
  return null;
}

function pretty(value) {
  if (value === undefined || value === null) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

function notice(text, ok) {
  const box = $("notice");
  box.textContent = text;
  box.className = ok ? "ok" : "";
  box.hidden = false;
  clearTimeout(notice.timer);
  // A success goes by quickly; a refusal stays long enough to be read.
  notice.timer = setTimeout(() => { box.hidden = true; }, ok ? NOTICE_OK_MS : NOTICE_ERROR_MS);
}

// ---- the API ---------------------------------------------------------------

// An error the master answered with: its status and its message.
class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A request to the master. Changes carry the session's CSRF token; the
// session cookie goes along by itself (same origin). Answers are JSON; the
// older design's `{"status":"success","data":…}` wrapper is taken off.
async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD" && state.csrf) headers[CSRF_HEADER] = state.csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let doc = null;
  try { doc = text ? JSON.parse(text) : null; } catch (_) { doc = null; }
  if (!response.ok) {
    // A JSON error says why; anything else (an HTML page from a proxy) is not shown.
    const plain = text && text.length < 300 && !text.trimStart().startsWith("<") ? text.trim() : "";
    const message = (doc && (doc.message || (doc.error && (doc.error.message || doc.error))))
      || plain || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, String(message), doc && (doc.error_code || doc.code));
  }
  if (doc && doc.status === "success" && doc.data && typeof doc.data === "object") return doc.data;
  return doc;
}

// Says why a change was refused, in words a person can act on.
function refused(what, error) {
  if (error instanceof ApiError && error.status === 401) {
    setSignedIn(false);
    notice(`${what}: refused, sign in first (401: ${error.message})`);
  } else if (error instanceof ApiError && error.status === 403) {
    notice(`${what}: refused (403: ${error.message})`);
  } else {
    notice(`${what}: ${error.message}`);
  }
}

async function change(what, method, path, body) {
  try {
    const answer = await api(method, path, body);
    notice(`${what}: ${(answer && answer.message) || "done"}`, true);
    scheduleRefresh(state.page);
    return answer;
  } catch (error) {
    refused(what, error);
    return null;
  }
}

// ---- sign-in -----------------------------------------------------------------

// `csrf` is the session's CSRF token; a master without authentication has
// none and needs none (`signedIn` without a token).
function setSignedIn(signedIn, csrf) {
  state.csrf = signedIn ? csrf || null : null;
  document.body.dataset.signedIn = signedIn ? "yes" : "no";
  $("signin-open").hidden = signedIn;
  $("signout").hidden = !signedIn || !state.csrf;
}

async function loadSession() {
  try {
    const answer = await api("GET", ROUTES.session);
    setSignedIn(Boolean(answer && answer.signed_in), answer && answer.csrf_token);
  } catch (_) {
    setSignedIn(false);
  }
}

async function signIn(event) {
  event.preventDefault();
  const error = $("signin-error");
  error.hidden = true;
  try {
    const answer = await api("POST", ROUTES.session, { token: $("token").value.trim() });
    $("token").value = "";
    setSignedIn(true, answer.csrf_token);
    $("signin").close();
    notice("Signed in", true);
    connectEvents();
    if (state.deviceStream) { followDevices(false); followDevices(state.page === "devices"); }
    load(state.page);
  } catch (failure) {
    error.textContent = failure.status === 401 ? "That is not the admin token." : failure.message;
    error.hidden = false;
  }
}

async function signOut() {
  try {
    await api("DELETE", ROUTES.session);
  } catch (_) {
    // Signed out here whatever the master said: the cookie is its to clear.
  }
  setSignedIn(false);
  notice("Signed out", true);
  // The stream opened while signed in goes; a new one follows the read rule.
  connectEvents();
}

// ---- live events -------------------------------------------------------------

const EVENT_NAMES = ["task_submitted", "task_assigned", "task_progress", "task_finished", "device_enrolled",
  "device_joined", "device_left", "device_draining", "storage_failing", "storage_recovered", "reset"];

// Opens the event stream, closing the one before: a master whose reads need a
// token refuses the stream until the page has signed in, and a refused stream is
// not retried by the browser, so signing in opens it again.
function connectEvents() {
  const live = $("live");
  if (state.events) state.events.close();
  const source = new EventSource(ROUTES.events);
  state.events = source;
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => {
    const closed = source.readyState === EventSource.CLOSED;
    live.textContent = closed ? "offline" : "reconnecting";
    live.className = "live off";
  };
  const handle = (message) => {
    let data;
    try { data = JSON.parse(message.data); } catch (_) { return; }
    // Either the event's `data` or the whole protocol envelope around it.
    if (data && data.message_type === "event" && data.data) data = data.data;
    const name = (data && data.event) || message.type;
    onEvent(name, data || {});
  };
  source.onmessage = handle;
  for (const name of EVENT_NAMES) source.addEventListener(name, handle);
}

function onEvent(name, data) {
  if (name === "reset") {
    // The stream came back after a gap the master cannot replay: read everything again.
    state.historyLoaded = false;
    scheduleRefresh(...Object.keys(LOADERS));
  } else if (name === "task_finished" && data.task) {
    const task = data.task;
    bumpMinute();
    if (task.state !== "cancelled") state.finishedPerMinute[MINUTES - 1] += 1;
    updateTaskRow(task);
    if (state.detailId === task.task_id) showDetail(task.task_id);
    scheduleRefresh("overview", "tasks", "dead", "devices");
  } else if (name === "task_submitted" || name === "task_assigned") {
    if (name === "task_assigned") {
      const row = state.tasks.find((task) => task.task_id === data.task_id);
      if (row) updateTaskRow({ ...row, state: "assigned", device_id: data.device_id, attempt: data.attempt });
    }
    scheduleRefresh("overview", "tasks", "devices");
  } else if (name.startsWith("device_") || name.startsWith("storage_")) {
    if (name === "device_draining" && state.devices.has(data.device_id)) {
      state.devices.get(data.device_id).status = "draining";
      if (state.page === "devices") renderDevices();
    }
    scheduleRefresh("overview", "devices");
  }
}

// Asks the master again for the given pages, if one is shown, once the burst
// of events has passed (at most once per REFRESH_MS).
function scheduleRefresh(...pages) {
  for (const page of pages) state.refreshDue.add(page);
  if (state.refreshTimer) return;
  state.refreshTimer = setTimeout(() => {
    state.refreshTimer = null;
    const due = state.refreshDue;
    state.refreshDue = new Set();
    if (due.has(state.page)) load(state.page);
  }, REFRESH_MS);
}

// ---- pages ---------------------------------------------------------------------

const LOADERS = {
  overview: loadOverview,
  devices: loadDevices,
  tasks: loadTasks,
  dead: loadDead,
  console: async () => { $("terminal-input").focus(); },
};

async function load(page) {
  try {
    await LOADERS[page]();
  } catch (error) {
    notice(`${page}: ${error.message}`);
  }
}

function show() {
  const page = (location.hash.replace(/^#\/?/, "").split("?")[0]) || "overview";
  state.page = LOADERS[page] ? page : "overview";
  for (const section of document.querySelectorAll(".page")) section.hidden = section.id !== `page-${state.page}`;
  for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("current", link.dataset.page === state.page);
  document.body.dataset.page = state.page;
  followDevices(state.page === "devices");
  load(state.page);
}

// While the devices page is shown, the master's device stream (/stream/devices)
// brings every device's latest metrics every few seconds; heartbeats are not
// events, so this is how CPU, memory and "last seen" stay current.
function followDevices(on) {
  if (on && !state.deviceStream) {
    state.deviceStream = new EventSource(ROUTES.deviceStream);
    state.deviceStream.addEventListener("device_update", (message) => {
      let data;
      try { data = JSON.parse(message.data); } catch (_) { return; }
      if (!data || !Array.isArray(data.devices)) return;
      state.devices = new Map(data.devices.map((device) => [device.device_id || device.id, device]));
      renderDevices();
    });
  } else if (!on && state.deviceStream) {
    state.deviceStream.close();
    state.deviceStream = null;
  }
}

// Overview -------------------------------------------------------------------

async function loadOverview() {
  const status = await api("GET", ROUTES.status);
  const stats = (status && (status.cluster_stats || status)) || {};
  state.counts = stats.tasks || {};
  $("devices-online").textContent = stats.online_devices ?? "–";
  $("devices-total").textContent = `of ${stats.total_devices ?? "?"} known`;
  const count = (name) => Number(state.counts[name] || 0);
  $("queue-depth").textContent = count("queued") + count("retrying");
  $("running-now").textContent = count("assigned") + count("running");
  $("states").replaceChildren(...STATES.map((name) =>
    el("a", { href: `#/tasks`, dataset: { state: name }, onclick: () => { $("filter-state").value = name; } },
      pill(name), el("b", {}, String(count(name))))));
  if (!state.historyLoaded) await loadHistory();
  bumpMinute();
  state.queuePerMinute[MINUTES - 1] = count("queued") + count("retrying");
  drawCharts();
}

// Moves the charts' buckets on to the current minute.
function bumpMinute() {
  const minute = Math.floor(Date.now() / 60000);
  const shift = Math.min(MINUTES, minute - state.chartsMinute);
  if (state.chartsMinute && shift > 0) {
    const last = state.queuePerMinute[MINUTES - 1];
    state.finishedPerMinute.splice(0, shift, ...[]);
    state.finishedPerMinute.push(...new Array(shift).fill(0));
    state.queuePerMinute.splice(0, shift);
    state.queuePerMinute.push(...new Array(shift).fill(last));
  }
  state.chartsMinute = minute;
}

// The last hour as the newest tasks show it: finished per minute, and the
// queue at each minute (submitted by then and not yet started).
async function loadHistory() {
  state.historyLoaded = true;
  const page = await api("GET", `${ROUTES.tasks}?limit=${HISTORY_TASKS}`);
  const tasks = (page && page.tasks) || [];
  const now = Date.now();
  const minuteOf = (iso) => {
    const at = Date.parse(iso);
    return Number.isFinite(at) ? MINUTES - 1 - Math.floor((now - at) / 60000) : -1;
  };
  const finished = new Array(MINUTES).fill(0);
  const queue = new Array(MINUTES).fill(0);
  for (const task of tasks) {
    const done = task.finished_at ? minuteOf(task.finished_at) : -1;
    if (done >= 0 && done < MINUTES && task.state !== "cancelled") finished[done] += 1;
    const queuedFrom = Math.max(0, minuteOf(task.submitted_at));
    const queuedUntil = task.started_at ? minuteOf(task.started_at) : (FINISHED.has(task.state) ? minuteOf(task.finished_at) : MINUTES);
    for (let minute = queuedFrom; minute < Math.min(queuedUntil, MINUTES); minute += 1) queue[minute] += 1;
  }
  state.finishedPerMinute = finished;
  state.queuePerMinute = queue;
  state.chartsMinute = Math.floor(now / 60000);
}

function drawCharts() {
  const finished = state.finishedPerMinute;
  $("finished-hour").textContent = finished.reduce((a, b) => a + b, 0);
  const bars = $("chart-throughput");
  const most = Math.max(1, ...finished);
  const width = 600 / MINUTES;
  bars.replaceChildren(
    svg("line", { class: "axis", x1: 0, y1: 119, x2: 600, y2: 119 }),
    ...finished.map((n, i) => svg("rect", { class: "bar", x: i * width + 1, width: width - 2, y: 120 - (n / most) * 115, height: (n / most) * 115 },
      svg("title", {}, `${n} finished, ${MINUTES - 1 - i} min ago`))));
  const queue = state.queuePerMinute.map((n) => n ?? 0);
  const highest = Math.max(1, ...queue);
  const points = queue.map((n, i) => `${(i + 0.5) * width},${120 - (n / highest) * 115}`);
  $("chart-queue").replaceChildren(
    svg("line", { class: "axis", x1: 0, y1: 119, x2: 600, y2: 119 }),
    svg("polygon", { class: "area", points: `0,120 ${points.join(" ")} 600,120` }),
    svg("polyline", { class: "line", points: points.join(" ") }),
    svg("text", { x: 4, y: 14, "font-size": 12, fill: "currentColor" }, `max ${highest}`));
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(child));
  return node;
}

// Devices ---------------------------------------------------------------------

async function loadDevices() {
  const page = await api("GET", ROUTES.devices);
  state.devices = new Map(((page && page.devices) || []).map((device) => [device.device_id, device]));
  renderDevices();
}

// What each sandbox level means for the device's owner (docs/sandbox.md).
const SANDBOX_TITLES = {
  full: "Tasks are confined deny-by-default (Landlock, all of it)",
  partial: "Tasks are confined, but the kernel lacks part of what the sandbox uses",
  none: "Tasks run unconfined, as the worker's user",
};

function renderDevices() {
  const rows = [...state.devices.values()].map((device) => {
    const metrics = device.metrics || {};
    const battery = firstNumber(metrics, ["battery_percent", "battery_level", "battery"]);
    const temperature = firstNumber(metrics, ["temperature", "temperature_celsius", "temperature_c"]);
    const id = device.device_id;
    return el("tr", { dataset: { deviceId: id, status: device.status } },
      cell("Device", el("strong", {}, id), el("div", { class: "muted" }, device.hostname || "")),
      cell("Status", pill(device.status)),
      cell("Role", device.role || "–"),
      cell("Arch", device.architecture || "–"),
      cell("Sandbox", device.sandbox
        ? el("span", { class: `pill sb-${device.sandbox}`, title: SANDBOX_TITLES[device.sandbox] || "" }, device.sandbox)
        : "–"),
      cell("Slots", `${device.active_tasks} / ${device.slots}`),
      cell("CPU", percent(firstNumber(metrics, ["cpu_usage", "cpu_percent"]))),
      cell("Memory", percent(firstNumber(metrics, ["memory_usage", "memory_percent"]))),
      cell("Battery", battery === null ? "–" : `${battery.toFixed(0)}%`),
      cell("Temp", temperature === null ? "–" : `${temperature.toFixed(0)} °C`),
      cell("Last seen", ago(device.last_heartbeat)),
      cell("",
        el("button", { class: "small drain", type: "button", disabled: device.status !== "online",
          onclick: () => change(`Drain ${id}`, "POST", ROUTES.drain(id)) }, "Drain"), " ",
        el("button", { class: "small danger revoke", type: "button",
          onclick: () => { if (confirm(`Revoke ${id} for good? Its tasks go back to the queue.`)) change(`Revoke ${id}`, "POST", ROUTES.revoke(id)); } }, "Revoke")));
  });
  $("devices").replaceChildren(...rows);
  $("devices-empty").hidden = rows.length > 0;
}

// Tasks -----------------------------------------------------------------------

function taskQuery(before) {
  const params = new URLSearchParams({ limit: PAGE_SIZE });
  const chosen = $("filter-state").value;
  const search = $("filter-search").value.trim();
  if (chosen) params.set("state", chosen);
  if (search) params.set("q", search);
  if (before) params.set("cursor", before);
  return `${ROUTES.tasks}?${params}`;
}

async function loadTasks() {
  const page = await api("GET", taskQuery());
  state.tasks = (page && page.tasks) || [];
  state.nextCursor = page && page.next_cursor;
  renderTasks();
}

async function olderTasks() {
  if (!state.nextCursor) return;
  const page = await api("GET", taskQuery(state.nextCursor));
  state.tasks = state.tasks.concat((page && page.tasks) || []);
  state.nextCursor = page && page.next_cursor;
  renderTasks();
}

function taskRow(task) {
  return el("tr", { class: "clickable", dataset: { taskId: task.task_id, state: task.state }, onclick: () => showDetail(task.task_id) },
    cell("Task", el("span", { class: "id", title: task.task_id }, task.task_id)),
    cell("Type", task.task_type),
    cell("State", pill(task.state)),
    cell("Device", task.device_id || "–"),
    cell("Attempt", `${task.attempt} of ${1 + (task.max_retries || 0)}`),
    cell("Submitted", ago(task.submitted_at)),
    cell("Took", typeof task.execution_time === "number" ? `${task.execution_time.toFixed(2)} s` : "–"));
}

function renderTasks() {
  $("tasks").replaceChildren(...state.tasks.map(taskRow));
  for (const row of $("tasks").children) row.firstChild.classList.add("id");
  $("tasks-empty").hidden = state.tasks.length > 0;
  $("tasks-more").hidden = !state.nextCursor;
}

// A task's new state, shown at once in the table when it is there.
function updateTaskRow(task) {
  const index = state.tasks.findIndex((known) => known.task_id === task.task_id);
  if (index < 0) return;
  const chosen = $("filter-state").value;
  if (chosen && chosen !== task.state) {
    state.tasks.splice(index, 1);
  } else {
    state.tasks[index] = { ...state.tasks[index], ...task, payload: null, result: undefined };
  }
  if (state.page === "tasks") renderTasks();
}

async function submitTask(event) {
  event.preventDefault();
  const type = $("submit-type").value;
  const input = $("submit-input").value;
  let payload = {};
  if (type === "shell") payload = { command: input };
  else if (type === "echo") payload = { message: input };
  else if (type === "sleep") payload = { seconds: Number(input) || 1 };
  const answer = await change(`Submit ${type}`, "POST", ROUTES.tasks, { task_type: type, payload });
  if (answer) {
    // The newest submit's id, for whoever drives the page (the end-to-end test).
    document.body.dataset.lastSubmitted = answer.task_id || "";
    $("submit-input").value = "";
    await loadTasks();
  }
}

async function showDetail(id) {
  state.detailId = id;
  let task;
  try {
    const answer = await api("GET", ROUTES.task(id));
    task = (answer && (answer.task || answer)) || {};
  } catch (error) {
    notice(`Task ${id}: ${error.message}`);
    return;
  }
  const result = task.result || {};
  $("detail-title").textContent = task.task_id;
  const facts = [
    ["State", pill(task.state)], ["Type", task.task_type], ["Device", task.device_id || "–"],
    ["Exit code", task.exit_code ?? result.exit_code ?? "–"],
    ["Attempt", `${task.attempt} of ${1 + (task.max_retries || 0)}`], ["Priority", String(task.priority)],
    ["Submitted", task.submitted_at || "–"], ["Started", task.started_at || "–"], ["Finished", task.finished_at || "–"],
    ["Ran for", typeof task.execution_time === "number" ? `${task.execution_time.toFixed(3)} s` : "–"],
  ];
  if (task.retry_at) facts.push(["Next attempt", task.retry_at]);
  if (task.error) facts.push(["Error", task.error]);
  $("detail-facts").replaceChildren(...facts.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
  $("detail-facts").dataset.state = task.state;
  $("detail-payload").textContent = pretty(task.payload);
  $("detail-stdout").textContent = pretty(result.output);
  $("detail-stderr").textContent = pretty(result.stderr || result.error);
  $("detail-cancel").hidden = FINISHED.has(task.state);
  $("detail-retry").hidden = !FINISHED.has(task.state) || task.state === "completed";
  const dialog = $("task-detail");
  if (!dialog.open) dialog.showModal();
}

// Dead letters ------------------------------------------------------------------

async function loadDead() {
  const page = await api("GET", `${ROUTES.dead}?limit=${PAGE_SIZE}`);
  const tasks = (page && page.tasks) || [];
  $("dead").replaceChildren(...tasks.map((task) => el("tr", { dataset: { taskId: task.task_id } },
    cell("Task", el("span", { class: "id clickable", title: task.task_id, onclick: () => showDetail(task.task_id) }, task.task_id)),
    cell("Type", task.task_type),
    cell("Device", task.device_id || "–"),
    cell("Attempts", String(task.attempt)),
    el("td", { class: "error", "data-label": "Error" }, task.error || "–"),
    cell("Finished", ago(task.finished_at)),
    cell("",
      el("button", { class: "small retry", type: "button", onclick: () => change(`Retry ${task.task_id}`, "POST", ROUTES.retry(task.task_id)) }, "Retry"), " ",
      el("button", { class: "small danger delete", type: "button",
        onclick: () => { if (confirm(`Delete dead letter ${task.task_id} for good?`)) change(`Delete ${task.task_id}`, "DELETE", ROUTES.deadDelete(task.task_id)); } }, "Delete")))));
  $("dead-empty").hidden = tasks.length > 0;
  $("dead-retry-all").disabled = tasks.length === 0;
}

// Console -----------------------------------------------------------------------

async function runCommand(event) {
  event.preventDefault();
  const input = $("terminal-input");
  const command = input.value.trim();
  if (!command) return;
  input.value = "";
  state.commandHistory.push(command);
  state.commandCursor = state.commandHistory.length;
  const output = $("terminal-output");
  output.append(el("div", { class: "cmd" }, `retire> ${command}`));
  try {
    const answer = await api("POST", ROUTES.command, { command, format: "text" });
    output.append(el("pre", { class: answer.exit_code ? "err" : "" }, pretty(answer.output)));
  } catch (error) {
    output.append(el("pre", { class: "err" }, `${error.status || ""} ${error.message}`.trim()));
    if (error.status === 401) setSignedIn(false);
  }
  $("terminal").scrollTop = $("terminal").scrollHeight;
}

function commandHistoryKey(event) {
  const history = state.commandHistory;
  if (event.key === "ArrowUp" && state.commandCursor > 0) state.commandCursor -= 1;
  else if (event.key === "ArrowDown" && state.commandCursor < history.length) state.commandCursor += 1;
  else return;
  event.preventDefault();
  $("terminal-input").value = history[state.commandCursor] || "";
}

// ---- start -------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  $("signin-open").addEventListener("click", () => { $("signin-error").hidden = true; $("signin").showModal(); $("token").focus(); });
  $("signin-cancel").addEventListener("click", () => $("signin").close());
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("submit-form").addEventListener("submit", submitTask);
  $("task-filter").addEventListener("submit", (event) => { event.preventDefault(); loadTasks(); });
  $("filter-state").addEventListener("change", () => loadTasks());
  let typing = null;
  $("filter-search").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(loadTasks, 300); });
  $("tasks-more").addEventListener("click", olderTasks);
  $("detail-close").addEventListener("click", () => { state.detailId = null; $("task-detail").close(); });
  $("task-detail").addEventListener("close", () => { state.detailId = null; });
  $("detail-cancel").addEventListener("click", () => change(`Cancel ${state.detailId}`, "POST", ROUTES.cancel(state.detailId)));
  $("detail-retry").addEventListener("click", () => change(`Retry ${state.detailId}`, "POST", ROUTES.retry(state.detailId)));
  $("dead-retry-all").addEventListener("click", () => change("Retry every dead letter", "POST", ROUTES.deadRetryAll));
  $("terminal-form").addEventListener("submit", runCommand);
  $("terminal-input").addEventListener("keydown", commandHistoryKey);
  $("terminal").addEventListener("click", () => $("terminal-input").focus());
  window.addEventListener("hashchange", show);
  setSignedIn(false);
  await loadSession();
  connectEvents();
  show();
  // Relative times ("12 s ago") and the charts' minute move on once a minute;
  // this redraws what is already here and asks the master for nothing.
  setInterval(() => {
    bumpMinute();
    if (state.page === "overview") drawCharts();
    if (state.page === "devices") renderDevices();
  }, 60000);
});
