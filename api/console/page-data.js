// Training data: dataset generation runs (POST /api/v1/datasets), each
// generated in shards by the fleet's `datagen` workers, with their progress,
// what the filters dropped, the task families produced, downloads of the
// train and eval splits as JSON lines, and a cancel button.

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
      field("shard_size", "Shard size", { type: "number", min: 1, max: 100000, value: 10000 }),
      field("eval_fraction", "Eval share", { type: "number", min: 0, max: 0.5, step: 0.01, value: 0.05 }),
      field("seed", "Seed", { type: "number", min: 0, value: 0 }),
      el("button", { type: "submit", class: "primary" }, "Generate"),
    ),
  );
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
        el("td", { class: "actions" }, downloads(d), cancelButton(d)),
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
