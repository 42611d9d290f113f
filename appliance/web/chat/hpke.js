// HAZMAT: the only module of the browser's sealing code that touches cryptographic primitives.
//
// HPKE (RFC 9180) base mode with the one suite Sluice uses, DHKEM(X25519,
// HKDF-SHA256) / HKDF-SHA256 / AES-128-GCM, built on WebCrypto alone:
// X25519 `deriveBits`, HMAC-SHA256 for HKDF Extract and Expand (RFC 5869; HPKE's
// labeled functions need them separately, which WebCrypto's HKDF does not
// offer), and AES-GCM.  No primitive is written here, only the RFC's
// constructions around them; this is the twin of sluice_sdk/_hazmat.py plus the
// parts of pyhpke the SDK uses (SetupBaseS, Seal with the sequence number,
// Export).
//
// Every failure to open anything throws the message-less SealError.
//
// Deterministic seam for known-answer tests: setupSender's `ephemeral` option
// (the serialized ephemeral private key).  The page never passes it; the
// ephemeral key pair then comes from WebCrypto's generateKey.

import { concat, i2osp } from "./octets.js";

export const KEM_X25519_HKDF_SHA256 = 0x0020;
export const KDF_HKDF_SHA256 = 0x0001;
export const AEAD_AES_128_GCM = 0x0001;

// RFC 9180 Section 7: sizes of the suite.
export const NPK = 32; // X25519 public key, and Nenc
const NSECRET = 32; // DHKEM(X25519) shared secret
const NH = 32; // SHA-256 output
export const NK = 16; // AES-128-GCM key
export const NN = 12; // AES-GCM nonce
export const NT = 16; // AES-GCM tag

const ASCII = new TextEncoder();
const HPKE_V1 = ASCII.encode("HPKE-v1");
const KEM_SUITE_ID = concat(ASCII.encode("KEM"), i2osp(KEM_X25519_HKDF_SHA256, 2));
const SUITE_ID = concat(
  ASCII.encode("HPKE"),
  i2osp(KEM_X25519_HKDF_SHA256, 2),
  i2osp(KDF_HKDF_SHA256, 2),
  i2osp(AEAD_AES_128_GCM, 2),
);
const MODE_BASE = 0x00;
// PKCS #8 wrapping of a raw X25519 private key (RFC 8410): the only form
// WebCrypto imports one in without its public key.
const X25519_PKCS8_PREFIX = Uint8Array.from([
  0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04, 0x20,
]);

/** Any failure to open, authenticate or accept a sealed message.  Deliberately message-less. */
export class SealError extends Error {
  constructor() {
    super("");
    this.name = "SealError";
  }
}

function subtle() {
  const api = globalThis.crypto && globalThis.crypto.subtle;
  if (!api) {
    throw new SealError();
  }
  return api;
}

/** `n` bytes from the browser's CSPRNG. */
export function randomBytes(n) {
  return globalThis.crypto.getRandomValues(new Uint8Array(n));
}

// --- HKDF-SHA256 (RFC 5869) -------------------------------------------------------------------

async function hmac(key, data) {
  // An empty HMAC key cannot be imported; HMAC pads keys with zeros to the
  // block size, so HashLen zero bytes is the same key (RFC 5869: an absent salt
  // is HashLen zeros).
  const raw = key.length ? key : new Uint8Array(NH);
  const handle = await subtle().importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await subtle().sign("HMAC", handle, data));
}

/** HKDF-Extract(salt, ikm). */
export function extract(salt, ikm) {
  return hmac(salt, ikm);
}

/** HKDF-Expand(prk, info, length), length at most 255 * HashLen. */
export async function expand(prk, info, length) {
  if (length > 255 * NH) {
    throw new SealError();
  }
  const out = new Uint8Array(length);
  let block = new Uint8Array(0);
  for (let i = 1, at = 0; at < length; i += 1) {
    block = await hmac(prk, concat(block, info, Uint8Array.of(i)));
    out.set(block.subarray(0, Math.min(NH, length - at)), at);
    at += NH;
  }
  return out;
}

function labeledExtract(suiteId, salt, label, ikm) {
  return extract(salt, concat(HPKE_V1, suiteId, ASCII.encode(label), ikm));
}

function labeledExpand(suiteId, prk, label, info, length) {
  return expand(prk, concat(i2osp(length, 2), HPKE_V1, suiteId, ASCII.encode(label), info), length);
}

// --- AES-128-GCM ---------------------------------------------------------------------------------

