/**
 * AMF0 encoding and decoding (Adobe AMF0 specification), the value format of RTMP command and data
 * messages. Pure: works on byte arrays, never touches a socket.
 *
 * @module
 */

/** An AMF0 value as this codec represents it in JavaScript. */
export type AmfValue =
  | number
  | boolean
  | string
  | null
  | undefined
  | Date
  | AmfValue[]
  | AmfObject;

/** An AMF0 object or ECMA array: string keys in wire order. */
export interface AmfObject {
  [key: string]: AmfValue;
}

const MARKER = {
  number: 0x00,
  boolean: 0x01,
  string: 0x02,
  object: 0x03,
  movieClip: 0x04,
  null: 0x05,
  undefined: 0x06,
  reference: 0x07,
  ecmaArray: 0x08,
  objectEnd: 0x09,
  strictArray: 0x0a,
  date: 0x0b,
  longString: 0x0c,
  unsupported: 0x0d,
  xmlDocument: 0x0f,
  typedObject: 0x10,
  avmPlus: 0x11,
} as const;

/**
 * Deepest nesting of objects and arrays accepted. Real encoders nest two levels at most; the cap
 * keeps a hostile message from exhausting the stack.
 */
export const MAX_AMF_DEPTH = 32;

/** Most elements accepted in one strict array, so a declared count cannot drive allocation. */
const MAX_ARRAY_LENGTH = 65_536;

const textDecoder = new TextDecoder("utf-8", { fatal: false });
const textEncoder = new TextEncoder();

/** Reads AMF0 values one after another from `bytes`. */
export class Amf0Reader {
  #view: DataView;
  #bytes: Uint8Array;
  #offset = 0;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** True while unread bytes remain. */
  get hasMore(): boolean {
    return this.#offset < this.#bytes.length;
  }

  /** Reads one value; throws `SyntaxError` on truncated or malformed input. */
  read(): AmfValue {
    return this.#readValue(0);
  }

  /** Reads every remaining value. */
  readAll(): AmfValue[] {
    const values: AmfValue[] = [];
    while (this.hasMore) values.push(this.read());
    return values;
  }

  #need(count: number): void {
    if (this.#offset + count > this.#bytes.length) {
      throw new SyntaxError(
        `AMF0 value truncated: need ${count} bytes at offset ${this.#offset}, have ${
          this.#bytes.length - this.#offset
        }`,
      );
    }
  }

  #u8(): number {
    this.#need(1);
    return this.#bytes[this.#offset++]!;
  }

  #u16(): number {
    this.#need(2);
    const value = this.#view.getUint16(this.#offset);
    this.#offset += 2;
    return value;
  }

  #u32(): number {
    this.#need(4);
    const value = this.#view.getUint32(this.#offset);
    this.#offset += 4;
    return value;
  }

  #f64(): number {
    this.#need(8);
    const value = this.#view.getFloat64(this.#offset);
    this.#offset += 8;
    return value;
  }

  #utf8(length: number): string {
    this.#need(length);
    const text = textDecoder.decode(this.#bytes.subarray(this.#offset, this.#offset + length));
    this.#offset += length;
    return text;
  }

  #readProperties(depth: number, into: AmfObject): AmfObject {
    for (;;) {
      const key = this.#utf8(this.#u16());
      if (key === "" && this.#bytes[this.#offset] === MARKER.objectEnd) {
        this.#offset++;
        return into;
      }
      into[key] = this.#readValue(depth);
    }
  }

  #readValue(depth: number): AmfValue {
    if (depth > MAX_AMF_DEPTH) {
      throw new SyntaxError(`AMF0 nesting deeper than ${MAX_AMF_DEPTH} levels`);
    }
    const marker = this.#u8();
    switch (marker) {
      case MARKER.number:
        return this.#f64();
      case MARKER.boolean:
        return this.#u8() !== 0;
      case MARKER.string:
        return this.#utf8(this.#u16());
      case MARKER.longString:
        return this.#utf8(this.#u32());
      case MARKER.xmlDocument:
        return this.#utf8(this.#u32());
      case MARKER.object:
        return this.#readProperties(depth + 1, {});
      case MARKER.typedObject:
        this.#utf8(this.#u16()); // class name, not needed by RTMP servers
        return this.#readProperties(depth + 1, {});
      case MARKER.ecmaArray:
        this.#u32(); // the count is advisory; the end marker terminates
        return this.#readProperties(depth + 1, {});
      case MARKER.strictArray: {
        const count = this.#u32();
        if (count > MAX_ARRAY_LENGTH) {
          throw new SyntaxError(
            `AMF0 strict array of ${count} elements exceeds ${MAX_ARRAY_LENGTH}`,
          );
        }
        const items: AmfValue[] = [];
        for (let i = 0; i < count; i++) items.push(this.#readValue(depth + 1));
        return items;
      }
      case MARKER.date: {
        const millis = this.#f64();
        this.#u16(); // time zone, reserved and ignored by the specification
        return new Date(millis);
      }
      case MARKER.null:
        return null;
      case MARKER.undefined:
      case MARKER.unsupported:
        return undefined;
      default:
        throw new SyntaxError(
          `AMF0 marker 0x${marker.toString(16).padStart(2, "0")} not supported at offset ${
            this.#offset - 1
          }`,
        );
    }
  }
}

