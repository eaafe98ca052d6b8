// Training: feedback turned into LoRA adapters. The feedback buffer and the
// runs by status, a button that trains on the buffer now, every run with
// its progress, one run's loss curve drawn live (the newest, or the one in
// the route: #/training/{run}), and the adapters with their evaluation,
// promoted or rolled back by hand.

import { act, ago, badge, duration, el, get, live, number, post, section, table, toast } from "/console/core.js";

export const title = "Training";

/** Fewest buffered examples a run takes (one to train, one to hold out). */
const MIN_EXAMPLES = 2;

const RUN_STATES = ["queued", "running", "promoted", "rejected", "failed"];

export function render(main, [selected]) {
  const facts = el("div", { class: "facts", id: "training-facts" });
  const runs = el("div", { id: "runs" });
  const adapters = el("div", { id: "adapters" });
  const chartBox = el("div", { class: "chart", id: "loss-chart" });
  const runHead = el("h2", { id: "loss-title" }, "Loss curve");
  const runFacts = el("div", { class: "facts", id: "run-facts" });
  const train = trainForm();
  main.append(
    el("section", { class: "card wide" }, el("h2", {}, "Feedback and runs"), facts),
    train.card,
    el("section", { class: "card" }, runHead, chartBox, runFacts),
    el("section", { class: "card wide" }, el("h2", {}, "Runs"), runs),
    el("section", { class: "card wide" }, el("h2", {}, "Adapters"), adapters),
  );
  const chart = lossChart(chartBox);

  const refresh = async (status) => {
    status ??= await get("/api/v1/status").catch(() => null);
    if (status) {
      showFacts(facts, status);
      train.buffered(status.activity.feedback_buffered);
    }
    const listed = await get("/api/v1/training/runs").catch(() => null);
    if (!listed) return;
    const shown = selected ?? listed.runs[0]?.id;
    runs.replaceChildren(runTable(listed.runs, shown));
    const run = shown ? await get(`/api/v1/training/runs/${encodeURIComponent(shown)}`).catch(() => null) : null;
    showRun(runHead, runFacts, chart, run);
    const found = await get("/api/v1/adapters").catch(() => null);
    if (found) adapters.replaceChildren(adapterTable(found.adapters, refresh));
  };
  train.onQueued(refresh);
  const stop = live(refresh);
  return () => {
    stop();
    chart.destroy();
  };
}

function showFacts(box, status) {
  const fact = (value, label, id) => el("div", { class: "fact", id }, el("b", {}, value), el("span", {}, label));
  const counts = status.activity.training_runs ?? {};
  const trainer = status.subsystems.find((s) => s.name === "trainer");
  box.replaceChildren(
    fact(number(status.activity.feedback_buffered), "examples buffered", "fact-buffered"),
    ...RUN_STATES.map((state) => fact(number(counts[state] ?? 0), `runs ${state}`, `fact-runs-${state}`)),
    fact(trainer ? trainer.state : "–", trainer?.error ? `trainer · ${trainer.error}` : "trainer", "fact-trainer"),
  );
}

// ---- train now ----

/** POST /api/v1/training/runs on the buffer. Empty settings send no
 *  config, so the trainer's own (ORCH_TRAIN_CONFIG) apply. */
