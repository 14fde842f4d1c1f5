/** `hex("04 000064 aabb")`: bytes from hex digits, spaces ignored (fixtures group fields). */
export function hex(text: string): Uint8Array {
  const digits = text.replace(/\s+/g, "");
  if (digits.length % 2 !== 0) throw new SyntaxError(`odd number of hex digits in ${text}`);
  const out = new Uint8Array(digits.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(digits.slice(i * 2, i * 2 + 2), 16);
  return out;
}

/**
 * FFmpeg 5.1's `connect` for rtmp://127.0.0.1:19351/live/…, as it sent it (chunk size 128): the
 * client conversation must write exactly this, and the server conversation must accept it.
 */
export const FFMPEG_CONNECT = hex(`
  03 000000 00008c 14 00000000
  02 0007 636f6e6e656374 00 3ff0000000000000
  03 0003 617070 02 0004 6c697665
     0004 74797065 02 000a 6e6f6e70726976617465
     0008 666c617368566572 02 0024 464d4c452f332e302028636f6d70617469626c653b204c61766635392e32372e31303029
     0005 746355726c 02 001b 72746d703a2f2f3132372e302e302e313a31
  c3 393335312f6c697665 000009
`);
