// The chat page: wiring between the DOM, the API client, the browser store and sealing.
//
// Model text goes through markdown.js only (DOM nodes and text nodes, never
// HTML).  User text is shown with textContent.  Nothing is ever written with
// innerHTML.

import { ApiError, auth, authFetch, chatConfig, listModels, session, streamChat } from "./api.js";
import { renderMarkdown, copyText } from "./markdown.js";
import * as store from "./store.js";
import { buildExport, ImportRejected, makeTitle, parseExport } from "./transfer.js";
import { acceptFingerprint, KeyChanged, loadPinnedKey, loadSealing, pinnedFingerprint, sealedSender } from "./sealing.js";

const $ = (id) => document.getElementById(id);

const STATE_LABELS = {
  ready: "ready",
  starting: "starting",
  scaled_to_zero: "scaled to zero: a request will be held while it starts",
  unavailable: "unavailable",
};
const DEFAULT_SETTINGS = { system: "", temperature: 0.7, max_tokens: 1024, persona: null };
// How often a streaming answer is re-rendered at most (a frame).
const RENDER_INTERVAL_MS = 16;
// How often the model states are refreshed while the page is visible (a model scaled to
// zero becomes ready within a minute or two; the picker follows).
const MODELS_REFRESH_MS = 30000;

const state = {
  session: null,
  limits: { max_body_bytes: 4 * 1024 * 1024, max_image_url_chars: 3 * 1024 * 1024 },
  models: [],
  conversations: [],
  current: null,
  streaming: null,
  attachments: [],
  personas: [],
  sealing: { available: false, reason: "not checked yet", enabled: false, key: null },
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(label, onClick, className) {
  const node = el("button", className, label);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

function notice(text, kind = "error") {
  const box = $("notice");
  box.className = "notice" + (kind === "info" ? " info" : "");
  box.textContent = text;
}

function describe(error) {
  if (error instanceof ApiError) {
    if (error.status === 401) return "You are not signed in (or your session ended): sign in again.";
    if (error.status === 403) return "The appliance refused this request: " + error.message;
    if (error.status === 429) return "Rate limit or quota reached: " + error.message;
    if (error.status === 413) return "The request is too large for this service.";
    return `The request failed (${error.status}${error.code ? ", " + error.code : ""}): ${error.message}`;
  }
  return "The request failed: " + (error?.message || String(error));
}

function confirmDialog(text, okLabel) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  dialog.showModal();
  $("confirm-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
  });
}

// -- account and sign-in ---------------------------------------------------------------

function hiddenInput(name, value) {
  const input = el("input");
  input.type = "hidden";
  input.name = name;
  input.value = value;
  return input;
}

function renderAccount() {
  const account = $("account");
  account.replaceChildren();
  const info = state.session;
  const signIn = $("sign-in");
  const actions = $("sign-in-actions");
  actions.replaceChildren();
  if (info?.signed_in) {
    account.append(el("span", "who", info.display || info.user));
    const form = el("form");
    form.method = "post";
    form.action = info.sign_out;
    form.append(hiddenInput("csrf", info.csrf));
    const out = el("button", null, "Sign out");
    out.type = "submit";
    out.id = "sign-out";
    form.append(out);
    account.append(form);
    signIn.hidden = true;
    return;
  }
  if (auth.apiKey) {
    account.append(el("span", "who", "Using an API key"));
    signIn.hidden = true;
    return;
  }
  signIn.hidden = false;
  if (info?.demo_sign_in) {
    const form = el("form");
    form.method = "post";
    form.action = info.demo_sign_in;
    const go = el("button", "primary", "Sign in to the demo");
    go.type = "submit";
    go.id = "demo-sign-in";
    form.append(go);
    actions.append(form);
  }
  if (info?.sign_in) {
    const link = el("a", "button primary", "Sign in with your institution");
    link.href = info.sign_in;
    link.id = "sign-in-link";
    actions.append(link);
  }
  actions.append(button("Use an API key", () => openSettings($("api-key"))));
}

// -- models -------------------------------------------------------------------------------

function chatModels() {
  return state.models.filter((m) => !Array.isArray(m.routes) || m.routes.includes("chat"));
}

