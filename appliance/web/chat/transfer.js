// Export and import of conversations: the versioned JSON file of docs/chat-export.md.
//
// An import is checked whole before anything is stored: every key is from a
// closed list (so "__proto__", "constructor" and friends are refused, not
// merged), every string and list is bounded, titles are plain text.  The
// stored records are built fresh from the checked values, never the parsed
// objects themselves.  Any fault: an ImportRejected naming the first problem,
// and nothing changes.

export const FORMAT = "sluice-chat-export";
export const VERSION = 1;

// Bounds, each far above what the chat itself writes.
export const LIMITS = Object.freeze({
  fileBytes: 64 * 1024 * 1024,
  conversations: 10000,
  messages: 10000,
  contentChars: 1000000,
  titleChars: 200,
  idChars: 64,
  modelChars: 256,
  systemChars: 100000,
  personas: 200,
  personaNameChars: 100,
  images: 8,
  imageChars: 8 * 1024 * 1024,
});

const ROLES = new Set(["user", "assistant"]);
const ID = /^[A-Za-z0-9_-]{1,64}$/;
// Titles are plain text the page makes from a first message, without markup characters.
const BAD_TITLE = /[<>\u0000-\u001f\u007f]/;

export class ImportRejected extends Error {}

function reject(where, why) {
  throw new ImportRejected(`${where}: ${why}`);
}

function isPlainObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value)
    && Object.getPrototypeOf(value) === Object.prototype;
}

function object(value, where, required, optional = []) {
  if (!isPlainObject(value)) reject(where, "must be an object");
  const allowed = new Set([...required, ...optional]);
  for (const key of Object.keys(value)) {
    if (!allowed.has(key)) reject(where, `unexpected field "${key.slice(0, 40)}"`);
  }
  for (const key of required) {
    if (!Object.prototype.hasOwnProperty.call(value, key)) reject(where, `missing field "${key}"`);
  }
  return value;
}

function string(value, where, max) {
  if (typeof value !== "string") reject(where, "must be text");
  if (value.length > max) reject(where, `longer than ${max} characters`);
  return value;
}

function number(value, where, min, max) {
  if (typeof value !== "number" || !Number.isFinite(value) || value < min || value > max) {
    reject(where, `must be a number from ${min} to ${max}`);
  }
  return value;
}

function list(value, where, max) {
  if (!Array.isArray(value)) reject(where, "must be a list");
  if (value.length > max) reject(where, `more than ${max} entries`);
  return value;
}

function title(value, where) {
  string(value, where, LIMITS.titleChars);
  if (BAD_TITLE.test(value)) reject(where, "titles are plain text (no markup or control characters)");
  return value;
}

const NOW_MAX = 8.64e15; // the largest JavaScript date

function settings(value, where) {
  object(value, where, [], ["system", "temperature", "max_tokens", "persona"]);
  const out = {};
  if (value.system !== undefined) out.system = string(value.system, where + ".system", LIMITS.systemChars);
  // null: "not set" (the page's defaults apply); kept as null so that a round trip changes nothing.
  if (value.temperature === null || value.max_tokens === null || value.persona === null) {
    for (const key of ["temperature", "max_tokens", "persona"]) if (value[key] === null) out[key] = null;
  }
  if (value.temperature !== undefined && value.temperature !== null) {
    out.temperature = number(value.temperature, where + ".temperature", 0, 2);
  }
  if (value.max_tokens !== undefined && value.max_tokens !== null) {
    out.max_tokens = number(value.max_tokens, where + ".max_tokens", 1, 1000000);
    if (!Number.isInteger(out.max_tokens)) reject(where + ".max_tokens", "must be a whole number");
  }
  if (value.persona !== undefined && value.persona !== null) {
    out.persona = string(value.persona, where + ".persona", LIMITS.personaNameChars);
  }
  return out;
}

