// The idlecloud page: the REST API and its event streams, rendered with DOM calls only
// (no markup is ever built from data, so nothing a user typed can become a script).
"use strict";

const PAGE_HEADER = "X-Idlecloud-Page";
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const $ = (selector) => document.querySelector(selector);

const view = { me: null, namespace: null, apps: new Map(), quota: null, pcs: [], jobs: null, streams: [] };

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { [PAGE_HEADER]: "1" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  return { status: response.status, data };
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function bar(used, total, label) {
  const share = total > 0 ? Math.min(1, used / total) : 0;
  const fill = element("span");
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  const outer = element("div", { class: share >= 1 ? "bar full" : "bar", "aria-hidden": "true" }, fill);
  return label === undefined ? outer : element("div", {}, element("span", { class: "small" }, label), outer);
}

function stateBadge(state) {
  return element("span", { class: `state state-${state}` }, state);
}

// ---- login ---------------------------------------------------------------------------

async function start() {
  const { status, data } = await api("GET", "/v1/session");
  if (status === 200) return enter(data);
  $("#login").hidden = false;
  $("#api-key").focus();
}

async function logIn(event) {
  event.preventDefault();
  const key = $("#api-key").value.trim();
  const error = $("#login-error");
  if (!key) { error.textContent = "Paste your API key."; return; }
  const { status, data } = await api("POST", "/v1/session", { api_key: key });
  if (status !== 200) { error.textContent = data?.error ?? `login failed (${status})`; return; }
  $("#api-key").value = "";
  error.textContent = "";
  enter(data);
}

function enter(me) {
  view.me = me;
  $("#login").hidden = true;
  $("#who").hidden = false;
  $("#who-name").textContent = `${me.role} ${me.subject}`;
  const admin = me.role === "admin";
  $("#ns-chooser").hidden = !admin;
  choose(admin ? (localStorage.getItem("idlecloud-ns") || "") : me.subject);
  watchPcs();
}

function choose(namespace) {
  view.namespace = DNS_LABEL.test(namespace) ? namespace : null;
  $("#ns-input").value = namespace;
  $("#console").hidden = false;
  $("#quota-ns").textContent = view.namespace ?? "(choose a namespace)";
  for (const part of ["#quota", "#deploy", "#apps"]) $(part).hidden = view.namespace === null;
  view.apps.clear();
  view.quota = null;
  watchNamespace();
  refresh();
}

async function logOut() {
  await api("DELETE", "/v1/session");
  for (const stream of view.streams) stream.close();
  location.reload();
}

// ---- live data -----------------------------------------------------------------------

let refreshTimer = null;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 150);
}

async function refresh() {
  const calls = [api("GET", "/v1/pcs")];
  if (view.namespace) {
    const base = `/v1/namespaces/${view.namespace}`;
    calls.push(api("GET", `${base}/deployments`), api("GET", `${base}/quota`), api("GET", `${base}/jobs`));
  }
  const [pcs, apps, quota, jobs] = await Promise.all(calls);
  if (pcs.status === 401) return location.reload();
  if (pcs.status === 200) view.pcs = pcs.data;
  if (apps?.status === 200) view.apps = new Map(apps.data.map((app) => [app.app, app]));
  if (quota?.status === 200) view.quota = quota.data;
  if (jobs?.status === 200) view.jobs = jobs.data;
  render();
}

// A job's progress has no events: while one runs, its numbers are asked every 2 s.
async function refreshJobs() {
  const running = view.jobs?.jobs.some((job) => job.state === "running" || job.state === "submitting");
  if (!view.namespace || !running) return;
  const jobs = await api("GET", `/v1/namespaces/${view.namespace}/jobs`);
  if (jobs.status === 200) { view.jobs = jobs.data; renderJobs(); }
}