function renderModels() {
  const select = $("model");
  const wanted = state.current?.model || select.value;
  select.replaceChildren();
  const models = chatModels();
  if (!models.length) {
    const signedIn = state.session?.signed_in || auth.apiKey;
    const option = el("option", null, signedIn ? "No models available" : "Sign in to see the models");
    option.value = "";
    select.append(option);
  }
  for (const model of models) {
    const label = STATE_LABELS[model.status] || "state unknown";
    const option = el("option", null, `${model.id} (${model.status === "scaled_to_zero" ? "scaled to zero" : label})`);
    option.value = model.id;
    select.append(option);
  }
  if (models.some((m) => m.id === wanted)) select.value = wanted;
  renderModelState();
}

function renderModelState() {
  const model = state.models.find((m) => m.id === $("model").value);
  const node = $("model-state");
  node.className = "model-state " + (model?.status || "");
  if (!model) {
    node.textContent = "";
    return;
  }
  let text = STATE_LABELS[model.status] || "state unknown";
  if (model.status === "ready" && Number.isInteger(model.ready_instances)) {
    text += ` · ${model.ready_instances} instance${model.ready_instances === 1 ? "" : "s"}`;
  }
  node.textContent = text;
}

async function loadModels() {
  try {
    state.models = await listModels();
    renderModels();
  } catch (error) {
    state.models = [];
    renderModels();
    notice(describe(error));
  }
}

// -- conversations ------------------------------------------------------------------------

function newConversation() {
  const now = Date.now();
  return {
    id: store.newId(), title: "New chat", created: now, updated: now, model: $("model").value || null,
    settings: { ...DEFAULT_SETTINGS, ...(state.defaults || {}) }, messages: [],
  };
}

async function refreshList() {
  state.conversations = await store.listConversations();
  renderList();
}

function matches(conversation, query) {
  if (!query) return true;
  const q = query.toLowerCase();
  return conversation.title.toLowerCase().includes(q)
    || conversation.messages.some((m) => m.content.toLowerCase().includes(q));
}

function renderList() {
  const list = $("conversation-list");
  list.replaceChildren();
  const query = $("search").value.trim();
  const shown = state.conversations.filter((c) => matches(c, query));
  if (!shown.length) {
    list.append(el("li", "hint", query ? "No conversation matches." : "No conversations yet."));
    return;
  }
  for (const conversation of shown) {
    const item = el("li");
    item.dataset.id = conversation.id;
    if (state.current?.id === conversation.id) item.className = "current";
    const open = button(conversation.title, () => openConversation(conversation.id), "open");
    if (state.current?.id === conversation.id) open.setAttribute("aria-current", "page");
    const rename = button("Rename", () => startRename(item, conversation), "small");
    rename.setAttribute("aria-label", "Rename " + conversation.title);
    const remove = button("Delete", () => removeConversation(conversation), "small");
    remove.setAttribute("aria-label", "Delete " + conversation.title);
    const actions = el("span", "actions");
    actions.append(rename, remove);
    item.append(open, actions);
    list.append(item);
  }
}

function startRename(item, conversation) {
  item.replaceChildren();
  const input = el("input");
  input.type = "text";
  input.value = conversation.title;
  input.maxLength = 60;
  input.setAttribute("aria-label", "New title");
  const finish = async (save) => {
    if (save) {
      conversation.title = makeTitle(input.value);
      await store.saveConversation(conversation);
      if (state.current?.id === conversation.id) state.current.title = conversation.title;
    }
    await refreshList();
    $("conversation-list").querySelector(`li[data-id="${conversation.id}"] .open`)?.focus();
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") finish(true);
    if (event.key === "Escape") finish(false);
  });
  item.append(input, button("Save", () => finish(true), "small"), button("Cancel", () => finish(false), "small"));
  input.focus();
  input.select();
}

async function removeConversation(conversation) {
  if (!(await confirmDialog(`Delete "${conversation.title}"? This cannot be undone.`, "Delete"))) return;
  await store.deleteConversation(conversation.id);
  if (state.current?.id === conversation.id) startNew();
  await refreshList();
  $("search").focus();
}

async function openConversation(id) {
  if (state.streaming) stopStreaming();
  const conversation = await store.getConversation(id);
  if (!conversation) return;
  state.current = conversation;
  await store.setValue("last", id);
  renderConversation();
  renderList();
  closeSidebar();
  $("composer-input").focus();
}

