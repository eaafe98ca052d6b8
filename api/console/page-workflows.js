// Workflows (the workflow builder): a request form whose answer opens the
// workflow's page; there, the decomposed plan drawn as a DAG whose tasks
// change state live over the workflow's websocket, and a task's model,
// output, tokens, cost and latency on a click.

import { act, ago, badge, currentKey, el, get, live, number, post, table } from "/console/core.js";

export const title = "Workflows";

// The API has no route listing workflows: this tab remembers the ones it
// started or opened (in sessionStorage, like the key) and lists those.
const RECENT = "orchestrator.workflows";
const RECENT_KEPT = 20;

const TARGETS = ["balanced", "speed", "cost", "quality"];

export function render(main, [id]) {
  return id ? renderWorkflow(main, id) : renderBuilder(main);
}

// ---- The builder: the form and the workflows this tab knows ----

function renderBuilder(main) {
  const recent = el("div", { id: "recent-workflows" });
  main.append(
    el("section", { class: "card wide" }, el("h2", {}, "New workflow"), builderForm()),
    el(
      "section",
      { class: "card wide" },
      el("h2", {}, "Recent workflows"),
      el("p", { class: "muted" }, "The workflows this tab started or opened (the API keeps no list to show)."),
      recent,
    ),
    openById(),
  );
  const known = new Map();
  return live(() => showRecent(recent, known));
}

function builderForm() {
  const models = el("div", { class: "choices", id: "model-choices" }, el("span", { class: "muted" }, "Loading…"));
  const packs = el("div", { class: "choices", id: "pack-choices" }, el("span", { class: "muted" }, "Loading…"));
  const order = el("p", { class: "muted", id: "model-order" });
  // Preferences are an ordered list (best first): the order they were ticked.
  const preferred = [];
  const types = el("datalist", { id: "workflow-types" });
  const form = el(
    "form",
    { class: "stack", id: "workflow-form", onsubmit: (event) => submit(event, preferred) },
    el("label", {}, "What should be done", el("textarea", { name: "description", required: true, rows: 3 })),
    el(
      "div",
      { class: "fields" },
      el("label", {}, "Type", el("input", { name: "type", list: "workflow-types", placeholder: "from the description" })),
      types,
      el("label", {}, "Optimize for", select("optimization_target", TARGETS.map((t) => [t, t]))),
      el("label", {}, "Decomposer", select("decomposer", [["patterns", "patterns"], ["model", "model plans the tasks"]])),
      el("label", {}, "Consensus", select("consensus", [["", "off"], ...[2, 3, 4, 5].map((n) => [n, `${n} models`])])),
      el("label", {}, "Budget (USD)", el("input", { name: "budget_usd", type: "number", min: "0", step: "any", placeholder: "no limit" })),
    ),
    el("fieldset", {}, el("legend", {}, "Preferred models, best first"), models, order),
    el("fieldset", {}, el("legend", {}, "Context packs"), packs),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "primary" }, "Start workflow")),
  );
  fillChoices(models, packs, types, order, preferred);
  return form;
}

function select(name, options) {
  return el("select", { name }, options.map(([value, label]) => el("option", { value }, label)));
}

async function fillChoices(models, packs, types, order, preferred) {
  const [listed, packList] = await Promise.all([
    get("/api/v1/models").catch(() => null),
    get("/api/v1/context-packs").catch(() => null),
  ]);
  const showOrder = () => {
    order.textContent = preferred.length ? `Order: ${preferred.join(", ")}` : "None: the scheduler chooses.";
  };
  const pick = (event) => {
    const id = event.target.value;
    const at = preferred.indexOf(id);
    if (event.target.checked && at < 0) preferred.push(id);
    if (!event.target.checked && at >= 0) preferred.splice(at, 1);
    showOrder();
  };
  models.replaceChildren(
    ...(listed?.models ?? []).map((m) => choice("model", m.id, `${m.id} · ${m.provider}`, pick)),
  );
  if (!listed?.models?.length) models.replaceChildren(el("span", { class: "muted" }, "No models registered."));
  showOrder();
  // Suggested types: the task types the models declare specialties for.
  const kinds = new Set((listed?.models ?? []).flatMap((m) => Object.keys(m.specialties)));
  types.replaceChildren(...[...kinds].sort().map((kind) => el("option", { value: kind })));
  const available = packList?.packs ?? [];
  packs.replaceChildren(
    ...available.map((p) => choice("pack", p.id, `${p.name} · ${p.status} · ${number(p.files)} file${p.files === 1 ? "" : "s"}`)),
  );
  if (!available.length) packs.replaceChildren(el("span", { class: "muted" }, "No context packs."));
}

