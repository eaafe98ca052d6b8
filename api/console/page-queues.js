// Queues (the switchboard): every queue with its counts and a sparkline of
// jobs done per second; pause, resume and settings; dead jobs with their
// error, requeued one at a time or all at once; a job looked up by id.

import { act, badge, el, get, live, number, patch, post, section, table, toast } from "/console/core.js";

export const title = "Queues";

/** Jobs/s samples kept per queue for the sparklines. */
const SPARK_POINTS = 60;

export function render(main, [selected]) {
  const list = el("div", { id: "queue-table" });
  const lookup = jobLookup();
  main.append(el("section", { class: "card wide" }, el("h2", {}, "Queues"), list), lookup);
  const detail = el("div", { class: "wide", id: "queue-detail" });
  if (selected) main.append(detail);
  const rates = new Map();
  const previous = new Map();
  let shown = false;

  const refresh = async () => {
    const { queues } = await get("/api/v1/queues").catch(() => ({ queues: null }));
    if (!queues) return;
    const now = Date.now();
    for (const q of queues) {
      const before = previous.get(q.name);
      const series = rates.get(q.name) ?? [];
      if (before) series.push(((q.done - before.done) * 1000) / Math.max(1, now - before.at));
      if (series.length > SPARK_POINTS) series.shift();
      rates.set(q.name, series);
      previous.set(q.name, { done: q.done, at: now });
    }
    list.replaceChildren(queueTable(queues, rates, refresh));
    const chosen = queues.find((q) => q.name === selected);
    if (chosen && !shown) {
      shown = true;
      detail.replaceChildren(queueDetail(chosen, refresh));
    }
  };
  return live(refresh);
}

function queueTable(queues, rates, refresh) {
  return table(
    ["Queue", "State", "Waiting", "Running", "Done", "Failed", "Dead", "Workers", "Jobs/s", ""],
    queues.map((q) => {
      const series = rates.get(q.name) ?? [];
      const rate = series.length ? series[series.length - 1] : 0;
      return el(
        "tr",
        { "data-queue": q.name },
        el("td", {}, el("a", { href: `#/queues/${encodeURIComponent(q.name)}` }, q.name)),
        el("td", {}, badge(q.paused ? "paused" : "running")),
        el("td", { class: "n", "data-field": "pending" }, number(q.pending)),
        el("td", { class: "n", "data-field": "running" }, number(q.running)),
        el("td", { class: "n", "data-field": "done" }, number(q.done)),
        el("td", { class: "n" }, number(q.failed)),
        el("td", { class: "n", "data-field": "dead" }, number(q.dead)),
        el("td", { class: "n" }, number(q.workers)),
        el("td", { class: "n" }, sparkline(series), " ", number(rate, 1)),
        el(
          "td",
          {},
          q.paused
            ? el("button", { "data-action": "resume", onclick: () => toggle(q, "resume", refresh) }, "Resume")
            : el("button", { "data-action": "pause", onclick: () => toggle(q, "pause", refresh) }, "Pause"),
        ),
      );
    }),
  );
}

async function toggle(queue, action, refresh) {
  await act(`${action} ${queue.name}`, () => post(`/api/v1/queues/${encodeURIComponent(queue.name)}/${action}`), `${queue.name}: ${action}d`);
  refresh();
}

function sparkline(values) {
  const width = 80;
  const height = 18;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("aria-hidden", "true");
  if (values.length > 1) {
    const top = Math.max(...values, 1);
    const points = values
      .map((v, i) => `${(i * width) / (values.length - 1)},${height - (v / top) * (height - 2) - 1}`)
      .join(" ");
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points);
    svg.append(line);
  }
  return svg;
}

function queueDetail(queue, refresh) {
  const path = `/api/v1/queues/${encodeURIComponent(queue.name)}`;
  const field = (name, label, value, min) =>
    el("label", {}, label, el("input", { name, type: "number", min, value: value ?? "", placeholder: "unlimited" }));
  const settings = el(
    "form",
    {
      class: "row",
      id: "queue-settings",
      onsubmit: async (event) => {
        event.preventDefault();
        const form = new FormData(event.target);
        const body = {};
        for (const [name, value] of form) if (value !== "") body[name] = Number(value);
        await act("settings", () => patch(path, body), `${queue.name}: settings saved`);
        refresh();
      },
    },
    field("concurrency", "Concurrency", queue.concurrency, 1),
    field("max_attempts", "Max attempts", queue.max_attempts, 1),
    field("backoff_ms", "Backoff (ms)", queue.backoff_ms, 0),
    field("rate_limit_per_s", "Rate limit (jobs/s)", queue.rate_limit_per_s, 1),
    el("button", { type: "submit", class: "primary" }, "Save"),
  );
  const dead = el("div", { id: "dead-jobs" });
  const loadDead = async () => {
    const { jobs } = await get(`${path}/dead?limit=100`);
    dead.replaceChildren(
      el(
        "div",
        { class: "actions" },
        el(
          "button",
          {
            id: "requeue-all",
            disabled: jobs.length === 0,
            onclick: async () => {
              const moved = await act("requeue", () => post(`${path}/dead/requeue`, {}));
              if (moved) toast(`${moved.requeued.length} job(s) requeued`, "ok");
              loadDead();
              refresh();
            },
          },
          "Requeue all",
        ),
      ),
      table(
        ["Job", "Attempts", "Error", ""],
        jobs.map((job) =>
          el(
            "tr",
            { "data-job": job.id },
            el("td", {}, el("code", {}, job.id)),
            el("td", { class: "n" }, `${job.attempts}/${job.max_attempts}`),
            el("td", {}, el("pre", {}, job.error ?? "")),
            el(
              "td",
              {},
              el(
                "button",
                {
                  "data-action": "requeue",
                  onclick: async () => {
                    await act("requeue", () => post(`/api/v1/jobs/${job.id}/requeue`), "requeued");
                    loadDead();
                    refresh();
                  },
                },
                "Requeue",
              ),
            ),
          ),
        ),
        "No dead jobs.",
      ),
    );
  };
  loadDead();
  return el(
    "div",
    { class: "card" },
    el("h2", {}, `Queue ${queue.name}`),
    el("h3", {}, "Settings"),
    settings,
    el("h3", {}, "Dead jobs"),
    dead,
  );
}

function jobLookup() {
  const out = el("div", { id: "job-found" });
  return section(
    "Find a job",
    el(
      "form",
      {
        class: "row",
        onsubmit: async (event) => {
          event.preventDefault();
          const id = new FormData(event.target).get("id").trim();
          const job = await act("lookup", () => get(`/api/v1/jobs/${encodeURIComponent(id)}`));
          out.replaceChildren(job ? jobView(job) : el("p", { class: "muted" }, "Not found."));
        },
      },
      el("label", {}, "Job id", el("input", { name: "id", required: true, size: 38 })),
      el("button", { type: "submit" }, "Look up"),
    ),
    out,
  );
}

function jobView(job) {
  return el(
    "div",
    {},
    el("p", {}, badge(job.status), ` ${job.queue} · attempt ${job.attempts} of ${job.max_attempts}`),
    el("pre", {}, JSON.stringify(job, null, 2)),
  );
}
