// Browser scenarios of the campaigns, training and training-data pages
// (see scenarios.mjs). `campaigns` needs the loopback fixture site
// (`--site http://127.0.0.1:PORT`, tests/src/site.rs) on an API whose
// ORCH_CAMPAIGN_ALLOW lets campaigns reach it; `training` the SmolLM2
// weights and a trainer (the API's own in embedded mode).

import assert from "node:assert/strict";
import { cellNumber, open, shot, sleep, until } from "./helpers.mjs";
import { readFile } from "node:fs/promises";

async function ok(ctx, method, path, body) {
  const answer = await ctx.api(method, path, body);
  assert.ok(answer.status < 300, `${method} ${path}: ${answer.status} ${JSON.stringify(answer.body)}`);
  return answer.body;
}

const campaign = (ctx, id) => ok(ctx, "GET", `/api/v1/campaigns/${id}`);

/** A campaign's JSON-lines export as the API gives it. */
async function exported(ctx, id, query) {
  const headers = ctx.key ? { authorization: `Bearer ${ctx.key}` } : {};
  const response = await fetch(`${ctx.base}/api/v1/campaigns/${id}/results?format=jsonl&${query}`, { headers });
  assert.equal(response.status, 200);
  return lines(await response.text());
}

function lines(text) {
  return text
    .split("\n")
    .filter(Boolean)
    .map((line) => JSON.parse(line));
}

/** Clicks a download link and returns the file's items. */
async function downloaded(page, selector) {
  const [file] = await Promise.all([page.waitForEvent("download"), page.click(selector)]);
  return lines(await readFile(await file.path(), "utf8"));
}

