import { escapeLabel } from "../../src/http/metrics.ts";
import { assertEquals } from "../helpers/assert.ts";

Deno.test("escapeLabel() escapes what the text format escapes and replaces other control characters", () => {
  const table: [string, string][] = [
    ["youtube-1", "youtube-1"],
    ['a"b', 'a\\"b'],
    ["a\\b", "a\\\\b"],
    ["a\nb", "a\\nb"],
    // A raw carriage return broke Python's prometheus_client parser ("Invalid value").
    ["cr\rret", "cr\ufffdret"],
    ["tab\there\u0000\u007f", "tab\ufffdhere\ufffd\ufffd"],
    ["ünïcødé ✓", "ünïcødé ✓"],
  ];
  for (const [value, expected] of table) assertEquals(escapeLabel(value), expected, value);
});