function stream(path, names, onEvent) {
  const source = new EventSource(path);
  source.addEventListener("open", () => { $("#live").textContent = "live"; $("#live").className = "live on"; });
  source.addEventListener("error", () => { $("#live").textContent = "reconnecting…"; $("#live").className = "live"; });
  for (const name of names) {
    source.addEventListener(name, (message) => onEvent(name, JSON.parse(message.data)));
  }
  view.streams.push(source);
  return source;
}

let namespaceStream = null;
function watchNamespace() {
  if (namespaceStream) { namespaceStream.close(); view.streams = view.streams.filter((s) => s !== namespaceStream); }
  namespaceStream = null;
  if (!view.namespace) return;
  namespaceStream = stream(`/v1/namespaces/${view.namespace}/events`,
    ["DeploymentStatus", "RequestResult"], (name, event) => {
      if (name === "DeploymentStatus" && view.apps.has(event.app)) {
        const app = view.apps.get(event.app);
        Object.assign(app, { state: event.state, desired: event.desired, running: event.running,
          replicas_per_node: event.replicas_per_node, reason: event.reason });
        render();
      }
      refreshSoon();
    });
}

function watchPcs() {
  stream("/v1/pcs/events", ["NodePresence", "CordonChanged"], () => refreshSoon());
  setInterval(refresh, 10000);  // other namespaces' placements change what PCs reserve
  setInterval(refreshJobs, 2000);
}

// ---- rendering -----------------------------------------------------------------------

function render() {
  renderQuota();
  renderApps();
  renderJobs();
  renderPcs();
}

function renderQuota() {
  const box = $("#quota-bars");
  const quota = view.quota;
  if (!quota) { box.replaceChildren(); return; }
  if (!quota.quota) {
    box.replaceChildren(element("p", { class: "hint" }, "No quota yet: ask an admin to set one."));
    return;
  }
  const row = (what, reserved, running, limit, unit) => element("div", { class: "bar-row", "data-resource": what },
    element("strong", {}, what), bar(reserved, limit),
    element("span", { class: "small" }, `${reserved} of ${limit} ${unit} reserved, ${running} in use`));
  box.replaceChildren(
    row("CPU", quota.reserved.cpu_millicores, quota.running.cpu_millicores, quota.quota.cpu_millicores, "millicores"),
    row("Memory", quota.reserved.memory_mib, quota.running.memory_mib, quota.quota.memory_mib, "MiB"),
  );
}

function renderApps() {
  const apps = [...view.apps.values()].sort((a, b) => a.app.localeCompare(b.app));
  $("#apps-empty").hidden = apps.length > 0;
  $("#apps-table").hidden = apps.length === 0;
  $("#apps-table tbody").replaceChildren(...apps.map((app) => {
    const perPc = Object.entries(app.replicas_per_node).sort().map(([pc, n]) => `${pc} ${n}`).join(", ");
    const scale = element("input", { class: "scale", type: "number", min: "0", max: "10000",
      value: String(app.desired), "aria-label": `replicas of ${app.app}` });
    return element("tr", { "data-app": app.app },
      element("td", {}, app.app, element("div", { class: "small" }, app.image)),
      element("td", {}, stateBadge(app.state)),
      element("td", { class: "num" }, element("span", { class: "running" }, `${app.running}/${app.desired}`),
        app.starting ? element("div", { class: "small starting" }, `${app.starting} starting`) : ""),
      element("td", { class: "per-pc" }, perPc || "—"),
      element("td", { class: "num" }, `${app.reservation.cpu_millicores}m, ${app.reservation.memory_mib} MiB`),
      element("td", { class: "small" }, app.reason || ""),
      element("td", {}, scale,
        element("button", { type: "button", onclick: () => scaleApp(app.app, scale.value) }, "Scale"),
        " ",
        element("button", { type: "button", onclick: () => deleteApp(app.app) }, "Delete"),
        " ",
        element("button", { type: "button", onclick: () => showLogs(app.app) }, "Logs")));
  }));
}