function trainForm() {
  const hint = el("p", { class: "muted", id: "train-hint" });
  const button = el("button", { type: "submit", class: "primary", id: "train-now", disabled: true }, "Train now");
  const setting = (name, label, attrs) => el("label", {}, label, el("input", { name, type: "number", ...attrs }));
  let queued = () => {};
  const form = el(
    "form",
    {
      class: "row",
      id: "train-form",
      onsubmit: async (event) => {
        event.preventDefault();
        const run = await act("train", () => post("/api/v1/training/runs", runRequest(form)));
        if (!run) return;
        toast(`Run queued with ${run.examples} example(s)`, "ok");
        if (location.hash === `#/training/${run.id}`) queued();
        else location.hash = `#/training/${run.id}`;
      },
    },
    el("label", {}, "Base model", el("input", { name: "base_model", placeholder: "first local model", size: 14 })),
    setting("epochs", "Epochs", { min: 1, max: 1000, placeholder: "3" }),
    setting("learning_rate", "Learning rate", { min: 0, max: 10, step: "any", placeholder: "0.0001" }),
    setting("batch_size", "Batch size", { min: 1, max: 256, placeholder: "4" }),
    setting("max_seq_len", "Tokens per example", { min: 16, max: 4096, placeholder: "256" }),
    setting("rank", "LoRA rank", { min: 1, max: 256, placeholder: "16" }),
    button,
  );
  return {
    card: section(
      "Train now",
      form,
      hint,
      el(
        "p",
        { class: "muted" },
        "Empty settings: the trainer's own; any one set, the others take the built-in defaults shown.",
      ),
    ),
    buffered(count) {
      // Too few examples would only be refused (422).
      button.disabled = count < MIN_EXAMPLES;
      hint.textContent =
        count < MIN_EXAMPLES
          ? `${number(count)} example(s) buffered; a run needs at least ${MIN_EXAMPLES}. Rate outputs or send corrections (POST /api/v1/feedback).`
          : `Trains on the ${number(count)} buffered example(s) now, without waiting for the batch threshold.`;
    },
    onQueued(refresh) {
      queued = refresh;
    },
  };
}

function runRequest(form) {
  const data = new FormData(form);
  const body = {};
  const model = String(data.get("base_model") ?? "").trim();
  if (model) body.base_model = model;
  const config = {};
  for (const name of ["epochs", "learning_rate", "batch_size", "max_seq_len", "rank"]) {
    const value = String(data.get(name) ?? "").trim();
    if (value !== "") config[name] = Number(value);
  }
  if (Object.keys(config).length) body.config = config;
  return body;
}

// ---- runs ----

function runTable(runs, shown) {
  return table(
    ["Run", "Model", "Trigger", "Status", "Examples", "Progress", "Loss", "Tokens/s", "Eval before → after", "Adapter", "Created"],
    runs.map((r) => {
      const p = r.progress ?? {};
      const curve = p.loss_curve ?? [];
      return el(
        "tr",
        { "data-run": r.id, class: r.id === shown ? "selected" : undefined },
        el("td", {}, el("a", { href: `#/training/${r.id}`, title: r.id }, el("code", {}, r.id.slice(-12)))),
        el("td", {}, r.base_model),
        el("td", {}, r.trigger),
        el("td", { "data-field": "status" }, badge(r.status)),
        el("td", { class: "n" }, number(r.examples), r.synthetic_examples ? el("span", { class: "muted" }, ` (${r.synthetic_examples} synthetic)`) : ""),
        el("td", {}, stepBar(p)),
        el("td", { class: "n" }, curve.length ? number(curve[curve.length - 1], 3) : "–"),
        el("td", { class: "n" }, number(r.tokens_per_sec, 1)),
        el("td", { class: "n" }, `${number(r.eval_before, 3)} → ${number(r.eval_after, 3)}`),
        el("td", {}, r.adapter_id ? el("code", {}, r.adapter_id) : ""),
        el("td", { class: "muted" }, ago(r.created_at_ms)),
      );
    }),
    "No run yet: runs start when the buffer reaches the batch threshold, or with Train now.",
  );
}

function stepBar(p) {
  if (!p.total_steps) return el("span", { class: "muted" }, "–");
  return el(
    "span",
    { class: "steps" },
    el("progress", { max: p.total_steps, value: p.step }),
    ` ${p.step}/${p.total_steps}`,
  );
}

