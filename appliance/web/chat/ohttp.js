// Oblivious HTTP (RFC 9458) and chunked OHTTP (draft-ietf-ohai-chunked-ohttp), the client's half.
//
// The browser's twin of sluice_sdk/keyconfig.py and the client side of
// sluice_sdk/ohttp.py, with the same fixed suite (DHKEM(X25519, HKDF-SHA256),
// HKDF-SHA256, AES-128-GCM), constructions and bounds:
//
//   hdr  = key_id(1) || kem_id(2) || kdf_id(2) || aead_id(2)
//   info = "message/bhttp request" || 0x00 || hdr                 (RFC 9458 4.3)
//   enc_request = hdr || enc || Seal("", request)
//   secret = context.Export("message/bhttp response", max(Nn, Nk)) (RFC 9458 4.4)
//   prk = Extract(enc || response_nonce, secret)
//   key = Expand(prk, "key", Nk); nonce = Expand(prk, "nonce", Nn)
//   enc_response = response_nonce || Seal(key, nonce, "", response)
//
// The chunked variant uses the labels "message/bhttp chunked request" and
// "message/bhttp chunked response", frames each chunk with a QUIC varint
// length, marks the final chunk with a zero length (it runs to the end of the
// stream) and seals it with AAD "final"; response chunk i uses
// nonce XOR encode(Nn, i).  Non-final chunks are never empty.
//
// Failures to open anything throw the message-less SealError; a key
// configuration that is malformed or unusable throws KeyConfigError, whose
// message names what is wrong (configurations are public).
//
// Deterministic seams for known-answer tests: encapsulateRequest's and
// ChunkedRequestSealer.create's `ephemeral` argument; the page never passes it.

import { decodeVarint, encodeVarint } from "./bhttp.js";
import {
  AEAD_AES_128_GCM, KDF_HKDF_SHA256, KEM_X25519_HKDF_SHA256, NK, NN, NT, SealError,
  aeadOpen, responseKeyAndNonce, setupSender, xorCounter,
} from "./hpke.js";
import { concat, i2osp } from "./octets.js";

export const KEYS_MEDIA_TYPE = "application/ohttp-keys";
export const REQUEST_MEDIA_TYPE = "message/ohttp-req";
export const RESPONSE_MEDIA_TYPE = "message/ohttp-res";
export const CHUNKED_REQUEST_MEDIA_TYPE = "message/ohttp-chunked-req";
export const CHUNKED_RESPONSE_MEDIA_TYPE = "message/ohttp-chunked-res";

const ASCII = new TextEncoder();
const REQUEST_LABEL = ASCII.encode("message/bhttp request");
const RESPONSE_LABEL = ASCII.encode("message/bhttp response");
const CHUNKED_REQUEST_LABEL = ASCII.encode("message/bhttp chunked request");
const CHUNKED_RESPONSE_LABEL = ASCII.encode("message/bhttp chunked response");
const FINAL_AAD = ASCII.encode("final");
const EMPTY = new Uint8Array(0);

// The response nonce and the exported secret: max(Nn, Nk) bytes.
const ENTROPY_LENGTH = Math.max(NN, NK);
// The SDK's bounds (sluice_sdk/ohttp.py): chunks a sender writes (the draft's
// 2^14 that every receiver accepts), the largest chunk accepted (four times
// what the draft requires), and the plaintext of one message (2^30).
export const SEND_CHUNK_SIZE = 1 << 14;
export const MAX_RECEIVE_CHUNK = 1 << 16;
export const MAX_MESSAGE_BYTES = 2 ** 30;

// --- key configurations (RFC 9458 Section 3) -----------------------------------------------------

/** A key configuration is malformed, unsupported or unusable; the message says which. */
export class KeyConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = "KeyConfigError";
  }
}

// Npk of the KEMs whose configurations can at least be parsed (sluice_sdk/keyconfig.py).
const KEM_PUBLIC_KEY_LENGTHS = new Map([
  [0x0010, 65], [0x0011, 97], [0x0012, 133], [0x0020, 32], [0x0021, 56], [0x647a, 1216],
]);
// At most 16 configurations in one list, as the SDK: a current key and a next one, generously.
export const MAX_KEY_CONFIGS = 16;

function u16(data, at) {
  return (data[at] << 8) | data[at + 1];
}

function decodeOne(data, at, end) {
  if (end - at < 3) throw new KeyConfigError("key configuration is truncated");
  const keyId = data[at];
  const kemId = u16(data, at + 1);
  const npk = KEM_PUBLIC_KEY_LENGTHS.get(kemId);
  if (npk === undefined) throw new KeyConfigError("unknown HPKE KEM id");
  let pos = at + 3;
  if (end - pos < npk + 2) throw new KeyConfigError("key configuration is truncated");
  const publicKey = data.slice(pos, pos + npk);
  pos += npk;
  const symLength = u16(data, pos);
  pos += 2;
  if (symLength % 4 || symLength < 4 || symLength > 65532) {
    throw new KeyConfigError("symmetric algorithms length must be 4..65532 and a multiple of 4");
  }
  if (end - pos < symLength) throw new KeyConfigError("key configuration is truncated");
  const symmetric = [];
  for (let i = pos; i < pos + symLength; i += 4) symmetric.push([u16(data, i), u16(data, i + 2)]);
  if (new Set(symmetric.map(String)).size !== symmetric.length) {
    throw new KeyConfigError("symmetric algorithms are listed twice");
  }
  pos += symLength;
  return { keyId, kemId, publicKey, symmetric, encoded: data.slice(at, pos) };
}

