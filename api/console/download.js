// Downloads of API files (JSON-lines exports). A plain link cannot carry
// the API key: with one set, the file is fetched with it and handed to the
// browser as a Blob instead; without one the link downloads by itself.

import { currentKey, el, toast } from "/console/core.js";

/** A link to `href` that downloads as `name`, with or without a key. */
export function downloadLink(href, name, label, attrs = {}) {
  const link = el("a", { class: "button", href, download: name, ...attrs }, label);
  link.addEventListener("click", (event) => {
    const key = currentKey();
    if (!key) return;
    event.preventDefault();
    saveWithKey(link.href, name, key);
  });
  return link;
}

async function saveWithKey(href, name, key) {
  const response = await fetch(href, { headers: { authorization: `Bearer ${key}` } }).catch(() => null);
  if (!response?.ok) {
    toast(`download: ${response ? `HTTP ${response.status}` : "the API did not answer"}`, "error");
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const save = el("a", { href: url, download: name });
  document.body.append(save);
  save.click();
  save.remove();
  // Long enough for the browser to have read it.
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