function choice(name, value, label, onchange) {
  return el("label", { class: "choice" }, el("input", { type: "checkbox", name, value, onchange }), label);
}

/** The form as a `WorkflowRequest`, with only the fields that were set. */
function request(form, preferred) {
  const data = new FormData(form);
  const body = { description: data.get("description").trim() };
  const type = data.get("type").trim();
  if (type) body.type = type;
  body.optimization_target = data.get("optimization_target");
  if (data.get("decomposer") !== "patterns") body.decomposer = data.get("decomposer");
  if (preferred.length) body.model_preferences = [...preferred];
  const packs = data.getAll("pack");
  if (packs.length) body.context_packs = packs;
  if (data.get("consensus")) body.consensus = Number(data.get("consensus"));
  if (data.get("budget_usd")) body.budget_usd = Number(data.get("budget_usd"));
  return body;
}

async function submit(event, preferred) {
  event.preventDefault();
  const button = event.target.querySelector('button[type="submit"]');
  button.disabled = true;
  const body = request(event.target, preferred);
  const created = await act("workflow", () => post("/api/v1/workflows", body));
  button.disabled = false;
  if (!created) return;
  remember(created.workflow_id, body.description);
  location.hash = `#/workflows/${created.workflow_id}`;
}

function openById() {
  return el(
    "section",
    { class: "card" },
    el("h2", {}, "Open a workflow"),
    el(
      "form",
      {
        class: "row",
        onsubmit: (event) => {
          event.preventDefault();
          const id = new FormData(event.target).get("id").trim();
          location.hash = `#/workflows/${encodeURIComponent(id)}`;
        },
      },
      el("label", {}, "Workflow id", el("input", { name: "id", required: true, size: 38 })),
      el("button", { type: "submit" }, "Open"),
    ),
  );
}

function recentWorkflows() {
  try {
    return JSON.parse(sessionStorage.getItem(RECENT)) ?? [];
  } catch {
    return [];
  }
}

function remember(id, description) {
  const list = recentWorkflows().filter((w) => w.id !== id);
  list.unshift({ id, description, at: Date.now() });
  sessionStorage.setItem(RECENT, JSON.stringify(list.slice(0, RECENT_KEPT)));
}

/** The recent workflows with their state; finished ones are read once. */
async function showRecent(box, known) {
  const list = recentWorkflows();
  await Promise.all(
    list
      .filter((w) => !["completed", "failed", "missing"].includes(known.get(w.id)?.status))
      .map(async (w) => {
        const view = await get(`/api/v1/workflows/${encodeURIComponent(w.id)}`).catch((error) =>
          error.status === 404 ? { status: "missing" } : null,
        );
        if (view) known.set(w.id, view);
      }),
  );
  box.replaceChildren(
    table(
      ["Workflow", "Request", "Status", "Steps", "Cost", "Started"],
      list.map((w) => {
        const view = known.get(w.id) ?? {};
        return el(
          "tr",
          { "data-workflow": w.id },
          el("td", {}, el("a", { href: `#/workflows/${w.id}` }, el("code", {}, w.id.slice(0, 13)))),
          el("td", {}, shorten(w.description, 80)),
          el("td", {}, view.status ? badge(view.status) : "…"),
          el("td", { class: "n" }, view.total_steps ? `${view.done_steps}/${view.total_steps}` : "–"),
          el("td", { class: "n" }, view.cost === undefined ? "–" : usd(view.cost)),
          el("td", { class: "muted" }, ago(w.at)),
        );
      }),
      "None yet: start one above.",
    ),
  );
}

// ---- One workflow: facts, the DAG, the chosen task, the result ----