function startNew() {
  if (state.streaming) stopStreaming();
  state.current = newConversation();
  renderConversation();
  renderList();
  closeSidebar();
  $("composer-input").focus();
}

function renderConversation() {
  const conversation = state.current;
  if (conversation.model && chatModels().some((m) => m.id === conversation.model)) $("model").value = conversation.model;
  renderModelState();
  renderSettings();
  renderMessages();
}

// -- messages -------------------------------------------------------------------------------

function renderMessages() {
  const container = $("messages");
  container.replaceChildren();
  const messages = state.current.messages;
  if (!messages.length) {
    const empty = el("div", "empty");
    empty.append(el("h2", null, "What can I help with?"), el("p", null, "Answers stream from models on your institution's cluster."));
    container.append(empty);
    return;
  }
  messages.forEach((message, index) => container.append(messageNode(message, index)));
  container.scrollTop = container.scrollHeight;
}

function fillBubble(bubble, message) {
  bubble.replaceChildren();
  if (message.role === "user") {
    if (message.images?.length) {
      const images = el("div", "images");
      message.images.forEach((src, i) => {
        const img = el("img");
        img.src = src; // the user's own attachment, a data: URL
        img.alt = `Attached image ${i + 1}`;
        images.append(img);
      });
      bubble.append(images);
    }
    bubble.append(document.createTextNode(message.content));
  } else {
    bubble.append(renderMarkdown(message.content));
  }
}

function messageNode(message, index) {
  const article = el("article", "message " + message.role);
  article.dataset.index = String(index);
  article.append(el("h2", null, message.role === "user" ? "You" : "Assistant"));
  const bubble = el("div", "bubble");
  fillBubble(bubble, message);
  article.append(bubble);
  if (message.stopped) article.append(el("p", "status", "Stopped."));
  const actions = el("div", "message-actions");
  const last = index === state.current.messages.length - 1;
  actions.append(button("Copy", (event) => copyText(message.content, event.currentTarget)));
  if (message.role === "user") {
    actions.append(button("Edit", () => startEdit(article, index)));
  } else if (last) {
    actions.append(button("Regenerate", regenerate));
  }
  for (const action of actions.children) action.setAttribute("aria-label", `${action.textContent} ${message.role === "user" ? "your message" : "answer"} ${index + 1}`);
  article.append(actions);
  return article;
}

function startEdit(article, index) {
  if (state.streaming) return;
  const message = state.current.messages[index];
  const bubble = article.querySelector(".bubble");
  const box = el("div", "edit-box");
  const area = el("textarea");
  area.value = message.content;
  area.setAttribute("aria-label", "Edit your message");
  const row = el("div", "row end");
  row.append(button("Cancel", () => renderMessages()), button("Save and send", async () => {
    const text = area.value.trim();
    if (!text) return;
    state.current.messages = state.current.messages.slice(0, index);
    state.current.messages.push({ ...message, content: text, created: Date.now() });
    await generate();
  }, "primary"));
  box.append(area, row);
  bubble.replaceWith(box);
  article.querySelector(".message-actions")?.remove();
  area.focus();
}

function requestMessages() {
  const conversation = state.current;
  const out = [];
  if (conversation.settings.system) out.push({ role: "system", content: conversation.settings.system });
  for (const message of conversation.messages) {
    if (message.role === "user" && message.images?.length) {
      out.push({
        role: "user",
        content: [{ type: "text", text: message.content },
          ...message.images.map((url) => ({ type: "image_url", image_url: { url } }))],
      });
    } else {
      out.push({ role: message.role, content: message.content });
    }
  }
  return out;
}

async function sender() {
  if (!state.sealing.enabled) return authFetch;
  if (!state.sealing.key) await enableSealing();
  if (!state.sealing.key) throw new Error("sealing is on but the cluster's key is not trusted: " + state.sealing.reason);
  return sealedSender(state.sealing.key, authFetch);
}

