// ferry's translation page: talks to the LibreTranslate-compatible API of the server that served it.
"use strict";

const $ = (id) => document.getElementById(id);
const q = $("q"), source = $("source"), target = $("target"), translateButton = $("translate");
const translation = $("translation"), error = $("error"), count = $("count"), detected = $("detected");
const swap = $("swap"), copy = $("copy"), apiKey = $("api_key"), status = $("status");

let languages = [];          // [{code, name, targets}] from GET languages
let charLimit = 0;           // characters per text (0: unknown)
let pending = null;          // AbortController of the request in flight

const nameOf = (code) => (languages.find((l) => l.code === code) || { name: code }).name;

function showError(message) {
  error.textContent = message;
  error.hidden = !message;
}

function option(value, label) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = label;
  return o;
}

function fillTargets() {
  const keep = target.value;
  let codes;
  if (source.value === "auto") {
    codes = [...new Set(languages.flatMap((l) => l.targets))];
  } else {
    codes = (languages.find((l) => l.code === source.value) || { targets: [] }).targets;
  }
  target.replaceChildren(...codes.map((c) => option(c, nameOf(c))));
  if (codes.includes(keep)) target.value = keep;
  updateSwap();
}

function updateSwap() {
  const reverse = languages.find((l) => l.code === target.value);
  swap.disabled = source.value === "auto" || !reverse || !reverse.targets.includes(source.value);
}

function updateCount() {
  const n = q.value.length;
  count.textContent = charLimit ? `${n} / ${charLimit}` : `${n}`;
  count.classList.toggle("over", charLimit > 0 && n > charLimit);
}

async function load() {
  try {
    const settings = await (await fetch("frontend/settings")).json();
    charLimit = settings.charLimit || 0;
    $("key-field").hidden = !settings.keyRequired;
    const response = await fetch("languages");
    if (!response.ok) throw new Error(`GET languages answered ${response.status}`);
    languages = await response.json();
  } catch (e) {
    showError(`Cannot reach the translation server: ${e.message}`);
    return;
  }
  for (const l of languages) if (l.targets.length) source.append(option(l.code, l.name));
  // Start from the first hosted pair rather than "auto" when detection is not needed.
  const first = languages.find((l) => l.targets.length);
  if (first) source.value = first.code;
  fillTargets();
  updateCount();
}

async function translate() {
  const text = q.value;
  showError("");
  if (!text.trim()) {
    translation.textContent = "";
    copy.disabled = true;
    detected.hidden = true;
    return;
  }
  if (pending) pending.abort();
  const controller = new AbortController();
  pending = controller;
  translateButton.disabled = true;
  status.textContent = "Translating…";
  const body = { q: text, source: source.value, target: target.value, format: "text" };
  if (apiKey.value) body.api_key = apiKey.value;
  try {
    const response = await fetch("translate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    let data;
    try {
      data = await response.json();
    } catch {
      data = { error: `the server answered ${response.status} ${response.statusText}` };
    }
    if (!response.ok) {
      showError(data.error || `the server answered ${response.status}`);
      return;
    }
    translation.textContent = data.translatedText;
    copy.disabled = !data.translatedText;
    if (data.detectedLanguage) {
      const d = data.detectedLanguage;
      detected.textContent = `Detected: ${nameOf(d.language)} (${Math.round(d.confidence)}%)`;
      detected.hidden = false;
    } else {
      detected.hidden = true;
    }
  } catch (e) {
    if (e.name !== "AbortError") showError(`Cannot reach the translation server: ${e.message}`);
  } finally {
    if (pending === controller) {
      pending = null;
      translateButton.disabled = false;
      status.textContent = "";
    }
  }
}

source.addEventListener("change", () => {
  detected.hidden = true;
  fillTargets();
});
target.addEventListener("change", updateSwap);
q.addEventListener("input", updateCount);
q.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    translate();
  }
});
translateButton.addEventListener("click", translate);
swap.addEventListener("click", () => {
  const from = source.value, to = target.value;
  source.value = to;
  fillTargets();
  target.value = from;
  updateSwap();
  if (translation.textContent) {
    q.value = translation.textContent;
    translation.textContent = "";
    copy.disabled = true;
    updateCount();
  }
});
copy.addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(translation.textContent);
    copy.textContent = "Copied";
  } catch {
    // Clipboard API unavailable (plain http on another host): select the text instead.
    const range = document.createRange();
    range.selectNodeContents(translation);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    document.execCommand("copy");
    copy.textContent = "Copied";
  }
  setTimeout(() => (copy.textContent = "Copy"), 1500);
});

load();
