// Training data: dataset generation runs, each writing a file of training
// examples as JSON lines, with their progress, a download and a cancel
// button. The API gains these routes (/api/v1/datasets) in a later
// version; until its OpenAPI document lists them the page explains what
// will appear here instead of asking, because a browser logs every 404 as
// an error, even one the page expects.

import { act, ago, badge, el, get, live, number, post, table } from "/console/core.js";
import { downloadLink } from "/console/download.js";

export const title = "Training data";

const ROUTE = "/api/v1/datasets";

/** Whether the API offers the datasets routes; asked once per tab. */
let offered = null;

function datasetsOffered() {
  offered ??= get("/api/openapi.json").then(
    (doc) => Boolean(doc?.paths?.[ROUTE]),
    () => {
      offered = null;
      return false;
    },
  );
  return offered;
}

export function render(main) {
  const box = el("div", { id: "datasets" }, el("p", { class: "muted", id: "datasets-loading" }, "Loading…"));
  main.append(el("section", { class: "card wide" }, el("h2", {}, "Dataset generation runs"), box));
  let stop = null;
  let left = false;
  datasetsOffered().then((yes) => {
    if (left) return;
    if (!yes) {
      box.replaceChildren(notYet());
      return;
    }
    stop = live(async () => {
      const listed = await get(ROUTE).catch((error) => {
        if (error.code === "route_not_found") box.replaceChildren(notYet());
        return null;
      });
      if (listed) box.replaceChildren(datasetTable(listed.datasets ?? []));
    });
  });
  return () => {
    left = true;
    if (stop) stop();
  };
}

/** What the page will show once the API has dataset runs. */
function notYet() {
  return el(
    "div",
    { id: "datasets-missing" },
    el("p", {}, "This API does not generate training datasets yet: ", el("code", {}, `GET ${ROUTE}`), " is not among its routes."),
    el("p", {}, "Once it is, this page lists every dataset generation run:"),
    el(
      "ul",
      {},
      el("li", {}, "its status and progress, live;"),
      el("li", {}, "a download of the examples it wrote (", el("code", {}, "data.jsonl"), ");"),
      el("li", {}, "a cancel button while it runs."),
    ),
    el(
      "p",
      { class: "muted" },
      "Meanwhile, rated outputs and corrections already train adapters: see ",
      el("a", { href: "#/training" }, "Training"),
      ".",
    ),
  );
}

function datasetTable(datasets) {
  return table(
    ["Run", "Status", "Progress", "Examples", "Created", ""],
    datasets.map((d) =>
      el(
        "tr",
        { "data-dataset": d.id },
        el("td", {}, el("code", {}, d.id), d.name ? el("div", {}, d.name) : ""),
        el("td", {}, badge(d.status ?? "–")),
        el("td", {}, progressOf(d.progress)),
        el("td", { class: "n" }, number(d.examples ?? d.progress?.examples)),
        el("td", { class: "muted" }, d.created_at_ms ? ago(d.created_at_ms) : ""),
        el("td", { class: "actions" }, download(d), cancelButton(d)),
      ),
    ),
    "No dataset run yet.",
  );
}

function progressOf(p) {
  if (!p || !p.total) return el("span", { class: "muted" }, "–");
  return el("span", {}, el("progress", { max: p.total, value: p.done ?? 0 }), ` ${number(p.done ?? 0)}/${number(p.total)}`);
}

function download(d) {
  const href = `${ROUTE}/${encodeURIComponent(d.id)}/data.jsonl`;
  return downloadLink(href, `dataset-${d.id}.jsonl`, "data.jsonl");
}

function cancelButton(d) {
  if (!["queued", "pending", "running"].includes(d.status)) return null;
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
