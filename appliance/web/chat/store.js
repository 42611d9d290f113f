// Conversations, personas and settings, in this browser's IndexedDB only.
//
// Two object stores: "conversations" (one record per conversation, messages
// inside) and "kv" (personas, defaults, the pinned sealing key fingerprint).
// Nothing here is ever sent to the server except the messages of the
// conversation being continued, as the request itself.

const DB_NAME = "sluice-chat";
const DB_VERSION = 1;

let opened = null;

function request(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

function open() {
  if (!opened) {
    opened = new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, DB_VERSION);
      req.onupgradeneeded = () => {
        const db = req.result;
        if (!db.objectStoreNames.contains("conversations")) {
          db.createObjectStore("conversations", { keyPath: "id" }).createIndex("updated", "updated");
        }
        if (!db.objectStoreNames.contains("kv")) db.createObjectStore("kv", { keyPath: "key" });
      };
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error("another tab is upgrading the chat's storage"));
    });
  }
  return opened;
}

async function tx(stores, mode, work) {
  const db = await open();
  return new Promise((resolve, reject) => {
    const t = db.transaction(stores, mode);
    let result;
    t.oncomplete = () => resolve(result);
    t.onerror = () => reject(t.error);
    t.onabort = () => reject(t.error || new Error("storage transaction aborted"));
    Promise.resolve(work(t)).then((value) => { result = value; }, (error) => { t.abort(); reject(error); });
  });
}

export function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function listConversations() {
  const all = await tx(["conversations"], "readonly", (t) => request(t.objectStore("conversations").getAll()));
  return all.sort((a, b) => b.updated - a.updated);
}

export function getConversation(id) {
  return tx(["conversations"], "readonly", (t) => request(t.objectStore("conversations").get(id)));
}

export function saveConversation(conversation) {
  return tx(["conversations"], "readwrite", (t) => request(t.objectStore("conversations").put(conversation)));
}

export function deleteConversation(id) {
  return tx(["conversations"], "readwrite", (t) => request(t.objectStore("conversations").delete(id)));
}

export function deleteAllConversations() {
  return tx(["conversations"], "readwrite", (t) => request(t.objectStore("conversations").clear()));
}

// Conversations and personas of an import, written in one transaction: all or nothing.
export function importAll(conversations, personas) {
  return tx(["conversations", "kv"], "readwrite", async (t) => {
    const store = t.objectStore("conversations");
    for (const conversation of conversations) store.put(conversation);
    if (personas.length) {
      const kv = t.objectStore("kv");
      const current = (await request(kv.get("personas")))?.value || [];
      const byName = new Map(current.map((p) => [p.name, p]));
      for (const persona of personas) byName.set(persona.name, persona);
      kv.put({ key: "personas", value: Array.from(byName.values()) });
    }
  });
}

export async function getValue(key, fallback) {
  const row = await tx(["kv"], "readonly", (t) => request(t.objectStore("kv").get(key)));
  return row === undefined ? fallback : row.value;
}

export function setValue(key, value) {
  return tx(["kv"], "readwrite", (t) => request(t.objectStore("kv").put({ key, value })));
}
