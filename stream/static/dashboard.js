// The dashboard: polls /api/stats and /api/snapshots, draws two uPlot charts, offers rollbacks.
// Whatever it shows is set as text (createElement, textContent), never parsed as HTML: a value
// from the API (a snapshot id, a partition, a metric name) can never become markup or script.
"use strict";

const state = { partition: null, metricChart: null, throughputChart: null, metricPoints: 0, lastRollback: null };
const $ = (selector) => document.querySelector(selector);

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function card(label, value) {
  const node = element("div", undefined, { class: "card" });
  node.append(element("div", value, { class: "value" }), element("div", label, { class: "label" }));
  return node;
}

function drawCards(stats, summary) {
  const metric = summary ? summary.metrics[summary.rolling_metric] : undefined;
  $("#cards").replaceChildren(
    card("predictions", stats.predictions),
    card("events / s", Math.round(stats.events_per_second)),
    card("lag", stats.lag),
    card("dead letters", stats.dead_letters),
    card(summary ? summary.rolling_metric : "metric", metric === undefined ? "–" : metric.toFixed(3)),
    card("drifts", summary ? summary.drifts : "–"),
    card("snapshots", summary ? summary.snapshots : "–"),
    card("rollbacks", summary ? summary.rollbacks : "–"),
    card("model version", summary ? "v" + summary.model_version : "–"),
    ...labelCards(summary ? summary.labels : null),
  );
}

// Delayed labels (kafka.label_topic): what waits, and what became of the labels.
function labelCards(labels) {
  if (!labels) return [];
  const delay = labels.mean_label_delay_seconds;
  return [
    card("events waiting", labels.waiting),
    card("labels joined", labels.joined),
    card("expired", labels.expired + labels.evicted),
    card("orphan labels", labels.orphans),
    card("duplicate labels", labels.duplicates),
    card("mean label delay (s)", delay === null || delay === undefined ? "–" : delay.toFixed(1)),
  ];
}

function chart(element, series, data, existing) {
  if (existing) { existing.setData(data); return existing; }
  const width = Math.max(400, element.clientWidth || 900);
  return new uPlot({ width, height: 260, series, scales: { x: { time: series[0].time !== false } } }, data, element);
}

function metricData(summary, snapshots) {
  const name = summary.rolling_metric;
  const history = summary.history.map((point) => [point.event, point[name]]);
  const markers = { drift: new Map(), snapshot: new Map(), rollback: new Map() };
  const valueAt = (event) => {
    let value = null;
    for (const [x, y] of history) { if (x <= event) value = y; }
    return value === null && history.length ? history[0][1] : value;
  };
  for (const manifest of snapshots) {
    const kind = manifest.reason === "drift" ? "drift" : manifest.reason === "rollback" ? "rollback" : "snapshot";
    if (manifest.reason === "checkpoint" || manifest.reason === "shutdown") continue;
    markers[kind].set(manifest.events_seen, valueAt(manifest.events_seen));
  }
  const xs = [...new Set([...history.map((p) => p[0]), ...Object.values(markers).flatMap((m) => [...m.keys()])])]
    .sort((a, b) => a - b);
  const line = new Map(history);
  state.metricPoints = history.length;
  return [xs, xs.map((x) => line.get(x) ?? null),
    ...["drift", "snapshot", "rollback"].map((kind) => xs.map((x) => markers[kind].get(x) ?? null))];
}

function drawMetric(summary, snapshots) {
  const marker = (label, stroke) => ({ label, stroke, width: 0, points: { show: true, size: 9, fill: stroke } });
  const series = [
    { label: "event", time: false },
    { label: summary.rolling_metric, stroke: "#1d2733", width: 2, spanGaps: true, points: { show: false } },
    marker("drift", "#d1362f"), marker("snapshot", "#2f6fd1"), marker("rollback", "#1f9d4c"),
  ];
  $("#metric-title").textContent = summary.rolling_metric + " over events";
  state.metricChart = chart($("#metric-chart"), series, metricData(summary, snapshots), state.metricChart);
}

function drawThroughput(stats) {
  const samples = stats.throughput || [];
  const data = [samples.map((s) => s.time), samples.map((s) => s.events_per_second), samples.map((s) => s.lag)];
  const series = [{}, { label: "events/s", stroke: "#2f6fd1" }, { label: "lag", stroke: "#d18a2f" }];
  state.throughputChart = chart($("#throughput-chart"), series, data, state.throughputChart);
}

function snapshotRow(m, metricName) {
  const metric = metricName && m.metrics[metricName] !== undefined ? m.metrics[metricName].toFixed(3) : "";
  const created = new Date(m.created_at).toLocaleTimeString();
  const row = element("tr", undefined, { "data-id": m.id });
  for (const text of [m.id, created, m.reason, m.events_seen, `v${m.model_version}`, metric, m.pinned ? "yes" : ""]) {
    row.append(element("td", text));
  }
  const actions = element("td");
  actions.append(element("button", "roll back", { class: "rollback", "data-id": m.id }));
  row.append(actions);
  return row;
}

function drawSnapshots(snapshots, summary) {
  const name = summary ? summary.rolling_metric : null;
  $("#snapshots tbody").replaceChildren(...snapshots.slice().reverse().map((m) => snapshotRow(m, name)));
}

async function rollback(snapshotId) {
  let token = sessionStorage.getItem("stream-token");
  if (!token) {
    token = window.prompt(`Bearer token to roll back to ${snapshotId}:`);
    if (!token) return;
  }
  const url = `/api/snapshots/${encodeURIComponent(snapshotId)}/rollback?partition=${encodeURIComponent(state.partition)}`;
  const response = await fetch(url, { method: "POST", headers: { Authorization: `Bearer ${token}` } });
  const body = await response.json();
  if (response.ok) {
    sessionStorage.setItem("stream-token", token);
    state.lastRollback = body;
    $("#message").textContent = `rolled back to ${body.rolled_back_to}: model v${body.model_version}`;
  } else {
    if (response.status === 401) sessionStorage.removeItem("stream-token");
    const reason = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    $("#message").textContent = `rollback refused (${response.status}): ${reason}`;
  }
  refresh();
}

async function refresh() {
  try {
    const stats = await getJSON("/api/stats");
    $("#instance").textContent = `${stats.instance_id || ""} · ${stats.guarantee || ""}`;
    $("#ready").textContent = stats.ready ? "ready" : "not ready";
    $("#ready").className = "badge " + (stats.ready ? "ok" : "bad");
    const partitions = Object.keys(stats.partitions || {}).sort();
    if (!partitions.includes(state.partition)) state.partition = partitions[0] || null;
    $("#partition").replaceChildren(...partitions.map((p) => {
      const option = element("option", p, { value: p });
      option.selected = p === state.partition;
      return option;
    }));
    const summary = state.partition ? stats.partitions[state.partition] : null;
    drawCards(stats, summary);
    drawThroughput(stats);
    if (summary) {
      const snapshots = await getJSON(`/api/snapshots?partition=${encodeURIComponent(state.partition)}`);
      drawMetric(summary, snapshots);
      drawSnapshots(snapshots, summary);
    }
  } catch (error) {
    $("#ready").textContent = "unreachable";
    $("#ready").className = "badge bad";
  }
}

$("#partition").addEventListener("change", (event) => { state.partition = event.target.value; state.metricChart = null; $("#metric-chart").replaceChildren(); refresh(); });
$("#snapshots").addEventListener("click", (event) => { if (event.target.matches("button.rollback")) rollback(event.target.dataset.id); });
window.dashboard = { state, refresh, metricPoints: () => state.metricPoints };
refresh();
setInterval(refresh, 2000);
