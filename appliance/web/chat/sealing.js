// Sealed mode: the toggle's logic, around seal.js (the OHTTP/BHTTP/HPKE code, WebCrypto).
//
// The cluster's key configuration comes from /v1/sealed/keys, through the
// appliance: so the page pins its fingerprint on first use (trust on first
// use, like SSH) and refuses a different one, loudly, until the user accepts
// it.  seal.js is imported only when sealing is wanted, so the chat works
// without it (the page then says why sealing is unavailable).

import { getValue, setValue } from "./store.js";

const PIN_KEY = "sealed-key-fingerprint";

export class KeyChanged extends Error {
  constructor(pinned, offered) {
    super("The cluster's sealing key changed.");
    this.pinned = pinned;
    this.offered = offered;
  }
}

let sealModule = null;

// {ok, reason, module}: whether this browser and this page can seal.
export async function loadSealing() {
  if (!window.isSecureContext || !crypto.subtle) {
    return { ok: false, reason: "this page is not a secure context (HTTPS or a loopback address), so the browser offers no WebCrypto" };
  }
  try {
    sealModule = sealModule || (await import("./seal.js"));
  } catch {
    return { ok: false, reason: "this appliance's chat page has no sealing code (seal.js could not be loaded)" };
  }
  const available = sealModule.sealingAvailable();
  if (!available.ok) return { ok: false, reason: available.reason || "the browser lacks what sealing needs" };
  return { ok: true, reason: "", module: sealModule };
}

export function pinnedFingerprint() {
  return getValue(PIN_KEY, null);
}

// The key configuration, checked against the pinned fingerprint (pinned now if none is).
export async function loadPinnedKey(fetchImpl) {
  const key = await sealModule.loadKeyConfig(fetchImpl);
  const pinned = await pinnedFingerprint();
  if (pinned === null) {
    await setValue(PIN_KEY, key.fingerprint);
    return { key, firstUse: true };
  }
  if (pinned !== key.fingerprint) throw new KeyChanged(pinned, key.fingerprint);
  return { key, firstUse: false };
}

// The user looked at the new fingerprint and accepts it.
export function acceptFingerprint(fingerprint) {
  return setValue(PIN_KEY, fingerprint);
}

// A fetch-like function that seals with `key`: a drop-in for authFetch on the API paths.
export function sealedSender(key, fetchImpl) {
  return (path, init) => sealModule.sealedFetch(path, init, key, fetchImpl);
}
