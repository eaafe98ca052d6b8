// Overview: the system at a glance, the fleet, throughput against the
// target, queue depths and the warnings and errors as they come.

import { ago, badge, bytes, duration, el, get, number, onEvent, section, table } from "/console/core.js";

export const title = "Overview";

/** Throughput points kept for the chart (one per status event, 2 s apart). */
const HISTORY = 300;

export function render(main) {
  const facts = el("div", { class: "facts", id: "facts" });
  const subsystems = el("div", { id: "subsystems" });
  const fleet = el("div", { id: "fleet" });
  const queues = el("div", { id: "queues" });
  const chartBox = el("div", { class: "chart", id: "throughput-chart" });
  const feed = el("ul", { class: "events", id: "event-feed" });
  main.append(
    el("section", { class: "card wide" }, el("h2", {}, "System"), facts),
    section("Throughput (jobs/s) against the target", chartBox),
    section("Warnings and errors", feed, el("p", { class: "muted", id: "feed-empty" }, "None since this page opened.")),
    section("Subsystems", subsystems),
    section("Fleet", fleet),
    el("section", { class: "card wide" }, el("h2", {}, "Queues"), queues),
  );
  const chart = throughputChart(chartBox);

  const show = async (status) => {
    status ??= await get("/api/v1/status").catch(() => null);
    if (!status) return;
    showFacts(facts, status);
    subsystems.replaceChildren(subsystemTable(status.subsystems));
    queues.replaceChildren(queueTable(status.queues));
    chart.add(status);
    const listed = await get("/api/v1/fleet").catch(() => null);
    if (listed) fleet.replaceChildren(fleetTable(listed.processes));
  };
  show();
  const stop = onEvent((event) => {
    if (event.type === "status") show(event.data);
    else addToFeed(feed, event);
  });
  return () => {
    stop();
    chart.destroy();
  };
}

function showFacts(box, status) {
  const fact = (value, label, id) => el("div", { class: "fact", id }, el("b", {}, value), el("span", {}, label));
  const fleetSize = Object.values(status.fleet).reduce((a, b) => a + b, 0);
  box.replaceChildren(
    fact(status.system.state, "state", "fact-state"),
    fact(status.mode, `mode · ${status.backend}`),
    fact(duration(status.uptime_s), "uptime"),
    fact(number(status.throughput.jobs_per_s_10s), `jobs/s (10 s) of ${number(status.throughput.target)}`, "fact-rate"),
    fact(number(status.throughput.ratio * 100, 2) + " %", "of target (1 min)"),
    fact(number(fleetSize), "processes"),
    fact(status.version, "version"),
  );
}

function subsystemTable(subsystems) {
  return table(
    ["Subsystem", "State", "Latency", "Detail"],
    subsystems.map((s) =>
      el(
        "tr",
        {},
        el("td", {}, s.name),
        el("td", {}, badge(s.state)),
        el("td", { class: "n" }, `${number(s.latency_ms, 1)} ms`),
        el("td", { class: "muted" }, s.error ?? ""),
      ),
    ),
  );
}

function fleetTable(processes) {
  return table(
    ["Process", "Kind", "Serves", "State", "In flight", "Done", "Memory", "Beat"],
    processes.map((p) =>
      el(
        "tr",
        {},
        el("td", {}, el("code", {}, p.id), el("div", { class: "muted" }, `${p.host} · pid ${p.pid}`)),
        el("td", {}, p.kind),
        el("td", {}, p.serves.join(", ")),
        el("td", {}, badge(p.state)),
        el("td", { class: "n" }, number(p.jobs_in_flight)),
        el("td", { class: "n" }, number(p.jobs_done)),
        el("td", { class: "n" }, bytes(p.rss_bytes)),
        el("td", { class: "muted" }, ago(p.last_beat)),
      ),
    ),
    "No process has registered.",
  );
}

function queueTable(queues) {
  return table(
    ["Queue", "Waiting", "Running", "Done", "Dead", "Jobs/s (1 min)"],
    queues.map((q) =>
      el(
        "tr",
        { "data-queue": q.name },
        el("td", {}, el("a", { href: `#/queues/${encodeURIComponent(q.name)}` }, q.name)),
        el("td", { class: "n", "data-field": "pending" }, number(q.pending)),
        el("td", { class: "n", "data-field": "running" }, number(q.running)),
        el("td", { class: "n", "data-field": "done" }, number(q.done)),
        el("td", { class: "n", "data-field": "dead" }, number(q.dead)),
        el("td", { class: "n" }, number(q.jobs_per_s, 1)),
      ),
    ),
  );
}

function addToFeed(feed, event) {
  document.getElementById("feed-empty")?.remove();
  const at = new Date(event.at).toLocaleTimeString();
  feed.prepend(el("li", { "data-code": event.code }, el("time", {}, at), badge(event.type), " ", event.message));
  while (feed.children.length > 100) feed.lastChild.remove();
}

/** The live chart: jobs/s over 10 s and the target, from status events. */
function throughputChart(box) {
  const times = [];
  const rates = [];
  const targets = [];
  const width = () => Math.max(240, box.clientWidth);
  const options = {
    width: width(),
    height: 220,
    scales: { x: { time: true } },
    series: [
      {},
      { label: "jobs/s (10 s)", stroke: "#2563eb", width: 2 },
      { label: "target", stroke: "#b45309", dash: [6, 4] },
    ],
    axes: [{ stroke: "#888" }, { stroke: "#888", size: 72 }],
  };
  const plot = new window.uPlot(options, [times, rates, targets], box);
  const resize = () => plot.setSize({ width: width(), height: 220 });
  addEventListener("resize", resize);
  return {
    add(status) {
      times.push(status.taken_at / 1000);
      rates.push(status.throughput.jobs_per_s_10s);
      targets.push(status.throughput.target);
      if (times.length > HISTORY) [times, rates, targets].forEach((a) => a.shift());
      plot.setData([times, rates, targets]);
    },
    destroy() {
      removeEventListener("resize", resize);
      plot.destroy();
    },
  };
}
