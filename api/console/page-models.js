// Models: the registry with each model's state and live load, and a chat
// with any of them over the OpenAI-compatible endpoint, streamed as the
// tokens come, whose answers can be rated (feedback that trains the local
// models).
//
// The scheduler's history (success and latency per model and task type) has
// no public route, so the scores shown are the registry's specialties.

import { ApiError, askForKey, badge, currentKey, el, get, live, number, post, table } from "/console/core.js";

export const title = "Models";

export function render(main) {
  const registry = el("div", { id: "model-table" });
  const chat = chatBox();
  main.append(
    el(
      "section",
      { class: "card wide" },
      el("h2", {}, "Registry"),
      el("p", { class: "muted" }, "Scores are each model's specialties from the registry (0 to 1); in flight counts workflow tasks across the fleet."),
      registry,
    ),
    chat.card,
  );
  // Model states come with the status events; kept between them.
  let states = new Map();
  const refresh = async (status) => {
    status ??= await get("/api/v1/status").catch(() => null);
    if (status) states = modelStates(status);
    const listed = await get("/api/v1/models").catch(() => null);
    if (!listed) return;
    registry.replaceChildren(modelTable(listed.models, states));
    chat.setModels(listed.models);
  };
  const stop = live(refresh);
  return () => {
    stop();
    chat.stop();
  };
}

/** `model:<id>` subsystems of a status snapshot: loaded, idle, reachable... */
function modelStates(status) {
  const states = new Map();
  for (const s of status.subsystems) {
    if (s.name.startsWith("model:")) states.set(s.name.slice("model:".length), s);
  }
  return states;
}

function modelTable(models, states) {
  return table(
    ["Model", "Provider", "State", "Scores", "In flight", "USD/1k in · out", "Context", "Timeout"],
    models.map((m) => {
      const state = states.get(m.id);
      return el(
        "tr",
        { "data-model": m.id },
        el("td", {}, el("code", {}, m.id), el("div", { class: "muted" }, m.file ?? m.base_url ?? "", m.model ? ` · ${m.model}` : "")),
        el("td", {}, m.provider),
        el("td", { title: state?.error ?? "" }, state ? badge(state.state) : "–"),
        el("td", {}, specialties(m.specialties)),
        el("td", { class: "n", "data-field": "in_flight" }, `${number(m.in_flight)} / ${number(m.max_concurrency)}`),
        el("td", { class: "n" }, `${number(m.cost_per_1k_input, 5)} · ${number(m.cost_per_1k_output, 5)}`),
        el("td", { class: "n" }, number(m.context_window)),
        el("td", { class: "n" }, `${number(m.timeout_s)} s`),
      );
    }),
    "No models registered.",
  );
}

function specialties(scores) {
  const sorted = Object.entries(scores).sort((a, b) => b[1] - a[1]);
  if (!sorted.length) return el("span", { class: "muted" }, "none declared");
  return el(
    "div",
    { class: "specialties" },
    sorted.map(([kind, score]) =>
      el("span", { class: "specialty" }, kind, " ", el("meter", { min: 0, max: 1, value: score }), " ", number(score, 2)),
    ),
  );
}

// ---- The chat ----