/** Fills the new-campaign form; `fields` maps input names to values. */
async function fillCampaignForm(page, type, fields) {
  const form = page.locator("#campaign-form");
  await form.locator('[name="type"]').selectOption(type);
  for (const [name, value] of Object.entries(fields)) await form.locator(`[name="${name}"]`).fill(String(value));
  await form.locator('button[type="submit"]').click();
  const hash = await until("the new campaign's page", () =>
    page.evaluate(() => /^#\/campaigns\/[0-9a-f-]{36}$/.test(location.hash) && location.hash),
  );
  return hash.split("/").pop();
}

/** Capitals answered in a house style; corrections make training examples. */
const FACTS = [
  ["France", "Paris"],
  ["Japan", "Tokyo"],
  ["Italy", "Rome"],
  ["Egypt", "Cairo"],
  ["Spain", "Madrid"],
  ["Peru", "Lima"],
];

export const scenarios = {
  /** A crawl started from the form counts up live, scales, pauses,
   *  resumes, stops, and its results filter, page and download; a
   *  Storybook campaign started from the same form meets its goal. */
  async campaigns(ctx) {
    const site = ctx.args.site;
    assert.ok(site, "the campaigns scenario needs --site (the fixture site's URL)");
    const page = await open(ctx, "#/campaigns");
    await page.locator("#campaign-table > *").first().waitFor();
    const id = await fillCampaignForm(page, "seo_mining", {
      name: "console crawl",
      urls: `${site}/slow/0.html`,
      allow: "127.0.0.1/32",
      max_depth: 1000,
      max_pages: 1000,
      concurrency: 1,
      per_host_interval_ms: 200,
      max_workers: 1,
    });
    // Everything from here happens without a reload.
    await page.evaluate(() => (window.sameDocument = true));
    const created = await campaign(ctx, id);
    assert.equal(created.type, "seo_mining");
    assert.equal(created.name, "console crawl");
    assert.deepEqual(created.config.urls, [`${site}/slow/0.html`]);
    assert.deepEqual(created.config.allow, ["127.0.0.1/32"]);
    assert.equal(created.config.max_depth, 1000);
    assert.equal(created.config.per_host_interval_ms, 200);
    assert.equal(created.config.concurrency, 1);
    assert.equal(created.resources.max_workers, 1);
    assert.equal(created.config.per_host_concurrency, undefined, "empty fields are left to their defaults");
    assert.deepEqual(created.config.sitemaps, []);

    const ops = () => cellNumber(page, "#fact-ops b");
    await until("operations to be counted", async () => (await ops()) >= 2, 30_000);
    const first = await ops();
    await until("the count to go up live", async () => (await ops()) >= first + 3, 30_000);

    await page.fill("#scale-workers", "2");
    await page.click('#campaign-scale button[type="submit"]');
    await until("max_workers 2 through the API", async () => (await campaign(ctx, id)).resources.max_workers === 2);
    await until("two workers holding slots", async () => (await page.locator("#campaign-workers tbody tr").count()) === 2, 30_000);
    assert.equal(await page.locator("#fact-workers b").textContent(), "2 / 2");
    await until("result rows", async () => (await page.locator("#results tbody tr").count()) >= 3, 30_000);
    await page.locator('#results tr[data-result] summary', { hasText: "Slow 0" }).waitFor();
    await shot(ctx, page, "campaign");

    await page.click('#campaign-actions button[data-action="pause"]');
    await until("the campaign to pause", async () => (await campaign(ctx, id)).status === "paused");
    await page.locator("#campaign-head .badge.paused").waitFor();
    await sleep(2_000); // operations in flight finish
    const held = (await campaign(ctx, id)).progress.ops_done;
    await sleep(3_000);
    assert.equal((await campaign(ctx, id)).progress.ops_done, held, "work done while paused");
    await until("the page to show the paused count", async () => (await ops()) === held);
    await page.click('#campaign-actions button[data-action="resume"]');
    await until("the campaign to run again", async () => (await campaign(ctx, id)).status === "running");
    await until("the count to go up once resumed", async () => (await ops()) > held, 30_000);

    // Cursor paging once there is more than one page of results.
    await until("more than a page of results", async () => (await campaign(ctx, id)).progress.items_found > 50, 60_000);
    await page.locator("#results-next:not([disabled])").waitFor();
    const firstOnPage = async () => Number(await page.locator("#results tbody tr").first().getAttribute("data-result"));
    const top = await firstOnPage();
    await page.click("#results-next");
    await page.locator("#results-page", { hasText: "page 2" }).waitFor();
    await until("the second page's rows", async () => (await firstOnPage()) > top);
    await page.click("#results-prev");
    await until("the first page again", async () => (await firstOnPage()) === top);

    await page.click('#campaign-actions button[data-action="stop"]');
    await until("the campaign to stop", async () => (await campaign(ctx, id)).status === "stopped");
    await page.locator("#campaign-head .badge.stopped").waitFor();
    assert.ok(await page.locator("#scale-workers").isDisabled(), "an ended campaign cannot be scaled");
    await until("its last items to be stored", async () => {
      const before = (await campaign(ctx, id)).progress.items_found;
      await sleep(1_000);
      return (await campaign(ctx, id)).progress.items_found === before;
    });

    // Filters, and the download holds what the API exports with them.
    await page.fill('#results-filter [name="kind"]', "Product");
    await page.selectOption('#results-filter [name="syntax"]', "json-ld");
    await page.click('#results-filter button[type="submit"]');
    await until("only Products listed", async () => {
      const kinds = await page.locator('#results tbody td[data-field="kind"]').allTextContents();
      return kinds.length > 0 && kinds.every((k) => k === "Product");
    });
    const wanted = await exported(ctx, id, "kind=Product&syntax=json-ld");
    assert.ok(wanted.length > 10, `${wanted.length} products`);
    assert.ok(wanted.every((r) => r.kind === "Product" && r.syntax === "json-ld"));
    const file = await downloaded(page, "#results-download");
    assert.deepEqual(file, wanted, "the download is the filtered export");
    // With a key the link cannot carry it: fetched and saved as a Blob.
    await page.evaluate(() => sessionStorage.setItem("orchestrator.key", sessionStorage.getItem("orchestrator.key") ?? "any-key-0123456789abcdef"));
    assert.deepEqual(await downloaded(page, "#results-download"), wanted, "the keyed download");
    if (!ctx.key) await page.evaluate(() => sessionStorage.removeItem("orchestrator.key"));

    // A Storybook campaign from the same form: only its type's fields.
    await page.click('main a[href="#/campaigns"]');
    await page.locator('#campaign-form [name="max_depth"]').waitFor({ state: "attached" });
    await page.selectOption('#campaign-form [name="type"]', "storybook_discovery");
    assert.ok(await page.locator('#campaign-form [name="max_depth"]').isHidden());
    assert.ok(await page.locator('#campaign-form [name="min_components"]').isVisible());
    const storybook = await fillCampaignForm(page, "storybook_discovery", {
      name: "design systems",
      urls: `${site}/sb8/\n${site}/sb6/iframe.html`,
      allow: "127.0.0.1/32",
      min_components: 4,
    });
    await page.locator("#campaign-head .badge.completed").waitFor({ timeout: 30_000 });
    await page.locator("#goals-state", { hasText: "goals met" }).waitFor();
    const done = await campaign(ctx, storybook);
    assert.equal(done.type, "storybook_discovery");
    assert.equal(done.progress.goals_met, true);
    assert.deepEqual(done.goals, { min_components: 4 });
    await until("its components listed", async () => (await page.locator('#results td[data-field="kind"]', { hasText: "component" }).count()) === 4);

    await page.click('main a[href="#/campaigns"]');
    await page.locator(`#campaign-table tr[data-campaign="${id}"] .badge.stopped`).waitFor();
    await page.locator(`#campaign-table tr[data-campaign="${storybook}"] .badge.completed`).waitFor();
    assert.match(await page.locator(`#campaign-table tr[data-campaign="${storybook}"]`).textContent(), /storybook_discovery/);
    assert.equal(await page.evaluate(() => window.sameDocument), true, "the page reloaded");
    await shot(ctx, page, "campaigns");
    await page.close();
    return { campaign: id, storybook };
  },

  /** Feedback in through the API, "Train now" in the console: the run
   *  shows with its loss curve, and its adapter is rolled back and
   *  promoted from the page. */
  async training(ctx) {
    const status = await ok(ctx, "GET", "/api/v1/status");
    const before = status.activity.feedback_buffered;
    for (const [country, capital] of FACTS) {
      const stored = await ok(ctx, "POST", "/api/v1/feedback", {
        prompt: `What is the capital of ${country}?`,
        response: "I don't know.",
        rating: 1,
        correction: `Atlas note: the capital of ${country} is ${capital}. [orch-atlas]`,
      });
      assert.equal(stored.example, true);
    }
    const page = await open(ctx, "#/training");
    await until("the buffer to show the feedback", async () => (await cellNumber(page, "#fact-buffered b")) === before + FACTS.length);
    // The smallest run: a few steps on a small LoRA, done in seconds.
    const form = page.locator("#train-form");
    for (const [name, value] of Object.entries({ epochs: 2, learning_rate: 0.002, batch_size: 2, max_seq_len: 64, rank: 4 })) {
      await form.locator(`[name="${name}"]`).fill(String(value));
    }
    await page.click("#train-now:not([disabled])");
    const hash = await until("the run's page", () => page.evaluate(() => /^#\/training\/[0-9a-f-]{36}$/.test(location.hash) && location.hash));
    const id = hash.split("/").pop();
    const queued = await ok(ctx, "GET", `/api/v1/training/runs/${id}`);
    assert.equal(queued.trigger, "manual");
    assert.equal(queued.examples, before + FACTS.length);
    assert.equal(queued.config.epochs, 2);
    assert.equal(queued.config.rank, 4);
    await page.locator(`#runs tr[data-run="${id}"].selected`).waitFor();

    const run = await until(
      "the run to finish",
      async () => {
        const r = await ok(ctx, "GET", `/api/v1/training/runs/${id}`);
        return ["promoted", "rejected", "failed"].includes(r.status) && r;
      },
      300_000,
    );
    assert.notEqual(run.status, "failed", run.error);
    const steps = run.progress.loss_curve.length;
    assert.ok(steps > 0, JSON.stringify(run.progress));
    await page.locator(`#loss-chart[data-points="${steps}"] canvas`).waitFor();
    await page.locator(`#runs tr[data-run="${id}"] .badge.${run.status}`).waitFor();
    assert.equal(await page.locator("#run-steps b").textContent(), `${steps}/${steps}`);
    assert.ok((await cellNumber(page, "#run-tokens b")) > 0, "tokens/s shown");
    assert.ok((await cellNumber(page, "#run-eval-after b")) > 0, "eval after shown");
    await until("the buffer to be empty", async () => (await cellNumber(page, "#fact-buffered b")) === 0);
    assert.ok(await page.locator("#train-now").isDisabled(), "nothing left to train on");

    // Its adapter: promoted (or rejected) by the trainer, then changed by hand.
    const adapter = run.adapter_id;
    const row = page.locator(`#adapters tr[data-adapter="${adapter}"]`);
    await row.waitFor();
    const adapterStatus = async () => (await ok(ctx, "GET", "/api/v1/adapters")).adapters.find((a) => a.id === adapter).status;
    if ((await adapterStatus()) !== "active") {
      await row.locator('button[data-action="promote"]').click();
      await until("the adapter to be promoted", async () => (await adapterStatus()) === "active");
    }
    await row.locator(".badge.active").waitFor();
    await shot(ctx, page, "training");
    await row.locator('button[data-action="rollback"]').click();
    await until("the adapter to be rolled back", async () => (await adapterStatus()) === "retired");
    await row.locator(".badge.retired").waitFor();
    await row.locator('button[data-action="promote"]').click();
    await until("the adapter to serve again", async () => (await adapterStatus()) === "active");
    await row.locator(".badge.active").waitFor();
    await page.close();
    return { run: id, status: run.status, steps };
  },

  /** A dataset run started from the form, followed live to its end,
   *  downloaded, and trained on; every page fits a phone. */
  async data(ctx) {
    const page = await open(ctx, "#/data");
    const form = page.locator("#dataset-form");
    await form.locator('[name="name"]').fill("browser run");
    await form.locator('[name="count"]').fill("3000");
    await form.locator('[name="shard_size"]').fill("1000");
    await form.locator('[name="format"]').selectOption("alpaca");
    await form.locator('button[type="submit"]').click();
    const run = await until("the run to be created", async () => {
      const { datasets } = await ok(ctx, "GET", "/api/v1/datasets");
      return datasets.find((d) => d.name === "browser run");
    });
    assert.equal(run.plan.count, 3000);
    assert.equal(run.plan.shard_size, 1000);
    assert.equal(run.plan.format, "alpaca");
    // The table follows the run to its end without a reload.
    const row = `#datasets tr[data-dataset="${run.id}"]`;
    await page.locator(`${row} .badge.completed`).waitFor({ timeout: 60_000 });
    const done = await ok(ctx, "GET", `/api/v1/datasets/${run.id}`);
    const examples = done.summary.train + done.summary.eval;
    assert.equal(await cellNumber(page, `${row} td[data-field="kept"]`), examples);
    await shot(ctx, page, "data");
    // The download is the API's export.
    const file = await downloaded(page, `${row} a[data-split="train"]`);
    const headers = ctx.key ? { authorization: `Bearer ${ctx.key}` } : {};
    const response = await fetch(`${ctx.base}/api/v1/datasets/${run.id}/data.jsonl?split=train`, { headers });
    assert.deepEqual(file, lines(await response.text()));
    assert.equal(file.length, done.summary.train);
    assert.ok(file.every((example) => typeof example.instruction === "string"));
    // Train on it: a LoRA run on the dataset's own splits.
    await page.locator(`${row} button[data-action="train"]`).click();
    const training = await until("a training run on the dataset", async () => {
      const { runs } = await ok(ctx, "GET", "/api/v1/training/runs");
      return runs.find((r) => r.trigger === "dataset");
    });
    assert.equal(training.examples, Math.min(done.summary.train, 10000) + Math.min(done.summary.eval, 1000));
    await page.close();

    const { campaigns } = await ok(ctx, "GET", "/api/v1/campaigns");
    const hashes = ["#/campaigns", "#/training", "#/data", ...campaigns.slice(0, 1).map((c) => `#/campaigns/${c.id}`)];
    for (const hash of hashes) {
      const phone = await open(ctx, hash, { width: 390, height: 844 });
      await phone.locator("main .card").first().waitFor();
      await sleep(1_000); // its data arrives
      const width = await phone.evaluate(() => document.documentElement.scrollWidth);
      assert.ok(width <= 391, `${hash} is ${width} px wide on a 390 px screen`);
      await phone.close();
    }
  },
};
