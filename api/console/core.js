// What every page of Mission Control shares: the API client (every action
// the console takes is a public API call), the key prompt, the live event
// socket, and small DOM and formatting helpers.

const KEY = "orchestrator.key";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

export function currentKey() {
  return sessionStorage.getItem(KEY);
}

let asking = null;

/** Shows the key dialog until a key the API accepts is given. */
export function askForKey() {
  if (asking) return asking;
  const dialog = document.getElementById("key-dialog");
  const input = document.getElementById("key-input");
  const error = document.getElementById("key-error");
  asking = new Promise((resolve) => {
    const form = document.getElementById("key-form");
    form.onsubmit = async (event) => {
      event.preventDefault();
      const candidate = input.value.trim();
      const answer = await fetch("/api/v1/fleet", {
        headers: { authorization: `Bearer ${candidate}` },
      });
      if (answer.status === 401) {
        error.textContent = "That key is not one of ORCH_API_KEYS.";
        error.hidden = false;
        return;
      }
      sessionStorage.setItem(KEY, candidate);
      error.hidden = true;
      input.value = "";
      dialog.close();
      asking = null;
      reconnectEvents();
      resolve(candidate);
    };
  });
  if (!dialog.open) dialog.showModal();
  input.focus();
  return asking;
}

// With keys set, the key is asked for before the first call (GET /health
// says whether they are), so the console is not refused first.
const signedIn = fetch("/health")
  .then((answer) => answer.json())
  .then((health) => (health.auth_required && !currentKey() ? askForKey() : null))
  .catch(() => null);

/** Calls the API; a 401 asks for a key and tries again. */
export async function api(method, path, body) {
  await signedIn;
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  const key = currentKey();
  if (key) headers.authorization = `Bearer ${key}`;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    await askForKey();
    return api(method, path, body);
  }
  const text = await response.text();
  let data = text;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON (a JSONL download): the text itself.
  }
  if (!response.ok) {
    throw new ApiError(response.status, data?.error?.code, data?.error?.message ?? text);
  }
  // The API answers this tab: the event socket can open without a refusal.
  answered = true;
  if (listeners.size > 0) connectEvents();
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body ?? {});
export const patch = (path, body) => api("PATCH", path, body);

/** Builds an element: el("td", {class: "n"}, "text", child...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A table with a header row and one row per item. */
export function table(columns, rows, empty = "Nothing here yet.") {
  if (rows.length === 0) return el("p", { class: "muted" }, empty);
  return el(
    "div",
    { class: "table-wrap" },
    el(
      "table",
      {},
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c)))),
      el("tbody", {}, rows),
    ),
  );
}

export function section(title, ...children) {
  return el("section", { class: "card" }, el("h2", {}, title), ...children);
}

export function number(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits });
}

export function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

export function ago(ms) {
  return `${duration(Math.max(0, (Date.now() - ms) / 1000))} ago`;
}

export function bytes(n) {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(0)} MiB`;
  return `${(n / 1024).toFixed(0)} KiB`;
}

export function badge(text, kind = text) {
  return el("span", { class: `badge ${kind}` }, text);
}

export function toast(message, kind = "info") {
  const box = el("div", { class: `toast ${kind}` }, message);
  document.getElementById("toasts").append(box);
  setTimeout(() => box.remove(), 5000);
}

/** Runs an action, reporting its error (or success) in a toast. */
export async function act(what, action, done) {
  try {
    const result = await action();
    if (done) toast(done, "ok");
    return result;
  } catch (error) {
    toast(`${what}: ${error.message}`, "error");
    return undefined;
  }
}

// The live event socket (GET /ws/events), shared by every page. Browsers
// cannot set headers on a websocket: the key travels as a subprotocol.
const listeners = new Set();
let socket = null;
let retry = 500;
let answered = false;

export function onEvent(listener) {
  listeners.add(listener);
  connectEvents();
  return () => listeners.delete(listener);
}

function connectEvents() {
  // Not before an API call went through: with keys set and none given yet
  // the handshake would only be refused.
  if (socket || !answered) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const key = currentKey();
  const protocols = key ? ["orchestrator.v1", `bearer.${key}`] : ["orchestrator.v1"];
  socket = new WebSocket(`${scheme}://${location.host}/ws/events`, protocols);
  socket.onopen = () => {
    retry = 500;
  };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    for (const listener of listeners) listener(event);
  };
  socket.onclose = () => {
    socket = null;
    setTimeout(connectEvents, retry);
    retry = Math.min(retry * 2, 10000);
  };
  // A refused handshake (no key yet) closes it; onclose retries.
  socket.onerror = () => {};
}

function reconnectEvents() {
  if (socket) {
    socket.onclose = null;
    socket.close();
    socket = null;
  }
  retry = 500;
  if (listeners.size > 0) connectEvents();
}

/** Calls `refresh` now and on every status event until the page leaves. */
export function live(refresh) {
  refresh();
  return onEvent((event) => {
    if (event.type === "status") refresh(event.data);
  });
}