function renderJobs() {
  const jobs = view.jobs?.jobs ?? [];
  $("#jobs-empty").hidden = jobs.length > 0;
  $("#jobs-table").hidden = jobs.length === 0;
  $("#jobs-table tbody").replaceChildren(...jobs.map((job) => {
    const answered = job.done + job.failed;
    const total = job.total ?? answered;
    const open = job.state === "running" || job.state === "submitting";
    return element("tr", { "data-job": job.job_id },
      element("td", {}, job.name || "—", element("div", { class: "small" }, job.job_id)),
      element("td", {}, `${job.app}.${job.task}`),
      element("td", {}, stateBadge(job.state)),
      element("td", { class: "progress" }, bar(answered, total),
        element("span", { class: "small count" }, `${answered} of ${job.total ?? "?"}`)),
      element("td", { class: "num" }, String(job.failed)),
      element("td", { class: "num" }, open ? `${job.rate_per_s.toFixed(1)}/s` : "—"),
      element("td", {}, open
        ? element("button", { type: "button", onclick: () => cancelJob(job.job_id) }, "Cancel") : ""));
  }));
  const stored = view.jobs;
  $("#jobs-stored").textContent = stored
    ? `${(stored.stored_bytes / 1048576).toFixed(1)} of ${(stored.stored_bytes_limit / 1048576).toFixed(0)} MiB of results stored; kept ${stored.retention_s / 86400} days after a job ends`
    : "";
}

// The last lines an app's replicas printed, asked again every 2 s while shown.
let logsTimer = null;
async function showLogs(app) {
  clearInterval(logsTimer);
  $("#logs").hidden = false;
  $("#logs-app").textContent = app;
  const fetchLines = async () => {
    const { status, data } = await api("GET", `/v1/namespaces/${view.namespace}/logs?app=${app}&since=1h&tail=20`);
    $("#logs-lines").textContent = status === 200
      ? (data.length ? data.map((l) => `${l.at.slice(11, 19)} ${l.replica} | ${l.text}`).join("\n") : "(nothing printed in the last hour)")
      : data?.error ?? `error ${status}`;
  };
  await fetchLines();
  logsTimer = setInterval(fetchLines, 2000);
}

function hideLogs() {
  clearInterval(logsTimer);
  $("#logs").hidden = true;
}

async function cancelJob(jobId) {
  if (!confirm(`Cancel job ${jobId}? Its calls not yet started will not run.`)) return;
  await api("POST", `/v1/namespaces/${view.namespace}/jobs/${jobId}/cancel`);
  refresh();
}

const PC_STATE = { idle: "free", busy: "busy (a person)", lost: "lost", cordoned: "cordoned", draining: "draining" };

function renderPcs() {
  $("#pcs-table tbody").replaceChildren(...view.pcs.map((pc) => {
    const state = element("span", { class: `state state-${pc.state}` }, PC_STATE[pc.state] ?? pc.state);
    return element("tr", { "data-pc": pc.node },
      element("td", {}, pc.node, element("div", { class: "small" }, pc.runtime)),
      element("td", { class: "pc-state" }, state,
        pc.cause && pc.cause !== "none" ? element("div", { class: "small" }, pc.cause) : ""),
      element("td", {}, bar(pc.reserved.cpu_millicores, pc.allocatable.cpu_millicores,
        `${pc.reserved.cpu_millicores} / ${pc.allocatable.cpu_millicores} m`)),
      element("td", {}, bar(pc.reserved.memory_mib, pc.allocatable.memory_mib,
        `${pc.reserved.memory_mib} / ${pc.allocatable.memory_mib} MiB`)),
      element("td", { class: "num" }, pc.replicas));
  }));
}

// ---- the deploy form -----------------------------------------------------------------

// Shell-like words: spaces separate, quotes group, a backslash escapes the next character.
function words(text) {
  const found = [];
  let current = null, quote = null;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === quote) quote = null;
      else if (c === "\\" && quote === '"' && i + 1 < text.length) current += text[++i];
      else current += c;
    } else if (c === "'" || c === '"') { quote = c; current = current ?? ""; }
    else if (c === "\\" && i + 1 < text.length) current = (current ?? "") + text[++i];
    else if (/\s/.test(c)) { if (current !== null) found.push(current); current = null; }
    else current = (current ?? "") + c;
  }
  if (quote) throw new Error(`a ${quote} quote is not closed`);
  if (current !== null) found.push(current);
  return found;
}

