// Sealed requests from the browser: the chat page's prompts and answers, end-to-end encrypted to the gate.
//
// The same formats as sluice_sdk's transport (sluice_sdk/transport.py): the
// JSON body becomes the content of a Binary HTTP request (RFC 9292) for
// https://sluice/v1/..., dated and padded to a multiple of 1 KiB, and is
// encapsulated (RFC 9458, or chunked OHTTP when the body says "stream": true)
// to the gate's key; it goes to /v1/sealed/... with only the model
// (Sluice-Model), the media type and what fetchImpl adds (the sign-in) in the
// clear.  The answer is opened and handed back as a standard Response with the
// inner status and content-type; a streamed answer is opened chunk by chunk as
// it arrives.  Plain ES modules on WebCrypto only: no dependency, no build step.
//
// Trust: the key configuration comes from /v1/sealed/keys through the
// appliance, which is not trusted; the page pins its fingerprint (the SDK's
// KeyConfig.fingerprint: SHA-256 of the encoding) and refuses a change until
// the user accepts it.  sealedFetch checks that the configuration it is given
// is the one the fingerprint names.  Honest limit: the page's code comes from
// the appliance too (see docs/sealed.md and threat_model/limitations.md).
//
// Failing closed: an answer is either a 200 of the expected sealed media type,
// which is opened (any failure to authenticate or decode it rejects with, or
// errors the body stream with, the message-less SealError), or a 4xx/5xx error
// in the clear about metadata (sign-in, model, quota, a sealed_invalid refusal),
// returned as it is.  Anything else is a SealError: unauthenticated bytes are
// never handed back as an answer.
//
// Exports for the page: sealingAvailable, loadKeyConfig, sealedFetch, and the
// errors.  Test seams (known-answer vectors) are in ohttp.js and hpke.js.

import { LIMITS, ResponseDecoder, decodeResponse, encodeRequest } from "./bhttp.js";
import { SealError } from "./hpke.js";
import { concat } from "./octets.js";
import {
  CHUNKED_REQUEST_MEDIA_TYPE, CHUNKED_RESPONSE_MEDIA_TYPE, ChunkedRequestSealer, KEYS_MEDIA_TYPE, KeyConfigError,
  REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE, decodeKeyConfig, decodeKeyConfigs, encapsulateRequest, fingerprint, usable,
} from "./ohttp.js";

export { SealError, KeyConfigError };

/** A request that cannot be sealed, refused before anything is sent (it never goes in the clear either). */
export class UnsealableRequestError extends Error {
  constructor(message) {
    super(message);
    this.name = "UnsealableRequestError";
  }
}

// The clear API paths that are sealed -> where the sealed request goes (the SDK's SEALED_ROUTES).
const SEALED_ROUTES = new Map([
  ["/v1/chat/completions", "/v1/sealed/chat/completions"],
  ["/v1/completions", "/v1/sealed/completions"],
  ["/v1/embeddings", "/v1/sealed/embeddings"],
]);
const KEYS_PATH = "/v1/sealed/keys";
// The inner request's scheme and authority: fixed, the gate ignores them.
const INNER_SCHEME = "https";
const INNER_AUTHORITY = "sluice";
// The SDK's DEFAULT_PAD_TO: 1 KiB buckets hide a prompt's exact length.
const PAD_TO = 1024;
// application/ohttp-keys: at most 16 configurations of about 1.3 KiB.
const MAX_KEYS_BODY = 64 * 1024;
// A whole sealed answer: the largest Binary HTTP message plus nonce and tag, with room.
const MAX_SEALED_RESPONSE = LIMITS.maxMessage + 1024;
// A clear error document is a few hundred bytes.
const MAX_CLEAR_ERROR = 64 * 1024;
// A model name as the clear Sluice-Model header carries it: printable ASCII, no spaces.
const MAX_MODEL = 256;
// Statuses whose Response may not have a body (Fetch standard "null body status").
const NULL_BODY_STATUSES = new Set([101, 103, 204, 205, 304]);

/** Whether this page can seal: `{ok, reason}`, the reason saying why not in words a user understands. */
export function sealingAvailable() {
  if (globalThis.isSecureContext === false) {
    return {
      ok: false,
      reason: "this page is not a secure context (HTTPS or a loopback address): WebCrypto is unavailable, "
        + "so requests cannot be sealed here",
    };
  }
  const subtle = globalThis.crypto && globalThis.crypto.subtle;
  if (!subtle || typeof subtle.deriveBits !== "function") {
    return { ok: false, reason: "this browser offers no WebCrypto (crypto.subtle), so requests cannot be sealed here" };
  }
  return { ok: true, reason: "" };
}

function media(headers) {
  return (headers.get("content-type") || "").split(";", 1)[0].trim().toLowerCase();
}

/** The body of `response`, or null (and the body cancelled) once it is longer than `limit`. */
async function readBounded(response, limit) {
  if (response.body === null) return new Uint8Array(0);
  const reader = response.body.getReader();
  const parts = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > limit) {
      reader.cancel().catch(() => {});
      return null;
    }
    parts.push(value);
  }
  return concat(...parts);
}