function message(value, where) {
  object(value, where, ["role", "content"], ["created", "images", "stopped"]);
  if (!ROLES.has(value.role)) reject(where + ".role", 'must be "user" or "assistant"');
  const out = { role: value.role, content: string(value.content, where + ".content", LIMITS.contentChars) };
  out.created = value.created === undefined ? 0 : number(value.created, where + ".created", 0, NOW_MAX);
  if (value.images !== undefined) {
    out.images = list(value.images, where + ".images", LIMITS.images).map((image, i) => {
      string(image, `${where}.images[${i}]`, LIMITS.imageChars);
      if (!/^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/]+=*$/.test(image)) {
        reject(`${where}.images[${i}]`, "must be a base64 data: URL of a PNG, JPEG, GIF or WebP image");
      }
      return image;
    });
  }
  if (value.stopped !== undefined) {
    if (typeof value.stopped !== "boolean") reject(where + ".stopped", "must be true or false");
    out.stopped = value.stopped;
  }
  return out;
}

function conversation(value, where) {
  object(value, where, ["id", "title", "messages"], ["created", "updated", "model", "settings"]);
  const id = string(value.id, where + ".id", LIMITS.idChars);
  if (!ID.test(id)) reject(where + ".id", "letters, digits, _ and - only");
  const out = {
    id,
    title: title(value.title, where + ".title"),
    created: value.created === undefined ? 0 : number(value.created, where + ".created", 0, NOW_MAX),
    updated: value.updated === undefined ? 0 : number(value.updated, where + ".updated", 0, NOW_MAX),
    model: value.model === undefined || value.model === null ? null : string(value.model, where + ".model", LIMITS.modelChars),
    settings: value.settings === undefined ? {} : settings(value.settings, where + ".settings"),
    messages: list(value.messages, where + ".messages", LIMITS.messages).map((m, i) => message(m, `${where}.messages[${i}]`)),
  };
  return out;
}

function persona(value, where) {
  object(value, where, ["name", "system"]);
  return {
    name: title(value.name, where + ".name").slice(0, LIMITS.personaNameChars),
    system: string(value.system, where + ".system", LIMITS.systemChars),
  };
}

// The checked content of an export file's text; raises ImportRejected.
export function parseExport(text) {
  if (typeof text !== "string") reject("file", "not text");
  if (text.length > LIMITS.fileBytes) reject("file", `larger than ${LIMITS.fileBytes} bytes`);
  let data;
  try {
    data = JSON.parse(text);
  } catch {
    reject("file", "not valid JSON");
  }
  object(data, "file", ["format", "version", "conversations"], ["exported", "personas"]);
  if (data.format !== FORMAT) reject("file", `not a Sluice chat export (format must be "${FORMAT}")`);
  if (data.version !== VERSION) reject("file", `version ${String(data.version).slice(0, 20)} is not supported (this page reads version ${VERSION})`);
  if (data.exported !== undefined) string(data.exported, "file.exported", 64);
  const conversations = list(data.conversations, "conversations", LIMITS.conversations)
    .map((c, i) => conversation(c, `conversations[${i}]`));
  const ids = new Set();
  for (const c of conversations) {
    if (ids.has(c.id)) reject("conversations", `the id "${c.id}" appears twice`);
    ids.add(c.id);
  }
  const personas = data.personas === undefined ? []
    : list(data.personas, "personas", LIMITS.personas).map((p, i) => persona(p, `personas[${i}]`));
  return { conversations, personas };
}

export function buildExport(conversations, personas) {
  return {
    format: FORMAT,
    version: VERSION,
    exported: new Date().toISOString(),
    conversations: conversations.map((c) => ({
      id: c.id, title: c.title, created: c.created, updated: c.updated, model: c.model ?? null,
      settings: c.settings || {}, messages: c.messages,
    })),
    personas,
  };
}

// A title from a first message: plain text, one line, no markup characters.
export function makeTitle(text) {
  const clean = String(text).replace(/[<>\u0000-\u001f\u007f]+/g, " ").replace(/\s+/g, " ").trim();
  return (clean || "New chat").slice(0, 60);
}
