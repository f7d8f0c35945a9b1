// The registry page: reads the JSON API and renders with DOM nodes and text only (no innerHTML),
// so a task id, label or error message can never become markup.
"use strict";

const POLL_ACTIVE_MS = 1500;
const POLL_IDLE_MS = 5000;
const $ = (id) => document.getElementById(id);
let timer = null;
let refreshFailed = false;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "style") for (const [k, v] of Object.entries(value)) node.style.setProperty(k, v);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
const shortId = (id) => (id ? id.slice(0, 10) : "empty");
const when = (t) => new Date(t * 1000).toLocaleString();

function hue(id) {
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) % 360;
  return String(h);
}

function table(header, rows, numeric = []) {
  return el("table", {},
    el("thead", {}, el("tr", {}, header.map((h, i) => el("th", { class: numeric.includes(i) ? "num" : null }, h)))),
    el("tbody", {}, rows.map((row) => el("tr", {}, row.map((cell, i) =>
      cell instanceof Node && cell.tagName === "TD" ? cell
        : el("td", { class: numeric.includes(i) ? "num" : null }, cell))))));
}

function status(message, bad = false) {
  const node = $("status");
  node.textContent = message;
  node.className = bad ? "bad" : "";
}

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (!response.ok) {
    const error = data && data.error ? data.error : { code: `http_${response.status}`, message: response.statusText };
    throw new ApiError(`${error.code}: ${error.message}`);
  }
  return data;
}

// ---- rendering ---------------------------------------------------------------------------------
function renderBank(bank) {
  const base = bank.base_model;
  $("live").textContent = bank.live_version
    ? `live ${bank.live_version} · ${base.name} (${base.num_layers} layers) · ${bank.strategy}`
    : "no live bank version yet";
  const t = bank.totals;
  const saving = t.one_adapter_per_task_params ? 1 - t.adapter_params / t.one_adapter_per_task_params : null;
  $("bank").replaceChildren(el("div", { class: "totals" },
    el("div", {}, el("b", {}, fmt(t.tasks)), "tasks"),
    el("div", {}, el("b", {}, fmt(t.modules)), "modules"),
    el("div", {}, el("b", {}, fmt(t.adapter_params)), "adapter params (bank)"),
    el("div", {}, el("b", {}, fmt(t.one_adapter_per_task_params)), "one adapter per task"),
    el("div", {}, el("b", { class: "saving" }, saving === null ? "–" : pct(saving)), "saved by sharing"),
    el("div", {}, el("b", {}, fmt(t.head_params)), "head params")));
}

function renderTasks(tasks, bank) {
  const routes = bank.routes || {};
  const rows = tasks.map((task) => {
    const route = routes[task.task_id];
    return [el("span", { class: "task-id" }, task.task_id), el("span", { class: `state-${task.state}` }, task.state),
      task.input_kind || "–", task.labels.join(", "), fmt(task.params), fmt(task.head_params),
      fmt(route ? route.full_route_params : null), pct(task.metrics.val_accuracy)];
  });
  $("tasks").replaceChildren(rows.length ? table(
    ["task", "state", "input", "labels", "route params", "head", "one adapter", "val acc"], rows, [4, 5, 6, 7])
    : el("p", { class: "hint" }, "no tasks yet: upload a dataset"));
  $("task-ids").replaceChildren(...Object.keys(routes).map((id) => el("option", { value: id })));
}

function renderGrid(bank) {
  const byId = Object.fromEntries(bank.modules.map((m) => [m.id, m]));
  const layers = bank.layers.map((layer) => el("div", { class: "layer-row", "data-layer": layer.layer },
    el("div", { class: "layer-name" }, `layer ${layer.layer}`),
    layer.modules.length ? layer.modules.map((id) => {
      const m = byId[id];
      return el("div", { class: m.users.length > 1 ? "module shared" : "module", style: { "--hue": hue(id) }, title: id },
        el("div", { class: "mid" }, shortId(id)),
        el("div", { class: "meta" }, `${m.kind}${m.density == null ? "" : ` ${(100 * m.density).toFixed(1)}%`} · ${fmt(m.params)} params`),
        el("div", {}, m.users.map((u) => el("span", { class: "chip" }, u))));
    }) : el("div", { class: "empty-layer" }, "no module (every route passes through)")));
  $("grid").replaceChildren(...(layers.length ? layers : [el("p", { class: "hint" }, "no bank yet")]));
  const names = Object.keys(bank.routes);
  const header = ["task", ...bank.layers.map((l) => `L${l.layer}`), "params"];
  const rows = names.map((name) => [name, ...bank.routes[name].layers.map((id) => id
    ? el("td", { class: "cell", style: { "--hue": hue(id) }, title: id }, shortId(id).slice(0, 6))
    : el("td", { class: "cell none" }, "·")), fmt(bank.routes[name].params)]);
  $("routes").replaceChildren(rows.length ? table(header, rows, [header.length - 1]) : "");
}