async function aesKey(key) {
  return subtle().importKey("raw", key, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
}

export async function aeadSeal(key, nonce, plaintext, aad) {
  const params = { name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 8 * NT };
  return new Uint8Array(await subtle().encrypt(params, await aesKey(key), plaintext));
}

/** AEAD Open; SealError if the tag does not verify. */
export async function aeadOpen(key, nonce, ciphertext, aad) {
  try {
    const params = { name: "AES-GCM", iv: nonce, additionalData: aad, tagLength: 8 * NT };
    return new Uint8Array(await subtle().decrypt(params, await aesKey(key), ciphertext));
  } catch {
    throw new SealError();
  }
}

// --- DHKEM(X25519, HKDF-SHA256) (RFC 9180 Section 4.1) ---------------------------------------------

async function ephemeralKeyPair(ephemeral) {
  if (ephemeral === undefined) {
    const api = subtle();
    let pair;
    try {
      pair = await api.generateKey({ name: "X25519" }, true, ["deriveBits"]);
    } catch {
      throw new Error("this browser's WebCrypto has no X25519 (Chromium 133, Firefox 130, Safari 17 or newer)");
    }
    return { privateKey: pair.privateKey, enc: new Uint8Array(await subtle().exportKey("raw", pair.publicKey)) };
  }
  // Known-answer tests only: the serialized ephemeral private key.
  const privateKey = await subtle().importKey(
    "pkcs8", concat(X25519_PKCS8_PREFIX, ephemeral), { name: "X25519" }, true, ["deriveBits"],
  );
  const jwk = await subtle().exportKey("jwk", privateKey);
  return { privateKey, enc: fromBase64Url(jwk.x) };
}

function fromBase64Url(text) {
  const binary = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(binary, (c) => c.charCodeAt(0));
}

async function encap(publicKey, ephemeral) {
  if (publicKey.length !== NPK) {
    throw new SealError();
  }
  const { privateKey, enc } = await ephemeralKeyPair(ephemeral);
  let dh;
  try {
    const recipient = await subtle().importKey("raw", publicKey, { name: "X25519" }, true, []);
    dh = new Uint8Array(await subtle().deriveBits({ name: "X25519", public: recipient }, privateKey, 8 * NSECRET));
  } catch {
    throw new SealError(); // e.g. a low-order public key: WebCrypto refuses the all-zero secret
  }
  if (dh.every((b) => b === 0)) {
    throw new SealError(); // RFC 9180 Section 7.1.4, checked here too
  }
  const eaePrk = await labeledExtract(KEM_SUITE_ID, new Uint8Array(0), "eae_prk", dh);
  const sharedSecret = await labeledExpand(KEM_SUITE_ID, eaePrk, "shared_secret", concat(enc, publicKey), NSECRET);
  return { sharedSecret, enc };
}

// --- the key schedule and the sender context (RFC 9180 Sections 5.1 and 5.2) ----------------------

/** An HPKE base-mode sender context: `enc`, `seal` with the sequence number, `export`. */
export class SenderContext {
  constructor(enc, key, baseNonce, exporterSecret) {
    this.enc = enc;
    this._key = key;
    this._baseNonce = baseNonce;
    this._exporterSecret = exporterSecret;
    this._seq = 0;
  }

  async seal(plaintext, aad) {
    // Nonces never repeat: the sequence number stops far below 2^96 (RFC 9180 Section 5.2).
    if (this._seq >= Number.MAX_SAFE_INTEGER) {
      throw new SealError();
    }
    const nonce = xorCounter(this._baseNonce, this._seq);
    this._seq += 1;
    return aeadSeal(this._key, nonce, plaintext, aad);
  }

  export(exporterContext, length) {
    return labeledExpand(SUITE_ID, this._exporterSecret, "sec", exporterContext, length);
  }
}

/** `nonce` XOR the big-endian encoding of `counter` (RFC 9180 ComputeNonce; chunked OHTTP chunk nonces). */
export function xorCounter(nonce, counter) {
  const out = Uint8Array.from(nonce);
  const encoded = i2osp(counter, nonce.length);
  for (let i = 0; i < out.length; i += 1) {
    out[i] ^= encoded[i];
  }
  return out;
}

/** SetupBaseS(pkR, info).  `ephemeral` is the known-answer tests' seam; the page never passes it. */
export async function setupSender(publicKey, info, ephemeral = undefined) {
  const { sharedSecret, enc } = await encap(publicKey, ephemeral);
  const pskIdHash = await labeledExtract(SUITE_ID, new Uint8Array(0), "psk_id_hash", new Uint8Array(0));
  const infoHash = await labeledExtract(SUITE_ID, new Uint8Array(0), "info_hash", info);
  const context = concat(Uint8Array.of(MODE_BASE), pskIdHash, infoHash);
  const secret = await labeledExtract(SUITE_ID, sharedSecret, "secret", new Uint8Array(0));
  const key = await labeledExpand(SUITE_ID, secret, "key", context, NK);
  const baseNonce = await labeledExpand(SUITE_ID, secret, "base_nonce", context, NN);
  const exporterSecret = await labeledExpand(SUITE_ID, secret, "exp", context, NH);
  return new SenderContext(enc, key, baseNonce, exporterSecret);
}

/** RFC 9458 Section 4.4: `prk = Extract(salt, secret)`; the response key and nonce by Expand. */
export async function responseKeyAndNonce(secret, salt) {
  const prk = await extract(salt, secret);
  return { key: await expand(prk, ASCII.encode("key"), NK), nonce: await expand(prk, ASCII.encode("nonce"), NN) };
}