function showFieldErrors(errors) {
  for (const span of document.querySelectorAll("#deploy-form .error")) {
    const message = errors[span.dataset.field] ?? "";
    span.textContent = message;
    const input = document.querySelector(`#deploy-form [name="${span.dataset.field}"]`);
    if (input) input.setAttribute("aria-invalid", message ? "true" : "false");
  }
}

function readForm(form) {
  const errors = {};
  const value = (name) => form.elements[name].value.trim();
  const integer = (name, low, high) => {
    const text = value(name);
    const number = Number(text);
    if (text === "" || !Number.isInteger(number)) errors[name] = "a whole number, please";
    else if (number < low || number > high) errors[name] = `between ${low} and ${high}`;
    return number;
  };
  const body = { app: value("app"), image: value("image") };
  if (!DNS_LABEL.test(body.app)) errors.app = "lower-case letters, digits and dashes (a DNS label)";
  if (!body.image) errors.image = "which image should run?";
  try { body.command = words(form.elements.command.value); } catch (error) { errors.command = error.message; }
  const ports = value("ports") ? value("ports").split(/[\s,]+/) : [];
  body.ports = ports.map(Number);
  if (body.ports.some((p) => !Number.isInteger(p) || p < 1 || p > 65535)) errors.ports = "port numbers from 1 to 65535";
  body.replicas = integer("replicas", 0, 10000);
  body.cpu_millicores = integer("cpu_millicores", 1, 1000000);
  body.memory_mib = integer("memory_mib", 4, 4194304);
  return { body, errors };
}

async function deploy(event) {
  event.preventDefault();
  const form = event.target;
  const message = $("#deploy-message");
  const { body, errors } = readForm(form);
  showFieldErrors(errors);
  message.textContent = "";
  if (Object.keys(errors).length) return;
  const { status, data } = await api("POST", `/v1/namespaces/${view.namespace}/deployments`, body);
  if (status === 201) {
    message.className = "accepted";
    message.textContent = `${body.app}: ${body.replicas} replicas admitted`;
    refresh();
  } else if (status === 422 && data?.fields) {
    const byField = {};
    for (const [path, text] of Object.entries(data.fields)) byField[path.split(".")[0]] = text;
    showFieldErrors(byField);
    message.className = "refused";
    message.textContent = "Please correct the fields marked above.";
  } else {
    message.className = "refused";
    message.textContent = data?.error ?? `the gateway answered ${status}`;
  }
}

async function scaleApp(app, replicas) {
  const { status, data } = await api("PATCH", `/v1/namespaces/${view.namespace}/deployments/${app}`,
    { replicas: Number(replicas) });
  $("#deploy-message").className = status === 200 ? "accepted" : "refused";
  $("#deploy-message").textContent = status === 200 ? `${app}: scaled to ${replicas}` : data?.error ?? `error ${status}`;
  refresh();
}

async function deleteApp(app) {
  if (!confirm(`Delete ${app} and stop all its replicas?`)) return;
  const { status, data } = await api("DELETE", `/v1/namespaces/${view.namespace}/deployments/${app}`);
  $("#deploy-message").className = status === 200 ? "accepted" : "refused";
  $("#deploy-message").textContent = status === 200 ? `${app}: deleted` : data?.error ?? `error ${status}`;
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", logIn);
  $("#deploy-form").addEventListener("submit", deploy);
  $("#logout").addEventListener("click", logOut);
  $("#logs-close").addEventListener("click", hideLogs);
  $("#ns-input").addEventListener("change", (event) => {
    localStorage.setItem("idlecloud-ns", event.target.value.trim());
    choose(event.target.value.trim());
  });
  start();
});