async function generate() {
  const conversation = state.current;
  const model = $("model").value;
  if (!model) {
    notice("Pick a model first.");
    return;
  }
  notice("");
  conversation.model = model;
  conversation.updated = Date.now();
  const answer = { role: "assistant", content: "", created: Date.now() };
  const body = {
    model, messages: requestMessages(),
    max_tokens: conversation.settings.max_tokens || DEFAULT_SETTINGS.max_tokens,
    temperature: conversation.settings.temperature ?? DEFAULT_SETTINGS.temperature,
  };
  const size = new TextEncoder().encode(JSON.stringify(body)).length;
  if (size > state.limits.max_body_bytes) {
    notice(`This conversation is ${(size / 1048576).toFixed(1)} MB as a request; this service accepts at most ${(state.limits.max_body_bytes / 1048576).toFixed(1)} MB. Start a new chat or remove images.`);
    renderMessages();
    return;
  }
  conversation.messages.push(answer);
  // Not awaited: the request goes out at once; IndexedDB runs this write before the later ones.
  store.saveConversation(conversation).then(refreshList, (error) => notice("Could not save: " + error.message));
  renderMessages();
  const article = $("messages").lastElementChild;
  const bubble = article.querySelector(".bubble");
  bubble.classList.add("typing");
  article.querySelector(".message-actions").hidden = true;
  const controller = new AbortController();
  state.streaming = { controller, answer };
  setStreaming(true);
  count("started");
  let pending = false;
  const paint = () => {
    pending = false;
    const box = $("messages");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 80;
    fillBubble(bubble, answer);
    if (atBottom) box.scrollTop = box.scrollHeight;
  };
  let failure = null;
  try {
    const send = await sender();
    await streamChat(send, body, controller.signal, (piece) => {
      const first = !answer.content;
      answer.content += piece;
      if (first) paint(); // the first token at once; then at most one render a frame
      else if (!pending) {
        pending = true;
        setTimeout(paint, RENDER_INTERVAL_MS);
      }
    });
  } catch (error) {
    if (error?.name === "AbortError" || controller.signal.aborted) answer.stopped = true;
    else failure = error;
  } finally {
    state.streaming = null;
    setStreaming(false);
  }
  if (failure && !answer.content) {
    conversation.messages.pop();
    notice(describe(failure));
  } else if (failure) {
    answer.stopped = true;
    notice(describe(failure));
  }
  conversation.updated = Date.now();
  if (state.current === conversation) renderMessages();
  await store.saveConversation(conversation);
  await refreshList();
  if (state.current === conversation) $("composer-input").focus();
  count("finished");
}

// Answers started and finished, on <body> (as data-ready is): what tests and benchmarks wait for.
function count(name) {
  document.body.dataset[name] = String(Number(document.body.dataset[name] || 0) + 1);
}

function setStreaming(on) {
  $("send").hidden = on;
  $("stop").hidden = !on;
  $("messages").setAttribute("aria-busy", on ? "true" : "false");
  if (on) $("stop").focus({ preventScroll: true });
}

function stopStreaming() {
  state.streaming?.controller.abort();
}

async function regenerate() {
  if (state.streaming) return;
  const messages = state.current.messages;
  if (messages.length && messages[messages.length - 1].role === "assistant") messages.pop();
  await generate();
}

async function submit(event) {
  event.preventDefault();
  if (state.streaming) return;
  const input = $("composer-input");
  const text = input.value.trim();
  if (!text && !state.attachments.length) return;
  const conversation = state.current;
  const message = { role: "user", content: text, created: Date.now() };
  if (state.attachments.length) message.images = state.attachments.map((a) => a.url);
  if (!conversation.messages.length) conversation.title = makeTitle(text || "Image");
  conversation.messages.push(message);
  input.value = "";
  autosize();
  state.attachments = [];
  renderAttachments();
  store.setValue("last", conversation.id).catch(() => {});
  await generate();
}

// -- attachments ----------------------------------------------------------------------------

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function megabytes(n) {
  return (n / 1048576).toFixed(1) + " MB";
}

async function attach(file) {
  if (!/^image\/(png|jpeg|gif|webp)$/.test(file.type)) {
    notice("Only PNG, JPEG, GIF and WebP images can be attached.");
    return;
  }
  const url = await readAsDataUrl(file);
  const limit = state.limits.max_image_url_chars;
  if (url.length > limit) {
    notice(`"${file.name}" is ${megabytes(url.length)} once encoded; this service accepts images up to ${megabytes(limit)} encoded (about ${megabytes(limit * 3 / 4)} as a file).`);
    return;
  }
  const total = state.attachments.reduce((n, a) => n + a.url.length, 0) + url.length;
  if (total > state.limits.max_body_bytes) {
    notice(`These images together are ${megabytes(total)}; a request may be at most ${megabytes(state.limits.max_body_bytes)}.`);
    return;
  }
  notice("");
  state.attachments.push({ name: file.name, url });
  renderAttachments();
}

