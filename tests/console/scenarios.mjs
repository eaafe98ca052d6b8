// What the browser tests do, one function per scenario. Each opens pages
// through the console, acts as an operator would, and checks the outcome
// through the API. `ctx` is { base, mode, key, shots, args, newPage, api,
// expect } (expect(pattern): a browser error the scenario causes on purpose).

import assert from "node:assert/strict";
import { cellNumber, open, shot, sleep, until } from "./helpers.mjs";

async function push(ctx, job) {
  const answer = await ctx.api("POST", "/api/v1/jobs", job);
  assert.equal(answer.status, 202, JSON.stringify(answer.body));
  return answer.body.id;
}

export const scenarios = {
  /** Counts change without a reload as jobs are done. */
  async overview(ctx) {
    const page = await open(ctx, "#/overview");
    await page.locator("#fact-state b", { hasText: "running" }).waitFor();
    await page.locator("#throughput-chart canvas").waitFor();
    const row = '#queues tr[data-queue="noop"] td[data-field="done"]';
    await page.locator(row).waitFor();
    const before = await cellNumber(page, row);
    for (let i = 0; i < 25; i++) await push(ctx, { queue: "noop", payload: {} });
    await until("the overview to count 25 more done jobs", async () => (await cellNumber(page, row)) >= before + 25);
    await page.locator("#fleet tbody tr").first().waitFor();
    await shot(ctx, page, "overview");
    await page.close();
  },

  /** Pausing a queue from the console makes pushes wait; resuming runs them. */
  async queues(ctx) {
    const page = await open(ctx, "#/queues");
    const row = page.locator('#queue-table tr[data-queue="noop"]');
    await row.locator('button[data-action="pause"]').click();
    await until("noop to be paused", async () => {
      const { body } = await ctx.api("GET", "/api/v1/queues");
      return body.queues.find((q) => q.name === "noop").paused;
    });
    await row.locator('button[data-action="resume"]').waitFor();
    const id = await push(ctx, { queue: "noop", payload: {} });
    await sleep(1_500);
    const waiting = await ctx.api("GET", `/api/v1/jobs/${id}`);
    assert.equal(waiting.body.status, "pending", "a paused queue ran a job");
    await until("the waiting job to show", async () => (await cellNumber(page, '#queue-table tr[data-queue="noop"] td[data-field="pending"]')) >= 1);
    await shot(ctx, page, "queues");
    await row.locator('button[data-action="resume"]').click();
    await until("the job to run once resumed", async () => (await ctx.api("GET", `/api/v1/jobs/${id}`)).body.status === "done");
    await page.close();
  },

  /** A dead job shows with its error and is requeued from the console. */
  async dead(ctx) {
    const id = await push(ctx, { queue: "noop", payload: { fail_attempts: 1 }, max_attempts: 1 });
    await until("the job to die", async () => (await ctx.api("GET", `/api/v1/jobs/${id}`)).body.status === "dead");
    const page = await open(ctx, "#/queues/noop");
    const row = page.locator(`#dead-jobs tr[data-job="${id}"]`);
    await row.waitFor();
    assert.match(await row.textContent(), /fail/i);
    await shot(ctx, page, "queue-detail");
    const before = (await ctx.api("GET", `/api/v1/jobs/${id}`)).body;
    await row.locator('button[data-action="requeue"]').click();
    // Requeued with its attempts reset, it runs again (and fails again: its
    // payload fails every first attempt).
    await until("the requeued job to run again", async () => {
      const job = (await ctx.api("GET", `/api/v1/jobs/${id}`)).body;
      return job.updated_at_ms > before.updated_at_ms && job.status === "dead" && job.attempts === 1;
    });
    await page.close();
  },

  /** With keys set the console asks for one and does nothing without it. */
  async key(ctx) {
    if (!ctx.key) return { skipped: "no keys on this API" };
    const page = await ctx.newPage();
    await page.goto(`${ctx.base}/#/queues`);
    const dialog = page.locator("#key-dialog[open]");
    await dialog.waitFor();
    assert.equal(await page.locator("#queue-table table").count(), 0, "queues shown without a key");
    // The browser logs the refusal of the wrong key; that one is expected.
    ctx.expect(/status of 401/);
    await page.fill("#key-input", "not-the-key-0123456789");
    await page.click('#key-form button[type="submit"]');
    await page.locator("#key-error:not([hidden])").waitFor();
    await shot(ctx, page, "key");
    await page.fill("#key-input", ctx.key);
    await page.click('#key-form button[type="submit"]');
    await page.locator('#queue-table tr[data-queue="noop"]').waitFor();
    await page.close();
  },

  /** A 390 px phone: nothing wider than the screen. */
  async phone(ctx) {
    const page = await open(ctx, "#/overview", { width: 390, height: 844 });
    await page.locator("#fact-state b", { hasText: "running" }).waitFor();
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 391, `the page is ${width} px wide on a 390 px screen`);
    await shot(ctx, page, "overview-phone");
    await page.close();
  },

  /** Page weight and time to first render, as the browser measured them. */
  async weight(ctx) {
    const page = await open(ctx, "#/overview");
    await page.locator("#fact-state b", { hasText: "running" }).waitFor();
    const measured = await page.evaluate(() => {
      const paint = performance.getEntriesByName("first-contentful-paint")[0];
      const resources = performance.getEntriesByType("resource").filter((r) => r.name.includes("/console/"));
      const navigation = performance.getEntriesByType("navigation")[0];
      return {
        first_contentful_paint_ms: Math.round(paint?.startTime ?? -1),
        dom_content_loaded_ms: Math.round(navigation.domContentLoadedEventEnd),
        console_files: resources.length + 1,
        console_bytes: resources.reduce((sum, r) => sum + r.decodedBodySize, navigation.decodedBodySize),
      };
    });
    assert.ok(measured.first_contentful_paint_ms > 0, JSON.stringify(measured));
    await page.close();
    return measured;
  },
};
