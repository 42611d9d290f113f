// Binary HTTP messages (RFC 9292), strict and bounded: what is inside a sealed request or response.
//
// The browser's half of sluice_sdk/bhttp.py: it encodes requests (known-length
// form, framing indicator 0) and decodes responses, known-length or
// indeterminate-length (indicators 1 and 3), incrementally, so that a streamed
// answer is shown as it arrives.  Decoding applies the SDK's checks and bounds:
// field names are lowercase tokens, values hold no control byte but HTAB and do
// not start or end with whitespace, no pseudo-fields, final status 200..599,
// padding is zero bytes only, truncation only where RFC 9292 Section 3.8 allows
// it.  Every violation throws BhttpError with a fixed reason, never the input.
//
// Also here: QUIC variable-length integers (RFC 9000 Section 16), which the
// chunked OHTTP framing shares.

import { concat } from "./octets.js";

/** A Binary HTTP message is invalid or over a limit (a fixed short reason, never the input). */
export class BhttpError extends Error {
  constructor(reason) {
    super(reason);
    this.name = "BhttpError";
  }
}

// The SDK's Limits (sluice_sdk/bhttp.py), the same numbers and reasons.
export const LIMITS = Object.freeze({
  maxMessage: 16 * 1024 * 1024 + 256 * 1024, // the largest content plus room for fields
  maxContent: 16 * 1024 * 1024, // a long chat context or an image stays far below
  maxFieldSection: 64 * 1024, // one header or trailer section, names and values together
  maxFieldLines: 256, // field lines in one section
  maxControl: 8 * 1024, // each of method, scheme, authority and path
  maxInformational: 8, // 1xx responses before the final one
});

const KNOWN_REQUEST = 0;
const KNOWN_RESPONSE = 1;
const INDETERMINATE_RESPONSE = 3;

// --- QUIC varints ----------------------------------------------------------------------------------

/** Largest value encoded here: lengths and statuses, far below 2^53. */
const MAX_ENCODED = 2 ** 30 - 1;

/** Shortest encoding of `value` (0..2^30-1 here: lengths and statuses). */
export function encodeVarint(value) {
  if (!Number.isInteger(value) || value < 0 || value > MAX_ENCODED) {
    throw new BhttpError("integer out of range");
  }
  if (value < 0x40) return Uint8Array.of(value);
  if (value < 0x4000) return Uint8Array.of(0x40 | (value >> 8), value & 0xff);
  return Uint8Array.of(0x80 | (value >>> 24), (value >>> 16) & 0xff, (value >>> 8) & 0xff, value & 0xff);
}

/**
 * `[value, offset after it]`, or null if the integer does not end before `end`.
 * Longer-than-needed forms are accepted (RFC 9292 Section 3).  Values above 2^53
 * lose precision, but every caller compares them with a far smaller limit.
 */
export function decodeVarint(buf, offset = 0, end = buf.length) {
  if (offset >= end) return null;
  const length = 1 << (buf[offset] >> 6);
  if (offset + length > end) return null;
  let value = buf[offset] & 0x3f;
  for (let i = 1; i < length; i += 1) value = value * 256 + buf[offset + i];
  return [value, offset + length];
}

// --- field checks ----------------------------------------------------------------------------------