function decisions(result) {
  if (!result || !result.decisions || !result.decisions.length) return "";
  return el("details", {}, el("summary", {}, result.decisions.map((d) => d.choice[0].toUpperCase()).join("")),
    table(["layer", "choice", "module", "weights"], result.decisions.map((d) => [
      d.layer, el("span", { class: `decision decision-${d.choice}` }, d.choice + (d.forced ? " (forced)" : "")),
      d.module ? shortId(d.module) : "–",
      Object.entries(d.weights).map(([k, w]) => `${k.length > 12 ? shortId(k) : k} ${w.toFixed(2)}`).join(", ")])));
}

function renderJobs(jobs) {
  const rows = jobs.map((job) => {
    const p = job.progress || {};
    const r = job.result;
    const steps = p.total_steps ? `${p.step}/${p.total_steps}` : "";
    const what = job.kind === "merge" && job.merge
      ? `merge ${job.merge.method}: ${job.merge.tasks.join(" + ")}${job.merge.replace ? " (replace)" : ""}`
      : job.strategy;
    return [job.job_id, job.task_id, what, el("span", { class: `state-${job.state}` }, job.state),
      p.stage || "", el("span", {}, el("span", { class: "bar" }, el("span", { style: { width: `${(100 * (p.fraction || 0)).toFixed(0)}%` } })), ` ${steps}`),
      p.eta_s === null || p.eta_s === undefined || job.state !== "running" ? "–" : `${Math.round(p.eta_s)} s`,
      r ? r.version : (job.error ? el("span", { class: "state-failed", title: job.error }, "error") : "–"),
      r ? pct(r.val_accuracy) : "–", r ? fmt(r.params_added) : "–", decisions(r)];
  });
  $("jobs").replaceChildren(rows.length ? table(
    ["job", "task", "strategy", "state", "stage", "progress", "ETA", "version", "val acc", "params added", "layers"],
    rows, [8, 9]) : el("p", { class: "hint" }, "no jobs yet"));
  return jobs.some((job) => job.state === "queued" || job.state === "running");
}

function renderVersions(view) {
  const rows = [...view.history].reverse().map((entry) => [
    entry.version + (entry.version === view.live_version ? " (live)" : ""), entry.reason, entry.previous || "–", when(entry.at),
    entry.version === view.live_version ? "" : el("button", { type: "button", "data-version": entry.version, onclick: () => rollback(entry.version) }, `roll back to ${entry.version}`)]);
  $("versions").replaceChildren(rows.length ? table(["version", "reason", "previous", "at", ""], rows)
    : el("p", { class: "hint" }, "no versions yet"));
}

// ---- actions -------------------------------------------------------------------------------
async function rollback(version) {
  try {
    const entry = await api("POST", "/v1/bank/rollback", { version });
    status(`live ${entry.version} (was ${entry.previous || "none"})`);
  } catch (error) {
    status(`rollback failed: ${error.message}`, true);
  }
  refresh();
}

async function predict(event) {
  event.preventDefault();
  const task = $("predict-task").value.trim();
  const texts = $("predict-text").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const pairs = $("predict-pair").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const inputs = pairs.length ? texts.map((text, i) => ({ text, text_pair: pairs[i] || "" })) : texts;
  const out = $("predict-out");
  try {
    const body = await api("POST", `/v1/tasks/${encodeURIComponent(task)}/predict`, { inputs });
    out.replaceChildren(table(["input", "label", "score"], body.predictions.map((p, i) =>
      [texts[i], el("b", {}, p.label), (p.scores[p.label] || 0).toFixed(3)]), [2]),
    el("p", { class: "hint" }, `served by ${body.version}`));
  } catch (error) {
    out.replaceChildren(el("p", { class: "state-failed" }, error.message));
  }
}

async function refresh() {
  clearTimeout(timer);
  let active = false;
  try {
    const [bank, tasks, jobs, versions] = await Promise.all([
      api("GET", "/v1/adapters"), api("GET", "/v1/tasks"), api("GET", "/v1/jobs?limit=20"),
      api("GET", "/v1/bank/versions")]);
    renderBank(bank);
    renderTasks(tasks.tasks, bank);
    renderGrid(bank);
    active = renderJobs(jobs.jobs);
    renderVersions(versions);
    if (refreshFailed || $("status").className !== "bad") status(`updated ${new Date().toLocaleTimeString()}`);
    refreshFailed = false;
    document.body.dataset.loaded = "true";
  } catch (error) {
    refreshFailed = true;
    status(error instanceof ApiError ? `${error.message} (an API key may be needed)` : `cannot reach the API: ${error.message}`, true);
  }
  timer = setTimeout(refresh, active ? POLL_ACTIVE_MS : POLL_IDLE_MS);
}

function reportError(message) {
  $("errors").append(el("div", {}, message));
}

window.addEventListener("error", (event) => reportError(`script error: ${event.message}`));
window.addEventListener("unhandledrejection", (event) => reportError(`unhandled: ${event.reason}`));
document.addEventListener("DOMContentLoaded", () => {
  $("predict-form").addEventListener("submit", predict);
  $("key-form").addEventListener("submit", (event) => { event.preventDefault(); status(""); refresh(); });
  $("api-key").addEventListener("change", () => { status(""); refresh(); });
  refresh();
});
