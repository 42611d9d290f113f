// The appliance's API, as the page calls it: the same OpenAI-compatible routes as any client.
//
// Credentials: the web session (its cookie goes along by itself) plus the
// session's CSRF token in the X-Sluice-CSRF header, which the appliance
// requires with the cookie; or, where there is no sign-in, an API key the user
// types in, kept in sessionStorage (this tab only, gone when it closes; never
// in IndexedDB or localStorage, so it does not outlive the session).

const KEY_STORAGE = "sluice.api-key";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

export const auth = {
  csrf: null,
  get apiKey() {
    return sessionStorage.getItem(KEY_STORAGE);
  },
  setApiKey(key) {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  },
};

// fetch with this page's credentials; the drop-in `fetchImpl` of sealed requests too.
export function authFetch(path, init = {}) {
  const headers = new Headers(init.headers || {});
  const key = auth.apiKey;
  if (key) headers.set("Authorization", "Bearer " + key);
  else if (auth.csrf) headers.set("X-Sluice-CSRF", auth.csrf);
  return fetch(path, { ...init, headers, credentials: "same-origin", cache: "no-store", redirect: "error" });
}

async function failure(response) {
  let code = null;
  let message = null;
  try {
    const body = await response.json();
    code = body?.error?.code ?? null;
    message = body?.error?.message ?? null;
  } catch {
    // not JSON: the status says enough
  }
  return new ApiError(response.status, code, message);
}

export async function session() {
  const response = await fetch("/account/session", { credentials: "same-origin", cache: "no-store" });
  if (response.status === 404) return { signed_in: false, sign_in: null, demo_sign_in: null, no_accounts: true };
  if (!response.ok) throw await failure(response);
  const data = await response.json();
  auth.csrf = data.signed_in ? data.csrf : null;
  return data;
}

export async function chatConfig() {
  const response = await fetch("/chat/config.json", { cache: "no-store" });
  if (!response.ok) return { max_body_bytes: 4 * 1024 * 1024, max_image_url_chars: 3 * 1024 * 1024 };
  return response.json();
}

export async function listModels() {
  const response = await authFetch("/v1/models");
  if (!response.ok) throw await failure(response);
  const body = await response.json();
  return Array.isArray(body?.data) ? body.data : [];
}

// Streams a chat completion: calls onDelta(text) per piece; resolves with {finish, usage}.
// `send` is authFetch or a sealed fetch with the same signature.
export async function streamChat(send, request, signal, onDelta) {
  const response = await send("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
    body: JSON.stringify({ ...request, stream: true }),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finish = null;
  let usage = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) !== -1) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data) continue; // a keepalive comment while the model starts
      if (data === "[DONE]") return { finish, usage };
      let chunk;
      try {
        chunk = JSON.parse(data);
      } catch {
        throw new ApiError(502, "bad_stream", "The answer stream was garbled.");
      }
      if (chunk.error) throw new ApiError(chunk.error.status || 502, chunk.error.code, chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const choice = Array.isArray(chunk.choices) ? chunk.choices[0] : null;
      if (choice?.delta && typeof choice.delta.content === "string") onDelta(choice.delta.content);
      if (choice?.finish_reason) finish = choice.finish_reason;
    }
  }
  if (finish === null) throw new ApiError(502, "stream_cut", "The answer stream ended early.");
  return { finish, usage };
}
