// Campaigns: every data-mining campaign with its progress, a form that
// starts one of either type, and one campaign's view: progress and goals,
// the workers holding its slots, pause / resume / stop, scaling, and its
// results filtered, paged and downloaded as JSON lines.

import { act, ago, badge, duration, el, get, live, number, post, section, table, toast } from "/console/core.js";
import { downloadLink } from "/console/download.js";

export const title = "Campaigns";

/** Results per page in a campaign's view. */
const PAGE_SIZE = 50;

const TYPES = {
  seo_mining: "SEO mining: schema.org items from pages",
  storybook_discovery: "Storybook discovery: components",
};

const SYNTAXES = ["json-ld", "microdata", "rdfa", "storybook"];

export function render(main, [id]) {
  return id ? campaignView(main, id) : campaignList(main);
}

// ---- the list and the form ----

function campaignList(main) {
  const list = el("div", { id: "campaign-table" });
  main.append(el("section", { class: "card wide" }, el("h2", {}, "Campaigns"), list), createForm());
  return live(async () => {
    const listed = await get("/api/v1/campaigns").catch(() => null);
    if (listed) list.replaceChildren(campaignTable(listed.campaigns));
  });
}

function campaignTable(campaigns) {
  return table(
    ["Campaign", "Type", "Status", "Operations", "Items", "Errors", "Frontier", "Ops/s", "Workers", "Created"],
    campaigns.map((c) =>
      el(
        "tr",
        { "data-campaign": c.id },
        el("td", {}, el("a", { href: `#/campaigns/${c.id}` }, c.name)),
        el("td", {}, c.type),
        el("td", {}, badge(c.status), c.progress.goals_met ? " goals met" : ""),
        el("td", { class: "n", "data-field": "ops" }, number(c.progress.ops_done)),
        el("td", { class: "n", "data-field": "items" }, number(c.progress.items_found)),
        el("td", { class: "n" }, number(c.progress.errors)),
        el("td", { class: "n" }, number(c.progress.frontier)),
        el("td", { class: "n" }, number(c.progress.rate, 2)),
        el("td", { class: "n" }, `${c.workers.length} / ${c.resources.max_workers}`),
        el("td", { class: "muted" }, ago(c.created_at_ms)),
      ),
    ),
    "No campaign yet: start one below.",
  );
}

/** A number field; its placeholder says the default the API applies. */
function field(name, label, min, placeholder, max) {
  return el("label", {}, label, el("input", { name, type: "number", min, max, placeholder }));
}

/** Marks fields only one campaign type takes. */
function only(type, node) {
  node.dataset.only = type;
  return node;
}

function createForm() {
  const form = el(
    "form",
    {
      class: "stack",
      id: "campaign-form",
      onsubmit: (event) => {
        event.preventDefault();
        create(form);
      },
    },
    el("label", {}, "Name", el("input", { name: "name", required: true, maxlength: 200 })),
    el(
      "label",
      {},
      "Type",
      el(
        "select",
        { name: "type", onchange: () => showFieldsOf(form) },
        Object.entries(TYPES).map(([value, text]) => el("option", { value }, text)),
      ),
    ),
    el("label", {}, "Start URLs, one per line", el("textarea", { name: "urls", required: true, placeholder: "https://example.com/" })),
    only("seo_mining", el("label", {}, "Sitemaps, one per line (optional)", el("textarea", { name: "sitemaps" }))),
    el(
      "label",
      {},
      "Allow list: hosts or CIDRs of the operator's ORCH_CAMPAIGN_ALLOW it may reach, space separated (empty: all of them)",
      el("input", { name: "allow", placeholder: "10.0.0.0/8 docs.internal.test" }),
    ),
    el(
      "fieldset",
      {},
      el("legend", {}, "Crawl (empty: the default shown)"),
      el(
        "div",
        { class: "fields" },
        only("seo_mining", field("max_depth", "Max depth", 0, "2", 1000)),
        only("seo_mining", field("max_pages", "Max pages", 1, "1000")),
        field("concurrency", "Operations per worker", 1, "4", 256),
        field("per_host_concurrency", "Per host", 1, "2", 64),
        field("per_host_interval_ms", "Host interval (ms)", 0, "250", 60000),
      ),
    ),
    el(
      "fieldset",
      {},
      el("legend", {}, "Goals (it also completes when nothing is left to fetch)"),
      el(
        "div",
        { class: "fields" },
        only("seo_mining", field("min_sites", "Sites with items", 1)),
        only("seo_mining", el("label", {}, "Schema.org types, all found", el("input", { name: "schema_types", placeholder: "Product, Review" }))),
        only("storybook_discovery", field("min_components", "Components", 1)),
      ),
    ),
    el(
      "fieldset",
      {},
      el("legend", {}, "Resources"),
      el(
        "div",
        { class: "fields" },
        field("max_workers", "Workers across the fleet", 1, "1", 1000),
        field("max_memory_mb", "Memory per worker (MiB)", 16),
        field("priority", "Priority", -1000, "0", 1000),
      ),
    ),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Start campaign")),
  );
  showFieldsOf(form);
  return section("New campaign", form);
}