function renderWorkflow(main, id) {
  const facts = el("div", { class: "facts", id: "workflow-facts" });
  const progress = el("progress", { id: "workflow-progress", max: 1, value: 0 });
  const activity = el("p", { class: "muted", id: "workflow-activity" });
  const graph = el("div", { class: "graph", id: "dag" });
  const detail = el("div", { id: "task-detail" }, el("p", { class: "muted" }, "Choose a task to see its model, output, tokens, cost and latency."));
  const tasks = el("div", { id: "workflow-tasks" });
  const outcome = el("div", { id: "workflow-result" });
  const heading = el("h2", {}, "Workflow");
  main.append(
    el(
      "section",
      { class: "card wide" },
      heading,
      el("p", {}, el("a", { href: "#/workflows" }, "All workflows"), " · ", el("code", {}, id)),
      facts,
      progress,
      activity,
    ),
    el("section", { class: "card wide" }, el("h2", {}, "Plan"), graph, detail),
    el("section", { class: "card wide" }, el("h2", {}, "Tasks"), tasks),
    el("section", { class: "card wide" }, el("h2", {}, "Result"), outcome),
  );

  let left = false;
  let dag = null;
  let selected = null;
  let view = null;
  const choose = (idx) => {
    selected = idx;
    dag?.select(idx);
    detail.replaceChildren(taskDetail(view.tasks[idx]));
  };
  const load = serial(async () => {
    const read = await get(`/api/v1/workflows/${encodeURIComponent(id)}`).catch((error) => {
      facts.replaceChildren(el("p", { class: "error" }, error.message));
      return null;
    });
    if (!read || left) return false;
    view = read;
    heading.textContent = `Workflow: ${shorten(view.description, 90)}`;
    showFacts(facts, progress, view);
    // The plan never changes shape: drawn once, then only its states move.
    if (!dag) {
      dag = drawDag(view.tasks, choose);
      graph.replaceChildren(dag.svg);
    }
    dag.update(view.tasks);
    tasks.replaceChildren(taskTable(view.tasks, choose));
    if (selected !== null) detail.replaceChildren(taskDetail(view.tasks[selected]));
    outcome.replaceChildren(result(view));
    return true;
  });

  let watcher = null;
  load().then((found) => {
    if (!found || left) return;
    remember(id, view.description);
    watcher = watch(id, (message) => {
      if (message.type === "status_update") showActivity(activity, progress, message);
      if (message.type === "workflow_complete") activity.textContent = "Finished.";
      if (message.type === "error") activity.textContent = `Failed: ${message.message}`;
      // The messages carry the workflow's progress, not each task's state:
      // every one is a cue to read the workflow again.
      load();
    });
  });
  return () => {
    left = true;
    watcher?.close();
  };
}

/** Runs `work` one at a time; calls meanwhile make one more run after it. */
function serial(work) {
  let running = null;
  let again = false;
  const run = async () => {
    if (running) {
      again = true;
      return running;
    }
    running = work();
    try {
      return await running;
    } finally {
      running = null;
      if (again) {
        again = false;
        run();
      }
    }
  };
  return run;
}

/**
 * Follows GET /ws/workflows/{id} until its final message, opening it again
 * if it closes before (a restart, the idle timeout). Browsers cannot set
 * headers on a websocket: the key travels as a subprotocol.
 */
function watch(id, onMessage) {
  let socket = null;
  let finished = false;
  let closed = false;
  let retry = null;
  const open = () => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const key = currentKey();
    const protocols = key ? ["orchestrator.v1", `bearer.${key}`] : ["orchestrator.v1"];
    socket = new WebSocket(`${scheme}://${location.host}/ws/workflows/${encodeURIComponent(id)}`, protocols);
    socket.onmessage = (message) => {
      const body = JSON.parse(message.data);
      finished ||= body.type === "workflow_complete" || body.type === "error";
      onMessage(body);
    };
    socket.onclose = () => {
      socket = null;
      if (!finished && !closed) retry = setTimeout(open, 2000);
    };
    socket.onerror = () => {};
  };
  open();
  return {
    close() {
      closed = true;
      clearTimeout(retry);
      socket?.close();
    },
  };
}

