// Browser scenarios of the workflows and models pages (see scenarios.mjs).
// They need what tests/tests/console_workflows_models.rs starts: a registry
// with `sleepy-a` (a fake remote model answering in 3 s, so the tasks' states
// can be watched as they change) and the local `smollm2`, and a "general"
// pattern of three tasks: `left` and `right`, then `join`.

import assert from "node:assert/strict";
import { open, shot, until } from "./helpers.mjs";

/** Every text frame the page receives on websockets whose URL has `part`. */
function framesOf(page, part) {
  const frames = [];
  page.on("websocket", (socket) => {
    if (!socket.url().includes(part)) return;
    socket.on("framereceived", (frame) => frames.push({ url: socket.url(), body: JSON.parse(frame.payload) }));
  });
  return frames;
}

/** Not wider than a 390 px phone. */
async function fitsPhone(page) {
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 391, `the page is ${width} px wide on a 390 px screen`);
}

const DESCRIPTION = "a logo for a bakery";

export const scenarios = {
  /**
   * A workflow built in the form runs; its DAG is drawn and every task
   * turns done live, over the websocket, without a reload; a task's
   * details show on a click; the API agrees on the outcome.
   */
  async workflows(ctx) {
    const pack = await ctx.api("POST", "/api/v1/context-packs", {
      name: "bakery notes",
      documents: [{ source: "notes.md", text: "# Bakery\nThe bakery sells bread and cakes." }],
    });
    assert.equal(pack.status, 202, JSON.stringify(pack.body));
    const packId = pack.body.pack.id;

    const page = await open(ctx, "#/workflows");
    const frames = framesOf(page, "/ws/workflows/");
    const posted = [];
    page.on("request", (request) => {
      if (request.method() === "POST" && request.url().endsWith("/api/v1/workflows")) posted.push(request.postDataJSON());
    });
    const form = page.locator("#workflow-form");
    await form.locator('#model-choices input[value="sleepy-a"]').waitFor();
    await form.locator(`#pack-choices input[value="${packId}"]`).waitFor();
    await form.locator('textarea[name="description"]').fill(DESCRIPTION);
    await form.locator('select[name="optimization_target"]').selectOption("speed");
    await form.locator('#model-choices input[value="sleepy-a"]').check();
    await form.locator(`#pack-choices input[value="${packId}"]`).check();
    await form.locator('input[name="budget_usd"]').fill("1");
    // Gone after a reload: proof the page updated in place.
    await page.evaluate(() => {
      window.sameDocument = true;
    });
    await form.locator('button[type="submit"]').click();

    const id = await until("the workflow's page", () =>
      page.evaluate(() => location.hash.match(/^#\/workflows\/([0-9a-f-]{36})$/)?.[1]),
    );
    assert.deepEqual(posted[0], {
      description: DESCRIPTION,
      optimization_target: "speed",
      model_preferences: ["sleepy-a"],
      context_packs: [packId],
      budget_usd: 1,
    });

    // Every state each node is drawn in, until all are done.
    const nodes = "#dag svg g[data-task]";
    await until("the three tasks drawn", async () => (await page.locator(nodes).count()) === 3);
    const seen = {};
    await until(
      "every task drawn done",
      async () => {
        const drawn = await page.$$eval(nodes, (gs) => gs.map((g) => [g.dataset.task, g.getAttribute("class").split(" ")[0]]));
        for (const [task, state] of drawn) (seen[task] ??= new Set()).add(state);
        return drawn.every(([, state]) => state === "done");
      },
      60_000,
    );
    const states = Object.fromEntries(Object.entries(seen).map(([task, set]) => [task, [...set]]));
    assert.deepEqual(Object.keys(states).sort(), ["join", "left", "right"]);
    for (const [task, drawn] of Object.entries(states)) {
      assert.ok(drawn.includes("running"), `${task} was never drawn running: ${drawn}`);
    }
    assert.ok(states.join.includes("waiting"), `join was never drawn waiting: ${states.join}`);
    assert.equal(await page.evaluate(() => window.sameDocument), true, "the page was reloaded");
    await page.locator("#workflow-status .badge.completed").waitFor();

    // The states came over the workflow's websocket, to its final message.
    assert.ok(frames.length > 0, "no websocket messages");
    assert.ok(frames.every((f) => f.url.includes(`/ws/workflows/${id}`)), JSON.stringify(frames.map((f) => f.url)));
    assert.ok(frames.some((f) => f.body.type === "status_update"), "no status_update");
    const last = frames[frames.length - 1].body;
    assert.equal(last.type, "workflow_complete", JSON.stringify(last));

    // The API agrees.
    const { body: workflow } = await ctx.api("GET", `/api/v1/workflows/${id}`);
    assert.equal(workflow.status, "completed", JSON.stringify(workflow));
    assert.equal(workflow.optimization_target, "speed");
    for (const task of workflow.tasks) {
      assert.equal(task.status, "done", JSON.stringify(task));
      assert.equal(task.model, "sleepy-a", JSON.stringify(task));
    }
    assert.equal(last.result, workflow.result);
    assert.equal((await page.locator("#workflow-output").textContent()).trim(), workflow.result.trim());

    // A click on a node shows that task.
    const join = workflow.tasks.find((t) => t.name === "join");
    await page.locator(`${nodes}[data-task="join"]`).click();
    const detail = page.locator('#task-detail .task-detail[data-task="join"]');
    await detail.waitFor();
    assert.ok((await page.locator(`${nodes}[data-task="join"]`).getAttribute("class")).includes("selected"));
    assert.equal(await detail.locator("#task-model b").textContent(), "sleepy-a");
    assert.equal((await detail.locator("#task-output").textContent()).trim(), join.output.trim());
    assert.match(join.output, /answer from sleepy-a/);
    const figures = async (selector) => (await detail.locator(`${selector} b`).textContent()).replaceAll(",", "").match(/[\d.]+/g).map(Number);
    assert.deepEqual(await figures("#task-tokens"), [join.prompt_tokens, join.completion_tokens]);
    assert.deepEqual(await figures("#task-latency"), [join.latency_ms]);
    assert.ok(join.latency_ms >= 3000, `the sleepy model answered in ${join.latency_ms} ms`);
    assert.ok(join.cost > 0, JSON.stringify(join));
    assert.ok(Math.abs((await figures("#task-cost"))[0] - join.cost) < 1e-6);
    await shot(ctx, page, "workflow-dag");

    // The list of this tab's workflows, reached without a reload.
    await page.locator('nav a[data-page="workflows"]').click();
    const row = page.locator(`#recent-workflows tr[data-workflow="${id}"]`);
    await row.locator(".badge.completed").waitFor();
    assert.match(await row.textContent(), /3\/3/);
    assert.equal(await page.evaluate(() => window.sameDocument), true, "the page was reloaded");
    await page.locator('#workflow-form textarea[name="description"]').fill("Summarize the bakery notes for a flyer");
    await shot(ctx, page, "workflows");
    await page.close();

    // Both views fit a phone.
    const phone = await open(ctx, `#/workflows/${id}`, { width: 390, height: 844 });
    await phone.locator("#workflow-status .badge.completed").waitFor();
    await fitsPhone(phone);
    await phone.evaluate(() => {
      location.hash = "#/workflows";
    });
    await phone.locator("#model-choices input").first().waitFor();
    await fitsPhone(phone);
    await phone.close();
    return { workflow: id, states };
  },

  /**
   * The registry lists every model; the chat streams an answer from the
   * local model piece by piece; a thumbs-up stores it as feedback.
   */
  async models(ctx) {
    const page = await open(ctx, "#/models");
    const { body: registry } = await ctx.api("GET", "/api/v1/models");
    assert.ok(registry.models.length >= 2, JSON.stringify(registry));
    for (const model of registry.models) {
      const row = page.locator(`#model-table tr[data-model="${model.id}"]`);
      await row.waitFor();
      assert.match(await row.locator("td").nth(1).textContent(), new RegExp(model.provider));
      assert.equal(
        await row.locator('td[data-field="in_flight"]').textContent(),
        `${model.in_flight} / ${model.max_concurrency}`,
      );
    }
    await page.locator('#model-table tr[data-model="smollm2"] .badge').waitFor();
    assert.match(await page.locator('#model-table tr[data-model="sleepy-a"]').textContent(), /general/);

    const before = (await ctx.api("GET", "/api/v1/status")).body.activity.feedback_buffered;
    const chat = page.locator("#chat-form");
    await chat.locator("#chat-model").selectOption("smollm2");
    await chat.locator('input[name="max_tokens"]').fill("48");
    await chat.locator('textarea[name="content"]').fill("Name three colours of bread.");
    // The answer's length at every change, recorded in the page.
    await page.evaluate(() => {
      window.answerLengths = [];
      new MutationObserver(() => {
        const text = document.querySelector("#chat-log .message.assistant .text");
        if (text) window.answerLengths.push(text.textContent.length);
      }).observe(document.getElementById("chat-log"), { subtree: true, childList: true, characterData: true });
    });
    await chat.locator('button[type="submit"]').click();
    const answer = page.locator('#chat-log .message.assistant[data-state="done"]');
    await answer.waitFor({ timeout: 180_000 });
    const text = (await answer.locator(".text").textContent()).trim();
    assert.ok(text.length > 0, "an empty answer");
    const lengths = await page.evaluate(() => window.answerLengths);
    const steps = new Set(lengths.filter((n) => n > 0));
    assert.ok(steps.size >= 3, `the answer did not grow as it streamed: ${lengths}`);
    assert.equal(await answer.locator(".who").textContent(), "smollm2");

    await answer.locator('button[data-action="thumbs-up"]').click();
    const outcome = answer.locator(".feedback-result", { hasText: "training example" });
    await outcome.waitFor();
    assert.match(await outcome.textContent(), /smollm2/);
    assert.equal(await answer.locator('button[data-action="thumbs-down"]').isDisabled(), true);
    const after = await until("the feedback to be buffered", async () => {
      const buffered = (await ctx.api("GET", "/api/v1/status")).body.activity.feedback_buffered;
      return buffered >= before + 1 && buffered;
    });
    await shot(ctx, page, "models");
    await page.close();

    const phone = await open(ctx, "#/models", { width: 390, height: 844 });
    await phone.locator('#model-table tr[data-model="smollm2"]').waitFor();
    await fitsPhone(phone);
    await phone.close();
    return { answer_pieces: steps.size, feedback_buffered: after };
  },
};