/**
 * GET /v1/sealed/keys through `fetchImpl` and pick the configuration the SDK's
 * fetch_fingerprint picks (the first usable one): `{config, fingerprint}` with
 * `config` its encoding (Uint8Array) and `fingerprint` SHA-256 of it in lowercase hex.
 * The caller compares the fingerprint with the one it pinned.  KeyConfigError
 * if nothing usable is served.
 */
export async function loadKeyConfig(fetchImpl) {
  const response = await fetchImpl(KEYS_PATH, {
    method: "GET", headers: { Accept: KEYS_MEDIA_TYPE }, cache: "no-store", credentials: "same-origin",
  });
  if (response.status !== 200) {
    response.body?.cancel().catch(() => {});
    throw new KeyConfigError(`GET ${KEYS_PATH} answered HTTP ${response.status}: sealed requests are not served now`);
  }
  if (media(response.headers) !== KEYS_MEDIA_TYPE) {
    response.body?.cancel().catch(() => {});
    throw new KeyConfigError(`GET ${KEYS_PATH} did not answer ${KEYS_MEDIA_TYPE}`);
  }
  const body = await readBounded(response, MAX_KEYS_BODY);
  if (body === null) throw new KeyConfigError(`GET ${KEYS_PATH} answered more than ${MAX_KEYS_BODY} bytes`);
  let configs;
  try {
    configs = decodeKeyConfigs(body);
  } catch (error) {
    throw new KeyConfigError(`the key configurations served at ${KEYS_PATH} are malformed: ${error.message}`);
  }
  const config = configs.find(usable);
  if (config === undefined) {
    throw new KeyConfigError(`${KEYS_PATH} serves no key configuration this page can use`);
  }
  return { config: config.encoded, fingerprint: await fingerprint(config) };
}

/** The key configuration to seal to; KeyConfigError unless it is usable and the fingerprint names it. */
async function checkedConfig(keyConfig) {
  if (!keyConfig || !(keyConfig.config instanceof Uint8Array) || typeof keyConfig.fingerprint !== "string") {
    throw new KeyConfigError("a key configuration is {config: Uint8Array, fingerprint: string}, from loadKeyConfig");
  }
  const config = decodeKeyConfig(keyConfig.config);
  if (!usable(config)) throw new KeyConfigError("the key configuration offers no suite this page uses");
  if ((await fingerprint(config)) !== keyConfig.fingerprint.toLowerCase()) {
    throw new KeyConfigError("the key configuration does not match its fingerprint");
  }
  return config;
}

function bodyBytes(body) {
  if (typeof body === "string") return new TextEncoder().encode(body);
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  throw new UnsealableRequestError("a sealed request's body is a JSON string or bytes");
}

/** `{model, streaming}` from the JSON body, as the SDK's _inspect_body. */
function inspect(content) {
  let document;
  try {
    document = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(content));
  } catch {
    throw new UnsealableRequestError("the body is not JSON");
  }
  if (document === null || typeof document !== "object" || Array.isArray(document)) {
    throw new UnsealableRequestError("the body is not a JSON object");
  }
  const { model } = document;
  if (typeof model !== "string" || model.length === 0 || model.length > MAX_MODEL || !/^[\x21-\x7e]+$/.test(model)) {
    throw new UnsealableRequestError("the body names no valid model (printable ASCII, no spaces)");
  }
  return { model, streaming: document.stream === true };
}

/** `message` with zero bytes up to a multiple of PAD_TO (RFC 9292 Section 3.8), as the SDK pads. */
function padded(message) {
  if (message.length >= LIMITS.maxMessage) return message;
  const target = Math.min(Math.ceil(message.length / PAD_TO) * PAD_TO, LIMITS.maxMessage);
  const out = new Uint8Array(target);
  out.set(message);
  return out;
}

/** The inner Binary HTTP request: POST https://sluice{path}, JSON, dated (the gate's replay window). */
function innerRequest(path, content) {
  const headers = [["content-type", "application/json"], ["date", new Date().toUTCString()]];
  return padded(encodeRequest({ method: "POST", scheme: INNER_SCHEME, authority: INNER_AUTHORITY, path, headers, content }));
}

function innerHeaders(fields) {
  // The inner response's content-type: the only header handed on (as the SDK).
  const type = fields.find(([name]) => name === "content-type");
  return type ? { "content-type": type[1] } : {};
}

function answer(status, fields, body) {
  return new Response(NULL_BODY_STATUSES.has(status) ? null : body, { status, headers: innerHeaders(fields) });
}

function isAbort(error) {
  return error && error.name === "AbortError";
}

