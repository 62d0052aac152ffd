// Switchboard console: what a page cannot do by itself. The deliveries table
// takes new rows from the server as they happen (Server-Sent Events; each row
// arrives as the HTML the server renders), the tenant page draws its charts
// with uPlot from the server's activity data, and an unfinished delivery's
// page looks again until it has finished.
"use strict";

function liveTable() {
  const note = document.getElementById("live");
  const table = document.getElementById("deliveries");
  if (!note || !table || !note.dataset.src) return;
  const body = table.tBodies[0];
  const keep = Math.max(body.rows.length, 100);
  const source = new EventSource(note.dataset.src);
  source.addEventListener("open", () => { note.dataset.connected = "1"; });
  source.addEventListener("row", (e) => {
    const t = document.createElement("tbody");
    t.innerHTML = e.data;
    const row = t.rows[0];
    if (!row) return;
    const old = document.getElementById(row.id);
    if (old) old.remove();
    row.classList.add("fresh");
    body.prepend(row);
    while (body.rows.length > keep) body.deleteRow(body.rows.length - 1);
    const empty = document.getElementById("empty");
    if (empty) empty.remove();
  });
  source.addEventListener("dropped", (e) => {
    note.textContent = e.data;
    note.classList.add("error");
    source.close();
  });
}

function chartData(minutes, kind) {
  const xs = minutes.map((m) => m.at);
  if (kind === "events") return [[xs, minutes.map((m) => m.events / 60)], [{ label: "events/s", stroke: "#2457d6" }]];
  if (kind === "latency") {
    return [
      [xs, minutes.map((m) => m.p50_ms), minutes.map((m) => m.p99_ms)],
      [{ label: "p50 ms", stroke: "#127a3e" }, { label: "p99 ms", stroke: "#b42318" }],
    ];
  }
  const plugins = [...new Set(minutes.flatMap((m) => Object.keys(m.failures)))].sort();
  const colours = ["#b42318", "#8a5a00", "#6d28d9", "#0e7490", "#be185d", "#4d7c0f"];
  return [
    [xs, ...plugins.map((p) => minutes.map((m) => m.failures[p] || 0))],
    plugins.map((p, i) => ({ label: p, stroke: colours[i % colours.length] })),
  ];
}

async function charts() {
  const box = document.getElementById("charts");
  if (!box || typeof uPlot === "undefined") return;
  const drawn = new Map();
  async function draw() {
    const resp = await fetch(box.dataset.src, { credentials: "same-origin" });
    if (!resp.ok) return;
    const minutes = await resp.json();
    for (const el of box.querySelectorAll("[data-chart]")) {
      const [data, series] = chartData(minutes, el.dataset.chart);
      const width = Math.max(el.clientWidth, 260);
      const old = drawn.get(el);
      if (old && old.series.length === series.length + 1) {
        old.setData(data);
        continue;
      }
      if (old) old.destroy();
      const opts = { width, height: 200, series: [{}, ...series], axes: [{}, { size: 50 }], legend: { live: false } };
      drawn.set(el, new uPlot(opts, data, el));
    }
    box.dataset.drawn = String(minutes.length);
  }
  await draw();
  setInterval(draw, 15000);
}

// A delivery that has not finished: look again shortly (a few times a
// second at first, then every few seconds), so its attempts appear.
function followUnfinished() {
  if (!document.getElementById("unfinished")) return;
  const key = "reloads:" + location.pathname;
  const n = Number(sessionStorage.getItem(key) || 0);
  sessionStorage.setItem(key, String(n + 1));
  setTimeout(() => location.reload(), n < 10 ? 300 : 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  followUnfinished();
  liveTable();
  charts();
});
