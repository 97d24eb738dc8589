// A small msgpack codec for the admin protocol (docs/protocol.md §1): exact for the types the
// protocol uses — nil, bool, int, float64 (float32 read too), str, bin, array, map — and nothing
// else: extension types, trailing bytes and map keys other than strings are refused, as the NS
// refuses them.
//
// 64-bit integers. Instance ids are `(epoch << 40) | row id` and pass 2^53, beyond what a JS
// number holds exactly. So `decode` returns an integer as a Number when it is a safe integer
// (|n| <= 2^53 - 1) and as a BigInt otherwise; `encode` writes a BigInt as a 64-bit integer.
// A page may therefore get a Number or a BigInt for an id: compare ids with `String(id)` (or
// `idKey` below), print them with `String(id)` (ui.display does), and send back what it got.
//
// Strings are UTF-8; binaries are Uint8Array both ways. Maps decode to plain objects with no
// prototype tricks (keys are defined, never assigned, so "__proto__" is an ordinary key).

const te = new TextEncoder();
const td = new TextDecoder("utf-8", { fatal: true });

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
const MIN_SAFE = BigInt(Number.MIN_SAFE_INTEGER);

/** A key for a Map or a Set of ids that may be Numbers or BigInts: their decimal text. */
export function idKey(id) {
  return typeof id === "bigint" ? id.toString() : String(id);
}

export class MsgpackError extends Error {
  constructor(message) {
    super(message);
    this.code = "bad_frame";
  }
}

class Writer {
  constructor() {
    this.buf = new Uint8Array(256);
    this.view = new DataView(this.buf.buffer);
    this.pos = 0;
  }
  need(n) {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v) { this.need(1); this.view.setUint8(this.pos, v); this.pos += 1; }
  u16(v) { this.need(2); this.view.setUint16(this.pos, v); this.pos += 2; }
  u32(v) { this.need(4); this.view.setUint32(this.pos, v); this.pos += 4; }
  bytes(b) { this.need(b.length); this.buf.set(b, this.pos); this.pos += b.length; }
  result() { return this.buf.slice(0, this.pos); }
}

/** Encode a value as msgpack bytes (Uint8Array). */
export function encode(value) {
  const w = new Writer();
  write(w, value, 0);
  return w.result();
}

function write(w, v, depth) {
  if (depth > 64) throw new MsgpackError("too deeply nested to encode");
  if (v === null || v === undefined) return w.u8(0xc0);
  if (v === false) return w.u8(0xc2);
  if (v === true) return w.u8(0xc3);
  if (typeof v === "number") return Number.isSafeInteger(v) ? writeInt(w, BigInt(v)) : writeFloat(w, v);
  if (typeof v === "bigint") return writeInt(w, v);
  if (typeof v === "string") return writeStr(w, v);
  if (v instanceof Uint8Array) return writeBin(w, v);
  if (v instanceof ArrayBuffer) return writeBin(w, new Uint8Array(v));
  if (Array.isArray(v)) {
    header(w, v.length, 0x90, 0xdc, 0xdd, 16);
    for (const item of v) write(w, item, depth + 1);
    return;
  }
  if (v instanceof Map) {
    header(w, v.size, 0x80, 0xde, 0xdf, 16);
    for (const [k, item] of v) {
      writeStr(w, String(k));
      write(w, item, depth + 1);
    }
    return;
  }
  if (typeof v === "object") {
    const entries = Object.entries(v).filter(([, item]) => item !== undefined);
    header(w, entries.length, 0x80, 0xde, 0xdf, 16);
    for (const [k, item] of entries) {
      writeStr(w, k);
      write(w, item, depth + 1);
    }
    return;
  }
  throw new MsgpackError(`cannot encode a ${typeof v}`);
}

function header(w, n, fix, m16, m32, fixMax) {
  if (n < fixMax) w.u8(fix | n);
  else if (n <= 0xffff) { w.u8(m16); w.u16(n); }
  else { w.u8(m32); w.u32(n); }
}

function writeInt(w, n) {
  if (n >= 0n) {
    if (n < 128n) return w.u8(Number(n));
    if (n <= 0xffn) { w.u8(0xcc); return w.u8(Number(n)); }
    if (n <= 0xffffn) { w.u8(0xcd); return w.u16(Number(n)); }
    if (n <= 0xffffffffn) { w.u8(0xce); return w.u32(Number(n)); }
    if (n <= 0xffffffffffffffffn) {
      w.u8(0xcf);
      w.need(8);
      w.view.setBigUint64(w.pos, n);
      w.pos += 8;
      return;
    }
    throw new MsgpackError("integer too large for 64 bits");
  }
  if (n >= -32n) return w.u8(Number(n) & 0xff);
  if (n >= -128n) { w.u8(0xd0); w.need(1); w.view.setInt8(w.pos, Number(n)); w.pos += 1; return; }
  if (n >= -32768n) { w.u8(0xd1); w.need(2); w.view.setInt16(w.pos, Number(n)); w.pos += 2; return; }
  if (n >= -2147483648n) { w.u8(0xd2); w.need(4); w.view.setInt32(w.pos, Number(n)); w.pos += 4; return; }
  if (n >= -9223372036854775808n) {
    w.u8(0xd3);
    w.need(8);
    w.view.setBigInt64(w.pos, n);
    w.pos += 8;
    return;
  }
  throw new MsgpackError("integer too small for 64 bits");
}