function renderAttachments() {
  const box = $("attachments");
  box.replaceChildren();
  state.attachments.forEach((attachment, i) => {
    const item = el("div", "attachment");
    const img = el("img");
    img.src = attachment.url;
    img.alt = attachment.name;
    item.append(img, button("Remove", () => {
      state.attachments.splice(i, 1);
      renderAttachments();
      $("composer-input").focus();
    }, "small"));
    item.lastChild.setAttribute("aria-label", "Remove " + attachment.name);
    box.append(item);
  });
}

function modelTakesImages() {
  const model = state.models.find((m) => m.id === $("model").value);
  return !model || !Array.isArray(model.routes) || model.routes.includes("chat");
}

// -- settings and personas ------------------------------------------------------------------

function renderSettings() {
  const s = { ...DEFAULT_SETTINGS, ...state.current.settings };
  $("system").value = s.system || "";
  $("temperature").value = String(s.temperature);
  $("temperature-value").textContent = String(s.temperature);
  $("max-tokens").value = String(s.max_tokens);
  const persona = $("persona");
  persona.replaceChildren();
  const none = el("option", null, "None");
  none.value = "";
  persona.append(none);
  for (const p of state.personas) {
    const option = el("option", null, p.name);
    option.value = p.name;
    persona.append(option);
  }
  persona.value = state.personas.some((p) => p.name === s.persona) ? s.persona : "";
}

async function saveSettings() {
  const conversation = state.current;
  const temperature = Number($("temperature").value);
  const maxTokens = Math.trunc(Number($("max-tokens").value));
  conversation.settings = {
    system: $("system").value,
    temperature: Number.isFinite(temperature) ? Math.min(2, Math.max(0, temperature)) : DEFAULT_SETTINGS.temperature,
    max_tokens: Number.isFinite(maxTokens) && maxTokens >= 1 ? Math.min(maxTokens, 1000000) : DEFAULT_SETTINGS.max_tokens,
    persona: $("persona").value || null,
  };
  $("temperature-value").textContent = String(conversation.settings.temperature);
  state.defaults = { temperature: conversation.settings.temperature, max_tokens: conversation.settings.max_tokens };
  await store.setValue("defaults", state.defaults);
  if (conversation.messages.length) await store.saveConversation(conversation);
}

async function savePersona() {
  const name = makeTitle($("persona-name").value).slice(0, 100);
  if (!$("persona-name").value.trim()) {
    notice("Give the persona a name first.");
    $("persona-name").focus();
    return;
  }
  state.personas = state.personas.filter((p) => p.name !== name);
  state.personas.push({ name, system: $("system").value });
  await store.setValue("personas", state.personas);
  state.current.settings.persona = name;
  renderSettings();
  notice(`Saved the persona "${name}".`, "info");
}

async function deletePersona() {
  const name = $("persona").value;
  if (!name) return;
  state.personas = state.personas.filter((p) => p.name !== name);
  await store.setValue("personas", state.personas);
  state.current.settings.persona = null;
  renderSettings();
  await saveSettings();
}

async function choosePersona() {
  const persona = state.personas.find((p) => p.name === $("persona").value);
  if (persona) {
    $("system").value = persona.system;
    $("persona-name").value = persona.name;
  }
  await saveSettings();
}

function openSettings(focus) {
  $("settings").hidden = false;
  $("settings-toggle").setAttribute("aria-expanded", "true");
  (focus || $("persona")).focus();
}

function toggleSettings() {
  if ($("settings").hidden) openSettings();
  else {
    $("settings").hidden = true;
    $("settings-toggle").setAttribute("aria-expanded", "false");
  }
}

// -- sealing ----------------------------------------------------------------------------------

