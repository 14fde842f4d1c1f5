/**
 * Reads an FLV file into its tags, for benchmarks that replay a real encoding at our own pace.
 *
 * @module
 */

import { createMediaPacket, type MediaPacket, type TagTypeId } from "../src/media/flv.ts";

export async function readFlvTags(path: string): Promise<MediaPacket[]> {
  const bytes = await Deno.readFile(path);
  if (bytes[0] !== 0x46 || bytes[1] !== 0x4c || bytes[2] !== 0x56) {
    throw new SyntaxError(`${path} is not an FLV file`);
  }
  const view = new DataView(bytes.buffer);
  let offset = view.getUint32(5) + 4;
  const packets: MediaPacket[] = [];
  while (offset + 11 <= bytes.length) {
    const type = bytes[offset]!;
    const size = (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) | bytes[offset + 3]!;
    const timestamp = ((bytes[offset + 7]! << 24) | (bytes[offset + 4]! << 16) |
      (bytes[offset + 5]! << 8) | bytes[offset + 6]!) >>> 0;
    const body = bytes.subarray(offset + 11, offset + 11 + size);
    if (type === 8 || type === 9 || type === 18) {
      packets.push(createMediaPacket(type as TagTypeId, timestamp, body));
    }
    offset += 11 + size + 4;
  }
  return packets;
}