function showFacts(box, progress, view) {
  const fact = (value, label, id) => el("div", { class: "fact", id }, el("b", {}, value), el("span", {}, label));
  box.replaceChildren(
    fact(badge(view.status), "status", "workflow-status"),
    fact(view.type, "type"),
    fact(view.optimization_target, "optimized for"),
    fact(`${view.done_steps} / ${view.total_steps}`, "steps done", "workflow-steps"),
    fact(usd(view.cost), "cost"),
    fact(ago(view.created_at_ms), "started"),
  );
  progress.max = Math.max(1, view.total_steps);
  progress.value = view.done_steps;
}

function showActivity(box, progress, message) {
  progress.max = Math.max(1, message.total_steps);
  progress.value = message.current_step;
  const running = message.messages?.length ? message.messages.join("; ") : "";
  const models = message.active_models?.length ? `models at work: ${message.active_models.join(", ")}` : "";
  box.textContent = [running, models].filter(Boolean).join(" · ") || `${message.current_step} of ${message.total_steps} steps done`;
}

function result(view) {
  if (view.status === "failed") return el("p", { class: "error" }, view.error ?? "The workflow failed.");
  if (view.status !== "completed") return el("p", { class: "muted" }, "Not finished yet.");
  return el("pre", { id: "workflow-output" }, view.result ?? "");
}

function taskTable(tasks, choose) {
  return table(
    ["Task", "Status", "Model", "Needs", "Tokens in / out", "Cost", "Latency"],
    tasks.map((t, idx) =>
      el(
        "tr",
        { "data-task": t.name },
        el("td", {}, el("button", { type: "button", class: "link", onclick: () => choose(idx) }, t.name)),
        el("td", {}, badge(t.status)),
        el("td", {}, t.model ?? el("span", { class: "muted" }, t.plan?.primary ? `${t.plan.primary} (planned)` : "–")),
        el("td", {}, t.depends_on.map((d) => tasks[d]?.name ?? d).join(", ")),
        el("td", { class: "n" }, `${number(t.prompt_tokens)} / ${number(t.completion_tokens)}`),
        el("td", { class: "n" }, usd(t.cost)),
        el("td", { class: "n" }, t.latency_ms ? `${number(t.latency_ms)} ms` : "–"),
      ),
    ),
  );
}

function taskDetail(task) {
  const fact = (value, label, id) => el("div", { class: "fact", id }, el("b", {}, value), el("span", {}, label));
  const attempts = Array.isArray(task.attempts) ? task.attempts : [];
  return el(
    "div",
    { class: "task-detail", "data-task": task.name },
    el("h3", {}, `Task ${task.name} `, badge(task.status)),
    el("p", { class: "muted" }, task.description),
    el(
      "div",
      { class: "facts" },
      fact(task.model ?? "–", "model", "task-model"),
      fact(`${number(task.prompt_tokens)} / ${number(task.completion_tokens)}`, "tokens in / out", "task-tokens"),
      fact(usd(task.cost), "cost", "task-cost"),
      fact(task.latency_ms ? `${number(task.latency_ms)} ms` : "–", "latency", "task-latency"),
      fact(task.task_type, "type"),
    ),
    task.error ? el("p", { class: "error" }, task.error) : null,
    el("h3", {}, "Output"),
    el("pre", { id: "task-output" }, task.output ?? "No output yet."),
    attempts.length ? el("h3", {}, "Attempts") : null,
    attempts.length
      ? el("ul", {}, attempts.map((a) => el("li", {}, `${a.model}: ${a.outcome}`, a.error || a.reason ? ` (${a.error ?? a.reason})` : "")))
      : null,
    task.validation ? el("h3", {}, "Validation") : null,
    task.validation ? el("pre", {}, JSON.stringify(task.validation, null, 2)) : null,
    task.consensus ? el("h3", {}, "Consensus") : null,
    task.consensus ? el("pre", {}, JSON.stringify(task.consensus, null, 2)) : null,
  );
}

// ---- The DAG, in SVG ----

const SVG = "http://www.w3.org/2000/svg";
const NODE_W = 180;
const NODE_H = 46;
const GAP_X = 56;
const GAP_Y = 16;
const PAD = 8;

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  node.append(...children);
  return node;
}