function renderPrivacy() {
  const privacy = $("privacy");
  const text = $("privacy-text");
  text.replaceChildren();
  if (state.sealing.enabled && state.sealing.key) {
    privacy.classList.add("sealed");
    text.append("Stored only in this browser · Sealed to the cluster: the gateway sees only ciphertext · key ");
    text.append(el("code", null, state.sealing.key.fingerprint));
  } else {
    privacy.classList.remove("sealed");
    text.append("Stored only in this browser · Not sealed: the gateway sees requests in the clear");
  }
}

async function enableSealing() {
  const status = $("sealing-status");
  const loaded = await loadSealing();
  state.sealing.available = loaded.ok;
  if (!loaded.ok) {
    state.sealing.reason = loaded.reason;
    state.sealing.enabled = false;
    $("sealed").checked = false;
    status.textContent = "Sealing unavailable: " + loaded.reason + ".";
    renderPrivacy();
    return;
  }
  try {
    const { key, firstUse } = await loadPinnedKey(authFetch);
    state.sealing.key = key;
    state.sealing.enabled = true;
    $("key-changed").hidden = true;
    status.textContent = (firstUse ? "Pinned the cluster's key on first use: " : "The cluster's key matches the pinned one: ") + key.fingerprint;
  } catch (error) {
    state.sealing.key = null;
    state.sealing.enabled = false;
    $("sealed").checked = false;
    if (error instanceof KeyChanged) {
      state.sealing.reason = "the key changed";
      $("key-pinned").textContent = error.pinned;
      $("key-offered").textContent = error.offered;
      $("key-changed").hidden = false;
      $("accept-key").dataset.fingerprint = error.offered;
      status.textContent = "Sealing refused: the cluster's key is not the pinned one.";
      notice("Sealing refused: the cluster's key changed. See Settings.");
    } else {
      state.sealing.reason = describe(error);
      status.textContent = "Sealing unavailable: " + describe(error);
    }
  }
  await store.setValue("sealed", state.sealing.enabled);
  renderPrivacy();
}

async function toggleSealing() {
  if ($("sealed").checked) {
    await enableSealing();
  } else {
    state.sealing.enabled = false;
    state.sealing.key = null;
    $("sealing-status").textContent = "Requests are sent in the clear to the appliance (over its HTTPS).";
    await store.setValue("sealed", false);
    renderPrivacy();
  }
}

async function acceptKey() {
  const fingerprint = $("accept-key").dataset.fingerprint;
  if (!fingerprint) return;
  await acceptFingerprint(fingerprint);
  $("key-changed").hidden = true;
  $("sealed").checked = true;
  notice("");
  await enableSealing();
}

async function checkSealingAvailable() {
  const loaded = await loadSealing();
  const pinned = await pinnedFingerprint();
  if (!loaded.ok) {
    $("sealed").disabled = true;
    $("sealing-status").textContent = "Sealing unavailable: " + loaded.reason + ".";
  } else {
    $("sealing-status").textContent = pinned ? "Pinned key: " + pinned : "The cluster's key is pinned on first use.";
    if (await store.getValue("sealed", false)) {
      $("sealed").checked = true;
      await enableSealing();
    }
  }
  renderPrivacy();
}

// -- export and import ------------------------------------------------------------------------

async function exportAll() {
  const conversations = await store.listConversations();
  const data = JSON.stringify(buildExport(conversations, state.personas), null, 1);
  const url = URL.createObjectURL(new Blob([data], { type: "application/json" }));
  const link = el("a");
  link.href = url;
  link.download = `sluice-chat-${new Date().toISOString().slice(0, 10)}.json`;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
  notice(`Exported ${conversations.length} conversation${conversations.length === 1 ? "" : "s"}.`, "info");
}

async function importFile(file) {
  let parsed;
  try {
    if (file.size > 64 * 1024 * 1024) throw new ImportRejected("file: larger than 64 MB");
    parsed = parseExport(await file.text());
  } catch (error) {
    const why = error instanceof ImportRejected ? error.message : "the file could not be read";
    notice("Import refused, nothing was changed: " + why);
    return;
  }
  await store.importAll(parsed.conversations, parsed.personas);
  state.personas = await store.getValue("personas", []);
  await refreshList();
  renderSettings();
  notice(`Imported ${parsed.conversations.length} conversation${parsed.conversations.length === 1 ? "" : "s"}.`, "info");
}

