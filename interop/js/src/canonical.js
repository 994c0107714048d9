// Canonical JSON (docs/spec/encoding.md): sorted keys by code point, no white space,
// integers only, UTF-8; and a strict parser that refuses what the spec refuses.

export const MAX_DEPTH = 16;

export class WireError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

// Code point order equals the order of the UTF-8 bytes (not JavaScript's UTF-16 order).
function compareKeys(a, b) {
  return Buffer.compare(Buffer.from(a, "utf8"), Buffer.from(b, "utf8"));
}

function checkText(s) {
  if (!s.isWellFormed()) throw new WireError("malformed", "text holds a lone surrogate");
}

function encode(value, depth) {
  if (depth > MAX_DEPTH) throw new WireError("malformed", `nested deeper than ${MAX_DEPTH} levels`);
  if (value === null) return "null";
  if (value === true) return "true";
  if (value === false) return "false";
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new WireError("malformed", "numbers must be integers");
    return String(value === 0 ? 0 : value); // -0 is 0
  }
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "string") {
    checkText(value);
    return JSON.stringify(value); // the escapes of the spec: \" \\ \b \f \n \r \t, \u00xx
  }
  if (Array.isArray(value)) return "[" + value.map((v) => encode(v, depth + 1)).join(",") + "]";
  if (typeof value === "object") {
    const keys = Object.keys(value).filter((k) => value[k] !== undefined).sort(compareKeys);
    return (
      "{" +
      keys.map((k) => (checkText(k), JSON.stringify(k) + ":" + encode(value[k], depth + 1))).join(",") +
      "}"
    );
  }
  throw new WireError("malformed", `no canonical form for ${typeof value}`);
}

/** Canonical JSON bytes of a value. */
export function canonical(value) {
  return utf8.encode(encode(value, 0));
}

export function canonicalText(value) {
  return encode(value, 0);
}

// ------------------------------------------------------------------- strict parser
const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);

/** Parse bytes as strict JSON: UTF-8, no duplicate keys, integers only, depth <= 16. */
export function strictParse(bytes, maxBytes) {
  if (bytes.length > maxBytes) {
    throw new WireError("oversized", `message is ${bytes.length} bytes, over the limit of ${maxBytes}`);
  }
  let text;
  try {
    text = utf8Strict.decode(bytes);
  } catch {
    throw new WireError("malformed", "message is not valid UTF-8");
  }
  if (text.includes("\u0000")) throw new WireError("malformed", "message contains a NUL character");
  let i = 0;
  const fail = (why) => {
    throw new WireError("malformed", `message is not valid JSON: ${why} at ${i}`);
  };
  const ws = () => {
    while (i < text.length && WS.has(text.charCodeAt(i))) i++;
  };
  const value = (depth) => {
    if (depth > MAX_DEPTH) throw new WireError("malformed", `nested deeper than ${MAX_DEPTH} levels`);
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const out = Object.create(null);
      ws();
      if (text[i] === "}") {
        i++;
        return Object.assign({}, out);
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("expected a key");
        const key = string();
        if (Object.prototype.hasOwnProperty.call(out, key)) {
          throw new WireError("malformed", `duplicate key ${JSON.stringify(key.slice(0, 40))}`);
        }
        ws();
        if (text[i] !== ":") fail("expected ':'");
        i++;
        out[key] = value(depth + 1);
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return Object.assign({}, out);
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const out = [];
      ws();
      if (text[i] === "]") {
        i++;
        return out;
      }
      for (;;) {
        out.push(value(depth + 1));
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return out;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return string();
    if (text.startsWith("true", i)) return (i += 4), true;
    if (text.startsWith("false", i)) return (i += 5), false;
    if (text.startsWith("null", i)) return (i += 4), null;
    const m = /^-?(0|[1-9][0-9]*)([.eE])?/.exec(text.slice(i, i + 400));
    if (m) {
      if (m[2]) throw new WireError("malformed", "numbers must be integers");
      i += m[0].length;
      const n = Number(m[0]);
      if (!Number.isSafeInteger(n)) throw new WireError("malformed", "integer out of range");
      return n === 0 ? 0 : n;
    }
    if (/^(-?Infinity|NaN)/.test(text.slice(i, i + 9))) {
      throw new WireError("malformed", "NaN and Infinity are not allowed");
    }
    fail("unexpected character");
  };
  const string = () => {
    i++; // opening quote
    let out = "";
    for (;;) {
      if (i >= text.length) fail("unterminated string");
      const ch = text.charCodeAt(i);
      if (ch === 0x22) {
        i++;
        break;
      }
      if (ch < 0x20) fail("control character in a string");
      if (ch === 0x5c) {
        const e = text[i + 1];
        const simple = { '"': '"', "\\": "\\", "/": "/", b: "\b", f: "\f", n: "\n", r: "\r", t: "\t" };
        if (e in simple) {
          out += simple[e];
          i += 2;
        } else if (e === "u" && /^[0-9a-fA-F]{4}$/.test(text.slice(i + 2, i + 6))) {
          out += String.fromCharCode(parseInt(text.slice(i + 2, i + 6), 16));
          i += 6;
        } else fail("bad escape");
      } else {
        out += text[i];
        i++;
      }
    }
    if (!out.isWellFormed()) throw new WireError("malformed", "text holds a lone surrogate");
    return out;
  };
  const result = value(0);
  ws();
  if (i !== text.length) fail("trailing characters");
  return result;
}

// ------------------------------------------------------------------- base64
const B64 = /^[A-Za-z0-9+/]*={0,2}$/;

export function b64e(bytes) {
  return Buffer.from(bytes).toString("base64");
}

/** Decode canonical, padded, standard base64 (at most maxBytes), or throw naming field. */
export function b64d(text, field, maxBytes) {
  if (typeof text !== "string" || !B64.test(text) || text.length % 4 !== 0) {
    throw new WireError("malformed", `${field} is not valid base64`);
  }
  if (text.length > Math.floor((maxBytes + 2) / 3) * 4) {
    throw new WireError("oversized", `${field} is longer than ${maxBytes} bytes`);
  }
  const bytes = new Uint8Array(Buffer.from(text, "base64"));
  if (b64e(bytes) !== text) throw new WireError("malformed", `${field} is not canonical base64`);
  return bytes;
}

export const enc = (s) => utf8.encode(s);
export const dec = (b) => utf8Strict.decode(b);
export const hex = (b) => Buffer.from(b).toString("hex");
export const unhex = (s) => new Uint8Array(Buffer.from(s, "hex"));

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let k = 0; k < a.length; k++) d |= a[k] ^ b[k];
  return d === 0;
}