/** Each task's depth: 0 without dependencies, else one below its deepest. */
function depths(tasks) {
  const depth = new Array(tasks.length);
  const of = (idx, path) => {
    if (depth[idx] !== undefined) return depth[idx];
    // A cycle cannot come from the API; cut it rather than loop.
    if (path.has(idx)) return 0;
    path.add(idx);
    const deps = tasks[idx].depends_on.filter((d) => d >= 0 && d < tasks.length);
    depth[idx] = deps.length ? 1 + Math.max(...deps.map((d) => of(d, path))) : 0;
    return depth[idx];
  };
  tasks.forEach((_, idx) => of(idx, new Set()));
  return depth;
}

/** Layers left to right by depth; each layer centred on the tallest. */
function layout(tasks) {
  const depth = depths(tasks);
  const layers = [];
  depth.forEach((d, idx) => (layers[d] ??= []).push(idx));
  const rows = Math.max(1, ...layers.map((l) => l.length));
  const at = [];
  layers.forEach((layer, d) => {
    const offset = ((rows - layer.length) * (NODE_H + GAP_Y)) / 2;
    layer.forEach((idx, row) => {
      at[idx] = { x: PAD + d * (NODE_W + GAP_X), y: PAD + offset + row * (NODE_H + GAP_Y) };
    });
  });
  const width = PAD * 2 + layers.length * NODE_W + (layers.length - 1) * GAP_X;
  const height = PAD * 2 + rows * NODE_H + (rows - 1) * GAP_Y;
  return { at, width, height };
}

function drawDag(tasks, choose) {
  const { at, width, height } = layout(tasks);
  const root = svg("svg", {
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "group",
    "aria-label": "Tasks and their dependencies",
  });
  root.append(
    svg(
      "defs",
      {},
      svg(
        "marker",
        { id: "dag-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" },
        svg("path", { d: "M0,0 L10,5 L0,10 z" }),
      ),
    ),
  );
  tasks.forEach((task, idx) => {
    for (const dep of task.depends_on) {
      if (!at[dep]) continue;
      root.append(
        svg("line", {
          x1: at[dep].x + NODE_W,
          y1: at[dep].y + NODE_H / 2,
          x2: at[idx].x,
          y2: at[idx].y + NODE_H / 2,
          "marker-end": "url(#dag-arrow)",
        }),
      );
    }
  });
  const nodes = tasks.map((task, idx) => {
    const { x, y } = at[idx];
    const sub = svg("text", { x: x + 10, y: y + 36, class: "sub" });
    const node = svg(
      "g",
      { "data-task": task.name, tabindex: 0, role: "button", "aria-label": `Task ${task.name}` },
      svg("title", {}, `${task.name}: ${task.description}`),
      svg("rect", { x, y, width: NODE_W, height: NODE_H }),
      svg("text", { x: x + 10, y: y + 18, class: "name" }, shorten(task.name, 22)),
      sub,
    );
    node.addEventListener("click", () => choose(idx));
    node.addEventListener("keydown", (event) => {
      if (event.key !== "Enter" && event.key !== " ") return;
      event.preventDefault();
      choose(idx);
    });
    return { node, sub };
  });
  root.append(...nodes.map((n) => n.node));
  let selected = null;
  let states = tasks.map((t) => t.status);
  const paint = () =>
    nodes.forEach(({ node }, idx) => node.setAttribute("class", idx === selected ? `${states[idx]} selected` : states[idx]));
  return {
    svg: root,
    update(now) {
      states = now.map((t) => t.status);
      now.forEach((t, idx) => {
        nodes[idx].sub.textContent = shorten(`${t.status} · ${t.model ?? t.plan?.primary ?? "?"}`, 26);
      });
      paint();
    },
    select(idx) {
      selected = idx;
      paint();
    },
  };
}

// ---- Formatting ----

function shorten(text, most) {
  const s = String(text ?? "");
  return s.length > most ? `${s.slice(0, most - 1)}…` : s;
}

function usd(value) {
  return `$${number(value, 6)}`;
}
