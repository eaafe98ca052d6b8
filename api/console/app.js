// Mission Control's router: one page per hash route (#/overview, ...),
// each a module with render(main) returning a function that cleans up.

import * as campaigns from "/console/page-campaigns.js";
import * as data from "/console/page-data.js";
import * as models from "/console/page-models.js";
import * as overview from "/console/page-overview.js";
import * as queues from "/console/page-queues.js";
import * as training from "/console/page-training.js";
import * as workflows from "/console/page-workflows.js";
import { onEvent } from "/console/core.js";

const pages = { overview, queues, workflows, models, campaigns, training, data };
let leave = null;

function route() {
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const page = pages[name] ? name : "overview";
  if (leave) leave();
  const main = document.getElementById("page");
  main.replaceChildren();
  document.title = `${pages[page].title} · Mission Control`;
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", link.dataset.page === page);
  }
  leave = pages[page].render(main, rest.map(decodeURIComponent)) || null;
}

function theme() {
  const saved = localStorage.getItem("orchestrator.theme");
  if (saved) document.documentElement.dataset.theme = saved;
  document.getElementById("theme").addEventListener("click", () => {
    const dark = matchMedia("(prefers-color-scheme: dark)").matches;
    const now = document.documentElement.dataset.theme || (dark ? "dark" : "light");
    const next = now === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("orchestrator.theme", next);
  });
}

// The system state in the header, from every status event.
onEvent((event) => {
  if (event.type !== "status") return;
  const state = document.getElementById("system-state");
  state.textContent = event.data.system.state;
  state.className = `state ${event.data.system.state}`;
});

theme();
addEventListener("hashchange", route);
route();