/**
 * Seal a request to `path` (a clear API path such as "/v1/chat/completions"),
 * POST it to the appliance's sealed route through `fetchImpl`, and resolve to a
 * Response whose status and content-type are the inner answer's and whose body
 * is the opened inner body (a stream, chunk by chunk, for a streamed answer).
 * `init`: `{method: "POST", body: JSON string, signal}`; `init.headers` are not
 * sent (only what fetchImpl adds goes in the clear).  `keyConfig`: what
 * loadKeyConfig returned (and the page pinned).  Aborting `init.signal` aborts
 * the request and the body stream with an AbortError.
 */
export async function sealedFetch(path, init, keyConfig, fetchImpl) {
  const target = SEALED_ROUTES.get(path);
  if (target === undefined) {
    throw new UnsealableRequestError(`${path} cannot be sealed (only chat/completions, completions and embeddings)`);
  }
  if ((init.method || "GET").toUpperCase() !== "POST") throw new UnsealableRequestError("only POST is sealed");
  const content = bodyBytes(init.body);
  if (content.length > LIMITS.maxContent) throw new UnsealableRequestError("the body is too large to seal");
  const { model, streaming } = inspect(content);
  const config = await checkedConfig(keyConfig);
  const message = innerRequest(path, content);
  let body;
  let opener;
  if (streaming) {
    const sealer = await ChunkedRequestSealer.create(config);
    body = await sealer.close(message);
    opener = sealer.responseOpener();
  } else {
    ({ body, opener } = await encapsulateRequest(config, message));
  }
  const outer = await fetchImpl(target, {
    method: "POST",
    headers: { "Sluice-Model": model, "Content-Type": streaming ? CHUNKED_REQUEST_MEDIA_TYPE : REQUEST_MEDIA_TYPE },
    body,
    signal: init.signal,
    cache: "no-store",
    credentials: "same-origin",
  });
  const expected = streaming ? CHUNKED_RESPONSE_MEDIA_TYPE : RESPONSE_MEDIA_TYPE;
  if (outer.status === 200 && media(outer.headers) === expected) {
    return streaming ? openStream(outer, opener) : openWhole(outer, opener);
  }
  if (outer.status >= 400 && outer.status <= 599) {
    // A clear error about metadata: handed back as it is, bounded.
    const text = await readBounded(outer, MAX_CLEAR_ERROR);
    const headers = new Headers(outer.headers);
    for (const framing of ["content-length", "content-encoding", "transfer-encoding"]) headers.delete(framing);
    return new Response(text ?? new Uint8Array(0), { status: outer.status, headers });
  }
  outer.body?.cancel().catch(() => {});
  throw new SealError();
}

async function openWhole(outer, opener) {
  let inner;
  try {
    const sealed = await readBounded(outer, MAX_SEALED_RESPONSE);
    if (sealed === null) throw new SealError();
    inner = decodeResponse(await opener.open(sealed));
  } catch (error) {
    if (isAbort(error)) throw error;
    throw new SealError();
  }
  return answer(inner.status, inner.headers, inner.content);
}

/**
 * A streamed answer: sealed chunks in, the inner head and content pieces out.
 * Resolves once the inner head authenticated; the body then streams each piece
 * as soon as its chunk authenticates, and errors with SealError (or the
 * AbortError) if anything fails, including a stream that ends without its
 * authenticated final chunk.
 */
async function openStream(outer, opener) {
  const reader = outer.body.getReader();
  const decoder = new ResponseDecoder();
  let head = null;
  let ended = false;
  let finished = false;

  const take = (events) => {
    const pieces = [];
    for (const event of events) {
      if (event.type === "head") head = event;
      else if (event.type === "data" && event.data.length) pieces.push(event.data);
      else if (event.type === "end") ended = true;
    }
    return pieces;
  };

  // The next pieces of content (possibly none), or null when the answer is complete and authenticated.
  const next = async () => {
    if (finished) return null;
    try {
      const { done, value } = await reader.read();
      if (!done) {
        const pieces = [];
        for (const plaintext of await opener.feed(value)) pieces.push(...take(decoder.feed(plaintext)));
        return pieces;
      }
      finished = true;
      const pieces = take(decoder.feed(await opener.finish()));
      pieces.push(...take(decoder.finish()));
      if (head === null || !ended) throw new SealError();
      return pieces;
    } catch (error) {
      finished = true;
      reader.cancel().catch(() => {});
      throw isAbort(error) ? error : new SealError();
    }
  };

  const first = [];
  while (head === null) {
    const pieces = await next();
    if (pieces === null) throw new SealError();
    first.push(...pieces);
  }
  const stream = new ReadableStream({
    start(controller) {
      for (const piece of first) controller.enqueue(piece);
    },
    async pull(controller) {
      for (;;) {
        const pieces = await next();
        if (pieces === null) {
          controller.close();
          return;
        }
        if (pieces.length) {
          for (const piece of pieces) controller.enqueue(piece);
          return;
        }
      }
    },
    cancel() {
      finished = true;
      return reader.cancel().catch(() => {});
    },
  }, { highWaterMark: 0 });
  return answer(head.status, head.headers, stream);
}