function showRun(head, facts, chart, run) {
  if (!run) {
    head.textContent = "Loss curve";
    facts.replaceChildren(el("p", { class: "muted" }, "No run to show yet."));
    chart.show([], null);
    return;
  }
  head.replaceChildren(`Loss curve · run …${run.id.slice(-12)} `, badge(run.status));
  const p = run.progress ?? {};
  const fact = (value, label, id) => el("div", { class: "fact", id }, el("b", {}, value), el("span", {}, label));
  const took = ((run.finished_at_ms ?? Date.now()) - run.created_at_ms) / 1000;
  facts.replaceChildren(
    fact(p.total_steps ? `${p.step}/${p.total_steps}` : "–", p.epoch ? `steps · epoch ${p.epoch}` : "steps", "run-steps"),
    fact(number(run.tokens_per_sec, 1), "tokens/s", "run-tokens"),
    fact(number(run.eval_before, 3), "eval loss before", "run-eval-before"),
    fact(number(run.eval_after, 3), "eval loss after", "run-eval-after"),
    fact(`${number(p.train_examples)} / ${number(p.eval_examples)}`, "examples trained / held out"),
    fact(duration(took), run.finished_at_ms ? "took" : "so far"),
  );
  if (run.error) facts.append(el("p", { class: "error" }, run.error));
  chart.show(p.loss_curve ?? [], run);
}

/** The loss of each step, with the held-out loss before and after as
 *  dashed lines, so a falling curve can be read against what it is for. */
function lossChart(box) {
  const width = () => Math.max(240, box.clientWidth);
  const options = {
    width: width(),
    height: 220,
    scales: { x: { time: false } },
    series: [
      { label: "step" },
      { label: "training loss", stroke: "#2563eb", width: 2 },
      { label: "eval before", stroke: "#b45309", dash: [6, 4] },
      { label: "eval after", stroke: "#15803d", dash: [2, 3] },
    ],
    // Steps are whole numbers.
    axes: [{ stroke: "#888", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }, { stroke: "#888", size: 50 }],
  };
  const plot = new window.uPlot(options, [[], [], [], []], box);
  const resize = () => plot.setSize({ width: width(), height: 220 });
  addEventListener("resize", resize);
  return {
    show(curve, run) {
      const steps = curve.map((_, i) => i + 1);
      const level = (value) => steps.map(() => value ?? null);
      plot.setData([steps, curve, level(run?.eval_before), level(run?.eval_after)]);
      box.dataset.points = curve.length;
    },
    destroy() {
      removeEventListener("resize", resize);
      plot.destroy();
    },
  };
}

// ---- adapters ----

function adapterTable(adapters, refresh) {
  return table(
    ["Adapter", "Status", "Eval before", "Eval after", "Change", "Tokens/s", "Examples", "Created", ""],
    adapters.map((a) => {
      const m = a.metrics ?? {};
      const change = m.eval_before && m.eval_after !== null && m.eval_after !== undefined ? (m.eval_after - m.eval_before) / m.eval_before : null;
      return el(
        "tr",
        { "data-adapter": a.id },
        el("td", {}, el("code", {}, a.id)),
        el("td", { "data-field": "status" }, badge(a.status)),
        el("td", { class: "n" }, number(m.eval_before, 3)),
        el("td", { class: "n" }, number(m.eval_after, 3)),
        el("td", { class: "n" }, change === null ? "–" : `${change > 0 ? "+" : ""}${number(change * 100, 1)} %`),
        el("td", { class: "n" }, number(m.tokens_per_sec, 1)),
        el("td", { class: "n" }, number(m.train_examples)),
        el("td", { class: "muted" }, ago(a.created_at_ms)),
        el("td", {}, adapterButtons(a, refresh)),
      );
    }),
    "No adapter yet: each finished run publishes one.",
  );
}

function adapterButtons(adapter, refresh) {
  const path = `/api/v1/adapters/${encodeURIComponent(adapter.id)}`;
  if (adapter.status === "active") {
    return el(
      "button",
      {
        "data-action": "rollback",
        title: "Retire it: the version active before it serves again, or the base model",
        onclick: async () => {
          const done = await act("rollback", () => post(`${path}/rollback`));
          if (done) toast(`${done.retired} retired; ${done.active ? `${done.active.id} serves` : "the base model serves"} now`, "ok");
          refresh();
        },
      },
      "Roll back",
    );
  }
  return el(
    "button",
    {
      "data-action": "promote",
      title: `Serve it as ${adapter.base_model}@latest`,
      onclick: async () => {
        await act("promote", () => post(`${path}/promote`), `${adapter.id} serves as ${adapter.base_model}@latest`);
        refresh();
      },
    },
    "Promote",
  );
}