function chatBox() {
  const log = el("div", { class: "chat", id: "chat-log" });
  const model = el("select", { name: "model", id: "chat-model", required: true });
  const send = el("button", { type: "submit", class: "primary" }, "Send");
  // The conversation so far, sent with every question.
  const history = [];
  let registry = [];
  let controller = null;
  const form = el(
    "form",
    { class: "stack", id: "chat-form", onsubmit: (event) => ask(event) },
    el(
      "div",
      { class: "fields" },
      el("label", {}, "Model", model),
      el("label", {}, "Max tokens", el("input", { name: "max_tokens", type: "number", min: 1, max: 4096, value: 128 })),
    ),
    el("label", {}, "Message", el("textarea", { name: "content", required: true, rows: 3 })),
    el(
      "div",
      { class: "actions" },
      send,
      el(
        "button",
        {
          type: "button",
          onclick: () => {
            controller?.abort();
            history.length = 0;
            log.replaceChildren();
          },
        },
        "New conversation",
      ),
    ),
  );

  const ask = async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const content = data.get("content").trim();
    if (!content) return;
    history.push({ role: "user", content });
    const who = el("div", { class: "muted who" }, data.get("model"));
    const text = el("div", { class: "text" });
    const answer = el("div", { class: "message assistant", "data-state": "streaming" }, who, text);
    log.append(el("div", { class: "message user" }, content), answer);
    form.elements.content.value = "";
    send.disabled = true;
    controller = new AbortController();
    const body = {
      model: data.get("model"),
      messages: [...history],
      max_tokens: Number(data.get("max_tokens")) || 128,
      stream: true,
    };
    try {
      const served = await streamChat(body, controller.signal, (piece, by) => {
        who.textContent = by;
        text.append(piece);
      });
      history.push({ role: "assistant", content: text.textContent });
      answer.dataset.state = "done";
      if (text.textContent.trim()) answer.append(rating(served, content, text.textContent, registry));
    } catch (error) {
      // Left the page or cleared the conversation: nothing to report.
      if (error.name === "AbortError") return;
      history.pop();
      answer.dataset.state = "failed";
      answer.append(el("p", { class: "error" }, error.message));
    } finally {
      send.disabled = false;
    }
  };

  return {
    card: el("section", { class: "card wide" }, el("h2", {}, "Chat"), log, form),
    setModels(models) {
      registry = models;
      const ids = models.map((m) => m.id);
      const shown = [...model.options].map((o) => o.value);
      // Rebuilt only when the registry changed, so a choice stays chosen.
      if (ids.join("\n") === shown.join("\n")) return;
      const chosen = model.value;
      model.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
      if (ids.includes(chosen)) model.value = chosen;
    },
    stop() {
      controller?.abort();
    },
  };
}

/**
 * POSTs a streamed chat completion and reads its server-sent events as they
 * come, calling `onPiece(text, model)` for each piece of the answer. Returns
 * the model that answered. A 401 asks for a key and tries again.
 */
async function streamChat(body, signal, onPiece) {
  const headers = { "content-type": "application/json" };
  const key = currentKey();
  if (key) headers.authorization = `Bearer ${key}`;
  const response = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body), signal });
  if (response.status === 401) {
    await askForKey();
    return streamChat(body, signal, onPiece);
  }
  if (!response.ok) {
    const data = await response.json().catch(() => null);
    throw new ApiError(response.status, data?.error?.code, data?.error?.message);
  }
  let served = body.model;
  let buffer = "";
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return served;
    buffer += value;
    const lines = buffer.split("\n");
    // The last piece may be half a line: kept for the next read.
    buffer = lines.pop();
    for (const line of lines) {
      const data = line.replace(/\r$/, "");
      if (!data.startsWith("data:")) continue;
      const payload = data.slice("data:".length).trim();
      if (payload === "[DONE]") return served;
      const chunk = JSON.parse(payload);
      // The model failed after the stream began (the status was sent).
      if (chunk.error) throw new ApiError(response.status, chunk.error.code, chunk.error.message);
      served = chunk.model ?? served;
      const piece = chunk.choices?.[0]?.delta?.content;
      if (piece) onPiece(piece, served);
    }
  }
}

/**
 * Thumbs up (rating 5) or down (rating 1) for one answer, as feedback. Only
 * local models are fine-tuned here: for a remote model's answer the API
 * picks the local model that learns from it.
 */
function rating(model, prompt, response, registry) {
  const base = model.split("@")[0];
  const local = registry.find((m) => m.id === base)?.provider === "local";
  const outcome = el("span", { class: "muted feedback-result" });
  const rate = async (value, button) => {
    up.disabled = down.disabled = true;
    const body = { prompt, response, rating: value };
    if (local) body.model = base;
    try {
      const stored = await post("/api/v1/feedback", body);
      button.setAttribute("aria-pressed", "true");
      outcome.className = "muted feedback-result";
      outcome.textContent = stored.example
        ? `Kept as a training example for ${stored.base_model} (${number(stored.buffered)} waiting for a run).`
        : `Noted for ${stored.base_model}; not a training example.`;
    } catch (error) {
      up.disabled = down.disabled = false;
      outcome.className = "error feedback-result";
      outcome.textContent = `Feedback: ${error.message}`;
    }
  };
  const up = el(
    "button",
    { type: "button", "data-action": "thumbs-up", title: "Good answer (rating 5)", "aria-label": "Good answer", onclick: () => rate(5, up) },
    // Words and plain triangles: emoji may have no font to show in.
    "▲ Good",
  );
  const down = el(
    "button",
    { type: "button", "data-action": "thumbs-down", title: "Bad answer (rating 1)", "aria-label": "Bad answer", onclick: () => rate(1, down) },
    "▼ Bad",
  );
  return el("div", { class: "actions feedback" }, up, down, outcome);
}
