// Training data: dataset generation runs (POST /api/v1/datasets), each
// generated in shards by the fleet's `datagen` workers, with their progress,
// what the filters dropped, the task families produced, downloads of the
// train and eval splits as JSON lines, a cancel button, and a button that
// starts a LoRA training run on a completed dataset.

import { act, ago, badge, el, get, live, number, post, section, table } from "/console/core.js";
import { downloadLink } from "/console/download.js";

export const title = "Training data";

const ROUTE = "/api/v1/datasets";

export function render(main) {
  const box = el("div", { id: "datasets" });
  main.append(createForm(), el("section", { class: "card wide" }, el("h2", {}, "Generation runs"), box));
  return live(async () => {
    const listed = await get(ROUTE).catch(() => null);
    if (listed) box.replaceChildren(datasetTable(listed.datasets));
  });
}

function createForm() {
  const field = (name, label, attrs) => el("label", {}, label, el("input", { name, ...attrs }));
  return section(
    "New run",
    el(
      "form",
      {
        class: "row",
        id: "dataset-form",
        onsubmit: async (event) => {
          event.preventDefault();
          const form = new FormData(event.target);
          const body = {
            name: form.get("name"),
            count: Number(form.get("count")),
            format: form.get("format"),
            seed: Number(form.get("seed") || 0),
            shard_size: Number(form.get("shard_size") || 10000),
            eval_fraction: Number(form.get("eval_fraction") || 0.05),
            sources: [source(form.get("source"), form.get("source_id").trim())],
          };
          await act("new run", () => post(ROUTE, body), `Run ${body.name} started`);
        },
      },
      field("name", "Name", { required: true, maxlength: 128, value: "synthetic tasks" }),
      field("count", "Examples", { type: "number", min: 1, max: 10000000, required: true, value: 10000 }),
      el(
        "label",
        {},
        "Format",
        el("select", { name: "format" }, ["chat", "alpaca", "completion"].map((f) => el("option", { value: f }, f))),
      ),
      el(
        "label",
        {},
        "Source",
        el(
          "select",
          { name: "source" },
          ["synthetic", "campaign", "context_pack", "workflows", "feedback"].map((s) => el("option", { value: s }, s)),
        ),
      ),
      field("source_id", "Campaign or pack id", { maxlength: 128, placeholder: "for campaign and context_pack" }),
      field("shard_size", "Shard size", { type: "number", min: 1, max: 100000, value: 10000 }),
      field("eval_fraction", "Eval share", { type: "number", min: 0, max: 0.5, step: 0.01, value: 0.05 }),
      field("seed", "Seed", { type: "number", min: 0, value: 0 }),
      el("button", { type: "submit", class: "primary" }, "Generate"),
    ),
  );
}

/** One `sources` entry; campaign and context_pack name what they read. */
function source(name, id) {
  if (name === "campaign") return { source: name, campaign: id };
  if (name === "context_pack") return { source: name, pack: id };
  return { source: name };
}

function datasetTable(datasets) {
  return table(
    ["Run", "Status", "Shards", "Kept", "Dropped", "Examples/s", "Families", "Started", ""],
    datasets.map((d) =>
      el(
        "tr",
        { "data-dataset": d.id },
        el("td", {}, el("div", {}, d.name), el("code", { class: "muted" }, d.id)),
        el("td", {}, badge(d.status)),
        el(
          "td",
          {},
          el("progress", { max: d.shards_total, value: d.shards_done }),
          ` ${number(d.shards_done)}/${number(d.shards_total)}`,
        ),
        el("td", { class: "n", "data-field": "kept" }, number(final(d))),
        el("td", { class: "muted" }, dropped(d)),
        el("td", { class: "n" }, number(d.examples_per_s)),
        el("td", { class: "muted" }, Object.keys(d.families).join(", ")),
        el("td", { class: "muted" }, ago(d.created_at_ms)),
        el("td", { class: "actions" }, downloads(d), trainButton(d), cancelButton(d)),
      ),
    ),
    "No run yet.",
  );
}

/** Examples in the dataset: after repeats across shards once complete. */
function final(d) {
  return d.summary ? d.summary.train + d.summary.eval : d.kept;
}

function dropped(d) {
  const counts = { ...d.dropped };
  if (d.summary?.duplicates_across_shards) {
    counts.duplicate = (counts.duplicate ?? 0) + d.summary.duplicates_across_shards;
  }
  const parts = Object.entries(counts).map(([filter, n]) => `${filter} ${number(n)}`);
  return parts.length ? parts.join(", ") : "none";
}

function downloads(d) {
  if (d.status === "running") return null;
  const href = (split) => `${ROUTE}/${encodeURIComponent(d.id)}/data.jsonl?split=${split}`;
  return [
    downloadLink(href("train"), `${d.name}-train.jsonl`, "train.jsonl", { "data-split": "train" }),
    downloadLink(href("eval"), `${d.name}-eval.jsonl`, "eval.jsonl", { "data-split": "eval" }),
  ];
}

function trainButton(d) {
  if (d.status !== "completed") return null;
  return el(
    "button",
    {
      "data-action": "train",
      title: "Start a LoRA training run on this dataset (train split) judged on its eval split",
      onclick: () =>
        act("train", () => post("/api/v1/training/runs", { dataset: d.id }), "Training run queued: see Training"),
    },
    "Train",
  );
}

function cancelButton(d) {
  if (d.status !== "running") return null;
  return el(
    "button",
    {
      class: "danger",
      "data-action": "cancel",
      onclick: () => act("cancel", () => post(`${ROUTE}/${encodeURIComponent(d.id)}/cancel`), "Cancelled"),
    },
    "Cancel",
  );
}