function writeFloat(w, x) {
  w.u8(0xcb);
  w.need(8);
  w.view.setFloat64(w.pos, x);
  w.pos += 8;
}

function writeStr(w, s) {
  const b = te.encode(s);
  if (b.length < 32) w.u8(0xa0 | b.length);
  else if (b.length <= 0xff) { w.u8(0xd9); w.u8(b.length); }
  else if (b.length <= 0xffff) { w.u8(0xda); w.u16(b.length); }
  else { w.u8(0xdb); w.u32(b.length); }
  w.bytes(b);
}

function writeBin(w, b) {
  if (b.length <= 0xff) { w.u8(0xc4); w.u8(b.length); }
  else if (b.length <= 0xffff) { w.u8(0xc5); w.u16(b.length); }
  else { w.u8(0xc6); w.u32(b.length); }
  w.bytes(b);
}

/** Decode one msgpack value that fills `bytes` exactly (Uint8Array or ArrayBuffer). */
export function decode(bytes) {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const r = { buf, view: new DataView(buf.buffer, buf.byteOffset, buf.byteLength), pos: 0 };
  const value = read(r, 0);
  if (r.pos !== buf.length) throw new MsgpackError(`${buf.length - r.pos} trailing bytes after the value`);
  return value;
}

function take(r, n) {
  if (r.pos + n > r.buf.length) throw new MsgpackError("the data ends in the middle of a value");
  const at = r.pos;
  r.pos += n;
  return at;
}

function int(big) {
  return big >= MIN_SAFE && big <= MAX_SAFE ? Number(big) : big;
}

function read(r, depth) {
  if (depth > 1000) throw new MsgpackError("too deeply nested");
  const b = r.view.getUint8(take(r, 1));
  if (b <= 0x7f) return b;
  if (b >= 0xe0) return b - 0x100;
  if ((b & 0xf0) === 0x80) return readMap(r, b & 0x0f, depth);
  if ((b & 0xf0) === 0x90) return readArray(r, b & 0x0f, depth);
  if ((b & 0xe0) === 0xa0) return readStr(r, b & 0x1f);
  switch (b) {
    case 0xc0: return null;
    case 0xc2: return false;
    case 0xc3: return true;
    case 0xc4: return readBin(r, r.view.getUint8(take(r, 1)));
    case 0xc5: return readBin(r, r.view.getUint16(take(r, 2)));
    case 0xc6: return readBin(r, r.view.getUint32(take(r, 4)));
    case 0xca: return r.view.getFloat32(take(r, 4));
    case 0xcb: return r.view.getFloat64(take(r, 8));
    case 0xcc: return r.view.getUint8(take(r, 1));
    case 0xcd: return r.view.getUint16(take(r, 2));
    case 0xce: return r.view.getUint32(take(r, 4));
    case 0xcf: return int(r.view.getBigUint64(take(r, 8)));
    case 0xd0: return r.view.getInt8(take(r, 1));
    case 0xd1: return r.view.getInt16(take(r, 2));
    case 0xd2: return r.view.getInt32(take(r, 4));
    case 0xd3: return int(r.view.getBigInt64(take(r, 8)));
    case 0xd9: return readStr(r, r.view.getUint8(take(r, 1)));
    case 0xda: return readStr(r, r.view.getUint16(take(r, 2)));
    case 0xdb: return readStr(r, r.view.getUint32(take(r, 4)));
    case 0xdc: return readArray(r, r.view.getUint16(take(r, 2)), depth);
    case 0xdd: return readArray(r, r.view.getUint32(take(r, 4)), depth);
    case 0xde: return readMap(r, r.view.getUint16(take(r, 2)), depth);
    case 0xdf: return readMap(r, r.view.getUint32(take(r, 4)), depth);
    default:
      throw new MsgpackError(`msgpack type 0x${b.toString(16)} is not used by the protocol`);
  }
}

function readStr(r, n) {
  const at = take(r, n);
  try {
    return td.decode(r.buf.subarray(at, at + n));
  } catch {
    throw new MsgpackError("a string is not valid UTF-8");
  }
}

function readBin(r, n) {
  const at = take(r, n);
  return r.buf.slice(at, at + n);
}

function readArray(r, n, depth) {
  if (n > r.buf.length - r.pos) throw new MsgpackError("an array claims more items than the data holds");
  const out = new Array(n);
  for (let i = 0; i < n; i++) out[i] = read(r, depth + 1);
  return out;
}

function readMap(r, n, depth) {
  if (n * 2 > r.buf.length - r.pos) throw new MsgpackError("a map claims more entries than the data holds");
  const out = {};
  for (let i = 0; i < n; i++) {
    const key = read(r, depth + 1);
    if (typeof key !== "string") throw new MsgpackError("a map key is not a string");
    Object.defineProperty(out, key, {
      value: read(r, depth + 1),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}