/** Shows the chosen type's fields; hidden ones are disabled, so not sent. */
function showFieldsOf(form) {
  const type = form.elements.type.value;
  for (const node of form.querySelectorAll("[data-only]")) {
    node.hidden = node.dataset.only !== type;
    for (const input of node.querySelectorAll("input, textarea")) input.disabled = node.hidden;
  }
}

/** The body of POST /api/v1/campaigns (CampaignRequest); empty fields are left out. */
function campaignRequest(form) {
  const data = new FormData(form);
  const text = (name) => String(data.get(name) ?? "").trim();
  const list = (name, split) => {
    const items = text(name).split(split).map((s) => s.trim()).filter(Boolean);
    return items.length ? items : undefined;
  };
  const int = (name) => (text(name) === "" ? undefined : Number(text(name)));
  return {
    name: text("name"),
    type: text("type"),
    config: {
      urls: list("urls", /\s+/) ?? [],
      sitemaps: list("sitemaps", /\s+/),
      allow: list("allow", /[\s,]+/),
      max_depth: int("max_depth"),
      max_pages: int("max_pages"),
      concurrency: int("concurrency"),
      per_host_concurrency: int("per_host_concurrency"),
      per_host_interval_ms: int("per_host_interval_ms"),
    },
    goals: { min_sites: int("min_sites"), schema_types: list("schema_types", ","), min_components: int("min_components") },
    resources: { max_workers: int("max_workers"), max_memory_mb: int("max_memory_mb") },
    priority: int("priority"),
  };
}

async function create(form) {
  const created = await act("start campaign", () => post("/api/v1/campaigns", campaignRequest(form)));
  if (!created) return;
  toast(`Campaign ${created.name} started`, "ok");
  location.hash = `#/campaigns/${created.id}`;
}

// ---- one campaign ----

function campaignView(main, id) {
  const path = `/api/v1/campaigns/${encodeURIComponent(id)}`;
  const head = el("div", { id: "campaign-head" });
  const facts = el("div", { class: "facts", id: "campaign-facts" });
  const bar = el("progress", { id: "campaign-progress", max: 1, value: 0 });
  const controls = el("div", { class: "actions", id: "campaign-actions" });
  const goals = el("div", { id: "campaign-goals" });
  const workers = el("div", { id: "campaign-workers" });
  const scale = scaleForm(path);
  const results = resultsPanel(path, id);
  main.append(
    el("section", { class: "card wide" }, el("a", { href: "#/campaigns" }, "← All campaigns"), head, facts, bar, controls),
    section("Goals", goals),
    section("Workers", scale.form, workers),
    results.card,
  );
  let shownStatus = null;
  let gone = false;
  const refresh = async () => {
    if (gone) return;
    const campaign = await get(path).catch((error) => {
      // Asked once: the next status event would only ask again.
      gone = error.status === 404;
      if (gone) head.replaceChildren(el("p", { class: "error" }, `No campaign ${id}.`));
      return null;
    });
    if (!campaign) return;
    showHead(head, campaign);
    showFacts(facts, bar, campaign);
    // Rebuilt only on a change, so a button is not swapped under the pointer.
    if (campaign.status !== shownStatus) {
      shownStatus = campaign.status;
      controls.replaceChildren(...lifecycleButtons(path, campaign, () => {
        shownStatus = null;
        refresh();
      }));
    }
    scale.show(campaign, refresh);
    goals.replaceChildren(goalList(campaign));
    workers.replaceChildren(workerTable(campaign.workers));
    results.refresh();
  };
  return live(refresh);
}