/** One configuration, exactly (the bytes a page stored after pinning them). */
export function decodeKeyConfig(data) {
  const config = decodeOne(data, 0, data.length);
  if (config.encoded.length !== data.length) throw new KeyConfigError("trailing bytes after the key configuration");
  return config;
}

/** An `application/ohttp-keys` body: a list of 16-bit-length-prefixed configurations, discarded whole if malformed. */
export function decodeKeyConfigs(data) {
  const configs = [];
  let at = 0;
  while (at < data.length) {
    if (configs.length >= MAX_KEY_CONFIGS) throw new KeyConfigError("too many key configurations");
    if (data.length - at < 2) throw new KeyConfigError("key configuration list is truncated");
    const end = at + 2 + u16(data, at);
    if (end > data.length) throw new KeyConfigError("key configuration list is truncated");
    const config = decodeOne(data, at + 2, end);
    if (at + 2 + config.encoded.length !== end) {
      throw new KeyConfigError("key configuration length prefix does not match its content");
    }
    configs.push(config);
    at = end;
  }
  if (!configs.length) throw new KeyConfigError("an application/ohttp-keys body has at least one configuration");
  return configs;
}

/** Whether this code can seal to `config`: X25519 and (HKDF-SHA256, AES-128-GCM) offered. */
export function usable(config) {
  return config.kemId === KEM_X25519_HKDF_SHA256
    && config.symmetric.some(([kdf, aead]) => kdf === KDF_HKDF_SHA256 && aead === AEAD_AES_128_GCM);
}

/** SHA-256 of the configuration's encoding, lowercase hex: what is pinned (KeyConfig.fingerprint). */
export async function fingerprint(config) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", config.encoded));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// --- RFC 9458: one request, one response ------------------------------------------------------------

function header(config) {
  return concat(Uint8Array.of(config.keyId), i2osp(config.kemId, 2), i2osp(KDF_HKDF_SHA256, 2), i2osp(AEAD_AES_128_GCM, 2));
}

async function clientSetup(config, label, ephemeral) {
  if (!usable(config)) {
    throw new KeyConfigError("key configuration offers no suite this page uses (X25519, HKDF-SHA256, AES-128-GCM)");
  }
  const hdr = header(config);
  try {
    return { hdr, ctx: await setupSender(config.publicKey, concat(label, Uint8Array.of(0), hdr), ephemeral) };
  } catch (error) {
    if (!(error instanceof SealError)) throw error; // a browser without X25519
    throw new KeyConfigError("the key configuration's public key is not usable");
  }
}

/** The client's half of an exchange: opens the one Encapsulated Response. */
export class ResponseOpener {
  constructor(secret, enc) {
    this._secret = secret;
    this._enc = enc;
  }

  /** The Binary HTTP response; SealError if anything is wrong with it. */
  async open(encResponse) {
    if (encResponse.length < ENTROPY_LENGTH + NT || encResponse.length > ENTROPY_LENGTH + NT + MAX_MESSAGE_BYTES) {
      throw new SealError();
    }
    const responseNonce = encResponse.subarray(0, ENTROPY_LENGTH);
    const { key, nonce } = await responseKeyAndNonce(this._secret, concat(this._enc, responseNonce));
    return aeadOpen(key, nonce, encResponse.subarray(ENTROPY_LENGTH), EMPTY);
  }
}

/** Seal `request` (Binary HTTP) to `config`: `{body, opener}`.  `ephemeral`: the tests' seam only. */
export async function encapsulateRequest(config, request, ephemeral = undefined) {
  if (request.length > MAX_MESSAGE_BYTES) throw new SealError();
  const { hdr, ctx } = await clientSetup(config, REQUEST_LABEL, ephemeral);
  const ciphertext = await ctx.seal(request, EMPTY);
  const opener = new ResponseOpener(await ctx.export(RESPONSE_LABEL, ENTROPY_LENGTH), ctx.enc);
  return { body: concat(hdr, ctx.enc, ciphertext), opener };
}

// --- chunked requests --------------------------------------------------------------------------------

function pieces(data) {
  const out = [];
  for (let i = 0; i < data.length; i += SEND_CHUNK_SIZE) out.push(data.subarray(i, i + SEND_CHUNK_SIZE));
  return out;
}

function frame(sealed) {
  return concat(encodeVarint(sealed.length), sealed);
}