/** Decodes every AMF0 value in `bytes`. Throws `SyntaxError` on malformed input. */
export function decodeAmf0(bytes: Uint8Array): AmfValue[] {
  return new Amf0Reader(bytes).readAll();
}

/** Growable byte sink used by the encoder. */
class ByteWriter {
  #bytes = new Uint8Array(256);
  #view = new DataView(this.#bytes.buffer);
  length = 0;

  #reserve(count: number): void {
    if (this.length + count <= this.#bytes.length) return;
    let size = this.#bytes.length * 2;
    while (size < this.length + count) size *= 2;
    const grown = new Uint8Array(size);
    grown.set(this.#bytes.subarray(0, this.length));
    this.#bytes = grown;
    this.#view = new DataView(grown.buffer);
  }

  u8(value: number): void {
    this.#reserve(1);
    this.#bytes[this.length++] = value;
  }

  u16(value: number): void {
    this.#reserve(2);
    this.#view.setUint16(this.length, value);
    this.length += 2;
  }

  u32(value: number): void {
    this.#reserve(4);
    this.#view.setUint32(this.length, value);
    this.length += 4;
  }

  f64(value: number): void {
    this.#reserve(8);
    this.#view.setFloat64(this.length, value);
    this.length += 8;
  }

  bytes(value: Uint8Array): void {
    this.#reserve(value.length);
    this.#bytes.set(value, this.length);
    this.length += value.length;
  }

  result(): Uint8Array {
    return this.#bytes.slice(0, this.length);
  }
}

function writeKey(writer: ByteWriter, key: string): void {
  const encoded = textEncoder.encode(key);
  if (encoded.length > 0xffff) throw new RangeError(`AMF0 key longer than 65535 bytes`);
  writer.u16(encoded.length);
  writer.bytes(encoded);
}

function writeValue(writer: ByteWriter, value: AmfValue, depth: number): void {
  if (depth > MAX_AMF_DEPTH) throw new RangeError(`AMF0 nesting deeper than ${MAX_AMF_DEPTH}`);
  if (value === null) return writer.u8(MARKER.null);
  if (value === undefined) return writer.u8(MARKER.undefined);
  if (typeof value === "number") {
    writer.u8(MARKER.number);
    return writer.f64(value);
  }
  if (typeof value === "boolean") {
    writer.u8(MARKER.boolean);
    return writer.u8(value ? 1 : 0);
  }
  if (typeof value === "string") {
    const encoded = textEncoder.encode(value);
    if (encoded.length > 0xffff) {
      writer.u8(MARKER.longString);
      writer.u32(encoded.length);
    } else {
      writer.u8(MARKER.string);
      writer.u16(encoded.length);
    }
    return writer.bytes(encoded);
  }
  if (value instanceof Date) {
    writer.u8(MARKER.date);
    writer.f64(value.getTime());
    return writer.u16(0);
  }
  if (Array.isArray(value)) {
    writer.u8(MARKER.strictArray);
    writer.u32(value.length);
    for (const item of value) writeValue(writer, item, depth + 1);
    return;
  }
  writer.u8(MARKER.object);
  for (const [key, item] of Object.entries(value)) {
    writeKey(writer, key);
    writeValue(writer, item, depth + 1);
  }
  writer.u16(0);
  writer.u8(MARKER.objectEnd);
}

/** Encodes `values` one after another as AMF0. */
export function encodeAmf0(...values: AmfValue[]): Uint8Array {
  const writer = new ByteWriter();
  for (const value of values) writeValue(writer, value, 0);
  return writer.result();
}

/**
 * Encodes an ECMA array (marker 0x08), the form `onMetaData` uses on the wire.
 */
export function encodeAmf0EcmaArray(object: AmfObject): Uint8Array {
  const writer = new ByteWriter();
  const entries = Object.entries(object);
  writer.u8(MARKER.ecmaArray);
  writer.u32(entries.length);
  for (const [key, item] of entries) {
    writeKey(writer, key);
    writeValue(writer, item, 1);
  }
  writer.u16(0);
  writer.u8(MARKER.objectEnd);
  return writer.result();
}

/** True when `value` is a plain AMF object (not null, an array or a date). */
export function isAmfObject(value: AmfValue): value is AmfObject {
  return typeof value === "object" && value !== null && !Array.isArray(value) &&
    !(value instanceof Date);
}