async function deleteAll() {
  if (!(await confirmDialog("Delete every conversation stored in this browser? This cannot be undone.", "Delete all"))) return;
  if (state.streaming) stopStreaming();
  await store.deleteAllConversations();
  startNew();
  await refreshList();
  notice("Deleted all conversations.", "info");
}

// -- layout ------------------------------------------------------------------------------------

function openSidebar() {
  $("sidebar").classList.add("open");
  $("scrim").hidden = false;
  $("open-sidebar").setAttribute("aria-expanded", "true");
  $("new-chat").focus();
}

function closeSidebar() {
  if (!$("sidebar").classList.contains("open")) return;
  $("sidebar").classList.remove("open");
  $("scrim").hidden = true;
  $("open-sidebar").setAttribute("aria-expanded", "false");
}

function autosize() {
  const input = $("composer-input");
  input.style.height = "auto";
  input.style.height = Math.min(input.scrollHeight, window.innerHeight * 0.4) + "px";
}

function wire() {
  $("composer").addEventListener("submit", submit);
  $("composer-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("composer-input").addEventListener("input", autosize);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.streaming) stopStreaming();
    if (event.key === "Escape") closeSidebar();
  });
  $("stop").addEventListener("click", stopStreaming);
  $("new-chat").addEventListener("click", startNew);
  $("search").addEventListener("input", renderList);
  $("model").addEventListener("change", () => {
    renderModelState();
    if (state.current) state.current.model = $("model").value;
  });
  $("settings-toggle").addEventListener("click", toggleSettings);
  for (const id of ["system", "temperature", "max-tokens"]) $(id).addEventListener("change", saveSettings);
  $("temperature").addEventListener("input", () => { $("temperature-value").textContent = $("temperature").value; });
  $("persona").addEventListener("change", choosePersona);
  $("save-persona").addEventListener("click", savePersona);
  $("delete-persona").addEventListener("click", deletePersona);
  $("sealed").addEventListener("change", toggleSealing);
  $("accept-key").addEventListener("click", acceptKey);
  $("export").addEventListener("click", exportAll);
  $("import").addEventListener("click", () => $("import-file").click());
  $("import-file").addEventListener("change", async () => {
    const file = $("import-file").files[0];
    $("import-file").value = "";
    if (file) await importFile(file);
  });
  $("delete-all").addEventListener("click", deleteAll);
  $("attach").addEventListener("click", () => {
    if (!modelTakesImages()) {
      notice("This model does not take images.");
      return;
    }
    $("attach-file").click();
  });
  $("attach-file").addEventListener("change", async () => {
    const files = Array.from($("attach-file").files);
    $("attach-file").value = "";
    for (const file of files) await attach(file);
  });
  $("open-sidebar").addEventListener("click", openSidebar);
  $("close-sidebar").addEventListener("click", () => {
    closeSidebar();
    $("open-sidebar").focus();
  });
  $("scrim").addEventListener("click", closeSidebar);
  $("api-key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    auth.setApiKey(key);
    $("api-key").value = "";
    renderAccount();
    await loadModels();
    notice("Using the API key for this tab.", "info");
  });
  $("forget-api-key").addEventListener("click", async () => {
    auth.setApiKey(null);
    renderAccount();
    if (state.session?.signed_in) await loadModels();
    else {
      state.models = [];
      renderModels();
    }
  });
}

async function main() {
  wire();
  state.limits = await chatConfig();
  state.personas = await store.getValue("personas", []);
  state.defaults = await store.getValue("defaults", {});
  try {
    state.session = await session();
  } catch (error) {
    state.session = null;
    notice(describe(error));
  }
  renderAccount();
  if (state.session?.signed_in || auth.apiKey) await loadModels();
  else renderModels();
  await refreshList();
  const last = await store.getValue("last", null);
  const found = last && state.conversations.find((c) => c.id === last);
  state.current = found ? await store.getConversation(last) : newConversation();
  renderConversation();
  renderList();
  await checkSealingAvailable();
  setInterval(() => {
    if (document.visibilityState === "visible" && !state.streaming && (state.session?.signed_in || auth.apiKey)) {
      loadModels();
    }
  }, MODELS_REFRESH_MS);
  document.body.dataset.ready = "true"; // for tests: the page finished starting
}

main().catch((error) => notice("The chat could not start: " + (error?.message || String(error))));
