// Mission Control in a real browser (Debian's chromium, driven by
// playwright-core) against a running API: every scenario acts through the
// console and checks the result through the API, and any error the browser
// logs fails the run. Called by tests/tests/console.rs.
//
//   node tests/console/run.mjs --base http://127.0.0.1:PORT --mode embedded|redis
//        [--key KEY] [--shots DIR] [--only NAME,...]
//
// Prints one JSON line per scenario and one with the page weights and time
// to first render; exits non-zero on the first failure.

import { chromium } from "playwright-core";
import { scenarios as core } from "./scenarios.mjs";
import { scenarios as campaignsTraining } from "./scenarios-campaigns-training.mjs";
import { scenarios as workflowsModels } from "./scenarios-workflows-models.mjs";

const scenarios = { ...core, ...workflowsModels, ...campaignsTraining };

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const base = args.base;
if (!base) {
  console.error("usage: run.mjs --base URL --mode embedded|redis [--key KEY] [--shots DIR] [--only a,b]");
  process.exit(2);
}
// Without --only: the scenarios that need nothing but the API and a noop
// worker; the page scenarios that need a model or a site name themselves.
const only = args.only ? args.only.split(",") : Object.keys(core);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});

/** What the browser reported as wrong: console errors and page errors. */
const problems = [];
/** Errors a scenario causes on purpose (a wrong key is refused with 401). */
const expected = [];
/** Answers of 400 and over, to say which request a console error was. */
const refusals = [];

async function newPage(width = 1280, height = 900) {
  const context = await browser.newContext({ viewport: { width, height } });
  const page = await context.newPage();
  page.on("console", (message) => {
    const text = message.text();
    if (message.type() === "error" && !expected.some((pattern) => pattern.test(text))) {
      problems.push(`console: ${text} (refused requests: ${refusals.join(", ") || "none"})`);
    }
  });
  page.on("response", (response) => {
    if (response.status() >= 400) refusals.push(`${response.status()} ${response.url()}`);
  });
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.setDefaultTimeout(20_000);
  return page;
}

/** The API, for arranging and checking what the console did. */
const api = async (method, path, body) => {
  const headers = { "content-type": "application/json" };
  if (args.key) headers.authorization = `Bearer ${args.key}`;
  const response = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
};

const expect = (pattern) => expected.push(pattern);
const context = { base, mode: args.mode, key: args.key, shots: args.shots, args, newPage, api, expect };
let failed = false;
for (const [name, run] of Object.entries(scenarios)) {
  if (!only.includes(name)) continue;
  const started = Date.now();
  expected.length = 0;
  try {
    const result = await run(context);
    if (problems.length) throw new Error(`the browser logged errors:\n${problems.join("\n")}`);
    console.log(JSON.stringify({ scenario: name, ok: true, ms: Date.now() - started, ...(result ?? {}) }));
  } catch (error) {
    console.log(JSON.stringify({ scenario: name, ok: false, error: String(error.stack ?? error) }));
    failed = true;
    break;
  }
}
await browser.close();
process.exit(failed ? 1 : 0);