function showHead(head, c) {
  head.replaceChildren(
    el("h2", {}, `Campaign ${c.name} `, badge(c.status)),
    el("p", { class: "muted" }, `${c.type} · priority ${c.priority} · created ${ago(c.created_at_ms)}`, c.reason ? ` · ended: ${c.reason}` : ""),
  );
}

function showFacts(box, bar, c) {
  const p = c.progress;
  const fact = (value, label, id) => el("div", { class: "fact", id }, el("b", {}, value), el("span", {}, label));
  const until = c.finished_at_ms ?? Date.now();
  box.replaceChildren(
    fact(number(p.ops_done), "operations done", "fact-ops"),
    fact(number(p.items_found), "items found", "fact-items"),
    fact(number(p.errors), "errors", "fact-errors"),
    fact(number(p.admitted), "URLs admitted", "fact-admitted"),
    fact(number(p.frontier), "left to fetch", "fact-frontier"),
    fact(number(p.rate, 2), "operations/s", "fact-rate"),
    fact(`${c.workers.length} / ${c.resources.max_workers}`, "workers", "fact-workers"),
    fact(c.started_at_ms ? duration((until - c.started_at_ms) / 1000) : "–", "running for"),
  );
  // Done share of what was admitted: the frontier grows as pages link on.
  bar.max = Math.max(1, p.admitted);
  bar.value = Math.max(0, p.admitted - p.frontier);
  bar.title = `${number(bar.value)} of ${number(p.admitted)} admitted URLs done`;
}

function lifecycleButtons(path, c, changed) {
  const step = (action, label, done, kind) =>
    el(
      "button",
      {
        class: kind,
        "data-action": action,
        onclick: async () => {
          await act(action, () => post(`${path}/${action}`), `${c.name}: ${done}`);
          changed();
        },
      },
      label,
    );
  if (c.status === "pending" || c.status === "running") return [step("pause", "Pause", "paused"), step("stop", "Stop", "stopped", "danger")];
  if (c.status === "paused") return [step("resume", "Resume", "resumed", "primary"), step("stop", "Stop", "stopped", "danger")];
  return [el("span", { class: "muted" }, `Ended ${c.finished_at_ms ? ago(c.finished_at_ms) : ""}; its results stay below.`)];
}

function scaleForm(path) {
  const input = el("input", { id: "scale-workers", name: "workers", type: "number", min: 1, max: 1000, required: true });
  const button = el("button", { type: "submit" }, "Scale");
  let refresh = () => {};
  const form = el(
    "form",
    {
      class: "row",
      id: "campaign-scale",
      onsubmit: async (event) => {
        event.preventDefault();
        const workers = Number(input.value);
        const scaled = await act("scale", () => post(`${path}/scale`, { workers }), `Up to ${workers} worker(s)`);
        if (scaled) input.value = scaled.resources.max_workers;
        refresh();
      },
    },
    el("label", {}, "Workers across the fleet", input),
    button,
  );
  return {
    form,
    show(c, again) {
      refresh = again;
      // Filled once: later refreshes must not overwrite what is being typed.
      if (input.value === "") input.value = c.resources.max_workers;
      const ended = ["completed", "failed", "stopped"].includes(c.status);
      input.disabled = ended;
      button.disabled = ended;
    },
  };
}

function goalList(c) {
  const g = c.goals ?? {};
  const wanted = [
    g.min_sites !== undefined && `at least ${number(g.min_sites)} site(s) with items`,
    g.schema_types?.length && `every type of ${g.schema_types.join(", ")}`,
    g.min_components !== undefined && `at least ${number(g.min_components)} component(s)`,
  ].filter(Boolean);
  if (wanted.length === 0) return el("p", { class: "muted" }, "No goals: it runs until nothing is left to fetch.");
  return el(
    "div",
    {},
    el("ul", {}, wanted.map((goal) => el("li", {}, goal))),
    el("p", { id: "goals-state" }, c.progress.goals_met ? badge("goals met", "ok") : badge("not met yet", "pending")),
  );
}

