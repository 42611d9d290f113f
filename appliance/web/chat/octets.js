// Byte-string helpers shared by the sealing modules (bhttp.js, hpke.js, ohttp.js).

/** The parts (Uint8Arrays) one after the other, in a new Uint8Array. */
export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** `value` as `length` bytes, big-endian (RFC 8017 I2OSP). */
export function i2osp(value, length) {
  const out = new Uint8Array(length);
  for (let i = length - 1, v = value; i >= 0 && v > 0; i -= 1, v = Math.floor(v / 256)) {
    out[i] = v % 256;
  }
  return out;
}