/**
 * Writes a `message/ohttp-chunked-req` body: `write()` returns non-final chunks
 * (the first output also carries the header and enc), `close()` the rest, ending
 * with the final chunk; then `responseOpener()` reads the chunked answer.
 */
export class ChunkedRequestSealer {
  /** A sealer to `config`.  `ephemeral`: the tests' seam only. */
  static async create(config, ephemeral = undefined) {
    const { hdr, ctx } = await clientSetup(config, CHUNKED_REQUEST_LABEL, ephemeral);
    return new ChunkedRequestSealer(hdr, ctx, await ctx.export(CHUNKED_RESPONSE_LABEL, ENTROPY_LENGTH));
  }

  constructor(hdr, ctx, responseSecret) {
    this._hdr = hdr;
    this._ctx = ctx;
    this._responseSecret = responseSecret;
    this._started = false;
    this._closed = false;
    this._total = 0;
  }

  _prefix() {
    if (this._started) return EMPTY;
    this._started = true;
    return concat(this._hdr, this._ctx.enc);
  }

  _account(data) {
    this._total += data.length;
    if (this._closed || this._total > MAX_MESSAGE_BYTES) throw new SealError();
  }

  /** Seal `data` as non-final chunks of at most SEND_CHUNK_SIZE bytes. */
  async write(data) {
    this._account(data);
    const out = [this._prefix()];
    for (const piece of pieces(data)) out.push(frame(await this._ctx.seal(piece, EMPTY)));
    return concat(...out);
  }

  /** Seal the rest; its last piece (possibly empty) is the final chunk. */
  async close(data = EMPTY) {
    this._account(data);
    const parts = pieces(data);
    const last = parts.pop() ?? EMPTY;
    const out = [this._prefix()];
    for (const piece of parts) out.push(frame(await this._ctx.seal(piece, EMPTY)));
    out.push(Uint8Array.of(0), await this._ctx.seal(last, FINAL_AAD));
    this._closed = true;
    return concat(...out);
  }

  /** The opener of the `message/ohttp-chunked-res` that answers this request. */
  responseOpener() {
    return new ChunkedResponseOpener(this._responseSecret, this._ctx.enc);
  }
}

// --- chunked responses -------------------------------------------------------------------------------

/**
 * Sans-IO reader of a `message/ohttp-chunked-res` body.  `feed()` resolves to
 * the plaintext of each chunk as soon as it authenticates; `finish()`, at the
 * end of the body, to the final chunk's plaintext, and rejects with SealError
 * if the stream was truncated, a chunk dropped, reordered or altered.  Until
 * `finish()` resolves, what was read is not known to be complete.  After one
 * failure every later call fails too.  Calls must not overlap.
 */
export class ChunkedResponseOpener {
  constructor(secret, enc) {
    this._secret = secret;
    this._enc = enc;
    this._buf = EMPTY;
    this._keys = null;
    this._counter = 0;
    this._total = 0;
    this._final = false;
    this._done = false;
    this._failed = false;
  }

  async _latch(step) {
    if (this._failed || this._done) throw new SealError();
    try {
      return await step();
    } catch {
      this._failed = true;
      throw new SealError();
    }
  }

  async _open(sealed, final) {
    const nonce = xorCounter(this._keys.nonce, this._counter);
    this._counter += 1;
    const plaintext = await aeadOpen(this._keys.key, nonce, sealed, final ? FINAL_AAD : EMPTY);
    this._total += plaintext.length;
    if (this._total > MAX_MESSAGE_BYTES) throw new SealError();
    return plaintext;
  }

  feed(data) {
    return this._latch(async () => {
      this._buf = concat(this._buf, data);
      if (this._keys === null) {
        if (this._buf.length < ENTROPY_LENGTH) return [];
        const responseNonce = this._buf.slice(0, ENTROPY_LENGTH);
        this._buf = this._buf.slice(ENTROPY_LENGTH);
        this._keys = await responseKeyAndNonce(this._secret, concat(this._enc, responseNonce));
      }
      const out = [];
      let pos = 0;
      while (!this._final) {
        const got = decodeVarint(this._buf, pos);
        if (got === null) break;
        const [length, start] = got;
        if (length === 0) {
          pos = start;
          this._final = true;
          break;
        }
        if (!(length > NT && length <= NT + MAX_RECEIVE_CHUNK)) throw new SealError(); // an empty chunk too
        if (this._buf.length < start + length) break;
        out.push(await this._open(this._buf.subarray(start, start + length), false));
        pos = start + length;
      }
      this._buf = this._buf.slice(pos);
      if (this._final && this._buf.length > NT + MAX_RECEIVE_CHUNK) throw new SealError();
      return out;
    });
  }

  finish() {
    return this._latch(async () => {
      if (!this._final || this._buf.length < NT) throw new SealError(); // the final chunk never came
      const last = await this._open(this._buf, true);
      this._buf = EMPTY;
      this._done = true;
      return last;
    });
  }
}