function workerTable(workers) {
  return table(
    ["Worker", "Holds a slot since"],
    workers.map((w) => el("tr", { "data-worker": w.id }, el("td", {}, el("code", {}, w.id)), el("td", { class: "muted" }, ago(w.since_ms)))),
    "No worker holds a slot (paused, ended, or waiting for one).",
  );
}

// ---- results ----

/** Filters, cursor paging (the API pages forward; earlier cursors are kept
 *  to go back) and the JSON-lines download with the same filters. */
function resultsPanel(path, id) {
  let applied = new URLSearchParams();
  let cursors = [0];
  let shownIds = null;
  const rows = el("div", { id: "results" });
  const prev = el("button", { type: "button", id: "results-prev", disabled: true }, "← Previous");
  const next = el("button", { type: "button", id: "results-next", disabled: true }, "Next →");
  const where = el("span", { class: "muted", id: "results-page" });
  const link = downloadLink(`${path}/results?format=jsonl`, `campaign-${id}.jsonl`, "Download JSONL", { id: "results-download" });
  const filters = el(
    "form",
    {
      class: "row",
      id: "results-filter",
      onsubmit: (event) => {
        event.preventDefault();
        applied = new URLSearchParams();
        for (const [name, value] of new FormData(filters)) if (value.trim()) applied.set(name, value.trim());
        cursors = [0];
        showLink();
        load();
      },
    },
    el("label", {}, "Kind", el("input", { name: "kind", placeholder: "Product, component", size: 14 })),
    el(
      "label",
      {},
      "Syntax",
      el("select", { name: "syntax" }, el("option", { value: "" }, "any"), SYNTAXES.map((s) => el("option", { value: s }, s))),
    ),
    el("label", {}, "URL prefix", el("input", { name: "url_prefix", placeholder: "https://example.com/blog/", size: 24 })),
    el("button", { type: "submit" }, "Filter"),
    link,
  );
  const showLink = () => {
    const query = new URLSearchParams(applied);
    query.set("format", "jsonl");
    link.href = `${path}/results?${query}`;
  };
  const load = async () => {
    const query = new URLSearchParams(applied);
    const after = cursors[cursors.length - 1];
    if (after) query.set("after", after);
    query.set("limit", PAGE_SIZE);
    const page = await get(`${path}/results?${query}`).catch(() => null);
    if (!page) return;
    next.dataset.after = page.next ?? "";
    next.disabled = page.next === undefined || page.next === null;
    prev.disabled = cursors.length === 1;
    where.textContent = `page ${cursors.length}`;
    // Redrawn only when the rows change, so an opened item stays open.
    const ids = page.results.map((r) => r.id).join(",");
    if (ids !== shownIds) {
      shownIds = ids;
      rows.replaceChildren(resultTable(page.results));
    }
  };
  next.addEventListener("click", () => {
    cursors.push(Number(next.dataset.after));
    load();
  });
  prev.addEventListener("click", () => {
    cursors.pop();
    load();
  });
  showLink();
  const card = el("section", { class: "card wide" }, el("h2", {}, "Results"), filters, rows, el("div", { class: "actions" }, prev, next, where));
  return { card, refresh: load };
}

function resultTable(results) {
  return table(
    ["#", "Kind", "Syntax", "Found on", "Item", "Found"],
    results.map((r) =>
      el(
        "tr",
        { "data-result": r.id },
        el("td", { class: "n muted" }, r.id),
        el("td", { "data-field": "kind" }, r.kind),
        el("td", {}, r.syntax),
        el("td", { class: "url" }, /^https?:/i.test(r.url) ? el("a", { href: r.url, target: "_blank", rel: "noopener noreferrer" }, r.url) : r.url),
        el("td", {}, el("details", {}, el("summary", {}, itemName(r.data)), el("pre", {}, JSON.stringify(r.data, null, 2)))),
        el("td", { class: "muted" }, ago(r.found_at_ms)),
      ),
    ),
    "No results yet.",
  );
}

/** What to call an item: a schema.org item's name or headline, a
 *  component's title. */
function itemName(data) {
  const props = data?.properties ?? {};
  const name = [props.name, props.headline, data?.title].flat().find((v) => typeof v === "string");
  return name ?? "(item)";
}
