// What every scenario file uses: opening a page signed in, screenshots,
// waiting for a condition, reading a number off the page.

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A page opened on `hash`, signed in when the API has keys; `before`
 *  runs on the page before it loads (to watch its requests). */
export async function open(ctx, hash, { width, height, before } = {}) {
  const page = await ctx.newPage(width, height);
  if (ctx.key) {
    await page.addInitScript((key) => sessionStorage.setItem("orchestrator.key", key), ctx.key);
  }
  if (before) before(page);
  await page.goto(`${ctx.base}/${hash}`);
  return page;
}

export async function shot(ctx, page, name) {
  if (ctx.shots) await page.screenshot({ path: `${ctx.shots}/${name}.png`, fullPage: true });
}

/** Polls `check` until it gives something truthy, which it returns. */
export async function until(what, check, within = 20_000) {
  const deadline = Date.now() + within;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** The number shown in the first element `selector` finds. */
export async function cellNumber(page, selector) {
  const text = await page.locator(selector).first().textContent();
  return Number(text.replaceAll(",", ""));
}