const TCHAR = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const NAME = /^[!#$%&'*+\-.^_`|~0-9a-z]+$/;
const SCHEME = /^[A-Za-z][A-Za-z0-9+\-.]*$/;
const AUTHORITY = /^[A-Za-z0-9\-._~%!$&'()*+,;=:@[\]]*$/;
const PATH = /^[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]+$/;

function isValueByte(b) {
  return b === 0x09 || (b >= 0x20 && b !== 0x7f);
}

function checkName(name) {
  if (!NAME.test(name)) throw new BhttpError("invalid field name");
}

function checkValue(bytes) {
  if (!bytes.every(isValueByte)) throw new BhttpError("invalid field value");
  if (bytes.length && [0x20, 0x09].some((w) => bytes[0] === w || bytes[bytes.length - 1] === w)) {
    throw new BhttpError("field value starts or ends with whitespace");
  }
}

/** Bytes as a string, one character per byte (latin-1, as HTTP field values are). */
export function latin1(bytes) {
  let out = "";
  for (let i = 0; i < bytes.length; i += 8192) out += String.fromCharCode(...bytes.subarray(i, i + 8192));
  return out;
}

function asciiBytes(text, what) {
  if (typeof text !== "string" || !/^[\x00-\x7f]*$/.test(text)) throw new BhttpError(`${what} must be ASCII`);
  return Uint8Array.from(text, (c) => c.charCodeAt(0));
}

// --- encoding requests (known-length) ----------------------------------------------------------------

function prefixed(bytes) {
  const length = encodeVarint(bytes.length);
  const out = new Uint8Array(length.length + bytes.length);
  out.set(length);
  out.set(bytes, length.length);
  return out;
}

function fieldSection(fields) {
  const lines = [];
  for (const [name, value] of fields) {
    checkName(name);
    const bytes = asciiBytes(value, "a field value");
    checkValue(bytes);
    lines.push(prefixed(asciiBytes(name, "a field name")), prefixed(bytes));
  }
  return prefixed(concat(...lines));
}

/**
 * Known-length encoding (framing indicator 0) of
 * `{method, scheme, authority, path, headers: [[name, value]], content: Uint8Array, trailers}`.
 * `truncate` leaves out empty trailing parts (RFC 9292 Section 3.8), as the
 * RFC 9458 Appendix A request does; the default writes every length.
 */
export function encodeRequest(request, { truncate = false } = {}) {
  const { method, scheme, authority = "", path, headers = [], content = new Uint8Array(0), trailers = [] } = request;
  if (typeof method !== "string" || !TCHAR.test(method)) throw new BhttpError("invalid method");
  if (typeof scheme !== "string" || !SCHEME.test(scheme)) throw new BhttpError("invalid scheme");
  if (typeof authority !== "string" || !AUTHORITY.test(authority)) throw new BhttpError("invalid authority");
  if (typeof path !== "string" || !PATH.test(path)) throw new BhttpError("invalid path");
  if (!(content instanceof Uint8Array)) throw new BhttpError("content must be bytes");
  const control = [method, scheme, authority, path].map((part) => prefixed(asciiBytes(part, "control data")));
  const tail = [fieldSection(headers), prefixed(content), fieldSection(trailers)];
  while (truncate && tail.length && tail[tail.length - 1].length === 1 && tail[tail.length - 1][0] === 0) tail.pop();
  return concat(encodeVarint(KNOWN_REQUEST), ...control, ...tail);
}

// --- decoding responses, incrementally ---------------------------------------------------------------

/**
 * Sans-IO incremental decoder of a response (known- or indeterminate-length).
 *
 * `feed(bytes)` returns the events the bytes complete:
 * `{type: "head", status, headers, informational}`, `{type: "data", data}` (content
 * as it arrives, boundaries carry no meaning) and `{type: "end", trailers}`;
 * `finish()` at the end of the message returns the last ones, or throws if the
 * message ended where RFC 9292 does not allow it.  Fields are `[name, value]`
 * string pairs.  After one error every later call throws again.
 */
export class ResponseDecoder {
  constructor(limits = LIMITS) {
    this._limits = limits;
    this._buf = new Uint8Array(0);
    this._pos = 0;
    this._state = "framing";
    this._known = false;
    this._status = 0;
    this._informational = [];
    this._left = 0; // content bytes left in the current chunk (or the known-length content)
    this._content = 0;
    this._total = 0;
    this._failed = false;
  }

  feed(data) {
    return this._guard(() => {
      this._total += data.length;
      if (this._total > this._limits.maxMessage) throw new BhttpError("message over limit");
      this._buf = concat(this._buf.subarray(this._pos), data);
      this._pos = 0;
      return this._run();
    });
  }

  finish() {
    return this._guard(() => this._finish());
  }

  _guard(step) {
    if (this._failed) throw new BhttpError("decoder failed earlier");
    try {
      return step();
    } catch (error) {
      this._failed = true;
      throw error instanceof BhttpError ? error : new BhttpError("invalid message");
    }
  }

  _varint() {
    const got = decodeVarint(this._buf, this._pos);
    if (got === null) return null;
    [, this._pos] = got;
    return got[0];
  }

  // One whole field section at _pos, or null to wait for more bytes.
  _section() {
    const limits = this._limits;
    let at = this._pos;
    let end = this._buf.length;
    if (this._known) {
      const got = decodeVarint(this._buf, at);
      if (got === null) return null;
      const [length, start] = got;
      if (length > limits.maxFieldSection) throw new BhttpError("field section over limit");
      if (start + length > this._buf.length) return null;
      at = start;
      end = start + length;
    }
    const fields = [];
    for (;;) {
      if (this._known && at === end) break;
      const name = decodeVarint(this._buf, at, end);
      if (name === null) {
        if (this._known) throw new BhttpError("truncated message");
        if (end - this._pos > limits.maxFieldSection) throw new BhttpError("field section over limit");
        return null;
      }
      const [nameLength, nameAt] = name;
      if (nameLength === 0) {
        if (this._known) throw new BhttpError("empty field name");
        at = nameAt;
        break;
      }
      if (fields.length >= limits.maxFieldLines) throw new BhttpError("too many field lines");
      if (nameAt + nameLength - this._pos > limits.maxFieldSection) throw new BhttpError("field section over limit");
      const value = decodeVarint(this._buf, nameAt + nameLength, end);
      if (value === null) {
        if (this._known) throw new BhttpError("truncated message");
        return null; // the name or the value's length is still to come
      }
      const [valueLength, valueAt] = value;
      if (valueAt + valueLength - this._pos > limits.maxFieldSection) throw new BhttpError("field section over limit");
      if (valueAt + valueLength > end) {
        if (this._known) throw new BhttpError("truncated message");
        return null;
      }
      const nameText = latin1(this._buf.subarray(nameAt, nameAt + nameLength));
      const valueBytes = this._buf.subarray(valueAt, valueAt + valueLength);
      checkName(nameText);
      checkValue(valueBytes);
      fields.push([nameText, latin1(valueBytes)]);
      at = valueAt + valueLength;
    }
    this._pos = this._known ? end : at;
    return fields;
  }

  _run() {
    const events = [];
    for (;;) {
      const state = this._state;
      if (state === "framing") {
        const framing = this._varint();
        if (framing === null) return events;
        if (framing !== KNOWN_RESPONSE && framing !== INDETERMINATE_RESPONSE) throw new BhttpError("not a response");
        this._known = framing === KNOWN_RESPONSE;
        this._state = "status";
      } else if (state === "status") {
        const status = this._varint();
        if (status === null) return events;
        if (status >= 200 && status <= 599) {
          this._state = "headers";
        } else if (status >= 100 && status <= 199) {
          if (this._informational.length >= this._limits.maxInformational) {
            throw new BhttpError("too many informational responses");
          }
          this._state = "informational";
        } else {
          throw new BhttpError("invalid status");
        }
        this._status = status;
      } else if (state === "informational" || state === "headers" || state === "trailers") {
        const fields = this._section();
        if (fields === null) return events;
        if (state === "informational") {
          this._informational.push({ status: this._status, headers: fields });
          this._state = "status";
        } else if (state === "headers") {
          events.push({ type: "head", status: this._status, headers: fields, informational: this._informational });
          this._state = "content";
        } else {
          events.push({ type: "end", trailers: fields });
          this._state = "padding";
        }
      } else if (state === "content") {
        if (this._left === 0) {
          const length = this._varint();
          if (length === null) return events;
          if (length === 0 && !this._known) {
            this._state = "trailers";
            continue;
          }
          this._content += length;
          if (this._content > this._limits.maxContent) throw new BhttpError("content over limit");
          this._left = length;
          if (length === 0) {
            this._state = "trailers"; // known-length: empty content
            continue;
          }
        }
        const available = this._buf.length - this._pos;
        if (!available) return events;
        const take = Math.min(this._left, available);
        events.push({ type: "data", data: this._buf.slice(this._pos, this._pos + take) });
        this._pos += take;
        this._left -= take;
        if (this._left === 0 && this._known) this._state = "trailers";
      } else {
        // padding: zero bytes only, to the end
        if (this._buf.subarray(this._pos).some((b) => b !== 0)) throw new BhttpError("non-zero padding");
        this._pos = this._buf.length;
        return events;
      }
    }
  }

  _finish() {
    const state = this._state;
    const rest = this._buf.length - this._pos;
    this._state = "done";
    if (state === "padding") return [];
    if (rest > 0 || this._left > 0) throw new BhttpError("truncated message");
    // RFC 9292 Section 3.8: a message may end after its final control data,
    // after its header section or after its content; what is left out is empty.
    if (state === "headers") {
      return [{ type: "head", status: this._status, headers: [], informational: this._informational }, { type: "end", trailers: [] }];
    }
    if ((state === "content" && this._content === 0) || state === "trailers") return [{ type: "end", trailers: [] }];
    throw new BhttpError("truncated message");
  }
}

/** A whole response: `{status, headers, content, trailers, informational}`. */
export function decodeResponse(data, limits = LIMITS) {
  const decoder = new ResponseDecoder(limits);
  const events = [...decoder.feed(data), ...decoder.finish()];
  const head = events.find((e) => e.type === "head");
  const end = events.find((e) => e.type === "end");
  return {
    status: head.status,
    headers: head.headers,
    informational: head.informational,
    content: concat(...events.filter((e) => e.type === "data").map((e) => e.data)),
    trailers: end.trailers,
  };
}
